//! A subworker's side of the batched link: the outcomes of the runs its
//! control plane dispatched, kept until the control plane collects them.
//!
//! The control plane keeps one `Collect` request waiting here. An outcome
//! that finds it waiting answers it at once; outcomes that come while the
//! answer travels and the next `Collect` arrives are kept and leave
//! together, so under load one frame carries many outcomes and at rest a
//! single outcome leaves as soon as it is ready.
//!
//! A worker process on a socket pair to its supervisor asks for no
//! `Collect`: its outcomes are pushed as they come ([`Collector::push_to`]),
//! those ready together in one frame.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use nng::Message;

use crate::server::endpoint::Replier;
use crate::wire::protocol::{reports_message, ReportedRef, TaskId};

/// Bytes of a `Reports` reply beyond its outcomes' own (version, variant,
/// count, and per outcome its id, lease and length).
const OUTCOME_OVERHEAD: usize = 16 + 10 + 10;

/// Outcomes waiting for the control plane, and its waiting `Collect`.
pub(crate) struct Collector {
    inner: Mutex<Collected>,
    /// The most bytes of outcomes one reply carries (the frame limit less
    /// room for the envelope); a larger outcome leaves alone.
    max_bytes: usize,
}

#[derive(Default)]
struct Collected {
    ready: VecDeque<Outcome>,
    parked: Option<Replier>,
    /// Where outcomes are pushed unasked, if anywhere.
    pusher: Option<Pusher>,
    /// A thread is pushing: outcomes that come meanwhile leave with its
    /// next frame.
    pushing: bool,
}

/// Sends a `Reports` frame without waiting (see [`Collector::push_to`]).
type Pusher = Arc<dyn Fn(Message) + Send + Sync>;

/// One run's outcome: its encoded reply, kept as it was made (it is copied
/// once, into the `Reports` frame that carries it).
struct Outcome {
    task_id: TaskId,
    lease: u64,
    reply: Message,
}

/// The `Reports` reply carrying `batch`.
fn reports(batch: &[Outcome]) -> Message {
    let outcomes: Vec<ReportedRef<'_>> = batch
        .iter()
        .map(|outcome| ReportedRef { task_id: outcome.task_id, lease: outcome.lease, reply: &outcome.reply[..] })
        .collect();
    reports_message(&outcomes)
}

impl Collector {
    /// A collector whose replies stay within `max_frame` bytes.
    pub(crate) fn new(max_frame: usize) -> Collector {
        Collector { inner: Mutex::default(), max_bytes: max_frame.saturating_sub(1024).max(1) }
    }

    /// A replier for a dispatched run: its answer becomes an outcome here.
    pub(crate) fn replier_for(self: &Arc<Self>, task_id: TaskId, lease: u64) -> Replier {
        let collector = Arc::clone(self);
        Replier::forwarding(move |reply| collector.push(Outcome { task_id, lease, reply }))
    }

    /// From now on, outcomes go to `pusher` as they come (and those
    /// waiting at once), in `Reports` frames, never waiting for a
    /// `Collect`. `pusher` must not block: it is called from the threads
    /// that end runs.
    pub(crate) fn push_to(&self, pusher: impl Fn(Message) + Send + Sync + 'static) {
        let collected = {
            let mut collected = self.inner.lock().expect("collector lock");
            collected.pusher = Some(Arc::new(pusher));
            collected
        };
        self.push_ready(collected);
    }

    /// Keeps an outcome, or answers the waiting `Collect` with it, or
    /// pushes it.
    fn push(&self, reported: Outcome) {
        let mut collected = self.inner.lock().expect("collector lock");
        collected.ready.push_back(reported);
        if collected.pusher.is_some() {
            return self.push_ready(collected);
        }
        let answer = collected.parked.take().map(|replier| (replier, self.batch(&mut collected.ready)));
        drop(collected);
        if let Some((replier, batch)) = answer {
            replier.send_message(reports(&batch));
        }
    }

