//! Crash isolation (docs/isolation.md): task code runs in worker processes
//! the control plane supervises, so a task that aborts, writes through a
//! null pointer, exits, overflows its stack or panics twice costs one
//! worker process, never the control plane.
//!
//! For each kind of crash: the control plane stays up, a bystander's call
//! is answered within 1 s right after the crash, the crashing task fails
//! `Crashed` after `--max-task-crashes` (2) with its signal or exit status,
//! and the worker process is restarted (`/metrics`). In durable mode, a
//! restart with a poison task in the store serves at once and stays up.
//! Runs queued behind a crash in the same worker process are sent again,
//! not charged. `--in-process` keeps tasks on the control plane's threads.
//!
//! Every test starts its own processes on ports of its own.

use std::time::{Duration, Instant};

use fastworker::protocol::FailureKind;
use fastworker::{Client, SubmitOptions, TaskState};
use fastworker_tests::{http, runtime, wait_until, Process};

/// No arguments, as a JSON array.
const NO_ARGS: [u8; 0] = [];

/// A counter of the control plane's `/metrics` (0 when not shown yet).
fn metric(cp: &Process, name: &str) -> u64 {
    let text = http::get(&format!("{}/metrics", cp.gui.as_ref().expect("started with a dashboard"))).text();
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// The bystander's call: `echo_back` answered, and how long it took.
fn bystander(rt: &tokio::runtime::Runtime, client: &Client) -> Duration {
    let started = Instant::now();
    let answer: String = rt.block_on(client.call("echo_back", ("still here",))).expect("the bystander's call");
    assert_eq!(answer, "still here");
    started.elapsed()
}

/// Submits `task`, which kills its process: the control plane stays up, a
/// bystander is answered within 1 s of the first crash, and the task fails
/// `Crashed` after two crashes with `how` in its message.
fn crashes_one_worker_process(task: &str, how: &[&str]) {
    let mut cp = Process::control_plane_with_gui(&["crash-tasks"], &["--concurrency", "2"], &[]);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    // The worker processes serve.
    assert!(bystander(&rt, &client) < Duration::from_secs(20));
    let task_id = rt.block_on(client.delay(task, NO_ARGS, SubmitOptions::default())).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || metric(&cp, "fastworker_worker_process_crashes_total") >= 1),
        "no worker process crash seen:\n{}",
        cp.log()
    );
    let waited = bystander(&rt, &client);
    assert!(waited < Duration::from_secs(1), "the bystander waited {waited:?} after a crash");
    let report = rt.block_on(client.wait(task_id, Duration::from_secs(30))).unwrap();
    assert_eq!(report.state, TaskState::Failed, "{report:?}\n{}", cp.log());
    let error = report.error.expect("a failed task's error");
    assert_eq!(error.kind, FailureKind::Crashed, "{error:?}");
    assert!(error.message.contains("2 times"), "{}", error.message);
    assert!(how.iter().any(|h| error.message.contains(h)), "expected one of {how:?} in: {}", error.message);
    assert!(cp.is_running(), "the control plane died:\n{}", cp.log());
    assert_eq!(metric(&cp, "fastworker_worker_process_crashes_total"), 2);
    assert!(wait_until(Duration::from_secs(10), || metric(&cp, "fastworker_worker_process_restarts_total") >= 2));
    // The HTTP API tells the same.
    let gui = cp.gui.clone().unwrap();
    let body = http::get(&format!("{gui}/api/tasks/{task_id}")).text();
    assert!(body.contains("\"crashed\""), "{body}");
    // And the restarted worker processes serve.
    assert!(bystander(&rt, &client) < Duration::from_secs(5));
    assert!(cp.is_running());
}

#[test]
fn an_aborting_task_fails_crashed_and_the_control_plane_serves_on() {
    crashes_one_worker_process("abort_now", &["SIGABRT"]);
}

#[test]
fn a_task_writing_through_a_null_pointer_fails_crashed() {
    crashes_one_worker_process("segfault", &["SIGSEGV"]);
}

