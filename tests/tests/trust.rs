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
use fastworker_tests::{free_ports, run_cli, runtime, stderr, stdout, wait_until, Process};

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
        for role in ["operator", "client"] {
            let output = run_cli(&["keygen", "--role", role, "--from", &cluster, "--out", &keys.path(role)]);
            assert!(output.status.success(), "{}", stderr(&output));
        }
        // A worker key is made for one subworker: `worker` for sw1, `worker-sw2` for sw2.
        for (name, worker_id) in [("worker", "sw1"), ("worker-sw2", "sw2")] {
            let out = keys.path(name);
            let output =
                run_cli(&["keygen", "--role", "worker", "--worker-id", worker_id, "--from", &cluster, "--out", &out]);
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
            "worker" | "worker-sw2" => unkeyed.with_key(ring.signer(Role::Worker).unwrap(), ring),
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
    // A cancel reaches it as a note sealed with its control key as it
    // leaves: a running sleeper stops long before its 20 s.
    let rt = runtime();
    let sleeper = rt.block_on(client.delay("sleep_ms", (20_000u64,), SubmitOptions::default())).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        rt.block_on(client.status(sleeper)).is_ok_and(|r| r.state == TaskState::Running && r.started_ms.is_some())
    }));
    let asked = std::time::Instant::now();
    rt.block_on(client.cancel(sleeper)).unwrap();
    let end = rt.block_on(client.wait(sleeper, Duration::from_secs(30))).unwrap();
    assert!(end.state.is_final(), "{end:?}");
    assert!(asked.elapsed() < Duration::from_secs(10), "stopped by the cancel: {end:?} after {:?}", asked.elapsed());
    // A subworker without the key cannot join.
    let mut rogue = Process::spawn_subworker(&cp, "rogue", &["example-tasks"], &[]);
    assert_eq!(rogue.wait_exit(Duration::from_secs(20)), Some(2), "{}", rogue.log());
    assert!(rogue.log().contains("not authenticated"), "{}", rogue.log());
}

/// Finding 2 of issue 23: a worker key spoke for the control plane to
/// every other subworker (it took their outcomes, ran and cancelled their
/// tasks) and read the cluster's workers. Now the control plane seals each
/// link with that subworker's own control key, which no other worker key
/// holds or can derive.
#[test]
fn a_worker_key_cannot_speak_for_the_control_plane_to_another_subworker() {
    use fastworker::protocol::Dispatch;
    use fastworker_tests::attack::Bystander;
    let keys = Keys::new();
    let cp = keyed_control_plane(&keys, &[]);
    let sw1 = Process::subworker(&cp, "sw1", &["example-tasks"], &["--cluster-key-file", &keys.path("worker")]);
    let sw2 = Process::subworker(&cp, "sw2", &["example-tasks"], &["--cluster-key-file", &keys.path("worker-sw2")]);
    // sw1's key file, aimed at sw2's CRITICAL port (where its links arrive).
    let ring = keys.ring("worker");
    let at_sw2 = Client::new(&sw2.address)
        .unwrap()
        .with_key(ring.signer(Role::Worker).unwrap(), ring)
        .with_timeout(Duration::from_secs(5));
    let client = keys.client(&cp, "client");
    let bystander = Bystander::with_client(keys.client(&cp, "client").with_timeout(Duration::from_secs(5)));
    let runtime = runtime();
    runtime.block_on(async {
        // Victims: runs of 400 ms on both subworkers, their outcomes waiting there.
        let mut victims = Vec::new();
        for _ in 0..8 {
            victims.push(client.delay("sleep_ms", [400], SubmitOptions::default()).await.unwrap());
        }
        let running = victims[0];
        let mut refusals = 0;
        let attempts_until = std::time::Instant::now() + Duration::from_millis(600);
        while std::time::Instant::now() < attempts_until {
            let stolen = Submit { wait: false, ..submit("add", "[1,2]") };
            let dispatch = Dispatch { lease: 1, submit: submit("add", "[2,3]") };
            for (what, request) in [
                ("Collect", Request::Collect),
                ("Submit", Request::Submit(stolen.clone())),
                ("Batch", Request::Batch(vec![stolen])),
                ("Dispatch", Request::Dispatch(vec![dispatch])),
                ("Cancel", Request::Cancel { task_id: running }),
                ("Revoke", Request::Revoke { task_ids: victims.clone() }),
                ("HandBack", Request::HandBack { task_ids: victims.clone() }),
            ] {
                match at_sw2.request(0, &request).await {
                    Ok(Reply::Error(error)) if error.kind == ErrorKind::Forbidden => {
                        assert!(error.message.contains("role control"), "{what}: {}", error.message);
                        refusals += 1;
                    }
                    other => panic!("{what} from another subworker's key must be refused, got {other:?}"),
                }
            }
        }
        eprintln!("figures: {refusals} requests of sw1's key to sw2 refused, 0 taken");
        // Every victim ends as it would have, with its own result.
        for task_id in victims {
            let report = client.wait(task_id, Duration::from_secs(20)).await.unwrap();
            assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
            let slept: u64 = serde_json::from_slice(report.result.as_deref().unwrap()).unwrap();
            assert!(slept >= 400, "a run was cut short: {report:?}");
        }
        // A worker key reads nothing on the control plane, Workers included.
        let worker = keys.client(&cp, "worker");
        assert_eq!(refused(worker.workers().await).0, ErrorKind::Forbidden);
        let port = client.discover().await.unwrap();
        let management = worker.clone().with_management_port(port);
        match management.request(5, &Request::Workers).await {
            Ok(Reply::Error(error)) => assert_eq!(error.kind, ErrorKind::Forbidden, "{}", error.message),
            other => panic!("a worker key may not list workers on the management port, got {other:?}"),
        }
        // Clients and the operator still may.
        assert_eq!(client.workers().await.unwrap().total_subworkers, 2);
    });
    let after = bystander.check("during the attack");
    assert!(after.calls > 0);
    let bystander = Bystander::with_client(keys.client(&cp, "client").with_timeout(Duration::from_secs(5)))
        .let_run(Duration::from_millis(500));
    bystander.check("after the attack");
    drop((sw1, sw2));
}

