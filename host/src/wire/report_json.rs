//! A task's report as JSON: the one shape the HTTP API v1 answers
//! (docs/http-api.md) and `fastworker status` prints, so that a program
//! reads a task the same way from either.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::protocol::{TaskId, TaskReport};

/// A task's state, result or failure, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReportJson {
    /// The task's id.
    pub task_id: TaskId,
    /// The task's name.
    pub task: String,
    /// `scheduled`, `queued`, `running`, `retrying`, `succeeded`, `failed`,
    /// `timed_out` or `cancelled` (docs/lifecycle.md).
    pub state: String,
    /// Whether the state is final.
    pub finished: bool,
    /// The priority it was queued at.
    pub priority: String,
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
    /// The task's JSON value, once it succeeded.
    pub result: Option<Value>,
    /// Why it did not succeed, once it failed.
    pub failure: Option<FailureJson>,
}

/// Why a task did not succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureJson {
    /// `error`, `panic`, `bad_arguments` or `crashed`.
    pub kind: String,
    /// The task's own message, or the host's.
    pub message: String,
}

impl From<&TaskReport> for TaskReportJson {
    fn from(report: &TaskReport) -> TaskReportJson {
        TaskReportJson {
            task_id: report.task_id,
            task: report.task_name.clone(),
            state: report.state.as_str().to_string(),
            finished: report.state.is_final(),
            priority: report.priority.as_str().to_string(),
            worker: report.worker.clone(),
            attempts: report.attempts,
            created_ms: report.created_ms,
            started_ms: report.started_ms,
            finished_ms: report.finished_ms,
            result: report.result.as_deref().and_then(|r| serde_json::from_slice::<Value>(r).ok()),
            failure: report
                .error
                .as_ref()
                .map(|error| FailureJson { kind: error.kind.as_str().to_string(), message: error.message.clone() }),
        }
    }
}
