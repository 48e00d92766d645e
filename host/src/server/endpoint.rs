//! A listening NNG reply socket served by a set of contexts, so that
//! overlapping requests on one port each get their own reply.
//!
//! Each context loops receive → handle → reply → receive. A handler may
//! reply at once or keep the [`Replier`] and reply later from another
//! thread (a blocking submission replies when its task finishes); meanwhile
//! the other contexts keep serving. A port's set of contexts is either
//! fixed (requests beyond it wait inside NNG until one is free) or grows on
//! demand: when its last idle context takes a request it doubles, up to a
//! bound (`--contexts-per-port` on a control plane's task ports); at the
//! bound, that last context answers `Busy`, naming the flag, to whatever
//! arrives until another frees, so nobody waits without a word.
//!
//! No peer can take a port from the others:
//! * one connection may have at most `max_requests_per_connection`
//!   requests in service (received, not yet answered); a request beyond
//!   that is answered `Busy` at once;
//! * a connection with more than that many replies waiting to leave does
//!   not read them: it is closed, which frees every context holding one of
//!   its unsent replies (a request still running keeps its context until
//!   its task ends, then its reply is discarded);
//! * a reply that cannot be sent within `reply_timeout` is dropped and
//!   counted, and its connection closed the same way.
//!
//! Several contexts may close the same connection at once (every reply
//! queued behind a slow reader times out together): see `close_connection`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use nng::options::{Options, RecvMaxSize, RemAddr};
use nng::{Aio, AioResult, Context, Message, Pipe, PipeEvent, Protocol, Socket};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use crate::server::bounds::{Bound, Refusals};
use crate::server::peer_log::PeerLog;
use crate::wire::auth::{open, seal, AuthError, KeyRing, Opened, ReplayGuard, Role, Sender, Tenant, ENVELOPE_BYTES};
use crate::wire::protocol::{encode_message, now_ms, ErrorKind, ErrorReply, Reply};

/// The handle to answer one request with. Dropping it unanswered frees its
/// context without a reply (the peer's call times out).
pub(crate) struct Replier {
    slot: Option<Arc<Slot>>,
    /// Who sealed the request, when the port authenticates.
    opened: Option<Opened>,
    /// Where the answer goes instead of a port (a subworker's dispatched
    /// runs: to the outcomes its control plane collects).
    forward: Option<Box<dyn FnOnce(Message) + Send>>,
    /// Instead of a port's context: a caller in this process (the HTTP API)
    /// that awaits the encoded reply.
    local: Option<tokio::sync::oneshot::Sender<Message>>,
}

/// How a port authenticates: the keys it accepts, its own sender identity
/// for sealing replies, and the counters seen (replays).
pub(crate) struct PortAuth {
    pub(crate) ring: Arc<KeyRing>,
    pub(crate) sender: Sender,
    pub(crate) guard: ReplayGuard,
}

/// One context of a port and what it is serving.
struct Slot {
    ctx: Context,
    aio: Aio,
    port: Arc<Port>,
    /// The connection whose request this context serves, if known.
    pipe: Mutex<Option<Pipe>>,
}

/// What one connection has going on a port.
#[derive(Default)]
struct Load {
    /// Requests received and not yet answered.
    in_service: u32,
    /// Replies handed to NNG and not yet sent.
    unsent: u32,
}

/// What every context of a port shares.
struct Port {
    purpose: &'static str,
    /// Contexts waiting for a request.
    idle: AtomicUsize,
    /// Every context of the port, and how to add more.
    contexts: Mutex<Contexts>,
    per_connection: u32,
    reply_timeout: Duration,
    /// Requests in service and replies waiting to leave, by connection.
    connections: Mutex<FxHashMap<Pipe, Load>>,
    refusals: Arc<Refusals>,
    log: Arc<PeerLog>,
    auth: Option<Arc<PortAuth>>,
}

/// A port's contexts: those it has (kept alive here) and those it may add.
struct Contexts {
    slots: Vec<Arc<Slot>>,
    /// The most it may have, when it grows on demand.
    grow_to: Option<usize>,
    socket: Socket,
    handler: Handler,
}

