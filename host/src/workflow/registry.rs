//! The workflows a process knows: live ones, and finished ones kept for
//! their status (as results are, bounded in number, bytes and age), with the index
//! from a member's task id to its workflow. No locks or clocks inside: the
//! caller holds the task lock and passes the time.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::machine::{Machine, NextSteps};
use crate::wire::protocol::{TaskId, TaskState};
use crate::wire::workflow::{MemberReport, WorkflowId, WorkflowReport};

/// One workflow and who waits for it.
pub(crate) struct Entry<W> {
    pub(crate) machine: Machine,
    /// The key that submitted it, when ports authenticate.
    pub(crate) owner: Option<[u8; 8]>,
    pub(crate) created_ms: u64,
    pub(crate) finished_ms: Option<u64>,
    /// Clients waiting for its end.
    pub(crate) waiters: Vec<W>,
    /// A digest of its description, to tell a resubmission from a conflict.
    pub(crate) digest: [u8; 16],
    /// Bytes its description holds.
    pub(crate) bytes: usize,
    /// The number of the last durable record that its status reflects (0:
    /// none): the status is shown only once that record is stored.
    pub(crate) record: u64,
    /// The bytes it is counted for now: while it runs, its description and
    /// the results its groups hold; once finished, all it keeps.
    counted: usize,
}

impl<W> Entry<W> {
    /// A workflow just accepted or rebuilt; `bytes`: its description's.
    pub(crate) fn new(
        machine: Machine,
        owner: Option<[u8; 8]>,
        created_ms: u64,
        digest: [u8; 16],
        bytes: usize,
    ) -> Self {
        Entry {
            machine,
            owner,
            created_ms,
            finished_ms: None,
            waiters: Vec::new(),
            digest,
            bytes,
            record: 0,
            counted: bytes,
        }
    }
}

/// Every workflow known here.
pub(crate) struct Workflows<W> {
    all: FxHashMap<WorkflowId, Entry<W>>,
    by_task: FxHashMap<TaskId, (WorkflowId, u32)>,
    /// Finished workflows, oldest first, for expiry.
    finished: VecDeque<(WorkflowId, u64)>,
    /// Bytes the finished workflows hold.
    finished_bytes: usize,
    live: usize,
    live_bytes: usize,
    keep: usize,
    keep_bytes: usize,
    ttl_ms: Option<u64>,
    /// Counts every change a summary of the workflows could show, so that a
    /// watcher skips looking when nothing changed.
    generation: u64,
}

impl<W> Workflows<W> {
    /// Keeps at most `keep` finished workflows holding at most
    /// `keep_bytes` together, each for at most `ttl_ms`.
    pub(crate) fn new(keep: usize, keep_bytes: usize, ttl_ms: Option<u64>) -> Self {
        Workflows {
            all: FxHashMap::default(),
            by_task: FxHashMap::default(),
            finished: VecDeque::new(),
            finished_bytes: 0,
            live: 0,
            live_bytes: 0,
            keep,
            keep_bytes,
            ttl_ms,
            generation: 0,
        }
    }

