//! A plugin whose periodic task has a malformed cron expression: the host
//! must refuse it at load.

use fastworker_plugin_sdk::task;

/// Minute 61 does not exist.
#[task(cron = "61 * * * *")]
fn never() {}

fastworker_plugin_sdk::export_plugin!(never);
