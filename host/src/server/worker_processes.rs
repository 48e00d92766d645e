//! Worker processes: a control plane's plugin code runs in child processes
//! it starts and supervises, not in its own (docs/isolation.md). Each is
//! `fastworker subworker` on 127.0.0.1 with the control plane's plugins,
//! registered like any subworker, so routing, leases, batching and delivery
//! are the subworkers'; its link is a socket pair made at its start
//! (`--link-fd`, see `cluster::pipe_link`) rather than an NNG dial. One thread per process waits for it to exit and
//! reads its run log (`server::run_log`), which says which runs it is
//! executing and whose closing tells its death at once: a death it was not
//! asked for is a crash, told to the state (the runs it was executing count
//! a crash each; those only queued there are sent again) and followed by a
//! restart after a backoff, until the process crashed too often within a
//! window and is given up. A process that grew past
//! `--max-memory-per-child` is asked to stop (SIGTERM: it leaves, hands
//! back what it has not started, finishes what it runs, unregisters), and
//! one that started `--max-tasks-per-child` runs stops so by itself
//! (`server::run_budget`); either is replaced at once: a recycle, not a
//! crash.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;
use tracing::{error, info, warn};

use crate::server::run_log::RunLogReader;
use crate::server::state::crashes::CrashWatch;
use crate::server::state::State;
use crate::wire::address::BaseAddress;

/// How often a supervisor reads a busy worker process's run log when no
/// record must wake it: its pipe (1 MiB, 34 bytes a run) holds about
/// 30 000 runs, far more than a process runs in this time, and an idle
/// process costs its supervisor ten wake-ups a second. A death or a stop
/// is seen at once all the same (the pipe closing wakes it).
const LOG_READ_PERIOD: Duration = Duration::from_millis(100);

/// The first wait before a dead worker process is started again.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a restart (the backoff doubles up to it).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A process that ran this long without dying starts its backoff afresh.
const STEADY_AFTER: Duration = Duration::from_secs(30);
/// A worker process dying this many times within [`CRASH_WINDOW`] is not
/// started again (it crashes at load, or a task keeps killing it).
pub const MAX_CRASHES_IN_WINDOW: usize = 5;
/// See [`MAX_CRASHES_IN_WINDOW`].
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// How often a worker process heartbeats (its death is seen at once by its
/// supervisor; this only bounds a hung one).
const HEARTBEAT_SECONDS: &str = "1";

/// The exit status of a subworker that found one of its ports taken when
/// it started: a worker process's supervisor, which chose the ports free a
/// moment before, starts it again at once on other ports, without counting
/// a death.
pub const EXIT_ADDRESS_IN_USE: u8 = 4;

/// Starts again on other ports, in a row, before a port clash counts as a
/// death like any other.
const PORT_CLASHES_IN_A_ROW: u32 = 5;

/// How a control plane's worker processes are started.
#[derive(Debug, Clone)]
pub struct WorkerProcessesConfig {
    /// The `fastworker` binary to start (the running one).
    pub program: PathBuf,
    /// How many worker processes (`local-1` …).
    pub count: u32,
    /// Runs each holds at once (its threads); 1 makes a crash attributable
    /// to one run.
    pub runs_per_process: u32,
    /// Runs each may be sent ahead of those it runs (its `--prefetch`).
    pub prefetch: u32,
    /// The plugins they load (the control plane's `--task-modules`).
    pub task_modules: Vec<PathBuf>,
    /// Crashes after which a task ends `Crashed` (`--max-task-crashes`).
    pub max_task_crashes: u32,
    /// Flags passed on unchanged (the key file and TLS files).
    pub extra_args: Vec<String>,
    /// How long a stopping worker process may take to finish its runs.
    pub shutdown_timeout: Duration,
    /// Runs after which a worker process is replaced (`--max-tasks-per-child`).
    pub max_tasks_per_child: Option<u64>,
    /// Resident bytes past which a worker process is replaced
    /// (`--max-memory-per-child`, read every [`RSS_PERIOD`]).
    pub max_memory_per_child: Option<u64>,
}

/// How often the supervisor reads its process's resident memory.
pub const RSS_PERIOD: Duration = Duration::from_millis(100);

