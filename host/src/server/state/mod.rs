//! What a control plane (or subworker) knows and does about tasks: the live
//! ones, where each runs (its own worker threads or a subworker's slot),
//! their results, and the clients waiting for them.
//!
//! One mutex guards the live tasks and the cluster together, so a task and
//! the slot carrying it never disagree. NNG calls made under it only queue
//! work (sends, receives, cancels); replies to clients go out after it is
//! released, through an [`Outbox`]. Locks are always taken in this order:
//! the schedules', then this one, then the result cache's or the pool's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use abi_stable::std_types::{RResult, RSlice};
use fastworker_plugin_sdk::abi::{FailureKind, TaskDecl};
use fastworker_plugin_sdk::TaskContext;
use nng::{AioResult, Message};
use rustc_hash::FxHashMap;
use tracing::{debug, info, warn};

use crate::cluster::link::{Channel, Link};
use crate::cluster::routing::{Cluster, Placement, Slot, Waiting, WorkerKey};
use crate::cluster::task_limits::TaskLimits;
use crate::plugins::Registry;
use crate::server::cache::{args_digest, Lookup, ResultCache};
use crate::server::callbacks::Callbacks;
use crate::server::collector::Collector;
use crate::server::config::ControlPlaneConfig;
use crate::server::endpoint::{encode_reply, Replier};
use crate::server::journal::Journal;
use crate::server::limits::{millis, Bound, Refusals};
use crate::server::monitor::{Monitor, TaskSummary};
use crate::server::offered_schemas::{Offer, OfferedSchemas};
use crate::server::peer_log::PeerLog;
use crate::server::pool::Pool;
use crate::server::scheduler::{PeriodicRuns, Scheduler};
use crate::server::timers::{Alarm, Timers};
use crate::wire::auth::Role;
use crate::wire::protocol::{
    decode, encode_message, now_ms, Callback, ClusterStatus, ErrorKind, ErrorReply, Forwarded, Notice, Priority, Reply,
    Reported, Request, RetryPolicy, ScheduleStatus, Submit, TaskError, TaskId, TaskReport, TaskState,
};

mod delivery;
mod durable;
mod limited;
mod workflow_views;
mod workflows;

pub(crate) use workflow_views::WorkflowSummary;

use delivery::Dispatched;
pub(crate) use delivery::{DeliveryCounters, StartedRuns, START_REPORT_DELAY};

/// How many times a task may be lost with a subworker that went away
/// before the control plane gives up on it.
pub(crate) const MAX_DISPATCHES: u32 = 3;

/// The longest pause between retries unless a caller sets one.
const DEFAULT_MAX_RETRY_DELAY_MS: u64 = 5 * 60 * 1000;

/// Each pause between retries is this many times the previous one unless a
/// caller says otherwise.
const DEFAULT_RETRY_FACTOR: f64 = 2.0;

/// Everything a serving process shares between its ports and threads.
pub(crate) struct State {
    pub(crate) config: ControlPlaneConfig,
    pub(crate) registry: Registry,
    tasks: Mutex<Tasks>,
    cache: Mutex<ResultCache>,
    accepting: AtomicBool,
    /// What the dashboard and `/metrics` show, fed by the state changes here.
    pub(crate) monitor: Monitor,
    pool: Pool<Job>,
    timers: Timers,
    callbacks: Callbacks,
    /// Periodic tasks, on a control plane (a subworker's run when its
    /// control plane sends them).
    pub(crate) scheduler: Option<Scheduler>,
    /// What the limits refused or dropped, for `/metrics`.
    pub(crate) refusals: Arc<Refusals>,
    /// Rate-limited lines about peers' refused requests.
    pub(crate) peer_log: Arc<PeerLog>,
    /// When this process started serving (the restart window runs from it).
    started_at: Instant,
    /// Revoked reports, hand-backs and expired leases, for `/metrics`.
    pub(crate) delivery: DeliveryCounters,
    /// On a subworker: runs started, to report to the control plane.
    pub(crate) started_runs: Arc<StartedRuns>,
    /// On a subworker: the outcomes of dispatched runs, until collected.
    pub(crate) collector: Arc<Collector>,
    /// The durable mode's store (`--state-dir`); `None` in memory mode.
    journal: Option<Journal>,
    /// Schemas of tasks only subworkers provide, for the HTTP API's check.
    offered_schemas: OfferedSchemas,
}

/// The live tasks and the subworkers, under one lock.
pub(crate) struct Tasks {
    /// Keyed by UUIDs the clients chose: a fast hash suffices.
    live: FxHashMap<TaskId, LiveTask>,
    /// Bytes of arguments the live tasks hold (`--max-queued-bytes`).
    live_bytes: u64,
    pub(crate) cluster: Cluster<Link>,
    /// The last lease given to a run sent to a subworker.
    next_lease: u64,
    /// Workflows, whose members are tasks here (`state/workflows.rs`).
    workflows: crate::workflow::registry::Workflows<Replier>,
    /// The cluster-wide limits per task name (a control plane's; empty on
    /// a subworker, which does not enforce them).
    pub(crate) task_limits: TaskLimits,
}

/// A task that has been accepted and has not ended.
struct LiveTask {
    report: TaskReport,
    waiters: Vec<Replier>,
    cancelled: Arc<AtomicBool>,
    /// The JSON arguments, kept for retries and for sending again.
    args: Arc<Vec<u8>>,
    plan: Plan,
    /// Runs that failed so far (each may earn a retry).
    failures: u32,
    /// Times a subworker went away while running it.
    losses: u32,
    /// The key that submitted it, when ports authenticate.
    owner: Option<[u8; 8]>,
    /// On a control plane: its current run on a subworker, under a lease.
    dispatch: Option<Dispatched>,
    /// On a subworker: the lease its control plane sent it under.
    lease: Option<u64>,
}

/// Who asks for something that only some may do (cancelling).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    /// The role of the key that sealed the request (`None`: no keys here).
    pub(crate) role: Option<Role>,
    /// That key's id.
    pub(crate) key_id: Option<[u8; 8]>,
}

impl Caller {
    /// The operator at the dashboard (which has its own authorization).
    pub(crate) const OPERATOR: Caller = Caller { role: Some(Role::Operator), key_id: None };

    /// The sender of a request.
    pub(crate) fn of(replier: &Replier) -> Caller {
        Caller { role: replier.role(), key_id: replier.key_id() }
    }
}

/// The refusal of a task id already used for another task.
fn id_conflict(task_id: TaskId, task_name: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::IdConflict,
        format!(
            "task id {task_id} is already used by a task '{task_name}' with other arguments: choose a fresh id (ids are not secrets; resubmitting the same task under its id is safe)"
        ),
    )
}

/// How a task runs: its timeout, its retries, and who hears of its end.
struct Plan {
    timeout_ms: u64,
    retry: RetryPolicy,
    callback: Option<Callback>,
}

/// A task's declared defaults, from the plugin here or a subworker's offer.
struct Declared {
    priority: Priority,
    timeout_ms: u64,
    max_retries: u32,
    retry_delay_ms: u64,
}

