//! The wire format: versioned postcard envelopes over NNG request/reply.
//!
//! Every frame is one byte of protocol version followed by a postcard-encoded
//! [`Request`] or [`Reply`]. Task arguments and results travel inside as JSON
//! bytes, so the host never needs a plugin's types. `docs/protocol.md`
//! describes every message.

use std::io::Write;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use fastworker_plugin_sdk::Priority;

pub use crate::wire::workflow::{WorkflowId, WorkflowReport, WorkflowSubmit};

/// The longest `--worker-id` (and a task name a subworker offers or a task
/// limit names), in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// The version byte that starts every frame this build sends and accepts.
pub const PROTOCOL_VERSION: u8 = 4;

/// The largest frame accepted by default (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A task's identity: a UUID chosen by the client, so that a resent
/// request names the same task.
pub type TaskId = Uuid;

/// What a client asks of a control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Run a task (task ports, base+0..base+3).
    Submit(Submit),
    /// Report a task's state or result (result port, base+4).
    Status {
        /// The task asked about.
        task_id: TaskId,
    },
    /// Where the subworker-management port is (result port): the first
    /// thing a subworker asks, so that `--subworker-port` needs no twin flag.
    Discover,
    /// The subworkers and their health (result or management port).
    Workers,
    /// A subworker joins (management port).
    Register(Registration),
    /// A subworker is alive and this busy (management port).
    Heartbeat(Heartbeat),
    /// A subworker is stopping: route it nothing new (management port).
    Leave(WorkerName),
    /// A subworker has finished its tasks and goes (management port).
    Unregister(WorkerName),
    /// Cancel a task (result port; on a subworker, any of its ports).
    Cancel {
        /// The task to cancel.
        task_id: TaskId,
    },
    /// Many submissions in one request (task ports), answered with their
    /// ids at once; each runs at its own priority.
    Batch(Vec<Submit>),
    /// The periodic tasks and their records (result port).
    Schedules,
    /// Pause (`true`) or resume a periodic task's schedule (result port).
    PauseSchedule {
        /// The periodic task.
        task_name: String,
        /// Pause or resume.
        paused: bool,
    },
    /// A control plane sends a subworker runs of tasks, each under a lease
    /// (the subworker's CRITICAL port); answered `Done` once they are
    /// taken, while their outcomes come back through `Collect`.
    Dispatch(Vec<Dispatch>),
    /// A subworker started runs it was sent (management port).
    Started(Started),
    /// A control plane took these tasks back from a subworker (its task
    /// ports): stop them there, started or not; what they report is
    /// discarded anyway.
    Revoke {
        /// The tasks taken back.
        task_ids: Vec<TaskId>,
    },
    /// A control plane asks a subworker for the outcomes of the runs it
    /// sent (the subworker's CRITICAL port): answered `Reports` as soon as
    /// at least one is ready, with every outcome ready then.
    Collect,
    /// The tasks this control plane and its live subworkers provide, with
    /// their declared defaults and JSON Schemas (result port).
    Tasks,
    /// Run a workflow (task ports of a control plane): answered with its
    /// status once accepted (`docs/workflows.md`).
    SubmitWorkflow(WorkflowSubmit),
    /// Report a workflow's state, members and result (result port).
    WorkflowStatus {
        /// The workflow asked about.
        workflow_id: WorkflowId,
    },
    /// Cancel a workflow (result port): pending members never run, live
    /// ones are cancelled.
    CancelWorkflow {
        /// The workflow to cancel.
        workflow_id: WorkflowId,
    },
    /// The cluster-wide task limits and what they hold now (result port);
    /// answered `TaskLimits`.
    TaskLimits,
    /// Sets a task's cluster-wide limit at run time, or removes it (`None`);
    /// operator only when the cluster is keyed (result port).
    SetTaskLimit {
        /// The task name.
        task_name: String,
        /// The limit; `None` lifts the declared or flag limit.
        limit: Option<crate::wire::task_limit::TaskLimit>,
    },
    /// Drops a task's run-time limit: its declared or flag limit holds
    /// again; operator only when the cluster is keyed (result port).
    ClearTaskLimit {
        /// The task name.
        task_name: String,
    },
    /// Blocking submissions of one client, many to a frame (task ports):
    /// answered `Outcomes` as soon as at least one of the session's calls
    /// has an outcome, with every outcome ready then (`docs/protocol.md`).
    Calls(Calls),
    /// A control plane asks a subworker (its task ports) for runs it sent
    /// ahead, for a worker that is idle: each one not started there is
    /// answered `HandedBack` at once and never starts there; one started
    /// meanwhile runs as sent.
    HandBack {
        /// The runs asked back.
        task_ids: Vec<TaskId>,
    },
}

/// The most calls one `Calls` frame may carry; a frame with more is refused
/// whole (`BadRequest`), and only this many are kept while it is decoded.
pub const MAX_CALLS_PER_FRAME: usize = 1024;

/// A frame of blocking calls from one client session: the new calls, each
/// with the client's tag for it. Its answer carries the outcomes of any of
/// the session's calls, this frame's or earlier ones', each under its tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calls {
    /// The client's session: a random id per client and port, under which
    /// the control plane keeps its calls' outcomes until they are sent.
    pub session: Uuid,
    /// The new calls (none: the frame only waits for outcomes).
    pub calls: CallList,
}

