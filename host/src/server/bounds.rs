//! Every resource a peer can make a control plane or subworker spend, with
//! its bound: one part of the configuration, so that the operator sees and
//! sets them in one place (`docs/control-plane.md#bounds`) and `/metrics`
//! shows each next to its usage.
//!
//! The bounds of the flags themselves (a limit cannot be set so high that
//! the process would abort) are here too, as [`Range`]s the command line
//! checks.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The bounds of one process.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Largest frame accepted on any port, in bytes.
    pub max_frame_bytes: usize,
    /// Requests each task port serves at once: a control plane's grow to
    /// this on demand and answer `Busy` beyond it (a subworker's are fixed,
    /// and more wait in NNG's queue).
    pub contexts_per_port: usize,
    /// Requests one connection may have in service on one port; more are
    /// answered `Busy` at once, so one client cannot take a port's contexts.
    pub max_requests_per_connection: usize,
    /// How long a reply may wait to be sent; a connection whose reply cannot
    /// leave in that time (its peer does not read) is closed.
    pub reply_timeout: Duration,
    /// Bytes the result cache may hold (results, errors), besides its
    /// count (`--result-cache-size`); the least recently used go first.
    pub max_cached_bytes: u64,
    /// Tasks accepted and not ended (queued, scheduled, retrying, running).
    pub max_queued_tasks: usize,
    /// Bytes of arguments those tasks may hold together.
    pub max_queued_bytes: u64,
    /// The most of `max_queued_tasks` and `max_queued_bytes`, in percent,
    /// that the tasks of one key (one connection without keys) may hold, so
    /// that one tenant cannot make others `Busy`.
    pub queue_share_percent: u8,
    /// Furthest a countdown or ETA may be in the future; also the longest
    /// pause between retries.
    pub max_countdown: Duration,
    /// Most retries a submission may ask for.
    pub max_retries: u32,
    /// Longest a run on a subworker may take: a forwarded run is timed out
    /// by the control plane after its task's timeout or this, whichever is
    /// shorter, whatever the subworker offered.
    pub max_subworker_run: Duration,
    /// Subworkers registered at once.
    pub max_subworkers: usize,
    /// Slots (concurrency plus prefetch) of all subworkers together.
    pub max_subworker_slots: usize,
    /// Registrations the control plane is dialing back at once.
    pub max_pending_registrations: usize,
    /// Tasks one registration may offer.
    pub max_offered_tasks: usize,
    /// Periodic tasks scheduled at once (plugins here and subworkers').
    pub max_schedules: usize,
    /// Shortest period of an `every` schedule.
    pub min_schedule_period: Duration,
    /// Callback notices being sent at once.
    pub callback_concurrency: usize,
    /// Callback notices waiting to be sent; more are dropped and counted.
    pub callback_queue: usize,
    /// How long one notice may wait for its address.
    pub callback_timeout: Duration,
    /// The address schemes callbacks may use (`tcp`, `ipc`, `tls+tcp`, `ws`, `wss`).
    pub callback_schemes: Vec<String>,
    /// Dashboard connections open at once; more are closed at once.
    pub gui_max_connections: usize,
    /// How long a dashboard client has to send a request's headers.
    pub gui_header_timeout: Duration,
    /// HTTP requests waiting for a task or workflow at once (`wait`,
    /// `wait_ms`): their own share of the connections, so that plain
    /// requests always find room.
    pub gui_max_waits: usize,
}

impl Bounds {
    /// One tenant's share of `total` (`--queue-share`), at least 1.
    pub fn share_of(&self, total: u64) -> u64 {
        (u128::from(total) * u128::from(self.queue_share_percent.min(100)) / 100).max(1) as u64
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_frame_bytes: 16 * 1024 * 1024,
            contexts_per_port: 4096,
            max_requests_per_connection: 128,
            reply_timeout: Duration::from_secs(5),
            max_cached_bytes: 256 * 1024 * 1024,
            max_queued_tasks: 100_000,
            max_queued_bytes: 1024 * 1024 * 1024,
            queue_share_percent: 50,
            max_countdown: Duration::from_secs(30 * 24 * 3600),
            max_retries: 100,
            max_subworker_run: Duration::from_secs(3600),
            max_subworkers: 256,
            max_subworker_slots: 16_384,
            max_pending_registrations: 16,
            max_offered_tasks: 1024,
            max_schedules: 1024,
            min_schedule_period: Duration::from_secs(1),
            callback_concurrency: 16,
            callback_queue: 10_000,
            callback_timeout: Duration::from_secs(1),
            callback_schemes: vec!["tcp".into()],
            gui_max_connections: 256,
            gui_header_timeout: Duration::from_secs(10),
            gui_max_waits: 64,
        }
    }
}

