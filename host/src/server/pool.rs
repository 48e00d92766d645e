//! The worker threads and their priority queue: when more tasks wait than
//! threads are free, CRITICAL runs before HIGH before NORMAL before LOW, and
//! first-come first-served within a priority.

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
    closed: bool,
}

impl<J> State<J> {
    fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

impl<J: Send + 'static> Pool<J> {
    /// Starts `threads` threads, each calling `run` for the jobs it takes.
    pub(crate) fn start(threads: usize, run: impl Fn(J) + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { queues: Default::default(), running: 0, closed: false }),
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

    /// Queues a job and wakes a thread for it; returns it back if the pool
    /// no longer takes jobs.
    #[cfg(test)]
    pub(crate) fn push(&self, priority: Priority, job: J) -> Result<(), J> {
        let mut state = self.shared.state.lock().expect("pool lock");
        if state.closed {
            return Err(job);
        }
        state.queues[priority.index()].push_back(job);
        drop(state);
        self.shared.work_ready.notify_one();
        Ok(())
    }

    /// Queues a job without waking a thread: the caller holds a lock the
    /// job's thread will take first, and wakes one through
    /// [`Pool::waker`] once it has let go (a thread woken under that
    /// lock would only block on it and be woken again). Returns the job
    /// back if the pool no longer takes jobs.
    pub(crate) fn push_quietly(&self, priority: Priority, job: J) -> Result<(), J> {
        let mut state = self.shared.state.lock().expect("pool lock");
        if state.closed {
            return Err(job);
        }
        state.queues[priority.index()].push_back(job);
        Ok(())
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
    /// Wakes one waiting thread for each of `jobs` jobs.
    pub(crate) fn wake(&self, jobs: usize) {
        for _ in 0..jobs {
            self.0.work_ready.notify_one();
        }
    }
}

fn worker_loop<J>(shared: &Shared<J>, run: &dyn Fn(J)) {
    let mut state = shared.state.lock().expect("pool lock");
    loop {
        if let Some(job) = state.queues.iter_mut().find_map(VecDeque::pop_front) {
            state.running += 1;
            drop(state);
            run(job);
            state = shared.state.lock().expect("pool lock");
            state.running -= 1;
            if state.running == 0 && state.queued() == 0 {
                shared.idle.notify_all();
            }
        } else if state.closed {
            shared.idle.notify_all();
            return;
        } else {
            state = shared.work_ready.wait(state).expect("pool lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

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
        // Queued quietly, a job runs once its thread is woken.
        pool.push_quietly(Priority::Normal, (5, false)).unwrap();
        pool.waker().wake(1);
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 5);
        assert!(pool.drain(Duration::from_secs(1)).is_empty());
        assert!(pool.push(Priority::Low, (9, false)).is_err());
    }
}
