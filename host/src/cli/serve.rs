//! Serving: `fastworker control-plane` and `fastworker subworker`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use fastworker::address::{MANAGEMENT_PORT_OFFSET, RESULT_PORT_OFFSET};
use fastworker::bounds::{range, MAX_NAME_BYTES};
use fastworker::config::{ControlPlaneConfig, ManagementConfig};
use fastworker::control_plane::ControlPlane;
use fastworker::dashboard::DashboardConfig;
use fastworker::discovery::{self, DEFAULT_DISCOVERY_ADDRESS};
use fastworker::plugins::Registry;
use fastworker::schedules;
use fastworker::subworker_process::{Subworker, SubworkerConfig};
use fastworker::{BaseAddress, WorkerProcessesConfig, DEFAULT_BASE_ADDRESS};
use tracing::{info, warn};

use crate::cli::bounds::{bounds, BoundArgs, ClusterBoundArgs};
use crate::cli::help::heading;
use crate::cli::keys::{protected, CredentialArgs};
use crate::cli::task_limits::{check_task_limit_flags, parse_task_limit_flag, TaskLimitFlag};
use crate::{fail, seconds, EXIT_USAGE};
use fastworker::EXIT_ADDRESS_IN_USE;

/// Runs a subworker may be sent beyond its concurrency by default: enough
/// to cover the round trip to the control plane for tasks of a fraction of
/// a millisecond (see docs/subworkers.md, *Prefetch*).
const DEFAULT_PREFETCH: u32 = 16;

/// Runs a worker process may be sent beyond the one it runs by default:
/// 4, so that it does not idle for the local round trip between short
/// tasks (measured better than none on both the pipelined rate and a lone
/// call's latency, docs/speed.md); an idle process asks back runs held
/// behind a long one, and 0 keeps strict priority across processes
/// (docs/isolation.md).
const DEFAULT_PROCESS_PREFETCH: u32 = 4;

