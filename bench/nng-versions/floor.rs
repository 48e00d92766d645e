//! The raw NNG request/reply floor, written against `nng-sys` directly so
//! that it builds against any NNG version `nng-sys` vendors (1.11, 2.0).
//! It mirrors `bench/src/nng_floor.rs` (the NNG 1.4 floor of the main
//! benchmark) step for step, so that the figures compare:
//!
//! * the echo server runs in its own process (this executable with
//!   `--echo-server ADDRESS`, `echo_server.rs`): a Rep0 socket with 256 contexts, each with an
//!   aio looping receive → send the same message back → receive, served by
//!   NNG's own threads;
//! * `sequential`: one Req0 socket, one 16-byte request at a time with
//!   blocking send and receive;
//! * `pipelined`: K contexts with an aio each on one Req0 socket, each
//!   sending its next request from the callback that receives the previous
//!   reply, so that K requests are always in flight.
//!
//! Each phase runs 300 ms unmeasured first, then for `--seconds`. Every
//! echo is checked. The result is printed as one line per phase,
//! `PHASE replies=N seconds=S p50_us=X p99_us=Y wrong=W missing=M`, which
//! `fastworker-bench --nng-versions` reads.
//!
//! `--tls-check` instead runs `tls_check.rs`.
//!
//! Every `unsafe` block calls into NNG's C API; each says which of NNG's
//! rules it relies on. The version-specific differences (NNG 2.0 has
//! `nng_init` and returns `nng_err`) live in each project's `shim` module.

use std::ffi::{c_void, CStr, CString};
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nng_sys::{
    nng_aio, nng_aio_free, nng_aio_get_msg, nng_aio_set_msg, nng_aio_set_timeout, nng_aio_stop, nng_ctx,
    nng_ctx_open, nng_ctx_recv, nng_ctx_send, nng_dial, nng_msg, nng_msg_alloc, nng_msg_append,
    nng_msg_body, nng_msg_free, nng_msg_len, nng_recvmsg, nng_req0_open, nng_sendmsg, nng_socket,
    nng_socket_close, nng_socket_set_ms, nng_version, NNG_OPT_RECVTIMEO, NNG_OPT_SENDTIMEO,
};

use crate::shim;

/// Contexts of the echo server (as `ECHO_CONTEXTS` in the main benchmark).
pub const ECHO_CONTEXTS: usize = 256;
/// Longest any request may take before it counts as missing.
const REQUEST_TIMEOUT_MS: i32 = 5000;
/// Unmeasured run before each measured phase.
const WARMUP: Duration = Duration::from_millis(300);

/// An NNG call's non-zero return code as an error message.
pub fn check(what: &str, code: i32) -> Result<(), String> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: nng_strerror returns a pointer to a static, NUL-terminated string for any code.
    let text = unsafe { CStr::from_ptr(shim::strerror(code)) };
    Err(format!("{what}: {}", text.to_string_lossy()))
}

