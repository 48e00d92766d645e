//! Subworkers: registration, routing by task name, load spreading, failure
//! and re-dispatch, graceful stop, inactivity, duplicate and reused ids,
//! priorities across the cluster and the `workers` command.
//!
//! Every test starts its own control plane (with no plugin unless said) and
//! real `fastworker subworker` processes on ports of its own, so the tests
//! run in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::protocol::{ErrorKind, WorkerState};
use fastworker::{Client, ClientError, Priority, SubmitOptions, TaskId, TaskReport, TaskState};
use fastworker_tests::{free_ports, run_cli, runtime, stderr, stdout, wait_until, Process};
use serde::de::DeserializeOwned;

/// The typed result of a succeeded report.
fn result<T: DeserializeOwned>(report: &TaskReport) -> T {
    assert_eq!(report.state, TaskState::Succeeded, "expected a succeeded task, got {report:?}");
    serde_json::from_slice(report.result.as_ref().expect("a succeeded task has a result")).expect("result decodes")
}

/// Options naming the task's id.
fn with_id(task_id: TaskId) -> SubmitOptions {
    SubmitOptions { task_id: Some(task_id), ..Default::default() }
}

/// Asserts that `outcome` is the refusal for a task no worker provides.
fn assert_no_provider<T: std::fmt::Debug>(outcome: Result<T, ClientError>, task_name: &str) {
    let expected = format!("no worker provides task '{task_name}'");
    match outcome {
        Err(ClientError::Refused(refusal)) => {
            assert_eq!(refusal.kind, ErrorKind::UnknownTask, "expected an UnknownTask refusal, got {refusal:?}");
            assert!(refusal.message.contains(&expected), "expected {expected:?} in {:?}", refusal.message);
        }
        other => panic!("expected the refusal {expected:?}, got {other:?}"),
    }
}

/// Whether the control plane lists `worker_id` in `state`. Blocking.
fn has_state(cp: &Process, worker_id: &str, state: WorkerState) -> bool {
    cp.worker(worker_id).is_some_and(|w| w.status == state)
}

/// Which of `candidates` runs `task_id` now: the worker its report names
/// once it started there (a run only sent ahead reads `queued`). Blocking.
fn runner(rt: &tokio::runtime::Runtime, client: &Client, task_id: TaskId, candidates: &[&str]) -> Option<String> {
    let report = rt.block_on(client.status(task_id)).ok()?;
    (report.state == TaskState::Running && candidates.contains(&report.worker.as_str())).then_some(report.worker)
}

#[test]
fn concurrent_tasks_spread_over_three_subworkers_and_none_runs_on_the_control_plane() {
    let cp = Process::control_plane(&[], &[]);
    let ids = ["sw1", "sw2", "sw3"];
    let _subworkers: Vec<Process> =
        ids.iter().map(|id| Process::subworker(&cp, id, &["example-tasks"], &["--concurrency", "2"])).collect();
    let client = cp.client();
    let rt = runtime();
    // One at a time, every subworker is idle: equal loads take turns.
    let mut one_at_a_time = Vec::new();
    for i in 0..6_i64 {
        let report = rt.block_on(client.submit("add", (i, i), SubmitOptions::default())).unwrap();
        assert_eq!(result::<i64>(&report), 2 * i);
        one_at_a_time.push(report.worker);
    }
    for id in ids {
        assert!(one_at_a_time.iter().any(|w| w == id), "idle subworkers should take turns, got {one_at_a_time:?}");
    }
    let reports = rt.block_on(async {
        let calls: Vec<_> = (0..30)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.submit("sleep_ms", (50,), SubmitOptions::default()).await })
            })
            .collect();
        let mut reports = Vec::new();
        for call in calls {
            reports.push(call.await.unwrap().expect("every submission gets a report"));
        }
        reports
    });
    let mut counts: HashMap<String, usize> = HashMap::new();
    for report in &reports {
        assert!(result::<u64>(report) >= 50, "sleep_ms(50) slept at least 50 ms: {report:?}");
        assert_eq!(report.attempts, 1, "no task needed a second dispatch: {report:?}");
        *counts.entry(report.worker.clone()).or_default() += 1;
    }
    for id in ids {
        assert!(
            counts.get(id).copied().unwrap_or(0) >= 3,
            "expected each subworker to run at least 3 of 30, got {counts:?}"
        );
    }
    assert_eq!(counts.len(), 3, "expected tasks to run only on sw1..sw3 (not on the control plane), got {counts:?}");
    let cluster = cp.workers().expect("workers()");
    let dispatched: u64 = cluster.subworkers.iter().map(|w| w.dispatched).sum();
    // 6 + 30, and one more for each run sent ahead to a busy subworker
    // that an idle one asked back (not counted as a run: attempts stay 1).
    assert!(dispatched >= 36, "expected at least 6 + 30 dispatches in all: {cluster:?}");
    assert_eq!((cluster.total_subworkers, cluster.active_subworkers), (3, 3), "{cluster:?}");
}

