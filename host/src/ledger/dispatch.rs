//! Runs on subworkers: a run goes into a free slot under a fresh lease, in
//! the worker's next dispatch frame; the frame's answer and the outcomes
//! the worker sends back settle the runs whose lease is still current.

use crate::wire::protocol::FailureKind;
use tracing::{debug, warn};

use super::{Alarm, Counted, Dispatched, Effects, Ending, Ledger, Taken, REPORT_GRACE_MS};
use crate::cluster::routing::{Slot, Worker, WorkerKey};
use crate::wire::protocol::{decode, ErrorKind, Forwarded, Reply, Reported, Request, TaskError, TaskId, TaskState};

/// What a subworker answered a dispatch frame with.
#[derive(Debug)]
pub(crate) enum FrameAnswer {
    /// It took every run.
    Taken,
    /// It refused them all: each run has this refusal (an encoded reply)
    /// for its answer.
    Refused(Vec<u8>),
    /// The answer cannot be trusted (it does not decode or open): each run
    /// is sent again, elsewhere if it can be.
    Broken(String),
}

/// Whether `bytes` are one JSON value.
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

impl<W, L> Ledger<W, L> {
    /// The next lease of this control plane.
    fn next_lease(&mut self) -> u64 {
        self.next_lease = self.next_lease.checked_add(1).expect("2^64 leases");
        self.next_lease
    }

    /// Sends a live task into a subworker slot the cluster reserved for
    /// it: with the runs placed together, in one frame.
    pub(super) fn send_to_worker(
        &mut self,
        key: WorkerKey,
        slot: usize,
        task_id: TaskId,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        self.queue_for_worker(key, slot, task_id, now, io);
        self.flush_worker(key, now, io);
    }

    /// Puts a run into a worker's next dispatch frame, into a slot the
    /// cluster reserved for it, under a fresh lease.
    pub(super) fn queue_for_worker(
        &mut self,
        key: WorkerKey,
        slot: usize,
        task_id: TaskId,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        let lease = self.next_lease();
        let bound_ms = self.settings.max_subworker_run_ms;
        let (Some(worker), Some(task)) = (self.cluster.get_mut(key), self.live.get_mut(&task_id)) else {
            self.cluster.release(key, slot, Some(task_id));
            return;
        };
        let report = &mut task.report;
        // The control plane bounds every run it forwards, whatever the
        // subworker offered: a worker that never answers cannot keep a task.
        let timeout_ms = match task.plan.timeout_ms {
            0 => bound_ms,
            declared => declared.min(bound_ms),
        };
        let forwarded = Forwarded {
            task_id,
            task_name: &report.task_name,
            args: &task.args,
            priority: report.priority,
            timeout_ms,
            attempt: report.attempts + 1,
            lease,
        };
        let taken = io.dispatch(&mut worker.link, forwarded);
        report.state = TaskState::Running;
        report.worker.clone_from(&worker.name.worker_id);
        report.attempts = report.attempts.saturating_add(1);
        report.started_ms = Some(now);
        // The timeout runs from the start the subworker reports; until
        // then, the run must be reported started in time.
        debug!(%task_id, worker = %worker.name.worker_id, lease, "task sent to a subworker");
        let start_by_ms = now.saturating_add(bound_ms);
        if task.absent.take().is_some() {
            // It waited for a provider, and found one.
            io.cancel_alarm(Alarm::Provider(task_id));
        }
        // Awaited from the worker, unless the link takes a run when it sends it.
        let answer_by_ms = (taken == Taken::WhenAnswered).then(|| now.saturating_add(self.settings.answer_within_ms));
        let dispatched =
            Dispatched { key, lease, timeout_ms, answer_by_ms, start_by_ms, report_by_ms: None, asked_back: None };
        let previous = task.dispatch.replace(dispatched);
        if let Some(previous) = previous {
            // A retry or a task taken back: its earlier run's lease alarm
            // (up to --max-subworker-run away) guards nothing.
            io.cancel_alarm(Alarm::Lease(task_id, previous.lease));
        }
        let first_look = now.saturating_add(timeout_ms).saturating_add(REPORT_GRACE_MS);
        let first_alarm = answer_by_ms.unwrap_or(u64::MAX).min(first_look).min(start_by_ms);
        io.set_alarm(first_alarm, Alarm::Lease(task_id, lease));
        // Prefetched, now that it holds its dispatch.
        io.changed(task);
        io.progressed(task, None);
    }

