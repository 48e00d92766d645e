//! The ledger's side of the durable mode (`--state-dir`): the records each
//! state change hands to the [`Journal`], the replies that wait for them,
//! and the restart that takes up what the store holds.
//!
//! In memory mode (no journal) every hook here does nothing, or sends its
//! reply at once, as before.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use nng::Message;
use tracing::{info, warn};

use super::{Outbox, State, Tasks};
use crate::ledger::{LiveTask, Plan};
use crate::server::cache::ResultCache;
use crate::server::endpoint::Replier;
use crate::server::journal::{Progress, Record, Recovered, ResultRecord, TaskRecord};
use crate::wire::protocol::{now_ms, ErrorKind, ErrorReply, Reply, TaskReport, TaskState};

impl State {
    /// Sends `reply` now, or, in durable mode, once every record handed to
    /// the store before it is on disk (a submission is acknowledged only
    /// when its task is stored).
    pub(super) fn acknowledge(&self, replier: crate::server::endpoint::Replier, reply: Reply) {
        let Some(journal) = &self.journal else { return replier.send(&reply) };
        let worker_id = self.config.worker_id.clone();
        let state_dir = journal.path().display().to_string();
        journal.then(move |written| {
            if written {
                return replier.send(&reply);
            }
            let message = format!(
                "'{worker_id}' could not write to its --state-dir {state_dir}, so the submission is not acknowledged (it may still run once); retry later"
            );
            replier.send(&Reply::Error(ErrorReply::new(ErrorKind::Busy, message)));
        });
    }

    /// Queues the final report for the clients waiting for it: in durable
    /// mode, behind the record of the outcome.
    pub(super) fn answer_final(
        &self,
        waiters: Vec<crate::server::endpoint::Replier>,
        message: Message,
        outbox: &mut Outbox,
    ) {
        match &self.journal {
            None => outbox.0.push((waiters, message)),
            Some(journal) => journal.then(move |_| {
                for waiter in waiters {
                    waiter.send_message(message.clone());
                }
            }),
        }
    }

