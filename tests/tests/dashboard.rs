//! The management dashboard: its JSON API, event stream and metrics over
//! plain HTTP, its start-up errors, and the page itself in headless
//! Chromium, as an operator would see it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::workflow::{task, Workflow, WorkflowId, WorkflowState};
use fastworker::{SubmitOptions, TaskId, TaskState};
use fastworker_tests::browser::{chromium_or_opted_out, Browser};
use fastworker_tests::http::{get, request, EventStream};
use fastworker_tests::{free_ports, run_cli, runtime, stderr, target_dir, Process};
use serde_json::{json, Value};

const KEY: &str = "s3cret-key";

/// A control plane with the example plugin, the dashboard on, and one
/// subworker `sw1` with the example plugin.
fn cluster(env: &[(&str, &str)]) -> (Process, Process, String) {
    // Tasks on the control plane's own threads: the views name it as their worker.
    let cp = Process::control_plane_with_gui(
        &["example-tasks"],
        &["--no-discovery", "--in-process", "--concurrency", "2"],
        env,
    );
    let sw = Process::subworker(&cp, "sw1", &["example-tasks"], &["--heartbeat-interval", "0.5", "--concurrency", "2"]);
    let gui = cp.gui.clone().expect("a dashboard URL");
    (cp, sw, gui)
}

