//! A plugin as fastworker-plugin-sdk 0.1.0 built it once tasks exported JSON
//! Schemas and before they had further options (`task_meta`, which carries
//! cluster-wide limits): its root module ends at `schemas`. The host must
//! load it, run its task and show its schema, and apply no limit to it,
//! whatever `#[task]` says: the limit never crosses this older boundary.

use abi_stable::{
    declare_root_module_statics, export_root_module, library::RootModule, package_version_strings,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, std_types::RSlice, std_types::RStr, StableAbi,
};
use fastworker_plugin_sdk::abi::{TaskDecl, TaskSchema};
use fastworker_plugin_sdk::task;

/// Triples a number.
#[task(max_running = 1)]
fn triple(n: i64) -> i64 {
    n * 3
}

/// The root module's layout before the `task_meta` field was added.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRef)))]
#[sabi(missing_field(panic))]
pub struct Plugin {
    /// The plugin crate's package name.
    pub name: RStr<'static>,
    /// The plugin crate's package version.
    pub version: RStr<'static>,
    /// The tasks it provides.
    #[sabi(last_prefix_field)]
    pub tasks: RSlice<'static, TaskDecl>,
    /// The JSON Schemas of the tasks, one per entry of `tasks`.
    #[sabi(missing_field(default))]
    pub schemas: RSlice<'static, TaskSchema>,
}

impl RootModule for PluginRef {
    declare_root_module_statics! {PluginRef}
    const BASE_NAME: &'static str = "fastworker_plugin";
    const NAME: &'static str = "fastworker-plugin-sdk";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

static TASKS: &[TaskDecl] = &[__fastworker_task_triple];

static SCHEMAS: &[TaskSchema] = &[TaskSchema {
    args: RStr::from_str(
        r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}"#,
    ),
    result: RStr::from_str(r#"{"type":"integer"}"#),
}];

/// The root module, as `export_plugin!` built it before `task_meta`.
#[export_root_module]
pub fn root() -> PluginRef {
    Plugin {
        name: RStr::from_str("pre-meta-plugin"),
        version: RStr::from_str(env!("CARGO_PKG_VERSION")),
        tasks: RSlice::from_slice(TASKS),
        schemas: RSlice::from_slice(SCHEMAS),
    }
    .leak_into_prefix()
}
