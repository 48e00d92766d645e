//! `--nng-versions`: the raw NNG request/reply floor of three NNG versions
//! on this machine in one run, beside the plain TCP floor, to decide which
//! NNG the project ships on figures.
//!
//! * the workspace's NNG (1.11, compiled by `nng-sys/` with the cc crate,
//!   through the `nng` 1.0.1 crate; 1.4 before): this benchmark's own
//!   `floor-*` phases (`nng_floor.rs`);
//! * NNG 1.11 (`nng-sys` 0.3.0+1.11.0) and NNG 2.0 (`nng-sys` 0.4.0+2.0.0):
//!   the standalone projects in `bench/nng-versions/` (two `nng-sys`
//!   versions cannot link into one cargo graph, as each declares
//!   `links = "nng"`), built here with cargo and run as child processes.
//!   Their `floor.rs` mirrors `nng_floor.rs` step for step: the echo server
//!   in its own process with 256 contexts, one 16-byte request at a time
//!   (`sequential`), then K contexts on one Req0 socket (`pipelined`);
//! * the TCP floor (`tcp_floor.rs`): 64-byte bodies, K connections.
//!
//! Each is measured in two rounds (in opposite orders, so that a drift of
//! the machine's load weighs on all alike), each round `--seconds` / 2 per
//! phase after a 300 ms warm-up. Rates add the rounds' replies and times;
//! percentiles are the mean of the rounds'.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::args::Settings;
use crate::nng_floor::{floor_pipelined, floor_sequential, spawn_echo_child, spawn_echo_server};
use crate::phase::{micros, warmed, Budget, Phase};
use crate::setup::{free_port, machine_description};
use crate::tcp_floor;

/// One phase's figures, summed over the rounds.
#[derive(Default, Clone, Copy)]
struct Sums {
    replies: u64,
    seconds: f64,
    /// Sums of the rounds' p50 and p99, in µs.
    p50: f64,
    p99: f64,
    wrong: u64,
    missing: u64,
}

impl std::ops::AddAssign for Sums {
    fn add_assign(&mut self, other: Sums) {
        self.replies += other.replies;
        self.seconds += other.seconds;
        self.p50 += other.p50;
        self.p99 += other.p99;
        self.wrong += other.wrong;
        self.missing += other.missing;
    }
}

/// One version's figures: sequential, then pipelined.
#[derive(Default, Clone)]
struct Figures {
    phases: [Sums; 2],
    rounds: u32,
}

impl Figures {
    fn add_phase(&mut self, index: usize, phase: &Phase) {
        self.phases[index] += Sums {
            replies: phase.latencies.len() as u64,
            seconds: phase.elapsed.as_secs_f64(),
            p50: micros(phase.percentile(50.0)),
            p99: micros(phase.percentile(99.0)),
            wrong: phase.wrong,
            missing: phase.missing,
        };
    }

    fn rate(&self, index: usize) -> f64 {
        self.phases[index].replies as f64 / self.phases[index].seconds
    }

    fn p50(&self, index: usize) -> f64 {
        self.phases[index].p50 / f64::from(self.rounds.max(1))
    }

    fn p99(&self, index: usize) -> f64 {
        self.phases[index].p99 / f64::from(self.rounds.max(1))
    }

    fn bad(&self) -> (u64, u64) {
        let [a, b] = self.phases;
        (a.wrong + b.wrong, a.missing + b.missing)
    }
}

/// The standalone projects: (label, directory under bench/nng-versions, binary).
const PROJECTS: [(&str, &str, &str); 2] =
    [("NNG 1.11", "nng-1-11", "nng-floor-1-11"), ("NNG 2.0", "nng-2-0", "nng-floor-2-0")];

