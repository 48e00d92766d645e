//! Delivery: every accepted task reaches exactly one recorded outcome.
//!
//! * **Leases.** Each run sent to a subworker carries a lease, a fencing
//!   token. When the ledger takes a task back (its worker went silent, did
//!   not report the run started or ended in time, or went away) the lease
//!   is revoked; whatever that run reports later, its start or its
//!   outcome, is discarded and counted.
//! * **Timeouts from the start.** A run's timeout is kept by the subworker
//!   from the moment it starts the run, which it reports; the ledger only
//!   bounds how long it waits for those reports.
//! * **Hand-backs.** A stopping subworker hands back at once every task it
//!   has not started; it goes elsewhere, first in line, or stays queued
//!   while a draining worker still provides it, without counting a run.
//! * **Losses.** A task lost with [`MAX_DISPATCHES`] subworkers fails,
//!   saying it may have run partly.
//! * **Absent providers.** A task to be sent when no live or draining
//!   subworker provides it (a retry, a countdown, a hand-back, a task
//!   taken back or restored after a restart, while its only provider
//!   restarts) waits, queued, for one to come back within the grace
//!   (`--provider-grace`), an alarm; only then does it fail, saying so.

use tracing::{debug, warn};

use super::{Alarm, Counted, Effects, Ledger, LiveTask, MAX_DISPATCHES};
use crate::cluster::routing::{Phase, Waiting, WorkerKey};
use crate::wire::protocol::{Request, TaskId, TaskReport, TaskState};

/// How long past a run's timeout the ledger waits for the subworker's
/// report (which it sends at its own deadline) before taking the task back.
pub(crate) const REPORT_GRACE_MS: u64 = 2_000;

/// A run sent to a subworker, as the ledger keeps it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dispatched {
    /// The worker it went to.
    pub(crate) key: WorkerKey,
    /// Its lease.
    pub(crate) lease: u64,
    /// The timeout the subworker keeps for it, in milliseconds.
    pub(crate) timeout_ms: u64,
    /// Until its dispatch frame is answered: when it must have been
    /// (ms since the Unix epoch).
    pub(crate) answer_by_ms: Option<u64>,
    /// When it must have been reported started (ms since the Unix epoch).
    pub(crate) start_by_ms: u64,
    /// Once reported started: when it must have been reported ended.
    pub(crate) report_by_ms: Option<u64>,
    /// Asked back for this idle worker while sent ahead (`HandBack`):
    /// asked once; its worker hands it back unless it started meanwhile,
    /// and it goes to that idle worker if it still has room.
    pub(crate) asked_back: Option<WorkerKey>,
}

impl<W> LiveTask<W> {
    /// Sent to a subworker (or a worker process) and not yet reported
    /// started there: it holds a place in that worker's prefetch, not a
    /// thread. The dashboard's cards, subworker rows and task rows all
    /// tell running from prefetched by this.
    pub(crate) fn prefetched(&self) -> bool {
        self.report.state == TaskState::Running && self.dispatch.is_some_and(|d| d.report_by_ms.is_none())
    }

    /// Its report as a client reads it (`status`, the HTTP API, a cancel's
    /// answer): a run sent ahead and not started there waits, as it would
    /// in this process's queue, so it reads `Queued`, not started, its run
    /// not counted yet. Only the dashboard shows it `prefetched`.
    pub(crate) fn reported(&self) -> TaskReport {
        let mut report = self.report.clone();
        if self.prefetched() {
            report.state = TaskState::Queued;
            report.started_ms = None;
            report.attempts = report.attempts.saturating_sub(1);
        }
        report
    }

    /// The state of [`LiveTask::reported`], without the copy (a workflow's
    /// members read so too).
    pub(crate) fn reported_state(&self) -> TaskState {
        if self.prefetched() {
            TaskState::Queued
        } else {
            self.report.state
        }
    }
}

/// A task waiting for a provider to come back.
#[derive(Debug)]
pub(crate) struct Absent {
    /// When it fails if none has come (ms since the Unix epoch).
    pub(crate) until_ms: u64,
    /// Why no provider is there.
    pub(crate) why: String,
}

