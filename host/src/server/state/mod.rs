//! What a control plane (or subworker) does about tasks: it holds the
//! task [`Ledger`] (the live tasks, their lifecycle and the cluster's
//! slots, no I/O) under one lock, turns the ports' requests, the worker
//! threads' outcomes, the subworker links' frames and the timers' alarms
//! into the ledger's events, and carries out its effects (`driver.rs`).
//!
//! NNG calls made under the lock only queue work (sends, receives,
//! cancels); replies to clients go out after it is released, through an
//! [`Outbox`]. Locks are always taken in this order: the schedules', then
//! this one, then the result cache's or the pool's.
//!
//! | file | concern |
//! |--|--|
//! | `mod.rs` | the state, submissions, status, runs here, alarms, cancel |
//! | `admission.rs` | the bounds a submission must pass, its task's defaults, refusals |
//! | `driver.rs` | the ledger's effects carried out |
//! | `links.rs` | the subworker links' frames, as ledger events |
//! | `delivery.rs` | start reports, hand-backs, revocations, the restart window |
//! | `durable.rs` | the journal's records, and replies sent once they are stored |
//! | `restore.rs` | the restart from the store, and a durable shutdown |
//! | `shutdown.rs` | draining at shutdown |
//! | `limited.rs` | the cluster-wide task limits changed at run time |
//! | `workflows.rs`, `workflow_views.rs` | workflows, whose members are tasks here |
//! | `views.rs` | what the dashboard and `/metrics` read |
//! | `readiness.rs` | what `/readyz` reports |
//! | `crashes.rs` | the runs of this control plane's worker processes, and the tasks whose runs crash them |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use abi_stable::std_types::{RResult, RSlice};
use fastworker_plugin_sdk::abi::TaskDecl;
use fastworker_plugin_sdk::TaskContext;
use nng::Message;
use tracing::warn;

use crate::cluster::link::Link;
use crate::ledger::{Cancel, Joined, Ledger, LiveTask, Plan, Settings};
use crate::plugins::Registry;
use crate::server::bounds::{millis, Refusals};
use crate::server::cache::{args_digest, Lookup, ResultCache, Unhashed};
use crate::server::callbacks::Callbacks;
use crate::server::calls::CallSessions;
use crate::server::collector::Collector;
use crate::server::config::ControlPlaneConfig;
use crate::server::endpoint::{encode_reply, Replier};
use crate::server::journal::{Journal, RunsUnderWay};
use crate::server::monitor::Monitor;
use crate::server::offered_schemas::OfferedSchemas;
use crate::server::peer_log::PeerLog;
use crate::server::pool::{Pool, PoolWaker};
use crate::server::scheduler::{PeriodicRuns, Scheduler};
use crate::server::timers::Timers;
use crate::wire::auth::Role;
use crate::wire::protocol::{
    now_ms, ClusterStatus, ErrorKind, ErrorReply, Priority, Reply, RetryPolicy, ScheduleStatus, Submit, TaskError,
    TaskId, TaskReport, TaskState,
};
use crate::workflow::registry::Workflows;

mod admission;
pub(crate) mod crashes;
mod delivery;
mod driver;
mod durable;
mod limited;
mod links;
pub(crate) mod readiness;
mod restore;
mod shutdown;
mod views;
mod workflow_views;
mod workflows;

pub(crate) use driver::Driver;
pub(crate) use workflow_views::WorkflowSummary;

use admission::id_conflict;
pub(crate) use delivery::{DeliveryCounters, StartedRuns, START_REPORT_DELAY};

/// The longest pause between retries unless a caller sets one.
const DEFAULT_MAX_RETRY_DELAY_MS: u64 = 5 * 60 * 1000;

/// Each pause between retries is this many times the previous one unless a
/// caller says otherwise.
const DEFAULT_RETRY_FACTOR: f64 = 2.0;

