//! The HTTP API for tasks under `/api/v1/`: submit one task or a batch,
//! read a task's state and result, wait for it, cancel it, and list the
//! registered tasks with their schemas (docs/http-api.md).
//!
//! Submissions enter the control plane's [`crate::server::state::State`] directly,
//! as a task port would hand them over, with an in-process replier
//! ([`Replier::local`]) to await instead of an NNG context: no socket, no
//! frame, no key. The state lock is held only inside those calls, never
//! across an await. Every wait is bounded by [`MAX_WAIT`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, Shared};
use crate::server::endpoint::Replier;
use crate::wire::protocol::{decode, now_ms, Priority, Reply, RetryPolicy, Submit, TaskId, TaskReport};
use crate::wire::report_json::TaskReportJson;

/// The longest a request may wait for a task (`wait_ms`, `timeout_ms`).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);

/// How long `GET .../wait` waits when it is not told.
pub(super) const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The largest request body, whatever `--max-frame-bytes` allows.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;

/// The most tasks one batch may hold.
pub(crate) const MAX_BATCH: usize = 1000;

pub(super) type Answer = Result<Response, ApiError>;

/// A body read whole (within [`MAX_BODY_BYTES`]) and decoded as `T`; only
/// `Content-Type: application/json`, which no page of another site can send
/// without the browser asking first.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::v1(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes: send fewer or smaller tasks per request"),
        ),
        status => ApiError::v1(status, "BadRequest", rejection.body_text()),
    })?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::v1(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "send the body as JSON with Content-Type: application/json",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body does not fit: {e}")))
}

/// One submission as the API takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskRequest {
    task: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    countdown_ms: Option<u64>,
    #[serde(default)]
    eta: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    retry_delay_ms: Option<u64>,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// A batch: the tasks, and how long to wait for all of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    tasks: Vec<TaskRequest>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `wait_ms` as a bounded duration.
pub(super) fn bounded_wait(wait_ms: Option<u64>) -> Result<Duration, ApiError> {
    let wait = Duration::from_millis(wait_ms.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::bad_request(format!("wait_ms is at most {} (60 s)", MAX_WAIT.as_millis())));
    }
    Ok(wait)
}

impl TaskRequest {
    /// The submission, checked against the task's schema when it has one.
    fn submission(self, shared: &Shared) -> Result<Submit, ApiError> {
        let task_id = match &self.task_id {
            None => TaskId::now_v7(),
            Some(id) => {
                TaskId::parse_str(id).map_err(|_| ApiError::bad_request(format!("task_id '{id}' is not a UUID")))?
            }
        };
        let priority = match &self.priority {
            None => None,
            Some(name) => Some(Priority::parse(name).ok_or_else(|| {
                ApiError::bad_request(format!("priority is critical, high, normal or low, not '{name}'"))
            })?),
        };
        let args = self.args.unwrap_or_else(|| json!([]));
        if let Some(schema) = shared.state.task_schema(&self.task) {
            schema.check(&args).map_err(|reason| {
                ApiError::v1(
                    StatusCode::BAD_REQUEST,
                    "BadArguments",
                    format!("the arguments do not fit task '{}': {reason}", self.task),
                )
            })?;
        } else if !(args.is_array() || args.is_object()) {
            return Err(ApiError::v1(
                StatusCode::BAD_REQUEST,
                "BadArguments",
                "args is a JSON array (positional) or object (by parameter name)",
            ));
        }
        let countdown = self.countdown_ms.map(|ms| now_ms().saturating_add(ms));
        let eta = match &self.eta {
            None => None,
            Some(text) => {
                let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
                    ApiError::bad_request(format!("eta '{text}' is not an RFC 3339 time (2027-01-01T12:00:00Z): {e}"))
                })?;
                Some(u64::try_from(at.timestamp_millis()).unwrap_or(0))
            }
        };
        let retry = match (self.retries, self.retry_delay_ms) {
            (None, None) => None,
            (retries, delay) => Some(RetryPolicy {
                max_retries: retries.unwrap_or(0),
                delay_ms: delay.unwrap_or(0),
                factor: 2.0,
                max_delay_ms: 5 * 60 * 1000,
            }),
        };
        Ok(Submit {
            task_id,
            task_name: self.task,
            args: serde_json::to_vec(&args).expect("JSON"),
            priority,
            wait: false,
            not_before_ms: countdown.max(eta),
            timeout_ms: self.timeout_ms,
            retry,
            callback: None,
            attempt: None,
        })
    }
}