/// One blocking call of a [`Calls`] frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// The client's tag for this call, unique within its session: the
    /// outcome comes back under it (task ids may repeat, tags may not).
    pub tag: u64,
    /// The submission (answered as a blocking one, whatever its `wait`).
    pub submit: Submit,
}

/// The calls of a frame. Decoding keeps at most [`MAX_CALLS_PER_FRAME`]:
/// a frame with more keeps none and says how many it had (`over`), so
/// that a hostile frame cannot make the decoder hold a million calls.
#[derive(Debug, Clone, Default)]
pub struct CallList {
    /// The calls.
    pub calls: Vec<Call>,
    /// How many calls a frame over the limit carried (their calls dropped).
    pub over: Option<usize>,
}

impl Serialize for CallList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.calls)
    }
}

impl<'de> Deserialize<'de> for CallList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<CallList, D::Error> {
        struct Bounded;
        impl<'de> serde::de::Visitor<'de> for Bounded {
            type Value = CallList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of calls")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<CallList, A::Error> {
                let mut list = CallList {
                    calls: Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_CALLS_PER_FRAME)),
                    over: None,
                };
                let mut count = 0usize;
                while let Some(call) = seq.next_element::<Call>()? {
                    count += 1;
                    if count <= MAX_CALLS_PER_FRAME {
                        list.calls.push(call);
                    } else if count == MAX_CALLS_PER_FRAME + 1 {
                        list.calls = Vec::new();
                    }
                }
                list.over = (count > MAX_CALLS_PER_FRAME).then_some(count);
                Ok(list)
            }
        }
        deserializer.deserialize_seq(Bounded)
    }
}

/// One call's outcome in an `Outcomes` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The tag the client gave the call.
    pub tag: u64,
    /// The reply a blocking `Submit` of it would have had, encoded as a
    /// frame: a `Reply::Report`, or a `Reply::Error` for a refused call.
    #[serde(with = "serde_bytes")]
    pub reply: Vec<u8>,
}

/// One run of a task sent to a subworker, under a lease: a fencing token
/// the control plane takes back when it sends the task elsewhere, so that
/// what the run reports afterwards is discarded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatch {
    /// The lease, unique per dispatch on the control plane that made it.
    pub lease: u64,
    /// The run, as a blocking submission with its priority, timeout and
    /// run number filled in.
    pub submit: Submit,
}

/// Runs a subworker started, each named by its task and lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// Who started them.
    pub name: WorkerName,
    /// The runs: task id and the lease it was sent under.
    pub runs: Vec<(TaskId, u64)>,
}

/// A periodic task's schedule and record, as `fastworker schedules` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleStatus {
    /// The task.
    pub task_name: String,
    /// The schedule as declared (`every 30s, 3 runs`, `cron '0 * * * *' in Europe/Paris`).
    pub schedule: String,
    /// Paused from the command line.
    pub paused: bool,
    /// The next run (ms since the Unix epoch); `None` when paused or over.
    pub next_ms: Option<u64>,
    /// Runs started so far.
    pub runs: u32,
    /// Runs skipped because the previous one was still going.
    pub skipped: u32,
    /// The last run's task id.
    pub last_task_id: Option<TaskId>,
    /// When the last run was started.
    pub last_run_ms: Option<u64>,
    /// The last run's state, or why it was refused.
    pub last_outcome: Option<String>,
}

/// A subworker's introduction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    /// Who it is and which run of it.
    pub name: WorkerName,
    /// Its base address as the control plane can dial it; tasks go to its
    /// port there (base+0) with their priority in the frame.
    pub address: String,
    /// Tasks it runs at once.
    pub concurrency: u32,
    /// Tasks it wants queued ahead beyond `concurrency` (`--prefetch`).
    pub prefetch: u32,
    /// The tasks its plugins declare.
    pub tasks: Vec<OfferedTask>,
}

/// A task a subworker provides, with its declared defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferedTask {
    /// Its declared name.
    pub name: String,
    /// Its default priority.
    pub priority: Priority,
    /// Its default timeout in milliseconds (0: none).
    pub timeout_ms: u64,
    /// Its default retries.
    pub max_retries: u32,
    /// Its default pause before a retry, in milliseconds.
    pub retry_delay_ms: u64,
    /// Its periodic schedule as declared (JSON), or empty.
    pub schedule: String,
    /// The first line of its doc comment.
    pub doc: String,
    /// Its Rust signature.
    pub signature: String,
    /// The JSON Schema of its arguments, as JSON text, when its plugin
    /// exports one (then the control plane checks HTTP submissions with it).
    pub args_schema: Option<String>,
    /// The JSON Schema of its result, as JSON text.
    pub result_schema: Option<String>,
    /// Its declared cluster-wide limit (`#[task(rate = ..., max_running = ...)]`),
    /// which the control plane applies unless it has one for the task already.
    pub limit: Option<crate::wire::task_limit::TaskLimit>,
}

