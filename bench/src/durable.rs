//! The durable mode's rows (`--state-dir`), each compared with the
//! in-memory control plane of the same run:
//!
//! * `durable-blocking` and `durable-pipelined-K`: the `cp` rows' calls to
//!   a control plane started with `--state-dir` on a fresh directory (every
//!   submission acknowledged once stored, every result stored), tasks
//!   run `--in-process` as in the `cp` rows: each run is marked under way
//!   before its code runs (so that a crash of the control plane itself is
//!   counted, docs/isolation.md), after its task's commit unless a client
//!   waits for its outcome (a blocking call: one commit per call).
//! * `durable-isolated-blocking` and `durable-isolated-pipelined-K`: the
//!   same in the default mode, worker processes, against the `cp-isolated`
//!   rows (a run's start is not synced: the supervisor counts a crash).
//! * with `FASTWORKER_BENCH_BASELINE=DIR`, the same rows on the build in
//!   DIR (`durable-base-*`, and `cp-base-isolated-*` for the in-memory
//!   default mode), so that a change to the durable mode is measured before
//!   and after in one run.
//! * recovery: a durable control plane with one thread, holding one long
//!   `sleep_ms` run and 100 000 `add` tasks queued behind it, is killed with
//!   SIGKILL and started again on the same directory and address; the time
//!   from the start of the new process until it answers a status query,
//!   against the time an in-memory control plane takes from its start to
//!   the same answer. A sample of the queued ids is checked to be known
//!   again.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fastworker::client::BatchTask;
use fastworker::{Priority, SubmitOptions, TaskId, TaskState};
use tokio::runtime::Runtime;

use crate::args::Settings;
use crate::processes::{
    add_args, blocking_add, has_worker_processes, pipelined_add, serving, start_control_plane,
    start_isolated_control_plane, FastworkerProcess,
};
use crate::results::Results;

/// Tasks queued in the recovery row.
pub(crate) const RECOVERED_TASKS: usize = 100_000;

/// Submissions per batch while filling the queue of the recovery row.
const BATCH: usize = 1000;

/// The recovery row's figures.
pub(crate) struct Recovery {
    /// From the restarted process's start to its first answer.
    pub(crate) durable: Duration,
    /// From an in-memory control plane's start to its first answer.
    pub(crate) memory: Duration,
}

/// A fresh state directory for `what`, removed when dropped.
struct StateDir(PathBuf);

