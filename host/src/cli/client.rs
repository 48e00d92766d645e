//! The client commands: `submit`, `status`, `cancel`, `workers`, `schedules`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use fastworker::bounds::{millis, range};
use fastworker::client::{Client, ClientError, SubmitOptions};
use fastworker::discovery::{self};
use fastworker::protocol::{describe_failure, Callback, ErrorKind, Reply, RetryPolicy, TaskState};
use fastworker::schedules::format_ms;
use fastworker::wire::report_json::TaskReportJson;
use fastworker::{Priority, TaskId, DEFAULT_BASE_ADDRESS};
use serde_json::{json, Value};

use crate::cli::arguments::{arguments, Parameters};
use crate::cli::bounds::seconds_in;
use crate::cli::keys::CredentialArgs;
use crate::{fail, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE};

/// The longest a client command without --address waits for an announcement.
pub(crate) const CLIENT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A year, in seconds: the longest wait or task timeout the client asks for.
const YEAR_S: f64 = 365.0 * 86_400.0;

/// `--timeout`, in seconds: a millisecond to a year.
const TIMEOUT_S: (f64, f64) = (0.001, YEAR_S);

/// `--task-timeout`, in seconds: none (0) to a year.
const TASK_TIMEOUT_S: (f64, f64) = (0.0, YEAR_S);

/// `--countdown`, `--retry-delay` and `--retry-max-delay`, in seconds: up to
/// ten years, the most any `--max-countdown` lets a control plane accept.
const DELAY_S: (f64, f64) = (0.0, range::COUNTDOWN_S.1);

#[derive(Args)]
pub(crate) struct ClientArgs {
    /// Base address of the control plane [default: the one found on --discovery-address if that is given, else tcp://127.0.0.1:5555].
    #[arg(long, env = "FASTWORKER_ADDRESS")]
    pub(crate) address: Option<String>,
    /// Find the control plane on this discovery address (used only without --address).
    #[arg(long, env = "FASTWORKER_DISCOVERY_ADDRESS")]
    pub(crate) discovery_address: Option<String>,
    /// Seconds to wait for an answer (0.001 to a year).
    #[arg(long, env = "FASTWORKER_TIMEOUT", default_value = "30", value_parser = seconds_in(TIMEOUT_S), allow_negative_numbers = true)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) credentials: CredentialArgs,
}