impl OfferedTask {
    /// An offer of `name` with no declared options: normal priority, no
    /// timeout, retries, schedule, description, schema or limit.
    pub fn new(name: &str) -> OfferedTask {
        OfferedTask {
            name: name.to_string(),
            priority: Priority::Normal,
            timeout_ms: 0,
            max_retries: 0,
            retry_delay_ms: 0,
            schedule: String::new(),
            doc: String::new(),
            signature: String::new(),
            args_schema: None,
            result_schema: None,
            limit: None,
        }
    }
}

impl From<&fastworker_plugin_sdk::abi::TaskDecl> for OfferedTask {
    fn from(decl: &fastworker_plugin_sdk::abi::TaskDecl) -> Self {
        let options = &decl.options;
        OfferedTask {
            name: decl.name.to_string(),
            priority: options.priority,
            timeout_ms: options.timeout_ms,
            max_retries: options.max_retries,
            retry_delay_ms: options.retry_delay_ms,
            schedule: options.schedule.to_string(),
            doc: decl.doc.to_string(),
            signature: decl.signature.to_string(),
            args_schema: None,
            result_schema: None,
            limit: None,
        }
    }
}

/// A subworker's identity: the `--worker-id` chosen by its operator, and a
/// fresh id per process, which tells a restarted worker from a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerName {
    /// The `--worker-id`.
    pub worker_id: String,
    /// Unique to this process.
    pub instance: Uuid,
}

/// A subworker's periodic sign of life.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Who sends it.
    pub name: WorkerName,
    /// Tasks it is running or has queued, from any client.
    pub in_flight: u32,
}

/// The state of the cluster, in the shape of the seeds' `get_subworker_status()`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Subworkers known, whatever their state.
    pub total_subworkers: u32,
    /// Subworkers that tasks are routed to.
    pub active_subworkers: u32,
    /// Each subworker, sorted by id.
    pub subworkers: Vec<WorkerStatus>,
    /// The worker processes this control plane supervises (`local-1` …,
    /// docs/isolation.md), given-up ones included; empty in-process.
    pub worker_processes: Vec<WorkerProcessStatus>,
}

/// One supervised worker process: what `fastworker workers`, the dashboard
/// and `/metrics` show of it, so a leak or a crash loop is seen per process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerProcessStatus {
    /// Its worker id (`local-N`).
    pub worker_id: String,
    /// The pid of the live process; none while it restarts or once given up.
    pub pid: Option<u32>,
    /// Runs the live process started.
    pub runs: u64,
    /// Runs started by every process under this id.
    pub runs_total: u64,
    /// Its resident memory when last read (every 100 ms), in bytes.
    pub rss_bytes: u64,
    /// Times it was started again after dying.
    pub restarts: u64,
    /// Times it was replaced on purpose (`--max-tasks-per-child`,
    /// `--max-memory-per-child`).
    pub recycles: u64,
    /// Times it died without being asked to.
    pub crashes: u64,
    /// Whether it died too often and is no longer started.
    pub given_up: bool,
    /// Its last crash, if any.
    pub last_crash: Option<WorkerProcessCrash>,
}

/// How a worker process last died, and the runs it was executing then.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerProcessCrash {
    /// The tasks whose runs it was executing (each counted a crash).
    pub task_ids: Vec<TaskId>,
    /// Their task names, in the same order.
    pub tasks: Vec<String>,
    /// Its signal or exit status, e.g. "killed by signal 6 (SIGABRT)".
    pub how: String,
    /// When it was seen dead, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// One subworker as the control plane sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its `--worker-id`.
    pub worker_id: String,
    /// Its base address.
    pub address: String,
    /// Whether tasks are routed to it.
    pub status: WorkerState,
    /// Tasks in flight there (the larger of those the control plane sent
    /// and those it last reported).
    pub load: u32,
    /// Tasks it runs at once.
    pub concurrency: u32,
    /// Last heartbeat or registration, in milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
    /// Whether the control plane's connection to it is up.
    pub connected: bool,
    /// Tasks the control plane has sent it so far.
    pub dispatched: u64,
    /// The tasks it provides, sorted.
    pub tasks: Vec<String>,
}

/// Whether a subworker gets tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    /// Registered, connected and heartbeating: tasks are routed to it.
    Active,
    /// Silent for longer than `--inactive-after`, or disconnected: excluded.
    Inactive,
    /// Stopping: finishing what it has, taking nothing new.
    Draining,
}

impl WorkerState {
    /// The lower-case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Inactive => "inactive",
            WorkerState::Draining => "draining",
        }
    }
}

/// A task submission.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Submit {
    /// The id the caller gives this task.
    pub task_id: TaskId,
    /// The declared name of the task to run.
    pub task_name: String,
    /// The arguments: a JSON array (positional) or object (by name).
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// The priority; `None` takes the task's declared default.
    pub priority: Option<Priority>,
    /// Reply when the task has finished (`true`) or as soon as it is queued.
    pub wait: bool,
    /// Run it no earlier than this, in milliseconds since the Unix epoch
    /// (a countdown or an ETA); `None`: as soon as possible.
    pub not_before_ms: Option<u64>,
    /// Its timeout in milliseconds, overriding the declared one (0: none).
    pub timeout_ms: Option<u64>,
    /// Its retries, overriding the declared ones.
    pub retry: Option<RetryPolicy>,
    /// Where to push a notice when it ends.
    pub callback: Option<Callback>,
    /// Which run this is, when a control plane forwards a retry to a
    /// subworker (the task's context reports it); `None` for clients.
    pub attempt: Option<u32>,
}

