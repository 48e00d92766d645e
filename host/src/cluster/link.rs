//! The control plane's connection to one subworker: a REQ socket dialed to
//! the worker's CRITICAL port carrying two exchanges at a time, and a watch
//! on the connection, so that a worker that dies is noticed the moment its
//! connection drops rather than when heartbeats stop.
//!
//! - **Dispatch**: runs for the worker's free slots leave in one
//!   `Dispatch` frame; runs placed while a frame is in flight wait here
//!   and leave together in the next one. The worker answers at once.
//! - **Collect**: one `Collect` always waits on the worker, answered with
//!   every outcome ready; the next one leaves as soon as the answer is in.
//! - **Notes**: cancellations and revocations, whose answers nobody
//!   reads, leave one at a time on a third exchange, in order; those given
//!   while one leaves wait (`cluster::notes`, bounded).
//!
//! So a busy worker's tasks and outcomes travel many to a frame, and an
//! idle worker's single task costs one frame each way. The slots (the
//! worker's credit) are counted by [`crate::cluster::routing`]: the link sends only
//! what was placed into a free slot.
//!
//! A control plane's own worker processes are reached the same way over a
//! socket pair instead of NNG (`cluster::pipe_link`): the same `Dispatch`
//! exchange and the same events, without NNG's threads in between, and no
//! `Collect`: a worker process pushes its outcomes as they come.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::notes::{NoteQueue, Push, MAX_WAITING_NOTES};
use super::pipe_link::PipeLink;

use crate::wire::auth::{open, seal, AuthError, Key, KeyRing, Seal, Sender, ENVELOPE_BYTES};
use crate::wire::protocol::{dispatch_frame, encode_dispatch_part, encode_message, now_ms, Forwarded, Request, TaskId};

use nng::options::protocol::reqrep::ResendTime;
use nng::options::{Options, ReconnectMaxTime, ReconnectMinTime, RecvMaxSize};
use nng::{Aio, AioResult, Context, Message, PipeEvent, Protocol, Socket};
use tracing::{debug, warn};

/// The two exchanges of a link, as its callback names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// Runs going to the worker.
    Dispatch,
    /// Outcomes coming back.
    Collect,
}

/// Room kept in a dispatch frame for its envelope and header.
const FRAME_HEADROOM: usize = 1024;

/// The most room a link keeps in its buffers between frames: more, left
/// by a burst of large runs, is given back.
const KEPT_BUFFER_BYTES: usize = 1 << 20;