#[test]
fn a_task_calling_exit_fails_crashed_with_its_status() {
    crashes_one_worker_process("exit_now", &["exit status 3"]);
}

#[test]
fn a_task_overflowing_its_stack_fails_crashed() {
    // Rust's guard page handler reports the overflow and aborts.
    crashes_one_worker_process("overflow_stack", &["SIGABRT", "SIGSEGV"]);
}

#[test]
fn a_task_panicking_while_unwinding_fails_crashed() {
    crashes_one_worker_process("double_panic", &["SIGABRT"]);
}

/// A worker process's link is a socket pair (`--link-fd`) its plugin code
/// can write to. What is no frame (a 4 GiB length prefix, an unknown tag),
/// or a frame the process never sends (a `Dispatch`), breaks that link only: the control plane allocates nothing of that size
/// and serves on, the process, given up, exits (status 3) and is replaced,
/// and the run it was executing is charged like any crash.
fn corrupts_its_link(how: &str, expected: &str) {
    let mut cp = Process::control_plane_with_gui(&["crash-tasks"], &["--concurrency", "2"], &[]);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    assert!(bystander(&rt, &client) < Duration::from_secs(20));
    let task_id = rt.block_on(client.delay("corrupt_link", (how,), SubmitOptions::default())).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || metric(&cp, "fastworker_worker_process_crashes_total") >= 1),
        "no worker process given up:\n{}",
        cp.log()
    );
    let waited = bystander(&rt, &client);
    assert!(waited < Duration::from_secs(1), "the bystander waited {waited:?}");
    let report = rt.block_on(client.wait(task_id, Duration::from_secs(60))).unwrap();
    let error = report.error.expect("a failed task's error");
    assert_eq!(error.kind, FailureKind::Crashed, "{error:?}\n{}", cp.log());
    assert!(error.message.contains("exit status 3"), "{}", error.message);
    let log = cp.log();
    assert!(log.contains(expected), "the control plane did not say why it closed the link:\n{log}");
    assert!(cp.is_running(), "the control plane died:\n{log}");
    assert!(bystander(&rt, &client) < Duration::from_secs(5));
}

#[test]
fn a_worker_process_writing_a_huge_length_prefix_into_its_link_is_given_up() {
    corrupts_its_link("huge", "more than the");
}

#[test]
fn a_worker_process_writing_garbage_into_its_link_is_given_up() {
    corrupts_its_link("tag", "unknown channel tag");
}

#[test]
fn a_worker_process_writing_a_dispatch_frame_into_its_link_is_given_up() {
    corrupts_its_link("dispatch", "which this end is never sent");
}

#[test]
fn a_task_in_another_worker_process_finishes_while_one_crashes() {
    let cp = Process::control_plane_with_gui(&["crash-tasks", "example-tasks"], &["--concurrency", "2"], &[]);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    let sleeper = rt.block_on(client.delay("sleep_ms", (1500,), SubmitOptions::default())).unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        rt.block_on(client.status(sleeper)).is_ok_and(|r| r.state == TaskState::Running)
    }));
    let crasher = rt.block_on(client.delay("abort_now", NO_ARGS, SubmitOptions::default())).unwrap();
    let crashed = rt.block_on(client.wait(crasher, Duration::from_secs(30))).unwrap();
    assert_eq!(crashed.error.as_ref().map(|e| e.kind), Some(FailureKind::Crashed), "{crashed:?}\n{}", cp.log());
    let slept = rt.block_on(client.wait(sleeper, Duration::from_secs(30))).unwrap();
    assert_eq!(slept.state, TaskState::Succeeded, "{slept:?}");
    assert_eq!(slept.attempts, 1, "the sleeper's process did not die: it ran once");
}

