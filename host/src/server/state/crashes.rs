//! The state's side of crash isolation (docs/isolation.md): which runs each
//! of this control plane's worker processes carries, how often each task's
//! runs died with their process, and each process's record (pid, runs,
//! memory, restarts, recycles, last crash) for `workers`, the dashboard and
//! `/metrics`. When the supervisor sees a worker process die, every task it
//! carried counts a crash; a task at `--max-task-crashes` ends `Crashed`,
//! the others go elsewhere as any lost subworker's runs do.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustc_hash::{FxHashMap, FxHashSet};
use tracing::error;

use super::{now_ms, Outbox, State};
use crate::wire::protocol::{TaskId, WorkerProcessCrash, WorkerProcessStatus};

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
    /// Worker processes replaced on purpose (`--max-tasks-per-child`,
    /// `--max-memory-per-child`).
    pub(crate) recycles: AtomicU64,
}

#[derive(Default)]
struct Runs {
    /// The live runs sent to each watched worker process, by worker id.
    carried: FxHashMap<String, FxHashSet<TaskId>>,
    /// Each watched worker process's record, by worker id.
    processes: BTreeMap<String, WorkerProcessStatus>,
    /// Tasks failed `Crashed`, per task name, for `/metrics` (names are
    /// bounded by the tasks the plugins declare).
    crashed_by_task: BTreeMap<String, u64>,
    /// Crashes of runs (each death of a process counts each run it
    /// carried), per task name.
    crashes_by_task: BTreeMap<String, u64>,
}

/// What `/metrics` shows per task and per worker process.
pub(crate) struct CrashCounts {
    /// Tasks failed `Crashed`, per task name.
    pub(crate) crashed_by_task: Vec<(String, u64)>,
    /// Runs that died with their process, per task name.
    pub(crate) crashes_by_task: Vec<(String, u64)>,
    /// Each worker process's record.
    pub(crate) processes: Vec<WorkerProcessStatus>,
}

impl CrashWatch {
    /// Watches the worker processes named `worker_ids`.
    pub(crate) fn new(worker_ids: impl IntoIterator<Item = String>, max_task_crashes: u32) -> CrashWatch {
        let ids: Vec<String> = worker_ids.into_iter().collect();
        let carried = ids.iter().map(|id| (id.clone(), FxHashSet::default())).collect();
        let processes = ids
            .into_iter()
            .map(|id| (id.clone(), WorkerProcessStatus { worker_id: id, ..WorkerProcessStatus::default() }))
            .collect();
        CrashWatch {
            max_task_crashes: max_task_crashes.max(1),
            runs: Mutex::new(Runs { carried, processes, ..Runs::default() }),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            recycles: AtomicU64::new(0),
        }
    }

    /// A run of `task_id` was sent to `worker_id` (ignored unless watched).
    pub(crate) fn sent(&self, worker_id: &str, task_id: TaskId) {
        let mut runs = self.runs.lock().expect("crash watch lock");
        if let Some(carried) = runs.carried.get_mut(worker_id) {
            carried.insert(task_id);
            if let Some(process) = runs.processes.get_mut(worker_id) {
                process.runs = process.runs.saturating_add(1);
                process.runs_total = process.runs_total.saturating_add(1);
            }
        }
    }

