//! Insiders and side doors on the HTTP surfaces (issue 23): the dashboard's
//! actions and the reads of arguments and results need the operator
//! credential on every route, old and `/api/v1`; long waits keep to their
//! own share of connections; names that reach output follow the task-name
//! rules. Each test performs the attack and shows it refused or bounded,
//! with a bystander (an `add` over NNG and `GET /api/status`) answered
//! within 1 s during and after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fastworker::client::SubmitOptions;
use fastworker::protocol::TaskState;
use fastworker::workflow::{task, Workflow};
use fastworker::TaskId;
use fastworker_tests::attack::{Bystander, BYSTANDER_LIMIT};
use fastworker_tests::http::{self, request, request_with_body};
use fastworker_tests::{run_cli, runtime, stderr, Process};
use serde_json::json;

/// A cluster key in a directory of its own, removed when dropped.
struct ClusterKey {
    dir: PathBuf,
}

impl ClusterKey {
    fn new() -> ClusterKey {
        let dir = std::env::temp_dir().join(format!("fastworker-http-keys-{}", TaskId::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = ClusterKey { dir };
        let output = run_cli(&["keygen", "--out", &key.path()]);
        assert!(output.status.success(), "{}", stderr(&output));
        key
    }

    fn path(&self) -> String {
        self.dir.join("cluster.key").display().to_string()
    }
}

impl Drop for ClusterKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Panics unless `GET /api/status` answers 200 within the bystander's limit.
fn status_answers(gui: &str, during: &str) -> Duration {
    let started = Instant::now();
    let status = request("GET", &format!("{gui}/api/status"), &[]);
    let took = started.elapsed();
    assert_eq!(status.status, 200, "/api/status {during}: {}", status.text());
    assert!(took <= BYSTANDER_LIMIT, "/api/status took {took:?} {during}");
    took
}

/// The operator's requests an attacker with plain HTTP tries on a task and
/// a workflow: every action and every read of arguments and results, on
/// the old routes and on `/api/v1`.
fn operator_requests(task: TaskId, workflow: &str) -> Vec<(&'static str, String, Option<serde_json::Value>)> {
    vec![
        ("POST", format!("/api/tasks/{task}/cancel"), None),
        ("POST", format!("/api/tasks/{task}/retry"), None),
        ("POST", format!("/api/workflows/{workflow}/cancel"), None),
        ("POST", "/api/task-limits/divide".into(), Some(json!({"limit": "rate:1/h"}))),
        ("POST", "/api/task-limits/add/clear".into(), None),
        ("GET", format!("/api/tasks/{task}"), None),
        ("GET", format!("/api/workflows/{workflow}"), None),
        ("POST", format!("/api/v1/tasks/{task}/cancel"), None),
        ("POST", format!("/api/v1/workflows/{workflow}/cancel"), None),
        ("POST", "/api/v1/tasks".into(), Some(json!({"task": "add", "args": [1, 2]}))),
        ("GET", format!("/api/v1/tasks/{task}"), None),
        ("GET", format!("/api/v1/tasks/{task}/wait?timeout_ms=10"), None),
        ("GET", format!("/api/v1/workflows/{workflow}"), None),
    ]
}

fn send(gui: &str, method: &str, path: &str, body: &Option<serde_json::Value>, auth: Option<&str>) -> http::Response {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    let body = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
    request_with_body(method, &format!("{gui}{path}"), &headers, body.as_bytes())
}

/// A task queued for a minute and a workflow of one such task, submitted
/// by the operator over NNG.
fn victims(cp: &Process) -> (TaskId, String) {
    let client = cp.client();
    let later = SubmitOptions { countdown: Some(Duration::from_secs(60)), ..Default::default() };
    let task_id = runtime().block_on(client.delay("add", [40, 2], later)).unwrap();
    let slow = Workflow::chain([task("sleep_ms", json!([60000]))]);
    let workflow = runtime().block_on(client.submit_workflow(&slow)).unwrap().workflow_id;
    (task_id, workflow.to_string())
}

#[test]
fn a_keyed_clusters_dashboard_gives_no_operator_rights_without_the_credential() {
    let key = ClusterKey::new();
    let env = [("FASTWORKER_CLUSTER_KEY_FILE", key.path())];
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
    for api_key in [None, Some("0perator-credential")] {
        let extra: Vec<&str> = api_key.map_or(vec![], |key| vec!["--gui-api-key", key]);
        let cp = Process::control_plane_with_gui(&["example-tasks"], &extra, &env);
        let gui = cp.gui.clone().unwrap();
        let (task, workflow) = victims(&cp);
        let bystander = Bystander::start(&cp);
        for (method, path, body) in operator_requests(task, &workflow) {
            for auth in [None, Some("Bearer wrong")] {
                let answer = send(&gui, method, &path, &body, auth);
                let expected = if api_key.is_some() { 401 } else { 403 };
                assert_eq!(answer.status, expected, "{method} {path} ({auth:?}): {}", answer.text());
                let text = answer.text();
                assert!(text.contains("--gui-api-key"), "{method} {path}: {text}");
                assert!(!text.contains("40") && !text.contains("42"), "{method} {path} showed arguments: {text}");
            }
            status_answers(&gui, &format!("during {method} {path}"));
        }
        let record = bystander.check("while the dashboard was attacked");
        // Nothing changed: the task and the workflow are still waiting, no limit was set.
        let client = cp.client();
        let report = runtime().block_on(client.status(task)).unwrap();
        assert_eq!(report.state, TaskState::Scheduled, "{report:?}");
        let limits = request("GET", &format!("{gui}/api/task-limits"), &[]).json();
        let rows = limits["limits"].as_array().unwrap();
        assert!(rows.iter().all(|row| row["source"] == "declared"), "a limit was set: {limits}");
        let workflows = request("GET", &format!("{gui}/api/workflows"), &[]).json();
        assert_eq!(workflows["workflows"][0]["state"], "running", "{workflows}");
        eprintln!(
            "figures: keyed dashboard, api key {}: every operator request refused; bystander {} calls, slowest {:?}",
            api_key.is_some(),
            record.calls,
            record.slowest
        );
        // With the credential, the operator acts.
        if let Some(api_key) = api_key {
            let bearer = format!("Bearer {api_key}");
            let shown = send(&gui, "GET", &format!("/api/tasks/{task}"), &None, Some(&bearer));
            assert_eq!(shown.status, 200, "{}", shown.text());
            assert_eq!(shown.json()["args"], json!([40, 2]));
            let cancel = send(&gui, "POST", &format!("/api/tasks/{task}/cancel"), &None, Some(&bearer));
            assert_eq!(cancel.status, 200, "{}", cancel.text());
            let cancel = send(&gui, "POST", &format!("/api/v1/workflows/{workflow}/cancel"), &None, Some(&bearer));
            assert_eq!(cancel.status, 200, "{}", cancel.text());
        }
        status_answers(&gui, "after the attack");
    }
}

#[test]
fn a_keyed_dashboard_beyond_loopback_needs_the_operator_credential_to_start() {
    let key = ClusterKey::new();
    let base = format!("tcp://127.0.0.1:{}", fastworker_tests::free_base_port());
    let port = fastworker_tests::free_ports(1).to_string();
    let path = key.path();
    let args = [
        "control-plane",
        "--base-address",
        &base,
        "--no-discovery",
        "--cluster-key-file",
        &path,
        "--gui-host",
        "0.0.0.0",
        "--gui-port",
        &port,
    ];
    let output = run_cli(&args);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--gui-api-key"), "{}", stderr(&output));
    assert!(stderr(&output).contains("beyond this machine"), "{}", stderr(&output));
}

#[test]
fn with_an_api_key_the_old_routes_hide_arguments_and_results_as_v1_does() {
    let (cp, gui) = http::control_plane_with_api(&["--gui-api-key", "k3y"]);
    let task = TaskId::new_v4();
    let options = SubmitOptions { task_id: Some(task), ..Default::default() };
    let sum: i64 = runtime().block_on(cp.client().call_with("add", [40, 2], options)).unwrap();
    assert_eq!(sum, 42);
    let bystander = Bystander::start(&cp);
    for path in [format!("/api/tasks/{task}"), format!("/api/v1/tasks/{task}")] {
        let anonymous = request("GET", &format!("{gui}{path}"), &[]);
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.text());
        assert!(!anonymous.text().contains("42"), "{path}: {}", anonymous.text());
        let shown = request("GET", &format!("{gui}{path}"), &[("Authorization", "Bearer k3y")]);
        assert_eq!(shown.status, 200, "{path}: {}", shown.text());
        assert_eq!(shown.json()["result"], 42, "{path}");
        status_answers(&gui, &format!("after GET {path}"));
    }
    // The workflow table leaves results out without the credential.
    let workflow = json!({"workflow": {"chain": [{"task": "add", "args": [40, 2]}]}, "wait_ms": 10000});
    let done = http::post_json(&format!("{gui}/api/v1/workflows"), &workflow, &[("Authorization", "Bearer k3y")]);
    assert_eq!(done.status, 200, "{}", done.text());
    let table = request("GET", &format!("{gui}/api/workflows"), &[]).json();
    assert_eq!(table["workflows"][0]["result"], serde_json::Value::Null, "{table}");
    let table = request("GET", &format!("{gui}/api/workflows"), &[("Authorization", "Bearer k3y")]).json();
    assert_eq!(table["workflows"][0]["result"], "42", "{table}");
    bystander.check("while reads were tried without the key");
}

/// A gauge or counter of `/metrics`, by its whole name with labels.
fn metric(gui: &str, name: &str) -> Option<f64> {
    let text = request("GET", &format!("{gui}/metrics"), &[]).text();
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn three_hundred_long_waits_leave_room_for_plain_requests() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let (cp, gui) = http::control_plane_with_api(&[]);
    let later = SubmitOptions { countdown: Some(Duration::from_secs(120)), ..Default::default() };
    let task = runtime().block_on(cp.client().delay("add", [1, 2], later)).unwrap();
    let host = gui.strip_prefix("http://").unwrap().to_string();
    let bystander = Bystander::start(&cp);
    // 300 connections, each waiting up to 60 s for a task that will not end.
    let head = format!("GET /api/v1/tasks/{task}/wait?timeout_ms=60000 HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut waiting: Vec<TcpStream> = (0..300)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(&host).ok()?;
            stream.write_all(head.as_bytes()).ok()?;
            Some(stream)
        })
        .collect();
    let usage = "fastworker_limit_usage{limit=\"gui-max-waits\"}";
    assert!(
        fastworker_tests::wait_until(Duration::from_secs(20), || metric(&gui, usage) == Some(64.0)),
        "64 waits (a quarter of 256 connections) are not held: {:?}",
        metric(&gui, usage)
    );
    let mut slowest = Duration::ZERO;
    for round in 0..10 {
        slowest = slowest.max(status_answers(&gui, &format!("with 300 waits open (round {round})")));
        let page = request("GET", &format!("{gui}/api/tasks"), &[]);
        assert_eq!(page.status, 200, "{}", page.text());
    }
    // Those beyond the share were told so at once, and their connections closed.
    let mut busy = 0;
    for stream in &mut waiting {
        stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut answer = [0u8; 512];
        if let Ok(n) = stream.read(&mut answer) {
            let text = String::from_utf8_lossy(&answer[..n]);
            if text.starts_with("HTTP/1.1 503") {
                assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
                busy += 1;
            }
        }
    }
    assert!(busy >= 300 - 64 - 8, "only {busy} of the waits beyond the share were refused");
    let refused = metric(&gui, "fastworker_limit_refusals_total{limit=\"gui-max-waits\"}").unwrap();
    assert!(refused >= 1.0, "no refusal counted");
    let record = bystander.check("while 300 long waits were open");
    drop(waiting);
    assert!(
        fastworker_tests::wait_until(Duration::from_secs(10), || metric(&gui, usage) == Some(0.0)),
        "the waits' places are not given back: {:?}",
        metric(&gui, usage)
    );
    status_answers(&gui, "after the waits closed");
    eprintln!(
        "figures: 300 long waits: 64 held, {busy} refused 503 at once; /api/status slowest {slowest:?}; bystander {} calls, slowest {:?}",
        record.calls, record.slowest
    );
}