#[test]
fn tasks_are_routed_by_name_and_a_task_nobody_provides_is_refused_at_once() {
    // No restart window (see delivery.rs): refusals are immediate from the start.
    let cp = Process::control_plane(&[], &["--restart-window", "0"]);
    let _a = Process::subworker(&cp, "sw-a", &["example-tasks"], &[]);
    let mut b = Process::subworker(&cp, "sw-b", &["text-tasks"], &[]);
    let client = cp.client();
    let rt = runtime();

    let report = rt.block_on(client.submit("add", (2, 40), SubmitOptions::default())).unwrap();
    assert_eq!(report.worker, "sw-a", "add is provided by sw-a only: {report:?}");
    assert_eq!(result::<i64>(&report), 42);
    let report = rt.block_on(client.submit("upper", ("hello",), SubmitOptions::default())).unwrap();
    assert_eq!(report.worker, "sw-b", "upper is provided by sw-b only: {report:?}");
    assert_eq!(result::<String>(&report), "HELLO");

    let start = Instant::now();
    assert_no_provider(rt.block_on(client.submit("no_such_task", (1,), SubmitOptions::default())), "no_such_task");
    assert!(start.elapsed() < Duration::from_secs(2), "the refusal must be immediate, took {:?}", start.elapsed());

    b.signal("KILL");
    b.wait_exit(Duration::from_secs(5));
    let excluded = wait_until(Duration::from_secs(3), || !has_state(&cp, "sw-b", WorkerState::Active));
    assert!(excluded, "a killed subworker must be excluded at once; workers: {:?}", cp.workers());
    let start = Instant::now();
    assert_no_provider(rt.block_on(client.submit("upper", ("hello",), SubmitOptions::default())), "upper");
    assert!(start.elapsed() < Duration::from_secs(2), "the refusal must be immediate, took {:?}", start.elapsed());
    let report = rt.block_on(client.submit("add", (1, 2), SubmitOptions::default())).unwrap();
    assert_eq!((report.worker.as_str(), result::<i64>(&report)), ("sw-a", 3), "{report:?}");
}

