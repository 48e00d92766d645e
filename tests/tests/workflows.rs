//! Workflows (chains, groups, chords) end to end: real control planes and
//! subworkers, the example plugin, the Rust client and the command line.

use std::time::{Duration, Instant};

use fastworker::protocol::{decode, encode, ErrorKind, Reply, Request, PROTOCOL_VERSION};
use fastworker::workflow::{
    task, MemberState, Receive, Workflow, WorkflowId, WorkflowNode, WorkflowReport, WorkflowState, WorkflowSubmit,
};
use fastworker::{Client, ClientError, TaskState};
use fastworker_tests::{free_base_port, plugin, run_cli, runtime, stderr, stdout, wait_until, Process};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn result_of(report: &WorkflowReport) -> Value {
    assert_eq!(report.state, WorkflowState::Succeeded, "{report:?}");
    serde_json::from_slice(report.result.as_deref().unwrap()).unwrap()
}

fn run(client: &Client, workflow: &Workflow) -> WorkflowReport {
    let rt = runtime();
    let id = rt.block_on(client.submit_workflow(workflow)).unwrap().workflow_id;
    rt.block_on(client.wait_workflow(id, WAIT)).unwrap()
}

fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> fastworker::protocol::ErrorReply {
    match result {
        Err(ClientError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_chain_of_three_passes_each_result_along_and_its_members_are_tasks() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    let wf = Workflow::chain([task("add", json!([1, 2])), task("add", json!([10])), task("add", json!([100]))]);
    let report = run(&client, &wf);
    assert_eq!(result_of(&report), json!(113));
    assert_eq!(report.members.len(), 3);
    let rt = runtime();
    let expected = [3, 13, 113];
    for (member, value) in report.members.iter().zip(expected) {
        assert_eq!(member.state, MemberState::Succeeded);
        let task = rt.block_on(client.status(member.task_id.unwrap())).unwrap();
        assert_eq!((task.task_name.as_str(), task.state), ("add", TaskState::Succeeded));
        assert_eq!(serde_json::from_slice::<Value>(task.result.as_deref().unwrap()).unwrap(), json!(value));
    }
    // The same id and description again answers for the same workflow.
    let again = rt.block_on(client.submit_workflow_as(report.workflow_id, &wf)).unwrap();
    assert_eq!((again.state, again.members[0].task_id), (WorkflowState::Succeeded, report.members[0].task_id));
    let other = Workflow::chain([task("add", json!([5, 5]))]);
    assert_eq!(refusal(rt.block_on(client.submit_workflow_as(report.workflow_id, &other))).kind, ErrorKind::IdConflict);
}

#[test]
fn a_group_of_100_over_two_subworkers_keeps_its_results_in_order() {
    let cp = Process::control_plane(&[], &[]);
    let _a = Process::subworker(&cp, "sw-a", &["example-tasks"], &["--concurrency", "4"]);
    let _b = Process::subworker(&cp, "sw-b", &["example-tasks"], &["--concurrency", "4"]);
    let client = cp.client();
    let report = run(&client, &Workflow::group((0..100i64).map(|i| task("add", json!([i, i])))));
    let expected: Vec<i64> = (0..100).map(|i| 2 * i).collect();
    assert_eq!(result_of(&report), json!(expected));
    let rt = runtime();
    let mut workers: Vec<String> =
        report.members.iter().map(|m| rt.block_on(client.status(m.task_id.unwrap())).unwrap().worker).collect();
    workers.sort();
    workers.dedup();
    assert_eq!(workers, ["sw-a", "sw-b"], "members ran on both subworkers");
}

#[test]
fn a_chord_callback_gets_all_100_results() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    let wf = Workflow::chord((0..100i64).map(|i| task("add", json!([i, 1]))), task("sum", json!([])));
    let report = run(&client, &wf);
    assert_eq!(result_of(&report), json!((1..=100).sum::<i64>()));
    // The callback took the list as its first argument: its own task says so.
    let callback = report.members.last().unwrap();
    assert_eq!(callback.task_name, "sum");
    let rt = runtime();
    let live = rt.block_on(client.status(callback.task_id.unwrap())).unwrap();
    assert_eq!(live.state, TaskState::Succeeded);
    // By name: the list arrives as the named argument.
    let by_key = Workflow::chord(
        [task("add", json!([2, 2])), task("add", json!([3, 3]))],
        task("sum", json!({})).receive(Receive::Key("values".into())),
    );
    assert_eq!(result_of(&run(&client, &by_key)), json!(10));
}

#[test]
fn a_nested_workflow_passes_results_through_groups_and_chords() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    // 3 -> [3+10, sum([3+1, 3+2])] = [13, 9] -> 22
    let wf = Workflow::chain([
        task("add", json!([1, 2])),
        Workflow::group([
            task("add", json!([10])),
            Workflow::chord([task("add", json!([1])), task("add", json!([2]))], task("sum", json!([]))),
        ]),
        task("sum", json!([])),
        task("echo", json!(["done"])).receive(Receive::Ignore),
    ]);
    let report = run(&client, &wf);
    assert_eq!(result_of(&report), json!("done"));
    let rt = runtime();
    let before_last = report.members[report.members.len() - 2].task_id.unwrap();
    let sum = rt.block_on(client.status(before_last)).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(sum.result.as_deref().unwrap()).unwrap(), json!(22));
}

