//! The task ledger: the live tasks, their lifecycle, and the cluster's
//! slots that carry them, with no I/O.
//!
//! It changes only through events (a task accepted, a run started or
//! ended here, a subworker's outcomes, a subworker lost, an alarm rang, a
//! cancel asked), each with the current time passed in, and answers with
//! typed [`Effects`]: run here, dispatch to a subworker under a lease,
//! set an alarm, end a task (reply to its waiters, keep its result,
//! notify its callback), write a durable record. No sockets, threads,
//! clocks or locks live here: `server/state/` holds it under one lock and
//! carries the effects out, and the unit tests in `tests.rs` drive it
//! event by event.
//!
//! | file | events |
//! |--|--|
//! | `mod.rs` | accept, start (placement), end, cancel |
//! | `local.rs` | runs on this process's threads: start, outcome, timeout; held-back runs of limited tasks |
//! | `dispatch.rs` | runs on subworkers: dispatch under a lease, the answers to dispatch frames, collected outcomes |
//! | `delivery.rs` | start reports, expired leases, hand-backs, lost subworkers: every task reaches exactly one outcome |
//! | `workers.rs` | subworkers registering, connecting, heartbeating, stopping, falling silent, removed |
//! | `effects.rs` | what the ledger asks of the world |

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::wire::protocol::FailureKind;
use rustc_hash::{FxHashMap, FxHashSet};
use tracing::debug;

use crate::cluster::routing::{Cluster, Place, Placement, Waiting, WorkerKey};
use crate::cluster::task_limits::TaskLimits;
use crate::wire::auth::Tenant;
use crate::wire::protocol::{Callback, Request, RetryPolicy, TaskError, TaskId, TaskReport, TaskState};

mod crashes;
mod delivery;
mod dispatch;
mod effects;
mod local;
#[cfg(test)]
mod tests;
mod workers;

pub(crate) use delivery::{Absent, Dispatched, REPORT_GRACE_MS};
pub(crate) use dispatch::FrameAnswer;
pub(crate) use effects::{Alarm, Counted, Effects, Taken};

/// How many times a task may be lost with a subworker that went away
/// before the ledger gives up on it.
pub(crate) const MAX_DISPATCHES: u32 = 3;

/// What the ledger must know of the process that holds it.
pub(crate) struct Settings {
    /// This process's name in reports and messages.
    pub(crate) worker_id: String,
    /// The longest a subworker may keep a run (`--max-subworker-run`).
    pub(crate) max_subworker_run_ms: u64,
    /// The longest a subworker may take to answer a dispatch frame
    /// (`--reply-timeout`): its runs are taken back after that.
    pub(crate) answer_within_ms: u64,
    /// The tasks this process's own threads can run (none when it has no
    /// threads).
    pub(crate) local_tasks: FxHashSet<String>,
    /// How long a task whose every provider is gone waits, queued, for one
    /// to come back before it fails (`--provider-grace`; 0 fails it at once).
    pub(crate) provider_grace_ms: u64,
}

/// The live tasks, the subworkers' slots and the task limits.
pub(crate) struct Ledger<W, L> {
    settings: Settings,
    /// Keyed by UUIDs the clients chose: a fast hash suffices.
    live: FxHashMap<TaskId, LiveTask<W>>,
    /// Bytes of arguments the live tasks hold (`--max-queued-bytes`).
    live_bytes: u64,
    /// The live tasks and their bytes of arguments, by tenant (`--queue-share`).
    tenants: FxHashMap<Tenant, (usize, u64)>,
    /// The subworkers, their slots and the tasks waiting for one.
    cluster: Cluster<L>,
    /// The last lease given to a run sent to a subworker.
    next_lease: u64,
    /// The cluster-wide limits per task name (a control plane's; empty on
    /// a subworker, which does not enforce them).
    task_limits: TaskLimits,
    /// Tasks that wait for a provider rather than fail when none is live:
    /// those this control plane's own worker processes provide, which come
    /// back when restarted (`crashes.rs`).
    awaited: FxHashSet<String>,
    /// The worker ids of this control plane's worker processes: each has a
    /// run log, which charges a crash to the runs it was executing, so the
    /// runs it had not reported started come back uncounted when it dies.
    worker_processes: FxHashSet<String>,
}

