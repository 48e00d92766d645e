//! Runs on this process's own threads: their start, their outcome (a
//! success, a failure that earns a retry after its backoff, a last
//! failure), their timeout, and the runs of limited tasks held back for
//! these threads ([`crate::cluster::task_limits`]).
//!
//! A run of a limited task counts as running from the moment it is sent to
//! a subworker or handed to these threads until its outcome is settled (its
//! result, its failure before a retry, its timeout, its cancellation, or
//! its loss with a subworker: then it is sent again and counts again,
//! against the rate too).

use crate::wire::protocol::FailureKind;
use tracing::{debug, error, warn};

use super::{Alarm, Effects, Ending, Ledger, LiveTask};
use crate::cluster::task_limits::TaskLimits;
use crate::wire::protocol::{TaskError, TaskId, TaskState};

/// The task limits as the cluster asks them, at one instant.
pub(super) struct Gate<'a> {
    limits: &'a mut TaskLimits,
    now_ms: u64,
}

impl<'a> Gate<'a> {
    /// The gate of `limits` at `now_ms`.
    pub(super) fn new(limits: &'a mut TaskLimits, now_ms: u64) -> Gate<'a> {
        Gate { limits, now_ms }
    }
}

impl crate::cluster::routing::Gate for Gate<'_> {
    fn limited(&mut self, task_name: &str) -> bool {
        !self.limits.is_empty() && self.limits.is_limited(task_name)
    }

    fn admit(&mut self, task_name: &str, task_id: TaskId) -> bool {
        self.limits.try_start(task_name, task_id, self.now_ms)
    }
}

/// A run this process's threads start: what the thread needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalRun {
    /// Its run number (1 for the first).
    pub(crate) attempt: u32,
    /// When it times out (ms since the epoch; 0: never).
    pub(crate) deadline_ms: u64,
    /// On a subworker: the lease its control plane sent it under.
    pub(crate) lease: Option<u64>,
}

impl<W, L> Ledger<W, L> {
    /// Sets the alarm that looks again at the runs held back, if it must
    /// ring earlier than it is set for.
    pub(super) fn arm_task_limits(&mut self, now: u64, io: &mut impl Effects<W, L>) {
        if self.task_limits.is_empty() {
            return;
        }
        if let Some(due) = self.task_limits.arm(now) {
            io.set_alarm(due, Alarm::TaskLimits);
        }
    }

    /// Hands a queued task to this process's threads. If they take no more
    /// work (the process stops), a task its control plane sent (under a
    /// lease) stays queued, for the stopping subworker to hand back, as it
    /// does every task it has not started; any other fails, saying so.
    fn push_local(&mut self, task_id: TaskId, now: u64, io: &mut impl Effects<W, L>) {
        let Some(task) = self.live.get(&task_id) else { return };
        if !io.run_here(task) {
            if task.lease.is_some() {
                debug!(%task_id, "threads stopping: the task waits to be handed back");
                return;
            }
            let message = "shut down before the task could run here; submit it again".to_string();
            self.fail(task_id, message, now, io);
        }
    }

    /// For a task no live subworker takes: runs it on this process's
    /// threads if they can (unless its limit holds it back), or lets it
    /// wait for a provider to come back (see `delivery.rs`).
    pub(crate) fn run_here_or_wait(
        &mut self,
        task_id: TaskId,
        first: bool,
        why: &str,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        let Some(task) = self.live.get_mut(&task_id) else { return };
        let name = &task.report.task_name;
        if !self.settings.local_tasks.contains(name) && self.awaited.contains(name) {
            // This control plane's worker processes provide it: it waits
            // for one to (re)register.
            task.report.state = TaskState::Queued;
            let waiting = super::Waiting { task_id, task_name: name.clone() };
            return self.cluster.wait(task.report.priority, waiting, super::place(first, task.report.created_ms));
        }
        if !self.settings.local_tasks.contains(name) {
            return self.await_provider(task_id, first, why, now, io);
        }
        task.report.state = TaskState::Queued;
        if !self.task_limits.is_empty() && !self.task_limits.try_start(name, task_id, now) {
            let priority = task.report.priority;
            debug!(%task_id, %priority, "task held back by its task limit");
            self.task_limits.hold_local(&task.report.task_name.clone(), priority, task_id);
            return self.arm_task_limits(now, io);
        }
        self.push_local(task_id, now, io);
    }

    /// Lets go the held-back runs their limits allow now: to this
    /// process's threads, and into the subworkers' free slots.
    pub(crate) fn release_held(&mut self, now: u64, io: &mut impl Effects<W, L>) {
        while let Some((task_name, task_id)) = self.task_limits.next_local(now) {
            match self.live.get(&task_id) {
                Some(task) if task.report.state == TaskState::Queued => self.push_local(task_id, now, io),
                _ => self.task_limits.settle(&task_name, task_id),
            }
        }
        if !self.cluster.is_empty() {
            self.fill(now, io);
        }
        self.arm_task_limits(now, io);
    }

