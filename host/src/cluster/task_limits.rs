//! Cluster-wide limits per task name: a rate (runs *started* per second, a
//! token bucket with a burst) and a concurrency (runs at once across the
//! control plane's threads and every subworker). Not to be confused with
//! [`crate::server::bounds`], the bounds of what a peer can make a process spend.
//!
//! A pure state machine: no clock, no lock, no I/O. The control plane passes
//! the time in (milliseconds since the epoch) and asks, when a run of a
//! limited task could go to a free worker, whether it may start; a run that
//! may not is held back in its priority queue (the cluster's, or here for the
//! control plane's own threads) and asked again when a token comes due or a
//! running run settles. See docs/limits.md.

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::cluster::worker::WorkerKey;
use crate::wire::protocol::{Priority, TaskId};
pub use crate::wire::task_limit::{
    check_name, default_burst, parse_rate, LimitSource, Rate, TaskLimit, TaskLimitError, TaskLimitStatus, MAX_BURST,
    MAX_OVERRIDES, MAX_PER_SECOND, MAX_RUNNING, MAX_TASK_NAME_BYTES, MIN_PER_SECOND,
};

/// What one task name is limited to and what it holds now.
#[derive(Default)]
struct NameState {
    /// The limit in force and its source; `None` limit: not limited now.
    limit: Option<TaskLimit>,
    source: Option<LimitSource>,
    /// Tokens in the bucket (at most the burst), as of `refilled_ms`.
    tokens: f64,
    refilled_ms: u64,
    /// Runs counted as running (sent or handed to a thread, not settled).
    running: FxHashSet<TaskId>,
    /// Runs for this process's own threads held back, by priority.
    local: [VecDeque<TaskId>; 4],
    held_total: u64,
}

impl NameState {
    fn refill(&mut self, now_ms: u64) {
        if let Some(rate) = self.limit.and_then(|l| l.rate) {
            let elapsed = now_ms.saturating_sub(self.refilled_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst as f64);
        }
        self.refilled_ms = self.refilled_ms.max(now_ms);
    }

    fn may_start(&mut self, now_ms: u64) -> bool {
        let Some(limit) = self.limit else { return true };
        self.refill(now_ms);
        let room = limit.max_running.is_none_or(|max| self.running.len() < max as usize);
        room && (limit.rate.is_none() || self.tokens >= 1.0)
    }

    fn take(&mut self, task_id: TaskId) {
        if self.limit.is_some_and(|l| l.rate.is_some()) {
            self.tokens -= 1.0;
        }
        self.running.insert(task_id);
    }

    /// When the next token is in the bucket, if one is missing.
    fn next_token_ms(&self) -> Option<u64> {
        let rate = self.limit?.rate?;
        if self.tokens >= 1.0 {
            return None;
        }
        let wait_ms = ((1.0 - self.tokens) / rate.per_second * 1000.0).ceil();
        // Bounded by the slowest rate (an hour a token): the cast cannot overflow.
        Some(self.refilled_ms.saturating_add(wait_ms.clamp(1.0, 3_600_000.0) as u64))
    }

    fn held_locally(&self) -> usize {
        self.local.iter().map(VecDeque::len).sum()
    }

    fn idle(&self) -> bool {
        self.limit.is_none() && self.running.is_empty() && self.held_locally() == 0
    }
}

/// Every task name's limit and what it holds now.
#[derive(Default)]
pub(crate) struct TaskLimits {
    /// Declared by the plugins here, with the flag's overrides applied.
    base: FxHashMap<String, (Option<TaskLimit>, LimitSource)>,
    /// Set at run time; `None` removes a limit.
    run_time: FxHashMap<String, Option<TaskLimit>>,
    /// The tasks the control plane's own plugins provide: a subworker's
    /// declared limit never applies to them.
    own: FxHashSet<String>,
    /// The subworker whose declared limit is in `base`, by task name: it
    /// leaves with that subworker.
    offered_by: FxHashMap<String, WorkerKey>,
    names: FxHashMap<String, NameState>,
    /// When the wake-up alarm is set for, if it is.
    armed_ms: Option<u64>,
    /// A settled run may let a held one go: wake at once.
    wake_now: bool,
}

