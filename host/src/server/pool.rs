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
//!
//! A worker process gives its pool a **duty**, reading its link, and one
//! thread more than it runs jobs at once: whichever thread is free does the
//! duty, and the thread that read a run runs it itself, keeping the duty
//! meanwhile (what arrives waits in the socket for the run's end). So a
//! short run read from the link wakes no other thread, in either direction.
//! Before it starts another run it holds, it looks at the link without
//! waiting, so that a cancellation of that run waiting there is read
//! first. For a run that lasts, [`Pool::hand_over_duty`] (called by the
//! process's start reporter, about 50 ms into a run) frees the duty and
//! wakes the spare thread to do it, so that cancellations are read during
//! long runs; a closed pool (a drain) keeps none.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fastworker_plugin_sdk::Priority;

/// A fixed set of threads running jobs by priority.
pub(crate) struct Pool<J: Send + 'static> {
    shared: Arc<Shared<J>>,
    /// Threads running jobs (their handles are never joined: a process's
    /// exit ends them).
    threads: usize,
    run: Arc<dyn Fn(J) + Send + Sync>,
}

struct Shared<J> {
    state: Mutex<State<J>>,
    work_ready: Condvar,
    idle: Condvar,
}

/// Work a free thread does when no job waits (see the module's doc),
/// given how long a turn may wait; `false` once it is over for good.
pub(crate) type Duty = Box<dyn FnMut(Turn) -> bool + Send>;

/// How long a turn of the duty may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Until there is something to do (the thread has nothing else).
    Wait,
    /// Only what is there now (between runs the thread holds).
    Look,
}

struct State<J> {
    queues: [VecDeque<J>; 4],
    running: usize,
    /// Jobs run at once at most (the threads, less one with a duty).
    max_running: usize,
    /// The duty, while no thread is doing it.
    duty: Option<Duty>,
    /// The thread doing the duty: the jobs it queues wake nobody, as it
    /// runs the first itself when its turn ends.
    duty_holder: Option<std::thread::ThreadId>,
    /// The thread that did the last turn of the duty and runs what it read:
    /// the duty is its own until then, or until handed over.
    reserved_by: Option<std::thread::ThreadId>,
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
        let owed = self.waking == 0
            && self.parked > 0
            && self.running < self.max_running
            && self.queues.iter().any(|q| !q.is_empty());
        if owed {
            self.waking += 1;
        }
        owed
    }

    /// Whether a parked thread is to be woken to do the duty: it is free
    /// and no thread is on its way (which would do it, or take a job and
    /// then ask this again). Counts it on its way.
    fn owes_duty_wake(&mut self) -> bool {
        let owed = self.duty.is_some() && self.reserved_by.is_none() && self.waking == 0 && self.parked > 0;
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
            state: Mutex::new(State {
                queues: Default::default(),
                running: 0,
                max_running: threads,
                duty: None,
                duty_holder: None,
                reserved_by: None,
                parked: 0,
                waking: 0,
                closed: false,
            }),
            work_ready: Condvar::new(),
            idle: Condvar::new(),
        });
        let run: Arc<dyn Fn(J) + Send + Sync> = Arc::new(run);
        for index in 0..threads {
            spawn(&shared, &run, index);
        }
        Pool { shared, threads, run }
    }

    /// Gives the pool `duty`, done by whichever thread is free, and one
    /// more thread for it, so that one is always free while the others
    /// run jobs. Once only; a pool without threads runs no duty.
    pub(crate) fn give_duty(&self, duty: Duty) {
        if self.threads == 0 {
            return;
        }
        let mut state = self.shared.state.lock().expect("pool lock");
        if state.duty.is_some() {
            return;
        }
        state.duty = Some(duty);
        drop(state);
        spawn(&self.shared, &self.run, self.threads);
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
        if state.duty_holder.is_some() && state.duty_holder == Some(std::thread::current().id()) {
            // Read by the duty: its thread starts it when its turn ends.
            return Ok(false);
        }
        Ok(state.owes_wake())
    }

    /// What wakes a thread for jobs queued with [`Pool::push_quietly`].
    pub(crate) fn waker(&self) -> PoolWaker<J> {
        PoolWaker(self.shared.clone())
    }

    /// Frees the duty kept by a thread running what it read (a run that
    /// lasts), and wakes a spare thread to do it.
    pub(crate) fn hand_over_duty(&self) {
        let mut state = self.shared.state.lock().expect("pool lock");
        if state.reserved_by.take().is_some() && state.owes_duty_wake() {
            drop(state);
            self.shared.work_ready.notify_one();
        }
    }

    /// Threads running jobs (a duty's thread aside).
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Stops taking jobs and takes out every job not started yet.
    pub(crate) fn close_and_take_queued(&self) -> Vec<J> {
        let mut state = self.shared.state.lock().expect("pool lock");
        state.closed = true;
        // A drain's cancellations are read at once: the duty is kept by none.
        state.reserved_by = None;
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
        state.reserved_by = None;
        self.shared.work_ready.notify_all();
        while state.running > 0 || (state.queued() > 0 && self.threads > 0) {
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

fn spawn<J: Send + 'static>(shared: &Arc<Shared<J>>, run: &Arc<dyn Fn(J) + Send + Sync>, index: usize) {
    let (shared, run) = (shared.clone(), run.clone());
    std::thread::Builder::new()
        .name(format!("task-{index}"))
        .spawn(move || worker_loop(&shared, &*run))
        .expect("spawning a worker thread");
}

/// Does one turn of `duty` on this thread (`me`) without the pool lock;
/// returns the lock, and whether the duty goes on (then it is put back).
fn take_turn<'a, J>(
    shared: &'a Shared<J>,
    mut state: MutexGuard<'a, State<J>>,
    mut duty: Duty,
    turn: Turn,
    me: std::thread::ThreadId,
) -> (MutexGuard<'a, State<J>>, bool) {
    state.duty_holder = Some(me);
    drop(state);
    let going = duty(turn);
    let mut state = shared.state.lock().expect("pool lock");
    state.duty_holder = None;
    if going {
        state.duty = Some(duty);
    }
    (state, going)
}

