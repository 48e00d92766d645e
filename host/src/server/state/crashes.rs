//! The state's side of crash isolation (docs/isolation.md): how often each
//! task's runs died with their worker process, and the supervisor's counts
//! for `/metrics`. When the supervisor sees a worker process die, each run
//! its run log says it was executing (`server::run_log`) counts a crash; a
//! task at `--max-task-crashes` ends `Crashed`, the others (and the runs
//! only queued in that process) go elsewhere as any lost subworker's runs do.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rustc_hash::{FxHashMap, FxHashSet};
use tracing::{error, warn};

use super::{now_ms, Outbox, State};
use crate::wire::protocol::TaskId;

/// What the supervisor of worker processes shares with the state.
pub(crate) struct CrashWatch {
    /// Crashes after which a task ends `Crashed` (at least 1).
    max_task_crashes: u32,
    runs: Mutex<Runs>,
    /// Whether any live task has crashed (so that a task's end, on the hot
    /// path, takes the lock only then).
    any_crashed: AtomicBool,
    /// Worker processes started again after they died.
    pub(crate) restarts: AtomicU64,
    /// Worker processes that died without being asked to stop.
    pub(crate) crashes: AtomicU64,
    /// Worker processes no longer restarted (they crash at load, or too often).
    pub(crate) given_up: AtomicU64,
}

#[derive(Default)]
struct Runs {
    /// Crashes so far of each live task that crashed at least once.
    crashes: FxHashMap<TaskId, u32>,
    /// The crashes per task name, for `/metrics` (names are bounded by the
    /// tasks the plugins declare).
    by_task: BTreeMap<String, u64>,
}

impl CrashWatch {
    /// A watch ending a task `Crashed` after `max_task_crashes`.
    pub(crate) fn new(max_task_crashes: u32) -> CrashWatch {
        CrashWatch {
            max_task_crashes: max_task_crashes.max(1),
            runs: Mutex::new(Runs::default()),
            any_crashed: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
        }
    }

    /// `task_id` ended: its crashes are forgotten.
    pub(crate) fn ended(&self, task_id: TaskId) {
        if !self.any_crashed.load(Ordering::Acquire) {
            return;
        }
        let mut runs = self.runs.lock().expect("crash watch lock");
        runs.crashes.remove(&task_id);
        if runs.crashes.is_empty() {
            self.any_crashed.store(false, Ordering::Release);
        }
    }

    /// The crashes counted per task name, for `/metrics`.
    pub(crate) fn crashes_by_task(&self) -> Vec<(String, u64)> {
        let runs = self.runs.lock().expect("crash watch lock");
        runs.by_task.iter().map(|(name, count)| (name.clone(), *count)).collect()
    }

    /// A worker process died executing `executing`: each counts a crash.
    /// Returns those at the bound, with their crash count.
    fn died(&self, executing: Vec<TaskId>) -> Vec<(TaskId, u32)> {
        let mut runs = self.runs.lock().expect("crash watch lock");
        let mut poisoned = Vec::new();
        for task_id in executing {
            let count = runs.crashes.entry(task_id).or_insert(0);
            *count = count.saturating_add(1);
            if *count >= self.max_task_crashes {
                poisoned.push((task_id, *count));
            }
        }
        if !runs.crashes.is_empty() {
            self.any_crashed.store(true, Ordering::Release);
        }
        poisoned
    }
}

impl State {
    /// The supervisor saw the worker process `worker_id` die (`how`: its
    /// signal or exit status) while executing the runs of `executing` (its
    /// run log). Each counts a crash; those at `--max-task-crashes` end
    /// `Crashed`, whichever worker their run is on now; the others, and the
    /// runs only queued in that process, are sent again as the lost link's
    /// runs are.
    pub(crate) fn worker_process_died(&self, worker_id: &str, how: &str, executing: Vec<TaskId>) {
        let Some(watch) = self.crashes.get() else { return };
        watch.crashes.fetch_add(1, Ordering::Relaxed);
        let poisoned = watch.died(executing);
        if poisoned.is_empty() {
            warn!(worker = worker_id, "worker process died ({how}); its runs are sent again");
            return;
        }
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let now = now_ms();
        for (task_id, count) in poisoned {
            let Some(task_name) = tasks.ledger.get(&task_id).map(|t| t.report.task_name.clone()) else { continue };
            *watch.runs.lock().expect("crash watch lock").by_task.entry(task_name.clone()).or_insert(0) += 1;
            error!(%task_id, task = %task_name, worker = worker_id, crashes = count, "task failed as Crashed: its runs killed their worker process {count} times (last: {how})");
            let message = format!(
                "its run killed worker process '{worker_id}' ({how}), {count} times in all (--max-task-crashes {}); it is not sent again",
                watch.max_task_crashes
            );
            self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.crashed(task_id, message, now, io));
        }
        drop(tasks);
        outbox.deliver();
    }

    /// Starts watching the worker processes `worker_ids`, whose tasks wait
    /// for them rather than fail while they restart (`tasks`).
    pub(crate) fn watch_worker_processes(&self, watch: CrashWatch, tasks: FxHashSet<String>) {
        if self.crashes.set(watch).is_ok() {
            let now = now_ms();
            self.drive_locked(|ledger, io| ledger.set_awaited(tasks, now, io));
        }
    }

    /// No worker process is supervised any more (each was given up): tasks
    /// nobody else provides fail rather than wait.
    pub(crate) fn worker_processes_gone(&self) {
        let now = now_ms();
        self.drive_locked(|ledger, io| ledger.set_awaited(FxHashSet::default(), now, io));
    }
}
