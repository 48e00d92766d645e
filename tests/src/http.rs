//! A minimal blocking HTTP/1.1 client over `TcpStream` for the dashboard
//! tests: one request per connection, plus reading server-sent events.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// `host:port` and the path of an `http://` URL.
fn split(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    }
}

fn connect(url: &str, method: &str, headers: &[(&str, &str)], body: &[u8]) -> (TcpStream, BufReader<TcpStream>) {
    let (host, path) = split(url);
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connecting to {host}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // A `Host` among `headers` replaces the URL's.
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" || !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) and stop reading before the body's end.
    let _ = stream.write_all(body);
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    (status, headers)
}

/// Sends a request and reads the whole response.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Response {
    request_with_body(method, url, headers, &[])
}

/// Sends a request with a body (its `Content-Length` added) and reads the whole response.
pub fn request_with_body(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let (_stream, mut reader) = connect(url, method, headers, body);
    let (status, headers) = read_head(&mut reader);
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = headers.iter().find(|(n, _)| n == "content-length") {
        body = vec![0; length.1.parse().expect("a Content-Length")];
        reader.read_exact(&mut body).unwrap();
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    Response { status, headers, body }
}

/// GET.
pub fn get(url: &str) -> Response {
    request("GET", url, &[])
}

/// POST of a JSON body, with `headers` besides its content type.
pub fn post_json(url: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Response {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request_with_body("POST", url, &all, body.to_string().as_bytes())
}

/// A control plane with the example plugin and its dashboard (restart
/// window off, plus `extra` flags), and the dashboard's base URL.
pub fn control_plane_with_api(extra: &[&str]) -> (crate::Process, String) {
    let mut flags = vec!["--restart-window", "0"];
    flags.extend_from_slice(extra);
    let process = crate::Process::control_plane_with_gui(&["example-tasks"], &flags, &[]);
    let gui = process.gui.clone().expect("a dashboard");
    (process, gui)
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `event:` name.
    pub event: String,
    /// Its `data:`.
    pub data: String,
}

/// An open event stream.
pub struct EventStream {
    _stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The response status and headers.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
}

impl EventStream {
    /// Opens `url` as an event stream.
    pub fn open(url: &str) -> EventStream {
        let (stream, mut reader) = connect(url, "GET", &[("Accept", "text/event-stream")], &[]);
        let (status, headers) = read_head(&mut reader);
        EventStream { _stream: stream, reader, status, headers }
    }

    /// The next event whose name `wanted` accepts, within `limit`.
    pub fn next_matching(&mut self, limit: Duration, wanted: impl Fn(&SseEvent) -> bool) -> Option<SseEvent> {
        let deadline = Instant::now() + limit;
        let (mut event, mut data) = (String::new(), String::new());
        let mut line = String::new();
        while Instant::now() < deadline {
            line.clear();
            // The body is chunked: chunk sizes come as lines of their own
            // and are skipped below (they never start with a field name).
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(_) => continue,
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.trim_start());
            } else if line.is_empty() && !event.is_empty() {
                let found = SseEvent { event: std::mem::take(&mut event), data: std::mem::take(&mut data) };
                if wanted(&found) {
                    return Some(found);
                }
            }
        }
        None
    }
}
