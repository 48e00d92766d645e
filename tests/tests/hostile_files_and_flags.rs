//! Hostile or broken input from the operator's side: plugin files that are
//! not whole, and flags whose values would crash, hang or exhaust a process.
//! Each is refused with exit status 2 and one line naming what is wrong,
//! before anything is mapped, bound or started.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fastworker_tests::{
    fastworker_bin, free_base_port, free_ports, output_within, plugin, run_cli, stderr, Process, CLI_LIMIT,
};

/// How long a refused command may take to exit.
const REFUSAL_LIMIT: Duration = Duration::from_secs(10);

/// A fresh directory of its own for one test's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("fastworker-hostile-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&path).expect("creating a temp dir");
        TempDir(path)
    }

    /// Writes `bytes` to `name` in this directory; its path as text.
    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("writing a test file");
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The example plugin's bytes, as built from this workspace.
fn example_plugin_bytes() -> Vec<u8> {
    std::fs::read(plugin("example-tasks")).expect("reading the example plugin")
}

/// Spawns `fastworker ARGS` and asserts it exits with status 2 within
/// [`REFUSAL_LIMIT`] (a process still running is killed when the guard
/// drops, and the test fails); its standard error.
fn refused_at_start(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut process = Process::spawn(&args, &[], String::new());
    let started = Instant::now();
    let code = process.wait_exit(REFUSAL_LIMIT);
    let log = process.log();
    assert_eq!(
        code,
        Some(2),
        "fastworker {args:?} was not refused (exit {code:?} after {:?}):\n{log}",
        started.elapsed()
    );
    log
}

