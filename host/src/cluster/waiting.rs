//! The tasks waiting for a free slot on a worker that provides them: one
//! line per priority, most urgent first, oldest first within a priority.
//! Pure bookkeeping with no I/O; the cluster (`crate::cluster::routing`)
//! holds one line and says which waiting task a free slot may take.

use std::collections::VecDeque;

use crate::wire::protocol::{Priority, TaskId};

/// A task waiting for a free slot on a worker that provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub(crate) task_id: TaskId,
    pub(crate) task_name: String,
}

/// Where a task joins its priority's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Behind every task waiting at its priority: a task new to the line.
    Last,
    /// Ahead of its priority's other waiting tasks: a task taken back from
    /// a worker, which has waited longest. Tasks put first keep the order
    /// they were accepted in (`created_ms`, then arrival), so that the runs
    /// a dead worker carried wait in their submission order, not reversed.
    First { created_ms: u64 },
}

/// One task in line, with the acceptance time it was put first with.
#[derive(Debug)]
struct Entry {
    waiting: Waiting,
    first: Option<u64>,
}

/// The waiting tasks, one queue per priority (indexed by
/// [`Priority::index`], most urgent first).
#[derive(Debug, Default)]
pub(crate) struct WaitingLine {
    queues: [VecDeque<Entry>; 4],
}

impl WaitingLine {
    /// Puts a task in its priority's queue at `place`.
    pub(crate) fn push(&mut self, priority: Priority, waiting: Waiting, place: Place) {
        let queue = &mut self.queues[priority.index()];
        match place {
            Place::Last => queue.push_back(Entry { waiting, first: None }),
            Place::First { created_ms } => {
                // Behind the tasks put first that were accepted no later;
                // only those lead the queue, so the scan is as short as
                // the runs taken back.
                let at = queue.iter().take_while(|entry| entry.first.is_some_and(|ms| ms <= created_ms)).count();
                queue.insert(at, Entry { waiting, first: Some(created_ms) });
            }
        }
    }

    /// Whether no task waits at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Takes a task out of the line (it was cancelled).
    pub(crate) fn forget(&mut self, task_id: TaskId) {
        for queue in &mut self.queues {
            queue.retain(|entry| entry.waiting.task_id != task_id);
        }
    }

    /// Removes and returns the most urgent, then oldest, waiting task that
    /// `eligible` accepts; the tasks it passes over keep their places.
    /// `eligible` is asked in line order and not after it accepts one.
    pub(crate) fn take_first(&mut self, mut eligible: impl FnMut(&Waiting) -> bool) -> Option<Waiting> {
        for queue in &mut self.queues {
            if let Some(position) = queue.iter().position(|entry| eligible(&entry.waiting)) {
                return queue.remove(position).map(|entry| entry.waiting);
            }
        }
        None
    }

    /// Tasks of `task_name` in line.
    pub(crate) fn named(&self, task_name: &str) -> usize {
        self.queues.iter().flatten().filter(|entry| entry.waiting.task_name == task_name).count()
    }

