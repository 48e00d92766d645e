//! The state's side of crash isolation (docs/isolation.md): each worker
//! process's record (pid, runs, memory, restarts, recycles, last crash) for
//! `workers`, the dashboard and `/metrics`, and the crashes per task. When
//! the supervisor sees a worker process die, each run its run log says it
//! was executing (`server::run_log`) counts a crash of its task (kept by the
//! ledger, and by the store in durable mode); a task at `--max-task-crashes`
//! ends `Crashed`, the others (and the runs only queued in that process) go
//! elsewhere as any lost subworker's runs do. Nothing here is on a run's
//! path: the supervisor, not the dispatch, tells the watch what ran.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustc_hash::FxHashSet;
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
    /// Each watched worker process's record, by worker id.
    processes: BTreeMap<String, WorkerProcessStatus>,
    /// Tasks failed `Crashed`, per task name, for `/metrics` (names are
    /// bounded by the tasks the plugins declare).
    crashed_by_task: BTreeMap<String, u64>,
    /// Crashes of runs (each death of a process counts each run it was
    /// executing), per task name.
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
        let processes = worker_ids
            .into_iter()
            .map(|id| (id.clone(), WorkerProcessStatus { worker_id: id, ..WorkerProcessStatus::default() }))
            .collect();
        CrashWatch {
            max_task_crashes: max_task_crashes.max(1),
            runs: Mutex::new(Runs { processes, ..Runs::default() }),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            recycles: AtomicU64::new(0),
        }
    }

    /// The ids of the watched worker processes, for `/readyz`.
    pub(crate) fn worker_ids(&self) -> Vec<String> {
        self.runs.lock().expect("crash watch lock").processes.keys().cloned().collect()
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

    /// The live process `worker_id` has started `runs` runs so far (its run
    /// log's count).
    pub(crate) fn ran(&self, worker_id: &str, runs: u64) {
        self.update(worker_id, |process| {
            let more = runs.saturating_sub(process.runs);
            process.runs = runs;
            process.runs_total = process.runs_total.saturating_add(more);
        });
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
    /// handed back what it held, so nothing of it counts a crash.
    pub(crate) fn recycled(&self, worker_id: &str) {
        self.recycles.fetch_add(1, Ordering::Relaxed);
        self.update(worker_id, |process| {
            process.pid = None;
            process.recycles = process.recycles.saturating_add(1);
        });
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
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let now = now_ms();
        // Each counts a crash, kept in the durable store before any restart
        // could replay it.
        let named: Vec<(TaskId, u32, String)> = executing
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
        let worker_ids = watch.worker_ids().into_iter().collect();
        if self.crashes.set(watch).is_ok() {
            let now = now_ms();
            self.drive_locked(|ledger, io| {
                ledger.set_worker_processes(worker_ids);
                ledger.set_awaited(tasks, now, io)
            });
        }
    }

    /// No worker process is supervised any more (each was given up): tasks
    /// nobody else provides fail rather than wait.
    pub(crate) fn worker_processes_gone(&self) {
        let now = now_ms();
        self.drive_locked(|ledger, io| ledger.set_awaited(FxHashSet::default(), now, io));
    }
}
