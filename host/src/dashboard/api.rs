//! The JSON API under `/api/`: what the page shows, and its two actions
//! (cancel, retry). Each endpoint is documented in docs/dashboard.md.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::followed::asked;
use super::{error, ApiError, Shared};
use crate::server::monitor::{Counts, TaskSummary, RECENT_CAPACITY};
use crate::wire::protocol::{
    ClusterStatus, ErrorKind, Priority, Reply, Submit, TaskError, TaskId, TaskReport, TaskState,
};

/// The most tasks one page of `/api/tasks` holds.
const MAX_PAGE: usize = 500;

/// The most live tasks `/api/tasks` looks through.
const MAX_LIVE_LISTED: usize = 5_000;

/// Seconds of throughput history in the overview (the page keeps its own).
const OVERVIEW_HISTORY: usize = 5;

/// GET /api/status: everything the page's header and cards show.
pub(crate) async fn status(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(overview(&shared))
}

/// The overview, also sent every second on the event stream.
pub(crate) fn overview(shared: &Shared) -> Value {
    let state = &shared.state;
    let config = &state.config;
    let (started_ms, uptime_s) = state.monitor.uptime();
    let base = &config.base;
    let mut provided: Vec<&str> = state.registry.tasks().iter().map(|t| t.decl.name.as_str()).collect();
    provided.sort_unstable();
    let plugins: Vec<Value> = state
        .registry
        .plugins()
        .iter()
        .map(|p| json!({ "name": p.name, "version": p.version, "path": p.path.display().to_string() }))
        .collect();
    let book = state.monitor.book();
    let mut totals = Counts::default();
    for (_, _, counts) in book.all_counts() {
        totals.submitted += counts.submitted;
        totals.succeeded += counts.succeeded;
        totals.failed += counts.failed;
        totals.retried += counts.retried;
        totals.timed_out += counts.timed_out;
        totals.cancelled += counts.cancelled;
    }
    let history = book.history(OVERVIEW_HISTORY);
    drop(book);
    let live = state.live_view();
    json!({
        "control_plane": {
            "worker_id": config.worker_id,
            "base_address": base.to_string(),
            "addresses": {
                "critical": base.task_address(Priority::Critical),
                "high": base.task_address(Priority::High),
                "normal": base.task_address(Priority::Normal),
                "low": base.task_address(Priority::Low),
                "results": base.result_address(),
                "subworkers": config.management.as_ref().map(|m| base.at_port(m.port)),
                "discovery": config.discovery,
                "dashboard": shared.url,
            },
            "started_ms": started_ms,
            "uptime_s": uptime_s,
            "concurrency": config.concurrency,
            "plugins": plugins,
            "tasks": provided,
            "actions_need_key": shared.api_key.is_some(),
        },
        // Cards and rows from one reading, so that they agree.
        "workers": workers_json(&live.cluster, &live.on_workers),
        "queues": queues_json(live.counts),
        "cache": cache_json(shared),
        "workflows": workflows_json(shared),
        "totals": {
            "submitted": totals.submitted,
            "succeeded": totals.succeeded,
            "failed": totals.failed,
            "retried": totals.retried,
            "timed_out": totals.timed_out,
            "cancelled": totals.cancelled,
        },
        "history": history,
        "task_limits": super::task_limits::rows(shared),
    })
}

/// GET /api/workers: the subworkers and their health.
pub(crate) async fn workers(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let live = shared.state.live_view();
    Json(workers_json(&live.cluster, &live.on_workers))
}

/// The subworkers, each with the runs it has started (`running`) and
/// those sent to it that no thread there has started yet (`prefetched`).
pub(crate) fn workers_json(cluster: &ClusterStatus, on_workers: &HashMap<String, [u32; 2]>) -> Value {
    let subworkers: Vec<Value> = cluster
        .subworkers
        .iter()
        .map(|w| {
            let [running, prefetched] = on_workers.get(&w.worker_id).copied().unwrap_or_default();
            let mut row = worker_json(w);
            row["running"] = json!(running);
            row["prefetched"] = json!(prefetched);
            row
        })
        .collect();
    let processes: Vec<Value> = cluster.worker_processes.iter().map(worker_process_json).collect();
    json!({
        "total": cluster.total_subworkers,
        "active": cluster.active_subworkers,
        "subworkers": subworkers,
        "worker_processes": processes,
    })
}

