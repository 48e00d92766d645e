//! The transport's floor: raw NNG request/reply to an echo server in its own process.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nng::options::{Options, RecvTimeout, SendTimeout};
use nng::{Aio, AioResult, Context, Message, Protocol, Socket};

use crate::phase::{Budget, Phase};
use crate::processes::ChildGuard;
use crate::{ECHO_CONTEXTS, REQUEST_TIMEOUT};

/// An in-process Rep0 echo server: `contexts` contexts, each with an Aio
/// looping receive → send the same message back → receive, so that many
/// requests are served at once. The callbacks run on NNG's own threads.
pub(crate) struct EchoServer {
    pub(crate) socket: Socket,
    pub(crate) slots: Vec<(Context, Aio)>,
}

impl EchoServer {
    pub(crate) fn start(address: &str, contexts: usize) -> Result<EchoServer, nng::Error> {
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
pub(crate) fn echo_server_main(address: &str) -> ExitCode {
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
pub(crate) fn spawn_echo_server(address: &str) -> Result<ChildGuard, String> {
    spawn_echo_child("--echo-server", address)
}

/// Starts this executable with `flag ADDRESS` (an NNG or a TCP echo server)
/// and waits until it listens.
pub(crate) fn spawn_echo_child(flag: &str, address: &str) -> Result<ChildGuard, String> {
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
pub(crate) fn req_socket(address: &str) -> Result<Socket, String> {
    let socket = Socket::new(Protocol::Req0).map_err(|e| e.to_string())?;
    socket.set_opt::<RecvTimeout>(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    socket.set_opt::<SendTimeout>(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    socket.dial(address).map_err(|e| format!("dialing {address}: {e}"))?;
    Ok(socket)
}

/// The 16-byte payload of floor request `n` (about the size of an `add` request's arguments).
pub(crate) fn echo_payload(n: u64) -> [u8; 16] {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&n.to_le_bytes());
    payload[8..].copy_from_slice(&(!n).to_le_bytes());
    payload
}

/// One request at a time with blocking send and receive.
pub(crate) fn floor_sequential(address: &str, budget: Budget) -> Result<Phase, String> {
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
pub(crate) struct FloorSlot {
    /// When the current request was sent.
    pub(crate) sent: Instant,
    /// The payload the current reply must echo.
    pub(crate) expect: [u8; 16],
    /// What this slot measured.
    pub(crate) phase: Phase,
}

/// What every slot of [`floor_pipelined`] shares.
pub(crate) struct FloorShared {
    pub(crate) budget: Budget,
    /// Each slot sends its results here once, when the budget is spent.
    pub(crate) done: Mutex<mpsc::Sender<Phase>>,
}

/// `in_flight` contexts with an Aio each on one Req0 socket; each sends its
/// next request from the callback that receives the previous reply.
pub(crate) fn floor_pipelined(address: &str, in_flight: usize, budget: Budget) -> Result<Phase, String> {
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
pub(crate) fn floor_send_next(ctx: &Context, aio: &Aio, state: &Mutex<FloorSlot>, shared: &FloorShared) {
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
pub(crate) fn floor_slot_done(slot: &mut FloorSlot, shared: &FloorShared) {
    if let Ok(done) = shared.done.lock() {
        let _ = done.send(std::mem::take(&mut slot.phase));
    }
}

/// The Aio callback of a [`floor_pipelined`] slot. It must not panic.
pub(crate) fn floor_event(ctx: &Context, aio: &Aio, result: AioResult, state: &Mutex<FloorSlot>, shared: &FloorShared) {
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

/// One request at a time, as `fastworker::Client` sends it: on a context
/// of the Req0 socket with an Aio whose callback starts the receive and
/// hands the reply to the waiting caller (here over a channel to this
/// thread). Against [`floor_sequential`] (blocking send and receive on the
/// socket itself), the price of the context and the one more thread the
/// reply passes through.
pub(crate) fn floor_context_sequential(address: &str, budget: Budget) -> Result<Phase, String> {
    let socket = req_socket(address)?;
    let ctx = Context::new(&socket).map_err(|e| e.to_string())?;
    let (reply_tx, reply_rx) = mpsc::sync_channel::<Result<Message, nng::Error>>(1);
    let callback_ctx = ctx.clone();
    let aio = Aio::new(move |aio, result| {
        let outcome = match result {
            AioResult::Send(Ok(())) => match callback_ctx.recv(&aio) {
                Ok(()) => return,
                Err(error) => Err(error),
            },
            AioResult::Send(Err((_, error))) => Err(error),
            AioResult::Recv(result) => result,
            AioResult::Sleep(_) => return,
        };
        let _ = reply_tx.try_send(outcome);
    })
    .map_err(|e| e.to_string())?;
    aio.set_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut phase = Phase::default();
    let start = budget.start();
    while let Some(n) = budget.claim() {
        let payload = echo_payload(n);
        let sent = Instant::now();
        let reply = ctx
            .send(&aio, Message::from(&payload[..]))
            .map_err(|(_, e)| e)
            .and_then(|()| reply_rx.recv_timeout(REQUEST_TIMEOUT * 2).unwrap_or(Err(nng::Error::TimedOut)));
        let latency = sent.elapsed();
        match reply {
            Ok(message) if message.as_slice() == payload => phase.latencies.push(latency),
            Ok(message) => phase.problem(true, || format!("request {n}: echo came back as {:?}", message.as_slice())),
            Err(error) => {
                phase.problem(false, || format!("request {n}: {error}"));
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    socket.close();
    aio.cancel();
    aio.wait();
    Ok(phase.finish(elapsed))
}