    /// Sends a worker's queued runs unless a dispatch frame of its is in
    /// flight (those queued meanwhile leave together when it lands).
    pub(crate) fn flush_worker(&mut self, key: WorkerKey, now: u64, io: &mut impl Effects<W, L>) {
        let Some(worker) = self.cluster.get_mut(key) else { return };
        if let Err(error) = io.flush(&mut worker.link) {
            let worker_id = worker.name.worker_id.clone();
            warn!(worker = %worker_id, %error, "could not send runs to a subworker");
            let why = format!("sending it to subworker '{worker_id}' failed: {error}");
            self.link_broken(key, &why, now, io);
        }
    }

    /// Gives a worker's free slots the most urgent waiting tasks it
    /// provides, in one frame; with slots left over (nothing waits for
    /// it), its free threads ask back runs sent ahead to busy workers.
    pub(crate) fn fill_worker(&mut self, key: WorkerKey, now: u64, io: &mut impl Effects<W, L>) {
        let idle: Vec<usize> = self.cluster.get(key).map_or_else(Vec::new, |w| {
            w.slots.iter().enumerate().filter(|(_, slot)| **slot == Slot::Idle).map(|(index, _)| index).collect()
        });
        let mut left_over = false;
        for slot in idle {
            let mut gate = super::local::Gate::new(&mut self.task_limits, now);
            match self.cluster.next_for_with(key, slot, &mut gate) {
                Some(next) => self.queue_for_worker(key, slot, next, now, io),
                // Nothing for one free slot is nothing for the others.
                None => {
                    left_over = true;
                    break;
                }
            }
        }
        self.flush_worker(key, now, io);
        if left_over {
            self.ask_back_for_threads_of(key, io);
        }
    }

    /// Asks back runs for worker `key`'s free threads, if it has any
    /// ([`Ledger::ask_back_for`]): runs asked back to wait behind its own
    /// running ones would gain nothing.
    fn ask_back_for_threads_of(&mut self, key: WorkerKey, io: &mut impl Effects<W, L>) {
        let Some(worker) = self.cluster.get(key) else { return };
        let held = worker.slots.iter().filter(|slot| matches!(slot, Slot::Busy(_))).count();
        let free = (worker.concurrency as usize).saturating_sub(held);
        if free > 0 {
            self.ask_back_for(key, free, io);
        }
    }

    /// Asks for up to `slots` runs sent ahead to other workers, not
    /// started there, that worker `key` (with free threads, nothing
    /// waiting for it) provides: each worker asked hands back those it has not started
    /// (`HandBack`), and a run handed back goes first in line, to the
    /// least loaded worker. So a run sent ahead to a worker busy with long
    /// runs does not wait there while another idles. Only a worker whose
    /// every thread runs a run reported started is asked (runs are
    /// reported started once they have run for a while, so short runs
    /// cause no asking back, and every run it holds beyond those is surely
    /// queued there); each run is asked for once, the oldest first, and no
    /// more than the idle slots less the runs already asked back. Runs of
    /// a task under a cluster-wide limit are left where they are.
    fn ask_back_for(&mut self, key: WorkerKey, slots: usize, io: &mut impl Effects<W, L>) {
        let Some(idle) = self.cluster.get(key).filter(|w| w.routable()) else { return };
        let mut wanted: Vec<(u64, TaskId, WorkerKey)> = Vec::new();
        let mut on_their_way = 0usize;
        let busy = self.cluster.workers().filter(|w| w.key != key && w.connected && self.holds_surely_waiting(w));
        for other in busy {
            let ahead = other.slots.iter().filter_map(|slot| match slot {
                Slot::Busy(id) => self.live.get(id).filter(|task| task.prefetched()).map(|task| (task, *id)),
                _ => None,
            });
            for (task, task_id) in ahead {
                if task.dispatch.is_some_and(|d| d.asked_back.is_some()) {
                    on_their_way += 1;
                } else if idle.tasks.contains_key(&task.report.task_name)
                    // A limited task keeps the place its limit gave it.
                    && (self.task_limits.is_empty() || !self.task_limits.is_limited(&task.report.task_name))
                {
                    wanted.push((task.report.created_ms, task_id, other.key));
                }
            }
        }
        wanted.sort_unstable();
        wanted.truncate(slots.saturating_sub(on_their_way));
        let mut by_worker: Vec<(WorkerKey, Vec<TaskId>)> = Vec::new();
        for (_, task_id, other) in wanted {
            if let Some(dispatch) = self.live.get_mut(&task_id).and_then(|t| t.dispatch.as_mut()) {
                dispatch.asked_back = Some(key);
            }
            match by_worker.iter_mut().find(|(k, _)| *k == other) {
                Some((_, ids)) => ids.push(task_id),
                None => by_worker.push((other, vec![task_id])),
            }
        }
        for (other, task_ids) in by_worker {
            if let Some(worker) = self.cluster.get(other) {
                debug!(worker = %worker.name.worker_id, count = task_ids.len(), "asking back runs sent ahead, for an idle worker");
                io.note(&worker.link, Request::HandBack { task_ids });
            }
        }
    }