/// A place among the requests waiting now, held until dropped, or 503
/// `Busy` (closing the connection) when `--gui-max-waits` are waiting:
/// waits keep to their own share of the connections, so that plain requests
/// (and `/api/status`) always find room. `None` when no wait is asked for.
pub(super) fn wait_slot(shared: &Shared, wait: Duration) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    if wait.is_zero() {
        return Ok(None);
    }
    match shared.waits.clone().try_acquire_owned() {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => {
            shared.state.refusals.count(crate::server::bounds::Bound::GuiWaits);
            let max = shared.state.config.bounds.gui_max_waits;
            let message = format!(
                "{max} requests are waiting for tasks or workflows (--gui-max-waits); nothing was done: retry later, or poll without a wait"
            );
            Err(ApiError::v1(StatusCode::SERVICE_UNAVAILABLE, "Busy", message).retry_later().closing())
        }
    }
}

/// The reply the state sends the in-process replier handed to `ask`
/// (which may answer later: behind the durable store, say).
pub(super) async fn asked(ask: impl FnOnce(Replier)) -> Option<Reply> {
    let (replier, answer) = Replier::local();
    ask(replier);
    reply_of(answer).await
}

/// The reply the state sent an in-process replier.
pub(super) async fn reply_of(answer: tokio::sync::oneshot::Receiver<nng::Message>) -> Option<Reply> {
    let message = answer.await.ok()?;
    // Encoded by this process: no bound to enforce.
    decode::<Reply>(&message, usize::MAX).ok()
}

/// Waits up to `wait` for the task to end; its report then, or `None`
/// when it was still going (or the wait was not asked for).
async fn wait_for(shared: &Shared, task_id: TaskId, wait: Duration) -> Result<Option<TaskReport>, ApiError> {
    if wait.is_zero() {
        return Ok(None);
    }
    let (replier, answer) = Replier::local();
    shared.state.wait_for(task_id, replier);
    match tokio::time::timeout(wait, reply_of(answer)).await {
        Err(_) => Ok(None),
        Ok(Some(Reply::Report(report))) if report.state.is_final() => Ok(Some(report)),
        Ok(Some(Reply::Report(_))) | Ok(None) => Ok(None),
        Ok(Some(Reply::Error(refusal))) => Err(ApiError::refused(refusal)),
        Ok(Some(other)) => Err(ApiError::internal(format!("unexpected reply: {other:?}"))),
    }
}

/// A task's state as the API shows it.
fn report_json(report: &TaskReport) -> Value {
    serde_json::to_value(TaskReportJson::from(report)).expect("JSON")
}

/// The current report of a task, or why there is none.
fn current(shared: &Shared, task_id: TaskId) -> Result<TaskReport, ApiError> {
    match shared.state.status(task_id) {
        Reply::Report(report) => Ok(report),
        Reply::Error(refusal) => Err(ApiError::refused(refusal)),
        other => Err(ApiError::internal(format!("unexpected reply: {other:?}"))),
    }
}

/// 200 with the final report, or 202 with the current one.
fn report_response(report: &TaskReport) -> Response {
    let status = if report.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    (status, Json(report_json(report))).into_response()
}

/// Accepts one submission: its id, or why not.
async fn accept(shared: &Shared, submit: Submit) -> Result<TaskId, ApiError> {
    let (replier, answer) = Replier::local();
    shared.state.submit(submit, replier);
    match reply_of(answer).await {
        Some(Reply::Accepted { task_id }) => Ok(task_id),
        Some(Reply::Error(refusal)) => Err(ApiError::refused(refusal)),
        other => Err(ApiError::internal(format!("the control plane did not acknowledge the submission: {other:?}"))),
    }
}

/// POST /api/v1/tasks: submits one task; with `wait_ms`, waits for it.
pub(crate) async fn submit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let request: TaskRequest = json_body(&headers, body)?;
    let wait = bounded_wait(request.wait_ms)?;
    let _slot = wait_slot(&shared, wait)?;
    let submit = request.submission(&shared)?;
    let task_id = accept(&shared, submit).await?;
    if let Some(report) = wait_for(&shared, task_id, wait).await? {
        return Ok(report_response(&report));
    }
    Ok(report_response(&current(&shared, task_id)?))
}

