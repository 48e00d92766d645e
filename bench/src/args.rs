//! Command-line settings and their parsing.

use std::time::Duration;

use crate::phase::Budget;
use crate::ECHO_CONTEXTS;

/// Command-line settings.
pub(crate) struct Settings {
    /// Measured seconds per phase (ignored when `requests` is set).
    pub(crate) seconds: f64,
    /// A fixed number of measured requests per phase instead of a duration.
    pub(crate) requests: Option<u64>,
    /// Requests in flight in the pipelined phases.
    pub(crate) in_flight: usize,
    /// Threads running `add` in the control plane of the `cp` rows and in each subworker.
    pub(crate) concurrency: usize,
    /// Subworkers registered in the large-cluster row (all but one fake).
    pub(crate) cluster_size: usize,
    /// Run the echo server on this process's threads instead of a child process.
    pub(crate) floor_in_process: bool,
    /// Run the memory soak for this many minutes instead of the table.
    pub(crate) soak_minutes: Option<f64>,
    /// Time between two kills of the soak's subworker (`None`: never).
    pub(crate) soak_kill_every: Option<Duration>,
    /// Run only the floors, the `cp` rows and the isolated `cp` rows.
    pub(crate) cp_only: bool,
    /// Run only the floors, the `cp` rows and the durable rows.
    pub(crate) durable_only: bool,
    /// Run only the floors, the `cp` rows and the scale rows.
    pub(crate) scale_only: bool,
    /// Skip the scale rows (sleep scaling, batch, payload).
    pub(crate) no_scale: bool,
    /// Subworker counts of the sleep-scaling rows.
    pub(crate) sleep_sizes: Vec<usize>,
    /// No-op tasks of the batch row.
    pub(crate) batch_tasks: u64,
    /// Instead of the table: the NNG 1.4, 1.11 and 2.0 floors side by side.
    pub(crate) nng_versions: bool,
    /// Instead of the table: the floors and cp rows under each of these NNG thread settings.
    pub(crate) nng_settings: Option<Vec<crate::nng_settings::Setting>>,
    /// Rounds of `--nng-settings` (each setting once per round).
    pub(crate) rounds: u32,
    /// Instead of the table: the workflow row alone.
    pub(crate) workflow_only: bool,
    /// Instead of the table: the payload rows alone.
    pub(crate) payload_only: bool,
    /// A Python interpreter with the `fastworker` package: adds the Python client's rows.
    pub(crate) python: Option<std::path::PathBuf>,
}

impl Settings {
    /// The budget of one of `parts` parts of a measured phase (1: all of it).
    pub(crate) fn budget_part(&self, parts: u32) -> Budget {
        match self.requests {
            Some(n) => Budget::requests((n / u64::from(parts)).max(1)),
            None => Budget::time(Duration::from_secs_f64(self.seconds) / parts),
        }
    }
}

