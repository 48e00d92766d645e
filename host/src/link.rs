//! The control plane's connection to one subworker: a REQ socket dialed to
//! the worker's base port, one context per slot (a slot carries one task at
//! a time), and a watch on the connection, so that a worker that dies is
//! noticed the moment its connection drops rather than when heartbeats stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::{open, seal, AuthError, Key, KeyRing, Seal, Sender, ENVELOPE_BYTES};
use crate::protocol::now_ms;

use nng::options::protocol::reqrep::ResendTime;
use nng::options::{Options, ReconnectMaxTime, ReconnectMinTime, RecvMaxSize};
use nng::{Aio, AioResult, Context, Message, PipeEvent, Protocol, Socket};

/// A dialed connection to a subworker.
pub(crate) struct Link {
    socket: Socket,
    slots: Vec<(Context, Aio)>,
    /// A context for notes that need no answer (cancellations).
    notes: (Context, Aio),
    /// With a cluster key: frames are sealed with the worker key, and each
    /// slot remembers its request's seal, which its reply must cover.
    auth: Option<LinkAuth>,
}

/// How a link seals and checks frames.
pub(crate) struct LinkAuth {
    /// The worker key the control plane signs forwarded tasks with.
    pub(crate) key: Key,
    /// The keys a reply may be sealed with.
    pub(crate) ring: Arc<KeyRing>,
    /// This control plane's sender identity.
    pub(crate) sender: Arc<Sender>,
    seals: Vec<Mutex<Option<Seal>>>,
}

impl LinkAuth {
    /// Sealing with `key`, checking replies against `ring`.
    pub(crate) fn new(key: Key, ring: Arc<KeyRing>, sender: Arc<Sender>) -> LinkAuth {
        LinkAuth { key, ring, sender, seals: Vec::new() }
    }
}

impl Link {
    /// Dials `url` (without waiting for the connection) with `slots`
    /// contexts. `on_connection` hears `true` when the connection comes up
    /// and `false` when it drops; `on_slot` hears each slot's events.
    pub(crate) fn open(
        url: &str,
        slots: usize,
        max_frame: usize,
        auth: Option<LinkAuth>,
        on_connection: impl Fn(bool) + Send + Sync + 'static,
        on_slot: impl Fn(usize, Aio, AioResult) + Send + Sync + Clone + 'static,
    ) -> Result<Link, nng::Error> {
        let socket = Socket::new(Protocol::Req0)?;
        // A task may run for hours: never resend on a timer. A task lost
        // with its connection is sent elsewhere by the control plane.
        socket.set_opt::<ResendTime>(None)?;
        socket.set_opt::<ReconnectMinTime>(Some(Duration::from_millis(50)))?;
        socket.set_opt::<ReconnectMaxTime>(Some(Duration::from_secs(1)))?;
        socket.set_opt::<RecvMaxSize>(max_frame.saturating_mul(2))?;
        socket.pipe_notify(move |_pipe, event| match event {
            PipeEvent::AddPost => on_connection(true),
            PipeEvent::RemovePost => on_connection(false),
            _ => {}
        })?;
        let notes = (Context::new(&socket)?, Aio::new(|_, _| {})?);
        let auth = auth.map(|auth| LinkAuth { seals: (0..slots).map(|_| Mutex::new(None)).collect(), ..auth });
        let mut link = Link { socket, slots: Vec::with_capacity(slots), notes, auth };
        for index in 0..slots {
            let ctx = Context::new(&link.socket)?;
            let on_slot = on_slot.clone();
            let aio = Aio::new(move |aio, result| on_slot(index, aio, result))?;
            link.slots.push((ctx, aio));
        }
        crate::tls::dial_async(&link.socket, url)?;
        Ok(link)
    }

    /// Sends a request on a free slot; its reply arrives through `on_slot`
    /// once [`Link::receive`] is called after the send completes.
    pub(crate) fn send(&self, slot: usize, mut message: Message) -> Result<(), nng::Error> {
        if let Some(auth) = &self.auth {
            let (envelope, seal) = seal(&auth.key, &auth.sender, &message, None, now_ms());
            message.push_front(&envelope);
            *auth.seals[slot].lock().expect("seal lock") = Some(seal);
        }
        let (ctx, aio) = &self.slots[slot];
        ctx.send(aio, message).map_err(|(_, error)| error)
    }

    /// Checks and strips the seal of the reply a slot received.
    pub(crate) fn open_reply(&self, slot: usize, message: &mut Message) -> Result<(), AuthError> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let request = auth.seals[slot].lock().expect("seal lock").take();
        let Some(request) = request else { return Err(AuthError::Missing) };
        open(&auth.ring, message, Some(request), now_ms())?;
        message.trim(ENVELOPE_BYTES);
        Ok(())
    }

    /// Waits for the reply to the request a slot just sent.
    pub(crate) fn receive(&self, slot: usize) -> Result<(), nng::Error> {
        let (ctx, aio) = &self.slots[slot];
        ctx.recv(aio)
    }

    /// Sends a request whose answer does not matter, best effort: one at a
    /// time; a note sent while the previous one is still leaving is dropped.
    pub(crate) fn note(&self, mut message: Message) {
        if let Some(auth) = &self.auth {
            let (envelope, _) = seal(&auth.key, &auth.sender, &message, None, now_ms());
            message.push_front(&envelope);
        }
        let (ctx, aio) = &self.notes;
        let _ = ctx.send(aio, message);
    }

    /// Gives up on a slot's exchange; `on_slot` hears it end.
    pub(crate) fn cancel(&self, slot: usize) {
        self.slots[slot].1.cancel();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Links are dropped on the cluster thread, never inside one of their
        // own callbacks, so waiting for those callbacks cannot deadlock.
        self.socket.close();
        for (_, aio) in self.slots.iter().chain([&self.notes]) {
            aio.cancel();
            aio.wait();
        }
    }
}
