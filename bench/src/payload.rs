//! The payload row: `echo` of a 1 MiB string (so 1 MiB of arguments and
//! 1 MiB of result), one call at a time, on a control plane running it
//! itself (`cp-payload-1MiB`), against the plain TCP echo moving the same
//! bytes each way (`tcp-payload-1MiB`: a 4-byte length prefix and a 1 MiB
//! body, sent and echoed). Each call's text differs and every echo is checked.
//!
//! `--payload-only` ([`run`]) measures it alone, on both paths a call can
//! take: `cp-payload` runs `echo` on the control plane's own threads
//! (`--in-process`, as the table's row does), `cp-isolated-payload` in a
//! worker process (the default mode, one more hop each way); with
//! `FASTWORKER_BENCH_BASELINE=DIR`, the same two on the build in DIR (in
//! the order this build, DIR's, DIR's, this build, half the time each,
//! merged); the TCP echo before and after them, merged. Each row also says the CPU
//! time per round trip of this process (the client's side: making the
//! text, the call, checking the echo) and of the server's processes (the
//! echo server; the control plane and its worker processes), from
//! `/proc` over the measured part: a figure the machine's load moves much
//! less than the rates.

use std::path::Path;
use std::time::{Duration, Instant};

use fastworker::Client;
use tokio::runtime::Runtime;

use crate::args::Settings;
use crate::nng_floor::spawn_echo_child;
use crate::phase::{micros, warmed, Budget, Phase};
use crate::processes::{cpu_time_of, has_worker_processes, start_control_plane, start_isolated_control_plane};
use crate::setup::{free_port, locate_binaries};
use crate::tcp_floor;
use crate::WARMUP;

/// Bytes of the arguments (and of the result) of each call.
pub(crate) const PAYLOAD: usize = 1 << 20;

/// What the payload row measured: through the control plane, and the TCP floor.
pub(crate) struct PayloadRow {
    pub(crate) cp: Phase,
    pub(crate) tcp: Phase,
}

/// Runs the payload row: the TCP floor first, then the control plane.
pub(crate) fn payload_row(
    settings: &Settings,
    binary: &Path,
    plugin: &Path,
    runtime: &Runtime,
    problems: &mut Vec<String>,
) -> Result<PayloadRow, String> {
    fixed_allocator();
    let tcp_address = format!("tcp://127.0.0.1:{}", free_port()?);
    let mut tcp_server = spawn_echo_child("--tcp-echo-server", &tcp_address)?;
    let tcp = warmed(settings.budget_part(1), |budget| tcp_floor::payload(&tcp_address, PAYLOAD, budget))?;
    tcp_server.stop();
    println!("cp-payload: as cp, echo of a {} KiB string", PAYLOAD >> 10);
    let mut control_plane =
        start_control_plane(binary, "payload control plane", Some(plugin), settings.concurrency, &[])?;
    let client = control_plane.client()?;
    let cp = warmed(settings.budget_part(1), |budget| Ok(runtime.block_on(echo_blocking(&client, budget))))?;
    if let Err(problem) = control_plane.stop() {
        problems.push(problem);
    }
    Ok(PayloadRow { cp, tcp })
}

