//! The durable mode's restart: what the store held at start-up is taken up
//! again (results back into the cache, tasks into the ledger), and at a
//! durable shutdown what has not ended is left in the store for the next
//! start.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::{Outbox, State};
use crate::ledger::{LiveTask, Plan};
use crate::server::cache::Lookup;
use crate::server::endpoint::Replier;
use crate::server::journal::Recovered;
use crate::wire::protocol::{now_ms, ErrorKind, ErrorReply, Reply, TaskId, TaskState};

impl State {
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
        self.durable.close();
    }

    /// The failure of a task whose runs were under way `count` times when
    /// this process ended, if that reached `--max-task-crashes`.
    pub(super) fn crashed_too_often(&self, count: u32) -> Option<String> {
        let max = self.config.management.as_ref().map(|m| m.max_task_crashes.max(1))?;
        (count >= max).then(|| {
            format!(
                "its run was under way when control plane '{}' ended, {count} times in all (--max-task-crashes {max}): with --in-process its code may have killed it, so it is not run again",
                self.config.worker_id,
            )
        })
    }

    /// Writes what is pending and closes the store (at shutdown).
    pub(crate) fn close_journal(&self) {
        self.durable.close();
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
        self.durable.forget_dropped(&mut cache);
        drop(cache);
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let (mut queued, mut rerun, mut waiting_for_time, mut for_subworkers) = (0, 0, 0, 0);
        let workflows = recovered.workflows;
        // A run that was under way on the process's own threads
        // (--in-process) when it ended may have killed it.
        let under_way: rustc_hash::FxHashSet<TaskId> = recovered.under_way.iter().copied().collect();
        let stored: rustc_hash::FxHashSet<TaskId> = recovered.tasks.iter().map(|(task_id, ..)| *task_id).collect();
        let mut crashed = Vec::new();
        for (task_id, record, progress) in recovered.tasks {
            if tasks.ledger.get(&task_id).is_some() {
                continue;
            }
            let mut report = super::new_report(task_id, record.task_name, record.priority, record.created_ms);
            report.attempts = record.attempts;
            let mut failures = 0;
            let mut retry_at = None;
            let mut crashes = recovered.crashes.get(&task_id).copied().unwrap_or(0);
            if under_way.contains(&task_id) {
                crashes = crashes.saturating_add(1);
                self.durable.record_crashes(task_id, crashes);
                if let Some(message) = self.crashed_too_often(crashes) {
                    crashed.push((task_id, crashes, message));
                }
            }
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
            task.crashes = crashes;
            self.monitor.accepted(&task.report);
            if due.is_some() {
                waiting_for_time += 1;
            } else if tasks.ledger.runs_here(&task.report.task_name) {
                queued += 1;
            } else {
                // Only subworkers provide it: it waits for one to register
                // (within --provider-grace).
                for_subworkers += 1;
            }
            self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.restore(task, due, now, io));
        }
        // Those whose runs ended their process too often end `Crashed`
        // instead of running again.
        for (task_id, count, message) in crashed {
            tracing::error!(%task_id, crashes = count, "task failed as Crashed at the restart: {message}");
            self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.crashed(task_id, message, now, io));
        }
        // A run under way whose task was not stored (a blocking call that
        // ended the process within the commit window) counts too, kept by
        // its id for a submission under it; so are the counts of earlier
        // restarts that no submission took yet.
        for (task_id, count) in recovered.crashes.iter().filter(|(task_id, _)| !stored.contains(task_id)) {
            tasks.unstored_crashes.insert(*task_id, *count);
        }
        for task_id in recovered.under_way.iter().filter(|task_id| !stored.contains(task_id)) {
            if matches!(self.cached(*task_id).0, Lookup::Found(_)) {
                continue;
            }
            let count = tasks.unstored_crashes.get(task_id).copied().unwrap_or(0).saturating_add(1);
            tracing::warn!(%task_id, crashes = count, "a run under way when the control plane ended had no stored task (a blocking call within the commit window): its crash counts against a submission under its id");
            self.durable.record_crashes(*task_id, count);
            tasks.unstored_crashes.insert(*task_id, count);
        }
        // Once the crashes are stored, the marks that gave them go, before
        // any run (each waits for this lock) marks its own.
        self.durable.forget_under_way_before();
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
    }
}
