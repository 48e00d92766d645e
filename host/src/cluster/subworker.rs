//! The subworker's side of membership: find the control plane's management
//! port, register, heartbeat, and leave cleanly. The serving itself is a
//! [`crate::ControlPlane`] with its task ports only.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::client::{Client, ClientError};
use crate::wire::auth::{KeyRing, Role};
use crate::wire::protocol::{ErrorKind, Heartbeat, OfferedTask, Registration, Request, Started, TaskId, WorkerName};

/// The longest pause between registration attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The first pause before a heartbeat that follows a failed one: a control
/// plane that restarts is found again well within one heartbeat interval.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// How long a registration may take: the control plane connects back first.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a subworker announces itself.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Its `--worker-id`.
    pub worker_id: String,
    /// The control plane's base address.
    pub control_plane: String,
    /// The base address the control plane dials to send tasks.
    pub advertise: String,
    /// Tasks it runs at once.
    pub concurrency: u32,
    /// Tasks it takes ahead, queued here, beyond `concurrency`.
    pub prefetch: u32,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// The keys it seals management requests with (the worker key) and
    /// accepts forwarded tasks under (`--cluster-key-file`).
    pub keys: Option<Arc<KeyRing>>,
}

/// Why a subworker cannot join at all (retrying would not help).
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The control plane refused it, saying why.
    #[error("the control plane at {control_plane} refused this subworker: {message}")]
    Refused {
        /// The control plane's base address.
        control_plane: String,
        /// Its reason.
        message: String,
    },
}

/// A subworker's membership of a cluster.
pub struct Membership {
    config: MembershipConfig,
    name: WorkerName,
    tasks: Vec<OfferedTask>,
    discovery: Client,
    /// The client of the management port found at the last registration,
    /// reused by heartbeats, leaving and unregistering.
    management: std::sync::Mutex<Option<Client>>,
}

impl Membership {
    /// Prepares to join the control plane (no I/O yet).
    pub fn new(config: MembershipConfig, tasks: Vec<OfferedTask>) -> Result<Membership, ClientError> {
        let mut discovery = Client::new(&config.control_plane)?.with_timeout(Duration::from_secs(2));
        if let Some(ring) = &config.keys {
            discovery = discovery.with_key(ring.signer(Role::Worker)?, ring.clone());
        }
        let name = WorkerName { worker_id: config.worker_id.clone(), instance: uuid::Uuid::new_v4() };
        Ok(Membership { config, name, tasks, discovery, management: Default::default() })
    }

    /// Registers (retrying with backoff while the control plane cannot be
    /// reached), then heartbeats, registering again whenever the control
    /// plane has forgotten this worker. Returns only on a refusal.
    pub async fn run(&self, in_flight: impl Fn() -> u32) -> Result<(), MembershipError> {
        self.run_woken(in_flight, std::future::pending::<()>).await
    }

    /// As [`Membership::run`], heartbeating at once whenever `woken`
    /// completes (the control plane's connection to this worker dropped:
    /// a restarted control plane is then found as soon as it serves).
    pub async fn run_woken<F: std::future::Future<Output = ()>>(
        &self,
        in_flight: impl Fn() -> u32,
        woken: impl Fn() -> F,
    ) -> Result<(), MembershipError> {
        loop {
            let management = self.register().await?;
            let mut failures = 0u32;
            loop {
                // After a failure, heartbeats come sooner (doubling back up
                // to the interval), so a restarted control plane hears from
                // this worker, and has it register again, quickly.
                let pause = match failures {
                    0 => self.config.heartbeat_interval,
                    n => FIRST_RETRY.saturating_mul(1 << n.min(8)).min(self.config.heartbeat_interval),
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = woken() => info!("the control plane's connection to this subworker dropped: heartbeating now"),
                }
                let heartbeat = Heartbeat { name: self.name.clone(), in_flight: in_flight() };
                match management.manage(&Request::Heartbeat(heartbeat)).await {
                    Ok(()) => {
                        if failures > 0 {
                            info!("the control plane answers heartbeats again");
                        }
                        failures = 0;
                    }
                    Err(ClientError::Refused(refusal)) if refusal.kind == ErrorKind::UnknownWorker => {
                        warn!("{}", refusal.message);
                        break;
                    }
                    Err(error) => {
                        failures += 1;
                        if failures == 1 {
                            warn!(%error, "a heartbeat failed; still serving and retrying");
                        }
                    }
                }
            }
        }
    }

    /// Registers, retrying with backoff; the client of the management port.
    async fn register(&self) -> Result<Client, MembershipError> {
        let control_plane = &self.config.control_plane;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_register().await {
                Ok(management) => {
                    info!(
                        worker_id = %self.config.worker_id,
                        %control_plane,
                        address = %self.config.advertise,
                        tasks = self.tasks.len(),
                        "registered with the control plane; serving"
                    );
                    return Ok(management);
                }
                Err(ClientError::Refused(refusal))
                    if matches!(
                        refusal.kind,
                        ErrorKind::DuplicateWorker
                            | ErrorKind::WorkerUnreachable
                            | ErrorKind::BadRegistration
                            | ErrorKind::Unauthenticated
                            | ErrorKind::Forbidden
                    ) =>
                {
                    return Err(MembershipError::Refused {
                        control_plane: control_plane.clone(),
                        message: refusal.message,
                    });
                }
                Err(error) => {
                    warn!(%control_plane, "cannot register yet: {error}; retrying in {:.1} s", backoff.as_secs_f64());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn try_register(&self) -> Result<Client, ClientError> {
        let port = self.discovery.discover().await?;
        let management = self.discovery.clone().with_management_port(port).with_timeout(REGISTER_TIMEOUT);
        let registration = Registration {
            name: self.name.clone(),
            address: self.config.advertise.clone(),
            concurrency: self.config.concurrency,
            prefetch: self.config.prefetch,
            tasks: self.tasks.clone(),
        };
        management.manage(&Request::Register(registration)).await?;
        let management = management.with_timeout(Duration::from_secs(5));
        *self.management.lock().expect("management lock") = Some(management.clone());
        Ok(management)
    }

    /// Sends one heartbeat.
    pub async fn heartbeat(&self, in_flight: u32) -> Result<(), ClientError> {
        let heartbeat = Heartbeat { name: self.name.clone(), in_flight };
        self.management().await?.manage(&Request::Heartbeat(heartbeat)).await
    }

    /// Tells the control plane these runs, sent under these leases, started
    /// (their timeouts run from now).
    pub async fn started(&self, runs: Vec<(TaskId, u64)>) -> Result<(), ClientError> {
        let started = Started { name: self.name.clone(), runs };
        self.management().await?.manage(&Request::Started(started)).await
    }

    /// Asks the control plane to send nothing new (before draining).
    pub async fn leave(&self) -> Result<(), ClientError> {
        self.management().await?.manage(&Request::Leave(self.name.clone())).await
    }

    /// Tells the control plane this worker is gone (after draining).
    pub async fn unregister(&self) -> Result<(), ClientError> {
        self.management().await?.manage(&Request::Unregister(self.name.clone())).await
    }

    async fn management(&self) -> Result<Client, ClientError> {
        if let Some(management) = self.management.lock().expect("management lock").clone() {
            return Ok(management);
        }
        let port = self.discovery.discover().await?;
        Ok(self.discovery.clone().with_management_port(port))
    }
}
