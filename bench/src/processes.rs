//! The control plane and subworkers as child processes, their clients, and fake subworkers.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::auth::KeyRing;
use fastworker::protocol::WorkerState;
use fastworker::{Client, ClientError, TaskId};
use tokio::runtime::Runtime;

use crate::phase::{warmed, Budget, Phase};
use crate::setup::free_base_port;
use crate::{PROBE_TIMEOUT, REQUEST_TIMEOUT, STARTUP_TIMEOUT};

/// The arguments of `add` request `n`: both vary, signs included.
pub(crate) fn add_args(n: u64) -> (i64, i64) {
    let a = n as i64;
    let b = ((n.wrapping_mul(7919)) % 100_003) as i64 - 50_000;
    (a, b)
}

/// Calls `add` once and records the outcome in `phase`.
pub(crate) async fn call_add(client: &Client, n: u64, phase: &mut Phase) {
    let (a, b) = add_args(n);
    let sent = Instant::now();
    let result = client.call::<i64>("add", (a, b)).await;
    let latency = sent.elapsed();
    match result {
        Ok(sum) if sum == a + b => phase.latencies.push(latency),
        Ok(sum) => phase.problem(true, || format!("add({a}, {b}) returned {sum}")),
        Err(error) => phase.problem(false, || format!("add({a}, {b}): {error}")),
    }
}

/// One `add` at a time.
pub(crate) async fn add_blocking(client: &Client, budget: Budget) -> Phase {
    let mut phase = Phase::default();
    let start = budget.start();
    while let Some(n) = budget.claim() {
        call_add(client, n, &mut phase).await;
    }
    phase.finish(start.elapsed())
}

/// `in_flight` tokio tasks, each calling `add` in a loop on the shared client.
pub(crate) async fn add_pipelined(client: &Client, in_flight: usize, budget: Budget) -> Phase {
    let shared = Arc::new(budget);
    let start = shared.start();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, budget) = (client.clone(), shared.clone());
            tokio::spawn(async move {
                let mut phase = Phase::default();
                while let Some(n) = budget.claim() {
                    call_add(&client, n, &mut phase).await;
                }
                phase
            })
        })
        .collect();
    let mut total = Phase::default();
    for worker in workers {
        match worker.await {
            Ok(part) => total.absorb(part),
            Err(error) => total.problem(false, || format!("a caller task failed: {error}")),
        }
    }
    total.finish(start.elapsed())
}

/// A child process, stopped (stdin closed, SIGTERM, SIGKILL after 10 s)
/// when dropped, so also on an early return or a panic.
pub(crate) struct ChildGuard(pub(crate) Option<Child>);

