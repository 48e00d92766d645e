//! The batch row: `--batch-tasks` (default 100 000) `noop` tasks submitted
//! in batches of [`BATCH`] ([`fastworker::Client::submit_batch`], a few
//! batches in flight) to a control plane running them itself, timed from
//! the first submission until the control plane counts every one finished.
//!
//! The end is read from the control plane's own counters: its dashboard's
//! `/metrics` (`fastworker_tasks_completed_total` and `_failed_total` of
//! `noop`), polled every 2 ms, so that the measurement adds no request per
//! task. Afterwards, untimed, every task's report is fetched and checked:
//! succeeded, with a `null` result (the control plane caches them all).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::client::BatchTask;
use fastworker::{Client, SubmitOptions, TaskId, TaskState};
use tokio::runtime::Runtime;

use crate::phase::Phase;
use crate::processes::{serving, FastworkerProcess};
use crate::setup::free_port;
use crate::REQUEST_TIMEOUT;

/// Tasks per batch request.
const BATCH: usize = 1000;
/// Batch requests in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;
/// Longest the tasks may make no progress before the rest count as missing.
const STALL: Duration = Duration::from_secs(30);

/// What the batch row measured.
pub(crate) struct BatchRow {
    pub(crate) tasks: u64,
    /// From the first submission until the last batch was accepted.
    pub(crate) submitted: Duration,
    /// From the first submission until every task was counted finished.
    pub(crate) finished: Duration,
    /// Reports checked afterwards: right (succeeded, `null`), wrong, missing.
    pub(crate) check: Phase,
}

impl BatchRow {
    /// Tasks submitted and run per second, end to end.
    pub(crate) fn rate(&self) -> f64 {
        self.tasks as f64 / self.finished.as_secs_f64()
    }
}

/// Runs the batch row on a control plane of its own (`concurrency` threads).
pub(crate) fn batch_row(
    binary: &Path,
    plugin: &Path,
    concurrency: usize,
    tasks: u64,
    runtime: &Runtime,
    problems: &mut Vec<String>,
) -> Result<BatchRow, String> {
    let gui_port = free_port()?;
    let mut args: Vec<OsString> = vec![
        "control-plane".into(),
        "--concurrency".into(),
        concurrency.to_string().into(),
        "--task-modules".into(),
        plugin.into(),
        "--in-process".into(),
        "--gui-port".into(),
        gui_port.to_string().into(),
        "--result-cache-size".into(),
        tasks.max(10_000).to_string().into(),
    ];
    if tasks > 100_000 {
        args.extend(["--max-queued-tasks".into(), tasks.to_string().into()]);
    }
    println!("batch-{tasks}: control-plane --concurrency {concurrency}, noop in batches of {BATCH}, {BATCHES_IN_FLIGHT} in flight");
    let mut control_plane = FastworkerProcess::start(binary, "batch control plane", &args, serving)?;
    let client = control_plane.client()?;
    // Warm-up: one batch, run to the end, which also proves the counters are read.
    let warm = runtime.block_on(submit_all(&client, BATCH as u64))?;
    let before = wait_finished(gui_port, warm.len() as u64, Instant::now())?;
    let start = Instant::now();
    let ids = runtime.block_on(submit_all(&client, tasks))?;
    let submitted = start.elapsed();
    let counted = wait_finished(gui_port, before + ids.len() as u64, start);
    let finished = start.elapsed();
    let mut check = runtime.block_on(check_reports(&client, &ids));
    check.missing += tasks - ids.len() as u64;
    if let Err(problem) = counted {
        check.problem(false, || problem);
    }
    if let Err(problem) = control_plane.stop() {
        problems.push(problem);
    }
    Ok(BatchRow { tasks, submitted, finished, check })
}