#[derive(Args)]
pub(crate) struct SubmitArgs {
    /// Name of the task.
    #[arg(long)]
    pub(crate) task_name: String,
    /// Arguments in order, each read as its parameter's type in the task's schema (8080 is a string for
    /// a String parameter, a number for an integer one); JSON for arrays and objects ({"x":1}).
    #[arg(long, num_args = 0.., allow_negative_numbers = true)]
    pub(crate) args: Vec<String>,
    /// Arguments by parameter name, read like --args (repeatable): --kwargs text=hello times=3.
    #[arg(long, value_name = "NAME=VALUE", num_args = 1.., allow_negative_numbers = true)]
    pub(crate) kwargs: Vec<String>,
    /// critical, high, normal or low (default: the task's declared priority).
    #[arg(long, value_parser = parse_priority)]
    pub(crate) priority: Option<Priority>,
    /// Print the task id at once instead of waiting for the result.
    #[arg(long)]
    pub(crate) non_blocking: bool,
    /// Use this task id (a UUID) instead of a fresh one; resubmitting an id does not run the task again.
    #[arg(long)]
    pub(crate) task_id: Option<TaskId>,
    /// Run the task no sooner than this many seconds from now (up to ten years).
    #[arg(long, value_parser = seconds_in(DELAY_S), allow_negative_numbers = true)]
    pub(crate) countdown: Option<Duration>,
    /// Run the task no sooner than this time (RFC 3339, for example 2026-11-23T18:00:00Z).
    #[arg(long, value_parser = parse_eta)]
    pub(crate) eta: Option<SystemTime>,
    /// The task's timeout in seconds, overriding its declared one (0: none; at most a year).
    #[arg(long, value_parser = seconds_in(TASK_TIMEOUT_S), allow_negative_numbers = true)]
    pub(crate) task_timeout: Option<Duration>,
    /// Runs after a failed first one, overriding the task's declared retries (at most 10000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=*range::RETRIES.end() as i64), allow_negative_numbers = true)]
    pub(crate) retries: Option<u32>,
    /// Seconds before the first retry; each further pause doubles, up to --retry-max-delay (up to ten years).
    #[arg(long, default_value = "1", value_parser = seconds_in(DELAY_S), allow_negative_numbers = true)]
    pub(crate) retry_delay: Duration,
    /// The longest pause between retries, in seconds (up to ten years).
    #[arg(long, default_value = "300", value_parser = seconds_in(DELAY_S), allow_negative_numbers = true)]
    pub(crate) retry_max_delay: Duration,
    /// An NNG PULL address (tcp://host:port) to push a notice to when the task ends.
    #[arg(long)]
    pub(crate) callback: Option<String>,
    /// JSON sent back untouched in the callback notice.
    #[arg(long, requires = "callback")]
    pub(crate) callback_data: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct CancelArgs {
    /// The task to cancel.
    #[arg(long)]
    pub(crate) task_id: TaskId,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// The task id printed by `submit --non-blocking`.
    #[arg(long)]
    pub(crate) task_id: TaskId,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct SchedulesArgs {
    /// Pause this periodic task's schedule first.
    #[arg(long, value_name = "TASK")]
    pub(crate) pause: Option<String>,
    /// Resume this periodic task's schedule first (runs missed meanwhile are not replayed).
    #[arg(long, value_name = "TASK", conflicts_with = "pause")]
    pub(crate) resume: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// A client for the control plane the client flags name.
pub(crate) fn connect(args: &ClientArgs) -> Result<Client, ExitCode> {
    let timeout = args.timeout;
    let named = [
        ("--address", args.address.as_deref().unwrap_or_default()),
        ("--discovery-address", args.discovery_address.as_deref().unwrap_or_default()),
    ];
    args.credentials.tls.install(&named)?;
    // --address (or FASTWORKER_ADDRESS) wins; else discovery, when
    // --discovery-address (or FASTWORKER_DISCOVERY_ADDRESS) is given; else the default.
    let address = match (&args.address, &args.discovery_address) {
        (Some(address), _) => address.clone(),
        (None, Some(discovery_address)) => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
            let keys = args.credentials.keys.load()?;
            let found = discovery::find_sealed(discovery_address, timeout.min(CLIENT_DISCOVERY_TIMEOUT), keys);
            match runtime.block_on(found) {
                Ok(found) => found.base_address,
                Err(error @ discovery::DiscoveryError::Address { .. }) => {
                    return Err(fail(EXIT_USAGE, format_args!("--discovery-address: {error}")))
                }
                Err(error) => return Err(fail(EXIT_UNREACHABLE, error)),
            }
        }
        (None, None) => DEFAULT_BASE_ADDRESS.to_string(),
    };
    let client = match Client::new(&address) {
        Ok(client) => client.with_timeout(timeout),
        Err(error) => return Err(fail(EXIT_USAGE, format_args!("--address: {error}"))),
    };
    match args.credentials.keys.load()? {
        Some(ring) => client.with_keys(ring).map_err(|error| fail(EXIT_USAGE, error)),
        None => Ok(client),
    }
}

/// Runs a client command to completion.
pub(crate) fn block_on(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
    runtime.block_on(command)
}

pub(crate) fn client_failure(error: ClientError) -> ExitCode {
    let code = match &error {
        ClientError::Timeout { .. } | ClientError::Unreachable { .. } | ClientError::Transport { .. } => {
            EXIT_UNREACHABLE
        }
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

/// The parameters of `task_name` as the control plane describes them;
/// `None` when it has no schema for it or does not say (a key whose role
/// may not list tasks): the arguments are then sent as they read. Nothing
/// listening on the result port is left for the submission to report, on
/// the port it uses (a refused connection is known at once); a silent
/// control plane ends the command here, within one `--timeout`.
async fn parameters(client: &Client, task_name: &str) -> Result<Option<Parameters>, ExitCode> {
    match client.tasks().await {
        Ok(tasks) => Ok(tasks
            .iter()
            .find(|task| task.name == task_name)
            .and_then(|task| task.args_schema.as_deref())
            .and_then(Parameters::from_schema)),
        Err(ClientError::Refused(_) | ClientError::Unreachable { .. }) => Ok(None),
        Err(error) => Err(client_failure(error)),
    }
}

pub(crate) async fn submit(client: Client, args: SubmitArgs) -> ExitCode {
    let callback_data = match &args.callback_data {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(value) => value.to_string().into_bytes(),
            Err(error) => return fail(EXIT_USAGE, format_args!("--callback-data is not JSON: {error}")),
        },
        None => Vec::new(),
    };
    let schema = if args.args.is_empty() && args.kwargs.is_empty() {
        None
    } else {
        match parameters(&client, &args.task_name).await {
            Ok(schema) => schema,
            Err(code) => return code,
        }
    };
    let json_args = match arguments(&args.task_name, schema.as_ref(), &args.args, &args.kwargs) {
        Ok(values) => serde_json::to_vec(&values).expect("JSON"),
        Err(error) => return fail(EXIT_USAGE, error),
    };
    let options = SubmitOptions {
        priority: args.priority,
        task_id: args.task_id,
        countdown: args.countdown,
        eta: args.eta,
        timeout: args.task_timeout,
        retry: args.retries.map(|max_retries| RetryPolicy {
            max_retries,
            delay_ms: millis(args.retry_delay),
            factor: 2.0,
            max_delay_ms: millis(args.retry_max_delay),
        }),
        callback: args.callback.map(|address| Callback { address, data: callback_data }),
    };
    // A blocking submission of a delayed task waits for the delay as well.
    let delay =
        options.countdown.into_iter().chain(options.eta.and_then(|t| t.duration_since(SystemTime::now()).ok())).max();
    let client = match delay {
        Some(delay) if !args.non_blocking => client.with_timeout(args.client.timeout.saturating_add(delay)),
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

pub(crate) async fn status(client: Client, task_id: TaskId) -> ExitCode {
    match client.status(task_id).await {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&TaskReportJson::from(&report)).expect("JSON"));
            if report.state == TaskState::Failed {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => client_failure(error),
    }
}

pub(crate) async fn cancel(client: Client, task_id: TaskId) -> ExitCode {
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

pub(crate) async fn workers(client: Client) -> ExitCode {
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
                "worker_processes": status
                    .worker_processes
                    .iter()
                    .map(worker_process_json)
                    .collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            ExitCode::SUCCESS
        }
        Err(error) => client_failure(error),
    }
}

/// One supervised worker process (docs/isolation.md), as `workers` shows it.
fn worker_process_json(p: &fastworker::protocol::WorkerProcessStatus) -> Value {
    // As the dashboard shows it, and the last crash's time in RFC 3339.
    let mut row = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Some(crash) = row.get_mut("last_crash").and_then(Value::as_object_mut) {
        if let Some(at_ms) = crash.get("at_ms").and_then(Value::as_u64) {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(at_ms);
            crash.insert("at".to_string(), json!(humantime::format_rfc3339_seconds(at).to_string()));
        }
    }
    row
}

pub(crate) async fn schedules(client: Client, args: SchedulesArgs) -> ExitCode {
    let change = args.pause.map(|task| (task, true)).or(args.resume.map(|task| (task, false)));
    if let Some((task, paused)) = &change {
        if let Err(error) = client.pause_schedule(task, *paused).await {
            return client_failure(error);
        }
    }
    match client.schedules().await {
        Ok(statuses) => {
            // The confirmation (on stderr, the list stays JSON) is the schedule as the control plane now holds it.
            if let Some(row) = change.as_ref().and_then(|(task, _)| statuses.iter().find(|s| &s.task_name == task)) {
                let next = row.next_ms.map_or_else(|| "none".to_string(), format_ms);
                let state = if row.paused { "paused" } else { "running" };
                eprintln!("schedule of '{}' ({}) is {state} now; next run: {next}", row.task_name, row.schedule);
            }
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

fn parse_eta(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text).map_err(|error| format!("'{text}' is not an RFC 3339 time ({error})"))
}

fn parse_priority(text: &str) -> Result<Priority, String> {
    Priority::parse(text).ok_or_else(|| format!("'{text}' is not a priority: use critical, high, normal or low"))
}
