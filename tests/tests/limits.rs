//! Cluster-wide task limits (docs/limits.md): a rate and a concurrency per
//! task name, declared in the SDK, overridden by flag and at run time,
//! enforced by the control plane across its own threads and its
//! subworkers, and shown on `/metrics` and the dashboard. Every figure is
//! taken from the tasks' own start and end times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::auth::KeyRing;
use fastworker::client::BatchTask;
use fastworker::protocol::{ErrorKind, TaskReport, TaskState};
use fastworker::task_limits::{Rate, TaskLimit};
use fastworker::{Client, ClientError, Priority, SubmitOptions, TaskId};
use fastworker_tests::browser::{chromium_or_opted_out, Browser};
use fastworker_tests::http::{get, request_with_body};
use fastworker_tests::{plugin, run_cli, runtime, stderr, stdout, Process};
use serde_json::Value;

/// Queues `count` runs of `task_name` with `args` in one batch.
async fn queue(client: &Client, task_name: &str, args: Value, count: usize, options: SubmitOptions) -> Vec<TaskId> {
    let batch =
        (0..count).map(|_| BatchTask::new(task_name, &args, options.clone()).unwrap()).collect::<Vec<BatchTask>>();
    client.submit_batch(batch).await.unwrap().into_iter().map(|outcome| outcome.unwrap()).collect()
}

/// Waits for every task and returns their reports, all succeeded.
async fn finish(client: &Client, ids: &[TaskId], limit: Duration) -> Vec<TaskReport> {
    let mut reports = Vec::new();
    for id in ids {
        let report = client.wait(*id, limit).await.unwrap();
        assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
        reports.push(report);
    }
    reports
}

/// The (start, end) a task returned, in ms since the epoch.
fn span(report: &TaskReport) -> (u64, u64) {
    serde_json::from_slice(report.result.as_deref().unwrap()).unwrap()
}

/// The most spans that overlap at any instant (an end at the same
/// millisecond as a start does not overlap it).
fn most_at_once(spans: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = spans.iter().flat_map(|&(start, end)| [(start, 1), (end, -1)]).collect();
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

fn limits_json(cp: &Process) -> Vec<Value> {
    let output = run_cli(&["limits", "list", "--address", &cp.address]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_str::<Value>(&stdout(&output)).unwrap().as_array().unwrap().clone()
}

fn row<'a>(rows: &'a [Value], task: &str) -> Option<&'a Value> {
    rows.iter().find(|row| row["task"] == task)
}

#[test]
fn a_declared_rate_of_20_per_second_holds_within_10_percent_across_two_subworkers() {
    // The control plane runs nothing itself: every run goes to a subworker.
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "0"]);
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "4"]);
    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &["--concurrency", "4"]);
    let client = cp.client();
    let rt = runtime();
    let reports = rt.block_on(async {
        let ids = queue(&client, "limited_rate", serde_json::json!([]), 140, SubmitOptions::default()).await;
        finish(&client, &ids, Duration::from_secs(30)).await
    });
    let mut starts: Vec<u64> =
        reports.iter().map(|r| serde_json::from_slice::<u64>(r.result.as_deref().unwrap()).unwrap()).collect();
    starts.sort_unstable();
    let workers: std::collections::BTreeSet<&str> = reports.iter().map(|r| r.worker.as_str()).collect();
    assert_eq!(workers.into_iter().collect::<Vec<_>>(), ["sw1", "sw2"], "both subworkers ran them");
    // The burst (one second's worth, 20) may start at once; after it, 20 a second.
    let steady = &starts[20..];
    let seconds = (steady[steady.len() - 1] - steady[0]) as f64 / 1000.0;
    let rate = (steady.len() - 1) as f64 / seconds;
    eprintln!("steady rate: {rate:.2}/s over {seconds:.2} s ({:.3} of 20/s)", rate / 20.0);
    assert!(seconds >= 5.0, "the steady part lasts {seconds} s");
    assert!((18.0..=22.0).contains(&rate), "{rate:.2} starts a second, not 20 within 10 %");
    // No second-long window holds more than the burst plus a second's worth.
    let most_in_a_second = starts.iter().map(|&s| starts.iter().filter(|&&t| t >= s && t < s + 1000).count()).max();
    assert!(most_in_a_second.unwrap() <= 41, "{most_in_a_second:?} starts within one second");
}

