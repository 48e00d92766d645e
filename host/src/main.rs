//! The `fastworker` command: control plane and client commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use fastworker::address::{MANAGEMENT_PORT_OFFSET, RESULT_PORT_OFFSET};
use fastworker::client::{Client, ClientError, SubmitOptions};
use fastworker::control_plane::{ControlPlane, ControlPlaneConfig, ManagementConfig};
use fastworker::dashboard::DashboardConfig;
use fastworker::discovery::{self, DEFAULT_DISCOVERY_ADDRESS};
use fastworker::plugins::Registry;
use fastworker::protocol::{
    describe_failure, Callback, ErrorKind, FailureKind, OfferedTask, Reply, RetryPolicy, TaskReport, TaskState,
    DEFAULT_MAX_FRAME_BYTES,
};
use fastworker::schedules::format_ms;
use fastworker::subworker::{Membership, MembershipConfig};
use fastworker::{BaseAddress, Priority, TaskId, DEFAULT_BASE_ADDRESS};
use serde_json::{json, Value};
use tracing::{info, warn};

/// Exit status of a task that failed or a request the control plane refused.
const EXIT_FAILED: u8 = 1;
/// Exit status of a bad command line or configuration (clap uses it too).
const EXIT_USAGE: u8 = 2;
/// Exit status when no control plane answered in time.
const EXIT_UNREACHABLE: u8 = 3;
/// How long a subworker without --control-plane-address waits for an announcement.
const SUBWORKER_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a client command without --address waits for an announcement.
const CLIENT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "fastworker",
    version,
    about = "A brokerless task runtime: control plane, subworkers and client in one binary."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load task plugins and serve tasks on the priority ports.
    ControlPlane(ControlPlaneArgs),
    /// List the tasks of plugins without starting anything.
    List(ListArgs),
    /// Submit a task and print its result (or, with --non-blocking, its id).
    Submit(SubmitArgs),
    /// Print the state, result or error of a task.
    Status(StatusArgs),
    /// Cancel a task: one not yet started never runs; a running one is asked to stop.
    Cancel(CancelArgs),
    /// Join a control plane and run the tasks of its own plugins for it.
    Subworker(SubworkerArgs),
    /// Print the control plane's subworkers and their health as JSON.
    Workers(ClientArgs),
    /// Print the periodic tasks of a running control plane (last run, outcome, next run, skips) as JSON.
    Schedules(SchedulesArgs),
}

#[derive(Args)]
struct ControlPlaneArgs {
    /// Identifier of this control plane in reports and logs.
    #[arg(long, env = "FASTWORKER_WORKER_ID", default_value = "control-plane")]
    worker_id: String,
    /// Base address: CRITICAL tasks on its port, HIGH +1, NORMAL +2, LOW +3, results +4.
    #[arg(long, env = "FASTWORKER_BASE_ADDRESS", default_value = DEFAULT_BASE_ADDRESS)]
    base_address: String,
    /// Address to announce this control plane on, for subworkers and clients started without an address.
    #[arg(long, env = "FASTWORKER_DISCOVERY_ADDRESS", default_value = DEFAULT_DISCOVERY_ADDRESS)]
    discovery_address: String,
    /// Announce nothing on the discovery address.
    #[arg(long, env = "FASTWORKER_NO_DISCOVERY")]
    no_discovery: bool,
    /// Port for subworker management (default: base port + 5).
    #[arg(long, env = "FASTWORKER_SUBWORKER_PORT")]
    subworker_port: Option<u16>,
    /// Seconds without a heartbeat after which a subworker gets no tasks.
    #[arg(long, env = "FASTWORKER_INACTIVE_AFTER", default_value_t = 30.0)]
    inactive_after: f64,
    /// Most results kept in the cache; 0 keeps none.
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_SIZE", default_value_t = 10_000)]
    result_cache_size: usize,
    /// Seconds a result is kept; 0 keeps results until evicted.
    #[arg(long, env = "FASTWORKER_RESULT_CACHE_TTL", default_value_t = 3600)]
    result_cache_ttl: u64,
    /// Plugin libraries (.so/.dylib/.dll) whose tasks to serve.
    #[arg(long, env = "FASTWORKER_TASK_MODULES", num_args = 1.., value_delimiter = ',')]
    task_modules: Vec<PathBuf>,
    /// Host the dashboard (web page, /api/, /metrics) binds; nothing else is bound.
    #[arg(long, env = "FASTWORKER_GUI_HOST", default_value = "127.0.0.1")]
    gui_host: String,
    /// Port of the dashboard.
    #[arg(long, env = "FASTWORKER_GUI_PORT", default_value_t = 8080)]
    gui_port: u16,
    /// Serve no dashboard.
    #[arg(long, env = "FASTWORKER_NO_GUI")]
    no_gui: bool,
    /// Key the dashboard's cancel and retry need (Authorization: Bearer KEY); without it they are open.
    #[arg(long, env = "FASTWORKER_GUI_API_KEY", hide_env_values = true)]
    gui_api_key: Option<String>,
    /// Worker threads running tasks (default: the number of cores); 0 runs no task here.
    #[arg(long, env = "FASTWORKER_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Seconds a shutdown waits for queued and running tasks.
    #[arg(long, env = "FASTWORKER_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Largest request accepted, in bytes.
    #[arg(long, env = "FASTWORKER_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Requests each port serves at once; more wait in line.
    #[arg(long, env = "FASTWORKER_CONTEXTS_PER_PORT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    contexts_per_port: u32,
}

