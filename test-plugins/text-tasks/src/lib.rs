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

fastworker_plugin_sdk::export_plugin!(upper, word_count);
