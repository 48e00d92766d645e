//! The subworker links' NNG events, as ledger events: a dispatch frame's
//! answer, collected outcomes, and failed exchanges (the worker's
//! connection is lost). The link's exchanges themselves are kept going
//! here: the next `Collect` leaves as soon as an answer is in.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nng::AioResult;
use tracing::{debug, warn};

use super::{Outbox, State};
use crate::cluster::link::Channel;
use crate::cluster::routing::WorkerKey;
use crate::ledger::FrameAnswer;
use crate::wire::protocol::{decode, encode_message, now_ms, Reply, Reported};

impl State {
    /// One of a subworker link's exchanges moved on: the request left, the
    /// reply came, a pause ended, or it failed. Called from its NNG callback.
    pub(crate) fn on_link_event(&self, key: WorkerKey, channel: Channel, result: AioResult) {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let Some(worker) = tasks.ledger.cluster().get(key) else { return };
        let worker_id = worker.name.worker_id.clone();
        let now = now_ms();
        match result {
            AioResult::Send(Ok(())) => match worker.link.receive(channel) {
                Ok(()) => return,
                Err(error) => {
                    let why = format!("waiting for subworker '{worker_id}' failed: {error}");
                    self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.link_broken(key, &why, now, io));
                }
            },
            AioResult::Sleep(_) => {
                if worker.connected {
                    if let Err(error) = worker.link.collect() {
                        debug!(worker = %worker_id, %error, "could not collect outcomes");
                    }
                }
                return;
            }
            AioResult::Recv(Ok(mut message)) => {
                let opened = worker.link.open_reply(channel, &mut message).map_err(|error| {
                    self.refusals.unauthenticated.fetch_add(1, Ordering::Relaxed);
                    format!("subworker '{worker_id}' sent a reply that is not authenticated: {error}")
                });
                let frame = opened.map(|()| &message[..]);
                match channel {
                    Channel::Dispatch => {
                        let sent = tasks.ledger.link_mut(key).map(|link| link.dispatched()).unwrap_or_default();
                        let answer = dispatch_answer(&worker_id, frame);
                        self.drive(&mut tasks, &mut outbox, |ledger, io| {
                            ledger.dispatch_answered(key, sent, answer, now, io)
                        });
                    }
                    Channel::Collect => {
                        let (outcomes, pause) = collected(&worker_id, frame);
                        self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.collected(key, outcomes, now, io));
                        if let Some(worker) = tasks.ledger.cluster().get(key) {
                            let asked = match pause {
                                None => worker.link.collect(),
                                Some(pause) => worker.link.collect_after(pause),
                            };
                            if let Err(error) = asked {
                                debug!(worker = %worker_id, %error, "could not collect outcomes");
                            }
                        }
                    }
                }
            }
            AioResult::Send(Err((_, error))) | AioResult::Recv(Err(error)) => {
                // Cancelled by a reset (the worker was taken back), or the
                // connection broke, whether or not its drop was reported.
                let connected = worker.connected;
                if connected && error != nng::Error::Canceled {
                    let why = format!("the exchange with subworker '{worker_id}' failed: {error}");
                    self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.link_broken(key, &why, now, io));
                } else if connected && channel == Channel::Collect {
                    let _ = worker.link.collect_after(Duration::from_millis(20));
                } else if connected {
                    // Runs placed after the worker came back waited for
                    // this exchange to end.
                    self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.flush_worker(key, now, io));
                }
            }
        }
        drop(tasks);
        outbox.deliver();
    }
}

/// What a dispatch frame's answer says: taken (`Done`), refused as a
/// whole, or not to be trusted.
fn dispatch_answer(worker_id: &str, frame: Result<&[u8], String>) -> FrameAnswer {
    let decoded = frame.and_then(|frame| match decode::<Reply>(frame, usize::MAX) {
        Ok(Reply::Done) => Ok(None),
        Ok(Reply::Error(refusal)) => Ok(Some(encode_message(&Reply::Error(refusal)).as_slice().to_vec())),
        Ok(reply) => Err(format!("subworker '{worker_id}' answered runs with an unexpected message: {reply:?}")),
        Err(error) => Err(format!("subworker '{worker_id}' sent a reply that does not decode: {error}")),
    });
    match decoded {
        Ok(None) => FrameAnswer::Taken,
        Ok(Some(refusal)) => FrameAnswer::Refused(refusal),
        Err(why) => FrameAnswer::Broken(why),
    }
}

/// The outcomes a `Collect` brought back, and how long to pause before the
/// next one (`None`: at once; after an empty or broken answer, a while, so
/// that a worker that answers at once cannot make the link spin).
fn collected(worker_id: &str, frame: Result<&[u8], String>) -> (Vec<Reported>, Option<Duration>) {
    let decoded = frame.and_then(|frame| {
        decode::<Reply>(frame, usize::MAX)
            .map_err(|error| format!("subworker '{worker_id}' sent outcomes that do not decode: {error}"))
    });
    match decoded {
        Ok(Reply::Reports(outcomes)) => {
            let pause = outcomes.is_empty().then_some(Duration::from_millis(20));
            (outcomes, pause)
        }
        Ok(other) => {
            warn!(worker = %worker_id, "a subworker answered Collect with an unexpected message: {other:?}");
            (Vec::new(), Some(Duration::from_secs(1)))
        }
        Err(why) => {
            warn!(worker = %worker_id, "{why}");
            (Vec::new(), Some(Duration::from_secs(1)))
        }
    }
}