/// How often and how patiently a failed task is run again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Runs after the first one, at most.
    pub max_retries: u32,
    /// Pause before the first retry, in milliseconds.
    pub delay_ms: u64,
    /// Each further pause is the previous one times this.
    pub factor: f64,
    /// The longest pause, in milliseconds.
    pub max_delay_ms: u64,
}

impl RetryPolicy {
    /// No retries at all.
    pub const NONE: RetryPolicy = RetryPolicy { max_retries: 0, delay_ms: 0, factor: 1.0, max_delay_ms: 0 };

    /// The pause before run `attempt + 1`, after `attempt` runs failed.
    pub fn delay_after(&self, attempt: u32) -> u64 {
        let scaled = self.delay_ms as f64 * self.factor.max(1.0).powi(attempt.saturating_sub(1) as i32);
        (scaled.min(self.max_delay_ms as f64)) as u64
    }
}

/// Where a task's completion notice goes: an NNG PULL socket's address,
/// and bytes of the caller's own to send back with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    /// The address the notice is pushed to (`tcp://host:port`).
    pub address: String,
    /// Returned untouched in the notice.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// What is pushed to a task's callback address when it ends, whatever the
/// ending: its final report and the caller's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    /// The task's final report (state, result or error, times, attempts).
    pub report: TaskReport,
    /// The callback's data.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// What a control plane answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// The task is queued; ask the result port for its outcome.
    Accepted {
        /// The queued task.
        task_id: TaskId,
    },
    /// A task's state, with its result or error once it has finished.
    Report(TaskReport),
    /// The request could not be served.
    Error(ErrorReply),
    /// The port for subworker management, on the control plane's host.
    Discovered {
        /// The port.
        management_port: u16,
    },
    /// The subworkers and their health.
    Workers(ClusterStatus),
    /// The management request was applied.
    Done,
    /// One outcome per submission of a batch, in order.
    Batch(Vec<Result<TaskId, ErrorReply>>),
    /// The periodic tasks and their records.
    Schedules(Vec<ScheduleStatus>),
    /// Outcomes of dispatched runs, answering `Collect`.
    Reports(Vec<Reported>),
    /// The registered tasks, sorted by name (the answer to `Tasks`).
    Tasks(Vec<TaskInfo>),
    /// A workflow's status (the answer to the workflow requests).
    Workflow(WorkflowReport),
    /// Answers `TaskLimits`: one row per limited task name, sorted.
    TaskLimits(Vec<crate::wire::task_limit::TaskLimitStatus>),
    /// Answers `Calls`: the outcomes of a session's calls ready now, each
    /// under its call's tag, oldest first (empty when a newer frame of the
    /// session took its place, or when the session is owed nothing).
    Outcomes(Vec<Outcome>),
}

/// A task a control plane or its subworkers provide, as `Client::tasks`
/// lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Its declared name.
    pub name: String,
    /// The first line of its doc comment.
    pub doc: String,
    /// Its Rust signature.
    pub signature: String,
    /// Its default priority.
    pub priority: Priority,
    /// Its default timeout in milliseconds (0: none).
    pub timeout_ms: u64,
    /// Its default retries.
    pub max_retries: u32,
    /// The JSON Schema of its arguments, as JSON text; `None` when its
    /// plugin exports none.
    pub args_schema: Option<String>,
    /// The JSON Schema of its result, as JSON text.
    pub result_schema: Option<String>,
    /// The worker ids that provide it (the control plane's first).
    pub providers: Vec<String>,
}

/// The outcome of one dispatched run, as a subworker sends it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reported {
    /// The run's task.
    pub task_id: TaskId,
    /// The lease it was sent under.
    pub lease: u64,
    /// The subworker's reply for it, as a blocking submission gets it: an
    /// encoded `Reply::Report` (or `Reply::Error` for a run it refused).
    #[serde(with = "serde_bytes")]
    pub reply: Vec<u8>,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for a free worker.
    Queued,
    /// Being run.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Waiting for its countdown or ETA.
    Scheduled,
    /// A run failed; waiting for its backoff before running again.
    Retrying,
    /// Cancelled before it ran (or asked to stop while running).
    Cancelled,
    /// Ran past its timeout.
    TimedOut,
}

impl TaskState {
    /// True for the states a task never leaves.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::TimedOut)
    }

    /// The lower-case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Scheduled => "scheduled",
            TaskState::Retrying => "retrying",
            TaskState::Cancelled => "cancelled",
            TaskState::TimedOut => "timed_out",
        }
    }
}

/// Everything known about one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task's id.
    pub task_id: TaskId,
    /// The task's name.
    pub task_name: String,
    /// Its state.
    pub state: TaskState,
    /// The priority it was queued at.
    pub priority: Priority,
    /// The worker that ran (or runs) it.
    pub worker: String,
    /// Runs started so far.
    pub attempts: u32,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When its last run started.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// The JSON result, once succeeded.
    #[serde(with = "serde_bytes")]
    pub result: Option<Vec<u8>>,
    /// The error, once failed.
    pub error: Option<TaskError>,
}