/// A task that has been accepted and has not ended.
pub(crate) struct LiveTask<W> {
    pub(crate) report: TaskReport,
    pub(crate) waiters: Vec<W>,
    /// Set to ask a run to stop (its worker thread polls it).
    pub(crate) cancelled: Arc<AtomicBool>,
    /// The JSON arguments, kept for retries and for sending again.
    pub(crate) args: Arc<Vec<u8>>,
    pub(crate) plan: Plan,
    /// Runs that failed so far (each may earn a retry).
    pub(crate) failures: u32,
    /// Times a subworker went away while running it.
    pub(crate) losses: u32,
    /// Times its runs died with their process (toward `--max-task-crashes`;
    /// kept in the durable store).
    pub(crate) crashes: u32,
    /// The key that submitted it, when ports authenticate.
    pub(crate) owner: Option<[u8; 8]>,
    /// Whom it counts against for its share of the queue, if anyone.
    pub(crate) tenant: Option<Tenant>,
    /// On a control plane: its current run on a subworker, under a lease.
    pub(crate) dispatch: Option<Dispatched>,
    /// On a subworker: the lease its control plane sent it under.
    pub(crate) lease: Option<u64>,
    /// Set while it waits for a provider to come back (none is registered).
    pub(crate) absent: Option<Box<Absent>>,
    /// Set when a cancel was asked while its run was sent ahead to a worker
    /// and not started there: who waits for the cancel's answer (its end,
    /// or its report once started there).
    pub(crate) cancelling: Option<Vec<W>>,
}

/// How a task runs: its timeout, its retries, and who hears of its end.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) timeout_ms: u64,
    pub(crate) retry: RetryPolicy,
    pub(crate) callback: Option<Callback>,
}

/// How a task ended.
#[derive(Debug)]
pub(crate) enum Ending {
    Succeeded(Vec<u8>),
    Failed(TaskError),
    TimedOut(TaskError),
    Cancelled(TaskError),
}

impl<W> LiveTask<W> {
    /// A task just accepted, before its first run.
    pub(crate) fn new(report: TaskReport, args: Vec<u8>, plan: Plan, owner: Option<[u8; 8]>) -> LiveTask<W> {
        LiveTask {
            report,
            waiters: Vec::new(),
            cancelled: Arc::new(AtomicBool::new(false)),
            args: Arc::new(args),
            plan,
            failures: 0,
            losses: 0,
            crashes: 0,
            owner,
            tenant: None,
            dispatch: None,
            lease: None,
            absent: None,
            cancelling: None,
        }
    }
}

/// What a submission under an id already live comes to.
pub(crate) enum Joined<W> {
    /// No live task has this id: the waiter is handed back.
    NotLive(Option<W>),
    /// The same task again (a client retrying after a lost reply): the
    /// waiter now waits for the task already accepted.
    Same,
    /// Another task (its name given) has this id: the waiter is handed back.
    Conflict(String, Option<W>),
}

impl<W, L> Ledger<W, L> {
    /// The subworkers, their slots and the tasks waiting for one, to read;
    /// they change only through the ledger's events.
    pub(crate) fn cluster(&self) -> &Cluster<L> {
        &self.cluster
    }

    /// The cluster-wide task limits, to read.
    pub(crate) fn task_limits(&self) -> &TaskLimits {
        &self.task_limits
    }

    /// Event: a subworker is about to join; the key it will have.
    pub(crate) fn new_worker_key(&mut self) -> WorkerKey {
        self.cluster.new_key()
    }

    /// The I/O link to a subworker, which the ledger holds for the driver
    /// but never uses itself (its state is the driver's, not the ledger's).
    pub(crate) fn link_mut(&mut self, key: WorkerKey) -> Option<&mut L> {
        self.cluster.get_mut(key).map(|worker| &mut worker.link)
    }

    /// Event: the operator changed the cluster-wide task limits (`change`,
    /// at `now`); a loosened limit lets held-back runs go at once.
    pub(crate) fn change_task_limits<T, E>(
        &mut self,
        now: u64,
        io: &mut impl Effects<W, L>,
        change: impl FnOnce(&mut TaskLimits) -> Result<T, E>,
    ) -> Result<T, E> {
        let changed = change(&mut self.task_limits)?;
        self.release_held(now, io);
        Ok(changed)
    }

    /// An empty ledger.
    pub(crate) fn new(settings: Settings, task_limits: TaskLimits) -> Ledger<W, L> {
        Ledger {
            settings,
            live: FxHashMap::default(),
            live_bytes: 0,
            tenants: FxHashMap::default(),
            cluster: Cluster::default(),
            next_lease: 0,
            task_limits,
            awaited: FxHashSet::default(),
            worker_processes: FxHashSet::default(),
        }
    }

