//! Who may do what on the dashboard and the HTTP API: one rule, applied by
//! one middleware to every route, old (`/api/...`) and `/api/v1` alike
//! (docs/security.md, *Dashboard, HTTP API and metrics*).
//!
//! A request that changes anything (any method but `GET` and `HEAD`) or
//! reads a task's or workflow's arguments or result is an **operator**
//! request: it must come from no other origin than this dashboard's, and it
//! needs the operator credential, the `--gui-api-key` given as
//! `Authorization: Bearer KEY`, whenever one is set. On a keyed cluster
//! (`--cluster-key-file`) it needs that credential in any case: without a
//! `--gui-api-key` operator requests are refused outright. Everything else
//! (the page, lists, counts, the event stream, metrics) is readable by
//! whoever reaches the dashboard; lists leave results out whenever reads
//! need the credential and the request did not give it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{hosts, ApiError, Shared};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Readable by whoever reaches the dashboard.
    Anyone,
    /// Changes something or reads arguments and results.
    Operator,
}

impl Access {
    /// The access a request needs, from its method and path alone (so that
    /// a route added later is covered without being listed here: every
    /// method but `GET`/`HEAD` and every `/api/v1` read but the two
    /// catalogues is an operator's).
    pub(crate) fn of(method: &Method, path: &str) -> Access {
        if method != Method::GET && method != Method::HEAD {
            return Access::Operator;
        }
        if matches!(path, "/api/v1/registered-tasks" | "/api/openapi.json") {
            return Access::Anyone;
        }
        let one_of = |prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty());
        if one_of("/api/v1/") || one_of("/api/tasks/") || one_of("/api/workflows/") {
            return Access::Operator;
        }
        Access::Anyone
    }
}

/// Whether the request gave the operator credential; set on every request
/// by [`check`], so that lists know whether to show results.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operator(pub(crate) bool);

/// Whether reads of arguments and results need the operator credential:
/// on a keyed cluster, or whenever `--gui-api-key` is set.
pub(crate) fn reads_protected(shared: &Shared) -> bool {
    shared.state.config.keys.is_some() || shared.api_key.is_some()
}

/// Whether `headers` carry the `--gui-api-key` (compared in constant time).
fn has_key(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(key) = &shared.api_key else { return false };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(key.as_bytes())))
}

/// Why an operator request is refused, if it is.
fn refusal(shared: &Shared, headers: &HeaderMap) -> Option<ApiError> {
    if let Err(message) = hosts::origin_allowed(shared, headers) {
        return Some(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message));
    }
    match &shared.api_key {
        None if shared.state.config.keys.is_some() => {
            let message = "this control plane has a cluster key, so its dashboard's actions and the reading of task arguments and results need the operator credential: start it with --gui-api-key (FASTWORKER_GUI_API_KEY) and send Authorization: Bearer <key>";
            Some(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message))
        }
        None => None,
        Some(_) if has_key(shared, headers) => None,
        Some(_) => {
            let message = "this needs the dashboard's operator credential: send Authorization: Bearer <key> (--gui-api-key, FASTWORKER_GUI_API_KEY)";
            Some(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).asking_bearer())
        }
    }
}

/// Middleware: lets a request through if its [`Access`] allows, else
/// answers 403 or 401 in the shape of its API (`/api/v1` or the page's).
pub(crate) async fn check(State(shared): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let access = Access::of(request.method(), request.uri().path());
    if access == Access::Operator {
        if let Some(refused) = refusal(&shared, request.headers()) {
            return refused.for_path(request.uri().path()).into_response();
        }
    }
    let operator = access == Access::Operator || has_key(&shared, request.headers());
    request.extensions_mut().insert(Operator(operator));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_and_every_read_of_a_task_is_an_operators() {
        let operator = [
            (Method::POST, "/api/tasks/x/cancel"),
            (Method::POST, "/api/task-limits/add"),
            (Method::POST, "/anything/new"),
            (Method::DELETE, "/api/tasks/x"),
            (Method::GET, "/api/tasks/x"),
            (Method::GET, "/api/workflows/x"),
            (Method::GET, "/api/v1/tasks/x"),
            (Method::GET, "/api/v1/tasks/x/wait"),
            (Method::HEAD, "/api/v1/workflows/x"),
        ];
        for (method, path) in operator {
            assert_eq!(Access::of(&method, path), Access::Operator, "{method} {path}");
        }
        let anyone = [
            "/",
            "/metrics",
            "/api/status",
            "/api/tasks",
            "/api/tasks/",
            "/api/workflows",
            "/api/events",
            "/api/v1/registered-tasks",
            "/api/openapi.json",
            "/healthz",
            "/readyz",
        ];
        for path in anyone {
            assert_eq!(Access::of(&Method::GET, path), Access::Anyone, "GET {path}");
        }
    }
}