#[test]
fn max_running_2_is_never_exceeded_across_the_control_plane_and_two_subworkers() {
    // The control plane's own threads, beside two subworkers.
    let cp = Process::control_plane_with_gui(&["example-tasks"], &["--concurrency", "4", "--in-process"], &[]);
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "4"]);
    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &["--concurrency", "4"]);
    let client = cp.client();
    let rt = runtime();
    let started = Instant::now();
    let (reports, metrics) = rt.block_on(async {
        let ids = queue(&client, "limited_running", serde_json::json!([150]), 16, SubmitOptions::default()).await;
        // While they run: /metrics shows the limit at work (two running, the
        // rest held back), looked at until it does or the runs are over.
        let gui = cp.gui.clone().unwrap();
        let metrics = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let metrics = get(&format!("{gui}/metrics")).text();
                let at_work = metrics.contains("fastworker_task_limit_running{task=\"limited_running\"} 2");
                if at_work || Instant::now() >= deadline {
                    return metrics;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        (finish(&client, &ids, Duration::from_secs(30)).await, metrics)
    });
    let spans: Vec<(u64, u64)> = reports.iter().map(span).collect();
    let most = most_at_once(&spans);
    eprintln!("at most {most} at once; 16 runs of 150 ms took {:?}", started.elapsed());
    assert_eq!(most, 2, "never more than 2 at once, and the limit is used");
    let on_subworkers = reports.iter().filter(|r| r.worker.starts_with("sw")).count();
    assert_eq!(on_subworkers, 16, "the subworkers provide it, so they ran it");
    assert!(metrics.contains("fastworker_task_limit_max_running{task=\"limited_running\"} 2"), "{metrics}");
    assert!(metrics.contains("fastworker_task_limit_running{task=\"limited_running\"} 2"), "{metrics}");
    assert!(metrics.contains("fastworker_task_limit_rate{task=\"limited_rate\"} 20"), "{metrics}");
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fastworker_task_limit_held{task=\"limited_running\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(held >= 10, "runs held back now: {held}\n{metrics}");

    // On the control plane's own threads (no subworker provides it), too.
    let alone = Process::control_plane(&["example-tasks"], &["--concurrency", "6"]);
    let client = alone.client();
    let reports = rt.block_on(async {
        let ids = queue(&client, "limited_running", serde_json::json!([100]), 10, SubmitOptions::default()).await;
        finish(&client, &ids, Duration::from_secs(30)).await
    });
    assert_eq!(most_at_once(&reports.iter().map(span).collect::<Vec<_>>()), 2);
    let rows = limits_json(&alone);
    let limited = row(&rows, "limited_running").unwrap();
    assert_eq!((limited["running"].as_u64(), limited["held"].as_u64()), (Some(0), Some(0)), "{limited}");
    assert!(limited["held_total"].as_u64().unwrap() >= 8, "{limited}");
}

#[test]
fn a_limit_declared_by_a_subworkers_plugin_holds_on_a_control_plane_without_it() {
    // The control plane loads no plugin: `limited_running`'s `max_running = 2`
    // reaches it in the subworkers' registrations.
    let cp = Process::control_plane(&[], &["--concurrency", "0"]);
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "4"]);
    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &["--concurrency", "4"]);
    let client = cp.client();
    let reports = runtime().block_on(async {
        let ids = queue(&client, "limited_running", serde_json::json!([120]), 12, SubmitOptions::default()).await;
        finish(&client, &ids, Duration::from_secs(30)).await
    });
    let spans: Vec<(u64, u64)> = reports.iter().map(span).collect();
    assert_eq!(most_at_once(&spans), 2, "never more than 2 at once across both subworkers: {spans:?}");
    let workers: std::collections::BTreeSet<&str> = reports.iter().map(|r| r.worker.as_str()).collect();
    assert_eq!(workers.len(), 2, "both subworkers ran some: {workers:?}");
    let rows = limits_json(&cp);
    let limited = row(&rows, "limited_running").unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!((limited["source"].as_str(), limited["max_running"].as_u64()), (Some("declared"), Some(2)), "{limited}");
}

