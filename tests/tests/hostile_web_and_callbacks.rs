//! Peers that attack the dashboard or the callback notices: tasks whose
//! callbacks go to dead and black-hole addresses, thousands of idle event
//! streams, slowloris connections, and pages of other sites (DNS
//! rebinding). In each, another client's `add` is answered within 1 s,
//! memory comes back, and SIGTERM still stops the process.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::client::SubmitOptions;
use fastworker::protocol::{decode, Callback, ErrorKind, Notice, TaskState};
use fastworker::ClientError;
use fastworker_tests::attack::{assert_memory_returns, assert_stops_on_sigterm, rss_kib, Bystander};
use fastworker_tests::{free_ports, http, run_cli, runtime, stderr, wait_until, Process};
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

/// Finding 6 of issue 23, for callbacks: one client whose tasks all call
/// back a black hole filled the callback queue, and every other client's
/// notice was dropped. Now one connection (one key) has its share of
/// `--callback-queue` (`--queue-share`, half by default).
#[test]
fn one_client_cannot_fill_the_callback_queue_for_others() {
    let cp = Process::control_plane_with_gui(
        &["example-tasks"],
        &["--callback-queue", "10", "--callback-concurrency", "1", "--callback-timeout", "2"],
        &[],
    );
    let gui = cp.gui.clone().unwrap();
    let hole = BlackHole::start();
    let bystander = Bystander::start(&cp);
    let attacker = cp.client();
    let runtime = runtime();
    for i in 0..50 {
        let sum: i64 = runtime.block_on(attacker.call_with("add", (i, 1), with_callback(&hole.address))).unwrap();
        assert_eq!(sum, i + 1);
    }
    // One in flight, five (its share) waiting, the rest dropped at once.
    let share = metric(&gui, "fastworker_limit_refusals_total{limit=\"queue-share\"}").unwrap();
    assert!(share >= 40.0, "notices beyond the attacker's share are refused and counted: {share}");
    assert_eq!(metric(&gui, "fastworker_limit_usage{limit=\"callback-queue\"}"), Some(5.0));
    // Another client's notice still has room, and arrives once the hole's
    // notice in flight times out.
    let live = format!("tcp://127.0.0.1:{}", free_ports(1));
    let listener = Socket::new(Protocol::Pull0).unwrap();
    listener.set_opt::<RecvTimeout>(Some(Duration::from_secs(10))).unwrap();
    listener.listen(&live).unwrap();
    let other = cp.client();
    let started = Instant::now();
    let report = runtime.block_on(other.submit("add", (20, 22), with_callback(&live))).unwrap();
    let frame = listener.recv().expect("the other client's notice");
    let notice = decode::<Notice>(&frame, usize::MAX).unwrap();
    assert_eq!(notice.report.task_id, report.task_id);
    let took = started.elapsed();
    eprintln!("figures: the other client's notice came {took:?} after its submission, behind a full share of black-hole notices");
    assert!(took < Duration::from_secs(5), "{took:?}");
    bystander.check("with a client's share of the callback queue full");
}

#[test]
fn a_full_callback_queue_drops_and_counts_and_foreign_schemes_are_refused() {
    let mut cp = Process::control_plane_with_gui(
        &["example-tasks"],
        // One client here: its share of the queue is all of it.
        &["--callback-queue", "10", "--callback-concurrency", "1", "--callback-timeout", "5", "--queue-share", "100"],
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

/// How a connection opening an event stream was answered.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    Stream,
    Busy,
    Closed,
}

/// Connects to the dashboard and asks for `/api/events`; the stream
/// (kept when it is one) and what came back.
fn open_stream(host: &str) -> (TcpStream, Opened) {
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!("GET /api/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (stream, Opened::Closed);
    }
    let mut head = [0u8; 12];
    let outcome = match stream.read_exact(&mut head) {
        Ok(()) if &head[9..12] == b"200" => Opened::Stream,
        Ok(()) if &head[9..12] == b"503" => Opened::Busy,
        Ok(()) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&head)),
        Err(_) => Opened::Closed,
    };
    (stream, outcome)
}