/// A task's detail, read with the operator credential (`KEY`, which a
/// dashboard without `--gui-api-key` ignores).
fn task_json(gui: &str, task_id: TaskId) -> Value {
    let response = keyed_get(&format!("{gui}/api/tasks/{task_id}"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn keyed_get(url: &str) -> fastworker_tests::http::Response {
    fastworker_tests::http::request("GET", url, &[("Authorization", &format!("Bearer {KEY}"))])
}

#[test]
fn the_api_answers_every_endpoint_and_guards_the_actions() {
    let (cp, _sw, gui) = cluster(&[("FASTWORKER_GUI_API_KEY", KEY)]);
    let rt = runtime();
    let client = cp.client();
    let added = rt.block_on(client.submit("add", (5, 3), SubmitOptions::default())).unwrap();
    let divided = rt.block_on(client.submit("divide", (1, 0), SubmitOptions::default())).unwrap();
    assert_eq!(divided.state, TaskState::Failed);
    let later = SubmitOptions { countdown: Some(Duration::from_secs(60)), ..Default::default() };
    let scheduled = rt.block_on(client.delay("add", (1, 2), later)).unwrap();
    // A status query reaches the cache: a hit.
    rt.block_on(client.status(added.task_id)).unwrap();

    // The overview.
    let status = get(&format!("{gui}/api/status"));
    assert_eq!(status.status, 200);
    assert!(status.header("content-type").unwrap().starts_with("application/json"));
    let status = status.json();
    let plane = &status["control_plane"];
    assert_eq!(plane["worker_id"], "control-plane");
    assert_eq!(plane["base_address"], cp.address);
    assert_eq!(plane["addresses"]["dashboard"], gui);
    assert_eq!(plane["actions_need_key"], true);
    assert!(plane["uptime_s"].as_f64().unwrap() > 0.0);
    assert_eq!(plane["plugins"][0]["name"], "example-tasks");
    assert!(plane["tasks"].as_array().unwrap().contains(&json!("sleep_ms")));
    assert!(status["totals"]["submitted"].as_u64().unwrap() >= 3);
    for key in ["workers", "queues", "cache", "history"] {
        assert!(!status[key].is_null(), "/api/status lacks {key}: {status}");
    }

    // Workers.
    let workers = get(&format!("{gui}/api/workers")).json();
    assert_eq!(workers["total"], 1);
    assert_eq!(workers["active"], 1);
    let sw1 = &workers["subworkers"][0];
    assert_eq!(sw1["worker_id"], "sw1");
    assert_eq!(sw1["status"], "active");
    assert_eq!(sw1["concurrency"], 2);
    assert!(sw1["tasks"].as_array().unwrap().contains(&json!("add")));
    assert!(sw1["last_seen_ms"].as_u64().unwrap() > 0);

    // Tasks: listing, filters, paging, one task.
    let all = get(&format!("{gui}/api/tasks")).json();
    assert_eq!(all["total"], 3, "{all}");
    assert_eq!(all["tasks"][0]["task_id"], scheduled.to_string(), "live tasks first, newest first");
    assert_eq!(all["tasks"][0]["state"], "scheduled");
    let failed = get(&format!("{gui}/api/tasks?state=failed")).json();
    assert_eq!(failed["total"], 1);
    assert_eq!(failed["tasks"][0]["task_id"], divided.task_id.to_string());
    assert_eq!(failed["tasks"][0]["error"], "cannot divide 1 by zero");
    let prefix = &added.task_id.to_string()[..13];
    let found = get(&format!("{gui}/api/tasks?q={prefix}")).json();
    assert_eq!(found["total"], 1);
    assert_eq!(found["tasks"][0]["task_name"], "add");
    let page = get(&format!("{gui}/api/tasks?limit=1&offset=1")).json();
    assert_eq!((page["total"].as_u64(), page["tasks"].as_array().unwrap().len()), (Some(3), 1));
    let bad = get(&format!("{gui}/api/tasks?limit=many"));
    assert_eq!((bad.status, bad.json()["error"].as_str()), (400, Some("bad_request")));

    let one = task_json(&gui, added.task_id);
    assert_eq!((one["state"].as_str(), one["result"].as_i64()), (Some("succeeded"), Some(8)));
    assert_eq!(one["args"], json!([5, 3]));
    assert_eq!(one["retryable"], false);
    assert!(["sw1", "control-plane"].contains(&one["worker"].as_str().unwrap()));
    let one = task_json(&gui, divided.task_id);
    assert_eq!(one["error"]["message"], "cannot divide 1 by zero");
    assert_eq!(one["retryable"], true);
    let anonymous = get(&format!("{gui}/api/tasks/{}", added.task_id));
    assert_eq!(anonymous.status, 401, "arguments and results need the key: {}", anonymous.text());
    let unknown = keyed_get(&format!("{gui}/api/tasks/{}", TaskId::new_v4()));
    assert_eq!((unknown.status, unknown.json()["error"].as_str()), (404, Some("unknown_task")));
    let malformed = keyed_get(&format!("{gui}/api/tasks/not-an-id"));
    assert_eq!((malformed.status, malformed.json()["error"].as_str()), (400, Some("bad_task_id")));

    // Queues, cache, registered tasks, throughput.
    let queues = get(&format!("{gui}/api/queues")).json();
    for priority in ["critical", "high", "normal", "low"] {
        for column in ["queued", "running", "scheduled", "retrying"] {
            assert!(queues[priority][column].is_u64(), "{queues}");
        }
    }
    assert_eq!(queues["high"]["scheduled"], 1, "add is declared high: {queues}");
    let cache = get(&format!("{gui}/api/cache")).json();
    assert_eq!(
        (cache["size"].as_u64(), cache["capacity"].as_u64(), cache["ttl_s"].as_u64()),
        (Some(2), Some(10_000), Some(3600))
    );
    assert!(cache["hits"].as_u64().unwrap() >= 1 && cache["hit_rate"].as_f64().unwrap() > 0.0, "{cache}");
    let registered = get(&format!("{gui}/api/registered-tasks")).json();
    let add = registered.as_array().unwrap().iter().find(|t| t["task"] == "add").expect("add is registered");
    assert_eq!(add["priority"], "high");
    assert_eq!(add["providers"], json!(["control-plane", "sw1"]));
    let schedules = get(&format!("{gui}/api/schedules")).json();
    let names: Vec<&str> = schedules.as_array().unwrap().iter().filter_map(|s| s["task_name"].as_str()).collect();
    assert_eq!(names, ["report", "tick"], "the example's periodic tasks: {schedules}");
    let throughput = get(&format!("{gui}/api/throughput?seconds=60")).json();
    let seconds = throughput["seconds"].as_array().unwrap();
    assert_eq!(seconds.len(), 60);
    assert_eq!(seconds.iter().map(|s| s["finished"].as_u64().unwrap()).sum::<u64>(), 2);

    // Actions need the key.
    let cancel_url = format!("{gui}/api/tasks/{scheduled}/cancel");
    let refused = request("POST", &cancel_url, &[]);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(refused.json()["error"], "unauthorized");
    let wrong = request("POST", &cancel_url, &[("Authorization", "Bearer nope")]);
    assert_eq!(wrong.status, 401);
    let auth = format!("Bearer {KEY}");
    let foreign = request("POST", &cancel_url, &[("Authorization", &auth), ("Origin", "http://evil.example")]);
    assert_eq!(foreign.status, 403, "another site's page may not act");
    let cancelled = request("POST", &cancel_url, &[("Authorization", &auth)]);
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["cancelled"], true);
    assert_eq!(task_json(&gui, scheduled)["state"], "cancelled");
    let again = request("POST", &cancel_url, &[("Authorization", &auth)]);
    assert_eq!((again.status, again.json()["error"].as_str()), (409, Some("already_finished")));

    let retry = request("POST", &format!("{gui}/api/tasks/{}/retry", divided.task_id), &[("Authorization", &auth)]);
    assert_eq!(retry.status, 202, "{}", retry.text());
    let retried: TaskId = retry.json()["task_id"].as_str().unwrap().parse().unwrap();
    assert_ne!(retried, divided.task_id);
    let report = rt.block_on(client.wait(retried, Duration::from_secs(10))).unwrap();
    assert_eq!((report.state, report.task_name.as_str()), (TaskState::Failed, "divide"));
    assert_eq!(task_json(&gui, retried)["args"], json!([1, 0]));
    let not_failed = request("POST", &format!("{gui}/api/tasks/{}/retry", added.task_id), &[("Authorization", &auth)]);
    assert_eq!((not_failed.status, not_failed.json()["error"].as_str()), (409, Some("not_retryable")));

    // Unknown paths and methods answer JSON.
    for path in ["/nope", "/api/nope"] {
        let missing = get(&format!("{gui}{path}"));
        assert_eq!((missing.status, missing.json()["error"].as_str()), (404, Some("not_found")));
    }
    let wrong_method = keyed_get(&cancel_url);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.json()["error"], "method_not_allowed");

    // The page and its assets.
    let page = get(&format!("{gui}/"));
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.text().contains("/app.js"));
    assert_eq!(get(&format!("{gui}/app.js")).status, 200);
    assert_eq!(get(&format!("{gui}/style.css")).status, 200);

    // Metrics.
    let metrics = get(&format!("{gui}/metrics"));
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    for line in [
        "fastworker_tasks_submitted_total{task=\"add\",priority=\"high\"} 2",
        "fastworker_tasks_completed_total{task=\"add\",priority=\"high\"} 1",
        "fastworker_tasks_failed_total{task=\"divide\",priority=\"normal\"} 2",
        "fastworker_tasks_cancelled_total{task=\"add\",priority=\"high\"} 1",
        "fastworker_tasks_retried_total{task=\"divide\",priority=\"normal\"} 0",
        "fastworker_tasks_timed_out_total{task=\"add\",priority=\"high\"} 0",
        "fastworker_task_duration_seconds_bucket{task=\"add\",priority=\"high\",le=\"+Inf\"} 1",
        "fastworker_task_duration_seconds_count{task=\"divide\",priority=\"normal\"} 2",
        "fastworker_queue_depth{priority=\"critical\"} 0",
        "fastworker_workers_live 1",
        "fastworker_cache_size 4",
        "# TYPE fastworker_task_duration_seconds histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "/metrics lacks {line:?}:\n{text}");
    }
}

