//! A fixed load for profiling a running control plane: `N` `add` calls
//! with `K` in flight, every result checked, then the rate. Start the
//! control plane (and subworkers) yourself, under the profiler of your
//! choice, then run
//! `cargo run --release -p fastworker-bench --example load -- ADDRESS N K`;
//! dividing the profiler's totals by `N` gives costs per task.
//!
//! With a fourth argument `echo`, the same load of 16-byte requests goes to
//! a raw NNG echo server instead (`fastworker-bench --echo-server ADDRESS`,
//! the benchmark's floor), from `K` threads with a Req0 socket each, to
//! measure the floor's costs per request the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::Client;
use nng::{Protocol, Socket};

#[tokio::main]
async fn main() -> Result<(), String> {
    // NNG's thread counts, as every process of the project sets them.
    fastworker::wire::nng_threads::configure().map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (address, n, k, echo) = match args.as_slice() {
        [address, n, k] => (address, n, k, false),
        [address, n, k, mode] if mode == "echo" => (address, n, k, true),
        _ => return Err("usage: load ADDRESS N K [echo] (N requests, K in flight)".into()),
    };
    let n: u64 = n.parse().map_err(|_| "N: not a number")?;
    let k: u64 = k.parse().map_err(|_| "K: not a number")?;
    if echo {
        return echo_load(address, n, k);
    }
    let client = Client::new(address).map_err(|e| e.to_string())?.with_timeout(Duration::from_secs(60));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let callers: Vec<_> = (0..k)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let mut wrong = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return wrong;
                    }
                    let (a, b) = (i as i64, 7 - i as i64 * 3);
                    if client.call::<i64>("add", (a, b)).await.ok() != Some(a + b) {
                        wrong += 1;
                    }
                }
            })
        })
        .collect();
    let mut wrong = 0;
    for caller in callers {
        wrong += caller.await.map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("{n} calls, {k} in flight: {:.0} calls/s, {wrong} wrong or missing", n as f64 / elapsed);
    if wrong > 0 {
        return Err(format!("{wrong} wrong or missing"));
    }
    Ok(())
}

/// `n` echo requests from `k` threads, each with a Req0 socket of its own.
fn echo_load(address: &str, n: u64, k: u64) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let callers: Vec<_> = (0..k)
        .map(|_| {
            let (address, next) = (address.to_string(), next.clone());
            std::thread::spawn(move || -> Result<u64, nng::Error> {
                let socket = Socket::new(Protocol::Req0)?;
                socket.dial(&address)?;
                let mut wrong = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(wrong);
                    }
                    let payload = [i.to_le_bytes(), (!i).to_le_bytes()].concat();
                    let echoed = socket.send(&payload[..]).map_err(|(_, e)| e).and_then(|()| socket.recv());
                    wrong += u64::from(!matches!(echoed, Ok(m) if m.as_slice() == payload));
                }
            })
        })
        .collect();
    let mut wrong = 0;
    for caller in callers {
        wrong += caller.join().map_err(|_| "a caller thread panicked")?.map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("{n} echoes, {k} in flight: {:.0} requests/s, {wrong} wrong or missing", n as f64 / elapsed);
    if wrong > 0 {
        return Err(format!("{wrong} wrong or missing"));
    }
    Ok(())
}