impl TaskLimits {
    /// The limits declared by the plugins (`declared`) with the flag's
    /// overrides (`flags`, `None`: remove) on top.
    pub(crate) fn new(
        declared: impl IntoIterator<Item = (String, TaskLimit)>,
        flags: impl IntoIterator<Item = (String, Option<TaskLimit>)>,
        now_ms: u64,
    ) -> TaskLimits {
        let mut limits = TaskLimits::default();
        for (name, limit) in declared {
            limits.base.insert(name, (Some(limit), LimitSource::Declared));
        }
        for (name, limit) in flags {
            limits.base.insert(name, (limit, LimitSource::Flag));
        }
        let names: Vec<String> = limits.base.keys().cloned().collect();
        for name in names {
            limits.refresh(&name, now_ms);
        }
        limits.wake_now = false;
        limits
    }

    /// Names the tasks the control plane's own plugins provide, whose limits
    /// only those plugins, flags and the operator set.
    pub(crate) fn with_own_tasks(mut self, names: impl IntoIterator<Item = String>) -> TaskLimits {
        self.own.extend(names);
        self
    }

    /// Adds the limit subworker `by`'s plugin declares for `name`, unless
    /// the control plane's plugins provide that task or it has a declared
    /// or flag limit here already (the control plane's own plugins and
    /// flags, then the first subworker to offer it, win); a run-time limit
    /// still overrides it. True when it was taken.
    pub(crate) fn declare_offered(&mut self, name: &str, limit: TaskLimit, by: WorkerKey, now_ms: u64) -> bool {
        if self.own.contains(name) || self.base.contains_key(name) || limit.check().is_err() {
            return false;
        }
        self.base.insert(name.to_string(), (Some(limit), LimitSource::Declared));
        self.offered_by.insert(name.to_string(), by);
        self.refresh(name, now_ms);
        true
    }

    /// Subworker `by` is gone: the limits it declared go with it. Returns
    /// their names (another subworker offering them may declare them again).
    pub(crate) fn withdraw_offered(&mut self, by: WorkerKey, now_ms: u64) -> Vec<String> {
        let names: Vec<String> =
            self.offered_by.iter().filter(|(_, worker)| **worker == by).map(|(name, _)| name.clone()).collect();
        for name in &names {
            self.offered_by.remove(name);
            self.base.remove(name);
            self.refresh(name, now_ms);
        }
        names
    }

    /// Sets (`Some`) or removes (`None`) a task's limit at run time.
    pub(crate) fn set(&mut self, name: &str, limit: Option<TaskLimit>, now_ms: u64) -> Result<(), TaskLimitError> {
        check_name(name)?;
        if let Some(limit) = &limit {
            limit.check()?;
        }
        if !self.run_time.contains_key(name) && self.run_time.len() >= MAX_OVERRIDES {
            return Err(TaskLimitError::TooMany);
        }
        self.run_time.insert(name.to_string(), limit);
        self.refresh(name, now_ms);
        Ok(())
    }

    /// Drops a run-time override: the declared or flag limit holds again.
    /// False when there was none.
    pub(crate) fn clear(&mut self, name: &str, now_ms: u64) -> bool {
        let had = self.run_time.remove(name).is_some();
        self.refresh(name, now_ms);
        had
    }

    fn effective(&self, name: &str) -> (Option<TaskLimit>, Option<LimitSource>) {
        match (self.run_time.get(name), self.base.get(name)) {
            (Some(limit), _) => (*limit, Some(LimitSource::RunTime)),
            (None, Some((limit, source))) => (*limit, Some(*source)),
            (None, None) => (None, None),
        }
    }

    /// Applies a changed limit; a new or faster rate starts with a full bucket.
    fn refresh(&mut self, name: &str, now_ms: u64) {
        let (limit, source) = self.effective(name);
        let state = self.names.entry(name.to_string()).or_default();
        state.refill(now_ms);
        let old_rate = state.limit.and_then(|l| l.rate);
        state.limit = limit.filter(TaskLimit::limits);
        state.source = source;
        if let Some(rate) = state.limit.and_then(|l| l.rate) {
            state.tokens = match old_rate {
                Some(old) if old.per_second >= rate.per_second => state.tokens.min(rate.burst as f64),
                _ => rate.burst as f64,
            };
        }
        state.refilled_ms = now_ms;
        // Loosened: what is held may go now.
        self.wake_now = true;
        if state.idle() && source.is_none() {
            self.names.remove(name);
        }
    }

    /// Whether runs of `name` are limited now.
    pub(crate) fn is_limited(&self, name: &str) -> bool {
        self.names.get(name).is_some_and(|s| s.limit.is_some())
    }