/// What a subworker's start report came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StartReports {
    /// Runs under their current lease, now timed from their start.
    pub(crate) taken: u64,
    /// Runs under a revoked lease: discarded.
    pub(crate) revoked: u64,
}

impl<W, L> Ledger<W, L> {
    /// Event: the subworker of `key` reports runs it started. A run under
    /// its current lease gets its start time and a bound on its report;
    /// any other is discarded and counted.
    pub(crate) fn started(
        &mut self,
        key: WorkerKey,
        runs: &[(TaskId, u64)],
        now: u64,
        io: &mut impl Effects<W, L>,
    ) -> StartReports {
        let mut reports = StartReports::default();
        for &(task_id, lease) in runs {
            // A run that already ended (a short task's outcome can arrive
            // before its start report): nothing to do.
            let Some(task) = self.live.get_mut(&task_id) else { continue };
            match &mut task.dispatch {
                Some(dispatch)
                    if dispatch.lease == lease
                        && dispatch.key == key
                        && dispatch.report_by_ms.is_none()
                        && task.report.state == TaskState::Running =>
                {
                    task.report.started_ms = Some(now);
                    // Started, so received (whatever became of the frame's answer).
                    dispatch.answer_by_ms = None;
                    let due = now.saturating_add(dispatch.timeout_ms).saturating_add(REPORT_GRACE_MS);
                    // The lease's alarm, set at dispatch for its timeout from
                    // then, rings before this and is set again for it.
                    dispatch.report_by_ms = Some(due);
                    io.changed(task);
                    if let Some(waiters) = task.cancelling.take() {
                        // A cancel asked while it was sent ahead came too late:
                        // it runs, asked to stop, and its cancellers hear so.
                        io.answer(waiters, task.reported());
                    }
                    reports.taken += 1;
                }
                // The same run reported started again.
                Some(dispatch) if dispatch.lease == lease && task.report.state == TaskState::Running => {}
                _ => {
                    io.count(Counted::RevokedReport);
                    reports.revoked += 1;
                }
            }
        }
        if reports.taken > 0 {
            self.ask_back_for_idle(io);
        }
        reports
    }

    /// A lease's alarm rang: if its run is still the current one and was
    /// not reported started (or, once started, ended) in time, the lease is
    /// revoked and the task sent elsewhere.
    pub(super) fn lease_due(&mut self, task_id: TaskId, lease: u64, now: u64, io: &mut impl Effects<W, L>) {
        let Some(task) = self.live.get(&task_id) else { return };
        let Some(dispatch) = task.dispatch.filter(|d| d.lease == lease) else { return };
        if task.report.state != TaskState::Running {
            return;
        }
        if let Some(answer_by) = dispatch.answer_by_ms {
            let due = answer_by.min(dispatch.start_by_ms);
            if now < due {
                return io.set_alarm(due, Alarm::Lease(task_id, lease));
            }
            // Not even acknowledged: the frame that carried it is given up.
            if let Some(worker) = self.cluster.get_mut(dispatch.key) {
                io.unanswered(&mut worker.link, task_id);
            }
            let (within_ms, flag) = if answer_by <= dispatch.start_by_ms {
                (self.settings.answer_within_ms, "--reply-timeout")
            } else {
                (self.settings.max_subworker_run_ms, "--max-subworker-run")
            };
            let why = format!(
                "subworker '{}' did not answer the dispatch of the run within {} s ({flag})",
                self.worker_name(dispatch.key),
                within_ms as f64 / 1000.0
            );
            return self.revoke(task_id, dispatch, &why, now, io);
        }
        let due = match dispatch.report_by_ms {
            Some(report_by) => report_by,
            None if now >= dispatch.start_by_ms => dispatch.start_by_ms,
            // Not started yet (queued there): look again a timeout later,
            // so that alarms live about as long as runs, not the bound.
            None => {
                let again = now.saturating_add(dispatch.timeout_ms).saturating_add(REPORT_GRACE_MS);
                return io.set_alarm(again.min(dispatch.start_by_ms), Alarm::Lease(task_id, lease));
            }
        };
        if now < due {
            // Started since the alarm was set: its end is due later.
            return io.set_alarm(due, Alarm::Lease(task_id, lease));
        }
        let worker_id = self.worker_name(dispatch.key);
        let why = if dispatch.report_by_ms.is_some() {
            format!(
                "subworker '{worker_id}' did not report the run within {} s of its start (its timeout plus {} s)",
                dispatch.timeout_ms as f64 / 1000.0,
                REPORT_GRACE_MS as f64 / 1000.0
            )
        } else {
            format!(
                "subworker '{worker_id}' did not report the run started within {} s (--max-subworker-run)",
                self.settings.max_subworker_run_ms as f64 / 1000.0
            )
        };
        self.revoke(task_id, dispatch, &why, now, io);
    }

