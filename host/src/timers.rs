//! One thread that wakes tasks at their time: a countdown or ETA that comes
//! due, a retry whose backoff is over, a run that reaches its timeout.
//!
//! Every run with a timeout sets an alarm, so this is on the hot path: due
//! times are rounded up to a [`GRAIN`], the thread is woken only when an
//! alarm earlier than all others is set, and it rings every alarm due at
//! once in one batch.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::protocol::{now_ms, TaskId};

/// The precision of alarms: they ring up to this much late, never early.
const GRAIN_MS: u64 = 10;

/// What is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Alarm {
    /// A scheduled or retrying task may start.
    Start(TaskId),
    /// Run `attempt` of a task reaches its timeout.
    Deadline(TaskId, u32),
    /// The run sent to a subworker under this lease must have been
    /// reported started by now, or, once started, ended (its timeout from
    /// its start, plus a grace): else the lease is revoked.
    Lease(TaskId, u64),
}

/// Alarms by due time, and the thread that rings them.
pub(crate) struct Timers {
    shared: Arc<Shared>,
}

struct Shared {
    alarms: Mutex<BinaryHeap<Reverse<(u64, Alarm)>>>,
    changed: Condvar,
}

impl Timers {
    /// Starts the thread; `ring` is called with the alarms that are due.
    pub(crate) fn start(ring: impl Fn(Vec<Alarm>) + Send + 'static) -> Timers {
        let shared = Arc::new(Shared { alarms: Mutex::new(BinaryHeap::new()), changed: Condvar::new() });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("timers".into())
            .spawn(move || ring_loop(&thread_shared, &ring))
            .expect("spawning the timer thread");
        Timers { shared }
    }

    /// Rings `alarm` at `due_ms` (milliseconds since the Unix epoch).
    pub(crate) fn set(&self, due_ms: u64, alarm: Alarm) {
        let due_ms = due_ms.div_ceil(GRAIN_MS).saturating_mul(GRAIN_MS);
        let mut alarms = self.shared.alarms.lock().expect("timer lock");
        let earliest = alarms.peek().is_none_or(|Reverse((first, _))| due_ms < *first);
        alarms.push(Reverse((due_ms, alarm)));
        drop(alarms);
        if earliest {
            self.shared.changed.notify_one();
        }
    }
}

fn ring_loop(shared: &Shared, ring: &dyn Fn(Vec<Alarm>)) {
    let mut alarms = shared.alarms.lock().expect("timer lock");
    loop {
        let now = now_ms();
        match alarms.peek() {
            Some(Reverse((due, _))) if *due <= now => {
                let mut due = Vec::new();
                while alarms.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                    due.push(alarms.pop().expect("peeked").0 .1);
                }
                drop(alarms);
                ring(due);
                alarms = shared.alarms.lock().expect("timer lock");
            }
            Some(Reverse((due, _))) => {
                let wait = Duration::from_millis(due - now);
                alarms = shared.changed.wait_timeout(alarms, wait).expect("timer lock").0;
            }
            None => alarms = shared.changed.wait(alarms).expect("timer lock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn alarms_ring_in_due_order_not_before_their_time() {
        let (sender, receiver) = mpsc::channel();
        let timers = Timers::start(move |alarms| {
            for alarm in alarms {
                sender.send((alarm, now_ms())).unwrap();
            }
        });
        let (late, early) = (TaskId::new_v4(), TaskId::new_v4());
        let start = now_ms();
        timers.set(start + 80, Alarm::Start(late));
        timers.set(start + 30, Alarm::Deadline(early, 1));
        let (first, at_first) = receiver.recv_timeout(Duration::from_secs(2)).unwrap();
        let (second, at_second) = receiver.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((first, second), (Alarm::Deadline(early, 1), Alarm::Start(late)));
        assert!(at_first >= start + 30 && at_second >= start + 80);
    }
}
