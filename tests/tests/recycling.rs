//! Recycling and the per-process views of worker processes
//! (docs/isolation.md): `--max-tasks-per-child` and `--max-memory-per-child`
//! replace a worker process gracefully under load, losing nothing, and
//! `fastworker workers`, `/api/workers` and `/metrics` show each worker
//! process (pid, runs, memory, restarts, recycles, last crash).
//!
//! Every test starts its own processes on ports of its own.

use std::time::{Duration, Instant};

use fastworker::protocol::FailureKind;
use fastworker::{Client, SubmitOptions, TaskId, TaskState};
use fastworker_tests::{http, run_cli, runtime, stdout, wait_until, Process};
use serde_json::Value;

/// Tasks submitted in all, and the client threads submitting them.
const TASKS: usize = 200;
const THREADS: usize = 4;

/// A sample of the control plane's `/metrics` (0 when not shown yet);
/// `series` is the name with its labels.
fn metric(cp: &Process, series: &str) -> u64 {
    let text = http::get(&format!("{}/metrics", cp.gui.as_ref().expect("started with a dashboard"))).text();
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// The worker processes as the dashboard's `/api/workers` lists them.
fn processes(cp: &Process) -> Vec<Value> {
    let body = http::get(&format!("{}/api/workers", cp.gui.as_ref().expect("started with a dashboard"))).json();
    body["worker_processes"].as_array().cloned().unwrap_or_default()
}

/// Submits [`TASKS`] tasks from [`THREADS`] client threads at once (task
/// `i` is `make(i)`), then waits for every one: each accepted task has one
/// outcome, a success with its own answer.
fn submit_under_load(cp: &Process, make: fn(usize) -> (&'static str, Value, Value)) {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let client: Client = cp.client().with_timeout(Duration::from_secs(60));
            scope.spawn(move || {
                let rt = runtime();
                let mine: Vec<usize> = (thread..TASKS).step_by(THREADS).collect();
                let submitted: Vec<(usize, TaskId)> = mine
                    .iter()
                    .map(|&i| {
                        let (task, args, _) = make(i);
                        let id = rt.block_on(client.delay(task, args, SubmitOptions::default())).expect("accepted");
                        (i, id)
                    })
                    .collect();
                for (i, id) in submitted {
                    let report = rt.block_on(client.wait(id, Duration::from_secs(120))).expect("an outcome");
                    assert_eq!(report.state, TaskState::Succeeded, "task {i}: {report:?}");
                    let (_, _, expected) = make(i);
                    let answer: Value = serde_json::from_slice(report.result.as_deref().expect("a result")).unwrap();
                    assert_eq!(answer, expected, "task {i}");
                }
            });
        }
    });
    eprintln!("{TASKS} tasks in {:?}", started.elapsed());
}

fn echo(i: usize) -> (&'static str, Value, Value) {
    let text = format!("task-{i}");
    ("echo_back", serde_json::json!([text]), Value::String(text))
}

/// Every fifth task leaks 4 MiB and keeps it; the others echo.
fn leak_some(i: usize) -> (&'static str, Value, Value) {
    if i.is_multiple_of(5) {
        ("leak_mb", serde_json::json!([4]), serde_json::json!(4))
    } else {
        echo(i)
    }
}

/// The recycles in all, as `/metrics` and `/api/workers` count them.
fn recycles(cp: &Process) -> (u64, u64) {
    let listed = processes(cp).iter().map(|p| p["recycles"].as_u64().unwrap()).sum();
    (metric(cp, "fastworker_worker_process_recycles_total"), listed)
}

/// The recycles once at least `expected` are counted and both views agree,
/// or as they stand after 10 s: a process past its bound is seen at the
/// supervisor's next read (every 100 ms), which may come after the load
/// has ended on a fast or loaded machine.
fn recycles_settled(cp: &Process, expected: u64) -> (u64, u64) {
    wait_until(Duration::from_secs(10), || {
        let (total, listed) = recycles(cp);
        total >= expected && total == listed
    });
    recycles(cp)
}

#[test]
fn recycling_by_count_under_load_loses_nothing() {
    let mut cp =
        Process::control_plane_with_gui(&["crash-tasks"], &["--concurrency", "2", "--max-tasks-per-child", "10"], &[]);
    cp.wait_worker_processes().unwrap();
    submit_under_load(&cp, echo);
    // A process starts exactly 10 runs, even with runs sent ahead, then
    // stops (handing those back): 200 starts = 10 × recycles + the runs of
    // the 2 live processes (0 to 9 each), so 19 or 20 recycles.
    let (total, listed) = recycles_settled(&cp, 19);
    eprintln!("{total} recycles");
    assert!(total >= 19, "only {total} recycles: a process started more than 10 runs\n{}", cp.log());
    assert_eq!(total, listed);
    assert_eq!(metric(&cp, "fastworker_worker_process_crashes_total"), 0, "{}", cp.log());
    // The supervisors read their processes' run counts every 100 ms.
    let runs = || processes(&cp).iter().map(|p| p["runs_total"].as_u64().unwrap()).sum::<u64>();
    assert!(wait_until(Duration::from_secs(5), || runs() >= TASKS as u64), "{} runs started", runs());
    assert!(cp.is_running());
}

