//! The HTTP API for tasks under `/api/v1/`: submit one task or a batch,
//! read a task's state and result, wait for it, cancel it, and list the
//! registered tasks with their schemas (docs/http-api.md).
//!
//! Submissions enter the control plane's [`crate::server::state::State`] directly,
//! as a task port would hand them over, with an in-process replier
//! ([`Replier::local`]) to await instead of an NNG context: no socket, no
//! frame, no key. The state lock is held only inside those calls, never
//! across an await. Every wait is bounded by [`super::followed::MAX_WAIT`].

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{json, Value};

use super::followed::{asked, bounded_wait, reply_of, respond, settle, wait_slot, Answer, Followed};
use super::{ApiError, Shared};
use crate::server::endpoint::Replier;
use crate::wire::protocol::{now_ms, Priority, Reply, RetryPolicy, Submit, TaskId, TaskReport};
use crate::wire::report_json::TaskReportJson;

/// The largest request body, whatever `--max-frame-bytes` allows.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;

/// The most tasks one batch may hold.
pub(crate) const MAX_BATCH: usize = 1000;

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
    Ok(respond(&settle::<TaskReport>(&shared, task_id, wait).await?))
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
                    match settle::<TaskReport>(shared, *task_id, left).await {
                        Ok(report) => report.to_json(),
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

/// A task, as the API follows it: `GET /api/v1/tasks/{id}`, `.../wait`
/// and `.../cancel` are [`super::followed`]'s handlers.
impl Followed for TaskReport {
    type Id = TaskId;

    fn parse_id(id: &str) -> Result<TaskId, ApiError> {
        TaskId::parse_str(id).map_err(|_| ApiError::bad_request(format!("'{id}' is not a task id (a UUID)")))
    }

    fn ask_wait(shared: &Shared, task_id: TaskId, replier: Replier) {
        shared.state.wait_for(task_id, replier);
    }

    fn ask_current(shared: &Shared, task_id: TaskId) -> impl Future<Output = Option<Reply>> + Send {
        std::future::ready(Some(shared.state.status(task_id)))
    }

    fn ask_cancel(shared: &Shared, task_id: TaskId) -> impl Future<Output = Option<Reply>> + Send {
        let operator = crate::server::state::Caller::OPERATOR;
        asked(move |replier| shared.state.cancel(task_id, operator, Some(replier)))
    }

    fn of_reply(reply: Option<Reply>) -> Result<TaskReport, ApiError> {
        match reply {
            Some(Reply::Report(report)) => Ok(report),
            Some(Reply::Error(refusal)) => Err(ApiError::refused(refusal)),
            other => Err(ApiError::internal(format!("unexpected reply: {other:?}"))),
        }
    }

    fn is_final(&self) -> bool {
        self.state.is_final()
    }

    fn to_json(&self) -> Value {
        serde_json::to_value(TaskReportJson::from(self)).expect("JSON")
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
