//! The control plane's thread that starts each periodic task's run when its
//! schedule falls due, and keeps each schedule's record (runs, skips, the
//! last run) for listings.
//!
//! It submits runs through [`PeriodicRuns`], not the server's state type,
//! so that the state can own the scheduler without the two importing each
//! other.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::plugins::schedule::{Schedule, ScheduleRefused};
use crate::wire::protocol::{now_ms, ScheduleStatus, Submit, TaskId};

/// What the scheduler asks of the tasks it starts.
pub(crate) trait PeriodicRuns: Send + Sync {
    /// Whether the task is still queued or running (its next run is then skipped).
    fn is_live(&self, task_id: TaskId) -> bool;
    /// Accepts one run, or says why not.
    fn accept_periodic(&self, submit: Submit) -> Result<(), String>;
}

/// One schedule and its record.
struct Entry {
    schedule: Schedule,
    next_ms: Option<u64>,
    runs: u32,
    skipped: u32,
    paused: bool,
    last: Option<(TaskId, u64)>,
    last_refusal: Option<String>,
}

/// The control plane's schedules and the thread that runs them.
pub(crate) struct Scheduler {
    shared: Arc<Shared>,
}

struct Shared {
    entries: Mutex<HashMap<String, Entry>>,
    changed: Condvar,
    /// `--max-schedules`.
    max_entries: usize,
    /// `--min-schedule-period`.
    min_period: Duration,
}

impl Scheduler {
    /// Starts the thread; runs are submitted to `state`. It holds at most
    /// `max_entries` schedules, none more frequent than `min_period`.
    pub(crate) fn start(state: Weak<dyn PeriodicRuns>, max_entries: usize, min_period: Duration) -> Scheduler {
        let shared =
            Arc::new(Shared { entries: Mutex::new(HashMap::new()), changed: Condvar::new(), max_entries, min_period });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("schedules".into())
            .spawn(move || run_loop(&thread_shared, &state))
            .expect("spawning the schedule thread");
        Scheduler { shared }
    }

    /// Adds a schedule, first due one period (or cron step) from now; a task
    /// already scheduled keeps its schedule.
    pub(crate) fn add(&self, schedule: Schedule) -> Result<(), ScheduleRefused> {
        let min = self.shared.min_period;
        if let Some(period) = schedule.period().filter(|p| *p < min) {
            return Err(ScheduleRefused::TooFrequent { task: schedule.task_name, period, min });
        }
        let mut entries = self.shared.entries.lock().expect("schedule lock");
        if entries.contains_key(&schedule.task_name) {
            return Ok(());
        }
        if entries.len() >= self.shared.max_entries {
            return Err(ScheduleRefused::TooMany { task: schedule.task_name, max: self.shared.max_entries });
        }
        let next_ms = schedule.next_after(now_ms());
        info!(task = %schedule.task_name, schedule = %schedule.description, next_ms, "periodic task scheduled");
        let entry = Entry { schedule, next_ms, runs: 0, skipped: 0, paused: false, last: None, last_refusal: None };
        entries.insert(entry.schedule.task_name.clone(), entry);
        drop(entries);
        self.shared.changed.notify_one();
        Ok(())
    }

    /// Schedules held now.
    pub(crate) fn len(&self) -> usize {
        self.shared.entries.lock().expect("schedule lock").len()
    }

    /// Removes a task's schedule (its last provider left); true if it had one.
    pub(crate) fn remove(&self, task_name: &str) -> bool {
        let removed = self.shared.entries.lock().expect("schedule lock").remove(task_name).is_some();
        if removed {
            info!(task = task_name, "periodic task unscheduled: no worker provides it any more");
        }
        removed
    }

    /// Pauses or resumes a task's schedule; false when there is none.
    pub(crate) fn set_paused(&self, task_name: &str, paused: bool) -> bool {
        let mut entries = self.shared.entries.lock().expect("schedule lock");
        let Some(entry) = entries.get_mut(task_name) else { return false };
        entry.paused = paused;
        if !paused {
            // Resuming does not replay what fell due while paused.
            entry.next_ms = entry.schedule.next_after(now_ms());
        }
        info!(task = task_name, paused, "schedule {}", if paused { "paused" } else { "resumed" });
        drop(entries);
        self.shared.changed.notify_one();
        true
    }

