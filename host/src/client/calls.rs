//! A client's blocking calls on one port, many to a frame (`Request::Calls`).
//!
//! Two lanes (NNG contexts on the port's socket) carry the frames. A call
//! made while no frame is in flight leaves at once in a frame of its own.
//! One made while one lane is in flight lets the caller's runtime run the
//! other callers ready at that moment (a yield, not a timer), so that the
//! calls they make leave together on the free lane; calls made while both
//! lanes are in flight wait in the queue and leave together in the next
//! frame, when either lane's answer comes back. The control
//! plane answers a frame as soon as any of this session's calls has an
//! outcome, with every outcome ready then, and keeps later ones for the
//! next frame (`server::calls`); so when nothing new is to be sent but
//! calls are still awaited, a lane goes back with an empty frame to wait
//! for them. A newer frame takes the place of an older one waiting at the
//! control plane (which then comes back with what is ready, perhaps
//! nothing), so a new call never waits behind a slow one for more than the
//! frame in flight.
//!
//! Every call has a tag unique in the session; an outcome goes to the
//! call of its tag and to no other, once (the entry is taken out as it is
//! answered). A caller that stops waiting (its timeout, or its future
//! dropped) leaves its entry to be answered into the void or pruned: a
//! call not yet sent is not sent at all. A frame that fails (the connection
//! dropped) fails every call awaited, since its answer may have carried
//! any of their outcomes: the task ids make submitting them again safe.
//!
//! Everything past the queue runs on NNG's callbacks: no task of the
//! caller's runtime is needed, so a client serves callers of any runtime.
//! A frame leaves from the thread that takes it off the queue (the
//! caller's, or the callback's of the lane's last answer) with a
//! non-blocking send when the connection is free, so that only the
//! answer, not the send, goes through an NNG callback.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nng::{Aio, AioResult, Context, Message, Socket};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::ClientAuth;
use crate::wire::auth::{open, seal, AuthError, Seal, ENVELOPE_BYTES};
use crate::wire::protocol::{
    calls_frame, decode, encode_call_part, now_ms, ErrorKind, ErrorReply, Reply, Submit, MAX_CALLS_PER_FRAME,
};

/// Bytes a call adds to a frame beyond its arguments and name (its tag,
/// id, options), counted generously so a frame stays within the limit.
const CALL_OVERHEAD: usize = 192;

/// Why a batched call has no reply of its own.
#[derive(Debug)]
pub(super) enum Failure {
    /// The frame's transport failed (the connection dropped, or NNG failed).
    Transport(nng::Error),
    /// The control plane refused the frame that carried the call.
    Refused(ErrorReply),
    /// The control plane does not know `Calls` (an older one): send the
    /// call as a plain submission.
    Unsupported,
    /// The answer is not sealed for the frame with a key of the client's.
    Unauthenticated(AuthError),
    /// The answer does not decode.
    Decode(String),
}

/// What a call's caller waits on: the encoded reply a blocking submission
/// would have had, or why there is none.
pub(super) type Answer = oneshot::Receiver<Result<Vec<u8>, Failure>>;

type Waiter = oneshot::Sender<Result<Vec<u8>, Failure>>;

/// The lanes of one port and the calls they carry.
pub(super) struct Lanes {
    shared: Arc<Shared>,
    lanes: [Arc<Lane>; 2],
}

struct Shared {
    flow: Mutex<Flow>,
    /// The next call's tag.
    next_tag: AtomicU64,
    session: Uuid,
    auth: Option<Arc<ClientAuth>>,
    max_frame: usize,
    /// How long a frame may wait for its answer.
    frame_timeout: Duration,
}

/// The calls of the session and which lanes are in flight.
#[derive(Default)]
struct Flow {
    /// Calls not yet sent: tag, encoded call, size counted, caller.
    queued: VecDeque<Queued>,
    /// Calls sent, outcome not yet in.
    awaited: FxHashMap<u64, Waiter>,
    busy: [bool; 2],
    /// The control plane answered `Calls` as a frame it cannot decode.
    unsupported: bool,
    /// A frame of the session was answered `Outcomes`: a later refusal as
    /// malformed is not an older control plane's.
    supported: bool,
}

