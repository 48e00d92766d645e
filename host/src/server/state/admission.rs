//! Admission: what a submission must pass before the ledger takes it.
//! The bounds it may not exceed (a pure check, [`check_bounds`]), the
//! defaults its task declares (this process's plugin, else a live
//! subworker's offer), and the refusals when nobody provides it or its id
//! is another task's.

use super::{State, Tasks};
use crate::server::bounds::{millis, Bound, Bounds};
use crate::wire::auth::Tenant;
use crate::wire::protocol::{now_ms, ErrorKind, ErrorReply, Priority, Submit, TaskId};

/// Why the bounds refuse a submission.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A queue is full (`what` says which): retry later.
    Busy(Bound, String),
    /// It asks for more than this process allows.
    Bad(String),
}

/// Checks a submission against `bounds`, with `load` (live tasks, and the
/// bytes of arguments they hold) the ledger's now, and `mine` the part of
/// it its tenant (its key, or its connection without keys) holds, if it
/// counts against a share (`--queue-share`).
pub(super) fn check_bounds(
    bounds: &Bounds,
    load: (usize, u64),
    mine: Option<(usize, u64)>,
    submit: &Submit,
    now: u64,
) -> Result<(), Refusal> {
    let (live, live_bytes) = load;
    if let Some((held, held_bytes)) = mine {
        let share = bounds.share_of(bounds.max_queued_tasks as u64);
        if held as u64 >= share {
            let what = format!(
                "this key (or connection) holds {held} queued or running tasks, its share of --max-queued-tasks {}",
                bounds.max_queued_tasks
            );
            return Err(Refusal::Busy(Bound::QueueShare, what));
        }
        if held_bytes.saturating_add(submit.args.len() as u64) > bounds.share_of(bounds.max_queued_bytes) {
            let what = format!("this key's (or connection's) tasks hold {held_bytes} bytes of arguments, its share of --max-queued-bytes {}", bounds.max_queued_bytes);
            return Err(Refusal::Busy(Bound::QueueShare, what));
        }
    }
    if live >= bounds.max_queued_tasks {
        return Err(Refusal::Busy(Bound::QueuedTasks, format!("{live} tasks are queued or running")));
    }
    let bytes = live_bytes.saturating_add(submit.args.len() as u64);
    if bytes > bounds.max_queued_bytes {
        return Err(Refusal::Busy(Bound::QueuedBytes, format!("queued tasks hold {live_bytes} bytes of arguments")));
    }
    let bad = |message: String| Err(Refusal::Bad(message));
    if let Some(callback) = &submit.callback {
        if let Err(message) = crate::server::callbacks::check_address(&callback.address, bounds) {
            return bad(message);
        }
    }
    let furthest = now.saturating_add(millis(bounds.max_countdown));
    if submit.not_before_ms.is_some_and(|at| at > furthest) {
        return bad(format!(
            "a countdown or ETA may be at most {} s ahead here (--max-countdown)",
            bounds.max_countdown.as_secs()
        ));
    }
    if let Some(retry) = &submit.retry {
        if retry.max_retries > bounds.max_retries {
            return bad(format!(
                "{} retries asked for; at most {} are allowed here (--max-retries)",
                retry.max_retries, bounds.max_retries
            ));
        }
        if !retry.factor.is_finite() || retry.factor < 0.0 {
            return bad(format!("retry factor {} is not a finite number of 0 or more", retry.factor));
        }
        if retry.delay_ms.max(retry.max_delay_ms) > millis(bounds.max_countdown) {
            return bad(format!(
                "a pause between retries may be at most {} s here (--max-countdown)",
                bounds.max_countdown.as_secs()
            ));
        }
    }
    Ok(())
}

/// The refusal of a task id already used for another task.
pub(super) fn id_conflict(task_id: TaskId, task_name: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::IdConflict,
        format!(
            "task id {task_id} is already used by a task '{task_name}' with other arguments: choose a fresh id (ids are not secrets; resubmitting the same task under its id is safe)"
        ),
    )
}

/// A task's declared defaults, from the plugin here or a subworker's offer.
pub(super) struct Declared {
    pub(super) priority: Priority,
    pub(super) timeout_ms: u64,
    pub(super) max_retries: u32,
    pub(super) retry_delay_ms: u64,
}