/// Finding 4 of issue 23: a worker key's `Register` installed cluster-wide
/// limits on the control plane's own tasks (`divide` at one run an hour,
/// `sleep_ms` one at a time), and they stayed after `Unregister`. Now a
/// declared limit counts only for tasks the control plane's plugins do not
/// provide, and only while its subworker is registered.
#[test]
fn a_subworkers_declared_limits_stay_in_their_lane() {
    use fastworker::protocol::OfferedTask;
    use fastworker::task_limits::TaskLimit;
    use fastworker_tests::attack::Bystander;
    let keys = Keys::new();
    let cp = keyed_control_plane(&keys, &["example-tasks"]);
    let (operator, worker) = (keys.client(&cp, "operator"), keys.client(&cp, "worker"));
    let bystander = Bystander::with_client(keys.client(&cp, "client").with_timeout(Duration::from_secs(5)));
    // The attacker listens where its links would come, and never answers.
    let address = format!("tcp://127.0.0.1:{}", free_ports(4));
    let socket = nng::Socket::new(nng::Protocol::Rep0).unwrap();
    socket.listen(&address).unwrap();
    let limited =
        |name: &str, limit: &str| OfferedTask { limit: TaskLimit::parse(limit).unwrap(), ..OfferedTask::new(name) };
    let name = WorkerName { worker_id: "sw1".into(), instance: uuid::Uuid::new_v4() };
    let registration = Registration {
        name: name.clone(),
        address,
        concurrency: 1,
        prefetch: 0,
        tasks: vec![
            limited("divide", "rate:1/h"),
            limited("sleep_ms", "max_running:1"),
            limited("limited_running", "max_running:1"),
            limited("theirs", "max_running:1"),
        ],
    };
    let runtime = runtime();
    runtime.block_on(async {
        let port = operator.discover().await.unwrap();
        let management = worker.clone().with_management_port(port);
        management.manage(&Request::Register(registration)).await.unwrap();
        // Still registered, but taking no runs (it would never answer them).
        management.manage(&Request::Leave(name.clone())).await.unwrap();
        let rows = operator.task_limits().await.unwrap();
        let limit_of = |name: &str| rows.iter().find(|row| row.task_name == name).map(|row| row.limit);
        assert_eq!((limit_of("divide"), limit_of("sleep_ms")), (None, None), "{rows:?}");
        assert_eq!(limit_of("limited_running").unwrap().max_running, Some(2), "its own plugin's limit holds: {rows:?}");
        assert_eq!(limit_of("theirs").unwrap().max_running, Some(1), "a task only the subworker provides: {rows:?}");
        // The operator's divide runs as often as asked (one an hour would hold the second).
        for n in 1..=5i64 {
            let started = std::time::Instant::now();
            assert_eq!(operator.call::<i64>("divide", [10 * n, n]).await.unwrap(), 10);
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        // An operator's setting overrides the declared limit, and outlives it.
        operator.set_task_limit("theirs", Some(TaskLimit::parse("max_running:3").unwrap().unwrap())).await.unwrap();
        management.manage(&Request::Unregister(name)).await.unwrap();
        let theirs = |rows: Vec<fastworker::task_limits::TaskLimitStatus>| {
            rows.into_iter().find(|row| row.task_name == "theirs").map(|row| (row.source, row.limit.max_running))
        };
        let source = fastworker::task_limits::LimitSource::RunTime;
        assert_eq!(theirs(operator.task_limits().await.unwrap()), Some((source, Some(3))));
        operator.clear_task_limit("theirs").await.unwrap();
        let left = theirs(operator.task_limits().await.unwrap());
        assert_eq!(left, None, "the declared limit left with its subworker");
    });
    bystander.let_run(Duration::from_millis(300)).check("during and after the registration");
    drop(socket);
}

/// Finding 3 of issue 23: 66 000 sealed frames from fresh sender ids under
/// the client key filled the replay guard, and for a minute every new
/// sender, the operator's CLI included, was refused "too many peers". Now a
/// new sender evicts its own role's least recently seen one: nothing is
/// refused for lack of room, and the operator and a new client are
/// answered at once during and after the flood.
#[test]
fn a_flood_of_new_senders_locks_nobody_out() {
    use fastworker_tests::attack::{rss_kib, Bystander};
    const FLOOD: usize = 66_000;
    const CONNECTIONS: usize = 8;
    let keys = Keys::new();
    let cp = keyed_control_plane(&keys, &["example-tasks"]);
    let idle_kib = rss_kib(cp.pid());
    let key = keys.ring("client").signer(Role::Client).unwrap();
    let bystander = Bystander::with_client(keys.client(&cp, "client").with_timeout(Duration::from_secs(5)));
    let runtime = runtime();
    let started = std::time::Instant::now();
    let refusals: Vec<Vec<String>> = runtime.block_on(async {
        let floods = (0..CONNECTIONS).map(|_| {
            let raw = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(10));
            let key = key.clone();
            tokio::spawn(async move {
                let mut refusals = Vec::new();
                for _ in 0..FLOOD / CONNECTIONS {
                    // Every frame from a sender never seen before.
                    let frame = encode(&Request::Status { task_id: TaskId::new_v4() });
                    let (envelope, _) = seal(&key, &Sender::new(), &frame, None, now_ms());
                    let sealed = nng::Message::from(&[&envelope[..], &frame].concat()[..]);
                    let reply = raw.exchange(4, sealed).await.unwrap();
                    // A refusal before the guard is unsealed; an answer past it is sealed.
                    if let Ok(Reply::Error(error)) = decode::<Reply>(&reply, usize::MAX) {
                        refusals.push(error.message);
                    }
                }
                refusals
            })
        });
        let mut all = Vec::new();
        for flood in floods.collect::<Vec<_>>() {
            all.push(flood.await.unwrap());
        }
        all
    });
    let flood_took = started.elapsed();
    let peak_kib = rss_kib(cp.pid());
    let refused: Vec<&String> = refusals.iter().flatten().collect();
    assert!(refused.is_empty(), "{} of {FLOOD} new senders refused, first: {:?}", refused.len(), refused.first());
    bystander.check("during the flood");
    // The operator's CLI and a new client are answered at once.
    let asked = std::time::Instant::now();
    let output =
        run_cli(&["workers", "--address", &cp.address, "--timeout", "5", "--cluster-key-file", &keys.path("operator")]);
    let cli_took = asked.elapsed();
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    let asked = std::time::Instant::now();
    let fresh = keys.client(&cp, "client");
    assert_eq!(runtime.block_on(fresh.call::<i64>("add", [40, 2])).unwrap(), 42);
    let fresh_took = asked.elapsed();
    eprintln!(
        "figures: {FLOOD} new senders in {flood_took:?}, 0 refused; then operator CLI {cli_took:?}, new client {fresh_took:?}; resident memory idle {idle_kib} KiB, after the flood {peak_kib} KiB"
    );
    assert!(fresh_took < Duration::from_secs(1), "a new client took {fresh_took:?}");
    assert!(cli_took < Duration::from_secs(1), "the operator's CLI took {cli_took:?}");
    Bystander::with_client(keys.client(&cp, "client").with_timeout(Duration::from_secs(5)))
        .let_run(Duration::from_millis(500))
        .check("after the flood");
}

