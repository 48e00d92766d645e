//! `--nng-settings LIST`: the raw NNG floors and the control plane's rows
//! under each of several NNG thread settings (`FASTWORKER_NNG_*`,
//! host/src/wire/nng_threads.rs), side by side in one run.
//!
//! NNG reads its thread counts once per process, before its first use, so
//! each setting runs in a child process of this benchmark
//! (`--nng-settings-child`) started with the setting's variables: it, its
//! echo server and its control plane (children of it, inheriting them) all
//! run under that setting, the client side as much as the server side. The
//! child measures, each after a 300 ms warm-up:
//!
//! * `floor-sequential` and `floor-pipelined-K`, as in the main table;
//! * `floor-ctx-sequential`: one request at a time on a context with an Aio
//!   callback, the reply handed to the waiting thread, as
//!   `fastworker::Client` does (`nng_floor::floor_context_sequential`);
//! * `cp-blocking` and `cp-pipelined-K` on a control plane running `add`
//!   in-process, as in the main table, and the NNG threads it runs
//!   (counted by name in `/proc/PID/task/*/comm`).
//!
//! Every setting is measured in `--rounds` rounds (default 4), in
//! alternating orders, so that a drift of the machine's load weighs on all
//! alike; rates add the rounds' replies and times, percentiles are the
//! median of the rounds' (a shared machine's load comes in bursts). The
//! CPU time each row cost the server process (echo server or control
//! plane) and the client process, per reply, is the figure least moved by
//! other load: it shows what a setting costs a busy machine. A setting is
//! `ours` (no variable set: the defaults of host/src/wire/nng_threads.rs),
//! `nng` (every variable `nng`: NNG's own choices), or `KEY=N,...` with KEY
//! one of `task`, `expire`, `resolver` (the others left to NNG).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::time::Duration;

use fastworker::wire::nng_threads::{NngThreads, EXPIRE_THREADS_VAR, RESOLVER_THREADS_VAR, TASK_THREADS_VAR};

use crate::args::Settings;
use crate::nng_floor::{floor_context_sequential, floor_pipelined, floor_sequential, spawn_echo_server};
use crate::phase::{micros, warmed, Budget, Phase};
use crate::processes::{blocking_add, cpu_time_of, pipelined_add, start_control_plane};
use crate::setup::{free_port, locate_binaries, machine_description};

/// The settings measured when `--nng-settings` is given `all`.
pub(crate) const DEFAULT_LIST: &str = "nng/ours/task=2/task=4/task=8/expire=1/resolver=1/task=2,expire=1";

/// The variables a setting names, each a key of the `KEY=N` form.
const KEYS: [(&str, &str); 3] =
    [("task", TASK_THREADS_VAR), ("expire", EXPIRE_THREADS_VAR), ("resolver", RESOLVER_THREADS_VAR)];

