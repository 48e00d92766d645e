//! Support for the code `#[task]` and `export_plugin!` generate. Not a public API.

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use abi_stable;
pub use abi_stable::std_types::{RResult, RSlice, RStr, RVec};

use crate::abi::{FailureKind, Plugin, PluginRef, TaskDecl, TaskFailure};
pub use crate::args::Args;
use abi_stable::prefix_type::PrefixTypeTrait;

/// Runs a task body, turning a panic into a failed run.
pub fn run(body: impl FnOnce() -> Result<Vec<u8>, TaskFailure>) -> RResult<RVec<u8>, TaskFailure> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(bytes)) => RResult::ROk(RVec::from(bytes)),
        Ok(Err(failure)) => RResult::RErr(failure),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-string payload".to_string());
            RResult::RErr(failure(FailureKind::Panic, message))
        }
    }
}

/// Builds a failure.
pub fn failure(kind: FailureKind, message: String) -> TaskFailure {
    TaskFailure { kind, message: message.into() }
}

/// A failure from arguments that do not fit.
pub fn bad_arguments(message: String) -> TaskFailure {
    failure(FailureKind::BadArguments, message)
}

/// A failure from a task that returned `Err(error)`.
pub fn task_error(error: impl std::fmt::Display) -> TaskFailure {
    failure(FailureKind::Error, error.to_string())
}

/// Encodes a task's return value as JSON.
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, TaskFailure> {
    serde_json::to_vec(value)
        .map_err(|e| failure(FailureKind::Error, format!("result could not be encoded as JSON: {e}")))
}

/// Builds the root module of a plugin.
pub fn plugin(name: &'static str, version: &'static str, tasks: &'static [TaskDecl]) -> PluginRef {
    Plugin { name: RStr::from_str(name), version: RStr::from_str(version), tasks: RSlice::from_slice(tasks) }
        .leak_into_prefix()
}