/// How long a subworker without --control-plane-address waits for an announcement.
pub(crate) const SUBWORKER_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub(crate) struct ControlPlaneArgs {
    /// Identifier of this control plane in reports and logs.
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_WORKER_ID", default_value = "control-plane", value_parser = worker_id)]
    pub(crate) worker_id: String,
    /// Base address: CRITICAL tasks on its port, HIGH +1, NORMAL +2, LOW +3, results +4.
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_BASE_ADDRESS", default_value = DEFAULT_BASE_ADDRESS)]
    pub(crate) base_address: String,
    /// Address to announce this control plane on, for subworkers and clients started without an address.
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_DISCOVERY_ADDRESS", default_value = DEFAULT_DISCOVERY_ADDRESS)]
    pub(crate) discovery_address: String,
    /// Announce nothing on the discovery address.
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_NO_DISCOVERY")]
    pub(crate) no_discovery: bool,
    /// Port for subworker management (default: base port + 5).
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_SUBWORKER_PORT")]
    pub(crate) subworker_port: Option<u16>,
    /// Seconds without a heartbeat after which a subworker gets no tasks.
    #[arg(help_heading = heading::SUBWORKERS, long, env = "FASTWORKER_INACTIVE_AFTER", default_value_t = 30.0)]
    pub(crate) inactive_after: f64,
    /// Seconds after start during which a task nobody provides yet is refused as transient (NotYetProvided), while subworkers register again; 0: none.
    #[arg(help_heading = heading::SUBWORKERS, long, env = "FASTWORKER_RESTART_WINDOW", default_value_t = 10.0)]
    pub(crate) restart_window: f64,
    /// Seconds a task whose every provider is gone (restarting, drained, not back yet after a restart) waits queued for one to come back before it fails; 0: fail at once.
    #[arg(help_heading = heading::SUBWORKERS, long, env = "FASTWORKER_PROVIDER_GRACE", default_value_t = 30.0)]
    pub(crate) provider_grace: f64,
    /// Most results kept in the cache; 0 keeps none.
    #[arg(help_heading = heading::RESULTS, long, env = "FASTWORKER_RESULT_CACHE_SIZE", default_value_t = 10_000)]
    pub(crate) result_cache_size: usize,
    /// Seconds a result is kept; 0 keeps results until evicted.
    #[arg(help_heading = heading::RESULTS, long, env = "FASTWORKER_RESULT_CACHE_TTL", default_value_t = 3600)]
    pub(crate) result_cache_ttl: u64,
    /// Plugins whose tasks to serve: paths, or names (mytasks: libmytasks.so in FASTWORKER_PLUGIN_PATH, beside the binary, here or in target/release).
    #[arg(help_heading = heading::PLUGINS, long, env = "FASTWORKER_TASK_MODULES", num_args = 1.., value_delimiter = ',')]
    pub(crate) task_modules: Vec<PathBuf>,
    /// Host the dashboard (web page, /api/, /metrics) binds; nothing else is bound.
    #[arg(help_heading = heading::DASHBOARD, long, env = "FASTWORKER_GUI_HOST", default_value = "127.0.0.1")]
    pub(crate) gui_host: String,
    /// Port of the dashboard.
    #[arg(help_heading = heading::DASHBOARD, long, env = "FASTWORKER_GUI_PORT", default_value_t = 8080)]
    pub(crate) gui_port: u16,
    /// Serve no dashboard.
    #[arg(help_heading = heading::DASHBOARD, long, env = "FASTWORKER_NO_GUI")]
    pub(crate) no_gui: bool,
    /// The dashboard's operator credential (Authorization: Bearer KEY): its actions and reads of task arguments and results need it; without it they are open, or refused on a keyed cluster (whose dashboard beyond loopback needs it).
    #[arg(help_heading = heading::DASHBOARD, long, env = "FASTWORKER_GUI_API_KEY", hide_env_values = true)]
    pub(crate) gui_api_key: Option<String>,
    /// Host names (HOST:PORT, comma-separated, at most 64) the dashboard answers to besides its bound address.
    #[arg(help_heading = heading::DASHBOARD, long, env = "FASTWORKER_GUI_ALLOWED_HOSTS", value_delimiter = ',')]
    pub(crate) gui_allowed_hosts: Vec<String>,
    /// Worker threads running tasks (default: the number of cores, at most 2048); 0 runs no task here.
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_CONCURRENCY", value_parser = clap::value_parser!(u64).range(range::CONCURRENCY))]
    pub(crate) concurrency: Option<u64>,
    /// Seconds a shutdown waits for queued and running tasks.
    #[arg(help_heading = heading::DURABILITY, long, env = "FASTWORKER_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub(crate) shutdown_timeout: f64,
    /// Durable mode: keep accepted tasks, their progress and results in this directory, and take
    /// them up again after a restart (see docs/durability.md); without it nothing survives a restart.
    #[arg(help_heading = heading::DURABILITY, long, env = "FASTWORKER_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// A cluster-wide limit of one task, over its declared one (repeatable): TASK=rate:20/s,burst:5,max_running:2, or TASK=none to lift it (docs/limits.md).
    #[arg(help_heading = heading::TASK_LIMITS, long = "task-limit", value_name = "TASK=LIMIT", value_parser = parse_task_limit_flag)]
    pub(crate) task_limit: Vec<TaskLimitFlag>,
    #[command(flatten, next_help_heading = heading::BOUNDS)]
    pub(crate) bounds: BoundArgs,
    #[command(flatten, next_help_heading = heading::CLUSTER_BOUNDS)]
    pub(crate) cluster_bounds: ClusterBoundArgs,
    #[command(flatten, next_help_heading = heading::TRUST)]
    pub(crate) credentials: CredentialArgs,
    /// Serve beyond loopback without a key (protected mode is off): only on a network you trust.
    #[arg(help_heading = heading::TRUST, long, env = "FASTWORKER_INSECURE")]
    pub(crate) insecure: bool,
    #[command(flatten)]
    pub(crate) isolation: IsolationArgs,
}

