//! Peers that attack the dashboard or the callback notices: tasks whose
//! callbacks go to dead and black-hole addresses, thousands of idle event
//! streams, slowloris connections, and pages of other sites (DNS
//! rebinding). In each, another client's `add` is answered within 1 s,
//! memory comes back, and SIGTERM still stops the process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::client::SubmitOptions;
use fastworker::protocol::{decode, Callback, ErrorKind, Notice, TaskState};
use fastworker::ClientError;
use fastworker_tests::attack::{assert_memory_returns, assert_stops_on_sigterm, rss_kib, Bystander};
use fastworker_tests::{free_ports, http, runtime, wait_until, Process};
use nng::options::{Options, RecvTimeout};
use nng::{Protocol, Socket};

/// A TCP listener that accepts every connection and never reads or writes:
/// an NNG dialer to it never finishes its handshake.
struct BlackHole {
    address: String,
    stop: Arc<AtomicBool>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !thread_stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        BlackHole { address, stop }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn with_callback(address: &str) -> SubmitOptions {
    SubmitOptions {
        callback: Some(Callback { address: address.to_string(), data: b"d".to_vec() }),
        ..SubmitOptions::default()
    }
}

/// A counter or gauge of `/metrics`, by its whole name with labels.
fn metric(gui: &str, name: &str) -> Option<f64> {
    let text = http::get(&format!("{gui}/metrics")).text();
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `fastworker_callbacks_dropped_total` of a control plane, through a
/// dashboard of its own.
fn callbacks_dropped(gui: &str) -> f64 {
    metric(gui, "fastworker_callbacks_dropped_total").unwrap_or(-1.0)
}

#[test]
fn dead_callback_addresses_do_not_delay_another_clients_notice() {
    let mut cp = Process::control_plane_with_gui(&["example-tasks"], &[], &[]);
    let gui = cp.gui.clone().unwrap();
    let idle = rss_kib(cp.pid());
    let hole = BlackHole::start();
    // Closed ports: nobody listens there.
    let mut dead: Vec<String> = (0..9).map(|_| format!("tcp://127.0.0.1:{}", free_ports(1))).collect();
    dead.push(hole.address.clone());
    let bystander = Bystander::start(&cp);
    let attacker = cp.client();
    let runtime = runtime();
    let ids: Vec<_> = (0..300)
        .map(|i| {
            runtime.block_on(attacker.delay("add", (i, 1), with_callback(&dead[i as usize % dead.len()]))).unwrap()
        })
        .collect();
    for id in &ids {
        let report = runtime.block_on(attacker.wait(*id, Duration::from_secs(10))).unwrap();
        assert_eq!(report.state, TaskState::Succeeded, "a dead callback address slows no task: {report:?}");
    }

    // Another client, with a live listener.
    let live = format!("tcp://127.0.0.1:{}", free_ports(1));
    let listener = Socket::new(Protocol::Pull0).unwrap();
    listener.set_opt::<RecvTimeout>(Some(Duration::from_secs(10))).unwrap();
    listener.listen(&live).unwrap();
    let other = cp.client();
    let started = Instant::now();
    let report = runtime.block_on(other.submit("add", (20, 22), with_callback(&live))).unwrap();
    let frame = listener.recv().expect("the other client's notice within 10 s");
    let took = started.elapsed();
    let notice = decode::<Notice>(&frame, usize::MAX).unwrap();
    assert_eq!((notice.report.task_id, notice.report.state), (report.task_id, TaskState::Succeeded));
    assert_eq!(notice.data, b"d");
    eprintln!("the other client's notice came {took:?} after its submission, behind 300 dead callbacks");
    assert!(took < Duration::from_secs(2), "the other client's notice took {took:?} behind 300 dead callbacks");

    // Every dead notice is dropped and counted, soon: failed addresses are
    // left alone rather than costing a timeout per notice.
    let mut dropped = 0.0;
    let counted = wait_until(Duration::from_secs(5), || {
        dropped = callbacks_dropped(&gui);
        dropped >= 300.0
    });
    assert!(counted, "300 undeliverable notices are counted as dropped, {dropped} are");
    assert_eq!(metric(&gui, "fastworker_limit_usage{limit=\"callback-queue\"}"), Some(0.0), "the queue drained");
    bystander.check("with 300 dead callbacks");
    assert!(cp.log().len() < 256 * 1024, "the log stays small: {} bytes", cp.log().len());
    assert_memory_returns(&cp, idle, rss_kib(cp.pid()));
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

#[test]
fn a_full_callback_queue_drops_and_counts_and_foreign_schemes_are_refused() {
    let mut cp = Process::control_plane_with_gui(
        &["example-tasks"],
        &["--callback-queue", "10", "--callback-concurrency", "1", "--callback-timeout", "5"],
        &[],
    );
    let gui = cp.gui.clone().unwrap();
    let hole = BlackHole::start();
    let client = cp.client();
    let runtime = runtime();
    for i in 0..50 {
        let sum: i64 = runtime.block_on(client.call_with("add", (i, 1), with_callback(&hole.address))).unwrap();
        assert_eq!(sum, i + 1);
    }
    // One in flight, ten waiting, the rest dropped at once.
    let refused = metric(&gui, "fastworker_limit_refusals_total{limit=\"callback-queue\"}").unwrap();
    assert!(refused >= 39.0, "notices beyond --callback-queue are refused and counted: {refused}");
    assert!(callbacks_dropped(&gui) >= 39.0);
    assert_eq!(metric(&gui, "fastworker_limit_usage{limit=\"callback-queue\"}"), Some(10.0));

    for address in ["ipc:///tmp/fastworker-callback", "inproc://x", "127.0.0.1:5000"] {
        match runtime.block_on(client.submit("add", (1, 1), with_callback(address))) {
            Err(ClientError::Refused(error)) => {
                assert_eq!(error.kind, ErrorKind::BadRequest, "{error:?}");
                assert!(error.message.contains("--callback-schemes"), "{}", error.message);
            }
            other => panic!("a callback to {address} must be refused, got {other:?}"),
        }
    }
    let long = format!("tcp://{}:1", "a".repeat(300));
    match runtime.block_on(client.submit("add", (1, 1), with_callback(&long))) {
        Err(ClientError::Refused(error)) => assert_eq!(error.kind, ErrorKind::BadRequest, "{error:?}"),
        other => panic!("a 300-byte callback address must be refused, got {other:?}"),
    }
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}