/// A worker process holds runs queued behind the one it runs
/// (`--prefetch-per-process`); when the run it executes kills it, only
/// that run is charged (its run log says which): the runs queued behind it
/// in the same process are handed back uncounted (no attempt, no loss) and
/// succeed, even with `--max-task-crashes 1`.
#[test]
fn runs_queued_behind_a_crash_in_its_process_are_sent_again_uncharged() {
    let flags = ["--concurrency", "1", "--max-task-crashes", "1", "--prefetch-per-process", "8"];
    let mut cp = Process::control_plane_with_gui(&["crash-tasks", "example-tasks"], &flags, &[]);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    assert!(bystander(&rt, &client) < Duration::from_secs(20));
    // The one worker process runs the sleeper; the crasher and the
    // innocents are sent to it meanwhile and wait there, in that order.
    let sleeper = rt.block_on(client.delay("sleep_ms", (3000,), SubmitOptions::default())).unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        rt.block_on(client.status(sleeper)).is_ok_and(|r| r.state == TaskState::Running)
    }));
    let crasher = rt.block_on(client.delay("abort_now", NO_ARGS, SubmitOptions::default())).unwrap();
    let innocents: Vec<_> = (0..3)
        .map(|n| rt.block_on(client.delay("echo_back", (format!("innocent {n}"),), SubmitOptions::default())).unwrap())
        .collect();
    // All four are in the process, sent ahead, before the sleeper ends.
    let gui = cp.gui.clone().unwrap();
    let prefetched = || {
        let text = http::get(&format!("{gui}/metrics")).text();
        let count = |l: &str| l.strip_prefix("fastworker_tasks_prefetched{")?.split(' ').nth(1)?.parse::<u64>().ok();
        text.lines().filter_map(count).sum::<u64>()
    };
    assert!(wait_until(Duration::from_secs(20), || prefetched() == 4), "sent ahead: {}", prefetched());
    assert_eq!(rt.block_on(client.status(sleeper)).unwrap().state, TaskState::Running, "sent ahead behind it");
    let slept = rt.block_on(client.wait(sleeper, Duration::from_secs(30))).unwrap();
    assert_eq!(slept.state, TaskState::Succeeded, "{slept:?}");
    let crashed = rt.block_on(client.wait(crasher, Duration::from_secs(30))).unwrap();
    assert_eq!(crashed.error.as_ref().map(|e| e.kind), Some(FailureKind::Crashed), "{crashed:?}\n{}", cp.log());
    for (n, innocent) in innocents.into_iter().enumerate() {
        let report = rt.block_on(client.wait(innocent, Duration::from_secs(30))).unwrap();
        assert_eq!(report.state, TaskState::Succeeded, "innocent {n}: {report:?}\n{}", cp.log());
        // It waited in the process that died, never started there: that
        // run is not counted (nor charged the crash).
        assert_eq!(report.attempts, 1, "innocent {n} waited in the dead process: {report:?}");
    }
    assert_eq!(metric(&cp, "fastworker_worker_process_crashes_total"), 1);
    assert!(cp.is_running(), "the control plane died:\n{}", cp.log());
}

#[test]
fn in_process_mode_runs_tasks_on_the_control_planes_threads() {
    let cp = Process::control_plane(&["crash-tasks"], &["--in-process", "--concurrency", "1"]);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(10));
    let report = rt.block_on(async {
        let id = client.delay("echo_back", ("x",), SubmitOptions::default()).await.unwrap();
        client.wait(id, Duration::from_secs(10)).await.unwrap()
    });
    assert_eq!(report.state, TaskState::Succeeded);
    assert_eq!(report.worker, "control-plane");
    let workers = cp.workers().unwrap();
    assert!(workers.subworkers.is_empty(), "{:?}", workers.subworkers);
}

