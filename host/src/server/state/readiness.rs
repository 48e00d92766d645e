//! What `GET /readyz` reports: whether this control plane can take and run
//! tasks now, check by check, so that a supervisor or a load balancer sends
//! it work only then and an operator reads what it still waits for.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::State;

/// One condition of readiness.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Check {
    /// Its name: `ports`, `store`, `restart_window` or `worker_processes`.
    pub(crate) name: &'static str,
    /// Whether it holds now.
    pub(crate) ready: bool,
    /// What it found, in words (no path, key or task data).
    pub(crate) detail: String,
}

impl State {
    /// Every readiness check, in a fixed order. Holds the task lock only to
    /// look the worker processes up among the registered subworkers.
    pub(crate) fn readiness(&self) -> Vec<Check> {
        let accepting = self.accepting.load(Ordering::SeqCst);
        let ports = Check {
            name: "ports",
            ready: accepting,
            detail: match accepting {
                true => "the task, result and management ports are bound and serving".to_string(),
                false => "shutting down: no new task is accepted".to_string(),
            },
        };
        let store = match (self.durable.is_on(), self.durable.has_room()) {
            (false, _) => Check { name: "store", ready: true, detail: "memory mode (no --state-dir)".to_string() },
            (true, Ok(())) => Check { name: "store", ready: true, detail: "the --state-dir store is open".to_string() },
            (true, Err(busy)) => Check { name: "store", ready: false, detail: busy.message },
        };
        let mut checks = vec![ports, store];
        if let Some(management) = &self.config.management {
            let window = management.restart_window;
            let elapsed = Instant::now().saturating_duration_since(self.started_at);
            checks.push(Check {
                name: "restart_window",
                ready: elapsed >= window,
                detail: format!(
                    "started {:.1} s ago; subworkers may register again for {:.1} s after a start (--restart-window)",
                    elapsed.as_secs_f64(),
                    window.as_secs_f64()
                ),
            });
        }
        if let Some(watch) = self.crashes.get() {
            let expected = watch.worker_ids();
            let tasks = self.lock();
            let routable =
                |id: &String| tasks.ledger.cluster().workers().any(|w| w.routable() && &w.name.worker_id == id);
            let missing: Vec<String> = expected.iter().filter(|id| !routable(id)).cloned().collect();
            drop(tasks);
            checks.push(Check {
                name: "worker_processes",
                ready: missing.is_empty(),
                detail: match missing.is_empty() {
                    true => format!("all {} worker processes are registered", expected.len()),
                    false => format!(
                        "{} of {} worker processes not registered (starting, restarting after a crash, or given up): {}",
                        missing.len(),
                        expected.len(),
                        missing.join(", ")
                    ),
                },
            });
        }
        checks
    }
}
