//! `fastworker-bench`: how much a real fastworker control plane costs over
//! raw NNG request/reply on the same machine, and how much a subworker (one
//! more hop) adds to that.
//!
//! Six measurements, each over the same wall-clock budget:
//!
//! * `floor-sequential`: one Req0 socket talking to a Rep0 echo server, one
//!   request at a time (blocking send/recv).
//! * `floor-pipelined-K`: the same server, K contexts with an Aio each on
//!   one Req0 socket, so K requests are always in flight.
//! * `cp-blocking`: a `fastworker control-plane` child process running the
//!   example plugin's `add` itself, called with [`fastworker::Client::call`]
//!   one call at a time.
//! * `cp-pipelined-K`: the same, with K calls in flight (K tokio tasks
//!   sharing one client).
//! * `sw-blocking` and `sw-pipelined-K`: the same calls, sent to a second
//!   control plane that loads no plugin (so it runs nothing itself) and
//!   routes each `add` to one `fastworker subworker` child process loading
//!   the example plugin; measured once that subworker is listed as active.
//!
//! The `cp` and `sw` rows are compared with the floor row of the same kind
//! (`rate/floor`, `p50/floor`); the `sw` rows also with the `cp` rows, which
//! shows the cost of the extra hop. The control plane of the `cp` rows and
//! the subworker run `add` on `--concurrency` threads (default: the number
//! of cores); a control plane sends a subworker no more tasks at once than
//! that, and queues the rest itself.
//!
//! The echo server (256 contexts with an Aio each, served by NNG's own
//! threads) runs by default in a child process: this same executable with
//! the internal `--echo-server ADDRESS` argument. In one process the client
//! and the server would share NNG's single I/O poller thread (NNG 1.4), and
//! the pipelined "floor" would come out well below what the control plane,
//! a separate process, reaches. `--floor-in-process` runs it on the
//! benchmark's own NNG threads instead, to show that effect.
//!
//! Every reply is checked (echo bytes for the floor, `a + b` for `add`);
//! any wrong or missing reply, or a `fastworker` process that does not exit
//! cleanly on SIGTERM, is reported and makes the exit status 1.
//!
//! Run with `cargo run --release -p fastworker-bench -- [--seconds S]
//! [--requests N] [--in-flight K] [--concurrency C] [--floor-in-process]`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fastworker::protocol::WorkerState;
use fastworker::{Client, ClientError, TaskId};
use nng::options::{Options, RecvTimeout, SendTimeout};
use nng::{Aio, AioResult, Context, Message, Protocol, Socket};

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

/// Command-line settings.
struct Settings {
    /// Measured seconds per phase (ignored when `requests` is set).
    seconds: f64,
    /// A fixed number of measured requests per phase instead of a duration.
    requests: Option<u64>,
    /// Requests in flight in the pipelined phases.
    in_flight: usize,
    /// Threads running `add` in the control plane of the `cp` rows and in the subworker.
    concurrency: usize,
    /// Run the echo server on this process's threads instead of a child process.
    floor_in_process: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, address] = args.as_slice() {
        if flag == "--echo-server" {
            return echo_server_main(address);
        }
    }
    let settings = match parse_args() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&settings) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<Settings, String> {
    const USAGE: &str =
        "usage: fastworker-bench [--seconds S] [--requests N] [--in-flight K] [--concurrency C] [--floor-in-process]\n  \
        --seconds S           measured seconds per phase (default 2)\n  \
        --requests N          measure N requests per phase instead of a duration\n  \
        --in-flight K         requests in flight in the pipelined phases (default 64)\n  \
        --concurrency C       threads running `add` in the control plane and in the subworker (default: cores)\n  \
        --floor-in-process    run the echo server on this process's threads, not in a child process";
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut settings =
        Settings { seconds: 2.0, requests: None, in_flight: 64, concurrency: cores, floor_in_process: false };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--seconds" => {
                settings.seconds =
                    value("--seconds")?.parse().map_err(|_| format!("--seconds: not a number\n{USAGE}"))?;
                if !(settings.seconds.is_finite() && settings.seconds > 0.0 && settings.seconds <= 60.0) {
                    return Err(format!("--seconds must be above 0 and at most 60\n{USAGE}"));
                }
            }
            "--requests" => {
                let n: u64 = value("--requests")?.parse().map_err(|_| format!("--requests: not a number\n{USAGE}"))?;
                settings.requests = Some(n.max(1));
            }
            "--in-flight" => {
                let k: usize =
                    value("--in-flight")?.parse().map_err(|_| format!("--in-flight: not a number\n{USAGE}"))?;
                if !(1..=ECHO_CONTEXTS).contains(&k) {
                    return Err(format!(
                        "--in-flight must be 1 to {ECHO_CONTEXTS} (the echo server serves that many at once)\n{USAGE}"
                    ));
                }
                settings.in_flight = k;
            }
            "--concurrency" => {
                let c: usize =
                    value("--concurrency")?.parse().map_err(|_| format!("--concurrency: not a number\n{USAGE}"))?;
                if c == 0 {
                    return Err(format!("--concurrency must be at least 1\n{USAGE}"));
                }
                settings.concurrency = c;
            }
            "--floor-in-process" => settings.floor_in_process = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    Ok(settings)
}

