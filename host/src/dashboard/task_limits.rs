//! The cluster-wide task limits on the dashboard: `GET /api/task-limits`
//! for its limits panel, `POST /api/task-limits/{task}` and
//! `POST /api/task-limits/{task}/clear` to change them (operator actions,
//! see `roles.rs`), and their `/metrics` lines.

use std::fmt::Write;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, Shared};
use crate::cluster::task_limits::{TaskLimit, TaskLimitStatus};
use crate::wire::protocol::Reply;

/// The largest body a limit change may have.
const MAX_BODY_BYTES: usize = 1024;

/// The routes, with their own small body limit.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/task-limits", get(list))
        .route("/api/task-limits/{task}", post(set))
        .route("/api/task-limits/{task}/clear", post(clear))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Every limited task and what it holds now, as rows (also in the overview
/// the event stream sends every second, which keeps the page's panel live).
pub(crate) fn rows(shared: &Shared) -> Vec<Value> {
    shared.state.task_limit_statuses().iter().map(TaskLimitStatus::to_json).collect()
}

/// GET /api/task-limits: every limited task and what it holds now.
async fn list(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "limits": rows(&shared) }))
}

/// The body of a change: `{"limit": "rate:20/s,burst:5,max_running:2"}` or `{"limit": "none"}`.
#[derive(Deserialize)]
struct Change {
    limit: String,
}

/// POST /api/task-limits/{task}: sets the task's limit at run time.
async fn set(State(shared): State<Arc<Shared>>, Path(task): Path<String>, body: Bytes) -> Response {
    let change: Change = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(problem) => {
            let message = format!("the body must be {{\"limit\": \"rate:20/s,burst:5,max_running:2\"}} or {{\"limit\": \"none\"}}: {problem}");
            return error(StatusCode::BAD_REQUEST, "bad_request", message);
        }
    };
    let limit = match TaskLimit::parse(&change.limit) {
        Ok(limit) => limit,
        Err(problem) => return error(StatusCode::BAD_REQUEST, "bad_task_limit", problem.to_string()),
    };
    answer(shared.state.set_task_limit(&task, limit))
}

/// POST /api/task-limits/{task}/clear: drops the task's run-time limit.
async fn clear(State(shared): State<Arc<Shared>>, Path(task): Path<String>) -> Response {
    answer(shared.state.clear_task_limit(&task))
}

fn answer(reply: Reply) -> Response {
    match reply {
        Reply::Done => Json(json!({ "done": true })).into_response(),
        Reply::Error(refusal) => error(StatusCode::BAD_REQUEST, "bad_task_limit", refusal.message),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected reply: {other:?}")),
    }
}

/// The task limits' lines of `/metrics`, by task name.
pub(crate) fn render_metrics(shared: &Shared, out: &mut String, escape: fn(&str) -> String) {
    let rows = shared.state.task_limit_statuses();
    type Pick = fn(&TaskLimitStatus) -> Option<f64>;
    let series: [(&str, &str, &str, Pick); 6] = [
        (
            "fastworker_task_limit_rate",
            "gauge",
            "Runs a task may start per second across the cluster (cluster-wide task limit).",
            |s| s.limit.rate.map(|r| r.per_second),
        ),
        ("fastworker_task_limit_burst", "gauge", "Runs of a task that may start at once after a quiet spell.", |s| {
            s.limit.rate.map(|r| f64::from(r.burst))
        }),
        ("fastworker_task_limit_max_running", "gauge", "Runs of a task allowed at once across the cluster.", |s| {
            s.limit.max_running.map(f64::from)
        }),
        ("fastworker_task_limit_running", "gauge", "Runs of a limited task counted as running now.", |s| {
            Some(f64::from(s.running))
        }),
        (
            "fastworker_task_limit_held",
            "gauge",
            "Runs of a limited task waiting now (held back by its limit or waiting for a slot).",
            |s| Some(f64::from(s.held)),
        ),
        (
            "fastworker_task_limit_held_total",
            "counter",
            "Times a run of a limited task was held back by its limit.",
            |s| Some(s.held_total as f64),
        ),
    ];
    for (name, kind, help, pick) in series {
        let _ = writeln!(out, "# HELP {name} {help} By task name.\n# TYPE {name} {kind}");
        for status in &rows {
            if let Some(value) = pick(status) {
                let _ = writeln!(out, "{name}{{task=\"{}\"}} {value}", escape(&status.task_name));
            }
        }
    }
}