#[test]
fn a_subworker_started_under_load_gets_tasks_within_seconds() {
    let cp = Process::control_plane(&[], &[]);
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "2"]);
    let client = cp.client();
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let (done, on_sw2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let loops: Vec<_> = (0..3)
        .map(|_| {
            let (client, stop, done, on_sw2) = (client.clone(), stop.clone(), done.clone(), on_sw2.clone());
            rt.spawn(async move {
                let mut outcomes: Vec<Result<String, String>> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let outcome = match client.submit("sleep_ms", (20,), SubmitOptions::default()).await {
                        Ok(report) if report.state == TaskState::Succeeded => Ok(report.worker),
                        Ok(report) => Err(format!("{report:?}")),
                        Err(error) => Err(error.to_string()),
                    };
                    if outcome.as_deref() == Ok("sw2") {
                        on_sw2.fetch_add(1, Ordering::SeqCst);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect();
    let running = wait_until(Duration::from_secs(5), || done.load(Ordering::SeqCst) >= 10);
    assert!(running, "tasks should run on sw1 before sw2 starts; {} done", done.load(Ordering::SeqCst));

    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &["--concurrency", "2"]);
    let landed = wait_until(Duration::from_secs(5), || on_sw2.load(Ordering::SeqCst) >= 5);
    stop.store(true, Ordering::SeqCst);
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut failures = Vec::new();
    for handle in loops {
        for outcome in rt.block_on(handle).unwrap() {
            match outcome {
                Ok(worker) => *counts.entry(worker).or_default() += 1,
                Err(failure) => failures.push(failure),
            }
        }
    }
    assert!(failures.is_empty(), "every submission should succeed, {} failed: {failures:?}", failures.len());
    assert!(landed, "expected at least 5 tasks on sw2 within 5 s of its registration, got {counts:?}");
    assert!(counts.keys().all(|w| w == "sw1" || w == "sw2"), "expected tasks only on sw1 and sw2, got {counts:?}");
}

#[test]
fn tasks_of_a_killed_subworker_are_dispatched_again_and_every_client_gets_its_own_result() {
    let cp = Process::control_plane(&[], &[]);
    let mut subworkers: HashMap<&str, Process> = ["sw1", "sw2"]
        .into_iter()
        .map(|id| (id, Process::subworker(&cp, id, &["example-tasks"], &["--concurrency", "2"])))
        .collect();
    let client = cp.client();
    let rt = runtime();
    let start = Instant::now();

    let slow_id = TaskId::new_v4();
    let slow = rt.spawn({
        let client = client.clone();
        async move { client.submit("sleep_ms", (3000,), with_id(slow_id)).await }
    });
    let mut victim = None;
    let found = wait_until(Duration::from_secs(5), || {
        victim = runner(&rt, &client, slow_id, &["sw1", "sw2"]);
        victim.is_some()
    });
    assert!(found, "the slow task should be running on sw1 or sw2; workers: {:?}", cp.workers());
    let victim = victim.unwrap();
    let survivor = if victim == "sw1" { "sw2" } else { "sw1" };

    let add = |i: i64| {
        let client = client.clone();
        rt.spawn(async move { (i, client.submit("add", (i, i * 10), SubmitOptions::default()).await) })
    };
    let mut adds: Vec<_> = (1..=10).map(add).collect();
    subworkers[victim.as_str()].signal("KILL");
    adds.extend((11..=20).map(add));

    for handle in adds {
        let (i, outcome) = rt.block_on(handle).unwrap();
        let report = outcome.unwrap_or_else(|e| panic!("add({i}, {}) should succeed, got {e}", i * 10));
        assert_eq!(result::<i64>(&report), i * 11, "add({i}, {}) got another result: {report:?}", i * 10);
    }
    let report = rt.block_on(slow).unwrap().expect("the slow task's client gets a report");
    assert!(result::<u64>(&report) >= 3000, "{report:?}");
    assert_eq!(report.worker, survivor, "the slow task should finish on the surviving subworker: {report:?}");
    assert_eq!(report.attempts, 2, "the slow task was dispatched twice: {report:?}");
    assert!(
        !has_state(&cp, &victim, WorkerState::Active),
        "the killed subworker must not be active: {:?}",
        cp.workers()
    );
    assert!(subworkers.get_mut(victim.as_str()).unwrap().wait_exit(Duration::from_secs(1)).is_none());
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

#[test]
fn sigterm_lets_a_subworker_finish_its_task_unregister_and_exit_zero() {
    let cp = Process::control_plane(&[], &["--restart-window", "0"]);
    let mut sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &[]);
    let client = cp.client();
    let rt = runtime();
    let task_id = TaskId::new_v4();
    let slow = rt.spawn({
        let client = client.clone();
        async move { client.submit("sleep_ms", (1500,), with_id(task_id)).await }
    });
    // Started there, not only sent: a run sent to sw1 that it has not
    // started yet (its worker processes still starting) would be handed
    // back at the SIGTERM, to no other provider.
    let started =
        || rt.block_on(client.status(task_id)).is_ok_and(|r| r.state == TaskState::Running && r.worker == "sw1");
    let running = wait_until(Duration::from_secs(5), started);
    assert!(running, "sleep_ms should be running on sw1; workers: {:?}", cp.workers());
    sw1.signal("TERM");

    let report = rt.block_on(slow).unwrap().expect("the running task's client gets its report");
    assert!(result::<u64>(&report) >= 1500, "the task ran to its end: {report:?}");
    assert_eq!((report.worker.as_str(), report.attempts), ("sw1", 1), "{report:?}");
    assert_eq!(sw1.wait_exit(Duration::from_secs(10)), Some(0), "sw1 should exit 0 after draining:\n{}", sw1.log());
    let cluster = cp.workers().expect("workers()");
    assert!(
        cluster.subworkers.iter().all(|w| w.worker_id != "sw1"),
        "a gracefully stopped subworker should be unregistered: {cluster:?}"
    );
    assert_no_provider(rt.block_on(client.submit("sleep_ms", (10,), SubmitOptions::default())), "sleep_ms");
}

#[test]
fn a_silent_subworker_is_inactive_and_skipped_until_it_heartbeats_again() {
    let cp = Process::control_plane(&[], &["--inactive-after", "1"]);
    let beat = ["--heartbeat-interval", "0.3"];
    let sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &beat);
    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &beat);
    let client = cp.client().with_timeout(Duration::from_secs(3));
    let rt = runtime();

    sw1.signal("STOP");
    let inactive = wait_until(Duration::from_secs(5), || has_state(&cp, "sw1", WorkerState::Inactive));
    assert!(inactive, "a frozen sw1 should be inactive within 5 s; workers: {:?}", cp.workers());
    let cluster = cp.workers().expect("workers()");
    assert_eq!((cluster.total_subworkers, cluster.active_subworkers), (2, 1), "{cluster:?}");
    assert_eq!(cp.worker("sw2").map(|w| w.status), Some(WorkerState::Active), "sw2 keeps heartbeating");
    for i in 0..10_i64 {
        let report = rt.block_on(client.submit("add", (i, 1), SubmitOptions::default())).unwrap();
        assert_eq!((report.worker.as_str(), result::<i64>(&report)), ("sw2", i + 1), "{report:?}");
    }

    sw1.signal("CONT");
    let active = wait_until(Duration::from_secs(5), || has_state(&cp, "sw1", WorkerState::Active));
    assert!(active, "sw1 should be active again after it heartbeats; workers: {:?}", cp.workers());
    let mut workers = Vec::new();
    for i in 0..20_i64 {
        let report = rt.block_on(client.submit("add", (i, 2), SubmitOptions::default())).unwrap();
        assert_eq!(result::<i64>(&report), i + 2);
        workers.push(report.worker);
        if workers.last().unwrap() == "sw1" {
            break;
        }
    }
    assert_eq!(workers.last().map(String::as_str), Some("sw1"), "sw1 should get tasks again, got {workers:?}");
}

#[test]
fn a_second_subworker_with_a_live_id_is_refused_and_the_first_keeps_working() {
    let cp = Process::control_plane(&[], &[]);
    let first = Process::subworker(&cp, "twin", &["example-tasks"], &[]);
    let mut second = Process::spawn_subworker(&cp, "twin", &["example-tasks"], &[]);
    assert_eq!(
        second.wait_exit(Duration::from_secs(15)),
        Some(2),
        "a duplicate --worker-id should exit 2; its log:\n{}",
        second.log()
    );
    assert!(second.log().contains("already registered"), "its stderr should say why:\n{}", second.log());

    let cluster = cp.workers().expect("workers()");
    assert_eq!(cluster.total_subworkers, 1, "{cluster:?}");
    let twin = &cluster.subworkers[0];
    let first_port = first.address.rsplit(':').next().unwrap();
    assert_eq!(twin.status, WorkerState::Active, "{twin:?}");
    assert!(twin.address.ends_with(&format!(":{first_port}")), "the first subworker stays registered: {twin:?}");
    let report = runtime().block_on(cp.client().submit("add", (5, 3), SubmitOptions::default())).unwrap();
    assert_eq!((report.worker.as_str(), result::<i64>(&report)), ("twin", 8), "{report:?}");
}

#[test]
fn a_killed_subworker_s_id_is_free_for_a_new_process_at_once() {
    let cp = Process::control_plane(&[], &[]);
    let mut old = Process::subworker(&cp, "sw1", &["example-tasks"], &[]);
    old.signal("KILL");
    old.wait_exit(Duration::from_secs(5));
    // Registered (and listed as active) again, from its new address.
    let new = Process::subworker(&cp, "sw1", &["example-tasks"], &[]);
    let listed = cp.worker("sw1").expect("sw1 is listed");
    let new_port = new.address.rsplit(':').next().unwrap();
    assert!(listed.address.ends_with(&format!(":{new_port}")), "the new process replaces the old entry: {listed:?}");
    let cluster = cp.workers().expect("workers()");
    assert_eq!((cluster.total_subworkers, cluster.active_subworkers), (1, 1), "{cluster:?}");
    let report = runtime().block_on(cp.client().submit("add", (2, 2), SubmitOptions::default())).unwrap();
    assert_eq!((report.worker.as_str(), result::<i64>(&report), report.attempts), ("sw1", 4, 1), "{report:?}");
}

#[test]
fn tasks_waiting_for_busy_subworkers_start_by_priority() {
    // They wait at the control plane (no prefetch), then in the subworker's
    // own queue (the default prefetch): most urgent first either way. The
    // subworker's worker process is sent none ahead, so that its queue is
    // the one tested (runs sent ahead to a process weaken the order as
    // docs/isolation.md says; `priority.rs` tests that).
    tasks_start_by_priority_behind_a_busy_subworker(true);
    tasks_start_by_priority_behind_a_busy_subworker(false);
}

fn tasks_start_by_priority_behind_a_busy_subworker(without_prefetch: bool) {
    let cp = Process::control_plane(&[], &[]);
    let flags: &[&str] =
        if without_prefetch { &["--concurrency", "1", "--prefetch", "0"] } else { &["--concurrency", "1"] };
    let flags = [flags, &["--prefetch-per-process", "0"]].concat();
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &flags);
    let client = cp.client();
    let rt = runtime();
    let blocker = rt.block_on(client.delay("sleep_ms", (800,), SubmitOptions::default())).unwrap();
    let busy = wait_until(Duration::from_secs(5), || runner(&rt, &client, blocker, &["sw1"]).is_some());
    assert!(busy, "the blocker should occupy sw1's only slot; workers: {:?}", cp.workers());

    let waiting = rt.block_on(async {
        // Submitted least urgent first, so arrival order is the reverse of priority order.
        let mut waiting = Vec::new();
        for priority in [Priority::Low, Priority::Normal, Priority::High, Priority::Critical] {
            for _ in 0..2 {
                let options = SubmitOptions { priority: Some(priority), ..Default::default() };
                waiting.push((priority, client.delay("sleep_ms", (20,), options).await.unwrap()));
            }
        }
        for (_, id) in waiting.iter().filter(|_| without_prefetch) {
            let report = client.status(*id).await.unwrap();
            assert_eq!(report.state, TaskState::Queued, "tasks wait while sw1 is busy: {report:?}");
        }
        waiting
    });
    let mut started = Vec::new();
    for (priority, id) in &waiting {
        let mut report = None;
        let finished = wait_until(Duration::from_secs(10), || {
            report = rt.block_on(client.status(*id)).ok();
            report.as_ref().is_some_and(|r| r.state.is_final())
        });
        assert!(finished, "{priority:?} task should finish: {report:?}");
        let report = report.unwrap();
        assert_eq!((report.state, report.worker.as_str()), (TaskState::Succeeded, "sw1"), "{report:?}");
        // One thread runs them one after another: they end in the order they start.
        started.push((report.finished_ms.unwrap(), *priority, *id));
    }
    started.sort();
    let order: Vec<Priority> = started.iter().map(|(_, p, _)| *p).collect();
    use Priority::*;
    assert_eq!(order, [Critical, Critical, High, High, Normal, Normal, Low, Low], "start order by priority");
    // First come, first served within a priority.
    for pair in waiting.chunks(2) {
        let first = started.iter().position(|s| s.2 == pair[0].1).unwrap();
        let second = started.iter().position(|s| s.2 == pair[1].1).unwrap();
        assert!(first < second, "within {:?}, the first submitted starts first: {started:?}", pair[0].0);
    }
}

#[test]
fn subworkers_find_a_management_port_set_with_subworker_port() {
    let (cp, port) = loop {
        let port = free_ports(1);
        let cp = Process::control_plane(&[], &["--subworker-port", &port.to_string()]);
        let base: u16 = cp.address.rsplit(':').next().unwrap().parse().unwrap();
        if !(base..=base + 5).contains(&port) {
            break (cp, port);
        }
    };
    let rt = runtime();
    let discovered = rt.block_on(cp.client().discover()).expect("discover()");
    assert_eq!(discovered, port, "the control plane should announce its --subworker-port");
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &[]);
    let report = rt.block_on(cp.client().submit("add", (20, 22), SubmitOptions::default())).unwrap();
    assert_eq!((report.worker.as_str(), result::<i64>(&report)), ("sw1", 42), "{report:?}");
}