    /// Revokes a run's lease (it was not reported in time) and sends the
    /// task elsewhere; its worker gets nothing new until it heartbeats.
    fn revoke(&mut self, task_id: TaskId, dispatch: Dispatched, why: &str, now: u64, io: &mut impl Effects<W, L>) {
        io.count(Counted::LeaseExpired);
        self.cluster.abandon(dispatch.key, task_id);
        self.tell_revoked(dispatch.key, vec![task_id], io);
        self.send_again(task_id, why, now, io);
    }

    /// Tells a worker still connected that these runs were taken back, so
    /// that it does not run them for nothing (best effort: their reports
    /// are discarded anyway).
    fn tell_revoked(&self, key: WorkerKey, task_ids: Vec<TaskId>, io: &mut impl Effects<W, L>) {
        if task_ids.is_empty() {
            return;
        }
        if let Some(worker) = self.cluster.get(key).filter(|w| w.connected) {
            io.note(&worker.link, Request::Revoke { task_ids });
        }
    }

    /// A subworker answered a run with "not started": it is stopping
    /// (`HandedBack`). The task goes elsewhere, first in line, and this
    /// does not count as a run or a loss.
    pub(super) fn handed_back(
        &mut self,
        key: WorkerKey,
        task_id: TaskId,
        why: &str,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        let asked_for =
            self.live.get(&task_id).and_then(|t| t.dispatch).filter(|d| d.key == key).and_then(|d| d.asked_back);
        if let Some(worker) = self.cluster.get_mut(key).filter(|_| asked_for.is_none()) {
            if worker.phase == Phase::Active {
                // It said it is stopping, whether or not its Leave arrived.
                worker.phase = Phase::Draining;
            }
        }
        if self.live.get(&task_id).is_some_and(|task| task.report.state == TaskState::Running) {
            io.count(Counted::HandedBack);
            debug!(%task_id, "a subworker handed the task back: {why}");
            // Asked back for an idle worker: it goes there if it has room.
            let slot = asked_for.and_then(|idle| Some((idle, self.cluster.take_slot(idle, task_id)?)));
            match slot {
                Some((idle, slot)) => {
                    self.hand_back_to(task_id, idle, slot, now, io);
                    self.flush_worker(idle, now, io);
                }
                None => self.hand_back(task_id, why, now, io),
            }
        }
    }

    /// A run that never started comes back and goes to `slot` of worker
    /// `key`, taken for it; it counts neither as a run nor as a loss.
    fn hand_back_to(&mut self, task_id: TaskId, key: WorkerKey, slot: usize, now: u64, io: &mut impl Effects<W, L>) {
        if self.unsent(task_id, io) {
            self.queue_for_worker(key, slot, task_id, now, io);
        } else {
            self.cluster.release(key, slot, Some(task_id));
        }
    }

    /// A run that never started comes back: it goes elsewhere, first in
    /// line, and counts neither as a run nor as a loss.
    fn hand_back(&mut self, task_id: TaskId, why: &str, now: u64, io: &mut impl Effects<W, L>) {
        if self.unsent(task_id, io) {
            self.start(task_id, true, why, now, io);
        }
    }

