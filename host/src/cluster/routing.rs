//! The control plane's view of its subworkers: who provides which task, who
//! has a free slot, and which task goes where. Pure bookkeeping with no
//! I/O (the connection to each worker is the type parameter `L`), so the
//! routing rules are tested here directly.
//!
//! A worker has one slot per task it runs at once (its `--concurrency`),
//! plus any it asked to have queued ahead (its `--prefetch`, 16 by default); the
//! control plane sends a worker a task only into a free slot. Tasks that find
//! every capable slot taken wait in line (`crate::cluster::waiting`), one
//! queue per priority, and a slot that frees takes the most urgent waiting
//! task its worker provides. So priorities hold across the cluster, and no
//! worker is handed more than it can start.
//!
//! One worker's own state (its phase and slots) is `crate::cluster::worker`;
//! what the cluster reports about itself is `crate::cluster::status`.

use std::time::Duration;

use super::waiting::WaitingLine;
pub(crate) use super::waiting::{Place, Waiting};
pub(crate) use super::worker::{Carried, Joining, Phase, Slot, Worker, WorkerKey};
use crate::wire::protocol::{Priority, TaskId};

/// Every subworker and the tasks waiting for a slot.
pub(crate) struct Cluster<L> {
    workers: Vec<Worker<L>>,
    waiting: WaitingLine,
    /// Where the next search for a least-loaded worker starts, so that
    /// equally loaded workers take turns.
    turn: usize,
    next_key: WorkerKey,
}

/// Where a task should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Sent to this worker's slot (now marked busy with the task).
    Slot(WorkerKey, usize),
    /// Live workers provide it but none has a free slot: it must wait.
    Wait,
    /// No live worker provides it, but a draining one still does: it may
    /// wait for another provider (the name is still known).
    Held,
    /// No live worker provides it.
    Nobody,
    /// A worker could start it, but its task limit holds it back: it waits
    /// in line like [`Placement::Wait`] (see `crate::cluster::task_limits`).
    Limited,
}

/// What the cluster asks before it hands a waiting or new run of a limited
/// task to a worker (the cluster-wide task limits, `crate::cluster::task_limits`).
pub(crate) trait Gate {
    /// Whether runs of `task_name` are limited: such a run goes only to a
    /// worker with a free *running* slot (fewer runs sent than its
    /// concurrency), so that it starts at once, never into prefetch.
    fn limited(&mut self, task_name: &str) -> bool;
    /// Takes a start of `task_id` if its limit allows it now; false holds
    /// it back.
    fn admit(&mut self, task_name: &str, task_id: TaskId) -> bool;
}

/// The gate of a cluster without task limits.
#[cfg(test)]
pub(crate) struct Open;

#[cfg(test)]
impl Gate for Open {
    fn limited(&mut self, _: &str) -> bool {
        false
    }
    fn admit(&mut self, _: &str, _: TaskId) -> bool {
        true
    }
}

impl<L> Default for Cluster<L> {
    fn default() -> Self {
        Cluster { workers: Vec::new(), waiting: WaitingLine::default(), turn: 0, next_key: 1 }
    }
}

impl<L> Cluster<L> {
    /// A key for a worker about to be added.
    pub(crate) fn new_key(&mut self) -> WorkerKey {
        self.next_key += 1;
        self.next_key
    }

    /// Adds a worker, still connecting, heard from at `now_ms`.
    pub(crate) fn add(&mut self, joining: Joining<L>, now_ms: u64) {
        self.workers.push(Worker::joined(joining, now_ms));
    }

    /// Whether there are no workers at all (the common single-node case).
    pub(crate) fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The worker with this key, if it is still registered.
    pub(crate) fn get(&self, key: WorkerKey) -> Option<&Worker<L>> {
        self.workers.iter().find(|w| w.key == key)
    }

    /// The worker with this key, to change it.
    pub(crate) fn get_mut(&mut self, key: WorkerKey) -> Option<&mut Worker<L>> {
        self.workers.iter_mut().find(|w| w.key == key)
    }