#[test]
fn a_failing_member_fails_the_workflow_and_the_members_after_it_never_run() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    let wf = Workflow::chain([task("add", json!([1, 2])), task("divide", json!([0])), task("add", json!([1]))]);
    let report = run(&client, &wf);
    assert_eq!(report.state, WorkflowState::Failed);
    let failure = report.failure.clone().unwrap();
    assert_eq!(
        (failure.node, failure.task_name.as_deref(), failure.state),
        (Some(2), Some("divide"), MemberState::Failed)
    );
    assert!(failure.message.contains("zero"), "{failure:?}");
    let states: Vec<MemberState> = report.members.iter().map(|m| m.state).collect();
    assert_eq!(states, [MemberState::Succeeded, MemberState::Failed, MemberState::Skipped]);
    assert_eq!(report.members[2].task_id, None, "a skipped member never became a task");
    let rt = runtime();
    let divide = rt.block_on(client.status(failure.task_id.unwrap())).unwrap();
    assert_eq!(divide.state, TaskState::Failed);
    // A timeout counts as a failure.
    let slow =
        Workflow::chain([task("sleep_ms", json!([3000])).timeout(Duration::from_millis(200)), task("add", json!([1]))]);
    let report = run(&client, &slow);
    assert_eq!((report.state, report.failure.unwrap().state), (WorkflowState::Failed, MemberState::TimedOut));
}

#[test]
fn a_member_that_retries_then_succeeds_lets_the_workflow_go_on() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    // flaky receives 1: its first run fails, its second returns 2.
    let wf = Workflow::chain([task("add", json!([0, 1])), task("flaky", json!([])), task("add", json!([5]))]);
    let report = run(&client, &wf);
    assert_eq!(result_of(&report), json!(7));
    let rt = runtime();
    let flaky = rt.block_on(client.status(report.members[1].task_id.unwrap())).unwrap();
    assert_eq!((flaky.state, flaky.attempts), (TaskState::Succeeded, 2));
}

