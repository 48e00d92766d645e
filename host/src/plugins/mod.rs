//! Task plugins as the host sees them: loading a `cdylib` built against
//! `plugin-sdk` (checked by abi_stable, refused with a reason otherwise),
//! the tasks it declares, their JSON Schemas and their periodic schedules,
//! and finding a plugin given by name ([`locate`]).
//! Nothing here serves a port: the server asks the [`Registry`] for tasks.

pub mod locate;
mod registry;
pub mod schedule;
pub mod task_schema;

pub use registry::{LoadedTask, PluginError, PluginInfo, Registry};
