//! The HTTP API for tasks (docs/http-api.md) against a real control plane:
//! submit and wait, submit and poll, batches, cancel, refusals, limits,
//! authentication and the OpenAPI document.

use std::time::{Duration, Instant};

use fastworker_tests::http::{control_plane_with_api as control_plane, post_json as post};
use fastworker_tests::http::{get, request, request_with_body, Response};
use fastworker_tests::{run_cli, runtime, Process};
use serde_json::{json, Value};

const KEY: &str = "http-api-test-key";

/// The error's kind, asserting the body has the API's error shape.
fn error_kind(response: &Response) -> String {
    let body = response.json();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    body["error"]["kind"].as_str().unwrap_or_else(|| panic!("no error kind in {body}")).to_string()
}

#[test]
fn submit_and_wait_returns_the_result() {
    let (_cp, gui) = control_plane(&[]);
    let response =
        post(&format!("{gui}/api/v1/tasks"), &json!({"task": "add", "args": [20, 22], "wait_ms": 10_000}), &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["state"], "succeeded");
    assert_eq!(body["result"], 42);
    assert_eq!(body["finished"], true);
    // By name, and with a priority, a timeout and an id of the caller's.
    let id = uuid::Uuid::new_v4().to_string();
    let submission = json!({"task": "midpoint", "args": {"a": {"x": 0.0, "y": 0.0}, "b": {"x": 2.0, "y": 4.0}},
        "priority": "critical", "timeout_ms": 5000, "task_id": id, "wait_ms": 10_000});
    let body = post(&format!("{gui}/api/v1/tasks"), &submission, &[]).json();
    assert_eq!(body["task_id"], id.as_str());
    assert_eq!(body["priority"], "critical");
    assert_eq!(body["result"], json!({"x": 1.0, "y": 2.0}));
    // A task that fails: the request succeeded, the task did not.
    let body =
        post(&format!("{gui}/api/v1/tasks"), &json!({"task": "divide", "args": [1, 0], "wait_ms": 10_000}), &[]).json();
    assert_eq!(body["state"], "failed");
    assert_eq!(body["failure"]["kind"], "error");
    assert!(body["failure"]["message"].as_str().unwrap().contains("cannot divide 1 by zero"), "{body}");
}