#[test]
fn cancelling_a_running_workflow_stops_its_members_and_skips_the_rest() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    let rt = runtime();
    let wf = Workflow::chain([
        Workflow::group([task("sleep_ms", json!([20_000])), task("sleep_ms", json!([20_000]))]),
        task("sum", json!([])),
    ]);
    let id = rt.block_on(client.submit_workflow(&wf)).unwrap().workflow_id;
    let running = wait_until(Duration::from_secs(10), || {
        let report = rt.block_on(client.workflow_status(id)).unwrap();
        report.members.iter().filter(|m| m.state == MemberState::Running).count() == 2
    });
    assert!(running, "both sleepers should run");
    let started = Instant::now();
    let cancelled = rt.block_on(client.cancel_workflow(id)).unwrap();
    assert_eq!(cancelled.state, WorkflowState::Cancelled);
    assert_eq!(cancelled.members[2].state, MemberState::Skipped);
    for member in &cancelled.members[..2] {
        let task = rt.block_on(client.wait(member.task_id.unwrap(), Duration::from_secs(10))).unwrap();
        assert!(task.state.is_final());
    }
    assert!(started.elapsed() < Duration::from_secs(10), "the running members were asked to stop");
    assert_eq!(refusal(rt.block_on(client.cancel_workflow(id))).kind, ErrorKind::AlreadyFinished);
    // Cancelling one member cancels its workflow.
    let id = rt.block_on(client.submit_workflow(&wf)).unwrap().workflow_id;
    let mut member = None;
    wait_until(Duration::from_secs(10), || {
        let report = rt.block_on(client.workflow_status(id)).unwrap();
        member = report.members.iter().find(|m| m.state == MemberState::Running).and_then(|m| m.task_id);
        member.is_some()
    });
    rt.block_on(client.cancel(member.expect("a running member"))).unwrap();
    let report = rt.block_on(client.wait_workflow(id, WAIT)).unwrap();
    assert_eq!(report.state, WorkflowState::Cancelled);
    assert_eq!(report.members[2].state, MemberState::Skipped);
}

/// Members sent ahead to a worker process (`--prefetch-per-process`) and
/// not started there read `queued` in their workflow's status, over the
/// Rust client and the HTTP API, as each member's own task status does;
/// once the run in front is cancelled they run and the workflow succeeds.
#[test]
fn members_sent_ahead_and_not_started_read_queued() {
    let flags = ["--concurrency", "1", "--prefetch-per-process", "4"];
    let cp = Process::control_plane_with_gui(&["example-tasks"], &flags, &[]);
    let gui = cp.gui.clone().unwrap();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    let rt = runtime();
    let sleeper = rt.block_on(client.delay("sleep_ms", (20_000u64,), fastworker::SubmitOptions::default())).unwrap();
    assert!(wait_until(Duration::from_secs(30), || {
        rt.block_on(client.status(sleeper)).is_ok_and(|r| r.state == TaskState::Running)
    }));
    let id = rt
        .block_on(client.submit_workflow(&Workflow::group((0..3i64).map(|i| task("add", json!([i, i]))))))
        .unwrap()
        .workflow_id;
    let prefetched = || {
        let text = fastworker_tests::http::get(&format!("{gui}/metrics")).text();
        let count =
            |line: &str| line.strip_prefix("fastworker_tasks_prefetched{")?.split(' ').nth(1)?.parse::<u64>().ok();
        text.lines().filter_map(count).sum::<u64>()
    };
    assert!(wait_until(Duration::from_secs(10), || prefetched() == 3), "sent ahead: {}", prefetched());
    let report = rt.block_on(client.workflow_status(id)).unwrap();
    assert_eq!(report.state, WorkflowState::Running);
    for member in &report.members {
        assert_eq!(member.state, MemberState::Queued, "a member sent ahead, not started: {report:?}");
        let task = rt.block_on(client.status(member.task_id.unwrap())).unwrap();
        assert_eq!(task.state, TaskState::Queued, "its task's status agrees: {task:?}");
    }
    let body = fastworker_tests::http::get(&format!("{gui}/api/v1/workflows/{id}")).json();
    for member in body["members"].as_array().unwrap() {
        assert_eq!(member["state"], "queued", "{body}");
    }
    rt.block_on(client.cancel(sleeper)).unwrap();
    let report = rt.block_on(client.wait_workflow(id, WAIT)).unwrap();
    assert_eq!(result_of(&report), json!([0, 2, 4]));
}

