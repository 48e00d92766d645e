//! What a control plane (or subworker) knows and does about tasks: the live
//! ones, where each runs (its own worker threads or a subworker's slot),
//! their results, and the clients waiting for them.
//!
//! One mutex guards the live tasks and the cluster together, so a task and
//! the slot carrying it never disagree. NNG calls made under it only queue
//! work (sends, receives, cancels); replies to clients go out after it is
//! released, through an [`Outbox`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice};
use fastworker_plugin_sdk::abi::{FailureKind, TaskDecl};
use fastworker_plugin_sdk::TaskContext;
use nng::{AioResult, Message};
use tracing::{debug, info, warn};

use crate::cache::{Lookup, ResultCache};
use crate::cluster::{Cluster, Placement, Waiting, WorkerKey};
use crate::control_plane::ControlPlaneConfig;
use crate::endpoint::{encode_reply, Replier};
use crate::link::Link;
use crate::plugins::Registry;
use crate::pool::Pool;
use crate::protocol::{
    decode, encode_forwarded_submit, now_ms, ClusterStatus, ErrorKind, ErrorReply, Priority, Reply, Submit, TaskError,
    TaskId, TaskReport, TaskState,
};

/// How many times a task is sent to subworkers before the control plane
/// gives up on it (each of them went away while running it).
pub(crate) const MAX_DISPATCHES: u32 = 3;

/// Everything a serving process shares between its ports and threads.
pub(crate) struct State {
    pub(crate) config: ControlPlaneConfig,
    pub(crate) registry: Registry,
    tasks: Mutex<Tasks>,
    cache: Mutex<ResultCache>,
    accepting: AtomicBool,
    pool: Pool<Job>,
}

/// The live tasks and the subworkers, under one lock.
pub(crate) struct Tasks {
    live: HashMap<TaskId, LiveTask>,
    pub(crate) cluster: Cluster<Link>,
}

/// A task that has been accepted and has not finished.
struct LiveTask {
    report: TaskReport,
    waiters: Vec<Replier>,
    cancelled: Arc<AtomicBool>,
    /// The JSON arguments, kept while a subworker may need them sent again
    /// (empty once handed to a local worker thread).
    args: Vec<u8>,
}

/// What a worker thread needs to run one task.
struct Job {
    task_id: TaskId,
    decl: TaskDecl,
    args: Vec<u8>,
    cancelled: Arc<AtomicBool>,
}

/// Replies gathered under the lock, sent after it is released.
#[derive(Default)]
pub(crate) struct Outbox(Vec<(Vec<Replier>, Message)>);

impl Outbox {
    /// Sends every gathered reply.
    pub(crate) fn deliver(self) {
        for (waiters, message) in self.0 {
            for waiter in waiters {
                waiter.send_message(message.clone());
            }
        }
    }
}

impl State {
    /// Builds the state and starts the worker threads.
    pub(crate) fn new(config: ControlPlaneConfig, registry: Registry) -> Arc<State> {
        Arc::new_cyclic(|me: &Weak<State>| {
            let me = me.clone();
            let pool = Pool::start(config.concurrency, move |job| {
                if let Some(state) = me.upgrade() {
                    state.run(job);
                }
            });
            State {
                cache: Mutex::new(ResultCache::new(config.result_cache_size, config.result_cache_ttl)),
                tasks: Mutex::new(Tasks { live: HashMap::new(), cluster: Cluster::default() }),
                accepting: AtomicBool::new(true),
                registry,
                config,
                pool,
            }
        })
    }

