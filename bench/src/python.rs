//! `--python PATH`: the Python client's rows (`py-blocking`, `py-pipelined-K`),
//! measured by `bench/python/client_bench.py` run with that interpreter
//! against the control plane of the `cp` rows, so that they sit beside the
//! Rust client's rows of the same run and the same control plane.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::args::Settings;
use crate::phase::Phase;

/// Runs the script with `python` against `address`; its blocking and pipelined phases.
pub(crate) fn rows(settings: &Settings, python: &Path, address: &str) -> Result<[Phase; 2], String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join("client_bench.py");
    let mut command = Command::new(python);
    command.arg(&script).args(["--address", address, "--in-flight", &settings.in_flight.to_string(), "--json"]);
    match settings.requests {
        Some(n) => command.args(["--requests", &n.to_string()]),
        None => command.args(["--seconds", &settings.seconds.to_string()]),
    };
    eprintln!("py: {command:?}");
    let output = command.stderr(Stdio::inherit()).output().map_err(|e| format!("running {}: {e}", python.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        format!("{} {} printed no JSON line ({e}; exit {}): is the fastworker package installed for it (pip install ./clients/python)?", python.display(), script.display(), output.status)
    })?;
    Ok([phase(&parsed["blocking"])?, phase(&parsed["pipelined"])?])
}

fn phase(value: &serde_json::Value) -> Result<Phase, String> {
    let malformed = || "the Python bench printed a phase this benchmark cannot read".to_string();
    let mut latencies: Vec<Duration> = value["latencies_ns"]
        .as_array()
        .ok_or_else(malformed)?
        .iter()
        .map(|ns| ns.as_u64().map(Duration::from_nanos).ok_or_else(malformed))
        .collect::<Result<_, _>>()?;
    latencies.sort_unstable();
    let elapsed = value["elapsed_s"].as_f64().filter(|s| s.is_finite() && *s >= 0.0).ok_or_else(malformed)?;
    Ok(Phase {
        latencies,
        elapsed: Duration::from_secs_f64(elapsed),
        wrong: value["wrong"].as_u64().ok_or_else(malformed)?,
        missing: value["missing"].as_u64().ok_or_else(malformed)?,
        first_problem: value["first_problem"].as_str().map(str::to_string),
        warmup_replies: 0,
    })
}