impl Replier {
    /// A replier whose answer is handed to `forward` instead of a port.
    pub(crate) fn forwarding(forward: impl FnOnce(Message) + Send + 'static) -> Replier {
        Replier { slot: None, opened: None, forward: Some(Box::new(forward)), local: None }
    }

    /// A replier for a request made inside this process: the reply arrives
    /// on the receiver, encoded as on the wire (decode it with
    /// [`crate::wire::protocol::decode`]); dropped unanswered, the receiver errs.
    pub(crate) fn local() -> (Replier, tokio::sync::oneshot::Receiver<Message>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (Replier { slot: None, opened: None, forward: None, local: Some(sender) }, receiver)
    }

    /// True for an in-process replier whose caller stopped waiting.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.local.as_ref().is_some_and(|local| local.is_closed())
    }

    /// Sends the reply and lets the context take the next request.
    pub(crate) fn send(self, reply: &Reply) {
        self.send_message(encode_reply(reply));
    }

    /// The role of the key that sealed the request; `None` when the port
    /// does not authenticate (then every request is allowed).
    pub(crate) fn role(&self) -> Option<Role> {
        self.opened.as_ref().map(|opened| opened.key.role)
    }

    /// The id of the key that sealed the request.
    pub(crate) fn key_id(&self) -> Option<[u8; 8]> {
        self.opened.as_ref().map(|opened| opened.key.id)
    }

    /// Whom what this request queues counts against (`--queue-share`): its
    /// key, else its connection; `None` for a request made in this process.
    pub(crate) fn tenant(&self) -> Option<Tenant> {
        if let Some(id) = self.key_id() {
            return Some(Tenant::Key(id));
        }
        let pipe = self.slot.as_ref().and_then(|slot| *slot.pipe.lock().expect("slot lock"))?;
        // SAFETY: `nng_pipe_id` only reads the id out of the pipe handle,
        // passed by value; it touches no NNG state.
        let id = unsafe { nng_sys::nng_pipe_id(pipe.nng_pipe()) };
        Some(Tenant::Connection(id))
    }

    /// Answers `Forbidden` unless the request's role is one of `allowed`
    /// (always allowed when the port does not authenticate); gives the
    /// replier back when allowed.
    pub(crate) fn allow(self, allowed: &[Role], what: &str) -> Option<Replier> {
        match self.role() {
            Some(role) if !allowed.contains(&role) => {
                let message = format!(
                    "a {} key may not {what}; it needs a key of role {}",
                    role.as_str(),
                    allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ")
                );
                self.warn_peer("refused a request", &message);
                self.send(&Reply::Error(ErrorReply::new(ErrorKind::Forbidden, message)));
                None
            }
            _ => Some(self),
        }
    }

    /// Sends an already encoded reply; if it cannot leave within the
    /// port's reply timeout it is dropped and the connection closed.
    pub(crate) fn send_message(mut self, mut message: Message) {
        if let Some(forward) = self.forward.take() {
            return forward(message);
        }
        if let Some(local) = self.local.take() {
            // The caller may have stopped waiting: nothing to do then.
            let _ = local.send(message);
            return;
        }
        let Some(slot) = self.slot.take() else { return };
        if let (Some(auth), Some(opened)) = (&slot.port.auth, self.opened.take()) {
            let (envelope, _) = seal(&opened.key, &auth.sender, &message, Some(opened.seal), now_ms());
            message.push_front(&envelope);
        }
        let pipe = *slot.pipe.lock().expect("slot lock");
        if let Some(pipe) = pipe {
            if !slot.port.answered(pipe) {
                slot.port.refusals.replies_dropped.fetch_add(1, Ordering::Relaxed);
                let port = &slot.port;
                let peer = peer_of(Some(pipe));
                port.log.warn(&peer, "unread replies", |suppressed| {
                    warn!(
                        port = port.purpose, %peer, suppressed,
                        "a peer leaves more than {} replies unread (--max-requests-per-connection): its connection is closed",
                        port.per_connection
                    )
                });
                close_connection(pipe);
            }
        }
        let _ = slot.aio.set_timeout(Some(slot.port.reply_timeout));
        if let Err((_, error)) = slot.ctx.send(&slot.aio, message) {
            debug!(%error, port = slot.port.purpose, "could not queue a reply");
            slot.done();
        }
    }

    /// The peer's address (its IP, without the port), for logs.
    pub(crate) fn peer(&self) -> String {
        let pipe = self.slot.as_ref().and_then(|slot| *slot.pipe.lock().expect("slot lock"));
        peer_of(pipe)
    }

    /// Writes a rate-limited warning about what this peer sent.
    pub(crate) fn warn_peer(&self, what: &str, detail: &dyn std::fmt::Display) {
        let Some(slot) = &self.slot else { return };
        let peer = self.peer();
        slot.port.log.warn(&peer, what, |suppressed| {
            if suppressed > 0 {
                warn!(port = slot.port.purpose, %peer, suppressed, "{what}: {detail} ({suppressed} similar lines from this peer left out)");
            } else {
                warn!(port = slot.port.purpose, %peer, "{what}: {detail}");
            }
        });
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            debug!(port = slot.port.purpose, "a request was dropped unanswered");
            if let Some(pipe) = slot.pipe.lock().expect("slot lock").take() {
                slot.port.update(pipe, |load| load.in_service = load.in_service.saturating_sub(1));
            }
            slot.listen();
        }
    }
}

