//! `/metrics`: the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use fastworker_plugin_sdk::Priority;

use super::Shared;
use crate::server::bounds::Bound;
use crate::server::monitor::DURATION_BUCKETS_MS;
use crate::wire::protocol::WorkerState;

/// GET /metrics.
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&shared))
}

fn render(shared: &Shared) -> String {
    let state = &shared.state;
    let mut out = String::with_capacity(4096);
    let book = state.monitor.book();
    let counts = book.all_counts();
    type Pick = fn(&crate::server::monitor::Counts) -> u64;
    let counters: [(&str, &str, Pick); 6] = [
        ("fastworker_tasks_submitted_total", "Tasks accepted.", |c| c.submitted),
        ("fastworker_tasks_completed_total", "Tasks that succeeded.", |c| c.succeeded),
        ("fastworker_tasks_failed_total", "Tasks that failed (after their retries).", |c| c.failed),
        ("fastworker_tasks_retried_total", "Runs that failed and were retried.", |c| c.retried),
        ("fastworker_tasks_timed_out_total", "Tasks that ran past their timeout.", |c| c.timed_out),
        ("fastworker_tasks_cancelled_total", "Tasks cancelled.", |c| c.cancelled),
    ];
    for (name, help, pick) in counters {
        let _ = writeln!(out, "# HELP {name} {help} By task name and priority.\n# TYPE {name} counter");
        for (task, priority, c) in &counts {
            let _ = writeln!(out, "{name}{{task=\"{}\",priority=\"{priority}\"}} {}", escape(task), pick(c));
        }
    }
    let name = "fastworker_task_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Run time of finished tasks (last run), by task name and priority.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (task, priority, c) in &counts {
        let labels = format!("task=\"{}\",priority=\"{priority}\"", escape(task));
        let mut cumulative = 0;
        for (bound, count) in DURATION_BUCKETS_MS.iter().zip(&c.buckets) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}", *bound as f64 / 1000.0);
        }
        let total: u64 = c.buckets.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", c.duration_sum_ms as f64 / 1000.0);
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
    drop(book);
    let live = state.live_counts();
    let gauges: [(&str, &str, usize); 3] = [
        ("fastworker_queue_depth", "Tasks waiting for a worker thread or subworker slot.", 0),
        ("fastworker_tasks_running", "Tasks running.", 1),
        ("fastworker_tasks_prefetched", "Tasks sent to a subworker that no thread there has started yet.", 2),
    ];
    for (name, help, column) in gauges {
        let _ = writeln!(out, "# HELP {name} {help} By priority.\n# TYPE {name} gauge");
        for priority in Priority::ALL {
            let _ = writeln!(out, "{name}{{priority=\"{priority}\"}} {}", live[priority.index()][column]);
        }
    }
    let name = "fastworker_tasks_waiting";
    let _ =
        writeln!(out, "# HELP {name} Tasks waiting for their countdown, ETA or retry backoff.\n# TYPE {name} gauge");
    let waiting: u32 = live.iter().map(|row| row[3] + row[4]).sum();
    let _ = writeln!(out, "{name} {waiting}");
    let cluster = state.cluster_status();
    let _ = writeln!(out, "# HELP fastworker_workers_live Subworkers that tasks are routed to.");
    let _ =
        writeln!(out, "# TYPE fastworker_workers_live gauge\nfastworker_workers_live {}", cluster.active_subworkers);
    let _ = writeln!(out, "# HELP fastworker_workers Subworkers known, by status.\n# TYPE fastworker_workers gauge");
    for status in [WorkerState::Active, WorkerState::Inactive, WorkerState::Draining] {
        let count = cluster.subworkers.iter().filter(|w| w.status == status).count();
        let _ = writeln!(out, "fastworker_workers{{status=\"{}\"}} {count}", status.as_str());
    }
    let (hits, misses) = state.monitor.cache_hits_misses();
    let (_, uptime) = state.monitor.uptime();
    let gauges: [(&str, &str, &str, f64); 5] = [
        ("fastworker_cache_size", "gauge", "Results held in the result cache.", state.cached_results() as f64),
        ("fastworker_cache_capacity", "gauge", "Most results the cache keeps.", state.config.result_cache_size as f64),
        ("fastworker_cache_hits_total", "counter", "Result queries answered from the cache.", hits as f64),
        ("fastworker_cache_misses_total", "counter", "Result queries the cache could not answer.", misses as f64),
        ("fastworker_uptime_seconds", "gauge", "Seconds since this control plane started.", uptime),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    let [(running, running_bytes), (kept, kept_bytes)] = state.workflow_bytes();
    let gauges: [(&str, &str, usize); 5] = [
        (
            "fastworker_call_outcomes_owed",
            "Batched calls of clients whose outcomes were not yet sent back (running, or kept for the client's next frame).",
            state.calls.owed(),
        ),
        ("fastworker_workflows_running", "Workflows running.", running),
        (
            "fastworker_workflows_running_bytes",
            "Bytes running workflows hold: descriptions and the results their groups gathered (--max-queued-bytes).",
            running_bytes,
        ),
        ("fastworker_workflows_finished", "Finished workflows kept for their status.", kept),
        (
            "fastworker_workflows_finished_bytes",
            "Bytes the finished workflows kept hold (--result-cache-bytes, counted apart from results).",
            kept_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    render_bounds(shared, &mut out);
    super::task_limits::render_metrics(shared, &mut out, escape);
    out
}

/// Every limit next to its usage and its refusals, and what was dropped.
fn render_bounds(shared: &Shared, out: &mut String) {
    let state = &shared.state;
    let bounds = &state.config.bounds;
    let refusals = &state.refusals;
    let _ = writeln!(out, "# HELP fastworker_limit A bound of this process (docs/control-plane.md#bounds), by flag.");
    let _ = writeln!(out, "# TYPE fastworker_limit gauge");
    for bound in Bound::ALL {
        let _ = writeln!(out, "fastworker_limit{{limit=\"{}\"}} {}", bound.label(), bound.value(bounds));
    }
    let _ = writeln!(out, "# HELP fastworker_limit_usage What a bound limits, in use now.");
    let _ = writeln!(out, "# TYPE fastworker_limit_usage gauge");
    for bound in Bound::ALL {
        let taken = |max: usize, free: usize| Some(max.saturating_sub(free) as u64);
        let usage = match bound {
            Bound::GuiConnections => taken(bounds.gui_max_connections, shared.connections.available_permits()),
            Bound::GuiWaits => taken(bounds.gui_max_waits, shared.waits.available_permits()),
            _ => state.usage(bound),
        };
        if let Some(usage) = usage {
            let _ = writeln!(out, "fastworker_limit_usage{{limit=\"{}\"}} {usage}", bound.label());
        }
    }
    let _ = writeln!(out, "# HELP fastworker_limit_refusals_total Requests a bound refused.");
    let _ = writeln!(out, "# TYPE fastworker_limit_refusals_total counter");
    for bound in Bound::ALL {
        let _ = writeln!(out, "fastworker_limit_refusals_total{{limit=\"{}\"}} {}", bound.label(), refusals.of(bound));
    }
    let counters: [(&str, &str, &AtomicU64); 5] = [
        (
            "fastworker_frames_unauthenticated_total",
            "Frames refused for want of a valid seal (--cluster-key-file).",
            &refusals.unauthenticated,
        ),
        (
            "fastworker_replies_dropped_total",
            "Replies not sent within --reply-timeout (their connection was closed).",
            &refusals.replies_dropped,
        ),
        (
            "fastworker_log_lines_suppressed_total",
            "Log lines about refused requests left out by the per-peer rate limit.",
            &refusals.log_lines_suppressed,
        ),
        (
            "fastworker_callbacks_dropped_total",
            "Callback notices dropped (queue full, address refused or unreachable).",
            &refusals.callbacks_dropped,
        ),
        (
            "fastworker_subworker_bad_results_total",
            "Results from subworkers that were not JSON (the run failed).",
            &refusals.bad_results,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
    }
    let delivery = &state.delivery;
    let counters: [(&str, &str, &AtomicU64); 3] = [
        (
            "fastworker_revoked_reports_total",
            "Reports (starts and outcomes) of subworker runs whose lease had been revoked: discarded.",
            &delivery.revoked_reports,
        ),
        (
            "fastworker_tasks_handed_back_total",
            "Tasks a stopping subworker handed back unstarted.",
            &delivery.handed_back,
        ),
        (
            "fastworker_leases_expired_total",
            "Subworker runs taken back because their start or end was not reported in time.",
            &delivery.leases_expired,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
    }
    render_worker_processes(state, out);
}

/// The supervised worker processes' deaths, restarts and recycles, in all
/// and per process, each process's runs and memory, and the tasks whose
/// runs crashed them (docs/isolation.md), when there are any.
fn render_worker_processes(state: &crate::server::state::State, out: &mut String) {
    let Some(watch) = state.crashes.get() else { return };
    let counters: [(&str, &str, &AtomicU64); 4] = [
        (
            "fastworker_worker_process_crashes_total",
            "Worker processes that died without being asked to stop (a signal or an exit).",
            &watch.crashes,
        ),
        ("fastworker_worker_process_restarts_total", "Worker processes started again after dying.", &watch.restarts),
        (
            "fastworker_worker_process_recycles_total",
            "Worker processes replaced on purpose (--max-tasks-per-child, --max-memory-per-child).",
            &watch.recycles,
        ),
        (
            "fastworker_worker_processes_given_up_total",
            "Worker processes no longer restarted: they died too often within the window.",
            &watch.given_up,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
    }
    let counts = watch.counts();
    type ByTask<'a> = (&'a str, &'a str, &'a Vec<(String, u64)>);
    let by_task: [ByTask; 2] = [
        (
            "fastworker_tasks_crashed_total",
            "Tasks failed as Crashed (--max-task-crashes), by task name.",
            &counts.crashed_by_task,
        ),
        (
            "fastworker_task_crashes_total",
            "Runs that died with their worker process, by task name.",
            &counts.crashes_by_task,
        ),
    ];
    for (name, help, rows) in by_task {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (task, count) in rows {
            let _ = writeln!(out, "{name}{{task=\"{}\"}} {count}", escape(task));
        }
    }
    type Field = fn(&crate::wire::protocol::WorkerProcessStatus) -> u64;
    let per_process: [(&str, &str, &str, Field); 5] = [
        (
            "fastworker_local_worker_crashes_total",
            "counter",
            "Deaths of this worker process it was not asked for.",
            |p| p.crashes,
        ),
        ("fastworker_local_worker_restarts_total", "counter", "Restarts of this worker process after it died.", |p| {
            p.restarts
        }),
        ("fastworker_local_worker_recycles_total", "counter", "Replacements of this worker process on purpose.", |p| {
            p.recycles
        }),
        (
            "fastworker_local_worker_runs_total",
            "counter",
            "Runs sent to this worker process, over its restarts.",
            |p| p.runs_total,
        ),
        (
            "fastworker_local_worker_resident_bytes",
            "gauge",
            "Resident memory of this worker process, last read.",
            |p| p.rss_bytes,
        ),
    ];
    for (name, kind, help, field) in per_process {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for process in &counts.processes {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", escape(&process.worker_id), field(process));
        }
    }
}

/// A label value in the text format: `\\`, `\"` and `\n` as the format
/// escapes them, and every other control character as the four visible
/// characters `\\xHH` (a literal backslash, then its code), so that no
/// name a peer gave can break a line or forge a series.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_control_character_is_escaped() {
        assert_eq!(super::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(super::escape("x\ry\u{7f}z\u{85}"), "x\\\\x0dy\\\\x7fz\\\\x85");
        assert!(!super::escape(&(0u8..=0x1f).map(char::from).collect::<String>()).chars().any(char::is_control));
    }
}
