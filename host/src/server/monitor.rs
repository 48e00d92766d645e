//! What the dashboard shows and `/metrics` exports, gathered where tasks
//! change state: counters by task name and priority, run-time histograms,
//! a per-second history for the charts, a bounded ring of recently finished
//! tasks, and a broadcast of state changes for the page's live stream.
//!
//! Every hook is called with the task lock held, so updates never contend
//! with each other; the book's own mutex only keeps the dashboard's readers
//! off the task lock. Events are built only while someone watches: with the
//! page closed, a state change costs one atomic load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::ledger::LiveTask;
use crate::wire::protocol::{now_ms, Priority, TaskId, TaskReport, TaskState};

/// Finished tasks kept for the dashboard's task list and its retry action.
pub(crate) const RECENT_CAPACITY: usize = 1000;

/// Task names counted apart (each is a label set on `/metrics`).
pub(crate) const MAX_TASK_NAMES: usize = 4096;

/// The name under which tasks past [`MAX_TASK_NAMES`] are counted.
pub(crate) const OTHER_TASKS: &str = "(other tasks)";

/// Arguments larger than this are not kept with a finished task (so the
/// ring holds at most [`RECENT_CAPACITY`] times this much), and such a task
/// cannot be retried from the dashboard.
pub(crate) const RECENT_ARGS_MAX: usize = 16 * 1024;

/// Seconds of throughput and latency history kept for the charts.
pub(crate) const HISTORY_SECONDS: usize = 600;

/// Upper bounds of the run-time histogram buckets, in milliseconds.
pub(crate) const DURATION_BUCKETS_MS: [u64; 14] =
    [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000];

/// Events a slow page may fall behind by before it is told to reload its list.
const EVENT_BUFFER: usize = 1024;

/// A task as the dashboard lists it: no result and no arguments, so that
/// listing stays cheap.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TaskSummary {
    pub(crate) task_id: TaskId,
    pub(crate) task_name: String,
    pub(crate) state: &'static str,
    pub(crate) priority: &'static str,
    pub(crate) worker: String,
    pub(crate) attempts: u32,
    pub(crate) created_ms: u64,
    pub(crate) started_ms: Option<u64>,
    pub(crate) finished_ms: Option<u64>,
    pub(crate) duration_ms: Option<u64>,
    /// The error's message, for failed, timed-out and cancelled tasks.
    pub(crate) error: Option<String>,
}

impl TaskSummary {
    /// The summary of a task's report.
    pub(crate) fn of(report: &TaskReport) -> TaskSummary {
        TaskSummary {
            task_id: report.task_id,
            task_name: report.task_name.clone(),
            state: report.state.as_str(),
            priority: report.priority.as_str(),
            worker: report.worker.clone(),
            attempts: report.attempts,
            created_ms: report.created_ms,
            started_ms: report.started_ms,
            finished_ms: report.finished_ms,
            duration_ms: run_ms(report),
            error: report.error.as_ref().map(|e| e.message.clone()),
        }
    }

    /// The summary of a live task: one sent to a worker and not yet
    /// started there is `prefetched` ([`LiveTask::prefetched`]).
    pub(crate) fn live<W>(task: &LiveTask<W>) -> TaskSummary {
        TaskSummary { state: live_state(task), ..TaskSummary::of(&task.reported()) }
    }
}

/// A live task's state as the dashboard shows it: its report's, except
/// `prefetched` for a run sent to a worker and not yet started there (the
/// rule the Queues card and the subworker rows count by).
pub(crate) fn live_state<W>(task: &LiveTask<W>) -> &'static str {
    if task.prefetched() {
        "prefetched"
    } else {
        task.report.state.as_str()
    }
}

/// A finished task in the ring, with its arguments for a retry.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub(crate) summary: TaskSummary,
    pub(crate) priority: Priority,
    /// `None` when they were larger than [`RECENT_ARGS_MAX`].
    pub(crate) args: Option<Arc<Vec<u8>>>,
}

/// Counters of one task name at one priority.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    pub(crate) submitted: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) retried: u64,
    pub(crate) timed_out: u64,
    pub(crate) cancelled: u64,
    /// Runs per bucket of [`DURATION_BUCKETS_MS`] (not cumulative); the
    /// last entry counts runs longer than every bound.
    pub(crate) buckets: [u64; DURATION_BUCKETS_MS.len() + 1],
    pub(crate) duration_sum_ms: u64,
}

/// One second of the charts' history.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Second {
    /// The second, since the Unix epoch.
    pub(crate) t: u64,
    /// Tasks that ended in it, however they ended.
    pub(crate) finished: u32,
    /// Of those, the ones that did not succeed.
    pub(crate) failed: u32,
    /// Sum and maximum of their run times, in milliseconds.
    pub(crate) duration_sum_ms: u64,
    pub(crate) duration_max_ms: u64,
}

/// Something the page should hear of at once.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event {
    /// A task changed state.
    Task(TaskSummary),
    /// A subworker appeared, changed status, or went away.
    Worker(serde_json::Value),
    /// The overview (queues, cache, workers, counters), every second.
    Snapshot(serde_json::Value),
    /// A workflow appeared or changed (the dashboard's table row).
    Workflow(serde_json::Value),
}

