//! The report: the table, the derived ratios, the memory and the targets.

use crate::args::Settings;
use crate::phase::{micros, Phase};
use crate::results::{Results, Row};
use crate::scale_report::{scale_phases, scale_report};
use crate::{durable, CACHED_RESULTS};

/// Prints the table, the derived ratios, the memory and the targets;
/// returns whether every reply was right and every process behaved.
pub(crate) fn report(settings: &Settings, results: &Results) -> bool {
    let (k, n) = (settings.in_flight, settings.cluster_size);
    let floor_seq = results.row("floor-sequential");
    let floor_pipe = results.row(&format!("floor-pipelined-{k}"));
    let (tcp_seq, tcp_pipe) = (results.row("tcp-sequential"), results.row(&format!("tcp-pipelined-{k}")));
    println!();
    println!("floor: raw NNG request/reply (the transport); tcp: a plain TCP echo (the physical floor)");
    println!(
        "{:<24} {:>8} {:>12} {:>9} {:>9} {:>10} {:>9} {:>9} {:>8} {:>7} {:>6} {:>7}",
        "row",
        "replies",
        "rate (req/s)",
        "p50 (µs)",
        "p99 (µs)",
        "rate/floor",
        "p50/floor",
        "p99/floor",
        "rate/tcp",
        "p50/tcp",
        "wrong",
        "missing"
    );
    for Row { name, phase, pipelined } in &results.rows {
        let (floor, tcp) = if *pipelined { (floor_pipe, tcp_pipe) } else { (floor_seq, tcp_seq) };
        let (p50, p99) = (phase.percentile(50.0), phase.percentile(99.0));
        println!(
            "{:<24} {:>8} {:>12.0} {:>9.1} {:>9.1} {:>10.3} {:>9.2} {:>9.2} {:>8.3} {:>7.2} {:>6} {:>7}",
            name,
            phase.latencies.len(),
            phase.rate(),
            micros(p50),
            micros(p99),
            phase.rate() / floor.rate(),
            micros(p50) / micros(floor.percentile(50.0)),
            micros(p99) / micros(floor.percentile(99.0)),
            phase.rate() / tcp.rate(),
            micros(p50) / micros(tcp.percentile(50.0)),
            phase.wrong,
            phase.missing,
        );
    }

    let cp_seq = results.row("cp-blocking");
    let cp_pipe = results.row(&format!("cp-pipelined-{k}"));
    let cp_targets = [
        ("cp-blocking p50 ≤ 2× tcp", Some(ratio_p(cp_seq, tcp_seq, 50.0)), 2.0, false, "×"),
        ("cp-pipelined rate ≥ 0.50 of tcp", Some(cp_pipe.rate() / tcp_pipe.rate()), 0.5, true, ""),
    ];
    if results.rows.iter().any(|row| row.name == "cp-base-blocking") {
        let (base_seq, base_pipe) = (results.row("cp-base-blocking"), results.row(&format!("cp-base-pipelined-{k}")));
        println!();
        println!(
            "this build against the baseline (cp / cp-base): blocking p50 {:.2}×, rate {:.3}; {k} in flight rate {:.3}",
            ratio_p(cp_seq, base_seq, 50.0),
            cp_seq.rate() / base_seq.rate(),
            cp_pipe.rate() / base_pipe.rate(),
        );
    }
    let isolated = results.rows.iter().any(|row| row.name == "cp-isolated-blocking");
    let (iso_seq, iso_pipe) = if isolated {
        (results.row("cp-isolated-blocking"), results.row(&format!("cp-isolated-pipelined-{k}")))
    } else {
        // A build from before worker processes: the cp rows compare with themselves.
        (cp_seq, cp_pipe)
    };
    if isolated {
        println!();
        println!(
            "worker processes (cp-isolated / cp): blocking p50 {:.2}×, p99 {:.2}×, rate {:.3}; {k} in flight rate {:.3}, p50 {:.2}×",
            ratio_p(iso_seq, cp_seq, 50.0),
            ratio_p(iso_seq, cp_seq, 99.0),
            iso_seq.rate() / cp_seq.rate(),
            iso_pipe.rate() / cp_pipe.rate(),
            ratio_p(iso_pipe, cp_pipe, 50.0),
        );
    }
    let isolated_targets = [
        (
            "cp-isolated-blocking p50 ≤ 1.3× cp's",
            Some(ratio_p(iso_seq, cp_seq, 50.0)).filter(|_| isolated),
            1.3,
            false,
            "×",
        ),
        (
            "cp-isolated-pipelined rate ≥ 0.8 of cp's",
            Some(iso_pipe.rate() / cp_pipe.rate()).filter(|_| isolated),
            0.8,
            true,
            "",
        ),
    ];
    if settings.cp_only {
        println!();
        println!("targets:");
        print_targets(&cp_targets);
        print_targets(&isolated_targets);
        return checked(results);
    }
    if settings.scale_only {
        let scale_targets = scale_report(settings, results);
        println!();
        println!("targets:");
        print_targets(&cp_targets);
        print_targets(&isolated_targets);
        print_targets(&scale_targets.iter().map(|(w, v, l, a, u)| (w.as_str(), *v, *l, *a, *u)).collect::<Vec<_>>());
        return checked(results);
    }
    let durable_seq = results.row("durable-blocking");
    let durable_pipe = results.row(&format!("durable-pipelined-{k}"));
    println!();
    println!(
        "durable mode (durable / cp):      blocking rate {:.3}, p50 {:.2}×, p99 {:.2}×; pipelined rate {:.3}, p50 {:.2}×",
        durable_seq.rate() / cp_seq.rate(),
        ratio_p(durable_seq, cp_seq, 50.0),
        ratio_p(durable_seq, cp_seq, 99.0),
        durable_pipe.rate() / cp_pipe.rate(),
        ratio_p(durable_pipe, cp_pipe, 50.0),
    );
    if results.rows.iter().any(|row| row.name == "durable-isolated-blocking") {
        let (seq, pipe) =
            (results.row("durable-isolated-blocking"), results.row(&format!("durable-isolated-pipelined-{k}")));
        let (base_seq, base_pipe) =
            (results.row("cp-isolated-blocking"), results.row(&format!("cp-isolated-pipelined-{k}")));
        println!(
            "durable, worker processes (durable-isolated / cp-isolated): blocking rate {:.3}, p50 {:.2}×; pipelined rate {:.3}, p50 {:.2}×",
            seq.rate() / base_seq.rate(),
            ratio_p(seq, base_seq, 50.0),
            pipe.rate() / base_pipe.rate(),
            ratio_p(pipe, base_pipe, 50.0),
        );
    }
    if results.rows.iter().any(|row| row.name == "py-blocking") {
        let (py_seq, py_pipe) = (results.row("py-blocking"), results.row(&format!("py-pipelined-{k}")));
        println!(
            "python client (py / cp):          blocking p50 {:.2}×, p99 {:.2}×, rate {:.3}; pipelined rate {:.3}, p50 {:.2}×",
            ratio_p(py_seq, cp_seq, 50.0),
            ratio_p(py_seq, cp_seq, 99.0),
            py_seq.rate() / cp_seq.rate(),
            py_pipe.rate() / cp_pipe.rate(),
            ratio_p(py_pipe, cp_pipe, 50.0),
        );
    }
    let (http_seq, http_pipe) = (results.row("http-blocking"), results.row(&format!("http-pipelined-{k}")));
    println!(
        "HTTP API (http / cp, Rust client): blocking rate {:.3}, p50 {:.2}×, p99 {:.2}×; {k} in flight rate {:.3}, p50 {:.2}×",
        http_seq.rate() / cp_seq.rate(),
        ratio_p(http_seq, cp_seq, 50.0),
        ratio_p(http_seq, cp_seq, 99.0),
        http_pipe.rate() / cp_pipe.rate(),
        ratio_p(http_pipe, cp_pipe, 50.0),
    );
    let recovery = results.recovery.as_ref();
    if let Some(recovery) = recovery {
        println!(
            "recovery of {} queued tasks after kill -9: serving again {:.0} ms after the restart (in-memory start: {:.0} ms, {:.2}×)",
            durable::RECOVERED_TASKS,
            recovery.durable.as_secs_f64() * 1000.0,
            recovery.memory.as_secs_f64() * 1000.0,
            recovery.durable.as_secs_f64() / recovery.memory.as_secs_f64()
        );
    }
    let durable_targets = [
        ("durable-pipelined rate ≥ 0.50 of cp's", Some(durable_pipe.rate() / cp_pipe.rate()), 0.5, true, ""),
        ("recovery of 100 000 queued ≤ 2 s", recovery.map(|r| r.durable.as_secs_f64()), 2.0, false, " s"),
    ];
    if settings.durable_only {
        println!();
        println!("targets:");
        print_targets(&isolated_targets);
        print_targets(&durable_targets);
        return checked(results);
    }
    let sw_seq = results.row("sw-blocking");
    let sw_pipe = results.row(&format!("sw-pipelined-{k}"));
    let sw2_pipe = results.row(&format!("sw2-pipelined-{k}"));
    let cluster = results.row(&format!("sw{n}-pipelined-{k}"));
    let single = results.row(&format!("sw1-alone-pipelined-{k}"));
    let cluster_ratio = cluster.rate() / single.rate();
    println!();
    println!(
        "subworker hop (sw / cp):          blocking p50 {:.2}×, p99 {:.2}×; pipelined rate {:.3}",
        ratio_p(sw_seq, cp_seq, 50.0),
        ratio_p(sw_seq, cp_seq, 99.0),
        sw_pipe.rate() / cp_pipe.rate()
    );
    if isolated {
        // Both in their default mode: each runs the task in a worker process.
        println!(
            "subworker hop, default modes (sw / cp-isolated): blocking p50 {:.2}×, p99 {:.2}×; pipelined rate {:.3}",
            ratio_p(sw_seq, iso_seq, 50.0),
            ratio_p(sw_seq, iso_seq, 99.0),
            sw_pipe.rate() / iso_pipe.rate()
        );
    }
    println!("second subworker (sw2 / sw):      pipelined rate {:.2}×", sw2_pipe.rate() / sw_pipe.rate());
    for name in ["auth", "tls"] {
        let (seq, pipe) =
            (results.row(&format!("cp-{name}-blocking")), results.row(&format!("cp-{name}-pipelined-{k}")));
        println!(
            "{:<34}blocking p50 {:.2}×, p99 {:.2}×; pipelined rate {:.3}",
            format!("{} (cp-{name} / cp):", if name == "auth" { "cluster key" } else { "key and TLS" }),
            ratio_p(seq, cp_seq, 50.0),
            ratio_p(seq, cp_seq, 99.0),
            pipe.rate() / cp_pipe.rate()
        );
    }
    println!(
        "cluster of {n} (sw{n} / sw1-alone): pipelined rate {cluster_ratio:.3}, p50 {:.2}×, p99 {:.2}× (same control plane and subworker)",
        ratio_p(cluster, single, 50.0),
        ratio_p(cluster, single, 99.0),
    );

    let mib = |kib: Option<u64>| kib.map(|kib| kib as f64 / 1024.0);
    let show = |mib: Option<f64>| mib.map_or("unknown".to_string(), |m| format!("{m:.1} MiB"));
    let (idle, idle_large, cached) =
        (mib(results.idle_kib), mib(results.idle_large_cache_kib), mib(results.cached_kib));
    println!();
    println!("control plane resident memory (VmRSS), example plugin loaded:");
    for (what, value) in [
        ("idle, default flags".to_string(), idle),
        (format!("idle, --result-cache-size {CACHED_RESULTS}"), idle_large),
        (format!("after {CACHED_RESULTS} results cached"), cached),
    ] {
        println!("  {what:<40} {:>12}", show(value));
    }

    let scale_targets = scale_report(settings, results);
    let (wrong, missing) = scale_phases(results)
        .map(|(_, phase)| phase)
        .chain(results.rows.iter().map(|row| &row.phase))
        .fold((0, 0), |(w, m), phase| (w + phase.wrong, m + phase.missing));
    println!();
    println!("targets:");
    let cluster_target = format!("sw{n} costs ≤ 5 % of sw1-alone's rate");
    let targets = [
        ("cp-blocking p50 ≤ 1.5× floor", Some(ratio_p(cp_seq, floor_seq, 50.0)), 1.5, false, "×"),
        ("sw-blocking p50 ≤ 3× floor", Some(ratio_p(sw_seq, floor_seq, 50.0)), 3.0, false, "×"),
        ("cp-pipelined rate ≥ 0.50 of floor", Some(cp_pipe.rate() / floor_pipe.rate()), 0.5, true, ""),
        ("sw-pipelined rate ≥ 0.35 of floor", Some(sw_pipe.rate() / floor_pipe.rate()), 0.35, true, ""),
        ("sw-pipelined ≥ 0.50 of cp's (in-process)", Some(sw_pipe.rate() / cp_pipe.rate()), 0.5, true, ""),
        (
            "sw-pipelined ≥ 0.50 of cp-isolated's",
            Some(sw_pipe.rate() / iso_pipe.rate()).filter(|_| isolated),
            0.5,
            true,
            "",
        ),
        (cluster_target.as_str(), Some(1.0 - cluster_ratio), 0.05, false, ""),
        ("idle memory ≤ 15 MiB", idle, 15.0, false, " MiB"),
        ("memory with 100 000 cached ≤ 100 MiB", cached, 100.0, false, " MiB"),
        ("wrong + missing replies = 0", Some((wrong + missing) as f64), 0.0, false, ""),
    ];
    print_targets(&cp_targets);
    print_targets(&isolated_targets);
    print_targets(&targets);
    print_targets(&durable_targets);
    print_targets(&scale_targets.iter().map(|(w, v, l, a, u)| (w.as_str(), *v, *l, *a, *u)).collect::<Vec<_>>());
    checked(results)
}

