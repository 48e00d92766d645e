//! The control plane and subworkers as child processes, their clients, and fake subworkers.

use super::*;

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
    }
    args.extend_from_slice(extra);
    FastworkerProcess::start(binary, role, &args, serving)
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

/// Subworkers that only register with a control plane, from this process:
/// weight on its routing table, never sent a task. Each listens on a port of
/// its own (a Rep0 socket that is never read: the control plane only has to
/// connect back to it), provides one task that nobody submits (`noop_I`),
/// and, while registered, heartbeats every [`FAKE_HEARTBEAT`] as a real
/// subworker does, so that it stays active however long the phase.
pub(crate) struct FakeSubworkers {
    /// Keeps each fake's port open.
    pub(crate) _sockets: Vec<Socket>,
    pub(crate) registrations: Vec<Registration>,
    /// While registered: the control plane's management port and the heartbeats.
    pub(crate) joined: Option<(Client, tokio::task::JoinHandle<()>)>,
}

impl FakeSubworkers {
    /// `count` fakes of `concurrency` slots each, listening, not registered yet.
    pub(crate) fn new(count: usize, concurrency: u32) -> Result<FakeSubworkers, String> {
        let mut sockets = Vec::with_capacity(count);
        let mut registrations = Vec::with_capacity(count);
        for index in 0..count {
            let (socket, address) = listen_somewhere()?;
            sockets.push(socket);
            let task = OfferedTask {
                name: format!("noop_{index}"),
                priority: Priority::Normal,
                timeout_ms: 0,
                max_retries: 0,
                retry_delay_ms: 0,
                schedule: String::new(),
            };
            let name = WorkerName { worker_id: format!("fake{index}"), instance: TaskId::new_v4() };
            registrations.push(Registration { name, address, concurrency, prefetch: 0, tasks: vec![task] });
        }
        Ok(FakeSubworkers { _sockets: sockets, registrations, joined: None })
    }

    /// Registers every fake with the control plane at `control_plane`, all at
    /// once; returns once it has connected to each, with the failures.
    pub(crate) async fn join(&mut self, control_plane: &str) -> Vec<String> {
        let client = match Client::new(control_plane) {
            Ok(client) => client.with_timeout(REGISTER_TIMEOUT),
            Err(error) => return vec![error.to_string()],
        };
        let management = match client.discover().await {
            Ok(port) => client.with_management_port(port),
            Err(error) => return vec![format!("asking {control_plane} for its management port: {error}")],
        };
        // At most as many at once as a control plane dials back by default
        // (--max-pending-registrations 16); a Busy answer is retried.
        let mut pending = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        for registration in self.registrations.iter().cloned() {
            let (management, permits) = (management.clone(), permits.clone());
            pending.spawn(async move {
                let _permit = permits.acquire().await;
                let id = registration.name.worker_id.clone();
                let request = Request::Register(registration);
                for _ in 0..50 {
                    match management.manage(&request).await {
                        Err(ClientError::Refused(refusal)) if refusal.kind == ErrorKind::Busy => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        outcome => return outcome.map_err(|e| format!("registering {id}: {e}")),
                    }
                }
                Err(format!("registering {id}: still busy after 50 tries"))
            });
        }
        let mut failures = Vec::new();
        while let Some(outcome) = pending.join_next().await {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => failures.push(failure),
                Err(error) => failures.push(format!("a registration task failed: {error}")),
            }
        }
        let names = self.registrations.iter().map(|r| r.name.clone()).collect();
        let heartbeats = tokio::spawn(heartbeat_forever(management.clone(), names));
        self.joined = Some((management, heartbeats));
        failures
    }

    /// Unregisters every fake, as a subworker does when it stops; returns the failures.
    pub(crate) async fn leave(&mut self) -> Vec<String> {
        let Some((management, heartbeats)) = self.joined.take() else { return Vec::new() };
        heartbeats.abort();
        let mut failures = Vec::new();
        for Registration { name, .. } in &self.registrations {
            if let Err(error) = management.manage(&Request::Unregister(name.clone())).await {
                failures.push(format!("unregistering {}: {error}", name.worker_id));
            }
        }
        failures
    }
}

impl Drop for FakeSubworkers {
    fn drop(&mut self) {
        if let Some((_, heartbeats)) = &self.joined {
            heartbeats.abort();
        }
    }
}

/// Heartbeats for every fake every [`FAKE_HEARTBEAT`] (each with no task in
/// flight) until aborted; a failed heartbeat shows in the cluster check.
pub(crate) async fn heartbeat_forever(management: Client, names: Vec<WorkerName>) {
    loop {
        tokio::time::sleep(FAKE_HEARTBEAT).await;
        for name in &names {
            let _ = management.manage(&Request::Heartbeat(Heartbeat { name: name.clone(), in_flight: 0 })).await;
        }
    }
}

/// A Rep0 socket listening on a free port of 127.0.0.1, and its address.
pub(crate) fn listen_somewhere() -> Result<(Socket, String), String> {
    let mut last_error = String::new();
    for _attempt in 0..10 {
        let address = format!("tcp://127.0.0.1:{}", free_port()?);
        let socket = Socket::new(Protocol::Rep0).map_err(|e| e.to_string())?;
        match socket.listen(&address) {
            Ok(()) => return Ok((socket, address)),
            // Taken between our check and the bind: try another.
            Err(error) => last_error = format!("listening on {address}: {error}"),
        }
    }
    Err(last_error)
}
