//! The worker threads and their priority queue: when more tasks wait than
//! threads are free, CRITICAL runs before HIGH before NORMAL before LOW, and
//! first-come first-served within a priority.
//!
//! Threads are woken sparingly, as each wake-up is a thread switch: a job
//! queued wakes a parked thread only when no thread is already on its way
//! to the queue (woken and not yet there), and a thread that takes a job
//! while more wait wakes the next one; a thread that finishes a job takes
//! the next without parking. So a burst of jobs wakes each parked thread
//! once, and jobs queued while every thread is busy wake none.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastworker_plugin_sdk::Priority;

/// A fixed set of threads running jobs by priority.
pub(crate) struct Pool<J: Send + 'static> {
    shared: Arc<Shared<J>>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared<J> {
    state: Mutex<State<J>>,
    work_ready: Condvar,
    idle: Condvar,
}

struct State<J> {
    queues: [VecDeque<J>; 4],
    running: usize,
    /// Threads waiting for work.
    parked: usize,
    /// Parked threads woken (or owed a wake-up) that have not yet looked
    /// at the queue.
    waking: usize,
    closed: bool,
}

impl<J> State<J> {
    fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Whether jobs are waiting and a parked thread is to be woken for
    /// them: none is on its way yet (a thread on its way wakes the next if
    /// more wait). Counts it on its way.
    fn owes_wake(&mut self) -> bool {
        let owed = self.waking == 0 && self.parked > 0 && self.queues.iter().any(|q| !q.is_empty());
        if owed {
            self.waking += 1;
        }
        owed
    }
}

impl<J: Send + 'static> Pool<J> {
    /// Starts `threads` threads, each calling `run` for the jobs it takes.
    pub(crate) fn start(threads: usize, run: impl Fn(J) + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { queues: Default::default(), running: 0, parked: 0, waking: 0, closed: false }),
            work_ready: Condvar::new(),
            idle: Condvar::new(),
        });
        let run = Arc::new(run);
        let threads = (0..threads)
            .map(|index| {
                let shared = shared.clone();
                let run = run.clone();
                std::thread::Builder::new()
                    .name(format!("task-{index}"))
                    .spawn(move || worker_loop(&shared, &*run))
                    .expect("spawning a worker thread")
            })
            .collect();
        Pool { shared, threads }
    }

    /// Queues a job and wakes a thread for it if one is owed; returns it
    /// back if the pool no longer takes jobs.
    #[cfg(test)]
    pub(crate) fn push(&self, priority: Priority, job: J) -> Result<(), J> {
        if self.push_quietly(priority, job)? {
            self.waker().wake(1);
        }
        Ok(())
    }

    /// Queues a job without waking a thread: the caller holds a lock the
    /// job's thread will take first, and, when this returns `Ok(true)`,
    /// wakes one through [`Pool::waker`] once it has let go (a thread
    /// woken under that lock would only block on it and be woken again).
    /// `Ok(false)`: no wake-up is owed, a thread is awake for the job.
    /// Returns the job back if the pool no longer takes jobs.
    pub(crate) fn push_quietly(&self, priority: Priority, job: J) -> Result<bool, J> {
        let mut state = self.shared.state.lock().expect("pool lock");
        if state.closed {
            return Err(job);
        }
        state.queues[priority.index()].push_back(job);
        Ok(state.owes_wake())
    }

    /// What wakes a thread for jobs queued with [`Pool::push_quietly`].
    pub(crate) fn waker(&self) -> PoolWaker<J> {
        PoolWaker(self.shared.clone())
    }

    /// Number of worker threads.
    pub(crate) fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Stops taking jobs and takes out every job not started yet.
    pub(crate) fn close_and_take_queued(&self) -> Vec<J> {
        let mut state = self.shared.state.lock().expect("pool lock");
        state.closed = true;
        let queued = state.queues.iter_mut().flat_map(|q| q.drain(..)).collect();
        drop(state);
        self.shared.work_ready.notify_all();
        queued
    }

    /// Stops taking jobs, lets the threads work through what is queued and
    /// waits up to `timeout` for all of it to finish. Returns the jobs that
    /// never started; jobs still running at the deadline are left to run.
    pub(crate) fn drain(&self, timeout: Duration) -> Vec<J> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock().expect("pool lock");
        state.closed = true;
        self.shared.work_ready.notify_all();
        while state.running > 0 || (state.queued() > 0 && !self.threads.is_empty()) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.shared.idle.wait_timeout(state, deadline - now).expect("pool lock").0;
        }
        state.queues.iter_mut().flat_map(|q| q.drain(..)).collect()
    }
}

/// Wakes threads of a [`Pool`] for jobs queued quietly.
pub(crate) struct PoolWaker<J>(Arc<Shared<J>>);

