//! fastworker: a brokerless task runtime.
//!
//! The `fastworker` binary (`main.rs` and `cli/`, over this library's
//! public API) is at once the control plane and a subworker. Rust
//! applications use [`client::Client`]. The modules, by role, each folder
//! opening with a map of its own:
//!
//! | module | role |
//! |--|--|
//! | [`wire`] | what crosses a socket: frames and messages, addresses and the port layout, keys and sealed envelopes, TLS |
//! | [`plugins`] | loading task plugins, their tasks, schemas and schedules |
//! | `ledger` | the task ledger: live tasks, their lifecycle and the cluster's slots, changed only by events (time passed in) that answer with typed effects; no I/O |
//! | `server` | the serving process's parts: the ports, the state that holds the ledger and carries out its effects, and the worker threads, timers, callbacks, journal and scheduler it drives |
//! | `cluster` | control plane and subworkers: routing to free slots, the link to each subworker, membership, discovery, cluster-wide task limits |
//! | [`workflow`] | chains, groups and chords: the description clients write, and the pure state machine the control plane keeps for each |
//! | [`client`] | the Rust client |
//! | [`dashboard`] | the web page, JSON and task HTTP API, `/metrics` |
//! | [`control_plane`] | one serving process assembled from the above |
//! | [`subworker_process`] | a subworker assembled: a control plane's serving part with its task ports only, joined to its control plane, draining on stop |
//!
//! Dependencies point down this table's roles and never back up: `wire`
//! and `plugins` import nothing of the crate's above them, `cluster` knows
//! nothing of the server's state, the `ledger` imports only `wire` and
//! `cluster`'s pure parts (routing, task limits), and only `control_plane`
//! ties the server to the dashboard. `docs/architecture.md` follows a task through them.
//!
//! The public paths below (`fastworker::protocol`, `fastworker::auth`, …)
//! are the API other crates use; they stay where they were when the files
//! moved into folders.

pub mod client;
pub mod cluster;
pub mod control_plane;
pub mod dashboard;
pub(crate) mod ledger;
pub mod plugins;
pub(crate) mod server;
pub mod subworker_process;
pub mod wire;
pub mod workflow;

pub use cluster::{discovery, subworker, task_limits};
pub use plugins::{schedule as schedules, task_schema};
/// The old name of [`bounds`], kept so that programs written against it build.
#[doc(hidden)]
pub use server::bounds as limits;
pub use server::{bounds, config};
pub use wire::{address, auth, protocol, tls};

pub use bounds::Bounds;
pub use client::{Client, ClientError, SubmitOptions};
pub use cluster::discovery::{connect_via_discovery, Announcement, DiscoveryError};
pub use config::{ControlPlaneConfig, ManagementConfig};
pub use control_plane::{ControlPlane, StartError};
pub use dashboard::{DashboardConfig, DashboardError};
/// The old name of [`Bounds`] ("limits" now means only per-task rate and
/// concurrency limits).
#[deprecated(note = "renamed `Bounds`")]
pub type Limits = Bounds;
pub use plugins::{PluginError, Registry};
pub use protocol::{Priority, TaskId, TaskReport, TaskState};
pub use server::endpoint::ListenError;
pub use server::journal::JournalError;
pub use server::worker_processes::{WorkerProcessesConfig, EXIT_ADDRESS_IN_USE};
pub use subworker_process::{Subworker, SubworkerConfig, SubworkerError};
pub use wire::address::{BaseAddress, DEFAULT_BASE_ADDRESS};