/// A target: what, the value measured, the limit, whether it is a floor
/// (else a ceiling), the unit.
pub(crate) type Target<'a> = (&'a str, Option<f64>, f64, bool, &'a str);

/// Prints each target, marked met or not.
pub(crate) fn print_targets(targets: &[Target<'_>]) {
    for &(what, value, limit, at_least, unit) in targets {
        let verdict = match value {
            Some(v) if (at_least && v >= limit) || (!at_least && v <= limit) => "met",
            Some(_) => "NOT MET",
            None => "unknown",
        };
        let value = value.map_or("?".to_string(), |v| format!("{v:.3}{unit}"));
        println!("  {what:<40} {value:>14}   {verdict}");
    }
}

/// Prints the wrong and missing replies and the problems; whether there were none.
pub(crate) fn checked(results: &Results) -> bool {
    let measured: usize = results.rows.iter().map(|row| row.phase.latencies.len()).sum();
    let warmup: u64 = results.rows.iter().map(|row| row.phase.warmup_replies).sum();
    println!();
    let mut clean = true;
    for Row { name, phase, .. } in &results.rows {
        if phase.wrong + phase.missing > 0 {
            clean = false;
            println!(
                "{name}: {} wrong and {} missing replies (first: {})",
                phase.wrong,
                phase.missing,
                phase.first_problem.as_deref().unwrap_or("?")
            );
        }
    }
    for (name, phase) in scale_phases(results) {
        if phase.wrong + phase.missing > 0 {
            clean = false;
            let first = phase.first_problem.as_deref().unwrap_or("?");
            println!("{name}: {} wrong and {} missing (first: {first})", phase.wrong, phase.missing);
        }
    }
    if clean {
        println!("every reply checked ({measured} measured, {warmup} warm-up): 0 wrong, 0 missing");
    }
    for problem in &results.problems {
        clean = false;
        println!("{problem}");
    }
    clean
}

/// Percentile `p` of `phase` as a multiple of that of `base`.
pub(crate) fn ratio_p(phase: &Phase, base: &Phase, p: f64) -> f64 {
    micros(phase.percentile(p)) / micros(base.percentile(p))
}