    /// Whether every thread of `worker` runs a run reported started while
    /// it holds runs sent ahead beyond them: those surely wait there.
    fn holds_surely_waiting(&self, worker: &Worker<L>) -> bool {
        let (mut running, mut ahead) = (0u32, false);
        for slot in &worker.slots {
            let Slot::Busy(task_id) = slot else { continue };
            match self.live.get(task_id) {
                Some(task) if task.prefetched() => ahead = true,
                Some(_) => running += 1,
                None => {}
            }
        }
        ahead && running >= worker.concurrency
    }

    /// Every routable worker with free threads asks back runs sent ahead
    /// to busy ones ([`Ledger::ask_back_for`]): after a start report, which
    /// may show a worker's every thread busy with runs that run long.
    pub(super) fn ask_back_for_idle(&mut self, io: &mut impl Effects<W, L>) {
        // Nothing surely waits anywhere (the common case): one pass, not
        // one per idle worker.
        if !self.cluster.workers().any(|w| w.connected && self.holds_surely_waiting(w)) {
            return;
        }
        let idle: Vec<WorkerKey> = self.cluster.workers().filter(|w| w.routable()).map(|w| w.key).collect();
        for key in idle {
            self.ask_back_for_threads_of(key, io);
        }
    }

    /// Event: subworker slots may be free (a worker joined, came back or
    /// heartbeated). They take the waiting tasks their workers provide.
    pub(crate) fn fill(&mut self, now: u64, io: &mut impl Effects<W, L>) {
        let filled = self.cluster.fill_with(&mut super::local::Gate::new(&mut self.task_limits, now));
        let mut workers: Vec<WorkerKey> = Vec::new();
        for (key, slot, task_id) in filled {
            self.queue_for_worker(key, slot, task_id, now, io);
            if !workers.contains(&key) {
                workers.push(key);
            }
        }
        for key in workers {
            self.flush_worker(key, now, io);
        }
    }

    /// Event: a subworker answered the dispatch frame that carried `sent`.
    pub(crate) fn dispatch_answered(
        &mut self,
        key: WorkerKey,
        sent: Vec<TaskId>,
        answer: FrameAnswer,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        if matches!(answer, FrameAnswer::Taken) {
            for task_id in &sent {
                let Some(task) = self.live.get_mut(task_id) else { continue };
                if let Some(dispatch) = task.dispatch.as_mut().filter(|d| d.key == key) {
                    // Acknowledged: from now on its start report is awaited.
                    dispatch.answer_by_ms = None;
                }
            }
        } else {
            for task_id in sent {
                let Some((slot, false)) = self.cluster.slot_of(key, task_id) else { continue };
                self.cluster.release(key, slot, Some(task_id));
                match &answer {
                    FrameAnswer::Refused(refusal) => self.take_reply(key, task_id, refusal, now, io),
                    FrameAnswer::Taken => {}
                    FrameAnswer::Broken(why) => {
                        warn!(%task_id, "{why}");
                        self.send_again(task_id, why, now, io);
                    }
                }
            }
        }
        self.fill_worker(key, now, io);
    }

    /// Event: outcomes a subworker sent back. Each settles its task if it
    /// carries the task's current lease (a revoked run's is discarded and
    /// counted); then the freed slots take waiting tasks.
    pub(crate) fn collected(&mut self, key: WorkerKey, outcomes: Vec<Reported>, now: u64, io: &mut impl Effects<W, L>) {
        for Reported { task_id, lease, reply } in outcomes {
            let current = self.live.get(&task_id).and_then(|t| t.dispatch.as_ref()).map(|d| (d.key, d.lease));
            match self.cluster.slot_of(key, task_id) {
                Some((slot, false)) if current == Some((key, lease)) => {
                    self.cluster.release(key, slot, Some(task_id));
                    self.take_reply(key, task_id, &reply, now, io);
                }
                Some((slot, true)) => {
                    // The run was taken back: its slot is free again.
                    self.cluster.release(key, slot, None);
                    self.revoked_report(key, io);
                }
                _ => self.revoked_report(key, io),
            }
        }
        self.progressed(key, now);
        self.fill_worker(key, now, io);
    }