struct Queued {
    tag: u64,
    part: Vec<u8>,
    waiter: Waiter,
}

/// One context and the frame it carries.
struct Lane {
    index: usize,
    ctx: Context,
    aio: Aio,
    /// The frame in flight: its calls' tags and its seal.
    sent: Mutex<Option<Sent>>,
}

struct Sent {
    tags: Vec<u64>,
    seal: Option<Seal>,
}

impl Lanes {
    /// Two lanes on `socket`, frames sealed with `auth`, at most
    /// `max_frame` bytes, each answered within `frame_timeout`.
    pub(super) fn open(
        socket: &Socket,
        auth: Option<Arc<ClientAuth>>,
        max_frame: usize,
        frame_timeout: Duration,
    ) -> Result<Lanes, nng::Error> {
        let shared = Arc::new(Shared {
            flow: Mutex::default(),
            next_tag: AtomicU64::new(0),
            session: Uuid::new_v4(),
            auth,
            max_frame,
            frame_timeout,
        });
        let lane = |index: usize| -> Result<Arc<Lane>, nng::Error> {
            let ctx = Context::new(socket)?;
            let mut failure = None;
            let lane = Arc::new_cyclic(|me: &Weak<Lane>| {
                let (me, shared) = (me.clone(), Arc::downgrade(&shared));
                let aio = Aio::new(move |_aio, result| {
                    if let (Some(lane), Some(shared)) = (me.upgrade(), shared.upgrade()) {
                        on_event(&shared, &lane, result);
                    }
                });
                let aio = aio.unwrap_or_else(|error| {
                    failure = Some(error);
                    Aio::new(|_, _| {}).expect("allocating a placeholder aio")
                });
                Lane { index, ctx, aio, sent: Mutex::new(None) }
            });
            match failure {
                Some(error) => Err(error),
                None => Ok(lane),
            }
        };
        Ok(Lanes { lanes: [lane(0)?, lane(1)?], shared })
    }

    /// Queues a blocking call. With no frame in flight it leaves at once;
    /// with one in flight it waits for [`Lanes::flush`], which the caller
    /// runs after letting the other callers of the moment queue theirs;
    /// with two, it leaves with the next frame. Fails at once when the
    /// control plane does not take `Calls` (then the caller sends it
    /// plainly). Also returns whether the caller is to flush.
    pub(super) fn call(&self, submit: &Submit) -> Result<(Answer, bool), Failure> {
        let (waiter, answer) = oneshot::channel();
        // Encoded before the lock, so that callers encode side by side.
        let tag = self.shared.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut part = Vec::with_capacity(submit.args.len() + submit.task_name.len() + 64);
        encode_call_part(tag, submit, &mut part);
        let mut flow = self.shared.flow.lock().expect("flow lock");
        if flow.unsupported {
            return Err(Failure::Unsupported);
        }
        flow.queued.push_back(Queued { tag, part, waiter });
        match flow.busy {
            [false, false] => {
                let frame = self.shared.take_frame(&mut flow, 0);
                drop(flow);
                self.shared.send(&self.lanes[0], frame);
                Ok((answer, false))
            }
            [true, true] => Ok((answer, false)),
            _ => Ok((answer, true)),
        }
    }

    /// Sends the queued calls on a free lane, if any is and they are not
    /// gone already (with the frame of another caller's flush, or of a
    /// lane's answer).
    pub(super) fn flush(&self) {
        let mut flow = self.shared.flow.lock().expect("flow lock");
        if flow.queued.is_empty() {
            return;
        }
        if let Some(free) = flow.busy.iter().position(|busy| !busy) {
            let frame = self.shared.take_frame(&mut flow, free);
            drop(flow);
            self.shared.send(&self.lanes[free], frame);
        }
    }

    /// Stops both lanes for good (before their socket closes).
    pub(super) fn stop(&self) {
        for lane in &self.lanes {
            super::endpoint::stop(&lane.aio);
        }
    }
}

/// A frame taken from the queue, to be sent on a lane.
struct Frame {
    count: usize,
    parts: Vec<u8>,
    tags: Vec<u64>,
}