/// Why a run did not produce a value, as the host reports it: the plugin
/// ABI's kinds, and `Crashed`, which only the host can see. It is kept
/// apart from `fastworker_plugin_sdk::abi::FailureKind` because that enum
/// crosses the plugin boundary: abi_stable refuses a plugin whose enum has
/// other variants, so a new one there would refuse every plugin built
/// before it. On the wire the first three encode as the ABI's did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The task returned `Err`.
    Error,
    /// The task panicked.
    Panic,
    /// The arguments did not fit the task's parameters.
    BadArguments,
    /// The worker process running it died (a signal or an exit) as many
    /// times as `--max-task-crashes` allows (docs/isolation.md).
    Crashed,
}

impl FailureKind {
    /// The snake-case name the JSON APIs and listings use.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Panic => "panic",
            FailureKind::BadArguments => "bad_arguments",
            FailureKind::Crashed => "crashed",
        }
    }
}

impl From<fastworker_plugin_sdk::abi::FailureKind> for FailureKind {
    fn from(kind: fastworker_plugin_sdk::abi::FailureKind) -> FailureKind {
        use fastworker_plugin_sdk::abi::FailureKind as Abi;
        match kind {
            Abi::Error => FailureKind::Error,
            Abi::Panic => FailureKind::Panic,
            Abi::BadArguments => FailureKind::BadArguments,
        }
    }
}

/// Why a task failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskError {
    /// Returned `Err`, panicked, or got arguments that do not fit.
    pub kind: FailureKind,
    /// What the task (or the host) said.
    pub message: String,
}

/// One line saying how `task_name` failed, for logs and the command line.
pub fn describe_failure(task_name: &str, error: &TaskError) -> String {
    match error.kind {
        FailureKind::Error => format!("task '{task_name}' failed: {}", error.message),
        FailureKind::Panic => format!("task '{task_name}' panicked: {}", error.message),
        // The SDK's message already names the task and the parameter.
        FailureKind::BadArguments => error.message.clone(),
        FailureKind::Crashed => format!("task '{task_name}' crashed its worker process: {}", error.message),
    }
}

/// A refused request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, for programs.
    pub kind: ErrorKind,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// The kinds of refused requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The frame did not decode.
    MalformedFrame,
    /// The frame's version byte is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The frame exceeds the size limit.
    FrameTooLarge,
    /// No loaded plugin declares the task.
    UnknownTask,
    /// A submission sent to the result port, or a status query to a task port.
    WrongEndpoint,
    /// The control plane never saw this task id (or forgot it long ago).
    UnknownTaskId,
    /// The task's result was dropped: older than the cache TTL, or evicted.
    ExpiredTaskId,
    /// The control plane is shutting down and takes no new tasks.
    ShuttingDown,
    /// The task was accepted but no worker can run it.
    NoWorker,
    /// A live subworker already uses this `--worker-id`.
    DuplicateWorker,
    /// The control plane does not know this subworker (it restarted, or
    /// forgot a worker silent for too long): register again.
    UnknownWorker,
    /// The control plane could not connect to the address a subworker gave.
    WorkerUnreachable,
    /// A cancellation for a task that has already ended.
    AlreadyFinished,
    /// No periodic task of that name.
    UnknownSchedule,
    /// A registration the control plane cannot take (too many slots or
    /// tasks, a name too long).
    BadRegistration,
    /// A limit was reached (the message names its flag): back off and retry.
    Busy,
    /// A submission asks for what a limit does not allow (a countdown too
    /// far, too many retries, a callback scheme not allowed): change it.
    BadRequest,
    /// The frame did not prove it comes from a holder of the cluster's key
    /// (missing, wrong or retired key, altered, stale or replayed frame).
    Unauthenticated,
    /// The key's role may not do this (a client key registering a worker,
    /// a worker key cancelling a task).
    Forbidden,
    /// A task id already used for another task (another name or arguments).
    IdConflict,
    /// A stopping subworker hands back a task it has not started: the
    /// control plane sends it elsewhere (it never counts as a run).
    HandedBack,
    /// No worker provides the task yet, while a control plane that has just
    /// started waits for its subworkers to register (`--restart-window`):
    /// transient, retry shortly (the Rust client does so by itself).
    NotYetProvided,
    /// The control plane never saw this workflow id, or forgot it (finished
    /// workflows are kept like results: `--result-cache-size`, `--result-cache-ttl`).
    UnknownWorkflowId,
    /// A task limit that is out of range, for a bad task name, or one too many.
    BadTaskLimit,
}

/// The most slots (concurrency plus prefetch) a subworker may ask for.
pub const MAX_WORKER_SLOTS: u32 = 4096;

impl ErrorReply {
    /// Builds an error reply.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply { kind, message: message.into() }
    }
}

/// A frame that could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame has no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The version byte is wrong.
    #[error("protocol version {found} is not supported (this build speaks version {PROTOCOL_VERSION})")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// The frame is larger than allowed.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body is not valid postcard for the expected message.
    #[error("frame does not decode: {0}")]
    Body(#[from] postcard::Error),
}

