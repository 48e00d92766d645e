//! The command line's subcommands, one concern per file; `main.rs` parses
//! and dispatches.

pub(crate) mod arguments;
pub(crate) mod bounds;
pub(crate) mod client;
pub(crate) mod help;
pub(crate) mod keys;
pub(crate) mod logging;
pub(crate) mod plugins;
pub(crate) mod serve;
pub(crate) mod task_limits;
pub(crate) mod tls;
pub(crate) mod workflow;