/// `--payload-only`: the TCP echo, then `echo` of [`PAYLOAD`] bytes on each
/// build and path, then the TCP echo again; one line each, as ratios to TCP.
pub(crate) fn run(settings: &Settings) -> Result<bool, String> {
    fixed_allocator();
    let (binary, plugin) = locate_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    let mut problems = Vec::new();
    let tcp_address = format!("tcp://127.0.0.1:{}", free_port()?);
    let mut tcp_server = spawn_echo_child("--tcp-echo-server", &tcp_address)?;
    let tcp_pid = tcp_server.0.as_ref().map_or(0, std::process::Child::id);
    let tcp_half =
        || costed(settings.budget_part(2), tcp_pid, |budget| tcp_floor::payload(&tcp_address, PAYLOAD, budget));
    let first = tcp_half()?;
    let mut builds = vec![("cp", binary, plugin.clone())];
    if let Some(dir) = std::env::var_os("FASTWORKER_BENCH_BASELINE").map(std::path::PathBuf::from) {
        let base_plugin = dir.join(plugin.file_name().unwrap_or_default());
        builds.push(("cp-base", dir.join("fastworker"), base_plugin));
        // This build, the baseline, the baseline, this build: each half
        // of the time, merged, so that neither gains from coming later
        // (a later row measured up to twice the rate of the same build run
        // first, on a machine whose load moves).
        builds.extend([builds[1].clone(), builds[0].clone()]);
    }
    let budget = || settings.budget_part(if builds.len() > 1 { 2 } else { 1 });
    let mut rows: Vec<(String, (Phase, Cost))> = Vec::new();
    let mut add = |name: String, (phase, cost): (Phase, Cost)| match rows.iter_mut().find(|(row, _)| *row == name) {
        Some((_, (merged, total))) => {
            *merged = std::mem::take(merged).merge(phase);
            *total = total.merge(cost);
        }
        None => rows.push((name, (phase, cost))),
    };
    for (name, binary, plugin) in &builds {
        println!(
            "{name}-payload: {} control-plane --in-process, echo of a {} KiB string",
            binary.display(),
            PAYLOAD >> 10
        );
        let mut control_plane = start_control_plane(
            binary,
            &format!("{name} payload control plane"),
            Some(plugin),
            settings.concurrency,
            &[],
        )?;
        let client = control_plane.client()?;
        let pid = control_plane.process.0.as_ref().map_or(0, std::process::Child::id);
        add(
            format!("{name}-payload"),
            costed(budget(), pid, |budget| Ok(runtime.block_on(echo_blocking(&client, budget))))?,
        );
        if let Err(problem) = control_plane.stop() {
            problems.push(problem);
        }
        if !has_worker_processes(binary) {
            continue;
        }
        println!("{name}-isolated-payload: as {name}-payload, in {} worker processes", settings.concurrency);
        let mut control_plane = start_isolated_control_plane(
            binary,
            &format!("{name} isolated payload control plane"),
            plugin,
            settings.concurrency,
            &[],
        )?;
        let client = control_plane.client()?;
        let pid = control_plane.process.0.as_ref().map_or(0, std::process::Child::id);
        add(
            format!("{name}-isolated-payload"),
            costed(budget(), pid, |budget| Ok(runtime.block_on(echo_blocking(&client, budget))))?,
        );
        if let Err(problem) = control_plane.stop() {
            problems.push(problem);
        }
    }
    let (second, second_cost) = tcp_half()?;
    let tcp = (first.0.merge(second), first.1.merge(second_cost));
    tcp_server.stop();
    println!();
    println!(
        "{:<28} {:>8} {:>12} {:>9} {:>9} {:>8} {:>8} {:>6} {:>7} {:>10} {:>10}",
        "row",
        "replies",
        "round trips/s",
        "p50 (ms)",
        "p99 (ms)",
        "rate/tcp",
        "p50/tcp",
        "wrong",
        "missing",
        "client ms",
        "server ms"
    );
    let ms = |phase: &Phase, p: f64| micros(phase.percentile(p)) / 1000.0;
    let tcp_name = format!("tcp-payload-{}KiB", PAYLOAD >> 10);
    for (name, (phase, cost)) in std::iter::once((tcp_name, &tcp)).chain(rows.iter().map(|(n, p)| (n.clone(), p))) {
        let (client, server) = cost.per_call();
        println!(
            "{:<28} {:>8} {:>12.1} {:>9.2} {:>9.2} {:>8.3} {:>8.2} {:>6} {:>7} {:>10.2} {:>10.2}",
            name,
            phase.latencies.len(),
            phase.rate(),
            ms(phase, 50.0),
            ms(phase, 99.0),
            phase.rate() / tcp.0.rate(),
            ms(phase, 50.0) / ms(&tcp.0, 50.0),
            phase.wrong,
            phase.missing,
            client,
            server
        );
        if let Some(problem) = &phase.first_problem {
            problems.push(format!("{name}: {problem}"));
        }
    }
    for problem in &problems {
        println!("{problem}");
    }
    Ok(problems.is_empty())
}