    /// Whether this process's own threads can run `task_name`.
    pub(crate) fn runs_here(&self, task_name: &str) -> bool {
        self.settings.local_tasks.contains(task_name)
    }

    /// The live task of this id.
    pub(crate) fn get(&self, task_id: &TaskId) -> Option<&LiveTask<W>> {
        self.live.get(task_id)
    }

    /// The waiters of a live task, for those who add one.
    pub(crate) fn waiters_mut(&mut self, task_id: &TaskId) -> Option<&mut Vec<W>> {
        self.live.get_mut(task_id).map(|task| &mut task.waiters)
    }

    /// Every live task.
    pub(crate) fn tasks(&self) -> impl Iterator<Item = (&TaskId, &LiveTask<W>)> {
        self.live.iter()
    }

    /// How many tasks are live, and the bytes of arguments they hold.
    pub(crate) fn load(&self) -> (usize, u64) {
        (self.live.len(), self.live_bytes)
    }

    /// How many live tasks `tenant` holds, and their bytes of arguments.
    pub(crate) fn tenant_load(&self, tenant: Tenant) -> (usize, u64) {
        self.tenants.get(&tenant).copied().unwrap_or_default()
    }

    /// The most live tasks one tenant holds (for `/metrics`).
    pub(crate) fn largest_tenant_load(&self) -> usize {
        self.tenants.values().map(|(tasks, _)| *tasks).max().unwrap_or(0)
    }

    /// A submission under `task_id` when a task of that id may be live.
    pub(crate) fn join(&mut self, task_id: TaskId, task_name: &str, args: &[u8], waiter: Option<W>) -> Joined<W> {
        let Some(existing) = self.live.get_mut(&task_id) else { return Joined::NotLive(waiter) };
        if existing.report.task_name != task_name || existing.args.as_slice() != args {
            return Joined::Conflict(existing.report.task_name.clone(), waiter);
        }
        existing.waiters.extend(waiter);
        Joined::Same
    }

    /// Event: a task was accepted (`later`: it waits until then). It runs
    /// here, goes to a subworker, waits for a slot, or waits for its time.
    pub(crate) fn admit(&mut self, task: LiveTask<W>, later: Option<u64>, now: u64, io: &mut impl Effects<W, L>) {
        let task_id = task.report.task_id;
        io.accepted(&task, later);
        self.insert(task);
        match later {
            Some(at) => {
                io.set_alarm(at, Alarm::Start(task_id));
                debug!(%task_id, at_ms = at, "task scheduled");
            }
            None => self.start(task_id, false, "", now, io),
        }
    }

    /// Event: a task taken up from the durable store after a restart. It
    /// waits for `due` (a retry's or an ETA's time), runs here, or waits
    /// for a subworker that provides it to register (within the grace for
    /// absent providers, like any task whose provider is away).
    pub(crate) fn restore(&mut self, task: LiveTask<W>, due: Option<u64>, now: u64, io: &mut impl Effects<W, L>) {
        let task_id = task.report.task_id;
        self.insert(task);
        match due {
            Some(at) => io.set_alarm(at, Alarm::Start(task_id)),
            None => self.start(task_id, false, "no subworker providing it has registered since the restart", now, io),
        }
    }

    fn insert(&mut self, task: LiveTask<W>) {
        self.live_bytes = self.live_bytes.saturating_add(task.args.len() as u64);
        if let Some(tenant) = task.tenant {
            let (tasks, bytes) = self.tenants.entry(tenant).or_default();
            *tasks += 1;
            *bytes = bytes.saturating_add(task.args.len() as u64);
        }
        self.live.insert(task.report.task_id, task);
    }

    /// Takes a live task out without an outcome (a stopping subworker
    /// hands it back; a shutdown leaves it for the restart).
    pub(crate) fn remove(&mut self, task_id: &TaskId) -> Option<LiveTask<W>> {
        let mut task = self.live.remove(task_id)?;
        // Who waits for a cancel's answer hears whatever the others hear.
        if let Some(cancelling) = task.cancelling.take() {
            task.waiters.extend(cancelling);
        }
        self.live_bytes = self.live_bytes.saturating_sub(task.args.len() as u64);
        if let Some(tenant) = task.tenant {
            if let Some((tasks, bytes)) = self.tenants.get_mut(&tenant) {
                *tasks = tasks.saturating_sub(1);
                *bytes = bytes.saturating_sub(task.args.len() as u64);
                if *tasks == 0 {
                    self.tenants.remove(&tenant);
                }
            }
        }
        Some(task)
    }