    /// Whether no task name is limited and nothing is held (the common
    /// case, checked first on the hot path).
    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Takes a start of `task_id` (a run of `name`) if the limit allows it
    /// now: a token, and a running place. False holds it back.
    pub(crate) fn try_start(&mut self, name: &str, task_id: TaskId, now_ms: u64) -> bool {
        let Some(state) = self.names.get_mut(name) else { return true };
        if !state.may_start(now_ms) {
            return false;
        }
        if state.limit.is_some() {
            state.take(task_id);
        }
        true
    }

    /// Counts a run held back (for `/metrics`).
    pub(crate) fn note_held(&mut self, name: &str) {
        if let Some(state) = self.names.get_mut(name) {
            state.held_total += 1;
        }
    }

    /// Holds back a run for this process's own threads, in its priority's line.
    pub(crate) fn hold_local(&mut self, name: &str, priority: Priority, task_id: TaskId) {
        let state = self.names.entry(name.to_string()).or_default();
        state.held_total += 1;
        state.local[priority.index()].push_back(task_id);
    }

    /// Whether runs for this process's threads are held back.
    pub(crate) fn holds_local(&self) -> bool {
        self.names.values().any(|s| s.held_locally() > 0)
    }

    /// The most urgent held-back local run that may start now (its start
    /// is taken); `None` when none may.
    pub(crate) fn next_local(&mut self, now_ms: u64) -> Option<(String, TaskId)> {
        for priority in 0..4 {
            for (name, state) in self.names.iter_mut() {
                if state.local[priority].is_empty() || !state.may_start(now_ms) {
                    continue;
                }
                let task_id = state.local[priority].pop_front().expect("not empty");
                if state.limit.is_some() {
                    state.take(task_id);
                }
                return Some((name.clone(), task_id));
            }
        }
        None
    }

    /// A run of `name` left the running state (it ended, waits for a retry,
    /// or is being sent again), or a held-back one was cancelled.
    pub(crate) fn settle(&mut self, name: &str, task_id: TaskId) {
        let Some(state) = self.names.get_mut(name) else { return };
        if state.running.remove(&task_id) {
            if state.limit.is_some_and(|l| l.max_running.is_some()) {
                self.wake_now = true;
            }
        } else if state.held_locally() > 0 {
            for line in &mut state.local {
                line.retain(|held| *held != task_id);
            }
        }
        if state.idle() && state.source.is_none() {
            self.names.remove(name);
        }
    }

    /// When the control plane should look again at what is held back, if
    /// that is earlier than the alarm already set: it sets its alarm then.
    pub(crate) fn arm(&mut self, now_ms: u64) -> Option<u64> {
        // Buckets as of now: a token due in the past is in the bucket, so
        // the alarm is never set for a time already gone (it would ring
        // again and again).
        for state in self.names.values_mut() {
            state.refill(now_ms);
        }
        let next_token = self.names.values().filter_map(NameState::next_token_ms).min();
        let due = if std::mem::take(&mut self.wake_now) { Some(now_ms) } else { next_token };
        let due = due?;
        if self.armed_ms.is_some_and(|armed| armed <= due) {
            return None;
        }
        self.armed_ms = Some(due);
        Some(due)
    }

    /// The alarm rang: it is no longer set.
    pub(crate) fn rang(&mut self) {
        self.armed_ms = None;
    }