    /// The registered worker with this id.
    pub(crate) fn find(&self, worker_id: &str) -> Option<&Worker<L>> {
        self.workers.iter().find(|w| w.name.worker_id == worker_id)
    }

    /// Every registered worker, in the order they joined.
    pub(crate) fn workers(&self) -> impl Iterator<Item = &Worker<L>> {
        self.workers.iter()
    }

    /// Removes a worker; the tasks it was carrying (with their slots) are
    /// returned for sending elsewhere.
    pub(crate) fn remove(&mut self, key: WorkerKey) -> Option<(Worker<L>, Carried)> {
        let index = self.workers.iter().position(|w| w.key == key)?;
        let mut worker = self.workers.remove(index);
        let carried = worker.take_back();
        Some((worker, carried))
    }

    /// Takes back the tasks a worker carries (it went silent or its
    /// connection dropped); their slots stay unusable until released.
    pub(crate) fn take_back(&mut self, key: WorkerKey) -> Carried {
        self.get_mut(key).map(Worker::take_back).unwrap_or_default()
    }

    /// Revokes one task's slot on a worker (its run was not reported in
    /// time): the slot stays unusable until the run is reported or the connection drops, and the
    /// worker gets nothing new until it heartbeats again.
    pub(crate) fn abandon(&mut self, key: WorkerKey, task_id: TaskId) {
        if let Some(worker) = self.get_mut(key) {
            worker.abandon(task_id);
        }
    }

    /// The slot of a worker that carries `task_id`, or carried it before
    /// it was taken back (`true` when abandoned).
    pub(crate) fn slot_of(&self, key: WorkerKey, task_id: TaskId) -> Option<(usize, bool)> {
        self.get(key)?.slot_of(task_id)
    }

    /// Frees the slots whose tasks were taken back (the connection dropped:
    /// nothing more will be heard of those runs).
    pub(crate) fn free_abandoned(&mut self, key: WorkerKey) {
        if let Some(worker) = self.get_mut(key) {
            worker.free_abandoned();
        }
    }

    /// Marks a worker's connection down and the worker inactive: if the
    /// connection comes back, only a heartbeat from the same process makes
    /// it active again (a new process at that address registers anew).
    /// Returns its id.
    pub(crate) fn disconnected(&mut self, key: WorkerKey) -> Option<String> {
        let worker = self.get_mut(key)?;
        worker.disconnect();
        Some(worker.name.worker_id.clone())
    }

    /// Takes a task out of the waiting line (it was cancelled).
    pub(crate) fn forget_waiting(&mut self, task_id: TaskId) {
        self.waiting.forget(task_id);
    }

    /// Chooses the least-loaded live worker providing `task_name` that has a
    /// free slot (equal loads take turns) and marks that slot busy.
    #[cfg(test)]
    pub(crate) fn place(&mut self, task_id: TaskId, task_name: &str) -> Placement {
        self.place_with(task_id, task_name, &mut Open)
    }

    /// As [`Cluster::place`], asking `gate` first about a limited task,
    /// which only a worker with a free running slot may take.
    pub(crate) fn place_with(&mut self, task_id: TaskId, task_name: &str, gate: &mut dyn Gate) -> Placement {
        let limited = gate.limited(task_name);
        let count = self.workers.len();
        let mut provided = false;
        let mut held = false;
        let mut best: Option<(usize, u64)> = None;
        for step in 0..count {
            let index = (self.turn + step) % count;
            let worker = &self.workers[index];
            if !worker.tasks.contains_key(task_name) {
                continue;
            }
            if !worker.routable() {
                held |= worker.draining();
                continue;
            }
            provided = true;
            if worker.free_slot().is_none() || (limited && worker.in_flight() >= worker.concurrency) {
                continue;
            }
            // In-flight tasks as a fixed-point fraction of concurrency.
            let weighted = ((worker.load() as u64) << 32) / worker.concurrency as u64;
            if !matches!(best, Some((_, lowest)) if lowest <= weighted) {
                best = Some((index, weighted));
            }
        }
        match best {
            Some(_) if limited && !gate.admit(task_name, task_id) => Placement::Limited,
            Some((index, _)) => {
                self.turn = index + 1;
                let worker = &mut self.workers[index];
                let slot = worker.free_slot().expect("checked above");
                worker.occupy(slot, task_id);
                Placement::Slot(worker.key, slot)
            }
            None if provided => Placement::Wait,
            None if held => Placement::Held,
            None => Placement::Nobody,
        }
    }