    /// `task_id` ended: nothing of it is watched any more.
    pub(crate) fn ended(&self, task_id: TaskId) {
        let mut runs = self.runs.lock().expect("crash watch lock");
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

    /// The counts per task and the processes' records, for `/metrics`.
    pub(crate) fn counts(&self) -> CrashCounts {
        let runs = self.runs.lock().expect("crash watch lock");
        let pairs = |map: &BTreeMap<String, u64>| map.iter().map(|(name, n)| (name.clone(), *n)).collect();
        CrashCounts {
            crashed_by_task: pairs(&runs.crashed_by_task),
            crashes_by_task: pairs(&runs.crashes_by_task),
            processes: runs.processes.values().cloned().collect(),
        }
    }

    /// Each worker process's record, sorted by worker id.
    pub(crate) fn processes(&self) -> Vec<WorkerProcessStatus> {
        self.runs.lock().expect("crash watch lock").processes.values().cloned().collect()
    }

    /// Runs sent to the live process `worker_id`.
    pub(crate) fn runs_of(&self, worker_id: &str) -> u64 {
        self.runs.lock().expect("crash watch lock").processes.get(worker_id).map_or(0, |p| p.runs)
    }

    /// A process was started as `worker_id`, with `pid`; `restart` when it
    /// replaces one that died.
    pub(crate) fn spawned(&self, worker_id: &str, pid: u32, restart: bool) {
        if restart {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.update(worker_id, |process| {
            process.pid = Some(pid);
            process.runs = 0;
            process.rss_bytes = 0;
            if restart {
                process.restarts = process.restarts.saturating_add(1);
            }
        });
    }

    /// `worker_id`'s resident memory was read: `rss_bytes`.
    pub(crate) fn rss(&self, worker_id: &str, rss_bytes: u64) {
        self.update(worker_id, |process| process.rss_bytes = rss_bytes);
    }

    /// `worker_id` exited after being asked to (a recycle): it finished or
    /// handed back what it held, so nothing it carried counts a crash.
    pub(crate) fn recycled(&self, worker_id: &str) {
        self.recycles.fetch_add(1, Ordering::Relaxed);
        let mut runs = self.runs.lock().expect("crash watch lock");
        if let Some(carried) = runs.carried.get_mut(worker_id) {
            carried.clear();
        }
        if let Some(process) = runs.processes.get_mut(worker_id) {
            process.pid = None;
            process.recycles = process.recycles.saturating_add(1);
        }
    }

    /// `worker_id` is no longer started.
    pub(crate) fn gave_up(&self, worker_id: &str) {
        self.given_up.fetch_add(1, Ordering::Relaxed);
        self.update(worker_id, |process| process.given_up = true);
    }

    fn update(&self, worker_id: &str, change: impl FnOnce(&mut WorkerProcessStatus)) {
        if let Some(process) = self.runs.lock().expect("crash watch lock").processes.get_mut(worker_id) {
            change(process);
        }
    }

    /// `worker_id` died: the runs it carried.
    fn died(&self, worker_id: &str) -> FxHashSet<TaskId> {
        let mut runs = self.runs.lock().expect("crash watch lock");
        runs.carried.get_mut(worker_id).map(std::mem::take).unwrap_or_default()
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
        let died = watch.died(worker_id);
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let now = now_ms();
        // Each counts a crash, kept in the durable store before any restart
        // could replay it.
        let named: Vec<(TaskId, u32, String)> = died
            .into_iter()
            .filter_map(|task_id| {
                let count = tasks.ledger.count_crash(task_id)?;
                self.durable.record_crashes(task_id, count);
                let name = tasks.ledger.get(&task_id).map_or_else(String::new, |t| t.report.task_name.clone());
                Some((task_id, count, name))
            })
            .collect();
        {
            let mut runs = watch.runs.lock().expect("crash watch lock");
            for (_, _, name) in named.iter().filter(|(_, _, name)| !name.is_empty()) {
                *runs.crashes_by_task.entry(name.clone()).or_insert(0) += 1;
            }
            if let Some(process) = runs.processes.get_mut(worker_id) {
                process.pid = None;
                process.crashes = process.crashes.saturating_add(1);
                process.last_crash = Some(WorkerProcessCrash {
                    task_ids: named.iter().map(|(id, _, _)| *id).collect(),
                    tasks: named.iter().map(|(_, _, name)| name.clone()).collect(),
                    how: how.to_string(),
                    at_ms: now,
                });
            }
        }
        let poisoned: Vec<_> = named.into_iter().filter(|(_, count, _)| *count >= watch.max_task_crashes).collect();
        if poisoned.is_empty() {
            error!(worker = worker_id, "worker process died ({how}); its runs are sent again");
        }
        for (task_id, count, task_name) in poisoned {
            if task_name.is_empty() {
                continue;
            }
            *watch.runs.lock().expect("crash watch lock").crashed_by_task.entry(task_name.clone()).or_insert(0) += 1;
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
