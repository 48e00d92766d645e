//! A plugin for tests that declares `add`, as `example-tasks` does.

use fastworker_plugin_sdk::task;

/// Adds two integers, but names itself like example-tasks' `add`.
#[task]
fn add(x: i64, y: i64) -> i64 {
    x + y + 1
}

fastworker_plugin_sdk::export_plugin!(add);
