//! Start-up, configuration from the environment, graceful shutdown, and
//! clients facing a control plane that is not there.

use std::time::{Duration, Instant};

use fastworker::{ClientError, SubmitOptions, TaskId, TaskState};
use fastworker_tests::{free_base_port, plugin, run_cli, runtime, stderr, wait_until, Process};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_port_in_use_is_refused_with_a_clear_error() {
    let first = Process::control_plane(&["example-tasks"], &[]);
    let example = plugin("example-tasks").display().to_string();
    let mut second = Process::spawn(
        &args(&["control-plane", "--no-gui", "--base-address", &first.address, "--task-modules", &example]),
        &[],
        first.address.clone(),
    );
    assert_eq!(second.wait_exit(Duration::from_secs(10)), Some(2));
    assert!(second.log().contains("already in use"), "{}", second.log());
    assert!(second.log().contains("--base-address"), "{}", second.log());
}

/// A subworker whose port is taken says so with its own exit status (4),
/// by which a worker process's supervisor tells a port taken between its
/// choice and the start from a broken configuration (docs/isolation.md).
#[test]
fn a_subworker_whose_port_is_in_use_exits_with_status_4() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let taken = Process::control_plane(&["example-tasks"], &[]);
    let example = plugin("example-tasks").display().to_string();
    let mut subworker = Process::spawn(
        &args(&[
            "subworker",
            "--worker-id",
            "w-port",
            "--control-plane-address",
            &cp.address,
            "--base-address",
            &taken.address,
            "--task-modules",
            &example,
        ]),
        &[],
        taken.address.clone(),
    );
    assert_eq!(subworker.wait_exit(Duration::from_secs(10)), Some(4), "{}", subworker.log());
    assert!(subworker.log().contains("already in use"), "{}", subworker.log());
}

