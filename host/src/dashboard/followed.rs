//! Waiting for and cancelling what the HTTP API v1 follows, a task or a
//! workflow, written once: the `status`, `wait` and `cancel` routes of both
//! are these handlers, each given its [`Followed`] kind, and every wait is
//! bounded by [`MAX_WAIT`] and holds a place among `--gui-max-waits`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, Shared};
use crate::server::endpoint::Replier;
use crate::wire::protocol::{decode, Reply};

/// The longest a request may wait (`wait_ms`, `timeout_ms`).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);

/// How long `GET .../wait` waits when it is not told.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// An answer of the API.
pub(super) type Answer = Result<Response, ApiError>;

/// What the API follows by id: its report, and how the state is asked about it.
pub(super) trait Followed: Sized + Send {
    /// Its id.
    type Id: Copy + Send + Sync;
    /// The id in a path, or a 400 naming it.
    fn parse_id(id: &str) -> Result<Self::Id, ApiError>;
    /// Asks the state to answer `replier` once it ends.
    fn ask_wait(shared: &Shared, id: Self::Id, replier: Replier);
    /// The state's answer about it now.
    fn ask_current(shared: &Shared, id: Self::Id) -> impl Future<Output = Option<Reply>> + Send;
    /// The state's answer to an operator's cancel.
    fn ask_cancel(shared: &Shared, id: Self::Id) -> impl Future<Output = Option<Reply>> + Send;
    /// The report in a reply, or the refusal it carries.
    fn of_reply(reply: Option<Reply>) -> Result<Self, ApiError>;
    /// Whether it has ended.
    fn is_final(&self) -> bool;
    /// The report as the API shows it.
    fn to_json(&self) -> Value;
}

/// Its report now, or why there is none.
pub(super) async fn current<F: Followed>(shared: &Shared, id: F::Id) -> Result<F, ApiError> {
    F::of_reply(F::ask_current(shared, id).await)
}

/// Waits up to `wait` for it to end: its final report then, or `None` when
/// it was still going (or no wait was asked for).
pub(super) async fn wait_for<F: Followed>(shared: &Shared, id: F::Id, wait: Duration) -> Result<Option<F>, ApiError> {
    if wait.is_zero() {
        return Ok(None);
    }
    let (replier, answer) = Replier::local();
    F::ask_wait(shared, id, replier);
    match tokio::time::timeout(wait, reply_of(answer)).await {
        Err(_) | Ok(None) => Ok(None),
        Ok(reply) => F::of_reply(reply).map(|report| report.is_final().then_some(report)),
    }
}

/// Its final report if it ends within `wait`, else its current one.
pub(super) async fn settle<F: Followed>(shared: &Shared, id: F::Id, wait: Duration) -> Result<F, ApiError> {
    match wait_for::<F>(shared, id, wait).await? {
        Some(report) => Ok(report),
        None => current::<F>(shared, id).await,
    }
}

/// 200 with a final report, or 202 with a current one.
pub(super) fn respond<F: Followed>(report: &F) -> Response {
    let status = if report.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    (status, Json(report.to_json())).into_response()
}

/// GET .../{id}: its state, with its result or failure.
pub(super) async fn status<F: Followed>(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    Ok(respond(&current::<F>(&shared, F::parse_id(&id)?).await?))
}

/// GET .../{id}/wait?timeout_ms=N: waits (at most 60 s) for it to end.
pub(super) async fn wait<F: Followed>(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Answer {
    let id = F::parse_id(&id)?;
    let wait = wait_of(query)?;
    let _slot = wait_slot(&shared, wait)?;
    Ok(respond(&settle::<F>(&shared, id, wait).await?))
}

/// POST .../{id}/cancel: cancels it, as the operator (docs/http-api.md).
pub(super) async fn cancel<F: Followed>(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer {
    let id = F::parse_id(&id)?;
    Ok(respond(&F::of_reply(F::ask_cancel(&shared, id).await)?))
}

/// `wait_ms` as a bounded duration.
pub(super) fn bounded_wait(wait_ms: Option<u64>) -> Result<Duration, ApiError> {
    let wait = Duration::from_millis(wait_ms.unwrap_or(0));
    if wait > MAX_WAIT {
        return Err(ApiError::bad_request(format!("wait_ms is at most {} (60 s)", MAX_WAIT.as_millis())));
    }
    Ok(wait)
}

/// The query of `GET .../wait`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    timeout_ms: Option<u64>,
}

/// How long a wait route waits: its `timeout_ms`, [`DEFAULT_WAIT`] without
/// one, at most [`MAX_WAIT`].
fn wait_of(query: Result<Query<WaitQuery>, QueryRejection>) -> Result<Duration, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match query.timeout_ms {
        None => Ok(DEFAULT_WAIT),
        Some(ms) if Duration::from_millis(ms) <= MAX_WAIT => Ok(Duration::from_millis(ms)),
        Some(_) => Err(ApiError::bad_request(format!("timeout_ms is at most {}", MAX_WAIT.as_millis()))),
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
