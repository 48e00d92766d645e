//! What the ledger asks of the world: the typed effects of its events.
//!
//! The ledger never touches a socket, a thread, a clock or a lock; each of
//! its events calls these methods to say what must happen, and the caller
//! carries it out (`server/state/driver.rs` in a serving process, a
//! recorder in the ledger's unit tests). The methods are called under the
//! ledger's lock, in the order the effects must happen, so an
//! implementation only queues what takes time (replies go out after the
//! lock is released).
//!
//! Effects are calls rather than a returned list so that the hot path
//! builds nothing per effect: the driver carries each out as it comes,
//! and the unit tests' recorder turns them into a list to compare.

use crate::wire::protocol::{Forwarded, Request, TaskId, TaskReport};

use super::LiveTask;

/// What is due at a time: the ledger sets alarms and hears them ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Alarm {
    /// A scheduled or retrying task may start.
    Start(TaskId),
    /// Run `attempt` of a task reaches its timeout.
    Deadline(TaskId, u32),
    /// The run sent to a subworker under this lease must have been
    /// acknowledged by now (its dispatch frame answered within
    /// `--reply-timeout`), reported started (within `--max-subworker-run`)
    /// or, once started, ended (its timeout from its start, plus a grace):
    /// else the lease is revoked.
    Lease(TaskId, u64),
    /// A task waiting for a provider to come back has waited the grace
    /// (`--provider-grace`): it fails unless one is registered.
    Provider(TaskId),
    /// A held-back run of a limited task may start: a rate token came due
    /// or a running run settled (see `crate::cluster::task_limits`).
    TaskLimits,
}

/// What delivery counts, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// A report (a start or an outcome) of a run whose lease was revoked.
    RevokedReport,
    /// A task a stopping subworker handed back unstarted.
    HandedBack,
    /// A lease revoked because its run was not reported in time.
    LeaseExpired,
    /// A subworker's result that is not JSON.
    BadResult,
}

/// How a link acknowledges a run it was given to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// By the worker's answer to the frame that carries it, awaited
    /// within `--reply-timeout` (a subworker's NNG link).
    WhenAnswered,
    /// Once written: what is written is received, or the connection
    /// breaks and the run is taken back (a worker process's socket pair).
    WhenSent,
}

/// The effects of the ledger's events. `W` is whoever waits for a task's
/// end (a client's replier), `L` the connection to a subworker.
pub(crate) trait Effects<W, L> {
    /// A task was accepted; `later` is its countdown or ETA. (Durable mode
    /// acknowledges it once this is stored.)
    fn accepted(&mut self, task: &LiveTask<W>, later: Option<u64>);

    /// A live task's state or placement changed (the dashboard shows it,
    /// prefetched apart from running: [`LiveTask::prefetched`]).
    fn changed(&mut self, task: &LiveTask<W>);

    /// A run started (here or sent to a subworker), or failed and waits for
    /// a retry due at `retry_at_ms`: the record durable mode keeps.
    fn progressed(&mut self, task: &LiveTask<W>, retry_at_ms: Option<u64>);

    /// Runs the task's next run on this process's worker threads; `false`
    /// when they take no more work (shutting down).
    fn run_here(&mut self, task: &LiveTask<W>) -> bool;

    /// Rings `alarm` back into the ledger at `due_ms` (ms since the epoch).
    fn set_alarm(&mut self, due_ms: u64, alarm: Alarm);

    /// The alarm guards nothing any more.
    fn cancel_alarm(&mut self, alarm: Alarm);

    /// The task ended: its report is final. Its result is to be kept, its
    /// waiters answered, its callback notified.
    fn ended(&mut self, task: LiveTask<W>);

    /// Answers `waiters` with a live task's report (a cancel's answer once
    /// the run it was asked of started).
    fn answer(&mut self, waiters: Vec<W>, report: TaskReport);

    /// Puts a run into the subworker's next dispatch frame.
    fn dispatch(&mut self, link: &mut L, run: Forwarded<'_>) -> Taken;

    /// Sends the subworker's queued runs unless a frame is in flight; the
    /// error says why the connection failed.
    fn flush(&mut self, link: &mut L) -> Result<(), String>;

    /// Tells a subworker something it may act on (`Cancel`, `Revoke`): best
    /// effort, on its own exchange.
    fn note(&mut self, link: &L, request: Request);

    /// Starts collecting a subworker's outcomes (its link just came up).
    /// It comes before any run is dispatched on that link: a subworker
    /// hands an outcome to the newest `Collect` it holds, which must be
    /// this control plane's, not one a dead predecessor left.
    fn collect(&mut self, link: &L);

    /// The dispatch frame that carried `task_id` was not answered in time:
    /// if it is still in flight, it is given up, so that what is queued
    /// behind it can leave.
    fn unanswered(&mut self, link: &mut L, task_id: TaskId);

    /// Cancels the subworker link's exchanges in flight (its connection was
    /// lost: NNG would send them again on reconnection).
    fn reset(&mut self, link: &mut L);

    /// Asks the task's run in progress to stop (its worker thread polls the
    /// flag): it was cancelled or ran past its timeout.
    fn stop_run(&mut self, task: &LiveTask<W>);

    /// Counts a delivery event.
    fn count(&mut self, counted: Counted);
}
