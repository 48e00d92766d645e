//! The bound flags of `control-plane` and `subworker` (see
//! `fastworker::bounds`): each with its `FASTWORKER_*` variable and a bound
//! of its own, checked before anything starts.

use std::time::Duration;

use clap::Args;
use fastworker::bounds::{range, Bounds, KNOWN_CALLBACK_SCHEMES};

/// Bounds of every serving process: its ports and the tasks it holds.
#[derive(Args)]
pub(crate) struct BoundArgs {
    /// Largest request accepted, in bytes (4096 to 1 GiB).
    #[arg(long, env = "FASTWORKER_MAX_FRAME_BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(range::MAX_FRAME_BYTES))]
    pub(crate) max_frame_bytes: u64,
    /// Requests one connection may have in service on a port; more are answered Busy at once.
    #[arg(long, env = "FASTWORKER_MAX_REQUESTS_PER_CONNECTION", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(range::REQUESTS_PER_CONNECTION))]
    pub(crate) max_requests_per_connection: u64,
    /// Seconds a reply may wait to be sent; the connection of a peer that does not read it is closed.
    #[arg(long, env = "FASTWORKER_REPLY_TIMEOUT", default_value = "5", value_parser = seconds_in(range::REPLY_TIMEOUT_S), allow_negative_numbers = true)]
    pub(crate) reply_timeout: Duration,
    /// Tasks accepted and not ended (queued, scheduled, retrying, running); more are answered Busy.
    #[arg(long, env = "FASTWORKER_MAX_QUEUED_TASKS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(range::QUEUED_TASKS))]
    pub(crate) max_queued_tasks: u64,
    /// Bytes of arguments those tasks may hold together; more are answered Busy.
    #[arg(long, env = "FASTWORKER_MAX_QUEUED_BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(u64).range(range::QUEUED_BYTES))]
    pub(crate) max_queued_bytes: u64,
    /// Percent of --max-queued-tasks and --max-queued-bytes the tasks of one key (one connection without a
    /// key) may hold; beyond it that key is answered Busy while others still get in.
    #[arg(long, env = "FASTWORKER_QUEUE_SHARE", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(range::QUEUE_SHARE))]
    pub(crate) queue_share: u64,
    /// Furthest a countdown or ETA may be, in seconds from now; also the longest pause between retries.
    #[arg(long, env = "FASTWORKER_MAX_COUNTDOWN", default_value = "2592000", value_parser = seconds_in(range::COUNTDOWN_S), allow_negative_numbers = true)]
    pub(crate) max_countdown: Duration,
    /// Most retries a submission may ask for.
    #[arg(long, env = "FASTWORKER_MAX_RETRIES", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(range::RETRIES))]
    pub(crate) max_retries: u64,
    /// Callback notices sent at once.
    #[arg(long, env = "FASTWORKER_CALLBACK_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(range::CALLBACK_CONCURRENCY))]
    pub(crate) callback_concurrency: u64,
    /// Callback notices waiting to be sent; more are dropped and counted.
    #[arg(long, env = "FASTWORKER_CALLBACK_QUEUE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(range::CALLBACK_QUEUE))]
    pub(crate) callback_queue: u64,
    /// Seconds one callback notice may wait for its address.
    #[arg(long, env = "FASTWORKER_CALLBACK_TIMEOUT", default_value = "1", value_parser = seconds_in(range::CALLBACK_TIMEOUT_S), allow_negative_numbers = true)]
    pub(crate) callback_timeout: Duration,
    /// Address schemes a callback may use (tcp, tls+tcp, ipc, ws, wss).
    #[arg(long, env = "FASTWORKER_CALLBACK_SCHEMES", default_value = "tcp", value_delimiter = ',',
          value_parser = clap::builder::PossibleValuesParser::new(KNOWN_CALLBACK_SCHEMES))]
    pub(crate) callback_schemes: Vec<String>,
}

