//! `fastworker-bench`: how much a real fastworker control plane costs over
//! raw NNG request/reply on the same machine, how much a subworker (one more
//! hop) adds to that, what a large cluster costs routing, and how much memory
//! a control plane holds.
//!
//! Every timed phase runs after its own unmeasured warm-up, over the same
//! wall-clock budget (`--seconds`, or `--requests` per phase):
//!
//! * `floor-sequential`: one Req0 socket talking to a Rep0 echo server, one
//!   request at a time (blocking send/recv).
//! * `floor-pipelined-K`: the same server, K contexts with an Aio each on one
//!   Req0 socket, so K requests are always in flight.
//! * `cp-blocking`: a `fastworker control-plane` child process running the
//!   example plugin's `add` itself, called with [`fastworker::Client::call`]
//!   one call at a time.
//! * `cp-pipelined-K`: the same, with K calls in flight (K tokio tasks sharing
//!   one client).
//! * `cp-isolated-blocking` and `cp-isolated-pipelined-K`: the same calls
//!   on a control plane in its default mode, running `add` in
//!   `--concurrency` worker processes of one run each (docs/isolation.md),
//!   as ratios to the `cp` rows of the same run (which pass `--in-process`).
//!   `--cp-only` runs the floors, these and the `cp` rows alone.
//! * `cp-base-blocking` and `cp-base-pipelined-K` (with
//!   `FASTWORKER_BENCH_BASELINE=DIR`): the `cp` rows on the build in DIR (its
//!   `fastworker` and example plugin), to compare an older build in one run.
//! * `sw-blocking` and `sw-pipelined-K`: the same calls, sent to a second
//!   control plane that loads no plugin (so it runs nothing itself) and routes
//!   each `add` to one `fastworker subworker` child process loading the
//!   example plugin; measured once that subworker is listed as active.
//! * `sw2-pipelined-K`: the same control plane once a second subworker has
//!   joined, so that `add` is spread over two.
//! * `swN-pipelined-K` (N = `--cluster-size`, default 100): a third control
//!   plane with N registered subworkers: N - 1 fakes registered by this
//!   process through the management protocol (each listens on a port of its
//!   own, as the control plane connects back to it, heartbeats, and provides
//!   only a task nobody submits, `noop_I`: weight on routing, no work), then
//!   one real subworker, last in registration order. `sw1-alone-pipelined-K`
//!   is the same control plane and subworker once the fakes have
//!   unregistered; the ratio of the two is the cost of a large cluster.
//! * `fill-100000-K`: a fourth control plane, running `add` itself with
//!   `--result-cache-size 100000`, given 100 000 `add` calls (K in flight,
//!   distinct task ids, no warm-up) so that it ends up caching 100 000
//!   results.
//!
//! The floor rows are measured in two halves, first and last, so that a
//! drift of the machine's load during the run weighs on them as on the rows
//! they are compared with. Every other row is compared with the floor row of
//! the same kind (`rate/floor`, `p50/floor`, `p99/floor`). The control plane
//! of the `cp` rows and the subworkers run `add` on `--concurrency` threads
//! (default: the number of cores); a control plane sends a subworker no more
//! tasks at once than that, and queues the rest itself.
//!
//! * `http-blocking` and `http-pipelined-K`: `add` through the HTTP API
//!   (`POST /api/v1/tasks` with `wait_ms`) of a control plane like the `cp`
//!   one with its dashboard on, over one keep-alive connection, then K
//!   connections (one thread each); compared with the `cp` rows (see `http_api.rs`).
//! * `durable-blocking`, `durable-pipelined-K` and the recovery of 100 000
//!   queued tasks after `kill -9`: the durable mode (`--state-dir`), each
//!   as a ratio to the in-memory `cp` rows (or start-up) of the same run;
//!   see `durable.rs`. `--durable-only` runs the floors, the `cp` rows and
//!   these alone.
//!
//! Memory is the resident set (VmRSS in `/proc/PID/status`, Linux only) of a
//! control plane with the example plugin loaded: right after it starts, with
//! the default flags and with `--result-cache-size 100000`, and after the
//! `fill` row has cached 100 000 results.
//!
//! The echo server (256 contexts with an Aio each, served by NNG's own
//! threads) runs by default in a child process: this same executable with
//! the internal `--echo-server ADDRESS` argument. In one process the client
//! and the server would share NNG's single I/O poller thread (NNG 1.4), and
//! the pipelined "floor" would come out well below what the control plane,
//! a separate process, reaches. `--floor-in-process` runs it on the
//! benchmark's own NNG threads instead, to show that effect.
//!
//! Every reply is checked (echo bytes for the floor, `a + b` for `add`); any
//! wrong or missing reply, a cluster that does not list the expected
//! subworkers, or a `fastworker` process that does not exit cleanly on
//! SIGTERM, is reported and makes the exit status 1. Last comes a list of
//! the project's speed and memory targets, each marked met or not (a missed
//! target is reported, not an error: figures on a shared machine move).
//!
//! To profile one path, start the processes by hand under a profiler and
//! drive them with the `load` example of this crate (a fixed number of
//! checked calls; see `examples/load.rs`).
//!
//! The floors are two: raw NNG request/reply to an echo server in its own
//! process (`floor-*`, what the transport costs), and a plain TCP echo in its
//! own process (`tcp-*`: 4-byte length prefix and a 64-byte body, one
//! connection per in-flight request, the physical floor of this machine);
//! every row is given as a ratio to both. `cp-auth-*` and `cp-tls-*` are the
//! `cp` rows with a cluster key, and with a key and `tls+tcp://`.
//!
//! * `py-blocking` and `py-pipelined-K` (with `--python PATH`): the Python
//!   client (`clients/python`) on the control plane of the `cp` rows, measured
//!   by `bench/python/client_bench.py` run with PATH, as ratios to the `cp`
//!   rows; see `python.rs`.
//!
//! The scale rows (see `scale.rs`, `batch.rs`, `payload.rs`): `sleep-N`,
//! N subworkers of concurrency 4 running `sleep_ms(10)` against the ideal
//! N × 4 × 100 tasks/s (N from `--sleep-sizes`, default 1, 10, 100);
//! `batch-100000`, 100 000 `noop` tasks submitted in batches and run, end
//! to end; `cp-payload-1024KiB`, `echo` of 1 MiB against the TCP echo
//! moving the same bytes. `--scale-only` runs the floors, the `cp` rows and
//! these alone; `--no-scale` skips them. `--nng-versions` (see
//! `nng_versions.rs`) instead prints the NNG 1.4, 1.11 and 2.0 floors side
//! by side. The figures and the decision they led to: `docs/speed.md`.
//! `--nng-settings LIST` (see `nng_settings.rs`) prints the NNG floors and
//! the `cp` rows under each of several NNG thread settings, side by side.
//!
//! `workflow-chord` (see `workflow.rs`, also among the scale rows): a chord
//! of 1000 `add` and a `sum`, end to end, against 1000 pipelined `add`
//! calls on the same control plane; `--workflow-only` runs it alone.
//! `--payload-only` runs the payload rows alone: in-process, through worker
//! processes, and on the baseline build when one is named.
//!
//! Run with `cargo run --release -p fastworker-bench -- --help` for every option.

