//! `GET /healthz` and `GET /readyz` (docs/deploy.md): alive whenever the
//! dashboard answers; ready only once the ports serve, the store is open,
//! the restart window has passed and every worker process has registered,
//! else 503 naming what is not. Both answer without a key and under any
//! `Host` name, and open nothing else.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fastworker::TaskId;
use fastworker_tests::http::request;
use fastworker_tests::{free_base_port, free_ports, run_cli, stderr, wait_until, Process};
use serde_json::Value;

/// A directory of its own under the temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("fastworker-health-{what}-{}", TaskId::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET /readyz`: its status and body.
fn readyz(gui: &str) -> (u16, Value) {
    let response = request("GET", &format!("{gui}/readyz"), &[]);
    (response.status, response.json())
}

/// The check named `name` of a `/readyz` body.
fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    let checks = body["checks"].as_array().unwrap_or_else(|| panic!("no checks: {body}"));
    checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}: {body}"))
}

/// A durable control plane with two worker processes and a dashboard,
/// started without waiting for anything but its dashboard's port.
fn durable_control_plane(state_dir: &str, base: u16, gui_port: u16, restart_window: &str) -> (Process, String) {
    let address = format!("tcp://127.0.0.1:{base}");
    let args: Vec<String> = [
        "control-plane",
        "--base-address",
        &address,
        "--gui-port",
        &gui_port.to_string(),
        "--no-discovery",
        "--state-dir",
        state_dir,
        "--restart-window",
        restart_window,
        "--worker-processes",
        "2",
        "--task-modules",
        &fastworker_tests::plugin("example-tasks").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut process = Process::spawn(&args, &[], address);
    process.wait_for_port(gui_port, Duration::from_secs(30)).unwrap();
    (process, format!("http://127.0.0.1:{gui_port}"))
}

/// The pid of the worker process `worker_id` among `parent`'s children.
fn child_pid(parent: u32, worker_id: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{parent}/task")).ok()?;
    let children: Vec<u32> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|pid| pid.parse().ok()).collect::<Vec<u32>>())
        .collect();
    children.into_iter().find(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.split(|&b| b == 0).any(|arg| arg == worker_id.as_bytes())
    })
}

