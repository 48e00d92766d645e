//! Support for the code `#[task]` and `export_plugin!` generate. Not a public API.

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use abi_stable;
pub use abi_stable::std_types::{RResult, RSlice, RStr, RVec};

use crate::abi::{FailureKind, Plugin, PluginRef, TaskDecl, TaskFailure, TaskSchema};
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
    crate::json::to_vec(value)
        .map_err(|e| failure(FailureKind::Error, format!("result could not be encoded as JSON: {e}")))
}

/// Builds the root module of a plugin; `schemas` and `meta` (each task's
/// further options as JSON, `#[task]` writes it) have one entry per task.
pub fn plugin(
    name: &'static str,
    version: &'static str,
    tasks: &'static [TaskDecl],
    schemas: &'static [SchemaDecl],
    meta: &'static [RStr<'static>],
) -> PluginRef {
    crate::panic_hook::install();
    let schemas: Vec<TaskSchema> = schemas.iter().map(SchemaDecl::build).collect();
    Plugin {
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        tasks: RSlice::from_slice(tasks),
        // Built once per process, when the host loads the plugin; kept for its life.
        schemas: RSlice::from_slice(Box::leak(schemas.into_boxed_slice())),
        task_meta: RSlice::from_slice(meta),
    }
    .leak_into_prefix()
}

/// One parameter's or result's schema, added to a generator's definitions.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// What `#[task]` records to build a task's schemas when the plugin loads
/// (schemars builds them at run time, not at compile time).
pub struct SchemaDecl {
    /// The task's name, for the schema's title.
    pub task: &'static str,
    /// The doc comment's first line.
    pub doc: &'static str,
    /// The parameters (without the context), in order, with their schemas.
    pub params: &'static [(&'static str, SchemaFn)],
    /// The schema of what it returns on success.
    pub result: SchemaFn,
}

/// The schema of `T`, for [`SchemaDecl`].
pub fn schema_of<T: schemars::JsonSchema + ?Sized>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<T>()
}

impl SchemaDecl {
    fn build(&self) -> TaskSchema {
        let settings = schemars::generate::SchemaSettings::draft2020_12();
        let mut generator = settings.clone().for_deserialize().into_generator();
        let mut properties = serde_json::Map::new();
        for (name, schema) in self.params {
            properties.insert((*name).to_string(), schema(&mut generator).to_value());
        }
        let required: Vec<&str> = self.params.iter().map(|(name, _)| *name).collect();
        let mut args = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("arguments of {}", self.task),
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        });
        if !self.doc.is_empty() {
            args["description"] = self.doc.into();
        }
        let definitions = generator.take_definitions(true);
        if !definitions.is_empty() {
            args["$defs"] = definitions.into();
        }
        let mut generator = settings.for_serialize().into_generator();
        let mut result = (self.result)(&mut generator).to_value();
        let definitions = generator.take_definitions(true);
        if let Some(object) = result.as_object_mut() {
            object.insert("$schema".into(), "https://json-schema.org/draft/2020-12/schema".into());
            object.entry("title").or_insert_with(|| format!("result of {}", self.task).into());
            if !definitions.is_empty() {
                object.insert("$defs".into(), definitions.into());
            }
        }
        let leak = |value: serde_json::Value| RStr::from_str(Box::leak(value.to_string().into_boxed_str()));
        TaskSchema { args: leak(args), result: leak(result) }
    }
}
