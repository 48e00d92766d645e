//! Delivery: every accepted task reaches exactly one reported outcome,
//! across drains, stalls and control-plane restarts.
//!
//! * a draining subworker hands back what it has not started, which runs
//!   on another provider;
//! * a stalled (SIGSTOP) subworker's short-timeout tasks finish elsewhere,
//!   and what it reports once it wakes up is discarded and counted;
//! * a draining subworker holding more than 64 tasks loses none of them;
//! * a registered worker that never answers a dispatch loses the runs sent
//!   to it within the reply timeout, and a real subworker runs them;
//! * a task submitted while a restarted control plane waits for its
//!   subworkers succeeds once they are back, and a misspelled name is told
//!   apart from a task not provided yet.
//!
//! Every test starts its own processes on ports of its own.

use std::time::{Duration, Instant};

use fastworker::protocol::ErrorKind;
use fastworker::{Client, ClientError, Priority, SubmitOptions, TaskId, TaskReport, TaskState};
use fastworker_tests::attack::{offered, FakeAnswer, FakeSubworker};
use fastworker_tests::{final_reports, free_base_port, http, runtime, wait_until, Process};

/// How many of `reports` succeeded, and a line per one that did not.
fn tally(reports: &[TaskReport]) -> (usize, Vec<String>) {
    let succeeded = reports.iter().filter(|r| r.state == TaskState::Succeeded).count();
    let others = reports
        .iter()
        .filter(|r| r.state != TaskState::Succeeded)
        .map(|r| format!("{} {:?} on '{}': {:?}", r.task_id, r.state, r.worker, r.error.as_ref().map(|e| &e.message)))
        .collect();
    (succeeded, others)
}

/// Submits `count` `sleep_ms(ms)` without waiting; their ids.
fn submit_sleeps(rt: &tokio::runtime::Runtime, client: &Client, count: usize, ms: u64) -> Vec<TaskId> {
    (0..count).map(|_| rt.block_on(client.delay("sleep_ms", (ms,), SubmitOptions::default())).unwrap()).collect()
}

/// Tasks the control plane has sent `worker_id` so far. Blocking.
fn dispatched(cp: &Process, worker_id: &str) -> u64 {
    cp.worker(worker_id).map_or(0, |w| w.dispatched)
}

/// A counter of the control plane's `/metrics`.
fn metric(cp: &Process, name: &str) -> u64 {
    let text = http::get(&format!("{}/metrics", cp.gui.as_ref().expect("started with a dashboard"))).text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[test]
fn a_draining_subworker_hands_back_its_unstarted_tasks_and_another_provider_runs_them() {
    let cp = Process::control_plane_with_gui(&[], &[], &[]);
    let mut sw1 = Process::subworker(
        &cp,
        "sw1",
        &["example-tasks"],
        &["--concurrency", "1", "--prefetch", "10", "--shutdown-timeout", "1"],
    );
    let client = cp.client();
    let rt = runtime();
    let ids = submit_sleeps(&rt, &client, 10, 1000);
    assert!(
        wait_until(Duration::from_secs(10), || dispatched(&cp, "sw1") == 10),
        "sw1 holds all 10: {:?}",
        cp.workers()
    );
    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &["--concurrency", "4"]);
    let stop = Instant::now();
    sw1.signal("TERM");
    let reports = final_reports(&rt, &client, &ids, Duration::from_secs(30)).expect("all 10 end");
    let (succeeded, others) = tally(&reports);
    assert_eq!(succeeded, 10, "every task succeeds on sw1 or sw2, none is failed by the drain: {others:#?}");
    let on_sw2 = reports.iter().filter(|r| r.worker == "sw2").count();
    assert!(on_sw2 >= 8, "the unstarted tasks were handed back and ran on sw2 ({on_sw2} did)");
    for report in reports.iter().filter(|r| r.worker == "sw2") {
        assert_eq!(report.attempts, 1, "a handed-back task does not count a run: {report:?}");
    }
    let handed_back = metric(&cp, "fastworker_tasks_handed_back_total");
    assert!(handed_back >= 8, "hand-backs counted: {handed_back}");
    assert_eq!(sw1.wait_exit(Duration::from_secs(10)), Some(0), "{}", sw1.log());
    eprintln!("10 of 10 succeeded ({on_sw2} on sw2) {:.1} s after SIGTERM", stop.elapsed().as_secs_f64());
}