/// The settings from the command line, or the usage (or what is wrong) to print.
pub(crate) fn parse_args() -> Result<Settings, String> {
    const USAGE: &str = "usage: fastworker-bench [--seconds S] [--requests N] [--in-flight K] [--concurrency C] \
        [--cluster-size N] [--floor-in-process] [--cp-only | --durable-only | --scale-only | --no-scale] [--sleep-sizes N,N,..] [--batch-tasks N] \
        [--python PATH] [--soak MINUTES [--soak-kill-every S]] [--nng-versions] [--nng-settings LIST [--rounds N]] [--workflow-only] [--payload-only]\n  \
        --seconds S           measured seconds per phase (default 2)\n  \
        --requests N          measure N requests per phase instead of a duration\n  \
        --in-flight K         requests in flight in the pipelined phases (default 64)\n  \
        --concurrency C       threads running `add` in the control plane and in each subworker (default: cores)\n  \
        --cluster-size N      subworkers registered in the large-cluster row, N - 1 of them fakes (default 100)\n  \
        --floor-in-process    run the echo server on this process's threads, not in a child process\n  \
        --cp-only             run only the floors, the cp rows and the isolated cp rows (worker processes)\n  \
        --durable-only        run only the floors, the cp rows and the durable (--state-dir) rows\n  \
        --scale-only          run only the floors, the cp rows and the scale rows (sleep scaling, batch, payload)\n  \
        --no-scale            skip the scale rows\n  \
        --sleep-sizes LIST    subworker counts of the sleep-scaling rows (default 1,10,100; each 1 to 200)\n  \
        --batch-tasks N       no-op tasks of the batch row (default 100000)\n  \
        --python PATH         add the Python client's rows (bench/python/client_bench.py run with PATH)\n  \
        --nng-versions        instead of the table: build and run the NNG 1.11 and 2.0 floors (bench/nng-versions/)\n                              and print them beside NNG 1.4's and the TCP floor\n  \
        --nng-settings LIST   instead of the table: the NNG floors and cp rows under each NNG thread setting of LIST,\n                              side by side (`/`-separated: ours, nng, or KEY=N,.. with KEY task, expire, resolver;\n                              `all`: the list in docs/speed.md)\n  \
        --rounds N            rounds of --nng-settings, each setting once per round, orders alternating (default 4)\n  \
        --workflow-only       instead of the table: the workflow row alone (a chord of 1000 add against 1000 pipelined add)\n  \
        --payload-only        instead of the table: the 1 MiB payload rows alone (TCP, in-process, worker processes,\n                              and the baseline's when FASTWORKER_BENCH_BASELINE is set)\n  \
        --soak MINUTES        instead of the table: mixed load with a subworker killed every 20 s, memory sampled\n  \
        --soak-kill-every S   seconds between two kills of the soak's subworker (default 20; 0: never)\n\
        environment: FASTWORKER_BENCH_BINARIES=DIR measures the fastworker binary and example plugin in DIR, unbuilt;\n\
        FASTWORKER_BENCH_BASELINE=DIR adds cp-base rows: the cp rows on the (older) build in DIR, in the same run\n                              (and durable-base and cp-base-isolated rows with the durable rows)";
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut settings = Settings {
        seconds: 2.0,
        requests: None,
        in_flight: 64,
        concurrency: cores,
        cluster_size: 100,
        floor_in_process: false,
        soak_minutes: None,
        soak_kill_every: Some(Duration::from_secs(20)),
        cp_only: false,
        durable_only: false,
        scale_only: false,
        no_scale: false,
        sleep_sizes: vec![1, 10, 100],
        batch_tasks: 100_000,
        nng_versions: false,
        nng_settings: None,
        rounds: 4,
        workflow_only: false,
        payload_only: false,
        python: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut number = |name: &str| -> Result<f64, String> {
            let value = args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
            value.parse().map_err(|_| format!("{name}: not a number\n{USAGE}"))
        };
        let mut whole = |name: &str, range: std::ops::RangeInclusive<u64>| -> Result<u64, String> {
            let n = number(name)?;
            if n.fract() != 0.0 || !(*range.start() as f64..=*range.end() as f64).contains(&n) {
                return Err(format!(
                    "{name} must be a whole number from {} to {}\n{USAGE}",
                    range.start(),
                    range.end()
                ));
            }
            Ok(n as u64)
        };
        match flag.as_str() {
            "--seconds" => {
                settings.seconds = number("--seconds")?;
                if !(settings.seconds.is_finite() && settings.seconds > 0.0 && settings.seconds <= 60.0) {
                    return Err(format!("--seconds must be above 0 and at most 60\n{USAGE}"));
                }
            }
            "--requests" => settings.requests = Some(whole("--requests", 1..=u64::MAX >> 12)?),
            // The echo server serves that many at once.
            "--in-flight" => settings.in_flight = whole("--in-flight", 1..=ECHO_CONTEXTS as u64)? as usize,
            "--concurrency" => settings.concurrency = whole("--concurrency", 1..=1024)? as usize,
            "--cluster-size" => settings.cluster_size = whole("--cluster-size", 1..=1000)? as usize,
            "--floor-in-process" => settings.floor_in_process = true,
            "--soak" => {
                let minutes = number("--soak")?;
                if !(minutes.is_finite() && minutes > 0.0 && minutes <= 24.0 * 60.0) {
                    return Err(format!("--soak takes minutes, above 0 and at most a day\n{USAGE}"));
                }
                settings.soak_minutes = Some(minutes);
            }
            "--soak-kill-every" => {
                let seconds = whole("--soak-kill-every", 0..=3600)?;
                settings.soak_kill_every = (seconds > 0).then(|| Duration::from_secs(seconds));
            }
            "--cp-only" => settings.cp_only = true,
            "--durable-only" => settings.durable_only = true,
            "--scale-only" => settings.scale_only = true,
            "--no-scale" => settings.no_scale = true,
            "--nng-versions" => settings.nng_versions = true,
            "--workflow-only" => settings.workflow_only = true,
            "--payload-only" => settings.payload_only = true,
            "--rounds" => settings.rounds = whole("--rounds", 1..=20)? as u32,
            "--nng-settings" => {
                let list = args.next().ok_or_else(|| format!("--nng-settings needs a list\n{USAGE}"))?;
                settings.nng_settings = Some(crate::nng_settings::parse_list(&list)?);
            }
            "--python" => {
                settings.python = Some(args.next().ok_or_else(|| format!("--python needs a path\n{USAGE}"))?.into())
            }
            "--batch-tasks" => settings.batch_tasks = whole("--batch-tasks", 1..=1_000_000)?,
            "--sleep-sizes" => {
                let list = args.next().ok_or_else(|| format!("--sleep-sizes needs a value\n{USAGE}"))?;
                let sizes: Result<Vec<usize>, _> = list.split(',').map(|n| n.trim().parse::<usize>()).collect();
                match sizes {
                    Ok(sizes)
                        if !sizes.is_empty() && sizes.len() <= 8 && sizes.iter().all(|n| (1..=200).contains(n)) =>
                    {
                        settings.sleep_sizes = sizes
                    }
                    _ => {
                        return Err(format!(
                            "--sleep-sizes takes 1 to 8 counts from 1 to 200, comma-separated\n{USAGE}"
                        ))
                    }
                }
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    let modes = [settings.cp_only, settings.durable_only, settings.scale_only, settings.no_scale];
    if modes.iter().filter(|&&f| f).count() > 1 {
        return Err(format!("--cp-only, --durable-only, --scale-only and --no-scale exclude each other\n{USAGE}"));
    }
    Ok(settings)
}