impl DecodeError {
    /// The error reply a server sends for this frame.
    pub fn to_reply(&self) -> ErrorReply {
        let kind = match self {
            DecodeError::Empty | DecodeError::Body(_) => ErrorKind::MalformedFrame,
            DecodeError::Version { .. } => ErrorKind::UnsupportedVersion,
            DecodeError::TooLarge { .. } => ErrorKind::FrameTooLarge,
        };
        ErrorReply::new(kind, self.to_string())
    }
}

/// Appends the frame for `message` to `out`.
pub fn encode_into<T: Serialize, W: Write>(message: &T, mut out: W) -> std::io::Result<()> {
    out.write_all(&[PROTOCOL_VERSION])?;
    postcard::to_io(message, out).map(|_| ()).map_err(std::io::Error::other)
}

/// The frame for `message` as an NNG message, written straight into it:
/// its size is counted first (a pass that copies nothing), then the message
/// is allocated at that size and encoded into, so that a large argument or
/// result is copied once here, not into a buffer and then again. (Postcard
/// writing field by field through `Message::push_back` would cost a call
/// into NNG per field, and grow the message by copying it.)
pub fn encode_message<T: Serialize>(message: &T) -> nng::Message {
    let size = postcard::experimental::serialized_size(message).expect("every message has a postcard encoding");
    let mut frame = nng::Message::with_zeros(size + 1);
    let (version, body) = frame.as_mut_slice().split_first_mut().expect("a frame has its version byte");
    *version = PROTOCOL_VERSION;
    postcard::to_slice(message, body).expect("the message fits the size just counted");
    frame
}

/// The frame for `message`.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    encode_into(message, &mut frame).expect("writing to a Vec cannot fail");
    frame
}

/// The most bytes a control plane's dispatch frame of one run adds to the
/// submission it took (the lease, and the priority, timeout, retry policy
/// and run number it fills in): a subworker takes dispatch frames this much
/// over its frame bound, so that a submission at the bound can run there.
pub(crate) const DISPATCH_OVERHEAD: usize = 128;

/// The variant index of [`Request::Dispatch`] in the encoding.
const DISPATCH_INDEX: u8 = 12;

/// A [`Dispatch`] with borrowed parts: the control plane forwards a task it
/// keeps (it may need to send it again) without copying it first.
#[derive(Serialize)]
struct ForwardedDispatch<'a> {
    lease: u64,
    submit: ForwardedSubmit<'a>,
}

#[derive(Serialize)]
struct ForwardedSubmit<'a> {
    task_id: TaskId,
    task_name: &'a str,
    #[serde(with = "serde_bytes")]
    args: &'a [u8],
    priority: Option<Priority>,
    wait: bool,
    not_before_ms: Option<u64>,
    timeout_ms: Option<u64>,
    retry: Option<RetryPolicy>,
    callback: Option<Callback>,
    attempt: Option<u32>,
}

/// The parts of a task a control plane forwards to a subworker.
pub(crate) struct Forwarded<'a> {
    pub(crate) task_id: TaskId,
    pub(crate) task_name: &'a str,
    pub(crate) args: &'a [u8],
    pub(crate) priority: Priority,
    pub(crate) timeout_ms: u64,
    pub(crate) attempt: u32,
    pub(crate) lease: u64,
}

/// Appends one run of a `Request::Dispatch` (a [`Dispatch`]), encoded, to
/// `parts`: a blocking submission to be run once (the control plane does
/// the retrying) within `timeout_ms`, under `lease`. The link gathers such
/// parts and sends those ready together in one frame ([`dispatch_frame`]).
pub(crate) fn encode_dispatch_part(forwarded: Forwarded<'_>, parts: &mut Vec<u8>) {
    let Forwarded { task_id, task_name, args, priority, timeout_ms, attempt, lease } = forwarded;
    let submit = ForwardedSubmit {
        task_id,
        task_name,
        args,
        priority: Some(priority),
        wait: true,
        not_before_ms: None,
        timeout_ms: Some(timeout_ms),
        retry: Some(RetryPolicy::NONE),
        callback: None,
        attempt: Some(attempt),
    };
    let buffer = std::mem::take(parts);
    *parts = postcard::to_extend(&ForwardedDispatch { lease, submit }, buffer).expect("writing to a Vec cannot fail");
}

/// The frame of a `Request::Dispatch` of `count` parts encoded back to back
/// in `parts`: the version, the variant, the count as a varint, then the
/// parts (postcard's layout of a list).
pub(crate) fn dispatch_frame(count: usize, parts: &[u8]) -> nng::Message {
    // Allocated at its size and filled, so that the runs' arguments are
    // copied once (NNG 1.4 corrupts its heap when a seal is later put in
    // front of a message made by `Message::with_capacity`: this is not one).
    let mut varint = [0u8; 10];
    let count = postcard::to_slice(&count, &mut varint).expect("a usize fits ten bytes");
    let head = 2 + count.len();
    let mut frame = nng::Message::with_zeros(head + parts.len());
    let body = frame.as_mut_slice();
    body[..2].copy_from_slice(&[PROTOCOL_VERSION, DISPATCH_INDEX]);
    body[2..head].copy_from_slice(count);
    body[head..].copy_from_slice(parts);
    frame
}

/// The variant index of [`Reply::Reports`] in the encoding.
const REPORTS_INDEX: u32 = 8;

