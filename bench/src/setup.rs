//! Setup helpers: where the binaries are, free ports, the machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `fastworker` binary and `libexample_tasks.so` next to this executable
/// (target/release/), always (re)built with cargo first so that the figures
/// are never those of a stale binary (a no-op when they are fresh). With
/// `FASTWORKER_BENCH_BINARIES=DIR`, those in DIR as they are, unbuilt: to
/// measure an older build against this one.
pub(crate) fn locate_binaries() -> Result<(PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this executable: {e}"))?;
    let given = std::env::var_os("FASTWORKER_BENCH_BINARIES").map(PathBuf::from);
    let dir = match &given {
        Some(dir) => dir.clone(),
        None => exe.parent().ok_or("this executable has no directory")?.to_path_buf(),
    };
    let binary = dir.join("fastworker");
    let plugin = dir.join(format!("{}example_tasks{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    if given.is_some() {
        eprintln!("using the binaries in {} as they are (FASTWORKER_BENCH_BINARIES)", dir.display());
    } else {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut command = Command::new(&cargo);
        command.current_dir(&workspace).args(["build", "-p", "fastworker", "-p", "example-tasks"]);
        if dir.file_name().is_some_and(|name| name == "release") {
            command.arg("--release");
        }
        eprintln!("building the control plane and plugin: {command:?}");
        let status = command.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build failed with {status}"));
        }
    }
    for path in [&binary, &plugin] {
        if !path.is_file() {
            return Err(format!("{} is missing after the build", path.display()));
        }
    }
    Ok((binary, plugin))
}

/// A free TCP port on 127.0.0.1 (as the OS picks it).
pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A port `base` such that `base..=base + 5` are all free on 127.0.0.1.
pub(crate) fn free_base_port() -> Result<u16, String> {
    // Start somewhere that differs between runs, below the usual ephemeral range.
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) ^ u64::from(clock) ^ u64::from(free_port()?);
    for step in 0..2000u64 {
        let base = 20_000 + ((seed.wrapping_mul(2_654_435_761) + step * 6) % 12_000) as u16;
        // Hold all six at once, so that none is counted free twice.
        let held: Result<Vec<_>, _> = (0..6).map(|offset| TcpListener::bind(("127.0.0.1", base + offset))).collect();
        if held.is_ok() {
            return Ok(base);
        }
    }
    Err("no six consecutive free ports between 20000 and 32000".into())
}

/// The available parallelism (nproc) and the CPU model and count from /proc/cpuinfo.
pub(crate) fn machine_description() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let models: Vec<&str> = cpuinfo
        .lines()
        .filter_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim()))
        .collect();
    let model = models.first().copied().unwrap_or("unknown CPU");
    format!(
        "nproc {nproc}, {} logical CPUs of model \"{model}\" ({} {})",
        models.len(),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}