    /// Takes a free slot of worker `key` for `task_id`, if it is routable
    /// and has one (a run asked back for it: see `Ledger::ask_back_for`).
    pub(crate) fn take_slot(&mut self, key: WorkerKey, task_id: TaskId) -> Option<usize> {
        let worker = self.get_mut(key).filter(|w| w.routable())?;
        let slot = worker.free_slot()?;
        worker.occupy(slot, task_id);
        Some(slot)
    }

    /// Puts a task in line for a slot; `first` for a task taken back from a
    /// worker, which has waited longest.
    pub(crate) fn wait(&mut self, priority: Priority, waiting: Waiting, place: Place) {
        self.waiting.push(priority, waiting, place);
    }

    /// Frees a slot once its run was reported (or refused). True when it carried `task_id`
    /// (false for an abandoned slot, whose task went elsewhere).
    pub(crate) fn release(&mut self, key: WorkerKey, slot: usize, task_id: Option<TaskId>) -> bool {
        self.get_mut(key).is_some_and(|worker| worker.release(slot, task_id))
    }

    /// The task in `key`'s slot, if it is busy.
    #[cfg(test)]
    pub(crate) fn carried(&self, key: WorkerKey, slot: usize) -> Option<TaskId> {
        match self.get(key)?.slots.get(slot)? {
            Slot::Busy(task_id) => Some(*task_id),
            _ => None,
        }
    }

    /// Gives a free slot of a live worker the most urgent waiting task it
    /// provides, marking the slot busy.
    #[cfg(test)]
    pub(crate) fn next_for(&mut self, key: WorkerKey, slot: usize) -> Option<TaskId> {
        self.next_for_with(key, slot, &mut Open)
    }

    /// As [`Cluster::next_for`], passing over the waiting runs `gate` holds
    /// back (and, on a worker without a free running slot, every limited
    /// one), so that they block no other task behind them.
    pub(crate) fn next_for_with(&mut self, key: WorkerKey, slot: usize, gate: &mut dyn Gate) -> Option<TaskId> {
        let worker = self.workers.iter_mut().find(|w| w.key == key)?;
        if !worker.routable() || worker.slots.get(slot) != Some(&Slot::Idle) {
            return None;
        }
        let running_room = worker.in_flight() < worker.concurrency;
        let tasks = &worker.tasks;
        let waiting = self.waiting.take_first(|w| {
            tasks.contains_key(&w.task_name)
                && (!gate.limited(&w.task_name) || (running_room && gate.admit(&w.task_name, w.task_id)))
        })?;
        worker.occupy(slot, waiting.task_id);
        Some(waiting.task_id)
    }

    /// Every free slot of a live worker paired with a waiting task it
    /// provides, most urgent first (after a worker joins or comes back).
    #[cfg(test)]
    pub(crate) fn fill(&mut self) -> Vec<(WorkerKey, usize, TaskId)> {
        self.fill_with(&mut Open)
    }

    /// As [`Cluster::fill`], through `gate` (see [`Cluster::next_for_with`]).
    pub(crate) fn fill_with(&mut self, gate: &mut dyn Gate) -> Vec<(WorkerKey, usize, TaskId)> {
        let mut filled = Vec::new();
        if self.waiting.is_empty() {
            return filled;
        }
        let free: Vec<(WorkerKey, usize)> = self
            .workers
            .iter()
            .filter(|w| w.routable())
            .flat_map(|w| w.slots.iter().enumerate().filter(|(_, s)| **s == Slot::Idle).map(|(i, _)| (w.key, i)))
            .collect();
        // A worker that found nothing for one free slot finds nothing for
        // its others: it is asked once.
        let mut done: Vec<WorkerKey> = Vec::new();
        for (key, slot) in free {
            if done.contains(&key) {
                continue;
            }
            match self.next_for_with(key, slot, gate) {
                Some(task_id) => filled.push((key, slot, task_id)),
                None => done.push(key),
            }
        }
        filled
    }

