//! A task's life past "run it now": retries with backoff, timeouts,
//! countdowns and ETAs, cancellation, batches and callback notices.

use std::time::{Duration, Instant, SystemTime};

use fastworker::client::BatchTask;
use fastworker::protocol::{decode, Callback, ErrorKind, Notice, RetryPolicy};
use fastworker::{ClientError, Priority, SubmitOptions, TaskState};
use fastworker_tests::{free_ports, run_cli, runtime, stderr, stdout, Process};
use nng::options::{Options, RecvTimeout};
use nng::{Protocol, Socket};

fn options() -> SubmitOptions {
    SubmitOptions::default()
}

#[test]
fn a_task_that_fails_twice_succeeds_on_its_third_run_after_its_backoffs() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    runtime().block_on(async {
        // Declared: 3 retries, 100 ms then 200 ms apart.
        let report = client.submit("flaky", (2,), options()).await.unwrap();
        assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
        assert_eq!(report.result.as_deref(), Some(&b"3"[..]), "the third run succeeds: {report:?}");
        assert_eq!(report.attempts, 3, "{report:?}");
        let took = report.finished_ms.unwrap() - report.created_ms;
        assert!(took >= 300, "two backoffs of 100 and 200 ms should pass first, took {took} ms");

        // The caller's override: one retry only, so the second run's error is final.
        let retry = RetryPolicy { max_retries: 1, delay_ms: 10, factor: 2.0, max_delay_ms: 1000 };
        let report = client.submit("flaky", (2,), SubmitOptions { retry: Some(retry), ..options() }).await.unwrap();
        assert_eq!(report.state, TaskState::Failed, "{report:?}");
        assert_eq!(report.attempts, 2, "{report:?}");
        assert!(report.error.unwrap().message.contains("run 2 fails"), "the last error is kept");
    });
}

#[test]
fn a_task_past_its_timeout_is_reported_timed_out_at_once() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    runtime().block_on(async {
        let start = Instant::now();
        let timeout = SubmitOptions { timeout: Some(Duration::from_millis(300)), ..options() };
        let report = client.submit("sleep_ms", (10_000,), timeout).await.unwrap();
        assert_eq!(report.state, TaskState::TimedOut, "{report:?}");
        assert!(start.elapsed() < Duration::from_secs(2), "reported at the timeout, not when the task ends");
        assert!(report.error.unwrap().message.contains("ran past its timeout of 0.3 s"));
        // sleep_ms checks its context, so the thread is free again: the next task runs.
        let sum: i64 = client.call("add", (1, 2)).await.unwrap();
        assert_eq!(sum, 3);
    });
}