/// `control-plane` with `extra` flags on free ports, no dashboard and no
/// announcements, so that a flag wrongly accepted disturbs no other test.
fn control_plane_args(extra: &[&str]) -> Vec<String> {
    let address = format!("tcp://127.0.0.1:{}", free_base_port());
    let mut args: Vec<String> = ["control-plane", "--no-gui", "--no-discovery", "--base-address", &address]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Asserts `list` and `control-plane` both refuse the plugin at `path` with
/// exit status 2 and every one of `expected` in their message.
fn plugin_refused(path: &str, expected: &[&str]) {
    let output = run_cli(&["list", "--task-modules", path]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "list did not refuse {path} (status {}): {message}", output.status);
    assert_eq!(message.lines().count(), 1, "not one line: {message}");
    for fragment in expected.iter().chain(&[path]) {
        assert!(message.contains(fragment), "'{fragment}' not in: {message}");
    }

    let args = control_plane_args(&["--task-modules", path]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = refused_at_start(&args);
    for fragment in expected.iter().chain(&[path]) {
        assert!(log.contains(fragment), "'{fragment}' not in: {log}");
    }
}

/// Where the furthest loadable segment of a 64-bit little-endian ELF file
/// ends, read from its program headers: a fixture for the test below (the
/// host checks files with the `object` crate).
fn end_of_loaded_bytes(elf: &[u8]) -> u64 {
    assert_eq!(&elf[..6], b"\x7fELF\x02\x01", "a 64-bit little-endian ELF file");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let (table, entry_size, entries) = (u64_at(32) as usize, u16_at(54), u16_at(56));
    (0..entries)
        .map(|i| table + i * entry_size)
        .filter(|&header| u32_at(header) == 1) // PT_LOAD
        .map(|header| u64_at(header + 8) + u64_at(header + 32)) // p_offset + p_filesz
        .max()
        .expect("a loadable segment")
}

#[test]
#[cfg(target_os = "linux")]
fn the_first_4_kib_of_a_plugin_are_refused_not_mapped() {
    let dir = TempDir::new();
    let path = dir.write("libtruncated.so", &example_plugin_bytes()[..4096]);
    plugin_refused(
        &path,
        &[
            "not a whole shared library",
            "program header",
            "4096-byte file",
            "rebuild the plugin",
            "truncated or corrupt",
        ],
    );
}

#[test]
#[cfg(target_os = "linux")]
fn a_plugin_whose_last_segment_runs_past_its_end_is_refused() {
    let dir = TempDir::new();
    let bytes = example_plugin_bytes();
    // One byte short of the last loadable segment: every header is there,
    // one program header points beyond the end.
    let end = end_of_loaded_bytes(&bytes) as usize;
    assert!(end < bytes.len(), "the segments end inside the file");
    let path = dir.write("libcut.so", &bytes[..end - 1]);
    plugin_refused(&path, &["program header", "(LOAD)", &format!("{}-byte file", end - 1), "rebuild the plugin"]);
}

#[test]
#[cfg(target_os = "linux")]
fn a_plugin_cut_to_90_percent_is_refused() {
    let dir = TempDir::new();
    let bytes = example_plugin_bytes();
    let path = dir.write("libninety.so", &bytes[..bytes.len() * 9 / 10]);
    // Its segments may all be whole (debug sections come last), but the
    // section header table at its very end is not.
    plugin_refused(&path, &["not a whole shared library", "truncated or corrupt"]);
}

#[test]
#[cfg(target_os = "linux")]
fn an_empty_plugin_file_is_refused() {
    let dir = TempDir::new();
    let path = dir.write("libempty.so", b"");
    plugin_refused(&path, &["the file is empty", "truncated or corrupt"]);
}

#[test]
#[cfg(target_os = "linux")]
fn a_whole_copy_of_the_plugin_still_loads() {
    // The checks refuse what is broken, not what was copied.
    let dir = TempDir::new();
    let path = dir.write("libcopy.so", &example_plugin_bytes());
    let output = run_cli(&["list", "--task-modules", &path]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn limit_flags_out_of_range_are_refused_at_start() {
    let cases: &[(&[&str], &str)] = &[
        (&["--concurrency", "100000"], "--concurrency"),
        (&["--contexts-per-port", "10000000"], "--contexts-per-port"),
        (&["--max-frame-bytes", "0"], "--max-frame-bytes"),
        (&["--max-queued-tasks", "0"], "--max-queued-tasks"),
        (&["--reply-timeout=-1"], "--reply-timeout"),
        (&["--reply-timeout", "nan"], "--reply-timeout"),
        (&["--min-schedule-period", "0"], "--min-schedule-period"),
    ];
    for (flags, flag) in cases {
        let args = control_plane_args(flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = refused_at_start(&args);
        assert!(log.contains(flag), "{flags:?}: '{flag}' not in: {log}");
        assert!(log.contains("invalid value"), "{flags:?}: {log}");
    }
    // The negative number as a separate word is not taken as a value at all.
    let args = control_plane_args(&["--reply-timeout", "-1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_at_start(&args);
}

/// `fastworker submit` to a port nothing listens on, with `extra` flags;
/// its exit status and standard error. Values that pass the command line
/// end with status 3 (no answer) after at most `--timeout`.
fn submit(extra: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let address = format!("tcp://127.0.0.1:{}", free_ports(6));
    let mut command = Command::new(fastworker_bin());
    command.args(["submit", "--task-name", "add", "--args", "1", "2", "--address", &address]).args(extra);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = output_within(command, CLI_LIMIT);
    (output.status.code(), stderr(&output))
}

#[test]
fn client_seconds_flags_out_of_range_are_refused_not_panicking() {
    let cases: &[(&[&str], &str)] = &[
        (&["--timeout", "1e20"], "--timeout"),
        (&["--timeout", "0"], "--timeout"),
        (&["--timeout", "-1"], "--timeout"),
        (&["--timeout", "inf"], "--timeout"),
        (&["--timeout", "400000000"], "--timeout"),
        (&["--countdown", "1e300"], "--countdown"),
        (&["--countdown", "-1"], "--countdown"),
        (&["--task-timeout", "-5"], "--task-timeout"),
        (&["--task-timeout", "1e20"], "--task-timeout"),
        (&["--retries", "1", "--retry-delay", "nan"], "--retry-delay"),
        (&["--retries", "1", "--retry-max-delay", "inf"], "--retry-max-delay"),
        (&["--retries", "1", "--retry-max-delay", "1e19"], "--retry-max-delay"),
    ];
    for (flags, flag) in cases {
        let (code, message) = submit(flags, &[]);
        assert_eq!(code, Some(2), "{flags:?} was not refused: {message}");
        assert!(message.contains(flag) && message.contains("out of range"), "{flags:?}: {message}");
        assert!(!message.contains("panicked"), "{flags:?}: {message}");
    }

    let (code, message) = submit(&["--retries", "10001"], &[]);
    assert_eq!(code, Some(2), "--retries 10001 was not refused: {message}");
    assert!(message.contains("--retries") && message.contains("10000"), "{message}");

    let (code, message) = submit(&[], &[("FASTWORKER_TIMEOUT", "1e20")]);
    assert_eq!(code, Some(2), "FASTWORKER_TIMEOUT=1e20 was not refused: {message}");
    assert!(message.contains("--timeout"), "{message}");

    // The other client commands share --timeout.
    let output = run_cli(&["workers", "--address", "tcp://127.0.0.1:1", "--timeout", "1e20"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    // Values in range pass the command line: nothing answers, so exit 3.
    let in_range = ["--timeout", "0.3", "--countdown", "0", "--task-timeout", "0", "--retries", "10000"];
    let (code, message) =
        submit(&[&in_range[..], &["--retry-delay", "0.5", "--retry-max-delay", "315360000"]].concat(), &[]);
    assert_eq!(code, Some(3), "in-range values were refused: {message}");
}

/// A subworker with `worker_id`, for a control plane that is not there.
fn subworker_args(worker_id: &str) -> Vec<String> {
    let example = plugin("example-tasks").display().to_string();
    let control_plane = format!("tcp://127.0.0.1:{}", free_base_port());
    let base = format!("tcp://127.0.0.1:{}", free_ports(4));
    ["subworker", "--worker-id", worker_id, "--control-plane-address", &control_plane]
        .iter()
        .chain(&["--base-address", &base, "--task-modules", &example])
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn bad_worker_ids_are_refused_by_subworker_and_control_plane() {
    let too_long = "w".repeat(fastworker::bounds::MAX_NAME_BYTES + 1);
    let cases = [
        ("", "cannot be empty"),
        (too_long.as_str(), "at most 128 bytes"),
        ("two words", "whitespace"),
        ("tab\there", "whitespace"),
        ("line\nbreak", "whitespace"),
        ("bell\u{7}", "control"),
    ];
    for (id, expected) in cases {
        let args = subworker_args(id);
        let log = refused_at_start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(log.contains("--worker-id") && log.contains(expected), "subworker {id:?}: {log}");

        let args = control_plane_args(&["--worker-id", id]);
        let log = refused_at_start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(log.contains("--worker-id") && log.contains(expected), "control plane {id:?}: {log}");
    }
}

#[test]
fn a_worker_id_of_the_longest_length_is_accepted() {
    let longest = |c: &str| c.repeat(fastworker::bounds::MAX_NAME_BYTES);
    let control_plane = Process::control_plane(&["example-tasks"], &["--worker-id", &longest("c"), "--no-discovery"]);
    // Waits until the control plane lists it as active under that id.
    Process::subworker(&control_plane, &longest("s"), &["example-tasks"], &[]);
}

/// The hidden `--run-log-fd` a supervisor hands its worker processes: typed
/// by hand it names no pipe, and the subworker refuses it rather than write
/// binary records to its terminal or a closed descriptor.
#[test]
fn a_run_log_fd_typed_by_hand_is_refused() {
    for fd in ["0", "1", "2", "999"] {
        let mut args = subworker_args("by-hand");
        args.extend(["--in-process", "--run-log-fd", fd].map(String::from));
        let log = refused_at_start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(log.contains("--run-log-fd") && log.contains("not by hand"), "fd {fd}: {log}");
    }
}

/// The hidden `--link-fd` (a worker process's end of its link): typed by
/// hand it names no socket pair, and the subworker refuses it.
#[test]
fn a_link_fd_typed_by_hand_is_refused() {
    for (fd, why) in [("0", "standard"), ("2", "standard"), ("999", "not open")] {
        let mut args = subworker_args("by-hand");
        args.extend(["--in-process", "--link-fd", fd].map(String::from));
        let log = refused_at_start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(log.contains("--link-fd") && log.contains(why) && log.contains("not by hand"), "fd {fd}: {log}");
    }
}