impl StateDir {
    fn new(what: &str) -> Result<StateDir, String> {
        let dir = std::env::temp_dir().join(format!("fastworker-bench-{what}-{}", TaskId::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(StateDir(dir))
    }

    fn flag(&self) -> [OsString; 2] {
        ["--state-dir".into(), self.0.clone().into()]
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Measures the durable rows into `results`; returns the recovery figures.
pub(crate) fn durable_rows(
    settings: &Settings,
    binary: &std::path::Path,
    plugin: &std::path::Path,
    runtime: &Runtime,
    results: &mut Results,
) -> Result<Recovery, String> {
    let (k, c) = (settings.in_flight, settings.concurrency);
    let dir = StateDir::new("rates")?;
    println!("durable: a control plane as for cp, with --state-dir {}", dir.0.display());
    let mut control_plane = start_control_plane(binary, "durable control plane", Some(plugin), c, &dir.flag())?;
    let client = control_plane.client()?;
    results.push("durable-blocking".into(), false, blocking_add(runtime, &client, settings.budget_part(1)));
    let pipelined = pipelined_add(runtime, &client, k, settings.budget_part(1));
    results.push(format!("durable-pipelined-{k}"), true, pipelined);
    results.stopped(&mut control_plane);
    drop(dir);
    // The default mode: the runs in worker processes, whose start needs no
    // synced record (their supervisor outlives a crash and counts it).
    if has_worker_processes(binary) {
        let dir = StateDir::new("rates-isolated")?;
        println!("durable-isolated: as cp-isolated, with --state-dir {}", dir.0.display());
        let mut control_plane = start_isolated_control_plane(binary, "durable control plane", plugin, c, &dir.flag())?;
        let client = control_plane.client()?;
        let blocking = blocking_add(runtime, &client, settings.budget_part(1));
        results.push("durable-isolated-blocking".into(), false, blocking);
        let pipelined = pipelined_add(runtime, &client, k, settings.budget_part(1));
        results.push(format!("durable-isolated-pipelined-{k}"), true, pipelined);
        results.stopped(&mut control_plane);
    }
    if let Some(dir) = std::env::var_os("FASTWORKER_BENCH_BASELINE").map(PathBuf::from) {
        let (base_binary, base_plugin) = (dir.join("fastworker"), dir.join(plugin.file_name().unwrap_or_default()));
        baseline_rows(settings, &base_binary, &base_plugin, runtime, results)?;
    }
    recovery(binary, plugin, runtime, results)
}

/// The durable rows, and the in-memory default mode's, on the baseline build.
fn baseline_rows(
    settings: &Settings,
    binary: &std::path::Path,
    plugin: &std::path::Path,
    runtime: &Runtime,
    results: &mut Results,
) -> Result<(), String> {
    let (k, c) = (settings.in_flight, settings.concurrency);
    let dir = StateDir::new("rates-base")?;
    println!("durable-base: as durable, on the build {}", binary.display());
    let mut control_plane =
        start_control_plane(binary, "baseline durable control plane", Some(plugin), c, &dir.flag())?;
    let client = control_plane.client()?;
    results.push("durable-base-blocking".into(), false, blocking_add(runtime, &client, settings.budget_part(1)));
    let pipelined = pipelined_add(runtime, &client, k, settings.budget_part(1));
    results.push(format!("durable-base-pipelined-{k}"), true, pipelined);
    results.stopped(&mut control_plane);
    drop(dir);
    if !has_worker_processes(binary) {
        return Ok(());
    }
    println!("cp-base-isolated, durable-base-isolated: as cp-isolated and durable-isolated, on the same build");
    let mut control_plane = start_isolated_control_plane(binary, "baseline isolated control plane", plugin, c, &[])?;
    let client = control_plane.client()?;
    results.push("cp-base-isolated-blocking".into(), false, blocking_add(runtime, &client, settings.budget_part(1)));
    let pipelined = pipelined_add(runtime, &client, k, settings.budget_part(1));
    results.push(format!("cp-base-isolated-pipelined-{k}"), true, pipelined);
    results.stopped(&mut control_plane);
    let dir = StateDir::new("rates-base-isolated")?;
    let mut control_plane =
        start_isolated_control_plane(binary, "baseline durable control plane", plugin, c, &dir.flag())?;
    let client = control_plane.client()?;
    let blocking = blocking_add(runtime, &client, settings.budget_part(1));
    results.push("durable-base-isolated-blocking".into(), false, blocking);
    let pipelined = pipelined_add(runtime, &client, k, settings.budget_part(1));
    results.push(format!("durable-base-isolated-pipelined-{k}"), true, pipelined);
    results.stopped(&mut control_plane);
    Ok(())
}

/// The recovery of [`RECOVERED_TASKS`] queued tasks after a SIGKILL.
fn recovery(
    binary: &std::path::Path,
    plugin: &std::path::Path,
    runtime: &Runtime,
    results: &mut Results,
) -> Result<Recovery, String> {
    let dir = StateDir::new("recovery")?;
    println!("recovery: {RECOVERED_TASKS} queued tasks, kill -9, restart on the same --state-dir");
    let mut extra = dir.flag().to_vec();
    extra.extend(["--max-queued-tasks".into(), (2 * RECOVERED_TASKS).to_string().into()]);
    let mut control_plane = start_control_plane(binary, "recovering control plane", Some(plugin), 1, &extra)?;
    let client = control_plane.client()?;
    // One long run holds the only thread; the rest queue behind it (and,
    // more urgent, it takes the thread again first after the restart).
    let first = SubmitOptions { priority: Some(Priority::Critical), ..Default::default() };
    runtime
        .block_on(client.delay("sleep_ms", (600_000,), first))
        .map_err(|e| format!("submitting the long task: {e}"))?;
    let ids: Vec<TaskId> = (0..RECOVERED_TASKS).map(|_| TaskId::new_v4()).collect();
    for (index, chunk) in ids.chunks(BATCH).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let options = SubmitOptions { task_id: Some(*id), ..Default::default() };
                BatchTask::new("add", add_args((index * BATCH + i) as u64), options).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        let outcomes = runtime.block_on(client.submit_batch(batch)).map_err(|e| format!("a batch: {e}"))?;
        if let Some(Err(refusal)) = outcomes.into_iter().find(Result::is_err) {
            return Err(format!("a queued task was refused: {}", refusal.message));
        }
    }
    control_plane.kill();
    let args: Vec<OsString> =
        ["control-plane", "--no-gui", "--no-discovery", "--in-process", "--concurrency", "1", "--task-modules"]
            .into_iter()
            .map(OsString::from)
            .chain([plugin.into()])
            .chain(extra)
            .collect();
    let started = Instant::now();
    let mut restarted =
        FastworkerProcess::spawn(binary, "recovered control plane", &args, control_plane.address.clone())?;
    serving(&mut restarted)?;
    let durable = started.elapsed();
    let client = restarted.client()?;
    for id in ids.iter().step_by(RECOVERED_TASKS / 10) {
        match runtime.block_on(client.status(*id)) {
            Ok(report) if report.state == TaskState::Queued => {}
            Ok(report) => results.problems.push(format!("recovery: a queued task came back {report:?}")),
            Err(error) => results.problems.push(format!("recovery: a queued task was lost: {error}")),
        }
    }
    // Its queue would keep a graceful stop waiting: it is not measured.
    restarted.kill();
    drop(dir);
    let started = Instant::now();
    let mut memory = start_control_plane(binary, "memory control plane", Some(plugin), 1, &[])?;
    let memory_start = started.elapsed();
    results.stopped(&mut memory);
    Ok(Recovery { durable, memory: memory_start })
}
