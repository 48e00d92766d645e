//! Delivery: every accepted task reaches exactly one recorded outcome.
//!
//! * **Leases.** Each run the control plane sends a subworker carries a
//!   lease, a fencing token. When the control plane takes a task back (its
//!   worker went silent, did not report the run started or ended in time,
//!   or went away) the lease is revoked; whatever that run reports later,
//!   its start or its outcome, is discarded and counted.
//! * **Timeouts from the start.** A run's timeout is kept by the subworker
//!   from the moment it starts the run, which it reports (`Started`); the
//!   control plane only bounds how long it waits for those reports.
//! * **Hand-backs.** A stopping subworker hands back at once every task it
//!   has not started; the control plane sends it elsewhere, or keeps it
//!   queued while a draining worker still provides it, without counting a
//!   run.
//! * **The restart window.** For a while after it starts, a control plane
//!   answers a task nobody provides yet with the transient
//!   [`ErrorKind::NotYetProvided`], while its subworkers register again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::{Caller, Job, Outbox, State, Tasks};
use crate::cluster::routing::{Phase, WorkerKey};
use crate::server::timers::Alarm;
use crate::wire::protocol::{
    encode_message, now_ms, ErrorKind, ErrorReply, Reply, Request, Started, TaskId, TaskState, WorkerName,
};

/// How long a subworker gathers start reports before sending them: runs
/// that end within it are not reported started at all (their outcome says
/// enough), so short tasks cost no extra message.
pub(crate) const START_REPORT_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// How long past a run's timeout the control plane waits for the
/// subworker's report (which it sends at its own deadline) before taking
/// the task back.
pub(crate) const REPORT_GRACE_MS: u64 = 2_000;