#[test]
fn readyz_waits_for_the_restart_window_and_the_worker_processes_and_healthz_does_not() {
    let state_dir = TempDir::new("state");
    let base = free_base_port();
    let gui_port = loop {
        let port = free_ports(1);
        if !(base..base + 6).contains(&port) {
            break port;
        }
    };
    // A restart window far longer than the test: never ready, whatever else holds.
    let (mut cp, gui) = durable_control_plane(&state_dir.path(), base, gui_port, "600");
    let alive = request("GET", &format!("{gui}/healthz"), &[]);
    assert_eq!((alive.status, alive.json()), (200, serde_json::json!({"status": "alive"})));
    let mut last = Value::Null;
    let registered = wait_until(Duration::from_secs(60), || {
        let (status, body) = readyz(&gui);
        assert_eq!(status, 503, "ready within the restart window: {body}");
        last = body;
        check(&last, "worker_processes")["ready"] == true
    });
    assert!(registered, "worker processes never registered: {last}\n{}", cp.log());
    assert_eq!(last["ready"], false, "{last}");
    assert_eq!(last["not_ready"], serde_json::json!(["restart_window"]), "{last}");
    assert_eq!(check(&last, "ports")["ready"], true, "{last}");
    assert_eq!(check(&last, "store")["ready"], true, "{last}");
    assert!(check(&last, "store")["detail"].as_str().unwrap().contains("--state-dir"), "{last}");
    assert!(check(&last, "restart_window")["detail"].as_str().unwrap().contains("--restart-window"), "{last}");
    assert!(!last.to_string().contains(&state_dir.path()), "the body shows a path: {last}");

    // A worker process killed is pending until its supervisor has started it
    // again and it has registered.
    let pid = child_pid(cp.pid(), "local-1").unwrap_or_else(|| panic!("no worker process local-1:\n{}", cp.log()));
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let pending = wait_until(Duration::from_secs(30), || {
        last = readyz(&gui).1;
        check(&last, "worker_processes")["ready"] == false
    });
    assert!(pending, "a killed worker process was never reported: {last}");
    let detail = check(&last, "worker_processes")["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("local-1") && !detail.contains("local-2"), "{detail}");
    let back = wait_until(Duration::from_secs(60), || {
        last = readyz(&gui).1;
        check(&last, "worker_processes")["ready"] == true
    });
    assert!(back, "local-1 never registered again: {last}\n{}", cp.log());
    assert_eq!(request("GET", &format!("{gui}/healthz"), &[]).status, 200);

    // A durable restart on the same store with a short window: not ready
    // while the window is open, ready once it has passed and the worker
    // processes are back.
    cp.signal("TERM");
    assert_eq!(cp.wait_exit(Duration::from_secs(60)), Some(0), "{}", cp.log());
    drop(cp);
    let window = Duration::from_secs(4);
    let restarted = Instant::now();
    let (cp, gui) = durable_control_plane(&state_dir.path(), base, gui_port, "4");
    let mut answers: Vec<(Duration, u16, Value)> = Vec::new();
    let ready = wait_until(Duration::from_secs(60), || {
        let (status, body) = readyz(&gui);
        answers.push((restarted.elapsed(), status, body));
        status == 200
    });
    assert!(ready, "not ready after 60 s: {:?}\n{}", answers.last(), cp.log());
    let (at, _, body) = answers.last().unwrap();
    assert!(*at >= window, "ready {at:?} after the restart, within its {window:?} restart window: {body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["not_ready"], serde_json::json!([]), "{body}");
    for name in ["ports", "store", "restart_window", "worker_processes"] {
        assert_eq!(check(body, name)["ready"], true, "{name}: {body}");
    }
    // Every answer within the window (measured from before the process
    // started, so longer than its own) named the window as not passed.
    for (at, status, body) in answers.iter().filter(|(at, _, _)| *at < window) {
        assert_eq!(*status, 503, "at {at:?}: {body}");
        assert!(body["not_ready"].as_array().unwrap().contains(&"restart_window".into()), "at {at:?}: {body}");
    }
}

#[test]
fn the_health_checks_need_no_key_nor_a_served_name_and_open_nothing_else() {
    let keys = TempDir::new("keys");
    let key_file = format!("{}/cluster.key", keys.path());
    let output = run_cli(&["keygen", "--out", &key_file]);
    assert!(output.status.success(), "{}", stderr(&output));
    let env = [("FASTWORKER_CLUSTER_KEY_FILE", key_file.as_str())];
    let flags = ["--gui-api-key", "0perator-credential", "--restart-window", "0"];
    let cp = Process::control_plane_with_gui(&["example-tasks"], &flags, &env);
    let gui = cp.gui.clone().unwrap();
    // A prober dials an address the dashboard does not list by name.
    for host in [None, Some("10.9.8.7:8080")] {
        let headers: Vec<(&str, &str)> = host.map(|h| vec![("Host", h)]).unwrap_or_default();
        let alive = request("GET", &format!("{gui}/healthz"), &headers);
        assert_eq!(alive.status, 200, "{host:?}: {}", alive.text());
        let ready = request("GET", &format!("{gui}/readyz"), &headers);
        assert_eq!(ready.status, 200, "{host:?}: {}", ready.text());
        assert_eq!(ready.header("cache-control"), Some("no-store"));
        let body = ready.json();
        assert_eq!(body["ready"], true, "{body}");
        assert!(!body.to_string().contains(&keys.path()), "the body shows a path: {body}");
    }
    // The name check still holds for everything else, and the health paths
    // take no other method without the operator's credential.
    let status = request("GET", &format!("{gui}/api/status"), &[("Host", "10.9.8.7:8080")]);
    assert_eq!(status.status, 421, "{}", status.text());
    for path in ["/healthz", "/readyz"] {
        let posted = request("POST", &format!("{gui}{path}"), &[]);
        assert_eq!(posted.status, 401, "POST {path}: {}", posted.text());
        let authorized = [("Authorization", "Bearer 0perator-credential")];
        let posted = request("POST", &format!("{gui}{path}"), &authorized);
        assert_eq!(posted.status, 405, "POST {path}: {}", posted.text());
    }
}