impl Event {
    /// The SSE event name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Event::Task(_) => "task",
            Event::Worker(_) => "worker",
            Event::Snapshot(_) => "snapshot",
            Event::Workflow(_) => "workflow",
        }
    }
}

/// The dashboard's counters, ring, history and event stream.
pub(crate) struct Monitor {
    started: Instant,
    started_ms: u64,
    watchers: Arc<AtomicUsize>,
    events: broadcast::Sender<Arc<Event>>,
    book: Mutex<Book>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// What the hooks write and the dashboard reads.
#[derive(Default)]
pub(crate) struct Book {
    recent: VecDeque<Finished>,
    counts: HashMap<String, [Counts; 4]>,
    history: Vec<Second>,
}

/// A subscription to the event stream; the count of watchers drops with it.
pub(crate) struct Watch {
    pub(crate) events: broadcast::Receiver<Arc<Event>>,
    watchers: Arc<AtomicUsize>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            started: Instant::now(),
            started_ms: now_ms(),
            watchers: Arc::new(AtomicUsize::new(0)),
            events: broadcast::channel(EVENT_BUFFER).0,
            book: Mutex::new(Book { history: vec![Second::default(); HISTORY_SECONDS], ..Book::default() }),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
        }
    }
}

impl Monitor {
    /// A task was accepted.
    pub(crate) fn accepted(&self, report: &TaskReport) {
        self.book().counts(&report.task_name, report.priority).submitted += 1;
        self.changed(|| TaskSummary::of(report));
    }

    /// A task changed state without ending (it was sent to a worker,
    /// started, or was queued again); `summary` is built only while
    /// someone watches.
    pub(crate) fn changed(&self, summary: impl FnOnce() -> TaskSummary) {
        if self.watched() {
            self.publish(Event::Task(summary()));
        }
    }

    /// A run failed and the task waits to be retried.
    pub(crate) fn retrying(&self, report: &TaskReport) {
        self.book().counts(&report.task_name, report.priority).retried += 1;
        self.changed(|| TaskSummary::of(report));
    }

    /// A task ended; `report` holds its final state.
    pub(crate) fn finished(&self, report: &TaskReport, args: &Arc<Vec<u8>>) {
        let summary = TaskSummary::of(report);
        let duration = summary.duration_ms;
        {
            let mut book = self.book();
            let counts = book.counts(&report.task_name, report.priority);
            match report.state {
                TaskState::Succeeded => counts.succeeded += 1,
                TaskState::TimedOut => counts.timed_out += 1,
                TaskState::Cancelled => counts.cancelled += 1,
                _ => counts.failed += 1,
            }
            if let Some(ms) = duration {
                let bucket = DURATION_BUCKETS_MS.iter().position(|&bound| ms <= bound);
                counts.buckets[bucket.unwrap_or(DURATION_BUCKETS_MS.len())] += 1;
                counts.duration_sum_ms += ms;
            }
            let now_s = report.finished_ms.unwrap_or_else(now_ms) / 1000;
            let second = &mut book.history[now_s as usize % HISTORY_SECONDS];
            if second.t != now_s {
                *second = Second { t: now_s, ..Second::default() };
            }
            second.finished += 1;
            second.failed += u32::from(report.state != TaskState::Succeeded);
            if let Some(ms) = duration {
                second.duration_sum_ms += ms;
                second.duration_max_ms = second.duration_max_ms.max(ms);
            }
            if book.recent.len() == RECENT_CAPACITY {
                book.recent.pop_front();
            }
            let event = self.watched().then(|| summary.clone());
            let args = (args.len() <= RECENT_ARGS_MAX).then(|| args.clone());
            book.recent.push_back(Finished { summary, priority: report.priority, args });
            drop(book);
            if let Some(summary) = event {
                self.publish(Event::Task(summary));
            }
        }
    }

    /// A result query reached the cache and found the task (`true`) or not.
    pub(crate) fn cache_lookup(&self, found: bool) {
        let counter = if found { &self.cache_hits } else { &self.cache_misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Result queries answered from the cache, and those it could not answer.
    pub(crate) fn cache_hits_misses(&self) -> (u64, u64) {
        (self.cache_hits.load(Ordering::Relaxed), self.cache_misses.load(Ordering::Relaxed))
    }

    /// Whether anyone is watching the event stream.
    pub(crate) fn watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Sends an event to every watcher (dropped when nobody watches).
    pub(crate) fn publish(&self, event: Event) {
        let _ = self.events.send(Arc::new(event));
    }

    /// Starts watching the event stream.
    pub(crate) fn watch(&self) -> Watch {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        Watch { events: self.events.subscribe(), watchers: self.watchers.clone() }
    }

    /// When this process started, in milliseconds since the Unix epoch, and
    /// how long ago, in seconds.
    pub(crate) fn uptime(&self) -> (u64, f64) {
        (self.started_ms, self.started.elapsed().as_secs_f64())
    }

    /// The book, for reading.
    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().expect("monitor lock")
    }
}

impl Book {
    /// The counters of a task name; past [`MAX_TASK_NAMES`] names (each a
    /// label set on `/metrics`), new names share the counters of [`OTHER_TASKS`].
    fn counts(&mut self, task_name: &str, priority: Priority) -> &mut Counts {
        let name = if self.counts.contains_key(task_name) || self.counts.len() < MAX_TASK_NAMES {
            task_name
        } else {
            OTHER_TASKS
        };
        if !self.counts.contains_key(name) {
            self.counts.insert(name.to_string(), Default::default());
        }
        &mut self.counts.get_mut(name).expect("inserted above")[priority.index()]
    }