/// Where tasks run: in supervised worker processes (the default) or on this
/// process's threads; shared by the control plane and the subworker.
#[derive(Args)]
pub(crate) struct IsolationArgs {
    /// Run tasks on this process's own threads, not in supervised worker processes: a task that
    /// aborts, segfaults or exits takes this process down with it (docs/isolation.md).
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_IN_PROCESS")]
    pub(crate) in_process: bool,
    /// Worker processes running the tasks (default: --concurrency divided by --runs-per-process).
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_WORKER_PROCESSES", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) worker_processes: Option<u32>,
    /// Runs each worker process holds at once; 1 makes every crash attributable to the run that caused it.
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_RUNS_PER_PROCESS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2048))]
    pub(crate) runs_per_process: u32,
    /// Runs the control plane may send each worker process ahead of the one it runs, queued there so that
    /// it does not idle for a round trip between short tasks; a crash is still charged only to the run it
    /// interrupted. Runs sent ahead read queued until they start; 0 keeps strict priority across processes.
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_PREFETCH_PER_PROCESS", default_value_t = DEFAULT_PROCESS_PREFETCH, value_parser = clap::value_parser!(u32).range(0..=2048))]
    pub(crate) prefetch_per_process: u32,
    /// Times a task's runs may kill their worker process before it fails as Crashed instead of being sent again.
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_MAX_TASK_CRASHES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) max_task_crashes: u32,
    /// Runs after which a worker process is replaced by a fresh one (it finishes what it holds first; default: never).
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_MAX_TASKS_PER_CHILD", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_tasks_per_child: Option<u64>,
    /// Resident memory in MiB past which a worker process is replaced by a fresh one (read every 100 ms; default: never).
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_MAX_MEMORY_PER_CHILD", value_name = "MB", value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub(crate) max_memory_per_child: Option<u64>,
}