/// Runs every phase and prints the table; `Ok(false)` if any reply was wrong or missing.
fn run(settings: &Settings) -> Result<bool, String> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build of the benchmark; run it with `cargo run --release -p fastworker-bench`"
        );
    }
    let (binary, plugin) = locate_binaries()?;
    let k = settings.in_flight;
    println!("machine: {}", machine_description());
    match settings.requests {
        Some(n) => println!("budget: {n} measured requests per phase after {} ms warm-up", WARMUP.as_millis()),
        None => println!("budget: {} s measured per phase after {} ms warm-up", settings.seconds, WARMUP.as_millis()),
    }
    let budget = || match settings.requests {
        Some(n) => Budget::requests(n),
        None => Budget::time(Duration::from_secs_f64(settings.seconds)),
    };

    // The floor: raw NNG.
    let echo_address = format!("tcp://127.0.0.1:{}", free_port()?);
    let server = if settings.floor_in_process {
        println!("floor: echo server on NNG threads of this process");
        let server = EchoServer::start(&echo_address, ECHO_CONTEXTS)
            .map_err(|e| format!("echo server on {echo_address}: {e}"))?;
        (Some(server), None)
    } else {
        println!("floor: echo server in a child process (as the control plane is)");
        (None, Some(spawn_echo_server(&echo_address)?))
    };
    let warm = floor_sequential(&echo_address, Budget::time(WARMUP))?;
    let floor_seq = floor_sequential(&echo_address, budget())?.after_warmup(warm);
    let warm = floor_pipelined(&echo_address, k, Budget::time(WARMUP))?;
    let floor_pipe = floor_pipelined(&echo_address, k, budget())?.after_warmup(warm);
    drop(server);

    // The control plane running `add` itself, as a child process.
    let c = settings.concurrency;
    println!("cp: {} control-plane --concurrency {c} --task-modules {}", binary.display(), plugin.display());
    let mut control_plane = start_control_plane(&binary, "control plane", Some(&plugin), c)?;
    let (cp_seq, cp_pipe) = measure_add(&control_plane.address, k, budget)?;
    let cp_stopped = control_plane.stop();

    // A control plane that runs nothing, routing `add` to a subworker.
    println!("sw: {} control-plane (no --task-modules), one subworker --concurrency {c}", binary.display());
    let mut router = start_control_plane(&binary, "routing control plane", None, c)?;
    let mut subworker = start_subworker(&binary, &plugin, &router, "sw1", c)?;
    let (sw_seq, sw_pipe) = measure_add(&router.address, k, budget)?;
    // The subworker first, so that it leaves a control plane that still listens.
    let sw_stopped = subworker.stop();
    let router_stopped = router.stop();

    // The table.
    println!();
    println!(
        "{:<20} {:>9} {:>13} {:>9} {:>9} {:>11} {:>10}",
        "row", "requests", "rate (req/s)", "p50 (µs)", "p99 (µs)", "rate/floor", "p50/floor"
    );
    let rows = [
        (String::from("floor-sequential"), &floor_seq, &floor_seq),
        (format!("floor-pipelined-{k}"), &floor_pipe, &floor_pipe),
        (String::from("cp-blocking"), &cp_seq, &floor_seq),
        (format!("cp-pipelined-{k}"), &cp_pipe, &floor_pipe),
        (String::from("sw-blocking"), &sw_seq, &floor_seq),
        (format!("sw-pipelined-{k}"), &sw_pipe, &floor_pipe),
    ];
    for (name, phase, floor) in &rows {
        println!(
            "{:<20} {:>9} {:>13.0} {:>9.1} {:>9.1} {:>11.3} {:>10.2}",
            name,
            phase.latencies.len(),
            phase.rate(),
            micros(phase.percentile(50.0)),
            micros(phase.percentile(99.0)),
            phase.rate() / floor.rate(),
            micros(phase.percentile(50.0)) / micros(floor.percentile(50.0)),
        );
    }
    println!();
    println!("extra hop through the subworker (sw / cp):");
    println!("{:<20} {:>11} {:>10} {:>10}", "rows", "rate sw/cp", "p50 sw/cp", "p99 sw/cp");
    for (name, sw, cp) in [("blocking".to_string(), &sw_seq, &cp_seq), (format!("pipelined-{k}"), &sw_pipe, &cp_pipe)] {
        println!(
            "{:<20} {:>11.3} {:>10.2} {:>10.2}",
            name,
            sw.rate() / cp.rate(),
            micros(sw.percentile(50.0)) / micros(cp.percentile(50.0)),
            micros(sw.percentile(99.0)) / micros(cp.percentile(99.0)),
        );
    }
    println!();
    let mut clean = true;
    for (name, phase, _) in &rows {
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
    let measured: usize = rows.iter().map(|(_, p, _)| p.latencies.len()).sum();
    let warmup: u64 = rows.iter().map(|(_, p, _)| p.warmup_replies).sum();
    if clean {
        println!("every reply checked ({measured} measured, {warmup} warm-up): 0 wrong, 0 missing");
    }
    for stopped in [cp_stopped, sw_stopped, router_stopped] {
        if let Err(problem) = stopped {
            clean = false;
            println!("{problem}");
        }
    }
    Ok(clean)
}