#[test]
fn a_held_back_task_blocks_no_unlimited_task_behind_it() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "4"]);
    let _sw = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "4"]);
    let client = cp.client();
    let rt = runtime();
    rt.block_on(async {
        // 40 runs of 300 ms, two at a time: six seconds of backlog.
        let ids = queue(&client, "limited_running", serde_json::json!([300]), 40, SubmitOptions::default()).await;
        let asked = Instant::now();
        let sum: i64 = client.call("add", (20, 22)).await.unwrap();
        let took = asked.elapsed();
        assert_eq!(sum, 42);
        eprintln!("an unlimited task behind 40 held-back ones took {took:?}");
        assert!(took < Duration::from_millis(500), "the unlimited task took {took:?}");
        let queued = client.status(*ids.last().unwrap()).await.unwrap();
        assert_eq!(queued.state, TaskState::Queued, "the backlog is still held back");
        for id in ids {
            client.cancel(id).await.ok();
        }
    });
    // The same on the control plane's own threads.
    let alone = Process::control_plane(&["example-tasks"], &["--concurrency", "4", "--in-process"]);
    let client = alone.client();
    rt.block_on(async {
        let ids = queue(&client, "limited_running", serde_json::json!([300]), 40, SubmitOptions::default()).await;
        let asked = Instant::now();
        let sum: i64 = client.call("add", (1, 2)).await.unwrap();
        assert_eq!(sum, 3);
        assert!(asked.elapsed() < Duration::from_millis(500), "the unlimited task took {:?}", asked.elapsed());
        // A held-back task can be cancelled: it never runs.
        let cancelled = client.cancel(*ids.last().unwrap()).await.unwrap();
        assert_eq!(cancelled.state, TaskState::Cancelled);
    });
}

#[test]
fn priorities_hold_among_held_back_tasks() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "0"]);
    let _sw = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "4"]);
    let client = cp.client();
    let rt = runtime();
    let order = rt.block_on(async {
        // Two long runs take both running places.
        let blockers = queue(&client, "limited_running", serde_json::json!([400]), 2, SubmitOptions::default()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        for id in &blockers {
            while client.status(*id).await.unwrap().state != TaskState::Running {
                assert!(Instant::now() < deadline, "the blockers never ran");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut waiting = Vec::new();
        for priority in [Priority::Low, Priority::Normal, Priority::High, Priority::Critical] {
            let options = SubmitOptions { priority: Some(priority), ..Default::default() };
            for id in queue(&client, "limited_running", serde_json::json!([30]), 2, options).await {
                waiting.push((priority, id));
            }
        }
        finish(&client, &blockers, Duration::from_secs(10)).await;
        let mut started = Vec::new();
        for (priority, id) in waiting {
            let report = &finish(&client, &[id], Duration::from_secs(10)).await[0];
            started.push((span(report).0, priority));
        }
        started.sort();
        started.into_iter().map(|(_, priority)| priority).collect::<Vec<Priority>>()
    });
    // Two start at once each time: compare by pairs.
    let pairs: Vec<Vec<Priority>> = order.chunks(2).map(|pair| pair.to_vec()).collect();
    for (pair, expected) in pairs.iter().zip([Priority::Critical, Priority::High, Priority::Normal, Priority::Low]) {
        assert!(pair.iter().all(|p| *p == expected), "start order {order:?}");
    }
}

#[test]
fn a_run_time_override_from_the_cli_changes_what_runs_at_once() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "4"]);
    let client = cp.client();
    let rt = runtime();
    let at_once = |task: &str, count: usize| {
        let reports = rt.block_on(async {
            let ids = queue(&client, task, serde_json::json!([150]), count, SubmitOptions::default()).await;
            finish(&client, &ids, Duration::from_secs(30)).await
        });
        most_at_once(&reports.iter().map(span).collect::<Vec<_>>())
    };
    assert_eq!(at_once("timed_sleep", 4), 4, "unlimited: all four at once");
    let set = run_cli(&["limits", "set", "timed_sleep", "max_running=1", "--address", &cp.address]);
    assert!(set.status.success(), "{}", stderr(&set));
    let rows = limits_json(&cp);
    let limited = row(&rows, "timed_sleep").unwrap();
    assert_eq!((limited["max_running"].as_u64(), limited["source"].as_str()), (Some(1), Some("run-time")), "{limited}");
    assert_eq!(at_once("timed_sleep", 4), 1, "one at a time once limited");
    // Lifting the declared limit of limited_running at run time.
    let lift = run_cli(&["limits", "set", "limited_running", "none", "--address", &cp.address]);
    assert!(lift.status.success(), "{}", stderr(&lift));
    assert_eq!(at_once("limited_running", 4), 4, "its declared limit is lifted");
    // Clearing: back to unlimited, and back to the declared 2.
    for task in ["timed_sleep", "limited_running"] {
        let clear = run_cli(&["limits", "clear", task, "--address", &cp.address]);
        assert!(clear.status.success(), "{}", stderr(&clear));
    }
    let rows = limits_json(&cp);
    assert!(row(&rows, "timed_sleep").is_none(), "{rows:?}");
    assert_eq!(row(&rows, "limited_running").unwrap()["source"], "declared");
    assert_eq!(at_once("timed_sleep", 3), 3);
    assert_eq!(at_once("limited_running", 4), 2);
    // A bad limit on the command line never reaches the control plane.
    let bad = run_cli(&["limits", "set", "timed_sleep", "rate=fast", "--address", &cp.address]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("N/s, N/m or N/h"), "{}", stderr(&bad));
}

