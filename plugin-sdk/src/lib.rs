//! Write fastworker task plugins as plain Rust functions.
//!
//! ```ignore
//! use fastworker_plugin_sdk::task;
//!
//! /// Adds two numbers.
//! #[task]
//! fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! #[task(priority = "high", timeout = "30s")]
//! fn resize(path: String, width: u32) -> Result<String, std::io::Error> {
//!     # unimplemented!()
//! }
//!
//! fastworker_plugin_sdk::export_plugin!(add, resize);
//! ```
//!
//! A task may also declare cluster-wide limits, which the control plane
//! enforces across its threads and every subworker (docs/limits.md):
//! `#[task(rate = "100/s", max_running = 4)]`, with `rate` as `"N/s"`,
//! `"N/m"` or `"N/h"`, an optional `burst = 10` (default: one second's
//! worth, at least 1) and `max_running` from 1 to 1,000,000. A bad value is
//! a compile error. They reach the host in the root module's `task_meta`
//! (one JSON object per task, in [`abi::Plugin`]); a host ignores keys it
//! does not know, so later options need no new field.
//!
//! Build the crate as a `cdylib` and hand the resulting library to
//! `fastworker control-plane --task-modules`. Arguments arrive as JSON (a
//! positional array, or an object keyed by parameter name) and are decoded
//! into the function's parameter types with serde; the return value is
//! encoded back to JSON. Every parameter and result type implements
//! [`JsonSchema`], so the host can describe and check a task's arguments
//! (`fastworker list --json`, the dashboard's HTTP API); the first line of
//! the doc comment is the description. Only the types in [`abi`] cross the library
//! boundary, and the host checks their layout and this crate's version when
//! it loads a plugin.

pub mod abi;
mod args;
mod context;
pub mod json;
pub mod panic_hook;

#[doc(hidden)]
pub mod __private;

pub use abi::{Priority, TaskOptions};
pub use context::TaskContext;
pub use fastworker_plugin_macros::{export_plugin, task};
/// The JSON Schema crate `#[task]` derives schemas with: derive
/// [`JsonSchema`] on your own argument and result types (with
/// `#[schemars(crate = "fastworker_plugin_sdk::schemars")]` unless the
/// plugin depends on schemars 1 itself).
pub use schemars;
pub use schemars::JsonSchema;

/// The version of this SDK, compiled into every plugin and checked by the host.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");