#[derive(Args)]
struct SubworkerArgs {
    /// Unique identifier of this subworker.
    #[arg(long, env = "FASTWORKER_WORKER_ID")]
    worker_id: String,
    /// Base address of the control plane to join (default: the one announced on --discovery-address).
    #[arg(long, env = "FASTWORKER_CONTROL_PLANE_ADDRESS")]
    control_plane_address: Option<String>,
    /// Base address of this subworker: CRITICAL tasks on its port, HIGH +1, NORMAL +2, LOW +3.
    #[arg(long, env = "FASTWORKER_BASE_ADDRESS", default_value = DEFAULT_BASE_ADDRESS)]
    base_address: String,
    /// The base address the control plane should dial, when --base-address is not it (0.0.0.0, NAT).
    #[arg(long, env = "FASTWORKER_ADVERTISE_ADDRESS")]
    advertise_address: Option<String>,
    /// Where to find the control plane when --control-plane-address is not given.
    #[arg(long, env = "FASTWORKER_DISCOVERY_ADDRESS", default_value = DEFAULT_DISCOVERY_ADDRESS)]
    discovery_address: String,
    /// Plugin libraries (.so/.dylib/.dll) whose tasks to run.
    #[arg(long, env = "FASTWORKER_TASK_MODULES", num_args = 1.., value_delimiter = ',', required = true)]
    task_modules: Vec<PathBuf>,
    /// Worker threads running tasks (default: the number of cores).
    #[arg(long, env = "FASTWORKER_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// Seconds between heartbeats to the control plane.
    #[arg(long, env = "FASTWORKER_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    heartbeat_interval: f64,
    /// Seconds a shutdown waits for queued and running tasks.
    #[arg(long, env = "FASTWORKER_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Largest request accepted, in bytes.
    #[arg(long, env = "FASTWORKER_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
}

#[derive(Args)]
struct ListArgs {
    /// Plugin libraries to list.
    #[arg(long, env = "FASTWORKER_TASK_MODULES", num_args = 1.., value_delimiter = ',', required = true)]
    task_modules: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// List only the periodic tasks, with their next run times.
    #[arg(long)]
    periodic: bool,
}

