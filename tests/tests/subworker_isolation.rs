//! Crash isolation on a subworker (docs/isolation.md): `fastworker
//! subworker` runs its tasks in worker processes it supervises, so a task
//! that kills its process costs that worker process, never the subworker,
//! and is never handed to the control plane's own process.
//!
//! For each kind of crash, with the task provided by a subworker only: the
//! subworker stays up (same pid, still registered and active), a
//! bystander's call on it is answered within 1 s of the crash, and the task
//! fails `Crashed` after `--max-task-crashes` (2), having run on the
//! subworker only.
//!
//! Every test starts its own processes on ports of its own.

use std::time::{Duration, Instant};

use fastworker::protocol::{FailureKind, WorkerState};
use fastworker::{Client, SubmitOptions, TaskState};
use fastworker_tests::{runtime, wait_until, Process};

/// No arguments, as a JSON array.
const NO_ARGS: [u8; 0] = [];

/// The bystander's call: `echo_back` answered (only the subworker provides
/// it), and how long it took.
fn bystander(rt: &tokio::runtime::Runtime, client: &Client) -> Duration {
    let started = Instant::now();
    let answer: String = rt.block_on(client.call("echo_back", ("still here",))).expect("the bystander's call");
    assert_eq!(answer, "still here");
    started.elapsed()
}

fn crashes_one_worker_process_of_a_subworker(task: &str, how: &[&str]) {
    // The control plane loads no plugin: it can run nothing itself.
    let cp = Process::control_plane(&[], &[]);
    let mut sw = Process::subworker(&cp, "sw-1", &["crash-tasks"], &["--concurrency", "2"]);
    let pid = sw.pid();
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    // Its worker processes serve.
    assert!(bystander(&rt, &client) < Duration::from_secs(20), "{}", sw.log());
    assert!(sw.log().contains("tasks run in 2 worker processes"), "{}", sw.log());
    let task_id = rt.block_on(client.delay(task, NO_ARGS, SubmitOptions::default())).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || sw.log().contains("worker process died")
            || sw.log().contains("task failed as Crashed")),
        "no crash of a worker process seen:\n{}",
        sw.log()
    );
    let waited = bystander(&rt, &client);
    assert!(waited < Duration::from_secs(1), "the bystander waited {waited:?} after a crash");
    let report = rt.block_on(client.wait(task_id, Duration::from_secs(30))).unwrap();
    assert_eq!(report.state, TaskState::Failed, "{report:?}\n{}", sw.log());
    let error = report.error.expect("a failed task's error");
    assert_eq!(error.kind, FailureKind::Crashed, "{error:?}\n{}", sw.log());
    assert!(error.message.contains("2 times"), "{}", error.message);
    assert!(how.iter().any(|h| error.message.contains(h)), "expected one of {how:?} in: {}", error.message);
    assert_eq!(report.worker, "sw-1", "it ran on the subworker only");
    // The subworker is the same process, still registered and active.
    assert!(sw.is_running(), "the subworker died:\n{}", sw.log());
    assert_eq!(sw.pid(), pid);
    assert_eq!(cp.worker("sw-1").map(|w| w.status), Some(WorkerState::Active), "{:?}", cp.workers());
    // And it serves on, with its worker processes restarted.
    assert!(bystander(&rt, &client) < Duration::from_secs(5));
    assert!(sw.is_running());
}

#[test]
fn an_aborting_task_costs_a_subworker_one_worker_process() {
    crashes_one_worker_process_of_a_subworker("abort_now", &["SIGABRT"]);
}

#[test]
fn a_null_write_costs_a_subworker_one_worker_process() {
    crashes_one_worker_process_of_a_subworker("segfault", &["SIGSEGV"]);
}

#[test]
fn an_exit_costs_a_subworker_one_worker_process() {
    crashes_one_worker_process_of_a_subworker("exit_now", &["exit status 3"]);
}

#[test]
fn a_stack_overflow_costs_a_subworker_one_worker_process() {
    crashes_one_worker_process_of_a_subworker("overflow_stack", &["SIGABRT", "SIGSEGV"]);
}

#[test]
fn a_double_panic_costs_a_subworker_one_worker_process() {
    crashes_one_worker_process_of_a_subworker("double_panic", &["SIGABRT"]);
}

/// `--in-process` keeps a subworker's tasks on its own threads: the crash
/// then costs the whole subworker (the documented risk).
#[test]
fn an_in_process_subworker_dies_with_its_task() {
    let mut cp = Process::control_plane(&[], &[]);
    let mut sw = Process::subworker(&cp, "sw-1", &["crash-tasks"], &["--concurrency", "1", "--in-process"]);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    assert!(bystander(&rt, &client) < Duration::from_secs(20));
    let _ = rt.block_on(client.delay("abort_now", NO_ARGS, SubmitOptions::default())).unwrap();
    assert!(wait_until(Duration::from_secs(20), || !sw.is_running()), "{}", sw.log());
    assert!(cp.is_running());
}
