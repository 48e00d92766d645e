//! Peers that speak the protocol correctly but ask for too much, or at the
//! wrong time: a schedule bomb, a subworker that never answers or answers
//! garbage, a client that never reads its replies, a flood of registrations,
//! a full queue, a flood of bad frames. In each, another client's `add` is
//! answered within 1 s during and after the attack, memory comes back, and
//! SIGTERM still stops the process.

use std::time::{Duration, Instant};

use fastworker::client::SubmitOptions;
use fastworker::protocol::{
    encode, ErrorKind, Registration, Reply, Request, RetryPolicy, Submit, TaskState, WorkerName,
};
use fastworker::{ClientError, TaskId};
use fastworker_tests::attack::{
    assert_memory_returns, assert_stops_on_sigterm, offered, rss_kib, Bystander, FakeAnswer, FakeSubworker,
    RawRequester,
};
use fastworker_tests::{free_ports, runtime, wait_until, Process};

fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (ErrorKind, String) {
    match result {
        Err(ClientError::Refused(error)) => (error.kind, error.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_schedule_bomb_neither_spins_nor_blocks_the_ports() {
    let mut cp = Process::control_plane(&["example-tasks"], &[]);
    let idle = rss_kib(cp.pid());
    let bystander = Bystander::start(&cp);
    // A period that wraps `now + period` around, one below the shortest
    // period allowed, and a sane one.
    let bomb = offered("bomb", r#"{"every_ms":18446744073709551615}"#);
    let fast = offered("fast", r#"{"every_ms":1}"#);
    let sane = offered("sane", r#"{"every_ms":60000}"#);
    let fake = FakeSubworker::register(&cp, "bomber", vec![bomb, fast, sane], FakeAnswer::Never);
    let client = cp.client();
    let runtime = runtime();
    let listed = wait_until(Duration::from_secs(5), || {
        runtime.block_on(client.schedules()).is_ok_and(|s| s.iter().any(|s| s.task_name == "sane"))
    });
    assert!(listed, "the sane schedule is taken");
    runtime.block_on(async {
        // 40 listings at once are each answered at once.
        let started = Instant::now();
        let listings: Vec<_> = (0..40).map(|_| client.schedules()).collect();
        for listing in futures_join(listings).await {
            let names: Vec<String> = listing.unwrap().into_iter().map(|s| s.task_name).collect();
            assert!(!names.contains(&"fast".to_string()), "a 1 ms schedule is refused: {names:?}");
            assert!(names.contains(&"bomb".to_string()), "{names:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(2), "40 listings took {:?}", started.elapsed());
    });
    let bomb = runtime.block_on(client.schedules()).unwrap().into_iter().find(|s| s.task_name == "bomb").unwrap();
    assert_eq!((bomb.next_ms, bomb.runs), (None, 0), "a period past the end of time never runs: {bomb:?}");
    assert!(cp.log().contains("--min-schedule-period"), "the refused schedule is logged:\n{}", cp.log());
    assert!(cp.log().len() < 64 * 1024, "the log stays small: {} bytes", cp.log().len());
    bystander.check("during the schedule bomb");

    // The subworker leaves: its schedules leave with it.
    let management = client.clone().with_management_port(runtime.block_on(client.discover()).unwrap());
    runtime.block_on(management.manage(&Request::Unregister(fake.name.clone()))).unwrap();
    drop(fake);
    let theirs = |s: &fastworker::protocol::ScheduleStatus| ["bomb", "sane"].contains(&s.task_name.as_str());
    let gone = wait_until(Duration::from_secs(5), || {
        runtime.block_on(client.schedules()).is_ok_and(|s| !s.is_empty() && !s.iter().any(theirs))
    });
    assert!(gone, "schedules offered by a subworker leave with it: {:?}", runtime.block_on(client.schedules()));
    let bystander = Bystander::start(&cp);
    std::thread::sleep(Duration::from_millis(500));
    bystander.check("after the schedule bomb");
    assert_memory_returns(&cp, idle, rss_kib(cp.pid()));
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

/// Awaits every future, in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await);
    }
    outputs
}

#[test]
fn a_black_hole_subworker_cannot_keep_tasks_and_garbage_results_fail() {
    // No grace for absent providers: only_there, taken back from the hole,
    // fails at once rather than waiting for another provider; its own
    // threads run sleep_ms when the hole is given up on.
    let mut cp = Process::control_plane(
        &["example-tasks"],
        &["--max-subworker-run", "1", "--provider-grace", "0", "--in-process"],
    );
    let bystander = Bystander::start(&cp);
    // It offers sleep_ms with no timeout (the control plane's plugin
    // declares 10 min) and a task only it has, and never answers.
    let _hole = FakeSubworker::register(
        &cp,
        "hole",
        vec![offered("sleep_ms", ""), offered("only_there", "")],
        FakeAnswer::Never,
    );
    let client = cp.client();
    let runtime = runtime();
    let ids: Vec<TaskId> = ["sleep_ms", "only_there"]
        .iter()
        .map(|name| runtime.block_on(client.delay(name, [1], SubmitOptions::default())).unwrap())
        .collect();
    // A run not reported started within --max-subworker-run loses its lease:
    // sleep_ms runs on the control plane's own threads instead, and
    // only_there, which nobody else provides, fails; neither waits longer.
    let reports: Vec<_> =
        ids.iter().map(|id| runtime.block_on(client.wait(*id, Duration::from_secs(5))).unwrap()).collect();
    let (sleep, only_there) = (&reports[0], &reports[1]);
    assert_eq!((sleep.state, sleep.worker.as_str()), (TaskState::Succeeded, "control-plane"), "{sleep:?}");
    assert_eq!(only_there.state, TaskState::Failed, "the control plane bounds a forwarded run: {only_there:?}");
    for report in &reports {
        assert!(report.finished_ms.unwrap() - report.created_ms < 3000, "{report:?}");
    }
    bystander.check("with a black-hole subworker");

    // A subworker whose results are not JSON: the run fails, nothing
    // un-JSON reaches the client.
    let _liar = FakeSubworker::register(&cp, "liar", vec![offered("lie", "")], FakeAnswer::NotJson);
    let outcome = runtime.block_on(client.call::<serde_json::Value>("lie", [1]));
    match outcome {
        Err(ClientError::TaskFailed { error, .. }) => assert!(error.message.contains("not JSON"), "{}", error.message),
        other => panic!("a result that is not JSON must fail the run, got {other:?}"),
    }
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

#[test]
fn a_client_that_never_reads_cannot_stall_a_port() {
    // The tasks the attacker submits do run: a small result cache keeps
    // their (legitimately kept) results from counting as the attack's memory.
    let flags = ["--reply-timeout", "1", "--result-cache-bytes", "1048576"];
    let mut cp = Process::control_plane(&["example-tasks", "text-tasks"], &flags);
    let idle = rss_kib(cp.pid());
    let bystander = Bystander::start(&cp);
    // Pipelined requests with 64 KiB answers on the bystander's port,
    // never read.
    let normal_port = cp.address.rsplit(':').next().unwrap().parse::<u16>().unwrap() + 2;
    let text = "x".repeat(64 * 1024);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut attacker = RawRequester::connect(&format!("tcp://127.0.0.1:{normal_port}")).unwrap();
        for _ in 0..300 {
            let submit = Submit {
                task_id: TaskId::new_v4(),
                task_name: "upper".into(),
                args: serde_json::to_vec(&[&text]).unwrap(),
                wait: true,
                ..Default::default()
            };
            if attacker.send(&encode(&Request::Submit(submit))).is_err() {
                break;
            }
        }
        readers.push(attacker);
    }
    std::thread::sleep(Duration::from_secs(3));
    // Every reply queued behind a slow reader times out at about the same
    // moment, and each closes its connection: the process must survive
    // closing a connection that is already gone.
    assert!(cp.is_running(), "the control plane died under slow readers:\n{}", cp.log());
    bystander.check("while three clients never read their replies");
    let peak = rss_kib(cp.pid());
    drop(readers);
    let bystander = Bystander::start(&cp);
    std::thread::sleep(Duration::from_millis(500));
    bystander.check("after the slow readers");
    assert!(cp.is_running(), "the control plane died after the slow readers:\n{}", cp.log());
    let log = cp.log();
    assert!(log.contains("its connection is closed"), "the dropped replies are logged:\n{log}");
    assert_memory_returns(&cp, idle, peak);
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

#[test]
fn a_flood_of_registrations_is_bounded() {
    // No worker processes: every subworker the flood could add is counted.
    let mut cp = Process::control_plane(&["example-tasks"], &["--in-process"]);
    let idle = rss_kib(cp.pid());
    let bystander = Bystander::start(&cp);
    let client = cp.client().with_timeout(Duration::from_secs(10));
    let runtime = runtime();
    let management = client.clone().with_management_port(runtime.block_on(client.discover()).unwrap());
    // 200 registrations of 4,096 slots each, to an address nobody listens on.
    let dead = format!("tcp://127.0.0.1:{}", free_ports(4));
    let kinds: Vec<ErrorKind> = runtime.block_on(async {
        let calls = (0..200).map(|n| {
            let management = management.clone();
            let dead = dead.clone();
            async move {
                let registration = Registration {
                    name: WorkerName { worker_id: format!("flood-{n}"), instance: uuid::Uuid::new_v4() },
                    address: dead,
                    concurrency: 4096,
                    prefetch: 0,
                    tasks: vec![offered("add", "")],
                };
                refusal(management.manage(&Request::Register(registration)).await).0
            }
        });
        let handles: Vec<_> = calls.map(|call| tokio::spawn(call)).collect();
        let mut kinds = Vec::new();
        for handle in handles {
            kinds.push(handle.await.unwrap());
        }
        kinds
    });
    let busy = kinds.iter().filter(|k| **k == ErrorKind::Busy).count();
    let unreachable = kinds.iter().filter(|k| **k == ErrorKind::WorkerUnreachable).count();
    assert_eq!(busy + unreachable, 200, "{kinds:?}");
    assert!(busy >= 150, "at most the pending limit are dialed at once: {busy} busy, {unreachable} dialed");
    let peak = rss_kib(cp.pid());
    bystander.check("during a registration flood");
    // One registration asking for too many tasks or a bad name.
    let too_many: Vec<_> = (0..2000).map(|n| offered(&format!("t{n}"), "")).collect();
    // Or schemas beyond the per-registration bound (256 KiB of text).
    let schema = format!("{{\"description\":\"{}\"}}", "s".repeat(100 * 1024));
    let too_much_text: Vec<_> = (0..3)
        .map(|n| fastworker::protocol::OfferedTask {
            args_schema: Some(schema.clone()),
            result_schema: Some("{}".into()),
            ..offered(&format!("t{n}"), "")
        })
        .collect();
    // Or a declared limit out of range.
    let bad_limit = fastworker::task_limits::TaskLimit { rate: None, max_running: Some(0) };
    let absurd = vec![fastworker::protocol::OfferedTask { limit: Some(bad_limit), ..offered("add", "") }];
    for (worker_id, tasks) in [
        ("many", too_many),
        ("wordy", too_much_text),
        ("limited", absurd),
        ("", vec![offered("add", "")]),
        ("sp ace", vec![]),
    ] {
        let registration = Registration {
            name: WorkerName { worker_id: worker_id.into(), instance: uuid::Uuid::new_v4() },
            address: dead.clone(),
            concurrency: 1,
            prefetch: 0,
            tasks,
        };
        let (kind, message) = refusal(runtime.block_on(management.manage(&Request::Register(registration))));
        assert_eq!(kind, ErrorKind::BadRegistration, "{message}");
    }
    assert_eq!(runtime.block_on(client.workers()).unwrap().total_subworkers, 0);
    assert_memory_returns(&cp, idle, peak);
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

#[test]
fn a_full_queue_answers_busy_and_absurd_requests_are_refused() {
    // One client here: its share of the queue is all of it.
    let mut cp = Process::control_plane(
        &["example-tasks"],
        &["--concurrency", "1", "--max-queued-tasks", "50", "--queue-share", "100"],
    );
    let client = cp.client();
    let runtime = runtime();
    let options = SubmitOptions { countdown: Some(Duration::from_secs(3600)), ..Default::default() };
    let mut accepted = Vec::new();
    let mut busy = None;
    for _ in 0..60 {
        match runtime.block_on(client.delay("add", [1, 2], options.clone())) {
            Ok(id) => accepted.push(id),
            Err(error) => {
                busy = Some(refusal(Err::<(), _>(error)));
                break;
            }
        }
    }
    assert_eq!(accepted.len(), 50, "the queue takes --max-queued-tasks tasks");
    let (kind, message) = busy.expect("the 51st is refused");
    assert_eq!(kind, ErrorKind::Busy);
    assert!(message.contains("--max-queued-tasks 50") && message.contains("retry later"), "{message}");
    // A client is answered at once while the queue is full.
    let started = Instant::now();
    let (kind, _) = refusal(runtime.block_on(client.call::<i64>("add", [1, 2])));
    assert_eq!(kind, ErrorKind::Busy);
    assert!(started.elapsed() < Duration::from_secs(1));
    for id in &accepted {
        runtime.block_on(client.cancel(*id)).unwrap();
    }
    Bystander::start(&cp).let_run(Duration::from_millis(500)).check("once the queue has room");

    // An ETA in the year 9999 and four billion retries are refused.
    let far = SubmitOptions { countdown: Some(Duration::from_secs(8000 * 365 * 86_400)), ..Default::default() };
    let (kind, message) = refusal(runtime.block_on(client.delay("add", [1, 2], far)));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(message.contains("--max-countdown"), "{message}");
    let retry = RetryPolicy { max_retries: u32::MAX, delay_ms: 0, factor: 1.0, max_delay_ms: 0 };
    let greedy = SubmitOptions { retry: Some(retry), ..Default::default() };
    let (kind, message) = refusal(runtime.block_on(client.delay("add", [1, 2], greedy)));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(message.contains("--max-retries"), "{message}");
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

#[test]
fn a_flood_of_bad_frames_does_not_grow_the_log() {
    let mut cp = Process::control_plane(&["example-tasks"], &[]);
    let bystander = Bystander::start(&cp);
    let client = cp.client();
    let runtime = runtime();
    let started = Instant::now();
    let mut sent = 0;
    runtime.block_on(async {
        while started.elapsed() < Duration::from_secs(3) {
            let garbage = nng::Message::from(&[fastworker::protocol::PROTOCOL_VERSION, 0xff, 0xfe, 0xfd][..]);
            let reply = client.exchange(2, garbage).await.unwrap();
            assert!(matches!(fastworker::protocol::decode::<Reply>(&reply, usize::MAX), Ok(Reply::Error(_))));
            sent += 1;
        }
    });
    bystander.check("during a flood of bad frames");
    let lines = cp.log().lines().filter(|line| line.contains("refused a frame")).count();
    eprintln!("figures: {sent} bad frames in 3 s wrote {lines} log lines");
    assert!(sent > 1000, "the flood sent {sent} frames");
    assert!(lines <= 2, "{sent} bad frames wrote {lines} lines:\n{}", cp.log());
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

#[test]
fn a_peer_that_dispatches_runs_and_never_collects_their_outcomes_is_refused() {
    let cp = Process::control_plane(&[], &[]);
    let sw = Process::subworker(&cp, "sw1", &["example-tasks"], &["--max-queued-tasks", "50"]);
    // Its control plane stops collecting.
    cp.signal("STOP");
    let peer = fastworker::Client::new(&sw.address).unwrap().with_timeout(Duration::from_secs(5));
    let runs = |count: usize| {
        let run = |_| fastworker::protocol::Dispatch {
            lease: 1,
            submit: Submit {
                task_id: TaskId::new_v4(),
                task_name: "add".into(),
                args: b"[1,2]".to_vec(),
                wait: true,
                ..Default::default()
            },
        };
        Request::Dispatch((0..count).map(run).collect())
    };
    let rt = runtime();
    assert!(matches!(rt.block_on(peer.request(0, &runs(40))), Ok(Reply::Done)));
    // The 40 outcomes wait; 40 more would pass --max-queued-tasks.
    let refused = wait_until(
        Duration::from_secs(5),
        || matches!(rt.block_on(peer.request(0, &runs(40))), Ok(Reply::Error(e)) if e.kind == ErrorKind::Busy && e.message.contains("--max-queued-tasks")),
    );
    assert!(refused, "a second frame of 40 runs is refused Busy");
    // Collecting them (as a control plane does) makes room again.
    // The runs may still be finishing: collect until the first frame's are in.
    let mut outcomes = Vec::new();
    wait_until(Duration::from_secs(5), || {
        let Ok(Reply::Reports(more)) = rt.block_on(peer.request(0, &Request::Collect)) else { panic!("no outcomes") };
        outcomes.extend(more);
        outcomes.len() >= 39
    });
    // (The first outcome may have answered the stopped control plane's own
    // waiting Collect.)
    assert!(outcomes.len() >= 39, "{} outcomes", outcomes.len());
    // A frame refused meanwhile left more to collect first.
    let accepted = wait_until(Duration::from_secs(5), || {
        matches!(rt.block_on(peer.request(0, &runs(40))), Ok(Reply::Done)) || {
            let _ = rt.block_on(peer.request(0, &Request::Collect));
            false
        }
    });
    assert!(accepted, "room again once the outcomes are collected");
    cp.signal("CONT");
}