impl Slot {
    /// Waits for the next request (the context is idle until one comes).
    fn listen(&self) {
        self.port.idle.fetch_add(1, Ordering::SeqCst);
        if let Err(error) = self.ctx.recv(&self.aio) {
            self.port.idle.fetch_sub(1, Ordering::SeqCst);
            debug!(%error, port = self.port.purpose, "a context could not wait for a request");
        }
    }

    /// The reply left (or failed to): count it out of its connection and
    /// take the next request.
    fn done(&self) {
        let pipe = self.pipe.lock().expect("slot lock").take();
        if let Some(pipe) = pipe {
            self.port.update(pipe, |load| load.unsent = load.unsent.saturating_sub(1));
        }
        let _ = self.aio.set_timeout(None);
        self.listen();
    }

    /// A new context of `port`, not yet waiting for a request.
    fn open(port: &Arc<Port>, socket: &Socket, handler: &Handler) -> Result<Arc<Slot>, nng::Error> {
        let ctx = Context::new(socket)?;
        let handler = handler.clone();
        let this: Arc<OnceLock<Weak<Slot>>> = Arc::default();
        let callback_this = this.clone();
        let aio = Aio::new(move |_aio, result| {
            if let Some(slot) = callback_this.get().and_then(Weak::upgrade) {
                on_event(&slot, result, &handler);
            }
        })?;
        let slot = Arc::new(Slot { ctx, aio, port: port.clone(), pipe: Mutex::new(None) });
        let _ = this.set(Arc::downgrade(&slot));
        Ok(slot)
    }
}

impl Port {
    /// The last idle context just took a request: the port doubles its
    /// contexts if it grows and has room. False when it is at its bound
    /// (then the request is to be refused `Busy`).
    fn grow(self: &Arc<Self>) -> bool {
        let mut contexts = self.contexts.lock().expect("port contexts lock");
        let Some(most) = contexts.grow_to else { return true };
        if self.idle.load(Ordering::SeqCst) > 0 {
            // Another context freed, or another request grew the port.
            return true;
        }
        let have = contexts.slots.len();
        if have >= most {
            return false;
        }
        let add = have.max(1).min(most - have);
        let mut fresh = Vec::with_capacity(add);
        for _ in 0..add {
            match Slot::open(self, &contexts.socket, &contexts.handler) {
                Ok(slot) => fresh.push(slot),
                Err(error) => {
                    warn!(port = self.purpose, %error, "could not add a context");
                    break;
                }
            }
        }
        contexts.slots.extend(fresh.iter().cloned());
        let now = contexts.slots.len();
        drop(contexts);
        debug!(port = self.purpose, contexts = now, "every context was in service: the port grew");
        // Outside the lock: a request may reach a new context at once.
        for slot in &fresh {
            slot.listen();
        }
        !fresh.is_empty()
    }

