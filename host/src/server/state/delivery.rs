//! The serving side of delivery (the rules are the ledger's, in
//! `ledger/delivery.rs`): a subworker's start reports, gathered and sent
//! to its control plane; a stopping subworker's hand-backs; revocations
//! a control plane sends; and the restart window, in which a control plane
//! answers a task nobody provides yet with the transient
//! [`ErrorKind::NotYetProvided`] while its subworkers register again.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;
use tracing::{debug, info};

use super::{Caller, Outbox, State};
use crate::wire::protocol::{now_ms, ErrorKind, ErrorReply, Reply, Started, TaskId, WorkerName};

/// How long a subworker gathers start reports before sending them: runs
/// that end within it are not reported started at all (their outcome says
/// enough), so short tasks cost no extra message.
pub(crate) const START_REPORT_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// What delivery counted, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct DeliveryCounters {
    /// Reports (starts and outcomes) of runs whose lease had been revoked.
    pub(crate) revoked_reports: AtomicU64,
    /// Tasks stopping subworkers handed back unstarted (on a control plane).
    pub(crate) handed_back: AtomicU64,
    /// Leases revoked because a run was not reported in time.
    pub(crate) leases_expired: AtomicU64,
}

/// On a subworker: the runs started and not yet reported to the control
/// plane. Worker threads push; the membership loop takes them in batches.
#[derive(Default)]
pub(crate) struct StartedRuns {
    runs: Mutex<Vec<(TaskId, u64)>>,
    ready: Notify,
}

impl StartedRuns {
    fn push(&self, task_id: TaskId, lease: u64) {
        self.runs.lock().expect("started runs lock").push((task_id, lease));
        self.ready.notify_one();
    }

    /// Runs taken and not reported after all: the next take has them.
    pub(crate) fn put_back(&self, mut runs: Vec<(TaskId, u64)>) {
        let mut held = self.runs.lock().expect("started runs lock");
        runs.append(&mut held);
        *held = runs;
    }

    /// Every run started since the last call.
    pub(crate) fn take(&self) -> Vec<(TaskId, u64)> {
        std::mem::take(&mut *self.runs.lock().expect("started runs lock"))
    }

    /// Waits until a run has started since the last [`StartedRuns::take`].
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }
}

/// The refusal of a task nobody provides while the restart window is open.
fn not_yet_provided(task_name: &str, elapsed_ms: u128, window_ms: u128) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::NotYetProvided,
        format!(
            "no worker provides task '{task_name}' yet: this control plane started {:.1} s ago and waits up to {:.1} s (--restart-window) for its subworkers to register; retry shortly",
            elapsed_ms as f64 / 1000.0,
            window_ms as f64 / 1000.0
        ),
    )
}

impl State {
    /// While the restart window is open, the transient refusal of a task
    /// nobody provides; `None` once it has closed (or on a subworker).
    pub(super) fn restart_window_refusal(&self, task_name: &str) -> Option<ErrorReply> {
        let window = self.config.management.as_ref()?.restart_window;
        let elapsed = Instant::now().checked_duration_since(self.started_at)?;
        (elapsed < window).then(|| not_yet_provided(task_name, elapsed.as_millis(), window.as_millis()))
    }

    /// On a subworker: the runs started since the last call that are still
    /// running, to report to the control plane.
    pub(crate) fn take_started(&self) -> Vec<(TaskId, u64)> {
        let mut runs = self.started_runs.take();
        if !runs.is_empty() {
            let tasks = self.lock();
            runs.retain(|(task_id, _)| tasks.ledger.get(task_id).is_some());
        }
        runs
    }

    /// On a subworker: notes that run `task_id`, sent under `lease`, starts.
    pub(super) fn report_started(&self, task_id: TaskId, lease: Option<u64>) {
        if let Some(lease) = lease {
            self.started_runs.push(task_id, lease);
        }
    }

    /// On a subworker: hands the tasks among `unstarted` it has not started
    /// back to whoever sent them, at once (`why`: it stops, or its control
    /// plane asked for them); one started meanwhile runs as sent.
    pub(crate) fn hand_back_unstarted(&self, unstarted: Vec<TaskId>, why: &str) {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let mut count = 0u64;
        for task_id in unstarted {
            let Some(task) = tasks.ledger.take_unstarted(&task_id) else { continue };
            count = count.saturating_add(1);
            let reply = Reply::Error(ErrorReply::new(
                ErrorKind::HandedBack,
                format!(
                    "'{}' hands back task '{}' ({}), which it has not started ({why}): run it elsewhere",
                    self.config.worker_id, task.report.task_name, task_id
                ),
            ));
            if !task.waiters.is_empty() {
                outbox.0.push((task.waiters, crate::server::endpoint::encode_reply(&reply)));
            }
        }
        drop(tasks);
        if count > 0 {
            info!(count, "handed back tasks not started: {why}");
        }
        outbox.deliver();
    }

    /// On a subworker: its control plane took these tasks back; they stop
    /// here (a queued one never starts, a running one is asked to stop).
    pub(crate) fn revoke(&self, task_ids: &[TaskId], caller: Caller) {
        let live = task_ids.iter().filter(|id| self.is_live(**id)).count();
        for task_id in task_ids {
            self.cancel(*task_id, caller, None);
        }
        info!(count = task_ids.len(), still_here = live, "the control plane took back tasks sent here: they stop");
    }

    /// On a control plane: a subworker reports runs it started. A run
    /// under its current lease gets its start time and a bound on its
    /// report; any other is discarded and counted.
    pub(crate) fn on_started(&self, started: &Started) -> Reply {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let key = match tasks.ledger.cluster().find(&started.name.worker_id) {
            Some(worker) if worker.name == started.name => worker.key,
            _ => return unknown_worker(&started.name),
        };
        let reports =
            self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.started(key, &started.runs, now_ms(), io));
        if self.config.is_subworker() {
            // A subworker's own worker process started runs its control
            // plane sent: they are reported to it in turn.
            for (task_id, _) in &started.runs {
                if let Some(lease) = tasks.ledger.get(task_id).and_then(|task| task.lease) {
                    self.report_started(*task_id, Some(lease));
                }
            }
        }
        drop(tasks);
        outbox.deliver();
        if reports.revoked > 0 {
            debug!(revoked = reports.revoked, worker = %started.name.worker_id, "discarded start reports under revoked leases");
        }
        Reply::Done
    }
}

fn unknown_worker(name: &WorkerName) -> Reply {
    super::error_reply(
        ErrorKind::UnknownWorker,
        format!(
            "this control plane does not know subworker '{}' (it restarted, or forgot the worker after a long silence): register again",
            name.worker_id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_runs_put_back_unsent_come_first_in_the_next_take() {
        let started = StartedRuns::default();
        let (a, b) = (TaskId::new_v4(), TaskId::new_v4());
        started.push(a, 1);
        let taken = started.take();
        assert_eq!(taken, vec![(a, 1)]);
        started.push(b, 2);
        started.put_back(taken);
        assert_eq!(started.take(), vec![(a, 1), (b, 2)]);
        assert!(started.take().is_empty());
    }
}