/// One setting to measure: its label and the variables its child gets
/// (`None`: the variable is removed).
#[derive(Clone)]
pub(crate) struct Setting {
    label: String,
    vars: Vec<(&'static str, Option<String>)>,
}

/// The settings of `--nng-settings LIST` (`/`-separated), checked as the
/// processes will check their variables.
pub(crate) fn parse_list(list: &str) -> Result<Vec<Setting>, String> {
    let list = if list == "all" { DEFAULT_LIST } else { list };
    let mut settings = Vec::new();
    for spec in list.split('/').map(str::trim).filter(|s| !s.is_empty()) {
        let vars: Vec<(&'static str, Option<String>)> = match spec {
            "ours" => KEYS.iter().map(|(_, var)| (*var, None)).collect(),
            "nng" => KEYS.iter().map(|(_, var)| (*var, Some("nng".to_string()))).collect(),
            _ => {
                let mut vars: BTreeMap<&'static str, String> =
                    KEYS.iter().map(|(_, var)| (*var, "nng".to_string())).collect();
                for pair in spec.split(',') {
                    let (key, value) = pair.split_once('=').ok_or_else(|| {
                        format!("--nng-settings: '{pair}' is not KEY=N (KEY: task, expire or resolver)")
                    })?;
                    let var = KEYS
                        .iter()
                        .find(|(k, _)| *k == key.trim())
                        .map(|(_, var)| *var)
                        .ok_or_else(|| format!("--nng-settings: unknown key '{key}' (task, expire or resolver)"))?;
                    vars.insert(var, value.trim().to_string());
                }
                vars.into_iter().map(|(var, value)| (var, Some(value))).collect()
            }
        };
        let lookup =
            |name: &str| vars.iter().find(|(v, _)| *v == name).and_then(|(_, value)| value.clone().map(OsString::from));
        NngThreads::from_vars(lookup, 2).map_err(|e| format!("--nng-settings '{spec}': {e}"))?;
        settings.push(Setting { label: spec.to_string(), vars });
    }
    if settings.is_empty() {
        return Err("--nng-settings needs at least one setting".to_string());
    }
    Ok(settings)
}

/// The rows a child measures, in its output's order.
const ROWS: [&str; 5] = ["floor-sequential", "floor-ctx-sequential", "floor-pipelined", "cp-blocking", "cp-pipelined"];

/// One row's figures over the rounds.
#[derive(Default, Clone)]
struct Sums {
    replies: u64,
    seconds: f64,
    /// Each round's p50 and p99, in µs.
    p50s: Vec<f64>,
    p99s: Vec<f64>,
    /// CPU time of the server (echo server or control plane) and of the
    /// client process, in µs, and the replies (warm-ups included) they served.
    server_cpu: f64,
    client_cpu: f64,
    served: u64,
    wrong: u64,
    missing: u64,
}

/// The median of a round's figures (the load of a shared machine comes in bursts).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

impl Sums {
    fn rate(&self) -> f64 {
        self.replies as f64 / self.seconds
    }
    fn p50(&self) -> f64 {
        median(&self.p50s)
    }
    fn p99(&self) -> f64 {
        median(&self.p99s)
    }
    /// CPU µs per reply, server and client.
    fn cpu(&self) -> (f64, f64) {
        let served = self.served.max(1) as f64;
        (self.server_cpu / served, self.client_cpu / served)
    }
}

/// One setting's figures and the NNG threads its control plane ran.
#[derive(Default, Clone)]
struct Figures {
    rows: [Sums; 5],
    threads: String,
}

/// Measures every setting of `settings.nng_settings` in two rounds and prints them side by side.
pub(crate) fn run(settings: &Settings, list: &[Setting]) -> Result<bool, String> {
    let (binary, _plugin) = locate_binaries()?;
    let dir = binary.parent().ok_or("the fastworker binary has no directory")?.to_path_buf();
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    println!("machine: {}", machine_description());
    let (k, c, rounds) = (settings.in_flight, settings.concurrency, settings.rounds);
    let part = settings.seconds / f64::from(rounds);
    println!(
        "budget: {} s measured per row in {rounds} rounds (each setting in its own processes) after 300 ms warm-ups; \
         {k} in flight; control plane --concurrency {c} --in-process",
        settings.seconds
    );
    let mut figures = vec![Figures::default(); list.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..list.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let setting = &list[index];
            eprintln!("round {}: {}", round + 1, setting.label);
            let mut command = Command::new(&exe);
            command
                .args(["--nng-settings-child", &part.to_string(), &k.to_string(), &c.to_string()])
                .env("FASTWORKER_BENCH_BINARIES", &dir)
                .stderr(Stdio::inherit());
            for (var, value) in &setting.vars {
                match value {
                    Some(value) => command.env(var, value),
                    None => command.env_remove(var),
                };
            }
            let output = command.output().map_err(|e| format!("running {}: {e}", exe.display()))?;
            if !output.status.success() {
                return Err(format!("the child for setting '{}' failed with {}", setting.label, output.status));
            }
            absorb(&String::from_utf8_lossy(&output.stdout), &mut figures[index])?;
        }
    }
    print_table(list, &figures, k);
    Ok(figures.iter().all(|f| f.rows.iter().all(|r| r.wrong == 0 && r.missing == 0)))
}