impl Shared {
    /// Takes the calls that fit one frame out of the queue, moves them to
    /// the awaited ones and marks lane `index` busy.
    fn take_frame(&self, flow: &mut Flow, index: usize) -> Frame {
        let room = self.max_frame.saturating_sub(ENVELOPE_BYTES + 64);
        let mut frame = Frame { count: 0, parts: Vec::new(), tags: Vec::new() };
        while let Some(next) = flow.queued.front() {
            let full = frame.count >= MAX_CALLS_PER_FRAME || frame.parts.len() + next.part.len() + CALL_OVERHEAD > room;
            if frame.count > 0 && full {
                break;
            }
            let Queued { tag, part, waiter } = flow.queued.pop_front().expect("a front");
            if waiter.is_closed() {
                // Its caller stopped waiting before it left: not sent at all.
                continue;
            }
            frame.parts.extend_from_slice(&part);
            frame.tags.push(tag);
            frame.count += 1;
            flow.awaited.insert(tag, waiter);
        }
        flow.busy[index] = true;
        frame
    }

    /// Seals and sends `frame` on `lane`.
    fn send(&self, lane: &Lane, frame: Frame) {
        let mut message = calls_frame(self.session, frame.count, &frame.parts);
        let seal = self.auth.as_ref().map(|auth| {
            let (envelope, seal) = seal(&auth.key, &auth.sender, &message, None, now_ms());
            message.push_front(&envelope);
            seal
        });
        if message.len() > self.max_frame {
            // One call alone is too large (the caller checked the common case).
            let error = ErrorReply::new(
                ErrorKind::FrameTooLarge,
                format!("a call of {} bytes exceeds the frame limit of {} bytes", message.len(), self.max_frame),
            );
            return self.refuse_frame(lane, &frame.tags, error);
        }
        *lane.sent.lock().expect("lane lock") = Some(Sent { tags: frame.tags, seal });
        let started = match send_now(&lane.ctx, message) {
            // On its way: the lane waits for the answer from here.
            Ok(()) => lane.aio.set_timeout(Some(self.frame_timeout)).and_then(|()| lane.ctx.recv(&lane.aio)),
            // No connection free this moment: the lane's Aio queues the
            // frame, and its completion starts the wait for the answer.
            Err(message) => lane
                .aio
                .set_timeout(Some(self.frame_timeout))
                .and_then(|()| lane.ctx.send(&lane.aio, message).map_err(|(_, error)| error)),
        };
        if let Err(error) = started {
            self.frame_failed(lane, error);
        }
    }

    /// The frame on `lane` was answered.
    fn answered(&self, lane: &Lane, mut message: Message) {
        let Some(sent) = lane.sent.lock().expect("lane lock").take() else { return };
        if let (Some(auth), Some(seal)) = (&self.auth, sent.seal) {
            match open(&auth.ring, &message, Some(seal), now_ms()) {
                Ok(_) => message.trim(ENVELOPE_BYTES),
                // An unsealed refusal: the frame was not even opened.
                Err(AuthError::Missing) if super::exchange::is_refusal(&message) => {}
                Err(error) => return self.fail_all(lane, || Failure::Unauthenticated(error.clone())),
            }
        }
        match decode::<Reply>(&message, usize::MAX) {
            Ok(Reply::Outcomes(outcomes)) => {
                let mut flow = self.flow.lock().expect("flow lock");
                flow.supported = true;
                for outcome in outcomes {
                    if let Some(waiter) = flow.awaited.remove(&outcome.tag) {
                        let _ = waiter.send(Ok(outcome.reply));
                    }
                }
                self.next(flow, lane);
            }
            Ok(Reply::Error(error)) if error.kind == ErrorKind::MalformedFrame => {
                let mut flow = self.flow.lock().expect("flow lock");
                if flow.supported {
                    drop(flow);
                    return self.refuse_frame(lane, &sent.tags, error);
                }
                // An older control plane: every call goes plainly from now on.
                flow.unsupported = true;
                for tag in &sent.tags {
                    if let Some(waiter) = flow.awaited.remove(tag) {
                        let _ = waiter.send(Err(Failure::Unsupported));
                    }
                }
                self.next(flow, lane);
            }
            // None of the frame's calls was taken.
            Ok(Reply::Error(error)) => self.refuse_frame(lane, &sent.tags, error),
            Ok(other) => self.fail_all(lane, || Failure::Decode(format!("unexpected answer {other:?}"))),
            Err(error) => self.fail_all(lane, || Failure::Decode(error.to_string())),
        }
    }

