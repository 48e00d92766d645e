//! One subworker as the control plane sees it: where it is in its life and
//! what each of its slots is doing. Pure bookkeeping with no I/O (the
//! connection to the worker is the type parameter `L`); the cluster
//! (`crate::cluster::routing`) finds a worker by its key and asks it here.

use std::collections::HashMap;
use std::time::Duration;

use crate::wire::protocol::{OfferedTask, TaskId, WorkerName};

/// A worker's handle in the cluster; never reused, so a late event about a
/// removed worker cannot touch its successor.
pub(crate) type WorkerKey = u64;

/// Tasks taken back from a worker, with the slots that carried them.
pub(crate) type Carried = Vec<(usize, TaskId)>;

/// One subworker.
pub(crate) struct Worker<L> {
    pub(crate) key: WorkerKey,
    pub(crate) name: WorkerName,
    pub(crate) address: String,
    /// The tasks it provides, with their declared defaults.
    pub(crate) tasks: HashMap<String, OfferedTask>,
    /// Tasks it runs at once; its slots may be more (prefetch).
    pub(crate) concurrency: u32,
    pub(crate) slots: Vec<Slot>,
    pub(crate) phase: Phase,
    /// Whether the control plane's connection to it is up.
    pub(crate) connected: bool,
    /// When it was last heard from (ms since the Unix epoch, the ledger's time).
    pub(crate) last_seen_ms: u64,
    /// Tasks it said it has, from any client, in its last heartbeat.
    pub(crate) reported_in_flight: u32,
    /// A run it was sent was not reported in time: it gets nothing new
    /// until its next heartbeat shows it is alive.
    pub(crate) suspect: bool,
    /// Tasks sent to it so far.
    pub(crate) dispatched: u64,
    pub(crate) link: L,
}

/// A worker about to be added, as it registered.
pub(crate) struct Joining<L> {
    pub(crate) key: WorkerKey,
    pub(crate) name: WorkerName,
    pub(crate) address: String,
    pub(crate) concurrency: u32,
    pub(crate) prefetch: u32,
    pub(crate) tasks: HashMap<String, OfferedTask>,
    pub(crate) link: L,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Registered; the control plane is still connecting to it.
    Connecting,
    /// Takes tasks.
    Active,
    /// Silent too long: takes nothing until it heartbeats again.
    Inactive,
    /// Stopping: finishes what it has, takes nothing new.
    Draining,
}

/// What one slot of a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Free.
    Idle,
    /// Carrying this task.
    Busy(TaskId),
    /// Its task was taken back (the worker went silent or its run was not
    /// reported in time); the slot is free again once the worker reports
    /// that run (the report is discarded) or its connection drops.
    Abandoned(TaskId),
}

impl<L> Worker<L> {
    /// A worker as it registered, still connecting, every slot free.
    pub(super) fn joined(joining: Joining<L>, now_ms: u64) -> Worker<L> {
        let Joining { key, name, address, concurrency, prefetch, tasks, link } = joining;
        let concurrency = concurrency.max(1);
        Worker {
            key,
            name,
            address,
            tasks,
            concurrency,
            slots: vec![Slot::Idle; (concurrency + prefetch) as usize],
            phase: Phase::Connecting,
            connected: false,
            last_seen_ms: now_ms,
            reported_in_flight: 0,
            suspect: false,
            dispatched: 0,
            link,
        }
    }

    /// Whether tasks may be sent to it.
    pub(crate) fn routable(&self) -> bool {
        self.phase == Phase::Active && self.connected && !self.suspect
    }

    /// Whether it is stopping but still registered: the tasks it provides
    /// are still known, and may wait for another provider.
    pub(super) fn draining(&self) -> bool {
        self.phase == Phase::Draining
    }

    /// Whether it is up and answering, for the duplicate-id check.
    pub(crate) fn alive(&self) -> bool {
        self.connected && matches!(self.phase, Phase::Active | Phase::Draining)
    }

    /// Runs sent to it and not yet reported.
    pub(super) fn in_flight(&self) -> u32 {
        self.slots.iter().filter(|slot| matches!(slot, Slot::Busy(_))).count() as u32
    }