#[test]
fn the_event_stream_sends_task_changes_as_they_happen() {
    // Tasks on the control plane's own threads: the views name it as their worker.
    let cp = Process::control_plane_with_gui(
        &["example-tasks"],
        &["--no-discovery", "--in-process", "--concurrency", "1"],
        &[],
    );
    let gui = cp.gui.clone().unwrap();
    let mut stream = EventStream::open(&format!("{gui}/api/events"));
    assert_eq!(stream.status, 200);
    assert!(stream.headers.iter().any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream")));
    let first = stream.next_matching(Duration::from_secs(5), |_| true).expect("a first event");
    assert_eq!(first.event, "snapshot");
    let snapshot: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snapshot["control_plane"]["worker_id"], "control-plane");

    let rt = runtime();
    let client = cp.client();
    let task_id = rt.block_on(client.delay("sleep_ms", (300,), SubmitOptions::default())).unwrap();
    let id = task_id.to_string();
    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !states.contains(&"succeeded".to_string()) && Instant::now() < deadline {
        let Some(event) = stream.next_matching(Duration::from_secs(5), |e| e.event == "task") else { break };
        let task: Value = serde_json::from_str(&event.data).unwrap();
        if task["task_id"] == id.as_str() {
            states.push(task["state"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(states, ["queued", "running", "succeeded"]);
}

#[test]
fn a_dashboard_port_in_use_stops_the_start_up() {
    let taken = std::net::TcpListener::bind(("127.0.0.1", free_ports(1))).unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let base = format!("tcp://127.0.0.1:{}", free_ports(6));
    let output = run_cli(&[
        "control-plane",
        "--base-address",
        &base,
        "--no-discovery",
        "--gui-host",
        "127.0.0.1",
        "--gui-port",
        &port,
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("error: 127.0.0.1:{port} (dashboard, --gui-port) is already in use")),
        "{message}"
    );
}

#[test]
fn the_page_shows_the_cluster_live_in_a_browser() {
    let Some(chromium) = chromium_or_opted_out("the_page_shows_the_cluster_live_in_a_browser") else { return };
    let started = Instant::now();
    let (cp, _sw, gui) = cluster(&[]);
    let rt = runtime();
    let client = cp.client();
    let added = rt.block_on(client.submit("add", (2, 2), SubmitOptions::default())).unwrap();
    let divided = rt.block_on(client.submit("divide", (7, 0), SubmitOptions::default())).unwrap();

    let mut browser = Browser::start(&chromium);
    browser.navigate(&format!("{gui}/"));
    // Marks this page load: a reload would lose it.
    browser.eval("window.loadMark = 'first load'; true");
    assert!(
        browser.wait_for("window.fastworker.live === true", Duration::from_secs(10)),
        "the event stream never opened"
    );
    let worker = "document.querySelector('#workers tr[data-worker-id=\"sw1\"]')?.dataset.status === 'active'";
    assert!(browser.wait_for(worker, Duration::from_secs(10)), "sw1 is not shown active");
    let row_state = |id: TaskId| format!("document.querySelector('#tasks tr[data-task-id=\"{id}\"]')?.dataset.state");
    assert!(browser.wait_for(&format!("{} === 'succeeded'", row_state(added.task_id)), Duration::from_secs(10)));
    assert!(browser.wait_for(&format!("{} === 'failed'", row_state(divided.task_id)), Duration::from_secs(10)));
    assert_eq!(browser.eval("document.querySelector('#cp-id').textContent"), "control-plane");

    // A task submitted and finishing while the page is open shows up, and
    // changes state, without a reload.
    let sleeper = rt.block_on(client.delay("sleep_ms", (1500,), SubmitOptions::default())).unwrap();
    assert!(
        browser.wait_for(&format!("{} === 'running'", row_state(sleeper)), Duration::from_secs(10)),
        "the new task is not shown running"
    );
    assert!(
        browser.wait_for(&format!("{} === 'succeeded'", row_state(sleeper)), Duration::from_secs(10)),
        "the task's end is not shown"
    );
    assert_eq!(browser.eval("window.loadMark"), "first load", "the page was reloaded");
    assert!(browser.eval("window.fastworker.events").as_u64().unwrap() >= 3);

    // Filter by state, search by id.
    browser.eval("{ const f = document.querySelector('#state-filter'); f.value = 'failed'; f.dispatchEvent(new Event('change')); } true");
    let only_failed = "[...document.querySelectorAll('#tasks tbody tr')].every(r => r.dataset.state === 'failed')";
    assert!(browser.wait_for(
        &format!("{only_failed} && document.querySelectorAll('#tasks tbody tr').length === 1"),
        Duration::from_secs(5)
    ));
    browser.eval("{ const f = document.querySelector('#state-filter'); f.value = ''; f.dispatchEvent(new Event('change')); } true");
    let search = format!(
        "{{ const s = document.querySelector('#search'); s.value = '{}'; s.dispatchEvent(new Event('input')); }} true",
        &added.task_id.to_string()[..8]
    );
    browser.eval(&search);
    assert!(browser.wait_for("document.querySelectorAll('#tasks tbody tr').length === 1", Duration::from_secs(5)));
    browser.eval(
        "{ const s = document.querySelector('#search'); s.value = ''; s.dispatchEvent(new Event('input')); } true",
    );

    // A click shows the task's error, with a retry button.
    browser.eval(&format!("document.querySelector('#tasks tr[data-task-id=\"{}\"]').click(); true", divided.task_id));
    assert!(browser.wait_for(
        "document.querySelector('#detail').open && document.querySelector('#detail-error')?.textContent.includes('cannot divide 7 by zero')",
        Duration::from_secs(5)
    ));
    assert_eq!(browser.eval("document.querySelector('#retry-task').hidden"), false);
    browser.eval("document.querySelector('#retry-task').click(); true");
    assert!(
        browser.wait_for(
            "document.querySelectorAll('#tasks tr[data-state=\"failed\"]').length === 2",
            Duration::from_secs(10)
        ),
        "the retried task is not shown"
    );
    browser.eval("document.querySelector('#detail').close(); true");

    // Run a task from the form built from its schema: one input per
    // parameter; the result comes back through the HTTP API.
    assert!(
        browser.wait_for(
            "[...document.querySelectorAll('#run-task option')].some(o => o.value === 'add')",
            Duration::from_secs(10)
        ),
        "the form does not list the tasks"
    );
    browser.eval("{ const s = document.querySelector('#run-task'); s.value = 'add'; s.dispatchEvent(new Event('change')); } true");
    assert_eq!(browser.eval("document.querySelector('#run-arg-x').type"), "number");
    assert_eq!(browser.eval("document.querySelector('#run-doc').textContent"), "Adds two integers.");
    browser.eval("document.querySelector('#run-arg-x').value = '19'; document.querySelector('#run-arg-y').value = '23'; document.querySelector('#run-submit').click(); true");
    assert!(
        browser.wait_for("document.querySelector('#run-result').textContent === '42'", Duration::from_secs(10)),
        "the form's task did not show its result: {}",
        browser.eval("document.querySelector('#run-card').innerText")
    );
    assert_eq!(browser.eval("document.querySelector('#run-state').textContent"), "succeeded");
    let run_id = browser.eval("document.querySelector('#run-id').textContent");
    let run_id = TaskId::parse_str(run_id.as_str().unwrap()).unwrap();
    assert!(browser.wait_for(&format!("{} === 'succeeded'", row_state(run_id)), Duration::from_secs(10)));
    // A task that runs a while shows its state as it runs, then its result.
    browser.eval("{ const s = document.querySelector('#run-task'); s.value = 'sleep_ms'; s.dispatchEvent(new Event('change')); } true");
    browser.eval(
        "document.querySelector('#run-arg-ms').value = '1200'; document.querySelector('#run-submit').click(); true",
    );
    assert!(
        browser.wait_for("document.querySelector('#run-state').textContent === 'running'", Duration::from_secs(10)),
        "the running state is not shown"
    );
    assert!(
        browser.wait_for("document.querySelector('#run-state').textContent === 'succeeded'", Duration::from_secs(10))
    );
    // The result follows the state (the event stream may tell of the end first).
    assert!(
        browser.wait_for("Number(document.querySelector('#run-result').textContent) >= 1200", Duration::from_secs(10)),
        "the slept time is not shown: {}",
        browser.eval("document.querySelector('#run-result').textContent")
    );
    // Arguments that do not fit the schema: the refusal is shown, nothing runs.
    browser.eval("{ const s = document.querySelector('#run-task'); s.value = 'midpoint'; s.dispatchEvent(new Event('change')); } true");
    browser.eval("document.querySelector('#run-arg-a').value = '{\"x\": 1}'; document.querySelector('#run-arg-b').value = '{\"x\": 1, \"y\": 2}'; document.querySelector('#run-submit').click(); true");
    assert!(
        browser.wait_for(
            "document.querySelector('#run-message').textContent.startsWith('BadArguments')",
            Duration::from_secs(10)
        ),
        "the refusal is not shown: {}",
        browser.eval("document.querySelector('#run-card').innerText")
    );

    // A workflow appears in its table as it runs, shows its progress and
    // result, and opens with its members; another is cancelled from the page.
    let chain = Workflow::chain([task("sleep_ms", json!([1200])), task("add", json!([1]))]);
    let workflow = rt.block_on(client.submit_workflow(&chain)).unwrap().workflow_id;
    let workflow_row = |id: WorkflowId| format!("document.querySelector('#workflows tr[data-workflow-id=\"{id}\"]')");
    assert!(
        browser.wait_for(&format!("{}?.dataset.state === 'running'", workflow_row(workflow)), Duration::from_secs(10)),
        "the workflow is not shown running: {}",
        browser.eval("document.querySelector('#workflows').innerText")
    );
    assert!(
        browser
            .wait_for(&format!("{}?.dataset.state === 'succeeded'", workflow_row(workflow)), Duration::from_secs(10)),
        "the workflow's end is not shown"
    );
    // sleep_ms returns the milliseconds it slept: 1200 or a little more.
    let report = rt.block_on(client.workflow_status(workflow)).unwrap();
    let result = String::from_utf8(report.result.clone().expect("a result")).unwrap();
    assert!(result.parse::<u64>().is_ok_and(|ms| ms >= 1201), "{result}");
    let cells = browser.eval(&format!("{}.innerText", workflow_row(workflow)));
    assert!(cells.as_str().unwrap().contains("2 / 2") && cells.as_str().unwrap().contains(&result), "{cells}");
    browser.eval(&format!("{}.click(); true", workflow_row(workflow)));
    assert!(
        browser.wait_for(
            &format!(
                "document.querySelector('#wf-detail').open && document.querySelector('#wf-result')?.textContent === '{result}'"
            ),
            Duration::from_secs(5)
        ),
        "the opened workflow does not show its result"
    );
    let members = "[...document.querySelectorAll('#wf-members tbody tr')].map(r => r.dataset.state).join(',')";
    assert_eq!(browser.eval(members), "succeeded,succeeded");
    assert_eq!(browser.eval("document.querySelector('#cancel-workflow').hidden"), true);
    browser.eval("document.querySelector('#wf-detail').close(); true");
    let slow = Workflow::chain([task("sleep_ms", json!([5000])), task("add", json!([1]))]);
    let slow = rt.block_on(client.submit_workflow(&slow)).unwrap().workflow_id;
    assert!(browser.wait_for(&format!("{}?.dataset.state === 'running'", workflow_row(slow)), Duration::from_secs(10)));
    browser.eval(&format!("{}.click(); true", workflow_row(slow)));
    assert!(browser.wait_for("document.querySelector('#cancel-workflow').hidden === false", Duration::from_secs(5)));
    browser.eval("document.querySelector('#cancel-workflow').click(); true");
    assert!(
        browser.wait_for(&format!("{}?.dataset.state === 'cancelled'", workflow_row(slow)), Duration::from_secs(10)),
        "the cancelled workflow is not shown cancelled: {}",
        browser.eval("document.querySelector('#wf-detail').innerText")
    );
    assert!(browser.wait_for(
        "document.querySelector('#wf-members tr[data-node=\"2\"]')?.dataset.state === 'skipped'",
        Duration::from_secs(5)
    ));
    let report = rt.block_on(client.workflow_status(slow)).unwrap();
    assert_eq!(report.state, WorkflowState::Cancelled);
    browser.eval("document.querySelector('#wf-detail').close(); true");

    // Under load, for the screenshot: tasks keep coming for a few seconds.
    let busy = Arc::new(AtomicBool::new(true));
    let load = {
        let busy = busy.clone();
        let client = cp.client();
        std::thread::spawn(move || {
            let rt = runtime();
            let mut n = 0u64;
            while busy.load(Ordering::Relaxed) {
                n += 1;
                let options = SubmitOptions::default();
                let _ = match n % 7 {
                    0 => rt.block_on(client.delay("divide", (n, 0), options)),
                    1 | 2 => rt.block_on(client.delay("sleep_ms", (20 + n % 200,), options)),
                    _ => rt.block_on(client.delay("add", (n, n), options)),
                };
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(6));
    let screenshot = target_dir().parent().unwrap().join("dashboard-screenshot.png");
    browser.set_viewport(1280, 1000);
    browser.screenshot(&screenshot);
    println!("dashboard screenshot: {}", screenshot.display());
    if let Some(path) = std::env::var_os("FASTWORKER_DASHBOARD_SCREENSHOT") {
        browser.screenshot(std::path::Path::new(&path));
        println!("dashboard screenshot also saved to {}", path.to_string_lossy());
    }
    assert!(browser.wait_for("document.querySelectorAll('#chart-throughput path').length >= 2", Duration::from_secs(5)));

    // Dark mode follows the system setting; a phone's width does not scroll sideways.
    browser.prefer_dark(true);
    let background = "getComputedStyle(document.body).backgroundColor";
    assert_eq!(browser.eval(background), "rgb(18, 21, 27)", "dark mode is not applied");
    browser.set_viewport(390, 844);
    assert!(
        browser.wait_for("document.documentElement.scrollWidth <= window.innerWidth", Duration::from_secs(5)),
        "the page is wider than a phone: {}",
        browser.eval("document.documentElement.scrollWidth")
    );
    let phone = target_dir().parent().unwrap().join("dashboard-screenshot-phone-dark.png");
    browser.screenshot(&phone);
    println!("phone-width dark screenshot: {}", phone.display());
    busy.store(false, Ordering::Relaxed);
    load.join().unwrap();
    println!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}

/// The page's numbers under a load that keeps subworkers prefetching: the
/// Queues card and the subworker rows show runs started apart from runs
/// only sent ahead, and they are the API's numbers.
#[test]
fn the_page_shows_running_apart_from_prefetched_as_the_api_counts_them() {
    let Some(chromium) = chromium_or_opted_out("the_page_shows_running_apart_from_prefetched_as_the_api_counts_them")
    else {
        return;
    };
    // No thread on the control plane: every run goes to the two subworkers,
    // two threads and four prefetched runs each.
    let cp = Process::control_plane_with_gui(&["example-tasks"], &["--no-discovery", "--concurrency", "0"], &[]);
    let worker = ["--heartbeat-interval", "0.5", "--concurrency", "2", "--prefetch", "4"];
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &worker);
    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &worker);
    let gui = cp.gui.clone().expect("a dashboard URL");
    let mut browser = Browser::start(&chromium);
    browser.navigate(&format!("{gui}/"));
    // No empty notice before the first data: the page comes with it hidden,
    // and once the list has come it says whether there are rows.
    let served = get(&format!("{gui}/")).text();
    for notice in ["no-tasks", "no-workers", "no-workflows", "no-limits", "no-schedules"] {
        assert!(served.contains(&format!(r#"<p id="{notice}" class="muted" hidden>"#)), "#{notice} is shown at first");
    }
    assert!(browser.wait_for("window.fastworker.live === true", Duration::from_secs(10)));
    assert!(browser.wait_for(
        "document.querySelector('#tasks-count').textContent.includes('kept') && \
         document.querySelector('#no-tasks').hidden === (document.querySelectorAll('#tasks tbody tr').length > 0)",
        Duration::from_secs(10)
    ));

    // 20 runs of 8 s: 4 start (2 threads × 2), 8 wait prefetched, 8 queued.
    let rt = runtime();
    let client = cp.client();
    for _ in 0..20 {
        rt.block_on(client.delay("sleep_ms", (8000,), SubmitOptions::default())).unwrap();
    }
    let page = r#"(() => {
        const cell = (sel) => Number(document.querySelector(sel)?.textContent ?? NaN);
        const workers = {};
        for (const row of document.querySelectorAll('#workers tbody tr')) {
            workers[row.dataset.workerId] = [Number(row.querySelector('[data-col=running]').dataset.value),
                Number(row.querySelector('[data-col=prefetched]').dataset.value)];
        }
        const rows = (state) => document.querySelectorAll(`#tasks tbody .state.${state}`).length;
        return JSON.stringify({
            queued: cell('#queues tr[data-priority=all] [data-col=queued]'),
            running: cell('#queues tr[data-priority=all] [data-col=running]'),
            prefetched: cell('#queues tr[data-priority=all] [data-col=prefetched]'),
            workers,
            rows: { queued: rows('queued'), running: rows('running'), prefetched: rows('prefetched') } });
    })()"#;
    let api = || {
        let status = get(&format!("{gui}/api/status")).json();
        let sum = |column: &str| -> u64 {
            ["critical", "high", "normal", "low"].iter().map(|p| status["queues"][p][column].as_u64().unwrap()).sum()
        };
        let workers: serde_json::Map<String, Value> = status["workers"]["subworkers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["worker_id"].as_str().unwrap().to_string(), json!([w["running"], w["prefetched"]])))
            .collect();
        // The task rows as the API lists them, filtered by state.
        let listed = |state: &str| get(&format!("{gui}/api/tasks?state={state}&limit=0")).json()["total"].clone();
        let rows =
            json!({ "queued": listed("queued"), "running": listed("running"), "prefetched": listed("prefetched") });
        json!({ "queued": sum("queued"), "running": sum("running"), "prefetched": sum("prefetched"), "workers": workers,
            "rows": rows })
    };
    // The page follows the state about every second; while the first four
    // runs go on (8 s), the numbers hold still and must match.
    let expected = json!({ "queued": 8, "running": 4, "prefetched": 8,
        "workers": { "sw1": [2, 4], "sw2": [2, 4] },
        "rows": { "queued": 8, "running": 4, "prefetched": 8 } });
    let mut last = (Value::Null, Value::Null);
    let deadline = Instant::now() + Duration::from_secs(15);
    let matched = loop {
        let shown: Value = serde_json::from_str(browser.eval(page).as_str().unwrap()).unwrap();
        let answered = api();
        if shown == answered && shown == expected {
            break true;
        }
        let shown_running = shown["running"].as_u64().unwrap_or(0);
        assert!(shown_running <= 4, "more runs shown running than there are threads: {shown}");
        last = (shown, answered);
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(matched, "the page showed {} while the API answered {} (expected {expected})", last.0, last.1);
    // The labels say what each count is.
    let workers_text = browser.eval("document.querySelector('#workers tr[data-worker-id=\"sw1\"]').innerText");
    assert!(workers_text.as_str().unwrap().contains("2 of 2 threads"), "{workers_text}");
    // (A periodic example task may add its runs meanwhile: at least the 20.)
    let labelled = "(() => { const m = /^\\((\\d+) shown · (\\d+) kept · (\\d+) submitted since start\\)$/\
        .exec(document.querySelector('#tasks-count').textContent); return !!m && Number(m[1]) >= 20 && \
        m[1] === m[2] && Number(m[3]) >= Number(m[2]); })()";
    assert!(
        browser.wait_for(labelled, Duration::from_secs(5)),
        "{}",
        browser.eval("document.querySelector('#tasks-count').textContent")
    );
    // Ids differ on the page even when made in the same millisecond.
    let ids = "new Set([...document.querySelectorAll('#tasks tbody td.id')].map(c => c.textContent)).size === \
        document.querySelectorAll('#tasks tbody tr').length";
    assert_eq!(browser.eval(ids), true, "the shown ids are not all different");
    // The name filter.
    assert!(browser.wait_for(
        "[...document.querySelectorAll('#name-filter option')].some(o => o.value === 'sleep_ms')",
        Duration::from_secs(5)
    ));
    browser.eval("{ const f = document.querySelector('#name-filter'); f.value = 'add'; f.dispatchEvent(new Event('change')); } true");
    assert!(
        browser.wait_for(
            "document.querySelectorAll('#tasks tbody tr').length === 0 && !document.querySelector('#no-tasks').hidden",
            Duration::from_secs(5)
        ),
        "filtering by another name still shows rows"
    );
    // The example's periodic tasks are listed with their schedules.
    assert!(
        browser
            .wait_for("document.querySelector('#schedules tr[data-task=\"tick\"]') !== null", Duration::from_secs(5)),
        "{}",
        browser.eval("document.querySelector('#schedules-card').innerText")
    );
    // The task limits are shown (limited_running declares one).
    assert!(browser.wait_for(
        "document.querySelector('#task-limits tr[data-task=\"limited_running\"]') !== null",
        Duration::from_secs(5)
    ));
}
