//! NNG's thread settings (`FASTWORKER_NNG_*`, docs/deploy.md): a bad value
//! stops any command before it opens a socket, naming the variable; a good
//! one is what the running process has, counted by thread name.

use std::process::Command;
use std::time::Duration;

use fastworker::wire::nng_threads::{NngThreads, Threads};
use fastworker_tests::{fastworker_bin, output_within, plugin, runtime, stderr, stdout, Process};

const TASK: &str = "FASTWORKER_NNG_TASK_THREADS";
const EXPIRE: &str = "FASTWORKER_NNG_EXPIRE_THREADS";
const RESOLVER: &str = "FASTWORKER_NNG_RESOLVER_THREADS";

/// NNG's threads in process `pid`: (task, expire, resolver), from their names.
fn nng_threads_of(pid: u32) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        match std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim() {
            "nng:task" => counts.0 += 1,
            "nng:aio:expire" => counts.1 += 1,
            "nng:resolver" => counts.2 += 1,
            _ => {}
        }
    }
    counts
}

#[test]
fn a_bad_thread_count_stops_every_command_naming_the_variable() {
    let plugin = plugin("example-tasks").display().to_string();
    for (variable, value) in
        [(TASK, "1"), (TASK, "65"), (TASK, "many"), (EXPIRE, "0"), (EXPIRE, "-3"), (RESOLVER, "1e3"), (RESOLVER, "")]
    {
        for command in [
            vec!["control-plane", "--no-gui", "--no-discovery", "--in-process", "--task-modules", &plugin],
            // A client command: refused before it dials anything.
            vec!["submit", "--address", "tcp://127.0.0.1:9", "--task-name", "add", "--args", "1", "2"],
        ] {
            let mut run = Command::new(fastworker_bin());
            run.args(&command).env_remove(TASK).env_remove(EXPIRE).env_remove(RESOLVER).env(variable, value);
            let output = output_within(run, Duration::from_secs(60));
            let text = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{variable}={value:?} {command:?}: {text}");
            assert!(text.contains(variable) && text.contains(&format!("{value:?}")), "{variable}={value:?}: {text}");
            assert!(text.contains("whole number from"), "the error says what to give: {text}");
            assert!(stdout(&output).is_empty(), "{command:?} ran: {}", stdout(&output));
        }
    }
}

#[test]
fn help_names_the_variables() {
    let mut run = Command::new(fastworker_bin());
    run.arg("--help");
    let help = stdout(&output_within(run, Duration::from_secs(30)));
    for variable in [TASK, EXPIRE, RESOLVER] {
        assert!(help.contains(&format!("  {variable} ")), "--help does not name {variable}:\n{help}");
    }
}

#[test]
fn good_thread_counts_are_the_ones_the_process_runs_and_it_serves() {
    let rt = runtime();
    // Counts set by hand, and NNG's own choice for the resolver.
    let env = [(TASK, "3"), (EXPIRE, "2"), (RESOLVER, "nng")];
    let cp = Process::control_plane_with_env(&["example-tasks"], &["--in-process"], &env);
    let sum: i64 = rt.block_on(cp.client().call("add", (40, 2))).expect("add answered");
    assert_eq!(sum, 42);
    let (task, expire, resolver) = nng_threads_of(cp.pid());
    assert_eq!((task, expire), (3, 2), "{}", cp.log());
    // NNG's own resolver count as compiled (NNG_RESOLV_CONCURRENCY 4, nng-sys/build.rs).
    assert_eq!(resolver, 4);
    drop(cp);

    // None set: the defaults for this machine's cores (host/src/wire/nng_threads.rs):
    // one task thread per core (2 to 16); NNG's own expire (one per core
    // up to 8) and resolver (4) threads.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ours = NngThreads::ours(cores);
    assert_eq!((ours.expire, ours.resolver), (Threads::Nng, Threads::Nng));
    let cp = Process::control_plane_with_env(&["example-tasks"], &["--in-process"], &[]);
    let sum: i64 = rt.block_on(cp.client().call("add", (1, 2))).expect("add answered");
    assert_eq!(sum, 3);
    let counted = nng_threads_of(cp.pid());
    let expected = (cores.clamp(2, 16), cores.clamp(1, 8), 4);
    assert_eq!(counted, expected, "{}", cp.log());
    assert_eq!(ours.task, Threads::Count(expected.0 as u64));
}
