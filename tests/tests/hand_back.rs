//! Runs sent ahead to a busy worker are asked back for an idle one
//! (docs/isolation.md, "How many processes, how many runs each"): a run
//! sent ahead to a worker process busy with a long run does not wait there
//! while another process idles.

use std::time::Duration;

use fastworker::{Client, SubmitOptions, TaskId, TaskState};
use fastworker_tests::{runtime, wait_until, Process};

/// Submits a `sleep_ms(ms)` run and waits until it runs; returns it and
/// the worker process running it.
fn running_sleeper(rt: &tokio::runtime::Runtime, client: &Client, ms: u64) -> (TaskId, String) {
    let id = rt.block_on(client.delay("sleep_ms", (ms,), SubmitOptions::default())).unwrap();
    let mut worker = String::new();
    assert!(wait_until(Duration::from_secs(30), || {
        let report = rt.block_on(client.status(id)).unwrap();
        worker = report.worker.clone();
        report.state == TaskState::Running
    }));
    (id, worker)
}

/// The runs a worker holds (running and sent ahead), by the control plane.
fn load(cp: &Process, worker_id: &str) -> u32 {
    let status = cp.workers().expect("workers");
    status.subworkers.iter().find(|w| w.worker_id == worker_id).map_or(0, |w| w.load)
}

#[test]
fn runs_sent_ahead_behind_a_long_run_are_asked_back_by_an_idle_worker_process() {
    let flags = ["--concurrency", "2", "--prefetch-per-process", "4"];
    let cp = Process::control_plane(&["example-tasks"], &flags);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(30), || cp.workers().is_ok_and(|s| s.active_subworkers == 2)),
        "both worker processes serve"
    );
    // One process busy for 10 s, the other for 1.5 s: the runs that follow
    // are spread over both, some sent ahead behind the long run.
    let (long, long_worker) = running_sleeper(&rt, &client, 10_000);
    let (_short, short_worker) = running_sleeper(&rt, &client, 1_500);
    assert_ne!(long_worker, short_worker, "the two sleepers run in two processes");
    let echoes: Vec<TaskId> = (0..8)
        .map(|n| rt.block_on(client.delay("echo", (format!("{n}"),), SubmitOptions::default())).unwrap())
        .collect();
    assert!(load(&cp, &long_worker) > 1, "runs were sent ahead behind the long run: load {}", load(&cp, &long_worker));

    // Once the short run ends, its process takes every echo, those sent
    // ahead behind the long run too: all end while the long run still runs.
    let started = std::time::Instant::now();
    for id in &echoes {
        let report = rt.block_on(client.wait(*id, Duration::from_secs(30))).unwrap();
        assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
        assert_eq!(report.worker, short_worker, "run by the idle process: {report:?}");
        assert_eq!(report.attempts, 1, "a run handed back is not counted: {report:?}");
    }
    eprintln!("the echoes ended {:?} after their submission", started.elapsed());
    let still = rt.block_on(client.status(long)).unwrap();
    assert_eq!(still.state, TaskState::Running, "the echoes ended before the long run: {still:?}");
    // Its own count of what it holds comes with its next heartbeat.
    assert!(
        wait_until(Duration::from_secs(5), || load(&cp, &long_worker) == 1),
        "nothing is left sent ahead behind the long run: load {}",
        load(&cp, &long_worker)
    );
}