#[test]
fn a_durable_restart_with_a_poison_task_queued_serves_at_once_and_stays_up() {
    let dir = std::env::temp_dir().join(format!("fastworker-isolation-{}", fastworker::TaskId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let state_dir = dir.display().to_string();
    let flags = ["--concurrency", "1", "--state-dir", state_dir.as_str()];
    let plugins = ["crash-tasks", "example-tasks"];
    let rt = runtime();
    let poison = {
        let cp = Process::control_plane(&plugins, &flags);
        let client = cp.client().with_timeout(Duration::from_secs(20));
        // The one worker process is busy: the poison task stays queued.
        let sleeper = rt.block_on(client.delay("sleep_ms", (5000,), SubmitOptions::default())).unwrap();
        assert!(wait_until(Duration::from_secs(20), || {
            rt.block_on(client.status(sleeper)).is_ok_and(|r| r.state == TaskState::Running)
        }));
        let options = SubmitOptions { priority: Some(fastworker::Priority::Low), ..SubmitOptions::default() };
        let poison = rt.block_on(client.delay("abort_now", NO_ARGS, options)).unwrap();
        cp.signal("KILL");
        poison
    };
    let mut cp = Process::control_plane_with_gui(&plugins, &flags, &[]);
    let client = cp.client().with_timeout(Duration::from_secs(30));
    let waited = bystander(&rt, &client);
    assert!(waited < Duration::from_secs(10), "the restarted control plane answered after {waited:?}");
    let report = rt.block_on(client.wait(poison, Duration::from_secs(60))).unwrap();
    assert_eq!(report.error.as_ref().map(|e| e.kind), Some(FailureKind::Crashed), "{report:?}\n{}", cp.log());
    assert!(bystander(&rt, &client) < Duration::from_secs(5));
    assert!(cp.is_running(), "the control plane died:\n{}", cp.log());
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Work submitted while a control plane's worker processes are not
/// registered (starting, restarting, or here never able to: the control
/// plane takes no subworker, `--max-subworkers 0`) is accepted and waits for
/// them, a workflow as much as a task.
#[test]
fn work_submitted_while_the_worker_processes_are_away_waits_for_them() {
    let address = format!("tcp://127.0.0.1:{}", fastworker_tests::free_base_port());
    let plugin = fastworker_tests::plugin("example-tasks").display().to_string();
    let args: Vec<String> = [
        "control-plane",
        "--no-gui",
        "--no-discovery",
        "--restart-window",
        "0",
        "--max-subworkers",
        "0",
        "--base-address",
        &address,
        "--task-modules",
        &plugin,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cp = Process::spawn(&args, &[], address.clone());
    cp.wait_ready(Duration::from_secs(20)).expect("the control plane serves");
    let client = cp.client();
    let rt = runtime();
    use fastworker::workflow::{task, Workflow};
    let workflow = Workflow::chain([task("add", serde_json::json!([1, 2])), task("add", serde_json::json!([10]))]);
    let report = rt.block_on(client.submit_workflow(&workflow)).expect("the workflow is accepted");
    let task_id = rt.block_on(client.delay("add", (20, 22), SubmitOptions::default())).expect("the task is accepted");
    assert_eq!(rt.block_on(client.status(task_id)).unwrap().state, TaskState::Queued);
    let status = rt.block_on(client.workflow_status(report.workflow_id)).unwrap();
    assert!(status.finished_ms.is_none(), "it waits: {status:?}");
}

/// A crash's count survives a restart: the durable store keeps it. A poison
/// task's crash loop is cut by `kill -9` of the control plane; the restart
/// serves at once and the task ends `Crashed` after the crashes still
/// owed, not after the whole bound again.
#[test]
fn crash_counts_survive_a_durable_restart_in_the_middle_of_a_crash_loop() {
    let dir = std::env::temp_dir().join(format!("fastworker-isolation-{}", fastworker::TaskId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let state_dir = dir.display().to_string();
    // 3: a crash is also a lost run, and 3 lost runs since the start fail a
    // task too (docs/subworkers.md); 3 crashes in all need at most 2 here.
    let flags = ["--concurrency", "1", "--max-task-crashes", "3", "--state-dir", state_dir.as_str()];
    let rt = runtime();
    let (poison, crashes_before) = {
        let cp = Process::control_plane_with_gui(&["crash-tasks"], &flags, &[]);
        let client = cp.client().with_timeout(Duration::from_secs(20));
        let poison = rt.block_on(client.delay("abort_now", NO_ARGS, SubmitOptions::default())).unwrap();
        assert!(wait_until(Duration::from_secs(20), || metric(
            &cp,
            "fastworker_task_crashes_total{task=\"abort_now\"}"
        ) >= 1));
        // An acknowledged submission is on disk, and the store writes in
        // order: the crash counted before it is stored too.
        rt.block_on(client.delay("echo_back", ("stored",), SubmitOptions::default())).unwrap();
        let before = metric(&cp, "fastworker_task_crashes_total{task=\"abort_now\"}");
        cp.signal("KILL");
        (poison, before)
    };
    assert!(crashes_before < 3, "the task ended before the kill: {crashes_before} crashes");
    let mut cp = Process::control_plane_with_gui(&["crash-tasks"], &flags, &[]);
    let client = cp.client().with_timeout(Duration::from_secs(30));
    let waited = bystander(&rt, &client);
    assert!(waited < Duration::from_secs(10), "the restarted control plane answered after {waited:?}");
    let report = rt.block_on(client.wait(poison, Duration::from_secs(60))).unwrap();
    let error = report.error.expect("failed");
    assert_eq!(error.kind, FailureKind::Crashed, "{error:?}\n{}", cp.log());
    assert!(error.message.contains("3 times in all"), "{}", error.message);
    let after = metric(&cp, "fastworker_task_crashes_total{task=\"abort_now\"}");
    assert!(after < 3, "the restart counted {after} crashes afresh (had {crashes_before} before the kill)");
    assert!(cp.is_running(), "the control plane died:\n{}", cp.log());
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// In-process and durable, a task that aborts takes the control plane down
/// with it, but its run is marked under way before its code runs (in a
/// memory-mapped file that outlives the process): each restart counts the
/// crash, and at `--max-task-crashes` (2) the restart
/// ends the task `Crashed` instead of running it again, and serves on.
#[test]
fn an_in_process_durable_control_plane_killed_by_a_task_stops_replaying_it() {
    // The task can kill the control plane before the acknowledgement of
    // its submission leaves (it runs once stored): its id is chosen here.
    killed_by_a_task_stops_replaying(|rt, client, poison| {
        let options = SubmitOptions { task_id: Some(poison), ..SubmitOptions::default() };
        let _ = rt.block_on(client.delay("abort_now", NO_ARGS, options));
    });
}

/// The same for a blocking call, whose run starts before its task's
/// acceptance is stored (the acceptance may wait to share the outcome's
/// commit): a run that outlasts the commit window (here 1 s) finds its task
/// stored at the restart, marked under way, and counts its crash just the
/// same.
#[test]
fn an_in_process_durable_control_plane_killed_by_a_blocking_call_stops_replaying_it() {
    killed_by_a_task_stops_replaying(|rt, client, poison| {
        let options = SubmitOptions { task_id: Some(poison), ..SubmitOptions::default() };
        let outcome = rt.block_on(client.submit("abort_after_ms", (1000,), options));
        assert!(outcome.is_err(), "{outcome:?}");
    });
}

fn killed_by_a_task_stops_replaying(submit_poison: impl FnOnce(&tokio::runtime::Runtime, &Client, fastworker::TaskId)) {
    let (dir, args, address) = in_process_durable();
    let rt = runtime();
    let mut cp = Process::spawn(&args, &[], address.clone());
    cp.wait_ready(Duration::from_secs(20)).unwrap();
    let client = cp.client().with_timeout(Duration::from_secs(10));
    let poison = fastworker::TaskId::new_v4();
    submit_poison(&rt, &client, poison);
    assert!(wait_until(Duration::from_secs(20), || !cp.is_running()), "the task did not kill the control plane");
    let mut starts = 1;
    let report = loop {
        starts += 1;
        assert!(starts <= 4, "still replaying the task after {} starts", starts - 1);
        cp = Process::spawn(&args, &[], address.clone());
        if cp.wait_ready(Duration::from_secs(20)).is_err() {
            // It died again while starting: the run started again.
            assert!(wait_until(Duration::from_secs(20), || !cp.is_running()));
            continue;
        }
        match rt.block_on(cp.client().with_timeout(Duration::from_secs(10)).wait(poison, Duration::from_secs(10))) {
            Ok(report) if report.state == TaskState::Failed => break report,
            outcome => {
                assert!(wait_until(Duration::from_secs(20), || !cp.is_running()), "{outcome:?}\n{}", cp.log());
            }
        }
    };
    // Killed by the first run and by the second; the third start ends it.
    assert_eq!(starts, 3, "{report:?}");
    let error = report.error.expect("failed");
    assert_eq!(error.kind, FailureKind::Crashed, "{error:?}");
    assert!(error.message.contains("2 times in all"), "{}", error.message);
    let answer: String = rt.block_on(cp.client().call("echo_back", ("up",))).unwrap();
    assert_eq!(answer, "up");
    assert!(cp.is_running(), "{}", cp.log());
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A blocking call whose task kills an in-process durable control plane at
/// once, within the commit window, leaves no task on disk, but its run was
/// marked under way: the restart counts the crash against its id. Submitted
/// again under that id after each restart (what a caller told nothing does),
/// it runs at most `--max-task-crashes` (2) times in all, then is answered
/// `Crashed` while the control plane serves on.
#[test]
fn a_blocking_call_that_kills_an_in_process_durable_control_plane_at_once_is_refused_after_its_crashes() {
    let (dir, args, address) = in_process_durable();
    let rt = runtime();
    let poison = fastworker::TaskId::new_v4();
    let options = || SubmitOptions { task_id: Some(poison), ..SubmitOptions::default() };
    for start in 1..=4 {
        let mut cp = Process::spawn(&args, &[], address.clone());
        if cp.wait_ready(Duration::from_secs(20)).is_err() {
            // Its acceptance was stored after all, and the restart ran it.
            assert!(wait_until(Duration::from_secs(20), || !cp.is_running()));
            continue;
        }
        let client = cp.client().with_timeout(Duration::from_secs(10));
        match rt.block_on(client.submit("abort_now", NO_ARGS, options())) {
            Ok(report) => {
                assert!(start <= 3, "answered only at start {start}: {report:?}");
                let error = report.error.expect("failed");
                assert_eq!(error.kind, FailureKind::Crashed, "{error:?}");
                assert!(error.message.contains("2 times in all"), "{}", error.message);
                let answer: String = rt.block_on(client.call("echo_back", ("up",))).unwrap();
                assert_eq!(answer, "up");
                assert!(cp.is_running(), "{}", cp.log());
                drop(cp);
                let _ = std::fs::remove_dir_all(&dir);
                return;
            }
            Err(_) => assert!(wait_until(Duration::from_secs(20), || !cp.is_running()), "{}", cp.log()),
        }
    }
    panic!("the task still ran after 4 starts");
}

/// A fresh state directory, and the arguments of an in-process durable
/// control plane of one task thread serving the crash-tasks plugin there.
fn in_process_durable() -> (std::path::PathBuf, Vec<String>, String) {
    let dir = std::env::temp_dir().join(format!("fastworker-isolation-{}", fastworker::TaskId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let address = format!("tcp://127.0.0.1:{}", fastworker_tests::free_base_port());
    let plugin = fastworker_tests::plugin("crash-tasks").display().to_string();
    let state_dir = dir.display().to_string();
    let args: Vec<String> = [
        "control-plane",
        "--no-gui",
        "--no-discovery",
        "--in-process",
        "--concurrency",
        "1",
        "--state-dir",
        &state_dir,
        "--base-address",
        &address,
        "--task-modules",
        &plugin,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (dir, args, address)
}