impl Declared {
    fn of(task: &crate::plugins::LoadedTask) -> Declared {
        let options = &task.decl.options;
        Declared {
            priority: options.priority,
            timeout_ms: options.timeout_ms,
            max_retries: options.max_retries,
            retry_delay_ms: options.retry_delay_ms,
        }
    }
}

/// Whether `bytes` are one JSON value.
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// What a worker thread needs to run one task.
struct Job {
    task_id: TaskId,
    decl: TaskDecl,
    args: Arc<Vec<u8>>,
    cancelled: Arc<AtomicBool>,
}

/// How a task ended.
enum Ending {
    Succeeded(Vec<u8>),
    Failed(TaskError),
    TimedOut(TaskError),
    Cancelled(TaskError),
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
    /// Builds the state and starts the worker, timer and callback threads.
    pub(crate) fn new(config: ControlPlaneConfig, registry: Registry, journal: Option<Journal>) -> Arc<State> {
        Arc::new_cyclic(|me: &Weak<State>| {
            let runner = me.clone();
            let pool = Pool::start(config.concurrency, move |job| {
                if let Some(state) = runner.upgrade() {
                    state.run(job);
                }
            });
            let ringer = me.clone();
            let timers = Timers::start(move |alarms| {
                if let Some(state) = ringer.upgrade() {
                    state.on_alarms(alarms);
                }
            });
            let scheduler = config.management.is_some().then(|| {
                let limits = &config.limits;
                let scheduler = Scheduler::start(
                    me.clone() as Weak<dyn PeriodicRuns>,
                    limits.max_schedules,
                    limits.min_schedule_period,
                );
                for schedule in registry.schedules() {
                    // The command line checked these against the limits.
                    if let Err(error) = scheduler.add(schedule.clone()) {
                        warn!("{error}");
                    }
                }
                scheduler
            });
            let refusals = Arc::<Refusals>::default();
            let callbacks = Callbacks::start(&config.limits, refusals.clone());
            let mut cache =
                ResultCache::new(config.result_cache_size, config.limits.max_cached_bytes, config.result_cache_ttl);
            if journal.is_some() {
                cache.track_forgotten();
            }
            State {
                scheduler,
                journal,
                offered_schemas: OfferedSchemas::new(config.limits.max_offered_tasks),
                cache: Mutex::new(cache),
                tasks: Mutex::new(Tasks {
                    live: FxHashMap::default(),
                    live_bytes: 0,
                    cluster: Cluster::default(),
                    next_lease: 0,
                    workflows: crate::workflow::registry::Workflows::new(
                        config.result_cache_size,
                        config.result_cache_ttl.map(millis),
                    ),
                    task_limits: limited::task_limits(&config, &registry),
                }),
                accepting: AtomicBool::new(true),
                monitor: Monitor::default(),
                registry,
                collector: Arc::new(Collector::new(config.limits.max_frame_bytes)),
                config,
                pool,
                timers,
                callbacks,
                peer_log: Arc::new(PeerLog::new(refusals.clone())),
                refusals,
                started_at: Instant::now(),
                delivery: DeliveryCounters::default(),
                started_runs: Arc::default(),
            }
        })
    }

