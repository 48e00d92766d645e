//! The command line uses what it knows about a task: `submit` reads
//! `--args` by the task's schema and places `--kwargs` by parameter name,
//! operator commands confirm what the control plane now holds, and the
//! servers' `--help` is grouped by purpose with an example per command.

use fastworker_tests::{run_cli, runtime, stderr, stdout, Process};

fn submit(cp: &Process, args: &[&str]) -> std::process::Output {
    let mut all = vec!["submit", "--address", &cp.address, "--timeout", "20"];
    all.extend_from_slice(args);
    run_cli(&all)
}

fn answer(output: &std::process::Output) -> String {
    assert!(output.status.success(), "exit {:?}: {}", output.status.code(), stderr(output));
    stdout(output).trim().to_string()
}

fn refusal(output: &std::process::Output) -> String {
    assert_eq!(output.status.code(), Some(2), "refused as a usage error: {} {}", stdout(output), stderr(output));
    stderr(output)
}

#[test]
fn arguments_are_read_by_the_tasks_schema_and_named() {
    // The control plane's own tasks, and a subworker's, whose schemas come
    // over its registration.
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "2", "--restart-window", "0"]);
    let _sw = Process::subworker(&cp, "sw1", &["text-tasks"], &["--concurrency", "2"]);

    // A number for a String parameter is the string; for an integer, the number.
    assert_eq!(answer(&submit(&cp, &["--task-name", "upper", "--args", "8080"])), "\"8080\"");
    assert_eq!(answer(&submit(&cp, &["--task-name", "repeat", "--args", "80", "3"])), "\"808080\"");
    assert_eq!(answer(&submit(&cp, &["--task-name", "echo", "--args", "true"])), "\"true\"");
    assert_eq!(answer(&submit(&cp, &["--task-name", "add", "--args", "-7", "2"])), "-5");
    // JSON still reads as JSON where the parameter takes it.
    assert_eq!(answer(&submit(&cp, &["--task-name", "upper", "--args", "\"quoted text\""])), "\"QUOTED TEXT\"");
    assert_eq!(answer(&submit(&cp, &["--task-name", "sum", "--args", "[1,2,3]"])), "6");

    // By name, in any order, and mixed with positions.
    assert_eq!(answer(&submit(&cp, &["--task-name", "repeat", "--kwargs", "times=2", "text=ab"])), "\"abab\"");
    assert_eq!(answer(&submit(&cp, &["--task-name", "repeat", "--args", "x", "--kwargs", "times=3"])), "\"xxx\"");
    let repeated = submit(&cp, &["--task-name", "add", "--kwargs", "y=4", "--kwargs", "x=1"]);
    assert_eq!(answer(&repeated), "5", "--kwargs is repeatable");

    // What does not fit is refused before it is sent, saying why.
    let error = refusal(&submit(&cp, &["--task-name", "fib", "--args", "3.5"]));
    assert!(error.contains("argument 'n' of task 'fib' is an integer; '3.5' is not"), "{error}");
    let error = refusal(&submit(&cp, &["--task-name", "add", "--args", "1", "2", "3"]));
    assert!(error.contains("task 'add' takes 2 argument(s) (x, y); 3 were given"), "{error}");
    let error = refusal(&submit(&cp, &["--task-name", "repeat", "--kwargs", "count=2", "text=a"]));
    assert!(error.contains("task 'repeat' has no parameter 'count'; its parameters are: text, times"), "{error}");
    let error = refusal(&submit(&cp, &["--task-name", "add", "--args", "1", "--kwargs", "x=2"]));
    assert!(error.contains("argument 'x' of task 'add' is given twice"), "{error}");
    let error = refusal(&submit(&cp, &["--task-name", "add", "--kwargs", "x=2"]));
    assert!(error.contains("task 'add' needs argument(s) y"), "{error}");
    let error = refusal(&submit(&cp, &["--task-name", "add", "--kwargs", "x"]));
    assert!(error.contains("--kwargs 'x' is not NAME=VALUE"), "{error}");
    let error = refusal(&submit(&cp, &["--task-name", "midpoint", "--args", "5", "{\"x\":1,\"y\":1}"]));
    assert!(error.contains("argument 'a' of task 'midpoint' is an object"), "{error}");

    // A task nobody provides: sent as it reads, and the control plane answers.
    let output = submit(&cp, &["--task-name", "no_such_task", "--kwargs", "a=1"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("no_such_task"), "{}", stderr(&output));
}

