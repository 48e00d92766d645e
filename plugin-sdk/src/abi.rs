//! The types that cross the plugin boundary.
//!
//! Everything here is `#[repr(C)]` and derives `StableAbi`, so the host can
//! verify, when it loads a plugin, that the plugin was built against a
//! layout-compatible SDK. Changing anything in this file is a breaking change
//! of the SDK and needs a new minor version (0.x) or major version (1.x+).

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};

use crate::TaskContext;

/// How urgent a task is; lower values run first.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    /// Runs before everything else (port base+0).
    Critical = 0,
    /// Port base+1.
    High = 1,
    /// The default (port base+2).
    Normal = 2,
    /// Runs when nothing else waits (port base+3).
    Low = 3,
}

impl Priority {
    /// All priorities, most urgent first; the index is the port offset.
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low];

    /// The offset of this priority's port from the base address.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The lower-case name used on the command line and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Parses `critical`, `high`, `normal` or `low` (any case).
    pub fn parse(text: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(text))
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The options a task declares with `#[task(...)]`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TaskOptions {
    /// Priority used when the caller does not name one.
    pub priority: Priority,
    /// Longest a run may take, in milliseconds; 0 means no limit.
    pub timeout_ms: u64,
    /// How many times a failed run is retried.
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds.
    pub retry_delay_ms: u64,
    /// The periodic schedule as JSON written by `#[task]` (`{"every_ms":30000,"runs":3}`,
    /// `{"cron":"0 * * * *","timezone":"Europe/Paris"}`); empty for none. The host checks it at load.
    pub schedule: RStr<'static>,
}

impl TaskOptions {
    /// The options of a task that declares none.
    pub const DEFAULT: TaskOptions = TaskOptions {
        priority: Priority::Normal,
        timeout_ms: 0,
        max_retries: 0,
        retry_delay_ms: 0,
        schedule: RStr::from_str(""),
    };
}

/// Why a task run did not produce a value.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The task returned `Err`.
    Error = 0,
    /// The task panicked.
    Panic = 1,
    /// The arguments did not fit the task's parameters.
    BadArguments = 2,
}

impl FailureKind {
    /// The snake-case name the JSON APIs and listings use.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Panic => "panic",
            FailureKind::BadArguments => "bad_arguments",
        }
    }
}

/// A failed run as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct TaskFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// A message for the caller.
    pub message: RString,
}

/// One task a plugin declares.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct TaskDecl {
    /// The name callers submit.
    pub name: RStr<'static>,
    /// The Rust signature, for listings and error messages.
    pub signature: RStr<'static>,
    /// The first line of the function's doc comment.
    pub doc: RStr<'static>,
    /// The declared options.
    pub options: TaskOptions,
    /// The function that runs it: JSON arguments in, JSON result out.
    pub call: extern "C" fn(&TaskContext<'_>, RSlice<'_, u8>) -> RResult<RVec<u8>, TaskFailure>,
}

/// The root module every plugin exports.
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
    /// The JSON Schemas of the tasks, one per entry of `tasks` and in its
    /// order. Added after the prefix: a plugin built before schemas existed
    /// has a root module without it, which the host loads as a
    /// [`prefix::Plugin`] (and then reads no schemas).
    #[sabi(missing_field(default))]
    pub schemas: RSlice<'static, TaskSchema>,
    /// More of each task's declared options, one JSON object per entry of
    /// `tasks` and in its order (`""` for none): today its cluster-wide
    /// limits, `{"rate":{"per_second":20.0,"burst":20},"max_running":2}`.
    /// The host ignores keys it does not know, so options added later need
    /// no new field. A plugin built before it existed has a root module
    /// without it, which the host loads as a [`with_schemas::Plugin`] (and
    /// then reads no options).
    #[sabi(missing_field(default))]
    pub task_meta: RSlice<'static, RStr<'static>>,
}

/// The JSON Schemas of one task, as JSON text (JSON Schema 2020-12).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TaskSchema {
    /// Its arguments, as the object keyed by parameter name; `required`
    /// lists the parameters in their positional order.
    pub args: RStr<'static>,
    /// Its result value.
    pub result: RStr<'static>,
}

impl RootModule for PluginRef {
    declare_root_module_statics! {PluginRef}
    const BASE_NAME: &'static str = "fastworker_plugin";
    const NAME: &'static str = "fastworker-plugin-sdk";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The root module as SDK 0.1.0 exported it before tasks had schemas: its
/// fields up to `tasks`. abi_stable refuses a library whose prefix type has
/// fewer fields than the host's, so the host checks a plugin against
/// [`Plugin`] first and, when that fails, against this shorter layout.
pub mod prefix {
    use super::*;

    /// [`super::Plugin`] without the fields added after `tasks`.
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
}

/// The root module as SDK 0.1.0 exported it once tasks had schemas and
/// before they had more options (`task_meta`): its fields up to `schemas`.
/// The host checks a plugin against [`Plugin`], then this layout, then
/// [`prefix::Plugin`].
pub mod with_schemas {
    use super::*;

    /// [`super::Plugin`] without the fields added after `schemas`.
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
}