    /// Changes so far: a new workflow, a member created or ended, an end,
    /// a finished workflow forgotten.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Every workflow known, in no order (the dashboard's list).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (WorkflowId, &Entry<W>)> + '_ {
        self.all.iter().map(|(id, entry)| (*id, entry))
    }

    /// Workflows running, and the bytes their descriptions and the results
    /// their groups gather hold.
    pub(crate) fn live(&self) -> (usize, usize) {
        (self.live, self.live_bytes)
    }

    /// Finished workflows kept for their status, and the bytes they hold.
    pub(crate) fn kept(&self) -> (usize, usize) {
        (self.finished.len(), self.finished_bytes)
    }

    /// Counts again what a running workflow holds (its groups gathered or
    /// let go of results); returns the bytes of the running ones then.
    pub(crate) fn recount(&mut self, id: &WorkflowId) -> usize {
        if let Some(entry) = self.all.get_mut(id).filter(|entry| entry.finished_ms.is_none()) {
            let counted = entry.bytes + entry.machine.held();
            self.live_bytes = self.live_bytes - entry.counted + counted;
            entry.counted = counted;
        }
        self.live_bytes
    }

    /// Takes a new workflow in (it is running).
    pub(crate) fn insert(&mut self, id: WorkflowId, mut entry: Entry<W>) {
        self.live += 1;
        entry.counted = entry.bytes + entry.machine.held();
        self.live_bytes += entry.counted;
        self.generation += 1;
        self.all.insert(id, entry);
    }

    pub(crate) fn get(&self, id: &WorkflowId) -> Option<&Entry<W>> {
        self.all.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &WorkflowId) -> Option<&mut Entry<W>> {
        self.all.get_mut(id)
    }

    /// The workflow and node a task is a live member of.
    pub(crate) fn member_of(&self, task_id: &TaskId) -> Option<(WorkflowId, u32)> {
        self.by_task.get(task_id).copied()
    }

    /// Indexes the members `effects` create.
    pub(crate) fn note(&mut self, id: WorkflowId, effects: &NextSteps) {
        self.generation += 1;
        for submission in &effects.submit {
            self.by_task.insert(submission.task_id, (id, submission.node));
        }
    }

    /// A member's task ended: it is no longer indexed.
    pub(crate) fn forget_member(&mut self, task_id: &TaskId) {
        self.generation += 1;
        self.by_task.remove(task_id);
    }

    /// Marks a workflow finished at `now_ms` and hands back its waiters.
    pub(crate) fn finished(&mut self, id: WorkflowId, now_ms: u64) -> Vec<W> {
        let Some(entry) = self.all.get_mut(&id) else { return Vec::new() };
        if entry.finished_ms.is_some() {
            return Vec::new();
        }
        entry.finished_ms = Some(now_ms);
        self.generation += 1;
        self.live -= 1;
        self.live_bytes -= entry.counted;
        entry.counted = std::mem::size_of::<Entry<W>>() + entry.machine.bytes();
        self.finished_bytes += entry.counted;
        self.finished.push_back((id, now_ms));
        std::mem::take(&mut entry.waiters)
    }

    /// Drops finished workflows, oldest first, past their age or beyond
    /// the count or bytes kept; returns their ids.
    pub(crate) fn sweep(&mut self, now_ms: u64) -> Vec<WorkflowId> {
        let mut dropped = Vec::new();
        while let Some(&(id, at)) = self.finished.front() {
            let old = self.ttl_ms.is_some_and(|ttl| now_ms.saturating_sub(at) > ttl);
            if !old && self.finished.len() <= self.keep && self.finished_bytes <= self.keep_bytes {
                break;
            }
            dropped.push(id);
            self.finished.pop_front();
            self.generation += 1;
            if let Some(entry) = self.all.remove(&id) {
                self.finished_bytes -= entry.counted;
                for (_, task_id) in entry.machine.live_members() {
                    self.by_task.remove(&task_id);
                }
            }
        }
        dropped
    }

    /// A workflow's status (`live` tells where its created tasks are).
    pub(crate) fn report(&self, id: WorkflowId, live: impl Fn(TaskId) -> Option<TaskState>) -> Option<WorkflowReport> {
        let entry = self.all.get(&id)?;
        let machine = &entry.machine;
        let members = machine
            .members(live)
            .into_iter()
            .map(|(node, task_name, task_id, state)| MemberReport {
                node,
                task_name: task_name.to_string(),
                task_id,
                state,
            })
            .collect();
        Some(WorkflowReport {
            workflow_id: id,
            state: machine.state(),
            created_ms: entry.created_ms,
            finished_ms: entry.finished_ms,
            members,
            result: machine.result().map(<[u8]>::to_vec),
            failure: machine.failure().cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::machine::{validate, Bounds, Outcome};
    use super::super::spec::{task, Workflow};
    use super::*;
    use crate::wire::workflow::WorkflowState;

    fn entry(id: WorkflowId) -> (Entry<u8>, NextSteps) {
        let bounds = Bounds { max_members: 10, max_depth: 8, max_bytes: 1024, max_retries: 1, max_delay_ms: 1 };
        let submit = Workflow::chain([task("add", json!([1, 2])), task("add", json!([3]))]).to_submit(id).unwrap();
        let parents = validate(&submit, &bounds).unwrap();
        let mut machine = Machine::new(submit, parents, 1024);
        let effects = machine.start();
        let mut entry = Entry::new(machine, None, 5, [0; 16], 10);
        entry.waiters.push(7);
        (entry, effects)
    }

    #[test]
    fn members_are_indexed_until_they_end_and_finished_workflows_expire() {
        let mut workflows = Workflows::new(1, usize::MAX, Some(100));
        let (a, b) = (WorkflowId::from_bytes([1; 16]), WorkflowId::from_bytes([2; 16]));
        let (entry_a, effects) = entry(a);
        let first = effects.submit[0].task_id;
        workflows.insert(a, entry_a);
        workflows.note(a, &effects);
        assert_eq!(workflows.member_of(&first), Some((a, 1)));
        assert_eq!(workflows.live(), (1, 10));
        let report = workflows.report(a, |_| Some(TaskState::Running)).unwrap();
        assert_eq!((report.state, report.members.len()), (WorkflowState::Running, 2));
        let cancel = workflows.get_mut(&a).unwrap().machine.cancel("stop".into());
        assert_eq!(cancel.cancel, [first]);
        assert_eq!(workflows.finished(a, 1000), vec![7]);
        assert!(workflows.finished(a, 1000).is_empty(), "finished once");
        assert_eq!(workflows.live(), (0, 0));
        // Its cancelled member still reports in.
        let machine = &mut workflows.get_mut(&a).unwrap().machine;
        machine.member_ended(
            1,
            Outcome::Cancelled(crate::wire::protocol::TaskError {
                kind: crate::wire::protocol::FailureKind::Error,
                message: "x".into(),
            }),
        );
        workflows.forget_member(&first);
        assert_eq!(workflows.member_of(&first), None);
        let (entry_b, _) = entry(b);
        workflows.insert(b, entry_b);
        workflows.finished(b, 1050);
        workflows.sweep(1060);
        assert!(workflows.get(&a).is_none(), "beyond the count kept");
        assert!(workflows.get(&b).is_some());
        workflows.sweep(1200);
        assert!(workflows.get(&b).is_none(), "past its age");
    }

    #[test]
    fn finished_workflows_past_the_bytes_kept_are_dropped_oldest_first() {
        let ids: Vec<WorkflowId> = (0..5u8).map(|i| WorkflowId::from_bytes([i; 16])).collect();
        let (mut one, _) = entry(ids[0]);
        one.machine.cancel("stop".into());
        let size = std::mem::size_of::<Entry<u8>>() + one.machine.bytes();
        let mut workflows = Workflows::new(100, 2 * size, None);
        for (at, id) in ids.iter().enumerate() {
            let (entry, _) = entry(*id);
            workflows.insert(*id, entry);
            workflows.get_mut(id).unwrap().machine.cancel("stop".into());
            workflows.finished(*id, at as u64);
            workflows.sweep(at as u64);
        }
        assert_eq!(workflows.kept(), (2, 2 * size));
        assert_eq!(workflows.live(), (0, 0));
        let kept: Vec<bool> = ids.iter().map(|id| workflows.get(id).is_some()).collect();
        assert_eq!(kept, [false, false, false, true, true], "the newest two are kept");
    }
}