/// The running supervisor: one thread per worker process.
pub(crate) struct WorkerProcesses {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    stopping: Mutex<bool>,
    wake: Condvar,
    /// The pids of the live worker processes, to signal at stop.
    pids: Mutex<Vec<u32>>,
    /// Processes still supervised (not given up).
    supervised: AtomicU32,
    stopped: AtomicBool,
}

impl WorkerProcesses {
    /// Starts `config.count` worker processes for the control plane whose
    /// state is `state`, serving at `base`.
    pub(crate) fn start(state: &Arc<State>, base: &BaseAddress, config: WorkerProcessesConfig) -> WorkerProcesses {
        let ids: Vec<String> = (1..=config.count).map(|n| format!("local-{n}")).collect();
        let tasks: FxHashSet<String> = state.registry.tasks().iter().map(|t| t.decl.name.to_string()).collect();
        state.watch_worker_processes(CrashWatch::new(ids.clone(), config.max_task_crashes), tasks);
        // The worker processes dial the control plane on this machine.
        let host = match base.host() {
            "0.0.0.0" | "*" | "[::]" | "::" => "127.0.0.1",
            host => host,
        };
        let control_plane = base.with_host(host).to_string();
        let shared = Arc::new(Shared {
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            pids: Mutex::new(Vec::new()),
            supervised: AtomicU32::new(config.count),
            stopped: AtomicBool::new(false),
        });
        let threads = ids
            .into_iter()
            .map(|worker_id| {
                let supervisor = Supervisor {
                    worker_id,
                    state: Arc::downgrade(state),
                    shared: shared.clone(),
                    config: config.clone(),
                    control_plane: control_plane.clone(),
                    base: base.with_host("127.0.0.1"),
                };
                std::thread::Builder::new()
                    .name(format!("fw-{}", supervisor.worker_id))
                    .spawn(move || supervisor.run())
                    .expect("spawning a supervisor thread")
            })
            .collect();
        WorkerProcesses { shared, threads }
    }

    /// Asks every worker process to stop (SIGTERM: it hands back what it
    /// has not started and finishes its runs) and replaces none, without
    /// waiting. A stopping subworker asks first, so that the runs sent
    /// ahead to its processes go back to its control plane with the rest.
    pub(crate) fn ask_to_stop(&self) {
        *self.shared.stopping.lock().expect("supervisor lock") = true;
        if self.shared.stopped.swap(true, Ordering::SeqCst) {
            // Asked already: once is enough.
            return;
        }
        self.shared.wake.notify_all();
        for &pid in self.shared.pids.lock().expect("supervisor lock").iter() {
            signal(pid, libc::SIGTERM);
        }
    }