    /// Counts a request of `pipe` in; false when that connection already
    /// had as many in service as allowed (it is counted in all the same).
    fn enter(&self, pipe: Pipe) -> bool {
        let mut connections = self.connections.lock().expect("port lock");
        let load = connections.entry(pipe).or_default();
        load.in_service += 1;
        load.in_service <= self.per_connection
    }

    /// Moves a request of `pipe` from in service to its reply waiting to
    /// leave; false when that connection leaves too many replies unread.
    fn answered(&self, pipe: Pipe) -> bool {
        let mut connections = self.connections.lock().expect("port lock");
        let load = connections.entry(pipe).or_default();
        load.in_service = load.in_service.saturating_sub(1);
        load.unsent += 1;
        load.unsent <= self.per_connection
    }

    /// Changes what `pipe` has going, forgetting it when nothing is left.
    fn update(&self, pipe: Pipe, change: impl FnOnce(&mut Load)) {
        let mut connections = self.connections.lock().expect("port lock");
        if let Some(load) = connections.get_mut(&pipe) {
            change(load);
            if load.in_service == 0 && load.unsent == 0 {
                connections.remove(&pipe);
            }
        }
    }
}

/// Closes a connection, once or many times.
///
/// Every reply queued behind a peer that does not read times out at about
/// the same moment, each on its own context and NNG callback thread, and
/// each closes the connection. The first close wins; by the time a later one
/// runs, NNG may have reaped the pipe, and `nng_pipe_close` then answers
/// `ENOENT`. The `nng` crate's `Pipe::close` panics on that answer, and a
/// panic in an NNG callback aborts the whole process: so the call is made
/// here, and a pipe already closed or gone counts as closed.
fn close_connection(pipe: Pipe) {
    // SAFETY: `nng_pipe_close` takes the pipe by value (its id) and looks
    // it up in NNG's table of live pipes under NNG's own lock: any id may be
    // passed from any thread, a stale one is answered `ENOENT`. Pipe ids
    // are not reused before 2^31 more connections, so a stale id never
    // names another peer's connection.
    let rv = unsafe { nng_sys::nng_pipe_close(pipe.nng_pipe()) };
    match u32::try_from(rv) {
        Ok(0 | nng_sys::NNG_ECLOSED | nng_sys::NNG_ENOENT) => {}
        _ => debug!(code = rv, "closing a connection failed"),
    }
}

/// A peer's IP address, or what is known of it.
fn peer_of(pipe: Option<Pipe>) -> String {
    match pipe.map(|pipe| pipe.get_opt::<RemAddr>()) {
        Some(Ok(nng::SocketAddr::Inet(address))) => address.ip().to_string(),
        Some(Ok(nng::SocketAddr::Inet6(address))) => address.ip().to_string(),
        Some(Ok(other)) => format!("{other:?}"),
        _ => "unknown peer".to_string(),
    }
}

/// Encodes a reply into an NNG message.
pub(crate) fn encode_reply(reply: &Reply) -> Message {
    encode_message(reply)
}

/// How a port is served and bounded.
pub(crate) struct PortOptions {
    /// What the port is for, in errors and logs.
    pub(crate) purpose: &'static str,
    /// Requests served at once, at the start.
    pub(crate) contexts: usize,
    /// The most contexts it grows to on demand, beyond which a request is
    /// answered `Busy` (`--contexts-per-port`; at least 2, one kept to
    /// answer); `None`: `contexts` only, more requests wait inside NNG.
    pub(crate) grow_to: Option<usize>,
    /// Largest frame taken; larger ones close the sender's connection
    /// (with slack, so that the handler can answer a clear error first).
    pub(crate) max_frame: usize,
    /// Requests one connection may have in service.
    pub(crate) per_connection: usize,
    /// How long a reply may take to leave.
    pub(crate) reply_timeout: Duration,
    /// Where refusals and dropped replies are counted.
    pub(crate) refusals: Arc<Refusals>,
    /// The rate limit of lines about peers.
    pub(crate) log: Arc<PeerLog>,
    /// The keys every request must be sealed with, if any.
    pub(crate) auth: Option<Arc<PortAuth>>,
    /// Notified whenever a connection to this port drops (a subworker
    /// watches its control plane's connection this way).
    pub(crate) on_drop: Option<Arc<tokio::sync::Notify>>,
}

