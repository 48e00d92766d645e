//! The workflow row: a chord of [`MEMBERS`] `add` tasks whose callback is
//! `sum`, submitted with [`fastworker::Client::submit_workflow`] and waited
//! for, end to end, against [`MEMBERS`] independent `add` calls pipelined
//! (K in flight) on the same control plane, measured in alternation
//! ([`ROUNDS`] of each, medians compared) so that a drift of the machine's
//! load weighs on both. Every chord's result is checked against the sum of
//! its members' `a + b`.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use fastworker::workflow::{task, Workflow, WorkflowState};
use fastworker::Client;
use tokio::runtime::Runtime;

use crate::args::Settings;
use crate::phase::{Budget, Phase};
use crate::processes::{add_args, add_pipelined, start_control_plane};
use crate::report::print_targets;
use crate::scale_report::OwnedTarget;
use crate::setup::locate_binaries;

/// Members of the chord, and independent calls it is compared with.
pub(crate) const MEMBERS: u64 = 1000;
/// Measured runs of each.
const ROUNDS: usize = 7;

/// What the workflow row measured.
pub(crate) struct WorkflowRow {
    /// Median time of a chord, submission to its status saying succeeded.
    pub(crate) chord: Duration,
    /// Median time of the independent calls.
    pub(crate) independent: Duration,
}

impl WorkflowRow {
    /// The chord's time as a multiple of the independent calls'.
    pub(crate) fn ratio(&self) -> f64 {
        self.chord.as_secs_f64() / self.independent.as_secs_f64()
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Runs one chord and checks its result.
async fn chord(client: &Client, round: u64) -> Result<Duration, String> {
    let offset = round * MEMBERS;
    let members = (offset..offset + MEMBERS).map(|n| {
        let (a, b) = add_args(n);
        task("add", serde_json::json!([a, b]))
    });
    let expected: i64 = (offset..offset + MEMBERS).map(|n| add_args(n).0 + add_args(n).1).sum();
    let workflow = Workflow::chord(members, task("sum", serde_json::json!([])));
    let start = Instant::now();
    let id = client.submit_workflow(&workflow).await.map_err(|e| format!("chord submission: {e}"))?.workflow_id;
    let report = client.wait_workflow(id, Duration::from_secs(120)).await.map_err(|e| format!("chord wait: {e}"))?;
    let elapsed = start.elapsed();
    let result: Option<i64> = report.result.as_deref().and_then(|r| serde_json::from_slice(r).ok());
    if report.state != WorkflowState::Succeeded || result != Some(expected) {
        return Err(format!("chord {id}: {} with {result:?}, expected {expected}", report.state.as_str()));
    }
    Ok(elapsed)
}

/// Runs the workflow row on a control plane of its own (`concurrency` threads).
pub(crate) fn workflow_row(
    binary: &Path,
    plugin: &Path,
    concurrency: usize,
    in_flight: usize,
    runtime: &Runtime,
    problems: &mut Vec<String>,
) -> Result<WorkflowRow, String> {
    println!("workflow: a chord of {MEMBERS} add + sum against {MEMBERS} pipelined add ({in_flight} in flight), {ROUNDS} rounds each");
    let extra: [OsString; 2] = ["--result-cache-size".into(), "100000".into()];
    let mut control_plane = start_control_plane(binary, "workflow control plane", Some(plugin), concurrency, &extra)?;
    let client = control_plane.client()?;
    let independent = |round: u64| {
        let start = Instant::now();
        let phase = runtime.block_on(add_pipelined(&client, in_flight, Budget::requests(MEMBERS)));
        let elapsed = start.elapsed();
        if phase.wrong + phase.missing > 0 {
            problems_in(round, &phase)
        } else {
            Ok(elapsed)
        }
    };
    // Warm-up, unmeasured.
    independent(0)?;
    runtime.block_on(chord(&client, 0))?;
    let (mut chords, mut calls) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS as u64 {
        calls.push(independent(round)?);
        chords.push(runtime.block_on(chord(&client, round))?);
    }
    if let Err(problem) = control_plane.stop() {
        problems.push(problem);
    }
    Ok(WorkflowRow { chord: median(chords), independent: median(calls) })
}

fn problems_in(round: u64, phase: &Phase) -> Result<Duration, String> {
    Err(format!(
        "workflow row, round {round}: {} wrong and {} missing add replies (first: {})",
        phase.wrong,
        phase.missing,
        phase.first_problem.as_deref().unwrap_or("?")
    ))
}

/// Prints the row and returns its target.
pub(crate) fn report(row: &WorkflowRow) -> OwnedTarget {
    println!(
        "  {:<22} chord of {MEMBERS} add + sum: {:.1} ms (median); {MEMBERS} pipelined add: {:.1} ms; ratio {:.2}",
        "workflow-chord",
        row.chord.as_secs_f64() * 1000.0,
        row.independent.as_secs_f64() * 1000.0,
        row.ratio()
    );
    (format!("chord of {MEMBERS} / {MEMBERS} pipelined add ≤ 1.5×"), Some(row.ratio()), 1.5, false, "×")
}

/// `--workflow-only`: this row alone, on its own.
pub(crate) fn run(settings: &Settings) -> Result<bool, String> {
    let (binary, plugin) = locate_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    let mut problems = Vec::new();
    let row = workflow_row(&binary, &plugin, settings.concurrency, settings.in_flight, &runtime, &mut problems)?;
    println!();
    let target = report(&row);
    println!("targets:");
    print_targets(&[(target.0.as_str(), target.1, target.2, target.3, target.4)]);
    for problem in &problems {
        println!("{problem}");
    }
    Ok(problems.is_empty())
}