impl<J> PoolWaker<J> {
    /// Wakes `threads` parked threads: the wake-ups [`Pool::push_quietly`]
    /// said were owed (each was counted on its way then).
    pub(crate) fn wake(&self, threads: usize) {
        for _ in 0..threads {
            self.0.work_ready.notify_one();
        }
    }
}

fn worker_loop<J>(shared: &Shared<J>, run: &dyn Fn(J)) {
    let mut state = shared.state.lock().expect("pool lock");
    loop {
        if let Some(job) = state.queues.iter_mut().find_map(VecDeque::pop_front) {
            state.running += 1;
            // More wait: the next parked thread is woken for them.
            let wake_next = state.owes_wake();
            drop(state);
            if wake_next {
                shared.work_ready.notify_one();
            }
            run(job);
            state = shared.state.lock().expect("pool lock");
            state.running -= 1;
            // Only a drain waits for the pool to be idle, and it closes the
            // pool first: an open pool's idle moments wake nobody (each
            // notification is a system call).
            if state.closed && state.running == 0 && state.queued() == 0 {
                shared.idle.notify_all();
            }
        } else if state.closed {
            shared.idle.notify_all();
            return;
        } else {
            state.parked += 1;
            state = shared.work_ready.wait(state).expect("pool lock");
            state.parked -= 1;
            // Woken (or spuriously): on its way no more, it looks now.
            state.waking = state.waking.saturating_sub(1);
        }
    }
}

#[cfg(test)]
impl<J: Send + 'static> Pool<J> {
    /// Threads waiting for work.
    fn parked(&self) -> usize {
        self.shared.state.lock().expect("pool lock").parked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_burst_of_jobs_wakes_each_parked_thread_once_and_busy_threads_none() {
        let (started_tx, started_rx) = mpsc::channel::<u32>();
        let started_tx = Mutex::new(started_tx);
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_gate = gate.clone();
        let pool = Pool::start(2, move |job: u32| {
            started_tx.lock().unwrap().send(job).unwrap();
            let (open, opened) = &*thread_gate;
            let _open = opened.wait_while(open.lock().unwrap(), |open| !*open).unwrap();
        });
        let deadline = Instant::now() + WAIT;
        while pool.parked() < 2 {
            assert!(Instant::now() < deadline, "the threads never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The first job of a burst owes one wake-up; the others none, as a
        // thread is on its way to the queue.
        let owed: Vec<bool> = (0..4).map(|job| pool.push_quietly(Priority::Normal, job).unwrap()).collect();
        assert_eq!(owed, [true, false, false, false]);
        pool.waker().wake(1);
        // The thread woken takes the first job and wakes the other for the
        // rest: both run at once, in queue order.
        let mut first = [started_rx.recv_timeout(WAIT).unwrap(), started_rx.recv_timeout(WAIT).unwrap()];
        first.sort_unstable();
        assert_eq!(first, [0, 1]);
        // Every thread is busy: a job queued now owes no wake-up, and runs
        // when a thread is done, without parking in between.
        assert!(!pool.push_quietly(Priority::Normal, 4).unwrap());
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let mut rest: Vec<u32> = (0..3).map(|_| started_rx.recv_timeout(WAIT).unwrap()).collect();
        rest.sort_unstable();
        assert_eq!(rest, [2, 3, 4]);
        assert!(pool.drain(WAIT).is_empty());
    }

    #[test]
    fn waiting_jobs_run_most_urgent_first() {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let (done_tx, done_rx) = mpsc::channel();
        let done_tx = Mutex::new(done_tx);
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let started_tx = Mutex::new(started_tx);
        let pool = Pool::start(1, move |job: (u32, bool)| {
            if job.1 {
                started_tx.lock().unwrap().send(()).unwrap();
                gate.lock().unwrap().recv().unwrap();
            }
            done_tx.lock().unwrap().send(job.0).unwrap();
        });
        pool.push(Priority::Low, (0, true)).unwrap();
        // The only thread is busy with the first job: the others wait.
        started_rx.recv().unwrap();
        for (n, p) in [(1, Priority::Low), (2, Priority::Normal), (3, Priority::High), (4, Priority::Critical)] {
            pool.push(p, (n, false)).unwrap();
        }
        gate_tx.send(()).unwrap();
        let order: Vec<u32> = (0..5).map(|_| done_rx.recv().unwrap()).collect();
        assert_eq!(order, vec![0, 4, 3, 2, 1]);
        // Queued quietly, a job runs once its thread is woken (if the
        // thread has not parked yet, it takes the job without a wake-up).
        if pool.push_quietly(Priority::Normal, (5, false)).unwrap() {
            pool.waker().wake(1);
        }
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 5);
        assert!(pool.drain(Duration::from_secs(1)).is_empty());
        assert!(pool.push(Priority::Low, (9, false)).is_err());
    }
}