#[test]
fn operator_commands_confirm_what_the_control_plane_holds() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "2"]);
    let limits = |args: &[&str]| {
        let mut all = vec!["limits"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--address", &cp.address]);
        answer(&run_cli(&all))
    };
    let set = limits(&["set", "add", "rate=20/s", "burst=5", "max_running=2"]);
    assert_eq!(
        set,
        "task 'add': run-time limit set; its limit now is rate:20/s,burst:5,max_running:2 (run-time), with 0 running and 0 held"
    );
    let cleared = limits(&["clear", "add"]);
    assert_eq!(cleared, "task 'add': run-time limit cleared; it has no limit now");
    // A declared limit lifted at run time, then back.
    let lifted = limits(&["set", "limited_running", "none"]);
    assert!(
        lifted.starts_with("task 'limited_running': run-time limit set; its limit now is none (run-time)"),
        "{lifted}"
    );
    let back = limits(&["clear", "limited_running"]);
    assert!(back.contains("its limit now is max_running:2 (declared)"), "{back}");
    // The confirmation is read back from the control plane: what it lists.
    let listed = runtime().block_on(cp.client().task_limits()).unwrap();
    let row = listed.iter().find(|row| row.task_name == "limited_running").unwrap();
    assert_eq!(row.limit.describe(), "max_running:2");
}

#[test]
fn a_paused_schedule_is_confirmed() {
    let cp = Process::control_plane(&["periodic-tasks"], &["--min-schedule-period", "0.1"]);
    let output = run_cli(&["schedules", "--pause", "steady", "--address", &cp.address]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("schedule of 'steady' ("), "{}", stderr(&output));
    assert!(stderr(&output).contains(") is paused now; next run: none"), "{}", stderr(&output));
    let listing: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("the list stays JSON");
    assert!(listing.as_array().unwrap().iter().any(|row| row["task"] == "steady" && row["paused"] == true));
    let output = run_cli(&["schedules", "--resume", "steady", "--address", &cp.address]);
    assert!(stderr(&output).contains("is running now; next run: 20"), "a time follows: {}", stderr(&output));
}

#[test]
fn help_is_grouped_by_purpose_with_an_example_per_command() {
    let help = |args: &[&str]| {
        let output = run_cli(args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        stdout(&output)
    };
    let control_plane = help(&["control-plane", "--help"]);
    for heading in [
        "Ports and addresses:",
        "Plugins:",
        "Running tasks and isolation:",
        "Subworkers:",
        "Results:",
        "Durability and shutdown:",
        "Task limits:",
        "Dashboard:",
        "Trust (keys and TLS):",
        "Bounds against overload and hostile peers:",
        "Bounds of the cluster and the dashboard:",
    ] {
        assert!(control_plane.lines().any(|line| line == heading), "control-plane --help lacks {heading}");
    }
    // Each flag under its own heading: a few checked by where they stand.
    let under = |text: &str, heading: &str, flag: &str| {
        let section = text.split(&format!("\n{heading}\n")).nth(1).unwrap_or_default();
        let section = section.split("\n\n").next().unwrap_or_default();
        assert!(section.contains(flag), "{flag} is not under {heading}:\n{text}");
    };
    under(&control_plane, "Dashboard:", "--gui-port");
    under(&control_plane, "Trust (keys and TLS):", "--cluster-key-file");
    under(&control_plane, "Trust (keys and TLS):", "--tls-ca");
    under(&control_plane, "Durability and shutdown:", "--state-dir");
    under(&control_plane, "Bounds against overload and hostile peers:", "--max-frame-bytes");
    let subworker = help(&["subworker", "--help"]);
    under(&subworker, "Ports and addresses:", "--control-plane-address");
    under(&subworker, "Running tasks and isolation:", "--prefetch");
    under(&subworker, "Plugins:", "--task-modules");
    for command in [
        "control-plane",
        "subworker",
        "list",
        "submit",
        "status",
        "cancel",
        "workers",
        "schedules",
        "keygen",
        "limits",
        "workflow",
    ] {
        let text = help(&[command, "--help"]);
        let example = text.split("Example").nth(1).unwrap_or_else(|| panic!("{command} --help has no example"));
        assert!(example.contains(&format!("fastworker {command}")), "{command}'s example runs it: {example}");
    }
}
