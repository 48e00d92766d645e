//! The scale rows: `sleep_ms(10)` on 1, 10 and 100 subworkers of
//! concurrency 4 each (`sleep-N`, against the ideal N × 4 × 100 tasks/s),
//! and a batch of 100 000 `noop` tasks submitted and run end to end
//! (`batch-100000`, see `batch.rs`).
//!
//! Each sleep row starts its own routing control plane (it runs nothing
//! itself), starts the N subworkers at once and waits until the control
//! plane lists all of them as active; then it keeps twice as many calls in
//! flight as there are slots (N × 4 × 2, spread over clients of at most 64
//! calls each) so that no slot waits for the client, for the same budget as
//! every other phase, after the usual warm-up.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::protocol::WorkerState;
use fastworker::Client;
use tokio::runtime::Runtime;

use crate::args::Settings;
use crate::phase::{Budget, Phase};
use crate::processes::{start_control_plane, FastworkerProcess};
use crate::setup::free_base_port;
use crate::{PROBE_TIMEOUT, WARMUP};

/// Slots of each subworker of the sleep rows.
pub(crate) const SLEEP_CONCURRENCY: usize = 4;
/// Milliseconds each sleep task sleeps.
pub(crate) const SLEEP_MS: u64 = 10;
/// Calls one client keeps in flight at most (a connection serves 128 at once by default).
const CALLS_PER_CLIENT: usize = 64;
/// How long a sleep row's subworkers may take to be listed, all of them.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(90);

/// One sleep row: how many subworkers, and what the calls measured.
pub(crate) struct SleepRow {
    pub(crate) subworkers: usize,
    pub(crate) phase: Phase,
    /// The routing control plane's CPU time (user + system, from
    /// `/proc/<pid>/stat`) over the measured phase, if the OS tells.
    pub(crate) cpu: Option<Duration>,
}

impl SleepRow {
    /// The rate of N × 4 slots each finishing a task every 10 ms.
    pub(crate) fn ideal(&self) -> f64 {
        (self.subworkers * SLEEP_CONCURRENCY) as f64 * 1000.0 / SLEEP_MS as f64
    }

    pub(crate) fn efficiency(&self) -> f64 {
        self.phase.rate() / self.ideal()
    }

    /// The control plane's CPU time per routed task, in µs: its CPU time
    /// over the phase divided by the tasks answered in it.
    pub(crate) fn cpu_per_task_us(&self) -> Option<f64> {
        let tasks = self.phase.latencies.len() as u64 + self.phase.wrong;
        self.cpu.filter(|_| tasks > 0).map(|cpu| cpu.as_secs_f64() * 1e6 / tasks as f64)
    }
}

/// Runs one sleep row per size in `settings.sleep_sizes`.
pub(crate) fn sleep_rows(
    settings: &Settings,
    binary: &Path,
    plugin: &Path,
    runtime: &Runtime,
    problems: &mut Vec<String>,
) -> Result<Vec<SleepRow>, String> {
    let mut rows = Vec::new();
    for &n in &settings.sleep_sizes {
        println!("sleep-{n}: a routing control plane, {n} subworkers --concurrency {SLEEP_CONCURRENCY}, sleep_ms({SLEEP_MS})");
        let mut router =
            start_control_plane(binary, &format!("sleep-{n} control plane"), None, settings.concurrency, &[])?;
        let mut workers = start_subworkers(binary, plugin, &router, n, runtime)?;
        let slots = n * SLEEP_CONCURRENCY;
        let in_flight = slots * 2;
        let clients: Result<Vec<Client>, String> =
            (0..in_flight.div_ceil(CALLS_PER_CLIENT)).map(|_| router.client()).collect();
        let clients = clients?;
        let run = |budget| runtime.block_on(sleep_pipelined(&clients, in_flight, budget));
        let warm = run(Budget::time(WARMUP));
        let cpu_before = router.cpu_time();
        let phase = run(settings.budget_part(1));
        let cpu = cpu_before.zip(router.cpu_time()).and_then(|(before, after)| after.checked_sub(before));
        let phase = phase.after_warmup(warm);
        rows.push(SleepRow { subworkers: n, phase, cpu });
        problems.extend(stop_all(&mut workers));
        if let Err(problem) = router.stop() {
            problems.push(problem);
        }
    }
    Ok(rows)
}

