//! Periodic tasks declared in plugins: run counts and spacing, skipping a
//! run while the last is still going, schedules from a subworker's plugin,
//! pause and resume, and a malformed schedule refused at load.

use std::time::{Duration, Instant};

use fastworker::protocol::ScheduleStatus;
use fastworker::{Client, TaskState};
use fastworker_tests::{plugin, run_cli, runtime, stderr, stdout, Process};

/// The record of `task`'s schedule.
async fn schedule(client: &Client, task: &str) -> ScheduleStatus {
    let statuses = client.schedules().await.expect("schedules answer");
    statuses.into_iter().find(|s| s.task_name == task).unwrap_or_else(|| panic!("no schedule for '{task}'"))
}

/// Polls `task`'s schedule until `done` holds, collecting each new last-run time.
async fn watch(client: &Client, task: &str, limit: Duration, done: impl Fn(&ScheduleStatus) -> bool) -> Vec<u64> {
    let deadline = Instant::now() + limit;
    let mut starts = Vec::new();
    loop {
        let status = schedule(client, task).await;
        if let Some(at) = status.last_run_ms {
            if starts.last() != Some(&at) {
                starts.push(at);
            }
        }
        if done(&status) {
            return starts;
        }
        assert!(Instant::now() < deadline, "'{task}' did not get there within {limit:?}: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The test plugin's schedules run every 200 or 300 ms, below the default
/// `--min-schedule-period` of 1 s.
const FAST_SCHEDULES: &[&str] = &["--min-schedule-period", "0.1"];

#[test]
fn an_interval_task_runs_its_declared_number_of_times_at_its_spacing() {
    let cp = Process::control_plane(&["periodic-tasks"], FAST_SCHEDULES);
    let client = cp.client();
    runtime().block_on(async {
        let starts = watch(&client, "pulse", Duration::from_secs(5), |s| s.runs == 3).await;
        assert_eq!(starts.len(), 3, "three runs seen: {starts:?}");
        for pair in starts.windows(2) {
            let gap = pair[1] - pair[0];
            assert!((280..=700).contains(&gap), "runs 300 ms apart, got {gap} ms: {starts:?}");
        }
        // Each run is an ordinary task with its own id and cached result.
        let last = schedule(&client, "pulse").await.last_task_id.expect("a last run");
        let report = client.wait(last, Duration::from_secs(2)).await.unwrap();
        assert_eq!((report.state, report.result.as_deref()), (TaskState::Succeeded, Some(&b"7"[..])));
        // And no fourth.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let status = schedule(&client, "pulse").await;
        assert_eq!((status.runs, status.next_ms), (3, None), "{status:?}");
        assert_eq!(status.last_outcome.as_deref(), Some("succeeded"));
    });
}

#[test]
fn a_run_due_while_the_last_is_still_going_is_skipped_and_counted() {
    let cp = Process::control_plane(&["periodic-tasks"], FAST_SCHEDULES);
    let client = cp.client();
    runtime().block_on(async {
        // Due every 200 ms, takes 500 ms: between two runs, about two are skipped.
        watch(&client, "slow_pulse", Duration::from_secs(5), |s| s.runs == 3).await;
        let status = schedule(&client, "slow_pulse").await;
        assert!(status.skipped >= 2, "runs due while one was going must be skipped: {status:?}");
    });
}

#[test]
fn a_schedule_declared_in_a_subworker_plugin_runs_on_that_subworker() {
    let cp = Process::control_plane(&[], FAST_SCHEDULES);
    let _sw = Process::subworker(&cp, "sw1", &["periodic-tasks"], &["--concurrency", "2"]);
    let client = cp.client();
    runtime().block_on(async {
        watch(&client, "pulse", Duration::from_secs(5), |s| s.runs == 3).await;
        let last = schedule(&client, "pulse").await.last_task_id.unwrap();
        let report = client.wait(last, Duration::from_secs(2)).await.unwrap();
        assert_eq!((report.state, report.worker.as_str()), (TaskState::Succeeded, "sw1"), "{report:?}");
    });
}

#[test]
fn a_schedule_paused_from_the_command_line_stops_until_resumed() {
    let cp = Process::control_plane(&["periodic-tasks"], FAST_SCHEDULES);
    let client = cp.client();
    let schedules = |flag: &str| {
        let output = run_cli(&["schedules", flag, "steady", "--address", &cp.address]);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output)
    };
    runtime().block_on(watch(&client, "steady", Duration::from_secs(5), |s| s.runs >= 2));
    let listing = schedules("--pause");
    assert!(listing.contains(r#""paused": true"#), "{listing}");
    let paused_at = runtime().block_on(schedule(&client, "steady")).runs;
    std::thread::sleep(Duration::from_millis(700));
    let still = runtime().block_on(schedule(&client, "steady"));
    assert_eq!(still.runs, paused_at, "no runs while paused: {still:?}");
    assert_eq!(still.next_ms, None);
    schedules("--resume");
    runtime().block_on(watch(&client, "steady", Duration::from_secs(5), |s| s.runs >= paused_at + 2));

    let output = run_cli(&["schedules", "--pause", "no_such_task", "--address", &cp.address]);
    assert_eq!(output.status.code(), Some(1), "an unknown schedule is refused: {}", stderr(&output));
}

#[test]
fn a_malformed_schedule_refuses_the_plugin_at_load() {
    let path = plugin("bad-schedule").display().to_string();
    for command in [vec!["list", "--task-modules", &path], vec!["control-plane", "--no-gui", "--task-modules", &path]] {
        let output = run_cli(&command);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {}", stderr(&output));
        let message = stderr(&output);
        assert!(message.contains("task 'never'") && message.contains("cron expression '61 * * * *'"), "{message}");
    }
    let listing = run_cli(&["list", "--periodic", "--task-modules", &plugin("example-tasks").display().to_string()]);
    let listing = stdout(&listing);
    assert!(
        listing.contains("tick") && listing.contains("every 30s") && listing.contains("cron '0 * * * *'"),
        "{listing}"
    );
}

#[test]
fn a_schedule_more_frequent_than_the_limit_stops_the_start_up() {
    let path = plugin("periodic-tasks").display().to_string();
    let output = run_cli(&["control-plane", "--no-gui", "--no-discovery", "--task-modules", &path]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("--min-schedule-period") && message.contains("every"), "{message}");
}
