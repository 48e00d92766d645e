//! The state's side of crash isolation (docs/isolation.md): which runs each
//! of this control plane's worker processes carries, how often each task's
//! runs died with their process, and the supervisor's counts for
//! `/metrics`. When the supervisor sees a worker process die, every task it
//! carried counts a crash; a task at `--max-task-crashes` ends `Crashed`,
//! the others go elsewhere as any lost subworker's runs do.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustc_hash::{FxHashMap, FxHashSet};
use tracing::error;

use super::{now_ms, Outbox, State};
use crate::wire::protocol::TaskId;

/// What the supervisor of worker processes shares with the state.
pub(crate) struct CrashWatch {
    /// Crashes after which a task ends `Crashed` (at least 1).
    max_task_crashes: u32,
    runs: Mutex<Runs>,
    /// Worker processes started again after they died.
    pub(crate) restarts: AtomicU64,
    /// Worker processes that died without being asked to stop.
    pub(crate) crashes: AtomicU64,
    /// Worker processes no longer restarted (they crash at load, or too often).
    pub(crate) given_up: AtomicU64,
}

#[derive(Default)]
struct Runs {
    /// The live runs sent to each watched worker process, by worker id.
    carried: FxHashMap<String, FxHashSet<TaskId>>,
    /// Crashes so far of each live task that crashed at least once.
    crashes: FxHashMap<TaskId, u32>,
    /// The crashes per task name, for `/metrics` (names are bounded by the
    /// tasks the plugins declare).
    by_task: BTreeMap<String, u64>,
}

impl CrashWatch {
    /// Watches the worker processes named `worker_ids`.
    pub(crate) fn new(worker_ids: impl IntoIterator<Item = String>, max_task_crashes: u32) -> CrashWatch {
        let carried = worker_ids.into_iter().map(|id| (id, FxHashSet::default())).collect();
        CrashWatch {
            max_task_crashes: max_task_crashes.max(1),
            runs: Mutex::new(Runs { carried, ..Runs::default() }),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
        }
    }

    /// A run of `task_id` was sent to `worker_id` (ignored unless watched).
    pub(crate) fn sent(&self, worker_id: &str, task_id: TaskId) {
        let mut runs = self.runs.lock().expect("crash watch lock");
        if let Some(carried) = runs.carried.get_mut(worker_id) {
            carried.insert(task_id);
        }
    }

    /// `task_id` ended: nothing of it is watched any more.
    pub(crate) fn ended(&self, task_id: TaskId) {
        let mut runs = self.runs.lock().expect("crash watch lock");
        runs.crashes.remove(&task_id);
        for carried in runs.carried.values_mut() {
            carried.remove(&task_id);
        }
    }

    /// The ids of the watched worker processes, for `/readyz`.
    pub(crate) fn worker_ids(&self) -> Vec<String> {
        let runs = self.runs.lock().expect("crash watch lock");
        let mut ids: Vec<String> = runs.carried.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// The crashes counted per task name, for `/metrics`.
    pub(crate) fn crashes_by_task(&self) -> Vec<(String, u64)> {
        let runs = self.runs.lock().expect("crash watch lock");
        runs.by_task.iter().map(|(name, count)| (name.clone(), *count)).collect()
    }

    /// `worker_id` died: each task it carried counts a crash. Returns
    /// those at the bound, with their crash count.
    fn died(&self, worker_id: &str) -> Vec<(TaskId, u32)> {
        let mut runs = self.runs.lock().expect("crash watch lock");
        let carried = runs.carried.get_mut(worker_id).map(std::mem::take).unwrap_or_default();
        let mut poisoned = Vec::new();
        for task_id in carried {
            let count = runs.crashes.entry(task_id).or_insert(0);
            *count = count.saturating_add(1);
            if *count >= self.max_task_crashes {
                poisoned.push((task_id, *count));
            }
        }
        poisoned
    }
}

impl State {
    /// The supervisor saw the worker process `worker_id` die (`how`: its
    /// signal or exit status). Each task it carried counts a crash; those at
    /// `--max-task-crashes` end `Crashed`, whichever worker their run is on
    /// now; the others are sent again as the lost link's runs are.
    pub(crate) fn worker_process_died(&self, worker_id: &str, how: &str) {
        let Some(watch) = self.crashes.get() else { return };
        watch.crashes.fetch_add(1, Ordering::Relaxed);
        let poisoned = watch.died(worker_id);
        if poisoned.is_empty() {
            error!(worker = worker_id, "worker process died ({how}); its runs are sent again");
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