#[test]
fn a_stalled_subworkers_short_timeout_tasks_finish_elsewhere_and_its_late_reports_are_discarded() {
    let cp = Process::control_plane_with_gui(&[], &["--inactive-after", "3"], &[]);
    let sw1 = Process::subworker(
        &cp,
        "sw1",
        &["example-tasks"],
        &["--concurrency", "1", "--prefetch", "20", "--heartbeat-interval", "0.5"],
    );
    let client = cp.client();
    let rt = runtime();
    // One long task runs; five with a 2 s timeout wait behind it on sw1
    // (sent after it, and less urgent, so that they do not start first).
    let urgent = SubmitOptions { priority: Some(Priority::Critical), ..Default::default() };
    let long = rt.block_on(client.delay("sleep_ms", (4000,), urgent)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || dispatched(&cp, "sw1") == 1), "{:?}", cp.workers());
    let short =
        SubmitOptions { timeout: Some(Duration::from_secs(2)), priority: Some(Priority::Low), ..Default::default() };
    let adds: Vec<TaskId> =
        (0..5_i64).map(|i| rt.block_on(client.delay("add", (i, i), short.clone())).unwrap()).collect();
    assert!(wait_until(Duration::from_secs(10), || dispatched(&cp, "sw1") == 6), "sw1 holds all 6: {:?}", cp.workers());
    let stall = Instant::now();
    sw1.signal("STOP");
    let _sw2 =
        Process::subworker(&cp, "sw2", &["example-tasks"], &["--concurrency", "2", "--heartbeat-interval", "0.5"]);
    let mut ids = adds.clone();
    ids.push(long);
    let reports = final_reports(&rt, &client, &ids, Duration::from_secs(30)).expect("all 6 end");
    let (succeeded, others) = tally(&reports);
    assert_eq!(succeeded, 6, "the stalled worker's tasks finish on sw2, none times out unstarted: {others:#?}");
    for report in &reports {
        assert_eq!(report.worker, "sw2", "{report:?}");
    }
    eprintln!("6 of 6 succeeded on sw2, {:.1} s after the stall", stall.elapsed().as_secs_f64());
    // sw1 wakes up and reports what it ran under its revoked leases: the
    // reports are discarded (the outcomes stay sw2's) and counted.
    assert_eq!(metric(&cp, "fastworker_revoked_reports_total"), 0);
    sw1.signal("CONT");
    let counted = wait_until(Duration::from_secs(20), || metric(&cp, "fastworker_revoked_reports_total") >= 6);
    assert!(counted, "revoked reports: {}\n{}", metric(&cp, "fastworker_revoked_reports_total"), cp.log());
    // It is told what was taken back (best effort: it may have run them
    // already, as here when the notice comes after its queue has run).
    let told = wait_until(Duration::from_secs(5), || sw1.log().contains("the control plane took back tasks sent here"));
    assert!(told, "{}", sw1.log());
    for id in &ids {
        let report = rt.block_on(client.status(*id)).unwrap();
        assert_eq!((report.state, report.worker.as_str()), (TaskState::Succeeded, "sw2"), "{report:?}");
    }
}

