//! One subworker process, assembled: the serving part (a [`ControlPlane`]
//! with its task ports only, running the plugins' tasks) and its membership
//! of a control plane (register, report starts, heartbeat), with the leave
//! and the drain that hand nothing back unfinished. The command line only
//! parses flags into a [`SubworkerConfig`]; tests, the benchmark and worker
//! processes start a subworker the same way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::client::ClientError;
use crate::cluster::subworker::{Membership, MembershipConfig, MembershipError};
use crate::control_plane::{ControlPlane, StartError};
use crate::plugins::Registry;
use crate::server::bounds::Bounds;
use crate::server::config::{ControlPlaneConfig, ManagementConfig};
use crate::server::endpoint::ListenError;
use crate::server::worker_processes::{free_ports, WorkerProcessesConfig};
use crate::wire::address::BaseAddress;
use crate::wire::auth::KeyRing;

/// How often a draining subworker reports the runs that started, and looks
/// whether the drain is over.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// What a subworker needs to serve and to join its control plane.
#[derive(Debug, Clone)]
pub struct SubworkerConfig {
    /// Its `--worker-id`, unique in the cluster.
    pub worker_id: String,
    /// Where its task ports listen.
    pub base: BaseAddress,
    /// The control plane's base address.
    pub control_plane: String,
    /// The base address the control plane dials (the `--advertise-address`,
    /// else `base`).
    pub advertise: String,
    /// Tasks it runs at once (its threads).
    pub concurrency: u32,
    /// Tasks it takes ahead beyond `concurrency`.
    pub prefetch: u32,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// How long a stop waits for queued and running tasks.
    pub shutdown_timeout: Duration,
    /// The bounds of what a peer can make it spend.
    pub bounds: Bounds,
    /// The keys it seals its requests with and accepts tasks under.
    pub keys: Option<Arc<KeyRing>>,
    /// Worker processes of its own that run its tasks (docs/isolation.md),
    /// so that a crash costs one of them, not the subworker; `None` runs
    /// them on `concurrency` threads of this process.
    pub worker_processes: Option<WorkerProcessesConfig>,
}

/// Why a subworker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SubworkerError {
    /// Its control plane's address or its keys are unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Its ports could not be bound.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The control plane refused it (a duplicate id, a bad key, …).
    #[error(transparent)]
    Refused(#[from] MembershipError),
    /// No ports of 127.0.0.1 were free for its worker processes to dial.
    #[error("no free ports on 127.0.0.1 for the worker processes to dial: {0}")]
    LocalPorts(std::io::Error),
}

impl SubworkerError {
    /// Whether another process took one of its ports first (a worker
    /// process's supervisor then starts it again on other ports).
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, SubworkerError::Start(StartError::Listen(ListenError::AddressInUse { .. })))
    }
}

/// A serving subworker that has not joined its control plane yet.
pub struct Subworker {
    server: Arc<ControlPlane>,
    membership: Membership,
    heartbeat_interval: Duration,
}

impl Subworker {
    /// Binds the task ports and starts the worker threads for `registry`'s
    /// tasks; nothing is sent to the control plane before [`Subworker::run`].
    pub fn start(config: SubworkerConfig, registry: Registry) -> Result<Subworker, SubworkerError> {
        let membership = MembershipConfig {
            worker_id: config.worker_id.clone(),
            control_plane: config.control_plane,
            advertise: config.advertise,
            concurrency: config.concurrency,
            prefetch: config.prefetch,
            heartbeat_interval: config.heartbeat_interval,
            keys: config.keys.clone(),
        };
        let membership = Membership::new(membership, registry.offered())?;
        // With worker processes, it is their control plane too, on two
        // ports of 127.0.0.1 of its own (a result port and a management
        // port), and runs nothing on its threads.
        let management = match &config.worker_processes {
            Some(workers) => Some(local_management(workers.max_task_crashes).map_err(SubworkerError::LocalPorts)?),
            None => None,
        };
        let concurrency = if management.is_some() { 0 } else { config.concurrency as usize };
        let serving = ControlPlaneConfig {
            worker_id: config.worker_id,
            subworker: true,
            base: config.base,
            concurrency,
            // Results are kept by the control plane, which also sends a task
            // again to retry it: a subworker keeps none.
            result_cache_size: 0,
            result_cache_ttl: None,
            shutdown_timeout: config.shutdown_timeout,
            bounds: config.bounds,
            keys: config.keys,
            management,
            discovery: None,
            state_dir: None,
        };
        let mut server = ControlPlane::start(serving, registry)?;
        if let Some(workers) = config.worker_processes {
            server.start_worker_processes(workers);
        }
        let server = Arc::new(server);
        Ok(Subworker { server, membership, heartbeat_interval: config.heartbeat_interval })
    }

    /// As a control plane's worker process: records each run's start and
    /// end on the descriptor `fd` its supervisor passed (see
    /// [`ControlPlane::log_runs_to`]).
    pub fn log_runs_to(&self, fd: i32) -> std::io::Result<()> {
        self.server.log_runs_to(fd)
    }

