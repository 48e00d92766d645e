//! The durable mode (`--state-dir`): a control plane killed with SIGKILL
//! while tasks are queued, running (here and on a subworker), scheduled and
//! finished, then restarted on the same directory, brings every accepted
//! task to one outcome and still answers for the finished ones; a directory
//! it cannot use stops the start-up with a clear message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fastworker::protocol::{ErrorKind, RetryPolicy};
use fastworker::{ClientError, SubmitOptions, TaskId, TaskReport, TaskState};
use fastworker_tests::{free_base_port, plugin, run_cli, runtime, stderr, wait_until, Process};

/// A fresh directory under the system's temporary one.
fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fastworker-{what}-{}", TaskId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh state directory (its path, as a flag value) and a free base
/// address to restart a control plane on.
fn durable_place() -> (PathBuf, String, String) {
    let dir = temp_dir("state");
    let state_dir = dir.display().to_string();
    (dir, state_dir, format!("tcp://127.0.0.1:{}", free_base_port()))
}

/// Starts a control plane with the example plugin at `address`, with `extra`
/// flags, and waits until it answers.
fn control_plane_at(address: &str, extra: &[&str]) -> Process {
    let mut args: Vec<String> = ["control-plane", "--base-address", address, "--no-gui", "--no-discovery"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--task-modules".into(), plugin("example-tasks").display().to_string()]);
    // The store is what these tests are about: tasks run on the control
    // plane's own threads (tests/tests/isolation.rs has a durable restart
    // with worker processes).
    args.push("--in-process".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut process = Process::spawn(&args, &[], address.to_string());
    if let Err(log) = process.wait_ready(Duration::from_secs(20)) {
        panic!("control plane did not start:\n{log}");
    }
    process
}

/// Kills a process with SIGKILL and waits for it to be gone.
fn kill_9(process: &mut Process) {
    process.signal("KILL");
    let _ = process.wait_exit(Duration::from_secs(10));
}

fn with_id(task_id: TaskId) -> SubmitOptions {
    SubmitOptions { task_id: Some(task_id), ..Default::default() }
}

/// The report of `task_id` once it is `state`, within `limit`.
fn report_when(cp: &Process, task_id: TaskId, limit: Duration, ok: impl Fn(&TaskReport) -> bool) -> TaskReport {
    let rt = runtime();
    let client = cp.client();
    let mut last = None;
    let reached = wait_until(limit, || {
        last = rt.block_on(client.status(task_id)).ok();
        last.as_ref().is_some_and(&ok)
    });
    assert!(reached, "task {task_id} did not reach the expected state in {limit:?}: last {last:?}\n{}", cp.log());
    last.expect("a report")
}

#[test]
fn a_killed_control_plane_brings_every_accepted_task_to_one_outcome_after_a_restart() {
    let (dir, state_dir, address) = durable_place();
    let flags = ["--concurrency", "1", "--state-dir", state_dir.as_str(), "--inactive-after", "2"];
    let mut cp = control_plane_at(&address, &flags);
    let rt = runtime();
    let client = cp.client();

    // Finished before the crash: two that succeeded (one after a retry) and one that failed.
    let finished: Vec<TaskReport> = rt.block_on(async {
        let add = client.submit("add", (1, 2), with_id(TaskId::new_v4())).await.unwrap();
        let flaky = client.submit("flaky", (1,), with_id(TaskId::new_v4())).await.unwrap();
        let divide = client.submit("divide", (1, 0), with_id(TaskId::new_v4())).await.unwrap();
        vec![add, flaky, divide]
    });
    assert_eq!(finished[0].state, TaskState::Succeeded);
    assert_eq!((finished[1].state, finished[1].attempts), (TaskState::Succeeded, 2));
    assert_eq!(finished[2].state, TaskState::Failed);

    // Running here: the cluster is empty, so the control plane's one thread takes it.
    let local = TaskId::new_v4();
    rt.block_on(client.delay("sleep_ms", (1500,), with_id(local))).unwrap();
    let running = report_when(&cp, local, Duration::from_secs(10), |r| r.state == TaskState::Running);
    assert_eq!(running.worker, "control-plane");

    // Running on a subworker, then queued behind it at the control plane
    // (it provides sleep_ms with one slot and takes nothing ahead).
    let subworker =
        Process::subworker(&cp, "durable-sw", &["example-tasks"], &["--concurrency", "1", "--prefetch", "0"]);
    let remote = TaskId::new_v4();
    rt.block_on(client.delay("sleep_ms", (1500,), with_id(remote))).unwrap();
    let running = report_when(&cp, remote, Duration::from_secs(10), |r| r.state == TaskState::Running);
    assert_eq!(running.worker, "durable-sw");
    let queued: Vec<TaskId> = (0..5).map(|_| TaskId::new_v4()).collect();
    for task_id in &queued {
        rt.block_on(client.delay("sleep_ms", (10,), with_id(*task_id))).unwrap();
    }
    assert_eq!(rt.block_on(client.status(queued[4])).unwrap().state, TaskState::Queued);

    // Scheduled for later.
    let scheduled = TaskId::new_v4();
    let countdown = SubmitOptions { countdown: Some(Duration::from_secs(3)), ..with_id(scheduled) };
    rt.block_on(client.delay("add", (2, 3), countdown)).unwrap();
    assert_eq!(rt.block_on(client.status(scheduled)).unwrap().state, TaskState::Scheduled);

    // A client waiting for a task when the control plane dies gets an error,
    // and may ask for the task by id after the restart.
    let blocked = TaskId::new_v4();
    let waiting = {
        let client = cp.client().with_timeout(Duration::from_secs(20));
        rt.spawn(async move { client.submit("sleep_ms", (20,), with_id(blocked)).await })
    };
    assert!(wait_until(Duration::from_secs(5), || rt.block_on(client.status(blocked)).is_ok()));
    // A blocking submission is promised nothing until it is on disk; the
    // writer keeps submission order, so once a later acknowledged one is
    // on disk, so is it.
    let marker = TaskId::new_v4();
    rt.block_on(client.delay("add", (1, 1), with_id(marker))).unwrap();

    kill_9(&mut cp);
    let outcome = rt.block_on(waiting).unwrap();
    assert!(outcome.is_err(), "a blocking call in flight at the crash fails: {outcome:?}");

    let cp = control_plane_at(&address, &flags);
    let client = cp.client();
    // What had finished is answered as before, and a resubmission does not run it again.
    for before in &finished {
        let after = rt.block_on(client.status(before.task_id)).unwrap();
        assert_eq!(
            (after.state, after.attempts, after.finished_ms, &after.result),
            (before.state, before.attempts, before.finished_ms, &before.result)
        );
    }
    let again = rt.block_on(client.submit("flaky", (1,), with_id(finished[1].task_id))).unwrap();
    assert_eq!((again.attempts, again.finished_ms), (2, finished[1].finished_ms), "not run again: {again:?}");
    let conflict = rt.block_on(client.submit("add", (5, 5), with_id(finished[0].task_id)));
    assert!(matches!(conflict, Err(ClientError::Refused(r)) if r.kind == ErrorKind::IdConflict));

    // Everything accepted ends succeeded; what was running says it ran again.
    let all: Vec<TaskId> =
        [local, remote, scheduled, blocked].into_iter().chain(queued.iter().copied()).chain([marker]).collect();
    let mut ended = Vec::new();
    for task_id in &all {
        let report = report_when(&cp, *task_id, Duration::from_secs(30), |r| r.state.is_final());
        assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
        ended.push(report);
    }
    assert_eq!(ended[0].attempts, 2, "the run interrupted here counts: {:?}", ended[0]);
    assert_eq!(ended[1].attempts, 2, "the run interrupted on the subworker counts: {:?}", ended[1]);
    // The countdown ran no sooner than its time, by the control plane's own record.
    assert!(ended[2].started_ms >= ended[2].created_ms.checked_add(2900), "{:?}", ended[2]);
    assert_eq!(ended[2].result.as_deref(), Some(&b"5"[..]));
    // One outcome each: asked again later, every report is the same.
    std::thread::sleep(Duration::from_millis(500));
    for before in &ended {
        let after = rt.block_on(client.status(before.task_id)).unwrap();
        assert_eq!(
            (after.state, after.finished_ms, after.attempts),
            (before.state, before.finished_ms, before.attempts)
        );
    }
    drop(subworker);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_retry_waiting_at_the_crash_runs_at_its_time_after_the_restart_and_counts_its_runs() {
    let (dir, state_dir, address) = durable_place();
    let flags = ["--state-dir", state_dir.as_str()];
    let mut cp = control_plane_at(&address, &flags);
    let rt = runtime();
    let task_id = TaskId::new_v4();
    // Long enough that a kill -9 and a restart with its worker processes, on
    // a loaded machine, end before the retry is due.
    let retry = RetryPolicy { max_retries: 2, delay_ms: 5000, factor: 1.0, max_delay_ms: 5000 };
    rt.block_on(cp.client().delay("flaky", (1,), SubmitOptions { retry: Some(retry), ..with_id(task_id) })).unwrap();
    let retrying = report_when(&cp, task_id, Duration::from_secs(10), |r| r.state == TaskState::Retrying);
    assert_eq!(retrying.attempts, 1);
    // The state reads `retrying` before it is on disk (one group commit
    // later); a blocking call's answer waits for its own commit, which
    // comes after: once answered, the retry's time is stored.
    let barrier: i64 = rt.block_on(cp.client().call("add", (1, 2))).unwrap();
    assert_eq!(barrier, 3);
    kill_9(&mut cp);
    let cp = control_plane_at(&address, &flags);
    assert_eq!(rt.block_on(cp.client().status(task_id)).unwrap().state, TaskState::Retrying);
    let report = report_when(&cp, task_id, Duration::from_secs(30), |r| r.state.is_final());
    // flaky returns the run number it succeeded on: the second.
    assert_eq!((report.state, report.attempts, report.result.as_deref()), (TaskState::Succeeded, 2, Some(&b"2"[..])));
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_graceful_stop_in_durable_mode_keeps_scheduled_tasks_for_the_restart() {
    let (dir, state_dir, address) = durable_place();
    let flags = ["--state-dir", state_dir.as_str()];
    let mut cp = control_plane_at(&address, &flags);
    let rt = runtime();
    let task_id = TaskId::new_v4();
    let countdown = SubmitOptions { countdown: Some(Duration::from_secs(2)), ..with_id(task_id) };
    rt.block_on(cp.client().delay("add", (20, 22), countdown)).unwrap();
    cp.signal("TERM");
    assert_eq!(cp.wait_exit(Duration::from_secs(20)), Some(0), "{}", cp.log());
    let cp = control_plane_at(&address, &flags);
    let report = report_when(&cp, task_id, Duration::from_secs(20), |r| r.state.is_final());
    assert_eq!((report.state, report.result.as_deref()), (TaskState::Succeeded, Some(&b"42"[..])));
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_state_dir_nothing_survives_a_restart() {
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    let mut cp = control_plane_at(&address, &[]);
    let rt = runtime();
    let report = rt.block_on(cp.client().submit("add", (1, 1), SubmitOptions::default())).unwrap();
    kill_9(&mut cp);
    let cp = control_plane_at(&address, &[]);
    let status = rt.block_on(cp.client().status(report.task_id));
    assert!(matches!(status, Err(ClientError::Refused(ref r)) if r.kind == ErrorKind::UnknownTaskId), "{status:?}");
}

/// Runs a control plane on `state_dir` that should refuse to start.
fn refused_start(state_dir: &Path) -> (Option<i32>, String) {
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    let output = run_cli(&[
        "control-plane",
        "--base-address",
        &address,
        "--no-gui",
        "--no-discovery",
        "--state-dir",
        &state_dir.display().to_string(),
    ]);
    (output.status.code(), stderr(&output))
}

#[test]
fn a_state_dir_that_cannot_be_used_stops_the_start_with_a_clear_message() {
    let dir = temp_dir("bad-state");
    // Not a store at all.
    std::fs::write(dir.join("fastworker-state.redb"), b"this is not a fastworker state store").unwrap();
    let (code, log) = refused_start(&dir);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--state-dir") && log.contains("cannot be used"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // A file where the directory should be.
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let (code, log) = refused_start(&file);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--state-dir") && !log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_outcome_shown_by_status_is_on_disk_so_a_crash_right_after_cannot_take_it_back() {
    let (dir, state_dir, address) = durable_place();
    let flags = ["--state-dir", state_dir.as_str()];
    let rt = runtime();
    let mut cp = control_plane_at(&address, &flags);
    for round in 0..5 {
        let client = cp.client();
        let task_id = TaskId::new_v4();
        rt.block_on(client.delay("sleep_ms", (20,), with_id(task_id))).unwrap();
        // Polled as fast as it answers, and killed the moment it shows an end:
        // the end must have been on disk already.
        let shown = loop {
            let report = rt.block_on(client.status(task_id)).unwrap();
            if report.state.is_final() {
                break report;
            }
        };
        kill_9(&mut cp);
        cp = control_plane_at(&address, &flags);
        let after = rt.block_on(cp.client().status(task_id)).unwrap();
        assert_eq!(
            (after.state, after.attempts, after.result.as_deref()),
            (shown.state, shown.attempts, shown.result.as_deref()),
            "round {round}: status showed {shown:?} before the crash, and {after:?} after the restart"
        );
    }
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// How a start on a damaged copy of a store went.
enum DamagedStart {
    /// Refused with exit 2, naming the store file.
    Refused,
    /// Started with every task as it was.
    Intact,
}

/// Starts a control plane on `dir` (holding a damaged copy of a store whose
/// tasks are `known`) and checks the one acceptable outcome it reached:
/// refused with exit 2, naming the store file and what to do, or started
/// with every task as it was. Never a panic, a hang or an empty start.
fn start_on_damaged(dir: &Path, what: &str, known: &[(TaskId, TaskState)]) -> DamagedStart {
    let rt = runtime();
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    let state_dir = dir.display().to_string();
    let args: Vec<String> =
        ["control-plane", "--base-address", &address, "--no-gui", "--no-discovery", "--state-dir", &state_dir]
            .iter()
            .map(|s| s.to_string())
            .chain(["--task-modules".to_string(), plugin("example-tasks").display().to_string()])
            .collect();
    let mut cp = Process::spawn(&args, &[], address);
    if cp.wait_ready(Duration::from_secs(20)).is_ok() {
        let client = cp.client();
        for (task_id, state) in known {
            let report = rt.block_on(client.status(*task_id));
            let found = report.as_ref().map(|r| r.state).ok();
            assert_eq!(found, Some(*state), "{what}: started, but task {task_id} is {report:?}\n{}", cp.log());
        }
        return DamagedStart::Intact;
    }
    let code = cp.wait_exit(Duration::from_secs(10));
    let log = cp.log();
    let file = dir.join("fastworker-state.redb").display().to_string();
    assert_eq!(code, Some(2), "{what}: neither started nor refused with exit 2 (a hang or a panic):\n{log}");
    assert!(log.contains(&file) && log.contains("move it aside"), "{what}: the refusal does not name {file}:\n{log}");
    assert!(!log.contains("panicked"), "{what}: {log}");
    DamagedStart::Refused
}

#[test]
fn a_damaged_truncated_or_empty_store_is_refused_with_its_path_and_never_starts_empty() {
    let (dir, state_dir, address) = durable_place();
    let rt = runtime();
    let mut cp = control_plane_at(&address, &["--state-dir", state_dir.as_str()]);
    let client = cp.client();
    let mut known = Vec::new();
    for i in 0..40u32 {
        let task_id = TaskId::new_v4();
        if i % 2 == 0 {
            let later = SubmitOptions { countdown: Some(Duration::from_secs(3600)), ..with_id(task_id) };
            rt.block_on(client.delay("add", (i, i), later)).unwrap();
            known.push((task_id, TaskState::Scheduled));
        } else {
            rt.block_on(client.submit("add", (i, i), with_id(task_id))).unwrap();
            known.push((task_id, TaskState::Succeeded));
        }
    }
    cp.signal("TERM");
    assert_eq!(cp.wait_exit(Duration::from_secs(20)), Some(0), "{}", cp.log());
    let store = std::fs::read(dir.join("fastworker-state.redb")).unwrap();
    let len = store.len();
    assert!(len > 4096, "a store of {len} bytes");

    let mut damaged: Vec<(String, Vec<u8>)> = vec![("an empty file".into(), Vec::new())];
    for cut in [1, 64, 511, 4096, len / 4, len / 2, len - 4096, len - 1] {
        damaged.push((format!("truncated to {cut} of {len} bytes"), store[..cut].to_vec()));
    }
    // Flipped bytes spread over the file, half of them where it holds data
    // (most of a small store is free space).
    let used: Vec<usize> = (0..len).filter(|&at| store[at] != 0).collect();
    let mut offsets: Vec<usize> = (0..10).map(|i| i * len / 10 + 7).collect();
    offsets.extend((0..10).map(|i| used[i * used.len() / 10 + used.len() / 20]));
    offsets.extend([0, 9, 40, 100]);
    for at in offsets {
        let mut copy = store.clone();
        copy[at] ^= 0x5a;
        damaged.push((format!("byte {at} of {len} flipped"), copy));
    }
    let mut intact = Vec::new();
    for (what, bytes) in &damaged {
        let copy = temp_dir("damaged-state");
        std::fs::write(copy.join("fastworker-state.redb"), bytes).unwrap();
        let start = start_on_damaged(&copy, what, &known);
        assert!(!bytes.is_empty() || matches!(start, DamagedStart::Refused), "an empty store must be refused");
        if matches!(start, DamagedStart::Intact) {
            intact.push(what.as_str());
        }
        let _ = std::fs::remove_dir_all(&copy);
    }
    eprintln!("{} damaged stores, {} refused; started intact: {intact:?}", damaged.len(), damaged.len() - intact.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tasks known before a crash: scheduled an hour ahead (so they stay as
/// they are) and finished ones, with their reports.
struct Known {
    scheduled: Vec<TaskId>,
    finished: Vec<TaskReport>,
}

/// Submits `count` tasks of each kind, one at a time, each acknowledged
/// (a scheduled one once it is on disk, a finished one with its outcome).
fn submit_known(cp: &Process, count: u32) -> Known {
    let rt = runtime();
    let client = cp.client();
    let mut known = Known { scheduled: Vec::new(), finished: Vec::new() };
    for i in 0..count {
        let task_id = TaskId::new_v4();
        let later = SubmitOptions { countdown: Some(Duration::from_secs(3600)), ..with_id(task_id) };
        rt.block_on(client.delay("add", (i, i), later)).unwrap();
        known.scheduled.push(task_id);
        known.finished.push(rt.block_on(client.submit("add", (i, 1), with_id(TaskId::new_v4()))).unwrap());
    }
    known
}

/// Checks that every known task is as it was before the crash.
fn assert_known(cp: &Process, known: &Known, what: &str) {
    let rt = runtime();
    let client = cp.client();
    for task_id in &known.scheduled {
        let report = rt.block_on(client.status(*task_id));
        let state = report.as_ref().map(|r| r.state).ok();
        assert_eq!(state, Some(TaskState::Scheduled), "{what}: task {task_id} is {report:?}\n{}", cp.log());
    }
    for before in &known.finished {
        let after = rt.block_on(client.status(before.task_id)).unwrap();
        assert_eq!(
            (after.state, after.finished_ms, &after.result),
            (before.state, before.finished_ms, &before.result),
            "{what}"
        );
    }
}

#[test]
fn a_kill_between_the_log_and_its_checkpoint_loses_nothing_acknowledged() {
    let (dir, state_dir, address) = durable_place();
    let flags = ["--state-dir", state_dir.as_str()];
    let mut cp = control_plane_at(&address, &flags);
    let known = submit_known(&cp, 150);
    // Killed right after the last acknowledgement: what was acknowledged
    // since the start's checkpoint is in the log alone (the next checkpoint
    // is 30 s or 4 MiB of log away).
    kill_9(&mut cp);
    let log = std::fs::read(dir.join("fastworker-state.log")).unwrap();
    assert!(log.len() >= 1 << 20, "the log is preallocated: {} bytes", log.len());
    let mut cp = control_plane_at(&address, &flags);
    assert!(
        cp.log().contains("replayed the log into the store"),
        "the kill did not fall before a checkpoint:\n{}",
        cp.log()
    );
    assert_known(&cp, &known, "after the kill");
    // Each has one outcome: a resubmission answers the recorded one.
    let rt = runtime();
    let again = rt.block_on(cp.client().submit("add", (0, 1), with_id(known.finished[0].task_id))).unwrap();
    assert_eq!(again.finished_ms, known.finished[0].finished_ms, "not run again: {again:?}");
    // Killed again right after the replay, and stopped gracefully: the same.
    kill_9(&mut cp);
    let mut cp = control_plane_at(&address, &flags);
    assert_known(&cp, &known, "after a second kill");
    cp.signal("TERM");
    assert_eq!(cp.wait_exit(Duration::from_secs(20)), Some(0), "{}", cp.log());
    let cp = control_plane_at(&address, &flags);
    assert_known(&cp, &known, "after a graceful stop");
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where the log's frames end: after its 32-byte header, frames of
/// `len: u32 LE | generation: u64 LE | crc32: u32 LE | payload`, then zeros.
fn log_tail(log: &[u8]) -> usize {
    let mut at = 32;
    while at + 16 <= log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        at += 16 + len;
    }
    at
}

#[test]
fn a_torn_or_garbage_log_tail_is_ignored_with_a_message_and_a_foreign_log_is_refused() {
    let (dir, state_dir, address) = durable_place();
    let mut cp = control_plane_at(&address, &["--state-dir", state_dir.as_str()]);
    let known = submit_known(&cp, 20);
    kill_9(&mut cp);
    let store = std::fs::read(dir.join("fastworker-state.redb")).unwrap();
    let log = std::fs::read(dir.join("fastworker-state.log")).unwrap();
    let tail = log_tail(&log);
    assert!(tail > 32 && tail < log.len(), "frames end at {tail} of {}", log.len());
    let mut garbage: Vec<u8> = (0..64).flat_map(|_| *TaskId::new_v4().as_bytes()).collect();
    // A frame header claiming the most a length may say, of the current generation.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&log[36..44]);
    // The last frame again, one byte of it flipped (a torn rewrite).
    let last = {
        let (mut start, mut at) = (32, 32);
        while at < tail {
            start = at;
            at += 16 + u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        }
        let mut frame = log[start..tail].to_vec();
        let middle = frame.len() / 2;
        frame[middle] ^= 0x10;
        frame
    };
    garbage.truncate(1000);
    let tails: [(&str, &[u8]); 3] =
        [("random bytes", &garbage), ("a huge length", &huge), ("a frame that fails its checksum", &last)];
    for (what, bytes) in tails {
        let copy = temp_dir("torn-log");
        std::fs::write(copy.join("fastworker-state.redb"), &store).unwrap();
        let mut torn = log.clone();
        torn[tail..tail + bytes.len()].copy_from_slice(bytes);
        std::fs::write(copy.join("fastworker-state.log"), &torn).unwrap();
        let address = format!("tcp://127.0.0.1:{}", free_base_port());
        let cp = control_plane_at(&address, &["--state-dir", &copy.display().to_string()]);
        assert!(cp.log().contains("the log's end was ignored"), "{what}: not said:\n{}", cp.log());
        assert_known(&cp, &known, what);
        drop(cp);
        let _ = std::fs::remove_dir_all(&copy);
    }
    // A log that is not one (its header overwritten) is refused, never
    // taken for an empty one: what it holds was acknowledged.
    let copy = temp_dir("foreign-log");
    std::fs::write(copy.join("fastworker-state.redb"), &store).unwrap();
    let mut foreign = log.clone();
    foreign[..16].copy_from_slice(b"not a log at all");
    std::fs::write(copy.join("fastworker-state.log"), &foreign).unwrap();
    let (code, message) = refused_start(&copy);
    assert_eq!(code, Some(2), "{message}");
    let file = copy.join("fastworker-state.log").display().to_string();
    assert!(message.contains(&file) && message.contains("move the log aside"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    let _ = std::fs::remove_dir_all(&copy);
    let _ = std::fs::remove_dir_all(&dir);
}
