//! The control plane: accepts tasks on the four priority ports, runs them on
//! its worker threads, caches their results and answers result queries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::std_types::{RResult, RSlice};
use fastworker_plugin_sdk::abi::TaskDecl;
use fastworker_plugin_sdk::TaskContext;
use nng::Message;
use tracing::{debug, info, warn};

use crate::address::BaseAddress;
use crate::cache::{Lookup, ResultCache};
use crate::endpoint::{encode_reply, Handler, ListenError, Listener, Replier};
use crate::plugins::Registry;
use crate::pool::Pool;
use crate::protocol::{
    decode, now_ms, ErrorKind, ErrorReply, Priority, Reply, Request, Submit, TaskError, TaskId, TaskReport, TaskState,
};

/// How a control plane is set up.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Its name in reports and logs.
    pub worker_id: String,
    /// Where its ports start.
    pub base: BaseAddress,
    /// Worker threads for tasks (0: run nothing locally).
    pub concurrency: usize,
    /// Most results kept (0: keep none).
    pub result_cache_size: usize,
    /// Longest a result is kept (`None`: until evicted).
    pub result_cache_ttl: Option<Duration>,
    /// How long a shutdown waits for queued and running tasks.
    pub shutdown_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Requests served at once per port.
    pub contexts_per_port: usize,
}

/// A running control plane.
pub struct ControlPlane {
    state: Arc<State>,
    pool: Arc<Pool<Job>>,
    listeners: Vec<Listener>,
}

struct State {
    config: ControlPlaneConfig,
    registry: Registry,
    live: Mutex<HashMap<TaskId, LiveTask>>,
    cache: Mutex<ResultCache>,
    accepting: AtomicBool,
}

/// A task that has been accepted and has not finished.
struct LiveTask {
    report: TaskReport,
    waiters: Vec<Replier>,
    cancelled: Arc<AtomicBool>,
}

/// What a worker thread needs to run one task.
struct Job {
    task_id: TaskId,
    decl: TaskDecl,
    args: Vec<u8>,
    cancelled: Arc<AtomicBool>,
}

impl ControlPlane {
    /// Binds every port and starts the worker threads.
    pub fn start(config: ControlPlaneConfig, registry: Registry) -> Result<ControlPlane, ListenError> {
        let state = Arc::new(State {
            cache: Mutex::new(ResultCache::new(config.result_cache_size, config.result_cache_ttl)),
            live: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            registry,
            config,
        });
        let runner = state.clone();
        let pool = Arc::new(Pool::start(state.config.concurrency, move |job| runner.run(job)));

        let config = &state.config;
        let mut listeners = Vec::with_capacity(5);
        for priority in Priority::ALL {
            let (state, pool) = (state.clone(), pool.clone());
            let handler: Handler =
                Arc::new(move |replier, message| state.on_task_request(&pool, priority, replier, message));
            listeners.push(Listener::start(
                &config.base.task_address(priority),
                priority_purpose(priority),
                config.contexts_per_port,
                config.max_frame_bytes,
                handler,
            )?);
        }
        let query_state = state.clone();
        let handler: Handler = Arc::new(move |replier, message| query_state.on_result_request(replier, message));
        listeners.push(Listener::start(
            &config.base.result_address(),
            "result queries",
            config.contexts_per_port.min(64),
            config.max_frame_bytes,
            handler,
        )?);
        info!(
            worker_id = %config.worker_id,
            base = %config.base,
            concurrency = config.concurrency,
            tasks = state.registry.len(),
            "control plane serving: CRITICAL {}, HIGH {}, NORMAL {}, LOW {}, results {}",
            config.base.task_address(Priority::Critical),
            config.base.task_address(Priority::High),
            config.base.task_address(Priority::Normal),
            config.base.task_address(Priority::Low),
            config.base.result_address(),
        );
        Ok(ControlPlane { state, pool, listeners })
    }

    /// Drops results older than the TTL; the server calls this every minute.
    pub fn sweep_expired(&self) -> usize {
        self.state.cache.lock().expect("cache lock").sweep()
    }