    /// Runs of `task_name` waiting in line for a slot (or for its limit).
    pub(crate) fn waiting_named(&self, task_name: &str) -> usize {
        self.waiting.named(task_name)
    }

    /// Whether a live or draining worker provides `task_name` (a task of
    /// that name may wait for it).
    pub(crate) fn provides(&self, task_name: &str) -> bool {
        self.workers.iter().any(|w| (w.routable() || w.draining()) && w.tasks.contains_key(task_name))
    }

    /// Removes and returns the waiting tasks that no live or draining
    /// worker provides any more.
    pub(crate) fn stranded(&mut self) -> Vec<Waiting> {
        let workers = &self.workers;
        self.waiting.strand(|name| workers.iter().any(|w| (w.routable() || w.draining()) && w.tasks.contains_key(name)))
    }

    /// Marks workers silent for longer than `after` inactive; returns them.
    pub(crate) fn silent(&mut self, now_ms: u64, after: Duration) -> Vec<WorkerKey> {
        self.workers.iter_mut().filter_map(|worker| worker.fell_silent(now_ms, after).then_some(worker.key)).collect()
    }

    /// Records a heartbeat at `now_ms`; true when it brings the worker back from inactive.
    pub(crate) fn heard_from(&mut self, key: WorkerKey, in_flight: u32, now_ms: u64) -> bool {
        self.get_mut(key).is_some_and(|worker| worker.heard(in_flight, now_ms))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::wire::protocol::{OfferedTask, WorkerName};

    fn name(id: &str) -> WorkerName {
        WorkerName { worker_id: id.into(), instance: TaskId::new_v4() }
    }

    /// An active, connected worker providing `tasks`, without prefetch.
    pub(crate) fn worker(cluster: &mut Cluster<()>, id: &str, concurrency: u32, tasks: &[&str]) -> WorkerKey {
        let offer = OfferedTask::new;
        let tasks = tasks.iter().map(|t| (t.to_string(), offer(t))).collect();
        let key = cluster.new_key();
        let address = format!("tcp://{id}:1");
        cluster.add(Joining { key, name: name(id), address, concurrency, prefetch: 0, tasks, link: () }, 1_000);
        let worker = cluster.get_mut(key).unwrap();
        worker.phase = Phase::Active;
        worker.connected = true;
        key
    }

    pub(crate) fn id() -> TaskId {
        TaskId::new_v4()
    }

    #[test]
    fn equal_workers_take_turns_and_the_least_loaded_wins() {
        let mut cluster = Cluster::default();
        let a = worker(&mut cluster, "a", 2, &["add"]);
        let b = worker(&mut cluster, "b", 2, &["add"]);
        let Placement::Slot(first, _) = cluster.place(id(), "add") else { panic!() };
        let Placement::Slot(second, _) = cluster.place(id(), "add") else { panic!() };
        assert_ne!(first, second, "ties are spread");
        // Both at 1/2; one finishes, so it is the least loaded.
        let carried = cluster.carried(a, 0).unwrap();
        assert!(cluster.release(a, 0, Some(carried)));
        assert_eq!(cluster.place(id(), "add"), Placement::Slot(a, 0));
        // Both at 1/2 again: the turn passes to b.
        assert!(matches!(cluster.place(id(), "add"), Placement::Slot(k, _) if k == b));
        assert_eq!(cluster.place(id(), "add"), Placement::Slot(a, 1));
        assert_eq!(cluster.place(id(), "add"), Placement::Wait);
    }

    #[test]
    fn load_is_relative_to_concurrency() {
        let mut cluster = Cluster::default();
        let small = worker(&mut cluster, "small", 1, &["add"]);
        let big = worker(&mut cluster, "big", 4, &["add"]);
        cluster.get_mut(big).unwrap().reported_in_flight = 1;
        // small at 0/1 is less loaded than big at 1/4.
        assert_eq!(cluster.place(id(), "add"), Placement::Slot(small, 0));
        // small is now 1/1, big 1/4.
        assert!(matches!(cluster.place(id(), "add"), Placement::Slot(k, _) if k == big));
    }

    #[test]
    fn routing_is_by_task_name_and_liveness() {
        let mut cluster = Cluster::default();
        let images = worker(&mut cluster, "images", 1, &["resize"]);
        let _text = worker(&mut cluster, "text", 1, &["upper"]);
        assert_eq!(cluster.place(id(), "resize"), Placement::Slot(images, 0));
        assert_eq!(cluster.place(id(), "nothing"), Placement::Nobody);
        cluster.disconnected(images);
        assert_eq!(cluster.place(id(), "resize"), Placement::Nobody);
        assert_eq!(cluster.task_names(), vec!["upper"]);
        // Reconnecting is not enough: only a heartbeat brings it back.
        cluster.get_mut(images).unwrap().connected = true;
        assert!(!cluster.get(images).unwrap().alive());
        assert!(cluster.heard_from(images, 0, 2_000));
        // Routable again (its one slot still carries the first task).
        assert_eq!(cluster.place(id(), "resize"), Placement::Wait);
    }

    #[test]
    fn a_freed_slot_takes_the_most_urgent_task_its_worker_provides() {
        let mut cluster = Cluster::default();
        let a = worker(&mut cluster, "a", 1, &["add", "fib"]);
        let running = id();
        assert_eq!(cluster.place(running, "add"), Placement::Slot(a, 0));
        let (low, other, critical) = (id(), id(), id());
        cluster.wait(Priority::Low, Waiting { task_id: low, task_name: "fib".into() }, Place::Last);
        cluster.wait(Priority::Critical, Waiting { task_id: other, task_name: "upper".into() }, Place::Last);
        cluster.wait(Priority::High, Waiting { task_id: critical, task_name: "add".into() }, Place::Last);
        assert!(cluster.release(a, 0, Some(running)));
        assert_eq!(cluster.next_for(a, 0), Some(critical));
        assert!(cluster.release(a, 0, Some(critical)));
        assert_eq!(cluster.next_for(a, 0), Some(low));
        // "upper" has no live provider any more.
        assert_eq!(cluster.stranded(), vec![Waiting { task_id: other, task_name: "upper".into() }]);
    }

    #[test]
    fn tasks_taken_back_leave_their_slots_unusable_until_released() {
        let mut cluster = Cluster::default();
        let a = worker(&mut cluster, "a", 1, &["add"]);
        let task = id();
        cluster.place(task, "add");
        assert_eq!(cluster.take_back(a), vec![(0, task)]);
        assert_eq!(cluster.place(id(), "add"), Placement::Wait);
        assert!(!cluster.release(a, 0, Some(task)), "an abandoned slot no longer carries its task");
        assert!(matches!(cluster.place(id(), "add"), Placement::Slot(..)));
        // A dropped connection frees every abandoned slot at once.
        let other = id();
        assert!(matches!(cluster.place(other, "add"), Placement::Wait));
        let busy = cluster.carried(a, 0).unwrap();
        cluster.take_back(a);
        assert_eq!(cluster.slot_of(a, busy), Some((0, true)));
        cluster.free_abandoned(a);
        assert_eq!(cluster.slot_of(a, busy), None);
    }

    #[test]
    fn a_task_only_a_draining_worker_provides_is_held_not_stranded() {
        let mut cluster = Cluster::default();
        let a = worker(&mut cluster, "a", 1, &["add"]);
        cluster.get_mut(a).unwrap().phase = Phase::Draining;
        assert_eq!(cluster.place(id(), "add"), Placement::Held);
        let held = id();
        cluster.wait(
            Priority::Normal,
            Waiting { task_id: held, task_name: "add".into() },
            Place::First { created_ms: 0 },
        );
        assert!(cluster.stranded().is_empty(), "a draining provider keeps the name known");
        let b = worker(&mut cluster, "b", 1, &["add"]);
        assert_eq!(cluster.fill(), vec![(b, 0, held)]);
        cluster.remove(a);
        assert_eq!(cluster.place(id(), "add"), Placement::Wait);
    }

    #[test]
    fn a_revoked_run_keeps_its_slot_and_its_worker_gets_nothing_until_it_heartbeats() {
        let mut cluster = Cluster::default();
        let a = worker(&mut cluster, "a", 2, &["add"]);
        let late = id();
        assert_eq!(cluster.place(late, "add"), Placement::Slot(a, 0));
        cluster.abandon(a, late);
        assert_eq!(cluster.slot_of(a, late), Some((0, true)));
        assert_eq!(cluster.carried(a, 0), None, "the slot no longer carries the task");
        assert_eq!(cluster.place(id(), "add"), Placement::Nobody, "a suspect worker is not routed to");
        assert_eq!(cluster.status().active_subworkers, 0);
        assert!(cluster.heard_from(a, 1, 2_000));
        assert_eq!(cluster.place(id(), "add"), Placement::Slot(a, 1));
        assert!(!cluster.release(a, 0, None));
        assert_eq!(cluster.slot_of(a, late), None);
    }

    /// Refuses every run of "slow" beyond `allowed` starts.
    struct Limited {
        allowed: usize,
    }

    impl Gate for Limited {
        fn limited(&mut self, task_name: &str) -> bool {
            task_name == "slow"
        }
        fn admit(&mut self, _: &str, _: TaskId) -> bool {
            let admitted = self.allowed > 0;
            self.allowed = self.allowed.saturating_sub(1);
            admitted
        }
    }

    #[test]
    fn held_back_runs_block_nothing_behind_them_and_never_take_prefetch_slots() {
        let mut cluster = Cluster::default();
        let key = cluster.new_key();
        let tasks = ["slow", "add"]
            .iter()
            .map(|name| {
                let offer = OfferedTask::new(name);
                (name.to_string(), offer)
            })
            .collect();
        let joining =
            Joining { key, name: name("a"), address: "tcp://a:1".into(), concurrency: 1, prefetch: 2, tasks, link: () };
        cluster.add(joining, 1_000);
        let worker = cluster.get_mut(key).unwrap();
        (worker.phase, worker.connected) = (Phase::Active, true);
        let mut gate = Limited { allowed: 0 };
        assert_eq!(cluster.place_with(id(), "slow", &mut gate), Placement::Limited);
        let held = id();
        cluster.wait(Priority::Critical, Waiting { task_id: held, task_name: "slow".into() }, Place::Last);
        let unlimited = id();
        cluster.wait(Priority::Low, Waiting { task_id: unlimited, task_name: "add".into() }, Place::Last);
        assert_eq!(cluster.next_for_with(key, 0, &mut gate), Some(unlimited), "the held run blocks nothing");
        // The worker's one running slot is taken: a limited run would only wait in prefetch.
        gate.allowed = 5;
        assert_eq!(cluster.next_for_with(key, 1, &mut gate), None);
        assert_eq!(cluster.place_with(id(), "slow", &mut gate), Placement::Wait);
        assert!(cluster.release(key, 0, Some(unlimited)));
        assert_eq!(cluster.fill_with(&mut gate), vec![(key, 0, held)]);
        assert_eq!(cluster.waiting_named("slow"), 0);
    }

    #[test]
    fn silence_makes_a_worker_inactive_and_a_heartbeat_brings_it_back() {
        let mut cluster = Cluster::default();
        let a = worker(&mut cluster, "a", 1, &["add"]);
        let later = cluster.get(a).unwrap().last_seen_ms + 31_000;
        assert_eq!(cluster.silent(later, Duration::from_secs(30)), vec![a]);
        assert_eq!(cluster.status().active_subworkers, 0);
        assert_eq!(cluster.place(id(), "add"), Placement::Nobody);
        assert!(cluster.heard_from(a, 0, later));
        assert_eq!(cluster.status().active_subworkers, 1);
    }
}
