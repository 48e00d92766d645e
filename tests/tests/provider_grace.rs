//! The grace for absent providers: a task whose only provider is away for
//! a moment (not registered again yet after a durable restart, restarting
//! after `kill -9`, drained with SIGTERM) waits, queued, for one to come
//! back, and fails only when none has within `--provider-grace`.
//!
//! * a retry and countdowns due while a durable control plane is down, or
//!   just after its restart before its subworker is back, all succeed;
//! * a retry and a countdown due while the only subworker is killed and
//!   back 3 s later both succeed;
//! * the last provider drained with 98 tasks handed back: all succeed on
//!   the next provider; with none coming, they fail after the grace,
//!   saying so.
//!
//! Every test starts its own processes on ports of its own.

use std::time::{Duration, Instant};

use fastworker::protocol::RetryPolicy;
use fastworker::{Client, SubmitOptions, TaskId, TaskReport, TaskState};
use fastworker_tests::{final_reports, free_base_port, runtime, wait_until, Process};

/// Asserts that every report succeeded, listing those that did not.
fn all_succeeded(reports: &[TaskReport], what: &str) {
    let others: Vec<String> = reports
        .iter()
        .filter(|r| r.state != TaskState::Succeeded)
        .map(|r| format!("{} {:?} on '{}': {:?}", r.task_name, r.state, r.worker, r.error.as_ref().map(|e| &e.message)))
        .collect();
    assert!(others.is_empty(), "{what}: {others:#?}");
}

/// How many of `ids` are in `state` now.
fn count_in(rt: &tokio::runtime::Runtime, client: &Client, ids: &[TaskId], state: TaskState) -> usize {
    ids.iter().filter_map(|id| rt.block_on(client.status(*id)).ok()).filter(|r| r.state == state).count()
}

/// `flaky(1)` (its first run fails) with 3 retries `delay` apart.
fn flaky(rt: &tokio::runtime::Runtime, client: &Client, delay: Duration) -> TaskId {
    let delay_ms = delay.as_millis() as u64;
    let retry = RetryPolicy { max_retries: 3, delay_ms, factor: 1.0, max_delay_ms: delay_ms };
    rt.block_on(client.delay("flaky", (1,), SubmitOptions { retry: Some(retry), ..Default::default() })).unwrap()
}

/// `add(a, b)` to run `countdown` from now.
fn add_later(rt: &tokio::runtime::Runtime, client: &Client, a: i64, countdown: Duration) -> TaskId {
    let options = SubmitOptions { countdown: Some(countdown), ..Default::default() };
    rt.block_on(client.delay("add", (a, 1), options)).unwrap()
}

/// Waits until `task_id` is `state`.
fn wait_for_state(rt: &tokio::runtime::Runtime, client: &Client, task_id: TaskId, state: TaskState) {
    let mut last = None;
    let reached = wait_until(Duration::from_secs(15), || {
        last = rt.block_on(client.status(task_id)).ok();
        last.as_ref().is_some_and(|r| r.state == state)
    });
    assert!(reached, "task {task_id} not {state:?}: {last:?}");
}

/// Starts a control plane with no plugin at `address`, waiting until it answers.
fn control_plane_at(address: &str, extra: &[&str]) -> Process {
    let mut args: Vec<String> = ["control-plane", "--no-gui", "--no-discovery", "--base-address", address]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut process = Process::spawn(&args, &[], address.to_string());
    if let Err(log) = process.wait_ready(Duration::from_secs(20)) {
        panic!("control plane did not start:\n{log}");
    }
    process
}

