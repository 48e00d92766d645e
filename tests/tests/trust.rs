//! A keyed cluster refuses whoever cannot prove they hold its key, keeps
//! roles apart, refuses replays, ignores impostors on the discovery address,
//! and will not serve beyond loopback without a key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fastworker::auth::{seal, KeyRing, Role, Sender};
use fastworker::client::SubmitOptions;
use fastworker::discovery::{Announcement, Announcer};
use fastworker::protocol::{
    decode, encode, now_ms, ErrorKind, Registration, Reply, Request, Submit, TaskState, WorkerName,
};
use fastworker::{Client, ClientError, TaskId};
use fastworker_tests::{free_ports, run_cli, runtime, stderr, stdout, Process};

/// A directory with a cluster key and its derived role keys.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        let dir = std::env::temp_dir().join(format!("fastworker-keys-{}", TaskId::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Keys { dir };
        let cluster = keys.path("cluster");
        assert!(run_cli(&["keygen", "--out", &cluster]).status.success());
        for role in ["operator", "client", "worker"] {
            let output = run_cli(&["keygen", "--role", role, "--from", &cluster, "--out", &keys.path(role)]);
            assert!(output.status.success(), "{}", stderr(&output));
        }
        keys
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(format!("{name}.key")).display().to_string()
    }

    fn ring(&self, name: &str) -> Arc<KeyRing> {
        Arc::new(KeyRing::load(Path::new(&self.path(name))).unwrap())
    }

    /// A client of `cp` holding the `name` key file.
    fn client(&self, cp: &Process, name: &str) -> Client {
        let ring = self.ring(name);
        let unkeyed = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(10));
        match name {
            "worker" => unkeyed.with_key(ring.signer(Role::Worker).unwrap(), ring),
            _ => unkeyed.with_keys(ring).unwrap(),
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn keyed_control_plane(keys: &Keys, plugins: &[&str]) -> Process {
    let cluster = keys.path("cluster");
    Process::control_plane_with_env(plugins, &[], &[("FASTWORKER_CLUSTER_KEY_FILE", cluster.as_str())])
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorKind, String) {
    match result {
        Err(ClientError::Refused(error)) => (error.kind, error.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn submit(task_name: &str, args: &str) -> Submit {
    Submit {
        task_id: TaskId::new_v4(),
        task_name: task_name.into(),
        args: args.into(),
        wait: true,
        ..Default::default()
    }
}

#[test]
fn without_the_key_every_request_is_refused_and_changes_nothing() {
    let keys = Keys::new();
    let cp = keyed_control_plane(&keys, &["example-tasks"]);
    let operator = keys.client(&cp, "operator");
    let stranger = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(5));
    let runtime = runtime();
    runtime.block_on(async {
        let queued = SubmitOptions { countdown: Some(Duration::from_secs(60)), ..Default::default() };
        let task_id = operator.delay("add", [1, 2], queued).await.unwrap();
        let port = stranger.discover().await;
        assert_eq!(refused(port).0, ErrorKind::Unauthenticated);
        let management =
            stranger.clone().with_management_port(cp.address.rsplit(':').next().unwrap().parse::<u16>().unwrap() + 5);
        let registration = Registration {
            name: WorkerName { worker_id: "rogue".into(), instance: uuid::Uuid::new_v4() },
            address: format!("tcp://127.0.0.1:{}", free_ports(4)),
            concurrency: 1,
            prefetch: 0,
            tasks: vec![],
        };
        let attempts: Vec<(&str, Result<Reply, ClientError>)> = vec![
            ("Register", management.request(5, &Request::Register(registration)).await),
            ("Submit", stranger.request(2, &Request::Submit(submit("add", "[40,2]"))).await),
            ("Status", stranger.request(4, &Request::Status { task_id }).await),
            ("Cancel", stranger.request(4, &Request::Cancel { task_id }).await),
            ("Workers", stranger.request(4, &Request::Workers).await),
        ];
        for (what, reply) in attempts {
            match reply {
                Ok(Reply::Error(error)) => {
                    assert_eq!(error.kind, ErrorKind::Unauthenticated, "{what}: {}", error.message);
                    assert!(error.message.contains("--cluster-key-file"), "{what}: {}", error.message);
                }
                other => panic!("{what} without the key must be refused, got {other:?}"),
            }
        }
        // Nothing it sent was acted on.
        let report = operator.status(task_id).await.unwrap();
        assert_eq!(report.state, TaskState::Scheduled, "the task was not cancelled: {report:?}");
        // No rogue among the subworkers (the control plane's worker
        // processes joined with the cluster key).
        let workers = operator.workers().await.unwrap().subworkers;
        assert!(workers.iter().all(|w| w.worker_id.starts_with("local-")), "{workers:?}");
        assert_eq!(operator.call::<i64>("add", [2, 2]).await.unwrap(), 4);
    });
    assert!(cp.log().contains("refused an unauthenticated frame"), "{}", cp.log());
}

#[test]
fn a_captured_frame_sent_again_is_refused() {
    let keys = Keys::new();
    let cp = keyed_control_plane(&keys, &["example-tasks"]);
    let key = keys.ring("client").signer(Role::Client).unwrap();
    let frame = encode(&Request::Submit(submit("add", "[20,22]")));
    let (envelope, _) = seal(&key, &Sender::new(), &frame, None, now_ms());
    let sealed = [&envelope[..], &frame].concat();
    // An unkeyed client carries the captured bytes as they are.
    let raw = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(5));
    let runtime = runtime();
    let first = runtime.block_on(raw.exchange(2, nng::Message::from(&sealed[..]))).unwrap();
    let first = &first[fastworker::auth::ENVELOPE_BYTES..];
    assert!(
        matches!(decode::<Reply>(first, usize::MAX), Ok(Reply::Report(r)) if r.result.as_deref() == Some(&b"42"[..]))
    );
    let again = runtime.block_on(raw.exchange(2, nng::Message::from(&sealed[..]))).unwrap();
    match decode::<Reply>(&again, usize::MAX) {
        Ok(Reply::Error(error)) => {
            assert_eq!(error.kind, ErrorKind::Unauthenticated);
            assert!(error.message.contains("replay"), "{}", error.message);
        }
        other => panic!("a replayed frame must be refused, got {other:?}"),
    }
    // An altered copy is refused too.
    let mut altered = sealed.clone();
    *altered.last_mut().unwrap() ^= 0x01;
    let reply = runtime.block_on(raw.exchange(2, nng::Message::from(&altered[..]))).unwrap();
    assert!(matches!(decode::<Reply>(&reply, usize::MAX), Ok(Reply::Error(e)) if e.kind == ErrorKind::Unauthenticated));
}

#[test]
fn roles_are_kept_apart() {
    let keys = Keys::new();
    let cp = keyed_control_plane(&keys, &["example-tasks"]);
    let (client, worker, operator) =
        (keys.client(&cp, "client"), keys.client(&cp, "worker"), keys.client(&cp, "operator"));
    let runtime = runtime();
    runtime.block_on(async {
        let later = SubmitOptions { countdown: Some(Duration::from_secs(60)), ..Default::default() };
        // A client key cannot register a worker.
        let port = client.discover().await.unwrap();
        let registration = Registration {
            name: WorkerName { worker_id: "sneaky".into(), instance: uuid::Uuid::new_v4() },
            address: format!("tcp://127.0.0.1:{}", free_ports(4)),
            concurrency: 1,
            prefetch: 0,
            tasks: vec![],
        };
        let (kind, message) =
            refused(client.clone().with_management_port(port).manage(&Request::Register(registration)).await);
        assert_eq!(kind, ErrorKind::Forbidden, "{message}");
        // A worker key can neither submit nor cancel.
        let task_id = client.delay("add", [1, 2], later.clone()).await.unwrap();
        assert_eq!(refused(worker.cancel(task_id).await).0, ErrorKind::Forbidden);
        assert_eq!(refused(worker.call::<i64>("add", [1, 2]).await).0, ErrorKind::Forbidden);
        // Nor pause schedules; the operator can.
        assert_eq!(refused(client.pause_schedule("tick", true).await).0, ErrorKind::Forbidden);
        operator.pause_schedule("tick", true).await.unwrap();
        // The submitting key and the operator may cancel.
        client.cancel(task_id).await.unwrap();
        let other = client.delay("add", [3, 4], later).await.unwrap();
        operator.cancel(other).await.unwrap();
    });
}

#[test]
fn a_keyed_cluster_runs_tasks_through_a_subworker() {
    let keys = Keys::new();
    let cp = keyed_control_plane(&keys, &[]);
    let worker_key = keys.path("worker");
    let _sw = Process::subworker(&cp, "sw1", &["example-tasks"], &["--cluster-key-file", &worker_key]);
    let client = keys.client(&cp, "client");
    let report = runtime().block_on(client.submit("add", [20, 22], SubmitOptions::default())).unwrap();
    assert_eq!((report.result.as_deref(), report.worker.as_str()), (Some(&b"42"[..]), "sw1"));
    // A subworker without the key cannot join.
    let mut rogue = Process::spawn_subworker(&cp, "rogue", &["example-tasks"], &[]);
    assert_eq!(rogue.wait_exit(Duration::from_secs(20)), Some(2), "{}", rogue.log());
    assert!(rogue.log().contains("not authenticated"), "{}", rogue.log());
}

#[test]
fn a_rogue_announcer_redirects_nobody() {
    let keys = Keys::new();
    let discovery = format!("tcp://127.0.0.1:{}", free_ports(1));
    let fake = Announcement {
        worker_id: "impostor".into(),
        base_address: format!("tcp://127.0.0.1:{}", free_ports(6)),
        management_port: 1,
        sent_ms: 0,
    };
    let _rogue = Announcer::start(&discovery, fake, None).unwrap();
    let output = run_cli(&[
        "workers",
        "--discovery-address",
        &discovery,
        "--timeout",
        "2",
        "--cluster-key-file",
        &keys.path("client"),
    ]);
    assert_eq!(output.status.code(), Some(3), "{}{}", stdout(&output), stderr(&output));
    assert!(stderr(&output).contains("not sealed with this cluster's key"), "{}", stderr(&output));
}

#[test]
fn rotation_accepts_both_keys_and_signs_with_the_new_one() {
    let (old, new) = (Keys::new(), Keys::new());
    let both = old.dir.join("both.key");
    let text =
        std::fs::read_to_string(new.path("cluster")).unwrap() + &std::fs::read_to_string(old.path("cluster")).unwrap();
    std::fs::write(&both, text).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&both).unwrap().permissions(), 0o600);
    let mut permissions = std::fs::metadata(&both).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
    std::fs::set_permissions(&both, permissions).unwrap();
    let both = both.display().to_string();
    let cp =
        Process::control_plane_with_env(&["example-tasks"], &[], &[("FASTWORKER_CLUSTER_KEY_FILE", both.as_str())]);
    let runtime = runtime();
    for keys in [&old, &new] {
        assert_eq!(runtime.block_on(keys.client(&cp, "client").call::<i64>("add", [1, 1])).unwrap(), 2);
    }
}

