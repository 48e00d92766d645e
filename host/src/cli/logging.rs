//! Where and how the process logs: standard error, filtered by
//! `FASTWORKER_LOG` (or `RUST_LOG`), as text (coloured only on a terminal)
//! or as one JSON object a line (`--log-format json`). A filter that does
//! not parse stops the start-up instead of silencing every line.

use std::io::IsTerminal;

use tracing_subscriber::filter::{Directive, LevelFilter};
use tracing_subscriber::EnvFilter;

/// The variable naming what to log.
const LOG_VAR: &str = "FASTWORKER_LOG";

/// Read when [`LOG_VAR`] is not set, as other Rust programs do.
const FALLBACK_VAR: &str = "RUST_LOG";

/// The variable of `--log-format`, also set for the worker processes.
pub(crate) const FORMAT_VAR: &str = "FASTWORKER_LOG_FORMAT";

/// The environment variables the command reads besides each flag's own,
/// for the top-level `--help`.
pub(crate) const ENVIRONMENT_HELP: &str = "\
Environment:
  FASTWORKER_LOG         what to log: a level (off, error, warn, info, debug, trace) or
                         TARGET=LEVEL directives, comma-separated (default: info;
                         e.g. info,fastworker::server=debug); a bad one stops the start (exit 2)
  RUST_LOG               read when FASTWORKER_LOG is not set
  FASTWORKER_LOG_FORMAT  text or json, as --log-format
  NO_COLOR               when set, no colour even on a terminal
  FASTWORKER_PLUGIN_PATH directories (:-separated) searched first for plugins named by name
  FASTWORKER_NNG_TASK_THREADS      NNG's callback threads in this process: 2 to 64, or `nng`
                                   for NNG's own choice (default: one per core, 2 to 16)
  FASTWORKER_NNG_EXPIRE_THREADS    NNG's timeout threads: 1 to 64, or `nng` (the default)
  FASTWORKER_NNG_RESOLVER_THREADS  NNG's resolver threads: 1 to 64, or `nng` (the default);
                                   a bad value of any of the three stops the start (exit 2)
  FASTWORKER_*           every flag has its variable, shown in each command's --help";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    // Plain comments, not doc comments: a documented value would switch
    // every command's `--help` to clap's long, spaced-out layout.
    // One line of text per event; coloured only when standard error is a terminal.
    Text,
    // One JSON object per line: timestamp, level, target, message and the event's fields.
    Json,
}

/// Installs the logger, or says why the filter is refused.
pub(crate) fn init(format: LogFormat) -> Result<(), String> {
    let filter = filter_from_env()?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder.with_ansi(std::io::stderr().is_terminal() && !no_color).init();
        }
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init();
        }
    }
    Ok(())
}

/// The filter `FASTWORKER_LOG` (else `RUST_LOG`, else `info`) gives.
fn filter_from_env() -> Result<EnvFilter, String> {
    for variable in [LOG_VAR, FALLBACK_VAR] {
        match std::env::var(variable) {
            Ok(value) if value.trim().is_empty() => continue,
            Ok(value) => return parse(variable, &value),
            Err(std::env::VarError::NotPresent) => continue,
            Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{variable} is not valid UTF-8")),
        }
    }
    Ok(EnvFilter::new("info"))
}

/// Parses `value` of `variable`, refusing any directive that is neither a
/// level nor `TARGET=LEVEL`: a bare word would be taken for a target and
/// turn every other line off.
fn parse(variable: &str, value: &str) -> Result<EnvFilter, String> {
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        let fits = level.parse::<LevelFilter>().is_ok() && directive.parse::<Directive>().is_ok();
        if !fits {
            let shown: String = directive.chars().filter(|c| !c.is_control()).take(64).collect();
            return Err(format!(
                "{variable}: '{shown}' is not a log directive: give a level (off, error, warn, info, debug, trace) or TARGET=LEVEL, comma-separated (e.g. {variable}=info,fastworker::server=debug)"
            ));
        }
    }
    EnvFilter::builder().parse(value).map_err(|error| format!("{variable}: {error}"))
}