#[test]
fn a_durable_restart_fails_no_retry_or_countdown_that_falls_due_before_the_subworker_is_back() {
    let dir = std::env::temp_dir().join(format!("fastworker-grace-{}", TaskId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let state_dir = dir.display().to_string();
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    let flags = ["--state-dir", state_dir.as_str()];
    let mut cp = control_plane_at(&address, &flags);
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--heartbeat-interval", "0.5"]);
    let rt = runtime();
    let client = cp.client();
    // Due during the outage: a retry 1 s after its failed run, a countdown
    // of 1 s. Due just after the restart, before sw1 is back: a retry and
    // a countdown of about 2.6 s.
    let during = flaky(&rt, &client, Duration::from_secs(1));
    let just_after = flaky(&rt, &client, Duration::from_millis(2600));
    wait_for_state(&rt, &client, during, TaskState::Retrying);
    wait_for_state(&rt, &client, just_after, TaskState::Retrying);
    let counted =
        [add_later(&rt, &client, 1, Duration::from_secs(1)), add_later(&rt, &client, 2, Duration::from_millis(2600))];
    // Killed 0.3 s later, restarted 2 s after that.
    std::thread::sleep(Duration::from_millis(300));
    cp.signal("KILL");
    cp.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    let cp = control_plane_at(&address, &flags);
    let client = cp.client();
    let ids = [during, just_after, counted[0], counted[1]];
    let reports = final_reports(&rt, &client, &ids, Duration::from_secs(30)).expect("all four end");
    all_succeeded(&reports, "every task succeeds once sw1 is back");
    assert_eq!((reports[0].attempts, reports[1].attempts), (2, 2), "{reports:#?}");
    for report in &reports {
        assert_eq!(report.worker, "sw1", "{report:?}");
    }
    eprintln!("4 of 4 succeeded {:.1} s after the restart", restarted.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_retry_and_a_countdown_due_while_the_only_provider_restarts_succeed_when_it_is_back() {
    let cp = Process::control_plane(&[], &[]);
    let mut sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--heartbeat-interval", "0.5"]);
    let rt = runtime();
    let client = cp.client();
    let retried = flaky(&rt, &client, Duration::from_secs(1));
    wait_for_state(&rt, &client, retried, TaskState::Retrying);
    let counted = add_later(&rt, &client, 1, Duration::from_secs(1));
    sw1.signal("KILL");
    sw1.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    // Both fall due while nobody provides them: they wait, queued.
    let ids = [retried, counted];
    let waiting = wait_until(Duration::from_secs(10), || count_in(&rt, &client, &ids, TaskState::Queued) == 2);
    assert!(waiting, "both wait for a provider: {:?}", ids.map(|id| rt.block_on(client.status(id))));
    // Back 3 s after the kill.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed()));
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--heartbeat-interval", "0.5"]);
    let reports = final_reports(&rt, &client, &ids, Duration::from_secs(20)).expect("both end");
    all_succeeded(&reports, "both succeed on the restarted sw1");
    assert_eq!(reports[0].result.as_deref(), Some(&b"2"[..]), "flaky's second run: {:?}", reports[0]);
    eprintln!("2 of 2 succeeded {:.1} s after the kill", killed.elapsed().as_secs_f64());
}

#[test]
fn the_last_provider_drained_hands_back_tasks_that_wait_for_the_next_or_fail_after_the_grace() {
    let cp = Process::control_plane(&[], &["--provider-grace", "10"]);
    let mut sw1 = Process::subworker(
        &cp,
        "sw1",
        &["example-tasks"],
        &["--concurrency", "2", "--prefetch", "98", "--shutdown-timeout", "10"],
    );
    let rt = runtime();
    let client = cp.client();
    let ids: Vec<TaskId> =
        (0..100).map(|_| rt.block_on(client.delay("sleep_ms", (2000,), SubmitOptions::default())).unwrap()).collect();
    assert!(
        wait_until(Duration::from_secs(20), || cp.worker("sw1").is_some_and(|w| w.dispatched == 100)),
        "sw1 holds 100: {:?}",
        cp.workers()
    );
    sw1.signal("TERM");
    assert_eq!(sw1.wait_exit(Duration::from_secs(15)), Some(0), "{}", sw1.log());
    let gone = Instant::now();
    // sw1 is gone and nobody provides sleep_ms: what it handed back waits.
    let queued = count_in(&rt, &client, &ids, TaskState::Queued);
    let succeeded = count_in(&rt, &client, &ids, TaskState::Succeeded);
    assert_eq!(queued + succeeded, 100, "handed back and waiting, not failed\n{}", cp.log());
    assert!(queued >= 90, "sw1 ran only what it had started: {succeeded}");
    let mut sw2 = Process::subworker(
        &cp,
        "sw2",
        &["example-tasks"],
        &["--concurrency", "50", "--prefetch", "0", "--shutdown-timeout", "10"],
    );
    let reports = final_reports(&rt, &client, &ids, Duration::from_secs(40)).expect("all 100 end");
    all_succeeded(&reports, "every task succeeds once a provider is back");
    assert_eq!(reports.iter().filter(|r| r.worker == "sw2").count(), queued);
    eprintln!("{queued} handed back succeeded on sw2, which came {:.1} s after sw1 left", gone.elapsed().as_secs_f64());

    // Now the last provider drains with 10 tasks queued at the control
    // plane and none comes: they fail after the grace.
    let more: Vec<TaskId> =
        (0..60).map(|_| rt.block_on(client.delay("sleep_ms", (3000,), SubmitOptions::default())).unwrap()).collect();
    assert!(
        wait_until(Duration::from_secs(20), || cp.worker("sw2").is_some_and(|w| w.dispatched >= queued as u64 + 50)),
        "sw2 runs 50: {:?}",
        cp.workers()
    );
    sw2.signal("TERM");
    assert_eq!(sw2.wait_exit(Duration::from_secs(20)), Some(0), "{}", sw2.log());
    let left = Instant::now();
    let reports = final_reports(&rt, &client, &more, Duration::from_secs(40)).expect("all 60 end");
    let waited = left.elapsed();
    let failed: Vec<&TaskReport> = reports.iter().filter(|r| r.state == TaskState::Failed).collect();
    assert_eq!(failed.len() + reports.iter().filter(|r| r.state == TaskState::Succeeded).count(), 60);
    // The 10 never sent, and any run sent to sw2 that had not started
    // there when it stopped (handed back uncounted, on a loaded machine).
    assert!(failed.len() >= 10, "the tasks not started fail: {reports:#?}");
    for report in &failed {
        assert_eq!((report.started_ms, report.attempts), (None, 0), "a failed task never started: {report:?}");
        let message = &report.error.as_ref().unwrap().message;
        assert!(message.contains("no worker provides task 'sleep_ms' any more"), "{message}");
        assert!(message.contains("none came back within 10 s (--provider-grace)"), "{message}");
    }
    assert!(waited >= Duration::from_secs(9), "not before the grace: they failed {waited:?} after sw2 left");
    eprintln!("{} with no provider failed {:.1} s after the last one left", failed.len(), waited.as_secs_f64());
}
