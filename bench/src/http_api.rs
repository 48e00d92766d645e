//! The `http-*` rows: `add` submitted and waited for through the HTTP API
//! (`POST /api/v1/tasks` with `wait_ms`) over keep-alive HTTP/1.1
//! connections to the control plane's dashboard port, one request at a time
//! per connection; compared with the Rust client's `cp` rows of the same run.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::phase::{Budget, Phase};
use crate::processes::{serving, FastworkerProcess};
use crate::setup::free_port;

/// A keep-alive connection to the dashboard.
struct Connection {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    host: String,
}

impl Connection {
    fn open(host: &str) -> Result<Connection, String> {
        let stream = TcpStream::connect(host).map_err(|e| format!("connecting to {host}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Connection { writer: stream, reader, host: host.to_string() })
    }

    /// Submits `add(a, b)`, waits for it, and returns the result.
    fn add(&mut self, a: u64, b: u64) -> Result<u64, String> {
        let body = format!("{{\"task\":\"add\",\"args\":[{a},{b}],\"wait_ms\":10000}}");
        let request = format!(
            "POST /api/v1/tasks HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.writer.write_all(request.as_bytes()).map_err(|e| format!("sending: {e}"))?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| format!("reading the status: {e}"))?;
        let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).map_err(|e| format!("reading a header: {e}"))?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| format!("bad Content-Length {value}"))?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).map_err(|e| format!("reading the body: {e}"))?;
        if status != "200" {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        // `"result":N,` in the task's JSON (its keys are sorted).
        let text = String::from_utf8_lossy(&body);
        let value = text.split("\"result\":").nth(1).and_then(|rest| rest.split([',', '}']).next());
        value.and_then(|v| v.parse().ok()).ok_or_else(|| format!("no result in {text}"))
    }
}

/// One connection calling `add` until the budget is spent.
fn calls(host: &str, budget: &Budget) -> Phase {
    let mut phase = Phase::default();
    let mut connection = match Connection::open(host) {
        Ok(connection) => connection,
        Err(error) => {
            phase.problem(false, || error);
            return phase;
        }
    };
    while let Some(n) = budget.claim() {
        let (a, b) = (n, n % 1000);
        let sent = Instant::now();
        match connection.add(a, b) {
            Ok(sum) if sum == a + b => phase.latencies.push(sent.elapsed()),
            Ok(sum) => phase.problem(true, || format!("add({a}, {b}) over HTTP answered {sum}")),
            Err(error) => {
                phase.problem(false, || format!("add({a}, {b}) over HTTP: {error}"));
                match Connection::open(host) {
                    Ok(fresh) => connection = fresh,
                    Err(_) => break,
                }
            }
        }
    }
    phase
}

/// `connections` keep-alive connections, one thread each, calling `add`.
pub(crate) fn add_over_http(host: &str, connections: usize, budget: Budget) -> Phase {
    let budget = Arc::new(budget);
    let start = budget.start();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (host, budget) = (host.to_string(), budget.clone());
            std::thread::spawn(move || calls(&host, &budget))
        })
        .collect();
    let mut total = Phase::default();
    for thread in threads {
        match thread.join() {
            Ok(part) => total.absorb(part),
            Err(_) => total.problem(false, || "an HTTP caller thread panicked".to_string()),
        }
    }
    total.finish(start.elapsed())
}

/// Starts a control plane as for the `cp` rows, serving its dashboard on a
/// free port with room for `waiting` requests that wait at once (its
/// `--gui-max-waits` share, a quarter of the connections by default);
/// returns it and the dashboard's `host:port`.
pub(crate) fn start(
    binary: &Path,
    plugin: &Path,
    concurrency: usize,
    waiting: usize,
) -> Result<(FastworkerProcess, String), String> {
    let port = free_port()?;
    let waits = waiting.max(64);
    let args: Vec<OsString> = vec![
        "control-plane".into(),
        "--concurrency".into(),
        concurrency.to_string().into(),
        "--task-modules".into(),
        plugin.into(),
        "--in-process".into(),
        "--gui-port".into(),
        port.to_string().into(),
        "--gui-max-waits".into(),
        waits.to_string().into(),
        "--gui-max-connections".into(),
        (waits * 4).to_string().into(),
    ];
    let process = FastworkerProcess::start(binary, "http control plane", &args, serving)?;
    let host = format!("127.0.0.1:{port}");
    // The dashboard binds after the task ports.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&host).is_err() {
        if Instant::now() > deadline {
            return Err(format!("the dashboard of the http control plane never listened on {host}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((process, host))
}