    /// As a control plane's worker process: starts at most `max` runs,
    /// then stops to be replaced (see [`ControlPlane::stop_after_runs`]).
    pub fn stop_after_runs(&self, max: u64) {
        self.server.stop_after_runs(max);
    }

    /// As a control plane's worker process: serves its link on the socket
    /// `fd` its supervisor passed (see [`ControlPlane::serve_link`]).
    pub fn serve_link(&self, fd: i32) -> std::io::Result<()> {
        self.server.serve_link(fd)
    }

    /// Joins the control plane and serves it until `stop` resolves (or, in
    /// a worker process, its last run allowed starts); then
    /// leaves (the control plane sends nothing new), finishes what it holds
    /// within the shutdown timeout while still heartbeating, unregisters and
    /// closes its ports. A refusal by the control plane ends it at once.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), SubworkerError> {
        let Subworker { server, membership, heartbeat_interval } = self;
        let in_flight = || server.in_flight() as u32;
        // Started runs are reported as they start, so that their timeouts run
        // from their start (one request at a time, batching what accumulates).
        let keep_reporting = || async {
            loop {
                server.started_ready().await;
                report_started(&server, &membership).await;
            }
        };
        let refused = tokio::select! {
            () = stop => None,
            () = server.runs_spent() => None,
            result = membership.run_woken(in_flight, || server.connection_dropped()) => result.err(),
            () = keep_reporting() => None,
        };
        if let Some(refusal) = refused {
            server.drain();
            return Err(refusal.into());
        }
        // Leaving is one request (up to its timeout if the control plane
        // does not answer): meanwhile a run that lasts still has the link
        // read by another thread, as the start reporter does while serving.
        let leaving = membership.leave();
        tokio::pin!(leaving);
        let left = loop {
            tokio::select! {
                result = &mut leaving => break result,
                () = tokio::time::sleep(DRAIN_POLL) => server.hand_over_link(),
            }
        };
        if let Err(error) = left {
            warn!(%error, "could not tell the control plane this subworker is stopping");
        }
        // Drain on another thread while heartbeats go on, so the control
        // plane keeps waiting for the tasks still running here.
        let draining = {
            let server = server.clone();
            std::thread::spawn(move || server.drain())
        };
        let mut next_heartbeat = tokio::time::Instant::now();
        while !draining.is_finished() {
            report_started(&server, &membership).await;
            if tokio::time::Instant::now() >= next_heartbeat {
                if let Err(error) = membership.heartbeat(in_flight()).await {
                    warn!(%error, "a heartbeat failed while draining");
                }
                next_heartbeat = tokio::time::Instant::now() + heartbeat_interval;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if let Err(error) = membership.unregister().await {
            warn!(%error, "could not unregister from the control plane; it will notice the closed connection");
        }
        if let Ok(server) = Arc::try_unwrap(server) {
            server.shutdown();
        }
        Ok(())
    }
}

/// The management side a subworker keeps for its own worker processes: a
/// result port and a management port on two free ports of 127.0.0.1.
fn local_management(max_task_crashes: u32) -> std::io::Result<ManagementConfig> {
    let result_port = free_ports(2)?;
    let local = BaseAddress::parse(&format!("tcp://127.0.0.1:{}", result_port - 4))
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string()))?;
    Ok(ManagementConfig {
        port: result_port + 1,
        inactive_after: LOCAL_INACTIVE_AFTER,
        restart_window: Duration::ZERO,
        provider_grace: LOCAL_PROVIDER_GRACE,
        task_limits: Vec::new(),
        max_task_crashes,
        local_base: Some(local),
    })
}

/// Silence after which one of a subworker's worker processes (heartbeating
/// every second) is excluded.
const LOCAL_INACTIVE_AFTER: Duration = Duration::from_secs(10);
/// How long a subworker's runs wait for a worker process once every one of
/// them was given up, before they fail.
const LOCAL_PROVIDER_GRACE: Duration = Duration::from_secs(30);

/// Reports the runs that started since the last report, if any.
async fn report_started(server: &ControlPlane, membership: &Membership) {
    // A run that lasts this long (the report's delay) has the link read
    // by another thread meanwhile (a worker process's; nothing elsewhere).
    server.hand_over_link();
    let mut taken = TakenStarts { server, runs: server.take_started() };
    if taken.runs.is_empty() {
        return;
    }
    let result = membership.started(taken.runs.clone()).await;
    // Sent (or refused, and said so): nothing to put back.
    taken.runs.clear();
    if let Err(error) = result {
        warn!(%error, "could not report started tasks to the control plane");
    }
}

/// Runs taken for a start report, put back if the report is dropped unsent
/// (the process began to stop meanwhile), so that the stop's reports carry
/// them and the control plane does not read them queued until they end.
struct TakenStarts<'a> {
    server: &'a ControlPlane,
    runs: Vec<(crate::wire::protocol::TaskId, u64)>,
}

impl Drop for TakenStarts<'_> {
    fn drop(&mut self) {
        if !self.runs.is_empty() {
            self.server.put_back_started(std::mem::take(&mut self.runs));
        }
    }
}
