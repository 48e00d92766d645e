//! The HTTP API for workflows under `/api/v1/workflows`: submit one (the
//! JSON description of `docs/workflows.md`), read its status, wait for its
//! end, cancel it (docs/http-api.md).
//!
//! The same rules as the task routes (`task_api.rs`): operator requests
//! (`roles.rs`), bounded bodies and waits, unknown fields refused, one error shape.
//! Submissions enter the control plane's state directly; a wait is an
//! in-process replier answered when the workflow ends, never a poll.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::followed::{asked, bounded_wait, reply_of, respond, settle, wait_slot, Answer, Followed};
use super::task_api::json_body;
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
    let report = WorkflowReport::of_reply(reply_of(answer).await)?;
    if report.state.is_final() {
        return Ok(respond(&report));
    }
    Ok(respond(&settle::<WorkflowReport>(&shared, workflow_id, wait).await?))
}

/// A workflow, as the API follows it: `GET /api/v1/workflows/{id}`,
/// `.../wait` and `.../cancel` are [`super::followed`]'s handlers.
impl Followed for WorkflowReport {
    type Id = WorkflowId;

    fn parse_id(id: &str) -> Result<WorkflowId, ApiError> {
        WorkflowId::parse_str(id).map_err(|_| ApiError::bad_request(format!("'{id}' is not a workflow id (a UUID)")))
    }

    fn ask_wait(shared: &Shared, workflow_id: WorkflowId, replier: Replier) {
        shared.state.wait_workflow(workflow_id, replier);
    }

    fn ask_current(shared: &Shared, workflow_id: WorkflowId) -> impl Future<Output = Option<Reply>> + Send {
        asked(move |replier| shared.state.workflow_status(workflow_id, replier))
    }

    fn ask_cancel(shared: &Shared, workflow_id: WorkflowId) -> impl Future<Output = Option<Reply>> + Send {
        let operator = crate::server::state::Caller::OPERATOR;
        asked(move |replier| shared.state.cancel_workflow(workflow_id, operator, replier))
    }

    fn of_reply(reply: Option<Reply>) -> Result<WorkflowReport, ApiError> {
        match reply {
            Some(Reply::Workflow(report)) => Ok(report),
            Some(Reply::Error(refusal)) => Err(ApiError::refused(refusal)),
            other => Err(ApiError::internal(format!("unexpected reply: {other:?}"))),
        }
    }

    fn is_final(&self) -> bool {
        self.state.is_final()
    }

    fn to_json(&self) -> Value {
        WorkflowReport::to_json(self)
    }
}
