//! Poison tasks: a task whose runs kept killing their worker process ends
//! `Crashed` instead of being sent again. The supervisor of the worker
//! processes counts the crashes (it sees each process die); the ledger only
//! ends the task, wherever its run is now.

use rustc_hash::FxHashSet;

use super::{Alarm, Effects, Ending, Ledger};
use crate::wire::protocol::{FailureKind, Request, TaskError, TaskId, TaskState};

impl<W, L> Ledger<W, L> {
    /// Sets the tasks that wait for a provider instead of failing when no
    /// live worker provides them (the tasks of this control plane's worker
    /// processes, while any of them is supervised), then settles the
    /// waiting tasks nobody provides any more.
    pub(crate) fn set_awaited(&mut self, tasks: FxHashSet<String>, now: u64, io: &mut impl Effects<W, L>) {
        self.awaited = tasks;
        self.settle_stranded("", now, io);
    }

    /// Sets the worker ids of this control plane's worker processes (their
    /// run logs charge crashes; see [`Ledger::take_back`]).
    pub(crate) fn set_worker_processes(&mut self, worker_ids: FxHashSet<String>) {
        self.worker_processes = worker_ids;
    }

    /// Whether `task_name` waits for a provider rather than fail.
    pub(crate) fn awaits(&self, task_name: &str) -> bool {
        self.awaited.contains(task_name)
    }

    /// Event: a run of `task_id` died with its process. Returns its crash
    /// count now, or `None` when it is not live.
    pub(crate) fn count_crash(&mut self, task_id: TaskId) -> Option<u32> {
        let task = self.live.get_mut(&task_id)?;
        task.crashes = task.crashes.saturating_add(1);
        Some(task.crashes)
    }

    /// Event: `task_id`'s runs crashed their worker process as often as
    /// allowed. It ends `Crashed` with `message` (which says how the last
    /// process died); a run of it still out on a worker has its lease
    /// revoked, and a run waiting for a slot leaves the line.
    pub(crate) fn crashed(&mut self, task_id: TaskId, message: String, now: u64, io: &mut impl Effects<W, L>) {
        let Some(task) = self.live.get_mut(&task_id) else { return };
        if let Some(dispatch) = task.dispatch.take() {
            io.cancel_alarm(Alarm::Lease(task_id, dispatch.lease));
            if task.report.state == TaskState::Running {
                self.cluster.abandon(dispatch.key, task_id);
                if let Some(worker) = self.cluster.get(dispatch.key).filter(|w| w.connected) {
                    io.note(&worker.link, Request::Revoke { task_ids: vec![task_id] });
                }
            }
        }
        self.cluster.forget_waiting(task_id);
        let error = TaskError { kind: FailureKind::Crashed, message };
        self.finish(task_id, Ending::Failed(error), None, now, io);
    }
}