/// POST /api/v1/tasks/batch: submits many tasks, each accepted or refused
/// on its own; with `wait_ms`, waits for all of them within it.
pub(crate) async fn batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let request: BatchRequest = json_body(&headers, body)?;
    let wait = bounded_wait(request.wait_ms)?;
    let _slot = wait_slot(&shared, wait)?;
    if request.tasks.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds at most {MAX_BATCH} tasks, not {}: split it",
            request.tasks.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(request.tasks.len());
    for task in request.tasks {
        outcomes.push(match task.submission(&shared) {
            Ok(submit) => accept(&shared, submit).await,
            Err(refusal) => Err(refusal),
        });
    }
    let deadline = tokio::time::Instant::now() + wait;
    let waits = outcomes.iter().map(|outcome| {
        let shared = &shared;
        async move {
            match outcome {
                Ok(task_id) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let report = match wait_for(shared, *task_id, left).await {
                        Ok(Some(report)) => Ok(report),
                        Ok(None) => current(shared, *task_id),
                        Err(refusal) => Err(refusal),
                    };
                    match report {
                        Ok(report) => report_json(&report),
                        Err(refusal) => refusal.batch_entry(),
                    }
                }
                Err(refusal) => refusal.batch_entry(),
            }
        }
    });
    let results = join_all(waits).await;
    Ok((StatusCode::OK, Json(json!({ "tasks": results }))).into_response())
}

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse_str(id).map_err(|_| ApiError::bad_request(format!("'{id}' is not a task id (a UUID)")))
}

/// GET /api/v1/tasks/{id}: the task's state, with its result or failure.
pub(crate) async fn status(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    let task_id = parse_id(&id)?;
    Ok(report_response(&current(&shared, task_id)?))
}

/// The query of `GET .../wait`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    pub(super) timeout_ms: Option<u64>,
}

/// How long a wait route waits: its `timeout_ms`, [`DEFAULT_WAIT`] without
/// one, at most [`MAX_WAIT`].
pub(super) fn wait_of(query: Result<Query<WaitQuery>, QueryRejection>) -> Result<Duration, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match query.timeout_ms {
        None => Ok(DEFAULT_WAIT),
        Some(ms) if Duration::from_millis(ms) <= MAX_WAIT => Ok(Duration::from_millis(ms)),
        Some(_) => Err(ApiError::bad_request(format!("timeout_ms is at most {}", MAX_WAIT.as_millis()))),
    }
}

/// GET /api/v1/tasks/{id}/wait?timeout_ms=N: waits (at most 60 s) for the task to end.
pub(crate) async fn wait(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Answer {
    let task_id = parse_id(&id)?;
    let wait = wait_of(query)?;
    let _slot = wait_slot(&shared, wait)?;
    if let Some(report) = wait_for(&shared, task_id, wait).await? {
        return Ok(report_response(&report));
    }
    Ok(report_response(&current(&shared, task_id)?))
}

/// POST /api/v1/tasks/{id}/cancel: cancels a task that has not ended.
pub(crate) async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    let task_id = parse_id(&id)?;
    match shared.state.cancel(task_id, crate::server::state::Caller::OPERATOR) {
        Reply::Report(report) => Ok(report_response(&report)),
        Reply::Error(refusal) => Err(ApiError::refused(refusal)),
        other => Err(ApiError::internal(format!("unexpected reply: {other:?}"))),
    }
}

/// GET /api/v1/registered-tasks: the tasks this control plane or a live
/// subworker provides, with their declared defaults and schemas.
pub(crate) async fn registered(State(shared): State<Arc<Shared>>) -> Response {
    let schema = |text: &Option<String>| text.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
    let rows: Vec<Value> = shared
        .state
        .registered_tasks()
        .iter()
        .map(|task| {
            json!({
                "task": task.name,
                "doc": task.doc,
                "signature": task.signature,
                "priority": task.priority.as_str(),
                "timeout_ms": task.timeout_ms,
                "max_retries": task.max_retries,
                "args_schema": schema(&task.args_schema),
                "result_schema": schema(&task.result_schema),
                "providers": task.providers,
            })
        })
        .collect();
    Json(json!({ "tasks": rows })).into_response()
}