mod args;
mod batch;
mod durable;
mod fakes;
mod http_api;
mod nng_floor;
mod nng_settings;
mod nng_versions;
mod payload;
mod phase;
mod processes;
mod python;
mod report;
mod results;
mod scale;
mod scale_report;
mod security;
mod setup;
mod soak;
mod tcp_floor;
mod workflow;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::args::{parse_args, Settings};
use crate::fakes::FakeSubworkers;
use crate::nng_floor::{
    echo_server_main, floor_pipelined, floor_sequential, spawn_echo_child, spawn_echo_server, EchoServer,
};
use crate::phase::{warmed, Budget, Phase};
use crate::processes::{
    add_pipelined, blocking_add, expect_cluster, has_worker_processes, pipelined_add, start_control_plane,
    start_isolated_control_plane, start_subworker,
};
use crate::report::report;
use crate::results::{Results, Row};
use crate::setup::{free_port, locate_binaries, machine_description};

/// Unmeasured run before each measured phase (connections, caches, page faults).
const WARMUP: Duration = Duration::from_millis(300);
/// Longest any single request may take before it counts as missing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Contexts of the echo server: requests it serves at once.
const ECHO_CONTEXTS: usize = 256;
/// Longest a `fastworker` process may take to be ready after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of each readiness probe while it starts.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Results the memory-measuring control plane is made to cache.
const CACHED_RESULTS: u64 = 100_000;
/// Time between two heartbeats of each fake subworker (a subworker's default).
const FAKE_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a registration may take (the control plane connects back first).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    // Before any NNG use, as every process of the project: the
    // FASTWORKER_NNG_* thread settings (host/src/wire/nng_threads.rs).
    if let Err(error) = fastworker::wire::nng_threads::configure() {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, seconds, k, c] = args.as_slice() {
        if flag == "--nng-settings-child" {
            return match nng_settings::child(seconds, k, c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    if let [flag, address] = args.as_slice() {
        if flag == "--echo-server" {
            return echo_server_main(address);
        }
        if flag == "--tcp-echo-server" {
            return tcp_floor::serve(address);
        }
    }
    let settings = match parse_args() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let outcome = match settings.soak_minutes {
        Some(minutes) => soak::run(minutes, settings.soak_kill_every, settings.concurrency),
        None if settings.nng_versions => nng_versions::run(&settings),
        None if settings.nng_settings.is_some() => {
            nng_settings::run(&settings, settings.nng_settings.as_deref().unwrap_or_default())
        }
        None if settings.workflow_only => workflow::run(&settings),
        None if settings.payload_only => payload::run(&settings),
        None => run(&settings),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every phase and prints the table; `Ok(false)` if any reply was wrong
/// or missing, a cluster was not as expected, or a process did not stop cleanly.
fn run(settings: &Settings) -> Result<bool, String> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build of the benchmark; run it with `cargo run --release -p fastworker-bench`"
        );
    }
    let (binary, plugin) = locate_binaries()?;
    let (k, c, n) = (settings.in_flight, settings.concurrency, settings.cluster_size);
    println!("machine: {}", machine_description());
    match settings.requests {
        Some(n) => println!("budget: {n} measured requests per phase after {} ms warm-up", WARMUP.as_millis()),
        None => println!("budget: {} s measured per phase after {} ms warm-up", settings.seconds, WARMUP.as_millis()),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    let mut results = Results {
        rows: Vec::new(),
        idle_kib: None,
        idle_large_cache_kib: None,
        cached_kib: None,
        recovery: None,
        sleep: Vec::new(),
        batch: None,
        payload: None,
        workflow: None,
        problems: Vec::new(),
    };

    // The floor: raw NNG, measured in two halves, before and after the rest,
    // so that it sees the same drift of the machine's load as the other rows.
    let echo_address = format!("tcp://127.0.0.1:{}", free_port()?);
    let _server = if settings.floor_in_process {
        println!("floor: echo server on NNG threads of this process");
        let server = EchoServer::start(&echo_address, ECHO_CONTEXTS)
            .map_err(|e| format!("echo server on {echo_address}: {e}"))?;
        (Some(server), None)
    } else {
        println!("floor: echo server in a child process (as the control plane is)");
        (None, Some(spawn_echo_server(&echo_address)?))
    };
    // The physical floor: plain TCP, in its own process too.
    let tcp_address = format!("tcp://127.0.0.1:{}", free_port()?);
    println!("tcp floor: a plain TCP echo server in a child process, {k} connections when pipelined");
    let _tcp_server = spawn_echo_child("--tcp-echo-server", &tcp_address)?;
    let floors = || -> Result<[Phase; 4], String> {
        let sequential = warmed(settings.budget_part(2), |budget| floor_sequential(&echo_address, budget))?;
        let pipelined = warmed(settings.budget_part(2), |budget| floor_pipelined(&echo_address, k, budget))?;
        let tcp_sequential = warmed(settings.budget_part(2), |budget| tcp_floor::sequential(&tcp_address, budget))?;
        let tcp_pipelined = warmed(settings.budget_part(2), |budget| tcp_floor::pipelined(&tcp_address, k, budget))?;
        Ok([sequential, pipelined, tcp_sequential, tcp_pipelined])
    };
    let [floor_seq, floor_pipe, tcp_seq, tcp_pipe] = floors()?;

    // The control plane running `add` itself, as a child process.
    println!("cp: {} control-plane --concurrency {c} --task-modules {}", binary.display(), plugin.display());
    let mut control_plane = start_control_plane(&binary, "control plane", Some(&plugin), c, &[])?;
    results.idle_kib = control_plane.resident_kib();
    let client = control_plane.client()?;
    results.push("cp-blocking".into(), false, blocking_add(&runtime, &client, settings.budget_part(1)));
    results.push(format!("cp-pipelined-{k}"), true, pipelined_add(&runtime, &client, k, settings.budget_part(1)));
    // The Python client against the same control plane, right after.
    if let Some(interpreter) = &settings.python {
        let [blocking, pipelined] = python::rows(settings, interpreter, &control_plane.address)?;
        results.push("py-blocking".into(), false, blocking);
        results.push(format!("py-pipelined-{k}"), true, pipelined);
    }
    results.stopped(&mut control_plane);

    // The same rows on an older build, named by FASTWORKER_BENCH_BASELINE,
    // to tell a regression from a slower day in one run.
    if let Some(dir) = std::env::var_os("FASTWORKER_BENCH_BASELINE").map(std::path::PathBuf::from) {
        let (base_binary, base_plugin) = (dir.join("fastworker"), dir.join(plugin.file_name().unwrap_or_default()));
        println!("cp-base: as cp, on the build in {}", dir.display());
        let mut control_plane =
            start_control_plane(&base_binary, "baseline control plane", Some(&base_plugin), c, &[])?;
        let client = control_plane.client()?;
        results.push("cp-base-blocking".into(), false, blocking_add(&runtime, &client, settings.budget_part(1)));
        let pipelined = pipelined_add(&runtime, &client, k, settings.budget_part(1));
        results.push(format!("cp-base-pipelined-{k}"), true, pipelined);
        results.stopped(&mut control_plane);
    }

    // The same calls on a control plane in its default mode: `add` runs in
    // worker processes (docs/isolation.md), compared with the rows above.
    if has_worker_processes(&binary) {
        println!("cp-isolated: as cp, without --in-process: {c} worker processes of one run each");
        let mut control_plane = start_isolated_control_plane(&binary, "isolated control plane", &plugin, c, &[])?;
        let client = control_plane.client()?;
        results.push("cp-isolated-blocking".into(), false, blocking_add(&runtime, &client, settings.budget_part(1)));
        let pipelined = pipelined_add(&runtime, &client, k, settings.budget_part(1));
        results.push(format!("cp-isolated-pipelined-{k}"), true, pipelined);
        results.stopped(&mut control_plane);
    } else {
        println!("cp-isolated: skipped, {} has no worker processes (a build from before them)", binary.display());
    }
    if settings.cp_only {
        insert_floors(&mut results, [floor_seq, floor_pipe, tcp_seq, tcp_pipe], floors()?, k);
        return Ok(report(settings, &results));
    }

    // The same calls through the HTTP API, on a control plane serving its dashboard.
    println!("http: as cp, with the dashboard on; add submitted with wait_ms over keep-alive HTTP/1.1");
    let (mut control_plane, host) = http_api::start(&binary, &plugin, c, k)?;
    let http = |connections: usize, budget: Budget| {
        warmed(budget, |budget| Ok(http_api::add_over_http(&host, connections, budget))).expect("infallible")
    };
    results.push("http-blocking".into(), false, http(1, settings.budget_part(1)));
    results.push(format!("http-pipelined-{k}"), true, http(k, settings.budget_part(1)));
    results.stopped(&mut control_plane);

    // The same with a cluster key (every frame sealed and checked), then
    // with the key and tls+tcp:// (every link encrypted too).
    let credentials = security::Credentials::make(&binary)?;
    credentials.install_tls()?;
    let keyed = credentials.key_flags();
    let keyed_tls: Vec<OsString> = keyed.iter().cloned().chain(credentials.tls_flags()).collect();
    for (name, extra) in [("auth", &keyed), ("tls", &keyed_tls)] {
        println!("cp-{name}: as cp, with {}", extra.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        let mut control_plane =
            start_control_plane(&binary, &format!("{name} control plane"), Some(&plugin), c, extra)?;
        let client = control_plane.client()?;
        results.push(format!("cp-{name}-blocking"), false, blocking_add(&runtime, &client, settings.budget_part(1)));
        let pipelined = pipelined_add(&runtime, &client, k, settings.budget_part(1));
        results.push(format!("cp-{name}-pipelined-{k}"), true, pipelined);
        results.stopped(&mut control_plane);
    }
    drop(credentials);

    if settings.scale_only {
        scale_rows(settings, &binary, &plugin, &runtime, &mut results)?;
        insert_floors(&mut results, [floor_seq, floor_pipe, tcp_seq, tcp_pipe], floors()?, k);
        return Ok(report(settings, &results));
    }

    // The same with --state-dir, and the recovery of a killed one.
    results.recovery = Some(durable::durable_rows(settings, &binary, &plugin, &runtime, &mut results)?);
    if settings.durable_only {
        insert_floors(&mut results, [floor_seq, floor_pipe, tcp_seq, tcp_pipe], floors()?, k);
        return Ok(report(settings, &results));
    }

    // A control plane that runs nothing, routing `add` to one subworker, then two.
    println!("sw: {} control-plane (no --task-modules), subworkers --concurrency {c}", binary.display());
    let mut router = start_control_plane(&binary, "routing control plane", None, c, &[])?;
    let mut sw1 = start_subworker(&binary, &plugin, &router, "sw1", c)?;
    let client = router.client()?;
    results.push("sw-blocking".into(), false, blocking_add(&runtime, &client, settings.budget_part(1)));
    results.push(format!("sw-pipelined-{k}"), true, pipelined_add(&runtime, &client, k, settings.budget_part(1)));
    let mut sw2 = start_subworker(&binary, &plugin, &router, "sw2", c)?;
    results.push(format!("sw2-pipelined-{k}"), true, pipelined_add(&runtime, &client, k, settings.budget_part(1)));
    // Subworkers first, so that they leave a control plane that still listens.
    results.stopped(&mut sw2);
    results.stopped(&mut sw1);
    results.stopped(&mut router);

    // A control plane with a large cluster, measured A-B-A against the same
    // control plane with the real subworker alone, so that a drift of the
    // machine's load falls on both. Each A registers the fakes first and
    // starts the real subworker last: the order that makes routing look
    // longest for it.
    println!("cluster: a routing control plane with {} fake subworkers and one real one", n - 1);
    let mut router = start_control_plane(&binary, "cluster control plane", None, c, &[])?;
    let client = router.client()?;
    let mut fakes = FakeSubworkers::new(n - 1, c as u32)?;
    let mut cluster = Phase::default();
    let mut alone = Phase::default();
    for half in 0..2 {
        results.problems.extend(runtime.block_on(fakes.join(&router.address)));
        let mut real = start_subworker(&binary, &plugin, &router, "real1", c)?;
        results.problems.extend(expect_cluster(&runtime, &client, n));
        cluster = cluster.merge(pipelined_add(&runtime, &client, k, settings.budget_part(2)));
        if half == 0 {
            results.problems.extend(runtime.block_on(fakes.leave()));
            results.problems.extend(expect_cluster(&runtime, &client, 1));
            alone = pipelined_add(&runtime, &client, k, settings.budget_part(1));
        }
        results.stopped(&mut real);
    }
    results.problems.extend(runtime.block_on(fakes.leave()));
    results.push(format!("sw{n}-pipelined-{k}"), true, cluster);
    results.push(format!("sw1-alone-pipelined-{k}"), true, alone);
    results.stopped(&mut router);

    // Memory of a control plane caching many results.
    let cache_size = CACHED_RESULTS.to_string();
    println!("memory: a control plane as for cp, with --result-cache-size {cache_size}");
    let large_cache: [OsString; 2] = ["--result-cache-size".into(), cache_size.into()];
    let mut control_plane = start_control_plane(&binary, "memory control plane", Some(&plugin), c, &large_cache)?;
    results.idle_large_cache_kib = control_plane.resident_kib();
    let client = control_plane.client()?;
    let fill = runtime.block_on(add_pipelined(&client, k, Budget::requests(CACHED_RESULTS)));
    results.push(format!("fill-{CACHED_RESULTS}-{k}"), true, fill);
    results.cached_kib = control_plane.resident_kib();
    results.stopped(&mut control_plane);

    if !settings.no_scale {
        scale_rows(settings, &binary, &plugin, &runtime, &mut results)?;
    }

    // The floors' second halves.
    insert_floors(&mut results, [floor_seq, floor_pipe, tcp_seq, tcp_pipe], floors()?, k);

    Ok(report(settings, &results))
}

/// Puts the floors, each measured in two halves (NNG sequential and
/// pipelined, TCP sequential and pipelined), at the top of the table.
fn insert_floors(results: &mut Results, first: [Phase; 4], second: [Phase; 4], k: usize) {
    let names = [
        ("floor-sequential".to_string(), false),
        (format!("floor-pipelined-{k}"), true),
        ("tcp-sequential".to_string(), false),
        (format!("tcp-pipelined-{k}"), true),
    ];
    let mut rows: Vec<Row> = names
        .into_iter()
        .zip(first.into_iter().zip(second))
        .map(|((name, pipelined), (a, b))| Row { name, phase: a.merge(b), pipelined })
        .collect();
    rows.rotate_left(2);
    for (index, row) in rows.into_iter().enumerate() {
        results.rows.insert(index, row);
    }
}

/// The scale rows: sleep scaling, the batch of no-op tasks, the 1 MiB payload.
fn scale_rows(
    settings: &Settings,
    binary: &Path,
    plugin: &Path,
    runtime: &Runtime,
    results: &mut Results,
) -> Result<(), String> {
    results.sleep = scale::sleep_rows(settings, binary, plugin, runtime, &mut results.problems)?;
    let (c, tasks) = (settings.concurrency, settings.batch_tasks);
    results.batch = Some(batch::batch_row(binary, plugin, c, tasks, runtime, &mut results.problems)?);
    results.payload = Some(payload::payload_row(settings, binary, plugin, runtime, &mut results.problems)?);
    let k = settings.in_flight;
    results.workflow = Some(workflow::workflow_row(binary, plugin, c, k, runtime, &mut results.problems)?);
    Ok(())
}