    /// Undoes the dispatch of a run that never started: it neither counts
    /// as a run nor shows a start, and its lease guards nothing. `false`
    /// for a task no longer live.
    fn unsent(&mut self, task_id: TaskId, io: &mut impl Effects<W, L>) -> bool {
        let Some(task) = self.live.get_mut(&task_id) else { return false };
        task.report.attempts = task.report.attempts.saturating_sub(1);
        task.report.started_ms = None;
        if let Some(dispatch) = task.dispatch.take() {
            io.cancel_alarm(Alarm::Lease(task_id, dispatch.lease));
        }
        true
    }

    /// Event: a task's subworker went away while running it. It goes to
    /// another capable worker, first in line, or fails after
    /// [`MAX_DISPATCHES`] losses or when nobody provides it.
    pub(crate) fn send_again(&mut self, task_id: TaskId, why: &str, now: u64, io: &mut impl Effects<W, L>) {
        let Some(task) = self.live.get_mut(&task_id) else { return };
        if task.report.state != TaskState::Running {
            return;
        }
        task.losses += 1;
        if task.losses >= MAX_DISPATCHES {
            let message = format!(
                "task '{}' was sent to subworkers {} times and each went away before finishing it (last: {why}); it may have run partly; submit it again",
                task.report.task_name, task.losses
            );
            warn!(%task_id, losses = task.losses, "giving up on a task: {why}");
            return self.fail(task_id, message, now, io);
        }
        warn!(%task_id, task = %task.report.task_name, "sending the task again: {why}");
        self.start(task_id, true, why, now, io);
    }

    /// Event: a subworker went silent or its connection broke. Every task
    /// it carries is taken back (their leases revoked) and sent elsewhere,
    /// and waiting tasks nobody provides now are settled. A silent worker's
    /// exchanges stay open, so that what it reports if it wakes up is seen
    /// and discarded; a lost connection's are cancelled. The runs a worker
    /// process of this control plane had not reported started come back
    /// uncounted: its run log charges the crash to the runs it was
    /// executing, whether or not their start was reported.
    pub(crate) fn take_back(&mut self, key: WorkerKey, why: &str, now: u64, io: &mut impl Effects<W, L>) {
        let connected = self.cluster.get(key).is_some_and(|w| w.connected);
        let logged = self.cluster.get(key).is_some_and(|w| self.worker_processes.contains(&w.name.worker_id));
        let carried = self.cluster.take_back(key);
        self.tell_revoked(key, carried.iter().map(|(_, task_id)| *task_id).collect(), io);
        if !connected {
            if let Some(worker) = self.cluster.get_mut(key) {
                io.reset(&mut worker.link);
            }
            self.cluster.free_abandoned(key);
        }
        let mut carried: Vec<TaskId> = carried.into_iter().map(|(_, task_id)| task_id).collect();
        // Oldest first, as they were accepted: a free slot elsewhere takes
        // the oldest, and those that wait keep their order in the line.
        carried.sort_by_key(|task_id| self.live.get(task_id).map(|task| task.report.created_ms));
        for task_id in carried {
            if logged && self.live.get(&task_id).is_some_and(LiveTask::prefetched) {
                debug!(%task_id, "a worker process went away before starting the task: {why}");
                self.hand_back(task_id, why, now, io);
            } else {
                self.send_again(task_id, why, now, io);
            }
        }
        self.settle_stranded(why, now, io);
    }

    /// Event: the connection to a subworker failed. It is marked
    /// disconnected and what it carried goes elsewhere.
    pub(crate) fn link_broken(&mut self, key: WorkerKey, why: &str, now: u64, io: &mut impl Effects<W, L>) {
        self.cluster.disconnected(key);
        self.take_back(key, why, now, io);
    }

    /// A subworker left (its carried tasks are given): they go elsewhere,
    /// and waiting tasks nobody provides now are settled.
    pub(super) fn worker_left(&mut self, mut carried: Vec<TaskId>, why: &str, now: u64, io: &mut impl Effects<W, L>) {
        // Oldest first, as in `take_back`.
        carried.sort_by_key(|task_id| self.live.get(task_id).map(|task| task.report.created_ms));
        for task_id in carried {
            self.send_again(task_id, why, now, io);
        }
        self.settle_stranded(why, now, io);
    }