/// Starts `n` subworkers (`sleep0`…) of [`SLEEP_CONCURRENCY`] for `router`
/// at once, each on a base port of its own, and waits until the router
/// lists every one as active; one that exits at start (a port taken
/// meanwhile) is started again on another port (at most 2 × N restarts in all).
fn start_subworkers(
    binary: &Path,
    plugin: &Path,
    router: &FastworkerProcess,
    n: usize,
    runtime: &Runtime,
) -> Result<Vec<FastworkerProcess>, String> {
    let mut taken = std::collections::HashSet::new();
    let mut base = || -> Result<u16, String> {
        for _ in 0..100 {
            let base = free_base_port()?;
            if (0..6).all(|offset| !taken.contains(&(base + offset))) {
                taken.extend((0..6).map(|offset| base + offset));
                return Ok(base);
            }
        }
        Err("no free base port for a subworker".into())
    };
    let spawn = |index: usize, base: u16| {
        let args: Vec<OsString> = vec![
            "subworker".into(),
            "--worker-id".into(),
            format!("sleep{index}").into(),
            "--control-plane-address".into(),
            (&router.address).into(),
            "--task-modules".into(),
            plugin.into(),
            "--concurrency".into(),
            SLEEP_CONCURRENCY.to_string().into(),
        ];
        FastworkerProcess::spawn(binary, &format!("subworker sleep{index}"), &args, format!("tcp://127.0.0.1:{base}"))
    };
    let mut workers = Vec::with_capacity(n);
    for index in 0..n {
        workers.push(spawn(index, base()?)?);
    }
    let mut restarts = 0;
    let probe = router.client()?.with_timeout(PROBE_TIMEOUT * 4);
    let started = Instant::now();
    loop {
        for (index, worker) in workers.iter_mut().enumerate() {
            let exited = worker.process.0.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited {
                restarts += 1;
                if restarts > 2 * n.max(1) {
                    return Err(format!(
                        "subworker sleep{index} keeps exiting at start (log: {})",
                        worker.log.display()
                    ));
                }
                *worker = spawn(index, base()?)?;
            }
        }
        let active = match runtime.block_on(probe.workers()) {
            Ok(cluster) => cluster.subworkers.iter().filter(|w| w.status == WorkerState::Active).count(),
            Err(_) => 0,
        };
        if active == n {
            return Ok(workers);
        }
        if started.elapsed() > CLUSTER_TIMEOUT {
            return Err(format!("only {active} of {n} subworkers active after {CLUSTER_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops every process at once (SIGTERM to all, then each is waited for); the problems.
pub(crate) fn stop_all(processes: &mut [FastworkerProcess]) -> Vec<String> {
    std::thread::scope(|scope| {
        let stops: Vec<_> = processes.iter_mut().map(|process| scope.spawn(move || process.stop())).collect();
        stops
            .into_iter()
            .filter_map(|stop| stop.join().unwrap_or_else(|_| Err("a stop panicked".into())).err())
            .collect()
    })
}

/// `in_flight` tokio tasks, spread over `clients`, each calling
/// `sleep_ms(10)` in a loop; a reply is right if it slept at least 10 ms.
async fn sleep_pipelined(clients: &[Client], in_flight: usize, budget: Budget) -> Phase {
    let shared = Arc::new(budget);
    let start = shared.start();
    let callers: Vec<_> = (0..in_flight)
        .map(|index| {
            let (client, budget) = (clients[index % clients.len()].clone(), shared.clone());
            tokio::spawn(async move {
                let mut phase = Phase::default();
                while let Some(n) = budget.claim() {
                    let sent = Instant::now();
                    let result = client.call::<u64>("sleep_ms", (SLEEP_MS,)).await;
                    let latency = sent.elapsed();
                    match result {
                        Ok(slept) if slept >= SLEEP_MS => phase.latencies.push(latency),
                        Ok(slept) => phase.problem(true, || format!("call {n}: sleep_ms({SLEEP_MS}) slept {slept} ms")),
                        Err(error) => phase.problem(false, || format!("call {n}: sleep_ms({SLEEP_MS}): {error}")),
                    }
                }
                phase
            })
        })
        .collect();
    let mut total = Phase::default();
    for caller in callers {
        match caller.await {
            Ok(part) => total.absorb(part),
            Err(error) => total.problem(false, || format!("a caller task failed: {error}")),
        }
    }
    total.finish(start.elapsed())
}
