//! The submission options of `call`, `delay` and `batch`, read from Python.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastworker::protocol::{Priority, RetryPolicy, TaskId};
use fastworker::SubmitOptions;
use pyo3::prelude::*;
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

impl PyOptions<'_> {
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