    /// Removes and returns, in line order, the tasks whose name `provided`
    /// refuses.
    pub(crate) fn strand(&mut self, mut provided: impl FnMut(&str) -> bool) -> Vec<Waiting> {
        let mut stranded = Vec::new();
        for queue in &mut self.queues {
            queue.retain_mut(|Entry { waiting, .. }| {
                let keep = provided(&waiting.task_name);
                if !keep {
                    // The entry is dropped from the queue: move its name out
                    // rather than copy it.
                    stranded
                        .push(Waiting { task_id: waiting.task_id, task_name: std::mem::take(&mut waiting.task_name) });
                }
                keep
            });
        }
        stranded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(task_name: &str) -> Waiting {
        Waiting { task_id: TaskId::new_v4(), task_name: task_name.into() }
    }

    /// Drains the line in the order slots would take from it.
    fn drain(line: &mut WaitingLine) -> Vec<Waiting> {
        std::iter::from_fn(|| line.take_first(|_| true)).collect()
    }

    #[test]
    fn the_most_urgent_priority_goes_first_and_each_priority_in_arrival_order() {
        let mut line = WaitingLine::default();
        assert!(line.is_empty());
        let (low, normal_1, critical, normal_2, high) =
            (waiting("a"), waiting("b"), waiting("c"), waiting("d"), waiting("e"));
        line.push(Priority::Low, low.clone(), Place::Last);
        line.push(Priority::Normal, normal_1.clone(), Place::Last);
        line.push(Priority::Critical, critical.clone(), Place::Last);
        line.push(Priority::Normal, normal_2.clone(), Place::Last);
        line.push(Priority::High, high.clone(), Place::Last);
        assert!(!line.is_empty());
        assert_eq!(drain(&mut line), vec![critical, high, normal_1, normal_2, low]);
        assert!(line.is_empty());
    }

    #[test]
    fn first_puts_a_task_ahead_of_its_priority_only() {
        let mut line = WaitingLine::default();
        let (older, taken_back, critical) = (waiting("a"), waiting("a"), waiting("a"));
        line.push(Priority::Normal, older.clone(), Place::Last);
        line.push(Priority::Critical, critical.clone(), Place::Last);
        line.push(Priority::Normal, taken_back.clone(), Place::First { created_ms: 0 });
        assert_eq!(drain(&mut line), vec![critical, taken_back, older]);
    }

    #[test]
    fn tasks_put_first_together_keep_their_acceptance_order() {
        let mut line = WaitingLine::default();
        let (waited, first, second, third) = (waiting("a"), waiting("a"), waiting("a"), waiting("a"));
        line.push(Priority::Normal, waited.clone(), Place::Last);
        // A dead worker's runs come back in slot order, not acceptance order.
        line.push(Priority::Normal, second.clone(), Place::First { created_ms: 20 });
        line.push(Priority::Normal, first.clone(), Place::First { created_ms: 10 });
        line.push(Priority::Normal, third.clone(), Place::First { created_ms: 20 });
        assert_eq!(drain(&mut line), vec![first, second, third, waited]);
    }

    #[test]
    fn take_first_passes_over_refused_tasks_and_leaves_them_in_place() {
        let mut line = WaitingLine::default();
        let (held, other, later) = (waiting("slow"), waiting("add"), waiting("slow"));
        line.push(Priority::Critical, held.clone(), Place::Last);
        line.push(Priority::Low, other.clone(), Place::Last);
        line.push(Priority::Low, later.clone(), Place::Last);
        let mut asked = Vec::new();
        let taken = line.take_first(|w| {
            asked.push(w.task_id);
            w.task_name == "add"
        });
        assert_eq!(taken, Some(other.clone()));
        assert_eq!(asked, vec![held.task_id, other.task_id], "nothing is asked after the one accepted");
        assert_eq!(line.take_first(|w| w.task_name == "fib"), None);
        assert_eq!(line.named("slow"), 2);
        assert_eq!(line.named("add"), 0);
        assert_eq!(drain(&mut line), vec![held, later]);
    }

    #[test]
    fn forget_removes_one_task_from_whichever_priority_holds_it() {
        let mut line = WaitingLine::default();
        let (kept, cancelled, also_kept) = (waiting("a"), waiting("a"), waiting("a"));
        line.push(Priority::High, kept.clone(), Place::Last);
        line.push(Priority::Low, cancelled.clone(), Place::Last);
        line.push(Priority::Low, also_kept.clone(), Place::Last);
        line.forget(cancelled.task_id);
        line.forget(TaskId::new_v4());
        assert_eq!(line.named("a"), 2);
        assert_eq!(drain(&mut line), vec![kept, also_kept]);
    }

    #[test]
    fn strand_returns_the_unprovided_tasks_in_line_order_and_keeps_the_rest() {
        let mut line = WaitingLine::default();
        let (gone_low, kept, gone_high, gone_normal) =
            (waiting("gone"), waiting("add"), waiting("gone"), waiting("old"));
        line.push(Priority::Low, gone_low.clone(), Place::Last);
        line.push(Priority::Normal, kept.clone(), Place::Last);
        line.push(Priority::High, gone_high.clone(), Place::Last);
        line.push(Priority::Normal, gone_normal.clone(), Place::Last);
        let stranded = line.strand(|name| name == "add");
        assert_eq!(stranded, vec![gone_high, gone_normal, gone_low]);
        assert!(line.strand(|name| name == "add").is_empty(), "stranded tasks left the line");
        assert_eq!(drain(&mut line), vec![kept]);
    }
}
