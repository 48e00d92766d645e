//! Logs an operator can use (docs/control-plane.md, *Logs*): one JSON
//! object a line with `--log-format json`, carrying a failed run's task id,
//! task, worker and run; failed runs at WARN and panics at ERROR; a filter
//! that does not parse stops the start naming its variable; no colour codes
//! into a pipe; the variables in `--help`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fastworker::client::SubmitOptions;
use fastworker_tests::{
    fastworker_bin, final_reports, output_within, plugin, runtime, stderr, stdout, wait_until, Process,
};
use serde_json::Value;

/// Every line of `log` as JSON; panics naming the first that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}")))
        .collect()
}

#[test]
fn json_logs_are_one_object_a_line_with_a_failed_runs_task_id() {
    let env = [("FASTWORKER_LOG_FORMAT", "json")];
    let cp = Process::control_plane_with_env(&["example-tasks"], &["--restart-window", "0"], &env);
    let client = cp.client();
    let rt = runtime();
    let failed = rt.block_on(client.delay("divide", [1, 0], SubmitOptions::default())).unwrap();
    let panicked = rt.block_on(client.delay("panic_now", ["boom at 42"], SubmitOptions::default())).unwrap();
    let reports = final_reports(&rt, &client, &[failed, panicked], Duration::from_secs(60)).expect("both end");
    assert!(reports.iter().all(|r| r.error.is_some()), "{reports:?}");
    let line_of = |task_id: String| {
        let mut found = None;
        wait_until(Duration::from_secs(20), || {
            found = json_lines(&cp.log()).into_iter().find(|line| line["task_id"] == task_id.as_str());
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no line with task_id {task_id}:\n{}", cp.log()))
    };
    let line = line_of(failed.to_string());
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["task"], "divide", "{line}");
    assert_eq!(line["run"], 1, "{line}");
    assert!(line["worker"].as_str().is_some_and(|w| w.starts_with("local-")), "{line}");
    assert!(line["error"].as_str().is_some_and(|e| !e.is_empty()), "{line}");
    assert!(line["timestamp"].is_string() && line["message"].is_string(), "{line}");
    let line = line_of(panicked.to_string());
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["task"], "panic_now", "{line}");
    assert!(line["error"].as_str().is_some_and(|e| e.contains("boom at 42")), "{line}");
    // Every line, the worker processes' and the panic's own too, is one object.
    let lines = json_lines(&cp.log());
    assert!(lines.iter().any(|l| l["target"] == "panic" && l["level"] == "ERROR"), "{}", cp.log());
    assert!(!cp.log().contains('\u{1b}'), "colour codes in JSON logs");
}

#[test]
fn a_bad_log_filter_stops_the_start_naming_the_variable() {
    let plugin = plugin("example-tasks").display().to_string();
    for (variable, value, shown) in [
        ("FASTWORKER_LOG", "verbose", "'verbose'"),
        ("FASTWORKER_LOG", "info,fastworker=loud", "'fastworker=loud'"),
        ("RUST_LOG", "fastworker", "'fastworker'"),
    ] {
        for command in
            [vec!["list", "--task-modules", &plugin], vec!["control-plane", "--no-gui", "--task-modules", &plugin]]
        {
            let mut run = Command::new(fastworker_bin());
            run.args(&command).env_remove("FASTWORKER_LOG").env_remove("RUST_LOG").env(variable, value);
            let output = output_within(run, Duration::from_secs(60));
            let text = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{variable}={value} {command:?}: {text}");
            assert!(text.contains(variable) && text.contains(shown), "{variable}={value}: {text}");
            assert!(stdout(&output).is_empty(), "{command:?} ran: {}", stdout(&output));
        }
    }
    let mut run = Command::new(fastworker_bin());
    run.args(["list", "--task-modules", &plugin]).env("FASTWORKER_LOG_FORMAT", "yaml");
    let output = output_within(run, Duration::from_secs(60));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    // A good one is taken.
    let mut run = Command::new(fastworker_bin());
    run.args(["list", "--task-modules", &plugin]).env("FASTWORKER_LOG", "warn,fastworker::server=debug");
    let output = output_within(run, Duration::from_secs(60));
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn text_logs_into_a_pipe_have_no_colour_and_help_names_the_variables() {
    let base = fastworker_tests::free_base_port();
    let mut child = Command::new(fastworker_bin())
        .args(["control-plane", "--no-gui", "--no-discovery", "--in-process", "--base-address"])
        .arg(format!("tcp://127.0.0.1:{base}"))
        .arg("--task-modules")
        .arg(plugin("example-tasks"))
        .env("FASTWORKER_LOG", "debug")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let (sender, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 || sender.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut bytes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&bytes).contains("plugin loaded") && Instant::now() < deadline {
        if let Ok(chunk) = received.recv_timeout(Duration::from_millis(100)) {
            bytes.extend(chunk);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    bytes.extend(received.try_iter().flatten());
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("INFO") && text.contains("plugin loaded"), "{text}");
    assert!(!bytes.contains(&0x1b), "an escape byte in piped logs: {text:?}");

    let help = stdout(&output_within(
        {
            let mut help = Command::new(fastworker_bin());
            help.arg("--help");
            help
        },
        Duration::from_secs(30),
    ));
    for variable in ["FASTWORKER_LOG ", "FASTWORKER_LOG_FORMAT", "RUST_LOG", "NO_COLOR", "FASTWORKER_PLUGIN_PATH"] {
        assert!(help.contains(variable), "--help does not name {variable}:\n{help}");
    }
    assert!(help.contains("--log-format"), "{help}");
}