    /// The live tasks and the cluster.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().expect("task lock")
    }

    /// Tasks accepted and not finished, for heartbeats.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().live.len()
    }

    /// The subworkers as `fastworker workers` shows them.
    pub(crate) fn cluster_status(&self) -> ClusterStatus {
        self.lock().cluster.status()
    }

    /// Drops results older than the TTL.
    pub(crate) fn sweep_expired(&self) -> usize {
        self.cache.lock().expect("cache lock").sweep()
    }

    /// Accepts a task: runs it here, sends it to a subworker, or queues it
    /// for one; answers at once unless the client waits for the result.
    pub(crate) fn submit(&self, submit: Submit, replier: Replier) {
        if !self.accepting.load(Ordering::SeqCst) {
            return replier.send(&error_reply(
                ErrorKind::ShuttingDown,
                format!(
                    "'{}' is shutting down and takes no new tasks; submit to another one or retry after it restarts",
                    self.config.worker_id
                ),
            ));
        }
        let task_id = submit.task_id;
        let mut tasks = self.lock();
        if let Some(existing) = tasks.live.get_mut(&task_id) {
            // The same id again (a client retrying after a lost reply): answer
            // for the task already accepted instead of running it twice.
            if submit.wait {
                existing.waiters.push(replier);
            } else {
                drop(tasks);
                replier.send(&Reply::Accepted { task_id });
            }
            return;
        }
        if let Lookup::Found(report) = self.cache.lock().expect("cache lock").get(&task_id) {
            drop(tasks);
            return replier.send(&if submit.wait { Reply::Report(report) } else { Reply::Accepted { task_id } });
        }
        let placement =
            if tasks.cluster.is_empty() { Placement::Nobody } else { tasks.cluster.place(task_id, &submit.task_name) };
        let (waiters, answer_now) = if submit.wait { (vec![replier], None) } else { (Vec::new(), Some(replier)) };
        match placement {
            Placement::Nobody => {
                let Some(task) = self.registry.get(&submit.task_name) else {
                    let message = self.nobody_provides(&tasks, &submit.task_name);
                    drop(tasks);
                    let reply = error_reply(ErrorKind::UnknownTask, message);
                    return waiters.into_iter().chain(answer_now).for_each(|r| r.send(&reply));
                };
                if self.pool.threads() == 0 {
                    drop(tasks);
                    let reply = error_reply(
                        ErrorKind::NoWorker,
                        format!(
                            "no worker can run task '{}': this control plane runs with --concurrency 0 and no live subworker provides it",
                            submit.task_name
                        ),
                    );
                    return waiters.into_iter().chain(answer_now).for_each(|r| r.send(&reply));
                }
                let priority = submit.priority.unwrap_or(task.decl.options.priority);
                let cancelled = Arc::new(AtomicBool::new(false));
                let report = new_report(task_id, submit.task_name, priority);
                let job = Job { task_id, decl: task.decl, args: submit.args, cancelled: cancelled.clone() };
                if self.pool.push(priority, job).is_err() {
                    // Shutdown began between the check above and now.
                    drop(tasks);
                    let reply = error_reply(ErrorKind::ShuttingDown, "shutting down: no new tasks are taken".into());
                    return waiters.into_iter().chain(answer_now).for_each(|r| r.send(&reply));
                }
                tasks.live.insert(task_id, LiveTask { report, waiters, cancelled, args: Vec::new() });
                debug!(%task_id, %priority, "task queued");
            }
            Placement::Slot(key, slot) => {
                let priority = self.remote_priority(&tasks, &submit);
                let report = new_report(task_id, submit.task_name, priority);
                let cancelled = Arc::new(AtomicBool::new(false));
                tasks.live.insert(task_id, LiveTask { report, waiters, cancelled, args: submit.args });
                self.send_to_worker(&mut tasks, key, slot, task_id);
            }
            Placement::Wait => {
                let priority = self.remote_priority(&tasks, &submit);
                let waiting = Waiting { task_id, task_name: submit.task_name.clone() };
                let report = new_report(task_id, submit.task_name, priority);
                let cancelled = Arc::new(AtomicBool::new(false));
                tasks.live.insert(task_id, LiveTask { report, waiters, cancelled, args: submit.args });
                tasks.cluster.wait(priority, waiting, false);
                debug!(%task_id, %priority, "task waits for a subworker slot");
            }
        }
        drop(tasks);
        if let Some(replier) = answer_now {
            replier.send(&Reply::Accepted { task_id });
        }
    }

    fn remote_priority(&self, tasks: &Tasks, submit: &Submit) -> Priority {
        submit.priority.or_else(|| tasks.cluster.declared_priority(&submit.task_name)).unwrap_or(Priority::Normal)
    }

    /// "No worker provides task 'x'", with what is provided.
    fn nobody_provides(&self, tasks: &Tasks, task_name: &str) -> String {
        let mut known: Vec<&str> = self.registry.tasks().iter().map(|t| t.decl.name.as_str()).collect();
        known.extend(tasks.cluster.task_names());
        known.sort_unstable();
        known.dedup();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        format!("no worker provides task '{task_name}' (tasks provided now: {known})")
    }

    /// The state of a task, or why it is not known.
    pub(crate) fn status(&self, task_id: TaskId) -> Reply {
        if let Some(task) = self.lock().live.get(&task_id) {
            return Reply::Report(task.report.clone());
        }
        let config = &self.config;
        match self.cache.lock().expect("cache lock").get(&task_id) {
            Lookup::Found(report) => Reply::Report(report),
            Lookup::Expired => error_reply(
                ErrorKind::ExpiredTaskId,
                format!(
                    "task {task_id} finished, but its result expired: results are kept {} (--result-cache-ttl)",
                    config.result_cache_ttl.map_or("forever".to_string(), |ttl| format!("{} s", ttl.as_secs()))
                ),
            ),
            Lookup::Evicted => error_reply(
                ErrorKind::ExpiredTaskId,
                format!(
                    "task {task_id} finished, but its result was evicted: the cache keeps the {} most recently used results (--result-cache-size)",
                    config.result_cache_size
                ),
            ),
            Lookup::Unknown => error_reply(
                ErrorKind::UnknownTaskId,
                format!("task {task_id} is unknown to '{}': check the id and the --address", config.worker_id),
            ),
        }
    }

    /// Runs one task on this thread (a worker thread of the pool).
    fn run(&self, job: Job) {
        let started = now_ms();
        let attempt = {
            let mut tasks = self.lock();
            let Some(task) = tasks.live.get_mut(&job.task_id) else { return };
            task.report.state = TaskState::Running;
            task.report.started_ms = Some(started);
            task.report.attempts += 1;
            task.report.worker.clone_from(&self.config.worker_id);
            task.report.attempts
        };
        let timeout_ms = job.decl.options.timeout_ms;
        let deadline = if timeout_ms == 0 { 0 } else { started + timeout_ms };
        let context = TaskContext::new(&job.cancelled, deadline, attempt, *job.task_id.as_bytes());
        let outcome = match (job.decl.call)(&context, RSlice::from_slice(&job.args)) {
            RResult::ROk(bytes) => Ok(bytes.into_vec()),
            RResult::RErr(failure) => Err(TaskError { kind: failure.kind, message: failure.message.into_string() }),
        };
        if let Err(error) = &outcome {
            debug!(task_id = %job.task_id, task = job.decl.name.as_str(), error = %error.message, "task failed");
        }
        let mut outbox = Outbox::default();
        self.finish(&mut self.lock(), job.task_id, outcome, None, &mut outbox);
        outbox.deliver();
    }

    /// Records a task's outcome, caches it and queues the replies to
    /// everyone waiting.
    fn finish(
        &self,
        tasks: &mut Tasks,
        task_id: TaskId,
        outcome: Result<Vec<u8>, TaskError>,
        started_ms: Option<u64>,
        outbox: &mut Outbox,
    ) {
        let Some(task) = tasks.live.remove(&task_id) else { return };
        let mut report = task.report;
        report.finished_ms = Some(now_ms());
        if started_ms.is_some() {
            report.started_ms = started_ms;
        }
        match outcome {
            Ok(result) => {
                report.state = TaskState::Succeeded;
                report.result = Some(result);
            }
            Err(error) => {
                report.state = TaskState::Failed;
                report.error = Some(error);
            }
        }
        let reply = Reply::Report(report);
        if !task.waiters.is_empty() {
            outbox.0.push((task.waiters, encode_reply(&reply)));
        }
        let Reply::Report(report) = reply else { unreachable!() };
        self.cache.lock().expect("cache lock").insert(report);
    }

    fn fail(&self, tasks: &mut Tasks, task_id: TaskId, message: String, outbox: &mut Outbox) {
        let error = TaskError { kind: FailureKind::Error, message };
        self.finish(tasks, task_id, Err(error), None, outbox);
    }

    /// Sends a live task into a subworker slot that [`Cluster`] reserved for it.
    fn send_to_worker(&self, tasks: &mut Tasks, key: WorkerKey, slot: usize, task_id: TaskId) {
        let Tasks { live, cluster } = tasks;
        let (Some(worker), Some(task)) = (cluster.get(key), live.get_mut(&task_id)) else {
            cluster.release(key, slot, Some(task_id));
            return;
        };
        let report = &mut task.report;
        let mut message = Message::with_capacity(task.args.len() + report.task_name.len() + 32);
        encode_forwarded_submit(task_id, &report.task_name, &task.args, report.priority, &mut message)
            .expect("writing to a message cannot fail");
        match worker.link.send(slot, message) {
            Ok(()) => {
                report.state = TaskState::Running;
                report.worker.clone_from(&worker.name.worker_id);
                report.attempts += 1;
                report.started_ms = Some(now_ms());
                debug!(%task_id, worker = %worker.name.worker_id, "task sent to a subworker");
            }
            Err(error) => {
                // The tick sends it again once a slot is free.
                warn!(%task_id, worker = %worker.name.worker_id, %error, "could not send a task to a subworker");
                let (priority, task_name) = (report.priority, report.task_name.clone());
                cluster.release(key, slot, Some(task_id));
                cluster.wait(priority, Waiting { task_id, task_name }, true);
            }
        }
    }

    /// A subworker slot's exchange moved on: the request left, the reply
    /// came, or it failed. Called from the slot's NNG callback.
    pub(crate) fn on_slot_event(&self, key: WorkerKey, slot: usize, result: AioResult) {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let carried = tasks.cluster.carried(key, slot);
        match (result, carried) {
            (AioResult::Send(Ok(())), Some(task_id)) => match tasks.cluster.get(key).map(|w| w.link.receive(slot)) {
                Some(Ok(())) | None => return,
                Some(Err(error)) => {
                    tasks.cluster.release(key, slot, Some(task_id));
                    let why = format!("waiting for its result failed: {error}");
                    self.send_again(&mut tasks, task_id, &why, &mut outbox);
                }
            },
            (AioResult::Recv(Ok(message)), Some(task_id)) => {
                tasks.cluster.release(key, slot, Some(task_id));
                let worker_id = tasks.cluster.get(key).map(|w| w.name.worker_id.clone()).unwrap_or_default();
                self.take_reply(&mut tasks, task_id, &worker_id, &message, &mut outbox);
            }
            (AioResult::Sleep(_), _) => return,
            (result, Some(task_id)) => {
                // The exchange failed while carrying its task: the connection
                // is broken, whether or not its drop has been reported yet.
                tasks.cluster.release(key, slot, Some(task_id));
                let error = match result {
                    AioResult::Send(Err((_, error))) | AioResult::Recv(Err(error)) => error.to_string(),
                    _ => "unexpected event".to_string(),
                };
                let worker_id = tasks.cluster.disconnected(key).unwrap_or_default();
                let why = format!("the exchange with subworker '{worker_id}' failed: {error}");
                self.send_again(&mut tasks, task_id, &why, &mut outbox);
                self.take_back(&mut tasks, key, &why, &mut outbox);
            }
            (_, None) => {
                // An abandoned exchange ended: the slot is free again.
                tasks.cluster.release(key, slot, None);
            }
        }
        if let Some(next) = tasks.cluster.next_for(key, slot) {
            self.send_to_worker(&mut tasks, key, slot, next);
        }
        drop(tasks);
        outbox.deliver();
    }

    /// Takes a subworker's answer for a task.
    fn take_reply(&self, tasks: &mut Tasks, task_id: TaskId, worker_id: &str, frame: &[u8], outbox: &mut Outbox) {
        match decode::<Reply>(frame, usize::MAX) {
            Ok(Reply::Report(report)) if report.task_id == task_id && report.state.is_final() => {
                let outcome = match (report.result, report.error) {
                    (_, Some(error)) => Err(error),
                    (Some(result), None) => Ok(result),
                    (None, None) => Err(TaskError {
                        kind: FailureKind::Error,
                        message: format!("subworker '{worker_id}' reported neither a result nor an error"),
                    }),
                };
                self.finish(tasks, task_id, outcome, report.started_ms, outbox);
            }
            Ok(Reply::Error(refusal)) if refusal.kind == ErrorKind::ShuttingDown => {
                let why = format!("subworker '{worker_id}' is shutting down");
                self.send_again(tasks, task_id, &why, outbox);
            }
            Ok(Reply::Error(refusal)) => {
                let message = format!("subworker '{worker_id}' refused the task: {}", refusal.message);
                self.fail(tasks, task_id, message, outbox);
            }
            Ok(other) => {
                let message = format!("subworker '{worker_id}' answered with an unexpected message: {other:?}");
                self.fail(tasks, task_id, message, outbox);
            }
            Err(error) => {
                let message = format!("subworker '{worker_id}' sent a reply that does not decode: {error}");
                self.fail(tasks, task_id, message, outbox);
            }
        }
    }

    /// Sends a task taken back from a subworker to another capable worker,
    /// or fails it after [`MAX_DISPATCHES`] sends or when nobody provides it.
    pub(crate) fn send_again(&self, tasks: &mut Tasks, task_id: TaskId, why: &str, outbox: &mut Outbox) {
        let Some(task) = tasks.live.get_mut(&task_id) else { return };
        let report = &mut task.report;
        if report.attempts >= MAX_DISPATCHES {
            let message = format!(
                "task '{}' was sent to subworkers {} times and each went away before finishing it (last: {why}); it may have run partly; submit it again",
                report.task_name, report.attempts
            );
            warn!(%task_id, attempts = report.attempts, "giving up on a task: {why}");
            return self.fail(tasks, task_id, message, outbox);
        }
        report.state = TaskState::Queued;
        let (priority, task_name) = (report.priority, report.task_name.clone());
        warn!(%task_id, task = %task_name, "sending the task again: {why}");
        match tasks.cluster.place(task_id, &task_name) {
            Placement::Slot(key, slot) => self.send_to_worker(tasks, key, slot, task_id),
            Placement::Wait => tasks.cluster.wait(priority, Waiting { task_id, task_name }, true),
            Placement::Nobody => self.run_here_or_fail(tasks, task_id, why, outbox),
        }
    }

    /// For a task no live subworker provides any more: runs it on this
    /// process's threads if a plugin here declares it, or fails it.
    pub(crate) fn run_here_or_fail(&self, tasks: &mut Tasks, task_id: TaskId, why: &str, outbox: &mut Outbox) {
        let Some(live) = tasks.live.get_mut(&task_id) else { return };
        let name = &live.report.task_name;
        match self.registry.get(name) {
            Some(task) if self.pool.threads() > 0 => {
                let job = Job {
                    task_id,
                    decl: task.decl,
                    args: std::mem::take(&mut live.args),
                    cancelled: live.cancelled.clone(),
                };
                if self.pool.push(live.report.priority, job).is_err() {
                    let message = "shut down before the task could run here; submit it again".to_string();
                    self.fail(tasks, task_id, message, outbox);
                }
            }
            _ => {
                let message =
                    format!("no worker provides task '{name}' any more ({why}); submit it again when one does");
                self.fail(tasks, task_id, message, outbox);
            }
        }
    }

    /// Takes back every task a subworker carries (it went silent or away),
    /// sends them elsewhere, and settles waiting tasks nobody provides now.
    pub(crate) fn take_back(&self, tasks: &mut Tasks, key: WorkerKey, why: &str, outbox: &mut Outbox) {
        let carried = tasks.cluster.take_back(key);
        if let Some(worker) = tasks.cluster.get(key) {
            for (slot, _) in &carried {
                worker.link.cancel(*slot);
            }
        }
        for (_, task_id) in carried {
            self.send_again(tasks, task_id, why, outbox);
        }
        self.settle_stranded(tasks, why, outbox);
    }

    /// Waiting tasks that no live subworker provides run here or fail.
    pub(crate) fn settle_stranded(&self, tasks: &mut Tasks, why: &str, outbox: &mut Outbox) {
        for waiting in tasks.cluster.stranded() {
            self.run_here_or_fail(tasks, waiting.task_id, why, outbox);
        }
    }

    /// Gives free subworker slots the waiting tasks they provide.
    pub(crate) fn fill(&self, tasks: &mut Tasks) {
        for (key, slot, task_id) in tasks.cluster.fill() {
            self.send_to_worker(tasks, key, slot, task_id);
        }
    }

    /// Stops taking tasks, lets queued and running ones finish within the
    /// shutdown timeout, and answers every client still waiting.
    pub(crate) fn drain(&self) {
        if !self.accepting.swap(false, Ordering::SeqCst) {
            return;
        }
        let timeout = self.config.shutdown_timeout;
        info!(timeout_secs = timeout.as_secs_f64(), "shutting down: finishing queued and running tasks");
        let deadline = Instant::now() + timeout;
        let unstarted = self.pool.drain(timeout);
        // Tasks on subworkers finish on their own; wait for them too.
        while !self.lock().live.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        for job in &unstarted {
            let message = format!(
                "'{}' shut down before this task started (--shutdown-timeout {} s); submit it again",
                self.config.worker_id,
                timeout.as_secs_f64()
            );
            self.fail(&mut tasks, job.task_id, message, &mut outbox);
        }
        if !unstarted.is_empty() {
            warn!(count = unstarted.len(), "tasks never started before the shutdown deadline");
        }
        let abandoned: Vec<(TaskId, LiveTask)> = tasks.live.drain().collect();
        drop(tasks);
        outbox.deliver();
        for (task_id, task) in abandoned {
            warn!(%task_id, task = %task.report.task_name, "still running at the shutdown deadline; its result is lost");
            task.cancelled.store(true, Ordering::SeqCst);
            let reply = error_reply(
                ErrorKind::ShuttingDown,
                format!(
                    "'{}' shut down while task '{}' ({task_id}) was still running after --shutdown-timeout {} s; its result is lost",
                    self.config.worker_id,
                    task.report.task_name,
                    timeout.as_secs_f64()
                ),
            );
            for waiter in task.waiters {
                waiter.send(&reply);
            }
        }
    }
}

fn new_report(task_id: TaskId, task_name: String, priority: Priority) -> TaskReport {
    TaskReport {
        task_id,
        task_name,
        state: TaskState::Queued,
        priority,
        worker: String::new(),
        attempts: 0,
        created_ms: now_ms(),
        started_ms: None,
        finished_ms: None,
        result: None,
        error: None,
    }
}

/// An error reply.
pub(crate) fn error_reply(kind: ErrorKind, message: String) -> Reply {
    Reply::Error(ErrorReply::new(kind, message))
}