#[test]
fn protected_mode_refuses_a_wide_listen_without_a_key() {
    let port = free_ports(6);
    let wide = format!("tcp://0.0.0.0:{port}");
    let output = run_cli(&["control-plane", "--base-address", &wide, "--no-gui", "--no-discovery"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--cluster-key-file") && stderr(&output).contains("--insecure"),
        "{}",
        stderr(&output)
    );
    let dashboard = [
        "control-plane",
        "--no-discovery",
        "--gui-host",
        "0.0.0.0",
        "--base-address",
        &format!("tcp://127.0.0.1:{port}"),
    ];
    let output = run_cli(&dashboard);
    assert_eq!(output.status.code(), Some(2), "a dashboard beyond loopback needs a key too: {}", stderr(&output));
    assert!(stderr(&output).contains("the dashboard"), "{}", stderr(&output));
    let mut insecure = Process::spawn(
        &["control-plane", "--base-address", &wide, "--no-gui", "--no-discovery", "--insecure"].map(String::from),
        &[],
        format!("tcp://127.0.0.1:{port}"),
    );
    assert!(insecure.wait_ready(Duration::from_secs(20)).is_ok(), "--insecure serves: {}", insecure.log());
}

#[test]
fn a_task_id_reused_for_another_task_is_refused() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    let runtime = runtime();
    let task_id = TaskId::new_v4();
    let options = SubmitOptions { task_id: Some(task_id), ..Default::default() };
    runtime.block_on(async {
        assert_eq!(client.call_with::<i64>("add", [2, 2], options.clone()).await.unwrap(), 4);
        // The same task again is answered from its first run.
        assert_eq!(client.call_with::<i64>("add", [2, 2], options.clone()).await.unwrap(), 4);
        let (kind, message) = refused(client.call_with::<i64>("add", [1000, 337], options.clone()).await);
        assert_eq!(kind, ErrorKind::IdConflict, "{message}");
        let (kind, _) = refused(client.call_with::<i64>("fib", [3], options.clone()).await);
        assert_eq!(kind, ErrorKind::IdConflict);
        // While it is live, too.
        let live = TaskId::new_v4();
        let later =
            SubmitOptions { task_id: Some(live), countdown: Some(Duration::from_secs(60)), ..Default::default() };
        client.delay("add", [1, 1], later.clone()).await.unwrap();
        assert_eq!(refused(client.delay("add", [9, 9], later).await).0, ErrorKind::IdConflict);
    });
}