    /// Pushes the outcomes ready, a frame at a time, until none is left,
    /// unless another thread is at it (it takes them with its next frame).
    fn push_ready<'a>(&'a self, mut collected: std::sync::MutexGuard<'a, Collected>) {
        let Some(pusher) = collected.pusher.clone() else { return };
        if collected.pushing {
            return;
        }
        collected.pushing = true;
        while !collected.ready.is_empty() {
            let batch = self.batch(&mut collected.ready);
            drop(collected);
            pusher(reports(&batch));
            collected = self.inner.lock().expect("collector lock");
        }
        collected.pushing = false;
    }

    /// Answers a `Collect` with the outcomes ready, or keeps it waiting
    /// for the next one (a newer `Collect` replaces an older one, which is
    /// answered empty: the control plane only ever waits on its latest).
    pub(crate) fn collect(&self, replier: Replier) {
        let (answer, replaced) = {
            let mut collected = self.inner.lock().expect("collector lock");
            if collected.ready.is_empty() {
                (None, collected.parked.replace(replier))
            } else {
                (Some((replier, self.batch(&mut collected.ready))), None)
            }
        };
        if let Some(old) = replaced {
            old.send_message(reports(&[]));
        }
        if let Some((replier, batch)) = answer {
            replier.send_message(reports(&batch));
        }
    }

    /// Outcomes not yet collected.
    pub(crate) fn pending(&self) -> usize {
        self.inner.lock().expect("collector lock").ready.len()
    }

    /// The oldest outcomes that fit one reply (at least one).
    fn batch(&self, ready: &mut VecDeque<Outcome>) -> Vec<Outcome> {
        let mut bytes = 0usize;
        let mut count = 0;
        for reported in ready.iter() {
            bytes = bytes.saturating_add(reported.reply.len() + OUTCOME_OVERHEAD);
            if count > 0 && bytes > self.max_bytes {
                break;
            }
            count += 1;
        }
        ready.drain(..count).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::wire::protocol::{decode, Reply, Reported};

    /// A replier whose answer, a `Reports`, arrives on the returned channel.
    fn collector_request() -> (Replier, mpsc::Receiver<Vec<Reported>>) {
        let (sender, receiver) = mpsc::channel();
        let replier = Replier::forwarding(move |message| {
            let Ok(Reply::Reports(outcomes)) = decode::<Reply>(&message, usize::MAX) else { panic!("not Reports") };
            sender.send(outcomes).unwrap();
        });
        (replier, receiver)
    }

    fn outcome(collector: &Arc<Collector>, lease: u64, bytes: usize) {
        let replier = collector.replier_for(TaskId::from_u128(lease.into()), lease);
        replier.send_message(nng::Message::from(&vec![7u8; bytes][..]));
    }

    #[test]
    fn pushed_outcomes_leave_unasked_those_waiting_first_and_together() {
        let collector = Arc::new(Collector::new(1 << 20));
        outcome(&collector, 1, 10);
        outcome(&collector, 2, 10);
        let (sender, pushed) = mpsc::channel();
        let inner = collector.clone();
        collector.push_to(move |message| {
            let Ok(Reply::Reports(outcomes)) = decode::<Reply>(&message, usize::MAX) else { panic!("not Reports") };
            // Outcomes that come while the first frame leaves go with the next.
            if outcomes.first().map(|o| o.lease) == Some(1) {
                outcome(&inner, 3, 10);
                outcome(&inner, 4, 10);
            }
            sender.send(outcomes.iter().map(|o| o.lease).collect::<Vec<_>>()).unwrap();
        });
        assert_eq!(pushed.try_recv().expect("the waiting ones at once"), vec![1, 2]);
        assert_eq!(pushed.try_recv().expect("those that came meanwhile, together"), vec![3, 4]);
        outcome(&collector, 5, 10);
        assert_eq!(pushed.try_recv().expect("a lone one at once"), vec![5]);
        assert_eq!(collector.pending(), 0);
    }

    #[test]
    fn outcomes_wait_for_a_collect_and_leave_together() {
        let collector = Arc::new(Collector::new(1 << 20));
        outcome(&collector, 1, 10);
        outcome(&collector, 2, 10);
        assert_eq!(collector.pending(), 2);
        let (replier, answer) = collector_request();
        collector.collect(replier);
        let outcomes = answer.try_recv().expect("answered at once");
        assert_eq!(outcomes.iter().map(|o| o.lease).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(outcomes[0].reply, vec![7u8; 10]);
        assert_eq!(collector.pending(), 0);
    }

    #[test]
    fn a_waiting_collect_is_answered_by_the_next_outcome() {
        let collector = Arc::new(Collector::new(1 << 20));
        let (replier, answer) = collector_request();
        collector.collect(replier);
        assert!(answer.try_recv().is_err(), "nothing to answer yet");
        outcome(&collector, 3, 1);
        assert_eq!(answer.try_recv().unwrap().len(), 1);
    }

    #[test]
    fn a_newer_collect_answers_the_older_one_empty() {
        let collector = Arc::new(Collector::new(1 << 20));
        let (older, older_answer) = collector_request();
        let (newer, newer_answer) = collector_request();
        collector.collect(older);
        collector.collect(newer);
        assert!(older_answer.try_recv().unwrap().is_empty());
        outcome(&collector, 4, 1);
        assert_eq!(newer_answer.try_recv().unwrap()[0].lease, 4);
    }

    #[test]
    fn one_answer_stays_within_the_frame_limit_but_carries_at_least_one_outcome() {
        let collector = Arc::new(Collector::new(1024 + 3000));
        for lease in 0..3 {
            outcome(&collector, lease, 2000);
        }
        for expected in 0..3 {
            let (replier, answer) = collector_request();
            collector.collect(replier);
            let outcomes = answer.try_recv().unwrap();
            assert_eq!(outcomes.iter().map(|o| o.lease).collect::<Vec<_>>(), vec![expected]);
        }
        // An outcome larger than the limit still leaves, alone.
        outcome(&collector, 9, 10_000);
        let (replier, answer) = collector_request();
        collector.collect(replier);
        assert_eq!(answer.try_recv().unwrap()[0].reply.len(), 10_000);
    }
}
