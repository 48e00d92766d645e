//! Discovery: a control plane announces itself on its --discovery-address;
//! subworkers and client commands started without an address find it there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::discovery::{find, Announcement, DiscoveryError, STALE_AFTER};
use fastworker::protocol::{encode, now_ms};
use fastworker_tests::*;

/// A discovery address on a port that was free a moment ago.
fn discovery_address() -> String {
    format!("tcp://127.0.0.1:{}", free_ports(1))
}

/// A control plane serving the example plugin and announcing on `discovery`.
fn announced_control_plane(discovery: &str) -> Process {
    Process::control_plane(&["example-tasks"], &["--discovery-address", discovery])
}

#[test]
fn submit_without_an_address_finds_the_control_plane() {
    let discovery = discovery_address();
    let control_plane = announced_control_plane(&discovery);
    let started = Instant::now();
    let output = run_cli(&["submit", "--discovery-address", &discovery, "--task-name", "add", "--args", "2", "3"]);
    assert!(output.status.success(), "{}\ncontrol plane log:\n{}", stderr(&output), control_plane.log());
    assert_eq!(stdout(&output).trim(), "5");
    // A finder is announced to as soon as it connects, not at the next interval.
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // An explicit --address wins over discovery.
    let output = run_cli(&[
        "submit",
        "--address",
        &control_plane.address,
        "--discovery-address",
        "tcp://127.0.0.1:1",
        "--task-name",
        "add",
        "--args",
        "4",
        "5",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "9");
}

#[test]
fn the_announcement_names_the_control_plane() {
    let discovery = discovery_address();
    let control_plane = Process::control_plane(&[], &["--discovery-address", &discovery, "--worker-id", "cp-7"]);
    let found = runtime().block_on(find(&discovery, Duration::from_secs(5))).unwrap();
    assert_eq!(found.base_address, control_plane.address);
    assert_eq!(found.worker_id, "cp-7");
    let base_port: u16 = control_plane.address.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(found.management_port, base_port + 5);
    let client = runtime().block_on(fastworker::connect_via_discovery(&discovery, Duration::from_secs(5))).unwrap();
    assert!(runtime().block_on(client.workers()).is_ok());
}

#[test]
fn a_subworker_without_a_control_plane_address_finds_it() {
    let discovery = discovery_address();
    let control_plane = Process::control_plane(&[], &["--discovery-address", &discovery]);
    let address = format!("tcp://127.0.0.1:{}", free_ports(4));
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "found-sw",
        "--discovery-address",
        &discovery,
        "--base-address",
        &address,
        "--task-modules",
        &plugin("example-tasks").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let subworker = Process::spawn(&args, &[], address.clone());
    let registered =
        wait_until(Duration::from_secs(20), || control_plane.worker("found-sw").is_some_and(|w| w.address == address));
    assert!(registered, "subworker log:\n{}\ncontrol plane log:\n{}", subworker.log(), control_plane.log());
    assert!(subworker.log().contains("found the control plane"), "{}", subworker.log());
    // The control plane has no plugin: this ran on the subworker.
    let output = run_cli(&["submit", "--address", &control_plane.address, "--task-name", "add", "--args", "2", "3"]);
    assert_eq!(stdout(&output).trim(), "5", "{}", stderr(&output));
}

#[test]
fn nothing_announcing_fails_within_the_timeout_with_a_clear_message() {
    let discovery = discovery_address();
    let started = Instant::now();
    let output = run_cli(&[
        "submit",
        "--discovery-address",
        &discovery,
        "--timeout",
        "1.5",
        "--task-name",
        "add",
        "--args",
        "2",
        "3",
    ]);
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains(&format!("no control plane announced itself on {discovery} within 1.5 s")), "{message}");
    assert!(message.contains(&format!("--discovery-address {discovery}")), "{message}");
    assert!(message.contains("--address"), "{message}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn a_subworker_finding_nothing_exits_2() {
    let discovery = discovery_address();
    let args: Vec<String> = [
        "subworker",
        "--worker-id",
        "lonely",
        "--discovery-address",
        &discovery,
        "--base-address",
        &format!("tcp://127.0.0.1:{}", free_ports(4)),
        "--task-modules",
        &plugin("example-tasks").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut subworker = Process::spawn(&args, &[], String::new());
    // It waits 10 s for an announcement.
    assert_eq!(subworker.wait_exit(Duration::from_secs(20)), Some(2), "{}", subworker.log());
    let log = subworker.log();
    assert!(log.contains(&format!("error: no control plane announced itself on {discovery} within 10 s")), "{log}");
    assert!(log.contains("--control-plane-address"), "{log}");
}

#[test]
fn a_killed_control_plane_is_not_found_any_more() {
    let discovery = discovery_address();
    let mut control_plane = announced_control_plane(&discovery);
    let rt = runtime();
    assert!(rt.block_on(find(&discovery, Duration::from_secs(5))).is_ok());
    control_plane.signal("KILL");
    let _ = control_plane.wait_exit(Duration::from_secs(5));
    let started = Instant::now();
    let error = rt.block_on(find(&discovery, Duration::from_secs(1))).unwrap_err();
    assert!(matches!(error, DiscoveryError::Timeout { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_stopped_control_plane_stops_announcing() {
    let discovery = discovery_address();
    let mut control_plane = announced_control_plane(&discovery);
    let rt = runtime();
    assert!(rt.block_on(find(&discovery, Duration::from_secs(5))).is_ok());
    control_plane.signal("TERM");
    assert_eq!(control_plane.wait_exit(Duration::from_secs(10)), Some(0), "{}", control_plane.log());
    assert!(rt.block_on(find(&discovery, Duration::from_secs(1))).is_err());
}

/// An announcer that sends `announcement` with `sent_ms` set `age` in the
/// past, every 100 ms, until the returned flag is set.
fn fake_announcer(discovery: &str, announcement: Announcement, age: Duration) -> Arc<AtomicBool> {
    let socket = nng::Socket::new(nng::Protocol::Bus0).unwrap();
    socket.listen(discovery).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            let frame = encode(&Announcement { sent_ms: now_ms() - age.as_millis() as u64, ..announcement.clone() });
            let _ = socket.try_send(&frame[..]);
            std::thread::sleep(Duration::from_millis(100));
        }
        socket.close();
    });
    stop
}

#[test]
fn stale_announcements_are_ignored() {
    let announcement = Announcement {
        worker_id: "ghost".into(),
        base_address: "tcp://127.0.0.1:5555".into(),
        management_port: 5560,
        sent_ms: 0,
    };
    let rt = runtime();
    // Older than the stale window: ignored, and the timeout says why.
    let discovery = discovery_address();
    let stop = fake_announcer(&discovery, announcement.clone(), STALE_AFTER + Duration::from_secs(4));
    let error = rt.block_on(find(&discovery, Duration::from_secs(1))).unwrap_err();
    stop.store(true, Ordering::Relaxed);
    let message = error.to_string();
    assert!(matches!(error, DiscoveryError::Timeout { .. }), "{message}");
    assert!(message.contains("stale announcement"), "{message}");
    // Within the window: taken.
    let discovery = discovery_address();
    let stop = fake_announcer(&discovery, announcement.clone(), STALE_AFTER - Duration::from_secs(2));
    let found = rt.block_on(find(&discovery, Duration::from_secs(2))).unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(found.worker_id, "ghost");
}

#[test]
fn a_taken_discovery_address_only_warns() {
    let discovery = discovery_address();
    let first = announced_control_plane(&discovery);
    let second = announced_control_plane(&discovery);
    // The warning follows the ports being ready, so it may come a moment later.
    let warned = |log: &str| log.contains("already in use") && log.contains("serving without announcing");
    wait_until(Duration::from_secs(5), || warned(&second.log()));
    let log = second.log();
    assert!(warned(&log), "{log}");
    // The second serves anyway; the first is still the one announced.
    let output = run_cli(&["submit", "--address", &second.address, "--task-name", "add", "--args", "1", "1"]);
    assert_eq!(stdout(&output).trim(), "2", "{}", stderr(&output));
    let found = runtime().block_on(find(&discovery, Duration::from_secs(5))).unwrap();
    assert_eq!(found.base_address, first.address);
}

#[test]
fn a_malformed_discovery_address_is_refused() {
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    let args: Vec<String> =
        ["control-plane", "--base-address", &address, "--discovery-address", "127.0.0.1:5550", "--no-gui"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut control_plane = Process::spawn(&args, &[], address);
    assert_eq!(control_plane.wait_exit(Duration::from_secs(10)), Some(2), "{}", control_plane.log());
    let log = control_plane.log();
    assert!(log.contains("--discovery-address: '127.0.0.1:5550' is not a discovery address"), "{log}");
}
