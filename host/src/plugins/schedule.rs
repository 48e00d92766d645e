//! Periodic tasks' schedules as plugins declare them (`every = "30s"` or a
//! cron expression): parsed and checked at load, and asked when each falls
//! due next. The thread that starts the runs is `server::scheduler`.
//!
//! Cron expressions are parsed and evaluated by `croner` (POSIX/Vixie
//! semantics: Sunday is 0 or 7, names and `@hourly`-style macros, day of
//! month OR day of week when both are restricted) in the schedule's time
//! zone (`chrono-tz`, UTC by default).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::Deserialize;

/// A task's periodic schedule.
#[derive(Clone)]
pub struct Schedule {
    /// The task it runs.
    pub task_name: String,
    timing: Timing,
    /// Runs at most this many times.
    pub runs: Option<u32>,
    /// Runs no later than this (ms since the Unix epoch).
    pub until_ms: Option<u64>,
    /// The JSON arguments of every run.
    pub args: Vec<u8>,
    /// As declared, for people.
    pub description: String,
}

#[derive(Clone)]
enum Timing {
    Every(Duration),
    Cron(Box<Cron>, Tz),
}

/// A schedule that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("schedule of task '{task}' ({declared}): {reason}")]
pub struct ScheduleError {
    /// The task.
    pub task: String,
    /// The schedule as declared.
    pub declared: String,
    /// What is wrong.
    pub reason: String,
}

/// The JSON `#[task]` writes into a declaration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    every_ms: Option<u64>,
    cron: Option<String>,
    runs: Option<u32>,
    until: Option<String>,
    args: Option<String>,
    timezone: Option<String>,
}

impl Schedule {
    /// Parses and checks the schedule `#[task]` declared for `task_name`.
    pub fn parse(task_name: &str, declared: &str) -> Result<Schedule, ScheduleError> {
        let fail = |reason: String| ScheduleError { task: task_name.into(), declared: declared.into(), reason };
        let spec: Declared = serde_json::from_str(declared).map_err(|e| fail(format!("not a schedule: {e}")))?;
        let zone: Tz = match &spec.timezone {
            Some(name) => name
                .parse()
                .map_err(|_| fail(format!("'{name}' is not a time zone (use names such as Europe/Paris)")))?,
            None => Tz::UTC,
        };
        let (timing, mut description) = match (spec.every_ms, &spec.cron) {
            (Some(0), _) => return Err(fail("`every` must be longer than 0".into())),
            (Some(ms), None) => (
                Timing::Every(Duration::from_millis(ms)),
                format!("every {}", humantime::format_duration(Duration::from_millis(ms))),
            ),
            (None, Some(expression)) => {
                let cron =
                    Cron::new(expression).parse().map_err(|e| fail(format!("cron expression '{expression}': {e}")))?;
                if expression.split_whitespace().count() > 5 {
                    return Err(fail(format!(
                        "cron expression '{expression}': use five fields (minute hour day-of-month month day-of-week)"
                    )));
                }
                (Timing::Cron(Box::new(cron), zone), format!("cron '{expression}'"))
            }
            _ => return Err(fail("declare exactly one of `every` and `cron`".into())),
        };
        if spec.timezone.is_some() {
            description.push_str(&format!(" in {zone}"));
        }
        let until_ms = match &spec.until {
            Some(text) => {
                let time = humantime::parse_rfc3339_weak(text).map_err(|e| fail(format!("until '{text}': {e}")))?;
                description.push_str(&format!(" until {text}"));
                Some(u64::try_from(time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX))
            }
            None => None,
        };
        if let Some(runs) = spec.runs {
            description.push_str(&format!(", {runs} runs"));
        }
        let args = spec.args.unwrap_or_else(|| "[]".into());
        match serde_json::from_str::<serde_json::Value>(&args) {
            Ok(serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {}
            _ => return Err(fail(format!("args '{args}' is not a JSON array or object"))),
        }
        Ok(Schedule {
            task_name: task_name.into(),
            timing,
            runs: spec.runs,
            until_ms,
            args: args.into_bytes(),
            description,
        })
    }

    /// The period of an `every` schedule (`None` for cron).
    pub fn period(&self) -> Option<Duration> {
        match &self.timing {
            Timing::Every(period) => Some(*period),
            Timing::Cron(..) => None,
        }
    }

    /// The first run time strictly after `after_ms`, if the schedule has
    /// one (a time past the representable range has none).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let next = match &self.timing {
            Timing::Every(period) => after_ms.checked_add(u64::try_from(period.as_millis()).ok()?)?,
            Timing::Cron(cron, zone) => {
                let after =
                    zone.from_utc_datetime(&DateTime::<Utc>::from_timestamp_millis(after_ms as i64)?.naive_utc());
                let next = cron.find_next_occurrence(&after, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()?
            }
        };
        (self.until_ms.is_none_or(|until| next <= until)).then_some(next)
    }
}

