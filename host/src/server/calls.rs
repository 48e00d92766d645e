//! A control plane's side of batched calls (`Request::Calls`): each client
//! session's outcomes, kept until a frame of that session carries them back.
//!
//! A client sends its blocking calls many to a frame, under a session id of
//! its own. Each call is submitted as a blocking submission whose answer,
//! instead of going to a port, becomes an outcome of the session. The
//! session keeps at most one frame waiting (parked): the first outcome
//! answers it, with every outcome ready then; outcomes that come while no
//! frame waits are kept for the next one. A newer frame takes an older
//! waiting one's place, which is answered with what is ready (perhaps
//! nothing), so a client always has a frame free to send new calls on. So
//! at rest one call is one round trip, and under load one frame carries
//! many calls out and many outcomes back, as the subworker link's
//! `Dispatch`/`Collect` does ([`crate::server::collector`]).
//!
//! Bounds: a session owes at most `--max-requests-per-connection` calls
//! (submitted, outcome not yet sent back), all sessions together at most
//! `--max-queued-tasks`; a call beyond either is refused `Busy` on its own.
//! A session is keyed by its key (or, without keys, its connection) and
//! its id, so nobody else's frame reaches its outcomes; it is forgotten
//! once it owes nothing, and one whose client stopped coming for its
//! outcomes is dropped by the periodic sweep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nng::Message;
use rustc_hash::FxHashMap;
use uuid::Uuid;

use crate::server::endpoint::Replier;
use crate::wire::auth::Tenant;
use crate::wire::protocol::{encode_message, outcomes_message, ErrorKind, ErrorReply, OutcomeRef, Reply, Submit};

/// Bytes of an `Outcomes` reply beyond its outcomes' own (version,
/// variant, count, and per outcome its tag and length).
const OUTCOME_OVERHEAD: usize = 10 + 10;

/// Whose session it is and which: nobody else's frame finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    tenant: Option<Tenant>,
    session: Uuid,
}

impl SessionKey {
    /// The session `session` of the sender of a frame answered by `replier`.
    pub(crate) fn of(replier: &Replier, session: Uuid) -> SessionKey {
        SessionKey { tenant: replier.tenant(), session }
    }
}

/// Every session of a control plane.
pub(crate) struct CallSessions {
    sessions: Mutex<FxHashMap<SessionKey, Arc<Session>>>,
    /// Calls owed by every session together.
    owed: Arc<AtomicUsize>,
    /// The most calls one session may owe.
    per_session: usize,
    /// The most calls all sessions together may owe.
    total: usize,
    /// The most bytes of outcomes one reply carries.
    max_bytes: usize,
}

/// One client session.
struct Session {
    key: SessionKey,
    inner: Mutex<Mailbox>,
}

#[derive(Default)]
struct Mailbox {
    /// Calls submitted whose outcome has not been sent back yet (those
    /// ready included).
    owed: usize,
    ready: VecDeque<Ready>,
    parked: Option<Replier>,
    /// Whether a frame came since the last sweep.
    seen: bool,
    /// Dropped from the sessions: outcomes that still come are discarded.
    gone: bool,
}

/// One call's outcome, ready: its tag and its encoded reply, kept as
/// made (it is copied once, into the `Outcomes` frame that carries it).
struct Ready {
    tag: u64,
    reply: Message,
}

/// A submitted call's claim on its session: its answer becomes an outcome
/// there, and if the control plane drops the call unanswered, an error does.
struct Owed {
    session: Arc<Session>,
    sessions_owed: Arc<AtomicUsize>,
    max_bytes: usize,
    tag: u64,
    answered: bool,
}

impl CallSessions {
    /// The sessions of a port whose frames are at most `max_frame` bytes.
    pub(crate) fn new(per_session: usize, total: usize, max_frame: usize) -> CallSessions {
        CallSessions {
            sessions: Mutex::default(),
            owed: Arc::default(),
            per_session: per_session.max(1),
            total: total.max(1),
            max_bytes: max_frame.saturating_sub(1024).max(1),
        }
    }

    /// The outcome owed to call `tag` of `session`, counted until delivered.
    fn owed_to(&self, session: &Arc<Session>, tag: u64) -> Owed {
        Owed {
            session: session.clone(),
            sessions_owed: self.owed.clone(),
            max_bytes: self.max_bytes,
            tag,
            answered: false,
        }
    }