#[test]
fn submit_then_poll_and_wait_for_the_result() {
    let (_cp, gui) = control_plane(&[]);
    let response = post(&format!("{gui}/api/v1/tasks"), &json!({"task": "sleep_ms", "args": [600]}), &[]);
    assert_eq!(response.status, 202, "{}", response.text());
    let id = response.json()["task_id"].as_str().unwrap().to_string();
    let polled = get(&format!("{gui}/api/v1/tasks/{id}"));
    assert_eq!(polled.status, 202, "{}", polled.text());
    assert!(["queued", "running"].contains(&polled.json()["state"].as_str().unwrap()), "{}", polled.text());
    // A short wait ends before the task does: 202 with its state.
    let waited = get(&format!("{gui}/api/v1/tasks/{id}/wait?timeout_ms=50"));
    assert_eq!(waited.status, 202, "{}", waited.text());
    let started = Instant::now();
    let waited = get(&format!("{gui}/api/v1/tasks/{id}/wait?timeout_ms=10000"));
    assert_eq!(waited.status, 200, "{}", waited.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(waited.json()["result"].as_u64().unwrap() >= 600, "{}", waited.text());
    let polled = get(&format!("{gui}/api/v1/tasks/{id}"));
    assert_eq!(polled.status, 200);
    assert_eq!(polled.json()["state"], "succeeded");
    // Waits are bounded.
    let refused = get(&format!("{gui}/api/v1/tasks/{id}/wait?timeout_ms=600000"));
    assert_eq!((refused.status, error_kind(&refused).as_str()), (400, "BadRequest"));
    let refused =
        post(&format!("{gui}/api/v1/tasks"), &json!({"task": "add", "args": [1, 2], "wait_ms": 600_000}), &[]);
    assert_eq!(refused.status, 400, "{}", refused.text());
}

#[test]
fn a_batch_answers_each_task_in_order() {
    let (_cp, gui) = control_plane(&[]);
    let batch = json!({"tasks": [
        {"task": "add", "args": [1, 1]},
        {"task": "add", "args": ["one", 1]},
        {"task": "divide", "args": [9, 3], "priority": "low"},
        {"task": "no_such_task", "args": []},
    ], "wait_ms": 10_000});
    let response = post(&format!("{gui}/api/v1/tasks/batch"), &batch, &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    let tasks = response.json()["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 4);
    assert_eq!(tasks[0]["result"], 2);
    assert_eq!(tasks[1]["error"]["kind"], "BadArguments");
    assert_eq!(tasks[1]["error"]["status"], 400);
    assert_eq!(tasks[2]["result"], 3);
    assert_eq!(tasks[2]["priority"], "low");
    assert_eq!(tasks[3]["error"]["kind"], "UnknownTask");
    assert_eq!(tasks[3]["error"]["status"], 404);
    // Without a wait, each accepted task comes back with its id at once.
    let response =
        post(&format!("{gui}/api/v1/tasks/batch"), &json!({"tasks": [{"task": "sleep_ms", "args": [300]}]}), &[]);
    let id = response.json()["tasks"][0]["task_id"].as_str().unwrap().to_string();
    let waited = get(&format!("{gui}/api/v1/tasks/{id}/wait?timeout_ms=10000"));
    assert_eq!(waited.json()["state"], "succeeded", "{}", waited.text());
}

#[test]
fn a_scheduled_task_is_cancelled() {
    let (_cp, gui) = control_plane(&[]);
    let response =
        post(&format!("{gui}/api/v1/tasks"), &json!({"task": "add", "args": [1, 2], "countdown_ms": 60_000}), &[]);
    assert_eq!(response.status, 202, "{}", response.text());
    let body = response.json();
    assert_eq!(body["state"], "scheduled");
    let id = body["task_id"].as_str().unwrap();
    let cancelled = request("POST", &format!("{gui}/api/v1/tasks/{id}/cancel"), &[]);
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["state"], "cancelled");
    let waited = get(&format!("{gui}/api/v1/tasks/{id}/wait?timeout_ms=1000"));
    assert_eq!(waited.json()["state"], "cancelled");
    let again = request("POST", &format!("{gui}/api/v1/tasks/{id}/cancel"), &[]);
    assert_eq!((again.status, error_kind(&again).as_str()), (409, "AlreadyFinished"));
    // An ETA in the past runs at once.
    let body = post(
        &format!("{gui}/api/v1/tasks"),
        &json!({"task": "add", "args": [1, 2], "eta": "2020-01-01T00:00:00Z", "wait_ms": 10_000}),
        &[],
    )
    .json();
    assert_eq!(body["result"], 3, "{body}");
}

#[test]
fn arguments_that_do_not_fit_the_schema_are_refused_before_queueing() {
    let (cp, gui) = control_plane(&[]);
    for (args, fragment) in [
        (json!({"x": "two", "y": 3}), "x"),
        (json!([1]), "takes 2 argument(s)"),
        (json!({"x": 1, "y": 2, "z": 3}), "z"),
        (json!({"x": 1}), "y"),
        (json!(7), "array"),
    ] {
        let response = post(&format!("{gui}/api/v1/tasks"), &json!({"task": "add", "args": args}), &[]);
        assert_eq!(response.status, 400, "{args}: {}", response.text());
        assert_eq!(error_kind(&response), "BadArguments");
        let message = response.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("task 'add'") && message.contains(fragment), "{args}: {message}");
    }
    // A struct parameter is checked to its fields.
    let response = post(
        &format!("{gui}/api/v1/tasks"),
        &json!({"task": "midpoint", "args": [{"x": 1.0}, {"x": 1.0, "y": 2.0}]}),
        &[],
    );
    assert_eq!((response.status, error_kind(&response).as_str()), (400, "BadArguments"), "{}", response.text());
    // None of them was queued.
    let submitted: u64 =
        fastworker_tests::http::get(&format!("{gui}/api/status")).json()["totals"]["submitted"].as_u64().unwrap();
    assert_eq!(submitted, 0, "{}", cp.log());
    // A body that is not a submission.
    let response = request_with_body(
        "POST",
        &format!("{gui}/api/v1/tasks"),
        &[("Content-Type", "application/json")],
        b"{\"task\": 5",
    );
    assert_eq!((response.status, error_kind(&response).as_str()), (400, "BadRequest"));
    let response =
        post(&format!("{gui}/api/v1/tasks"), &json!({"task": "add", "args": [1, 2], "priorty": "high"}), &[]);
    assert_eq!(response.status, 400);
    assert!(response.text().contains("priorty"), "{}", response.text());
    let response = request_with_body("POST", &format!("{gui}/api/v1/tasks"), &[("Content-Type", "text/plain")], b"{}");
    assert_eq!((response.status, error_kind(&response).as_str()), (415, "UnsupportedMediaType"));
}

#[test]
fn unknown_tasks_and_ids_are_404() {
    let (_cp, gui) = control_plane(&[]);
    let response = post(&format!("{gui}/api/v1/tasks"), &json!({"task": "no_such_task", "args": []}), &[]);
    assert_eq!((response.status, error_kind(&response).as_str()), (404, "UnknownTask"), "{}", response.text());
    assert!(response.text().contains("add"), "the message lists the tasks provided: {}", response.text());
    let id = uuid::Uuid::new_v4();
    let response = get(&format!("{gui}/api/v1/tasks/{id}"));
    assert_eq!((response.status, error_kind(&response).as_str()), (404, "UnknownTaskId"));
    let response = get(&format!("{gui}/api/v1/tasks/{id}/wait?timeout_ms=100"));
    assert_eq!((response.status, error_kind(&response).as_str()), (404, "UnknownTaskId"));
    let response = get(&format!("{gui}/api/v1/tasks/not-a-uuid"));
    assert_eq!((response.status, error_kind(&response).as_str()), (400, "BadRequest"));
}

#[test]
fn registered_tasks_carry_their_schemas() {
    let (_cp, gui) = control_plane(&[]);
    let body = get(&format!("{gui}/api/v1/registered-tasks")).json();
    let add = body["tasks"].as_array().unwrap().iter().find(|t| t["task"] == "add").unwrap().clone();
    assert_eq!(add["args_schema"]["required"], json!(["x", "y"]));
    assert_eq!(add["result_schema"]["type"], "integer");
    assert_eq!(add["doc"], "Adds two integers.");
}

#[test]
fn a_task_only_a_subworker_provides_shows_and_checks_its_schema() {
    // A control plane with no plugin of its own routes `add` to sw1.
    let cp = Process::control_plane_with_gui(&[], &["--restart-window", "0", "--concurrency", "0"], &[]);
    let gui = cp.gui.clone().expect("a dashboard");
    let _sw = Process::subworker(&cp, "sw1", &["example-tasks"], &[]);
    let tasks = get(&format!("{gui}/api/v1/registered-tasks")).json();
    let add = tasks["tasks"].as_array().unwrap().iter().find(|t| t["task"] == "add").unwrap().clone();
    assert_eq!(add["args_schema"]["required"], json!(["x", "y"]), "{add}");
    assert_eq!(add["result_schema"]["type"], "integer", "{add}");
    assert_eq!(
        (add["doc"].as_str(), add["signature"].as_str().map(|s| s.contains("i64"))),
        (Some("Adds two integers."), Some(true))
    );
    // Arguments that do not fit are refused here, before anything is sent.
    let response = post(&format!("{gui}/api/v1/tasks"), &json!({"task": "add", "args": {"x": "two", "y": 3}}), &[]);
    assert_eq!((response.status, error_kind(&response).as_str()), (400, "BadArguments"), "{}", response.text());
    assert!(response.text().contains("x"), "{}", response.text());
    let response = post(&format!("{gui}/api/v1/tasks"), &json!({"task": "add", "args": [2, 3], "wait_ms": 10000}), &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!((body["result"].clone(), body["worker"].clone()), (json!(5), json!("sw1")), "{body}");
    // The Rust client's listing carries them too.
    let listed = runtime().block_on(cp.client().tasks()).unwrap();
    let add = listed.iter().find(|t| t.name == "add").unwrap();
    assert!(add.args_schema.as_deref().is_some_and(|s| s.contains("\"x\"")), "{add:?}");
    assert_eq!(add.providers, vec!["sw1".to_string()]);
}

#[test]
fn the_openapi_document_matches_the_routes() {
    let (_cp, gui) = control_plane(&[]);
    let response = get(&format!("{gui}/api/openapi.json"));
    assert_eq!(response.status, 200);
    let document = response.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = document["paths"].as_object().unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let url = format!("{gui}{}", path.replace("{id}", &id));
            let response = match method.as_str() {
                "get" => get(&url),
                "post" => post(&url, &json!({}), &[]),
                other => panic!("{other} {path}: the API uses GET and POST only"),
            };
            // Served: not the dashboard's fallbacks for unknown paths or methods.
            let body = response.text();
            assert!(
                !body.contains("no such endpoint") && !body.contains("does not take"),
                "{method} {path} is described but not served: {} {body}",
                response.status
            );
        }
    }
    assert_eq!(operations, 13, "{document}");
    // And what is not described is not served (the host's unit test holds
    // the router's list and the document equal).
    for (method, path) in
        [("GET", "/api/v1/tasks"), ("DELETE", format!("/api/v1/tasks/{id}").as_str()), ("GET", "/api/v1/nothing")]
    {
        let response = request(method, &format!("{gui}{path}"), &[]);
        assert!([404, 405].contains(&response.status), "{method} {path}: {}", response.status);
    }
}