    /// Stops taking tasks (late submissions get a "shutting down" reply),
    /// lets queued and running tasks finish within the shutdown timeout,
    /// answers every client still waiting, and closes the sockets.
    pub fn shutdown(self) {
        let state = &self.state;
        state.accepting.store(false, Ordering::SeqCst);
        let timeout = state.config.shutdown_timeout;
        info!(timeout_secs = timeout.as_secs_f64(), "shutting down: finishing queued and running tasks");
        let unstarted = self.pool.drain(timeout);
        for job in &unstarted {
            state.finish(
                job.task_id,
                Err(TaskError {
                    kind: fastworker_plugin_sdk::abi::FailureKind::Error,
                    message: format!(
                        "the control plane shut down before this task started (--shutdown-timeout {} s); submit it again",
                        timeout.as_secs_f64()
                    ),
                }),
            );
        }
        let abandoned: Vec<(TaskId, LiveTask)> = state.live.lock().expect("live lock").drain().collect();
        for (task_id, task) in abandoned {
            warn!(%task_id, task = %task.report.task_name, "still running at the shutdown deadline; its result is lost");
            task.cancelled.store(true, Ordering::SeqCst);
            let reply = Reply::Error(ErrorReply::new(
                ErrorKind::ShuttingDown,
                format!(
                    "the control plane shut down while task '{}' ({task_id}) was still running after --shutdown-timeout {} s; its result is lost",
                    task.report.task_name,
                    timeout.as_secs_f64()
                ),
            ));
            for waiter in task.waiters {
                waiter.send(&reply);
            }
        }
        if !unstarted.is_empty() {
            warn!(count = unstarted.len(), "tasks never started before the shutdown deadline");
        }
        // Give the last replies a moment to leave before the sockets close.
        std::thread::sleep(Duration::from_millis(100));
        drop(self.listeners);
        info!("control plane stopped");
    }
}

fn priority_purpose(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical => "CRITICAL task port",
        Priority::High => "HIGH task port",
        Priority::Normal => "NORMAL task port",
        Priority::Low => "LOW task port",
    }
}

impl State {
    fn on_task_request(&self, pool: &Pool<Job>, port: Priority, replier: Replier, message: Message) {
        match decode::<Request>(&message, self.config.max_frame_bytes) {
            Ok(Request::Submit(submit)) => self.submit(pool, submit, replier),
            Ok(Request::Status { .. }) => replier.send(&Reply::Error(ErrorReply::new(
                ErrorKind::WrongEndpoint,
                format!(
                    "status queries go to the result port ({}), not a task port",
                    self.config.base.result_address()
                ),
            ))),
            Err(error) => {
                warn!(port = %port, %error, "refused a frame");
                replier.send(&Reply::Error(error.to_reply()));
            }
        }
    }

    fn on_result_request(&self, replier: Replier, message: Message) {
        let reply = match decode::<Request>(&message, self.config.max_frame_bytes) {
            Ok(Request::Status { task_id }) => self.status(task_id),
            Ok(Request::Submit(_)) => Reply::Error(ErrorReply::new(
                ErrorKind::WrongEndpoint,
                "tasks are submitted to a priority port (base+0 to base+3), not the result port",
            )),
            Err(error) => {
                warn!(port = "results", %error, "refused a frame");
                Reply::Error(error.to_reply())
            }
        };
        replier.send(&reply);
    }