#[derive(Args)]
struct SchedulesArgs {
    /// Pause this periodic task's schedule first.
    #[arg(long, value_name = "TASK")]
    pause: Option<String>,
    /// Resume this periodic task's schedule first (runs missed meanwhile are not replayed).
    #[arg(long, value_name = "TASK", conflicts_with = "pause")]
    resume: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct ClientArgs {
    /// Base address of the control plane [default: the one found on --discovery-address if that is given, else tcp://127.0.0.1:5555].
    #[arg(long, env = "FASTWORKER_ADDRESS")]
    address: Option<String>,
    /// Find the control plane on this discovery address (used only without --address).
    #[arg(long, env = "FASTWORKER_DISCOVERY_ADDRESS")]
    discovery_address: Option<String>,
    /// Seconds to wait for an answer.
    #[arg(long, env = "FASTWORKER_TIMEOUT", default_value_t = 30.0)]
    timeout: f64,
}

#[derive(Args)]
struct SubmitArgs {
    /// Name of the task.
    #[arg(long)]
    task_name: String,
    /// Arguments, each a JSON value (5, "text", {"a":1}); a bare word is a string.
    #[arg(long, num_args = 0.., allow_negative_numbers = true)]
    args: Vec<String>,
    /// critical, high, normal or low (default: the task's declared priority).
    #[arg(long, value_parser = parse_priority)]
    priority: Option<Priority>,
    /// Print the task id at once instead of waiting for the result.
    #[arg(long)]
    non_blocking: bool,
    /// Use this task id (a UUID) instead of a fresh one; resubmitting an id does not run the task again.
    #[arg(long)]
    task_id: Option<TaskId>,
    /// Run the task no sooner than this many seconds from now.
    #[arg(long)]
    countdown: Option<f64>,
    /// Run the task no sooner than this time (RFC 3339, for example 2026-11-23T18:00:00Z).
    #[arg(long, value_parser = parse_eta)]
    eta: Option<SystemTime>,
    /// The task's timeout in seconds, overriding its declared one (0: none).
    #[arg(long)]
    task_timeout: Option<f64>,
    /// Runs after a failed first one, overriding the task's declared retries.
    #[arg(long)]
    retries: Option<u32>,
    /// Seconds before the first retry; each further pause doubles, up to --retry-max-delay.
    #[arg(long, default_value_t = 1.0)]
    retry_delay: f64,
    /// The longest pause between retries, in seconds.
    #[arg(long, default_value_t = 300.0)]
    retry_max_delay: f64,
    /// An NNG PULL address (tcp://host:port) to push a notice to when the task ends.
    #[arg(long)]
    callback: Option<String>,
    /// JSON sent back untouched in the callback notice.
    #[arg(long, requires = "callback")]
    callback_data: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct CancelArgs {
    /// The task to cancel.
    #[arg(long)]
    task_id: TaskId,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct StatusArgs {
    /// The task id printed by `submit --non-blocking`.
    #[arg(long)]
    task_id: TaskId,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_eta(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text).map_err(|error| format!("'{text}' is not an RFC 3339 time ({error})"))
}

fn parse_priority(text: &str) -> Result<Priority, String> {
    Priority::parse(text).ok_or_else(|| format!("'{text}' is not a priority: use critical, high, normal or low"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        std::env::var("FASTWORKER_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::ControlPlane(args) => run_control_plane(args),
        Command::List(args) => list(args),
        Command::Submit(args) => match connect(&args.client) {
            Ok(client) => block_on(submit(client, args)),
            Err(code) => code,
        },
        Command::Status(args) => match connect(&args.client) {
            Ok(client) => block_on(status(client, args.task_id)),
            Err(code) => code,
        },
        Command::Cancel(args) => match connect(&args.client) {
            Ok(client) => block_on(cancel(client, args.task_id)),
            Err(code) => code,
        },
        Command::Subworker(args) => run_subworker(args),
        Command::Workers(args) => match connect(&args) {
            Ok(client) => block_on(workers(client)),
            Err(code) => code,
        },
        Command::Schedules(args) => match connect(&args.client) {
            Ok(client) => block_on(schedules(client, args)),
            Err(code) => code,
        },
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn run_control_plane(args: ControlPlaneArgs) -> ExitCode {
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
    let registry = match Registry::load(&args.task_modules) {
        Ok(registry) => registry,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    for plugin in registry.plugins() {
        info!(plugin = %plugin.name, version = %plugin.version, path = %plugin.path.display(), "plugin loaded");
    }
    if registry.is_empty() {
        warn!("no tasks loaded: pass plugins with --task-modules");
    }
    let concurrency = args.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = ControlPlaneConfig {
        worker_id: args.worker_id,
        base,
        concurrency,
        result_cache_size: args.result_cache_size,
        result_cache_ttl: (args.result_cache_ttl > 0).then(|| Duration::from_secs(args.result_cache_ttl)),
        shutdown_timeout,
        max_frame_bytes: args.max_frame_bytes,
        contexts_per_port: args.contexts_per_port as usize,
        management: Some(ManagementConfig { port: management_port, inactive_after }),
        discovery: (!args.no_discovery).then_some(args.discovery_address),
    };
    let mut control_plane = match ControlPlane::start(config, registry) {
        Ok(control_plane) => control_plane,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    if !args.no_gui {
        let dashboard = DashboardConfig { host: args.gui_host, port: args.gui_port, api_key: args.gui_api_key };
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

/// A number of seconds from the command line, if it is one.
fn seconds(value: f64, zero_allowed: bool) -> Option<Duration> {
    let fits = value.is_finite() && (value > 0.0 || (zero_allowed && value == 0.0)) && value < 1e9;
    fits.then(|| Duration::from_secs_f64(value))
}

fn run_subworker(args: SubworkerArgs) -> ExitCode {
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
    let registry = match Registry::load(&args.task_modules) {
        Ok(registry) => registry,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    for plugin in registry.plugins() {
        info!(plugin = %plugin.name, version = %plugin.version, path = %plugin.path.display(), "plugin loaded");
    }
    if registry.is_empty() {
        return fail(
            EXIT_USAGE,
            "the plugins given with --task-modules declare no task: a subworker needs at least one",
        );
    }
    let offered: Vec<OfferedTask> = registry
        .tasks()
        .iter()
        .map(|task| {
            let options = &task.decl.options;
            OfferedTask {
                name: task.decl.name.to_string(),
                priority: options.priority,
                timeout_ms: options.timeout_ms,
                max_retries: options.max_retries,
                retry_delay_ms: options.retry_delay_ms,
                schedule: options.schedule.to_string(),
            }
        })
        .collect();
    let concurrency =
        args.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as u32);
    let control_plane = match &args.control_plane_address {
        Some(address) => address.clone(),
        None => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
            match runtime.block_on(discovery::find(&args.discovery_address, SUBWORKER_DISCOVERY_TIMEOUT)) {
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
    let membership = MembershipConfig {
        worker_id: args.worker_id.clone(),
        control_plane,
        advertise,
        concurrency,
        heartbeat_interval,
    };
    let membership = match Membership::new(membership, offered) {
        Ok(membership) => membership,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    let config = ControlPlaneConfig {
        worker_id: args.worker_id,
        base,
        concurrency: concurrency as usize,
        // Results are kept by the control plane, which also sends a task
        // again to retry it: a subworker keeps none.
        result_cache_size: 0,
        result_cache_ttl: None,
        shutdown_timeout,
        max_frame_bytes: args.max_frame_bytes,
        contexts_per_port: 64,
        management: None,
        discovery: None,
    };
    let server = match ControlPlane::start(config, registry) {
        Ok(server) => server,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
    let server = Arc::new(server);
    let in_flight = || server.in_flight() as u32;
    let refused = runtime.block_on(async {
        tokio::select! {
            signal = shutdown_signal() => { info!(signal, "stop requested"); None }
            result = membership.run(in_flight) => result.err(),
        }
    });
    if let Some(refusal) = refused {
        server.drain();
        return fail(EXIT_USAGE, refusal);
    }
    runtime.block_on(async {
        if let Err(error) = membership.leave().await {
            warn!(%error, "could not tell the control plane this subworker is stopping");
        }
        // Drain on another thread while heartbeats go on, so the control
        // plane keeps waiting for the tasks still running here.
        let draining = {
            let server = server.clone();
            std::thread::spawn(move || server.drain())
        };
        let mut next_heartbeat = tokio::time::Instant::now();
        while !draining.is_finished() {
            if tokio::time::Instant::now() >= next_heartbeat {
                if let Err(error) = membership.heartbeat(in_flight()).await {
                    warn!(%error, "a heartbeat failed while draining");
                }
                next_heartbeat = tokio::time::Instant::now() + heartbeat_interval;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(error) = membership.unregister().await {
            warn!(%error, "could not unregister from the control plane; it will notice the closed connection");
        }
    });
    if let Ok(server) = Arc::try_unwrap(server) {
        server.shutdown();
    }
    ExitCode::SUCCESS
}

/// Resolves when SIGINT or SIGTERM arrives, naming it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

fn list(args: ListArgs) -> ExitCode {
    let registry = match Registry::load(&args.task_modules) {
        Ok(registry) => registry,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    if args.periodic {
        return list_periodic(&registry, args.json);
    }
    let tasks = registry.tasks();
    if args.json {
        let rows: Vec<Value> = tasks
            .iter()
            .map(|task| {
                let options = &task.decl.options;
                json!({
                    "task": task.decl.name.as_str(),
                    "signature": task.decl.signature.as_str(),
                    "doc": task.decl.doc.as_str(),
                    "plugin": task.plugin.name,
                    "plugin_version": task.plugin.version,
                    "path": task.plugin.path,
                    "priority": options.priority.as_str(),
                    "timeout_ms": options.timeout_ms,
                    "max_retries": options.max_retries,
                    "retry_delay_ms": options.retry_delay_ms,
                    "schedule": options.schedule.as_str(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    println!("{:<16} {:<22} {:<9} {:<8} {:<7} SIGNATURE", "TASK", "PLUGIN", "PRIORITY", "TIMEOUT", "RETRIES");
    for task in tasks {
        let options = &task.decl.options;
        let timeout = if options.timeout_ms == 0 {
            "none".to_string()
        } else {
            format!("{}s", options.timeout_ms as f64 / 1000.0)
        };
        println!(
            "{:<16} {:<22} {:<9} {:<8} {:<7} {}",
            task.decl.name.as_str(),
            format!("{} {}", task.plugin.name, task.plugin.version),
            options.priority.as_str(),
            timeout,
            options.max_retries,
            task.decl.signature.as_str(),
        );
    }
    for plugin in registry.plugins() {
        println!("# {} {} from {}", plugin.name, plugin.version, plugin.path.display());
    }
    ExitCode::SUCCESS
}

/// The periodic tasks of `registry` with their next three runs from now.
fn list_periodic(registry: &Registry, json: bool) -> ExitCode {
    let now = fastworker::protocol::now_ms();
    let rows: Vec<(String, String, Vec<String>)> = registry
        .schedules()
        .iter()
        .map(|schedule| {
            let next = std::iter::successors(schedule.next_after(now), |at| schedule.next_after(*at))
                .take(3)
                .map(format_ms)
                .collect();
            (schedule.task_name.clone(), schedule.description.clone(), next)
        })
        .collect();
    if json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|(task, schedule, next)| json!({"task": task, "schedule": schedule, "next": next}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
    } else {
        println!("{:<16} {:<40} NEXT RUNS", "TASK", "SCHEDULE");
        for (task, schedule, next) in rows {
            println!("{task:<16} {schedule:<40} {}", next.join(", "));
        }
    }
    ExitCode::SUCCESS
}

async fn schedules(client: Client, args: SchedulesArgs) -> ExitCode {
    let change = args.pause.map(|task| (task, true)).or(args.resume.map(|task| (task, false)));
    if let Some((task, paused)) = change {
        if let Err(error) = client.pause_schedule(&task, paused).await {
            return client_failure(error);
        }
    }
    match client.schedules().await {
        Ok(statuses) => {
            let rows: Vec<Value> = statuses
                .iter()
                .map(|s| {
                    json!({
                        "task": s.task_name,
                        "schedule": s.schedule,
                        "paused": s.paused,
                        "next_run": s.next_ms.map(format_ms),
                        "runs": s.runs,
                        "skipped": s.skipped,
                        "last_run": s.last_run_ms.map(format_ms),
                        "last_task_id": s.last_task_id,
                        "last_outcome": s.last_outcome,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
            ExitCode::SUCCESS
        }
        Err(error) => client_failure(error),
    }
}

/// A client for the control plane the client flags name.
fn connect(args: &ClientArgs) -> Result<Client, ExitCode> {
    if !args.timeout.is_finite() || args.timeout <= 0.0 {
        return Err(fail(EXIT_USAGE, "--timeout must be a positive number of seconds"));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    // --address (or FASTWORKER_ADDRESS) wins; else discovery, when
    // --discovery-address (or FASTWORKER_DISCOVERY_ADDRESS) is given; else the default.
    let address = match (&args.address, &args.discovery_address) {
        (Some(address), _) => address.clone(),
        (None, Some(discovery_address)) => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
            match runtime.block_on(discovery::find(discovery_address, timeout.min(CLIENT_DISCOVERY_TIMEOUT))) {
                Ok(found) => found.base_address,
                Err(error @ discovery::DiscoveryError::Address { .. }) => {
                    return Err(fail(EXIT_USAGE, format_args!("--discovery-address: {error}")))
                }
                Err(error) => return Err(fail(EXIT_UNREACHABLE, error)),
            }
        }
        (None, None) => DEFAULT_BASE_ADDRESS.to_string(),
    };
    match Client::new(&address) {
        Ok(client) => Ok(client.with_timeout(timeout)),
        Err(error) => Err(fail(EXIT_USAGE, format_args!("--address: {error}"))),
    }
}

/// Runs a client command to completion.
fn block_on(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
    runtime.block_on(command)
}

fn client_failure(error: ClientError) -> ExitCode {
    let code = match &error {
        ClientError::Timeout { .. } | ClientError::Transport { .. } => EXIT_UNREACHABLE,
        ClientError::Address(_) => EXIT_USAGE,
        _ => EXIT_FAILED,
    };
    if let ClientError::Refused(refusal) = &error {
        if refusal.kind == ErrorKind::UnsupportedVersion {
            return fail(code, format_args!("{error} (is the control plane a different fastworker version?)"));
        }
    }
    fail(code, error)
}

/// A command-line argument as JSON: a JSON value if it parses, else a string.
fn argument_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

async fn submit(client: Client, args: SubmitArgs) -> ExitCode {
    let values: Vec<Value> = args.args.iter().map(|a| argument_value(a)).collect();
    let json_args = serde_json::to_vec(&values).expect("JSON");
    let lengths = [args.countdown, args.task_timeout, Some(args.retry_delay), Some(args.retry_max_delay)];
    if lengths.iter().flatten().any(|s| seconds(*s, true).is_none()) {
        return fail(
            EXIT_USAGE,
            "--countdown, --task-timeout and the retry delays must be numbers of seconds, 0 or more",
        );
    }
    let callback_data = match &args.callback_data {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(value) => value.to_string().into_bytes(),
            Err(error) => return fail(EXIT_USAGE, format_args!("--callback-data is not JSON: {error}")),
        },
        None => Vec::new(),
    };
    let options = SubmitOptions {
        priority: args.priority,
        task_id: args.task_id,
        countdown: args.countdown.map(Duration::from_secs_f64),
        eta: args.eta,
        timeout: args.task_timeout.map(Duration::from_secs_f64),
        retry: args.retries.map(|max_retries| RetryPolicy {
            max_retries,
            delay_ms: (args.retry_delay * 1000.0) as u64,
            factor: 2.0,
            max_delay_ms: (args.retry_max_delay * 1000.0) as u64,
        }),
        callback: args.callback.map(|address| Callback { address, data: callback_data }),
    };
    // A blocking submission of a delayed task waits for the delay as well.
    let delay =
        options.countdown.into_iter().chain(options.eta.and_then(|t| t.duration_since(SystemTime::now()).ok())).max();
    let client = match delay {
        Some(delay) if !args.non_blocking => client.with_timeout(Duration::from_secs_f64(args.client.timeout) + delay),
        _ => client,
    };
    match client.submit_raw(&args.task_name, json_args, options, !args.non_blocking).await {
        Ok(Reply::Accepted { task_id }) => {
            println!("{task_id}");
            ExitCode::SUCCESS
        }
        Ok(Reply::Report(report)) if args.non_blocking => {
            println!("{}", report.task_id);
            ExitCode::SUCCESS
        }
        Ok(Reply::Report(report)) => match (report.state, &report.result, &report.error) {
            (TaskState::Succeeded, Some(result), _) => {
                println!("{}", String::from_utf8_lossy(result));
                ExitCode::SUCCESS
            }
            (_, _, Some(error)) => fail(EXIT_FAILED, describe_failure(&report.task_name, error)),
            (state, _, _) => fail(EXIT_FAILED, format_args!("task '{}' is {}", report.task_name, state.as_str())),
        },
        Ok(other) => fail(EXIT_FAILED, format_args!("unexpected reply: {other:?}")),
        Err(error) => client_failure(error),
    }
}

async fn status(client: Client, task_id: TaskId) -> ExitCode {
    match client.status(task_id).await {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report_json(&report)).expect("JSON"));
            if report.state == TaskState::Failed {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => client_failure(error),
    }
}

async fn workers(client: Client) -> ExitCode {
    match client.workers().await {
        Ok(status) => {
            let subworkers: serde_json::Map<String, Value> = status
                .subworkers
                .iter()
                .map(|w| {
                    let last_seen = std::time::UNIX_EPOCH + Duration::from_millis(w.last_seen_ms);
                    let row = json!({
                        "address": w.address,
                        "status": w.status.as_str(),
                        "load": w.load,
                        "concurrency": w.concurrency,
                        "last_seen": humantime::format_rfc3339_seconds(last_seen).to_string(),
                        "last_seen_ms": w.last_seen_ms,
                        "connected": w.connected,
                        "dispatched": w.dispatched,
                        "tasks": w.tasks,
                    });
                    (w.worker_id.clone(), row)
                })
                .collect();
            let out = json!({
                "total_subworkers": status.total_subworkers,
                "active_subworkers": status.active_subworkers,
                "subworkers": subworkers,
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            ExitCode::SUCCESS
        }
        Err(error) => client_failure(error),
    }
}

async fn cancel(client: Client, task_id: TaskId) -> ExitCode {
    match client.cancel(task_id).await {
        Ok(report) if report.state == TaskState::Cancelled => {
            println!("cancelled: task '{}' ({task_id}) will not run", report.task_name);
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!(
                "cancellation requested: task '{}' ({task_id}) is {} on '{}'; it stops when it next checks its context",
                report.task_name,
                report.state.as_str(),
                report.worker
            );
            ExitCode::SUCCESS
        }
        Err(error) => client_failure(error),
    }
}

fn report_json(report: &TaskReport) -> Value {
    let result = report.result.as_deref().map(|bytes| serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null));
    json!({
        "task_id": report.task_id,
        "task_name": report.task_name,
        "state": report.state.as_str(),
        "result": result,
        "error": report.error.as_ref().map(|e| json!({
            "kind": match e.kind { FailureKind::Error => "error", FailureKind::Panic => "panic", FailureKind::BadArguments => "bad_arguments" },
            "message": e.message,
        })),
        "priority": report.priority.as_str(),
        "worker": report.worker,
        "attempts": report.attempts,
        "created_ms": report.created_ms,
        "started_ms": report.started_ms,
        "finished_ms": report.finished_ms,
        "duration_ms": report.started_ms.zip(report.finished_ms).map(|(s, f)| f.saturating_sub(s)),
    })
}