#[test]
fn with_a_cluster_key_the_dashboard_shows_arguments_only_with_its_key() {
    use fastworker_tests::http::request;
    let keys = Keys::new();
    let cluster = keys.path("cluster");
    let env = [("FASTWORKER_CLUSTER_KEY_FILE", cluster.as_str())];
    for api_key in [None, Some("s3cret-dashboard-key")] {
        let extra: Vec<&str> = api_key.map_or(vec![], |key| vec!["--gui-api-key", key]);
        let cp = Process::control_plane_with_gui(&["example-tasks"], &extra, &env);
        let task_id = TaskId::new_v4();
        let options = SubmitOptions { task_id: Some(task_id), ..Default::default() };
        let sum: i64 = runtime().block_on(cp.client().call_with("add", [40, 2], options)).unwrap();
        assert_eq!(sum, 42);
        let url = format!("{}/api/tasks/{task_id}", cp.gui.as_ref().unwrap());
        let anonymous = request("GET", &url, &[]);
        let body = anonymous.text();
        assert!(!body.contains("42") && !body.contains("40"), "arguments or result shown without a key: {body}");
        match api_key {
            None => assert_eq!(anonymous.status, 403, "{body}"),
            Some(key) => {
                assert_eq!(anonymous.status, 401, "{body}");
                let wrong = request("GET", &url, &[("Authorization", "Bearer not-the-key")]);
                assert_eq!(wrong.status, 401);
                let bearer = format!("Bearer {key}");
                let shown = request("GET", &url, &[("Authorization", bearer.as_str())]);
                assert_eq!(shown.status, 200, "{}", shown.text());
                assert_eq!(shown.json()["result"], 42);
                assert_eq!(shown.json()["args"], serde_json::json!([40, 2]));
            }
        }
    }
}