/// The most calls of one `Calls` frame admitted under one hold of the task
/// lock: a frame takes the lock, and wakes the worker threads, once per
/// this many calls rather than once a call, and holds it no longer than
/// that many admissions (tens of microseconds) while threads wait to
/// report their runs.
const CALLS_PER_LOCK: usize = 16;

/// Everything a serving process shares between its ports and threads.
pub(crate) struct State {
    pub(crate) config: ControlPlaneConfig,
    pub(crate) registry: Registry,
    tasks: Mutex<Tasks>,
    cache: Mutex<ResultCache>,
    /// Arguments of ended tasks whose digest the cache awaits.
    unhashed: Unhashed,
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
    /// On a control plane: the clients' batched calls, by session.
    pub(crate) calls: CallSessions,
    /// The durable mode's store (`--state-dir`) and its hooks.
    durable: durable::Durable,
    /// Schemas of tasks only subworkers provide, for the HTTP API's check.
    offered_schemas: OfferedSchemas,
    /// On a control plane with worker processes: their runs and crashes.
    pub(crate) crashes: std::sync::OnceLock<crashes::CrashWatch>,
    /// In a worker process: where each run's start and end is recorded
    /// for its supervisor (`server::run_log`).
    pub(crate) run_log: std::sync::OnceLock<crate::server::run_log::RunLog>,
    /// In a worker process: the runs it may still start before it stops to
    /// be replaced (`--max-tasks-per-child`, `server::run_budget`).
    pub(crate) run_budget: std::sync::OnceLock<crate::server::run_budget::RunBudget>,
    /// On a control plane with worker processes: each one's end of the
    /// socket pair its link takes when it registers (`worker_processes`).
    pub(crate) worker_pipes: Mutex<rustc_hash::FxHashMap<String, std::os::unix::net::UnixStream>>,
}

/// What the task lock guards: the ledger, and the workflows whose members
/// are its tasks.
pub(crate) struct Tasks {
    pub(crate) ledger: Ledger<Replier, Link>,
    /// Workflows, whose members are tasks here (`state/workflows.rs`).
    workflows: Workflows<Replier>,
    /// In durable `--in-process` mode, the crashes counted for task ids that
    /// were not stored when their run killed the process (a blocking call
    /// ended within the commit window): a submission under such an id
    /// starts with that count (`restore.rs`).
    unstored_crashes: rustc_hash::FxHashMap<TaskId, u32>,
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

/// What a worker thread needs to run one task.
struct Job {
    task_id: TaskId,
    decl: TaskDecl,
    args: Arc<Vec<u8>>,
    cancelled: Arc<AtomicBool>,
    /// In durable mode, the last record handed to the store when the run
    /// was queued (its task's acceptance among them): on disk before the
    /// run's code starts. 0 when a client waits for the task's outcome: a
    /// crash before its acceptance is stored loses a task nobody was told
    /// of, and one after finds it stored and marked under way.
    stored_before: u64,
}

/// Replies gathered under the lock, sent after it is released; and the
/// worker threads to wake for the runs it queued, woken then too (or when
/// it is dropped: a queued run is never left without its wake-up).
#[derive(Default)]
pub(crate) struct Outbox(Vec<(Vec<Replier>, Message)>, Option<(PoolWaker<Job>, usize)>);

impl Outbox {
    /// Sends every gathered reply (after waking the threads for the runs queued).
    pub(crate) fn deliver(mut self) {
        self.wake_pool();
        for (waiters, message) in std::mem::take(&mut self.0) {
            send_to_all(waiters, message);
        }
    }

    /// Counts a thread owed a wake-up for a run queued quietly on `pool`.
    fn queued_on(&mut self, pool: &Pool<Job>) {
        match &mut self.1 {
            Some((_, runs)) => *runs += 1,
            None => self.1 = Some((pool.waker(), 1)),
        }
    }