/// Bounds only a control plane has: its cluster, schedules and dashboard.
#[derive(Args)]
pub(crate) struct ClusterBoundArgs {
    /// Bytes of results the result cache may hold; the least recently used go first.
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_BYTES", default_value_t = 256 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(range::CACHED_BYTES))]
    pub(crate) result_cache_bytes: u64,
    /// Requests each task port serves at once: it starts with 256 and grows on demand to this; beyond, requests are answered Busy.
    #[arg(long, env = "FASTWORKER_CONTEXTS_PER_PORT", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(range::CONTEXTS_PER_PORT))]
    pub(crate) contexts_per_port: u64,
    /// Seconds a run on a subworker may take at most, whatever the subworker offered.
    #[arg(long, env = "FASTWORKER_MAX_SUBWORKER_RUN", default_value = "3600", value_parser = seconds_in(range::SUBWORKER_RUN_S), allow_negative_numbers = true)]
    pub(crate) max_subworker_run: Duration,
    /// Subworkers registered at once.
    #[arg(long, env = "FASTWORKER_MAX_SUBWORKERS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(range::SUBWORKERS))]
    pub(crate) max_subworkers: u64,
    /// Slots (concurrency plus prefetch) of all subworkers together.
    #[arg(long, env = "FASTWORKER_MAX_SUBWORKER_SLOTS", default_value_t = 16_384,
          value_parser = clap::value_parser!(u64).range(range::SUBWORKER_SLOTS))]
    pub(crate) max_subworker_slots: u64,
    /// Registrations being dialed back at once; more are answered Busy.
    #[arg(long, env = "FASTWORKER_MAX_PENDING_REGISTRATIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(range::PENDING_REGISTRATIONS))]
    pub(crate) max_pending_registrations: u64,
    /// Tasks one subworker registration may offer.
    #[arg(long, env = "FASTWORKER_MAX_OFFERED_TASKS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(range::OFFERED_TASKS))]
    pub(crate) max_offered_tasks: u64,
    /// Periodic tasks scheduled at once.
    #[arg(long, env = "FASTWORKER_MAX_SCHEDULES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(range::SCHEDULES))]
    pub(crate) max_schedules: u64,
    /// Shortest period of an `every` schedule, in seconds.
    #[arg(long, env = "FASTWORKER_MIN_SCHEDULE_PERIOD", default_value = "1", value_parser = seconds_in(range::SCHEDULE_PERIOD_S), allow_negative_numbers = true)]
    pub(crate) min_schedule_period: Duration,
    /// Dashboard connections open at once; more are closed at once.
    #[arg(long, env = "FASTWORKER_GUI_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(range::GUI_CONNECTIONS))]
    pub(crate) gui_max_connections: u64,
    /// Seconds a dashboard client has to send a request's headers.
    #[arg(long, env = "FASTWORKER_GUI_HEADER_TIMEOUT", default_value = "10", value_parser = seconds_in(range::HEADER_TIMEOUT_S), allow_negative_numbers = true)]
    pub(crate) gui_header_timeout: Duration,
    /// HTTP requests waiting for a task or workflow at once (default: a quarter of --gui-max-connections); more are refused 503 Busy.
    #[arg(long, env = "FASTWORKER_GUI_MAX_WAITS",
          value_parser = clap::value_parser!(u64).range(range::GUI_CONNECTIONS))]
    pub(crate) gui_max_waits: Option<u64>,
}

/// The bounds the flags set; a subworker (no `cluster`) keeps the defaults
/// of what it does not have, and serves `contexts` requests per port.
pub(crate) fn bounds(process: &BoundArgs, cluster: Option<&ClusterBoundArgs>, contexts: usize) -> Bounds {
    let defaults = Bounds::default();
    let mut bounds = Bounds {
        max_frame_bytes: process.max_frame_bytes as usize,
        contexts_per_port: contexts,
        max_requests_per_connection: process.max_requests_per_connection as usize,
        reply_timeout: process.reply_timeout,
        max_queued_tasks: process.max_queued_tasks as usize,
        max_queued_bytes: process.max_queued_bytes,
        queue_share_percent: process.queue_share as u8,
        max_countdown: process.max_countdown,
        max_retries: process.max_retries as u32,
        callback_concurrency: process.callback_concurrency as usize,
        callback_queue: process.callback_queue as usize,
        callback_timeout: process.callback_timeout,
        callback_schemes: process.callback_schemes.clone(),
        ..defaults
    };
    if cluster.is_none() {
        // A subworker's main client is its control plane, on one connection
        // carrying up to every slot it registered.
        bounds.max_requests_per_connection = bounds.max_requests_per_connection.max(contexts);
    }
    if let Some(cluster) = cluster {
        bounds.contexts_per_port = cluster.contexts_per_port as usize;
        bounds.max_cached_bytes = cluster.result_cache_bytes;
        bounds.max_subworker_run = cluster.max_subworker_run;
        bounds.max_subworkers = cluster.max_subworkers as usize;
        bounds.max_subworker_slots = cluster.max_subworker_slots as usize;
        bounds.max_pending_registrations = cluster.max_pending_registrations as usize;
        bounds.max_offered_tasks = cluster.max_offered_tasks as usize;
        bounds.max_schedules = cluster.max_schedules as usize;
        bounds.min_schedule_period = cluster.min_schedule_period;
        bounds.gui_max_connections = cluster.gui_max_connections as usize;
        bounds.gui_header_timeout = cluster.gui_header_timeout;
        let quarter = (bounds.gui_max_connections / 4).max(1);
        bounds.gui_max_waits = cluster.gui_max_waits.map_or(quarter, |n| n as usize);
    }
    bounds
}

/// A clap parser for a number of seconds between `bounds` (inclusive).
pub(crate) fn seconds_in(bounds: (f64, f64)) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text: &str| {
        let (low, high) = bounds;
        let value: f64 = text.trim().parse().map_err(|_| format!("'{text}' is not a number of seconds"))?;
        if !value.is_finite() || value < low || value > high {
            return Err(format!("{text} s is out of range: give {low} to {high} seconds"));
        }
        Duration::try_from_secs_f64(value).map_err(|error| format!("{text} s: {error}"))
    }
}
