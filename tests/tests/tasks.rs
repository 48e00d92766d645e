//! Running tasks from the command line and the client library: results,
//! errors, panics, unknown tasks, arguments that do not fit, every priority.

use std::time::Duration;

use fastworker::{ClientError, Priority, SubmitOptions, TaskState};
use fastworker_tests::{run_cli, runtime, stderr, stdout, Process};

fn both_plugins() -> Process {
    // No restart window: an unknown task is refused at once, from the start.
    Process::control_plane(&["example-tasks", "text-tasks"], &["--concurrency", "2", "--restart-window", "0"])
}

fn submit(cp: &Process, args: &[&str]) -> std::process::Output {
    let mut all = vec!["submit", "--address", &cp.address, "--timeout", "10"];
    all.extend_from_slice(args);
    run_cli(&all)
}

#[test]
fn tasks_of_two_plugins_run_in_one_process() {
    let cp = both_plugins();
    let output = submit(&cp, &["--task-name", "add", "--args", "5", "3"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "8");

    let output = submit(&cp, &["--task-name", "upper", "--args", "hello"]);
    assert_eq!(stdout(&output).trim(), "\"HELLO\"", "a bare word is a string: {}", stderr(&output));

    let output = submit(&cp, &["--task-name", "word_count", "--args", "\"one two three\""]);
    assert_eq!(stdout(&output).trim(), "3");

    let output = submit(&cp, &["--task-name", "midpoint", "--args", r#"{"x":0,"y":-2}"#, r#"{"x":4,"y":6}"#]);
    let point: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(point, serde_json::json!({"x": 2.0, "y": 2.0}));

    let output = submit(&cp, &["--task-name", "add", "--args", "-7", "2"]);
    assert_eq!(stdout(&output).trim(), "-5", "negative numbers are arguments: {}", stderr(&output));
}

#[test]
fn every_priority_port_serves() {
    let cp = both_plugins();
    for (i, priority) in ["critical", "high", "normal", "low"].iter().enumerate() {
        let output = submit(&cp, &["--task-name", "add", "--args", &i.to_string(), "10", "--priority", priority]);
        assert!(output.status.success(), "{priority}: {}", stderr(&output));
        assert_eq!(stdout(&output).trim(), (i + 10).to_string());
    }
    let output = submit(&cp, &["--task-name", "add", "--args", "1", "1", "--priority", "urgent"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("critical, high, normal or low"));
}

#[test]
fn a_failing_task_reports_its_error_and_exits_non_zero() {
    let cp = both_plugins();
    let output = submit(&cp, &["--task-name", "divide", "--args", "1", "0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("task 'divide' failed: cannot divide 1 by zero"), "{}", stderr(&output));
}

#[test]
fn a_panicking_task_fails_alone_and_the_process_keeps_serving() {
    let cp = both_plugins();
    let output = submit(&cp, &["--task-name", "panic_now", "--args", "boom at 42"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("task 'panic_now' panicked: boom at 42"), "{}", stderr(&output));
    let output = submit(&cp, &["--task-name", "add", "--args", "2", "2"]);
    assert_eq!(stdout(&output).trim(), "4", "{}", stderr(&output));
}

#[test]
fn an_unknown_task_is_named_in_the_error() {
    let cp = both_plugins();
    let output = submit(&cp, &["--task-name", "resize_image", "--args", "1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no worker provides task 'resize_image'"), "{}", stderr(&output));
}

#[test]
fn arguments_that_do_not_fit_name_the_task_and_the_problem() {
    let cp = both_plugins();
    // The command line knows the task's schema and refuses before sending
    // (command_line.rs); the plugin's own messages are for other clients.
    let output = submit(&cp, &["--task-name", "add", "--args", "1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("task 'add' needs argument(s) y"), "{}", stderr(&output));
    let client = cp.client();
    let refused = runtime().block_on(client.call::<i64>("add", (1,))).unwrap_err().to_string();
    assert!(refused.contains("task 'add(x, y)' takes 2 argument(s), but 1 were given"), "{refused}");

    let output = submit(&cp, &["--task-name", "add", "--args", "1", "two"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("argument 'y' of task 'add' is an integer; 'two' is not"), "{message}");
    let refused = runtime().block_on(client.call::<i64>("add", (1, "two"))).unwrap_err().to_string();
    assert!(refused.contains("argument 'y' of task 'add'") && refused.contains("expected i64"), "{refused}");

    let output = submit(&cp, &["--task-name", "midpoint", "--args", "{\"x\":1}", "{\"x\":1,\"y\":2}"]);
    assert!(stderr(&output).contains("argument 'a' of task 'midpoint'"), "{}", stderr(&output));
}

#[test]
fn non_blocking_submission_prints_an_id_whose_status_follows_the_task() {
    let cp = both_plugins();
    let output = submit(&cp, &["--task-name", "sleep_ms", "--args", "400", "--non-blocking"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let id = stdout(&output).trim().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");

    let status = run_cli(&["status", "--address", &cp.address, "--task-id", &id]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(report["state"] == "queued" || report["state"] == "running", "{report}");

    let mut report = report;
    for _ in 0..100 {
        if report["state"] != "queued" && report["state"] != "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        let status = run_cli(&["status", "--address", &cp.address, "--task-id", &id]);
        assert!(status.status.success(), "{}", stderr(&status));
        report = serde_json::from_slice(&status.stdout).unwrap();
    }
    assert_eq!(report["state"], "succeeded");
    assert!(report["result"].as_u64().unwrap() >= 400);
    assert_eq!(report["task"], "sleep_ms");
    // Run by one of the control plane's worker processes (docs/isolation.md).
    assert!(report["worker"].as_str().is_some_and(|w| w.starts_with("local-")), "{report}");
    assert_eq!(report["attempts"], 1);
    assert_eq!(report["finished"], true);
    let ran_ms = report["finished_ms"].as_u64().unwrap() - report["started_ms"].as_u64().unwrap();
    assert!(ran_ms >= 400, "{report}");

    let unknown = run_cli(&["status", "--address", &cp.address, "--task-id", "0191c3a2-0000-7000-8000-000000000000"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("unknown"), "{}", stderr(&unknown));
}

#[test]
fn the_client_library_returns_typed_results_and_typed_errors() {
    let cp = both_plugins();
    let client = cp.client();
    runtime().block_on(async {
        assert_eq!(client.call::<i64>("add", (40, 2)).await.unwrap(), 42);
        assert_eq!(client.call::<String>("upper", ("abc",)).await.unwrap(), "ABC");
        // Arguments by name.
        let by_name = serde_json::json!({"y": 2, "x": 3});
        assert_eq!(client.call::<i64>("add", by_name).await.unwrap(), 5);

        match client.call::<i64>("divide", (1, 0)).await {
            Err(ClientError::TaskFailed { task_name, error }) => {
                assert_eq!(task_name, "divide");
                assert!(error.message.contains("zero"));
            }
            other => panic!("expected a task failure, got {other:?}"),
        }
        match client.call::<i64>("nope", ()).await {
            Err(ClientError::Refused(refusal)) => assert!(refusal.message.contains("'nope'")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        match client.call::<String>("add", (1, 2)).await {
            Err(ClientError::Result { task_name, .. }) => assert_eq!(task_name, "add"),
            other => panic!("expected a result type error, got {other:?}"),
        }

        // A declared default priority applies when the caller names none.
        let report = client.submit("word_count", ("a b",), SubmitOptions::default()).await.unwrap();
        assert_eq!((report.state, report.priority), (TaskState::Succeeded, Priority::Critical));
        let options = SubmitOptions { priority: Some(Priority::Low), ..Default::default() };
        let report = client.submit("word_count", ("a b",), options).await.unwrap();
        assert_eq!(report.priority, Priority::Low);
    });
}

#[test]
fn the_example_noop_returns_nothing_and_echo_returns_a_megabyte_unchanged() {
    let cp = both_plugins();
    let client = cp.client();
    runtime().block_on(async {
        let report = client.submit("noop", [(); 0], SubmitOptions::default()).await.unwrap();
        assert_eq!((report.state, report.result.as_deref()), (TaskState::Succeeded, Some(&b"null"[..])));
        // What the benchmark's payload row sends: 1 MiB of text each way.
        let text: String = (0..1 << 20).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let echoed = client.call::<String>("echo", (&text,)).await.unwrap();
        assert!(echoed == text, "echo returned {} bytes that differ from the {} sent", echoed.len(), text.len());
    });
}
