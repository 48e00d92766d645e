//! A workflow as it travels: the flat tree a client submits (nodes in a
//! list, children named by index, so that decoding never recurses) and the
//! status a control plane answers with. `docs/protocol.md` shows both.

use crate::wire::protocol::FailureKind;
use fastworker_plugin_sdk::Priority;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A workflow's identity: a UUID chosen by the client, so that a resent
/// submission names the same workflow.
pub type WorkflowId = Uuid;

/// A workflow submission: the tree, flattened in depth-first pre-order
/// (node 0 is the root; each child's index is greater than its parent's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSubmit {
    /// The id the caller gives this workflow.
    pub workflow_id: WorkflowId,
    /// The nodes; `nodes[0]` is the root.
    pub nodes: Vec<WorkflowNode>,
}

/// One node of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkflowNode {
    /// A task to run (a member).
    Task(WorkflowStep),
    /// Children run one after another, each receiving the previous one's
    /// result; the chain's result is the last child's.
    Chain(Vec<u32>),
    /// Children run at once; the group's result is the list of theirs, in
    /// order. A chord is a chain of a group and its callback.
    Group(Vec<u32>),
}

/// A member task: what to run and how it takes the result before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStep {
    /// The declared name of the task.
    pub task_name: String,
    /// Its own arguments: a JSON array (positional) or object (by name).
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// How it receives the result before it.
    pub receive: Receive,
    /// Its priority; `None` takes the task's declared one.
    pub priority: Option<Priority>,
    /// Its timeout in milliseconds, overriding the declared one (0: none).
    pub timeout_ms: Option<u64>,
    /// Its retries, overriding the declared ones.
    pub max_retries: Option<u32>,
    /// Its pause before the first retry, in milliseconds (doubling after).
    pub retry_delay_ms: Option<u64>,
}

/// How a member receives the result of what ran before it (in a chain).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Receive {
    /// As its first positional argument (its arguments must be an array).
    #[default]
    First,
    /// Not at all: it runs with its own arguments only.
    Ignore,
    /// As the named argument `key` (its arguments must be an object).
    Key(String),
}

/// Where a workflow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowState {
    /// Members are running or waiting.
    Running,
    /// Every member succeeded; the result is the root's.
    Succeeded,
    /// A member failed or timed out (after its own retries).
    Failed,
    /// Cancelled by a client (the workflow, or one of its members).
    Cancelled,
}

impl WorkflowState {
    /// The lower-case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Running => "running",
            WorkflowState::Succeeded => "succeeded",
            WorkflowState::Failed => "failed",
            WorkflowState::Cancelled => "cancelled",
        }
    }

    /// True once the workflow has ended.
    pub fn is_final(self) -> bool {
        self != WorkflowState::Running
    }
}

/// Where a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Not created yet: it waits for what runs before it.
    Pending,
    /// Its task waits for a worker.
    Queued,
    /// Its task runs.
    Running,
    /// Its task waits for a retry's backoff.
    Retrying,
    /// Its task succeeded.
    Succeeded,
    /// Its task failed.
    Failed,
    /// Its task ran past its timeout.
    TimedOut,
    /// Its task was cancelled.
    Cancelled,
    /// It never ran: the workflow ended first.
    Skipped,
}

impl MemberState {
    /// The lower-case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Pending => "pending",
            MemberState::Queued => "queued",
            MemberState::Running => "running",
            MemberState::Retrying => "retrying",
            MemberState::Succeeded => "succeeded",
            MemberState::Failed => "failed",
            MemberState::TimedOut => "timed_out",
            MemberState::Cancelled => "cancelled",
            MemberState::Skipped => "skipped",
        }
    }
}

/// Everything known about one workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowReport {
    /// Its id.
    pub workflow_id: WorkflowId,
    /// Its state.
    pub state: WorkflowState,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// Its members (task nodes), in node order.
    pub members: Vec<MemberReport>,
    /// The root's JSON result, once succeeded.
    #[serde(with = "serde_bytes")]
    pub result: Option<Vec<u8>>,
    /// The first failure, once failed or cancelled.
    pub failure: Option<WorkflowFailure>,
}

impl WorkflowReport {
    /// The status as JSON, as the HTTP API and the Python client show it
    /// (docs/http-api.md).
    pub fn to_json(&self) -> serde_json::Value {
        let members: Vec<serde_json::Value> = self
            .members
            .iter()
            .map(|m| serde_json::json!({ "node": m.node, "task": m.task_name, "task_id": m.task_id, "state": m.state.as_str() }))
            .collect();
        let failure = self.failure.as_ref().map(|f| {
            serde_json::json!({
                "node": f.node,
                "task_id": f.task_id,
                "task": f.task_name,
                "state": f.state.as_str(),
                "kind": f.kind.as_str(),
                "message": f.message,
            })
        });
        serde_json::json!({
            "workflow_id": self.workflow_id,
            "state": self.state.as_str(),
            "finished": self.state.is_final(),
            "created_ms": self.created_ms,
            "finished_ms": self.finished_ms,
            "members": members,
            "result": self.result.as_deref().and_then(|r| serde_json::from_slice::<serde_json::Value>(r).ok()),
            "failure": failure,
        })
    }
}

/// One member in a workflow's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Its node index (depth-first pre-order of the description).
    pub node: u32,
    /// Its task's name.
    pub task_name: String,
    /// Its task's id, once created.
    pub task_id: Option<Uuid>,
    /// Its state.
    pub state: MemberState,
}

/// Why a workflow did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowFailure {
    /// The member that failed, was cancelled or timed out (`None`: the
    /// workflow itself was cancelled, or could not go on).
    pub node: Option<u32>,
    /// Its task's id.
    pub task_id: Option<Uuid>,
    /// Its task's name.
    pub task_name: Option<String>,
    /// How it ended.
    pub state: MemberState,
    /// Returned `Err`, panicked, or got arguments that do not fit.
    pub kind: FailureKind,
    /// What the task (or the control plane) said.
    pub message: String,
}