    fn wake_pool(&mut self) {
        if let Some((waker, runs)) = self.1.take() {
            waker.wake(runs);
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.wake_pool();
    }
}

/// Sends one encoded reply to every waiter: a copy to each but the last,
/// which takes the message itself (a large result is not copied for the
/// one client that usually waits).
pub(crate) fn send_to_all(waiters: Vec<Replier>, message: Message) {
    let mut waiters = waiters.into_iter();
    let Some(mut last) = waiters.next() else { return };
    for next in waiters {
        std::mem::replace(&mut last, next).send_message(message.clone());
    }
    last.send_message(message);
}

/// Who a submission is taken from: the key that may cancel it, and whom
/// it counts against for its share of the queue (`--queue-share`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Admitted {
    pub(crate) owner: Option<[u8; 8]>,
    pub(crate) tenant: Option<crate::wire::auth::Tenant>,
}

impl State {
    /// Builds the state and starts the worker, timer and callback threads.
    pub(crate) fn new(
        config: ControlPlaneConfig,
        registry: Registry,
        journal: Option<(Journal, RunsUnderWay)>,
    ) -> Arc<State> {
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
            let scheduler = (!config.is_subworker()).then(|| {
                let limits = &config.bounds;
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
            let callbacks = Callbacks::start(&config.bounds, refusals.clone());
            let mut cache =
                ResultCache::new(config.result_cache_size, config.bounds.max_cached_bytes, config.result_cache_ttl);
            if journal.is_some() {
                cache.track_forgotten();
            }
            let settings = Settings {
                worker_id: config.worker_id.clone(),
                max_subworker_run_ms: millis(config.bounds.max_subworker_run),
                answer_within_ms: millis(config.bounds.reply_timeout),
                local_tasks: if pool.threads() == 0 {
                    Default::default()
                } else {
                    registry.tasks().iter().map(|task| task.decl.name.to_string()).collect()
                },
                provider_grace_ms: config.management.as_ref().map_or(0, |m| millis(m.provider_grace)),
            };
            State {
                scheduler,
                durable: durable::Durable::new(journal, config.worker_id.clone()),
                offered_schemas: OfferedSchemas::new(config.bounds.max_offered_tasks),
                cache: Mutex::new(cache),
                unhashed: Unhashed::default(),
                tasks: Mutex::new(Tasks {
                    ledger: Ledger::new(settings, limited::task_limits(&config, &registry)),
                    workflows: Workflows::new(
                        config.result_cache_size,
                        usize::try_from(config.bounds.max_cached_bytes).unwrap_or(usize::MAX),
                        config.result_cache_ttl.map(millis),
                    ),
                    unstored_crashes: Default::default(),
                }),
                accepting: AtomicBool::new(true),
                monitor: Monitor::default(),
                registry,
                collector: Arc::new(Collector::new(config.bounds.max_frame_bytes)),
                calls: CallSessions::new(
                    config.bounds.max_requests_per_connection,
                    config.bounds.max_queued_tasks,
                    config.bounds.max_frame_bytes,
                ),
                config,
                pool,
                timers,
                callbacks,
                peer_log: Arc::new(PeerLog::new(refusals.clone())),
                refusals,
                started_at: Instant::now(),
                delivery: DeliveryCounters::default(),
                started_runs: Arc::default(),
                crashes: std::sync::OnceLock::new(),
                run_log: std::sync::OnceLock::new(),
                run_budget: std::sync::OnceLock::new(),
                worker_pipes: Mutex::default(),
            }
        })
    }

    /// Accepting tasks: not draining.
    pub(crate) fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// The ledger and the workflows.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().expect("task lock")
    }