impl IsolationArgs {
    /// The worker processes for `concurrency` runs of `task_modules`, or
    /// `None` to run them on this process's threads (`--in-process`).
    fn worker_processes(
        &self,
        concurrency: usize,
        task_modules: &[PathBuf],
        max_frame_bytes: u64,
        credentials: &CredentialArgs,
        shutdown_timeout: Duration,
    ) -> Option<WorkerProcessesConfig> {
        if self.in_process || concurrency == 0 || task_modules.is_empty() {
            return None;
        }
        let runs_per_process = self.runs_per_process;
        let count = self.worker_processes.unwrap_or_else(|| (concurrency as u32).div_ceil(runs_per_process).min(256));
        // Runs and results up to this process's frame bound reach them.
        let mut extra_args = vec!["--max-frame-bytes".to_string(), max_frame_bytes.to_string()];
        if let Some(path) = &credentials.keys.cluster_key_file {
            extra_args.extend(["--cluster-key-file".to_string(), path.display().to_string()]);
        }
        let tls = &credentials.tls;
        for (flag, path) in [("--tls-cert", &tls.tls_cert), ("--tls-key", &tls.tls_key), ("--tls-ca", &tls.tls_ca)] {
            if let Some(path) = path {
                extra_args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        Some(WorkerProcessesConfig {
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fastworker")),
            count,
            runs_per_process,
            prefetch: self.prefetch_per_process,
            task_modules: task_modules.to_vec(),
            max_task_crashes: self.max_task_crashes,
            extra_args,
            shutdown_timeout,
            max_tasks_per_child: self.max_tasks_per_child,
            max_memory_per_child: self.max_memory_per_child.map(|mb| mb << 20),
        })
    }
}

#[derive(Args)]
pub(crate) struct SubworkerArgs {
    /// Unique identifier of this subworker.
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_WORKER_ID", value_parser = worker_id)]
    pub(crate) worker_id: String,
    /// Base address of the control plane to join (default: the one announced on --discovery-address).
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_CONTROL_PLANE_ADDRESS")]
    pub(crate) control_plane_address: Option<String>,
    /// Base address of this subworker: CRITICAL tasks on its port, HIGH +1, NORMAL +2, LOW +3.
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_BASE_ADDRESS", default_value = DEFAULT_BASE_ADDRESS)]
    pub(crate) base_address: String,
    /// The base address the control plane should dial, when --base-address is not it (0.0.0.0, NAT).
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_ADVERTISE_ADDRESS")]
    pub(crate) advertise_address: Option<String>,
    /// Where to find the control plane when --control-plane-address is not given.
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_DISCOVERY_ADDRESS", default_value = DEFAULT_DISCOVERY_ADDRESS)]
    pub(crate) discovery_address: String,
    /// Plugins whose tasks to run: paths, or names (mytasks: libmytasks.so in FASTWORKER_PLUGIN_PATH, beside the binary, here or in target/release).
    #[arg(help_heading = heading::PLUGINS, long, env = "FASTWORKER_TASK_MODULES", num_args = 1.., value_delimiter = ',', required = true)]
    pub(crate) task_modules: Vec<PathBuf>,
    /// Worker threads running tasks (default: the number of cores).
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=2048))]
    pub(crate) concurrency: Option<u32>,
    /// Tasks the control plane may send ahead beyond --concurrency, queued here (most urgent first) so
    /// that no thread idles for a network round trip between short tasks; 0 for long tasks of uneven
    /// length, so that none waits here while another subworker is idle.
    #[arg(help_heading = heading::RUNNING, long, env = "FASTWORKER_PREFETCH", default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u32).range(0..=2048))]
    pub(crate) prefetch: u32,
    /// Seconds between heartbeats to the control plane.
    #[arg(help_heading = heading::ADDRESSES, long, env = "FASTWORKER_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    pub(crate) heartbeat_interval: f64,
    /// Internal, set by a control plane for its worker processes: the pipe on which each run's start
    /// and end is recorded, so that a crash is charged to the runs it interrupted (docs/isolation.md).
    #[arg(long, hide = true)]
    pub(crate) run_log_fd: Option<i32>,
    /// Internal, set by a control plane for its worker processes: its end of the socket pair that
    /// carries their link (docs/isolation.md).
    #[arg(long, hide = true)]
    pub(crate) link_fd: Option<i32>,
    /// Internal, set by a control plane for its worker processes: the runs it starts before it stops
    /// to be replaced (its --max-tasks-per-child, docs/isolation.md).
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) stop_after_runs: Option<u64>,
    /// Seconds a shutdown waits for queued and running tasks.
    #[arg(help_heading = heading::DURABILITY, long, env = "FASTWORKER_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    pub(crate) shutdown_timeout: f64,
    #[command(flatten, next_help_heading = heading::BOUNDS)]
    pub(crate) bounds: BoundArgs,
    #[command(flatten, next_help_heading = heading::TRUST)]
    pub(crate) credentials: CredentialArgs,
    /// Serve beyond loopback without a key (protected mode is off): only on a network you trust.
    #[arg(help_heading = heading::TRUST, long, env = "FASTWORKER_INSECURE")]
    pub(crate) insecure: bool,
    #[command(flatten)]
    pub(crate) isolation: IsolationArgs,
}

