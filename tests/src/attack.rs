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

    /// Lets it call for `time`, then hands it back for checking.
    pub fn let_run(self, time: Duration) -> Bystander {
        std::thread::sleep(time);
        self
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
        // The figures, for `cargo test -- --nocapture`.
        eprintln!("figures: bystander {during}: {} calls, slowest {:?}", record.calls, record.slowest);
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
    eprintln!("figures: resident memory idle {idle_kib} KiB, peak {peak_kib} KiB, after {last} KiB");
    assert!(
        back,
        "resident memory stayed at {last} KiB after the attack (idle {idle_kib} KiB, peak {peak_kib} KiB, slack {RSS_SLACK_KIB} KiB)"
    );
}

/// Sends SIGTERM and panics unless the process exits within `limit`.
pub fn assert_stops_on_sigterm(process: &mut Process, limit: Duration) {
    process.signal("TERM");
    let asked = std::time::Instant::now();
    let code = process.wait_exit(limit);
    eprintln!("figures: exited {:?} after SIGTERM in {:?}", code, asked.elapsed());
    assert!(code.is_some(), "still running {limit:?} after SIGTERM:\n{}", process.log());
}

/// A peer speaking NNG's REQ protocol over raw TCP, so that a test can do
/// what the NNG library never would: pipeline requests without limit and
/// never read a reply.
pub struct RawRequester {
    stream: std::net::TcpStream,
    next_id: u32,
}

impl RawRequester {
    /// Connects to `url` (`tcp://HOST:PORT`) and sends the SP handshake of a
    /// REQ socket (protocol 48).
    pub fn connect(url: &str) -> std::io::Result<RawRequester> {
        use std::io::Write;
        let address = url.strip_prefix("tcp://").expect("a tcp:// address");
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.write_all(&[0, b'S', b'P', 0, 0, 48, 0, 0])?;
        Ok(RawRequester { stream, next_id: 1 })
    }

    /// Sends one request frame: length, request id (high bit set), body.
    pub fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let id = 0x8000_0000 | self.next_id;
        self.next_id = self.next_id.wrapping_add(1) & 0x7fff_ffff;
        let mut message = Vec::with_capacity(12 + frame.len());
        message.extend_from_slice(&(4 + frame.len() as u64).to_be_bytes());
        message.extend_from_slice(&id.to_be_bytes());
        message.extend_from_slice(frame);
        self.stream.write_all(&message)
    }
}

/// How a fake subworker answers the tasks sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeAnswer {
    /// Takes every task and never answers (a black hole).
    Never,
    /// Answers every task with a "succeeded" report whose result is not JSON.
    NotJson,
}

/// A process of the test's own posing as a subworker: it listens where a
/// subworker would, registers with `offered` tasks, and answers as told.
pub struct FakeSubworker {
    /// Its base address.
    pub address: String,
    /// The name it registered with.
    pub name: fastworker::protocol::WorkerName,
    _socket: nng::Socket,
    stop: Arc<AtomicBool>,
}

impl FakeSubworker {
    /// Listens on a free port and registers with `control_plane`; panics
    /// if the control plane refuses.
    pub fn register(
        control_plane: &Process,
        worker_id: &str,
        offered: Vec<fastworker::protocol::OfferedTask>,
        answer: FakeAnswer,
    ) -> FakeSubworker {
        use fastworker::protocol::{decode, encode, Registration, Reply, Reported, Request, WorkerName};
        let address = format!("tcp://127.0.0.1:{}", crate::free_ports(4));
        let socket = nng::Socket::new(nng::Protocol::Rep0).unwrap();
        socket.listen(&address).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_socket, thread_stop) = (socket.clone(), stop.clone());
        std::thread::spawn(move || {
            // Outcomes of the runs taken, until the control plane collects them.
            let mut outcomes: Vec<Reported> = Vec::new();
            while !thread_stop.load(Ordering::SeqCst) {
                let Ok(message) = thread_socket.recv() else { return };
                if answer == FakeAnswer::Never {
                    continue;
                }
                let reply = match decode::<Request>(&message, usize::MAX) {
                    // Runs come as leased dispatches, taken at once.
                    Ok(Request::Dispatch(runs)) => {
                        outcomes.extend(runs.into_iter().map(|run| Reported {
                            task_id: run.submit.task_id,
                            lease: run.lease,
                            reply: encode(&Reply::Report(not_json_report(run.submit))),
                        }));
                        Reply::Done
                    }
                    Ok(Request::Collect) => {
                        if outcomes.is_empty() {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        Reply::Reports(std::mem::take(&mut outcomes))
                    }
                    _ => continue,
                };
                let _ = thread_socket.send(nng::Message::from(&encode(&reply)[..]));
            }
        });
        let name = WorkerName { worker_id: worker_id.into(), instance: uuid::Uuid::new_v4() };
        let registration =
            Registration { name: name.clone(), address: address.clone(), concurrency: 4, prefetch: 0, tasks: offered };
        let client = control_plane.client();
        let runtime = runtime();
        let port = runtime.block_on(client.discover()).expect("discover");
        let management = client.with_management_port(port);
        runtime.block_on(management.manage(&Request::Register(registration))).expect("the fake subworker registers");
        FakeSubworker { address, name, _socket: socket, stop }
    }
}

/// A "succeeded" report of `submit` whose result is not JSON.
fn not_json_report(submit: fastworker::protocol::Submit) -> fastworker::protocol::TaskReport {
    fastworker::protocol::TaskReport {
        task_id: submit.task_id,
        task_name: submit.task_name,
        state: fastworker::protocol::TaskState::Succeeded,
        priority: submit.priority.unwrap_or(fastworker::Priority::Normal),
        worker: "fake".into(),
        attempts: 1,
        created_ms: 0,
        started_ms: None,
        finished_ms: None,
        result: Some(b"\xffnot json{".to_vec()),
        error: None,
    }
}

impl Drop for FakeSubworker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self._socket.close();
    }
}

/// A task a fake subworker offers: `name`, no timeout, no retries, and
/// `schedule` (JSON, or empty).
pub fn offered(name: &str, schedule: &str) -> fastworker::protocol::OfferedTask {
    fastworker::protocol::OfferedTask { schedule: schedule.into(), ..fastworker::protocol::OfferedTask::new(name) }
}
