//! The wire: what crosses a socket, and nothing that acts on it.
//!
//! - [`protocol`]: the frames (a version byte, then a postcard-encoded
//!   request or reply) and every message in them.
//! - [`address`]: base addresses and the port layout (base+0..+3 by
//!   priority, +4 results, +5 subworker management).
//! - [`auth`]: cluster keys, roles, and the sealed envelope each frame
//!   travels in when ports authenticate.
//! - `pipe`: the frames of the socket pair between a control plane and a
//!   worker process it started, and a writer that never blocks its caller.
//! - [`tls`]: `tls+tcp://` listeners and dialers with mutual certificates;
//!   `tls_failures` logs the handshakes that failed.
//! - [`nng_threads`]: how many threads NNG runs in this process
//!   (`FASTWORKER_NNG_*`), set once before its first use.
//! - [`report_json`]: a task's report as JSON, for the HTTP API and the CLI.
//! - [`task_limit`]: a cluster-wide limit per task name, as declared and set.
//! - [`workflow`]: a workflow as it travels (a flat tree) and its status.

pub mod address;
pub mod auth;
pub mod nng_threads;
pub(crate) mod pipe;
pub mod protocol;
pub mod report_json;
pub mod task_limit;
pub mod tls;
mod tls_failures;
pub mod workflow;