    /// Asks every worker process to stop (SIGTERM: it hands back what it has
    /// not started and finishes its runs) and waits for them, killing those
    /// still alive after the shutdown timeout.
    pub(crate) fn stop(self) {
        self.ask_to_stop();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// One worker process's supervision.
struct Supervisor {
    worker_id: String,
    state: Weak<State>,
    shared: Arc<Shared>,
    config: WorkerProcessesConfig,
    control_plane: String,
    base: BaseAddress,
}

impl Supervisor {
    fn run(self) {
        let mut deaths: Vec<Instant> = Vec::new();
        let mut backoff = FIRST_BACKOFF;
        let mut restart = false;
        let mut port_clashes = 0;
        loop {
            if self.stopping() {
                return;
            }
            let started = Instant::now();
            let (status, recycling, executing) = match self.spawn(restart) {
                Ok((child, mut log)) => {
                    let (status, asked) = self.wait(child, &mut log);
                    log.read_available();
                    // It stops by itself once it started its last run.
                    let recycling = asked || self.config.max_tasks_per_child.is_some_and(|max| log.started() >= max);
                    if let Some(watch) = self.state.upgrade().as_ref().and_then(|s| s.crashes.get()) {
                        watch.ran(&self.worker_id, log.started());
                    }
                    (status, recycling, log.take_executing())
                }
                Err(error) => {
                    error!(worker = %self.worker_id, %error, "could not start a worker process");
                    (None, false, Vec::new())
                }
            };
            if self.stopping() {
                return;
            }
            let clashed = status.and_then(|s| s.code()) == Some(i32::from(EXIT_ADDRESS_IN_USE)) && executing.is_empty();
            if clashed && port_clashes < PORT_CLASHES_IN_A_ROW {
                // Another process took a port chosen free a moment before.
                port_clashes += 1;
                warn!(worker = %self.worker_id, "a port chosen for the worker process was taken before it started: starting it on others");
                continue;
            }
            port_clashes = 0;
            if recycling && status.is_some_and(|s| s.success()) {
                // Asked to stop and stopped cleanly: replaced at once.
                if let Some(watch) = self.state.upgrade().as_ref().and_then(|s| s.crashes.get()) {
                    watch.recycled(&self.worker_id);
                }
                info!(worker = %self.worker_id, "worker process recycled: starting a fresh one");
                restart = false;
                continue;
            }
            restart = true;
            let how = status.map_or_else(|| "it could not be started".to_string(), describe);
            if let Some(state) = self.state.upgrade() {
                state.worker_process_died(&self.worker_id, &how, executing);
            }
            let now = Instant::now();
            deaths.retain(|&at| now.duration_since(at) < CRASH_WINDOW);
            deaths.push(now);
            if deaths.len() >= MAX_CRASHES_IN_WINDOW {
                self.give_up(&how);
                return;
            }
            if now.duration_since(started) >= STEADY_AFTER {
                backoff = FIRST_BACKOFF;
            }
            if self.sleep(backoff) {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            info!(worker = %self.worker_id, "starting the worker process again");
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// Sleeps `pause` unless asked to stop first (then `true`).
    fn sleep(&self, pause: Duration) -> bool {
        let stopping = self.shared.stopping.lock().expect("supervisor lock");
        let (stopping, _) =
            self.shared.wake.wait_timeout_while(stopping, pause, |stopping| !*stopping).expect("supervisor lock");
        *stopping
    }

    fn give_up(&self, how: &str) {
        error!(
            worker = %self.worker_id,
            "worker process died {MAX_CRASHES_IN_WINDOW} times within {} s (last: {how}); it is not started again: see its log above, and docs/isolation.md",
            CRASH_WINDOW.as_secs()
        );
        let Some(state) = self.state.upgrade() else { return };
        if let Some(watch) = state.crashes.get() {
            watch.gave_up(&self.worker_id);
        }
        if self.shared.supervised.fetch_sub(1, Ordering::SeqCst) == 1 {
            state.worker_processes_gone();
        }
    }

    /// Starts the worker process on four free ports of 127.0.0.1, with
    /// the write end of its run log (`restart`: in place of one that died).
    fn spawn(&self, restart: bool) -> std::io::Result<(Child, RunLogReader)> {
        let port = free_ports(4)?;
        let base = self.base.at_port(port);
        let (log, log_writer) = RunLogReader::pipe()?;
        let log_fd = log_writer.as_raw_fd();
        // The link: the child's end is handed over, this end waits for its
        // registration (`membership::links`). Both are closed on exec.
        let (link, link_child) = UnixStream::pair()?;
        let link_fd = link_child.as_raw_fd();
        let mut command = Command::new(&self.config.program);
        command
            .arg("subworker")
            // It runs the tasks itself: a worker process has none of its own.
            .arg("--in-process")
            .args(["--worker-id", &self.worker_id])
            .args(["--control-plane-address", &self.control_plane])
            .args(["--base-address", &base])
            .args(["--concurrency", &self.config.runs_per_process.to_string()])
            .args(["--prefetch", &self.config.prefetch.to_string()])
            .args(["--run-log-fd", &log_fd.to_string()])
            .args(["--link-fd", &link_fd.to_string()])
            .args(["--heartbeat-interval", HEARTBEAT_SECONDS])
            .args(["--shutdown-timeout", &self.config.shutdown_timeout.as_secs_f64().to_string()])
            .args(&self.config.extra_args)
            // It counts its own starts: a signal sent once the run log shows
            // the last would land after it started more sent ahead.
            .args(self.config.max_tasks_per_child.map(|max| format!("--stop-after-runs={max}")))
            .arg("--task-modules")
            .args(&self.config.task_modules)
            .stdin(Stdio::null());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; it only asks the kernel to
            // kill the child when this thread's process dies (its runs belong
            // to that control plane, which is gone): no worker process
            // outlives a killed control plane.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        // SAFETY: fcntl is async-signal-safe; it keeps the run log's write
        // end and the link's child end (close-on-exec in this process, so no
        // other child gets them) open across this child's exec only.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                for fd in [log_fd, link_fd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        if let Some(state) = self.state.upgrade() {
            // Replaces the end of a process that died before registering.
            state.worker_pipes.lock().expect("worker pipes lock").insert(self.worker_id.clone(), link);
        }
        let child = command.spawn()?;
        // The child holds its ends now.
        drop(log_writer);
        drop(link_child);
        info!(worker = %self.worker_id, pid = child.id(), base = %base, "worker process started");
        self.shared.pids.lock().expect("supervisor lock").push(child.id());
        if let Some(watch) = self.state.upgrade().as_ref().and_then(|s| s.crashes.get()) {
            watch.spawned(&self.worker_id, child.id(), restart);
        }
        Ok((child, log))
    }

    /// Waits for the process to exit, reading its run log as it goes; at a
    /// stop, gives it the shutdown timeout (and a little more) before
    /// killing it. Asks it to stop once it grew past its memory bound; says
    /// whether it did.
    fn wait(&self, mut child: Child, log: &mut RunLogReader) -> (Option<ExitStatus>, bool) {
        let pid = child.id();
        let mut recycling = false;
        let mut rss_read_at = Instant::now();
        let status = loop {
            let closed = log.read_available();
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(error) => {
                    warn!(worker = %self.worker_id, %error, "could not wait for the worker process");
                    break None;
                }
            }
            if self.stopping() {
                break Some(self.wait_stopping(&mut child));
            }
            if !recycling {
                let read_rss = rss_read_at.elapsed() >= RSS_PERIOD;
                if read_rss {
                    rss_read_at = Instant::now();
                }
                if let Some(reason) = self.worn_out(pid, log.started(), read_rss) {
                    info!(worker = %self.worker_id, pid, "{reason}: the worker process is asked to stop and will be replaced");
                    signal(pid, libc::SIGTERM);
                    recycling = true;
                }
            }
            if closed {
                // It is exiting: reapable within moments.
                std::thread::sleep(Duration::from_millis(1));
            } else {
                // Woken by its death (the log's write end closing), so a
                // crash is charged at once: before the runs lost with the
                // process can be sent again and lost again. Records are
                // read every `LOG_READ_PERIOD`, not one wake-up each.
                log.wait(LOG_READ_PERIOD);
            }
        };
        self.shared.pids.lock().expect("supervisor lock").retain(|&p| p != pid);
        (status, recycling)
    }

    /// Why the process `pid` is due for replacement, if it is: its
    /// resident memory, read when `read_rss`, passed
    /// `--max-memory-per-child`. (It keeps `--max-tasks-per-child` itself,
    /// `server::run_budget`.) Records its `runs` for `workers` meanwhile.
    fn worn_out(&self, pid: u32, runs: u64, read_rss: bool) -> Option<String> {
        if read_rss {
            let state = self.state.upgrade()?;
            let watch = state.crashes.get()?;
            watch.ran(&self.worker_id, runs);
            let rss = resident_bytes(pid)?;
            watch.rss(&self.worker_id, rss);
            if let Some(max) = self.config.max_memory_per_child.filter(|&max| rss >= max) {
                return Some(format!(
                    "its resident memory is {} MiB (--max-memory-per-child {} MiB)",
                    rss >> 20,
                    max >> 20
                ));
            }
        }
        None
    }

    fn wait_stopping(&self, child: &mut Child) -> ExitStatus {
        let deadline = Instant::now() + self.config.shutdown_timeout + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!(worker = %self.worker_id, "the worker process did not stop in time: killed");
        let _ = child.kill();
        child.wait().unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9))
    }
}

/// The resident memory of `pid` in bytes, from `/proc/<pid>/statm` (its
/// second field, in pages); none where there is no such file.
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    pages.checked_mul(page_size)
}

/// How a process ended, for logs and a `Crashed` task's message.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal} ({})", signal_name(signal)),
        _ => status.to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL, perhaps the out-of-memory killer",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

fn signal(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory effects; the pid is a child not yet reaped.
        unsafe { libc::kill(pid, signal) };
    }
}

/// A base of `count` consecutive ports of 127.0.0.1 free a moment ago.
pub(crate) fn free_ports(count: u16) -> std::io::Result<u16> {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        let Some(last) = port.checked_add(count - 1) else { continue };
        let rest: Result<Vec<_>, _> = (port + 1..=last).map(|p| TcpListener::bind(("127.0.0.1", p))).collect();
        if rest.is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("no {count} consecutive free ports on 127.0.0.1")))
}
