//! Subworkers coming and going, as ledger events: one registers, its link
//! comes up, it heartbeats, it says it is stopping, it falls silent, its
//! connection drops, it is removed. Each changes the cluster and then
//! what the cluster carries: free slots take waiting tasks, a lost
//! worker's tasks go elsewhere, tasks nobody provides any more are settled.
//! The membership port (`server/membership/`) turns its requests and link
//! events into these and does the I/O (replies, logs, the link's reads).

use std::time::Duration;

use tracing::{info, warn};

use super::{Effects, Ledger};
use crate::cluster::routing::{Joining, Phase, Worker, WorkerKey};
use crate::cluster::task_limits::TaskLimit;
use crate::wire::protocol::TaskId;

impl<W, L> Ledger<W, L> {
    /// Event: a subworker registered (its link is still connecting). The
    /// task limits its plugins declare (`declared`) count for the cluster
    /// while it is registered, for tasks the control plane's plugins do not
    /// provide, unless one is set here already.
    pub(crate) fn joined(&mut self, joining: Joining<L>, declared: Vec<(String, TaskLimit)>, now: u64) {
        let key = joining.key;
        self.cluster.add(joining, now);
        for (task_name, limit) in declared {
            if self.task_limits.declare_offered(&task_name, limit, key, now) {
                info!(task = %task_name, limit = %limit.describe(), "cluster-wide limit declared by a subworker's plugin");
            }
        }
    }

    /// Event: a subworker's link came up. A worker connecting for the
    /// first time becomes active (`true` is returned); its outcomes are
    /// collected, then its free slots take waiting tasks.
    pub(crate) fn connected(&mut self, key: WorkerKey, now: u64, io: &mut impl Effects<W, L>) -> bool {
        let Some(worker) = self.cluster.get_mut(key) else { return false };
        worker.connected = true;
        let first = worker.phase == Phase::Connecting;
        if first {
            worker.phase = Phase::Active;
            worker.last_seen_ms = now;
        }
        io.collect(&worker.link);
        self.fill(now, io);
        first
    }

    /// Event: a subworker's link dropped. It is excluded and what it
    /// carried goes elsewhere. Returns its id (`None`: no such worker, and
    /// nothing changes).
    pub(crate) fn connection_lost(&mut self, key: WorkerKey, now: u64, io: &mut impl Effects<W, L>) -> Option<String> {
        let worker_id = self.cluster.disconnected(key)?;
        let why = format!("the connection to subworker '{worker_id}' dropped");
        warn!(worker = %worker_id, "lost the connection to a subworker: excluded, its tasks go elsewhere");
        self.take_back(key, &why, now, io);
        Some(worker_id)
    }

    /// Event: a heartbeat with the tasks the subworker has. One that was
    /// silent is active again (`true`), and its free slots take waiting tasks.
    pub(crate) fn heartbeat(&mut self, key: WorkerKey, in_flight: u32, now: u64, io: &mut impl Effects<W, L>) -> bool {
        let back = self.cluster.heard_from(key, in_flight, now);
        if back {
            self.fill(now, io);
        }
        back
    }

    /// Event: a subworker said it is stopping. It takes nothing new; tasks
    /// only it provides run here or fail.
    pub(crate) fn leaving(&mut self, key: WorkerKey, why: &str, now: u64, io: &mut impl Effects<W, L>) -> bool {
        let Some(worker) = self.cluster.get_mut(key) else { return false };
        worker.phase = Phase::Draining;
        self.settle_stranded(why, now, io);
        true
    }

    /// Event: the sweep at `now`: workers silent for over `after` are
    /// excluded and their tasks taken back; then free slots take waiting
    /// tasks.
    pub(crate) fn sweep(&mut self, after: Duration, now: u64, io: &mut impl Effects<W, L>) {
        for key in self.cluster.silent(now, after) {
            let worker_id = self.worker_name(key);
            let why = format!("subworker '{worker_id}' has been silent for over {} s", after.as_secs_f64());
            warn!(worker = %worker_id, "no heartbeat for over {} s (--inactive-after): excluded until it heartbeats again", after.as_secs_f64());
            self.take_back(key, &why, now, io);
        }
        self.fill(now, io);
    }

    /// Event: a subworker is removed (it unregistered, was replaced or was
    /// forgotten). What it carried goes elsewhere; the worker is returned.
    pub(crate) fn remove_worker(
        &mut self,
        key: WorkerKey,
        why: &str,
        now: u64,
        io: &mut impl Effects<W, L>,
    ) -> Option<Worker<L>> {
        let (worker, carried) = self.cluster.remove(key)?;
        // The limits it declared leave with it; another provider that
        // declares one for the same task takes over.
        for task_name in self.task_limits.withdraw_offered(key, now) {
            let next = self.cluster.workers().find_map(|w| Some((w.key, w.tasks.get(&task_name)?.limit?)));
            if let Some((by, limit)) = next {
                self.task_limits.declare_offered(&task_name, limit, by, now);
            }
        }
        let carried: Vec<TaskId> = carried.into_iter().map(|(_, task_id)| task_id).collect();
        self.worker_left(carried, why, now, io);
        Some(worker)
    }
}
