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
//! Run with `cargo run --release -p fastworker-bench -- [--seconds S]
//! [--requests N] [--in-flight K] [--concurrency C] [--cluster-size N]
//! [--floor-in-process] [--durable-only]`.

mod durable;

mod security;
mod soak;
mod tcp_floor;

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fastworker::auth::KeyRing;
use fastworker::protocol::{
    ErrorKind, Heartbeat, OfferedTask, Priority, Registration, Request, WorkerName, WorkerState,
};
use fastworker::{Client, ClientError, TaskId};
use nng::options::{Options, RecvTimeout, SendTimeout};
use nng::{Aio, AioResult, Context, Message, Protocol, Socket};
use tokio::runtime::Runtime;

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

/// Command-line settings.
struct Settings {
    /// Measured seconds per phase (ignored when `requests` is set).
    seconds: f64,
    /// A fixed number of measured requests per phase instead of a duration.
    requests: Option<u64>,
    /// Requests in flight in the pipelined phases.
    in_flight: usize,
    /// Threads running `add` in the control plane of the `cp` rows and in each subworker.
    concurrency: usize,
    /// Subworkers registered in the large-cluster row (all but one fake).
    cluster_size: usize,
    /// Run the echo server on this process's threads instead of a child process.
    floor_in_process: bool,
    /// Run the memory soak for this many minutes instead of the table.
    soak_minutes: Option<f64>,
    /// Time between two kills of the soak's subworker (`None`: never).
    soak_kill_every: Option<Duration>,
    /// Run only the floors, the `cp` rows and the durable rows.
    durable_only: bool,
}

