//! A plugin as fastworker-plugin-sdk 0.1.0 built it before tasks exported
//! JSON Schemas: its root module ends at `tasks`. The host must load it and
//! run its tasks, showing no schema for them.

use abi_stable::{
    declare_root_module_statics, export_root_module, library::RootModule, package_version_strings,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, std_types::RSlice, std_types::RStr, StableAbi,
};
use fastworker_plugin_sdk::abi::TaskDecl;
use fastworker_plugin_sdk::task;

/// Doubles a number.
#[task]
fn double(n: i64) -> i64 {
    n * 2
}

/// The root module's layout before the `schemas` field was added.
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
}

impl RootModule for PluginRef {
    declare_root_module_statics! {PluginRef}
    const BASE_NAME: &'static str = "fastworker_plugin";
    const NAME: &'static str = "fastworker-plugin-sdk";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

static TASKS: &[TaskDecl] = &[__fastworker_task_double];

/// The root module, as `export_plugin!` built it in SDK 0.1.0.
#[export_root_module]
pub fn root() -> PluginRef {
    Plugin {
        name: RStr::from_str("pre-schema-plugin"),
        version: RStr::from_str(env!("CARGO_PKG_VERSION")),
        tasks: RSlice::from_slice(TASKS),
    }
    .leak_into_prefix()
}