/// A listening socket and its contexts.
pub(crate) struct Listener {
    socket: Socket,
    port: Arc<Port>,
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The port is taken.
    #[error("{url} ({purpose}) is already in use; stop the process holding it or choose another --base-address")]
    AddressInUse {
        /// The address.
        url: String,
        /// What the port is for.
        purpose: &'static str,
    },
    /// Any other failure to listen.
    #[error("cannot listen on {url} ({purpose}): {source}")]
    Other {
        /// The address.
        url: String,
        /// What the port is for.
        purpose: &'static str,
        /// NNG's error.
        source: nng::Error,
    },
}

/// Called for each request with the raw frame.
pub(crate) type Handler = Arc<dyn Fn(Replier, Message) + Send + Sync>;

impl Listener {
    /// Listens on `url` and serves it as `options` say.
    pub(crate) fn start(url: &str, options: PortOptions, handler: Handler) -> Result<Listener, ListenError> {
        let purpose = options.purpose;
        let fail = |source: nng::Error| match source {
            nng::Error::AddressInUse => ListenError::AddressInUse { url: url.to_string(), purpose },
            source => ListenError::Other { url: url.to_string(), purpose, source },
        };
        let socket = Socket::new(Protocol::Rep0).map_err(fail)?;
        socket.set_opt::<RecvMaxSize>(options.max_frame.saturating_mul(2).max(64 * 1024)).map_err(fail)?;
        if let Some(notify) = options.on_drop {
            // Only wakes a waiting task: never blocks NNG's callback thread.
            socket
                .pipe_notify(move |_pipe, event| {
                    if event == PipeEvent::RemovePost {
                        notify.notify_one();
                    }
                })
                .map_err(fail)?;
        }
        crate::wire::tls::listen(&socket, url).map_err(fail)?;
        let grow_to = options.grow_to.map(|most| most.max(2).max(options.contexts));
        let contexts = Contexts { slots: Vec::new(), grow_to, socket: socket.clone(), handler: handler.clone() };
        let port = Arc::new(Port {
            purpose,
            idle: AtomicUsize::new(0),
            contexts: Mutex::new(contexts),
            per_connection: u32::try_from(options.per_connection).unwrap_or(u32::MAX).max(1),
            reply_timeout: options.reply_timeout,
            connections: Mutex::new(FxHashMap::default()),
            refusals: options.refusals,
            log: options.log,
            auth: options.auth,
        });
        let mut slots = Vec::with_capacity(options.contexts);
        for _ in 0..options.contexts.max(1) {
            let slot = Slot::open(&port, &socket, &handler).map_err(fail)?;
            port.idle.fetch_add(1, Ordering::SeqCst);
            slot.ctx.recv(&slot.aio).map_err(fail)?;
            slots.push(slot);
        }
        port.contexts.lock().expect("port contexts lock").slots = slots;
        Ok(Listener { socket, port })
    }
}