    /// Every schedule's record, sorted by task; `last_state` reads the state
    /// of each last run.
    pub(crate) fn statuses(&self, last_state: impl Fn(TaskId) -> Option<String>) -> Vec<ScheduleStatus> {
        let entries = self.shared.entries.lock().expect("schedule lock");
        let mut statuses: Vec<ScheduleStatus> = entries
            .values()
            .map(|entry| ScheduleStatus {
                task_name: entry.schedule.task_name.clone(),
                schedule: entry.schedule.description.clone(),
                paused: entry.paused,
                next_ms: if entry.paused { None } else { entry.next_ms },
                runs: entry.runs,
                skipped: entry.skipped,
                last_task_id: entry.last.map(|(id, _)| id),
                last_run_ms: entry.last.map(|(_, at)| at),
                last_outcome: entry.last_refusal.clone(),
            })
            .collect();
        // The tasks' states are read once this lock is released.
        drop(entries);
        for status in &mut statuses {
            if status.last_outcome.is_none() {
                status.last_outcome = status.last_task_id.and_then(&last_state);
            }
        }
        statuses.sort_by(|a, b| a.task_name.cmp(&b.task_name));
        statuses
    }
}

fn run_loop(shared: &Shared, state: &Weak<dyn PeriodicRuns>) {
    let mut entries = shared.entries.lock().expect("schedule lock");
    loop {
        let now = now_ms();
        let earliest = entries.values().filter_map(|e| e.next_ms).min();
        match earliest {
            Some(at) if at <= now => {
                let Some(state) = state.upgrade() else {
                    // Not built yet (or gone, at exit): look again shortly.
                    entries = shared.changed.wait_timeout(entries, Duration::from_millis(50)).expect("schedule lock").0;
                    continue;
                };
                let mut due = Vec::new();
                for entry in entries.values_mut().filter(|e| e.next_ms.is_some_and(|at| at <= now)) {
                    // The next run is counted from now: runs missed while
                    // paused or stopped are not replayed.
                    entry.next_ms = entry.schedule.next_after(now);
                    if !entry.paused {
                        let last = entry.last.map(|(id, _)| id);
                        due.push((entry.schedule.task_name.clone(), entry.schedule.args.clone(), last));
                    }
                }
                // Runs are submitted with this lock released, so that
                // listing schedules never waits behind the task lock.
                drop(entries);
                let started: Vec<_> =
                    due.into_iter().map(|(name, args, last)| start_run(name, args, last, &*state)).collect();
                drop(state);
                entries = shared.entries.lock().expect("schedule lock");
                for run in started {
                    if let Some(entry) = entries.get_mut(&run.task_name) {
                        record_run(entry, run);
                    }
                }
            }
            _ => {
                let wait = earliest.map_or(Duration::from_secs(60), |at| Duration::from_millis(at - now));
                entries = shared.changed.wait_timeout(entries, wait).expect("schedule lock").0;
            }
        }
    }
}

/// What became of one due run.
struct Run {
    task_name: String,
    /// The run's id and start, or `None` when skipped.
    started: Option<(TaskId, u64)>,
    refusal: Option<String>,
}

/// Submits one run, unless the last one is still going.
fn start_run(task_name: String, args: Vec<u8>, last: Option<TaskId>, state: &dyn PeriodicRuns) -> Run {
    if last.is_some_and(|last| state.is_live(last)) {
        debug!(task = %task_name, "previous run still going; this run is skipped");
        return Run { task_name, started: None, refusal: None };
    }
    let task_id = TaskId::now_v7();
    let submit = Submit { task_id, task_name: task_name.clone(), args, ..Default::default() };
    let refusal = match state.accept_periodic(submit) {
        Ok(()) => None,
        Err(refusal) => {
            warn!(task = %task_name, "periodic run refused: {refusal}");
            Some(format!("refused: {refusal}"))
        }
    };
    Run { task_name, started: Some((task_id, now_ms())), refusal }
}

/// Records a run in its schedule's entry.
fn record_run(entry: &mut Entry, run: Run) {
    let Some(started) = run.started else {
        entry.skipped = entry.skipped.saturating_add(1);
        return;
    };
    entry.runs = entry.runs.saturating_add(1);
    entry.last = Some(started);
    entry.last_refusal = run.refusal;
    if entry.schedule.runs.is_some_and(|runs| entry.runs >= runs) {
        entry.next_ms = None;
        info!(task = %entry.schedule.task_name, runs = entry.runs, "periodic task finished its declared runs");
    }
}