/// Why a schedule was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleRefused {
    /// Its period is shorter than `--min-schedule-period`.
    #[error("periodic task '{task}' runs every {period:?}, more often than --min-schedule-period allows ({min:?})")]
    TooFrequent {
        /// The task.
        task: String,
        /// Its period.
        period: Duration,
        /// The shortest allowed.
        min: Duration,
    },
    /// `--max-schedules` are scheduled already.
    #[error("periodic task '{task}' not scheduled: {max} periodic tasks are scheduled already (--max-schedules)")]
    TooMany {
        /// The task.
        task: String,
        /// The limit.
        max: usize,
    },
}

/// Checks `schedules` against the limits, as the control plane does at start-up.
pub fn check_limits(schedules: &[Schedule], max: usize, min_period: Duration) -> Result<(), ScheduleRefused> {
    if let Some(schedule) = schedules.get(max) {
        return Err(ScheduleRefused::TooMany { task: schedule.task_name.clone(), max });
    }
    for schedule in schedules {
        if let Some(period) = schedule.period().filter(|p| *p < min_period) {
            return Err(ScheduleRefused::TooFrequent { task: schedule.task_name.clone(), period, min: min_period });
        }
    }
    Ok(())
}

/// When a schedule runs next, as RFC 3339, for listings.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        let time = humantime::parse_rfc3339(rfc3339).unwrap();
        time.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }

    fn cron(expression: &str, timezone: Option<&str>) -> Schedule {
        let zone = timezone.map_or(String::new(), |z| format!(r#","timezone":"{z}""#));
        Schedule::parse("t", &format!(r#"{{"cron":"{expression}"{zone}}}"#)).unwrap()
    }

    /// (expression, time zone, after, expected next), all times in UTC.
    const CASES: &[(&str, Option<&str>, &str, &str)] = &[
        // Sunday is 0, and 7 too; names.
        ("0 9 * * 0", None, "2026-11-23T10:00:00Z", "2026-11-29T09:00:00Z"),
        ("0 9 * * 7", None, "2026-11-23T10:00:00Z", "2026-11-29T09:00:00Z"),
        ("0 9 * * SUN", None, "2026-11-23T10:00:00Z", "2026-11-29T09:00:00Z"),
        ("30 8 * JAN MON", None, "2026-11-23T10:00:00Z", "2027-01-04T08:30:00Z"),
        // Ranges, steps, lists.
        ("*/15 9-17 * * 1-5", None, "2026-11-27T17:50:00Z", "2026-11-30T09:00:00Z"),
        ("5,35 */6 * * *", None, "2026-11-23T06:06:00Z", "2026-11-23T06:35:00Z"),
        ("0 0 1-7/3 * *", None, "2026-11-02T00:00:00Z", "2026-11-04T00:00:00Z"),
        // Macros.
        ("@hourly", None, "2026-11-23T10:15:00Z", "2026-11-23T11:00:00Z"),
        ("@daily", None, "2026-11-23T10:15:00Z", "2026-11-24T00:00:00Z"),
        ("@weekly", None, "2026-11-23T10:15:00Z", "2026-11-29T00:00:00Z"),
        ("@monthly", None, "2026-11-23T10:15:00Z", "2026-12-01T00:00:00Z"),
        // Day of month OR day of week when both are restricted (the 13th, or any Friday).
        ("0 0 13 * FRI", None, "2026-11-23T00:00:00Z", "2026-11-27T00:00:00Z"),
        ("0 0 13 * FRI", None, "2026-12-05T00:00:00Z", "2026-12-11T00:00:00Z"),
        ("0 0 13 * FRI", None, "2026-12-11T00:00:00Z", "2026-12-13T00:00:00Z"),
        // Month ends and leap days.
        ("0 12 31 * *", None, "2026-11-23T00:00:00Z", "2026-12-31T12:00:00Z"),
        ("0 12 31 * *", None, "2026-12-31T12:00:00Z", "2027-01-31T12:00:00Z"),
        ("0 0 29 2 *", None, "2026-11-23T00:00:00Z", "2028-02-29T00:00:00Z"),
        // Time zones: 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
        ("0 9 * * *", Some("Europe/Paris"), "2026-11-23T10:00:00Z", "2026-11-24T08:00:00Z"),
        ("0 9 * * *", Some("Europe/Paris"), "2026-06-01T10:00:00Z", "2026-06-02T07:00:00Z"),
        // Across New York's spring-forward (2026-03-08: 02:00 EST jumps to 03:00 EDT):
        // 02:30 does not exist that day, so it runs at the jump, then 02:30 EDT next day.
        ("30 2 * * *", Some("America/New_York"), "2026-03-07T08:00:00Z", "2026-03-08T07:00:00Z"),
        ("30 2 * * *", Some("America/New_York"), "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"),
        // Across fall-back (2026-11-01: 02:00 EDT back to 01:00 EST): 01:30 happens twice, runs once.
        ("30 1 * * *", Some("America/New_York"), "2026-10-31T12:00:00Z", "2026-11-01T05:30:00Z"),
        ("30 1 * * *", Some("America/New_York"), "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"),
    ];

    #[test]
    fn cron_next_runs_match_the_known_cases() {
        for (expression, zone, after, expected) in CASES {
            let next = cron(expression, *zone).next_after(ms(after)).map(format_ms);
            assert_eq!(next.as_deref(), Some(*expected), "'{expression}' in {zone:?} after {after}");
        }
    }

    #[test]
    fn intervals_count_from_the_last_time_and_stop_at_their_end() {
        let schedule = Schedule::parse("t", r#"{"every_ms":30000,"until":"2026-11-23T10:01:00Z"}"#).unwrap();
        let start = ms("2026-11-23T10:00:00Z");
        assert_eq!(schedule.next_after(start), Some(start + 30_000));
        assert_eq!(schedule.next_after(start + 30_000), Some(start + 60_000));
        assert_eq!(schedule.next_after(start + 60_000), None, "past its end");
    }

    #[test]
    fn malformed_schedules_say_what_is_wrong() {
        let reason = |declared: &str| Schedule::parse("t", declared).err().expect("refused").to_string();
        assert!(reason(r#"{"cron":"61 * * * *"}"#).contains("cron expression '61 * * * *'"));
        assert!(reason(r#"{"cron":"0 0 * *"}"#).contains("cron expression"));
        assert!(reason(r#"{"cron":"0 0 * * * *"}"#).contains("five fields"));
        assert!(reason(r#"{"cron":"0 0 * * *","timezone":"Mars/Olympus"}"#).contains("not a time zone"));
        assert!(reason(r#"{"every_ms":1000,"args":"[1,"}"#).contains("not a JSON array or object"));
        assert!(reason(r#"{"every_ms":1000,"until":"tomorrow"}"#).contains("until 'tomorrow'"));
        assert!(reason(r#"{"every_ms":0}"#).contains("longer than 0"));
    }
}