/// A [`Reported`] whose reply is borrowed: a subworker sends the outcomes
/// it keeps (each an encoded reply) without copying them first.
#[derive(Serialize)]
pub(crate) struct ReportedRef<'a> {
    pub(crate) task_id: TaskId,
    pub(crate) lease: u64,
    #[serde(with = "serde_bytes")]
    pub(crate) reply: &'a [u8],
}

/// The frame of a `Reply::Reports` of `outcomes`, each reply copied once,
/// into the frame.
pub(crate) fn reports_message(outcomes: &[ReportedRef<'_>]) -> nng::Message {
    struct Reports<'a, 'b>(&'a [ReportedRef<'b>]);
    impl Serialize for Reports<'_, '_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_newtype_variant("Reply", REPORTS_INDEX, "Reports", self.0)
        }
    }
    encode_message(&Reports(outcomes))
}

/// The variant index of [`Reply::Outcomes`] in the encoding.
const OUTCOMES_INDEX: u32 = 12;

/// An [`Outcome`] whose reply is borrowed: a control plane sends the
/// outcomes a session keeps (each an encoded reply) without copying them
/// first.
#[derive(Serialize)]
pub(crate) struct OutcomeRef<'a> {
    pub(crate) tag: u64,
    #[serde(with = "serde_bytes")]
    pub(crate) reply: &'a [u8],
}

/// The frame of a `Reply::Outcomes` of `outcomes`, each reply copied once,
/// into the frame.
pub(crate) fn outcomes_message(outcomes: &[OutcomeRef<'_>]) -> nng::Message {
    struct Outcomes<'a, 'b>(&'a [OutcomeRef<'b>]);
    impl Serialize for Outcomes<'_, '_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_newtype_variant("Reply", OUTCOMES_INDEX, "Outcomes", self.0)
        }
    }
    encode_message(&Outcomes(outcomes))
}

/// Appends one call of a `Request::Calls` (a [`Call`]), encoded, to `parts`;
/// [`calls_frame`] puts the parts gathered into one frame.
pub(crate) fn encode_call_part(tag: u64, submit: &Submit, parts: &mut Vec<u8>) {
    #[derive(Serialize)]
    struct CallRef<'a> {
        tag: u64,
        submit: &'a Submit,
    }
    let buffer = std::mem::take(parts);
    *parts = postcard::to_extend(&CallRef { tag, submit }, buffer).expect("writing to a Vec cannot fail");
}

/// The frame of a `Request::Calls` of `session` with `count` calls encoded
/// back to back in `parts`, laid out as postcard lays out the owned request.
pub(crate) fn calls_frame(session: Uuid, count: usize, parts: &[u8]) -> nng::Message {
    // The request with no calls ends with its count, one zero byte: what
    // comes before it is the prefix, whatever the variant's index.
    let mut frame = encode(&Request::Calls(Calls { session, calls: CallList::default() }));
    frame.pop();
    let mut varint = [0u8; 10];
    frame.extend_from_slice(postcard::to_slice(&count, &mut varint).expect("a usize fits ten bytes"));
    frame.extend_from_slice(parts);
    nng::Message::from(&frame[..])
}

/// Decodes a frame of at most `limit` bytes.
pub fn decode<'a, T: Deserialize<'a>>(frame: &'a [u8], limit: usize) -> Result<T, DecodeError> {
    if frame.len() > limit {
        return Err(DecodeError::TooLarge { size: frame.len(), limit });
    }
    match frame.split_first() {
        None => Err(DecodeError::Empty),
        Some((&PROTOCOL_VERSION, body)) => Ok(postcard::from_bytes(body)?),
        Some((&found, _)) => Err(DecodeError::Version { found }),
    }
}