#[test]
fn the_flag_overrides_declared_limits_and_bad_flags_stop_the_start() {
    let cp = Process::control_plane(
        &["example-tasks"],
        &["--concurrency", "4", "--task-limit", "timed_sleep=max_running:1", "--task-limit", "limited_running=none"],
    );
    let client = cp.client();
    let rt = runtime();
    for (task, expected) in [("timed_sleep", 1), ("limited_running", 3)] {
        let reports = rt.block_on(async {
            let ids = queue(&client, task, serde_json::json!([150]), 3, SubmitOptions::default()).await;
            finish(&client, &ids, Duration::from_secs(30)).await
        });
        assert_eq!(most_at_once(&reports.iter().map(span).collect::<Vec<_>>()), expected, "{task}");
    }
    let rows = limits_json(&cp);
    assert_eq!(row(&rows, "timed_sleep").unwrap()["source"], "flag");
    assert_eq!(row(&rows, "limited_running").unwrap()["max_running"], Value::Null);

    let example = plugin("example-tasks").display().to_string();
    let long_name = format!("{}=max_running:1", "x".repeat(200));
    for (flag, hint) in [
        ("add=rate:fast", "N/s, N/m or N/h"),
        ("add=rate:0/s", "N/s, N/m or N/h"),
        ("add=rate:2000000/s", "between one run an hour"),
        ("add=rate:1/d", "N/s, N/m or N/h"),
        ("add=rate:10/s,burst:0", "burst must be from 1"),
        ("add=burst:5", "a burst needs a rate"),
        ("add=max_running:0", "max_running must be from 1"),
        ("add=max_running:99999999999", "max_running must be from 1"),
        ("add=colour:red", "unknown limit part"),
        ("add", "TASK=LIMIT"),
        (long_name.as_str(), "1 to 128 bytes"),
    ] {
        let output = run_cli(&["control-plane", "--no-gui", "--task-modules", &example, "--task-limit", flag]);
        assert_eq!(output.status.code(), Some(2), "--task-limit {flag}: {}", stderr(&output));
        assert!(stderr(&output).contains(hint), "--task-limit {flag}: {}", stderr(&output));
    }
}