    /// Waiting tasks that no live subworker provides run here or wait for
    /// a provider to come back.
    pub(crate) fn settle_stranded(&mut self, why: &str, now: u64, io: &mut impl Effects<W, L>) {
        for waiting in self.cluster.stranded() {
            self.run_here_or_wait(waiting.task_id, false, why, now, io);
        }
    }

    /// A queued task nobody provides now waits in line for a provider to
    /// come back, until the grace is over (an alarm); with no grace it
    /// fails at once.
    pub(super) fn await_provider(
        &mut self,
        task_id: TaskId,
        first: bool,
        why: &str,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        let grace_ms = self.settings.provider_grace_ms;
        let Some(task) = self.live.get_mut(&task_id) else { return };
        let why = if why.is_empty() { "no live subworker provides it" } else { why };
        if grace_ms == 0 {
            let message = gone(&task.report.task_name, why, None);
            return self.fail(task_id, message, now, io);
        }
        task.report.state = TaskState::Queued;
        let priority = task.report.priority;
        let waiting = Waiting { task_id, task_name: task.report.task_name.clone() };
        if task.absent.is_none() {
            // The grace runs from the moment its provider was first missed.
            let until_ms = now.saturating_add(grace_ms);
            task.absent = Some(Box::new(Absent { until_ms, why: why.to_string() }));
            io.set_alarm(until_ms, Alarm::Provider(task_id));
            debug!(%task_id, task = %waiting.task_name, grace_ms, "no provider now: the task waits for one ({why})");
        }
        self.cluster.wait(priority, waiting, super::place(first, task.report.created_ms));
    }

    /// The grace of a task waiting for a provider is over: it fails if it
    /// still waits and no live or draining subworker provides it now, with
    /// every other waiting task whose grace is over (one pass over the line).
    pub(super) fn provider_due(&mut self, task_id: TaskId, now: u64, io: &mut impl Effects<W, L>) {
        let Some(task) = self.live.get_mut(&task_id) else { return };
        if task.absent.is_none() {
            return;
        }
        if task.report.state != TaskState::Queued || self.cluster.provides(&task.report.task_name) {
            // A provider is back: it waits for a slot like any other task.
            task.absent = None;
            return;
        }
        let over = |task: &LiveTask<W>| task.absent.as_ref().is_some_and(|absent| absent.until_ms <= now);
        for waiting in self.cluster.stranded() {
            match self.live.get(&waiting.task_id) {
                Some(task) if over(task) => self.give_up(waiting.task_id, now, io),
                Some(_) => self.run_here_or_wait(waiting.task_id, false, "", now, io),
                None => {}
            }
        }
        if self.live.get(&task_id).is_some_and(over) {
            self.give_up(task_id, now, io);
        }
    }

    /// Fails a task that waited the grace for a provider, saying so.
    fn give_up(&mut self, task_id: TaskId, now: u64, io: &mut impl Effects<W, L>) {
        let Some(task) = self.live.get_mut(&task_id) else { return };
        let Some(absent) = task.absent.take() else { return };
        io.cancel_alarm(Alarm::Provider(task_id));
        let message = gone(&task.report.task_name, &absent.why, Some(self.settings.provider_grace_ms));
        warn!(%task_id, task = %task.report.task_name, "no provider came back within the grace: the task fails");
        self.fail(task_id, message, now, io);
    }
}

/// The failure of a task nobody provides any more (after `grace_ms`, if
/// it waited).
fn gone(task_name: &str, why: &str, grace_ms: Option<u64>) -> String {
    let waited = grace_ms.map_or_else(String::new, |ms| {
        format!(" and none came back within {} s (--provider-grace)", ms as f64 / 1000.0)
    });
    format!("no worker provides task '{task_name}' any more ({why}){waited}; submit it again when one does")
}