/// What the command line accepts for each limit: beyond these a process
/// would abort or exhaust the machine rather than serve.
pub mod range {
    use super::RangeInclusive;

    /// `--max-frame-bytes`: a registration must fit; 1 GiB at most.
    pub const MAX_FRAME_BYTES: RangeInclusive<u64> = 4096..=1 << 30;
    /// `--contexts-per-port`.
    pub const CONTEXTS_PER_PORT: RangeInclusive<u64> = 1..=4096;
    /// `--max-requests-per-connection`.
    pub const REQUESTS_PER_CONNECTION: RangeInclusive<u64> = 1..=4096;
    /// `--concurrency` (threads).
    pub const CONCURRENCY: RangeInclusive<u64> = 0..=2048;
    /// `--queue-share`, in percent.
    pub const QUEUE_SHARE: RangeInclusive<u64> = 1..=100;
    /// `--max-queued-tasks`.
    pub const QUEUED_TASKS: RangeInclusive<u64> = 1..=10_000_000;
    /// `--max-queued-bytes`: 1 MiB to 64 GiB.
    pub const QUEUED_BYTES: RangeInclusive<u64> = 1 << 20..=64 << 30;
    /// `--result-cache-bytes`: 0 to 64 GiB.
    pub const CACHED_BYTES: RangeInclusive<u64> = 0..=64 << 30;
    /// `--max-retries`.
    pub const RETRIES: RangeInclusive<u64> = 0..=10_000;
    /// `--max-subworkers`.
    pub const SUBWORKERS: RangeInclusive<u64> = 0..=10_000;
    /// `--max-subworker-slots`.
    pub const SUBWORKER_SLOTS: RangeInclusive<u64> = 1..=1_000_000;
    /// `--max-pending-registrations`.
    pub const PENDING_REGISTRATIONS: RangeInclusive<u64> = 1..=1024;
    /// `--max-offered-tasks`.
    pub const OFFERED_TASKS: RangeInclusive<u64> = 1..=100_000;
    /// `--max-schedules`.
    pub const SCHEDULES: RangeInclusive<u64> = 0..=100_000;
    /// `--callback-concurrency`.
    pub const CALLBACK_CONCURRENCY: RangeInclusive<u64> = 1..=1024;
    /// `--callback-queue`.
    pub const CALLBACK_QUEUE: RangeInclusive<u64> = 1..=1_000_000;
    /// `--gui-max-connections`.
    pub const GUI_CONNECTIONS: RangeInclusive<u64> = 1..=65_536;
    /// Durations given in seconds, as (shortest, longest).
    pub const REPLY_TIMEOUT_S: (f64, f64) = (0.01, 600.0);
    /// `--max-countdown`: up to ten years.
    pub const COUNTDOWN_S: (f64, f64) = (1.0, 10.0 * 365.0 * 86_400.0);
    /// `--max-subworker-run`: up to a week.
    pub const SUBWORKER_RUN_S: (f64, f64) = (0.01, 7.0 * 86_400.0);
    /// `--min-schedule-period`.
    pub const SCHEDULE_PERIOD_S: (f64, f64) = (0.01, 86_400.0);
    /// `--callback-timeout`.
    pub const CALLBACK_TIMEOUT_S: (f64, f64) = (0.01, 60.0);
    /// `--gui-header-timeout`.
    pub const HEADER_TIMEOUT_S: (f64, f64) = (0.1, 300.0);
}

pub use crate::wire::protocol::MAX_NAME_BYTES;

/// The longest schedule a subworker may offer for one task, in bytes.
pub const MAX_SCHEDULE_BYTES: usize = 1024;

/// The most bytes of doc comments, signatures and JSON Schemas, all tasks
/// together, that one subworker registration may carry.
pub const MAX_OFFERED_TEXT_BYTES: usize = 256 * 1024;

/// The address schemes a callback may name, when allowed by `--callback-schemes`.
pub const KNOWN_CALLBACK_SCHEMES: &[&str] = &["tcp", "tls+tcp", "ipc", "ws", "wss"];

/// Which limit was hit, for the `Busy` answer and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `--max-queued-tasks`.
    QueuedTasks,
    /// `--max-queued-bytes`.
    QueuedBytes,
    /// `--result-cache-bytes` (evicts, never refuses).
    CachedBytes,
    /// `--max-requests-per-connection`.
    RequestsPerConnection,
    /// `--max-subworkers`.
    Subworkers,
    /// `--max-subworker-slots`.
    SubworkerSlots,
    /// `--max-pending-registrations`.
    PendingRegistrations,
    /// `--max-schedules`.
    Schedules,
    /// `--callback-queue`.
    CallbackQueue,
    /// `--gui-max-connections`.
    GuiConnections,
    /// `--gui-max-waits`.
    GuiWaits,
    /// `--queue-share`: one key's (or connection's) share of the queue.
    QueueShare,
    /// `--contexts-per-port`.
    ContextsPerPort,
}