    pub(super) fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|slot| *slot == Slot::Idle)
    }

    /// The busier of what the control plane sent and what the worker said.
    pub(super) fn load(&self) -> u32 {
        self.in_flight().max(self.reported_in_flight)
    }

    /// Marks `slot` busy with `task_id`, counting the dispatch.
    pub(super) fn occupy(&mut self, slot: usize, task_id: TaskId) {
        self.slots[slot] = Slot::Busy(task_id);
        self.dispatched += 1;
    }

    /// Takes back the tasks it carries; their slots stay unusable until
    /// released.
    pub(super) fn take_back(&mut self) -> Carried {
        let mut carried = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Slot::Busy(task_id) = *slot {
                carried.push((index, task_id));
                *slot = Slot::Abandoned(task_id);
            }
        }
        carried
    }

    /// Revokes the slot carrying `task_id` and makes the worker suspect.
    pub(super) fn abandon(&mut self, task_id: TaskId) {
        self.suspect = true;
        for slot in &mut self.slots {
            if *slot == Slot::Busy(task_id) {
                *slot = Slot::Abandoned(task_id);
            }
        }
    }

    /// The slot that carries `task_id`, or carried it before it was taken
    /// back (`true` when abandoned).
    pub(super) fn slot_of(&self, task_id: TaskId) -> Option<(usize, bool)> {
        self.slots.iter().enumerate().find_map(|(index, slot)| match *slot {
            Slot::Busy(busy) if busy == task_id => Some((index, false)),
            Slot::Abandoned(gone) if gone == task_id => Some((index, true)),
            _ => None,
        })
    }

    /// Frees every slot whose task was taken back.
    pub(super) fn free_abandoned(&mut self) {
        for slot in &mut self.slots {
            if matches!(slot, Slot::Abandoned(_)) {
                *slot = Slot::Idle;
            }
        }
    }

    /// Frees `slot`; true when it carried `task_id`.
    pub(super) fn release(&mut self, slot: usize, task_id: Option<TaskId>) -> bool {
        let Some(state) = self.slots.get_mut(slot) else { return false };
        let carried = matches!((*state, task_id), (Slot::Busy(busy), Some(id)) if busy == id);
        *state = Slot::Idle;
        carried
    }

    /// Its connection dropped: inactive (unless still connecting) until a
    /// heartbeat from the same process.
    pub(super) fn disconnect(&mut self) {
        self.connected = false;
        self.reported_in_flight = 0;
        if self.phase != Phase::Connecting {
            self.phase = Phase::Inactive;
        }
    }

    /// Marks it inactive if it was active or draining and has not been
    /// heard from for longer than `after`; true when it did.
    pub(super) fn fell_silent(&mut self, now_ms: u64, after: Duration) -> bool {
        let quiet = u128::from(now_ms.saturating_sub(self.last_seen_ms)) > after.as_millis();
        let silent = quiet && matches!(self.phase, Phase::Active | Phase::Draining);
        if silent {
            self.phase = Phase::Inactive;
        }
        silent
    }

    /// Records a heartbeat; true when it brings the worker back from
    /// inactive or suspect.
    pub(super) fn heard(&mut self, in_flight: u32, now_ms: u64) -> bool {
        self.last_seen_ms = now_ms;
        self.reported_in_flight = in_flight;
        let back = self.phase == Phase::Inactive || (self.suspect && self.phase == Phase::Active);
        self.suspect = false;
        if back {
            self.phase = Phase::Active;
        }
        back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(concurrency: u32, prefetch: u32) -> Worker<()> {
        let name = WorkerName { worker_id: "a".into(), instance: TaskId::new_v4() };
        let tasks = HashMap::new();
        let joining = Joining { key: 7, name, address: "tcp://a:1".into(), concurrency, prefetch, tasks, link: () };
        Worker::joined(joining, 1_000)
    }

    #[test]
    fn a_joining_worker_has_a_slot_per_run_and_prefetch_and_is_not_routable_yet() {
        let mut w = worker(0, 2);
        assert_eq!((w.concurrency, w.slots.len()), (1, 3), "concurrency is at least one");
        assert_eq!(w.phase, Phase::Connecting);
        assert!(!w.routable() && !w.alive());
        w.disconnect();
        assert_eq!(w.phase, Phase::Connecting, "a drop while connecting keeps it connecting");
        (w.phase, w.connected) = (Phase::Active, true);
        assert!(w.routable() && w.alive());
    }

    #[test]
    fn slots_are_occupied_released_and_taken_back() {
        let mut w = worker(2, 1);
        let (first, second) = (TaskId::new_v4(), TaskId::new_v4());
        w.occupy(w.free_slot().unwrap(), first);
        w.occupy(w.free_slot().unwrap(), second);
        assert_eq!((w.in_flight(), w.dispatched, w.free_slot()), (2, 2, Some(2)));
        w.reported_in_flight = 3;
        assert_eq!(w.load(), 3, "the worker's own count wins when it is higher");
        assert!(!w.release(0, Some(second)), "slot 0 carried the first task");
        assert_eq!(w.slots[0], Slot::Idle, "it is freed anyway");
        assert!(!w.release(9, None), "a slot out of range is ignored");
        assert_eq!(w.take_back(), vec![(1, second)]);
        assert_eq!(w.slot_of(second), Some((1, true)));
        assert_eq!(w.in_flight(), 0);
        w.free_abandoned();
        assert_eq!(w.slot_of(second), None);
        assert!(w.slots.iter().all(|s| *s == Slot::Idle));
    }

    #[test]
    fn an_abandoned_run_makes_the_worker_suspect_until_it_is_heard_from() {
        let mut w = worker(1, 0);
        (w.phase, w.connected) = (Phase::Active, true);
        let late = TaskId::new_v4();
        w.occupy(0, late);
        w.abandon(late);
        assert_eq!(w.slot_of(late), Some((0, true)));
        assert!(!w.routable(), "a suspect worker gets nothing new");
        assert!(w.heard(1, 2_000), "a heartbeat brings a suspect worker back");
        assert!(w.routable());
        assert_eq!(w.reported_in_flight, 1);
        assert!(!w.heard(0, 2_000), "an active worker is not brought back twice");
        w.disconnect();
        assert_eq!((w.phase, w.connected, w.reported_in_flight), (Phase::Inactive, false, 0));
        w.phase = Phase::Draining;
        assert!(!w.heard(0, 2_000), "a heartbeat does not undo draining");
        assert_eq!(w.phase, Phase::Draining);
    }

    #[test]
    fn only_an_active_or_draining_worker_falls_silent_and_only_once() {
        let mut w = worker(1, 0);
        let (after, now) = (Duration::from_secs(30), w.last_seen_ms);
        assert!(!w.fell_silent(now + 31_000, after), "a connecting worker is not marked");
        w.phase = Phase::Draining;
        assert!(!w.fell_silent(now + 30_000, after), "exactly `after` is not yet silent");
        assert!(w.fell_silent(now + 31_000, after));
        assert_eq!(w.phase, Phase::Inactive);
        assert!(!w.fell_silent(now + 60_000, after), "an inactive worker is not marked again");
        w.phase = Phase::Active;
        assert!(!w.fell_silent(now - 500, after), "a clock behind its last heartbeat counts as no silence");
    }
}
