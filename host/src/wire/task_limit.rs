//! A cluster-wide limit per task name as it is declared, set and shown: a
//! rate (runs started per second, with a burst) and a concurrency (runs at
//! once), their ranges and their text form (`rate:20/s,burst:5`). What
//! enforces them is `cluster::task_limits`; see docs/limits.md.

use serde::{Deserialize, Serialize};

/// The slowest rate accepted: one run an hour.
pub const MIN_PER_SECOND: f64 = 1.0 / 3600.0;
/// The fastest rate accepted, in runs per second.
pub const MAX_PER_SECOND: f64 = 1_000_000.0;
/// The largest burst accepted.
pub const MAX_BURST: u32 = 1_000_000;
/// The largest `max_running` accepted.
pub const MAX_RUNNING: u32 = 1_000_000;
/// Most task names with a run-time or flag override.
pub const MAX_OVERRIDES: usize = 1024;
/// Longest task name a limit may be set for, in bytes.
pub const MAX_TASK_NAME_BYTES: usize = 128;

/// A rate: runs started per second, with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Runs started per second, on average.
    pub per_second: f64,
    /// Runs that may start at once after a quiet spell (the bucket's size).
    pub burst: u32,
}

/// The limits of one task name; `None` fields do not limit.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskLimit {
    /// Runs started per second.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Runs at once across the cluster.
    #[serde(default)]
    pub max_running: Option<u32>,
}

/// Where a task's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitSource {
    /// Its plugin's `#[task(rate = ..., max_running = ...)]`.
    Declared,
    /// The control plane's `--task-limit` flag.
    Flag,
    /// Set at run time (`fastworker limits set`, the dashboard).
    RunTime,
}

impl LimitSource {
    /// The lower-case name shown by the CLI and the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Declared => "declared",
            LimitSource::Flag => "flag",
            LimitSource::RunTime => "run-time",
        }
    }
}

/// One task name's limit and what it holds now, as `fastworker limits list`,
/// the dashboard and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLimitStatus {
    /// The task name.
    pub task_name: String,
    /// The limit in force (both fields `None`: a declared limit removed).
    pub limit: TaskLimit,
    /// Where it comes from.
    pub source: LimitSource,
    /// Runs counted as running now.
    pub running: u32,
    /// Runs held back now, waiting for the limit.
    pub held: u32,
    /// Times a run was held back so far.
    pub held_total: u64,
}

impl TaskLimitStatus {
    /// The row `fastworker limits list`, the dashboard and its API show.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "task": self.task_name,
            "rate_per_second": self.limit.rate.map(|r| r.per_second),
            "burst": self.limit.rate.map(|r| r.burst),
            "max_running": self.limit.max_running,
            "limit": self.limit.describe(),
            "source": self.source.as_str(),
            "running": self.running,
            "held": self.held,
            "held_total": self.held_total,
        })
    }
}

/// Why a limit is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskLimitError {
    /// The rate text does not parse.
    #[error("rate '{0}' is not N/s, N/m or N/h with N a positive number (for example 20/s, 600/m, 5/h)")]
    BadRate(String),
    /// The rate is 0, too slow or too fast.
    #[error("a rate must be between one run an hour and {MAX_PER_SECOND} a second; {0} a second is not")]
    RateOutOfRange(f64),
    /// The burst is 0 or too large.
    #[error("burst must be from 1 to {MAX_BURST}; {0} is not")]
    BurstOutOfRange(u64),
    /// `max_running` is 0 or too large.
    #[error("max_running must be from 1 to {MAX_RUNNING}; {0} is not")]
    RunningOutOfRange(u64),
    /// A burst without a rate.
    #[error("a burst needs a rate")]
    BurstWithoutRate,
    /// Neither a rate nor `max_running`.
    #[error("a limit names a rate, max_running or both (or `none` to remove one)")]
    Empty,
    /// The task name breaks the task-name rules: empty, too long, or with
    /// whitespace or control characters.
    #[error("a task name for a limit must be 1 to {MAX_TASK_NAME_BYTES} bytes without spaces or control characters, as task names are")]
    BadName,
    /// Too many names have overrides.
    #[error("at most {MAX_OVERRIDES} task names may have limit overrides; clear some first")]
    TooMany,
    /// A part of a limit that is not known.
    #[error("unknown limit part '{0}': use rate, burst and max_running (or `none`)")]
    UnknownPart(String),
}

