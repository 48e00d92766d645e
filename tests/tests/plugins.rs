//! Loading plugins: several at once, and every kind of refusal.

use fastworker_tests::{plugin, run_cli, stderr, stdout, target_dir, Process};

#[test]
fn list_shows_the_tasks_of_two_plugins_with_their_options() {
    let example = plugin("example-tasks");
    let text = plugin("text-tasks");
    let output = run_cli(&["list", "--task-modules", example.to_str().unwrap(), text.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let listing = stdout(&output);
    for task in ["add", "midpoint", "sleep_ms", "divide", "panic_now", "fib", "hash_bytes", "upper", "word_count"] {
        assert!(listing.lines().any(|l| l.starts_with(&format!("{task} "))), "{task} missing from:\n{listing}");
    }
    let add = listing.lines().find(|l| l.starts_with("add ")).unwrap();
    assert!(add.contains("example-tasks") && add.contains("high") && add.contains("5s"), "{add}");
    let word_count = listing.lines().find(|l| l.starts_with("word_count ")).unwrap();
    assert!(word_count.contains("text-tasks") && word_count.contains("critical"), "{word_count}");

    let output = run_cli(&["list", "--json", "--task-modules", example.to_str().unwrap()]);
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let add = rows.as_array().unwrap().iter().find(|r| r["task"] == "add").unwrap();
    assert_eq!(add["priority"], "high");
    assert_eq!(add["timeout_ms"], 5000);
    assert_eq!(add["signature"], "add(x: i64, y: i64) -> Result<i64, String>");
}

/// A shared library that is not a plugin: the SDK's proc-macro crate.
fn plain_shared_library() -> String {
    let deps = target_dir().join("deps");
    std::fs::read_dir(&deps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("libfastworker_plugin_macros") && name.ends_with(".so")
        })
        .expect("the proc-macro library is built")
        .display()
        .to_string()
}

fn refused(modules: &[String], expected: &[&str]) {
    let mut args = vec!["list".to_string(), "--task-modules".to_string()];
    args.extend(modules.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_cli(&args);
    assert_eq!(output.status.code(), Some(2), "list accepted {modules:?}: {}", stdout(&output));
    let message = stderr(&output);
    for fragment in expected {
        assert!(message.contains(fragment), "'{fragment}' not in: {message}");
    }

    // The control plane refuses the same set at start-up and exits non-zero.
    let mut process = Process::spawn(
        &[["control-plane", "--no-gui", "--task-modules"].iter().map(|s| s.to_string()).collect(), modules.to_vec()]
            .concat(),
        &[],
        String::new(),
    );
    let code = process.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(code, Some(2), "control plane was not refused: {}", process.log());
    for fragment in expected {
        assert!(process.log().contains(fragment), "'{fragment}' not in: {}", process.log());
    }
}

#[test]
fn two_plugins_declaring_one_task_are_refused() {
    let example = plugin("example-tasks").display().to_string();
    let dup = plugin("dup-tasks").display().to_string();
    refused(&[example.clone(), dup.clone()], &["task 'add'", &example, &dup]);
}

#[test]
fn a_missing_file_is_refused() {
    refused(&["/no/such/libtasks.so".into()], &["/no/such/libtasks.so", "no such file"]);
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let path = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
    refused(std::slice::from_ref(&path), &[&path, "not a loadable shared library"]);
}

#[test]
fn a_library_that_is_not_a_plugin_is_refused() {
    let path = plain_shared_library();
    refused(std::slice::from_ref(&path), &[&path, "not a fastworker plugin", "export_plugin!"]);
}

#[test]
fn a_plugin_built_against_another_sdk_is_refused_naming_both_versions() {
    let path = plugin("old-sdk-plugin").display().to_string();
    refused(std::slice::from_ref(&path), &[&path, "0.0.3", fastworker_plugin_sdk::SDK_VERSION, "rebuild"]);
}

#[test]
fn tasks_list_their_argument_and_result_schemas() {
    let example = plugin("example-tasks");
    let output = run_cli(&["list", "--json", "--task-modules", example.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = |name: &str| rows.as_array().unwrap().iter().find(|r| r["task"] == name).unwrap().clone();
    let add = row("add");
    let args = &add["schema"]["args"];
    assert_eq!(args["type"], "object");
    assert_eq!(args["required"], serde_json::json!(["x", "y"]), "parameters in positional order: {args}");
    assert_eq!(args["properties"]["x"]["type"], "integer");
    assert_eq!(args["additionalProperties"], false);
    assert_eq!(args["description"], "Adds two integers.");
    assert_eq!(add["schema"]["result"]["type"], "integer");
    // A struct parameter: its schema is a definition the properties refer to.
    let midpoint = row("midpoint");
    let defs = &midpoint["schema"]["args"]["$defs"];
    assert_eq!(defs["Point"]["properties"]["x"]["type"], "number", "{midpoint}");
    assert_eq!(midpoint["schema"]["result"]["$defs"]["Point"]["required"], serde_json::json!(["x", "y"]));
    // A task returning Result: the schema is of its success value; the context is no parameter.
    assert_eq!(row("divide")["schema"]["result"]["type"], "integer");
    assert_eq!(row("flaky")["schema"]["args"]["required"], serde_json::json!(["failures"]));
    assert_eq!(row("tick")["schema"]["args"]["properties"], serde_json::json!({}));
}

#[test]
fn a_plugin_built_before_schemas_existed_loads_runs_and_shows_no_schema() {
    let path = plugin("pre-schema-plugin");
    let output = run_cli(&["list", "--json", "--task-modules", path.to_str().unwrap()]);
    assert!(output.status.success(), "the plugin was refused: {}", stderr(&output));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows[0]["task"], "double");
    assert_eq!(rows[0]["plugin"], "pre-schema-plugin");
    assert!(rows[0]["schema"].is_null(), "{rows}");

    let process = Process::control_plane(&["pre-schema-plugin"], &[]);
    let runtime = fastworker_tests::runtime();
    let doubled: i64 = runtime.block_on(process.client().call("double", [21])).unwrap();
    assert_eq!(doubled, 42);
    let tasks = runtime.block_on(process.client().tasks()).unwrap();
    assert_eq!((tasks[0].name.as_str(), &tasks[0].args_schema, &tasks[0].result_schema), ("double", &None, &None));
}

#[test]
fn the_client_lists_the_tasks_with_their_schemas_and_providers() {
    // Its own threads provide the plugin's tasks (worker processes would
    // be listed as providers too).
    let cp = Process::control_plane(&["example-tasks"], &["--in-process"]);
    let _sw = Process::subworker(&cp, "sw1", &["text-tasks"], &[]);
    let tasks = fastworker_tests::runtime().block_on(cp.client().tasks()).unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "sorted by name");
    let add = tasks.iter().find(|t| t.name == "add").unwrap();
    assert_eq!(add.doc, "Adds two integers.");
    assert_eq!(add.providers, ["control-plane"]);
    let args: serde_json::Value = serde_json::from_str(add.args_schema.as_deref().unwrap()).unwrap();
    assert_eq!(args["required"], serde_json::json!(["x", "y"]));
    let result: serde_json::Value = serde_json::from_str(add.result_schema.as_deref().unwrap()).unwrap();
    assert_eq!(result["type"], "integer");
    // A task only the subworker provides: described as its registration offered it.
    let upper = tasks.iter().find(|t| t.name == "upper").unwrap_or_else(|| panic!("upper missing: {names:?}"));
    assert_eq!(upper.providers, ["sw1"]);
    assert!(!upper.doc.is_empty() && upper.signature.contains("String"), "{upper:?}");
    let args: serde_json::Value = serde_json::from_str(upper.args_schema.as_deref().unwrap()).unwrap();
    assert!(args["required"].as_array().is_some_and(|r| r.len() == 1), "{args}");
}

/// The seeds' own command lines, run as written from a directory that holds
/// the plugin: `--task-modules mytasks` finds `libmytasks.so`, for the
/// control plane and a subworker alike; a name found nowhere says where it
/// was looked for.
#[test]
fn the_seeds_plugin_names_work_as_written() {
    use std::time::Duration;
    let dir = std::env::temp_dir().join(format!("fastworker-seeds-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin("example-tasks"), dir.join("libmytasks.so")).unwrap();
    let base = fastworker_tests::free_base_port();
    let address = format!("tcp://127.0.0.1:{base}");
    let args: Vec<String> =
        ["control-plane", "--task-modules", "mytasks", "--base-address", &address, "--no-gui", "--no-discovery"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut cp = Process::spawn_in(Some(&dir), &args, &[], address.clone());
    cp.wait_ready(Duration::from_secs(20)).expect("the control plane starts with --task-modules mytasks");
    let sw_address = format!("tcp://127.0.0.1:{}", fastworker_tests::free_ports(4));
    let sw_args: Vec<String> = [
        "subworker",
        "--worker-id",
        "sw1",
        "--control-plane-address",
        &address,
        "--base-address",
        &sw_address,
        "--task-modules",
        "mytasks",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _sw = Process::spawn_in(Some(&dir), &sw_args, &[], sw_address);
    assert!(
        fastworker_tests::wait_until(Duration::from_secs(20), || cp.worker("sw1").is_some()),
        "the subworker started with --task-modules mytasks never registered:\n{}",
        cp.log()
    );
    let output = run_cli(&["submit", "--task-name", "add", "--args", "5", "3", "--address", &address]);
    assert_eq!(stdout(&output).trim(), "8", "{}", stderr(&output));

    // Nothing called that anywhere: the error lists the places searched.
    let output = run_cli(&["list", "--task-modules", "no_such_tasks"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("libno_such_tasks.so") && message.contains("FASTWORKER_PLUGIN_PATH"), "{message}");
    // Found through FASTWORKER_PLUGIN_PATH from anywhere.
    let mut command = std::process::Command::new(fastworker_tests::fastworker_bin());
    command.args(["list", "--task-modules", "mytasks"]).env("FASTWORKER_PLUGIN_PATH", &dir);
    let output = fastworker_tests::output_within(command, fastworker_tests::CLI_LIMIT);
    assert!(output.status.success() && stdout(&output).contains("add "), "{}", stderr(&output));
}