/// A run sent to a subworker, as the control plane keeps it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dispatched {
    /// The worker it went to.
    pub(crate) key: WorkerKey,
    /// Its lease.
    pub(crate) lease: u64,
    /// The timeout the subworker keeps for it, in milliseconds.
    pub(crate) timeout_ms: u64,
    /// When it must have been reported started (ms since the Unix epoch).
    pub(crate) start_by_ms: u64,
    /// Once reported started: when it must have been reported ended.
    pub(crate) report_by_ms: Option<u64>,
}

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
    /// The next lease of this control plane.
    pub(super) fn next_lease(tasks: &mut Tasks) -> u64 {
        tasks.next_lease = tasks.next_lease.checked_add(1).expect("2^64 leases");
        tasks.next_lease
    }

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
            runs.retain(|(task_id, _)| tasks.live.contains_key(task_id));
        }
        runs
    }

    /// On a subworker: notes that run `task_id`, sent under `lease`, starts.
    pub(super) fn report_started(&self, task_id: TaskId, lease: Option<u64>) {
        if let Some(lease) = lease {
            self.started_runs.push(task_id, lease);
        }
    }

    /// On a subworker that stops: hands every task it has not started back
    /// to whoever sent it, at once, instead of failing it at the deadline.
    pub(super) fn hand_back_unstarted(&self, unstarted: Vec<Job>) {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let mut count = 0u64;
        for job in unstarted {
            let Some(task) = tasks.live.remove(&job.task_id) else { continue };
            tasks.live_bytes = tasks.live_bytes.saturating_sub(task.args.len() as u64);
            count = count.saturating_add(1);
            let reply = Reply::Error(ErrorReply::new(
                ErrorKind::HandedBack,
                format!(
                    "'{}' is stopping and hands back task '{}' ({}), which it has not started: run it elsewhere",
                    self.config.worker_id, task.report.task_name, job.task_id
                ),
            ));
            if !task.waiters.is_empty() {
                outbox.0.push((task.waiters, crate::server::endpoint::encode_reply(&reply)));
            }
        }
        drop(tasks);
        if count > 0 {
            warn!(count, "stopping: handed back the tasks not started");
        }
        outbox.deliver();
    }

    /// On a subworker: its control plane took these tasks back; they stop
    /// here (a queued one never starts, a running one is asked to stop).
    pub(crate) fn revoke(&self, task_ids: &[TaskId], caller: Caller) {
        let live = task_ids.iter().filter(|id| self.is_live(**id)).count();
        for task_id in task_ids {
            let _ = self.cancel(*task_id, caller);
        }
        info!(count = task_ids.len(), still_here = live, "the control plane took back tasks sent here: they stop");
    }

    /// On a control plane: tells a worker still connected that these runs
    /// were taken back, so that it does not run them for nothing (best
    /// effort: their reports are discarded anyway).
    pub(super) fn tell_revoked(&self, tasks: &Tasks, key: WorkerKey, task_ids: Vec<TaskId>) {
        if task_ids.is_empty() {
            return;
        }
        if let Some(worker) = tasks.cluster.get(key).filter(|w| w.connected) {
            worker.link.note(encode_message(&Request::Revoke { task_ids }));
        }
    }

    /// On a control plane: a subworker reports runs it started. A run
    /// under its current lease gets its start time and a bound on its
    /// report; any other is discarded and counted.
    pub(crate) fn on_started(&self, started: &Started) -> Reply {
        let mut tasks = self.lock();
        let key = match tasks.cluster.find(&started.name.worker_id) {
            Some(worker) if worker.name == started.name => worker.key,
            _ => return unknown_worker(&started.name),
        };
        let now = now_ms();
        let mut revoked = 0u64;
        for &(task_id, lease) in &started.runs {
            // A run that already ended (a short task's outcome can arrive
            // before its start report): nothing to do.
            let Some(task) = tasks.live.get_mut(&task_id) else { continue };
            match &mut task.dispatch {
                Some(dispatch)
                    if dispatch.lease == lease
                        && dispatch.key == key
                        && dispatch.report_by_ms.is_none()
                        && task.report.state == TaskState::Running =>
                {
                    task.report.started_ms = Some(now);
                    self.monitor.changed(&task.report);
                    let due = now.saturating_add(dispatch.timeout_ms).saturating_add(REPORT_GRACE_MS);
                    // The lease's alarm, set at dispatch for its timeout from
                    // then, rings before this and is set again for it.
                    dispatch.report_by_ms = Some(due);
                }
                Some(dispatch) if dispatch.lease == lease => {}
                _ => revoked += 1,
            }
        }
        drop(tasks);
        if revoked > 0 {
            self.delivery.revoked_reports.fetch_add(revoked, Ordering::Relaxed);
            debug!(revoked, worker = %started.name.worker_id, "discarded start reports under revoked leases");
        }
        Reply::Done
    }

    /// Counts a report that arrived under a revoked lease (and is dropped).
    pub(super) fn revoked_report(&self, worker_id: &str) {
        self.delivery.revoked_reports.fetch_add(1, Ordering::Relaxed);
        debug!(worker = %worker_id, "discarded a run's report: its lease was revoked and the task sent elsewhere");
    }

    /// A lease's alarm rang: if its run is still the current one and was
    /// not reported started (or, once started, ended) in time, the lease is
    /// revoked and the task sent elsewhere.
    pub(super) fn lease_due(&self, tasks: &mut Tasks, task_id: TaskId, lease: u64, outbox: &mut Outbox) {
        let Some(task) = tasks.live.get(&task_id) else { return };
        let Some(dispatch) = task.dispatch.filter(|d| d.lease == lease) else { return };
        if task.report.state != TaskState::Running {
            return;
        }
        let now = now_ms();
        let due = match dispatch.report_by_ms {
            Some(report_by) => report_by,
            None if now >= dispatch.start_by_ms => dispatch.start_by_ms,
            // Not started yet (queued there): look again a timeout later,
            // so that alarms live about as long as runs, not the bound.
            None => {
                let again = now.saturating_add(dispatch.timeout_ms).saturating_add(REPORT_GRACE_MS);
                return self.timers.set(again.min(dispatch.start_by_ms), Alarm::Lease(task_id, lease));
            }
        };
        if now < due {
            // Started since the alarm was set: its end is due later.
            return self.timers.set(due, Alarm::Lease(task_id, lease));
        }
        let worker_id = tasks.cluster.get(dispatch.key).map(|w| w.name.worker_id.clone()).unwrap_or_default();
        let why = if dispatch.report_by_ms.is_some() {
            format!(
                "subworker '{worker_id}' did not report the run within {} s of its start (its timeout plus {} s)",
                dispatch.timeout_ms as f64 / 1000.0,
                REPORT_GRACE_MS as f64 / 1000.0
            )
        } else {
            format!(
                "subworker '{worker_id}' did not report the run started within {} s (--max-subworker-run)",
                self.config.limits.max_subworker_run.as_secs_f64()
            )
        };
        self.delivery.leases_expired.fetch_add(1, Ordering::Relaxed);
        tasks.cluster.abandon(dispatch.key, task_id);
        self.tell_revoked(tasks, dispatch.key, vec![task_id]);
        self.send_again(tasks, task_id, &why, outbox);
    }

    /// A subworker answered a run with "not started": it is stopping
    /// (`HandedBack`, `ShuttingDown`). The task goes elsewhere, first in
    /// line, and this does not count as a run or a loss.
    pub(super) fn handed_back(
        &self,
        tasks: &mut Tasks,
        key: WorkerKey,
        task_id: TaskId,
        why: &str,
        outbox: &mut Outbox,
    ) {
        if let Some(worker) = tasks.cluster.get_mut(key) {
            if worker.phase == Phase::Active {
                // It said it is stopping, whether or not its Leave arrived.
                worker.phase = Phase::Draining;
            }
        }
        let Some(task) = tasks.live.get_mut(&task_id) else { return };
        if task.report.state != TaskState::Running {
            return;
        }
        self.delivery.handed_back.fetch_add(1, Ordering::Relaxed);
        // The run never started: it does not count.
        task.report.attempts = task.report.attempts.saturating_sub(1);
        if let Some(dispatch) = task.dispatch.take() {
            self.timers.cancel(Alarm::Lease(task_id, dispatch.lease));
        }
        debug!(%task_id, "a stopping subworker handed the task back: {why}");
        self.start(tasks, task_id, true, why, outbox);
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
