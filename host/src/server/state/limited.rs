//! The cluster-wide task limits ([`crate::cluster::task_limits`]) as a
//! control plane starts with them, lists them, and changes them at run
//! time. The ledger applies them (`ledger/local.rs`). Subworkers do not
//! enforce them; a limit a subworker declares counts only for a task the
//! control plane's plugins do not provide, while that subworker is
//! registered (`ledger/workers.rs`).

use tracing::info;

use super::State;
use crate::cluster::task_limits::{TaskLimit, TaskLimitStatus, TaskLimits};
use crate::plugins::Registry;
use crate::server::config::ControlPlaneConfig;
use crate::wire::protocol::{now_ms, ErrorKind, ErrorReply, Reply};

/// The limits a control plane starts with: what its plugins declare, with
/// its `--task-limit` flags over them. A subworker enforces none.
pub(super) fn task_limits(config: &ControlPlaneConfig, registry: &Registry) -> TaskLimits {
    let Some(management) = &config.management else { return TaskLimits::default() };
    let declared =
        registry.tasks().into_iter().filter_map(|task| task.limit.map(|limit| (task.decl.name.to_string(), limit)));
    let own = registry.tasks().into_iter().map(|task| task.decl.name.to_string());
    TaskLimits::new(declared, management.task_limits.clone(), now_ms()).with_own_tasks(own)
}

impl State {
    /// Every limited task name and what it holds now.
    pub(crate) fn task_limit_statuses(&self) -> Vec<TaskLimitStatus> {
        let tasks = self.lock();
        tasks.ledger.task_limits().statuses(|task_name| tasks.ledger.cluster().waiting_named(task_name))
    }

    /// Sets (`Some`) or lifts (`None`) a task's limit at run time.
    /// Only for a task a plugin here or a live subworker provides, or one
    /// limited already (by a flag): so that nobody can fill the names'
    /// room with names no worker runs (docs/limits.md).
    pub(crate) fn set_task_limit(&self, task_name: &str, limit: Option<TaskLimit>) -> Reply {
        let provided =
            self.registry.get(task_name).is_some() || self.lock().ledger.cluster().provider(task_name).is_some();
        self.change_task_limits(|limits, now| {
            if !provided && !limits.is_limited(task_name) {
                crate::cluster::task_limits::check_name(task_name).map_err(|e| e.to_string())?;
                return Err(format!(
                    "no plugin here and no live subworker provides task '{task_name}': a limit is set for a task that is provided (or with --task-limit at start-up)"
                ));
            }
            limits.set(task_name, limit, now).map_err(|e| e.to_string())
        })
            .map(|()| {
                let shown = limit.map_or("none".to_string(), |l| l.describe());
                info!(task = %task_name, limit = %shown, "task limit set at run time");
            })
            .map_or_else(Reply::Error, |()| Reply::Done)
    }

    /// Drops a task's run-time limit: its declared or flag limit holds again.
    pub(crate) fn clear_task_limit(&self, task_name: &str) -> Reply {
        let cleared = self.change_task_limits(|limits, now| {
            crate::cluster::task_limits::check_name(task_name).map_err(|e| e.to_string())?;
            Ok(limits.clear(task_name, now))
        });
        match cleared {
            Ok(had) => {
                info!(task = %task_name, had_one = had, "run-time task limit cleared");
                Reply::Done
            }
            Err(refusal) => Reply::Error(refusal),
        }
    }

    fn change_task_limits<T>(
        &self,
        change: impl FnOnce(&mut TaskLimits, u64) -> Result<T, String>,
    ) -> Result<T, ErrorReply> {
        if self.config.is_subworker() {
            let message = "task limits are set on the control plane, which enforces them";
            return Err(ErrorReply::new(ErrorKind::WrongEndpoint, message));
        }
        let now = now_ms();
        self.drive_locked(|ledger, io| {
            ledger
                .change_task_limits(now, io, |limits| change(limits, now))
                .map_err(|message| ErrorReply::new(ErrorKind::BadTaskLimit, message))
        })
    }
}
