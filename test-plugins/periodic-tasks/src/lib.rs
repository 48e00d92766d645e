//! Periodic tasks for tests: short intervals and run counts.

use fastworker_plugin_sdk::{task, TaskContext};

/// Runs three times, 300 ms apart, with the argument 7.
#[task(every = "300ms", runs = 3, args = "[7]")]
fn pulse(n: u32) -> u32 {
    n
}

/// Due every 200 ms but takes 500 ms: most of its runs find the last one
/// still going and are skipped.
#[task(every = "200ms", runs = 3)]
fn slow_pulse(ctx: &TaskContext) -> u32 {
    std::thread::sleep(std::time::Duration::from_millis(500));
    ctx.attempt()
}

/// Due every 200 ms with no end, for pausing and resuming.
#[task(every = "200ms")]
fn steady() {}

fastworker_plugin_sdk::export_plugin!(pulse, slow_pulse, steady);
