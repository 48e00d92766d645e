//! The `fastworker` command: control plane, subworker and client commands.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cli::client::{
    block_on, cancel, connect, schedules, status, submit, workers, CancelArgs, ClientArgs, SchedulesArgs, StatusArgs,
    SubmitArgs,
};
use cli::help;
use cli::keys::{keygen, KeygenArgs};
use cli::logging::LogFormat;
use cli::plugins::{list, ListArgs};
use cli::serve::{run_control_plane, run_subworker, ControlPlaneArgs, SubworkerArgs};
use cli::task_limits::{client_args, limits, LimitsArgs};
use cli::workflow::{workflow, WorkflowArgs};

/// Exit status of a task that failed or a request the control plane refused.
pub(crate) const EXIT_FAILED: u8 = 1;

/// Exit status of a bad command line or configuration (clap uses it too).
pub(crate) const EXIT_USAGE: u8 = 2;

/// Exit status when no control plane answered in time.
pub(crate) const EXIT_UNREACHABLE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "fastworker",
    version,
    about = "A brokerless task runtime: control plane, subworkers and client in one binary.",
    after_help = cli::logging::ENVIRONMENT_HELP
)]
struct Cli {
    /// How log lines are written to standard error: text (coloured only on a terminal) or json (one object a line).
    #[arg(help_heading = "Logging", long, global = true, env = cli::logging::FORMAT_VAR, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Load task plugins and serve tasks on the priority ports.
    #[command(after_help = help::CONTROL_PLANE)]
    ControlPlane(ControlPlaneArgs),
    /// List the tasks of plugins without starting anything.
    #[command(after_help = help::LIST)]
    List(ListArgs),
    /// Submit a task and print its result (or, with --non-blocking, its id).
    #[command(after_help = help::SUBMIT)]
    Submit(SubmitArgs),
    /// Print the state, result or error of a task.
    #[command(after_help = help::STATUS)]
    Status(StatusArgs),
    /// Cancel a task: one not yet started never runs; a running one is asked to stop.
    #[command(after_help = help::CANCEL)]
    Cancel(CancelArgs),
    /// Join a control plane and run the tasks of its own plugins for it.
    #[command(after_help = help::SUBWORKER)]
    Subworker(SubworkerArgs),
    /// Print the control plane's subworkers and their health as JSON.
    #[command(after_help = help::WORKERS)]
    Workers(ClientArgs),
    /// Print the periodic tasks of a running control plane (last run, outcome, next run, skips) as JSON.
    #[command(after_help = help::SCHEDULES)]
    Schedules(SchedulesArgs),
    /// Write a new cluster key, or a role key (operator, client, worker) derived from one.
    #[command(after_help = help::KEYGEN)]
    Keygen(KeygenArgs),
    /// List, set or clear the cluster-wide task limits of a running control plane (docs/limits.md).
    #[command(after_help = help::LIMITS)]
    Limits(LimitsArgs),
    /// Submit, inspect, wait for or cancel a workflow (chains, groups, chords of tasks).
    #[command(after_help = help::WORKFLOW)]
    Workflow(WorkflowArgs),
}

fn main() -> ExitCode {
    fastworker_plugin_sdk::panic_hook::install();
    let cli = Cli::parse();
    if cli.log_format == LogFormat::Json {
        // The worker processes this one starts log as it does (still one
        // thread here: nothing reads the environment meanwhile).
        std::env::set_var(cli::logging::FORMAT_VAR, "json");
    }
    if let Err(error) = cli::logging::init(cli.log_format) {
        return fail(EXIT_USAGE, error);
    }
    // Before anything opens a socket: NNG reads its thread counts once.
    match fastworker::wire::nng_threads::configure() {
        Ok(threads) => tracing::debug!(%threads, "NNG threads"),
        Err(error) => return fail(EXIT_USAGE, error),
    }
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
        Command::Keygen(args) => keygen(args),
        Command::Workflow(args) => workflow(args),
        Command::Schedules(args) => match connect(&args.client) {
            Ok(client) => block_on(schedules(client, args)),
            Err(code) => code,
        },
        Command::Limits(args) => match connect(client_args(&args)) {
            Ok(client) => block_on(limits(client, args)),
            Err(code) => code,
        },
    }
}

pub(crate) fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// A number of seconds from the command line, if it is one: finite, not
/// negative (nor zero unless `zero_allowed`) and under 10^9 s. Never panics,
/// whatever the value.
pub(crate) fn seconds(value: f64, zero_allowed: bool) -> Option<Duration> {
    let fits = value.is_finite() && (value > 0.0 || (zero_allowed && value == 0.0)) && value < 1e9;
    fits.then(|| Duration::try_from_secs_f64(value).ok()).flatten()
}