    /// Takes out a task that has not started, wherever it waits (for this
    /// process's threads or for a subworker's slot), without an outcome: a
    /// stopping subworker hands it back. `None` when it is not live or
    /// already started.
    pub(crate) fn take_unstarted(&mut self, task_id: &TaskId) -> Option<LiveTask<W>> {
        if self.live.get(task_id)?.report.state != TaskState::Queued {
            return None;
        }
        self.cluster.forget_waiting(*task_id);
        self.remove(task_id)
    }

    /// Takes every live task out without an outcome (at shutdown).
    pub(crate) fn remove_all(&mut self) -> Vec<LiveTask<W>> {
        self.live_bytes = 0;
        self.tenants.clear();
        let with_cancels = |(_, mut task): (TaskId, LiveTask<W>)| {
            task.waiters.extend(task.cancelling.take().into_iter().flatten());
            task
        };
        self.live.drain().map(with_cancels).collect()
    }

    /// Sends a live task on its way: to a subworker's free slot, into the
    /// line for one (`first`: ahead of its priority's other waiting tasks),
    /// or to this process's threads. `why` says why it is sent again.
    pub(crate) fn start(&mut self, task_id: TaskId, first: bool, why: &str, now: u64, io: &mut impl Effects<W, L>) {
        let Some(task) = self.live.get_mut(&task_id) else { return };
        if task.cancelling.is_some() {
            // Cancelled while sent ahead, and back unstarted: it ends here
            // as it would have there.
            return self.end_cancelled(task_id, now, io);
        }
        if task.report.state != TaskState::Queued {
            task.report.state = TaskState::Queued;
            io.changed(task);
        }
        let report = &task.report;
        // A run sent again counts again, against the rate too.
        self.task_limits.settle(&report.task_name, task_id);
        let placement = if self.cluster.is_empty() {
            Placement::Nobody
        } else {
            self.cluster.place_with(task_id, &report.task_name, &mut local::Gate::new(&mut self.task_limits, now))
        };
        match placement {
            Placement::Slot(key, slot) => self.send_to_worker(key, slot, task_id, now, io),
            Placement::Held if self.settings.local_tasks.contains(&report.task_name) => {
                self.run_here_or_wait(task_id, first, why, now, io)
            }
            Placement::Wait | Placement::Held | Placement::Limited => {
                let priority = report.priority;
                let waiting = Waiting { task_id, task_name: report.task_name.clone() };
                if placement == Placement::Limited {
                    self.task_limits.note_held(&waiting.task_name);
                    debug!(%task_id, %priority, "task held back by its task limit");
                } else {
                    debug!(%task_id, %priority, "task waits for a subworker slot");
                }
                self.cluster.wait(priority, waiting, place(first, report.created_ms));
                if placement == Placement::Limited {
                    self.arm_task_limits(now, io);
                }
            }
            Placement::Nobody => self.run_here_or_wait(task_id, first, why, now, io),
        }
    }

    /// Event: an alarm the ledger set rang.
    pub(crate) fn alarm(&mut self, alarm: Alarm, now: u64, io: &mut impl Effects<W, L>) {
        match alarm {
            Alarm::Start(task_id) => {
                let waiting = self.live.get(&task_id).map(|t| t.report.state);
                if matches!(waiting, Some(TaskState::Scheduled | TaskState::Retrying)) {
                    self.start(task_id, false, "", now, io);
                }
            }
            Alarm::Deadline(task_id, attempt) => self.time_out(task_id, attempt, now, io),
            Alarm::Lease(task_id, lease) => self.lease_due(task_id, lease, now, io),
            Alarm::Provider(task_id) => self.provider_due(task_id, now, io),
            Alarm::TaskLimits => {
                self.task_limits.rang();
                self.release_held(now, io);
            }
        }
    }

