//! Helpers for the black-box tests: build the workspace once, start real
//! `fastworker` processes on free ports, and talk to them over NNG.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fastworker::protocol::{ClusterStatus, WorkerState, WorkerStatus};
use fastworker::{Client, ClientError, TaskId};

pub mod attack;
pub mod browser;
pub mod http;

/// The workspace's target directory, with every binary and plugin built.
pub fn target_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        // `cargo test` builds test harnesses, not the fastworker binary or the
        // cdylib plugins the tests load, so build them here (a no-op when fresh).
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--quiet"])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --workspace failed");
        // tests run from target/debug/deps/<test binary>
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent().and_then(Path::parent).expect("target profile directory").to_path_buf()
    })
}

/// The `fastworker` binary.
pub fn fastworker_bin() -> PathBuf {
    target_dir().join("fastworker")
}

/// A plugin built from this workspace, by package name (`example-tasks`).
pub fn plugin(package: &str) -> PathBuf {
    let file = format!("{}{}{}", std::env::consts::DLL_PREFIX, package.replace('-', "_"), std::env::consts::DLL_SUFFIX);
    let path = target_dir().join(file);
    assert!(path.is_file(), "plugin {} was not built", path.display());
    path
}

/// A base port whose six ports (base..base+5) were free a moment ago.
pub fn free_base_port() -> u16 {
    free_ports(6)
}

/// The port of a base address (`tcp://127.0.0.1:5555`, `tls+tcp://…`).
pub fn base_port(address: &str) -> u16 {
    let port = address.rsplit(':').next().unwrap_or_default();
    port.parse().unwrap_or_else(|_| panic!("'{address}' ends with no port"))
}

/// The first of `count` consecutive ports that were free a moment ago and
/// were never handed out before in this test process: a port a killed
/// process of one test freed is not given to another test, whose process
/// would then answer the first test's reconnecting client.
pub fn free_ports(count: u16) -> u16 {
    use std::collections::BTreeSet;
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    loop {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let base = 20_000 + (state % 40_000) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = handed_out.range(base..base + count).next().is_none();
        if fresh && (0..count).all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok()) {
            handed_out.extend(base..base + count);
            return base;
        }
    }
}

/// Calls `ready` every 20 ms until it returns true (then true) or `limit`
/// has passed (then false). Blocking: call it outside async code.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `fastworker` child process, killed when dropped.
pub struct Process {
    child: Option<Child>,
    /// Its base address.
    pub address: String,
    /// Its dashboard's URL (`http://127.0.0.1:PORT`), when started with one.
    pub gui: Option<String>,
    /// The key file it was started with, for [`Process::client`].
    pub keys: Option<std::sync::Arc<fastworker::auth::KeyRing>>,
    stderr_path: PathBuf,
}

impl Process {
    /// Starts `fastworker control-plane` with `plugins` and `extra` flags on
    /// a free base port, and waits until it answers.
    pub fn control_plane(plugins: &[&str], extra: &[&str]) -> Process {
        Self::control_plane_with_env(plugins, extra, &[])
    }

