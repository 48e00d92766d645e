//! fastworker: a brokerless task runtime.
//!
//! This library holds the control plane, the subworker, the plugin loader,
//! the wire protocol and the client; the `fastworker` binary is a thin command line
//! over it. Rust applications use [`client::Client`].

pub mod address;
pub mod auth;
mod cache;
mod callbacks;
pub mod client;
mod cluster;
mod collector;
pub mod config;
pub mod control_plane;
pub mod dashboard;
pub mod discovery;
mod endpoint;
mod journal;
pub mod limits;
mod link;
mod membership;
mod memory;
mod monitor;
mod peer_log;
pub mod plugins;
mod pool;
pub mod protocol;
pub mod schedules;
mod state;
pub mod subworker;
pub mod task_limits;
pub mod task_schema;
mod timers;
pub mod tls;

pub use address::{BaseAddress, DEFAULT_BASE_ADDRESS};
pub use client::{Client, ClientError, SubmitOptions};
pub use config::{ControlPlaneConfig, ManagementConfig};
pub use control_plane::{ControlPlane, StartError};
pub use dashboard::{DashboardConfig, DashboardError};
pub use discovery::{connect_via_discovery, Announcement, DiscoveryError};
pub use endpoint::ListenError;
pub use journal::JournalError;
pub use limits::Limits;
pub use plugins::{PluginError, Registry};
pub use protocol::{Priority, TaskId, TaskReport, TaskState};