    /// Takes one `Calls` frame: submits its calls, all at once through
    /// `submit`, each with a replier that makes its answer an outcome of
    /// the session, then answers the frame with the outcomes ready or
    /// keeps it waiting.
    pub(crate) fn take(
        &self,
        key: SessionKey,
        calls: Vec<crate::wire::protocol::Call>,
        replier: Replier,
        submit: impl FnOnce(Vec<(Submit, Replier)>),
    ) {
        let session = if calls.is_empty() { self.find(key) } else { Some(self.find_or_open(key)) };
        let Some(mut session) = session else {
            // Owed nothing: nothing to wait for.
            return replier.send(&Reply::Outcomes(Vec::new()));
        };
        let mut submits = Vec::with_capacity(calls.len());
        for call in calls {
            let reserved = loop {
                match self.reserve(&session) {
                    // Forgotten meanwhile (it owed nothing): open it again.
                    Err(None) => session = self.find_or_open(key),
                    Err(Some(refusal)) => break Err(refusal),
                    Ok(()) => break Ok(()),
                }
            };
            match reserved {
                Ok(()) => {
                    let owed = self.owed_to(&session, call.tag);
                    let answer = Replier::forwarding(move |message| owed.deliver(message));
                    submits.push((Submit { wait: true, ..call.submit }, answer));
                }
                Err(refusal) => {
                    // Counted like any outcome, so that it leaves the same way.
                    self.owed.fetch_add(1, Ordering::Relaxed);
                    session.inner.lock().expect("session lock").owed += 1;
                    self.owed_to(&session, call.tag).deliver(encode_message(&Reply::Error(refusal)));
                }
            }
        }
        if !submits.is_empty() {
            submit(submits);
        }
        let (now, replaced) = {
            let mut mailbox = session.inner.lock().expect("session lock");
            mailbox.seen = true;
            if mailbox.gone || !mailbox.ready.is_empty() || mailbox.owed == 0 {
                (Some((replier, take_batch(&mut mailbox, &self.owed, self.max_bytes))), None)
            } else {
                (None, mailbox.parked.replace(replier))
            }
        };
        if let Some(older) = replaced {
            older.send(&Reply::Outcomes(Vec::new()));
        }
        if let Some((replier, batch)) = now {
            send_batch(replier, batch);
        }
        self.forget_if_done(&session);
    }

    /// Outcomes kept for sessions, sent or not: for `/metrics` and tests.
    pub(crate) fn owed(&self) -> usize {
        self.owed.load(Ordering::Relaxed)
    }

    /// Drops the sessions no frame came for since the last sweep and
    /// none waits in: their clients stopped coming for their outcomes.
    /// Returns how many outcomes were dropped (calls still running in a
    /// dropped session are discarded when they end).
    pub(crate) fn sweep(&self) -> usize {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let mut dropped = 0;
        sessions.retain(|_, session| {
            let mut mailbox = session.inner.lock().expect("session lock");
            if std::mem::take(&mut mailbox.seen) || mailbox.parked.is_some() {
                return true;
            }
            mailbox.gone = true;
            let ready = mailbox.ready.len();
            mailbox.ready.clear();
            mailbox.owed -= ready;
            self.owed.fetch_sub(ready, Ordering::Relaxed);
            dropped += ready;
            false
        });
        dropped
    }

    fn find(&self, key: SessionKey) -> Option<Arc<Session>> {
        self.sessions.lock().expect("sessions lock").get(&key).cloned()
    }

    fn find_or_open(&self, key: SessionKey) -> Arc<Session> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.entry(key).or_insert_with(|| Arc::new(Session { key, inner: Mutex::default() })).clone()
    }

    /// Counts one more call owed by `session`, or says why it may not
    /// (`None`: the session was forgotten, find it again).
    fn reserve(&self, session: &Session) -> Result<(), Option<ErrorReply>> {
        let mut mailbox = session.inner.lock().expect("session lock");
        if mailbox.gone {
            return Err(None);
        }
        mailbox.seen = true;
        if mailbox.owed >= self.per_session {
            let message = format!(
                "this client already has {} calls whose outcomes it has not collected (--max-requests-per-connection {}): wait for their outcomes before making more",
                mailbox.owed, self.per_session
            );
            return Err(Some(ErrorReply::new(ErrorKind::Busy, message)));
        }
        let total = self.owed.fetch_add(1, Ordering::Relaxed);
        if total >= self.total {
            self.owed.fetch_sub(1, Ordering::Relaxed);
            let message = format!(
                "the clients' batched calls already hold {total} outcomes, as many as --max-queued-tasks ({}) allows: back off and retry",
                self.total
            );
            return Err(Some(ErrorReply::new(ErrorKind::Busy, message)));
        }
        mailbox.owed += 1;
        Ok(())
    }

    /// Forgets a session that owes nothing and has no frame waiting, so
    /// that the sessions are never more than the calls owed.
    fn forget_if_done(&self, session: &Arc<Session>) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let mut mailbox = session.inner.lock().expect("session lock");
        if mailbox.owed == 0 && mailbox.parked.is_none() && !mailbox.gone {
            mailbox.gone = true;
            if sessions.get(&session.key).is_some_and(|kept| Arc::ptr_eq(kept, session)) {
                sessions.remove(&session.key);
            }
        }
    }
}

