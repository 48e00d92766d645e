//! One thread that wakes tasks at their time: a countdown or ETA that comes
//! due, a retry whose backoff is over, a run that reaches its timeout.
//!
//! Every run with a timeout sets an alarm, so this is on the hot path: due
//! times are rounded up to a [`GRAIN_MS`], the thread is woken only when an
//! alarm is set earlier than it would wake by itself (not for each run's
//! alarm when the last one was just cancelled: a wake-up per run cost a
//! blocking call a context switch on its own path), and it rings every
//! alarm due at once in one batch. An alarm that is no longer needed (its run ended) is
//! cancelled, so that alarms live as long as what they guard, not as long
//! as the longest timeout: a task with a ten-minute timeout that takes a
//! millisecond holds no memory for ten minutes. Setting an alarm again
//! moves it.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::wire::protocol::now_ms;

/// The precision of alarms: they ring up to this much late, never early.
const GRAIN_MS: u64 = 10;

pub(crate) use crate::ledger::Alarm;

/// Alarms by due time, and the thread that rings them.
pub(crate) struct Timers {
    shared: Arc<Shared>,
}

struct Shared {
    alarms: Mutex<Alarms>,
    changed: Condvar,
}

/// The alarms set, in due order and by identity.
#[derive(Default)]
struct Alarms {
    by_due: BTreeSet<(u64, Alarm)>,
    due_of: FxHashMap<Alarm, u64>,
    /// When the ringing thread, waiting, wakes by itself (`u64::MAX`: not
    /// before it is woken); `None` while it is awake, when it looks at
    /// the alarms before it waits again.
    wakes_at: Option<u64>,
}

impl Alarms {
    fn first(&self) -> Option<u64> {
        self.by_due.first().map(|(due, _)| *due)
    }

    fn remove(&mut self, alarm: Alarm) {
        if let Some(due) = self.due_of.remove(&alarm) {
            self.by_due.remove(&(due, alarm));
        }
    }
}

impl Timers {
    /// Starts the thread; `ring` is called with the alarms that are due.
    pub(crate) fn start(ring: impl Fn(Vec<Alarm>) + Send + 'static) -> Timers {
        let shared = Arc::new(Shared { alarms: Mutex::default(), changed: Condvar::new() });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("timers".into())
            .spawn(move || ring_loop(&thread_shared, &ring))
            .expect("spawning the timer thread");
        Timers { shared }
    }

    /// Rings `alarm` at `due_ms` (milliseconds since the Unix epoch), or
    /// moves it there if it was set already.
    pub(crate) fn set(&self, due_ms: u64, alarm: Alarm) {
        let due_ms = due_ms.div_ceil(GRAIN_MS).saturating_mul(GRAIN_MS);
        let mut alarms = self.shared.alarms.lock().expect("timer lock");
        alarms.remove(alarm);
        alarms.by_due.insert((due_ms, alarm));
        alarms.due_of.insert(alarm, due_ms);
        // Woken only if it would otherwise sleep past this alarm.
        let wake = alarms.wakes_at.is_some_and(|wakes_at| due_ms < wakes_at);
        if wake {
            alarms.wakes_at = None;
        }
        drop(alarms);
        if wake {
            self.shared.changed.notify_one();
        }
    }

    /// Forgets `alarm` if it is set: it will not ring.
    pub(crate) fn cancel(&self, alarm: Alarm) {
        self.shared.alarms.lock().expect("timer lock").remove(alarm);
    }

    /// Alarms set now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shared.alarms.lock().expect("timer lock").by_due.len()
    }
}

fn ring_loop(shared: &Shared, ring: &dyn Fn(Vec<Alarm>)) {
    let mut alarms = shared.alarms.lock().expect("timer lock");
    loop {
        let now = now_ms();
        match alarms.first() {
            Some(due) if due <= now => {
                let mut due = Vec::new();
                while let Some(&(at, alarm)) = alarms.by_due.first() {
                    if at > now {
                        break;
                    }
                    alarms.by_due.pop_first();
                    alarms.due_of.remove(&alarm);
                    due.push(alarm);
                }
                drop(alarms);
                ring(due);
                alarms = shared.alarms.lock().expect("timer lock");
            }
            Some(due) => {
                alarms.wakes_at = Some(due);
                let wait = Duration::from_millis(due - now);
                alarms = shared.changed.wait_timeout(alarms, wait).expect("timer lock").0;
                alarms.wakes_at = None;
            }
            None => {
                alarms.wakes_at = Some(u64::MAX);
                alarms = shared.changed.wait(alarms).expect("timer lock");
                alarms.wakes_at = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::TaskId;
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

    #[test]
    fn an_alarm_earlier_than_the_thread_sleeps_for_still_rings_on_time() {
        let (sender, receiver) = mpsc::channel();
        let timers = Timers::start(move |alarms| {
            for alarm in alarms {
                sender.send((alarm, now_ms())).unwrap();
            }
        });
        let start = now_ms();
        // The thread sleeps until this one, cancelled: it wakes then by itself.
        let (gone, far, near) = (TaskId::new_v4(), TaskId::new_v4(), TaskId::new_v4());
        timers.set(start + 5_000, Alarm::Deadline(gone, 1));
        std::thread::sleep(Duration::from_millis(20));
        timers.cancel(Alarm::Deadline(gone, 1));
        // Later than its wake-up: set without waking it.
        timers.set(start + 8_000, Alarm::Deadline(far, 1));
        // Earlier: it is woken, and rings this one on time.
        timers.set(start + 60, Alarm::Deadline(near, 1));
        let (alarm, at) = receiver.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(alarm, Alarm::Deadline(near, 1));
        assert!(at >= start + 60 && at < start + 2_000, "rang {} ms after the start", at - start);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn cancelled_alarms_never_ring_and_hold_nothing() {
        let (sender, receiver) = mpsc::channel();
        let timers = Timers::start(move |alarms| {
            for alarm in alarms {
                sender.send(alarm).unwrap();
            }
        });
        let start = now_ms();
        let ended: Vec<TaskId> = (0..1000).map(|_| TaskId::new_v4()).collect();
        for task_id in &ended {
            timers.set(start + 600_000, Alarm::Deadline(*task_id, 1));
        }
        let kept = TaskId::new_v4();
        timers.set(start + 40, Alarm::Deadline(kept, 1));
        // Set again: it moves, it does not ring twice.
        timers.set(start + 50, Alarm::Deadline(kept, 1));
        for task_id in &ended {
            timers.cancel(Alarm::Deadline(*task_id, 1));
        }
        assert_eq!(timers.len(), 1);
        assert_eq!(receiver.recv_timeout(Duration::from_secs(2)).unwrap(), Alarm::Deadline(kept, 1));
        assert!(receiver.recv_timeout(Duration::from_millis(100)).is_err());
        assert_eq!(timers.len(), 0);
    }
}