fn on_event(slot: &Arc<Slot>, result: AioResult, handler: &Handler) {
    match result {
        AioResult::Recv(Ok(mut message)) => {
            // This context is in service now; if it was the last idle one,
            // the port grows, or at its bound this request is refused.
            let full = slot.port.idle.fetch_sub(1, Ordering::SeqCst) <= 1 && !slot.port.grow();
            let pipe = message.pipe();
            *slot.pipe.lock().expect("slot lock") = pipe;
            let mut replier = Replier { slot: Some(slot.clone()), opened: None, forward: None, local: None };
            if let Some(auth) = &slot.port.auth {
                let now = now_ms();
                match open(&auth.ring, &message, None, now).and_then(|opened| {
                    auth.guard.check(&opened, now)?;
                    Ok(opened)
                }) {
                    Ok(opened) => {
                        message.trim(ENVELOPE_BYTES);
                        replier.opened = Some(opened);
                    }
                    Err(error) => {
                        slot.port.refusals.unauthenticated.fetch_add(1, Ordering::Relaxed);
                        replier.warn_peer("refused an unauthenticated frame", &error);
                        let kind = match error {
                            AuthError::Forgotten => ErrorKind::Busy,
                            _ => ErrorKind::Unauthenticated,
                        };
                        if let Some(pipe) = pipe {
                            slot.port.enter(pipe);
                        }
                        return replier.send(&Reply::Error(ErrorReply::new(kind, error.to_string())));
                    }
                }
            }
            if full {
                if let Some(pipe) = pipe {
                    slot.port.enter(pipe);
                }
                return refuse_full(replier);
            }
            match pipe {
                Some(pipe) if !slot.port.enter(pipe) => {
                    let port = &slot.port;
                    port.refusals.count(Bound::RequestsPerConnection);
                    let message = format!(
                        "this connection already has {} requests in service on the {} (--max-requests-per-connection {}): wait for their replies before sending more, or open another connection",
                        port.per_connection, port.purpose, port.per_connection
                    );
                    replier.warn_peer("refused a request", &"too many requests in service on one connection");
                    replier.send(&Reply::Error(ErrorReply::new(ErrorKind::Busy, message)));
                }
                _ => handler(replier, message),
            }
        }
        AioResult::Recv(Err(nng::Error::Closed)) => {}
        AioResult::Recv(Err(error)) => {
            debug!(%error, "receive failed; waiting for the next request");
            let _ = slot.ctx.recv(&slot.aio);
        }
        AioResult::Send(Ok(())) => slot.done(),
        AioResult::Send(Err((_, nng::Error::Closed))) => {}
        AioResult::Send(Err((_, nng::Error::TimedOut))) => {
            let port = &slot.port;
            port.refusals.replies_dropped.fetch_add(1, Ordering::Relaxed);
            let pipe = *slot.pipe.lock().expect("slot lock");
            let peer = peer_of(pipe);
            port.log.warn(&peer, "reply timeout", |suppressed| {
                warn!(
                    port = port.purpose, %peer, suppressed,
                    "a reply could not be sent within {} s (--reply-timeout): the peer does not read; its connection is closed",
                    port.reply_timeout.as_secs_f64()
                )
            });
            if let Some(pipe) = pipe {
                close_connection(pipe);
            }
            slot.done();
        }
        AioResult::Send(Err((_, error))) => {
            debug!(%error, "reply not delivered (the client went away)");
            slot.done();
        }
        AioResult::Sleep(_) => {}
    }
}

/// Answers a request that reached the last context of a port at its bound.
fn refuse_full(replier: Replier) {
    let Some(slot) = &replier.slot else { return };
    let port = slot.port.clone();
    port.refusals.count(Bound::ContextsPerPort);
    let most = port.contexts.lock().expect("port contexts lock").slots.len();
    let message = format!(
        "the {} has {} requests in service, as many as it serves (--contexts-per-port {most}): retry shortly, or raise --contexts-per-port",
        port.purpose,
        most.saturating_sub(1)
    );
    replier.warn_peer("refused a request", &"every context of the port is in service");
    replier.send(&Reply::Error(ErrorReply::new(ErrorKind::Busy, message)));
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.socket.close();
        // An Aio must never be freed from inside its own callback, which a
        // late reply racing this drop could cause; the process is ending, so
        // the contexts are left to the OS.
        let slots = std::mem::take(&mut self.port.contexts.lock().expect("port contexts lock").slots);
        std::mem::forget(slots);
    }
}