/// Builds the standalone floors, measures all four, prints them side by side.
pub(crate) fn run(settings: &Settings) -> Result<bool, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("nng-versions");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut binaries = Vec::new();
    for (label, dir, binary) in PROJECTS {
        let manifest = root.join(dir).join("Cargo.toml");
        eprintln!("building the {label} floor: cargo build --release --manifest-path {}", manifest.display());
        let status = Command::new(&cargo)
            .args(["build", "--release", "--manifest-path"])
            .arg(&manifest)
            .status()
            .map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building the {label} floor failed with {status}"));
        }
        binaries.push(root.join(dir).join("target/release").join(binary));
    }
    println!("machine: {}", machine_description());
    let (k, rounds) = (settings.in_flight, 2u32);
    let part = Duration::from_secs_f64(settings.seconds) / rounds;
    println!(
        "budget: {} s measured per phase in {rounds} rounds after 300 ms warm-ups; {k} in flight",
        settings.seconds
    );
    // Index 0: the workspace's NNG; 1 and 2: the projects; 3: TCP.
    let mut figures = vec![Figures::default(); 4];
    let mut versions = vec!["1.11 (workspace nng-sys/)".to_string(), String::new(), String::new(), "-".to_string()];
    for round in 0..rounds {
        let mut order = vec![0, 1, 2, 3];
        if round % 2 == 1 {
            order.reverse();
        }
        for which in order {
            match which {
                0 => {
                    let address = format!("tcp://127.0.0.1:{}", free_port()?);
                    let _server = spawn_echo_server(&address)?;
                    let seq = warmed(Budget::time(part), |budget| floor_sequential(&address, budget))?;
                    let pipe = warmed(Budget::time(part), |budget| floor_pipelined(&address, k, budget))?;
                    figures[0].add_phase(0, &seq);
                    figures[0].add_phase(1, &pipe);
                }
                3 => {
                    let address = format!("tcp://127.0.0.1:{}", free_port()?);
                    let _server = spawn_echo_child("--tcp-echo-server", &address)?;
                    let seq = warmed(Budget::time(part), |budget| tcp_floor::sequential(&address, budget))?;
                    let pipe = warmed(Budget::time(part), |budget| tcp_floor::pipelined(&address, k, budget))?;
                    figures[3].add_phase(0, &seq);
                    figures[3].add_phase(1, &pipe);
                }
                project => {
                    let version = run_project(&binaries[project - 1], part, k, &mut figures[project])?;
                    versions[project] = version;
                }
            }
            figures[which].rounds += 1;
        }
    }
    print_table(&figures, &versions, k);
    Ok(figures.iter().all(|f| f.bad() == (0, 0)))
}

/// Runs one standalone floor for `part` per phase; adds what it printed to `figures`; its NNG version.
fn run_project(binary: &Path, part: Duration, k: usize, figures: &mut Figures) -> Result<String, String> {
    let output = Command::new(binary)
        .args(["--seconds", &part.as_secs_f64().to_string(), "--in-flight", &k.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed with {}", binary.display(), output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut version = String::from("?");
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let index = match words.next() {
            Some("version") => {
                version = words.next().unwrap_or("?").to_string();
                continue;
            }
            Some("sequential") => 0,
            Some("pipelined") => 1,
            _ => continue,
        };
        let field = |name: &str| -> Result<f64, String> {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .ok_or_else(|| format!("{}: no {name} in '{line}'", binary.display()))
        };
        figures.phases[index] += Sums {
            replies: field("replies")? as u64,
            seconds: field("seconds")?,
            p50: field("p50_us")?,
            p99: field("p99_us")?,
            wrong: field("wrong")? as u64,
            missing: field("missing")? as u64,
        };
    }
    Ok(version)
}

/// The four floors side by side, with ratios to the workspace's NNG and to TCP.
fn print_table(figures: &[Figures], versions: &[String], k: usize) {
    println!();
    println!("raw request/reply floors (server in its own process); seq: one at a time; pipe: {k} in flight");
    println!(
        "{:<10} {:<22} {:>9} {:>9} {:>8} {:>8} {:>11} {:>9} {:>9} {:>8} {:>8} {:>6} {:>7}",
        "floor",
        "version",
        "seq p50",
        "seq p99",
        "p50/ws",
        "p50/tcp",
        "pipe req/s",
        "pipe p50",
        "pipe p99",
        "rate/ws",
        "rate/tcp",
        "wrong",
        "missing"
    );
    let names = ["workspace", PROJECTS[0].0, PROJECTS[1].0, "TCP"];
    let (base, tcp) = (&figures[0], &figures[3]);
    for ((name, version), f) in names.iter().zip(versions).zip(figures) {
        let (wrong, missing) = f.bad();
        println!(
            "{:<10} {:<22} {:>7.1}µs {:>7.1}µs {:>8.2} {:>8.2} {:>11.0} {:>7.0}µs {:>7.0}µs {:>8.2} {:>8.3} {:>6} {:>7}",
            name,
            version,
            f.p50(0),
            f.p99(0),
            f.p50(0) / base.p50(0),
            f.p50(0) / tcp.p50(0),
            f.rate(1),
            f.p50(1),
            f.p99(1),
            f.rate(1) / base.rate(1),
            f.rate(1) / tcp.rate(1),
            wrong,
            missing
        );
    }
}