#[test]
fn a_keyed_dashboard_needs_the_key() {
    let (_cp, gui) = control_plane(&["--gui-api-key", KEY]);
    let submission = json!({"task": "add", "args": [1, 2], "wait_ms": 10_000});
    let refused = post(&format!("{gui}/api/v1/tasks"), &submission, &[]);
    assert_eq!((refused.status, error_kind(&refused).as_str()), (401, "Unauthorized"));
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let wrong = post(&format!("{gui}/api/v1/tasks"), &submission, &[("Authorization", "Bearer wrong")]);
    assert_eq!(wrong.status, 401);
    let bearer = format!("Bearer {KEY}");
    let accepted = post(&format!("{gui}/api/v1/tasks"), &submission, &[("Authorization", &bearer)]);
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let id = accepted.json()["task_id"].as_str().unwrap().to_string();
    assert_eq!(get(&format!("{gui}/api/v1/tasks/{id}")).status, 401);
    let read = request("GET", &format!("{gui}/api/v1/tasks/{id}"), &[("Authorization", &bearer)]);
    assert_eq!(read.json()["result"], 3);
    assert_eq!(request("POST", &format!("{gui}/api/v1/tasks/{id}/cancel"), &[]).status, 401);
    // Another site's page may not submit, key or not.
    let foreign = post(
        &format!("{gui}/api/v1/tasks"),
        &submission,
        &[("Authorization", &bearer), ("Origin", "http://evil.example")],
    );
    assert_eq!((foreign.status, error_kind(&foreign).as_str()), (403, "Forbidden"));
    // What tasks exist is no secret, as on the rest of the dashboard.
    assert_eq!(get(&format!("{gui}/api/v1/registered-tasks")).status, 200);
}