#[test]
fn recycling_by_memory_under_load_loses_nothing() {
    // A worker process's own RSS is a few tens of MiB; 40 leaks of 4 MiB
    // push each of the 2 past the bound several times.
    let mut cp =
        Process::control_plane_with_gui(&["crash-tasks"], &["--concurrency", "2", "--max-memory-per-child", "64"], &[]);
    cp.wait_worker_processes().unwrap();
    let base: Vec<u64> = processes(&cp).iter().map(|p| p["rss_bytes"].as_u64().unwrap() >> 20).collect();
    eprintln!("worker process RSS at start: {base:?} MiB");
    submit_under_load(&cp, leak_some);
    let (total, listed) = recycles_settled(&cp, 2);
    eprintln!("{total} recycles");
    assert!(total >= 2, "only {total} recycles:\n{}", cp.log());
    assert_eq!(total, listed);
    assert!(cp.log().contains("--max-memory-per-child 64 MiB"), "{}", cp.log());
    assert_eq!(metric(&cp, "fastworker_worker_process_crashes_total"), 0, "{}", cp.log());
    // The fresh processes are below the bound again.
    assert!(wait_until(Duration::from_secs(10), || processes(&cp)
        .iter()
        .all(|p| p["pid"].is_u64() && p["rss_bytes"].as_u64().is_some_and(|rss| rss > 0 && rss < 64 << 20))));
}

#[test]
fn workers_the_dashboard_and_metrics_show_each_worker_process_and_its_last_crash() {
    let cp = Process::control_plane_with_gui(&["crash-tasks"], &["--concurrency", "1"], &[]);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    let answer: String = rt.block_on(client.call("echo_back", ("up",))).unwrap();
    assert_eq!(answer, "up");
    let first_pid = processes(&cp)[0]["pid"].as_u64().expect("a live process has a pid");
    let before_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let task_id = rt.block_on(client.delay("abort_now", [0u8; 0], SubmitOptions::default())).unwrap();
    let report = rt.block_on(client.wait(task_id, Duration::from_secs(30))).unwrap();
    assert_eq!(report.error.map(|e| e.kind), Some(FailureKind::Crashed));
    // Restarted after its second crash: a new pid.
    let listed = wait_until(Duration::from_secs(15), || {
        let p = &processes(&cp)[0];
        p["restarts"] == 2 && p["pid"].as_u64().is_some_and(|pid| pid != first_pid)
    });
    assert!(listed, "{:?}\n{}", processes(&cp), cp.log());
    // The dashboard's data.
    let p = &processes(&cp)[0];
    assert_eq!(p["worker_id"], "local-1");
    assert_eq!(p["crashes"], 2);
    assert_eq!(p["given_up"], false);
    assert!(p["runs_total"].as_u64().unwrap() >= 3, "{p}");
    let crash = &p["last_crash"];
    assert_eq!(crash["tasks"], serde_json::json!(["abort_now"]), "{p}");
    assert_eq!(crash["task_ids"], serde_json::json!([task_id.to_string()]), "{p}");
    assert!(crash["how"].as_str().unwrap().contains("SIGABRT"), "{p}");
    assert!(crash["at_ms"].as_u64().unwrap() >= before_ms, "{p}");
    // The command line's.
    let output = run_cli(&["workers", "--address", &cp.address, "--timeout", "5"]);
    assert!(output.status.success(), "{output:?}");
    let shown: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let row = &shown["worker_processes"][0];
    assert_eq!(row["worker_id"], "local-1", "{shown}");
    assert_eq!(row["crashes"], 2, "{shown}");
    assert_eq!(row["restarts"], 2, "{shown}");
    assert!(row["pid"].is_u64(), "{shown}");
    assert_eq!(row["last_crash"]["tasks"], serde_json::json!(["abort_now"]), "{shown}");
    assert!(row["last_crash"]["how"].as_str().unwrap().contains("SIGABRT"), "{shown}");
    // And /metrics, per task and per worker process.
    assert_eq!(metric(&cp, "fastworker_task_crashes_total{task=\"abort_now\"}"), 2);
    assert_eq!(metric(&cp, "fastworker_tasks_crashed_total{task=\"abort_now\"}"), 1);
    assert_eq!(metric(&cp, "fastworker_local_worker_crashes_total{worker=\"local-1\"}"), 2);
    assert_eq!(metric(&cp, "fastworker_local_worker_restarts_total{worker=\"local-1\"}"), 2);
    assert!(wait_until(Duration::from_secs(5), || metric(
        &cp,
        "fastworker_local_worker_resident_bytes{worker=\"local-1\"}"
    ) > 0));
}