    /// Event: a worker thread starts the task's run. `None`: it is not to
    /// run (it ended or was sent elsewhere meanwhile).
    pub(crate) fn local_started(&mut self, task_id: TaskId, now: u64, io: &mut impl Effects<W, L>) -> Option<LocalRun> {
        let task = self.live.get_mut(&task_id)?;
        if task.report.state != TaskState::Queued {
            return None;
        }
        let report = &mut task.report;
        report.state = TaskState::Running;
        report.started_ms = Some(now);
        report.attempts = report.attempts.saturating_add(1);
        report.worker.clone_from(&self.settings.worker_id);
        io.changed(task);
        io.progressed(task, None);
        let attempt = task.report.attempts;
        let deadline_ms = match task.plan.timeout_ms {
            0 => 0,
            timeout_ms => now.saturating_add(timeout_ms),
        };
        if deadline_ms > 0 {
            io.set_alarm(deadline_ms, Alarm::Deadline(task_id, attempt));
        }
        Some(LocalRun { attempt, deadline_ms, lease: task.lease })
    }

    /// Event: a run on this process's threads ended with `outcome`.
    pub(crate) fn local_ended(
        &mut self,
        task_id: TaskId,
        run: LocalRun,
        outcome: Result<Vec<u8>, TaskError>,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        if run.deadline_ms > 0 {
            // The run ended: its timeout guards nothing any more.
            io.cancel_alarm(Alarm::Deadline(task_id, run.attempt));
        }
        self.complete(task_id, run.attempt, outcome, None, now, io);
        // A running place freed here goes to a run held back for these threads.
        if self.task_limits.holds_local() {
            self.release_held(now, io);
        }
    }

    /// Takes the outcome of run `attempt`: the task succeeds, fails, or
    /// waits for a retry. Outcomes of runs that were timed out or cancelled
    /// meanwhile are dropped.
    pub(super) fn complete(
        &mut self,
        task_id: TaskId,
        attempt: u32,
        outcome: Result<Vec<u8>, TaskError>,
        started_ms: Option<u64>,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        let Some(task) = self.live.get_mut(&task_id) else { return };
        if task.report.state != TaskState::Running || task.report.attempts != attempt {
            return;
        }
        match outcome {
            Ok(result) => self.finish(task_id, Ending::Succeeded(result), started_ms, now, io),
            Err(error) if error.kind != FailureKind::BadArguments && task.failures < task.plan.retry.max_retries => {
                task.failures += 1;
                let delay = task.plan.retry.delay_after(task.failures);
                log_failure(task, &error, format_args!("run failed; retried after {delay} ms"));
                task.report.state = TaskState::Retrying;
                task.report.error = Some(error);
                let due = now.saturating_add(delay);
                io.progressed(task, Some(due));
                io.set_alarm(due, Alarm::Start(task_id));
                let task_name = &self.live[&task_id].report.task_name;
                self.task_limits.settle(task_name, task_id);
                self.arm_task_limits(now, io);
            }
            Err(error) => {
                log_failure(task, &error, format_args!("task failed"));
                self.finish(task_id, Ending::Failed(error), started_ms, now, io);
            }
        }
    }

    /// Ends run `attempt` of a task as timed out, if it is still running.
    pub(super) fn time_out(&mut self, task_id: TaskId, attempt: u32, now: u64, io: &mut impl Effects<W, L>) {
        let Some(task) = self.live.get(&task_id) else { return };
        if task.report.state != TaskState::Running || task.report.attempts != attempt {
            return;
        }
        io.stop_run(task);
        let report = &task.report;
        let message = format!(
            "task '{}' ran past its timeout of {} s (run {attempt}, on '{}'); it was asked to stop through its TaskContext",
            report.task_name,
            task.plan.timeout_ms as f64 / 1000.0,
            report.worker
        );
        warn!(%task_id, task = %report.task_name, worker = %report.worker, run = attempt, "{message}");
        let error = TaskError { kind: FailureKind::Error, message };
        self.finish(task_id, Ending::TimedOut(error), None, now, io);
    }
}

/// Logs a failed run where its task lives: at ERROR for a panic, else at
/// WARN, with the task's id and name, the worker that ran it, the run's
/// number and the failure's message. A subworker logs its runs for a
/// control plane at DEBUG only: the control plane logs them when their
/// outcome reaches it, so that each failure is one line at its level.
fn log_failure<W>(task: &LiveTask<W>, failure: &TaskError, what: std::fmt::Arguments<'_>) {
    let report = &task.report;
    let (task_id, name, worker, run) = (report.task_id, &report.task_name, &report.worker, report.attempts);
    let (kind, message) = (failure.kind.as_str(), &failure.message);
    if task.lease.is_some() {
        debug!(%task_id, task = %name, %worker, run, kind, error = %message, "{what}");
    } else if failure.kind == FailureKind::Panic {
        error!(%task_id, task = %name, %worker, run, kind, error = %message, "{what}: the task panicked");
    } else {
        warn!(%task_id, task = %name, %worker, run, kind, error = %message, "{what}");
    }
}