/// Submits `tasks` `noop` tasks in batches; the ids of those accepted, in order.
async fn submit_all(client: &Client, tasks: u64) -> Result<Vec<TaskId>, String> {
    let batches = tasks.div_ceil(BATCH as u64);
    let next = Arc::new(AtomicU64::new(0));
    let submitters: Vec<_> = (0..BATCHES_IN_FLIGHT)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= batches {
                        return Ok::<_, String>(accepted);
                    }
                    let size = (tasks - index * BATCH as u64).min(BATCH as u64) as usize;
                    let batch: Result<Vec<BatchTask>, _> =
                        (0..size).map(|_| BatchTask::new("noop", [(); 0], SubmitOptions::default())).collect();
                    let batch = batch.map_err(|e| e.to_string())?;
                    let outcomes = client.submit_batch(batch).await.map_err(|e| format!("batch {index}: {e}"))?;
                    for outcome in outcomes {
                        accepted.push((index, outcome.map_err(|e| format!("batch {index}: refused: {}", e.message))?));
                    }
                }
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(tasks as usize);
    for submitter in submitters {
        ids.extend(submitter.await.map_err(|e| format!("a submitter failed: {e}"))??);
    }
    ids.sort_by_key(|(index, _)| *index);
    Ok(ids.into_iter().map(|(_, id)| id).collect())
}

/// Polls the control plane's `/metrics` until `noop` counts `total`
/// finished tasks (succeeded or failed); returns the count. Fails if the
/// count stops moving for [`STALL`].
fn wait_finished(gui_port: u16, total: u64, since: Instant) -> Result<u64, String> {
    let (mut last, mut moved) = (0, Instant::now());
    loop {
        let count = finished_noops(gui_port)?;
        if count >= total {
            return Ok(count);
        }
        if count != last {
            (last, moved) = (count, Instant::now());
        } else if moved.elapsed() > STALL {
            return Err(format!(
                "{count} of {total} noop tasks finished, none more in {STALL:?} ({:.1} s in)",
                since.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The finished `noop` tasks (completed + failed) in the dashboard's `/metrics`.
fn finished_noops(gui_port: u16) -> Result<u64, String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gui_port))
        .map_err(|e| format!("connecting to the dashboard on port {gui_port}: {e}"))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{gui_port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("asking for /metrics: {e}"))?;
    let mut response = String::new();
    // Bounded: the control plane's metrics are a few kilobytes.
    stream.take(1 << 22).read_to_string(&mut response).map_err(|e| format!("reading /metrics: {e}"))?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("/metrics answered {}", response.lines().next().unwrap_or("nothing")));
    }
    let prefixes = ["fastworker_tasks_completed_total{task=\"noop\"", "fastworker_tasks_failed_total{task=\"noop\""];
    Ok(response
        .lines()
        .filter(|line| prefixes.iter().any(|prefix| line.starts_with(prefix)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// Fetches every task's report ([`CALLS_IN_FLIGHT`] at once) and checks it:
/// succeeded with a `null` result.
async fn check_reports(client: &Client, ids: &[TaskId]) -> Phase {
    const CALLS_IN_FLIGHT: usize = 64;
    let ids: Arc<[TaskId]> = ids.into();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let checkers: Vec<_> = (0..CALLS_IN_FLIGHT)
        .map(|_| {
            let (client, ids, next) = (client.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                let mut phase = Phase::default();
                while let Some(&id) = ids.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                    let sent = Instant::now();
                    match client.status(id).await {
                        Ok(report)
                            if report.state == TaskState::Succeeded && report.result.as_deref() == Some(b"null") =>
                        {
                            phase.latencies.push(sent.elapsed())
                        }
                        Ok(report) => {
                            phase.problem(true, || format!("task {id}: {:?}, {:?}", report.state, report.error))
                        }
                        Err(error) => phase.problem(false, || format!("task {id}: {error}")),
                    }
                }
                phase
            })
        })
        .collect();
    let mut total = Phase::default();
    for checker in checkers {
        match checker.await {
            Ok(part) => total.absorb(part),
            Err(error) => total.problem(false, || format!("a checker task failed: {error}")),
        }
    }
    total.finish(start.elapsed())
}