impl Settings {
    /// The budget of one of `parts` parts of a measured phase (1: all of it).
    fn budget_part(&self, parts: u32) -> Budget {
        match self.requests {
            Some(n) => Budget::requests((n / u64::from(parts)).max(1)),
            None => Budget::time(Duration::from_secs_f64(self.seconds) / parts),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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

fn parse_args() -> Result<Settings, String> {
    const USAGE: &str = "usage: fastworker-bench [--seconds S] [--requests N] [--in-flight K] [--concurrency C] \
        [--cluster-size N] [--floor-in-process] [--durable-only] [--soak MINUTES [--soak-kill-every S]]\n  \
        --seconds S           measured seconds per phase (default 2)\n  \
        --requests N          measure N requests per phase instead of a duration\n  \
        --in-flight K         requests in flight in the pipelined phases (default 64)\n  \
        --concurrency C       threads running `add` in the control plane and in each subworker (default: cores)\n  \
        --cluster-size N      subworkers registered in the large-cluster row, N - 1 of them fakes (default 100)\n  \
        --floor-in-process    run the echo server on this process's threads, not in a child process\n  \
        --durable-only        run only the floors, the cp rows and the durable (--state-dir) rows\n  \
        --soak MINUTES        instead of the table: mixed load with a subworker killed every 20 s, memory sampled\n  \
        --soak-kill-every S   seconds between two kills of the soak's subworker (default 20; 0: never)";
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut settings = Settings {
        seconds: 2.0,
        requests: None,
        in_flight: 64,
        concurrency: cores,
        cluster_size: 100,
        floor_in_process: false,
        soak_minutes: None,
        soak_kill_every: Some(Duration::from_secs(20)),
        durable_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut number = |name: &str| -> Result<f64, String> {
            let value = args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
            value.parse().map_err(|_| format!("{name}: not a number\n{USAGE}"))
        };
        let mut whole = |name: &str, range: std::ops::RangeInclusive<u64>| -> Result<u64, String> {
            let n = number(name)?;
            if n.fract() != 0.0 || !(*range.start() as f64..=*range.end() as f64).contains(&n) {
                return Err(format!(
                    "{name} must be a whole number from {} to {}\n{USAGE}",
                    range.start(),
                    range.end()
                ));
            }
            Ok(n as u64)
        };
        match flag.as_str() {
            "--seconds" => {
                settings.seconds = number("--seconds")?;
                if !(settings.seconds.is_finite() && settings.seconds > 0.0 && settings.seconds <= 60.0) {
                    return Err(format!("--seconds must be above 0 and at most 60\n{USAGE}"));
                }
            }
            "--requests" => settings.requests = Some(whole("--requests", 1..=u64::MAX >> 12)?),
            // The echo server serves that many at once.
            "--in-flight" => settings.in_flight = whole("--in-flight", 1..=ECHO_CONTEXTS as u64)? as usize,
            "--concurrency" => settings.concurrency = whole("--concurrency", 1..=1024)? as usize,
            "--cluster-size" => settings.cluster_size = whole("--cluster-size", 1..=1000)? as usize,
            "--floor-in-process" => settings.floor_in_process = true,
            "--soak" => {
                let minutes = number("--soak")?;
                if !(minutes.is_finite() && minutes > 0.0 && minutes <= 24.0 * 60.0) {
                    return Err(format!("--soak takes minutes, above 0 and at most a day\n{USAGE}"));
                }
                settings.soak_minutes = Some(minutes);
            }
            "--soak-kill-every" => {
                let seconds = whole("--soak-kill-every", 0..=3600)?;
                settings.soak_kill_every = (seconds > 0).then(|| Duration::from_secs(seconds));
            }
            "--durable-only" => settings.durable_only = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    Ok(settings)
}

/// Everything one run measured.
struct Results {
    /// The timed rows, floors first, in the order they are printed.
    rows: Vec<Row>,
    /// Resident memory of the control planes, in KiB (`None` where unknown).
    idle_kib: Option<u64>,
    idle_large_cache_kib: Option<u64>,
    cached_kib: Option<u64>,
    /// The durable mode's recovery after a SIGKILL (see `durable.rs`).
    recovery: Option<durable::Recovery>,
    /// Processes that did not stop cleanly, fake subworkers that could not
    /// register or unregister, cluster listings that were not as expected.
    problems: Vec<String>,
}

/// One row of the table.
struct Row {
    name: String,
    phase: Phase,
    /// Compared with the pipelined floor (else with the sequential one).
    pipelined: bool,
}

impl Results {
    /// The row named `name` (rows are named by [`run`], so it exists).
    fn row(&self, name: &str) -> &Phase {
        &self.rows.iter().find(|row| row.name == name).unwrap_or_else(|| panic!("no row {name}")).phase
    }

    fn push(&mut self, name: String, pipelined: bool, phase: Phase) {
        self.rows.push(Row { name, phase, pipelined });
    }

    /// Records a process's stop (see [`FastworkerProcess::stop`]).
    fn stopped(&mut self, process: &mut FastworkerProcess) {
        if let Err(problem) = process.stop() {
            self.problems.push(problem);
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

/// Runs `phase` once unmeasured with a [`WARMUP`] budget, then with `budget`.
fn warmed(budget: Budget, phase: impl Fn(Budget) -> Result<Phase, String>) -> Result<Phase, String> {
    let warm = phase(Budget::time(WARMUP))?;
    Ok(phase(budget)?.after_warmup(warm))
}

/// `add` through `client` one call at a time, after a warm-up.
fn blocking_add(runtime: &Runtime, client: &Client, budget: Budget) -> Phase {
    let phase = |budget| Ok(runtime.block_on(add_blocking(client, budget)));
    warmed(budget, phase).expect("infallible")
}

/// `add` through `client` with `in_flight` calls at once, after a warm-up.
fn pipelined_add(runtime: &Runtime, client: &Client, in_flight: usize, budget: Budget) -> Phase {
    let phase = |budget| Ok(runtime.block_on(add_pipelined(client, in_flight, budget)));
    warmed(budget, phase).expect("infallible")
}

// ---------------------------------------------------------------------------
// The report

/// Prints the table, the derived ratios, the memory and the targets;
/// returns whether every reply was right and every process behaved.
fn report(settings: &Settings, results: &Results) -> bool {
    let (k, n) = (settings.in_flight, settings.cluster_size);
    let floor_seq = results.row("floor-sequential");
    let floor_pipe = results.row(&format!("floor-pipelined-{k}"));
    let (tcp_seq, tcp_pipe) = (results.row("tcp-sequential"), results.row(&format!("tcp-pipelined-{k}")));
    println!();
    println!("floor: raw NNG request/reply (the transport); tcp: a plain TCP echo (the physical floor)");
    println!(
        "{:<24} {:>8} {:>12} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8} {:>7} {:>6} {:>7}",
        "row",
        "replies",
        "rate (req/s)",
        "p50 (µs)",
        "p99 (µs)",
        "rate/floor",
        "p50/floor",
        "p99/floor",
        "rate/tcp",
        "p50/tcp",
        "wrong",
        "missing"
    );
    for Row { name, phase, pipelined } in &results.rows {
        let (floor, tcp) = if *pipelined { (floor_pipe, tcp_pipe) } else { (floor_seq, tcp_seq) };
        let (p50, p99) = (phase.percentile(50.0), phase.percentile(99.0));
        println!(
            "{:<24} {:>8} {:>12.0} {:>9.1} {:>9.1} {:>10.3} {:>9.2} {:>9.2} {:>8.3} {:>7.2} {:>6} {:>7}",
            name,
            phase.latencies.len(),
            phase.rate(),
            micros(p50),
            micros(p99),
            phase.rate() / floor.rate(),
            micros(p50) / micros(floor.percentile(50.0)),
            micros(p99) / micros(floor.percentile(99.0)),
            phase.rate() / tcp.rate(),
            micros(p50) / micros(tcp.percentile(50.0)),
            phase.wrong,
            phase.missing,
        );
    }

    let cp_seq = results.row("cp-blocking");
    let cp_pipe = results.row(&format!("cp-pipelined-{k}"));
    let durable_seq = results.row("durable-blocking");
    let durable_pipe = results.row(&format!("durable-pipelined-{k}"));
    println!();
    println!(
        "durable mode (durable / cp):      blocking rate {:.3}, p50 {:.2}×, p99 {:.2}×; pipelined rate {:.3}, p50 {:.2}×",
        durable_seq.rate() / cp_seq.rate(),
        ratio_p(durable_seq, cp_seq, 50.0),
        ratio_p(durable_seq, cp_seq, 99.0),
        durable_pipe.rate() / cp_pipe.rate(),
        ratio_p(durable_pipe, cp_pipe, 50.0),
    );
    let recovery = results.recovery.as_ref();
    if let Some(recovery) = recovery {
        println!(
            "recovery of {} queued tasks after kill -9: serving again {:.0} ms after the restart (in-memory start: {:.0} ms, {:.2}×)",
            durable::RECOVERED_TASKS,
            recovery.durable.as_secs_f64() * 1000.0,
            recovery.memory.as_secs_f64() * 1000.0,
            recovery.durable.as_secs_f64() / recovery.memory.as_secs_f64()
        );
    }
    let durable_targets = [
        ("durable-pipelined rate ≥ 0.50 of cp's", Some(durable_pipe.rate() / cp_pipe.rate()), 0.5, true, ""),
        ("recovery of 100 000 queued ≤ 2 s", recovery.map(|r| r.durable.as_secs_f64()), 2.0, false, " s"),
    ];
    if settings.durable_only {
        println!();
        println!("targets:");
        print_targets(&durable_targets);
        return checked(results);
    }
    let sw_seq = results.row("sw-blocking");
    let sw_pipe = results.row(&format!("sw-pipelined-{k}"));
    let sw2_pipe = results.row(&format!("sw2-pipelined-{k}"));
    let cluster = results.row(&format!("sw{n}-pipelined-{k}"));
    let single = results.row(&format!("sw1-alone-pipelined-{k}"));
    let cluster_ratio = cluster.rate() / single.rate();
    println!();
    println!(
        "subworker hop (sw / cp):          blocking p50 {:.2}×, p99 {:.2}×; pipelined rate {:.3}",
        ratio_p(sw_seq, cp_seq, 50.0),
        ratio_p(sw_seq, cp_seq, 99.0),
        sw_pipe.rate() / cp_pipe.rate()
    );
    println!("second subworker (sw2 / sw):      pipelined rate {:.2}×", sw2_pipe.rate() / sw_pipe.rate());
    for name in ["auth", "tls"] {
        let (seq, pipe) =
            (results.row(&format!("cp-{name}-blocking")), results.row(&format!("cp-{name}-pipelined-{k}")));
        println!(
            "{:<34}blocking p50 {:.2}×, p99 {:.2}×; pipelined rate {:.3}",
            format!("{} (cp-{name} / cp):", if name == "auth" { "cluster key" } else { "key and TLS" }),
            ratio_p(seq, cp_seq, 50.0),
            ratio_p(seq, cp_seq, 99.0),
            pipe.rate() / cp_pipe.rate()
        );
    }
    println!(
        "cluster of {n} (sw{n} / sw1-alone): pipelined rate {cluster_ratio:.3}, p50 {:.2}×, p99 {:.2}× (same control plane and subworker)",
        ratio_p(cluster, single, 50.0),
        ratio_p(cluster, single, 99.0),
    );

    let mib = |kib: Option<u64>| kib.map(|kib| kib as f64 / 1024.0);
    let show = |mib: Option<f64>| mib.map_or("unknown".to_string(), |m| format!("{m:.1} MiB"));
    let (idle, idle_large, cached) =
        (mib(results.idle_kib), mib(results.idle_large_cache_kib), mib(results.cached_kib));
    println!();
    println!("control plane resident memory (VmRSS), example plugin loaded:");
    for (what, value) in [
        ("idle, default flags".to_string(), idle),
        (format!("idle, --result-cache-size {CACHED_RESULTS}"), idle_large),
        (format!("after {CACHED_RESULTS} results cached"), cached),
    ] {
        println!("  {what:<40} {:>12}", show(value));
    }

    let (wrong, missing) = results.rows.iter().fold((0, 0), |(w, m), row| (w + row.phase.wrong, m + row.phase.missing));
    println!();
    println!("targets:");
    let cluster_target = format!("sw{n} costs ≤ 10 % of sw1-alone's rate");
    let targets = [
        ("cp-blocking p50 ≤ 1.5× floor", Some(ratio_p(cp_seq, floor_seq, 50.0)), 1.5, false, "×"),
        ("sw-blocking p50 ≤ 3× floor", Some(ratio_p(sw_seq, floor_seq, 50.0)), 3.0, false, "×"),
        ("cp-pipelined rate ≥ 0.50 of floor", Some(cp_pipe.rate() / floor_pipe.rate()), 0.5, true, ""),
        ("sw-pipelined rate ≥ 0.35 of floor", Some(sw_pipe.rate() / floor_pipe.rate()), 0.35, true, ""),
        (cluster_target.as_str(), Some(1.0 - cluster_ratio), 0.10, false, ""),
        ("idle memory ≤ 15 MiB", idle, 15.0, false, " MiB"),
        ("memory with 100 000 cached ≤ 100 MiB", cached, 100.0, false, " MiB"),
        ("wrong + missing replies = 0", Some((wrong + missing) as f64), 0.0, false, ""),
    ];
    print_targets(&targets);
    print_targets(&durable_targets);
    checked(results)
}

/// A target: what, the value measured, the limit, whether it is a floor
/// (else a ceiling), the unit.
type Target<'a> = (&'a str, Option<f64>, f64, bool, &'a str);

/// Prints each target, marked met or not.
fn print_targets(targets: &[Target<'_>]) {
    for &(what, value, limit, at_least, unit) in targets {
        let verdict = match value {
            Some(v) if (at_least && v >= limit) || (!at_least && v <= limit) => "met",
            Some(_) => "NOT MET",
            None => "unknown",
        };
        let value = value.map_or("?".to_string(), |v| format!("{v:.3}{unit}"));
        println!("  {what:<40} {value:>14}   {verdict}");
    }
}

/// Prints the wrong and missing replies and the problems; whether there were none.
fn checked(results: &Results) -> bool {
    let measured: usize = results.rows.iter().map(|row| row.phase.latencies.len()).sum();
    let warmup: u64 = results.rows.iter().map(|row| row.phase.warmup_replies).sum();
    println!();
    let mut clean = true;
    for Row { name, phase, .. } in &results.rows {
        if phase.wrong + phase.missing > 0 {
            clean = false;
            println!(
                "{name}: {} wrong and {} missing replies (first: {})",
                phase.wrong,
                phase.missing,
                phase.first_problem.as_deref().unwrap_or("?")
            );
        }
    }
    if clean {
        println!("every reply checked ({measured} measured, {warmup} warm-up): 0 wrong, 0 missing");
    }
    for problem in &results.problems {
        clean = false;
        println!("{problem}");
    }
    clean
}

/// Percentile `p` of `phase` as a multiple of that of `base`.
fn ratio_p(phase: &Phase, base: &Phase, p: f64) -> f64 {
    micros(phase.percentile(p)) / micros(base.percentile(p))
}

// ---------------------------------------------------------------------------
// Measurement bookkeeping

/// How much of a phase is left: a deadline or a number of requests.
struct Budget {
    /// Requests handed out so far (also the sequence number of the next one).
    claimed: AtomicU64,
    /// Number of requests, if the budget is a count.
    limit: Option<u64>,
    /// How long the phase runs, if the budget is a duration.
    length: Option<Duration>,
    /// The deadline, fixed by [`Budget::start`].
    deadline: OnceLock<Instant>,
}

impl Budget {
    fn time(length: Duration) -> Budget {
        Budget { claimed: AtomicU64::new(0), limit: None, length: Some(length), deadline: OnceLock::new() }
    }

    fn requests(n: u64) -> Budget {
        Budget { claimed: AtomicU64::new(0), limit: Some(n), length: None, deadline: OnceLock::new() }
    }

    /// Starts the clock; returns the start instant.
    fn start(&self) -> Instant {
        let now = Instant::now();
        if let Some(length) = self.length {
            let _ = self.deadline.set(now + length);
        }
        now
    }

    /// The sequence number of one more request, or `None` if the budget is spent.
    fn claim(&self) -> Option<u64> {
        if self.deadline.get().is_some_and(|&d| Instant::now() >= d) {
            return None;
        }
        let n = self.claimed.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(limit) if n >= limit => None,
            _ => Some(n),
        }
    }
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    /// Round-trip time of every correctly answered request, sorted.
    latencies: Vec<Duration>,
    /// Wall time from the first send to the last reply.
    elapsed: Duration,
    /// Replies with the wrong content.
    wrong: u64,
    /// Requests with no reply (error or timeout).
    missing: u64,
    /// A description of the first wrong or missing reply.
    first_problem: Option<String>,
    /// Correct replies during the warm-up (checked, not timed).
    warmup_replies: u64,
}

impl Phase {
    fn finish(mut self, elapsed: Duration) -> Phase {
        self.elapsed = elapsed;
        self.latencies.sort_unstable();
        self
    }

    /// This measured phase, with the wrong and missing replies of its warm-up added.
    fn after_warmup(mut self, warmup: Phase) -> Phase {
        self.warmup_replies = warmup.latencies.len() as u64;
        self.wrong += warmup.wrong;
        self.missing += warmup.missing;
        if let Some(problem) = warmup.first_problem {
            self.first_problem = Some(format!("{problem} (in the warm-up)"));
        }
        self
    }

    /// Two measurements of the same thing, taken at different times, as one.
    fn merge(mut self, other: Phase) -> Phase {
        self.elapsed += other.elapsed;
        self.warmup_replies += other.warmup_replies;
        self.absorb(other);
        self.latencies.sort_unstable();
        self
    }

    /// Adds what another part of the same phase measured (a pipelined slot).
    fn absorb(&mut self, part: Phase) {
        self.latencies.extend(part.latencies);
        self.wrong += part.wrong;
        self.missing += part.missing;
        if self.first_problem.is_none() {
            self.first_problem = part.first_problem;
        }
    }

    /// Counts a wrong (`wrong`) or missing reply.
    fn problem(&mut self, wrong: bool, what: impl FnOnce() -> String) {
        if wrong {
            self.wrong += 1;
        } else {
            self.missing += 1;
        }
        self.first_problem.get_or_insert_with(what);
    }

    /// Correct replies per second of wall time.
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The nearest-rank percentile of the latencies.
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------
// The floor: raw NNG

/// An in-process Rep0 echo server: `contexts` contexts, each with an Aio
/// looping receive → send the same message back → receive, so that many
/// requests are served at once. The callbacks run on NNG's own threads.
struct EchoServer {
    socket: Socket,
    slots: Vec<(Context, Aio)>,
}

impl EchoServer {
    fn start(address: &str, contexts: usize) -> Result<EchoServer, nng::Error> {
        let socket = Socket::new(Protocol::Rep0)?;
        socket.listen(address)?;
        let mut slots = Vec::with_capacity(contexts);
        for _ in 0..contexts {
            let ctx = Context::new(&socket)?;
            let callback_ctx = ctx.clone();
            let aio = Aio::new(move |aio, result| match result {
                AioResult::Recv(Ok(message)) => {
                    if callback_ctx.send(&aio, message).is_err() {
                        let _ = callback_ctx.recv(&aio);
                    }
                }
                AioResult::Send(Ok(())) => {
                    let _ = callback_ctx.recv(&aio);
                }
                AioResult::Recv(Err(nng::Error::Closed | nng::Error::Canceled))
                | AioResult::Send(Err((_, nng::Error::Closed | nng::Error::Canceled))) => {}
                AioResult::Recv(Err(_)) | AioResult::Send(Err(_)) => {
                    let _ = callback_ctx.recv(&aio);
                }
                AioResult::Sleep(_) => {}
            })?;
            ctx.recv(&aio)?;
            slots.push((ctx, aio));
        }
        Ok(EchoServer { socket, slots })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // Close, then make sure no callback is running before the Aios are
        // freed (an Aio must not be freed from inside its own callback).
        self.socket.close();
        for (_, aio) in &self.slots {
            aio.cancel();
            aio.wait();
        }
    }
}

/// The child-process mode (`--echo-server ADDRESS`): serves echoes until
/// stdin closes (the parent ended or dropped its handle) or a signal ends it.
fn echo_server_main(address: &str) -> ExitCode {
    let server = match EchoServer::start(address, ECHO_CONTEXTS) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("echo server on {address}: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(server);
    ExitCode::SUCCESS
}

/// Starts this executable as an echo server on `address` and waits until it listens.
fn spawn_echo_server(address: &str) -> Result<ChildGuard, String> {
    spawn_echo_child("--echo-server", address)
}

/// Starts this executable with `flag ADDRESS` (an NNG or a TCP echo server)
/// and waits until it listens.
fn spawn_echo_child(flag: &str, address: &str) -> Result<ChildGuard, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let child = Command::new(exe)
        .args([flag, address])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the echo server: {e}"))?;
    let mut guard = ChildGuard(Some(child));
    let stdout = guard.0.as_mut().and_then(|c| c.stdout.take()).ok_or("the echo server has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|e| format!("reading from the echo server: {e}"))?;
    if line.trim() != "ready" {
        return Err(format!("the echo server did not start (exit: {:?})", guard.stop()));
    }
    Ok(guard)
}

/// A Req0 socket dialed synchronously to `address`.
fn req_socket(address: &str) -> Result<Socket, String> {
    let socket = Socket::new(Protocol::Req0).map_err(|e| e.to_string())?;
    socket.set_opt::<RecvTimeout>(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    socket.set_opt::<SendTimeout>(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    socket.dial(address).map_err(|e| format!("dialing {address}: {e}"))?;
    Ok(socket)
}

/// The 16-byte payload of floor request `n` (about the size of an `add` request's arguments).
fn echo_payload(n: u64) -> [u8; 16] {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&n.to_le_bytes());
    payload[8..].copy_from_slice(&(!n).to_le_bytes());
    payload
}

/// One request at a time with blocking send and receive.
fn floor_sequential(address: &str, budget: Budget) -> Result<Phase, String> {
    let socket = req_socket(address)?;
    let mut phase = Phase::default();
    let start = budget.start();
    while let Some(n) = budget.claim() {
        let payload = echo_payload(n);
        let sent = Instant::now();
        let reply = socket.send(&payload[..]).map_err(|(_, e)| e).and_then(|()| socket.recv());
        let latency = sent.elapsed();
        match reply {
            Ok(message) if message.as_slice() == payload => phase.latencies.push(latency),
            Ok(message) => phase.problem(true, || format!("request {n}: echo came back as {:?}", message.as_slice())),
            Err(error) => phase.problem(false, || format!("request {n}: {error}")),
        }
    }
    Ok(phase.finish(start.elapsed()))
}

/// One in-flight slot of [`floor_pipelined`].
struct FloorSlot {
    /// When the current request was sent.
    sent: Instant,
    /// The payload the current reply must echo.
    expect: [u8; 16],
    /// What this slot measured.
    phase: Phase,
}

/// What every slot of [`floor_pipelined`] shares.
struct FloorShared {
    budget: Budget,
    /// Each slot sends its results here once, when the budget is spent.
    done: Mutex<mpsc::Sender<Phase>>,
}

/// `in_flight` contexts with an Aio each on one Req0 socket; each sends its
/// next request from the callback that receives the previous reply.
fn floor_pipelined(address: &str, in_flight: usize, budget: Budget) -> Result<Phase, String> {
    let socket = req_socket(address)?;
    let (done_tx, done_rx) = mpsc::channel();
    let shared = Arc::new(FloorShared { budget, done: Mutex::new(done_tx) });
    let mut slots = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let ctx = Context::new(&socket).map_err(|e| e.to_string())?;
        let state = Arc::new(Mutex::new(FloorSlot { sent: Instant::now(), expect: [0; 16], phase: Phase::default() }));
        let (callback_ctx, callback_state, callback_shared) = (ctx.clone(), state.clone(), shared.clone());
        let aio =
            Aio::new(move |aio, result| floor_event(&callback_ctx, &aio, result, &callback_state, &callback_shared))
                .map_err(|e| e.to_string())?;
        aio.set_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
        slots.push((ctx, aio, state));
    }
    let start = shared.budget.start();
    for (ctx, aio, state) in &slots {
        floor_send_next(ctx, aio, state, &shared);
    }
    let mut total = Phase::default();
    let patience = shared.budget.length.unwrap_or(Duration::from_secs(60)) + REQUEST_TIMEOUT * 2;
    for _ in 0..in_flight {
        let part = done_rx.recv_timeout(patience).map_err(|_| "floor-pipelined: a slot never finished".to_string())?;
        total.absorb(part);
    }
    let elapsed = start.elapsed();
    socket.close();
    for (_, aio, _) in &slots {
        aio.wait();
    }
    Ok(total.finish(elapsed))
}

/// Sends the slot's next request, or reports the slot done if the budget is
/// spent. The slot lock is not held while sending, in case NNG completes the
/// send on another thread at once.
fn floor_send_next(ctx: &Context, aio: &Aio, state: &Mutex<FloorSlot>, shared: &FloorShared) {
    let Ok(mut slot) = state.lock() else { return };
    let Some(n) = shared.budget.claim() else {
        return floor_slot_done(&mut slot, shared);
    };
    slot.expect = echo_payload(n);
    slot.sent = Instant::now();
    let message = Message::from(&slot.expect[..]);
    drop(slot);
    if let Err((_, error)) = ctx.send(aio, message) {
        let Ok(mut slot) = state.lock() else { return };
        slot.phase.problem(false, || format!("request {n}: send failed: {error}"));
        floor_slot_done(&mut slot, shared);
    }
}

/// Hands what a slot measured to [`floor_pipelined`].
fn floor_slot_done(slot: &mut FloorSlot, shared: &FloorShared) {
    if let Ok(done) = shared.done.lock() {
        let _ = done.send(std::mem::take(&mut slot.phase));
    }
}

/// The Aio callback of a [`floor_pipelined`] slot. It must not panic.
fn floor_event(ctx: &Context, aio: &Aio, result: AioResult, state: &Mutex<FloorSlot>, shared: &FloorShared) {
    let failure = match result {
        AioResult::Send(Ok(())) => match ctx.recv(aio) {
            Ok(()) => return,
            Err(error) => error.to_string(),
        },
        AioResult::Recv(Ok(message)) => {
            {
                let Ok(mut slot) = state.lock() else { return };
                let latency = slot.sent.elapsed();
                if message.as_slice() == slot.expect {
                    slot.phase.latencies.push(latency);
                } else {
                    let got = format!("{:?}", message.as_slice());
                    slot.phase.problem(true, || format!("echo came back as {got}"));
                }
            }
            return floor_send_next(ctx, aio, state, shared);
        }
        AioResult::Send(Err((_, error))) | AioResult::Recv(Err(error)) => error.to_string(),
        AioResult::Sleep(_) => return,
    };
    // A failed request ends this slot: record it and report what it measured.
    let Ok(mut slot) = state.lock() else { return };
    slot.phase.problem(false, || failure);
    floor_slot_done(&mut slot, shared);
}

// ---------------------------------------------------------------------------
// The control plane

/// The arguments of `add` request `n`: both vary, signs included.
fn add_args(n: u64) -> (i64, i64) {
    let a = n as i64;
    let b = ((n.wrapping_mul(7919)) % 100_003) as i64 - 50_000;
    (a, b)
}

/// Calls `add` once and records the outcome in `phase`.
async fn call_add(client: &Client, n: u64, phase: &mut Phase) {
    let (a, b) = add_args(n);
    let sent = Instant::now();
    let result = client.call::<i64>("add", (a, b)).await;
    let latency = sent.elapsed();
    match result {
        Ok(sum) if sum == a + b => phase.latencies.push(latency),
        Ok(sum) => phase.problem(true, || format!("add({a}, {b}) returned {sum}")),
        Err(error) => phase.problem(false, || format!("add({a}, {b}): {error}")),
    }
}

/// One `add` at a time.
async fn add_blocking(client: &Client, budget: Budget) -> Phase {
    let mut phase = Phase::default();
    let start = budget.start();
    while let Some(n) = budget.claim() {
        call_add(client, n, &mut phase).await;
    }
    phase.finish(start.elapsed())
}

/// `in_flight` tokio tasks, each calling `add` in a loop on the shared client.
async fn add_pipelined(client: &Client, in_flight: usize, budget: Budget) -> Phase {
    let shared = Arc::new(budget);
    let start = shared.start();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, budget) = (client.clone(), shared.clone());
            tokio::spawn(async move {
                let mut phase = Phase::default();
                while let Some(n) = budget.claim() {
                    call_add(&client, n, &mut phase).await;
                }
                phase
            })
        })
        .collect();
    let mut total = Phase::default();
    for worker in workers {
        match worker.await {
            Ok(part) => total.absorb(part),
            Err(error) => total.problem(false, || format!("a caller task failed: {error}")),
        }
    }
    total.finish(start.elapsed())
}

/// A child process, stopped (stdin closed, SIGTERM, SIGKILL after 10 s)
/// when dropped, so also on an early return or a panic.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Stops the child and returns its exit status, or `None` if it had to
    /// be killed (or was stopped before).
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        drop(child.stdin.take());
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // std has no SIGTERM; `kill` is in every POSIX base system.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `fastworker` child process (a control plane or a subworker), stopped
/// when dropped.
struct FastworkerProcess {
    process: ChildGuard,
    /// What it is, in messages: "control plane", "subworker sw1".
    role: String,
    /// Its base address.
    address: String,
    /// The key file it was given, which its clients then hold.
    keys: Option<Arc<KeyRing>>,
    /// Where its stderr goes.
    log: PathBuf,
}

/// One look at whether a starting process is ready.
enum Probe {
    Ready,
    /// Not yet, and why (reported if it never gets ready).
    NotYet(String),
    /// Something is wrong that waiting will not fix.
    Failed(String),
}

impl FastworkerProcess {
    /// Starts `binary ARGS --base-address tcp://127.0.0.1:BASE` on a free
    /// base port, stderr to a log named after `role` next to `binary`, and
    /// returns once `ready` (which should [`FastworkerProcess::wait_until`])
    /// succeeds. If a port was taken between our check and its bind, tries
    /// another.
    fn start(
        binary: &Path,
        role: &str,
        args: &[OsString],
        mut ready: impl FnMut(&mut FastworkerProcess) -> Result<(), String>,
    ) -> Result<FastworkerProcess, String> {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            // A process given certificates listens on tls+tcp://.
            let scheme = if args.iter().any(|arg| arg == "--tls-cert") { "tls+tcp" } else { "tcp" };
            let address = format!("{scheme}://127.0.0.1:{}", free_base_port()?);
            let mut process = FastworkerProcess::spawn(binary, role, args, address)?;
            match ready(&mut process) {
                Ok(()) => return Ok(process),
                Err(error) => {
                    process.process.stop();
                    let output = std::fs::read_to_string(&process.log).unwrap_or_default();
                    last_error = format!("{error}\n--- {role} log ({}) ---\n{output}", process.log.display());
                    // A port taken between our check and its bind: try another.
                    if !output.contains("already in use") {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// Starts `binary ARGS --base-address ADDRESS`, stderr to a log named
    /// after `role` next to `binary`, without waiting for anything.
    fn spawn(binary: &Path, role: &str, args: &[OsString], address: String) -> Result<FastworkerProcess, String> {
        let log = binary.with_file_name(format!("fastworker-bench-{}.log", role.replace(' ', "-")));
        let stderr = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let child = Command::new(binary)
            .args(args)
            .args(["--base-address", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let key_file = args.windows(2).find(|pair| pair[0] == "--cluster-key-file").map(|pair| &pair[1]);
        let keys = match key_file {
            Some(path) => Some(Arc::new(KeyRing::load(Path::new(path)).map_err(|e| e.to_string())?)),
            None => None,
        };
        Ok(FastworkerProcess { process: ChildGuard(Some(child)), role: role.to_string(), address, keys, log })
    }

    /// Kills it with SIGKILL (a crash) and waits until it is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.process.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Calls `probe` every 20 ms until it reports [`Probe::Ready`]; fails if
    /// the process exits, the probe fails, or [`STARTUP_TIMEOUT`] passes.
    fn wait_until(&mut self, mut probe: impl FnMut(&tokio::runtime::Runtime) -> Probe) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("building the tokio runtime: {e}"))?;
        let started = Instant::now();
        loop {
            if let Some(child) = self.process.0.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("the {} exited at start with {status}", self.role));
                }
            }
            match probe(&runtime) {
                Probe::Ready => return Ok(()),
                Probe::Failed(error) => return Err(format!("the {} at {}: {error}", self.role, self.address)),
                Probe::NotYet(why) if started.elapsed() > STARTUP_TIMEOUT => {
                    return Err(format!(
                        "the {} at {} not ready after {STARTUP_TIMEOUT:?}: {why}",
                        self.role, self.address
                    ))
                }
                Probe::NotYet(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// A client of it (a control plane), with the benchmark's request timeout.
    fn client(&self) -> Result<Client, String> {
        let client = Client::new(&self.address).map_err(|e| e.to_string())?.with_timeout(REQUEST_TIMEOUT);
        match &self.keys {
            Some(ring) => client.with_keys(ring.clone()).map_err(|e| e.to_string()),
            None => Ok(client),
        }
    }

    /// Its resident memory (VmRSS) in KiB, if the OS tells (Linux /proc).
    fn resident_kib(&self) -> Option<u64> {
        let pid = self.process.0.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
        line.trim().strip_suffix("kB")?.trim().parse().ok()
    }

    /// Stops it (see [`ChildGuard::stop`]); an error says how it did not
    /// exit cleanly.
    fn stop(&mut self) -> Result<(), String> {
        match self.process.stop() {
            Some(status) if status.success() => Ok(()),
            Some(status) => {
                Err(format!("{} exited with {status} after SIGTERM (log: {})", self.role, self.log.display()))
            }
            None => Err(format!("{} did not stop on SIGTERM and was killed (log: {})", self.role, self.log.display())),
        }
    }
}

/// Starts a control plane running `add` on `concurrency` threads if
/// `plugin` is given (with no plugin it runs nothing and only routes to
/// subworkers), with `extra` arguments, and waits until it serves: it
/// refuses a status query for an unknown task id.
fn start_control_plane(
    binary: &Path,
    role: &str,
    plugin: Option<&Path>,
    concurrency: usize,
    extra: &[OsString],
) -> Result<FastworkerProcess, String> {
    let mut args: Vec<OsString> =
        vec!["control-plane".into(), "--no-gui".into(), "--concurrency".into(), concurrency.to_string().into()];
    if let Some(plugin) = plugin {
        args.extend(["--task-modules".into(), plugin.into()]);
    }
    args.extend_from_slice(extra);
    FastworkerProcess::start(binary, role, &args, serving)
}

/// Waits until a starting control plane serves: it refuses a status query
/// for an unknown task id.
fn serving(process: &mut FastworkerProcess) -> Result<(), String> {
    let probe = process.client()?.with_timeout(PROBE_TIMEOUT);
    process.wait_until(|runtime| match runtime.block_on(probe.status(TaskId::new_v4())) {
        Err(ClientError::Refused(_)) => Probe::Ready,
        Ok(report) => Probe::Failed(format!("a random task id has a report: {report:?}")),
        Err(error) => Probe::NotYet(error.to_string()),
    })
}

/// Starts subworker `worker_id` running the plugin's tasks on `concurrency`
/// threads for `control_plane`, and waits until that lists it as active.
fn start_subworker(
    binary: &Path,
    plugin: &Path,
    control_plane: &FastworkerProcess,
    worker_id: &str,
    concurrency: usize,
) -> Result<FastworkerProcess, String> {
    let args: Vec<OsString> = vec![
        "subworker".into(),
        "--worker-id".into(),
        worker_id.into(),
        "--control-plane-address".into(),
        (&control_plane.address).into(),
        "--task-modules".into(),
        plugin.into(),
        "--concurrency".into(),
        concurrency.to_string().into(),
    ];
    let probe = Client::new(&control_plane.address).map_err(|e| e.to_string())?.with_timeout(PROBE_TIMEOUT);
    FastworkerProcess::start(binary, &format!("subworker {worker_id}"), &args, |process| {
        process.wait_until(|runtime| match runtime.block_on(probe.workers()) {
            Ok(cluster) => match cluster.subworkers.iter().find(|w| w.worker_id == worker_id) {
                Some(worker) if worker.status == WorkerState::Active => Probe::Ready,
                Some(worker) => Probe::NotYet(format!("the control plane lists it as {:?}", worker.status)),
                None => Probe::NotYet("the control plane does not list it".into()),
            },
            Err(error) => Probe::NotYet(format!("asking the control plane for its subworkers: {error}")),
        })
    })
}

/// Fails unless the control plane's client lists exactly `count` subworkers, all active.
fn expect_cluster(runtime: &Runtime, client: &Client, count: usize) -> Option<String> {
    match runtime.block_on(client.workers()) {
        Ok(cluster) if cluster.total_subworkers as usize == count && cluster.active_subworkers as usize == count => {
            None
        }
        Ok(cluster) => Some(format!(
            "the cluster control plane lists {} subworkers, {} active, where {count} active were expected",
            cluster.total_subworkers, cluster.active_subworkers
        )),
        Err(error) => Some(format!("asking the cluster control plane for its subworkers: {error}")),
    }
}

/// Subworkers that only register with a control plane, from this process:
/// weight on its routing table, never sent a task. Each listens on a port of
/// its own (a Rep0 socket that is never read: the control plane only has to
/// connect back to it), provides one task that nobody submits (`noop_I`),
/// and, while registered, heartbeats every [`FAKE_HEARTBEAT`] as a real
/// subworker does, so that it stays active however long the phase.
struct FakeSubworkers {
    /// Keeps each fake's port open.
    _sockets: Vec<Socket>,
    registrations: Vec<Registration>,
    /// While registered: the control plane's management port and the heartbeats.
    joined: Option<(Client, tokio::task::JoinHandle<()>)>,
}

impl FakeSubworkers {
    /// `count` fakes of `concurrency` slots each, listening, not registered yet.
    fn new(count: usize, concurrency: u32) -> Result<FakeSubworkers, String> {
        let mut sockets = Vec::with_capacity(count);
        let mut registrations = Vec::with_capacity(count);
        for index in 0..count {
            let (socket, address) = listen_somewhere()?;
            sockets.push(socket);
            let task = OfferedTask {
                name: format!("noop_{index}"),
                priority: Priority::Normal,
                timeout_ms: 0,
                max_retries: 0,
                retry_delay_ms: 0,
                schedule: String::new(),
            };
            let name = WorkerName { worker_id: format!("fake{index}"), instance: TaskId::new_v4() };
            registrations.push(Registration { name, address, concurrency, prefetch: 0, tasks: vec![task] });
        }
        Ok(FakeSubworkers { _sockets: sockets, registrations, joined: None })
    }

    /// Registers every fake with the control plane at `control_plane`, all at
    /// once; returns once it has connected to each, with the failures.
    async fn join(&mut self, control_plane: &str) -> Vec<String> {
        let client = match Client::new(control_plane) {
            Ok(client) => client.with_timeout(REGISTER_TIMEOUT),
            Err(error) => return vec![error.to_string()],
        };
        let management = match client.discover().await {
            Ok(port) => client.with_management_port(port),
            Err(error) => return vec![format!("asking {control_plane} for its management port: {error}")],
        };
        // At most as many at once as a control plane dials back by default
        // (--max-pending-registrations 16); a Busy answer is retried.
        let mut pending = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        for registration in self.registrations.iter().cloned() {
            let (management, permits) = (management.clone(), permits.clone());
            pending.spawn(async move {
                let _permit = permits.acquire().await;
                let id = registration.name.worker_id.clone();
                let request = Request::Register(registration);
                for _ in 0..50 {
                    match management.manage(&request).await {
                        Err(ClientError::Refused(refusal)) if refusal.kind == ErrorKind::Busy => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        outcome => return outcome.map_err(|e| format!("registering {id}: {e}")),
                    }
                }
                Err(format!("registering {id}: still busy after 50 tries"))
            });
        }
        let mut failures = Vec::new();
        while let Some(outcome) = pending.join_next().await {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => failures.push(failure),
                Err(error) => failures.push(format!("a registration task failed: {error}")),
            }
        }
        let names = self.registrations.iter().map(|r| r.name.clone()).collect();
        let heartbeats = tokio::spawn(heartbeat_forever(management.clone(), names));
        self.joined = Some((management, heartbeats));
        failures
    }

    /// Unregisters every fake, as a subworker does when it stops; returns the failures.
    async fn leave(&mut self) -> Vec<String> {
        let Some((management, heartbeats)) = self.joined.take() else { return Vec::new() };
        heartbeats.abort();
        let mut failures = Vec::new();
        for Registration { name, .. } in &self.registrations {
            if let Err(error) = management.manage(&Request::Unregister(name.clone())).await {
                failures.push(format!("unregistering {}: {error}", name.worker_id));
            }
        }
        failures
    }
}

impl Drop for FakeSubworkers {
    fn drop(&mut self) {
        if let Some((_, heartbeats)) = &self.joined {
            heartbeats.abort();
        }
    }
}

/// Heartbeats for every fake every [`FAKE_HEARTBEAT`] (each with no task in
/// flight) until aborted; a failed heartbeat shows in the cluster check.
async fn heartbeat_forever(management: Client, names: Vec<WorkerName>) {
    loop {
        tokio::time::sleep(FAKE_HEARTBEAT).await;
        for name in &names {
            let _ = management.manage(&Request::Heartbeat(Heartbeat { name: name.clone(), in_flight: 0 })).await;
        }
    }
}

/// A Rep0 socket listening on a free port of 127.0.0.1, and its address.
fn listen_somewhere() -> Result<(Socket, String), String> {
    let mut last_error = String::new();
    for _attempt in 0..10 {
        let address = format!("tcp://127.0.0.1:{}", free_port()?);
        let socket = Socket::new(Protocol::Rep0).map_err(|e| e.to_string())?;
        match socket.listen(&address) {
            Ok(()) => return Ok((socket, address)),
            // Taken between our check and the bind: try another.
            Err(error) => last_error = format!("listening on {address}: {error}"),
        }
    }
    Err(last_error)
}

// ---------------------------------------------------------------------------
// Setup helpers

/// The `fastworker` binary and `libexample_tasks.so` next to this executable
/// (target/release/), always (re)built with cargo first so that the figures
/// are never those of a stale binary (a no-op when they are fresh).
fn locate_binaries() -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let dir = exe.parent().ok_or("this executable has no directory")?.to_path_buf();
    let binary = dir.join("fastworker");
    let plugin = dir.join(format!("{}example_tasks{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut command = Command::new(&cargo);
        command.current_dir(&workspace).args(["build", "-p", "fastworker", "-p", "example-tasks"]);
        if dir.file_name().is_some_and(|name| name == "release") {
            command.arg("--release");
        }
        eprintln!("building the control plane and plugin: {command:?}");
        let status = command.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build failed with {status}"));
        }
    }
    for path in [&binary, &plugin] {
        if !path.is_file() {
            return Err(format!("{} is missing after the build", path.display()));
        }
    }
    Ok((binary, plugin))
}

/// A free TCP port on 127.0.0.1 (as the OS picks it).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A port `base` such that `base..=base + 5` are all free on 127.0.0.1.
fn free_base_port() -> Result<u16, String> {
    // Start somewhere that differs between runs, below the usual ephemeral range.
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) ^ u64::from(clock) ^ u64::from(free_port()?);
    for step in 0..2000u64 {
        let base = 20_000 + ((seed.wrapping_mul(2_654_435_761) + step * 6) % 12_000) as u16;
        // Hold all six at once, so that none is counted free twice.
        let held: Result<Vec<_>, _> = (0..6).map(|offset| TcpListener::bind(("127.0.0.1", base + offset))).collect();
        if held.is_ok() {
            return Ok(base);
        }
    }
    Err("no six consecutive free ports between 20000 and 32000".into())
}

/// The available parallelism (nproc) and the CPU model and count from /proc/cpuinfo.
fn machine_description() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let models: Vec<&str> = cpuinfo
        .lines()
        .filter_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim()))
        .collect();
    let model = models.first().copied().unwrap_or("unknown CPU");
    format!(
        "nproc {nproc}, {} logical CPUs of model \"{model}\" ({} {})",
        models.len(),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}