/// Why a link could not send or wait.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// NNG refused.
    #[error(transparent)]
    Nng(#[from] nng::Error),
    /// The socket pair to a worker process failed.
    #[error("the link to the worker process failed: {0}")]
    Pipe(#[from] std::io::Error),
}

/// A connection to a subworker: dialed over NNG, or a socket pair to a
/// worker process this process started.
pub(crate) struct Link {
    transport: Transport,
    /// The most bytes of runs in one dispatch frame.
    max_batch_bytes: usize,
    /// Runs placed and not yet sent, encoded back to back in `queued_bytes`:
    /// each one's task id and length.
    queued: VecDeque<(TaskId, usize)>,
    queued_bytes: Vec<u8>,
    /// The runs of the dispatch frame in flight.
    sending: Vec<TaskId>,
}

enum Transport {
    Nng(NngLink),
    Pipe(PipeLink),
}

/// The NNG side of a dialed link.
struct NngLink {
    socket: Socket,
    dispatch: (Context, Aio),
    collect: (Context, Aio),
    /// The exchange for notes that need no answer (cancellations, revocations).
    notes: (Arc<Notes>, Aio),
    /// With a cluster key: frames are sealed with the subworker's control key, and each
    /// exchange remembers its request's seal, which its reply must cover.
    auth: Option<LinkAuth>,
}

/// How a link seals and checks frames.
pub(crate) struct LinkAuth {
    /// The control key for this subworker, which the control plane signs its link with.
    pub(crate) key: Key,
    /// The keys a reply may be sealed with.
    pub(crate) ring: Arc<KeyRing>,
    /// This control plane's sender identity.
    pub(crate) sender: Arc<Sender>,
    seals: [Mutex<Option<Seal>>; 2],
}

impl LinkAuth {
    /// Sealing with `key`, checking replies against `ring`.
    pub(crate) fn new(key: Key, ring: Arc<KeyRing>, sender: Arc<Sender>) -> LinkAuth {
        LinkAuth { key, ring, sender, seals: Default::default() }
    }
}

impl Link {
    /// Dials `url` (without waiting for the connection). `on_connection`
    /// hears `true` when the connection comes up and `false` when it
    /// drops; `on_event` hears each exchange's events.
    pub(crate) fn open(
        url: &str,
        max_frame: usize,
        auth: Option<LinkAuth>,
        on_connection: impl Fn(bool) + Send + Sync + 'static,
        on_event: impl Fn(Channel, AioResult) + Send + Sync + Clone + 'static,
    ) -> Result<Link, nng::Error> {
        let socket = Socket::new(Protocol::Req0)?;
        // A task may run for hours: never resend on a timer. Runs lost with
        // the connection are sent elsewhere by the control plane.
        socket.set_opt::<ResendTime>(None)?;
        socket.set_opt::<ReconnectMinTime>(Some(Duration::from_millis(50)))?;
        socket.set_opt::<ReconnectMaxTime>(Some(Duration::from_secs(1)))?;
        socket.set_opt::<RecvMaxSize>(max_frame.saturating_mul(2))?;
        socket.pipe_notify(move |_pipe, event| match event {
            PipeEvent::AddPost => on_connection(true),
            PipeEvent::RemovePost => on_connection(false),
            _ => {}
        })?;
        let exchange = |channel: Channel| -> Result<(Context, Aio), nng::Error> {
            let on_event = on_event.clone();
            Ok((Context::new(&socket)?, Aio::new(move |_aio, result| on_event(channel, result))?))
        };
        let (dispatch, collect) = (exchange(Channel::Dispatch)?, exchange(Channel::Collect)?);
        let notes = Arc::new(Notes {
            ctx: Context::new(&socket)?,
            queue: Mutex::default(),
            seal: auth.as_ref().map(|auth| (auth.key.clone(), auth.sender.clone())),
            url: url.to_string(),
        });
        let on_sent = notes.clone();
        let notes = (notes, Aio::new(move |aio, result| on_sent.sent(&aio, result))?);
        crate::wire::tls::dial_async(&socket, url)?;
        Ok(Link::with(Transport::Nng(NngLink { dispatch, collect, notes, auth, socket }), max_frame))
    }

    /// The link to a worker process over `stream`, its end of the socket
    /// pair: connected at once (`on_connection` hears `true` before this
    /// returns, `false` when the process closes it or writes what is no
    /// frame); `on_event` hears each reply as an NNG exchange's would be.
    pub(crate) fn pipe(
        stream: UnixStream,
        worker_id: &str,
        max_frame: usize,
        on_connection: impl Fn(bool) + Send + Sync + 'static,
        on_event: impl Fn(Channel, AioResult) + Send + Sync + 'static,
    ) -> Result<Link, LinkError> {
        let pipe = PipeLink::open(stream, worker_id, max_frame, on_connection, on_event)?;
        Ok(Link::with(Transport::Pipe(pipe), max_frame))
    }

    fn with(transport: Transport, max_frame: usize) -> Link {
        Link {
            transport,
            max_batch_bytes: max_frame.saturating_sub(FRAME_HEADROOM).max(1),
            queued: VecDeque::new(),
            queued_bytes: Vec::new(),
            sending: Vec::new(),
        }
    }
}

/// The notes exchange of an NNG link. A REQ context holds one request,
/// and its Aio one send: a note leaves when the last one has been handed to
/// the connection (NNG then writes it, before anything sent after it), so
/// the others wait in `queue`.
struct Notes {
    ctx: Context,
    queue: Mutex<NoteQueue<Message>>,
    /// With a cluster key: the key and sender it is sealed with, as it
    /// leaves (so that its send time and counter are those of its leaving).
    seal: Option<(Key, Arc<Sender>)>,
    /// The subworker's address, for the log.
    url: String,
}

impl Notes {
    /// Sends `next` and, should NNG refuse at once, the notes after it.
    fn send(&self, aio: &Aio, mut next: Option<Message>) {
        while let Some(mut message) = next {
            if let Some((key, sender)) = &self.seal {
                let (envelope, _) = seal(key, sender, &message, None, now_ms());
                message.push_front(&envelope);
            }
            match self.ctx.send(aio, message) {
                Ok(()) => return,
                Err((_, error)) => {
                    debug!(url = %self.url, %error, "a note to a subworker could not leave");
                    next = self.queue.lock().expect("note lock").left();
                }
            }
        }
    }

    /// The Aio's callback: the note leaving has left (or failed to), so the
    /// next one leaves; a closed socket or a stopped Aio ends the notes.
    fn sent(&self, aio: &Aio, result: AioResult) {
        let next = {
            let mut queue = self.queue.lock().expect("note lock");
            match result {
                AioResult::Send(Err((_, nng::Error::Canceled | nng::Error::Closed))) => {
                    queue.close();
                    None
                }
                _ => queue.left(),
            }
        };
        self.send(aio, next);
    }
}

impl NngLink {
    fn exchange(&self, channel: Channel) -> &(Context, Aio) {
        match channel {
            Channel::Dispatch => &self.dispatch,
            Channel::Collect => &self.collect,
        }
    }

    fn sealed(&self, channel: Channel, mut message: Message) -> Message {
        if let Some(auth) = &self.auth {
            let (envelope, seal) = seal(&auth.key, &auth.sender, &message, None, now_ms());
            message.push_front(&envelope);
            *auth.seals[channel as usize].lock().expect("seal lock") = Some(seal);
        }
        message
    }
}

impl Link {
    /// Queues a run placed in one of the worker's free slots, encoded at
    /// once; [`Link::flush`] sends it.
    pub(crate) fn queue(&mut self, run: Forwarded<'_>) {
        let task_id = run.task_id;
        let before = self.queued_bytes.len();
        encode_dispatch_part(run, &mut self.queued_bytes);
        self.queued.push_back((task_id, self.queued_bytes.len() - before));
    }

    /// Sends the queued runs: over NNG as many as fit one frame, unless a
    /// dispatch frame is in flight, or the exchange is still ending after a
    /// [`Link::reset`] (they leave when it has: see the caller); over a
    /// socket pair all of them at once, a frame at a time, as no answer is
    /// awaited. On failure returns the runs that did not leave.
    pub(crate) fn flush(&mut self) -> Result<(), (LinkError, Vec<TaskId>)> {
        while !self.queued.is_empty() && self.sending.is_empty() {
            if !self.flush_frame()? {
                break;
            }
        }
        Ok(())
    }

    /// Sends one frame of queued runs (see [`Link::flush`]); `true` when
    /// the next may leave at once (no answer is awaited).
    fn flush_frame(&mut self) -> Result<bool, (LinkError, Vec<TaskId>)> {
        let mut bytes = 0usize;
        let mut count = 0usize;
        for &(_, len) in &self.queued {
            if count > 0 && bytes.saturating_add(len) > self.max_batch_bytes {
                break;
            }
            bytes = bytes.saturating_add(len);
            count += 1;
        }
        let frame = dispatch_frame(count, &self.queued_bytes[..bytes]);
        let sent = match &self.transport {
            Transport::Nng(nng) => {
                let frame = nng.sealed(Channel::Dispatch, frame);
                let (ctx, aio) = &nng.dispatch;
                match ctx.send(aio, frame) {
                    Ok(()) => Ok(true),
                    // The exchange a reset cancelled has not reported its end yet.
                    Err((_, nng::Error::IncorrectState)) => return Ok(false),
                    Err((_, error)) => Err(LinkError::Nng(error)),
                }
            }
            Transport::Pipe(pipe) => pipe.dispatch(&frame).map(|()| false).map_err(LinkError::Pipe),
        };
        self.drain_bytes(bytes);
        let runs = self.queued.drain(..count).map(|(task_id, _)| task_id).collect();
        match sent {
            // Its answer is awaited: the runs queued meanwhile wait for it.
            Ok(true) => {
                self.sending = runs;
                Ok(false)
            }
            Ok(false) => Ok(true),
            Err(error) => Err((error, runs)),
        }
    }

    /// Whether a run this link sends is taken once written, with no answer
    /// awaited (a socket pair to a worker process: what is written is
    /// received, or the pair breaks and every run it carried is taken back).
    pub(crate) fn taken_when_sent(&self) -> bool {
        matches!(self.transport, Transport::Pipe(_))
    }

    /// Forgets the first `bytes` of queued runs, and the buffer's room
    /// once a burst of large runs has left.
    fn drain_bytes(&mut self, bytes: usize) {
        self.queued_bytes.drain(..bytes);
        if self.queued_bytes.is_empty() && self.queued_bytes.capacity() > KEPT_BUFFER_BYTES {
            self.queued_bytes = Vec::new();
        }
    }

    /// The runs of the dispatch frame whose exchange just ended.
    pub(crate) fn dispatched(&mut self) -> Vec<TaskId> {
        std::mem::take(&mut self.sending)
    }

    /// Forgets the runs not yet sent and those in flight (the worker is
    /// taken back: they go elsewhere), and ends both exchanges.
    pub(crate) fn reset(&mut self) {
        self.queued.clear();
        self.queued_bytes.clear();
        self.sending.clear();
        match &self.transport {
            Transport::Nng(nng) => {
                nng.dispatch.1.cancel();
                nng.collect.1.cancel();
            }
            // Nothing is awaited on a pair, and it is not connected again.
            Transport::Pipe(_) => {}
        }
    }

    /// Gives up the run of `task_id` (the worker did not answer it in
    /// time): the dispatch frame in flight that carries it is cancelled, so
    /// that the runs queued behind it leave when that is reported; still
    /// queued, it is dropped. (A socket pair's runs await no answer.)
    pub(crate) fn abandon_dispatch(&mut self, task_id: TaskId) {
        if self.sending.contains(&task_id) {
            self.sending.clear();
            if let Transport::Nng(nng) = &self.transport {
                nng.dispatch.1.cancel();
            }
        } else if let Some(index) = self.queued.iter().position(|(queued, _)| *queued == task_id) {
            let start: usize = self.queued.iter().take(index).map(|(_, len)| len).sum();
            let (_, len) = self.queued.remove(index).expect("found above");
            self.queued_bytes.drain(start..start + len);
        }
    }

    /// Asks the worker for its outcomes (a worker process pushes them
    /// unasked: nothing to send on its socket pair).
    pub(crate) fn collect(&self) -> Result<(), LinkError> {
        match &self.transport {
            Transport::Nng(nng) => {
                let frame = nng.sealed(Channel::Collect, encode_message(&Request::Collect));
                let (ctx, aio) = &nng.collect;
                ctx.send(aio, frame).map_err(|(_, error)| error.into())
            }
            Transport::Pipe(_) => Ok(()),
        }
    }

    /// Asks the worker for its outcomes after `pause` (after an empty or
    /// refused answer, so that a worker answering at once costs no spin).
    pub(crate) fn collect_after(&self, pause: Duration) -> Result<(), LinkError> {
        match &self.transport {
            Transport::Nng(nng) => Ok(nng.collect.1.sleep(pause)?),
            Transport::Pipe(_) => Ok(()),
        }
    }

    /// Waits for the reply to the request an exchange just sent (a socket
    /// pair's replies are always read).
    pub(crate) fn receive(&self, channel: Channel) -> Result<(), LinkError> {
        match &self.transport {
            Transport::Nng(nng) => {
                let (ctx, aio) = nng.exchange(channel);
                Ok(ctx.recv(aio)?)
            }
            Transport::Pipe(_) => Ok(()),
        }
    }

    /// Checks and strips the seal of the reply an exchange received.
    pub(crate) fn open_reply(&self, channel: Channel, message: &mut Message) -> Result<(), AuthError> {
        let Transport::Nng(NngLink { auth: Some(auth), .. }) = &self.transport else { return Ok(()) };
        let request = auth.seals[channel as usize].lock().expect("seal lock").take();
        let Some(request) = request else { return Err(AuthError::Missing) };
        open(&auth.ring, message, Some(request), now_ms())?;
        message.trim(ENVELOPE_BYTES);
        Ok(())
    }

    /// Sends a request whose answer does not matter (a cancellation, a
    /// revocation): after the notes sent before it, in order. Over NNG, one
    /// leaves at a time and at most [`MAX_WAITING_NOTES`] wait; past that
    /// the oldest waiting one is dropped, with a warning (see
    /// `cluster::notes`).
    pub(crate) fn note(&self, message: Message) {
        let (notes, aio) = match &self.transport {
            Transport::Nng(nng) => &nng.notes,
            Transport::Pipe(pipe) => return pipe.note(&message),
        };
        let pushed = notes.queue.lock().expect("note lock").push(message);
        match pushed {
            Push::Send(message) => notes.send(aio, Some(message)),
            Push::Waits | Push::Closed => {}
            // Once per burst: the count starts again when the line empties.
            Push::Dropped { dropped: 1 } => warn!(
                url = %notes.url,
                "a subworker is not reading its notes (cancellations, revocations): {MAX_WAITING_NOTES} wait, so the oldest was dropped, and more will be until they leave; its runs not reported in time are taken back under their leases"
            ),
            Push::Dropped { .. } => {}
        }
    }
}

impl Drop for NngLink {
    fn drop(&mut self) {
        // Links are dropped on the cluster thread without the task lock,
        // never inside one of their own callbacks, so waiting for those
        // callbacks cannot deadlock. The Aios stop before the socket closes
        // (see `client::stop`).
        for aio in [&self.dispatch.1, &self.collect.1, &self.notes.1] {
            crate::client::stop(aio);
        }
        self.socket.close();
    }
}