/// Entry point shared by every NNG version's project.
pub fn main() -> ExitCode {
    shim::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.as_slice() {
        [flag, address] if flag == "--echo-server" => crate::echo_server::serve(address),
        [flag] if flag == "--tls-check" => crate::tls_check::run().map(|what| println!("tls ok: {what}")),
        [seconds_flag, seconds, in_flight_flag, in_flight]
            if seconds_flag == "--seconds" && in_flight_flag == "--in-flight" =>
        {
            match (seconds.parse::<f64>(), in_flight.parse::<usize>()) {
                (Ok(s), Ok(k)) if s > 0.0 && s <= 60.0 && (1..=ECHO_CONTEXTS).contains(&k) => measure(s, k),
                _ => Err("--seconds takes 0 to 60, --in-flight 1 to 256".to_string()),
            }
        }
        _ => Err("usage: floor --seconds S --in-flight K | --tls-check (or --echo-server ADDRESS, internal)".to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the echo server as a child process, measures both phases, prints them.
fn measure(seconds: f64, in_flight: usize) -> Result<(), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let address = format!("tcp://127.0.0.1:{port}");
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let mut child = Command::new(exe)
        .args(["--echo-server", &address])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the echo server: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("the echo server has no stdout")?;
    BufReader::new(stdout).read_line(&mut line).map_err(|e| format!("reading from the echo server: {e}"))?;
    let outcome = if line.trim() == "ready" {
        // SAFETY: nng_version returns a static, NUL-terminated string.
        let version = unsafe { CStr::from_ptr(nng_version()) }.to_string_lossy().into_owned();
        println!("version {version}");
        let length = Duration::from_secs_f64(seconds);
        sequential(&address, WARMUP)
            .and_then(|_| sequential(&address, length))
            .map(|phase| phase.print("sequential"))
            .and_then(|()| pipelined(&address, in_flight, WARMUP))
            .and_then(|_| pipelined(&address, in_flight, length))
            .map(|phase| phase.print("pipelined"))
    } else {
        Err("the echo server did not start".to_string())
    };
    drop(child.stdin.take());
    let _ = child.wait();
    outcome
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    elapsed: Duration,
    wrong: u64,
    missing: u64,
}

impl Phase {
    fn absorb(&mut self, other: Phase) {
        self.latencies.extend(other.latencies);
        self.wrong += other.wrong;
        self.missing += other.missing;
    }

    fn print(mut self, name: &str) {
        self.latencies.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
            self.latencies.get(rank.clamp(1, self.latencies.len().max(1)) - 1).map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        println!(
            "{name} replies={} seconds={:.6} p50_us={:.2} p99_us={:.2} wrong={} missing={}",
            self.latencies.len(),
            self.elapsed.as_secs_f64(),
            at(50.0),
            at(99.0),
            self.wrong,
            self.missing
        );
    }
}

/// The 16-byte payload of request `n` (as `echo_payload` in the main benchmark).
fn payload(n: u64) -> [u8; 16] {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&n.to_le_bytes());
    payload[8..].copy_from_slice(&(!n).to_le_bytes());
    payload
}

/// A new message holding `bytes`.
pub fn message(bytes: &[u8]) -> Result<*mut nng_msg, String> {
    let mut msg: *mut nng_msg = null_mut();
    // SAFETY: nng_msg_alloc writes a new message to `msg` on success; we own it then.
    check("nng_msg_alloc", unsafe { nng_msg_alloc(&mut msg, 0) })?;
    // SAFETY: `msg` is a live message we own; `bytes` is valid for its length.
    let appended = unsafe { nng_msg_append(msg, bytes.as_ptr().cast(), bytes.len()) };
    if appended != 0 {
        // SAFETY: we still own `msg` and free it once.
        unsafe { nng_msg_free(msg) };
    }
    check("nng_msg_append", appended).map(|()| msg)
}

/// Whether the body of `msg` (a live message) is `expect`.
///
/// # Safety
/// `msg` must be a live message owned by the caller.
pub unsafe fn body_is(msg: *mut nng_msg, expect: &[u8]) -> bool {
    let (body, len) = (nng_msg_body(msg).cast::<u8>(), nng_msg_len(msg));
    std::slice::from_raw_parts(body, len) == expect
}

/// A socket of `open` (nng_rep0_open or nng_req0_open).
pub fn open(open: unsafe extern "C" fn(*mut nng_socket) -> i32) -> Result<nng_socket, String> {
    let mut socket = nng_socket::default();
    // SAFETY: the open function writes a new socket id on success.
    check("opening a socket", unsafe { open(&mut socket) })?;
    Ok(socket)
}

/// A Req0 socket dialed synchronously to `address`, with 5 s send and receive timeouts.
fn req_socket(address: &str) -> Result<nng_socket, String> {
    let socket = open(nng_req0_open)?;
    let url = CString::new(address).map_err(|e| e.to_string())?;
    // SAFETY: the option names are NUL-terminated constants; `url` is NUL-terminated.
    unsafe {
        check("recv-timeout", nng_socket_set_ms(socket, NNG_OPT_RECVTIMEO.as_ptr().cast(), REQUEST_TIMEOUT_MS))?;
        check("send-timeout", nng_socket_set_ms(socket, NNG_OPT_SENDTIMEO.as_ptr().cast(), REQUEST_TIMEOUT_MS))?;
        check("nng_dial", nng_dial(socket, url.as_ptr(), null_mut(), 0))?;
    }
    Ok(socket)
}

/// One request at a time with blocking send and receive, for `length`.
fn sequential(address: &str, length: Duration) -> Result<Phase, String> {
    let socket = req_socket(address)?;
    let mut phase = Phase::default();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < length {
        let expect = payload(n);
        n += 1;
        let msg = message(&expect)?;
        let sent = Instant::now();
        // SAFETY: on success nng_sendmsg takes the message; on failure it is still ours to free.
        let code = unsafe { nng_sendmsg(socket, msg, 0) };
        if code != 0 {
            // SAFETY: a failed send left the message with us; freed once.
            unsafe { nng_msg_free(msg) };
            phase.missing += 1;
            continue;
        }
        let mut reply: *mut nng_msg = null_mut();
        // SAFETY: on success nng_recvmsg writes a message we then own.
        let code = unsafe { nng_recvmsg(socket, &mut reply, 0) };
        let latency = sent.elapsed();
        if code != 0 {
            phase.missing += 1;
            continue;
        }
        // SAFETY: `reply` is a live message we own, freed once.
        let right = unsafe { body_is(reply, &expect) };
        // SAFETY: as above; not used after this.
        unsafe { nng_msg_free(reply) };
        if right {
            phase.latencies.push(latency);
        } else {
            phase.wrong += 1;
        }
    }
    phase.elapsed = start.elapsed();
    // SAFETY: the socket is open and no operation is pending on it.
    unsafe { nng_socket_close(socket) };
    Ok(phase)
}

/// What every slot of [`pipelined`] shares.
struct Shared {
    claimed: AtomicU64,
    deadline: OnceLock<Instant>,
    done: Mutex<mpsc::Sender<Phase>>,
}

/// One in-flight slot of [`pipelined`]; its aio's callback argument.
struct Slot {
    ctx: nng_ctx,
    aio: *mut nng_aio,
    sending: AtomicBool,
    shared: *const Shared,
    /// When the current request was sent, the payload it must echo, and what this slot measured.
    state: Mutex<(Instant, [u8; 16], Phase)>,
}

impl Slot {
    fn shared(&self) -> &Shared {
        // SAFETY: `shared` lives on `pipelined`'s stack until every aio is stopped.
        unsafe { &*self.shared }
    }

    /// Sends the next request, or reports this slot done once the time is up.
    ///
    /// # Safety
    /// Called only when no operation is pending on the slot's aio.
    unsafe fn send_next(&self) {
        let shared = self.shared();
        let Ok(mut state) = self.state.lock() else { return };
        if shared.deadline.get().is_some_and(|&d| Instant::now() >= d) {
            return self.finish(&mut state.2);
        }
        let n = shared.claimed.fetch_add(1, Ordering::Relaxed);
        state.1 = payload(n);
        let Ok(msg) = message(&state.1) else {
            state.2.missing += 1;
            return self.finish(&mut state.2);
        };
        state.0 = Instant::now();
        drop(state);
        nng_aio_set_msg(self.aio, msg);
        self.sending.store(true, Ordering::Release);
        nng_ctx_send(self.ctx, self.aio);
    }

    fn finish(&self, phase: &mut Phase) {
        if let Ok(done) = self.shared().done.lock() {
            let _ = done.send(std::mem::take(phase));
        }
    }
}

/// The aio callback of a [`pipelined`] slot. It must not panic.
///
/// # Safety
/// Called by NNG only, with the argument given to `nng_aio_alloc`: a live
/// [`Slot`]; `nng_aio_get_msg` after a successful receive hands us the reply,
/// after a failed send gives the unsent message back.
unsafe extern "C" fn slot_event(arg: *mut c_void) {
    // SAFETY: `arg` is the boxed Slot registered with this aio, alive until the aio is stopped.
    let slot = &*(arg as *const Slot);
    let result = shim::aio_result(slot.aio);
    if slot.sending.swap(false, Ordering::AcqRel) {
        if result == 0 {
            return nng_ctx_recv(slot.ctx, slot.aio);
        }
        nng_msg_free(nng_aio_get_msg(slot.aio));
    } else if result == 0 {
        let reply = nng_aio_get_msg(slot.aio);
        if let Ok(mut state) = slot.state.lock() {
            let latency = state.0.elapsed();
            if body_is(reply, &state.1) {
                state.2.latencies.push(latency);
            } else {
                state.2.wrong += 1;
            }
        }
        nng_msg_free(reply);
        return slot.send_next();
    }
    // A failed request ends this slot.
    if let Ok(mut state) = slot.state.lock() {
        state.2.missing += 1;
        slot.finish(&mut state.2);
    }
}

/// `in_flight` contexts with an aio each on one Req0 socket, for `length`.
fn pipelined(address: &str, in_flight: usize, length: Duration) -> Result<Phase, String> {
    let socket = req_socket(address)?;
    let (done_tx, done_rx) = mpsc::channel();
    let shared = Shared { claimed: AtomicU64::new(0), deadline: OnceLock::new(), done: Mutex::new(done_tx) };
    let mut slots: Vec<Box<Slot>> = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let mut slot = Box::new(Slot {
            ctx: nng_ctx::default(),
            aio: null_mut(),
            sending: AtomicBool::new(false),
            shared: &shared,
            state: Mutex::new((Instant::now(), [0; 16], Phase::default())),
        });
        // SAFETY: `socket` is open; nng_ctx_open writes the new context id.
        check("nng_ctx_open", unsafe { nng_ctx_open(&mut slot.ctx, socket) })?;
        let arg = (&*slot as *const Slot).cast_mut().cast::<c_void>();
        // SAFETY: the argument is the boxed slot, freed only after its aio is stopped below.
        check("nng_aio_alloc", shim::aio_alloc(&mut slot.aio, slot_event, arg))?;
        // SAFETY: the aio is live.
        unsafe { nng_aio_set_timeout(slot.aio, REQUEST_TIMEOUT_MS) };
        slots.push(slot);
    }
    let start = Instant::now();
    let _ = shared.deadline.set(start + length);
    for slot in &slots {
        // SAFETY: nothing is pending on a new aio.
        unsafe { slot.send_next() };
    }
    let mut total = Phase::default();
    let mut failure = None;
    for _ in 0..in_flight {
        match done_rx.recv_timeout(length + Duration::from_secs(10)) {
            Ok(part) => total.absorb(part),
            Err(_) => failure = Some("pipelined: a slot never finished".to_string()),
        }
    }
    total.elapsed = start.elapsed();
    // SAFETY: closing the socket ends every pending operation; nng_aio_stop
    // waits for each callback, after which the aio and its slot may be freed.
    unsafe {
        nng_socket_close(socket);
        for slot in &slots {
            nng_aio_stop(slot.aio);
            nng_aio_free(slot.aio);
        }
    }
    failure.map_or(Ok(total), Err)
}