pub(crate) fn run_control_plane(args: ControlPlaneArgs) -> ExitCode {
    let base = match BaseAddress::parse(&args.base_address) {
        Ok(base) => base,
        Err(error) => return fail(EXIT_USAGE, format_args!("--base-address: {error}")),
    };
    let Some(shutdown_timeout) = seconds(args.shutdown_timeout, true) else {
        return fail(EXIT_USAGE, "--shutdown-timeout must be a number of seconds, 0 or more");
    };
    let Some(inactive_after) = seconds(args.inactive_after, false) else {
        return fail(EXIT_USAGE, "--inactive-after must be a positive number of seconds");
    };
    let Some(restart_window) = seconds(args.restart_window, true).filter(|w| w.as_secs() <= 3600) else {
        return fail(EXIT_USAGE, "--restart-window must be a number of seconds from 0 to 3600");
    };
    let Some(provider_grace) = seconds(args.provider_grace, true).filter(|g| g.as_secs() <= 3600) else {
        return fail(EXIT_USAGE, "--provider-grace must be a number of seconds from 0 to 3600");
    };
    if let Err(error) = fastworker::dashboard::check_allowed_hosts(&args.gui_allowed_hosts) {
        return fail(EXIT_USAGE, format_args!("--gui-allowed-hosts: {error}"));
    }
    let keys = match args.credentials.keys.load() {
        Ok(keys) => keys,
        Err(code) => return code,
    };
    if let Some(ring) = keys.as_ref().filter(|ring| !ring.is_cluster()) {
        return fail(
            EXIT_USAGE,
            format_args!(
                "--cluster-key-file {}: a control plane needs the cluster key itself, not a role key derived from it",
                ring.path.display()
            ),
        );
    }
    if let Err(error) = check_task_limit_flags(&args.task_limit) {
        return fail(EXIT_USAGE, error);
    }
    let (connections, waits) = (args.cluster_bounds.gui_max_connections, args.cluster_bounds.gui_max_waits);
    if let Some(waits) = waits.filter(|waits| waits + (connections / 2).max(1) >= connections) {
        return fail(
            EXIT_USAGE,
            format_args!(
                "--gui-max-waits {waits} with --gui-max-connections {connections} leaves no connection for plain requests (half of the connections may be event streams): lower --gui-max-waits below {} or raise --gui-max-connections",
                connections - (connections / 2).max(1)
            ),
        );
    }
    let gui_host = (!args.no_gui).then_some(args.gui_host.as_str());
    for (host, what) in [(Some(base.host()), "the control plane"), (gui_host, "the dashboard")] {
        if let Err(code) = protected(host.unwrap_or("127.0.0.1"), what, keys.is_some(), args.insecure) {
            return code;
        }
    }
    let management_port = args.subworker_port.unwrap_or(base.port() + MANAGEMENT_PORT_OFFSET);
    if (base.port()..=base.port() + RESULT_PORT_OFFSET).contains(&management_port) {
        return fail(
            EXIT_USAGE,
            format_args!("--subworker-port {management_port} is one of the task or result ports (base to base+4); choose another"),
        );
    }
    if let (false, Err(error)) = (args.no_discovery, discovery::check_address(&args.discovery_address)) {
        return fail(EXIT_USAGE, format_args!("--discovery-address: {error}"));
    }
    let discovery_address = if args.no_discovery { "" } else { args.discovery_address.as_str() };
    let base_text = base.to_string();
    if let Err(code) =
        args.credentials.tls.install(&[("--base-address", &base_text), ("--discovery-address", discovery_address)])
    {
        return code;
    }
    let registry = match load_plugins(&args.task_modules) {
        Ok(registry) => registry,
        Err(code) => return code,
    };
    if registry.is_empty() {
        warn!("no tasks loaded: pass plugins with --task-modules");
    }
    let cluster_bounds = &args.cluster_bounds;
    let (max_schedules, min_period) = (cluster_bounds.max_schedules as usize, cluster_bounds.min_schedule_period);
    if let Err(error) = schedules::check_limits(registry.schedules(), max_schedules, min_period) {
        return fail(EXIT_USAGE, format_args!("{error}; raise the limit or change the plugin's schedule"));
    }
    let concurrency = args.concurrency.map_or_else(cores, |n| n as usize);
    // Unless --in-process, the tasks run in worker processes, none here.
    let max_frame_bytes = args.bounds.max_frame_bytes;
    let worker_processes = args.isolation.worker_processes(
        concurrency,
        &args.task_modules,
        max_frame_bytes,
        &args.credentials,
        shutdown_timeout,
    );
    let isolated = worker_processes.is_some() && !registry.is_empty();
    let worker_processes = worker_processes.filter(|_| isolated);
    let config = ControlPlaneConfig {
        worker_id: args.worker_id,
        subworker: false,
        base,
        concurrency: if isolated { 0 } else { concurrency },
        result_cache_size: args.result_cache_size,
        result_cache_ttl: (args.result_cache_ttl > 0).then(|| Duration::from_secs(args.result_cache_ttl)),
        shutdown_timeout,
        bounds: bounds(&args.bounds, Some(&args.cluster_bounds), 0),
        keys,
        management: Some(ManagementConfig {
            port: management_port,
            inactive_after,
            restart_window,
            provider_grace,
            task_limits: args.task_limit,
            max_task_crashes: args.isolation.max_task_crashes,
            local_base: None,
        }),
        discovery: (!args.no_discovery).then_some(args.discovery_address),
        state_dir: args.state_dir,
    };
    let mut control_plane = match ControlPlane::start(config, registry) {
        Ok(control_plane) => control_plane,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    if let Some(workers) = worker_processes {
        info!(
            "tasks run in {} worker processes of {} run(s) each (docs/isolation.md)",
            workers.count, workers.runs_per_process
        );
        control_plane.start_worker_processes(workers);
    }
    if !args.no_gui {
        let dashboard = DashboardConfig {
            host: args.gui_host,
            port: args.gui_port,
            api_key: args.gui_api_key,
            allowed_hosts: args.gui_allowed_hosts,
        };
        if let Err(error) = control_plane.serve_dashboard(dashboard) {
            return fail(EXIT_USAGE, error);
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
    runtime.block_on(async {
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        sweep.tick().await;
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                signal = &mut stop => { info!(signal, "stop requested"); break; }
                _ = sweep.tick() => {
                    let dropped = control_plane.sweep_expired();
                    if dropped > 0 { info!(dropped, "expired results swept"); }
                }
            }
        }
    });
    control_plane.shutdown();
    ExitCode::SUCCESS
}

pub(crate) fn run_subworker(args: SubworkerArgs) -> ExitCode {
    let base = match BaseAddress::parse(&args.base_address) {
        Ok(base) => base,
        Err(error) => return fail(EXIT_USAGE, format_args!("--base-address: {error}")),
    };
    match &args.control_plane_address {
        Some(address) => {
            if let Err(error) = BaseAddress::parse(address) {
                return fail(EXIT_USAGE, format_args!("--control-plane-address: {error}"));
            }
        }
        None => {
            if let Err(error) = discovery::check_address(&args.discovery_address) {
                return fail(EXIT_USAGE, format_args!("--discovery-address: {error}"));
            }
        }
    }
    let keys = match args.credentials.keys.load() {
        Ok(keys) => keys,
        Err(code) => return code,
    };
    // A subworker checks that its links come from the control plane with
    // the control key for its own id (see docs/security.md).
    let keys = match keys.map(|ring| ring.for_subworker(&args.worker_id)).transpose() {
        Ok(keys) => keys.map(std::sync::Arc::new),
        Err(error) => return fail(EXIT_USAGE, format_args!("--cluster-key-file: {error}")),
    };
    if let Err(code) = protected(base.host(), "the subworker", keys.is_some(), args.insecure) {
        return code;
    }
    let base_text = base.to_string();
    let joined = args.control_plane_address.as_deref().unwrap_or(&args.discovery_address);
    let advertised = args.advertise_address.as_deref().unwrap_or_default();
    let addresses = [
        ("--base-address", base_text.as_str()),
        ("--control-plane-address or --discovery-address", joined),
        ("--advertise-address", advertised),
    ];
    if let Err(code) = args.credentials.tls.install(&addresses) {
        return code;
    }
    let advertise = match &args.advertise_address {
        Some(address) => match BaseAddress::parse(address) {
            Ok(_) => address.clone(),
            Err(error) => return fail(EXIT_USAGE, format_args!("--advertise-address: {error}")),
        },
        None if matches!(base.host(), "0.0.0.0" | "[::]" | "*") => {
            return fail(
                EXIT_USAGE,
                format_args!(
                    "--base-address {base} listens on every interface, which the control plane cannot dial: add --advertise-address tcp://<this host's address>:{}",
                    base.port()
                ),
            )
        }
        None => base.to_string(),
    };
    let (Some(shutdown_timeout), Some(heartbeat_interval)) =
        (seconds(args.shutdown_timeout, true), seconds(args.heartbeat_interval, false))
    else {
        return fail(EXIT_USAGE, "--shutdown-timeout and --heartbeat-interval must be numbers of seconds");
    };
    let registry = match load_plugins(&args.task_modules) {
        Ok(registry) => registry,
        Err(code) => return code,
    };
    if registry.is_empty() {
        return fail(
            EXIT_USAGE,
            "the plugins given with --task-modules declare no task: a subworker needs at least one",
        );
    }
    let concurrency = args.concurrency.unwrap_or_else(|| cores() as u32);
    let control_plane = match &args.control_plane_address {
        Some(address) => address.clone(),
        None => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
            let found = discovery::find_sealed(&args.discovery_address, SUBWORKER_DISCOVERY_TIMEOUT, keys.clone());
            match runtime.block_on(found) {
                Ok(found) => {
                    info!(
                        discovery = %args.discovery_address,
                        control_plane = %found.base_address,
                        control_plane_id = %found.worker_id,
                        "found the control plane"
                    );
                    found.base_address
                }
                Err(error) => return fail(EXIT_USAGE, error),
            }
        }
    };
    // Unless --in-process, the tasks run in worker processes of this
    // subworker, none in it: a crash costs one of them, not the subworker.
    let max_frame_bytes = args.bounds.max_frame_bytes;
    let shared = args.isolation.worker_processes(
        concurrency as usize,
        &args.task_modules,
        max_frame_bytes,
        &args.credentials,
        shutdown_timeout,
    );
    let sealed = args.credentials.keys.cluster_key_file.is_some() || args.credentials.tls.tls_cert.is_some();
    let worker_processes = match shared {
        Some(_) if sealed => {
            warn!("with --cluster-key-file or TLS, a subworker runs its tasks on its own threads for now: a task that crashes takes the subworker down (docs/isolation.md)");
            None
        }
        shared => shared,
    };
    if let Some(workers) = &worker_processes {
        info!(
            "tasks run in {} worker processes of {} run(s) each (docs/isolation.md)",
            workers.count, workers.runs_per_process
        );
    }
    let config = SubworkerConfig {
        worker_processes,
        worker_id: args.worker_id,
        base,
        control_plane,
        advertise,
        concurrency,
        prefetch: args.prefetch,
        heartbeat_interval,
        shutdown_timeout,
        // Its ports hold what the control plane may send it at once.
        bounds: bounds(&args.bounds, None, (concurrency + args.prefetch).max(64) as usize),
        keys,
    };
    let subworker = match Subworker::start(config, registry) {
        Ok(subworker) => subworker,
        Err(error) if error.is_address_in_use() => return fail(EXIT_ADDRESS_IN_USE, error),
        Err(error) => return fail(EXIT_USAGE, error),
    };
    if let Some(fd) = args.run_log_fd {
        if let Err(error) = subworker.log_runs_to(fd) {
            return fail(
                EXIT_USAGE,
                format_args!(
                    "--run-log-fd {fd}: {error}; it is set by a control plane for its worker processes, not by hand"
                ),
            );
        }
    }
    if let Some(fd) = args.link_fd {
        if let Err(error) = subworker.serve_link(fd) {
            return fail(
                EXIT_USAGE,
                format_args!(
                    "--link-fd {fd}: {error}; it is set by a control plane for its worker processes, not by hand"
                ),
            );
        }
    }
    if let Some(max) = args.stop_after_runs {
        subworker.stop_after_runs(max);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
    let stop = async { info!(signal = shutdown_signal().await, "stop requested") };
    match runtime.block_on(subworker.run(stop)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(EXIT_USAGE, error),
    }
}

/// Loads `--task-modules` and logs each plugin, or says why not (exit 2).
fn load_plugins(paths: &[PathBuf]) -> Result<Registry, ExitCode> {
    let registry = Registry::load(paths).map_err(|error| fail(EXIT_USAGE, error))?;
    for plugin in registry.plugins() {
        info!(plugin = %plugin.name, version = %plugin.version, path = %plugin.path.display(), "plugin loaded");
    }
    Ok(registry)
}

/// A `--worker-id`: 1 to `MAX_NAME_BYTES` bytes, no whitespace or control
/// characters, so that it reads as one word in reports, logs and `/metrics`.
pub(crate) fn worker_id(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a worker id cannot be empty".to_string());
    }
    if text.len() > MAX_NAME_BYTES {
        return Err(format!("a worker id is at most {MAX_NAME_BYTES} bytes; this one is {}", text.len()));
    }
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("a worker id cannot contain whitespace or control characters (found {c:?})"));
    }
    Ok(text.to_string())
}

/// The default `--concurrency`: one thread per core.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Resolves when SIGINT or SIGTERM arrives, naming it.
pub(crate) async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
