//! A listening NNG reply socket served by a fixed set of contexts, so that
//! overlapping requests on one port each get their own reply.
//!
//! Each context loops receive → handle → reply → receive. A handler may
//! reply at once or keep the [`Replier`] and reply later from another
//! thread (a blocking submission replies when its task finishes); meanwhile
//! the other contexts keep serving. Requests beyond the number of contexts
//! wait inside NNG until one is free: nothing is dropped.

use std::sync::Arc;

use nng::options::{Options, RecvMaxSize};
use nng::{Aio, AioResult, Context, Message, Protocol, Socket};
use tracing::{debug, warn};

use crate::protocol::{encode_message, Reply};

/// The handle to answer one request with. Dropping it unanswered would
/// leave its context idle, so every path must call [`Replier::send`].
pub(crate) struct Replier {
    ctx: Context,
    aio: Aio,
}

impl Replier {
    /// Sends the reply and lets the context take the next request.
    pub(crate) fn send(self, reply: &Reply) {
        self.send_message(encode_reply(reply));
    }

    /// Sends an already encoded reply.
    pub(crate) fn send_message(self, message: Message) {
        if let Err((_, error)) = self.ctx.send(&self.aio, message) {
            warn!(%error, "could not queue a reply");
        }
    }
}

/// Encodes a reply into an NNG message.
pub(crate) fn encode_reply(reply: &Reply) -> Message {
    encode_message(reply)
}

/// A listening socket and its contexts.
pub(crate) struct Listener {
    socket: Socket,
    slots: Vec<(Context, Aio)>,
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
    /// Listens on `url` with `contexts` concurrent requests in service.
    /// Frames above `max_frame` (plus slack to let the handler reply with a
    /// clear error) close the sender's connection instead.
    pub(crate) fn start(
        url: &str,
        purpose: &'static str,
        contexts: usize,
        max_frame: usize,
        handler: Handler,
    ) -> Result<Listener, ListenError> {
        let fail = |source: nng::Error| match source {
            nng::Error::AddressInUse => ListenError::AddressInUse { url: url.to_string(), purpose },
            source => ListenError::Other { url: url.to_string(), purpose, source },
        };
        let socket = Socket::new(Protocol::Rep0).map_err(fail)?;
        socket.set_opt::<RecvMaxSize>(max_frame.saturating_mul(2).max(64 * 1024)).map_err(fail)?;
        socket.listen(url).map_err(fail)?;
        let mut slots = Vec::with_capacity(contexts);
        for _ in 0..contexts {
            let ctx = Context::new(&socket).map_err(fail)?;
            let callback_ctx = ctx.clone();
            let handler = handler.clone();
            let aio = Aio::new(move |aio, result| on_event(&callback_ctx, aio, result, &handler)).map_err(fail)?;
            ctx.recv(&aio).map_err(fail)?;
            slots.push((ctx, aio));
        }
        Ok(Listener { socket, slots })
    }
}

fn on_event(ctx: &Context, aio: Aio, result: AioResult, handler: &Handler) {
    match result {
        AioResult::Recv(Ok(message)) => handler(Replier { ctx: ctx.clone(), aio }, message),
        AioResult::Recv(Err(nng::Error::Closed)) => {}
        AioResult::Recv(Err(error)) => {
            debug!(%error, "receive failed; waiting for the next request");
            let _ = ctx.recv(&aio);
        }
        AioResult::Send(Ok(())) => {
            let _ = ctx.recv(&aio);
        }
        AioResult::Send(Err((_, nng::Error::Closed))) => {}
        AioResult::Send(Err((_, error))) => {
            debug!(%error, "reply not delivered (the client went away)");
            let _ = ctx.recv(&aio);
        }
        AioResult::Sleep(_) => {}
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.socket.close();
        // An Aio must never be freed from inside its own callback, which a
        // late reply racing this drop could cause; the process is ending, so
        // the contexts are left to the OS.
        std::mem::forget(std::mem::take(&mut self.slots));
    }
}
