//! Running tasks from Rust with `fastworker::Client`.
//!
//! Start a control plane serving the example plugin, then run this program:
//!
//! ```sh
//! cargo build && target/debug/fastworker control-plane --task-modules target/debug/libexample_tasks.so
//! cargo run -p fastworker --example client -- --address tcp://127.0.0.1:5555
//! ```
//!
//! It exits 0 when every step gave the expected answer, and 1 with the reason otherwise.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use fastworker::client::decode_result;
use fastworker::{Client, ClientError, SubmitOptions};
use serde::{Deserialize, Serialize};

/// Runs a few tasks of the example plugin through one `fastworker::Client`.
#[derive(Parser)]
struct Args {
    /// Base address of the control plane (its CRITICAL port; the others follow it).
    #[arg(long, default_value = fastworker::DEFAULT_BASE_ADDRESS)]
    address: String,
}

/// The example plugin's `Point`: any type with the same JSON shape will do.
#[derive(Debug, Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole chain: "calling add: no worker provides task 'add' ...".
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // No I/O happens here: each port is dialled on first use, and every call
    // gives up with `ClientError::Timeout` after 10 s (the default is 30 s).
    let client = Client::new(&args.address)?.with_timeout(Duration::from_secs(10));

    // 1. A typed call: positional arguments as a tuple, the result as the type you ask for.
    let sum: i64 = client.call("add", (5, 3)).await.context("calling add")?;
    println!("add(5, 3) = {sum}");
    ensure!(sum == 8, "add(5, 3) returned {sum}, expected 8");

    // 2. Structs travel as JSON, both ways.
    let a = Point { x: 0.0, y: 0.0 };
    let b = Point { x: 2.0, y: 4.0 };
    let middle: Point = client.call("midpoint", (&a, &b)).await.context("calling midpoint")?;
    println!("midpoint({a:?}, {b:?}) = {middle:?}");
    ensure!(middle.x == 1.0 && middle.y == 2.0, "midpoint returned {middle:?}, expected (1, 2)");

    // 3. A task that fails is an `Err(ClientError::TaskFailed)` carrying the task's
    //    own message; other errors (timeout, refusal, transport) are other variants.
    match client.call::<i64>("divide", (1, 0)).await {
        Err(ClientError::TaskFailed { task_name, error }) => {
            println!("divide(1, 0) failed as expected: task '{task_name}' said \"{}\"", error.message)
        }
        Ok(quotient) => bail!("divide(1, 0) returned {quotient}, expected a task failure"),
        Err(other) => return Err(other).context("calling divide"),
    }

    // 4. Fire and forget: `delay` returns the task's id at once; `status`
    //    follows it (queued, running, then final: succeeded, failed, ...).
    //    `client.wait(task_id, limit)` runs this loop for you.
    let task_id = client.delay("sleep_ms", (200,), SubmitOptions::default()).await.context("delaying sleep_ms")?;
    println!("sleep_ms(200) accepted as {task_id}");
    let report = loop {
        let report = client.status(task_id).await.context("querying status")?;
        if report.state.is_final() {
            break report;
        }
        println!("  {task_id} is {}", report.state.as_str());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A final report turns into the typed result (or the task's error) like `call` does.
    let slept: u64 = decode_result(report)?;
    println!("sleep_ms(200) finished: slept {slept} ms");
    ensure!(slept >= 200, "sleep_ms(200) slept only {slept} ms");

    // 5. One client, shared: cloning it is cheap (an `Arc`), and any number of
    //    calls may be in flight at once, each getting its own reply.
    let calls: Vec<_> = (0..100_i64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { (i, client.call::<i64>("add", (i, 1000 * i)).await) })
        })
        .collect();
    for call in calls {
        let (i, sum) = call.await?;
        let sum = sum.with_context(|| format!("calling add({i}, {})", 1000 * i))?;
        ensure!(sum == 1001 * i, "add({i}, {}) returned {sum}, expected {}", 1000 * i, 1001 * i);
    }
    println!("100 concurrent calls through one client: every result was its own");
    Ok(())
}