/// One supervised worker process (docs/isolation.md), as the dashboard and
/// `fastworker workers` show it.
pub(crate) fn worker_process_json(p: &crate::wire::protocol::WorkerProcessStatus) -> Value {
    // Its fields, named as the wire type names them.
    serde_json::to_value(p).unwrap_or(Value::Null)
}

pub(crate) fn worker_json(w: &crate::wire::protocol::WorkerStatus) -> Value {
    json!({
        "worker_id": w.worker_id,
        "address": w.address,
        "status": w.status.as_str(),
        "load": w.load,
        "concurrency": w.concurrency,
        "last_seen_ms": w.last_seen_ms,
        "connected": w.connected,
        "dispatched": w.dispatched,
        "tasks": w.tasks,
    })
}

/// GET /api/queues: live tasks by priority and state.
pub(crate) async fn queues(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(queues_json(shared.state.live_counts()))
}

fn queues_json(counts: [[u32; 5]; 4]) -> Value {
    let by_priority: serde_json::Map<String, Value> = Priority::ALL
        .into_iter()
        .map(|p| {
            let [queued, running, prefetched, scheduled, retrying] = counts[p.index()];
            let row = json!({
                "queued": queued,
                "running": running,
                "prefetched": prefetched,
                "scheduled": scheduled,
                "retrying": retrying,
            });
            (p.as_str().to_string(), row)
        })
        .collect();
    Value::Object(by_priority)
}

/// Workflows running and finished ones kept, with the bytes they hold.
fn workflows_json(shared: &Shared) -> Value {
    let [(running, running_bytes), (finished, finished_bytes)] = shared.state.workflow_bytes();
    json!({
        "running": running,
        "running_bytes": running_bytes,
        "finished": finished,
        "finished_bytes": finished_bytes,
    })
}

/// GET /api/cache: the result cache's size, bounds and hit rate.
pub(crate) async fn cache(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(cache_json(&shared))
}

fn cache_json(shared: &Shared) -> Value {
    let state = &shared.state;
    let (hits, misses) = state.monitor.cache_hits_misses();
    let lookups = hits + misses;
    json!({
        "size": state.cached_results(),
        "capacity": state.config.result_cache_size,
        "ttl_s": state.config.result_cache_ttl.map(|ttl| ttl.as_secs()),
        "hits": hits,
        "misses": misses,
        "hit_rate": (lookups > 0).then(|| hits as f64 / lookups as f64),
    })
}

/// GET /api/registered-tasks: every task this control plane or a live
/// subworker provides, with its declared defaults and who provides it.
/// `GET /api/schedules`: the periodic tasks, as `fastworker schedules` shows them.
pub(crate) async fn schedules(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(shared.state.schedule_statuses()))
}

pub(crate) async fn registered_tasks(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let state = &shared.state;
    let mut rows: HashMap<String, Value> = HashMap::new();
    for task in state.registry.tasks() {
        let options = &task.decl.options;
        rows.insert(
            task.decl.name.to_string(),
            json!({
                "task": task.decl.name.as_str(),
                "signature": task.decl.signature.as_str(),
                "doc": task.decl.doc.as_str(),
                "priority": options.priority.as_str(),
                "timeout_ms": options.timeout_ms,
                "max_retries": options.max_retries,
                "retry_delay_ms": options.retry_delay_ms,
                "plugin": task.plugin.name,
                "plugin_version": task.plugin.version,
                "schema": task.schema.as_ref().map(|s| json!({ "args": s.args, "result": s.result })),
                "providers": [state.config.worker_id.clone()],
            }),
        );
    }
    for worker in state.cluster_status().subworkers {
        for name in &worker.tasks {
            let row =
                rows.entry(name.clone()).or_insert_with(|| json!({ "task": name, "schema": null, "providers": [] }));
            if let Some(providers) = row["providers"].as_array_mut() {
                providers.push(Value::String(worker.worker_id.clone()));
            }
        }
    }
    let mut rows: Vec<(String, Value)> = rows.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Json(Value::Array(rows.into_iter().map(|(_, row)| row).collect()))
}