#[test]
fn hostile_limit_requests_on_the_wire_get_typed_errors() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    let refused = |result: Result<(), ClientError>| match result {
        Err(ClientError::Refused(error)) => (error.kind, error.message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let rate = |per_second: f64, burst: u32| TaskLimit { rate: Some(Rate { per_second, burst }), max_running: None };
    runtime().block_on(async {
        for (limit, hint) in [
            (rate(0.0, 1), "between one run an hour"),
            (rate(f64::NAN, 1), "between one run an hour"),
            (rate(f64::INFINITY, 1), "between one run an hour"),
            (rate(1e300, 1), "between one run an hour"),
            (rate(-5.0, 1), "between one run an hour"),
            (rate(10.0, 0), "burst must be from 1"),
            (rate(10.0, u32::MAX), "burst must be from 1"),
            (TaskLimit { rate: None, max_running: Some(0) }, "max_running must be from 1"),
            (TaskLimit { rate: None, max_running: Some(u32::MAX) }, "max_running must be from 1"),
        ] {
            let (kind, message) = refused(client.set_task_limit("add", Some(limit)).await);
            assert_eq!(kind, ErrorKind::BadTaskLimit, "{limit:?}: {message}");
            assert!(message.contains(hint), "{limit:?}: {message}");
        }
        let (kind, message) = refused(client.set_task_limit(&"n".repeat(100_000), None).await);
        assert_eq!(kind, ErrorKind::BadTaskLimit, "{message}");
        assert!(message.contains("1 to 128 bytes without spaces or control characters"), "{message}");
        let (kind, _) = refused(client.clear_task_limit("").await);
        assert_eq!(kind, ErrorKind::BadTaskLimit);
        // Only tasks a worker provides take a limit: junk names cannot fill the names' room.
        let (kind, message) = refused(client.set_task_limit("task-0", None).await);
        assert_eq!(kind, ErrorKind::BadTaskLimit, "{message}");
        assert!(message.contains("no plugin here and no live subworker provides task 'task-0'"), "{message}");
        // Nothing refused took effect: add still runs, unlimited.
        assert_eq!(client.call::<i64>("add", (1, 1)).await.unwrap(), 2);
        assert_eq!(client.task_limits().await.unwrap().iter().filter(|r| r.task_name == "add").count(), 0);
    });
}

#[test]
fn on_a_keyed_cluster_only_the_operator_changes_limits() {
    let dir = std::env::temp_dir().join(format!("fastworker-limit-keys-{}", TaskId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = |name: &str| dir.join(format!("{name}.key")).display().to_string();
    assert!(run_cli(&["keygen", "--out", &key("cluster")]).status.success());
    let derived = run_cli(&["keygen", "--role", "client", "--from", &key("cluster"), "--out", &key("client")]);
    assert!(derived.status.success(), "{}", stderr(&derived));
    let cluster_key = key("cluster");
    let cp = Process::control_plane(&["example-tasks"], &["--cluster-key-file", &cluster_key]);
    let operator = cp.client();
    let ring = Arc::new(KeyRing::load(std::path::Path::new(&key("client"))).unwrap());
    let client = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(10)).with_keys(ring).unwrap();
    let one = Some(TaskLimit { rate: None, max_running: Some(1) });
    runtime().block_on(async {
        match client.set_task_limit("add", one).await {
            Err(ClientError::Refused(error)) => assert_eq!(error.kind, ErrorKind::Forbidden, "{}", error.message),
            other => panic!("a client key changed a limit: {other:?}"),
        }
        assert!(client.task_limits().await.unwrap().iter().all(|r| r.task_name != "add"), "a client key may read them");
        operator.set_task_limit("add", one).await.unwrap();
        assert!(client.task_limits().await.unwrap().iter().any(|r| r.task_name == "add"));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plugin_built_before_task_options_existed_loads_and_runs_with_no_limit() {
    let path = plugin("pre-meta-plugin");
    let output = run_cli(&["list", "--json", "--task-modules", path.to_str().unwrap()]);
    assert!(output.status.success(), "the plugin was refused: {}", stderr(&output));
    let rows: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows[0]["task"], "triple");
    assert_eq!(rows[0]["schema"]["result"]["type"], "integer", "its schemas still load: {rows}");

    let cp = Process::control_plane(&["pre-meta-plugin"], &[]);
    let client = cp.client();
    let rt = runtime();
    assert_eq!(rt.block_on(client.call::<i64>("triple", [14])).unwrap(), 42);
    // `#[task(max_running = 1)]` never crossed the older boundary.
    assert!(rt.block_on(client.task_limits()).unwrap().is_empty());
    // The current layout's limits load beside it.
    let both = Process::control_plane(&["pre-meta-plugin", "example-tasks", "pre-schema-plugin"], &[]);
    let rows = rt.block_on(both.client().task_limits()).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.task_name.as_str()).collect();
    assert_eq!(names, ["limited_rate", "limited_running"]);
    assert_eq!(rows[0].limit.rate, Some(Rate { per_second: 20.0, burst: 20 }));
    assert_eq!(rows[1].limit.max_running, Some(2));
    assert_eq!(rt.block_on(both.client().call::<i64>("double", [21])).unwrap(), 42);
}

#[test]
fn the_dashboard_shows_and_changes_the_limits() {
    let key = "limits-key";
    let cp = Process::control_plane_with_gui(&["example-tasks"], &[], &[("FASTWORKER_GUI_API_KEY", key)]);
    let gui = cp.gui.clone().unwrap();
    let listed = get(&format!("{gui}/api/task-limits"));
    assert_eq!(listed.status, 200);
    let names: Vec<String> =
        listed.json()["limits"].as_array().unwrap().iter().map(|r| r["task"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["limited_rate", "limited_running"]);
    let body = br#"{"limit": "rate:5/s,max_running:3"}"#;
    let url = format!("{gui}/api/task-limits/timed_sleep");
    let origin = [("Origin", gui.as_str())];
    assert_eq!(request_with_body("POST", &url, &origin, body).status, 401, "an operator action needs the key");
    let bearer = format!("Bearer {key}");
    let authorized =
        [("Origin", gui.as_str()), ("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let bad = request_with_body("POST", &url, &authorized, br#"{"limit": "rate:0/s"}"#);
    assert_eq!((bad.status, bad.json()["error"].as_str()), (400, Some("bad_task_limit")), "{}", bad.text());
    let huge = vec![b' '; 64 * 1024];
    assert_eq!(request_with_body("POST", &url, &authorized, &huge).status, 413, "the body is bounded");
    let set = request_with_body("POST", &url, &authorized, body);
    assert_eq!(set.status, 200, "{}", set.text());
    let rows = limits_json(&cp);
    let row = row(&rows, "timed_sleep").unwrap();
    assert_eq!((row["rate_per_second"].as_f64(), row["max_running"].as_u64()), (Some(5.0), Some(3)), "{row}");

    let Some(chromium) = chromium_or_opted_out("the browser part of the task-limits test") else { return };
    let mut browser = Browser::start(&chromium);
    browser.navigate(&format!("{gui}/"));
    let shown = |task: &str| format!("document.querySelector('#task-limits tr[data-task=\"{task}\"]')");
    assert!(browser.wait_for(&format!("{} !== null", shown("limited_running")), Duration::from_secs(10)));
    let timed = shown("timed_sleep");
    assert!(browser.wait_for(&format!("{timed}?.innerText.includes('5/s')"), Duration::from_secs(10)));
    // Set one from the form, with the key typed in.
    browser.eval(&format!(
        "document.querySelector('#api-key').value = '{key}'; document.querySelector('#limit-task').value = 'echo'; \
         document.querySelector('#limit-spec').value = 'max_running:7'; document.querySelector('#limit-set').click(); true"
    ));
    assert!(
        browser.wait_for(&format!("{}?.innerText.includes('7')", shown("echo")), Duration::from_secs(10)),
        "{}",
        browser.eval("document.querySelector('#limits-card').innerText")
    );
    // And clear the run-time one from its row.
    browser.eval(&format!("{timed}.querySelector('button').click(); true"));
    assert!(browser.wait_for(&format!("{timed} === null"), Duration::from_secs(10)));
    assert!(row_absent(&limits_json(&cp), "timed_sleep"));
}

fn row_absent(rows: &[Value], task: &str) -> bool {
    row(rows, task).is_none()
}

#[test]
fn retries_count_again_against_the_rate() {
    // `flaky` fails twice, retried after 100 then 200 ms; limited to one
    // start every half second, its three runs take at least a second.
    let cp = Process::control_plane(&["example-tasks"], &["--task-limit", "flaky=rate:2/s,burst:1"]);
    let client = cp.client();
    let rt = runtime();
    let asked = Instant::now();
    let attempts: u32 = rt.block_on(client.call("flaky", [2])).unwrap();
    let took = asked.elapsed();
    assert_eq!(attempts, 3);
    eprintln!("three runs at 2/s took {took:?}");
    assert!(took >= Duration::from_millis(950), "three runs of a 2/s task took only {took:?}");
    let rows = rt.block_on(client.task_limits()).unwrap();
    assert!(rows[0].held_total >= 2, "{rows:?}");
    // Unlimited, the same three runs take about the backoff, 300 ms.
    let clear = run_cli(&["limits", "set", "flaky", "none", "--address", &cp.address]);
    assert!(clear.status.success(), "{}", stderr(&clear));
    let asked = Instant::now();
    let _: u32 = rt.block_on(client.call("flaky", [2])).unwrap();
    assert!(asked.elapsed() < Duration::from_millis(900), "unlimited, it took {:?}", asked.elapsed());
}