#[test]
fn with_a_cluster_key_the_http_api_answers_only_with_the_dashboards_key() {
    use fastworker_tests::http::request_with_body;
    let keys = Keys::new();
    let cluster = keys.path("cluster");
    let env = [("FASTWORKER_CLUSTER_KEY_FILE", cluster.as_str())];
    let body = br#"{"task": "add", "args": [40, 2], "wait_ms": 10000}"#;
    let json = ("Content-Type", "application/json");
    // Without --gui-api-key nobody may submit or read over HTTP.
    let cp = Process::control_plane_with_gui(&["example-tasks"], &[], &env);
    let url = format!("{}/api/v1/tasks", cp.gui.as_ref().unwrap());
    let refused = request_with_body("POST", &url, &[json], body);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["kind"], "Forbidden");
    assert!(refused.text().contains("--gui-api-key"), "{}", refused.text());
    drop(cp);
    // With it, the key is needed and enough.
    let cp = Process::control_plane_with_gui(&["example-tasks"], &["--gui-api-key", "s3cret"], &env);
    let url = format!("{}/api/v1/tasks", cp.gui.as_ref().unwrap());
    assert_eq!(request_with_body("POST", &url, &[json], body).status, 401);
    let accepted = request_with_body("POST", &url, &[json, ("Authorization", "Bearer s3cret")], body);
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.json()["result"], 42);
}
