//! `--soak MINUTES`: a control plane and a subworker under mixed load for
//! a while, the subworker killed (`kill -9`) and restarted every
//! `--soak-kill-every` seconds (default 20, 0: never), the
//! control plane's resident memory sampled every 10 s; prints the samples
//! and the slope of memory over the run's last two thirds (after the result
//! cache and the dashboard's ring have filled), in KiB per minute.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::{Client, ClientError};

use crate::processes::{start_control_plane, start_subworker};
use crate::setup::locate_binaries;

/// Concurrent callers.
const CALLERS: usize = 8;
/// Pause of each caller between two calls (about 400 calls/s in all).
const PAUSE: Duration = Duration::from_millis(20);
/// Time between two memory samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// What the callers saw.
#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    wrong: AtomicU64,
    /// Failures that are not the task's own (a division by zero is its own).
    errors: AtomicU64,
}

/// Runs the soak for `minutes`; `Ok(false)` when a reply was wrong.
/// `kill_every`: time between two kills of the subworker (`None`: never).
pub(crate) fn run(minutes: f64, kill_every: Option<Duration>, concurrency: usize) -> Result<bool, String> {
    let (binary, plugin) = locate_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    // A result cache that fills within the first minutes at this load.
    let extra: [OsString; 2] = ["--result-cache-size".into(), "2000".into()];
    let control_plane = start_control_plane(&binary, "soak control plane", Some(&plugin), concurrency, &extra)?;
    let mut subworker = start_subworker(&binary, &plugin, &control_plane, "soak-sw", concurrency)?;
    let client = control_plane.client()?;
    let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::new(Counts::default()));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| runtime.spawn(call_mixed(client.clone(), caller as u64, stop.clone(), counts.clone())))
        .collect();
    let length = Duration::from_secs_f64(minutes * 60.0);
    let started = Instant::now();
    let mut next_kill = kill_every.map(|every| started + every);
    let mut next_sample = started;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let kills =
        kill_every.map_or("never killed".to_string(), |every| format!("killed every {} s", every.as_secs_f64()));
    println!(
        "soak: {minutes} min, {CALLERS} callers of add / sleep_ms / divide by zero / flaky, the subworker {kills}"
    );
    while started.elapsed() < length {
        let now = Instant::now();
        if now >= next_sample {
            let kib = control_plane.resident_kib().unwrap_or(0);
            let at = started.elapsed().as_secs_f64();
            println!(
                "t={at:>6.0} s  rss={kib} KiB  calls={}  wrong={}  errors={}",
                counts.calls.load(Ordering::Relaxed),
                counts.wrong.load(Ordering::Relaxed),
                counts.errors.load(Ordering::Relaxed)
            );
            samples.push((at, kib));
            next_sample += SAMPLE_EVERY;
        }
        if let (Some(at), Some(every)) = (next_kill, kill_every) {
            if now >= at {
                subworker.kill();
                subworker = start_subworker(&binary, &plugin, &control_plane, "soak-sw", concurrency)?;
                next_kill = Some(at + every);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        let _ = runtime.block_on(caller);
    }
    let tail: Vec<(f64, u64)> = samples.iter().copied().skip(samples.len() / 3).collect();
    println!("rss slope over the last two thirds: {:.1} KiB/min", slope(&tail) * 60.0);
    Ok(counts.wrong.load(Ordering::Relaxed) == 0)
}

/// Calls a mix of tasks until `stop`, checking every answer it can.
async fn call_mixed(client: Client, caller: u64, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut n = caller;
    while !stop.load(Ordering::Relaxed) {
        n += CALLERS as u64;
        let x = (n % 1_000_000) as i64;
        let right = match n % 10 {
            0..=5 => client.call::<i64>("add", (x, 1)).await.map(|sum| sum == x + 1),
            6 | 7 => client.call::<u64>("sleep_ms", (5u64,)).await.map(|slept| slept >= 5),
            8 => match client.call::<i64>("divide", (x, 0)).await {
                Err(ClientError::TaskFailed { .. }) => Ok(true),
                other => other.map(|_| false),
            },
            _ => client.call::<u32>("flaky", (1u32,)).await.map(|attempts| attempts >= 2),
        };
        counts.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(PAUSE).await;
        match right {
            Ok(true) => {}
            Ok(false) => {
                counts.wrong.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Least-squares slope of `(seconds, KiB)` samples, in KiB per second.
fn slope(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mean_t, mean_y) = samples.iter().fold((0.0, 0.0), |(t, y), (st, sy)| (t + st / n, y + *sy as f64 / n));
    let (num, den) = samples.iter().fold((0.0, 0.0), |(num, den), (t, y)| {
        (num + (t - mean_t) * (*y as f64 - mean_y), den + (t - mean_t) * (t - mean_t))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}
