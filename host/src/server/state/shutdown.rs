//! Shutdown: a process stops taking tasks, lets queued and running ones
//! finish within `--shutdown-timeout`, and answers every client still
//! waiting. In durable mode what has not ended stays in the store for the
//! restart; a subworker hands back at once what it has not started.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{error_reply, Outbox, State, Tasks};
use crate::wire::protocol::{now_ms, ErrorKind, TaskId, TaskState};

impl State {
    /// Stops taking tasks, lets queued and running ones finish within the
    /// shutdown timeout, and answers every client still waiting.
    pub(crate) fn drain(&self) {
        if !self.accepting.swap(false, Ordering::SeqCst) {
            return;
        }
        let timeout = self.config.shutdown_timeout;
        info!(timeout_secs = timeout.as_secs_f64(), "shutting down: finishing queued and running tasks");
        let deadline = Instant::now() + timeout;
        // In durable mode what has not run yet waits on disk for the restart.
        let durable = self.durable.is_on();
        if !durable {
            self.end_waiting_for_time();
        }
        if self.config.is_subworker() {
            // A subworker hands back at once what it has not started: its
            // control plane runs it elsewhere rather than it failing here.
            // Those queued for its threads, and (with worker processes)
            // those waiting for one of its worker processes.
            let mut unstarted: Vec<TaskId> =
                self.pool.close_and_take_queued().into_iter().map(|job| job.task_id).collect();
            unstarted.extend(
                self.lock().ledger.tasks().filter(|(_, t)| t.report.state == TaskState::Queued).map(|(id, _)| *id),
            );
            self.hand_back_unstarted(unstarted, "it is stopping");
        }
        let unstarted = self.pool.drain(timeout);
        // Tasks on subworkers finish on their own; wait for them too.
        let busy = |tasks: &Tasks| tasks.ledger.tasks().any(|(_, t)| !durable || t.report.state == TaskState::Running);
        while busy(&self.lock()) && Instant::now() < deadline {
            // Runs its stopping worker processes handed back (sent ahead,
            // never started) go back to whoever sent them too.
            self.hand_back_queued();
            std::thread::sleep(Duration::from_millis(10));
        }
        // And one sent while its threads closed (see `push_local`), rather
        // than failing below.
        self.hand_back_queued();
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        if !durable {
            let message = format!(
                "'{}' shut down before this task started (--shutdown-timeout {} s); submit it again",
                self.config.worker_id,
                timeout.as_secs_f64()
            );
            self.drive(&mut tasks, &mut outbox, |ledger, io| {
                // Unstarted: those this process's threads never took, those
                // still waiting for a subworker's (or a worker process's)
                // slot, and those sent ahead to one and not started there
                // (any report of theirs is discarded from now on).
                let queued: Vec<TaskId> = ledger
                    .tasks()
                    .filter(|(_, t)| t.report.state == TaskState::Queued || t.prefetched())
                    .map(|(id, _)| *id)
                    .collect();
                for task_id in unstarted.iter().map(|job| job.task_id).chain(queued) {
                    ledger.fail(task_id, message.clone(), now_ms(), io);
                }
            });
            if !unstarted.is_empty() {
                warn!(count = unstarted.len(), "tasks never started before the shutdown deadline");
            }
        }
        let abandoned = tasks.ledger.remove_all();
        drop(tasks);
        outbox.deliver();
        if durable {
            return self.leave_for_restart(abandoned);
        }
        for task in abandoned {
            let (task_id, task_name) = (task.report.task_id, &task.report.task_name);
            warn!(%task_id, task = %task_name, "still running at the shutdown deadline; its result is lost");
            task.cancelled.store(true, Ordering::SeqCst);
            let reply = error_reply(
                ErrorKind::ShuttingDown,
                format!(
                    "'{}' shut down while task '{task_name}' ({task_id}) was still running after --shutdown-timeout {} s; its result is lost",
                    self.config.worker_id,
                    timeout.as_secs_f64()
                ),
            );
            for waiter in task.waiters {
                waiter.send(&reply);
            }
        }
    }

    /// On a stopping subworker: hands back the tasks queued here, which
    /// have not started, to whoever sent them.
    fn hand_back_queued(&self) {
        if !self.config.is_subworker() {
            return;
        }
        let queued: Vec<TaskId> = self
            .lock()
            .ledger
            .tasks()
            .filter(|(_, t)| t.report.state == TaskState::Queued)
            .map(|(id, _)| *id)
            .collect();
        if !queued.is_empty() {
            self.hand_back_unstarted(queued, "it is stopping");
        }
    }

    /// At shutdown, tasks waiting for a countdown, ETA or retry will not
    /// get their time here: they fail now, saying so.
    fn end_waiting_for_time(&self) {
        let message = format!(
            "'{}' shut down before this task's scheduled time or next retry; submit it again",
            self.config.worker_id
        );
        self.drive_locked(|ledger, io| {
            let waiting: Vec<TaskId> = ledger
                .tasks()
                .filter(|(_, t)| matches!(t.report.state, TaskState::Scheduled | TaskState::Retrying))
                .map(|(id, _)| *id)
                .collect();
            for task_id in waiting {
                ledger.fail(task_id, message.clone(), now_ms(), io);
            }
        });
    }
}
