//! `fastworker workflow submit|status|wait|cancel`: workflows from a JSON
//! description (`docs/workflows.md`).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use fastworker::client::Client;
use fastworker::workflow::{Workflow, WorkflowId, WorkflowReport, WorkflowState};
use serde_json::{json, Value};

use crate::cli::client::{block_on, client_failure, connect, ClientArgs};
use crate::{fail, EXIT_FAILED, EXIT_USAGE};

/// The largest description read from a file or stdin.
const MAX_DESCRIPTION_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Args)]
pub(crate) struct WorkflowArgs {
    #[command(subcommand)]
    command: WorkflowCommand,
}

#[derive(Subcommand)]
enum WorkflowCommand {
    /// Submit a workflow described in JSON, wait for it and print its result (or, with --non-blocking, its id).
    Submit(SubmitWorkflowArgs),
    /// Print a workflow's state, members, result or first failure as JSON.
    Status(WorkflowIdArgs),
    /// Wait for a workflow to end (up to --timeout) and print its status as JSON.
    Wait(WorkflowIdArgs),
    /// Cancel a workflow: pending members never run, queued ones are cancelled, running ones asked to stop.
    Cancel(WorkflowIdArgs),
}

#[derive(Args)]
struct SubmitWorkflowArgs {
    /// The JSON description: a file, or - for stdin.
    #[arg(long)]
    file: String,
    /// Print the workflow id at once instead of waiting for its end.
    #[arg(long)]
    non_blocking: bool,
    /// Use this workflow id (a UUID) instead of a fresh one; resubmitting an id does not run it again.
    #[arg(long)]
    workflow_id: Option<WorkflowId>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct WorkflowIdArgs {
    /// The workflow id printed by `workflow submit --non-blocking`.
    workflow_id: WorkflowId,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs a `workflow` subcommand.
pub(crate) fn workflow(args: WorkflowArgs) -> ExitCode {
    let client_args = match &args.command {
        WorkflowCommand::Submit(a) => &a.client,
        WorkflowCommand::Status(a) | WorkflowCommand::Wait(a) | WorkflowCommand::Cancel(a) => &a.client,
    };
    let timeout = client_args.timeout;
    let client = match connect(client_args) {
        Ok(client) => client,
        Err(code) => return code,
    };
    match args.command {
        WorkflowCommand::Submit(args) => block_on(submit(client, args, timeout)),
        WorkflowCommand::Status(args) => block_on(async move { print(client.workflow_status(args.workflow_id).await) }),
        WorkflowCommand::Wait(args) => {
            block_on(async move { print(client.wait_workflow(args.workflow_id, timeout).await) })
        }
        WorkflowCommand::Cancel(args) => block_on(async move { print(client.cancel_workflow(args.workflow_id).await) }),
    }
}

fn read_description(file: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let read = if file == "-" {
        std::io::stdin().take(MAX_DESCRIPTION_BYTES + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX_DESCRIPTION_BYTES + 1).read_to_end(&mut bytes))
    };
    read.map_err(|error| format!("--file {file}: {error}"))?;
    if bytes.len() as u64 > MAX_DESCRIPTION_BYTES {
        return Err(format!("--file {file}: more than {MAX_DESCRIPTION_BYTES} bytes"));
    }
    Ok(bytes)
}

async fn submit(client: Client, args: SubmitWorkflowArgs, timeout: Duration) -> ExitCode {
    let workflow =
        match read_description(&args.file).and_then(|bytes| Workflow::from_json(&bytes).map_err(|e| e.to_string())) {
            Ok(workflow) => workflow,
            Err(error) => return fail(EXIT_USAGE, error),
        };
    let workflow_id = args.workflow_id.unwrap_or_else(WorkflowId::new_v4);
    let report = match client.submit_workflow_as(workflow_id, &workflow).await {
        Ok(report) => report,
        Err(error) => return client_failure(error),
    };
    if args.non_blocking {
        println!("{}", report.workflow_id);
        return ExitCode::SUCCESS;
    }
    match client.wait_workflow(workflow_id, timeout).await {
        Ok(report) if report.state == WorkflowState::Succeeded => {
            println!("{}", String::from_utf8_lossy(report.result.as_deref().unwrap_or(b"null")));
            ExitCode::SUCCESS
        }
        Ok(report) => {
            let why = report.failure.as_ref().map_or(String::new(), |f| format!(": {}", f.message));
            fail(EXIT_FAILED, format_args!("workflow {workflow_id} {}{why}", report.state.as_str()))
        }
        Err(error) => client_failure(error),
    }
}

fn print(report: Result<WorkflowReport, fastworker::ClientError>) -> ExitCode {
    match report {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report_json(&report)).expect("JSON"));
            match report.state {
                WorkflowState::Failed | WorkflowState::Cancelled => ExitCode::from(EXIT_FAILED),
                _ => ExitCode::SUCCESS,
            }
        }
        Err(error) => client_failure(error),
    }
}

/// A workflow's status as the command line prints it.
pub(crate) fn report_json(report: &WorkflowReport) -> Value {
    let json_of = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
    json!({
        "workflow_id": report.workflow_id,
        "state": report.state.as_str(),
        "created_ms": report.created_ms,
        "finished_ms": report.finished_ms,
        "result": report.result.as_deref().map(json_of),
        "failure": report.failure.as_ref().map(|f| json!({
            "node": f.node,
            "task_id": f.task_id,
            "task_name": f.task_name,
            "state": f.state.as_str(),
            "message": f.message,
        })),
        "members": report.members.iter().map(|m| json!({
            "node": m.node,
            "task_name": m.task_name,
            "task_id": m.task_id,
            "state": m.state.as_str(),
        })).collect::<Vec<_>>(),
    })
}
