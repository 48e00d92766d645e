//! Where the control plane applies the cluster-wide task limits
//! ([`crate::cluster::task_limits`]): the gate the cluster asks before it hands a
//! run of a limited task to a subworker, the runs held back for this
//! process's own threads, the alarm that wakes what is held back when a
//! token comes due, and the run-time changes.
//!
//! A run counts as running from the moment it is sent to a subworker (or
//! handed to this process's threads) until the control plane settles its
//! outcome: its result, its failure before a retry, its timeout, its
//! cancellation, or its loss with a subworker (then it is sent again and
//! counts again, against the rate too). It is only sent to a subworker with
//! fewer runs in flight than its concurrency, so it starts at once, never
//! into a prefetch slot. Subworkers do not enforce these limits.

use tracing::info;

use super::{Job, Outbox, State, Tasks};
use crate::cluster::task_limits::{TaskLimit, TaskLimitStatus, TaskLimits};
use crate::plugins::Registry;
use crate::server::config::ControlPlaneConfig;
use crate::server::timers::Alarm;
use crate::wire::protocol::{now_ms, ErrorKind, ErrorReply, Reply, TaskId, TaskState};

/// The limits a control plane starts with: what its plugins declare, with
/// its `--task-limit` flags over them. A subworker enforces none.
pub(super) fn task_limits(config: &ControlPlaneConfig, registry: &Registry) -> TaskLimits {
    let Some(management) = &config.management else { return TaskLimits::default() };
    let declared =
        registry.tasks().into_iter().filter_map(|task| task.limit.map(|limit| (task.decl.name.to_string(), limit)));
    TaskLimits::new(declared, management.task_limits.clone(), now_ms())
}

/// The task limits as the cluster asks them, at one instant.
pub(super) struct Gate<'a> {
    limits: &'a mut TaskLimits,
    now_ms: u64,
}

impl<'a> Gate<'a> {
    /// The gate of `limits`, now.
    pub(super) fn new(limits: &'a mut TaskLimits) -> Gate<'a> {
        Gate { now_ms: if limits.is_empty() { 0 } else { now_ms() }, limits }
    }
}

impl crate::cluster::routing::Gate for Gate<'_> {
    fn limited(&mut self, task_name: &str) -> bool {
        !self.limits.is_empty() && self.limits.is_limited(task_name)
    }

    fn admit(&mut self, task_name: &str, task_id: TaskId) -> bool {
        self.limits.try_start(task_name, task_id, self.now_ms)
    }
}

impl State {
    /// Sets the alarm that looks again at the runs held back, if it must
    /// ring earlier than it is set for.
    pub(super) fn arm_task_limits(&self, limits: &mut TaskLimits) {
        if limits.is_empty() {
            return;
        }
        if let Some(due) = limits.arm(now_ms()) {
            self.timers.set(due, Alarm::TaskLimits);
        }
    }

    /// Hands a queued task to this process's worker threads.
    pub(super) fn push_local(&self, tasks: &mut Tasks, task_id: TaskId, outbox: &mut Outbox) {
        let Some(live) = tasks.live.get(&task_id) else { return };
        let Some(task) = self.registry.get(&live.report.task_name) else { return };
        let job = Job { task_id, decl: task.decl, args: live.args.clone(), cancelled: live.cancelled.clone() };
        if self.pool.push(live.report.priority, job).is_err() {
            let message = "shut down before the task could run here; submit it again".to_string();
            self.fail(tasks, task_id, message, outbox);
        }
    }

    /// Lets go the held-back runs their limits allow now: to this
    /// process's threads, and into the subworkers' free slots.
    pub(super) fn release_held(&self, tasks: &mut Tasks, outbox: &mut Outbox) {
        let now = now_ms();
        while let Some((task_name, task_id)) = tasks.task_limits.next_local(now) {
            match tasks.live.get(&task_id) {
                Some(task) if task.report.state == TaskState::Queued => self.push_local(tasks, task_id, outbox),
                _ => tasks.task_limits.settle(&task_name, task_id),
            }
        }
        if !tasks.cluster.is_empty() {
            self.fill(tasks, outbox);
        }
        self.arm_task_limits(&mut tasks.task_limits);
    }

    /// Every limited task name and what it holds now.
    pub(crate) fn task_limit_statuses(&self) -> Vec<TaskLimitStatus> {
        let tasks = self.lock();
        tasks.task_limits.statuses(|task_name| tasks.cluster.waiting_named(task_name))
    }

    /// Sets (`Some`) or lifts (`None`) a task's limit at run time.
    pub(crate) fn set_task_limit(&self, task_name: &str, limit: Option<TaskLimit>) -> Reply {
        self.change_task_limits(|limits, now| limits.set(task_name, limit, now).map_err(|e| e.to_string()))
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
        if self.config.management.is_none() {
            let message = "task limits are set on the control plane, which enforces them";
            return Err(ErrorReply::new(ErrorKind::WrongEndpoint, message));
        }
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let changed = change(&mut tasks.task_limits, now_ms())
            .map_err(|message| ErrorReply::new(ErrorKind::BadTaskLimit, message))?;
        // A loosened limit lets held-back runs go at once.
        self.release_held(&mut tasks, &mut outbox);
        drop(tasks);
        outbox.deliver();
        Ok(changed)
    }
}