    /// Worker `key` sent outcomes: the runs sent ahead to it and not
    /// started there wait behind the runs it works through, so their start
    /// bound (`--max-subworker-run`) counts from now. A run waiting behind
    /// long runs of a worker that makes progress is not taken back, and
    /// counted lost, for waiting; one that no progress reaches still is.
    fn progressed(&mut self, key: WorkerKey, now: u64) {
        let Some(worker) = self.cluster.get(key) else { return };
        let start_by_ms = now.saturating_add(self.settings.max_subworker_run_ms);
        for slot in &worker.slots {
            let Slot::Busy(task_id) = slot else { continue };
            let dispatch = self.live.get_mut(task_id).and_then(|task| task.dispatch.as_mut());
            if let Some(dispatch) = dispatch.filter(|d| d.key == key && d.report_by_ms.is_none()) {
                dispatch.start_by_ms = dispatch.start_by_ms.max(start_by_ms);
            }
        }
    }

    /// The name of the worker of `key`, for messages.
    pub(super) fn worker_name(&self, key: WorkerKey) -> String {
        self.cluster.get(key).map(|w| w.name.worker_id.clone()).unwrap_or_default()
    }

    /// Counts a report that arrived under a revoked lease (and is dropped).
    pub(super) fn revoked_report(&self, key: WorkerKey, io: &mut impl Effects<W, L>) {
        io.count(Counted::RevokedReport);
        let worker = self.cluster.get(key).map(|w| w.name.worker_id.as_str()).unwrap_or_default();
        debug!(%worker, "discarded a run's report: its lease was revoked and the task sent elsewhere");
    }

    /// Takes a subworker's answer for a task (an encoded reply).
    fn take_reply(&mut self, key: WorkerKey, task_id: TaskId, frame: &[u8], now: u64, io: &mut impl Effects<W, L>) {
        let attempt = self.live.get(&task_id).map_or(0, |t| t.report.attempts);
        // Only what goes wrong names the worker: no copy of its name otherwise.
        let worker_id = || self.worker_name(key);
        match decode::<Reply>(frame, usize::MAX) {
            Ok(Reply::Report(report)) if report.task_id == task_id && report.state.is_final() => {
                let started = report.started_ms;
                let outcome = match (report.state, report.result, report.error) {
                    (TaskState::Succeeded, Some(result), _) if !is_json(&result) => {
                        io.count(Counted::BadResult);
                        Err(TaskError {
                            kind: FailureKind::Error,
                            message: format!(
                                "subworker '{}' sent a result that is not JSON ({} bytes); the run counts as failed",
                                worker_id(),
                                result.len()
                            ),
                        })
                    }
                    (TaskState::Succeeded, Some(result), _) => Ok(result),
                    (TaskState::TimedOut, _, Some(error)) => {
                        return self.finish(task_id, Ending::TimedOut(error), started, now, io)
                    }
                    (TaskState::Cancelled, _, Some(error)) => {
                        if started.is_none() {
                            // Cancelled where it waited, sent ahead: it never ran.
                            if let Some(task) = self.live.get_mut(&task_id) {
                                task.report.attempts = task.report.attempts.saturating_sub(1);
                                task.report.started_ms = None;
                            }
                        }
                        return self.finish(task_id, Ending::Cancelled(error), started, now, io);
                    }
                    (_, _, Some(error)) => Err(error),
                    _ => Err(TaskError {
                        kind: FailureKind::Error,
                        message: format!("subworker '{}' reported neither a result nor an error", worker_id()),
                    }),
                };
                self.complete(task_id, attempt, outcome, started, now, io);
            }
            Ok(Reply::Error(refusal)) if refusal.kind == ErrorKind::HandedBack => {
                let worker_id = worker_id();
                let why = format!("subworker '{worker_id}' handed it back unstarted: {}", refusal.message);
                self.handed_back(key, task_id, &why, now, io);
            }
            Ok(Reply::Error(refusal)) if matches!(refusal.kind, ErrorKind::ShuttingDown | ErrorKind::Busy) => {
                let worker_id = worker_id();
                let why = format!("subworker '{worker_id}' could not take it: {}", refusal.message);
                self.send_again(task_id, &why, now, io);
            }
            Ok(Reply::Error(refusal)) => {
                let worker_id = worker_id();
                let message = format!("subworker '{worker_id}' refused the task: {}", refusal.message);
                self.fail(task_id, message, now, io);
            }
            Ok(other) => {
                let worker_id = worker_id();
                let message = format!("subworker '{worker_id}' answered with an unexpected message: {other:?}");
                self.fail(task_id, message, now, io);
            }
            Err(error) => {
                let worker_id = worker_id();
                let message = format!("subworker '{worker_id}' sent a reply that does not decode: {error}");
                self.fail(task_id, message, now, io);
            }
        }
    }
}