#[test]
fn a_wait_share_that_leaves_no_room_stops_the_start_up() {
    let base = format!("tcp://127.0.0.1:{}", fastworker_tests::free_base_port());
    let args =
        ["control-plane", "--base-address", &base, "--no-gui", "--gui-max-connections", "16", "--gui-max-waits", "8"];
    let output = run_cli(&args);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--gui-max-waits 8"), "{}", stderr(&output));
}

#[test]
fn add_refuses_to_wrap_and_a_task_panic_costs_no_backtrace() {
    use fastworker_tests::attack::{rss_kib, RSS_SLACK_KIB};
    let cp = Process::control_plane_with_env(&["example-tasks"], &[], &[("RUST_BACKTRACE", "1")]);
    let client = cp.client();
    let bystander = Bystander::start(&cp);
    // i64::MAX + 1 is a task error, not a wrapped sum.
    let wrapped = runtime().block_on(client.call::<i64>("add", (i64::MAX, 1)));
    let message = format!("{:?}", wrapped.expect_err("i64::MAX + 1 must fail"));
    assert!(message.contains("does not fit in a 64-bit integer"), "{message}");
    let sum = runtime().block_on(client.call::<i64>("sum", (vec![i64::MAX, 1],)));
    assert!(format!("{:?}", sum.expect_err("the sum overflows")).contains("does not fit"));
    let quotient = runtime().block_on(client.call::<i64>("divide", (i64::MIN, -1)));
    assert!(format!("{:?}", quotient.expect_err("i64::MIN / -1 overflows")).contains("does not fit"));
    // The first panic with RUST_BACKTRACE=1: its message and location, no backtrace, no debug info loaded.
    let idle = rss_kib(cp.pid());
    let panicked = runtime().block_on(client.call::<i64>("panic_now", ("boom",)));
    let message = format!("{:?}", panicked.expect_err("panic_now panics"));
    assert!(message.contains("boom"), "{message}");
    assert!(
        fastworker_tests::wait_until(Duration::from_secs(5), || cp.log().contains("panicked at")),
        "the panic is not in the log:\n{}",
        cp.log()
    );
    let after = rss_kib(cp.pid());
    let log = cp.log();
    let line = log.lines().find(|l| l.contains("panicked at")).unwrap();
    assert!(line.contains("example-tasks/src/lib.rs:") && line.ends_with(": boom"), "{line}");
    assert!(!log.contains("stack backtrace"), "a backtrace was symbolized:\n{log}");
    assert!(after <= idle + RSS_SLACK_KIB, "the first panic took {} KiB ({idle} KiB before)", after - idle);
    bystander.check("while tasks overflowed and panicked");
    eprintln!("figures: RSS before the first task panic {idle} KiB, after {after} KiB (RUST_BACKTRACE=1)");
}