    /// Feeds one event to the ledger, under the task lock the caller
    /// holds, and carries out its effects: replies go to `outbox`, and the
    /// workflows of members that ended move on.
    pub(crate) fn drive<T>(
        &self,
        tasks: &mut Tasks,
        outbox: &mut Outbox,
        event: impl FnOnce(&mut Ledger<Replier, Link>, &mut Driver<'_>) -> T,
    ) -> T {
        let Tasks { ledger, workflows, .. } = tasks;
        let mut driver = Driver::new(self, outbox, workflows);
        let answer = event(ledger, &mut driver);
        let ended = std::mem::take(&mut driver.members_ended);
        for report in ended {
            self.member_ended(tasks, &report, outbox);
        }
        answer
    }

    /// Takes the task lock, feeds one event to the ledger, and sends the
    /// replies it made once the lock is released.
    pub(crate) fn drive_locked<T>(&self, event: impl FnOnce(&mut Ledger<Replier, Link>, &mut Driver<'_>) -> T) -> T {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let answer = self.drive(&mut tasks, &mut outbox, event);
        drop(tasks);
        outbox.deliver();
        answer
    }

    /// Tasks accepted and not ended, for heartbeats.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().ledger.load().0
    }

    /// The subworkers as `fastworker workers` shows them.
    pub(crate) fn cluster_status(&self) -> ClusterStatus {
        let mut status = self.lock().ledger.cluster().status();
        if let Some(watch) = self.crashes.get() {
            status.worker_processes = watch.processes();
        }
        status
    }

    /// Drops results older than the TTL.
    pub(crate) fn sweep_expired(&self) -> usize {
        let mut cache = self.cache.lock().expect("cache lock");
        let swept = cache.sweep();
        self.durable.forget_dropped(&mut cache);
        drop(cache);
        swept + self.calls.sweep()
    }

    /// Answers a submission: at once with the task's id, or, for a client
    /// that waits, when the task ends.
    pub(crate) fn submit(&self, submit: Submit, replier: Replier) {
        let owner = replier.key_id();
        self.submit_leased(submit, None, owner, replier)
    }

    /// Takes a `Calls` frame: each call a blocking submission of the
    /// frame's sender, its outcome kept for the session (`server::calls`).
    pub(crate) fn submit_calls(&self, calls: crate::wire::protocol::Calls, replier: Replier) {
        let by = Admitted { owner: replier.key_id(), tenant: replier.tenant() };
        let key = crate::server::calls::SessionKey::of(&replier, calls.session);
        self.calls.take(key, calls.calls.calls, replier, |calls| self.accept_calls(calls, by));
    }

    /// Accepts a frame's calls, each a blocking submission taken from `by`
    /// answered through its replier, [`CALLS_PER_LOCK`] to a hold of the
    /// task lock.
    fn accept_calls(&self, calls: Vec<(Submit, Replier)>, by: Admitted) {
        let mut calls = calls.into_iter().peekable();
        while calls.peek().is_some() {
            let mut refused = Vec::new();
            let mut outbox = Outbox::default();
            let mut tasks = self.lock();
            for (submit, replier) in calls.by_ref().take(CALLS_PER_LOCK) {
                let admitted = match self.closed_to(None) {
                    Some(refusal) => Err((refusal, Some(replier))),
                    None => self.admit(&mut tasks, submit, Some(replier), by, None, &mut outbox),
                };
                if let Err((refusal, waiter)) = admitted {
                    refused.extend(waiter.map(|waiter| (waiter, refusal)));
                }
            }
            drop(tasks);
            outbox.deliver();
            for (waiter, refusal) in refused {
                waiter.send(&Reply::Error(refusal));
            }
        }
        self.hash_ended();
    }

    /// As [`State::submit`], for a run a control plane sent under `lease`
    /// with the key `owner`.
    pub(crate) fn submit_leased(&self, submit: Submit, lease: Option<u64>, owner: Option<[u8; 8]>, replier: Replier) {
        // A run a control plane sent counts against no share: its slots bound it.
        let tenant = if lease.is_none() { replier.tenant() } else { None };
        self.submit_as(submit, Admitted { owner, tenant }, lease, replier)
    }

    /// Answers a submission taken from `by`: at once or when it ends.
    fn submit_as(&self, submit: Submit, by: Admitted, lease: Option<u64>, replier: Replier) {
        let (waiter, answer_now) = if submit.wait { (Some(replier), None) } else { (None, Some(replier)) };
        match self.accept(submit, waiter, by, lease) {
            Ok(task_id) => {
                if let Some(replier) = answer_now {
                    self.durable.acknowledge(replier, Reply::Accepted { task_id });
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
        self.lock().ledger.get(&task_id).is_some()
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
        let by = Admitted { owner: replier.key_id(), tenant: replier.tenant() };
        let outcomes = submits
            .into_iter()
            .map(|submit| self.accept(Submit { wait: false, ..submit }, None, by, None).map_err(|(refusal, _)| refusal))
            .collect();
        self.durable.acknowledge(replier, Reply::Batch(outcomes));
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
        by: Admitted,
        lease: Option<u64>,
    ) -> Result<TaskId, (ErrorReply, Option<Replier>)> {
        if let Some(refusal) = self.closed_to(lease) {
            return Err((refusal, waiter));
        }
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let accepted = self.admit(&mut tasks, submit, waiter, by, lease, &mut outbox);
        drop(tasks);
        outbox.deliver();
        // While the task runs, those that ended before it have their
        // arguments hashed.
        self.hash_ended();
        accepted
    }

    /// Why a submission is refused while this process shuts down (`None`
    /// while it accepts tasks).
    fn closed_to(&self, lease: Option<u64>) -> Option<ErrorReply> {
        if self.accepting.load(Ordering::SeqCst) {
            return None;
        }
        let message = format!(
            "'{}' is shutting down and takes no new tasks; submit to another one or retry after it restarts",
            self.config.worker_id
        );
        // A run sent under a lease is handed back: it never started here.
        let kind = if lease.is_some() { ErrorKind::HandedBack } else { ErrorKind::ShuttingDown };
        Some(ErrorReply::new(kind, message))
    }

    /// Computes the digests of the ended tasks' arguments the cache holds
    /// (see [`Unhashed`]); called with no lock held, once replies have left.
    pub(crate) fn hash_ended(&self) {
        let held = self.unhashed.take();
        if held.is_empty() {
            return;
        }
        let digests: Vec<[u8; 16]> = held.iter().map(|(_, args)| args_digest(args)).collect();
        let mut cache = self.cache.lock().expect("cache lock");
        for ((task_id, args), digest) in held.iter().zip(digests) {
            cache.settle(task_id, args, digest);
        }
    }

    /// [`State::accept`] under the task lock: replies go to `outbox`. The
    /// same task again joins the one accepted; a cached result answers at
    /// once; else the bounds and the providers decide, and the ledger takes
    /// it.
    #[allow(clippy::result_large_err)]
    fn admit(
        &self,
        tasks: &mut Tasks,
        submit: Submit,
        waiter: Option<Replier>,
        by: Admitted,
        lease: Option<u64>,
        outbox: &mut Outbox,
    ) -> Result<TaskId, (ErrorReply, Option<Replier>)> {
        let Admitted { owner, tenant } = by;
        let task_id = submit.task_id;
        let waiter = match tasks.ledger.join(task_id, &submit.task_name, &submit.args, waiter) {
            Joined::Same => return Ok(task_id),
            Joined::Conflict(task_name, waiter) => return Err((id_conflict(task_id, &task_name), waiter)),
            Joined::NotLive(waiter) => waiter,
        };
        let mut cache = self.cache.lock().expect("cache lock");
        if let Lookup::Found(report) = cache.get(&task_id) {
            let same = report.task_name == submit.task_name && cache.same_args(&task_id, &submit.args) == Some(true);
            let record = cache.record_of(&task_id);
            drop(cache);
            if !same {
                return Err((id_conflict(task_id, &report.task_name), waiter));
            }
            if let Some(waiter) = waiter {
                self.answer_ended(waiter, report, record, outbox);
            }
            return Ok(task_id);
        }
        drop(cache);
        if let Err(refusal) = self.within_bounds(tasks, &submit, tenant).and_then(|()| self.durable.has_room()) {
            return Err((refusal, waiter));
        }
        let declared = match self.declared(tasks, &submit.task_name) {
            Ok(declared) => declared,
            Err(refusal) => return Err((refusal, waiter)),
        };
        let now = now_ms();
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
        let mut report = new_report(task_id, submit.task_name, priority, now);
        // A retry forwarded by a control plane continues its run count.
        report.attempts = submit.attempt.map_or(0, |attempt| attempt.saturating_sub(1));
        let later = submit.not_before_ms.filter(|&at| at > report.created_ms);
        if later.is_some() {
            report.state = TaskState::Scheduled;
        }
        let mut task = LiveTask::new(report, submit.args, plan, owner);
        task.tenant = tenant;
        task.waiters.extend(waiter);
        task.lease = lease;
        // Empty but after an in-process durable control plane's crash.
        let crashes = tasks.unstored_crashes.remove(&task_id);
        task.crashes = crashes.unwrap_or(0);
        self.drive(tasks, outbox, |ledger, io| ledger.admit(task, later, now, io));
        if let Some(message) = crashes.and_then(|count| self.crashed_too_often(count)) {
            // Under the same lock, so no thread starts its run.
            self.drive(tasks, outbox, |ledger, io| ledger.crashed(task_id, message, now, io));
        }
        Ok(task_id)
    }

    /// The state of a task, or why it is not known.
    pub(crate) fn status(&self, task_id: TaskId) -> Reply {
        if let Some(task) = self.lock().ledger.get(&task_id) {
            return Reply::Report(task.reported());
        }
        let config = &self.config;
        let (lookup, record) = self.cached(task_id);
        self.monitor.cache_lookup(matches!(lookup, Lookup::Found(_)));
        match lookup {
            Lookup::Found(report) if !self.durable.is_stored(record) => Reply::Report(before_its_end(report)),
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

    /// What the cache holds of a task, and the journal record number of
    /// its outcome (see [`durable::Durable::is_stored`]).
    fn cached(&self, task_id: TaskId) -> (Lookup, u64) {
        let mut cache = self.cache.lock().expect("cache lock");
        let lookup = cache.get(&task_id);
        (lookup, cache.record_of(&task_id))
    }

    /// Answers `waiter` with the report of a task that ended: at once once
    /// its outcome (record number `record`) is stored, else behind it.
    fn answer_ended(&self, waiter: Replier, report: TaskReport, record: u64, outbox: &mut Outbox) {
        let message = encode_reply(&Reply::Report(report));
        if self.durable.is_stored(record) {
            outbox.0.push((vec![waiter], message));
        } else {
            self.durable.answer_final(vec![waiter], message, outbox);
        }
    }

    /// Has the worker threads do `duty` when free (a worker process's
    /// link, `server::pipe_port`), with one thread more for it.
    pub(crate) fn give_pool_duty(&self, duty: crate::server::pool::Duty) {
        self.pool.give_duty(duty);
    }

    /// Frees the duty a thread keeps while it runs what it read.
    pub(crate) fn hand_over_link(&self) {
        self.pool.hand_over_duty();
    }

    /// Runs one task on this thread (a worker thread of the pool).
    fn run(&self, job: Job) {
        let budget = self.run_budget.get();
        let Some(run) = self.drive_locked(|ledger, io| {
            if budget.is_some_and(|budget| !budget.allows()) {
                // Its last run started: this process is stopping, and hands
                // the task back unstarted with the rest (`drain`).
                return None;
            }
            let run = ledger.local_started(job.task_id, now_ms(), io)?;
            if let Some(budget) = budget {
                budget.spend();
            }
            Some(run)
        }) else {
            return;
        };
        self.report_started(job.task_id, run.lease);
        // In durable mode the run is marked under way before its code runs
        // (and its task is on disk, unless a client waits for its outcome):
        // if it kills this process, the restart counts the crash.
        let _under_way = self.durable.before_run(job.stored_before, job.task_id);
        let context = TaskContext::new(&job.cancelled, run.deadline_ms, run.attempt, *job.task_id.as_bytes());
        let run_log = self.run_log.get();
        if let Some(log) = run_log {
            log.starting(job.task_id);
        }
        let outcome = match (job.decl.call)(&context, RSlice::from_slice(&job.args)) {
            RResult::ROk(bytes) => Ok(bytes.into_vec()),
            RResult::RErr(failure) => {
                Err(TaskError { kind: failure.kind.into(), message: failure.message.into_string() })
            }
        };
        if let Some(log) = run_log {
            log.ended(job.task_id);
        }
        self.drive_locked(|ledger, io| ledger.local_ended(job.task_id, run, outcome, now_ms(), io));
        // The reply has left: the arguments' digest is computed now.
        self.hash_ended();
    }

    /// Countdowns, ETAs or backoffs are over, runs reached their timeout,
    /// leases are due, or held-back runs may go.
    fn on_alarms(&self, alarms: Vec<crate::ledger::Alarm>) {
        self.drive_locked(|ledger, io| {
            let now = now_ms();
            for alarm in alarms {
                ledger.alarm(alarm, now, io);
            }
        });
    }

    /// Cancels a task: one that has not started never runs; a running one
    /// has its cancellation flag set (on the subworker running it too).
    /// `replier` hears the task's report once the cancel has taken effect:
    /// `Cancelled` for a task that had not started (a run sent ahead to a
    /// worker once that worker has ended it), `Running` for one that runs.
    pub(crate) fn cancel(&self, task_id: TaskId, caller: Caller, replier: Option<Replier>) {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let Some(task) = tasks.ledger.get(&task_id) else {
            drop(tasks);
            return send(replier, &self.cancel_ended(task_id));
        };
        if caller.role == Some(Role::Client) && task.owner != caller.key_id {
            drop(tasks);
            let message =
                format!("task {task_id} was submitted with another key: only that key or the operator's may cancel it");
            return send(replier, &error_reply(ErrorKind::Forbidden, message));
        }
        // Cancelling a workflow's member cancels its workflow.
        self.cancel_member_workflow(&mut tasks, task_id, &mut outbox);
        let cancel = self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.cancel(task_id, replier, now_ms(), io));
        drop(tasks);
        // The replies the workflow's end queued go out on both paths.
        outbox.deliver();
        if let Cancel::Answer(replier) = cancel {
            send(replier, &self.status(task_id));
        }
    }

    /// The answer to cancelling a task that is not live.
    fn cancel_ended(&self, task_id: TaskId) -> Reply {
        match self.cache.lock().expect("cache lock").get(&task_id) {
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
        }
    }
}

/// A task's report as it was just before it ended: what `status` shows
/// until its outcome is stored (durable mode).
fn before_its_end(mut report: TaskReport) -> TaskReport {
    report.state = if report.started_ms.is_some() { TaskState::Running } else { TaskState::Queued };
    (report.result, report.error, report.finished_ms) = (None, None, None);
    report
}

/// Sends `reply` to `replier`, if anyone waits for it.
fn send(replier: Option<Replier>, reply: &Reply) {
    if let Some(replier) = replier {
        replier.send(reply);
    }
}

/// A task's first report, as it is accepted at `now`.
fn new_report(task_id: TaskId, task_name: String, priority: Priority, now: u64) -> TaskReport {
    TaskReport {
        task_id,
        task_name,
        state: TaskState::Queued,
        priority,
        worker: String::new(),
        attempts: 0,
        created_ms: now,
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
        self.accept(submit, None, Admitted::default(), None).map(|_| ()).map_err(|(refusal, _)| refusal.message)
    }
}

/// An error reply.
pub(crate) fn error_reply(kind: ErrorKind, message: String) -> Reply {
    Reply::Error(ErrorReply::new(kind, message))
}
