//! A second plugin for tests: text tasks that load beside `example-tasks`.

use fastworker_plugin_sdk::task;

/// Upper-cases a string.
#[task]
fn upper(text: String) -> String {
    text.to_uppercase()
}

/// Counts the words in a string.
#[task(priority = "critical")]
fn word_count(text: String) -> usize {
    text.split_whitespace().count()
}

/// `text` repeated `times` times (at most 64 MiB): a large result from
/// small arguments.
#[task]
fn repeat(text: String, times: usize) -> Result<String, String> {
    match text.len().checked_mul(times) {
        Some(len) if len <= 64 << 20 => Ok(text.repeat(times)),
        _ => Err("more than 64 MiB".into()),
    }
}

fastworker_plugin_sdk::export_plugin!(upper, word_count, repeat);