#[test]
fn the_workers_command_prints_the_cluster_as_json() {
    let cp = Process::control_plane(&[], &[]);
    let sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "2"]);
    let report = runtime().block_on(cp.client().submit("add", (1, 2), SubmitOptions::default())).unwrap();
    assert_eq!(report.worker, "sw1");

    let output = run_cli(&["workers", "--address", &cp.address, "--timeout", "5"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|e| panic!("stdout should be JSON ({e}):\n{}", stdout(&output)));
    assert_eq!(json["total_subworkers"], 1, "{json}");
    assert_eq!(json["active_subworkers"], 1, "{json}");
    let subworkers = json["subworkers"].as_object().expect("subworkers is an object keyed by worker id");
    assert_eq!(subworkers.keys().collect::<Vec<_>>(), ["sw1"], "{json}");
    let entry = &subworkers["sw1"];
    let port = sw1.address.rsplit(':').next().unwrap();
    let address = entry["address"].as_str().expect("address is a string");
    assert!(address.starts_with("tcp://") && address.ends_with(&format!(":{port}")), "{json}");
    assert_eq!(entry["status"], "active", "{json}");
    assert!(entry["load"].is_u64(), "{json}");
    assert_eq!(entry["concurrency"], 2, "{json}");
    assert_eq!(entry["connected"], true, "{json}");
    assert_eq!(entry["dispatched"], 1, "one task went to sw1: {json}");
    let last_seen = entry["last_seen"].as_str().expect("last_seen is a string");
    assert!(last_seen.len() >= 20 && &last_seen[10..11] == "T" && last_seen.ends_with('Z'), "RFC 3339 UTC: {json}");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let last_seen_ms = entry["last_seen_ms"].as_u64().expect("last_seen_ms is a number");
    // Either a time (ms since the epoch) or an age (ms ago): recent either way.
    assert!(last_seen_ms < 60_000 || now_ms.abs_diff(last_seen_ms) < 60_000, "last_seen_ms is recent: {json}");
    let tasks: Vec<&str> =
        entry["tasks"].as_array().expect("tasks is an array").iter().filter_map(|t| t.as_str()).collect();
    assert!(tasks.contains(&"add") && tasks.contains(&"sleep_ms"), "{json}");
}