#[test]
fn limit_names_follow_the_task_name_rules_and_junk_cannot_fill_their_room() {
    let (cp, gui) = http::control_plane_with_api(&[]);
    let client = cp.client();
    let bystander = Bystander::start(&cp);
    let one = fastworker::task_limits::TaskLimit { rate: None, max_running: Some(1) };
    runtime().block_on(async {
        // Control characters and spaces, over the wire and over HTTP.
        for name in ["add\r", "evil\"} 1\nfastworker_x{a=\"", "tab\tname", "bell\u{7}", "sp ace", "nel\u{85}"] {
            let refused = client.set_task_limit(name, Some(one)).await.expect_err(name);
            assert!(format!("{refused:?}").contains("without spaces or control characters"), "{name:?}: {refused:?}");
        }
        // 1020 junk names from one peer: each refused, none kept.
        let mut refused = 0;
        for n in 0..1020 {
            if client.set_task_limit(&format!("junk-{n}"), Some(one)).await.is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 1020);
    });
    let escaped = http::post_json(&format!("{gui}/api/task-limits/add%0D"), &json!({"limit": "max_running:1"}), &[]);
    assert_eq!(escaped.status, 400, "{}", escaped.text());
    assert!(escaped.text().contains("control characters"), "{}", escaped.text());
    status_answers(&gui, "after 1020 junk limit names");
    // The room is still there: the operator limits a real task.
    runtime().block_on(client.set_task_limit("add", Some(one))).unwrap();
    let rows = runtime().block_on(client.task_limits()).unwrap();
    assert!(rows.iter().all(|row| !row.task_name.starts_with("junk-")), "a junk name was kept");
    assert!(rows.iter().any(|row| row.task_name == "add"), "add's limit is missing");
    let metrics = request("GET", &format!("{gui}/metrics"), &[]).text();
    assert!(!metrics.contains('\r'), "a raw carriage return in /metrics");
    assert!(metrics.contains("fastworker_task_limit_max_running{task=\"add\"} 1"), "{metrics}");
    runtime().block_on(client.clear_task_limit("add")).unwrap();
    let record = bystander.check("while junk limit names were sent");
    eprintln!("figures: 1020 junk limit names: 1020 refused, 0 kept; bystander slowest {:?}", record.slowest);
}