/// Adds what a child printed to `figures`.
fn absorb(text: &str, figures: &mut Figures) -> Result<(), String> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("threads") => figures.threads = words.collect::<Vec<_>>().join(" "),
            Some("row") => {
                let name = words.next().unwrap_or_default();
                let index = ROWS.iter().position(|r| *r == name).ok_or_else(|| format!("unknown row in '{line}'"))?;
                let field = |key: &str| -> Result<f64, String> {
                    line.split_whitespace()
                        .find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                        .ok_or_else(|| format!("no {key} in '{line}'"))
                };
                let sums = &mut figures.rows[index];
                sums.replies += field("replies")? as u64;
                sums.seconds += field("seconds")?;
                sums.p50s.push(field("p50_us")?);
                sums.p99s.push(field("p99_us")?);
                sums.server_cpu += field("server_cpu_us")?;
                sums.client_cpu += field("client_cpu_us")?;
                sums.served += field("served")? as u64;
                sums.wrong += field("wrong")? as u64;
                sums.missing += field("missing")? as u64;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The child (`--nng-settings-child SECONDS K C`): measures the rows under
/// the NNG settings of its environment and prints them, one line each.
pub(crate) fn child(seconds: &str, k: &str, c: &str) -> Result<(), String> {
    let seconds: f64 = seconds.parse().map_err(|_| "--nng-settings-child: seconds")?;
    let k: usize = k.parse().map_err(|_| "--nng-settings-child: in flight")?;
    let c: usize = c.parse().map_err(|_| "--nng-settings-child: concurrency")?;
    let part = || Budget::time(Duration::from_secs_f64(seconds));
    let (binary, plugin) = locate_binaries()?;
    let print = |name: &str, phase: &Phase, server_cpu: f64, client_cpu: f64| {
        println!(
            "row {name} replies={} seconds={} p50_us={} p99_us={} server_cpu_us={server_cpu} client_cpu_us={client_cpu} \
             served={} wrong={} missing={}",
            phase.latencies.len(),
            phase.elapsed.as_secs_f64(),
            micros(phase.percentile(50.0)),
            micros(phase.percentile(99.0)),
            phase.latencies.len() as u64 + phase.warmup_replies,
            phase.wrong,
            phase.missing
        );
        if let Some(problem) = &phase.first_problem {
            eprintln!("{name}: {problem}");
        }
    };
    // The row `measure` runs, with the CPU time `server` and this process
    // spent on it (warm-up included).
    let row = |name: &str, server: u32, measure: &dyn Fn() -> Result<Phase, String>| -> Result<(), String> {
        let cpu = || (cpu_time_of(server).unwrap_or_default(), cpu_time_of("self").unwrap_or_default());
        let (server_before, client_before) = cpu();
        let phase = measure()?;
        let (server_after, client_after) = cpu();
        let server_cpu = micros(server_after.saturating_sub(server_before));
        let client_cpu = micros(client_after.saturating_sub(client_before));
        print(name, &phase, server_cpu, client_cpu);
        Ok(())
    };
    let address = format!("tcp://127.0.0.1:{}", free_port()?);
    let server = spawn_echo_server(&address)?;
    let echo_pid = server.0.as_ref().map_or(0, |child| child.id());
    row(ROWS[0], echo_pid, &|| warmed(part(), |budget| floor_sequential(&address, budget)))?;
    row(ROWS[1], echo_pid, &|| warmed(part(), |budget| floor_context_sequential(&address, budget)))?;
    row(ROWS[2], echo_pid, &|| warmed(part(), |budget| floor_pipelined(&address, k, budget)))?;
    drop(server);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    let mut control_plane = start_control_plane(&binary, "nng-settings control plane", Some(&plugin), c, &[])?;
    let pid = control_plane.process.0.as_ref().map_or(0, |child| child.id());
    println!("threads {}", thread_counts(pid));
    let client = control_plane.client()?;
    row(ROWS[3], pid, &|| Ok(blocking_add(&runtime, &client, part())))?;
    row(ROWS[4], pid, &|| Ok(pipelined_add(&runtime, &client, k, part())))?;
    drop(client);
    control_plane.stop()
}

/// NNG's threads in process `pid`, by kind, from their names.
fn thread_counts(pid: u32) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut all = 0;
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in entries.flatten() {
            all += 1;
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let name = name.trim();
            let kind = match name {
                "nng:task" => "task",
                "nng:aio:expire" => "expire",
                "nng:resolver" => "resolver",
                other if other.starts_with("nng:poll") => "poll",
                _ => continue,
            };
            *counts.entry(kind.to_string()).or_default() += 1;
        }
    }
    let nng: Vec<String> = ["task", "expire", "resolver", "poll"]
        .iter()
        .map(|kind| format!("{}", counts.get(*kind).copied().unwrap_or(0)))
        .collect();
    format!("{} of {all}", nng.join("/"))
}