/// GET /api/throughput?seconds=N: tasks finished and their run times, per second.
pub(crate) async fn throughput(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let seconds = match query.get("seconds").map(|s| s.parse::<usize>()) {
        None => 300,
        Some(Ok(n)) if (1..=crate::server::monitor::HISTORY_SECONDS).contains(&n) => n,
        Some(_) => {
            let message =
                format!("seconds must be a whole number from 1 to {}", crate::server::monitor::HISTORY_SECONDS);
            return error(StatusCode::BAD_REQUEST, "bad_request", message);
        }
    };
    let history = shared.state.monitor.book().history(seconds);
    Json(json!({ "seconds": history })).into_response()
}

/// GET /api/tasks: live tasks, then recently finished ones, newest first,
/// filtered by `state` (comma-separated), `task`, `priority` and `q` (part
/// of the id), paged by `offset` and `limit`.
pub(crate) async fn tasks(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let number = |name: &str, default: usize| match query.get(name) {
        None => Ok(default),
        Some(text) => text.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{name} must be a whole number, not '{text}'"),
            )
        }),
    };
    let (offset, limit) = match (number("offset", 0), number("limit", 50)) {
        (Ok(offset), Ok(limit)) => (offset, limit.min(MAX_PAGE)),
        (Err(refusal), _) | (_, Err(refusal)) => return refusal.into_response(),
    };
    let states: Vec<String> = query
        .get("state")
        .map(|s| s.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let task_name = query.get("task").filter(|s| !s.is_empty()).cloned();
    let priority = query.get("priority").filter(|s| !s.is_empty()).cloned();
    let needle = query.get("q").map(|q| q.trim().to_ascii_lowercase()).filter(|q| !q.is_empty());
    let keep = |summary: &TaskSummary| {
        (states.is_empty() || states.iter().any(|s| s == summary.state))
            && task_name.iter().all(|name| *name == summary.task_name)
            && priority.iter().all(|p| p.eq_ignore_ascii_case(summary.priority))
            && needle.iter().all(|q| summary.task_id.to_string().contains(q.as_str()))
    };
    let mut matching = shared.state.live_summaries(MAX_LIVE_LISTED, |report, state| {
        // The cheap tests before a summary is built.
        (states.is_empty() || states.iter().any(|s| s == state))
            && task_name.iter().all(|name| *name == report.task_name)
    });
    matching.retain(keep);
    let book = shared.state.monitor.book();
    matching.extend(book.recent().rev().map(|f| &f.summary).filter(|s| keep(s)).cloned());
    drop(book);
    let total = matching.len();
    let page: Vec<TaskSummary> = matching.into_iter().skip(offset).take(limit).collect();
    Json(json!({ "total": total, "offset": offset, "limit": limit, "tasks": page })).into_response()
}

/// GET /api/tasks/{id}: one task with its arguments, result or error.
/// An operator's read ([`super::roles`]): arguments and results are as
/// secret as the frames that carried them.
pub(crate) async fn task(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let task_id = match parse_id(&id) {
        Ok(task_id) => task_id,
        Err(refusal) => return refusal.into_response(),
    };
    let state = &shared.state;
    if let Some((report, args, shown)) = state.live_task(task_id) {
        let mut value = detail(&report, Some(&args), true);
        value["state"] = json!(shown);
        return Json(value).into_response();
    }
    let finished = state.monitor.book().find(task_id).cloned();
    match (state.status(task_id), finished) {
        (Reply::Report(report), finished) => {
            Json(detail(&report, finished.as_ref().and_then(|f| f.args.as_deref()), false)).into_response()
        }
        (_, Some(finished)) => {
            // In the ring, but its result is no longer in the cache.
            let mut value = serde_json::to_value(&finished.summary).expect("JSON");
            value["args"] = finished.args.as_deref().map_or(Value::Null, |args| json_or_null(args));
            value["result"] = Value::Null;
            value["result_kept"] = Value::Bool(false);
            value["live"] = Value::Bool(false);
            value["retryable"] = Value::Bool(finished.args.is_some() && retryable(finished.summary.state));
            Json(value).into_response()
        }
        (Reply::Error(refusal), None) => error(StatusCode::NOT_FOUND, "unknown_task", refusal.message),
        (_, None) => error(StatusCode::NOT_FOUND, "unknown_task", format!("task {task_id} is unknown")),
    }
}