/// Finding 6 of issue 23: one key's queued tasks filled --max-queued-tasks
/// and every other client's submission was `Busy`. Now one key (one
/// connection without keys) holds at most its share (--queue-share, 50 %
/// by default): beyond it that key is `Busy`, and everyone else gets in.
#[test]
fn one_key_cannot_fill_the_queue_for_everyone() {
    use fastworker_tests::attack::Bystander;
    const QUEUE: usize = 400;
    let keys = Keys::new();
    let cluster = keys.path("cluster");
    let bound = QUEUE.to_string();
    let keyed = Process::control_plane_with_env(
        &["example-tasks"],
        &["--max-queued-tasks", &bound],
        &[("FASTWORKER_CLUSTER_KEY_FILE", cluster.as_str())],
    );
    let open = Process::control_plane(&["example-tasks"], &["--max-queued-tasks", &bound]);
    let later = SubmitOptions { countdown: Some(Duration::from_secs(3600)), ..Default::default() };
    let runtime = runtime();
    // Queues tasks through `flooder` until it is told Busy; how many it got in.
    let flood = |flooder: &Client| {
        runtime.block_on(async {
            for accepted in 0..QUEUE {
                if let Err(error) = flooder.delay("add", [1, 2], later.clone()).await {
                    let (kind, message) = refused(Err::<(), _>(error));
                    assert_eq!(kind, ErrorKind::Busy, "{message}");
                    assert!(message.contains("--queue-share") && message.contains("its share"), "{message}");
                    return accepted;
                }
            }
            QUEUE
        })
    };
    for (cp, attacker, others) in [
        (&keyed, keys.client(&keyed, "client"), vec![keys.client(&keyed, "operator")]),
        (&open, open.client(), vec![open.client(), open.client()]),
    ] {
        let bystander_client = others[0].clone().with_timeout(Duration::from_secs(5));
        let bystander = Bystander::with_client(bystander_client);
        let accepted = flood(&attacker);
        assert_eq!(accepted, QUEUE / 2, "one key (or connection) holds half of --max-queued-tasks");
        if cp.keys.is_some() {
            // Nor through a workflow: its member counts against the same share.
            let workflow = fastworker::workflow::task("add", serde_json::json!([1, 2]));
            let report = runtime.block_on(attacker.submit_workflow(&workflow)).unwrap();
            let failure = report.failure.map(|f| f.message).unwrap_or_default();
            assert!(failure.contains("--queue-share"), "{:?}: {failure}", report.state);
        }
        // The others still get in, queued and at once.
        for other in &others {
            let started = std::time::Instant::now();
            runtime.block_on(other.delay("add", [3, 4], later.clone())).unwrap();
            assert_eq!(runtime.block_on(other.call::<i64>("add", [40, 2])).unwrap(), 42);
            assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        }
        let record = bystander.check("while one key holds its share");
        eprintln!(
            "figures: {} flooder got {accepted} of {QUEUE} queued, then Busy; others answered, bystander slowest {:?}",
            if cp.keys.is_some() { "keyed" } else { "open" },
            record.slowest
        );
    }
}

/// A worker key made before control keys, or for another subworker, stops
/// the subworker at start-up saying how to make the right one.
#[test]
fn a_subworker_with_another_subworkers_key_says_how_to_make_its_own() {
    let keys = Keys::new();
    let cp = keyed_control_plane(&keys, &[]);
    let mut wrong =
        Process::spawn_subworker(&cp, "sw3", &["example-tasks"], &["--cluster-key-file", &keys.path("worker")]);
    assert_eq!(wrong.wait_exit(Duration::from_secs(20)), Some(2), "{}", wrong.log());
    assert!(wrong.log().contains("--worker-id sw3") && wrong.log().contains("'sw1'"), "{}", wrong.log());
    let output =
        run_cli(&["keygen", "--role", "worker", "--from", &keys.path("cluster"), "--out", &keys.path("no-id")]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--worker-id"), "{}", stderr(&output));
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