#[test]
fn a_run_not_reported_in_time_loses_its_lease_and_is_sent_elsewhere_not_timed_out() {
    // Silence is noticed only after 30 s; the lease bounds are what act here.
    let cp = Process::control_plane_with_gui(&[], &["--max-subworker-run", "4"], &[]);
    let sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "1"]);
    let client = cp.client();
    let rt = runtime();
    let short = SubmitOptions { timeout: Some(Duration::from_secs(1)), ..Default::default() };
    let task_id = rt.block_on(client.delay("sleep_ms", (300,), short)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || dispatched(&cp, "sw1") == 1), "{:?}", cp.workers());
    let stall = Instant::now();
    sw1.signal("STOP");
    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &["--concurrency", "1"]);
    // Whether sw1 reported the start before it stalled (then its report is
    // due 1 s + 2 s after it) or not (then within --max-subworker-run 4 s),
    // the lease is revoked and sw2 runs the task; it never times out.
    let reports = final_reports(&rt, &client, &[task_id], Duration::from_secs(15)).expect("the task ends");
    let report = &reports[0];
    assert_eq!((report.state, report.worker.as_str()), (TaskState::Succeeded, "sw2"), "{report:?}");
    assert_eq!(report.attempts, 2, "{report:?}");
    assert!(stall.elapsed() < Duration::from_secs(10), "well before --inactive-after: {:?}", stall.elapsed());
    assert_eq!(metric(&cp, "fastworker_leases_expired_total"), 1);
    eprintln!(
        "taken back from the stalled sw1 and succeeded on sw2 {:.1} s after the stall",
        stall.elapsed().as_secs_f64()
    );
    sw1.signal("CONT");
}

#[test]
fn a_draining_subworker_holding_more_than_64_tasks_loses_none() {
    let cp = Process::control_plane(&[], &[]);
    let mut sw1 = Process::subworker(
        &cp,
        "sw1",
        &["example-tasks"],
        &["--concurrency", "2", "--prefetch", "98", "--shutdown-timeout", "4"],
    );
    let client = cp.client();
    let rt = runtime();
    let ids = submit_sleeps(&rt, &client, 100, 3000);
    assert!(wait_until(Duration::from_secs(20), || dispatched(&cp, "sw1") == 100), "sw1 holds 100: {:?}", cp.workers());
    // Its two threads take their runs (3 s each) at once; on a loaded
    // machine "at once" can be a few hundred ms after the dispatch lands
    // (the control plane shows a dispatched run as running, so this is a
    // pause, not a wait on something it reports).
    std::thread::sleep(Duration::from_secs(1));
    sw1.signal("TERM");
    // Nobody else provides sleep_ms: the 98 handed back wait, queued.
    let queued = || {
        ids.iter()
            .filter_map(|id| rt.block_on(client.status(*id)).ok())
            .filter(|r| r.state == TaskState::Queued)
            .count()
    };
    assert!(wait_until(Duration::from_secs(5), || queued() == 98), "98 handed back and waiting: {}", queued());
    // A provider appears while sw1 finishes its two running tasks.
    let _sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &["--concurrency", "50"]);
    let reports = final_reports(&rt, &client, &ids, Duration::from_secs(40)).expect("all 100 end");
    let (succeeded, others) = tally(&reports);
    assert_eq!(succeeded, 100, "{others:#?}");
    assert_eq!(reports.iter().filter(|r| r.worker == "sw1").count(), 2, "sw1 finished what it was running");
    assert_eq!(sw1.wait_exit(Duration::from_secs(10)), Some(0), "{}", sw1.log());
}

#[test]
fn a_dispatch_nobody_answers_is_taken_back_and_runs_on_another_subworker_within_seconds() {
    // --max-subworker-run stays at its hour: the reply timeout (5 s by
    // default) is what acts.
    let cp = Process::control_plane_with_gui(&[], &[], &[]);
    let _hole = FakeSubworker::register(&cp, "hole", vec![offered("add", "")], FakeAnswer::Never);
    let _real = Process::subworker(&cp, "real", &["example-tasks"], &["--concurrency", "2"]);
    let client = cp.client();
    let rt = runtime();
    let submitted = Instant::now();
    let ids: Vec<TaskId> =
        (0..8_i64).map(|i| rt.block_on(client.delay("add", (i, 1), SubmitOptions::default())).unwrap()).collect();
    assert!(
        wait_until(Duration::from_secs(5), || dispatched(&cp, "hole") >= 1),
        "the hole takes some: {:?}",
        cp.workers()
    );
    let reports = final_reports(&rt, &client, &ids, Duration::from_secs(30)).expect("all 8 end");
    let took = submitted.elapsed();
    let (succeeded, others) = tally(&reports);
    assert_eq!(succeeded, 8, "{others:#?}");
    for report in &reports {
        assert_eq!(report.worker, "real", "{report:?}");
    }
    let taken_back = dispatched(&cp, "hole");
    assert!(metric(&cp, "fastworker_leases_expired_total") >= taken_back, "each run sent to the hole lost its lease");
    let again = reports.iter().filter(|r| r.attempts == 2).count() as u64;
    assert_eq!(again, taken_back, "the runs the hole held were sent again: {reports:#?}");
    assert!(took < Duration::from_secs(15), "within seconds of the 5 s reply timeout, not an hour: {took:?}");
    eprintln!(
        "{taken_back} runs the hole never acknowledged succeeded on 'real'; all 8 ended {:.1} s after submission",
        took.as_secs_f64()
    );
}