#[test]
fn hostile_workflows_are_refused_with_typed_errors_and_the_control_plane_goes_on() {
    let cp = Process::control_plane(&["example-tasks"], &["--restart-window", "0"]);
    let client = cp.client();
    let rt = runtime();
    let step = match task("add", json!([1, 2])) {
        Workflow::Task(step) => step,
        _ => unreachable!(),
    };
    let raw = |nodes: Vec<WorkflowNode>| {
        rt.block_on(client.submit_workflow_raw(WorkflowSubmit { workflow_id: WorkflowId::new_v4(), nodes }))
    };
    // Too deep, flat on the wire: 1000 nested chains.
    let mut deep: Vec<WorkflowNode> = (1..1000).map(|i| WorkflowNode::Chain(vec![i])).collect();
    deep.push(WorkflowNode::Task(step.clone()));
    let refused = refusal(raw(deep));
    assert_eq!(refused.kind, ErrorKind::BadRequest);
    assert!(refused.message.contains("deeper than 32"), "{}", refused.message);
    // Too many members.
    let wide: Vec<WorkflowNode> = std::iter::once(WorkflowNode::Group((1..=10_001).collect()))
        .chain((0..10_001).map(|_| WorkflowNode::Task(step.clone())))
        .collect();
    let refused = refusal(raw(wide));
    assert_eq!(refused.kind, ErrorKind::BadRequest);
    assert!(refused.message.contains("at most 10000 members"), "{}", refused.message);
    // Not a tree.
    let refused = refusal(raw(vec![WorkflowNode::Chain(vec![0])]));
    assert_eq!(refused.kind, ErrorKind::BadRequest);
    assert_eq!(refusal(raw(vec![])).kind, ErrorKind::BadRequest);
    // A member taking its arguments by name cannot take the previous result first.
    let by_name = Workflow::chain([task("add", json!([1, 2])), task("sum", json!({}))]);
    let refused = refusal(rt.block_on(client.submit_workflow(&by_name)));
    assert_eq!(refused.kind, ErrorKind::BadRequest);
    assert!(refused.message.contains("by name"), "{}", refused.message);
    // A task nobody provides.
    let unknown = Workflow::chain([task("add", json!([1, 2])), task("no_such_task", json!([]))]);
    assert_eq!(refusal(rt.block_on(client.submit_workflow(&unknown))).kind, ErrorKind::UnknownTask);
    // Too deep for the builder.
    let mut built = task("add", json!([1, 2]));
    for _ in 0..40 {
        built = Workflow::chain([built]);
    }
    assert_eq!(refusal(rt.block_on(client.submit_workflow(&built))).kind, ErrorKind::BadRequest);
    // A malformed frame: the workflow request's variant with a body cut short.
    let mut frame = encode(&Request::SubmitWorkflow(WorkflowSubmit {
        workflow_id: WorkflowId::new_v4(),
        nodes: vec![WorkflowNode::Task(step)],
    }));
    frame.truncate(frame.len() - 4);
    assert_eq!(frame[0], PROTOCOL_VERSION);
    let socket = nng::Socket::new(nng::Protocol::Req0).unwrap();
    let normal_port = format!("tcp://127.0.0.1:{}", fastworker_tests::base_port(&cp.address) + 2);
    socket.dial(&normal_port).unwrap();
    socket.send(nng::Message::from(&frame[..])).unwrap();
    let answer = socket.recv().unwrap();
    match decode::<Reply>(&answer, 1 << 20).unwrap() {
        Reply::Error(error) => assert_eq!(error.kind, ErrorKind::MalformedFrame),
        other => panic!("expected MalformedFrame, got {other:?}"),
    }
    // Status of an unknown workflow.
    assert_eq!(refusal(rt.block_on(client.workflow_status(WorkflowId::new_v4()))).kind, ErrorKind::UnknownWorkflowId);
    // Still serving.
    assert_eq!(rt.block_on(client.call::<i64>("add", (2, 3))).unwrap(), 5);
    assert_eq!(result_of(&run(&client, &Workflow::chain([task("add", json!([1, 1]))]))), json!(2));
}

