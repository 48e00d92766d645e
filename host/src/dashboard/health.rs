//! `GET /healthz` and `GET /readyz`, for a supervisor or a load balancer
//! (docs/deploy.md). Neither needs a key nor a served `Host` name: they
//! tell whether the process answers and what it still waits for, never a
//! task, a key, a path or an address. Like every request they count
//! against `--gui-max-connections`, and each answers from a short look at
//! the state, the same for any request.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Shared;

/// The paths answered here, which the `Host` check lets through.
pub(crate) const PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// `200 {"status": "alive"}` whenever the dashboard's thread answers.
pub(crate) async fn healthz() -> Response {
    no_store((StatusCode::OK, Json(json!({ "status": "alive" }))).into_response())
}

/// `200` when every readiness check holds, else `503`; the body lists every
/// check and names those that do not hold.
pub(crate) async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let checks = shared.state.readiness();
    let not_ready: Vec<&str> = checks.iter().filter(|c| !c.ready).map(|c| c.name).collect();
    let status = if not_ready.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({ "ready": not_ready.is_empty(), "not_ready": not_ready, "checks": checks });
    no_store((status, Json(body)).into_response())
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
