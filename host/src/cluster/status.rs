//! What the cluster reports about itself: its size, the tasks its workers
//! offer (and with which defaults), and the table `fastworker workers`
//! shows. Read-only views of [`Cluster`], kept apart from the routing rules
//! that change it.

use super::routing::{Cluster, Phase, Worker, WorkerKey};
use crate::wire::protocol::{ClusterStatus, OfferedTask, WorkerState, WorkerStatus};

impl<L> Cluster<L> {
    /// Workers registered, and their slots together (`--max-subworkers`,
    /// `--max-subworker-slots`).
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.workers().count(), self.workers().map(|w| w.slots.len()).sum())
    }

    /// The declared defaults of a task a live worker provides.
    pub(crate) fn provider(&self, task_name: &str) -> Option<&OfferedTask> {
        self.workers().filter(|w| w.routable()).find_map(|w| w.tasks.get(task_name))
    }

    /// The live worker whose offer describes `task_name` (the first that
    /// provides it), and that offer.
    pub(crate) fn describing_provider(&self, task_name: &str) -> Option<(WorkerKey, &OfferedTask)> {
        self.workers().filter(|w| w.routable()).find_map(|w| w.tasks.get(task_name).map(|task| (w.key, task)))
    }

    /// Whether any worker still registered offers `task_name` with a schedule.
    pub(crate) fn schedules(&self, task_name: &str) -> bool {
        self.workers().any(|w| w.tasks.get(task_name).is_some_and(|t| !t.schedule.is_empty()))
    }

    /// Each task a live worker provides, with that worker's id.
    pub(crate) fn offered_tasks(&self) -> Vec<(String, OfferedTask)> {
        let routable = self.workers().filter(|w| w.routable());
        routable.flat_map(|w| w.tasks.values().map(|task| (w.name.worker_id.clone(), task.clone()))).collect()
    }

    /// The names of the tasks live workers provide, sorted.
    pub(crate) fn task_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> =
            self.workers().filter(|w| w.routable()).flat_map(|w| w.tasks.keys().map(String::as_str)).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The cluster as `fastworker workers` shows it.
    pub(crate) fn status(&self) -> ClusterStatus {
        let mut subworkers: Vec<WorkerStatus> =
            self.workers().filter(|w| w.phase != Phase::Connecting).map(worker_status).collect();
        subworkers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        ClusterStatus {
            total_subworkers: subworkers.len() as u32,
            active_subworkers: subworkers.iter().filter(|w| w.status == WorkerState::Active).count() as u32,
            subworkers,
            worker_processes: Vec::new(),
        }
    }
}

/// One row of the table.
fn worker_status<L>(w: &Worker<L>) -> WorkerStatus {
    let mut tasks: Vec<String> = w.tasks.keys().cloned().collect();
    tasks.sort_unstable();
    WorkerStatus {
        worker_id: w.name.worker_id.clone(),
        address: w.address.clone(),
        status: worker_state(w),
        load: w.load(),
        concurrency: w.concurrency,
        last_seen_ms: w.last_seen_ms,
        connected: w.connected,
        dispatched: w.dispatched,
        tasks,
    }
}

fn worker_state<L>(w: &Worker<L>) -> WorkerState {
    match w.phase {
        Phase::Active if w.connected && !w.suspect => WorkerState::Active,
        Phase::Draining => WorkerState::Draining,
        _ => WorkerState::Inactive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::routing::tests::{id, worker};

    #[test]
    fn the_table_hides_connecting_workers_and_sorts_by_id() {
        let mut cluster = Cluster::default();
        let b = worker(&mut cluster, "b", 2, &["upper", "add"]);
        let _a = worker(&mut cluster, "a", 1, &["add"]);
        let connecting = worker(&mut cluster, "connecting", 1, &["add"]);
        cluster.get_mut(connecting).unwrap().phase = Phase::Connecting;
        cluster.get_mut(b).unwrap().phase = Phase::Draining;
        cluster.place(id(), "add");
        let status = cluster.status();
        let ids: Vec<&str> = status.subworkers.iter().map(|w| w.worker_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!((status.total_subworkers, status.active_subworkers), (2, 1));
        let (a, b) = (&status.subworkers[0], &status.subworkers[1]);
        assert_eq!((a.status, a.load, a.dispatched), (WorkerState::Active, 1, 1), "a took the task");
        assert_eq!((b.status, b.load, b.concurrency), (WorkerState::Draining, 0, 2));
        assert_eq!(b.tasks, ["add", "upper"], "tasks are sorted");
        assert_eq!(cluster.size(), (3, 4), "the size counts every registered worker and slot");
    }

    #[test]
    fn offers_come_from_live_workers_only() {
        let mut cluster = Cluster::default();
        let a = worker(&mut cluster, "a", 1, &["upper", "add"]);
        let b = worker(&mut cluster, "b", 1, &["add", "fib"]);
        assert_eq!(cluster.task_names(), ["add", "fib", "upper"], "sorted, each name once");
        let mut offered: Vec<(String, String)> =
            cluster.offered_tasks().into_iter().map(|(worker, task)| (worker, task.name)).collect();
        offered.sort();
        let pairs = [("a", "add"), ("a", "upper"), ("b", "add"), ("b", "fib")];
        assert_eq!(offered, pairs.map(|(w, t)| (w.to_string(), t.to_string())));
        cluster.disconnected(a);
        cluster.abandon(b, id());
        assert!(cluster.task_names().is_empty(), "neither a disconnected nor a suspect worker offers anything");
        assert!(cluster.offered_tasks().is_empty());
    }

    #[test]
    fn defaults_come_from_a_live_provider_and_schedules_from_any_registered_one() {
        let mut cluster = Cluster::default();
        let draining = worker(&mut cluster, "a", 1, &["tick"]);
        let live = worker(&mut cluster, "b", 1, &["tick"]);
        for key in [draining, live] {
            let offer = cluster.get_mut(key).unwrap().tasks.get_mut("tick").unwrap();
            offer.timeout_ms = key;
        }
        cluster.get_mut(draining).unwrap().tasks.get_mut("tick").unwrap().schedule = "{\"every_ms\":1000}".into();
        cluster.get_mut(draining).unwrap().phase = Phase::Draining;
        assert_eq!(cluster.provider("tick").map(|t| t.timeout_ms), Some(live), "a draining worker describes nothing");
        assert_eq!(cluster.describing_provider("tick").map(|(key, t)| (key, t.timeout_ms)), Some((live, live)));
        assert!(cluster.schedules("tick"), "a draining worker's schedule still counts");
        assert!(cluster.provider("nothing").is_none() && !cluster.schedules("nothing"));
        cluster.remove(draining);
        assert!(!cluster.schedules("tick"), "the live provider declares no schedule");
    }
}