#[test]
fn a_subworker_with_prefetch_is_sent_tasks_beyond_its_concurrency() {
    let cp = Process::control_plane(&[], &[]);
    let _sw = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "1", "--prefetch", "2"]);
    let client = cp.client();
    let rt = runtime();
    let ids: Vec<TaskId> =
        (0..4).map(|_| rt.block_on(client.delay("sleep_ms", (400,), SubmitOptions::default())).unwrap()).collect();
    // One runs, two are sent ahead to the subworker and wait there (read
    // `queued` until they start, docs/isolation.md), the fourth waits at the
    // control plane: the subworker's load counts the three it was sent.
    // The first submitted runs first, even when the subworker holds its
    // runs before its worker process has registered (they wait there in
    // submission order).
    let states = || -> Vec<TaskState> { ids.iter().map(|id| rt.block_on(client.status(*id)).unwrap().state).collect() };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = states();
    while !seen.contains(&TaskState::Running) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        seen = states();
    }
    assert_eq!(seen, [TaskState::Running, TaskState::Queued, TaskState::Queued, TaskState::Queued], "{seen:?}");
    let worker = cp.worker("sw1").expect("sw1 listed");
    assert_eq!((worker.load, worker.concurrency), (3, 1), "load counts what was sent: {worker:?}");
    for id in ids {
        let report = rt.block_on(client.wait(id, Duration::from_secs(5))).unwrap();
        assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
    }
}
