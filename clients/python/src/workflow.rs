//! Workflows from Python: the description (a dict written as
//! docs/workflows.md says, or built with `fastworker.chain`, `group`,
//! `chord` and `task`) read into the Rust client's `Workflow`, and a
//! workflow's status turned into a dict, its result, or the exception its
//! first failure stands for.

use fastworker::protocol::FailureKind;
use fastworker::workflow::{MemberState, Workflow, WorkflowFailure, WorkflowId, WorkflowReport, WorkflowState};
use pyo3::prelude::*;
use serde_json::Value;

use crate::failure::{Class, Failure};
use crate::json::{to_json, to_python};

/// The description as a workflow, or why it is not one.
pub(crate) fn description(value: &Bound<'_, PyAny>) -> Result<Workflow, Failure> {
    let value = to_json(value)
        .map_err(|why| Failure::new(Class::BadRequest, format!("the workflow description is not JSON: {why}")))?;
    let bytes = serde_json::to_vec(&value).map_err(|error| Failure::new(Class::BadRequest, error.to_string()))?;
    Workflow::from_json(&bytes).map_err(|error| Failure::new(Class::BadRequest, error.to_string()))
}

/// A workflow id given as text.
pub(crate) fn parse_id(text: &str) -> Result<WorkflowId, Failure> {
    WorkflowId::parse_str(text.trim())
        .map_err(|_| Failure::new(Class::InvalidTaskId, format!("'{text}' is not a workflow id (a UUID)")))
}

fn python(py: Python<'_>, value: &Value) -> Result<Py<PyAny>, Failure> {
    to_python(py, value).map(Bound::unbind).map_err(|error| Failure::new(Class::ProtocolError, error.to_string()))
}

/// The workflow's status, as a dict.
pub(crate) fn to_status(py: Python<'_>, report: WorkflowReport) -> Result<Py<PyAny>, Failure> {
    python(py, &report.to_json())
}

/// The workflow's id, as a str.
pub(crate) fn to_id(py: Python<'_>, report: WorkflowReport) -> Result<Py<PyAny>, Failure> {
    python(py, &Value::String(report.workflow_id.to_string()))
}

/// The result of a workflow that ended, or the exception its end stands for.
pub(crate) fn to_result(py: Python<'_>, report: WorkflowReport) -> Result<Py<PyAny>, Failure> {
    match report.state {
        WorkflowState::Succeeded => {
            let result = report.result.as_deref().unwrap_or(b"null");
            let value: Value = serde_json::from_slice(result).map_err(|error| {
                Failure::new(Class::ProtocolError, format!("the workflow's result is not JSON: {error}"))
            })?;
            python(py, &value)
        }
        WorkflowState::Running => Err(Failure::new(
            Class::ProtocolError,
            format!("workflow {} is running where a final state was expected", report.workflow_id),
        )),
        WorkflowState::Failed | WorkflowState::Cancelled => Err(failure_of(&report)),
    }
}

/// The exception a failed or cancelled workflow stands for: its first
/// failing member's (`TaskFailed`, `TaskPanicked`, `BadArguments`,
/// `TaskTimedOut`, `Cancelled`), naming that member's task and id; or
/// `Cancelled` when the workflow itself was.
fn failure_of(report: &WorkflowReport) -> Failure {
    let workflow_id = report.workflow_id;
    let Some(failure) = &report.failure else {
        let class = if report.state == WorkflowState::Cancelled { Class::Cancelled } else { Class::TaskFailed };
        return Failure::new(class, format!("workflow {workflow_id} {}", report.state.as_str()));
    };
    let WorkflowFailure { node, task_id, task_name, state, kind, message } = failure;
    let class = match (state, kind) {
        (MemberState::TimedOut, _) => Class::TaskTimedOut,
        (MemberState::Cancelled | MemberState::Skipped, _) => Class::Cancelled,
        (_, FailureKind::Panic) => Class::TaskPanicked,
        (_, FailureKind::BadArguments) => Class::BadArguments,
        (_, FailureKind::Error | FailureKind::Crashed) => Class::TaskFailed,
    };
    let text = match (node, task_name) {
        (Some(node), Some(name)) => {
            format!("workflow {workflow_id}: member {node} ('{name}') {}: {message}", state.as_str())
        }
        _ => format!("workflow {workflow_id} {}: {message}", report.state.as_str()),
    };
    Failure { task_id: task_id.map(|id| id.to_string()), task_name: task_name.clone(), ..Failure::new(class, text) }
}
