//! The client library against real processes: many calls through one shared
//! client, a resubmitted task id, a control plane that is gone, and the
//! example program users copy.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fastworker::client::decode_result;
use fastworker::{Client, ClientError, SubmitOptions, TaskId, TaskReport, TaskState};
use fastworker_tests::{free_base_port, output_within, runtime, target_dir, Process, CLI_LIMIT};

/// `host/examples/client.rs`, built once (with the workspace's features, so
/// that nothing else the tests run gets rebuilt underneath them).
fn example_client() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = target_dir();
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--workspace", "--example", "client", "--quiet"])
                .current_dir(&root)
                .status()
                .expect("running cargo build --example client");
            assert!(status.success(), "cargo build --workspace --example client failed");
            let path = target.join("examples").join(format!("client{}", std::env::consts::EXE_SUFFIX));
            assert!(path.is_file(), "the example was built but {} is missing", path.display());
            path
        })
        .clone()
}

#[test]
fn the_example_program_runs_against_a_control_plane_and_exits_0() {
    let example = example_client();
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "2"]);
    let started = Instant::now();
    let mut command = Command::new(&example);
    command.args(["--address", &cp.address]);
    let output = output_within(command, CLI_LIMIT);
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "expected the example to exit 0, it exited with {} after {:?}\nstdout:\n{out}\nstderr:\n{err}\ncontrol plane log:\n{}",
        output.status,
        started.elapsed(),
        cp.log()
    );
    for expected in [
        "add(5, 3) = 8",
        "= Point { x: 1.0, y: 2.0 }",
        "divide(1, 0) failed as expected: task 'divide' said \"cannot divide 1 by zero\"",
        "sleep_ms(200) finished",
        "100 concurrent calls through one client: every result was its own",
    ] {
        assert!(out.contains(expected), "expected the example's output to contain {expected:?}; it was:\n{out}");
    }

    // Against a control plane without the example plugin, it fails rather than claiming success.
    let other = Process::control_plane(&["text-tasks"], &[]);
    let mut command = Command::new(&example);
    command.args(["--address", &other.address]);
    let output = output_within(command, CLI_LIMIT);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "expected exit 1 without the example plugin; stderr:\n{err}");
    assert!(err.contains("'add'"), "expected the error to name the task 'add'; stderr:\n{err}");
}

/// Submits add(i, 1000 i) for i in 0..n at once through one client and
/// checks that each call got its own sum (and, when given, ran on `worker`).
fn many_calls_through_one_client(client: Client, n: i64, worker: &str) {
    runtime().block_on(async {
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { (i, client.submit("add", (i, 1000 * i), SubmitOptions::default()).await) })
            })
            .collect();
        let mut checked = 0;
        for call in calls {
            let (i, report) = call.await.expect("the call's tokio task panicked");
            let report = report.unwrap_or_else(|e| panic!("add({i}, {}) failed: {e}", 1000 * i));
            assert_eq!(report.worker, worker, "add({i}, {}) ran on the wrong worker", 1000 * i);
            let sum: i64 = decode_result(report).unwrap_or_else(|e| panic!("add({i}, {}) failed: {e}", 1000 * i));
            assert_eq!(sum, 1001 * i, "add({i}, {}) got another call's result", 1000 * i);
            checked += 1;
        }
        assert_eq!(checked, n, "expected {n} checked replies");
    });
}

#[test]
fn five_hundred_concurrent_calls_through_one_shared_client_each_get_their_own_result() {
    // On the control plane's own threads, so that every reply names it.
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "2", "--in-process"]);
    many_calls_through_one_client(cp.client(), 500, "control-plane");
}

#[test]
fn five_hundred_concurrent_calls_through_a_subworker_each_get_their_own_result() {
    // No plugin on the control plane: every task goes through the subworker.
    let cp = Process::control_plane(&[], &[]);
    let _sw = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "2"]);
    many_calls_through_one_client(cp.client(), 500, "sw1");
}