impl Bound {
    /// Every bound, in `/metrics` order.
    pub const ALL: [Bound; 13] = [
        Bound::QueuedTasks,
        Bound::QueuedBytes,
        Bound::CachedBytes,
        Bound::ContextsPerPort,
        Bound::RequestsPerConnection,
        Bound::Subworkers,
        Bound::SubworkerSlots,
        Bound::PendingRegistrations,
        Bound::Schedules,
        Bound::CallbackQueue,
        Bound::GuiConnections,
        Bound::GuiWaits,
        Bound::QueueShare,
    ];

    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Bound::QueuedTasks => "--max-queued-tasks",
            Bound::QueuedBytes => "--max-queued-bytes",
            Bound::CachedBytes => "--result-cache-bytes",
            Bound::RequestsPerConnection => "--max-requests-per-connection",
            Bound::Subworkers => "--max-subworkers",
            Bound::SubworkerSlots => "--max-subworker-slots",
            Bound::PendingRegistrations => "--max-pending-registrations",
            Bound::Schedules => "--max-schedules",
            Bound::CallbackQueue => "--callback-queue",
            Bound::GuiConnections => "--gui-max-connections",
            Bound::GuiWaits => "--gui-max-waits",
            Bound::QueueShare => "--queue-share",
            Bound::ContextsPerPort => "--contexts-per-port",
        }
    }

    /// Its name as a `/metrics` label.
    pub fn label(self) -> &'static str {
        &self.flag()[2..]
    }

    /// Its value in `bounds`.
    pub fn value(self, bounds: &Bounds) -> u64 {
        match self {
            Bound::QueuedTasks => bounds.max_queued_tasks as u64,
            Bound::QueuedBytes => bounds.max_queued_bytes,
            Bound::CachedBytes => bounds.max_cached_bytes,
            Bound::RequestsPerConnection => bounds.max_requests_per_connection as u64,
            Bound::Subworkers => bounds.max_subworkers as u64,
            Bound::SubworkerSlots => bounds.max_subworker_slots as u64,
            Bound::PendingRegistrations => bounds.max_pending_registrations as u64,
            Bound::Schedules => bounds.max_schedules as u64,
            Bound::CallbackQueue => bounds.callback_queue as u64,
            Bound::GuiConnections => bounds.gui_max_connections as u64,
            Bound::GuiWaits => bounds.gui_max_waits as u64,
            Bound::QueueShare => u64::from(bounds.queue_share_percent),
            Bound::ContextsPerPort => bounds.contexts_per_port as u64,
        }
    }
}

/// How often each bound refused something, and what was dropped: the
/// counters `/metrics` shows beside the bounds. Lock-free, so any thread
/// may count.
#[derive(Debug, Default)]
pub struct Refusals {
    by_bound: [AtomicU64; Bound::ALL.len()],
    /// Replies that could not be sent within `--reply-timeout`.
    pub replies_dropped: AtomicU64,
    /// Log lines about refused frames that were not written (rate limit).
    pub log_lines_suppressed: AtomicU64,
    /// Callback notices dropped (queue full, address refused or unreachable).
    pub callbacks_dropped: AtomicU64,
    /// Results from subworkers that were not valid JSON.
    pub bad_results: AtomicU64,
    /// Frames refused for want of a valid seal (`--cluster-key-file`).
    pub unauthenticated: AtomicU64,
}

impl Refusals {
    /// Counts one refusal by `bound`.
    pub fn count(&self, bound: Bound) {
        self.by_bound[bound as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals by `bound` so far.
    pub fn of(&self, bound: Bound) -> u64 {
        self.by_bound[bound as usize].load(Ordering::Relaxed)
    }
}

/// Adds a duration in milliseconds to a time in milliseconds without
/// wrapping: a sum past the representable range is `None`.
pub fn add_ms(at_ms: u64, plus_ms: u64) -> Option<u64> {
    at_ms.checked_add(plus_ms)
}

/// A duration as whole milliseconds, saturating instead of wrapping.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_has_a_distinct_flag_and_label() {
        let bounds = Bounds::default();
        let mut flags: Vec<&str> = Bound::ALL.iter().map(|b| b.flag()).collect();
        flags.sort_unstable();
        flags.dedup();
        assert_eq!(flags.len(), Bound::ALL.len());
        for bound in Bound::ALL {
            assert!(bound.value(&bounds) > 0, "{} has a usable default", bound.flag());
            assert!(!bound.label().starts_with('-'));
        }
    }

    #[test]
    fn time_arithmetic_never_wraps() {
        assert_eq!(add_ms(u64::MAX - 1, 2), None);
        assert_eq!(add_ms(5, 7), Some(12));
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