/// Fixes this process's allocator as the control plane fixes its own
/// (`server/memory.rs`): buffers up to 4 MiB come from the arenas, which
/// keep up to 8 MiB free. With glibc's defaults the client's side of a
/// 1 MiB call (the text, its JSON, the frame, the reply, the result) was
/// mapped, faulted in and given back on each call, until glibc's own
/// threshold had risen past it, which took a while: the rows measured
/// first paid about 2 ms a call more on the client's side than the same
/// build measured later. The TCP rows run under the same allocator.
fn fixed_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call
    // at any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

/// CPU time over a measured phase: this process's (the client's side) and
/// the server's processes' (one, and its children), and the calls made.
#[derive(Clone, Copy, Default)]
struct Cost {
    client: Duration,
    server: Duration,
    calls: u64,
}

impl Cost {
    /// Milliseconds of CPU per call, the client's and the server's (NaN
    /// when /proc did not tell or no call was made).
    fn per_call(&self) -> (f64, f64) {
        let per = |time: Duration| {
            if self.calls == 0 {
                f64::NAN
            } else {
                time.as_secs_f64() * 1000.0 / self.calls as f64
            }
        };
        (per(self.client), per(self.server))
    }

    fn merge(self, other: Cost) -> Cost {
        Cost { client: self.client + other.client, server: self.server + other.server, calls: self.calls + other.calls }
    }
}

/// As [`warmed`], with the CPU time this process and the server process
/// `server` (with its children: worker processes) used in the measured part.
fn costed(
    budget: Budget,
    server: u32,
    phase: impl Fn(Budget) -> Result<Phase, String>,
) -> Result<(Phase, Cost), String> {
    let warm = phase(Budget::time(WARMUP))?;
    let before = (cpu_time_of("self"), tree_cpu_time(server));
    let measured = phase(budget)?;
    let after = (cpu_time_of("self"), tree_cpu_time(server));
    let calls = measured.latencies.len() as u64 + measured.wrong + measured.missing;
    let cost = match (before, after) {
        ((Some(c0), Some(s0)), (Some(c1), Some(s1))) => {
            Cost { client: c1.saturating_sub(c0), server: s1.saturating_sub(s0), calls }
        }
        _ => Cost::default(),
    };
    Ok((measured.after_warmup(warm), cost))
}

/// The CPU time of process `pid` and of its living children, from /proc.
fn tree_cpu_time(pid: u32) -> Option<Duration> {
    let mut total = cpu_time_of(pid)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // The parent's pid is field 4, the second after the command's closing parenthesis.
        let parent = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            total += cpu_time_of(child).unwrap_or_default();
        }
    }
    Some(total)
}

/// The letters of every call's text, repeated: [`PAYLOAD`] of them and 26 more.
fn letters() -> String {
    (0..PAYLOAD + 26).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// The text of call `n`: its number, then [`PAYLOAD`] letters starting at
/// a letter that depends on `n`, so that a stale or mixed-up reply shows.
/// A copy of `letters` (not a per-letter loop), so that making it costs
/// about what sending it does in the TCP row: the row's rate counts it.
fn text(letters: &str, n: u64) -> String {
    let number = n.to_string();
    let from = (n % 26) as usize;
    let mut text = String::with_capacity(PAYLOAD);
    text.push_str(&number);
    text.push_str(&letters[from..from + PAYLOAD - number.len()]);
    text
}

/// `echo` through `client` one call at a time.
async fn echo_blocking(client: &Client, budget: Budget) -> Phase {
    let mut phase = Phase::default();
    let letters = letters();
    let start = budget.start();
    while let Some(n) = budget.claim() {
        let text = text(&letters, n);
        let sent = Instant::now();
        let result = client.call::<String>("echo", (&text,)).await;
        let latency = sent.elapsed();
        match result {
            Ok(echoed) if echoed == text => phase.latencies.push(latency),
            Ok(echoed) => phase.problem(true, || format!("echo {n}: {} bytes came back different", echoed.len())),
            Err(error) => phase.problem(false, || format!("echo {n}: {error}")),
        }
    }
    phase.finish(start.elapsed())
}