/// POST /api/tasks/{id}/cancel: cancels a task that has not ended.
pub(crate) async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let task_id = match parse_id(&id) {
        Ok(task_id) => task_id,
        Err(refusal) => return refusal.into_response(),
    };
    let operator = crate::server::state::Caller::OPERATOR;
    match asked(|replier| shared.state.cancel(task_id, operator, Some(replier))).await {
        Some(Reply::Report(report)) => {
            let cancelled = report.state == TaskState::Cancelled;
            Json(json!({ "cancelled": cancelled, "task": TaskSummary::of(&report) })).into_response()
        }
        Some(Reply::Error(refusal)) => {
            let (status, kind) = match refusal.kind {
                ErrorKind::UnknownTaskId => (StatusCode::NOT_FOUND, "unknown_task"),
                ErrorKind::AlreadyFinished => (StatusCode::CONFLICT, "already_finished"),
                _ => (StatusCode::BAD_REQUEST, "refused"),
            };
            error(status, kind, refusal.message)
        }
        other => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected reply: {other:?}")),
    }
}

/// POST /api/tasks/{id}/retry: submits a finished, unsuccessful task again,
/// with the same name, arguments and priority, under a fresh id.
pub(crate) async fn retry(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let task_id = match parse_id(&id) {
        Ok(task_id) => task_id,
        Err(refusal) => return refusal.into_response(),
    };
    let state = &shared.state;
    if state.live_task(task_id).is_some() {
        return error(StatusCode::CONFLICT, "not_finished", format!("task {task_id} has not ended; cancel it first"));
    }
    let Some(finished) = state.monitor.book().find(task_id).cloned() else {
        let message = format!(
            "task {task_id} is not among the {RECENT_CAPACITY} most recently finished tasks, whose arguments are kept for a retry; submit it again"
        );
        return error(StatusCode::NOT_FOUND, "unknown_task", message);
    };
    if !retryable(finished.summary.state) {
        let message =
            format!("task {task_id} {}: only failed, timed-out or cancelled tasks are retried", finished.summary.state);
        return error(StatusCode::CONFLICT, "not_retryable", message);
    }
    let Some(args) = &finished.args else {
        let message = format!("task {task_id}'s arguments were too large to keep for a retry; submit it again");
        return error(StatusCode::CONFLICT, "not_retryable", message);
    };
    let submit = Submit {
        task_id: TaskId::now_v7(),
        task_name: finished.summary.task_name.clone(),
        args: args.to_vec(),
        priority: Some(finished.priority),
        ..Submit::default()
    };
    match state.accept_from_dashboard(submit) {
        Ok(new_id) => (StatusCode::ACCEPTED, Json(json!({ "task_id": new_id, "retry_of": task_id }))).into_response(),
        Err(refusal) => error(StatusCode::CONFLICT, "refused", refusal.message),
    }
}

fn retryable(state: &str) -> bool {
    matches!(state, "failed" | "timed_out" | "cancelled")
}

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse_str(id)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_task_id", format!("'{id}' is not a task id")))
}

fn json_or_null(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn detail(report: &TaskReport, args: Option<&Vec<u8>>, live: bool) -> Value {
    let mut value = serde_json::to_value(TaskSummary::of(report)).expect("JSON");
    value["args"] = args.map_or(Value::Null, |a| json_or_null(a));
    value["result"] = report.result.as_deref().map_or(Value::Null, json_or_null);
    value["result_kept"] = Value::Bool(!live);
    value["error"] = report.error.as_ref().map_or(Value::Null, error_json);
    value["live"] = Value::Bool(live);
    value["retryable"] = Value::Bool(!live && args.is_some() && retryable(report.state.as_str()));
    value
}

fn error_json(error: &TaskError) -> Value {
    json!({ "kind": error.kind.as_str(), "message": error.message })
}