impl Declared {
    fn of(task: &crate::plugins::LoadedTask) -> Declared {
        let options = &task.decl.options;
        Declared {
            priority: options.priority,
            timeout_ms: options.timeout_ms,
            max_retries: options.max_retries,
            retry_delay_ms: options.retry_delay_ms,
        }
    }
}

impl State {
    /// The defaults of `task_name`: this process's plugin's, else a live
    /// subworker's offer; or why nobody can run it.
    pub(super) fn declared(&self, tasks: &Tasks, task_name: &str) -> Result<Declared, ErrorReply> {
        match (tasks.ledger.cluster().provider(task_name), self.registry.get(task_name)) {
            // What this control plane's own plugin declares wins over what
            // a subworker offers for the same task.
            (Some(_), Some(task)) => Ok(Declared::of(task)),
            (Some(offered), None) => Ok(Declared {
                priority: offered.priority,
                timeout_ms: offered.timeout_ms,
                max_retries: offered.max_retries.min(self.config.bounds.max_retries),
                retry_delay_ms: offered.retry_delay_ms.min(millis(self.config.bounds.max_countdown)),
            }),
            (None, Some(_)) if self.pool.threads() == 0 && !tasks.ledger.awaits(task_name) => {
                let message = format!(
                    "no worker can run task '{task_name}': this control plane runs with --concurrency 0 and no live subworker provides it"
                );
                Err(ErrorReply::new(ErrorKind::NoWorker, message))
            }
            (None, Some(task)) => Ok(Declared::of(task)),
            (None, None) => Err(self
                .restart_window_refusal(task_name)
                .unwrap_or_else(|| ErrorReply::new(ErrorKind::UnknownTask, self.nobody_provides(tasks, task_name)))),
        }
    }

    /// The `Busy` refusal of something `bound` does not let in now (counted
    /// for `/metrics`): `what` says what is full.
    pub(super) fn busy(&self, bound: Bound, what: &str) -> ErrorReply {
        self.refusals.count(bound);
        let bounds = &self.config.bounds;
        let message = format!(
            "'{}' is busy: {what} ({} {}); retry later",
            self.config.worker_id,
            bound.flag(),
            bound.value(bounds)
        );
        ErrorReply::new(ErrorKind::Busy, message)
    }

    /// Refuses a submission the bounds do not allow (see [`check_bounds`]);
    /// a full queue is counted for `/metrics`.
    pub(super) fn within_bounds(
        &self,
        tasks: &Tasks,
        submit: &Submit,
        tenant: Option<Tenant>,
    ) -> Result<(), ErrorReply> {
        let mine = tenant.map(|tenant| tasks.ledger.tenant_load(tenant));
        check_bounds(&self.config.bounds, tasks.ledger.load(), mine, submit, now_ms()).map_err(
            |refusal| match refusal {
                Refusal::Busy(bound, what) => self.busy(bound, &what),
                Refusal::Bad(message) => ErrorReply::new(ErrorKind::BadRequest, message),
            },
        )
    }