/// Starts a control plane with no plugin on `address`, waiting until it answers.
fn control_plane_at(address: &str, extra: &[&str]) -> Process {
    let mut args: Vec<String> =
        ["control-plane", "--no-gui", "--base-address", address].iter().map(|s| s.to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut process = Process::spawn(&args, &[], address.to_string());
    process.wait_ready(Duration::from_secs(20)).unwrap();
    process
}

#[test]
fn a_task_submitted_while_a_restarted_control_plane_waits_for_its_subworkers_succeeds() {
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    let mut cp = control_plane_at(&address, &["--restart-window", "6"]);
    let _sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--heartbeat-interval", "2"]);
    let rt = runtime();
    assert_eq!(rt.block_on(cp.client().call::<i64>("add", (1, 2))).unwrap(), 3);

    cp.signal("KILL");
    cp.wait_exit(Duration::from_secs(5));
    let restarted = Instant::now();
    let cp = control_plane_at(&address, &["--restart-window", "6"]);
    let serving = Instant::now();
    // A task submitted now, before sw1 is back, succeeds once it is.
    let report = rt.block_on(cp.client().submit("add", (2, 3), SubmitOptions::default())).unwrap();
    assert_eq!((report.state, report.worker.as_str()), (TaskState::Succeeded, "sw1"), "{report:?}");
    let back = serving.elapsed();
    // One heartbeat (2 s) brings it back; a second is slack for a loaded machine.
    assert!(
        back < Duration::from_secs(4),
        "sw1 is back within two heartbeats (2 s each) of the restart, took {back:?}"
    );
    eprintln!(
        "a submission made as the control plane came back succeeded {:.2} s later ({:.2} s after the kill)",
        back.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    // Inside the window, a name nobody provides is transient (nobody can
    // tell a misspelling yet): a short call gets NotYetProvided.
    let quick = cp.client().with_timeout(Duration::from_millis(1000));
    match rt.block_on(quick.submit("ad", (2, 3), SubmitOptions::default())) {
        Err(ClientError::Refused(refusal)) => {
            assert_eq!(refusal.kind, ErrorKind::NotYetProvided, "{refusal:?}");
            assert!(refusal.message.contains("--restart-window"), "{}", refusal.message);
        }
        other => panic!("expected NotYetProvided, got {other:?}"),
    }
    // After the window, it is refused at once as unknown.
    let unknown = |outcome: Result<TaskReport, ClientError>| matches!(outcome, Err(ClientError::Refused(refusal)) if refusal.kind == ErrorKind::UnknownTask);
    let closed = wait_until(Duration::from_secs(10), || {
        unknown(rt.block_on(quick.submit("ad", (2, 3), SubmitOptions::default())))
    });
    assert!(closed, "the window closes");
    let closed_after = restarted.elapsed();
    assert!(closed_after >= Duration::from_secs(5), "not before the 6 s window ends: {closed_after:?}");
    let start = Instant::now();
    match rt.block_on(cp.client().submit("ad", (2, 3), SubmitOptions::default())) {
        Err(ClientError::Refused(refusal)) => {
            assert_eq!(refusal.kind, ErrorKind::UnknownTask, "{refusal:?}");
            assert!(refusal.message.contains("no worker provides task 'ad'"), "{}", refusal.message);
        }
        other => panic!("expected UnknownTask, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1), "refused at once, took {:?}", start.elapsed());
}