#[test]
fn oversized_bodies_and_batches_are_refused() {
    let (_cp, gui) = control_plane(&[]);
    let big = json!({"task": "hash_bytes", "args": ["x".repeat(2 << 20)]});
    let response = post(&format!("{gui}/api/v1/tasks"), &big, &[]);
    assert_eq!((response.status, error_kind(&response).as_str()), (413, "PayloadTooLarge"), "{}", response.text());
    let tasks: Vec<Value> = (0..1001).map(|i| json!({"task": "add", "args": [i, 1]})).collect();
    let response = post(&format!("{gui}/api/v1/tasks/batch"), &json!({"tasks": tasks}), &[]);
    assert_eq!((response.status, error_kind(&response).as_str()), (400, "BadRequest"), "{}", response.text());
    // The server still serves.
    let response =
        post(&format!("{gui}/api/v1/tasks"), &json!({"task": "add", "args": [1, 2], "wait_ms": 10_000}), &[]);
    assert_eq!(response.json()["result"], 3);
}

#[test]
fn unknown_paths_wrong_methods_and_big_bodies_answer_in_the_api_error_shape() {
    let (_cp, gui) = control_plane(&[]);
    let id = uuid::Uuid::new_v4().to_string();
    // 404: a path the API does not have, in the API's shape, naming its docs.
    for path in ["/api/v1/nothing", "/api/v1", &format!("/api/v1/tasks/{id}/nothing")] {
        let response = request("GET", &format!("{gui}{path}"), &[]);
        assert_eq!((response.status, error_kind(&response).as_str()), (404, "NotFound"), "GET {path}");
        assert!(response.json()["error"]["message"].as_str().unwrap().contains("docs/http-api.md"));
    }
    // 405: a path it has, with a method it does not take.
    for (method, path) in [("GET", "/api/v1/tasks".to_string()), ("DELETE", format!("/api/v1/tasks/{id}"))] {
        let response = request(method, &format!("{gui}{path}"), &[]);
        assert_eq!((response.status, error_kind(&response).as_str()), (405, "MethodNotAllowed"), "{method} {path}");
        assert!(response.json()["error"]["message"].as_str().unwrap().contains("does not take"));
    }
    // 413: a body over the bound, on every route that takes one.
    let big = "x".repeat(2 << 20);
    for path in ["/api/v1/tasks", "/api/v1/tasks/batch", "/api/v1/workflows"] {
        let response = post(&format!("{gui}{path}"), &json!({"task": "hash_bytes", "args": [big]}), &[]);
        assert_eq!((response.status, error_kind(&response).as_str()), (413, "PayloadTooLarge"), "POST {path}");
    }
    // The page's own API keeps its documented flat shape (docs/dashboard.md).
    let page = request("GET", &format!("{gui}/api/nothing"), &[]).json();
    assert_eq!((page["error"].as_str(), page["message"].is_string()), (Some("not_found"), true), "{page}");
}

#[test]
fn the_cli_prints_a_task_in_the_apis_shape() {
    let (cp, gui) = control_plane(&[]);
    for (submission, state) in [
        (json!({"task": "add", "args": [20, 22], "wait_ms": 10_000}), "succeeded"),
        (json!({"task": "divide", "args": [1, 0], "wait_ms": 10_000}), "failed"),
    ] {
        let over_http = post(&format!("{gui}/api/v1/tasks"), &submission, &[]).json();
        assert_eq!(over_http["state"], state, "{over_http}");
        let id = over_http["task_id"].as_str().unwrap();
        let printed = run_cli(&["status", "--address", &cp.address, "--task-id", id]);
        let printed: Value = serde_json::from_slice(&printed.stdout).expect("fastworker status prints JSON");
        // One shape, one value: the same keys with the same contents.
        assert_eq!(printed, over_http);
    }
}