    /// `Busy` when the store's writer is too far behind to take more.
    pub(super) fn journal_has_room(&self) -> Result<(), ErrorReply> {
        match &self.journal {
            Some(journal) if !journal.has_room() => Err(ErrorReply::new(
                ErrorKind::Busy,
                format!(
                    "'{}' is busy: {} changes wait to be written to its --state-dir (the disk is not keeping up); retry later",
                    self.config.worker_id,
                    journal.pending()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Records a task just accepted (`later`: its countdown or ETA).
    pub(super) fn record_accepted(&self, task: &LiveTask<Replier>, later: Option<u64>) {
        let Some(journal) = &self.journal else { return };
        let record = TaskRecord {
            task_name: task.report.task_name.clone(),
            args: task.args.to_vec(),
            priority: task.report.priority,
            created_ms: task.report.created_ms,
            not_before_ms: later,
            timeout_ms: task.plan.timeout_ms,
            retry: task.plan.retry,
            callback: task.plan.callback.clone(),
            attempts: task.report.attempts,
            owner: task.owner,
        };
        journal.write(Record::Accepted(task.report.task_id, Box::new(record)));
    }

    /// Records that a task started a run, or waits for a retry due at `retry_at_ms`.
    pub(super) fn record_progress(&self, task: &LiveTask<Replier>, retry_at_ms: Option<u64>) {
        let Some(journal) = &self.journal else { return };
        let progress = Progress {
            attempts: task.report.attempts,
            failures: task.failures,
            retry_at_ms,
            error: retry_at_ms.and(task.report.error.clone()),
        };
        journal.write(Record::Progress(task.report.task_id, progress));
    }

    /// Records how a task ended.
    pub(super) fn record_finished(&self, report: &TaskReport, args_digest: [u8; 16]) {
        let Some(journal) = &self.journal else { return };
        journal.write(Record::Finished(Box::new(ResultRecord { report: report.clone(), args_digest })));
    }

    /// Deletes from the store the results the cache dropped.
    pub(super) fn forget_dropped(&self, cache: &mut ResultCache) {
        let Some(journal) = &self.journal else { return };
        let forgotten = cache.take_forgotten();
        if !forgotten.is_empty() {
            journal.write(Record::Forget(forgotten));
        }
    }

    /// At a durable shutdown, tasks still running are left in the store:
    /// they run again after the restart. Their waiting clients are told so.
    pub(super) fn leave_for_restart(&self, left: Vec<LiveTask<Replier>>) {
        for task in left {
            let task_id = task.report.task_id;
            task.cancelled.store(true, Ordering::SeqCst);
            let reply = Reply::Error(ErrorReply::new(
                ErrorKind::ShuttingDown,
                format!(
                    "'{}' shut down before task '{}' ({task_id}) ended; it is kept in --state-dir and runs when the control plane restarts there: ask its status then",
                    self.config.worker_id, task.report.task_name
                ),
            ));
            for waiter in task.waiters {
                waiter.send(&reply);
            }
        }
        if let Some(journal) = &self.journal {
            journal.close();
        }
    }

    /// Writes what is pending and closes the store (at shutdown).
    pub(crate) fn close_journal(&self) {
        if let Some(journal) = &self.journal {
            journal.close();
        }
    }

    /// Takes up what a durable store held at start-up: results go back to
    /// the cache (those past their TTL are dropped), tasks that had not
    /// started are queued or scheduled again, tasks that were running (here
    /// or on a subworker) run again with their next run number, and retries
    /// wait for their time. Called before any port serves.
    pub(crate) fn restore(self: &Arc<Self>, recovered: Recovered) {
        let now = now_ms();
        let mut cache = self.cache.lock().expect("cache lock");
        for result in recovered.results {
            let age = now.saturating_sub(result.report.finished_ms.unwrap_or(now));
            cache.insert_aged(result.report, result.args_digest, Duration::from_millis(age));
        }
        let results = cache.len();
        self.forget_dropped(&mut cache);
        drop(cache);
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let (mut queued, mut rerun, mut waiting_for_time, mut for_subworkers) = (0, 0, 0, 0);
        let workflows = recovered.workflows;
        for (task_id, record, progress) in recovered.tasks {
            if tasks.ledger.get(&task_id).is_some() {
                continue;
            }
            let mut report = super::new_report(task_id, record.task_name, record.priority, record.created_ms);
            report.attempts = record.attempts;
            let mut failures = 0;
            let mut retry_at = None;
            if let Some(progress) = progress {
                if progress.attempts > record.attempts && progress.retry_at_ms.is_none() {
                    rerun += 1;
                }
                report.attempts = progress.attempts;
                report.error = progress.error;
                failures = progress.failures;
                retry_at = progress.retry_at_ms;
            }
            let started = report.attempts > record.attempts || retry_at.is_some();
            let scheduled = record.not_before_ms.filter(|&at| at > now && !started);
            let due = retry_at.or(scheduled);
            if retry_at.is_some() {
                report.state = TaskState::Retrying;
            } else if scheduled.is_some() {
                report.state = TaskState::Scheduled;
            }
            let plan = Plan { timeout_ms: record.timeout_ms, retry: record.retry, callback: record.callback };
            let mut task = LiveTask::new(report, record.args, plan, record.owner);
            task.failures = failures;
            self.monitor.accepted(&task.report);
            if due.is_some() {
                waiting_for_time += 1;
            } else if tasks.ledger.runs_here(&task.report.task_name) {
                queued += 1;
            } else {
                // Only subworkers provide it: it waits for one to register.
                for_subworkers += 1;
            }
            self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.restore(task, due, now, io));
        }
        drop(tasks);
        outbox.deliver();
        info!(
            results,
            queued,
            rerun,
            waiting_for_time,
            for_subworkers,
            "durable mode: accepted tasks taken up again after the restart"
        );
        self.restore_workflows(workflows);
        if for_subworkers > 0 {
            self.settle_stranded_later();
        }
    }

    /// Tasks restored for subworkers wait for them to register again; those
    /// nobody provides after `--inactive-after` run here or fail, saying so.
    fn settle_stranded_later(self: &Arc<Self>) {
        let grace = self.config.management.as_ref().map_or(Duration::from_secs(30), |m| m.inactive_after);
        let state: Weak<State> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("restore-grace".into()).spawn(move || {
            std::thread::sleep(grace);
            let Some(state) = state.upgrade() else { return };
            let mut outbox = Outbox::default();
            let mut tasks: std::sync::MutexGuard<'_, Tasks> = state.lock();
            state.settle_stranded(&mut tasks, "no subworker providing it registered after the restart", &mut outbox);
            drop(tasks);
            outbox.deliver();
        });
        if let Err(error) = spawned {
            warn!(%error, "could not start the thread that settles restored tasks nobody provides");
        }
    }
}