    /// "No worker provides task 'x'", with what is provided.
    pub(super) fn nobody_provides(&self, tasks: &Tasks, task_name: &str) -> String {
        let mut known: Vec<&str> = self.registry.tasks().iter().map(|t| t.decl.name.as_str()).collect();
        known.extend(tasks.ledger.cluster().task_names());
        known.sort_unstable();
        known.dedup();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        format!("no worker provides task '{task_name}' (tasks provided now: {known})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::{Callback, RetryPolicy};

    const NOW: u64 = 1_000_000;

    fn submit(args: &[u8]) -> Submit {
        Submit { task_id: TaskId::new_v4(), task_name: "t".into(), args: args.to_vec(), ..Default::default() }
    }

    #[test]
    fn full_queues_are_busy_and_say_which() {
        let bounds = Bounds { max_queued_tasks: 2, max_queued_bytes: 10, ..Bounds::default() };
        assert_eq!(check_bounds(&bounds, (1, 0), None, &submit(b"[1]"), NOW), Ok(()));
        assert!(matches!(
            check_bounds(&bounds, (2, 0), None, &submit(b"[1]"), NOW),
            Err(Refusal::Busy(Bound::QueuedTasks, _))
        ));
        assert!(matches!(
            check_bounds(&bounds, (1, 8), None, &submit(b"[1]"), NOW),
            Err(Refusal::Busy(Bound::QueuedBytes, _))
        ));
        // Sums that would overflow are refused, not wrapped.
        assert!(check_bounds(&bounds, (0, u64::MAX), None, &submit(b"[1]"), NOW).is_err());
    }

    #[test]
    fn one_tenant_holds_at_most_its_share_and_others_still_get_in() {
        let bounds =
            Bounds { max_queued_tasks: 100, max_queued_bytes: 1000, queue_share_percent: 25, ..Bounds::default() };
        // A tenant holding its 25 tasks is Busy, naming the flag; another
        // tenant, and a submission that counts against no share, get in.
        let full = check_bounds(&bounds, (25, 0), Some((25, 0)), &submit(b"[1]"), NOW);
        assert!(matches!(full, Err(Refusal::Busy(Bound::QueueShare, ref m)) if m.contains("its share")), "{full:?}");
        assert_eq!(check_bounds(&bounds, (25, 0), Some((0, 0)), &submit(b"[1]"), NOW), Ok(()));
        assert_eq!(check_bounds(&bounds, (25, 0), None, &submit(b"[1]"), NOW), Ok(()));
        assert_eq!(check_bounds(&bounds, (24, 0), Some((24, 0)), &submit(b"[1]"), NOW), Ok(()));
        // Bytes too: 250 of the 1000.
        let heavy = check_bounds(&bounds, (1, 248), Some((1, 248)), &submit(b"[1]"), NOW);
        assert!(matches!(heavy, Err(Refusal::Busy(Bound::QueueShare, _))), "{heavy:?}");
        // The whole queue still bounds everyone.
        let all = check_bounds(&bounds, (100, 0), Some((0, 0)), &submit(b"[1]"), NOW);
        assert!(matches!(all, Err(Refusal::Busy(Bound::QueuedTasks, _))));
        // At 100 %, one tenant may take it all; a share is never 0.
        let whole = Bounds { queue_share_percent: 100, ..bounds.clone() };
        assert_eq!(check_bounds(&whole, (99, 0), Some((99, 0)), &submit(b"[1]"), NOW), Ok(()));
        let tiny = Bounds { max_queued_tasks: 1, queue_share_percent: 1, ..bounds };
        assert_eq!(check_bounds(&tiny, (0, 0), Some((0, 0)), &submit(b"[1]"), NOW), Ok(()));
    }

    #[test]
    fn countdowns_retries_and_callbacks_beyond_the_limits_are_bad_requests() {
        let bounds = Bounds::default();
        let far = Submit { not_before_ms: Some(u64::MAX), ..submit(b"[]") };
        assert!(
            matches!(check_bounds(&bounds, (0, 0), None, &far, NOW), Err(Refusal::Bad(m)) if m.contains("--max-countdown"))
        );
        let retry = |max_retries, factor, delay_ms| Submit {
            retry: Some(RetryPolicy { max_retries, delay_ms, factor, max_delay_ms: delay_ms }),
            ..submit(b"[]")
        };
        let too_many = retry(bounds.max_retries + 1, 2.0, 10);
        assert!(
            matches!(check_bounds(&bounds, (0, 0), None, &too_many, NOW), Err(Refusal::Bad(m)) if m.contains("--max-retries"))
        );
        for factor in [f64::NAN, f64::INFINITY, -1.0] {
            assert!(check_bounds(&bounds, (0, 0), None, &retry(1, factor, 10), NOW).is_err(), "factor {factor}");
        }
        assert!(check_bounds(&bounds, (0, 0), None, &retry(1, 2.0, u64::MAX), NOW).is_err());
        assert_eq!(check_bounds(&bounds, (0, 0), None, &retry(1, 2.0, 10), NOW), Ok(()));
        let callback = Callback { address: "file:///etc/passwd".into(), data: Vec::new() };
        let bad_callback = Submit { callback: Some(callback), ..submit(b"[]") };
        assert!(
            matches!(check_bounds(&bounds, (0, 0), None, &bad_callback, NOW), Err(Refusal::Bad(m)) if m.contains("scheme"))
        );
    }
}