    fn submit(&self, pool: &Pool<Job>, submit: Submit, replier: Replier) {
        if !self.accepting.load(Ordering::SeqCst) {
            return replier.send(&replier_error(
                ErrorKind::ShuttingDown,
                format!("control plane '{}' is shutting down and takes no new tasks; submit to another one or retry after it restarts", self.config.worker_id),
            ));
        }
        let Some(task) = self.registry.get(&submit.task_name) else {
            let known: Vec<&str> = self.registry.tasks().iter().map(|t| t.decl.name.as_str()).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return replier.send(&replier_error(
                ErrorKind::UnknownTask,
                format!("no worker provides task '{}' (tasks here: {known})", submit.task_name),
            ));
        };
        if pool.threads() == 0 {
            return replier.send(&replier_error(
                ErrorKind::NoWorker,
                format!("no worker can run task '{}': this control plane runs with --concurrency 0", submit.task_name),
            ));
        }
        let task_id = submit.task_id;
        let priority = submit.priority.unwrap_or(task.decl.options.priority);
        let mut live = self.live.lock().expect("live lock");
        if let Some(existing) = live.get_mut(&task_id) {
            // The same id again (a client retrying after a lost reply): answer
            // for the task already accepted instead of running it twice.
            if submit.wait {
                existing.waiters.push(replier);
            } else {
                drop(live);
                replier.send(&Reply::Accepted { task_id });
            }
            return;
        }
        if let Lookup::Found(report) = self.cache.lock().expect("cache lock").get(&task_id) {
            drop(live);
            return replier.send(&if submit.wait { Reply::Report(report) } else { Reply::Accepted { task_id } });
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        let (waiters, answer_now) = if submit.wait { (vec![replier], None) } else { (Vec::new(), Some(replier)) };
        live.insert(
            task_id,
            LiveTask {
                report: TaskReport {
                    task_id,
                    task_name: submit.task_name,
                    state: TaskState::Queued,
                    priority,
                    worker: String::new(),
                    attempts: 0,
                    created_ms: now_ms(),
                    started_ms: None,
                    finished_ms: None,
                    result: None,
                    error: None,
                },
                waiters,
                cancelled: cancelled.clone(),
            },
        );
        drop(live);
        let job = Job { task_id, decl: task.decl, args: submit.args, cancelled };
        if pool.push(priority, job).is_err() {
            // Shutdown began between the check above and now.
            let task = self.live.lock().expect("live lock").remove(&task_id);
            let reply = replier_error(
                ErrorKind::ShuttingDown,
                "the control plane is shutting down and takes no new tasks".into(),
            );
            for waiter in task.into_iter().flat_map(|t| t.waiters).chain(answer_now) {
                waiter.send(&reply);
            }
            return;
        }
        debug!(%task_id, %priority, "task queued");
        if let Some(replier) = answer_now {
            replier.send(&Reply::Accepted { task_id });
        }
    }

    fn status(&self, task_id: TaskId) -> Reply {
        if let Some(task) = self.live.lock().expect("live lock").get(&task_id) {
            return Reply::Report(task.report.clone());
        }
        let config = &self.config;
        match self.cache.lock().expect("cache lock").get(&task_id) {
            Lookup::Found(report) => Reply::Report(report),
            Lookup::Expired => replier_error(
                ErrorKind::ExpiredTaskId,
                format!(
                    "task {task_id} finished, but its result expired: results are kept {} (--result-cache-ttl)",
                    config.result_cache_ttl.map_or("forever".to_string(), |ttl| format!("{} s", ttl.as_secs()))
                ),
            ),
            Lookup::Evicted => replier_error(
                ErrorKind::ExpiredTaskId,
                format!(
                    "task {task_id} finished, but its result was evicted: the cache keeps the {} most recently used results (--result-cache-size)",
                    config.result_cache_size
                ),
            ),
            Lookup::Unknown => replier_error(
                ErrorKind::UnknownTaskId,
                format!("task {task_id} is unknown to control plane '{}': check the id and the --address", config.worker_id),
            ),
        }
    }

    fn run(&self, job: Job) {
        let started = now_ms();
        let attempt = {
            let mut live = self.live.lock().expect("live lock");
            let Some(task) = live.get_mut(&job.task_id) else { return };
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
        self.finish(job.task_id, outcome);
    }

    /// Records a task's outcome, caches it and answers everyone waiting.
    fn finish(&self, task_id: TaskId, outcome: Result<Vec<u8>, TaskError>) {
        let (message, waiters) = {
            let mut live = self.live.lock().expect("live lock");
            let Some(task) = live.remove(&task_id) else { return };
            let mut report = task.report;
            report.finished_ms = Some(now_ms());
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
            let message = (!task.waiters.is_empty()).then(|| encode_reply(&reply));
            let Reply::Report(report) = reply else { unreachable!() };
            self.cache.lock().expect("cache lock").insert(report);
            (message, task.waiters)
        };
        if let Some(message) = message {
            for waiter in waiters {
                waiter.send_message(message.clone());
            }
        }
    }
}

fn replier_error(kind: ErrorKind, message: String) -> Reply {
    Reply::Error(ErrorReply::new(kind, message))
}