/// The status of a GET, or `None` when the connection is closed first.
fn status_of(host: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[test]
fn idle_event_streams_are_bounded_and_the_dashboard_keeps_answering() {
    let mut cp = Process::control_plane_with_gui(&["example-tasks"], &["--gui-header-timeout", "3"], &[]);
    let gui = cp.gui.clone().unwrap();
    let host = gui.strip_prefix("http://").unwrap().to_string();
    assert_eq!(http::get(&format!("{gui}/api/status")).status, 200);
    let idle = rss_kib(cp.pid());
    let bystander = Bystander::start(&cp);
    let mut streams = Vec::new();
    let (mut busy, mut closed) = (0, 0);
    for _ in 0..2000 {
        match open_stream(&host) {
            (stream, Opened::Stream) => streams.push(stream),
            (_, Opened::Busy) => busy += 1,
            (_, Opened::Closed) => closed += 1,
        }
    }
    let peak = rss_kib(cp.pid());
    eprintln!(
        "2000 event streams asked for: {} open, {busy} answered 503, {closed} closed; RSS idle {idle} KiB, peak {peak} KiB",
        streams.len()
    );
    assert_eq!(streams.len(), 128, "half of --gui-max-connections (256) may be event streams");
    assert_eq!(busy + closed, 2000 - 128);
    assert!(peak < idle + 64 * 1024, "128 idle streams cost {} KiB", peak - idle);

    // A fresh request is answered at once meanwhile.
    let started = Instant::now();
    let status = http::get(&format!("{gui}/api/status"));
    assert_eq!(status.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "/api/status took {:?}", started.elapsed());
    let refused = metric(&gui, "fastworker_limit_refusals_total{limit=\"gui-max-connections\"}").unwrap();
    assert!(refused >= 1872.0, "refused streams are counted: {refused}");

    // Beyond the connection limit, more connections are closed at once
    // (after a 503 when they can read it).
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(&host).unwrap();
        let _ = stream.write_all(b"GET /api/status HTTP/1.1\r\nHost: ");
        stalled.push(stream);
    }
    let mut extra = TcpStream::connect(&host).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.is_empty() || answer.contains("--gui-max-connections"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(500), "refused after {:?}", started.elapsed());
    // The stalled ones are closed after --gui-header-timeout, and the
    // dashboard answers again.
    let back = wait_until(Duration::from_secs(10), || status_of(&host, "/api/status") == Some(200));
    assert!(back, "the dashboard answers once the stalled connections are closed");
    drop(stalled);
    bystander.check("with 2000 event streams");

    drop(streams);
    let usage = "fastworker_limit_usage{limit=\"gui-max-connections\"}";
    let mut open = None;
    let gone = wait_until(Duration::from_secs(10), || {
        open = metric(&gui, usage);
        open == Some(1.0)
    });
    assert!(gone, "closed streams are let go: {open:?} connections open");
    let (mut stream, opened) = open_stream(&host);
    assert_eq!(opened, Opened::Stream, "a stream opens again");
    let mut first = [0u8; 256];
    assert!(stream.read(&mut first).unwrap() > 0, "and sends its snapshot");
    drop(stream);
    assert_memory_returns(&cp, idle, peak);
    eprintln!("RSS after the event streams closed: {} KiB", rss_kib(cp.pid()));
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

#[test]
fn slowloris_connections_are_closed_after_the_header_timeout() {
    let mut cp = Process::control_plane_with_gui(
        &["example-tasks"],
        &["--gui-header-timeout", "1", "--gui-max-connections", "2048"],
        &[],
    );
    let gui = cp.gui.clone().unwrap();
    let host = gui.strip_prefix("http://").unwrap().to_string();
    assert_eq!(http::get(&format!("{gui}/api/status")).status, 200);
    let idle = rss_kib(cp.pid());
    let bystander = Bystander::start(&cp);
    // A thread of its own watches every connection for its end.
    let (watch, watched) = std::sync::mpsc::channel::<(TcpStream, Instant)>();
    let watcher = std::thread::spawn(move || {
        let mut open: Vec<(TcpStream, Instant)> = Vec::new();
        let mut lifetimes = Vec::new();
        let mut most_open = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut all_sent = false;
        while Instant::now() < deadline && !(all_sent && open.is_empty()) {
            loop {
                match watched.try_recv() {
                    Ok(connection) => open.push(connection),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        all_sent = true;
                        break;
                    }
                }
            }
            most_open = most_open.max(open.len());
            open.retain_mut(|(stream, connected)| {
                let mut scratch = [0u8; 1024];
                loop {
                    match stream.read(&mut scratch) {
                        Ok(0) => break,
                        Ok(_) => continue,
                        Err(error) if error.kind() == IoErrorKind::WouldBlock => return true,
                        Err(_) => break,
                    }
                }
                lifetimes.push(connected.elapsed());
                false
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        (lifetimes, open.len(), most_open)
    });
    let mut normal = None;
    for n in 0..1000 {
        let mut stream = TcpStream::connect(&host).unwrap();
        let connected = Instant::now();
        stream.write_all(format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").as_bytes()).unwrap();
        stream.set_nonblocking(true).unwrap();
        watch.send((stream, connected)).unwrap();
        if n == 500 {
            // A normal request is answered while they stall.
            let started = Instant::now();
            assert_eq!(http::get(&format!("{gui}/api/status")).status, 200);
            normal = Some(started.elapsed());
        }
    }
    drop(watch);
    let peak = rss_kib(cp.pid());
    let took = normal.unwrap();
    assert!(took < Duration::from_secs(1), "/api/status took {took:?} during the attack");
    let (lifetimes, still_open, most_open) = watcher.join().unwrap();
    let shortest = lifetimes.iter().min().copied().unwrap_or_default();
    let longest = lifetimes.iter().max().copied().unwrap_or_default();
    eprintln!(
        "slowloris: at most {most_open} of 1000 open at once, {still_open} open at the end; each closed {shortest:?} to {longest:?} after it connected; /api/status took {took:?}; RSS idle {idle} KiB, peak {peak} KiB"
    );
    assert_eq!((lifetimes.len(), still_open), (1000, 0), "every slowloris connection is closed");
    assert!(shortest >= Duration::from_millis(900), "held until the 1 s header timeout, not less ({shortest:?})");
    assert!(longest <= Duration::from_secs(3), "closed soon after the 1 s header timeout ({longest:?})");
    bystander.check("during the slowloris attack");
    assert_memory_returns(&cp, idle, peak);
    assert_stops_on_sigterm(&mut cp, Duration::from_secs(5));
}

#[test]
fn the_dashboard_answers_only_its_own_host_names_and_origins() {
    let cp = Process::control_plane_with_gui(&["example-tasks"], &["--gui-allowed-hosts", "dash.example:9999"], &[]);
    let gui = cp.gui.clone().unwrap();
    let host = gui.strip_prefix("http://").unwrap().to_string();
    let port = host.rsplit(':').next().unwrap();
    let status = format!("{gui}/api/status");
    for foreign in [format!("evil.example:{port}"), "evil.example".into(), format!("127.0.0.2:{port}"), String::new()] {
        let response = http::request("GET", &status, &[("Host", &foreign)]);
        assert_eq!(response.status, 421, "Host '{foreign}' is refused: {}", response.text());
        let body = response.json();
        assert_eq!(body["error"], "misdirected_request");
        assert!(body["message"].as_str().unwrap().contains("--gui-allowed-hosts"), "{body}");
    }
    for own in [host.clone(), format!("localhost:{port}"), format!("LOCALHOST:{port}"), "dash.example:9999".into()] {
        let response = http::request("GET", &status, &[("Host", &own)]);
        assert_eq!(response.status, 200, "Host '{own}' is served: {}", response.text());
    }

    let client = cp.client();
    let runtime = runtime();
    let later = SubmitOptions { countdown: Some(Duration::from_secs(60)), ..SubmitOptions::default() };
    let id = runtime.block_on(client.delay("add", (1, 2), later)).unwrap();
    let cancel = format!("{gui}/api/tasks/{id}/cancel");
    for origin in
        [format!("https://{host}"), "http://evil.example".into(), format!("http://{host}.evil.example"), "null".into()]
    {
        let response = http::request("POST", &cancel, &[("Origin", &origin)]);
        assert_eq!(response.status, 403, "Origin '{origin}' may not cancel: {}", response.text());
        assert_eq!(response.json()["error"], "forbidden");
    }
    // A rebound name with its own origin is refused by its Host.
    let response = http::request("POST", &cancel, &[("Host", "evil.example:80"), ("Origin", "http://evil.example:80")]);
    assert_eq!(response.status, 421, "{}", response.text());
    assert_eq!(runtime.block_on(client.status(id)).unwrap().state, TaskState::Scheduled, "nothing was cancelled");
    let response = http::request("POST", &cancel, &[("Origin", &format!("http://{host}"))]);
    assert_eq!(response.status, 200, "the dashboard's own page may cancel: {}", response.text());
    assert_eq!(response.json()["cancelled"], true);
}

#[test]
fn too_many_or_malformed_allowed_hosts_stop_the_start_up() {
    let base = format!("tcp://127.0.0.1:{}", fastworker_tests::free_base_port());
    let gui_port = free_ports(1).to_string();
    let many = (0..65).map(|i| format!("h{i}:1")).collect::<Vec<_>>().join(",");
    let long = format!("{}:1", "a".repeat(256));
    for hosts in [many.as_str(), long.as_str(), "http://a:1"] {
        let output = run_cli(&[
            "control-plane",
            "--base-address",
            &base,
            "--gui-port",
            &gui_port,
            "--no-discovery",
            "--gui-allowed-hosts",
            hosts,
        ]);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains("--gui-allowed-hosts"), "{}", stderr(&output));
        assert!(!stderr(&output).contains("serving:"), "refused only after the ports were bound: {}", stderr(&output));
    }
}