#[test]
fn the_command_line_submits_a_json_workflow_and_reports_on_it() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let dir = std::env::temp_dir().join(format!("fastworker-wf-{}", WorkflowId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wf.json");
    let description = json!({"chord": {"group": [{"task": "add", "args": [1, 2]}, {"task": "add", "args": [3, 4]}], "then": {"task": "sum"}}});
    std::fs::write(&file, description.to_string()).unwrap();
    let path = file.display().to_string();
    let out = run_cli(&["workflow", "submit", "--file", &path, "--address", &cp.address]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "10");
    let out = run_cli(&["workflow", "submit", "--file", &path, "--non-blocking", "--address", &cp.address]);
    let id = stdout(&out).trim().to_string();
    let out = run_cli(&["workflow", "wait", &id, "--address", &cp.address]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((status["state"].as_str(), status["result"].as_i64()), (Some("succeeded"), Some(10)));
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    let out = run_cli(&["workflow", "status", &id, "--address", &cp.address]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A description that is wrong says where.
    std::fs::write(&file, r#"{"chain": [{"task": "add"}, {"tusk": "add"}]}"#).unwrap();
    let out = run_cli(&["workflow", "submit", "--file", &path, "--address", &cp.address]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("$.chain[1]"), "{}", stderr(&out));
    let out = run_cli(&["workflow", "cancel", &id, "--address", &cp.address]);
    assert_eq!(out.status.code(), Some(1), "an ended workflow cannot be cancelled");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh state directory (and its path as a flag value) and a free
/// base address to restart a control plane on.
fn durable_place(what: &str) -> (std::path::PathBuf, String, String) {
    let dir = std::env::temp_dir().join(format!("fastworker-wf-{what}-{}", WorkflowId::new_v4()));
    let state_dir = dir.display().to_string();
    (dir, state_dir, format!("tcp://127.0.0.1:{}", free_base_port()))
}

/// Starts a durable control plane with the example plugin at `address`.
fn durable_at(address: &str, state_dir: &str) -> Process {
    let args: Vec<String> = [
        "control-plane",
        "--base-address",
        address,
        "--no-gui",
        "--no-discovery",
        "--state-dir",
        state_dir,
        "--task-modules",
        &plugin("example-tasks").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut process = Process::spawn(&args, &[], address.to_string());
    if let Err(log) = process.wait_ready(Duration::from_secs(20)) {
        panic!("control plane did not start:\n{log}");
    }
    process
}

#[test]
fn a_workflow_survives_a_control_plane_killed_mid_way() {
    let (dir, state_dir, address) = durable_place("state");
    let mut cp = durable_at(&address, &state_dir);
    let rt = runtime();
    let client = cp.client();
    // 3, then a 2 s sleep (which ignores it), then 2000+ +1, then a group.
    let wf = Workflow::chain([
        task("add", json!([1, 2])),
        task("sleep_ms", json!([2000])).receive(Receive::Ignore),
        task("add", json!([1])),
        Workflow::group([task("add", json!([1])), task("add", json!([2]))]),
    ]);
    let id = rt.block_on(client.submit_workflow(&wf)).unwrap().workflow_id;
    let first_task = rt.block_on(client.wait_workflow(id, Duration::from_millis(1))).err();
    assert!(first_task.is_some(), "still running");
    let midway = wait_until(Duration::from_secs(10), || {
        let report = rt.block_on(client.workflow_status(id)).unwrap();
        report.members[0].state == MemberState::Succeeded && report.members[1].state == MemberState::Running
    });
    assert!(midway, "the sleeper should be running");
    let before = rt.block_on(client.workflow_status(id)).unwrap();
    cp.signal("KILL");
    let _ = cp.wait_exit(Duration::from_secs(10));
    let cp = durable_at(&address, &state_dir);
    let client = cp.client();
    let report = rt.block_on(client.wait_workflow(id, WAIT)).unwrap();
    let value = result_of(&report);
    let slept = value[0].as_i64().unwrap() - 2;
    assert!(slept >= 2000, "{value}");
    assert_eq!(value, json!([slept + 2, slept + 3]));
    assert_eq!(report.members[0].task_id, before.members[0].task_id, "the same member tasks");
    assert!(report.members.iter().all(|m| m.state == MemberState::Succeeded), "{report:?}");
    // The first member's result came from the store, not a second run.
    let first = rt.block_on(client.status(report.members[0].task_id.unwrap())).unwrap();
    assert_eq!(first.attempts, 1);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_finished_workflow_still_answers_for_its_status_after_a_restart() {
    let (dir, state_dir, address) = durable_place("ended");
    let mut cp = durable_at(&address, &state_dir);
    let rt = runtime();
    let wf = Workflow::chain([task("add", json!([1, 2])), task("add", json!([10]))]);
    let done = run(&cp.client(), &wf);
    assert_eq!(result_of(&done), json!(13));
    cp.signal("KILL");
    let _ = cp.wait_exit(Duration::from_secs(10));
    let cp = durable_at(&address, &state_dir);
    let after = rt.block_on(cp.client().workflow_status(done.workflow_id)).expect("known after the restart");
    assert_eq!(after.state, done.state);
    assert_eq!(result_of(&after), json!(13));
    let members = |r: &WorkflowReport| r.members.iter().map(|m| (m.task_id, m.state)).collect::<Vec<_>>();
    assert_eq!(members(&after), members(&done));
    // Its members ran once: their results came from the store.
    for member in &after.members {
        let report = rt.block_on(cp.client().status(member.task_id.unwrap())).unwrap();
        assert_eq!((report.state, report.attempts), (TaskState::Succeeded, 1));
    }
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_keys_a_workflow_belongs_to_the_key_that_submitted_it() {
    use std::path::Path;
    use std::sync::Arc;

    use fastworker::auth::{KeyRing, Role};

    let dir = std::env::temp_dir().join(format!("fastworker-wf-keys-{}", WorkflowId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(format!("{name}.key")).display().to_string();
    assert!(run_cli(&["keygen", "--out", &path("cluster")]).status.success());
    for (name, role) in [("operator", "operator"), ("alice", "client"), ("worker", "worker")] {
        let out = run_cli(&[
            "keygen",
            "--role",
            role,
            "--from",
            &path("cluster"),
            "--out",
            &path(name),
            "--worker-id",
            "sw1",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let cluster = path("cluster");
    let cp = Process::control_plane_with_env(&["example-tasks"], &[], &[("FASTWORKER_CLUSTER_KEY_FILE", &cluster)]);
    let client = |name: &str| {
        let ring = Arc::new(KeyRing::load(Path::new(&path(name))).unwrap());
        let unkeyed = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(10));
        match name {
            "worker" => unkeyed.with_key(ring.signer(Role::Worker).unwrap(), ring),
            _ => unkeyed.with_keys(ring).unwrap(),
        }
    };
    let (alice, operator, worker) = (client("alice"), client("operator"), client("worker"));
    let rt = runtime();
    let slow = Workflow::chain([task("sleep_ms", json!([20_000])), task("add", json!([1]))]);
    assert_eq!(refusal(rt.block_on(worker.submit_workflow(&slow))).kind, ErrorKind::Forbidden);
    let id = rt.block_on(alice.submit_workflow(&slow)).unwrap().workflow_id;
    assert_eq!(refusal(rt.block_on(worker.cancel_workflow(id))).kind, ErrorKind::Forbidden);
    assert_eq!(refusal(rt.block_on(worker.workflow_status(id))).kind, ErrorKind::Forbidden);
    // Its members are tasks of the same key, under the same rules.
    let member = rt.block_on(alice.workflow_status(id)).unwrap().members[0].task_id.unwrap();
    assert_eq!(refusal(rt.block_on(worker.cancel(member))).kind, ErrorKind::Forbidden);
    assert_eq!(rt.block_on(alice.workflow_status(id)).unwrap().state, WorkflowState::Running);
    assert_eq!(rt.block_on(alice.cancel_workflow(id)).unwrap().state, WorkflowState::Cancelled);
    let other = rt.block_on(alice.submit_workflow(&slow)).unwrap().workflow_id;
    assert_eq!(rt.block_on(operator.cancel_workflow(other)).unwrap().state, WorkflowState::Cancelled);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_chord_killed_with_part_of_its_group_done_finishes_after_the_restart() {
    let (dir, state_dir, address) = durable_place("state");
    let mut cp = durable_at(&address, &state_dir);
    let rt = runtime();
    let client = cp.client();
    let wf = Workflow::chord(
        [task("add", json!([1, 2])), task("sleep_ms", json!([2500])), task("add", json!([3, 4]))],
        task("sum", json!([])),
    );
    let id = rt.block_on(client.submit_workflow(&wf)).unwrap().workflow_id;
    let midway = wait_until(Duration::from_secs(10), || {
        let report = rt.block_on(client.workflow_status(id)).unwrap();
        let states: Vec<MemberState> = report.members.iter().map(|m| m.state).collect();
        states[..3] == [MemberState::Succeeded, MemberState::Running, MemberState::Succeeded]
    });
    assert!(midway, "two adds done, the sleeper running");
    // Killed the moment status shows the two ends: status shows them only
    // once they are on disk, so they are not run again.
    cp.signal("KILL");
    let _ = cp.wait_exit(Duration::from_secs(10));
    let cp = durable_at(&address, &state_dir);
    let client = cp.client();
    let report = rt.block_on(client.wait_workflow(id, WAIT)).unwrap();
    let total = result_of(&report).as_i64().unwrap();
    assert!(total >= 3 + 2500 + 7, "{total}");
    for done in [0, 2] {
        let add = rt.block_on(client.status(report.members[done].task_id.unwrap())).unwrap();
        assert_eq!(add.attempts, 1, "a finished member is not run again");
    }
    let sleeper = rt.block_on(client.status(report.members[1].task_id.unwrap())).unwrap();
    assert_eq!(sleeper.attempts, 2, "the interrupted member ran again");
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_member_shown_ended_is_on_disk_so_a_crash_right_after_does_not_run_it_again() {
    let (dir, state_dir, address) = durable_place("shown");
    let rt = runtime();
    let mut cp = durable_at(&address, &state_dir);
    for round in 0..5 {
        let client = cp.client();
        let wf = Workflow::chain([task("sleep_ms", json!([20])), task("sleep_ms", json!([60_000]))]);
        let id = rt.block_on(client.submit_workflow(&wf)).unwrap().workflow_id;
        // Polled as fast as it answers, and killed the moment the first
        // member shows its end: that end must have been on disk already.
        let first = loop {
            let report = rt.block_on(client.workflow_status(id)).unwrap();
            if report.members[0].state == MemberState::Succeeded {
                break report.members[0].task_id.unwrap();
            }
        };
        cp.signal("KILL");
        let _ = cp.wait_exit(Duration::from_secs(10));
        cp = durable_at(&address, &state_dir);
        let client = cp.client();
        let report = rt.block_on(client.workflow_status(id)).unwrap();
        assert_eq!(report.members[0].state, MemberState::Succeeded, "round {round}: {report:?}");
        let task = rt.block_on(client.status(first)).unwrap();
        assert_eq!(task.attempts, 1, "round {round}: a member shown ended ran again: {task:?}");
        // Its second member stops (it may have ended already).
        let _ = rt.block_on(client.cancel_workflow(id));
    }
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process's resident memory now (`VmRSS`) or at its peak (`VmHWM`), in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A gauge of the control plane's `/metrics`.
fn gauge(cp: &Process, name: &str) -> f64 {
    let metrics = fastworker_tests::http::get(&format!("{}/metrics", cp.gui.as_ref().unwrap())).text();
    let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_chord_gathering_more_than_the_running_bound_fails_clearly_without_holding_it() {
    let mib = 1 << 20;
    let flags = ["--max-frame-bytes", "67108864", "--max-queued-bytes", "4194304", "--result-cache-bytes", "4194304"];
    let cp = Process::control_plane_with_gui(&["example-tasks", "text-tasks"], &flags, &[]);
    let client = cp.client();
    let before = memory_kib(cp.pid(), "VmRSS:");
    // 40 results of 1 MiB each, gathered by the group for its callback: 40
    // MiB, where running workflows may hold 4 MiB.
    let members = (0..40).map(|_| task("repeat", json!(["x", mib])));
    let wf = Workflow::chord(members, task("upper", json!([])));
    let report = run(&client, &wf);
    assert_eq!(report.state, WorkflowState::Failed, "{report:?}");
    let message = &report.failure.as_ref().unwrap().message;
    assert!(message.contains("--max-queued-bytes") && message.contains("gathered"), "{message}");
    assert_eq!(report.members.last().unwrap().state, MemberState::Skipped, "the callback never ran");
    // Its peak: gathering the 40 MiB (and building the callback's
    // arguments from them) took about 90 MiB more before.
    let grown = memory_kib(cp.pid(), "VmHWM:").saturating_sub(before);
    eprintln!("the control plane's peak was {grown} KiB above its start");
    assert!(grown < 40 * 1024, "the control plane's peak grew {grown} KiB for a chord failed at 4 MiB");
    assert_eq!(gauge(&cp, "fastworker_workflows_running_bytes"), 0.0);
    assert_eq!(gauge(&cp, "fastworker_workflows_finished"), 1.0);
    // The control plane goes on.
    assert_eq!(result_of(&run(&client, &Workflow::chain([task("add", json!([2, 2]))]))), json!(4));
}

#[test]
fn finished_workflows_past_the_byte_bound_are_forgotten_oldest_first() {
    // Each finished workflow keeps its 100 KiB result: 1 MiB holds about ten.
    let flags = ["--result-cache-bytes", "1048576"];
    let cp = Process::control_plane_with_gui(&["example-tasks", "text-tasks"], &flags, &[]);
    let client = cp.client();
    let rt = runtime();
    let ids: Vec<WorkflowId> = (0..30)
        .map(|_| run(&client, &Workflow::chain([task("repeat", json!(["y", 100 * 1024]))])).workflow_id)
        .collect();
    let (kept, bytes) =
        (gauge(&cp, "fastworker_workflows_finished"), gauge(&cp, "fastworker_workflows_finished_bytes"));
    assert!((5.0..=10.0).contains(&kept) && bytes <= 1048576.0, "{kept} kept in {bytes} bytes");
    let known: Vec<bool> = ids.iter().map(|id| rt.block_on(client.workflow_status(*id)).is_ok()).collect();
    let first_known = known.iter().position(|k| *k).unwrap();
    assert!(known[first_known..].iter().all(|k| *k), "the oldest are forgotten first: {known:?}");
    assert_eq!(known.iter().filter(|k| **k).count() as f64, kept, "{known:?}");
    let forgotten = rt.block_on(client.workflow_status(ids[0]));
    assert!(
        matches!(forgotten, Err(ClientError::Refused(ref r)) if r.kind == ErrorKind::UnknownWorkflowId),
        "{forgotten:?}"
    );
}

#[test]
fn results_too_large_for_a_frame_fail_the_workflow_clearly() {
    let cp = Process::control_plane(&["example-tasks"], &["--max-frame-bytes", "65536"]);
    let client = cp.client();
    // One result of 15 000 bytes fanned out to a group of five echoes: their
    // results are more than a 64 KiB frame (less its margin) can carry on.
    let text = "x".repeat(15_000);
    let wf = Workflow::chain([
        task("echo", json!([text])),
        Workflow::group((0..5).map(|_| task("echo", json!([])))),
        task("sum", json!([])),
    ]);
    let report = run(&client, &wf);
    assert_eq!(report.state, WorkflowState::Failed);
    let failure = report.failure.unwrap();
    assert!(failure.message.contains("--max-frame-bytes"), "{}", failure.message);
    assert_eq!(report.members.last().unwrap().state, MemberState::Skipped, "the callback never ran");
    // The control plane goes on.
    assert_eq!(result_of(&run(&client, &Workflow::chain([task("add", json!([2, 2]))]))), json!(4));
}