    /// As [`Process::control_plane`], with environment variables.
    pub fn control_plane_with_env(plugins: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Process {
        Self::start_control_plane(plugins, extra, env, false)
    }

    /// As [`Process::control_plane_with_env`], serving the dashboard on a
    /// free port of 127.0.0.1; its URL is in `gui`.
    pub fn control_plane_with_gui(plugins: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Process {
        Self::start_control_plane(plugins, extra, env, true)
    }

    fn start_control_plane(plugins: &[&str], extra: &[&str], env: &[(&str, &str)], gui: bool) -> Process {
        for _attempt in 0..5 {
            let base = free_base_port();
            let address = format!("tcp://127.0.0.1:{base}");
            let mut args: Vec<String> = vec!["control-plane".into(), "--base-address".into(), address.clone()];
            let gui_port = gui.then(|| loop {
                let port = free_ports(1);
                if !(base..base + 6).contains(&port) {
                    break port;
                }
            });
            match gui_port {
                Some(port) => args.extend(["--gui-port".into(), port.to_string()]),
                None => args.push("--no-gui".into()),
            }
            if !plugins.is_empty() {
                args.push("--task-modules".into());
                args.extend(plugins.iter().map(|p| plugin(p).display().to_string()));
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut process = Process::spawn(&args, env, address);
            process.gui = gui_port.map(|port| format!("http://127.0.0.1:{port}"));
            let key_file = env.iter().find(|(name, _)| *name == "FASTWORKER_CLUSTER_KEY_FILE").map(|(_, path)| *path);
            let key_file = key_file.or_else(|| extra.windows(2).find(|w| w[0] == "--cluster-key-file").map(|w| w[1]));
            process.keys =
                key_file.map(|path| std::sync::Arc::new(fastworker::auth::KeyRing::load(Path::new(path)).unwrap()));
            // The dashboard binds after the task ports: wait for it too.
            let ready = process.wait_ready(Duration::from_secs(20)).and_then(|()| match gui_port {
                Some(port) => process.wait_for_port(port, Duration::from_secs(20)),
                None => Ok(()),
            });
            let isolated = !plugins.is_empty()
                && !extra.contains(&"--in-process")
                && !extra.windows(2).any(|w| w == ["--concurrency", "0"])
                && !env.iter().any(|(name, _)| *name == "FASTWORKER_IN_PROCESS");
            let ready = ready.and_then(|()| if isolated { process.wait_worker_processes() } else { Ok(()) });
            match ready {
                Ok(()) => return process,
                Err(log) if log.contains("already in use") => continue,
                Err(log) => panic!("control plane did not start:\n{log}"),
            }
        }
        panic!("no free base port found in 5 attempts");
    }

    /// Starts `fastworker subworker --worker-id WORKER_ID` with `plugins`
    /// and `extra` flags on a free 4-port base, registering with
    /// `control_plane`, and waits until the control plane lists it as
    /// active at its address. Panics with both logs when it does not
    /// within 20 s.
    pub fn subworker(control_plane: &Process, worker_id: &str, plugins: &[&str], extra: &[&str]) -> Process {
        'attempt: for _attempt in 0..5 {
            let mut process = Process::spawn_subworker(control_plane, worker_id, plugins, extra);
            let deadline = Instant::now() + Duration::from_secs(20);
            // This process, not an earlier one with the same id.
            let port = format!(":{}", process.address.rsplit(':').next().unwrap());
            let advertised = extra.iter().any(|flag| flag.starts_with("--advertise-address"));
            let is_ours = |address: &str| advertised || address.ends_with(&port);
            loop {
                if let Some(status) = process.child.as_mut().unwrap().try_wait().unwrap() {
                    let log = process.log();
                    if log.contains("already in use") {
                        continue 'attempt;
                    }
                    panic!("subworker '{worker_id}' exited with {status} before registering:\n{log}");
                }
                let last = match control_plane.workers() {
                    Ok(cluster) => {
                        let listed = cluster.subworkers.into_iter().find(|w| w.worker_id == worker_id);
                        if listed.as_ref().is_some_and(|w| w.status == WorkerState::Active && is_ours(&w.address)) {
                            return process;
                        }
                        format!("{listed:?}")
                    }
                    Err(error) => format!("workers() failed: {error}"),
                };
                if Instant::now() >= deadline {
                    panic!(
                        "subworker '{worker_id}' not listed as active after 20 s (last: {last})\n\
                         subworker log:\n{}\ncontrol plane log:\n{}",
                        process.log(),
                        control_plane.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("no free subworker base port found in 5 attempts");
    }

    /// Spawns `fastworker subworker` for `control_plane` on a free 4-port
    /// base without waiting for anything; its `address` is its base address.
    pub fn spawn_subworker(control_plane: &Process, worker_id: &str, plugins: &[&str], extra: &[&str]) -> Process {
        let address = format!("tcp://127.0.0.1:{}", free_ports(4));
        let mut args: Vec<String> = vec![
            "subworker".into(),
            "--worker-id".into(),
            worker_id.into(),
            "--control-plane-address".into(),
            control_plane.address.clone(),
            "--base-address".into(),
            address.clone(),
        ];
        if !plugins.is_empty() {
            args.push("--task-modules".into());
            args.extend(plugins.iter().map(|p| plugin(p).display().to_string()));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Process::spawn(&args, &[], address)
    }

    /// This control plane's cluster status (`workers()` with a 5 s timeout).
    /// Blocking: call it outside async code.
    pub fn workers(&self) -> Result<ClusterStatus, ClientError> {
        let client = self.client().with_timeout(Duration::from_secs(5));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(client.workers())
    }

    /// The subworker `worker_id` as this control plane lists it, if it does
    /// (`None` also when the query fails). Blocking: call it outside async code.
    pub fn worker(&self, worker_id: &str) -> Option<WorkerStatus> {
        self.workers().ok()?.subworkers.into_iter().find(|w| w.worker_id == worker_id)
    }

    /// Spawns `fastworker` with `args`, stderr to a log file.
    pub fn spawn(args: &[String], env: &[(&str, &str)], address: String) -> Process {
        Self::spawn_in(None, args, env, address)
    }

    /// As [`Process::spawn`], in the working directory `dir` when given.
    pub fn spawn_in(dir: Option<&Path>, args: &[String], env: &[(&str, &str)], address: String) -> Process {
        let stderr_path = std::env::temp_dir().join(format!("fastworker-test-{}.log", TaskId::new_v4()));
        let stderr = std::fs::File::create(&stderr_path).expect("creating a log file");
        let mut command = Command::new(fastworker_bin());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).env("FASTWORKER_LOG", "info");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawning fastworker");
        Process { child: Some(child), address, gui: None, keys: None, stderr_path }
    }

    /// Waits until the control plane answers a status query, or returns its log.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        // Dial only once the result port listens: NNG 1.4 can crash a
        // process that closes a socket whose dialer is between two failed
        // connection attempts (fixed upstream in later releases), and a
        // test's client must never be that socket.
        let result_port = base_port(&self.address) + 4;
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.wait_for_port(result_port, remaining)?;
        let client = Client::new(&self.address).unwrap().with_timeout(Duration::from_millis(300));
        let runtime = runtime();
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            match runtime.block_on(client.status(TaskId::new_v4())) {
                Err(ClientError::Refused(_)) => return Ok(()),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Err(format!("not answering after {limit:?}:\n{}", self.log()))
    }

    /// Waits until the control plane's worker processes (docs/isolation.md)
    /// are all listed active, so that a test's first timings do not include
    /// their start, or returns the log.
    pub fn wait_worker_processes(&mut self) -> Result<(), String> {
        let mut expected = None;
        let listed = wait_until(Duration::from_secs(30), || {
            let log = self.log();
            expected = expected.or_else(|| {
                let line = log.lines().find(|l| l.contains("worker processes of"))?;
                line.split("tasks run in ").nth(1)?.split(' ').next()?.parse::<usize>().ok()
            });
            let Some(expected) = expected else { return false };
            self.workers().is_ok_and(|cluster| {
                let active = |w: &&WorkerStatus| w.worker_id.starts_with("local-") && w.status == WorkerState::Active;
                cluster.subworkers.iter().filter(active).count() >= expected
            })
        });
        if listed {
            Ok(())
        } else {
            Err(format!("worker processes not all active after 30 s (expected {expected:?}):\n{}", self.log()))
        }
    }

    /// Waits until something accepts TCP connections on 127.0.0.1:`port`
    /// (the dashboard), or returns the log.
    pub fn wait_for_port(&mut self, port: u16, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("nothing listening on port {port} after {limit:?}:\n{}", self.log()))
    }

    /// A client of this control plane with a 10 s timeout (holding the
    /// operator's key when the control plane was started with a key file).
    pub fn client(&self) -> Client {
        let client = Client::new(&self.address).unwrap().with_timeout(Duration::from_secs(10));
        match &self.keys {
            Some(ring) => client.with_keys(ring.clone()).unwrap(),
            None => client,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`, `STOP` to freeze it, `CONT`
    /// to let it go on; a stopped process is still killed when dropped).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").args([format!("-{name}"), pid.to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// Whether the process is still running (it has not exited, nor been
    /// killed by a signal, e.g. aborted).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Runs the `fastworker` command line to completion, within [`CLI_LIMIT`].
pub fn run_cli(args: &[&str]) -> Output {
    let mut command = Command::new(fastworker_bin());
    command.args(args);
    output_within(command, CLI_LIMIT)
}

/// How long any command a test runs may take: a regression that hangs
/// fails its test instead of the suite.
pub const CLI_LIMIT: Duration = Duration::from_secs(90);

/// Runs `command` (no standard input) to completion and returns its output;
/// past `limit` it is killed and the test fails, naming the command and what
/// it printed so far.
pub fn output_within(mut command: Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
            panic!(
                "{command:?} ran past {limit:?} and was killed; it printed:\n{}\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Every report of `ids` once all are final, or `None` after `limit`.
pub fn final_reports(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    ids: &[TaskId],
    limit: Duration,
) -> Option<Vec<fastworker::TaskReport>> {
    let mut reports = Vec::new();
    let done = wait_until(limit, || {
        reports = ids.iter().filter_map(|id| rt.block_on(client.status(*id)).ok()).collect();
        reports.len() == ids.len() && reports.iter().all(|r| r.state.is_final())
    });
    done.then_some(reports)
}

/// A multi-threaded tokio runtime for tests that drive the async client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