#[test]
fn a_countdown_task_runs_once_not_before_its_time() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    runtime().block_on(async {
        let countdown = SubmitOptions { countdown: Some(Duration::from_millis(600)), ..options() };
        let submitted_ms = fastworker::protocol::now_ms();
        let id = client.delay("add", (20, 22), countdown).await.unwrap();
        assert_eq!(client.status(id).await.unwrap().state, TaskState::Scheduled);
        let report = client.wait(id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
        assert_eq!(report.result.as_deref(), Some(&b"42"[..]));
        assert_eq!(report.attempts, 1, "runs once");
        let waited = report.started_ms.unwrap() - submitted_ms;
        assert!(waited >= 600, "started {waited} ms after submission, before its countdown of 600 ms");
    });
    // The command line: an ETA one second ahead, and a blocking countdown.
    let eta = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(1)).to_string();
    let output =
        run_cli(&["submit", "--task-name", "add", "--args", "1", "1", "--eta", &eta, "--address", &cp.address]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "2");
    let started = Instant::now();
    let output =
        run_cli(&["submit", "--task-name", "add", "--args", "2", "2", "--countdown", "0.5", "--address", &cp.address]);
    assert_eq!(stdout(&output).trim(), "4", "{}", stderr(&output));
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[test]
fn cancelled_scheduled_and_queued_tasks_never_run() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "1"]);
    let client = cp.client();
    runtime().block_on(async {
        // The blocker takes the only thread first, so that neither task
        // below can run before it is cancelled, however slow the machine.
        let blocker = client.delay("sleep_ms", (2000,), options()).await.unwrap();
        // `add` is more urgent than `sleep_ms`: the blocker must hold the
        // thread before the others are queued.
        let started = Instant::now();
        while client.status(blocker).await.unwrap().state != TaskState::Running {
            assert!(started.elapsed() < Duration::from_secs(5), "the blocker did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let scheduled = client
            .delay("add", (1, 1), SubmitOptions { countdown: Some(Duration::from_millis(400)), ..options() })
            .await
            .unwrap();
        let queued = client.delay("add", (2, 2), options()).await.unwrap();
        assert_eq!(client.status(queued).await.unwrap().state, TaskState::Queued);

        for id in [scheduled, queued] {
            let report = client.cancel(id).await.unwrap();
            assert_eq!(report.state, TaskState::Cancelled, "{report:?}");
        }
        client.wait(blocker, Duration::from_secs(5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // past the countdown
        for id in [scheduled, queued] {
            let report = client.status(id).await.unwrap();
            assert_eq!((report.state, report.attempts), (TaskState::Cancelled, 0), "never ran: {report:?}");
        }
        // A running task is asked to stop; sleep_ms listens and ends early.
        let running = client.delay("sleep_ms", (10_000,), options()).await.unwrap();
        while client.status(running).await.unwrap().state != TaskState::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(client.cancel(running).await.unwrap().state, TaskState::Running);
        let report = client.wait(running, Duration::from_secs(2)).await.unwrap();
        // "Running" is the control plane's view once the run is handed to a
        // worker process; a cancel that reaches the worker before the run
        // starts there ends it Cancelled without running. Either way it ended
        // long before its 10 s.
        match report.state {
            TaskState::Succeeded => {
                let ran_ms: u64 = serde_json::from_slice(report.result.as_deref().unwrap()).unwrap();
                assert!(ran_ms < 5_000, "the running task stopped when asked, after {ran_ms} ms");
            }
            TaskState::Cancelled => assert!(report.result.is_none(), "{report:?}"),
            _ => panic!("a cancelled running task ends early, succeeded or cancelled: {report:?}"),
        }
        // Ended or unknown: refused.
        match client.cancel(queued).await {
            Err(ClientError::Refused(refusal)) => assert_eq!(refusal.kind, ErrorKind::AlreadyFinished),
            other => panic!("cancelling an ended task should be refused, got {other:?}"),
        }
    });
    let output = run_cli(&["cancel", "--task-id", &uuid::Uuid::new_v4().to_string(), "--address", &cp.address]);
    assert_eq!(output.status.code(), Some(1), "an unknown task exits 1: {}", stderr(&output));
    assert!(stderr(&output).contains("unknown"), "{}", stderr(&output));
}

#[test]
fn a_batch_submits_tasks_at_their_own_priorities_and_refuses_unknown_ones_alone() {
    // No restart window: an unknown task is refused as such from the start.
    let cp = Process::control_plane(&["example-tasks"], &["--restart-window", "0"]);
    let client = cp.client();
    runtime().block_on(async {
        let priorities = [Priority::Critical, Priority::Low, Priority::High, Priority::Normal];
        let mut batch: Vec<BatchTask> = priorities
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let options = SubmitOptions { priority: Some(*p), ..options() };
                BatchTask::new("add", (i, 100), options).unwrap()
            })
            .collect();
        batch.insert(2, BatchTask::new("no_such_task", (), options()).unwrap());
        let outcomes = client.submit_batch(batch).await.unwrap();
        assert_eq!(outcomes.len(), 5);
        let refusal = outcomes[2].as_ref().expect_err("the unknown task is refused");
        assert_eq!(refusal.kind, ErrorKind::UnknownTask);
        let ids: Vec<_> = outcomes.into_iter().filter_map(Result::ok).collect();
        for (i, (id, priority)) in ids.iter().zip(priorities).enumerate() {
            let report = client.wait(*id, Duration::from_secs(5)).await.unwrap();
            assert_eq!(report.priority, priority, "{report:?}");
            let sum: i64 = serde_json::from_slice(report.result.as_deref().unwrap()).unwrap();
            assert_eq!(sum, i as i64 + 100);
        }
    });
}

#[test]
fn a_callback_listener_gets_a_notice_for_each_ending_and_a_dead_address_blocks_nothing() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    let address = format!("tcp://127.0.0.1:{}", free_ports(1));
    let listener = Socket::new(Protocol::Pull0).unwrap();
    listener.set_opt::<RecvTimeout>(Some(Duration::from_secs(5))).unwrap();
    listener.listen(&address).unwrap();
    let dead = format!("tcp://127.0.0.1:{}", free_ports(1));
    runtime().block_on(async {
        let callback = |address: &str, data: &str| SubmitOptions {
            callback: Some(Callback { address: address.to_string(), data: data.as_bytes().to_vec() }),
            ..options()
        };
        // Nobody listens at `dead`: the tasks still end at once.
        let start = Instant::now();
        for i in 0..3 {
            let sum: i64 = client.call_with("add", (i, 1), callback(&dead, "lost")).await.unwrap();
            assert_eq!(sum, i + 1);
        }
        assert!(start.elapsed() < Duration::from_secs(1), "a dead callback address slowed tasks down");

        let ok = client.submit("add", (2, 3), callback(&address, r#"{"order":7}"#)).await.unwrap();
        let failed = client.submit("divide", (1, 0), callback(&address, "x")).await.unwrap();
        let mut notices = Vec::new();
        for _ in 0..2 {
            let frame = listener.recv().expect("a notice within 5 s");
            notices.push(decode::<Notice>(&frame, usize::MAX).expect("a notice decodes"));
        }
        notices.sort_by_key(|n| n.report.task_id != ok.task_id);
        let (first, second) = (&notices[0], &notices[1]);
        assert_eq!((first.report.task_id, first.report.state), (ok.task_id, TaskState::Succeeded));
        assert_eq!(first.report.result.as_deref(), Some(&b"5"[..]));
        assert_eq!(first.data, br#"{"order":7}"#);
        assert_eq!((second.report.task_id, second.report.state), (failed.task_id, TaskState::Failed));
        assert!(second.report.error.as_ref().unwrap().message.contains("zero"), "{second:?}");
    });
}

#[test]
fn retries_timeouts_and_cancellation_hold_through_a_subworker() {
    let cp = Process::control_plane(&[], &[]);
    let _sw = Process::subworker(&cp, "sw1", &["example-tasks"], &["--concurrency", "2"]);
    let client = cp.client();
    runtime().block_on(async {
        // The control plane retries; the subworker runs each attempt once and
        // sees its run number.
        let report = client.submit("flaky", (2,), options()).await.unwrap();
        assert_eq!((report.state, report.attempts), (TaskState::Succeeded, 3), "{report:?}");
        assert_eq!(report.result.as_deref(), Some(&b"3"[..]), "run 3 on the subworker: {report:?}");
        assert_eq!(report.worker, "sw1");

        let start = Instant::now();
        let timeout = SubmitOptions { timeout: Some(Duration::from_millis(300)), ..options() };
        let report = client.submit("sleep_ms", (10_000,), timeout).await.unwrap();
        assert_eq!(report.state, TaskState::TimedOut, "{report:?}");
        assert!(start.elapsed() < Duration::from_secs(2));

        // Cancelling a task running on the subworker sets its flag there.
        let running = client.delay("sleep_ms", (10_000,), options()).await.unwrap();
        while client.status(running).await.unwrap().state != TaskState::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(client.cancel(running).await.unwrap().state, TaskState::Running);
        let report = client.wait(running, Duration::from_secs(3)).await.unwrap();
        let ran_ms: u64 = serde_json::from_slice(report.result.as_deref().unwrap()).unwrap();
        assert!(ran_ms < 5_000, "the task on the subworker stopped when asked, after {ran_ms} ms");
    });
}