/// The settings side by side, each as ratios to the first.
fn print_table(list: &[Setting], figures: &[Figures], k: usize) {
    println!();
    println!(
        "NNG thread settings, one at a time (seq: one request at a time, blocking on the socket; ctx: the same on a"
    );
    println!(
        "context with an Aio callback, as fastworker::Client; cp: control plane `add`, blocking); p50 the median of"
    );
    println!("the rounds'; cpu: µs of CPU per reply, server process + client process; /1st: to the first setting's");
    println!(
        "{:<16} {:<14} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>6} {:>11} {:>11} {:>6}",
        "setting",
        "cp nng thr",
        "seq p50",
        "seq p99",
        "ctx p50",
        "cp p50",
        "cp/seq",
        "cp/ctx",
        "seq/1st",
        "cp/1st",
        "seq cpu",
        "cp cpu",
        "wrong"
    );
    let first = &figures[0];
    for (setting, f) in list.iter().zip(figures) {
        let [seq, ctx, _, cp, _] = &f.rows;
        let wrong: u64 = f.rows.iter().map(|r| r.wrong + r.missing).sum();
        let ((seq_srv, seq_cli), (cp_srv, cp_cli)) = (seq.cpu(), cp.cpu());
        println!(
            "{:<16} {:<14} {:>6.1}µs {:>6.0}µs {:>6.1}µs {:>6.1}µs {:>6.2} {:>6.2} {:>7.2} {:>6.2} {:>5.0}+{:<5.0} {:>5.0}+{:<5.0} {:>6}",
            setting.label,
            f.threads,
            seq.p50(),
            seq.p99(),
            ctx.p50(),
            cp.p50(),
            cp.p50() / seq.p50(),
            cp.p50() / ctx.p50(),
            seq.p50() / first.rows[0].p50(),
            cp.p50() / first.rows[3].p50(),
            seq_srv,
            seq_cli,
            cp_srv,
            cp_cli,
            wrong
        );
    }
    println!();
    println!("{k} in flight: rates, and their ratios to the first setting's; cpu as above");
    println!(
        "{:<16} {:>11} {:>8} {:>11} {:>11} {:>8} {:>11} {:>9}",
        "setting", "floor req/s", "/1st", "floor cpu", "cp req/s", "/1st", "cp cpu", "cp/floor"
    );
    for (setting, f) in list.iter().zip(figures) {
        let (pipe, cp) = (&f.rows[2], &f.rows[4]);
        let ((pipe_srv, pipe_cli), (cp_srv, cp_cli)) = (pipe.cpu(), cp.cpu());
        println!(
            "{:<16} {:>11.0} {:>8.2} {:>5.0}+{:<5.0} {:>11.0} {:>8.2} {:>5.0}+{:<5.0} {:>9.2}",
            setting.label,
            pipe.rate(),
            pipe.rate() / first.rows[2].rate(),
            pipe_srv,
            pipe_cli,
            cp.rate(),
            cp.rate() / first.rows[4].rate(),
            cp_srv,
            cp_cli,
            cp.rate() / pipe.rate()
        );
    }
}