#[test]
fn flags_come_from_the_environment_and_a_flag_wins() {
    let example = plugin("example-tasks").display().to_string();
    let (env_port, flag_port) = (free_base_port(), free_base_port());
    let env_address = format!("tcp://127.0.0.1:{env_port}");
    let flag_address = format!("tcp://127.0.0.1:{flag_port}");

    let env = [("FASTWORKER_BASE_ADDRESS", env_address.as_str()), ("FASTWORKER_TASK_MODULES", example.as_str())];
    let mut from_env = Process::spawn(&args(&["control-plane", "--no-gui"]), &env, env_address.clone());
    from_env.wait_ready(Duration::from_secs(20)).unwrap();
    let output = run_cli(&["submit", "--address", &env_address, "--task-name", "add", "--args", "1", "2"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "3", "{}", stderr(&output));
    drop(from_env);

    let mut flag_wins = Process::spawn(
        &args(&["control-plane", "--no-gui", "--base-address", &flag_address]),
        &env,
        flag_address.clone(),
    );
    flag_wins.wait_ready(Duration::from_secs(20)).unwrap();

    // Concurrency 0 is a value: nothing runs here, and the caller is told why.
    let zero = [("FASTWORKER_CONCURRENCY", "0"), ("FASTWORKER_TASK_MODULES", example.as_str())];
    let base = free_base_port();
    let zero_address = format!("tcp://127.0.0.1:{base}");
    let mut none = Process::spawn(
        &args(&["control-plane", "--no-gui", "--base-address", &zero_address]),
        &zero,
        zero_address.clone(),
    );
    none.wait_ready(Duration::from_secs(20)).unwrap();
    let output = run_cli(&["submit", "--address", &zero_address, "--task-name", "add", "--args", "1", "2"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--concurrency 0"), "{}", stderr(&output));
}

#[test]
fn sigterm_finishes_running_work_refuses_late_tasks_and_exits_zero() {
    let mut cp = Process::control_plane(&["example-tasks"], &["--concurrency", "1"]);
    let client = cp.client();
    let rt = runtime();
    let (running_id, queued_id) = (TaskId::new_v4(), TaskId::new_v4());
    let running = rt.spawn({
        let client = client.clone();
        // Long enough that the drain is still on when the late call comes, on a loaded machine too.
        async move { client.submit("sleep_ms", (3000,), with_id(running_id)).await }
    });
    assert!(wait_until(Duration::from_secs(10), || state_of(&rt, &client, running_id) == Some(TaskState::Running)));
    let queued = rt.spawn({
        let client = client.clone();
        async move { client.submit("add", (20, 22), with_id(queued_id)).await }
    });
    assert!(wait_until(Duration::from_secs(10), || state_of(&rt, &client, queued_id) == Some(TaskState::Queued)));
    cp.signal("TERM");
    // Logged once submissions are refused ("stop requested" comes a moment
    // before: a call between the two is still accepted).
    assert!(wait_until(Duration::from_secs(10), || cp.log().contains("shutting down:")), "{}", cp.log());
    let late = rt.block_on(client.call::<i64>("add", (1, 1)));
    match late {
        Err(ClientError::Refused(refusal)) => assert!(refusal.message.contains("shutting down"), "{}", refusal.message),
        other => panic!("a late submission must be refused, got {other:?}"),
    }
    let slept: u64 = result_of(rt.block_on(running).unwrap().unwrap());
    assert!(slept >= 3000, "the running task finished");
    assert_eq!(result_of::<i64>(rt.block_on(queued).unwrap().unwrap()), 42, "the queued task ran");
    assert_eq!(cp.wait_exit(Duration::from_secs(10)), Some(0), "{}", cp.log());
}

/// Options naming the task's id, so a test can watch a blocking call's task.
fn with_id(task_id: TaskId) -> SubmitOptions {
    SubmitOptions { task_id: Some(task_id), ..SubmitOptions::default() }
}

/// The task's state now, if the control plane answers.
fn state_of(rt: &tokio::runtime::Runtime, client: &fastworker::Client, task_id: TaskId) -> Option<TaskState> {
    rt.block_on(client.status(task_id)).ok().map(|report| report.state)
}

/// A succeeded task's result.
fn result_of<T: serde::de::DeserializeOwned>(report: fastworker::TaskReport) -> T {
    assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
    serde_json::from_slice(report.result.as_deref().expect("a result")).expect("a JSON result")
}

#[test]
fn the_shutdown_timeout_bounds_the_wait_and_waiting_clients_are_told() {
    let mut cp = Process::control_plane(&["example-tasks"], &["--concurrency", "1", "--shutdown-timeout", "0.5"]);
    let client = cp.client();
    let rt = runtime();
    let (running_id, queued_id) = (TaskId::new_v4(), TaskId::new_v4());
    let running = rt.spawn({
        let client = client.clone();
        async move { client.submit("sleep_ms", (30_000,), with_id(running_id)).await }
    });
    assert!(wait_until(Duration::from_secs(10), || state_of(&rt, &client, running_id) == Some(TaskState::Running)));
    let queued = rt.spawn({
        let client = client.clone();
        async move { client.submit("add", (1, 2), with_id(queued_id)).await }
    });
    assert!(wait_until(Duration::from_secs(10), || state_of(&rt, &client, queued_id) == Some(TaskState::Queued)));
    let start = Instant::now();
    cp.signal("INT");
    assert_eq!(cp.wait_exit(Duration::from_secs(10)), Some(0), "{}", cp.log());
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    match rt.block_on(running).unwrap() {
        Err(ClientError::Refused(refusal)) => assert!(refusal.message.contains("still running"), "{}", refusal.message),
        other => panic!("the waiting client must be told, got {other:?}"),
    }
    let report = rt.block_on(queued).unwrap().unwrap();
    assert_eq!(report.state, TaskState::Failed);
    assert!(report.error.unwrap().message.contains("before this task started"));
}

#[test]
fn client_commands_against_no_control_plane_fail_within_their_timeout() {
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    // The binary is built (on a test binary's first use) before the clock starts.
    let _ = fastworker_tests::fastworker_bin();
    let start = Instant::now();
    let output =
        run_cli(&["submit", "--address", &address, "--timeout", "1", "--task-name", "add", "--args", "1", "2"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("nothing accepts connections"), "{}", stderr(&output));
    let output = run_cli(&[
        "status",
        "--address",
        &address,
        "--timeout",
        "1",
        "--task-id",
        "0191c3a2-0000-7000-8000-000000000000",
    ]);
    assert_eq!(output.status.code(), Some(3));
    assert!(start.elapsed() < Duration::from_secs(6), "took {:?}", start.elapsed());

    let output = run_cli(&["submit", "--address", "localhost:5555", "--task-name", "add"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("tcp://HOST:PORT"), "{}", stderr(&output));
}

/// A closed port fails fast, naming what was typed, with the default
/// 30 s timeout: a wrong address is not a slow control plane.
#[test]
fn a_closed_port_fails_within_a_second_naming_the_address_typed() {
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    let _ = fastworker_tests::fastworker_bin();
    let start = Instant::now();
    let output = run_cli(&["submit", "--address", &address, "--task-name", "add", "--args", "1", "2"]);
    let took = start.elapsed();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{message}");
    assert!(message.contains(&address) && message.contains("NORMAL task port"), "{message}");
    assert!(message.contains("refused"), "{message}");
    // The process starts, probes after 0.3 s and exits: well under the 30 s timeout.
    assert!(took < Duration::from_secs(3), "took {took:?}: {message}");
}