    /// The frame on `lane` was refused whole: its calls get the refusal.
    fn refuse_frame(&self, lane: &Lane, tags: &[u64], error: ErrorReply) {
        let mut flow = self.flow.lock().expect("flow lock");
        for tag in tags {
            if let Some(waiter) = flow.awaited.remove(tag) {
                let _ = waiter.send(Err(Failure::Refused(error.clone())));
            }
        }
        self.next(flow, lane);
    }

    /// The frame on `lane` failed in transport.
    fn frame_failed(&self, lane: &Lane, error: nng::Error) {
        lane.sent.lock().expect("lane lock").take();
        if error == nng::Error::TimedOut {
            // Nothing came back in time; the callers' own timeouts end
            // their calls, and the lane waits again for the others.
            let flow = self.flow.lock().expect("flow lock");
            return self.next(flow, lane);
        }
        self.fail_all(lane, || Failure::Transport(error));
    }

    /// Fails every awaited call: a lost answer may have carried any of
    /// their outcomes.
    fn fail_all(&self, lane: &Lane, failure: impl Fn() -> Failure) {
        let mut flow = self.flow.lock().expect("flow lock");
        for (_, waiter) in flow.awaited.drain() {
            let _ = waiter.send(Err(failure()));
        }
        self.next(flow, lane);
    }

    /// Lane `lane` is free: it carries the queued calls, or goes back to
    /// wait for the awaited ones if the other lane is not already there.
    fn next(&self, mut flow: std::sync::MutexGuard<'_, Flow>, lane: &Lane) {
        flow.busy[lane.index] = false;
        if flow.unsupported {
            for queued in flow.queued.drain(..) {
                let _ = queued.waiter.send(Err(Failure::Unsupported));
            }
        }
        // Callers that stopped waiting are not waited for.
        flow.awaited.retain(|_, waiter| !waiter.is_closed());
        let other = flow.busy[1 - lane.index];
        let send = !flow.queued.is_empty() || (!flow.awaited.is_empty() && !other);
        if send {
            let frame = self.take_frame(&mut flow, lane.index);
            drop(flow);
            self.send(lane, frame);
        }
    }
}

/// Sends `message` on `ctx` at once if a connection is free to take it,
/// or gives it back. A send through an Aio with a callback ends in that
/// callback, which NNG runs on one of its task threads, waking one for
/// every frame; sent here, the frame is written and its send complete
/// before this returns, on the caller's thread, with no wake-up. It fails
/// (and NNG gives the message back, the context reset) when no connection
/// is ready: not yet up, or writing another lane's frame.
fn send_now(ctx: &Context, message: Message) -> Result<(), Message> {
    // SAFETY: the context handle is live for as long as `ctx`; the message
    // pointer is the message's own. On success NNG owns the message (it is
    // forgotten here, not freed); on failure it is the caller's again
    // (`nng_ctx_sendmsg`'s contract), so it is returned as it was.
    let flags = nng_sys::NNG_FLAG_NONBLOCK as std::os::raw::c_int;
    let rv = unsafe { nng_sys::nng_ctx_sendmsg(ctx.nng_ctx(), message.nng_msg(), flags) };
    if rv == 0 {
        std::mem::forget(message);
        Ok(())
    } else {
        Err(message)
    }
}

fn on_event(shared: &Shared, lane: &Lane, result: AioResult) {
    match result {
        AioResult::Send(Ok(())) => {
            let started = lane.aio.set_timeout(Some(shared.frame_timeout)).and_then(|()| lane.ctx.recv(&lane.aio));
            if let Err(error) = started {
                shared.frame_failed(lane, error);
            }
        }
        AioResult::Send(Err((_, error))) => shared.frame_failed(lane, error),
        AioResult::Recv(Ok(message)) => shared.answered(lane, message),
        AioResult::Recv(Err(error)) => shared.frame_failed(lane, error),
        AioResult::Sleep(_) => {}
    }
}
