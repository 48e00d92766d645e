//! How a control plane or subworker is set up: plain data that the command
//! line builds and every part of the server reads, kept apart from the
//! server so that no part needs to import the server for its settings.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use crate::server::bounds::Bounds;
use crate::wire::address::BaseAddress;
use crate::wire::auth::KeyRing;

/// How a control plane (or subworker) is set up.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Its name in reports and logs.
    pub worker_id: String,
    /// Where its ports start.
    pub base: BaseAddress,
    /// Worker threads for tasks (0: run nothing locally).
    pub concurrency: usize,
    /// Most results kept (0: keep none).
    pub result_cache_size: usize,
    /// Longest a result is kept (`None`: until evicted).
    pub result_cache_ttl: Option<Duration>,
    /// How long a shutdown waits for queued and running tasks.
    pub shutdown_timeout: Duration,
    /// The bound of every resource a peer can make it spend.
    pub bounds: Bounds,
    /// The keys every frame must be sealed with (`--cluster-key-file`);
    /// `None` serves unauthenticated peers (loopback or `--insecure`).
    pub keys: Option<Arc<KeyRing>>,
    /// Whether it serves a control plane on its task ports (a subworker)
    /// rather than clients (a control plane).
    pub subworker: bool,
    /// Subworker management: on a control plane, and on a subworker with
    /// worker processes of its own (for them only, on 127.0.0.1); `None`
    /// on a subworker that serves its four task ports and nothing else.
    pub management: Option<ManagementConfig>,
    /// The discovery address to announce this control plane on
    /// (`--discovery-address`); `None` announces nothing. Used only with
    /// `management` (subworkers set `None`). If the address is taken, a
    /// warning is logged and the control plane serves without announcing.
    pub discovery: Option<String>,
    /// The durable mode's directory (`--state-dir`): accepted tasks, their
    /// progress and their results are kept there and taken up again after a
    /// restart. `None` keeps everything in memory only (see docs/durability.md).
    pub state_dir: Option<PathBuf>,
}

impl ControlPlaneConfig {
    /// Whether this process is a subworker (serving its control plane on
    /// its task ports only) rather than a control plane: the one place
    /// that tells the two roles apart.
    pub fn is_subworker(&self) -> bool {
        self.subworker
    }
}

/// How a control plane manages subworkers.
#[derive(Debug, Clone)]
pub struct ManagementConfig {
    /// The management port (`--subworker-port`, default base+5).
    pub port: u16,
    /// Silence after which a subworker is excluded (`--inactive-after`).
    pub inactive_after: Duration,
    /// How long after start a task nobody provides is answered with the
    /// transient `NotYetProvided` rather than `UnknownTask`, while
    /// subworkers register again (`--restart-window`).
    pub restart_window: Duration,
    /// How long a task whose every provider is gone (restarting, drained,
    /// not registered again yet after a restart) waits, queued, for one to
    /// come back before it fails (`--provider-grace`; zero fails it at once).
    pub provider_grace: Duration,
    /// Cluster-wide task limits set by `--task-limit`, over those the
    /// plugins declare; `None` lifts a declared one (see docs/limits.md).
    pub task_limits: Vec<(String, Option<crate::cluster::task_limits::TaskLimit>)>,
    /// Times a task's runs may die with their process before it fails
    /// `Crashed` (`--max-task-crashes`; docs/isolation.md).
    pub max_task_crashes: u32,
    /// On a subworker with worker processes: the 127.0.0.1 base they dial,
    /// whose +4 is the result port (the management port is `port`, on
    /// 127.0.0.1 too); `None` serves both at `base`.
    pub local_base: Option<BaseAddress>,
}