    /// Every limited (or once-limited) name, sorted, with what it holds;
    /// `held_elsewhere` counts the runs waiting in the cluster's lines.
    pub(crate) fn statuses(&self, held_elsewhere: impl Fn(&str) -> usize) -> Vec<TaskLimitStatus> {
        let mut rows: Vec<TaskLimitStatus> = self
            .names
            .iter()
            .filter_map(|(name, state)| {
                let source = state.source?;
                Some(TaskLimitStatus {
                    task_name: name.clone(),
                    limit: state.limit.unwrap_or_default(),
                    source,
                    running: state.running.len() as u32,
                    held: (state.held_locally() + held_elsewhere(name)) as u32,
                    held_total: state.held_total,
                })
            })
            .collect();
        rows.sort_by(|a, b| a.task_name.cmp(&b.task_name));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TaskId {
        TaskId::new_v4()
    }

    fn limit(text: &str) -> TaskLimit {
        TaskLimit::parse(text).unwrap().unwrap()
    }

    #[test]
    fn rates_and_limits_parse_and_are_bounded() {
        assert_eq!(parse_rate("20/s").unwrap(), 20.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert_eq!(parse_rate("36/h").unwrap(), 0.01);
        for bad in ["", "20", "20/d", "/s", "-1/s", "0/s", "NaN/s", "inf/s", "1e400/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(limit("rate:20/s").rate, Some(Rate { per_second: 20.0, burst: 20 }));
        assert_eq!(limit("rate=5/h").rate.unwrap().burst, 1, "at least one");
        assert_eq!(
            limit("rate:20/s,burst:5,max_running:2"),
            TaskLimit { rate: Some(Rate { per_second: 20.0, burst: 5 }), max_running: Some(2) }
        );
        assert_eq!(TaskLimit::parse("none").unwrap(), None);
        assert!(matches!(TaskLimit::parse("rate:1/s,burst:0"), Err(TaskLimitError::BurstOutOfRange(0))));
        assert!(TaskLimit::parse("burst:5").is_err());
        assert!(TaskLimit::parse("max_running:0").is_err());
        assert!(TaskLimit::parse("max_running:99999999999").is_err());
        assert!(TaskLimit::parse("rate:2000000/s").is_err());
        assert!(TaskLimit::parse("rate:1/h,max_running:1,colour:red").is_err());
        assert!(TaskLimit::parse("").is_err());
        let huge = TaskLimit { rate: Some(Rate { per_second: f64::MAX, burst: 1 }), max_running: None };
        assert!(huge.check().is_err());
    }

    #[test]
    fn a_rate_lets_its_burst_through_then_one_per_interval() {
        let mut limits = TaskLimits::new([("a".into(), limit("rate:10/s,burst:3"))], [], 1000);
        let started = (0..5).filter(|_| limits.try_start("a", id(), 1000)).count();
        assert_eq!(started, 3, "the burst");
        // The next token is due 100 ms on.
        assert_eq!(limits.arm(1000), Some(1100));
        assert_eq!(limits.arm(1000), None, "already armed that early");
        assert!(!limits.try_start("a", id(), 1099));
        assert!(limits.try_start("a", id(), 1100));
        assert!(!limits.try_start("a", id(), 1150));
        // A quiet spell refills up to the burst, not beyond.
        assert_eq!((0..10).filter(|_| limits.try_start("a", id(), 100_000)).count(), 3);
        // Unlimited names always start.
        assert!((0..100).all(|_| limits.try_start("b", id(), 0)));
    }

    #[test]
    fn the_alarm_is_never_set_in_the_past_and_stops_once_buckets_refill() {
        let mut limits = TaskLimits::new([("a".into(), limit("rate:10/s,burst:1"))], [], 1000);
        assert!(limits.try_start("a", id(), 1000));
        // Looked at much later (the alarm rang late, nothing held): the
        // bucket is full again, so no alarm at all.
        assert_eq!(limits.arm(5000), None);
        assert!(limits.try_start("a", id(), 5000));
        assert_eq!(limits.arm(5050), Some(5100), "half a token in, half to go");
        limits.rang();
        assert_eq!(limits.arm(5100), None, "a full token now: nothing to wake for");
    }

    #[test]
    fn max_running_counts_until_runs_settle() {
        let mut limits = TaskLimits::new([("a".into(), limit("max_running:2"))], [], 0);
        let (one, two, three) = (id(), id(), id());
        assert!(limits.try_start("a", one, 0) && limits.try_start("a", two, 0));
        assert!(!limits.try_start("a", three, 0));
        limits.settle("a", one);
        assert_eq!(limits.arm(5), Some(5), "a settled run wakes the held ones at once");
        assert!(limits.try_start("a", three, 5));
        limits.settle("a", one);
        assert!(!limits.try_start("a", id(), 6), "settling twice frees nothing");
    }

    #[test]
    fn local_runs_are_held_by_priority_and_leave_when_allowed() {
        let mut limits = TaskLimits::new([("a".into(), limit("max_running:1"))], [], 0);
        let running = id();
        assert!(limits.try_start("a", running, 0));
        let (low, critical, cancelled) = (id(), id(), id());
        limits.hold_local("a", Priority::Low, low);
        limits.hold_local("a", Priority::Normal, cancelled);
        limits.hold_local("a", Priority::Critical, critical);
        assert!(limits.holds_local());
        assert_eq!(limits.next_local(1), None);
        limits.settle("a", cancelled);
        limits.settle("a", running);
        assert_eq!(limits.next_local(2), Some(("a".into(), critical)));
        assert_eq!(limits.next_local(2), None);
        limits.settle("a", critical);
        assert_eq!(limits.next_local(3), Some(("a".into(), low)));
        let status = &limits.statuses(|_| 4)[0];
        assert_eq!((status.running, status.held, status.held_total), (1, 4, 3));
    }

    #[test]
    fn overrides_layer_over_declared_limits_and_clear_back() {
        let flags = [("b".to_string(), None), ("c".to_string(), Some(limit("max_running:3")))];
        let mut limits =
            TaskLimits::new([("a".into(), limit("max_running:1")), ("b".into(), limit("max_running:1"))], flags, 0);
        assert!(limits.is_limited("a") && !limits.is_limited("b") && limits.is_limited("c"));
        limits.set("a", None, 0).unwrap();
        assert!(!limits.is_limited("a"));
        limits.set("d", Some(limit("rate:1/s")), 0).unwrap();
        assert!(limits.is_limited("d"));
        assert!(limits.clear("a", 0));
        assert!(limits.is_limited("a"));
        assert!(limits.clear("d", 0));
        assert!(!limits.is_limited("d"));
        let rows = limits.statuses(|_| 0);
        let sources: Vec<(&str, LimitSource)> = rows.iter().map(|r| (r.task_name.as_str(), r.source)).collect();
        assert_eq!(sources, [("a", LimitSource::Declared), ("b", LimitSource::Flag), ("c", LimitSource::Flag)]);
        assert!(limits.set("", Some(limit("max_running:1")), 0).is_err());
        assert!(limits.set(&"x".repeat(MAX_TASK_NAME_BYTES + 1), None, 0).is_err());
        let bad = TaskLimit { rate: None, max_running: Some(0) };
        assert!(limits.set("e", Some(bad), 0).is_err());
        for n in 0..MAX_OVERRIDES {
            limits.set(&format!("n{n}"), None, 0).unwrap();
        }
        assert_eq!(limits.set("one-more", None, 0), Err(TaskLimitError::TooMany));
    }

    #[test]
    fn a_subworkers_declared_limit_stays_in_its_lane() {
        let flags = [("flagged".to_string(), Some(limit("max_running:5")))];
        let mut limits = TaskLimits::new([], flags, 0).with_own_tasks(["own".to_string()]);
        let tight = limit("rate:1/h,max_running:1");
        // Not on a task the control plane's plugins provide, nor over a flag.
        assert!(!limits.declare_offered("own", tight, 7, 0));
        assert!(!limits.is_limited("own"));
        assert!(!limits.declare_offered("flagged", tight, 7, 0));
        assert_eq!(limits.statuses(|_| 0)[0].limit.max_running, Some(5));
        // On a task only subworkers provide: while the declaring one is there.
        assert!(limits.declare_offered("theirs", tight, 7, 0));
        assert!(!limits.declare_offered("theirs", limit("max_running:2"), 8, 0), "the first one wins");
        // An operator's setting overrides it, and outlives it.
        limits.set("theirs", Some(limit("max_running:3")), 0).unwrap();
        assert_eq!(limits.withdraw_offered(8, 1), Vec::<String>::new());
        assert_eq!(limits.withdraw_offered(7, 1), ["theirs".to_string()]);
        assert_eq!(
            limits.statuses(|_| 0).iter().find(|r| r.task_name == "theirs").unwrap().source,
            LimitSource::RunTime
        );
        assert!(limits.clear("theirs", 2));
        assert!(!limits.is_limited("theirs"), "gone with the subworker that declared it");
        assert!(
            limits.declare_offered("theirs", limit("max_running:2"), 8, 3),
            "another provider may declare it again"
        );
    }

    #[test]
    fn time_arithmetic_holds_at_the_extremes() {
        let fast = TaskLimit { rate: Some(Rate { per_second: MAX_PER_SECOND, burst: MAX_BURST }), max_running: None };
        let slow = TaskLimit { rate: Some(Rate { per_second: MIN_PER_SECOND, burst: 1 }), max_running: None };
        let mut limits = TaskLimits::new([("fast".into(), fast), ("slow".into(), slow)], [], u64::MAX - 10);
        assert!(limits.try_start("slow", id(), u64::MAX - 10));
        assert!(!limits.try_start("slow", id(), u64::MAX));
        assert_eq!(limits.arm(u64::MAX), Some(u64::MAX), "saturates, never overflows");
        assert!(limits.try_start("fast", id(), 0), "time going backwards refills nothing but does not panic");
    }
}