impl Owed {
    /// The call's answer is in: keep it, or answer the waiting frame with it.
    fn deliver(mut self, reply: Message) {
        self.answered = true;
        push(&self.session, &self.sessions_owed, self.max_bytes, Ready { tag: self.tag, reply });
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        if !self.answered {
            let refusal = ErrorReply::new(
                ErrorKind::ShuttingDown,
                "the control plane dropped this call without an outcome (it is stopping): ask for the task's status, or submit it again with the same task id",
            );
            let outcome = Ready { tag: self.tag, reply: encode_message(&Reply::Error(refusal)) };
            push(&self.session, &self.sessions_owed, self.max_bytes, outcome);
        }
    }
}

/// Keeps an outcome of `session`, or answers its waiting frame with it.
fn push(session: &Session, sessions_owed: &AtomicUsize, max_bytes: usize, outcome: Ready) {
    let answer = {
        let mut mailbox = session.inner.lock().expect("session lock");
        if mailbox.gone {
            // Swept: nobody comes for it.
            mailbox.owed = mailbox.owed.saturating_sub(1);
            sessions_owed.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        mailbox.ready.push_back(outcome);
        mailbox.parked.take().map(|replier| (replier, take_batch(&mut mailbox, sessions_owed, max_bytes)))
    };
    // The session stays known until its next frame forgets it (a
    // frame always follows while the client waits for anything).
    if let Some((replier, batch)) = answer {
        send_batch(replier, batch);
    }
}

/// Answers a frame with `batch`, each reply copied once, into the frame.
fn send_batch(replier: Replier, batch: Vec<Ready>) {
    let outcomes: Vec<OutcomeRef<'_>> =
        batch.iter().map(|ready| OutcomeRef { tag: ready.tag, reply: ready.reply.as_slice() }).collect();
    replier.send_message(outcomes_message(&outcomes));
}

/// The oldest ready outcomes that fit one reply (at least one, if any),
/// counted out of what the session owes.
fn take_batch(mailbox: &mut Mailbox, sessions_owed: &AtomicUsize, max_bytes: usize) -> Vec<Ready> {
    let mut bytes = 0usize;
    let mut count = 0;
    for outcome in mailbox.ready.iter() {
        bytes = bytes.saturating_add(outcome.reply.len() + OUTCOME_OVERHEAD);
        if count > 0 && bytes > max_bytes {
            break;
        }
        count += 1;
    }
    mailbox.owed -= count;
    sessions_owed.fetch_sub(count, Ordering::Relaxed);
    mailbox.ready.drain(..count).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::wire::protocol::{decode, Call, Outcome, TaskId};

    /// A replier whose answer, `Outcomes`, arrives on the returned channel.
    fn frame() -> (Replier, mpsc::Receiver<Vec<Outcome>>) {
        let (sender, receiver) = mpsc::channel();
        let replier = Replier::forwarding(move |message| {
            let Ok(Reply::Outcomes(outcomes)) = decode::<Reply>(&message, usize::MAX) else { panic!("not Outcomes") };
            // The test may have stopped listening (its end drops the calls).
            let _ = sender.send(outcomes);
        });
        (replier, receiver)
    }

    fn call(tag: u64) -> Call {
        Call { tag, submit: Submit { task_id: TaskId::from_u128(tag.into()), ..Default::default() } }
    }

    fn key() -> SessionKey {
        SessionKey { tenant: None, session: Uuid::from_u128(1) }
    }

    /// Submits by keeping each call's replier, to be answered by the test.
    fn keep(kept: &Mutex<Vec<Replier>>) -> impl FnOnce(Vec<(Submit, Replier)>) + '_ {
        move |submits| kept.lock().unwrap().extend(submits.into_iter().map(|(_submit, replier)| replier))
    }

    #[test]
    fn a_frame_waits_for_the_first_outcome_and_later_ones_wait_for_the_next_frame() {
        let sessions = CallSessions::new(8, 100, 1 << 20);
        let kept = Mutex::new(Vec::new());
        let (replier, answer) = frame();
        sessions.take(key(), vec![call(1), call(2)], replier, keep(&kept));
        assert!(answer.try_recv().is_err(), "nothing ended yet");
        let mut calls = std::mem::take(&mut *kept.lock().unwrap());
        calls.remove(0).send_message(nng::Message::from(&b"one"[..]));
        let first = answer.try_recv().unwrap();
        assert_eq!((first.len(), first[0].tag, &first[0].reply[..]), (1, 1, &b"one"[..]));
        // The second ends while no frame waits: the next frame takes it at once.
        calls.remove(0).send_message(nng::Message::from(&b"two"[..]));
        let (replier, answer) = frame();
        sessions.take(key(), Vec::new(), replier, keep(&kept));
        assert_eq!(answer.try_recv().unwrap()[0].tag, 2);
        assert_eq!(sessions.owed(), 0);
        // Owed nothing, the session is forgotten; a bare frame is answered at once.
        let (replier, answer) = frame();
        sessions.take(key(), Vec::new(), replier, keep(&kept));
        assert!(answer.try_recv().unwrap().is_empty());
    }

    #[test]
    fn a_newer_frame_takes_the_waiting_ones_place() {
        let sessions = CallSessions::new(8, 100, 1 << 20);
        let kept = Mutex::new(Vec::new());
        let (older, older_answer) = frame();
        sessions.take(key(), vec![call(1)], older, keep(&kept));
        let (newer, newer_answer) = frame();
        sessions.take(key(), vec![call(2)], newer, keep(&kept));
        assert!(older_answer.try_recv().unwrap().is_empty());
        kept.lock().unwrap().remove(1).send_message(nng::Message::from(&b"2"[..]));
        assert_eq!(newer_answer.try_recv().unwrap()[0].tag, 2);
    }

    #[test]
    fn calls_beyond_the_sessions_credit_are_refused_busy_one_by_one() {
        let sessions = CallSessions::new(2, 100, 1 << 20);
        let kept = Mutex::new(Vec::new());
        let (replier, answer) = frame();
        sessions.take(key(), vec![call(1), call(2), call(3)], replier, keep(&kept));
        let refused = answer.try_recv().expect("the refusal is ready at once");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].tag, 3);
        let Ok(Reply::Error(error)) = decode::<Reply>(&refused[0].reply, usize::MAX) else { panic!() };
        assert_eq!(error.kind, ErrorKind::Busy);
        assert_eq!(kept.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_call_dropped_unanswered_has_an_error_outcome() {
        let sessions = CallSessions::new(8, 100, 1 << 20);
        let kept = Mutex::new(Vec::new());
        let (replier, answer) = frame();
        sessions.take(key(), vec![call(5)], replier, keep(&kept));
        kept.lock().unwrap().clear();
        let outcome = answer.try_recv().unwrap();
        let Ok(Reply::Error(error)) = decode::<Reply>(&outcome[0].reply, usize::MAX) else { panic!() };
        assert_eq!(error.kind, ErrorKind::ShuttingDown);
        assert_eq!(sessions.owed(), 0);
    }

    #[test]
    fn another_tenant_cannot_reach_a_session() {
        let sessions = CallSessions::new(8, 100, 1 << 20);
        let kept = Mutex::new(Vec::new());
        let mine = SessionKey { tenant: Some(Tenant::Key([1; 8])), session: Uuid::from_u128(9) };
        let theirs = SessionKey { tenant: Some(Tenant::Key([2; 8])), session: Uuid::from_u128(9) };
        let (first, _first_answer) = frame();
        sessions.take(mine, vec![call(1)], first, keep(&kept));
        let (thief, thief_answer) = frame();
        sessions.take(theirs, Vec::new(), thief, keep(&kept));
        assert!(thief_answer.try_recv().unwrap().is_empty(), "another key's session owes it nothing");
    }

    #[test]
    fn a_session_nobody_comes_for_is_swept() {
        let sessions = CallSessions::new(8, 100, 1 << 20);
        let kept = Mutex::new(Vec::new());
        let (replier, answer) = frame();
        sessions.take(key(), vec![call(1), call(2)], replier, keep(&kept));
        let mut calls = std::mem::take(&mut *kept.lock().unwrap());
        calls.remove(0).send_message(nng::Message::from(&b"1"[..]));
        assert_eq!(answer.try_recv().unwrap().len(), 1);
        calls.remove(0).send_message(nng::Message::from(&b"2"[..]));
        assert_eq!(sessions.owed(), 1);
        assert_eq!(sessions.sweep(), 0, "a frame came since the last sweep");
        assert_eq!(sessions.sweep(), 1);
        assert_eq!(sessions.owed(), 0);
    }
}
