//! The panic hook of fastworker processes and plugins: a panic is reported
//! as one line with its message and location, and never with a symbolized
//! backtrace. With `RUST_BACKTRACE=1` the standard hook loads the whole
//! debug information of the process to symbolize the first backtrace
//! (about 155 MB in a release build, never given back), while a task's
//! panic is caught, ends only its own run, and is reported to its caller
//! by its message: that message is what a user needs.

use std::panic::PanicHookInfo;
use std::sync::Once;

/// Installs the hook in this copy of the standard library: the host's, or
/// (called when a plugin is loaded) the plugin's own, since a plugin
/// library carries a standard library of its own. Idempotent.
pub fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| std::panic::set_hook(Box::new(report)));
}

/// Writes `thread 'NAME' panicked at FILE:LINE:COLUMN: MESSAGE` to stderr,
/// or, when `FASTWORKER_LOG_FORMAT=json`, one JSON object at level `ERROR`.
fn report(info: &PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic with a non-string payload");
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let at = info.location().map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
    if std::env::var_os("FASTWORKER_LOG_FORMAT").is_some_and(|format| format == "json") {
        // One object a line, as the host's JSON log lines are.
        let line = serde_json::json!({
            "level": "ERROR",
            "target": "panic",
            "message": message,
            "thread": name,
            "location": at,
        });
        return eprintln!("{line}");
    }
    match at {
        Some(at) => eprintln!("thread '{name}' panicked at {at}: {message}"),
        None => eprintln!("thread '{name}' panicked: {message}"),
    }
}
