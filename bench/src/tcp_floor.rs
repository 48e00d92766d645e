//! The physical floor: a plain TCP echo in its own process, with no
//! framework: each frame is a 4-byte length prefix and a body (64 bytes, or
//! 1 MiB in the payload row), one thread per connection. What NNG (and so
//! fastworker) costs above this is the transport's and our own price; what
//! this costs is the kernel's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use crate::phase::{Budget, Phase};

/// Bytes of an echo body (a `Submit` of `add` is about this size).
const BODY: usize = 64;
/// Largest body the server echoes (the payload row sends 1 MiB).
const MAX_BODY: usize = 64 << 20;

/// The child-process mode (`--tcp-echo-server ADDRESS`): echoes every frame
/// on every connection until standard input closes.
pub(crate) fn serve(address: &str) -> ExitCode {
    let listener = match TcpListener::bind(address.trim_start_matches("tcp://")) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tcp echo server on {address}: {error}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || echo(stream));
        }
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    ExitCode::SUCCESS
}

/// Echoes frames on one connection until it closes, or a frame announces
/// a body above [`MAX_BODY`].
fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut frame = vec![0u8; 4 + BODY];
    loop {
        if stream.read_exact(&mut frame[..4]).is_err() {
            return;
        }
        let length = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        if length > MAX_BODY {
            return;
        }
        frame.resize(4 + length, 0);
        if stream.read_exact(&mut frame[4..]).is_err() || stream.write_all(&frame).is_err() {
            return;
        }
    }
}

/// A frame of a `body`-byte body made from `n`, so that each echo can be checked.
fn frame(n: u64, body: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 4 + body];
    frame[..4].copy_from_slice(&(body as u32).to_be_bytes());
    for (index, chunk) in frame[4..].chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(n ^ index as u64).to_le_bytes()[..chunk.len()]);
    }
    frame
}

/// Round trips of a `body`-byte body on one connection while `budget` lasts.
fn round_trips(address: &str, budget: &Budget, body: usize) -> Phase {
    let mut phase = Phase::default();
    let mut stream = match TcpStream::connect(address.trim_start_matches("tcp://")) {
        Ok(stream) => stream,
        Err(error) => {
            phase.problem(false, || format!("connecting to {address}: {error}"));
            return phase;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut reply = vec![0u8; 4 + body];
    while let Some(n) = budget.claim() {
        let request = frame(n, body);
        let sent = Instant::now();
        let echoed = stream.write_all(&request).and_then(|()| stream.read_exact(&mut reply));
        let latency = sent.elapsed();
        match echoed {
            Ok(()) if reply == request => phase.latencies.push(latency),
            Ok(()) => phase.problem(true, || format!("request {n}: the echo differs")),
            Err(error) => {
                phase.problem(false, || format!("request {n}: {error}"));
                return phase;
            }
        }
    }
    phase
}

/// Sequential round trips on one connection.
pub(crate) fn sequential(address: &str, budget: Budget) -> Result<Phase, String> {
    let start = budget.start();
    let phase = round_trips(address, &budget, BODY);
    Ok(phase.finish(start.elapsed()))
}

/// Sequential round trips of a `body`-byte body on one connection (the payload row's floor).
pub(crate) fn payload(address: &str, body: usize, budget: Budget) -> Result<Phase, String> {
    let start = budget.start();
    let phase = round_trips(address, &budget, body);
    Ok(phase.finish(start.elapsed()))
}

/// `connections` connections, each keeping one request outstanding.
pub(crate) fn pipelined(address: &str, connections: usize, budget: Budget) -> Result<Phase, String> {
    let budget = Arc::new(budget);
    let start = budget.start();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (address, budget) = (address.to_string(), budget.clone());
            std::thread::spawn(move || round_trips(&address, &budget, BODY))
        })
        .collect();
    let mut total = Phase::default();
    for thread in threads {
        match thread.join() {
            Ok(part) => total.absorb(part),
            Err(_) => total.problem(false, || "a connection's thread panicked".to_string()),
        }
    }
    Ok(total.finish(start.elapsed()))
}
