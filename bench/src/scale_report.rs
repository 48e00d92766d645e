//! The scale rows' part of the report: sleep scaling, the batch, the payload.

use crate::args::Settings;
use crate::payload::PAYLOAD;
use crate::phase::{micros, Phase};
use crate::report::ratio_p;
use crate::results::Results;
use crate::scale::SLEEP_CONCURRENCY;
use crate::workflow;

/// A target with an owned description (see [`Target`](crate::report::Target)).
pub(crate) type OwnedTarget = (String, Option<f64>, f64, bool, &'static str);

/// Every checked phase of the scale rows, named.
pub(crate) fn scale_phases(results: &Results) -> impl Iterator<Item = (String, &Phase)> {
    let sleep = results.sleep.iter().map(|row| (format!("sleep-{}", row.subworkers), &row.phase));
    let batch = results.batch.iter().map(|row| (format!("batch-{} reports", row.tasks), &row.check));
    let payload = results.payload.iter().flat_map(|row| {
        [(format!("cp-payload-{}KiB", PAYLOAD >> 10), &row.cp), (format!("tcp-payload-{}KiB", PAYLOAD >> 10), &row.tcp)]
    });
    sleep.chain(batch).chain(payload)
}

/// Prints the scale rows (if they ran) and returns their targets.
pub(crate) fn scale_report(settings: &Settings, results: &Results) -> Vec<OwnedTarget> {
    let mut targets = Vec::new();
    if settings.durable_only || (settings.no_scale && !settings.scale_only) {
        return targets;
    }
    println!();
    println!("scale rows:");
    for row in &results.sleep {
        println!(
            "  {:<22} {:>4} subworkers × {SLEEP_CONCURRENCY} slots: {:>8.0} tasks/s of an ideal {:>6.0}: efficiency {:.3}; p50 {:.2} ms, p99 {:.2} ms",
            format!("sleep-{}", row.subworkers),
            row.subworkers,
            row.phase.rate(),
            row.ideal(),
            row.efficiency(),
            micros(row.phase.percentile(50.0)) / 1000.0,
            micros(row.phase.percentile(99.0)) / 1000.0,
        );
    }
    for row in &results.sleep {
        match row.cpu_per_task_us() {
            Some(us) if us > 0.0 => println!(
                "  {:<22} control plane CPU (utime + stime) {:.0} ms over {} routed tasks: {us:.1} µs per task, so one core routes {:.0} tasks/s",
                format!("sleep-{} cpu", row.subworkers),
                row.cpu.unwrap_or_default().as_secs_f64() * 1e3,
                row.phase.latencies.len() as u64 + row.phase.wrong,
                1e6 / us,
            ),
            _ => println!("  {:<22} control plane CPU: not measurable here (no /proc, or under one clock tick)", format!("sleep-{} cpu", row.subworkers)),
        }
    }
    if let Some(largest) = results.sleep.iter().max_by_key(|row| row.subworkers) {
        let what = format!("sleep-{} efficiency ≥ 0.90", largest.subworkers);
        targets.push((what, Some(largest.efficiency()), 0.9, true, ""));
    }
    if let Some(batch) = &results.batch {
        println!(
            "  {:<22} submitted in {:.3} s ({:.0} tasks/s); all run in {:.3} s: {:.0} tasks/s end to end ({} reports checked)",
            format!("batch-{}", batch.tasks),
            batch.submitted.as_secs_f64(),
            batch.tasks as f64 / batch.submitted.as_secs_f64(),
            batch.finished.as_secs_f64(),
            batch.rate(),
            batch.check.latencies.len()
        );
        targets.push(("batch submit + run ≥ 100 000 tasks/s".into(), Some(batch.rate()), 100_000.0, true, "/s"));
    }
    if let Some(payload) = &results.payload {
        let mib = (2 * PAYLOAD) as f64 / f64::from(1 << 20);
        for (name, phase) in [("cp-payload", &payload.cp), ("tcp-payload", &payload.tcp)] {
            println!(
                "  {:<22} {:>8.1} round trips/s ({:.0} MiB/s both ways); p50 {:.2} ms, p99 {:.2} ms",
                format!("{name}-{}KiB", PAYLOAD >> 10),
                phase.rate(),
                phase.rate() * mib,
                micros(phase.percentile(50.0)) / 1000.0,
                micros(phase.percentile(99.0)) / 1000.0,
            );
        }
        println!(
            "  {:<22} rate {:.3} of tcp, p50 {:.2}× tcp (issue 14 sets no target for this row)",
            "payload (cp / tcp):",
            payload.cp.rate() / payload.tcp.rate(),
            ratio_p(&payload.cp, &payload.tcp, 50.0)
        );
    }
    if let Some(row) = &results.workflow {
        targets.push(workflow::report(row));
    }
    targets
}