/// `add` through the control plane at `address`: one call at a time, then
/// `in_flight` at once, each phase after its own warm-up.
fn measure_add(address: &str, in_flight: usize, budget: impl Fn() -> Budget) -> Result<(Phase, Phase), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    let client = Client::new(address).map_err(|e| e.to_string())?.with_timeout(REQUEST_TIMEOUT);
    Ok(runtime.block_on(async {
        let warm = cp_blocking(&client, Budget::time(WARMUP)).await;
        let seq = cp_blocking(&client, budget()).await.after_warmup(warm);
        let warm = cp_pipelined(&client, in_flight, Budget::time(WARMUP)).await;
        let pipe = cp_pipelined(&client, in_flight, budget()).await.after_warmup(warm);
        (seq, pipe)
    }))
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
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let child = Command::new(exe)
        .args(["--echo-server", address])
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
        total.latencies.extend(part.latencies);
        total.wrong += part.wrong;
        total.missing += part.missing;
        if total.first_problem.is_none() {
            total.first_problem = part.first_problem;
        }
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
async fn cp_blocking(client: &Client, budget: Budget) -> Phase {
    let mut phase = Phase::default();
    let start = budget.start();
    while let Some(n) = budget.claim() {
        call_add(client, n, &mut phase).await;
    }
    phase.finish(start.elapsed())
}

/// `in_flight` tokio tasks, each calling `add` in a loop on the shared client.
async fn cp_pipelined(client: &Client, in_flight: usize, budget: Budget) -> Phase {
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
            Ok(part) => {
                total.latencies.extend(part.latencies);
                total.wrong += part.wrong;
                total.missing += part.missing;
                if total.first_problem.is_none() {
                    total.first_problem = part.first_problem;
                }
            }
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
        let log = binary.with_file_name(format!("fastworker-bench-{}.log", role.replace(' ', "-")));
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let address = format!("tcp://127.0.0.1:{}", free_base_port()?);
            let stderr = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
            let child = Command::new(binary)
                .args(args)
                .args(["--base-address", &address])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", binary.display()))?;
            let mut process = FastworkerProcess {
                process: ChildGuard(Some(child)),
                role: role.to_string(),
                address,
                log: log.clone(),
            };
            match ready(&mut process) {
                Ok(()) => return Ok(process),
                Err(error) => {
                    process.process.stop();
                    let output = std::fs::read_to_string(&log).unwrap_or_default();
                    last_error = format!("{error}\n--- {role} log ({}) ---\n{output}", log.display());
                    // A port taken between our check and its bind: try another.
                    if !output.contains("already in use") {
                        break;
                    }
                }
            }
        }
        Err(last_error)
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
/// subworkers), and waits until it serves: it refuses a status query for an
/// unknown task id.
fn start_control_plane(
    binary: &Path,
    role: &str,
    plugin: Option<&Path>,
    concurrency: usize,
) -> Result<FastworkerProcess, String> {
    let mut args: Vec<OsString> =
        vec!["control-plane".into(), "--no-gui".into(), "--concurrency".into(), concurrency.to_string().into()];
    if let Some(plugin) = plugin {
        args.extend(["--task-modules".into(), plugin.into()]);
    }
    FastworkerProcess::start(binary, role, &args, |process| {
        let probe = Client::new(&process.address).map_err(|e| e.to_string())?.with_timeout(PROBE_TIMEOUT);
        process.wait_until(|runtime| match runtime.block_on(probe.status(TaskId::new_v4())) {
            Err(ClientError::Refused(_)) => Probe::Ready,
            Ok(report) => Probe::Failed(format!("a random task id has a report: {report:?}")),
            Err(error) => Probe::NotYet(error.to_string()),
        })
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
