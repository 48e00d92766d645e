//! What every attack test checks besides the attack itself: a correct `add`
//! from another client is answered within 1 s during and after it, the
//! process's memory comes back to within 20 MB of its idle figure once the
//! attacker is gone, and SIGTERM still stops the process in time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastworker::Client;

use crate::{runtime, wait_until, Process};

/// The longest a bystander's `add` may take during or after an attack.
pub const BYSTANDER_LIMIT: Duration = Duration::from_secs(1);

/// How much a process's resident memory may stay above its idle figure
/// once an attacker is gone, in KiB.
pub const RSS_SLACK_KIB: u64 = 20 * 1024;

/// A bystander: another client calling `add` every 50 ms on its own
/// connection, recording how long each call took.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    thread: Option<JoinHandle<()>>,
}

/// What a bystander saw.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// Calls made.
    pub calls: u32,
    /// The slowest call.
    pub slowest: Duration,
    /// Calls that failed or answered wrongly, with why.
    pub failures: Vec<String>,
}

impl Bystander {
    /// Starts calling `add` on `process` (on the NORMAL port unless the
    /// process's client says otherwise).
    pub fn start(process: &Process) -> Bystander {
        Bystander::with_client(process.client().with_timeout(Duration::from_secs(5)))
    }

    /// Starts calling `add` through `client`.
    pub fn with_client(client: Client) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let (thread_stop, thread_record) = (stop.clone(), record.clone());
        let thread = std::thread::spawn(move || {
            let runtime = runtime();
            let mut n: i64 = 0;
            while !thread_stop.load(Ordering::SeqCst) {
                n += 1;
                let started = Instant::now();
                let outcome = runtime.block_on(client.call::<i64>("add", (n, 1)));
                let took = started.elapsed();
                let mut record = thread_record.lock().unwrap();
                record.calls += 1;
                record.slowest = record.slowest.max(took);
                match outcome {
                    Ok(sum) if sum == n + 1 => {}
                    Ok(sum) => record.failures.push(format!("add({n}, 1) answered {sum}")),
                    Err(error) => record.failures.push(format!("add({n}, 1) after {took:?}: {error}")),
                }
                drop(record);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Bystander { stop, record, thread: Some(thread) }
    }

    /// What it saw so far.
    pub fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    /// Stops it and panics unless every call was answered correctly within
    /// [`BYSTANDER_LIMIT`]; `during` names the phase for the message.
    pub fn check(mut self, during: &str) -> Record {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        let record = self.record();
        assert!(record.calls > 0, "the bystander made no call {during}");
        assert!(record.failures.is_empty(), "bystander calls failed {during}: {:?}", record.failures);
        assert!(
            record.slowest <= BYSTANDER_LIMIT,
            "a bystander's add took {:?} {during} (limit {BYSTANDER_LIMIT:?}, {} calls)",
            record.slowest,
            record.calls
        );
        record
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Resident memory of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Waits up to 15 s for `process`'s resident memory to come back within
/// [`RSS_SLACK_KIB`] of `idle_kib`; panics with the figures if it does not.
pub fn assert_memory_returns(process: &Process, idle_kib: u64, peak_kib: u64) {
    let pid = process.pid();
    let mut last = 0;
    let back = wait_until(Duration::from_secs(15), || {
        last = rss_kib(pid);
        last <= idle_kib + RSS_SLACK_KIB
    });
    assert!(
        back,
        "resident memory stayed at {last} KiB after the attack (idle {idle_kib} KiB, peak {peak_kib} KiB, slack {RSS_SLACK_KIB} KiB)"
    );
}

/// Sends SIGTERM and panics unless the process exits within `limit`.
pub fn assert_stops_on_sigterm(process: &mut Process, limit: Duration) {
    process.signal("TERM");
    let code = process.wait_exit(limit);
    assert!(code.is_some(), "still running {limit:?} after SIGTERM:\n{}", process.log());
}