    /// Ends a task: its report becomes final and goes to [`Effects::ended`].
    pub(crate) fn finish(
        &mut self,
        task_id: TaskId,
        ending: Ending,
        started_ms: Option<u64>,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) {
        let Some(mut task) = self.remove(&task_id) else { return };
        self.task_limits.settle(&task.report.task_name, task_id);
        self.arm_task_limits(now, io);
        // Its lease's alarm, or its wait for a provider, guards nothing any more.
        if let Some(dispatch) = &task.dispatch {
            io.cancel_alarm(Alarm::Lease(task_id, dispatch.lease));
        }
        if task.absent.is_some() {
            io.cancel_alarm(Alarm::Provider(task_id));
        }
        let report = &mut task.report;
        report.finished_ms = Some(now);
        if started_ms.is_some() {
            report.started_ms = started_ms;
        }
        let (state, result, error) = match ending {
            Ending::Succeeded(result) => (TaskState::Succeeded, Some(result), None),
            Ending::Failed(error) => (TaskState::Failed, None, Some(error)),
            Ending::TimedOut(error) => (TaskState::TimedOut, None, Some(error)),
            Ending::Cancelled(error) => (TaskState::Cancelled, None, Some(error)),
        };
        (report.state, report.result, report.error) = (state, result, error);
        io.ended(task);
    }

    /// Ends a task as failed, saying why.
    pub(crate) fn fail(&mut self, task_id: TaskId, message: String, now: u64, io: &mut impl Effects<W, L>) {
        let error = TaskError { kind: FailureKind::Error, message };
        self.finish(task_id, Ending::Failed(error), None, now, io);
    }

    /// Event: a cancel asked; `waiter` wants its answer, the task's report
    /// once the cancel has taken effect. A task not started ends
    /// `Cancelled` at once (`waiter` hears its end). A run sent ahead to a
    /// worker and not started there is the worker's to end: it is asked
    /// to, and `waiter` is held ([`Cancel::Waits`]) until the run ends
    /// (`Cancelled`, unless it started meanwhile) or is reported started
    /// (`Running`, asked to stop). A running task has its flag set, its
    /// worker told, and is reported as it is ([`Cancel::Answer`]), as is a
    /// task no longer live.
    pub(crate) fn cancel(
        &mut self,
        task_id: TaskId,
        waiter: Option<W>,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) -> Cancel<W> {
        let Some(task) = self.live.get_mut(&task_id) else { return Cancel::Answer(waiter) };
        io.stop_run(task);
        if task.prefetched() {
            // Whatever the worker does first, ending it or starting it,
            // is the answer: the ledger cannot end it here without the run
            // perhaps starting there anyway.
            let asked = task.cancelling.is_some();
            task.cancelling.get_or_insert_with(Vec::new).extend(waiter);
            let key = task.dispatch.map(|d| d.key);
            if let Some(worker) = key.and_then(|key| self.cluster.get(key)).filter(|_| !asked) {
                io.note(&worker.link, Request::Cancel { task_id });
            }
            return Cancel::Waits;
        }
        if task.report.state == TaskState::Running {
            let worker_id = &task.report.worker;
            if let Some(worker) = self.cluster.workers().find(|w| &w.name.worker_id == worker_id) {
                io.note(&worker.link, Request::Cancel { task_id });
            }
            return Cancel::Answer(waiter);
        }
        task.waiters.extend(waiter);
        self.end_cancelled(task_id, now, io);
        Cancel::Waits
    }

    /// Ends a task that has not started (or was sent ahead and came back
    /// unstarted) `Cancelled`: it never ran.
    fn end_cancelled(&mut self, task_id: TaskId, now: u64, io: &mut impl Effects<W, L>) {
        if let Some(task) = self.live.get_mut(&task_id).filter(|t| t.report.state == TaskState::Running) {
            // Sent ahead and back unstarted: that run does not count.
            if task.prefetched() {
                task.report.attempts = task.report.attempts.saturating_sub(1);
            }
            task.report.started_ms = None;
        }
        let error = TaskError { kind: FailureKind::Error, message: "cancelled by a client before it ran".into() };
        self.cluster.forget_waiting(task_id);
        self.finish(task_id, Ending::Cancelled(error), None, now, io);
    }
}

/// Where a task sent on its way joins the line: first (`first`: taken back
/// from a worker, in acceptance order among those) or last.
fn place(first: bool, created_ms: u64) -> Place {
    if first {
        Place::First { created_ms }
    } else {
        Place::Last
    }
}

/// What a cancel's waiter is owed.
#[derive(Debug)]
pub(crate) enum Cancel<W> {
    /// The task's report as it is now (running, or no longer live).
    Answer(Option<W>),
    /// The waiter is held: it hears the task's end, or its report once
    /// its run is reported started.
    Waits,
}
