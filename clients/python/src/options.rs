//! The submission options of `call`, `delay` and `batch`, read from Python.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastworker::protocol::{Priority, RetryPolicy, TaskId};
use fastworker::SubmitOptions;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;

use crate::failure::{Class, Failure};
use crate::json::to_json;

/// The longest duration accepted from Python (a year): larger ones are
/// surely a mistake, and bounded they cannot overflow a `Duration`.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// The options as given in Python, each optional.
#[derive(Default)]
pub(crate) struct PyOptions<'py> {
    pub(crate) priority: Option<String>,
    pub(crate) countdown: Option<f64>,
    pub(crate) eta: Option<Bound<'py, PyAny>>,
    pub(crate) task_timeout: Option<f64>,
    pub(crate) retries: Option<u32>,
    pub(crate) retry_delay: f64,
    pub(crate) retry_max_delay: f64,
    pub(crate) task_id: Option<String>,
}

/// The names of the options, in the order the docs list them.
const KNOWN: [&str; 8] =
    ["priority", "countdown", "eta", "task_timeout", "retries", "retry_delay", "retry_max_delay", "task_id"];

/// Why options given by name could not be read.
pub(crate) enum OptionError {
    /// A name that is not a `str`.
    NotText,
    /// A known option with a value of the wrong type.
    WrongType(String),
    /// A name that is no option.
    Unknown(String),
}

impl<'py> PyOptions<'py> {
    /// The options given by name: a call's keyword arguments or a batch
    /// entry's dict. The one place that knows their names and defaults.
    pub(crate) fn by_name(dict: Option<&Bound<'py, PyDict>>) -> Result<PyOptions<'py>, OptionError> {
        let mut read = PyOptions { retry_delay: 1.0, retry_max_delay: 300.0, ..PyOptions::default() };
        for (key, value) in dict.into_iter().flat_map(|dict| dict.iter()) {
            let key: String = key.extract().map_err(|_| OptionError::NotText)?;
            if value.is_none() && KNOWN.contains(&key.as_str()) {
                continue; // None means the option's default, as the keywords always took it
            }
            let wrong = |_| OptionError::WrongType(key.clone());
            match key.as_str() {
                "priority" => read.priority = Some(value.extract().map_err(wrong)?),
                "countdown" => read.countdown = Some(value.extract().map_err(wrong)?),
                "eta" => read.eta = Some(value),
                "task_timeout" => read.task_timeout = Some(value.extract().map_err(wrong)?),
                "retries" => read.retries = Some(value.extract().map_err(wrong)?),
                "retry_delay" => read.retry_delay = value.extract().map_err(wrong)?,
                "retry_max_delay" => read.retry_max_delay = value.extract().map_err(wrong)?,
                "task_id" => read.task_id = Some(value.extract().map_err(wrong)?),
                _ => return Err(OptionError::Unknown(key)),
            }
        }
        Ok(read)
    }

    /// The Rust client's options, or why these are not valid.
    pub(crate) fn resolve(&self) -> Result<SubmitOptions, Failure> {
        let bad = |message: String| Failure::new(Class::BadRequest, message);
        let priority = match &self.priority {
            None => None,
            Some(name) => Some(
                Priority::parse(name)
                    .ok_or_else(|| bad(format!("priority '{name}' is not one of critical, high, normal, low")))?,
            ),
        };
        let eta = match &self.eta {
            None => None,
            Some(eta) => Some(eta_time(eta).map_err(bad)?),
        };
        let retry = match self.retries {
            None => None,
            Some(max_retries) => Some(RetryPolicy {
                max_retries,
                delay_ms: millis(seconds("retry_delay", self.retry_delay).map_err(bad)?),
                factor: 2.0,
                max_delay_ms: millis(seconds("retry_max_delay", self.retry_max_delay).map_err(bad)?),
            }),
        };
        Ok(SubmitOptions {
            priority,
            task_id: self.task_id.as_deref().map(parse_task_id).transpose()?,
            countdown: self.countdown.map(|s| seconds("countdown", s)).transpose().map_err(bad)?,
            eta,
            timeout: self.task_timeout.map(|s| seconds("task_timeout", s)).transpose().map_err(bad)?,
            retry,
            callback: None,
        })
    }
}

/// A task id given as text.
pub(crate) fn parse_task_id(text: &str) -> Result<TaskId, Failure> {
    TaskId::parse_str(text)
        .map_err(|error| Failure::new(Class::InvalidTaskId, format!("'{text}' is not a task id (a UUID): {error}")))
}

/// The arguments of a task: a list or tuple (positional) or a dict (by
/// name); `None` for none.
pub(crate) fn task_args(args: Option<&Bound<'_, PyAny>>) -> Result<Value, Failure> {
    let bad = |message: String| Failure::new(Class::BadArguments, message);
    let Some(args) = args.filter(|args| !args.is_none()) else { return Ok(Value::Array(Vec::new())) };
    match to_json(args) {
        Ok(value @ (Value::Array(_) | Value::Object(_))) => Ok(value),
        Ok(_) => Err(bad(format!(
            "args must be a list or tuple (positional) or a dict (by name), not {}: wrap a single argument as [value]",
            args.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))),
        Err(why) => Err(bad(format!("the arguments are not JSON: {why}"))),
    }
}

fn seconds(what: &str, value: f64) -> Result<Duration, String> {
    if value.is_finite() && (0.0..=MAX_SECONDS).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("{what} must be a number of seconds from 0 to {MAX_SECONDS}, not {value}"))
    }
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().min(u64::MAX as u128) as u64
}

/// An ETA: a `datetime` (anything with `.timestamp()`) or seconds since the Unix epoch.
fn eta_time(eta: &Bound<'_, PyAny>) -> Result<SystemTime, String> {
    let timestamp = match eta.call_method0("timestamp") {
        Ok(stamp) => stamp.extract::<f64>(),
        Err(_) => eta.extract::<f64>(),
    }
    .map_err(|_| "eta must be a datetime or a number of seconds since the Unix epoch".to_string())?;
    let limit = MAX_SECONDS * 200.0;
    if !(timestamp.is_finite() && (0.0..limit).contains(&timestamp)) {
        return Err(format!("eta {timestamp} is not a time after the Unix epoch"));
    }
    Ok(UNIX_EPOCH + Duration::from_secs_f64(timestamp))
}
