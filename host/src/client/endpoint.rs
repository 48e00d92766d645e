//! One dialed REQ socket and the NNG contexts that carry its requests, so
//! that overlapping calls on one port each get their own reply.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nng::options::protocol::reqrep::ResendTime;
use nng::options::{Options, ReconnectMaxTime, ReconnectMinTime, RecvMaxSize};
use nng::{Aio, AioResult, Context, Message, PipeEvent, Protocol, Socket};
use tokio::sync::oneshot;

use super::calls::Lanes;
use super::ClientAuth;

/// What a call waits on: the reply, or why there is none.
pub(super) type Answer = oneshot::Receiver<Result<Message, nng::Error>>;

/// One dialed REQ socket and the contexts that carry its requests.
pub(super) struct Endpoint {
    socket: Socket,
    slots: Arc<SlotList>,
    /// Calls in service on this connection: never more than a control
    /// plane serves per connection by default (`--max-requests-per-connection`).
    pub(super) in_flight: tokio::sync::Semaphore,
    /// Whether a connection ever came up: until one has, a refused dial
    /// means a wrong address, and calls fail at once rather than wait.
    ever_connected: Arc<AtomicBool>,
    /// The lanes that carry blocking calls many to a frame.
    pub(super) calls: Lanes,
}

#[derive(Default)]
struct SlotList {
    all: Mutex<Vec<Arc<Slot>>>,
    free: Mutex<Vec<Arc<Slot>>>,
}

struct Slot {
    ctx: Context,
    aio: Aio,
    pending: Mutex<Option<Pending>>,
}

struct Pending {
    sender: oneshot::Sender<Result<Message, nng::Error>>,
    deadline: Instant,
}

impl Endpoint {
    /// Dials `address` (the connection comes up in the background); at most
    /// `max_in_flight` calls are meant to share it. Batched calls are sealed
    /// with `auth` and their frames answered within `frame_timeout`.
    pub(super) fn open(
        address: &str,
        max_frame: usize,
        max_in_flight: usize,
        auth: Option<Arc<ClientAuth>>,
        frame_timeout: Duration,
    ) -> Result<Endpoint, nng::Error> {
        let socket = Socket::new(Protocol::Req0)?;
        // Never resend on a timer: a long task would run twice. A call whose
        // connection drops fails; the task id makes submitting it again safe.
        socket.set_opt::<ResendTime>(None)?;
        socket.set_opt::<ReconnectMinTime>(Some(Duration::from_millis(10)))?;
        socket.set_opt::<ReconnectMaxTime>(Some(Duration::from_millis(500)))?;
        socket.set_opt::<RecvMaxSize>(max_frame.saturating_mul(2))?;
        let ever_connected = Arc::new(AtomicBool::new(false));
        let seen = ever_connected.clone();
        socket.pipe_notify(move |_pipe, event| {
            if event == PipeEvent::AddPost {
                seen.store(true, Ordering::Relaxed);
            }
        })?;
        crate::wire::tls::dial_async(&socket, address)?;
        let in_flight = tokio::sync::Semaphore::new(max_in_flight);
        let calls = Lanes::open(&socket, auth, max_frame, frame_timeout)?;
        Ok(Endpoint { socket, slots: Arc::default(), in_flight, ever_connected, calls })
    }

    /// Whether a connection to the address ever came up.
    pub(super) fn ever_connected(&self) -> bool {
        self.ever_connected.load(Ordering::Relaxed)
    }

    /// Sends `frame` on a free context; the answer comes within `timeout`.
    pub(super) fn send(&self, frame: Message, timeout: Duration) -> Result<Answer, nng::Error> {
        let slot = self.acquire()?;
        let (sender, receiver) = oneshot::channel();
        *slot.pending.lock().expect("slot lock") = Some(Pending { sender, deadline: Instant::now() + timeout });
        slot.aio.set_timeout(Some(timeout))?;
        if let Err((_, error)) = slot.ctx.send(&slot.aio, frame) {
            slot.pending.lock().expect("slot lock").take();
            self.release(slot);
            return Err(error);
        }
        Ok(receiver)
    }

    fn acquire(&self) -> Result<Arc<Slot>, nng::Error> {
        if let Some(slot) = self.slots.free.lock().expect("slot list lock").pop() {
            return Ok(slot);
        }
        let ctx = Context::new(&self.socket)?;
        let mut failure = None;
        let slot = Arc::new_cyclic(|me: &Weak<Slot>| {
            let (me, list, callback_ctx) = (me.clone(), Arc::downgrade(&self.slots), ctx.clone());
            let aio = Aio::new(move |aio, result| on_event(&callback_ctx, &aio, result, &me, &list));
            let aio = aio.unwrap_or_else(|error| {
                failure = Some(error);
                Aio::new(|_, _| {}).expect("allocating a placeholder aio")
            });
            Slot { ctx, aio, pending: Mutex::new(None) }
        });
        if let Some(error) = failure {
            return Err(error);
        }
        self.slots.all.lock().expect("slot list lock").push(slot.clone());
        Ok(slot)
    }

    fn release(&self, slot: Arc<Slot>) {
        self.slots.free.lock().expect("slot list lock").push(slot);
    }
}

fn on_event(ctx: &Context, aio: &Aio, result: AioResult, me: &Weak<Slot>, list: &Weak<SlotList>) {
    let outcome = match result {
        AioResult::Send(Ok(())) => {
            let Some(slot) = me.upgrade() else { return };
            let remaining = slot
                .pending
                .lock()
                .expect("slot lock")
                .as_ref()
                .map(|p| p.deadline.saturating_duration_since(Instant::now()));
            let started = aio.set_timeout(remaining).and_then(|()| ctx.recv(aio));
            match started {
                Ok(()) => return,
                Err(error) => Err(error),
            }
        }
        AioResult::Send(Err((_, error))) => Err(error),
        AioResult::Recv(result) => result,
        AioResult::Sleep(_) => return,
    };
    let (Some(slot), Some(list)) = (me.upgrade(), list.upgrade()) else { return };
    if let Some(pending) = slot.pending.lock().expect("slot lock").take() {
        let _ = pending.sender.send(outcome);
    }
    list.free.lock().expect("slot list lock").push(slot);
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Stop every Aio before the socket closes: a callback that starts
        // its receive on a context while the socket is closing makes NNG 1.4
        // finalize that context against a freed socket (a crash in
        // `req0_ctx_fini`). A stopped Aio takes no new operation, and the
        // stop waits for its callback, so no Aio is freed inside one.
        let all = std::mem::take(&mut *self.slots.all.lock().expect("slot list lock"));
        for slot in &all {
            stop(&slot.aio);
        }
        self.calls.stop();
        self.socket.close();
        self.slots.free.lock().expect("slot list lock").clear();
        drop(all);
    }
}

/// Stops an Aio for good: its operation is cancelled, later ones fail at
/// once, and the call returns when its callback has.
pub(crate) fn stop(aio: &Aio) {
    // SAFETY: the pointer is the Aio's own and lives as long as `aio`;
    // `nng_aio_stop` may be called on any Aio, any number of times, from any
    // thread but its own callback's (the callers are drops, never callbacks).
    unsafe { nng_sys::nng_aio_stop(aio.nng_aio()) }
}