impl ChildGuard {
    /// Stops the child and returns its exit status, or `None` if it had to
    /// be killed (or was stopped before).
    pub(crate) fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        drop(child.stdin.take());
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // std has no SIGTERM; `kill` is in every POSIX base system.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times: Linux's USER_HZ,
/// 100 on every architecture it exports to user space.
const USER_HZ: u64 = 100;

/// A `fastworker` child process (a control plane or a subworker), stopped
/// when dropped.
pub(crate) struct FastworkerProcess {
    pub(crate) process: ChildGuard,
    /// What it is, in messages: "control plane", "subworker sw1".
    pub(crate) role: String,
    /// Its base address.
    pub(crate) address: String,
    /// The key file it was given, which its clients then hold.
    pub(crate) keys: Option<Arc<KeyRing>>,
    /// Where its stderr goes.
    pub(crate) log: PathBuf,
}

/// One look at whether a starting process is ready.
pub(crate) enum Probe {
    Ready,
    /// Not yet, and why (reported if it never gets ready).
    NotYet(String),
    /// Something is wrong that waiting will not fix.
    Failed(String),
}

impl FastworkerProcess {
    /// Starts `binary ARGS --base-address tcp://127.0.0.1:BASE` on a free
    /// base port, stderr to a log named after `role` next to `binary`, and
    /// returns once `ready` (which should [`FastworkerProcess::wait_until`])
    /// succeeds. If a port was taken between our check and its bind, tries
    /// another.
    pub(crate) fn start(
        binary: &Path,
        role: &str,
        args: &[OsString],
        mut ready: impl FnMut(&mut FastworkerProcess) -> Result<(), String>,
    ) -> Result<FastworkerProcess, String> {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            // A process given certificates listens on tls+tcp://.
            let scheme = if args.iter().any(|arg| arg == "--tls-cert") { "tls+tcp" } else { "tcp" };
            let address = format!("{scheme}://127.0.0.1:{}", free_base_port()?);
            let mut process = FastworkerProcess::spawn(binary, role, args, address)?;
            match ready(&mut process) {
                Ok(()) => return Ok(process),
                Err(error) => {
                    process.process.stop();
                    let output = std::fs::read_to_string(&process.log).unwrap_or_default();
                    last_error = format!("{error}\n--- {role} log ({}) ---\n{output}", process.log.display());
                    // A port taken between our check and its bind: try another.
                    if !output.contains("already in use") {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// Starts `binary ARGS --base-address ADDRESS`, stderr to a log named
    /// after `role` next to `binary`, without waiting for anything.
    pub(crate) fn spawn(
        binary: &Path,
        role: &str,
        args: &[OsString],
        address: String,
    ) -> Result<FastworkerProcess, String> {
        let log = binary.with_file_name(format!("fastworker-bench-{}.log", role.replace(' ', "-")));
        let stderr = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let child = Command::new(binary)
            .args(args)
            .args(["--base-address", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let key_file = args.windows(2).find(|pair| pair[0] == "--cluster-key-file").map(|pair| &pair[1]);
        let keys = match key_file {
            Some(path) => Some(Arc::new(KeyRing::load(Path::new(path)).map_err(|e| e.to_string())?)),
            None => None,
        };
        Ok(FastworkerProcess { process: ChildGuard(Some(child)), role: role.to_string(), address, keys, log })
    }

    /// Kills it with SIGKILL (a crash) and waits until it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.process.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Calls `probe` every 20 ms until it reports [`Probe::Ready`]; fails if
    /// the process exits, the probe fails, or [`STARTUP_TIMEOUT`] passes.
    pub(crate) fn wait_until(
        &mut self,
        mut probe: impl FnMut(&tokio::runtime::Runtime) -> Probe,
    ) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("building the tokio runtime: {e}"))?;
        let started = Instant::now();
        loop {
            if let Some(child) = self.process.0.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("the {} exited at start with {status}", self.role));
                }
            }
            match probe(&runtime) {
                Probe::Ready => return Ok(()),
                Probe::Failed(error) => return Err(format!("the {} at {}: {error}", self.role, self.address)),
                Probe::NotYet(why) if started.elapsed() > STARTUP_TIMEOUT => {
                    return Err(format!(
                        "the {} at {} not ready after {STARTUP_TIMEOUT:?}: {why}",
                        self.role, self.address
                    ))
                }
                Probe::NotYet(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// A client of it (a control plane), with the benchmark's request timeout.
    pub(crate) fn client(&self) -> Result<Client, String> {
        let client = Client::new(&self.address).map_err(|e| e.to_string())?.with_timeout(REQUEST_TIMEOUT);
        match &self.keys {
            Some(ring) => client.with_keys(ring.clone()).map_err(|e| e.to_string()),
            None => Ok(client),
        }
    }

    /// Its resident memory (VmRSS) in KiB, if the OS tells (Linux /proc).
    pub(crate) fn resident_kib(&self) -> Option<u64> {
        let pid = self.process.0.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
        line.trim().strip_suffix("kB")?.trim().parse().ok()
    }

    /// The CPU time it has used so far, user and system (utime + stime of
    /// `/proc/<pid>/stat`), if the OS tells (Linux /proc).
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(self.process.0.as_ref()?.id())
    }

    /// Stops it (see [`ChildGuard::stop`]); an error says how it did not
    /// exit cleanly.
    pub(crate) fn stop(&mut self) -> Result<(), String> {
        match self.process.stop() {
            Some(status) if status.success() => Ok(()),
            Some(status) => {
                Err(format!("{} exited with {status} after SIGTERM (log: {})", self.role, self.log.display()))
            }
            None => Err(format!("{} did not stop on SIGTERM and was killed (log: {})", self.role, self.log.display())),
        }
    }
}

/// The CPU time process `pid` has used so far, user and system (utime +
/// stime of `/proc/<pid>/stat`; `self` for this process), if the OS tells.
pub(crate) fn cpu_time_of(pid: impl std::fmt::Display) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: fields are
    // counted after its closing one (state is field 3, utime 14, stime 15).
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()?.checked_add(fields.get(12)?.parse::<u64>().ok()?)?;
    Some(Duration::from_millis(ticks.checked_mul(1000 / USER_HZ)?))
}

/// Starts a control plane running `add` on `concurrency` threads if
/// `plugin` is given (with no plugin it runs nothing and only routes to
/// subworkers), with `extra` arguments, and waits until it serves: it
/// refuses a status query for an unknown task id.
pub(crate) fn start_control_plane(
    binary: &Path,
    role: &str,
    plugin: Option<&Path>,
    concurrency: usize,
    extra: &[OsString],
) -> Result<FastworkerProcess, String> {
    let mut args: Vec<OsString> =
        vec!["control-plane".into(), "--no-gui".into(), "--concurrency".into(), concurrency.to_string().into()];
    if let Some(plugin) = plugin {
        args.extend(["--task-modules".into(), plugin.into()]);
        // The rows measure tasks on the control plane's own threads, as they
        // did before worker processes became the default (docs/isolation.md);
        // a build from before then knows no other way, nor the flag.
        if has_worker_processes(binary) {
            args.push("--in-process".into());
        }
    }
    args.extend_from_slice(extra);
    FastworkerProcess::start(binary, role, &args, serving)
}

/// Whether `binary` runs tasks in worker processes by default (it knows
/// `--in-process`): builds from before that run them in-process only.
pub(crate) fn has_worker_processes(binary: &Path) -> bool {
    let help = Command::new(binary).args(["control-plane", "--help"]).stderr(Stdio::null()).output();
    help.is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("--in-process"))
}

/// Starts a control plane in its default mode: `add` runs in
/// `concurrency` supervised worker processes of one run each
/// (docs/isolation.md), with `extra` arguments; waits until it serves and
/// lists every worker process as active.
pub(crate) fn start_isolated_control_plane(
    binary: &Path,
    role: &str,
    plugin: &Path,
    concurrency: usize,
    extra: &[OsString],
) -> Result<FastworkerProcess, String> {
    let mut args: Vec<OsString> =
        vec!["control-plane".into(), "--no-gui".into(), "--concurrency".into(), concurrency.to_string().into()];
    args.extend(["--task-modules".into(), plugin.into()]);
    args.extend_from_slice(extra);
    FastworkerProcess::start(binary, role, &args, |process| {
        serving(process)?;
        let probe = process.client()?.with_timeout(PROBE_TIMEOUT);
        process.wait_until(|runtime| match runtime.block_on(probe.workers()) {
            Ok(cluster) if cluster.active_subworkers as usize >= concurrency => Probe::Ready,
            Ok(cluster) => {
                Probe::NotYet(format!("{} of {concurrency} worker processes active", cluster.active_subworkers))
            }
            Err(error) => Probe::NotYet(format!("asking for its worker processes: {error}")),
        })
    })
}

/// Waits until a starting control plane serves: it refuses a status query
/// for an unknown task id.
pub(crate) fn serving(process: &mut FastworkerProcess) -> Result<(), String> {
    let probe = process.client()?.with_timeout(PROBE_TIMEOUT);
    process.wait_until(|runtime| match runtime.block_on(probe.status(TaskId::new_v4())) {
        Err(ClientError::Refused(_)) => Probe::Ready,
        Ok(report) => Probe::Failed(format!("a random task id has a report: {report:?}")),
        Err(error) => Probe::NotYet(error.to_string()),
    })
}

/// Starts subworker `worker_id` running the plugin's tasks on `concurrency`
/// threads for `control_plane`, and waits until that lists it as active.
pub(crate) fn start_subworker(
    binary: &Path,
    plugin: &Path,
    control_plane: &FastworkerProcess,
    worker_id: &str,
    concurrency: usize,
) -> Result<FastworkerProcess, String> {
    let args: Vec<OsString> = vec![
        "subworker".into(),
        "--worker-id".into(),
        worker_id.into(),
        "--control-plane-address".into(),
        (&control_plane.address).into(),
        "--task-modules".into(),
        plugin.into(),
        "--concurrency".into(),
        concurrency.to_string().into(),
    ];
    let probe = Client::new(&control_plane.address).map_err(|e| e.to_string())?.with_timeout(PROBE_TIMEOUT);
    FastworkerProcess::start(binary, &format!("subworker {worker_id}"), &args, |process| {
        process.wait_until(|runtime| match runtime.block_on(probe.workers()) {
            Ok(cluster) => match cluster.subworkers.iter().find(|w| w.worker_id == worker_id) {
                Some(worker) if worker.status == WorkerState::Active => Probe::Ready,
                Some(worker) => Probe::NotYet(format!("the control plane lists it as {:?}", worker.status)),
                None => Probe::NotYet("the control plane does not list it".into()),
            },
            Err(error) => Probe::NotYet(format!("asking the control plane for its subworkers: {error}")),
        })
    })
}

/// Fails unless the control plane's client lists exactly `count` subworkers, all active.
pub(crate) fn expect_cluster(runtime: &Runtime, client: &Client, count: usize) -> Option<String> {
    match runtime.block_on(client.workers()) {
        Ok(cluster) if cluster.total_subworkers as usize == count && cluster.active_subworkers as usize == count => {
            None
        }
        Ok(cluster) => Some(format!(
            "the cluster control plane lists {} subworkers, {} active, where {count} active were expected",
            cluster.total_subworkers, cluster.active_subworkers
        )),
        Err(error) => Some(format!("asking the cluster control plane for its subworkers: {error}")),
    }
}

/// `add` through `client` one call at a time, after a warm-up.
pub(crate) fn blocking_add(runtime: &Runtime, client: &Client, budget: Budget) -> Phase {
    let phase = |budget| Ok(runtime.block_on(add_blocking(client, budget)));
    warmed(budget, phase).expect("infallible")
}

/// `add` through `client` with `in_flight` calls at once, after a warm-up.
pub(crate) fn pipelined_add(runtime: &Runtime, client: &Client, in_flight: usize, budget: Budget) -> Phase {
    let phase = |budget| Ok(runtime.block_on(add_pipelined(client, in_flight, budget)));
    warmed(budget, phase).expect("infallible")
}