    /// The live tasks and the cluster.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().expect("task lock")
    }

    /// Tasks accepted and not ended, for heartbeats.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().live.len()
    }

    /// The subworkers as `fastworker workers` shows them.
    pub(crate) fn cluster_status(&self) -> ClusterStatus {
        self.lock().cluster.status()
    }

    /// Drops results older than the TTL.
    pub(crate) fn sweep_expired(&self) -> usize {
        let mut cache = self.cache.lock().expect("cache lock");
        let swept = cache.sweep();
        self.forget_dropped(&mut cache);
        swept
    }

    /// Answers a submission: at once with the task's id, or, for a client
    /// that waits, when the task ends.
    pub(crate) fn submit(&self, submit: Submit, replier: Replier) {
        let owner = replier.key_id();
        self.submit_leased(submit, None, owner, replier)
    }

    /// As [`State::submit`], for a run a control plane sent under `lease`
    /// with the key `owner`.
    pub(crate) fn submit_leased(&self, submit: Submit, lease: Option<u64>, owner: Option<[u8; 8]>, replier: Replier) {
        let (waiter, answer_now) = if submit.wait { (Some(replier), None) } else { (None, Some(replier)) };
        match self.accept(submit, waiter, owner, lease) {
            Ok(task_id) => {
                if let Some(replier) = answer_now {
                    self.acknowledge(replier, Reply::Accepted { task_id });
                }
            }
            Err((refusal, waiter)) => {
                let reply = Reply::Error(refusal);
                waiter.into_iter().chain(answer_now).for_each(|replier| replier.send(&reply));
            }
        }
    }

    /// Whether a task is accepted and not ended.
    pub(crate) fn is_live(&self, task_id: TaskId) -> bool {
        self.lock().live.contains_key(&task_id)
    }

    /// The periodic tasks and their records.
    pub(crate) fn schedule_statuses(&self) -> Vec<ScheduleStatus> {
        let Some(scheduler) = &self.scheduler else { return Vec::new() };
        scheduler.statuses(|task_id| match self.status(task_id) {
            Reply::Report(report) => Some(report.state.as_str().to_string()),
            _ => None,
        })
    }

    /// Pauses or resumes a periodic task.
    pub(crate) fn pause_schedule(&self, task_name: &str, paused: bool) -> Reply {
        match &self.scheduler {
            Some(scheduler) if scheduler.set_paused(task_name, paused) => Reply::Done,
            _ => error_reply(
                ErrorKind::UnknownSchedule,
                format!("no periodic task '{task_name}' here: `fastworker schedules` lists them"),
            ),
        }
    }

    /// Accepts every submission of a batch; one outcome each, in order.
    pub(crate) fn submit_batch(&self, submits: Vec<Submit>, replier: Replier) {
        let owner = replier.key_id();
        let outcomes = submits
            .into_iter()
            .map(|submit| {
                self.accept(Submit { wait: false, ..submit }, None, owner, None).map_err(|(refusal, _)| refusal)
            })
            .collect();
        self.acknowledge(replier, Reply::Batch(outcomes));
    }

    /// Takes a task in: runs it here, sends it to a subworker, queues it for
    /// one, or schedules it for later. `waiter` is answered when it ends.
    /// `owner` is the key that submitted it (it may cancel it); `lease`,
    /// on a subworker, the lease its control plane sent it under.
    // A refusal hands the waiter back to be answered: a cold path, moved once.
    #[allow(clippy::result_large_err)]
    fn accept(
        &self,
        submit: Submit,
        waiter: Option<Replier>,
        owner: Option<[u8; 8]>,
        lease: Option<u64>,
    ) -> Result<TaskId, (ErrorReply, Option<Replier>)> {
        if !self.accepting.load(Ordering::SeqCst) {
            let message = format!(
                "'{}' is shutting down and takes no new tasks; submit to another one or retry after it restarts",
                self.config.worker_id
            );
            // A run sent under a lease is handed back: it never started here.
            let kind = if lease.is_some() { ErrorKind::HandedBack } else { ErrorKind::ShuttingDown };
            return Err((ErrorReply::new(kind, message), waiter));
        }
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let accepted = self.admit(&mut tasks, submit, waiter, owner, lease, &mut outbox);
        drop(tasks);
        outbox.deliver();
        accepted
    }

    /// [`State::accept`] under the task lock: replies go to `outbox`.
    #[allow(clippy::result_large_err)]
    fn admit(
        &self,
        tasks: &mut Tasks,
        submit: Submit,
        waiter: Option<Replier>,
        owner: Option<[u8; 8]>,
        lease: Option<u64>,
        outbox: &mut Outbox,
    ) -> Result<TaskId, (ErrorReply, Option<Replier>)> {
        let task_id = submit.task_id;
        if let Some(existing) = tasks.live.get_mut(&task_id) {
            if existing.report.task_name != submit.task_name || *existing.args != submit.args {
                return Err((id_conflict(task_id, &existing.report.task_name), waiter));
            }
            // The same id again (a client retrying after a lost reply): answer
            // for the task already accepted instead of running it twice.
            existing.waiters.extend(waiter);
            return Ok(task_id);
        }
        let mut cache = self.cache.lock().expect("cache lock");
        if let Lookup::Found(report) = cache.get(&task_id) {
            let same = report.task_name == submit.task_name
                && cache.args_digest_of(&task_id) == Some(args_digest(&submit.args));
            drop(cache);
            if !same {
                return Err((id_conflict(task_id, &report.task_name), waiter));
            }
            if let Some(waiter) = waiter {
                outbox.0.push((vec![waiter], encode_reply(&Reply::Report(report))));
            }
            return Ok(task_id);
        }
        drop(cache);
        if let Err(refusal) = self.within_limits(tasks, &submit).and_then(|()| self.journal_has_room()) {
            return Err((refusal, waiter));
        }
        let declared = match (tasks.cluster.provider(&submit.task_name), self.registry.get(&submit.task_name)) {
            // What this control plane's own plugin declares wins over what
            // a subworker offers for the same task.
            (Some(_), Some(task)) => Declared::of(task),
            (Some(offered), None) => Declared {
                priority: offered.priority,
                timeout_ms: offered.timeout_ms,
                max_retries: offered.max_retries.min(self.config.limits.max_retries),
                retry_delay_ms: offered.retry_delay_ms.min(millis(self.config.limits.max_countdown)),
            },
            (None, Some(_)) if self.pool.threads() == 0 => {
                let message = format!(
                    "no worker can run task '{}': this control plane runs with --concurrency 0 and no live subworker provides it",
                    submit.task_name
                );
                return Err((ErrorReply::new(ErrorKind::NoWorker, message), waiter));
            }
            (None, Some(task)) => Declared::of(task),
            (None, None) => {
                if let Some(refusal) = self.restart_window_refusal(&submit.task_name) {
                    return Err((refusal, waiter));
                }
                let message = self.nobody_provides(tasks, &submit.task_name);
                return Err((ErrorReply::new(ErrorKind::UnknownTask, message), waiter));
            }
        };
        let priority = submit.priority.unwrap_or(declared.priority);
        let plan = Plan {
            timeout_ms: submit.timeout_ms.unwrap_or(declared.timeout_ms),
            retry: submit.retry.unwrap_or(RetryPolicy {
                max_retries: declared.max_retries,
                delay_ms: declared.retry_delay_ms,
                factor: DEFAULT_RETRY_FACTOR,
                max_delay_ms: DEFAULT_MAX_RETRY_DELAY_MS,
            }),
            callback: submit.callback,
        };
        let mut report = new_report(task_id, submit.task_name, priority);
        // A retry forwarded by a control plane continues its run count.
        report.attempts = submit.attempt.map_or(0, |attempt| attempt.saturating_sub(1));
        let later = submit.not_before_ms.filter(|&at| at > report.created_ms);
        if later.is_some() {
            report.state = TaskState::Scheduled;
        }
        let task = LiveTask {
            report,
            waiters: waiter.into_iter().collect(),
            cancelled: Arc::new(AtomicBool::new(false)),
            args: Arc::new(submit.args),
            plan,
            failures: 0,
            losses: 0,
            owner,
            dispatch: None,
            lease,
        };
        self.monitor.accepted(&task.report);
        self.record_accepted(task_id, &task, later);
        tasks.live_bytes += task.args.len() as u64;
        tasks.live.insert(task_id, task);
        match later {
            Some(at) => {
                self.timers.set(at, Alarm::Start(task_id));
                debug!(%task_id, at_ms = at, "task scheduled");
            }
            None => self.start(tasks, task_id, false, "", outbox),
        }
        Ok(task_id)
    }

    /// Sends a live task on its way: to a subworker's free slot, into the
    /// line for one (`first`: ahead of its priority's other waiting tasks),
    /// or to this process's threads.
    fn start(&self, tasks: &mut Tasks, task_id: TaskId, first: bool, why: &str, outbox: &mut Outbox) {
        let Some(task) = tasks.live.get_mut(&task_id) else { return };
        if task.report.state != TaskState::Queued {
            task.report.state = TaskState::Queued;
            self.monitor.changed(&task.report);
        }
        let Tasks { live, cluster, task_limits, .. } = tasks;
        let report = &live[&task_id].report;
        // A run sent again counts again, against the rate too.
        task_limits.settle(&report.task_name, task_id);
        let placement = if cluster.is_empty() {
            Placement::Nobody
        } else {
            cluster.place_with(task_id, &report.task_name, &mut limited::Gate::new(task_limits))
        };
        match placement {
            Placement::Slot(key, slot) => self.send_to_worker(tasks, key, slot, task_id, outbox),
            Placement::Held if self.registry.get(&report.task_name).is_some() && self.pool.threads() > 0 => {
                self.run_here_or_fail(tasks, task_id, why, outbox)
            }
            Placement::Wait | Placement::Held | Placement::Limited => {
                let priority = report.priority;
                let waiting = Waiting { task_id, task_name: report.task_name.clone() };
                if placement == Placement::Limited {
                    task_limits.note_held(&waiting.task_name);
                    debug!(%task_id, %priority, "task held back by its task limit");
                } else {
                    debug!(%task_id, %priority, "task waits for a subworker slot");
                }
                cluster.wait(priority, waiting, first);
                if placement == Placement::Limited {
                    self.arm_task_limits(task_limits);
                }
            }
            Placement::Nobody => self.run_here_or_fail(tasks, task_id, why, outbox),
        }
    }

    /// The `Busy` refusal of something `bound` does not let in now (counted
    /// for `/metrics`): `what` says what is full.
    pub(super) fn busy(&self, bound: Bound, what: &str) -> ErrorReply {
        self.refusals.count(bound);
        let limits = &self.config.limits;
        let message = format!(
            "'{}' is busy: {what} ({} {}); retry later",
            self.config.worker_id,
            bound.flag(),
            bound.value(limits)
        );
        ErrorReply::new(ErrorKind::Busy, message)
    }

    /// Refuses a submission the limits do not allow: `Busy` when a queue is
    /// full (retry later), `BadRequest` when it asks for too much.
    fn within_limits(&self, tasks: &Tasks, submit: &Submit) -> Result<(), ErrorReply> {
        let limits = &self.config.limits;
        let busy = |bound: Bound, what: String| self.busy(bound, &what);
        if tasks.live.len() >= limits.max_queued_tasks {
            return Err(busy(Bound::QueuedTasks, format!("{} tasks are queued or running", tasks.live.len())));
        }
        let bytes = tasks.live_bytes.saturating_add(submit.args.len() as u64);
        if bytes > limits.max_queued_bytes {
            return Err(busy(Bound::QueuedBytes, format!("queued tasks hold {} bytes of arguments", tasks.live_bytes)));
        }
        let bad = |message: String| Err(ErrorReply::new(ErrorKind::BadRequest, message));
        if let Some(callback) = &submit.callback {
            if let Err(message) = crate::server::callbacks::check_address(&callback.address, limits) {
                return bad(message);
            }
        }
        let furthest = now_ms().saturating_add(millis(limits.max_countdown));
        if submit.not_before_ms.is_some_and(|at| at > furthest) {
            return bad(format!(
                "a countdown or ETA may be at most {} s ahead here (--max-countdown)",
                limits.max_countdown.as_secs()
            ));
        }
        if let Some(retry) = &submit.retry {
            if retry.max_retries > limits.max_retries {
                return bad(format!(
                    "{} retries asked for; at most {} are allowed here (--max-retries)",
                    retry.max_retries, limits.max_retries
                ));
            }
            if !retry.factor.is_finite() || retry.factor < 0.0 {
                return bad(format!("retry factor {} is not a finite number of 0 or more", retry.factor));
            }
            if retry.delay_ms.max(retry.max_delay_ms) > millis(limits.max_countdown) {
                return bad(format!(
                    "a pause between retries may be at most {} s here (--max-countdown)",
                    limits.max_countdown.as_secs()
                ));
            }
        }
        Ok(())
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
        let lookup = self.cache.lock().expect("cache lock").get(&task_id);
        self.monitor.cache_lookup(matches!(lookup, Lookup::Found(_)));
        match lookup {
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
        let (attempt, timeout_ms) = {
            let mut tasks = self.lock();
            let Some(task) = tasks.live.get_mut(&job.task_id) else { return };
            if task.report.state != TaskState::Queued {
                return;
            }
            let report = &mut task.report;
            report.state = TaskState::Running;
            report.started_ms = Some(started);
            report.attempts = report.attempts.saturating_add(1);
            report.worker.clone_from(&self.config.worker_id);
            self.monitor.changed(report);
            self.report_started(job.task_id, task.lease);
            self.record_progress(job.task_id, task, None);
            (task.report.attempts, task.plan.timeout_ms)
        };
        let deadline = if timeout_ms == 0 { 0 } else { started.saturating_add(timeout_ms) };
        if deadline > 0 {
            self.timers.set(deadline, Alarm::Deadline(job.task_id, attempt));
        }
        let context = TaskContext::new(&job.cancelled, deadline, attempt, *job.task_id.as_bytes());
        let outcome = match (job.decl.call)(&context, RSlice::from_slice(&job.args)) {
            RResult::ROk(bytes) => Ok(bytes.into_vec()),
            RResult::RErr(failure) => Err(TaskError { kind: failure.kind, message: failure.message.into_string() }),
        };
        if deadline > 0 {
            // The run ended: its timeout guards nothing any more.
            self.timers.cancel(Alarm::Deadline(job.task_id, attempt));
        }
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        self.complete(&mut tasks, job.task_id, attempt, outcome, None, &mut outbox);
        // A running place freed here goes to a run held back for these threads.
        if tasks.task_limits.holds_local() {
            self.release_held(&mut tasks, &mut outbox);
        }
        drop(tasks);
        outbox.deliver();
    }

    /// Takes the outcome of run `attempt`: the task succeeds, fails, or
    /// waits for a retry. Outcomes of runs that were timed out or cancelled
    /// meanwhile are dropped.
    fn complete(
        &self,
        tasks: &mut Tasks,
        task_id: TaskId,
        attempt: u32,
        outcome: Result<Vec<u8>, TaskError>,
        started_ms: Option<u64>,
        outbox: &mut Outbox,
    ) {
        let Some(task) = tasks.live.get_mut(&task_id) else { return };
        if task.report.state != TaskState::Running || task.report.attempts != attempt {
            return;
        }
        match outcome {
            Ok(result) => self.finish(tasks, task_id, Ending::Succeeded(result), started_ms, outbox),
            Err(error) if error.kind != FailureKind::BadArguments && task.failures < task.plan.retry.max_retries => {
                task.failures += 1;
                let delay = task.plan.retry.delay_after(task.failures);
                debug!(%task_id, attempt, delay_ms = delay, error = %error.message, "run failed; retrying after the backoff");
                task.report.state = TaskState::Retrying;
                task.report.error = Some(error);
                tasks.task_limits.settle(&task.report.task_name, task_id);
                self.arm_task_limits(&mut tasks.task_limits);
                self.monitor.retrying(&task.report);
                let due = now_ms().saturating_add(delay);
                self.record_progress(task_id, task, Some(due));
                self.timers.set(due, Alarm::Start(task_id));
            }
            Err(error) => {
                debug!(%task_id, attempt, error = %error.message, "task failed");
                self.finish(tasks, task_id, Ending::Failed(error), started_ms, outbox);
            }
        }
    }

    /// Records how a task ended, caches its report, queues the replies to
    /// everyone waiting and its callback notice.
    fn finish(&self, tasks: &mut Tasks, task_id: TaskId, ending: Ending, started_ms: Option<u64>, outbox: &mut Outbox) {
        let Some(task) = tasks.live.remove(&task_id) else { return };
        tasks.live_bytes -= task.args.len() as u64;
        tasks.task_limits.settle(&task.report.task_name, task_id);
        self.arm_task_limits(&mut tasks.task_limits);
        // Its lease's alarm guards nothing any more.
        if let Some(dispatch) = &task.dispatch {
            self.timers.cancel(Alarm::Lease(task_id, dispatch.lease));
        }
        let mut report = task.report;
        report.finished_ms = Some(now_ms());
        if started_ms.is_some() {
            report.started_ms = started_ms;
        }
        let (state, result, error) = match ending {
            Ending::Succeeded(result) => (TaskState::Succeeded, Some(result), None),
            Ending::Failed(error) => (TaskState::Failed, None, Some(error)),
            Ending::TimedOut(error) => (TaskState::TimedOut, None, Some(error)),
            Ending::Cancelled(error) => (TaskState::Cancelled, None, Some(error)),
        };
        (report.state, report.result, report.error) = (state, result, error);
        self.monitor.finished(&report, &task.args);
        if let Some(callback) = task.plan.callback {
            self.callbacks.push(callback.address, Notice { report: report.clone(), data: callback.data });
        }
        let digest = args_digest(&task.args);
        self.record_finished(&report, digest);
        self.member_ended(tasks, &report, outbox);
        let reply = Reply::Report(report);
        if !task.waiters.is_empty() {
            self.answer_final(task.waiters, encode_reply(&reply), outbox);
        }
        let Reply::Report(report) = reply else { unreachable!() };
        let mut cache = self.cache.lock().expect("cache lock");
        cache.insert(report, digest);
        self.forget_dropped(&mut cache);
    }

    fn fail(&self, tasks: &mut Tasks, task_id: TaskId, message: String, outbox: &mut Outbox) {
        let error = TaskError { kind: FailureKind::Error, message };
        self.finish(tasks, task_id, Ending::Failed(error), None, outbox);
    }

    /// Countdowns, ETAs or backoffs are over, or runs reached their timeout.
    fn on_alarms(&self, alarms: Vec<Alarm>) {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        for alarm in alarms {
            match alarm {
                Alarm::Start(task_id) => {
                    let waiting = tasks.live.get(&task_id).map(|t| t.report.state);
                    if matches!(waiting, Some(TaskState::Scheduled | TaskState::Retrying)) {
                        self.start(&mut tasks, task_id, false, "", &mut outbox);
                    }
                }
                Alarm::Deadline(task_id, attempt) => self.time_out(&mut tasks, task_id, attempt, &mut outbox),
                Alarm::Lease(task_id, lease) => self.lease_due(&mut tasks, task_id, lease, &mut outbox),
                Alarm::TaskLimits => {
                    tasks.task_limits.rang();
                    self.release_held(&mut tasks, &mut outbox);
                }
            }
        }
        drop(tasks);
        outbox.deliver();
    }

    /// Ends run `attempt` of a task as timed out, if it is still running.
    fn time_out(&self, tasks: &mut Tasks, task_id: TaskId, attempt: u32, outbox: &mut Outbox) {
        let Some(task) = tasks.live.get(&task_id) else { return };
        if task.report.state != TaskState::Running || task.report.attempts != attempt {
            return;
        }
        task.cancelled.store(true, Ordering::SeqCst);
        let report = &task.report;
        let message = format!(
            "task '{}' ran past its timeout of {} s (run {attempt}, on '{}'); it was asked to stop through its TaskContext",
            report.task_name,
            task.plan.timeout_ms as f64 / 1000.0,
            report.worker
        );
        warn!(%task_id, "{message}");
        let error = TaskError { kind: FailureKind::Error, message };
        self.finish(tasks, task_id, Ending::TimedOut(error), None, outbox);
    }

    /// Cancels a task: one that has not started never runs; a running one
    /// has its cancellation flag set (on the subworker running it too).
    pub(crate) fn cancel(&self, task_id: TaskId, caller: Caller) -> Reply {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        if let (Some(Role::Client), Some(task)) = (caller.role, tasks.live.get(&task_id)) {
            if task.owner != caller.key_id {
                return error_reply(
                    ErrorKind::Forbidden,
                    format!(
                        "task {task_id} was submitted with another key: only that key or the operator's may cancel it"
                    ),
                );
            }
        }
        if !tasks.live.contains_key(&task_id) {
            drop(tasks);
            return match self.cache.lock().expect("cache lock").get(&task_id) {
                Lookup::Found(report) => error_reply(
                    ErrorKind::AlreadyFinished,
                    format!("task {task_id} already ended ({}); nothing to cancel", report.state.as_str()),
                ),
                Lookup::Expired | Lookup::Evicted => error_reply(
                    ErrorKind::AlreadyFinished,
                    format!("task {task_id} already ended (its result is no longer kept); nothing to cancel"),
                ),
                Lookup::Unknown => error_reply(
                    ErrorKind::UnknownTaskId,
                    format!("task {task_id} is unknown to '{}': check the id and the --address", self.config.worker_id),
                ),
            };
        }
        // Cancelling a workflow's member cancels its workflow.
        self.cancel_member_workflow(&mut tasks, task_id, &mut outbox);
        let running = self.cancel_live(&mut tasks, task_id, &mut outbox);
        drop(tasks);
        // The replies the workflow's end queued go out on both paths.
        outbox.deliver();
        match running {
            Some(report) => Reply::Report(report),
            None => self.status(task_id),
        }
    }

    /// Cancels a live task under the lock: one not started ends at once
    /// (`None`); a running one has its flag set and is reported as it is.
    fn cancel_live(&self, tasks: &mut Tasks, task_id: TaskId, outbox: &mut Outbox) -> Option<TaskReport> {
        let task = tasks.live.get(&task_id)?;
        task.cancelled.store(true, Ordering::SeqCst);
        if task.report.state == TaskState::Running {
            let report = task.report.clone();
            let worker = tasks.cluster.workers().find(|w| w.name.worker_id == report.worker);
            if let Some(worker) = worker {
                worker.link.note(encode_message(&Request::Cancel { task_id }));
            }
            return Some(report);
        }
        let error = TaskError { kind: FailureKind::Error, message: "cancelled by a client before it ran".into() };
        tasks.cluster.forget_waiting(task_id);
        self.finish(tasks, task_id, Ending::Cancelled(error), None, outbox);
        None
    }

    /// Sends a live task into a subworker slot that [`Cluster`] reserved
    /// for it: with the runs placed together, in one frame.
    fn send_to_worker(&self, tasks: &mut Tasks, key: WorkerKey, slot: usize, task_id: TaskId, outbox: &mut Outbox) {
        self.queue_for_worker(tasks, key, slot, task_id);
        self.flush_worker(tasks, key, outbox);
    }

    /// Puts a run into a worker's next dispatch frame (see
    /// [`State::flush_worker`]), into a slot [`Cluster`] reserved for it.
    fn queue_for_worker(&self, tasks: &mut Tasks, key: WorkerKey, slot: usize, task_id: TaskId) {
        let lease = State::next_lease(tasks);
        let Tasks { live, cluster, .. } = tasks;
        let (Some(worker), Some(task)) = (cluster.get_mut(key), live.get_mut(&task_id)) else {
            cluster.release(key, slot, Some(task_id));
            return;
        };
        let report = &mut task.report;
        // The control plane bounds every run it forwards, whatever the
        // subworker offered: a worker that never answers cannot keep a task.
        let bound_ms = millis(self.config.limits.max_subworker_run);
        let timeout_ms = match task.plan.timeout_ms {
            0 => bound_ms,
            declared => declared.min(bound_ms),
        };
        let forwarded = Forwarded {
            task_id,
            task_name: &report.task_name,
            args: &task.args,
            priority: report.priority,
            timeout_ms,
            attempt: report.attempts + 1,
            lease,
        };
        worker.link.queue(forwarded);
        report.state = TaskState::Running;
        report.worker.clone_from(&worker.name.worker_id);
        report.attempts = report.attempts.saturating_add(1);
        let sent = now_ms();
        report.started_ms = Some(sent);
        self.monitor.changed(report);
        // The timeout runs from the start the subworker reports; until
        // then, the run must be reported started in time.
        debug!(%task_id, worker = %worker.name.worker_id, lease, "task sent to a subworker");
        let start_by_ms = sent.saturating_add(bound_ms);
        let previous = task.dispatch.replace(Dispatched { key, lease, timeout_ms, start_by_ms, report_by_ms: None });
        if let Some(previous) = previous {
            // A retry or a task taken back: its earlier run's lease alarm
            // (up to --max-subworker-run away) guards nothing.
            self.timers.cancel(Alarm::Lease(task_id, previous.lease));
        }
        let first_look = sent.saturating_add(timeout_ms).saturating_add(delivery::REPORT_GRACE_MS);
        self.timers.set(first_look.min(start_by_ms), Alarm::Lease(task_id, lease));
        self.record_progress(task_id, task, None);
    }

    /// Sends a worker's queued runs unless a dispatch frame of its is in
    /// flight (those queued meanwhile leave together when it lands).
    fn flush_worker(&self, tasks: &mut Tasks, key: WorkerKey, outbox: &mut Outbox) {
        let Some(worker) = tasks.cluster.get_mut(key) else { return };
        if let Err((error, unsent)) = worker.link.flush() {
            let worker_id = worker.name.worker_id.clone();
            warn!(worker = %worker_id, %error, runs = unsent.len(), "could not send runs to a subworker");
            let why = format!("sending it to subworker '{worker_id}' failed: {error}");
            self.link_broken(tasks, key, &why, outbox);
        }
    }

    /// One of a subworker link's exchanges moved on: the request left, the
    /// reply came, a pause ended, or it failed. Called from its NNG callback.
    pub(crate) fn on_link_event(&self, key: WorkerKey, channel: Channel, result: AioResult) {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let Some(worker) = tasks.cluster.get(key) else { return };
        let worker_id = worker.name.worker_id.clone();
        match result {
            AioResult::Send(Ok(())) => match worker.link.receive(channel) {
                Ok(()) => return,
                Err(error) => {
                    let why = format!("waiting for subworker '{worker_id}' failed: {error}");
                    self.link_broken(&mut tasks, key, &why, &mut outbox);
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
                match channel {
                    Channel::Dispatch => {
                        self.on_dispatched(&mut tasks, key, &worker_id, opened.map(|()| &message[..]), &mut outbox)
                    }
                    Channel::Collect => {
                        self.on_collected(&mut tasks, key, &worker_id, opened.map(|()| &message[..]), &mut outbox)
                    }
                }
            }
            AioResult::Send(Err((_, error))) | AioResult::Recv(Err(error)) => {
                // Cancelled by a reset (the worker was taken back), or the
                // connection broke, whether or not its drop was reported.
                let connected = worker.connected;
                if connected && error != nng::Error::Canceled {
                    let why = format!("the exchange with subworker '{worker_id}' failed: {error}");
                    self.link_broken(&mut tasks, key, &why, &mut outbox);
                } else if connected && channel == Channel::Collect {
                    let _ = worker.link.collect_after(Duration::from_millis(20));
                } else if connected {
                    // Runs placed after the worker came back waited for
                    // this exchange to end.
                    self.flush_worker(&mut tasks, key, &mut outbox);
                }
            }
        }
        drop(tasks);
        outbox.deliver();
    }

    /// A dispatch frame's answer: taken (`Done`), or refused as a whole
    /// (each run then has the refusal for its answer), or not to be
    /// trusted (each run is sent again, elsewhere if it can be).
    fn on_dispatched(
        &self,
        tasks: &mut Tasks,
        key: WorkerKey,
        worker_id: &str,
        frame: Result<&[u8], String>,
        outbox: &mut Outbox,
    ) {
        let sent = tasks.cluster.get_mut(key).map(|w| w.link.dispatched()).unwrap_or_default();
        let answer = frame.and_then(|frame| match decode::<Reply>(frame, usize::MAX) {
            Ok(Reply::Done) => Ok(None),
            Ok(Reply::Error(refusal)) => Ok(Some(encode_reply(&Reply::Error(refusal)))),
            Ok(reply) => Err(format!("subworker '{worker_id}' answered runs with an unexpected message: {reply:?}")),
            Err(error) => Err(format!("subworker '{worker_id}' sent a reply that does not decode: {error}")),
        });
        if !matches!(answer, Ok(None)) {
            for task_id in sent {
                let Some((slot, false)) = tasks.cluster.slot_of(key, task_id) else { continue };
                tasks.cluster.release(key, slot, Some(task_id));
                match &answer {
                    Ok(Some(refusal)) => self.take_reply(tasks, key, task_id, worker_id, refusal, outbox),
                    Ok(None) => {}
                    Err(why) => {
                        warn!(%task_id, "{why}");
                        self.send_again(tasks, task_id, why, outbox);
                    }
                }
            }
        }
        self.fill_worker(tasks, key, outbox);
    }

    /// Outcomes a worker sent back: each settles its task if it carries
    /// the task's current lease (a revoked run's outcome is discarded).
    fn on_collected(
        &self,
        tasks: &mut Tasks,
        key: WorkerKey,
        worker_id: &str,
        frame: Result<&[u8], String>,
        outbox: &mut Outbox,
    ) {
        let decoded = frame.and_then(|frame| {
            decode::<Reply>(frame, usize::MAX)
                .map_err(|error| format!("subworker '{worker_id}' sent outcomes that do not decode: {error}"))
        });
        let pause = match decoded {
            Ok(Reply::Reports(outcomes)) => {
                let empty = outcomes.is_empty();
                for Reported { task_id, lease, reply } in outcomes {
                    let current = tasks.live.get(&task_id).and_then(|t| t.dispatch.as_ref()).map(|d| (d.key, d.lease));
                    match tasks.cluster.slot_of(key, task_id) {
                        Some((slot, false)) if current == Some((key, lease)) => {
                            tasks.cluster.release(key, slot, Some(task_id));
                            self.take_reply(tasks, key, task_id, worker_id, &reply, outbox);
                        }
                        Some((slot, true)) => {
                            // The run was taken back: its slot is free again.
                            tasks.cluster.release(key, slot, None);
                            self.revoked_report(worker_id);
                        }
                        _ => self.revoked_report(worker_id),
                    }
                }
                empty.then_some(Duration::from_millis(20))
            }
            Ok(other) => {
                warn!(worker = %worker_id, "a subworker answered Collect with an unexpected message: {other:?}");
                Some(Duration::from_secs(1))
            }
            Err(why) => {
                warn!(worker = %worker_id, "{why}");
                Some(Duration::from_secs(1))
            }
        };
        if let Some(worker) = tasks.cluster.get(key) {
            let asked = match pause {
                None => worker.link.collect(),
                Some(pause) => worker.link.collect_after(pause),
            };
            if let Err(error) = asked {
                debug!(worker = %worker_id, %error, "could not collect outcomes");
            }
        }
        self.fill_worker(tasks, key, outbox);
    }

    /// Gives a worker's free slots the most urgent waiting tasks it
    /// provides, in one frame.
    fn fill_worker(&self, tasks: &mut Tasks, key: WorkerKey, outbox: &mut Outbox) {
        let idle: Vec<usize> = tasks.cluster.get(key).map_or_else(Vec::new, |w| {
            w.slots.iter().enumerate().filter(|(_, slot)| **slot == Slot::Idle).map(|(index, _)| index).collect()
        });
        for slot in idle {
            let mut gate = limited::Gate::new(&mut tasks.task_limits);
            match tasks.cluster.next_for_with(key, slot, &mut gate) {
                Some(next) => self.queue_for_worker(tasks, key, slot, next),
                // Nothing for one free slot is nothing for the others.
                None => break,
            }
        }
        self.flush_worker(tasks, key, outbox);
    }

    /// A link that failed: the worker is marked disconnected and what it
    /// carried goes elsewhere.
    fn link_broken(&self, tasks: &mut Tasks, key: WorkerKey, why: &str, outbox: &mut Outbox) {
        tasks.cluster.disconnected(key);
        self.take_back(tasks, key, why, outbox);
    }

    /// Takes a subworker's answer for a task.
    fn take_reply(
        &self,
        tasks: &mut Tasks,
        key: WorkerKey,
        task_id: TaskId,
        worker_id: &str,
        frame: &[u8],
        outbox: &mut Outbox,
    ) {
        let attempt = tasks.live.get(&task_id).map_or(0, |t| t.report.attempts);
        match decode::<Reply>(frame, usize::MAX) {
            Ok(Reply::Report(report)) if report.task_id == task_id && report.state.is_final() => {
                let started = report.started_ms;
                let outcome = match (report.state, report.result, report.error) {
                    (TaskState::Succeeded, Some(result), _) if !is_json(&result) => {
                        self.refusals.bad_results.fetch_add(1, Ordering::Relaxed);
                        Err(TaskError {
                            kind: FailureKind::Error,
                            message: format!(
                                "subworker '{worker_id}' sent a result that is not JSON ({} bytes); the run counts as failed",
                                result.len()
                            ),
                        })
                    }
                    (TaskState::Succeeded, Some(result), _) => Ok(result),
                    (TaskState::TimedOut, _, Some(error)) => {
                        return self.finish(tasks, task_id, Ending::TimedOut(error), started, outbox)
                    }
                    (TaskState::Cancelled, _, Some(error)) => {
                        return self.finish(tasks, task_id, Ending::Cancelled(error), started, outbox)
                    }
                    (_, _, Some(error)) => Err(error),
                    _ => Err(TaskError {
                        kind: FailureKind::Error,
                        message: format!("subworker '{worker_id}' reported neither a result nor an error"),
                    }),
                };
                self.complete(tasks, task_id, attempt, outcome, started, outbox);
            }
            Ok(Reply::Error(refusal)) if refusal.kind == ErrorKind::HandedBack => {
                let why = format!("subworker '{worker_id}' handed it back unstarted: {}", refusal.message);
                self.handed_back(tasks, key, task_id, &why, outbox);
            }
            Ok(Reply::Error(refusal)) if matches!(refusal.kind, ErrorKind::ShuttingDown | ErrorKind::Busy) => {
                let why = format!("subworker '{worker_id}' could not take it: {}", refusal.message);
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
    /// or fails it after [`MAX_DISPATCHES`] losses or when nobody provides it.
    pub(crate) fn send_again(&self, tasks: &mut Tasks, task_id: TaskId, why: &str, outbox: &mut Outbox) {
        let Some(task) = tasks.live.get_mut(&task_id) else { return };
        if task.report.state != TaskState::Running {
            return;
        }
        task.losses += 1;
        if task.losses >= MAX_DISPATCHES {
            let message = format!(
                "task '{}' was sent to subworkers {} times and each went away before finishing it (last: {why}); it may have run partly; submit it again",
                task.report.task_name, task.losses
            );
            warn!(%task_id, losses = task.losses, "giving up on a task: {why}");
            return self.fail(tasks, task_id, message, outbox);
        }
        warn!(%task_id, task = %task.report.task_name, "sending the task again: {why}");
        self.start(tasks, task_id, true, why, outbox);
    }

    /// For a task no live subworker provides any more: runs it on this
    /// process's threads if a plugin here declares it, or fails it.
    pub(crate) fn run_here_or_fail(&self, tasks: &mut Tasks, task_id: TaskId, why: &str, outbox: &mut Outbox) {
        let Some(live) = tasks.live.get_mut(&task_id) else { return };
        let name = &live.report.task_name;
        match self.registry.get(name) {
            Some(_) if self.pool.threads() > 0 => {
                live.report.state = TaskState::Queued;
                if !tasks.task_limits.is_empty() {
                    let (name, priority) = (live.report.task_name.clone(), live.report.priority);
                    if !tasks.task_limits.try_start(&name, task_id, now_ms()) {
                        debug!(%task_id, %priority, "task held back by its task limit");
                        tasks.task_limits.hold_local(&name, priority, task_id);
                        return self.arm_task_limits(&mut tasks.task_limits);
                    }
                }
                self.push_local(tasks, task_id, outbox);
            }
            _ => {
                let why = if why.is_empty() { "no live subworker provides it".to_string() } else { why.to_string() };
                let message =
                    format!("no worker provides task '{name}' any more ({why}); submit it again when one does");
                self.fail(tasks, task_id, message, outbox);
            }
        }
    }

    /// Takes back every task a subworker carries (it went silent or away),
    /// revoking their leases, sends them elsewhere, and settles waiting
    /// tasks nobody provides now. A silent worker's exchanges stay open, so
    /// that what it reports if it wakes up is seen and discarded; a lost
    /// connection's are cancelled (NNG would resend them on reconnection).
    pub(crate) fn take_back(&self, tasks: &mut Tasks, key: WorkerKey, why: &str, outbox: &mut Outbox) {
        let connected = tasks.cluster.get(key).is_some_and(|w| w.connected);
        let carried = tasks.cluster.take_back(key);
        self.tell_revoked(tasks, key, carried.iter().map(|(_, task_id)| *task_id).collect());
        if !connected {
            // Nothing more is heard of those runs: NNG would send the frames
            // in flight again on reconnection, so they are cancelled.
            if let Some(worker) = tasks.cluster.get_mut(key) {
                worker.link.reset();
            }
            tasks.cluster.free_abandoned(key);
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
    pub(crate) fn fill(&self, tasks: &mut Tasks, outbox: &mut Outbox) {
        let filled = tasks.cluster.fill_with(&mut limited::Gate::new(&mut tasks.task_limits));
        let mut workers: Vec<WorkerKey> = Vec::new();
        for (key, slot, task_id) in filled {
            self.queue_for_worker(tasks, key, slot, task_id);
            if !workers.contains(&key) {
                workers.push(key);
            }
        }
        for key in workers {
            self.flush_worker(tasks, key, outbox);
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
        // In durable mode what has not run yet waits on disk for the restart.
        let durable = self.journal.is_some();
        if !durable {
            self.end_waiting_for_time();
        }
        if self.config.management.is_none() {
            // A subworker hands back at once what it has not started: its
            // control plane runs it elsewhere rather than it failing here.
            self.hand_back_unstarted(self.pool.close_and_take_queued());
        }
        let unstarted = self.pool.drain(timeout);
        // Tasks on subworkers finish on their own; wait for them too.
        while self.lock().live.values().any(|t| !durable || t.report.state == TaskState::Running)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        for job in unstarted.iter().filter(|_| !durable) {
            let message = format!(
                "'{}' shut down before this task started (--shutdown-timeout {} s); submit it again",
                self.config.worker_id,
                timeout.as_secs_f64()
            );
            self.fail(&mut tasks, job.task_id, message, &mut outbox);
        }
        if !unstarted.is_empty() && !durable {
            warn!(count = unstarted.len(), "tasks never started before the shutdown deadline");
        }
        let abandoned: Vec<(TaskId, LiveTask)> = tasks.live.drain().collect();
        tasks.live_bytes = 0;
        drop(tasks);
        outbox.deliver();
        if durable {
            return self.leave_for_restart(abandoned);
        }
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

impl State {
    /// At shutdown, tasks waiting for a countdown, ETA or retry will not
    /// get their time here: they fail now, saying so.
    fn end_waiting_for_time(&self) {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let waiting: Vec<TaskId> = tasks
            .live
            .iter()
            .filter(|(_, t)| matches!(t.report.state, TaskState::Scheduled | TaskState::Retrying))
            .map(|(id, _)| *id)
            .collect();
        for task_id in waiting {
            let message = format!(
                "'{}' shut down before this task's scheduled time or next retry; submit it again",
                self.config.worker_id
            );
            self.fail(&mut tasks, task_id, message, &mut outbox);
        }
        drop(tasks);
        outbox.deliver();
    }
}

/// What the dashboard reads and does (see `dashboard/`); each call holds the
/// task lock only while it copies what it needs.
impl State {
    /// Summaries of at most `limit` live tasks that `keep` accepts, newest first.
    pub(crate) fn live_summaries(&self, limit: usize, keep: impl Fn(&TaskReport) -> bool) -> Vec<TaskSummary> {
        let tasks = self.lock();
        let mut live: Vec<TaskSummary> =
            tasks.live.values().filter(|t| keep(&t.report)).take(limit).map(|t| TaskSummary::of(&t.report)).collect();
        drop(tasks);
        live.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        live
    }

    /// A live task's report and its arguments.
    pub(crate) fn live_task(&self, task_id: TaskId) -> Option<(TaskReport, Arc<Vec<u8>>)> {
        self.lock().live.get(&task_id).map(|t| (t.report.clone(), t.args.clone()))
    }

    /// Live tasks by priority (most urgent first), each as
    /// [queued, running, scheduled, retrying].
    pub(crate) fn live_counts(&self) -> [[u32; 4]; 4] {
        let mut counts = [[0; 4]; 4];
        for task in self.lock().live.values() {
            let column = match task.report.state {
                TaskState::Queued => 0,
                TaskState::Running => 1,
                TaskState::Scheduled => 2,
                TaskState::Retrying => 3,
                _ => continue,
            };
            counts[task.report.priority.index()][column] += 1;
        }
        counts
    }

    /// What `bound` limits, in use now, where this state knows it.
    pub(crate) fn usage(&self, bound: Bound) -> Option<u64> {
        let tasks = self.lock();
        let (workers, slots) = tasks.cluster.size();
        match bound {
            Bound::QueuedTasks => Some(tasks.live.len() as u64),
            Bound::QueuedBytes => Some(tasks.live_bytes),
            Bound::CachedBytes => {
                drop(tasks);
                Some(self.cache.lock().expect("cache lock").bytes())
            }
            Bound::Subworkers => Some(workers as u64),
            Bound::SubworkerSlots => Some(slots as u64),
            Bound::Schedules => {
                drop(tasks);
                self.scheduler.as_ref().map(|scheduler| scheduler.len() as u64)
            }
            Bound::CallbackQueue => {
                drop(tasks);
                Some(self.callbacks.len() as u64)
            }
            _ => None,
        }
    }

    /// Results the cache holds now.
    pub(crate) fn cached_results(&self) -> usize {
        self.cache.lock().expect("cache lock").len()
    }

    /// The schemas a submission of `task_name` is checked against: those of
    /// this process's plugin, or else those the first live subworker that
    /// provides it offered.
    pub(crate) fn task_schema(&self, task_name: &str) -> Option<Arc<crate::plugins::task_schema::TaskSchema>> {
        if let Some(task) = self.registry.get(task_name) {
            return task.schema.clone();
        }
        let from = self.lock().cluster.describing_provider(task_name)?.0;
        self.offered_schemas.get(task_name, from, || {
            let tasks = self.lock();
            let (key, offer) = tasks.cluster.describing_provider(task_name)?;
            Some(Offer { key, text: offer.args_schema.clone().zip(offer.result_schema.clone()) })
        })
    }

    /// The tasks the plugins here and the live subworkers provide, sorted
    /// by name, with their schemas (`Request::Tasks`, the HTTP API).
    pub(crate) fn registered_tasks(&self) -> Vec<crate::wire::protocol::TaskInfo> {
        let mut rows: std::collections::BTreeMap<String, crate::wire::protocol::TaskInfo> = self
            .registry
            .tasks()
            .into_iter()
            .map(|task| {
                let options = &task.decl.options;
                let info = crate::wire::protocol::TaskInfo {
                    name: task.decl.name.to_string(),
                    doc: task.decl.doc.to_string(),
                    signature: task.decl.signature.to_string(),
                    priority: options.priority,
                    timeout_ms: options.timeout_ms,
                    max_retries: options.max_retries,
                    args_schema: task.schema.as_ref().map(|s| s.args.to_string()),
                    result_schema: task.schema.as_ref().map(|s| s.result.to_string()),
                    providers: vec![self.config.worker_id.clone()],
                };
                (info.name.clone(), info)
            })
            .collect();
        let offered = self.lock().cluster.offered_tasks();
        for (worker_id, offer) in offered {
            let row = rows.entry(offer.name.clone()).or_insert_with(|| crate::wire::protocol::TaskInfo {
                name: offer.name.clone(),
                priority: offer.priority,
                timeout_ms: offer.timeout_ms,
                max_retries: offer.max_retries,
                doc: offer.doc.clone(),
                signature: offer.signature.clone(),
                args_schema: offer.args_schema.clone(),
                result_schema: offer.result_schema.clone(),
                providers: Vec::new(),
            });
            row.providers.push(worker_id);
        }
        rows.into_values().collect()
    }

    /// Answers `replier` when the task ends (at once with its report or why
    /// it is unknown, when it is not live): the HTTP API's wait.
    pub(crate) fn wait_for(&self, task_id: TaskId, replier: Replier) {
        let mut tasks = self.lock();
        if let Some(task) = tasks.live.get_mut(&task_id) {
            // Waits that gave up (their bound passed) leave; so a client
            // waiting again and again on a long task leaves no trail.
            task.waiters.retain(|waiter| !waiter.is_abandoned());
            task.waiters.push(replier);
            return;
        }
        drop(tasks);
        replier.send(&self.status(task_id));
    }

    /// Accepts a task the dashboard submits (a retry under a fresh id).
    pub(crate) fn accept_from_dashboard(&self, submit: Submit) -> Result<TaskId, ErrorReply> {
        self.accept(submit, None, None, None).map_err(|(refusal, _)| refusal)
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

/// The scheduler starts periodic runs through this.
impl PeriodicRuns for State {
    fn is_live(&self, task_id: TaskId) -> bool {
        State::is_live(self, task_id)
    }

    fn accept_periodic(&self, submit: Submit) -> Result<(), String> {
        self.accept(submit, None, None, None).map(|_| ()).map_err(|(refusal, _)| refusal.message)
    }
}

/// An error reply.
pub(crate) fn error_reply(kind: ErrorKind, message: String) -> Reply {
    Reply::Error(ErrorReply::new(kind, message))
}