#[test]
fn a_resubmitted_task_id_runs_once_and_every_submitter_gets_its_report() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "2"]);
    let client = cp.client();
    let task_id = TaskId::new_v4();
    let with_id = || SubmitOptions { task_id: Some(task_id), ..Default::default() };
    runtime().block_on(async {
        let accepted = client.delay("sleep_ms", (300,), with_id()).await.expect("first, non-blocking submission");
        assert_eq!(accepted, task_id, "the control plane must keep the client's task id");
        let live = client.status(task_id).await.expect("status of the live task");
        assert!(
            !live.state.is_final(),
            "expected the task still queued or running when resubmitted (else this tests the cache), got {live:?}"
        );

        // Twice more, blocking, at once, while it runs.
        let (first, second) =
            tokio::join!(client.submit("sleep_ms", (300,), with_id()), client.submit("sleep_ms", (300,), with_id()));
        let first = first.expect("first blocking resubmission");
        let second = second.expect("second blocking resubmission");
        // Once more after it finished: answered from the result cache.
        let later = client.submit("sleep_ms", (300,), with_id()).await.expect("resubmission after the end");
        let status = client.status(task_id).await.expect("status after the end");

        for (what, report) in [("first", &first), ("second", &second), ("later", &later), ("status", &status)] {
            assert_eq!(report.task_id, task_id, "{what}: report of another task");
            assert_eq!(report.state, TaskState::Succeeded, "{what}: expected succeeded, got {report:?}");
            assert_eq!(report.attempts, 1, "{what}: expected one run, got {} ({report:?})", report.attempts);
            assert!(report.started_ms.is_some(), "{what}: no start time in {report:?}");
            assert_same_run(what, &first, report);
        }
        let slept: u64 = decode_result(first).unwrap();
        assert!(slept >= 300, "expected sleep_ms(300) to sleep 300 ms, it slept {slept} ms");
    });
}

/// `report` describes the same run as `reference`.
fn assert_same_run(what: &str, reference: &TaskReport, report: &TaskReport) {
    assert_eq!(
        (report.created_ms, report.started_ms, report.finished_ms),
        (reference.created_ms, reference.started_ms, reference.finished_ms),
        "{what}: expected the times of the one run (created, started, finished), got another run's"
    );
    assert_eq!(report.result, reference.result, "{what}: expected the one run's result");
    assert_eq!(report.worker, reference.worker, "{what}: expected the one run's worker");
}

/// Runs `call`, expecting it to fail with a timeout, transport or
/// unreachable error within `timeout` + 1.5 s.
async fn fails_in_time<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) {
    let started = Instant::now();
    let outcome = call.await;
    let elapsed = started.elapsed();
    match outcome {
        Err(ClientError::Timeout { .. } | ClientError::Transport { .. } | ClientError::Unreachable { .. }) => {}
        other => panic!("{what}: expected a timeout, transport or unreachable error, got {other:?}"),
    }
    assert!(
        elapsed < timeout + Duration::from_millis(1500),
        "{what}: expected an error within the {timeout:?} timeout (+1.5 s), it took {elapsed:?}"
    );
}

#[test]
fn every_call_to_an_address_where_nothing_listens_errors_within_its_timeout() {
    let timeout = Duration::from_secs(1);
    let nowhere = format!("tcp://127.0.0.1:{}", free_base_port());
    let client = Client::new(&nowhere).unwrap().with_timeout(timeout);
    runtime().block_on(async {
        // At once, each timed on its own: together they take one timeout.
        tokio::join!(
            fails_in_time("call", timeout, client.call::<i64>("add", (1, 2))),
            fails_in_time("submit", timeout, client.submit("add", (1, 2), SubmitOptions::default())),
            fails_in_time("delay", timeout, client.delay("add", (1, 2), SubmitOptions::default())),
            fails_in_time("status", timeout, client.status(TaskId::new_v4())),
            fails_in_time("workers", timeout, client.workers()),
        );
    });
}

#[test]
fn a_call_to_a_control_plane_killed_mid_call_errors_within_its_timeout() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "2"]);
    let timeout = Duration::from_secs(2);
    let client = Client::new(&cp.address).unwrap().with_timeout(timeout);
    let runtime = runtime();
    // The connections are up: this is a control plane that goes away, not one never reached.
    let sum: i64 = runtime.block_on(client.call("add", (1, 2))).expect("add before the kill");
    assert_eq!(sum, 3);
    runtime.block_on(client.status(TaskId::new_v4())).expect_err("an unknown id is refused");

    let call = {
        let client = client.clone();
        runtime.spawn(async move {
            let started = Instant::now();
            (client.call::<u64>("sleep_ms", (5000,)).await, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    cp.signal("KILL");
    let (outcome, elapsed) = runtime.block_on(call).unwrap();
    assert!(
        matches!(outcome, Err(ClientError::Timeout { .. } | ClientError::Transport { .. })),
        "expected a blocking sleep_ms(5000) to fail when its control plane is killed, got {outcome:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_millis(1500),
        "expected the error within the {timeout:?} timeout (+1.5 s), it took {elapsed:?}"
    );

    // And every later call through the same client, on connections that were up, errors in time.
    runtime.block_on(async {
        tokio::join!(
            fails_in_time("call after the kill", timeout, client.call::<i64>("add", (1, 2))),
            fails_in_time("submit after the kill", timeout, client.submit("add", (1, 2), SubmitOptions::default())),
            fails_in_time("delay after the kill", timeout, client.delay("add", (1, 2), SubmitOptions::default())),
            fails_in_time("status after the kill", timeout, client.status(TaskId::new_v4())),
            fails_in_time("workers after the kill", timeout, client.workers()),
        );
    });
}
