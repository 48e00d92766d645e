//! The page's view of workflows (docs/dashboard.md): the table of the
//! newest ones (`GET /api/workflows`), one with its members
//! (`GET /api/workflows/{id}`), the cancel action, and the `workflow`
//! events [`watch_workflows`] sends while someone watches.
//!
//! Whenever reads need the operator credential (a cluster key or
//! `--gui-api-key`, see `roles.rs`), results and failure messages are left
//! out of the table unless the request gave it, and out of the events
//! always; reading one workflow is an operator's read, as for a task.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::followed::asked;
use super::roles::{reads_protected, Operator};
use super::{error, ApiError, Shared};
use crate::server::monitor::Event;
use crate::server::state::WorkflowSummary;
use crate::wire::protocol::{ErrorKind, Reply};
use crate::workflow::WorkflowId;

/// The most workflows one answer of `/api/workflows` holds.
const MAX_LISTED: usize = 200;

/// The workflows the event stream follows: the newest ones.
const WATCHED: usize = 50;

/// One row of the table; `secret` leaves out the result and failure text.
pub(crate) fn summary_json(summary: &WorkflowSummary, secret: bool) -> Value {
    let failure = summary
        .failure
        .as_ref()
        .map(|(task, message)| json!({ "task": task, "message": if secret { Value::Null } else { json!(message) } }));
    json!({
        "workflow_id": summary.workflow_id,
        "state": summary.state.as_str(),
        "done": summary.done,
        "total": summary.total,
        "created_ms": summary.created_ms,
        "finished_ms": summary.finished_ms,
        "result": if secret { None } else { summary.result.clone() },
        "failure": failure,
    })
}

/// GET /api/workflows?limit=N: the number known and the newest N (at most
/// 200, 50 when not told), newest first.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(Operator(operator)): Extension<Operator>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let limit = match query.get("limit").map(|text| text.parse::<usize>()) {
        None => WATCHED,
        Some(Ok(n)) => n.min(MAX_LISTED),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "bad_request", "limit must be a whole number"),
    };
    let secret = reads_protected(&shared) && !operator;
    let (total, rows, record) = shared.state.workflow_summaries(limit);
    // Shown once what they show is stored (durable mode).
    let _ = shared.state.when_stored(record).await;
    let rows: Vec<Value> = rows.iter().map(|row| summary_json(row, secret)).collect();
    Json(json!({ "total": total, "workflows": rows })).into_response()
}

fn parse_id(id: &str) -> Result<WorkflowId, ApiError> {
    WorkflowId::parse_str(id).map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_workflow_id", format!("'{id}' is not a workflow id (a UUID)"))
    })
}

/// GET /api/workflows/{id}: one workflow with its members, result or failure.
/// An operator's read ([`super::roles`]).
pub(crate) async fn detail(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let workflow_id = match parse_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal.into_response(),
    };
    match asked(|replier| shared.state.workflow_status(workflow_id, replier)).await {
        Some(Reply::Workflow(report)) => Json(report.to_json()).into_response(),
        Some(Reply::Error(refusal)) => error(StatusCode::NOT_FOUND, "unknown_workflow", refusal.message),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected reply: {other:?}")),
    }
}

/// POST /api/workflows/{id}/cancel: cancels a running workflow (the same
/// rules as cancelling a task from the page).
pub(crate) async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let workflow_id = match parse_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal.into_response(),
    };
    let operator = crate::server::state::Caller::OPERATOR;
    match asked(|replier| shared.state.cancel_workflow(workflow_id, operator, replier)).await {
        Some(Reply::Workflow(report)) => {
            Json(json!({ "cancelled": true, "state": report.state.as_str() })).into_response()
        }
        Some(Reply::Error(refusal)) => {
            let (status, kind) = match refusal.kind {
                ErrorKind::UnknownWorkflowId => (StatusCode::NOT_FOUND, "unknown_workflow"),
                ErrorKind::AlreadyFinished => (StatusCode::CONFLICT, "already_finished"),
                _ => (StatusCode::BAD_REQUEST, "refused"),
            };
            error(status, kind, refusal.message)
        }
        other => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected reply: {other:?}")),
    }
}

/// What the event stream's watcher last saw of the workflows.
#[derive(Default)]
pub(crate) struct Watched {
    generation: Option<u64>,
    rows: HashMap<WorkflowId, WorkflowSummary>,
}

/// Called on every tick of the event stream's watcher: sends a `workflow`
/// event for each of the newest workflows that appeared or changed since
/// `known` (which it updates).
pub(crate) fn watch_workflows(shared: &Shared, known: &mut Watched) {
    // Nothing changed since the last look: no summary is built (they are
    // built under the task lock).
    let generation = shared.state.workflow_generation();
    if known.generation == Some(generation) {
        return;
    }
    let (_, rows, record) = shared.state.workflow_summaries(WATCHED);
    if !shared.state.is_stored(record) {
        // Not yet on disk (durable mode): looked at again on the next tick.
        return;
    }
    known.generation = Some(generation);
    let known = &mut known.rows;
    let secret = reads_protected(shared);
    let mut seen = HashMap::with_capacity(rows.len());
    for row in rows {
        if known.get(&row.workflow_id) != Some(&row) {
            shared.state.monitor.publish(Event::Workflow(summary_json(&row, secret)));
        }
        seen.insert(row.workflow_id, row);
    }
    *known = seen;
}