/// Milliseconds since the Unix epoch, as reports carry them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte layout shown in docs/protocol.md.
    #[test]
    fn a_submission_encodes_as_documented() {
        let task_id = TaskId::from_bytes([7; 16]);
        let request = Request::Submit(Submit {
            task_id,
            task_name: "add".into(),
            args: b"[5,3]".to_vec(),
            priority: None,
            wait: true,
            ..Default::default()
        });
        let mut expected = vec![4, 0, 16];
        expected.extend_from_slice(&[7; 16]);
        expected.extend_from_slice(&[3, b'a', b'd', b'd', 5, b'[', b'5', b',', b'3', b']', 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(encode(&request), expected);
        assert!(matches!(decode::<Request>(&expected, 1024), Ok(Request::Submit(s)) if s.task_id == task_id));
    }

    #[test]
    fn gathered_dispatch_parts_make_an_ordinary_dispatch() {
        let submit = |task_id, attempt| Submit {
            task_id,
            task_name: "add".into(),
            args: b"[1,2]".to_vec(),
            priority: Some(Priority::High),
            wait: true,
            timeout_ms: Some(500),
            retry: Some(RetryPolicy::NONE),
            attempt: Some(attempt),
            ..Default::default()
        };
        let mut parts = Vec::new();
        let mut part = |task_id, attempt, lease| {
            encode_dispatch_part(
                Forwarded {
                    task_id,
                    task_name: "add",
                    args: b"[1,2]",
                    priority: Priority::High,
                    timeout_ms: 500,
                    attempt,
                    lease,
                },
                &mut parts,
            )
        };
        let (first, second) = (TaskId::from_bytes([9; 16]), TaskId::from_bytes([8; 16]));
        part(first, 2, 300);
        part(second, 1, 301);
        let frame = dispatch_frame(2, &parts);
        let owned = Request::Dispatch(vec![
            Dispatch { lease: 300, submit: submit(first, 2) },
            Dispatch { lease: 301, submit: submit(second, 1) },
        ]);
        assert_eq!(&frame[..], &encode(&owned)[..]);
        // Documented in docs/protocol.md: variant 12, the count (2), then
        // each run: its lease (300 as a varint: ac 02) and its submission.
        assert_eq!(&frame[..5], &[4, 12, 2, 0xac, 0x02]);
    }

    #[test]
    fn a_dispatch_of_one_run_is_within_the_overhead_of_its_submission() {
        let args = vec![b'a'; 70_000];
        let name = "n".repeat(MAX_NAME_BYTES);
        let task_id = TaskId::from_bytes([9; 16]);
        let submitted = Request::Submit(Submit {
            task_id,
            task_name: name.clone(),
            args: args.clone(),
            wait: true,
            ..Default::default()
        });
        let mut parts = Vec::new();
        let forwarded = Forwarded {
            task_id,
            task_name: &name,
            args: &args,
            priority: Priority::Low,
            timeout_ms: u64::MAX,
            attempt: u32::MAX,
            lease: u64::MAX,
        };
        encode_dispatch_part(forwarded, &mut parts);
        let dispatch = dispatch_frame(1, &parts);
        assert!(dispatch.len() <= encode(&submitted).len() + DISPATCH_OVERHEAD, "{}", dispatch.len());
    }

    #[test]
    fn borrowed_reports_encode_as_owned_ones() {
        let task_id = TaskId::from_bytes([3; 16]);
        let reply = encode(&Reply::Done);
        let borrowed = reports_message(&[ReportedRef { task_id, lease: 300, reply: &reply }]);
        let owned = Reply::Reports(vec![Reported { task_id, lease: 300, reply: reply.clone() }]);
        assert_eq!(&borrowed[..], &encode(&owned)[..]);
        assert_eq!(&encode_message(&owned)[..], &encode(&owned)[..]);
    }

    #[test]
    fn borrowed_outcomes_encode_as_owned_ones() {
        let reply = encode(&Reply::Done);
        let borrowed = outcomes_message(&[OutcomeRef { tag: 7, reply: &reply }, OutcomeRef { tag: 300, reply: &[] }]);
        let owned =
            Reply::Outcomes(vec![Outcome { tag: 7, reply: reply.clone() }, Outcome { tag: 300, reply: Vec::new() }]);
        assert_eq!(&borrowed[..], &encode(&owned)[..]);
        assert_eq!(&outcomes_message(&[])[..], &encode(&Reply::Outcomes(Vec::new()))[..]);
    }

    #[test]
    fn gathered_call_parts_make_an_ordinary_calls_request() {
        let session = Uuid::from_bytes([3; 16]);
        let submit = |n: u8| Submit {
            task_id: TaskId::from_bytes([n; 16]),
            task_name: "add".into(),
            args: vec![b'[', b'0' + n, b']'],
            wait: true,
            ..Default::default()
        };
        let mut parts = Vec::new();
        encode_call_part(7, &submit(1), &mut parts);
        encode_call_part(300, &submit(2), &mut parts);
        let frame = calls_frame(session, 2, &parts);
        let owned = Request::Calls(Calls {
            session,
            calls: CallList {
                calls: vec![Call { tag: 7, submit: submit(1) }, Call { tag: 300, submit: submit(2) }],
                over: None,
            },
        });
        assert_eq!(&frame[..], &encode(&owned)[..]);
        let Ok(Request::Calls(decoded)) = decode::<Request>(&frame, 1 << 20) else { panic!("not Calls") };
        assert_eq!(decoded.calls.calls.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![7, 300]);
        assert_eq!(decoded.calls.over, None);
    }

    #[test]
    fn a_frame_with_too_many_calls_keeps_none_and_counts_them() {
        let mut parts = Vec::new();
        let submit = Submit { task_name: "add".into(), args: b"[]".to_vec(), ..Default::default() };
        for tag in 0..(MAX_CALLS_PER_FRAME as u64 + 5) {
            encode_call_part(tag, &submit, &mut parts);
        }
        let frame = calls_frame(Uuid::nil(), MAX_CALLS_PER_FRAME + 5, &parts);
        let Ok(Request::Calls(decoded)) = decode::<Request>(&frame, usize::MAX) else { panic!("not Calls") };
        assert!(decoded.calls.calls.is_empty());
        assert_eq!(decoded.calls.over, Some(MAX_CALLS_PER_FRAME + 5));
    }

    #[test]
    fn bad_frames_are_told_apart() {
        assert!(matches!(decode::<Request>(&[], 10), Err(DecodeError::Empty)));
        assert!(matches!(decode::<Request>(&[1, 0], 10), Err(DecodeError::Version { found: 1 })));
        assert!(matches!(decode::<Request>(&[4, 99], 10), Err(DecodeError::Body(_))));
        assert!(matches!(decode::<Request>(&[1; 11], 10), Err(DecodeError::TooLarge { size: 11, limit: 10 })));
    }
}