    /// Finished tasks, oldest first.
    pub(crate) fn recent(&self) -> impl DoubleEndedIterator<Item = &Finished> {
        self.recent.iter()
    }

    /// A finished task still in the ring.
    pub(crate) fn find(&self, task_id: TaskId) -> Option<&Finished> {
        self.recent.iter().rev().find(|f| f.summary.task_id == task_id)
    }

    /// The counters of every task name and priority that saw a task, sorted.
    pub(crate) fn all_counts(&self) -> Vec<(&str, Priority, &Counts)> {
        let mut all: Vec<(&str, Priority, &Counts)> = self
            .counts
            .iter()
            .flat_map(|(name, counts)| Priority::ALL.into_iter().map(move |p| (name.as_str(), p, &counts[p.index()])))
            .filter(|(_, _, counts)| counts.submitted + counts.succeeded + counts.failed > 0 || counts.cancelled > 0)
            .collect();
        all.sort_by(|a, b| (a.0, a.1.index()).cmp(&(b.0, b.1.index())));
        all
    }

    /// The last `seconds` seconds of history, oldest first, ending with the
    /// current second (seconds without a finished task are zero).
    pub(crate) fn history(&self, seconds: usize) -> Vec<Second> {
        let now_s = now_ms() / 1000;
        let seconds = seconds.min(HISTORY_SECONDS) as u64;
        (now_s + 1 - seconds..=now_s)
            .map(|t| {
                let second = self.history[t as usize % HISTORY_SECONDS];
                if second.t == t {
                    second
                } else {
                    Second { t, ..Second::default() }
                }
            })
            .collect()
    }
}

/// How long a task's last run took, once it ended.
fn run_ms(report: &TaskReport) -> Option<u64> {
    Some(report.finished_ms?.saturating_sub(report.started_ms?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, state: TaskState) -> TaskReport {
        let now = now_ms();
        TaskReport {
            task_id: TaskId::new_v4(),
            task_name: name.into(),
            state,
            priority: Priority::High,
            worker: "w".into(),
            attempts: 1,
            created_ms: now - 30,
            started_ms: Some(now - 20),
            finished_ms: Some(now),
            result: None,
            error: None,
        }
    }

    #[test]
    fn counts_history_and_ring_follow_the_hooks() {
        let monitor = Monitor::default();
        let args = Arc::new(b"[1]".to_vec());
        for _ in 0..3 {
            monitor.accepted(&report("add", TaskState::Queued));
        }
        monitor.retrying(&report("add", TaskState::Retrying));
        monitor.finished(&report("add", TaskState::Succeeded), &args);
        monitor.finished(&report("add", TaskState::Failed), &args);
        let book = monitor.book();
        let all = book.all_counts();
        assert_eq!(all.len(), 1);
        let (name, priority, counts) = all[0];
        assert_eq!((name, priority), ("add", Priority::High));
        assert_eq!((counts.submitted, counts.succeeded, counts.failed, counts.retried), (3, 1, 1, 1));
        assert_eq!(counts.buckets[DURATION_BUCKETS_MS.iter().position(|&b| b >= 20).unwrap()], 2);
        let history = book.history(5);
        assert_eq!(history.len(), 5);
        assert_eq!(history.iter().map(|s| s.finished).sum::<u32>(), 2);
        assert_eq!(book.recent().count(), 2);
    }

    #[test]
    fn events_flow_only_while_watched() {
        let monitor = Monitor::default();
        monitor.changed(|| TaskSummary::of(&report("add", TaskState::Running)));
        let mut watch = monitor.watch();
        assert!(watch.events.try_recv().is_err(), "nothing was sent before anyone watched");
        monitor.changed(|| TaskSummary::of(&report("add", TaskState::Running)));
        assert!(matches!(&*watch.events.try_recv().unwrap(), Event::Task(t) if t.state == "running"));
        drop(watch);
        assert!(!monitor.watched());
    }

    #[test]
    fn the_ring_is_bounded() {
        let monitor = Monitor::default();
        let args = Arc::new(Vec::new());
        for _ in 0..RECENT_CAPACITY + 5 {
            monitor.finished(&report("add", TaskState::Succeeded), &args);
        }
        assert_eq!(monitor.book().recent().count(), RECENT_CAPACITY);
    }
}
