//! The HTTP API for workflows (docs/http-api.md) against a real control
//! plane and the example plugin: submit and wait, submit and follow,
//! failures, cancellation, refusals, authentication, and the dashboard's
//! list of workflows.

use std::time::{Duration, Instant};

use fastworker_tests::http::{control_plane_with_api as control_plane, post_json as post};
use fastworker_tests::http::{get, request, request_with_body, Response};
use fastworker_tests::{run_cli, stderr, Process};
use serde_json::{json, Value};

const KEY: &str = "http-workflow-test-key";

/// The error's kind and message, asserting the body has the API's error shape.
fn error_of(response: &Response) -> (String, String) {
    let body = response.json();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "{body}");
    (body["error"]["kind"].as_str().unwrap_or_else(|| panic!("no error kind in {body}")).to_string(), message)
}

fn submitted_tasks(gui: &str) -> u64 {
    get(&format!("{gui}/api/status")).json()["totals"]["submitted"].as_u64().unwrap()
}

#[test]
fn a_chain_submitted_with_a_wait_answers_its_result_and_members() {
    let (_cp, gui) = control_plane(&[]);
    let chain = json!({"chain": [
        {"task": "add", "args": [1, 2]},
        {"task": "add", "args": [10]},
        {"task": "add", "args": [100]},
    ]});
    let id = uuid::Uuid::new_v4().to_string();
    let response = post(
        &format!("{gui}/api/v1/workflows"),
        &json!({"workflow": chain, "workflow_id": id, "wait_ms": 20_000}),
        &[],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!((body["workflow_id"].as_str(), body["state"].as_str()), (Some(id.as_str()), Some("succeeded")));
    assert_eq!((body["result"].clone(), body["finished"].clone()), (json!(113), json!(true)));
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for (member, expected) in members.iter().zip([3, 13, 113]) {
        assert_eq!((member["task"].as_str(), member["state"].as_str()), (Some("add"), Some("succeeded")));
        // Each member is a task of its own, readable by its id.
        let task = get(&format!("{gui}/api/v1/tasks/{}", member["task_id"].as_str().unwrap())).json();
        assert_eq!(task["result"], expected, "{task}");
    }
    let status = get(&format!("{gui}/api/v1/workflows/{id}"));
    assert_eq!((status.status, status.json()["result"].clone()), (200, json!(113)));
    // The same id and description again answers for the same workflow,
    // without running it twice; another description under it is a conflict.
    let again = post(&format!("{gui}/api/v1/workflows"), &json!({"workflow": chain, "workflow_id": id}), &[]);
    assert_eq!((again.status, again.json()["members"][0]["task_id"].clone()), (200, members[0]["task_id"].clone()));
    assert_eq!(submitted_tasks(&gui), 3);
    let other = json!({"workflow": {"task": "add", "args": [5, 5]}, "workflow_id": id});
    let conflict = post(&format!("{gui}/api/v1/workflows"), &other, &[]);
    assert_eq!((conflict.status, error_of(&conflict).0.as_str()), (409, "IdConflict"), "{}", conflict.text());
}

#[test]
fn a_chord_submitted_without_a_wait_is_followed_then_waited_for() {
    let (_cp, gui) = control_plane(&[]);
    // A slow first member keeps it running long enough to look at.
    let chord = json!({"chain": [
        {"task": "sleep_ms", "args": [700]},
        {"chord": {
            "group": (0..20).map(|i| json!({"task": "add", "args": [i, 1], "receive": "none"})).collect::<Vec<_>>(),
            "then": {"task": "sum", "args": []},
        }},
    ]});
    let response = post(&format!("{gui}/api/v1/workflows"), &json!({"workflow": chord}), &[]);
    assert_eq!(response.status, 202, "{}", response.text());
    let body = response.json();
    assert_eq!(body["state"], "running");
    assert_eq!(body["members"].as_array().unwrap().len(), 22);
    assert_eq!(body["members"][1]["state"], "pending", "{body}");
    assert!(body["members"][1]["task_id"].is_null(), "{body}");
    let id = body["workflow_id"].as_str().unwrap().to_string();
    // A short wait ends before the workflow does.
    let short = get(&format!("{gui}/api/v1/workflows/{id}/wait?timeout_ms=50"));
    assert_eq!((short.status, short.json()["state"].clone()), (202, json!("running")), "{}", short.text());
    let started = Instant::now();
    let waited = get(&format!("{gui}/api/v1/workflows/{id}/wait?timeout_ms=20000"));
    assert_eq!(waited.status, 200, "{}", waited.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(waited.json()["result"], json!((1..=20).sum::<i64>()));
    assert!(waited.json()["members"].as_array().unwrap().iter().all(|m| m["state"] == "succeeded"));
    // Waiting on an ended workflow answers at once.
    let again = get(&format!("{gui}/api/v1/workflows/{id}/wait"));
    assert_eq!(again.status, 200);
    // Waits are bounded; unknown and malformed ids are told apart.
    let refused = get(&format!("{gui}/api/v1/workflows/{id}/wait?timeout_ms=600000"));
    assert_eq!((refused.status, error_of(&refused).0.as_str()), (400, "BadRequest"));
    let refused = get(&format!("{gui}/api/v1/workflows/{id}/wait?timeout_ms=5&extra=1"));
    assert_eq!(refused.status, 400, "{}", refused.text());
    let refused = post(&format!("{gui}/api/v1/workflows"), &json!({"workflow": chord, "wait_ms": 600_000}), &[]);
    assert_eq!(refused.status, 400, "{}", refused.text());
    let unknown = uuid::Uuid::new_v4();
    for url in
        [format!("{gui}/api/v1/workflows/{unknown}"), format!("{gui}/api/v1/workflows/{unknown}/wait?timeout_ms=100")]
    {
        let response = get(&url);
        assert_eq!((response.status, error_of(&response).0.as_str()), (404, "UnknownWorkflowId"), "{url}");
    }
    let response = get(&format!("{gui}/api/v1/workflows/not-a-uuid"));
    assert_eq!((response.status, error_of(&response).0.as_str()), (400, "BadRequest"));
}

#[test]
fn a_failing_member_fails_the_workflow_and_names_itself() {
    let (_cp, gui) = control_plane(&[]);
    let chain = json!({"chain": [
        {"task": "add", "args": [1, 2]},
        {"task": "divide", "args": [0]},
        {"task": "add", "args": [1]},
    ]});
    let response = post(&format!("{gui}/api/v1/workflows"), &json!({"workflow": chain, "wait_ms": 20_000}), &[]);
    // The request succeeded; the workflow did not.
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["state"], "failed");
    assert!(body["result"].is_null());
    let failure = &body["failure"];
    assert_eq!((failure["node"].clone(), failure["task"].clone()), (json!(2), json!("divide")), "{body}");
    assert_eq!((failure["state"].as_str(), failure["kind"].as_str()), (Some("failed"), Some("error")));
    assert!(failure["message"].as_str().unwrap().contains("cannot divide 3 by zero"), "{body}");
    assert_eq!(failure["task_id"], body["members"][1]["task_id"]);
    let states: Vec<&str> = body["members"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["succeeded", "failed", "skipped"]);
}

#[test]
fn cancelling_a_running_workflow_skips_its_pending_members() {
    let (_cp, gui) = control_plane(&[]);
    let chain = json!({"chain": [
        {"task": "sleep_ms", "args": [5000]},
        {"task": "add", "args": [1]},
    ]});
    let body = post(&format!("{gui}/api/v1/workflows"), &json!({"workflow": chain}), &[]).json();
    let id = body["workflow_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let cancelled = request("POST", &format!("{gui}/api/v1/workflows/{id}/cancel"), &[]);
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    let body = cancelled.json();
    assert_eq!(body["state"], "cancelled", "{body}");
    assert_eq!(body["failure"]["state"], "cancelled", "{body}");
    assert_eq!(body["members"][1]["state"], "skipped", "{body}");
    assert!(body["members"][1]["task_id"].is_null(), "the pending member never became a task: {body}");
    let waited = get(&format!("{gui}/api/v1/workflows/{id}/wait?timeout_ms=10000"));
    assert_eq!((waited.status, waited.json()["state"].clone()), (200, json!("cancelled")));
    assert!(started.elapsed() < Duration::from_secs(5), "the wait did not last the sleeping member's 5 s");
    let again = request("POST", &format!("{gui}/api/v1/workflows/{id}/cancel"), &[]);
    assert_eq!((again.status, error_of(&again).0.as_str()), (409, "AlreadyFinished"));
    // Only the first member was ever submitted.
    assert_eq!(submitted_tasks(&gui), 1);
}

#[test]
fn descriptions_and_arguments_that_cannot_run_are_refused_before_queueing() {
    let (cp, gui) = control_plane(&[]);
    let url = format!("{gui}/api/v1/workflows");
    let refusal = |body: Value| {
        let response = post(&url, &body, &[]);
        let (kind, message) = error_of(&response);
        (response.status, kind, message)
    };
    // Where the description is wrong.
    let (status, kind, message) =
        refusal(json!({"workflow": {"chain": [{"task": "add", "args": [1, 2]}, {"tusk": 1}]}}));
    assert_eq!((status, kind.as_str()), (400, "BadRequest"));
    assert!(message.contains("$.chain[1]"), "{message}");
    let (status, _, message) = refusal(json!({"workflow": {"chord": {"group": [{"task": "add", "args": [1, 2]}]}}}));
    assert_eq!(status, 400);
    assert!(message.contains("\"then\""), "{message}");
    // Unknown fields, at the top and inside.
    let (status, _, message) = refusal(json!({"workflow": {"task": "add", "args": [1, 2]}, "wait": 5}));
    assert_eq!(status, 400);
    assert!(message.contains("wait"), "{message}");
    let (status, _, message) = refusal(json!({"workflow": {"task": "add", "args": [1, 2], "priorty": "high"}}));
    assert_eq!(status, 400);
    assert!(message.contains("priorty"), "{message}");
    let (status, _, message) = refusal(json!({"workflow": {"task": "add", "args": [1, 2]}, "workflow_id": "x"}));
    assert_eq!(status, 400);
    assert!(message.contains("workflow_id"), "{message}");
    // Nested too deep.
    let mut deep = json!({"task": "noop"});
    for _ in 0..40 {
        deep = json!({"chain": [deep]});
    }
    let (status, _, message) = refusal(json!({"workflow": deep}));
    assert_eq!(status, 400);
    assert!(message.contains("deeper than 32"), "{message}");
    // A member whose arguments are complete is checked against its schema,
    // wherever it is; one that receives a result from before is not yet.
    let (status, kind, message) = refusal(json!({"workflow": {"group": [
        {"task": "add", "args": [1, 2]},
        {"chain": [{"task": "add", "args": ["one", 2]}, {"task": "add", "args": [1]}]},
    ]}}));
    assert_eq!((status, kind.as_str()), (400, "BadArguments"));
    assert!(message.contains("member 3") && message.contains("task 'add'"), "{message}");
    let (status, kind, message) = refusal(json!({"workflow": {"chain": [
        {"task": "add", "args": [1, 2]},
        {"task": "add", "args": [1, 2, 3], "receive": "none"},
    ]}}));
    assert_eq!((status, kind.as_str()), (400, "BadArguments"));
    assert!(message.contains("member 2"), "{message}");
    // A member by name that would receive the previous result positionally.
    let (status, kind, message) =
        refusal(json!({"workflow": {"chain": [{"task": "add", "args": [1, 2]}, {"task": "add", "args": {"x": 1}}]}}));
    assert_eq!((status, kind.as_str()), (400, "BadRequest"));
    assert!(message.contains("by name"), "{message}");
    // A task nobody provides.
    let (status, kind, message) = refusal(json!({"workflow": {"chain": [{"task": "no_such_task"}]}}));
    assert_eq!((status, kind.as_str()), (404, "UnknownTask"));
    assert!(message.contains("add"), "the message lists the tasks provided: {message}");
    assert_eq!(submitted_tasks(&gui), 0, "{}", cp.log());
    // Not JSON, not a JSON body, too large.
    let response = request_with_body("POST", &url, &[("Content-Type", "application/json")], b"{\"workflow\": ");
    assert_eq!((response.status, error_of(&response).0.as_str()), (400, "BadRequest"));
    let response = request_with_body("POST", &url, &[("Content-Type", "text/plain")], b"{}");
    assert_eq!((response.status, error_of(&response).0.as_str()), (415, "UnsupportedMediaType"));
    let big = json!({"workflow": {"task": "echo", "args": ["x".repeat(2 << 20)]}});
    let response = post(&url, &big, &[]);
    assert_eq!((response.status, error_of(&response).0.as_str()), (413, "PayloadTooLarge"));
    // The server still serves.
    let response = post(&url, &json!({"workflow": {"task": "add", "args": [1, 2]}, "wait_ms": 10_000}), &[]);
    assert_eq!(response.json()["result"], 3, "{}", response.text());
}

#[test]
fn a_keyed_dashboard_needs_the_key_for_workflows() {
    let (_cp, gui) = control_plane(&["--gui-api-key", KEY]);
    let url = format!("{gui}/api/v1/workflows");
    let submission = json!({"workflow": {"group": [{"task": "add", "args": [1, 2]}]}, "wait_ms": 10_000});
    let refused = post(&url, &submission, &[]);
    assert_eq!((refused.status, error_of(&refused).0.as_str()), (401, "Unauthorized"));
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    assert_eq!(post(&url, &submission, &[("Authorization", "Bearer wrong")]).status, 401);
    let bearer = format!("Bearer {KEY}");
    let accepted = post(&url, &submission, &[("Authorization", &bearer)]);
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.json()["result"], json!([3]));
    let id = accepted.json()["workflow_id"].as_str().unwrap().to_string();
    assert_eq!(get(&format!("{url}/{id}")).status, 401);
    assert_eq!(get(&format!("{url}/{id}/wait")).status, 401);
    assert_eq!(request("POST", &format!("{url}/{id}/cancel"), &[]).status, 401);
    let read = request("GET", &format!("{url}/{id}"), &[("Authorization", &bearer)]);
    assert_eq!(read.json()["result"], json!([3]));
    // Another site's page may not submit, key or not.
    let foreign = post(&url, &submission, &[("Authorization", &bearer), ("Origin", "http://evil.example")]);
    assert_eq!((foreign.status, error_of(&foreign).0.as_str()), (403, "Forbidden"));
    // The dashboard's cancel takes the same key.
    let body =
        post(&url, &json!({"workflow": {"task": "sleep_ms", "args": [5000]}}), &[("Authorization", &bearer)]).json();
    let id = body["workflow_id"].as_str().unwrap().to_string();
    assert_eq!(request("POST", &format!("{gui}/api/workflows/{id}/cancel"), &[]).status, 401);
    let cancelled = request("POST", &format!("{gui}/api/workflows/{id}/cancel"), &[("Authorization", &bearer)]);
    assert_eq!(
        (cancelled.status, cancelled.json()["state"].clone()),
        (200, json!("cancelled")),
        "{}",
        cancelled.text()
    );
}

#[test]
fn the_dashboard_lists_workflows_newest_first_with_their_progress() {
    let (_cp, gui) = control_plane(&[]);
    let url = format!("{gui}/api/v1/workflows");
    let group = json!({"workflow": {"group": [{"task": "add", "args": [1, 1]}, {"task": "add", "args": [2, 2]}]}, "wait_ms": 10_000});
    let first = post(&url, &group, &[]).json()["workflow_id"].clone();
    let failing = json!({"workflow": {"chain": [{"task": "divide", "args": [1, 0]}, {"task": "add", "args": [1]}]}, "wait_ms": 10_000});
    let second = post(&url, &failing, &[]).json()["workflow_id"].clone();
    let list = get(&format!("{gui}/api/workflows"));
    assert_eq!(list.status, 200, "{}", list.text());
    let body = list.json();
    assert_eq!(body["total"], 2);
    let rows = body["workflows"].as_array().unwrap();
    assert_eq!((rows[0]["workflow_id"].clone(), rows[1]["workflow_id"].clone()), (second, first.clone()));
    assert_eq!(
        (rows[1]["state"].as_str(), rows[1]["done"].as_u64(), rows[1]["total"].as_u64()),
        (Some("succeeded"), Some(2), Some(2))
    );
    let result: Value = serde_json::from_str(rows[1]["result"].as_str().unwrap()).unwrap();
    assert_eq!(result, json!([2, 4]), "the result's text: {body}");
    assert_eq!((rows[0]["state"].as_str(), rows[0]["failure"]["task"].as_str()), (Some("failed"), Some("divide")));
    assert!(rows[0]["failure"]["message"].as_str().unwrap().contains("by zero"), "{body}");
    assert_eq!(get(&format!("{gui}/api/workflows?limit=1")).json()["workflows"].as_array().unwrap().len(), 1);
    assert_eq!(get(&format!("{gui}/api/workflows?limit=x")).status, 400);
    // One workflow, with its members, as the page opens it.
    let detail = get(&format!("{gui}/api/workflows/{}", first.as_str().unwrap())).json();
    assert_eq!(detail["members"].as_array().unwrap().len(), 2);
    assert_eq!(get(&format!("{gui}/api/workflows/{}", uuid::Uuid::new_v4())).status, 404);
}

#[test]
fn with_a_cluster_key_results_are_shown_only_with_the_dashboards_key() {
    let dir = std::env::temp_dir().join(format!("fastworker-wf-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("cluster.key").display().to_string();
    let output = run_cli(&["keygen", "--out", &cluster]);
    assert!(output.status.success(), "{}", stderr(&output));
    let env = [("FASTWORKER_CLUSTER_KEY_FILE", cluster.as_str())];
    let submission = json!({"workflow": {"group": [{"task": "add", "args": [40, 2]}]}, "wait_ms": 10_000});
    // Without --gui-api-key nobody may submit or read workflows over HTTP.
    let cp = Process::control_plane_with_gui(&["example-tasks"], &[], &env);
    let gui = cp.gui.clone().unwrap();
    let refused = post(&format!("{gui}/api/v1/workflows"), &submission, &[]);
    assert_eq!((refused.status, error_of(&refused).0.as_str()), (403, "Forbidden"));
    assert!(refused.text().contains("--gui-api-key"), "{}", refused.text());
    drop(cp);
    let cp = Process::control_plane_with_gui(&["example-tasks"], &["--gui-api-key", KEY], &env);
    let gui = cp.gui.clone().unwrap();
    let bearer = format!("Bearer {KEY}");
    let accepted = post(&format!("{gui}/api/v1/workflows"), &submission, &[("Authorization", &bearer)]);
    assert_eq!((accepted.status, accepted.json()["result"].clone()), (200, json!([42])), "{}", accepted.text());
    let id = accepted.json()["workflow_id"].as_str().unwrap().to_string();
    let failing = json!({"workflow": {"task": "divide", "args": [41, 0]}, "wait_ms": 10_000});
    assert_eq!(post(&format!("{gui}/api/v1/workflows"), &failing, &[("Authorization", &bearer)]).status, 200);
    // The table shows states and progress, not results or failure messages.
    let list = get(&format!("{gui}/api/workflows"));
    assert_eq!(list.status, 200);
    let text = list.text();
    assert!(!text.contains("by zero"), "a failure shown without the key: {text}");
    let rows = list.json()["workflows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|row| row["result"].is_null()), "a result shown without the key: {text}");
    assert!(rows.iter().any(|row| row["state"] == "failed" && row["failure"]["task"] == "divide"), "{text}");
    // One workflow needs the key, as a task's detail does.
    let url = format!("{gui}/api/workflows/{id}");
    assert_eq!(get(&url).status, 401);
    let shown = request("GET", &url, &[("Authorization", &bearer)]);
    assert_eq!((shown.status, shown.json()["result"].clone()), (200, json!([42])), "{}", shown.text());
    let _ = std::fs::remove_dir_all(&dir);
}
