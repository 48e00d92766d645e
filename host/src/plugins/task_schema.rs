//! A task's JSON Schemas as its plugin exports them (`#[task]` derives them
//! with schemars), and the check of arguments against them, so that the
//! HTTP API refuses arguments that do not fit before a task is queued.

use std::sync::OnceLock;

use fastworker_plugin_sdk::abi;
use serde_json::Value;
use tracing::warn;

/// The most schema errors one refusal lists.
const MAX_REASONS: usize = 5;

/// One task's argument and result schemas, with the argument check built.
pub struct TaskSchema {
    /// The schema of the arguments as an object keyed by parameter name.
    pub args: Value,
    /// The schema of the result.
    pub result: Value,
    /// The parameters in positional order (the args schema's `required`).
    params: Vec<String>,
    /// Built on the first check (a validator costs memory that a control
    /// plane nobody sends HTTP submissions to should not pay); `None` when
    /// the schema is not one the validator takes: then nothing is checked.
    validator: OnceLock<Option<jsonschema::Validator>>,
    task: String,
}

impl TaskSchema {
    /// Reads what the plugin exported for `task`; `None` (with a warning)
    /// when it is not JSON or not a schema the validator takes: the task
    /// still loads and runs, unchecked.
    pub(crate) fn load(task: &str, exported: &abi::TaskSchema) -> Option<TaskSchema> {
        TaskSchema::from_text(task, exported.args.as_str(), exported.result.as_str())
    }

    /// Reads a task's schemas from their JSON text (as a plugin exports
    /// them, or a subworker offers them); `None`, with a warning, when
    /// either is not JSON.
    pub(crate) fn from_text(task: &str, args: &str, result: &str) -> Option<TaskSchema> {
        let parse = |text: &str| serde_json::from_str::<Value>(text);
        let (args, result) = match (parse(args), parse(result)) {
            (Ok(args), Ok(result)) => (args, result),
            (Err(error), _) | (_, Err(error)) => {
                warn!(task, %error, "the schema of this task is not JSON; its arguments are not checked");
                return None;
            }
        };
        let params = args["required"]
            .as_array()
            .map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Some(TaskSchema { args, result, params, validator: OnceLock::new(), task: task.to_string() })
    }

    /// Checks `args` (a positional array or an object keyed by parameter
    /// name, as submissions take them); why they do not fit, if not.
    pub fn check(&self, args: &Value) -> Result<(), String> {
        let named;
        let instance = match args {
            Value::Array(values) => {
                if values.len() != self.params.len() {
                    return Err(format!(
                        "takes {} argument(s) ({}), but {} were given",
                        self.params.len(),
                        self.params.join(", "),
                        values.len()
                    ));
                }
                named = Value::Object(self.params.iter().cloned().zip(values.iter().cloned()).collect());
                &named
            }
            Value::Object(_) => args,
            _ => return Err("arguments are a JSON array (positional) or object (by parameter name)".to_string()),
        };
        let validator = self.validator.get_or_init(|| {
            match jsonschema::options().should_validate_formats(false).build(&self.args) {
                Ok(validator) => Some(validator),
                Err(error) => {
                    warn!(task = %self.task, %error, "the schema of this task is not a valid JSON Schema; its arguments are not checked");
                    None
                }
            }
        });
        let Some(validator) = validator else { return Ok(()) };
        let reasons: Vec<String> = validator
            .iter_errors(instance)
            .take(MAX_REASONS)
            .map(|error| {
                let path = error.instance_path().to_string();
                if path.is_empty() {
                    error.to_string()
                } else {
                    format!("{}: {error}", path.trim_start_matches('/'))
                }
            })
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}
