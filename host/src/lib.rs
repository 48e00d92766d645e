//! fastworker: a brokerless task runtime.
//!
//! This library holds the control plane, the plugin loader, the wire
//! protocol and the client; the `fastworker` binary is a thin command line
//! over it. Rust applications use [`client::Client`].

pub mod address;
mod cache;
pub mod client;
pub mod control_plane;
mod endpoint;
pub mod plugins;
mod pool;
pub mod protocol;

pub use address::{BaseAddress, DEFAULT_BASE_ADDRESS};
pub use client::{Client, ClientError, SubmitOptions};
pub use control_plane::{ControlPlane, ControlPlaneConfig};
pub use endpoint::ListenError;
pub use plugins::{PluginError, Registry};
pub use protocol::{Priority, TaskId, TaskReport, TaskState};