fn worker_loop<J>(shared: &Shared<J>, run: &dyn Fn(J)) {
    let me = std::thread::current().id();
    // Whether this thread read the link since its last run.
    let mut looked = false;
    let mut state = shared.state.lock().expect("pool lock");
    loop {
        let next_is_mine = state.running < state.max_running && state.queued() > 0;
        if next_is_mine && !looked && state.reserved_by == Some(me) {
            if let Some(duty) = state.duty.take() {
                // Between two runs it read: what waits on the link first.
                let going;
                (state, going) = take_turn(shared, state, duty, Turn::Look, me);
                looked = true;
                // Handed over meanwhile: a spare thread does it now.
                if going && state.reserved_by != Some(me) && state.owes_duty_wake() {
                    shared.work_ready.notify_one();
                }
                continue;
            }
        }
        let job = if state.running < state.max_running {
            state.queues.iter_mut().find_map(VecDeque::pop_front)
        } else {
            None
        };
        let reserved = state.reserved_by;
        if let Some(job) = job {
            looked = false;
            state.running += 1;
            // More wait, or nobody does the duty: the next parked thread
            // is woken for them.
            let wake_next = state.owes_wake() || state.owes_duty_wake();
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
        } else if let Some(duty) = state.duty.take_if(|_| reserved.is_none_or(|by| by == me)) {
            // Free (or its own), and nobody does the duty: this thread does
            // it (still when closed, as a drain waits for runs that may be
            // cancelled).
            state.reserved_by = None;
            let going;
            (state, going) = take_turn(shared, state, duty, Turn::Wait, me);
            looked = true;
            if going && !state.closed && state.running < state.max_running && state.queued() > 0 {
                // It runs what it read next (the lock is held to the loop's
                // top), keeping the duty.
                state.reserved_by = Some(me);
            }
        } else if state.closed && state.duty.is_none() && state.duty_holder.is_none() {
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

    /// What the test duty reads: jobs to queue, or a mark to echo.
    enum Read {
        Jobs(Vec<u32>),
        Mark(u32),
    }

    /// What the test sees, in order.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        /// A job ran, on the thread that read it or not.
        Ran(u32, bool),
        /// A mark was read.
        Marked(u32),
    }

    #[test]
    fn a_run_read_by_the_duty_runs_on_the_thread_that_read_it_which_keeps_the_duty_until_handed_over() {
        // Job 0 waits for the gate.
        let (seen_tx, seen) = mpsc::channel::<Seen>();
        let ran_tx = Mutex::new(seen_tx.clone());
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let pool = Arc::new(Pool::start(1, move |(job, reader): (u32, std::thread::ThreadId)| {
            ran_tx.lock().unwrap().send(Seen::Ran(job, reader == std::thread::current().id())).unwrap();
            if job == 0 {
                gate.lock().unwrap().recv().unwrap();
            }
        }));
        let (read_tx, read_rx) = mpsc::channel::<Read>();
        let queue_to = Arc::downgrade(&pool);
        pool.give_duty(Box::new(move |turn| {
            let read = match turn {
                Turn::Wait => read_rx.recv().ok(),
                Turn::Look => match read_rx.try_recv() {
                    Ok(read) => Some(read),
                    Err(mpsc::TryRecvError::Empty) => return true,
                    Err(mpsc::TryRecvError::Disconnected) => None,
                },
            };
            let Some(read) = read else { return false };
            match read {
                Read::Jobs(jobs) => {
                    let pool = queue_to.upgrade().expect("the pool");
                    for job in jobs {
                        let owed = pool.push_quietly(Priority::Normal, (job, std::thread::current().id())).unwrap();
                        assert!(!owed, "a run read by the duty wakes nobody");
                    }
                }
                Read::Mark(mark) => seen_tx.send(Seen::Marked(mark)).unwrap(),
            }
            true
        }));
        assert_eq!(pool.threads(), 1, "the duty's thread runs no more jobs at once");
        let deadline = Instant::now() + WAIT;
        while pool.parked() < 1 {
            assert!(Instant::now() < deadline, "no thread parked beside the duty's");
            std::thread::sleep(Duration::from_millis(1));
        }
        let next = || seen.recv_timeout(WAIT).unwrap();
        let nothing_for = |ms| seen.recv_timeout(Duration::from_millis(ms)).is_err();
        read_tx.send(Read::Jobs(vec![0, 1])).unwrap();
        assert_eq!(next(), Seen::Ran(0, true), "the reading thread runs the run it read");
        // Job 0 runs, and its thread keeps the duty: what arrives waits.
        read_tx.send(Read::Mark(7)).unwrap();
        assert!(nothing_for(200), "read during the run");
        // Before job 1, which it holds, it looks at what waits: mark 7 first.
        gate_tx.send(()).unwrap();
        assert_eq!(next(), Seen::Marked(7), "read before the next run it holds");
        assert_eq!(next(), Seen::Ran(1, true));
        // A run that lasts: handed over, the spare thread reads meanwhile.
        read_tx.send(Read::Jobs(vec![0])).unwrap();
        assert_eq!(next(), Seen::Ran(0, true));
        read_tx.send(Read::Mark(8)).unwrap();
        assert!(nothing_for(200), "read during the run");
        pool.hand_over_duty();
        assert_eq!(next(), Seen::Marked(8), "the duty is done while a job runs");
        // A run read now waits for the running one (one job at a time).
        read_tx.send(Read::Jobs(vec![2])).unwrap();
        assert!(nothing_for(200), "a second job ran at once");
        gate_tx.send(()).unwrap();
        assert!(matches!(next(), Seen::Ran(2, _)));
        // Over: the duty ends, the pool drains.
        drop(read_tx);
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