/// `20/s`, `600/m`, `5/h` (or `0.5/s`) as runs per second.
pub fn parse_rate(text: &str) -> Result<f64, TaskLimitError> {
    let bad = || TaskLimitError::BadRate(text.chars().take(64).collect());
    let (number, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let number: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    if !number.is_finite() || number <= 0.0 {
        return Err(bad());
    }
    Ok(number / seconds)
}

/// The default burst of a rate: one second's worth, at least 1.
pub fn default_burst(per_second: f64) -> u32 {
    per_second.ceil().clamp(1.0, MAX_BURST as f64) as u32
}

impl TaskLimit {
    /// Checks every value is within range.
    pub fn check(&self) -> Result<(), TaskLimitError> {
        if let Some(rate) = &self.rate {
            if !(rate.per_second.is_finite() && (MIN_PER_SECOND..=MAX_PER_SECOND).contains(&rate.per_second)) {
                return Err(TaskLimitError::RateOutOfRange(rate.per_second));
            }
            if rate.burst == 0 || rate.burst > MAX_BURST {
                return Err(TaskLimitError::BurstOutOfRange(rate.burst.into()));
            }
        }
        if let Some(max) = self.max_running {
            if max == 0 || max > MAX_RUNNING {
                return Err(TaskLimitError::RunningOutOfRange(max.into()));
            }
        }
        Ok(())
    }

    /// Whether it limits anything.
    pub fn limits(&self) -> bool {
        self.rate.is_some() || self.max_running.is_some()
    }

    /// Parses `rate:20/s,burst:5,max_running:2` (the flag's form; `=` works
    /// as well as `:`, and spaces as well as commas): `Ok(None)` for `none`.
    pub fn parse(text: &str) -> Result<Option<TaskLimit>, TaskLimitError> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let (mut per_second, mut burst, mut max_running) = (None, None, None);
        for part in text.split([',', ' ']).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once([':', '='])
                .ok_or_else(|| TaskLimitError::UnknownPart(part.chars().take(64).collect()))?;
            let number = |value: &str, error: fn(u64) -> TaskLimitError| {
                value.trim().parse::<u64>().map_err(|_| error(0)).and_then(|n| u32::try_from(n).map_err(|_| error(n)))
            };
            match key.trim() {
                "rate" => per_second = Some(parse_rate(value)?),
                "burst" => burst = Some(number(value, TaskLimitError::BurstOutOfRange)?),
                "max_running" | "running" => max_running = Some(number(value, TaskLimitError::RunningOutOfRange)?),
                other => return Err(TaskLimitError::UnknownPart(other.chars().take(64).collect())),
            }
        }
        if burst.is_some() && per_second.is_none() {
            return Err(TaskLimitError::BurstWithoutRate);
        }
        let rate = per_second.map(|per_second| Rate { per_second, burst: burst.unwrap_or(default_burst(per_second)) });
        let limit = TaskLimit { rate, max_running };
        if !limit.limits() {
            return Err(TaskLimitError::Empty);
        }
        limit.check()?;
        Ok(Some(limit))
    }

    /// The limit as text (`rate:20/s,burst:20,max_running:2`), or `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(rate) = &self.rate {
            parts.push(format!("rate:{}/s,burst:{}", rate.per_second, rate.burst));
        }
        if let Some(max) = self.max_running {
            parts.push(format!("max_running:{max}"));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(",")
        }
    }
}

/// Checks a task name a limit is set for: the rules of task names (those a
/// subworker may offer), so that no name that reaches a log, a list or
/// `/metrics` carries a line break or another control character.
pub fn check_name(task_name: &str) -> Result<(), TaskLimitError> {
    let bad_char = |c: char| c.is_whitespace() || c.is_control();
    if task_name.is_empty() || task_name.len() > MAX_TASK_NAME_BYTES || task_name.chars().any(bad_char) {
        return Err(TaskLimitError::BadName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_limit_takes_every_name_a_task_may_have() {
        assert_eq!(super::MAX_TASK_NAME_BYTES, crate::wire::protocol::MAX_NAME_BYTES);
    }
}
