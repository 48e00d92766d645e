//! The cluster-wide task limits on the command line: the control plane's
//! `--task-limit` flag and the `fastworker limits` command (docs/limits.md).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use fastworker::client::Client;
use fastworker::task_limits::{check_name, TaskLimit, TaskLimitStatus, MAX_OVERRIDES};
use serde_json::Value;

use crate::cli::client::{client_failure, ClientArgs};
use crate::{fail, EXIT_USAGE};

/// One `--task-limit NAME=LIMIT`: the task name and its limit (`None`:
/// lift the declared one).
pub(crate) type TaskLimitFlag = (String, Option<TaskLimit>);

/// Parses `add=rate:20/s,burst:5,max_running:2` or `add=none`.
pub(crate) fn parse_task_limit_flag(text: &str) -> Result<TaskLimitFlag, String> {
    let (name, limit) = text.split_once('=').ok_or_else(|| {
        format!("'{text}' is not TASK=LIMIT (for example add=rate:20/s,burst:5,max_running:2, or add=none)")
    })?;
    let name = name.trim();
    check_name(name).map_err(|error| error.to_string())?;
    let limit = TaskLimit::parse(limit).map_err(|error| format!("task '{name}': {error}"))?;
    Ok((name.to_string(), limit))
}

/// Checks the flags together: at most [`MAX_OVERRIDES`] names.
pub(crate) fn check_task_limit_flags(flags: &[TaskLimitFlag]) -> Result<(), String> {
    if flags.len() > MAX_OVERRIDES {
        return Err(format!("--task-limit is given {} times; at most {MAX_OVERRIDES} are allowed", flags.len()));
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct LimitsArgs {
    #[command(subcommand)]
    pub(crate) action: LimitsAction,
}

/// What `fastworker limits` does.
#[derive(Subcommand)]
pub(crate) enum LimitsAction {
    /// Print every limited task, its limit, where it comes from, and what it holds now, as JSON.
    List(ClientArgs),
    /// Set a task's limit at run time: `limits set add rate=20/s burst=5 max_running=2`, or `limits set add none` to lift it.
    Set(SetArgs),
    /// Drop a task's run-time limit: its declared or --task-limit one holds again.
    Clear(ClearArgs),
}

#[derive(Args)]
pub(crate) struct SetArgs {
    /// The task name.
    pub(crate) task: String,
    /// rate=N/s|N/m|N/h, burst=N, max_running=N, or none.
    #[arg(required = true, num_args = 1..)]
    pub(crate) limit: Vec<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct ClearArgs {
    /// The task name.
    pub(crate) task: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The client flags of the action.
pub(crate) fn client_args(args: &LimitsArgs) -> &ClientArgs {
    match &args.action {
        LimitsAction::List(client) => client,
        LimitsAction::Set(set) => &set.client,
        LimitsAction::Clear(clear) => &clear.client,
    }
}

/// Runs `fastworker limits ...`.
pub(crate) async fn limits(client: Client, args: LimitsArgs) -> ExitCode {
    let done = match args.action {
        LimitsAction::List(_) => {
            return match client.task_limits().await {
                Ok(rows) => {
                    let rows: Vec<Value> = rows.iter().map(TaskLimitStatus::to_json).collect();
                    println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
                    ExitCode::SUCCESS
                }
                Err(error) => client_failure(error),
            }
        }
        LimitsAction::Set(set) => {
            let limit = match TaskLimit::parse(&set.limit.join(",")) {
                Ok(limit) => limit,
                Err(error) => return fail(EXIT_USAGE, format_args!("task '{}': {error}", set.task)),
            };
            (set.task.clone(), "set", client.set_task_limit(&set.task, limit).await)
        }
        LimitsAction::Clear(clear) => (clear.task.clone(), "cleared", client.clear_task_limit(&clear.task).await),
    };
    if let (_, _, Err(error)) = done {
        return client_failure(error);
    }
    let (task, verb, _) = done;
    // The confirmation is what the control plane holds now, read back.
    match client.task_limits().await {
        Ok(rows) => {
            println!("{}", confirmation(&task, verb, rows.iter().find(|row| row.task_name == task)));
            ExitCode::SUCCESS
        }
        Err(error) => client_failure(error),
    }
}

/// The line confirming a change: the task's limit as the control plane
/// now reports it, where it comes from and what it holds.
fn confirmation(task: &str, verb: &str, row: Option<&TaskLimitStatus>) -> String {
    match row {
        Some(row) => format!(
            "task '{task}': run-time limit {verb}; its limit now is {} ({}), with {} running and {} held",
            row.limit.describe(),
            row.source.as_str(),
            row.running,
            row.held
        ),
        None => format!("task '{task}': run-time limit {verb}; it has no limit now"),
    }
}
