//! The HTTP API for workflows under `/api/v1/workflows`: submit one (the
//! JSON description of `docs/workflows.md`), read its status, wait for its
//! end, cancel it (docs/http-api.md).
//!
//! The same rules as the task routes (`task_api.rs`): operator requests
//! (`roles.rs`), bounded bodies and waits, unknown fields refused, one error shape.
//! Submissions enter the control plane's state directly; a wait is an
//! in-process replier answered when the workflow ends, never a poll.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::task_api::{asked, bounded_wait, json_body, reply_of, wait_of, wait_slot, Answer, WaitQuery};
use super::{ApiError, Shared};
use crate::server::endpoint::Replier;
use crate::wire::protocol::Reply;
use crate::workflow::{Receive, Workflow, WorkflowId, WorkflowNode, WorkflowReport, WorkflowSubmit};

/// A workflow submission as the API takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkflowRequest {
    /// The description: `{"chain": [...]}`, `{"group": [...]}`,
    /// `{"chord": {"group": [...], "then": {...}}}` or `{"task": ...}`.
    workflow: Value,
    /// An id of the caller's, so that sending it again does not run it twice.
    #[serde(default)]
    workflow_id: Option<String>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

impl WorkflowRequest {
    /// The flattened submission, its members checked against their tasks'
    /// schemas where their arguments are complete before they run.
    fn submission(&self, shared: &Shared) -> Result<WorkflowSubmit, ApiError> {
        let workflow_id = match &self.workflow_id {
            None => WorkflowId::new_v4(),
            Some(id) => WorkflowId::parse_str(id)
                .map_err(|_| ApiError::bad_request(format!("workflow_id '{id}' is not a UUID")))?,
        };
        let text = serde_json::to_vec(&self.workflow).expect("JSON");
        let workflow = Workflow::from_json(&text).map_err(|error| ApiError::bad_request(error.to_string()))?;
        let submit = workflow.to_submit(workflow_id).map_err(|error| ApiError::bad_request(error.to_string()))?;
        check_members(shared, &submit)?;
        Ok(submit)
    }
}

/// Members that receive nothing from before them (the first of a chain,
/// members of a group that starts the workflow, `"receive": "none"`) have
/// all their arguments now: those whose task has a schema are checked
/// against it, so that a workflow that cannot run is refused before any
/// member is queued. The others are checked when they are created.
fn check_members(shared: &Shared, submit: &WorkflowSubmit) -> Result<(), ApiError> {
    let nodes = &submit.nodes;
    // Whether a node receives a result from before it (children come after
    // their parent, so one pass in order sees every parent first).
    let mut receives = vec![false; nodes.len()];
    for (index, node) in nodes.iter().enumerate() {
        let (children, chain) = match node {
            WorkflowNode::Task(step) => {
                let complete = !receives[index] || step.receive == Receive::Ignore;
                let schema = shared.state.task_schema(&step.task_name);
                if let (true, Some(schema)) = (complete, schema) {
                    let args: Value = serde_json::from_slice(&step.args).unwrap_or(Value::Null);
                    schema.check(&args).map_err(|reason| {
                        ApiError::v1(
                            StatusCode::BAD_REQUEST,
                            "BadArguments",
                            format!(
                                "member {index} of the workflow: the arguments do not fit task '{}': {reason}",
                                step.task_name
                            ),
                        )
                    })?;
                }
                continue;
            }
            WorkflowNode::Chain(children) => (children, true),
            WorkflowNode::Group(children) => (children, false),
        };
        let before = receives[index];
        for (position, &child) in children.iter().enumerate() {
            if let Some(slot) = receives.get_mut(child as usize) {
                *slot = before || (chain && position > 0);
            }
        }
    }
    Ok(())
}

/// 200 with the final status, or 202 with the current one.
fn report_response(report: &WorkflowReport) -> Response {
    let status = if report.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    (status, Json(report.to_json())).into_response()
}

/// The status in a reply of the control plane, or its refusal.
fn report_of(reply: Option<Reply>) -> Result<WorkflowReport, ApiError> {
    match reply {
        Some(Reply::Workflow(report)) => Ok(report),
        Some(Reply::Error(refusal)) => Err(ApiError::refused(refusal)),
        other => Err(ApiError::internal(format!("unexpected reply: {other:?}"))),
    }
}

/// Waits up to `wait` for the workflow to end; its final status then, or
/// `None` when it was still running (or no wait was asked for).
async fn wait_for(
    shared: &Shared,
    workflow_id: WorkflowId,
    wait: Duration,
) -> Result<Option<WorkflowReport>, ApiError> {
    if wait.is_zero() {
        return Ok(None);
    }
    let (replier, answer) = Replier::local();
    shared.state.wait_workflow(workflow_id, replier);
    match tokio::time::timeout(wait, reply_of(answer)).await {
        Err(_) => Ok(None),
        Ok(reply) => report_of(reply).map(|report| report.state.is_final().then_some(report)),
    }
}

async fn current(shared: &Shared, workflow_id: WorkflowId) -> Result<WorkflowReport, ApiError> {
    report_of(asked(|replier| shared.state.workflow_status(workflow_id, replier)).await)
}

fn parse_id(id: &str) -> Result<WorkflowId, ApiError> {
    WorkflowId::parse_str(id).map_err(|_| ApiError::bad_request(format!("'{id}' is not a workflow id (a UUID)")))
}

/// POST /api/v1/workflows: submits a workflow; with `wait_ms`, waits for it.
pub(crate) async fn submit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let request: WorkflowRequest = json_body(&headers, body)?;
    let wait = bounded_wait(request.wait_ms)?;
    let _slot = wait_slot(&shared, wait)?;
    let submit = request.submission(&shared)?;
    let workflow_id = submit.workflow_id;
    // Answered, in durable mode, once the workflow is stored.
    let (replier, answer) = Replier::local();
    shared.state.submit_workflow_for(submit, replier);
    let report = report_of(reply_of(answer).await)?;
    if report.state.is_final() {
        return Ok(report_response(&report));
    }
    if let Some(report) = wait_for(&shared, workflow_id, wait).await? {
        return Ok(report_response(&report));
    }
    Ok(report_response(&current(&shared, workflow_id).await?))
}

/// GET /api/v1/workflows/{id}: the workflow's state, members, result or
/// first failure.
pub(crate) async fn status(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    Ok(report_response(&current(&shared, parse_id(&id)?).await?))
}

/// GET /api/v1/workflows/{id}/wait?timeout_ms=N: waits (at most 60 s) for
/// the workflow to end.
pub(crate) async fn wait(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Answer {
    let workflow_id = parse_id(&id)?;
    let wait = wait_of(query)?;
    let _slot = wait_slot(&shared, wait)?;
    if let Some(report) = wait_for(&shared, workflow_id, wait).await? {
        return Ok(report_response(&report));
    }
    Ok(report_response(&current(&shared, workflow_id).await?))
}

/// POST /api/v1/workflows/{id}/cancel: cancels a running workflow (its
/// pending members never run).
pub(crate) async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    let workflow_id = parse_id(&id)?;
    let operator = crate::server::state::Caller::OPERATOR;
    let reply = asked(|replier| shared.state.cancel_workflow(workflow_id, operator, replier)).await;
    Ok(report_response(&report_of(reply)?))
}
