//! Headless Chromium driven over the DevTools protocol (a websocket), for
//! tests that look at the dashboard as a person would: navigate, evaluate
//! JavaScript in the page, emulate a width or a colour scheme, take a
//! screenshot.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// The Chromium binary, if one is installed (`chromium` on Debian).
pub fn chromium() -> Option<PathBuf> {
    let candidates = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| candidates.iter().map(move |c| dir.join(c))).find(|p| p.is_file())
}

/// The variable that skips the browser tests, said out loud: `scripts/test`
/// sets it when Chromium is missing outside CI and names the skipped tests
/// in its summary.
pub const SKIP_BROWSER: &str = "FASTWORKER_SKIP_BROWSER_TESTS";

/// Chromium for a browser test, or `None` when the run opted out with
/// [`SKIP_BROWSER`]. A missing Chromium without that opt-out fails the test
/// (never a silent pass), and in CI nothing skips it.
pub fn chromium_or_opted_out(test: &str) -> Option<PathBuf> {
    if let Some(found) = chromium() {
        return Some(found);
    }
    let opted_out = std::env::var_os(SKIP_BROWSER).is_some_and(|value| value == "1");
    assert!(
        opted_out && std::env::var_os("CI").is_none(),
        "{test}: chromium is not installed: apt-get install chromium (or set {SKIP_BROWSER}=1 outside CI to skip it)"
    );
    eprintln!("SKIPPED {test}: chromium is not installed and {SKIP_BROWSER}=1");
    None
}

/// A headless Chromium with one page, killed when dropped.
pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium (`binary`) and connects to its page.
    pub fn start(binary: &Path) -> Browser {
        let profile = std::env::temp_dir().join(format!("fastworker-chromium-{}", uuid::Uuid::new_v4()));
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        // Chromium prints its DevTools address on stderr; keep draining it.
        let (found, address) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.trim().to_string());
                }
            }
        });
        let browser_url = address.recv_timeout(Duration::from_secs(30)).expect("chromium printed no DevTools address");
        // ws://127.0.0.1:PORT/devtools/browser/ID → the page's own websocket.
        let host = browser_url.trim_start_matches("ws://").split('/').next().unwrap().to_string();
        let page_url = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let targets = crate::http::get(&format!("http://{host}/json/list")).json();
                let page = targets.as_array().and_then(|t| t.iter().find(|t| t["type"] == "page").cloned());
                if let Some(page) = page {
                    break page["webSocketDebuggerUrl"].as_str().unwrap().to_string();
                }
                assert!(Instant::now() < deadline, "chromium opened no page");
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let (socket, _) = tungstenite::connect(page_url.as_str()).expect("connecting to the page's DevTools socket");
        let mut browser = Browser { child, socket, next_id: 1, profile };
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser
    }

    /// Sends a DevTools command and waits for its result (events are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.socket.send(Message::text(request)).expect("sending to chromium");
        loop {
            let message = self.socket.read().expect("reading from chromium");
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if value["id"] == id {
                if let Some(error) = value.get("error") {
                    panic!("{method} failed: {error}");
                }
                return value["result"].clone();
            }
        }
    }

    /// Opens `url` and waits for its load event.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        let loaded = self.wait_for("document.readyState === 'complete'", Duration::from_secs(20));
        assert!(loaded, "{url} did not load");
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise);
    /// its value as JSON.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` every 100 ms until it is `true`, up to `limit`.
    pub fn wait_for(&mut self, expression: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval(expression) == Value::Bool(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes the page `width` × `height` CSS pixels.
    pub fn set_viewport(&mut self, width: u32, height: u32) {
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700 });
        self.call("Emulation.setDeviceMetricsOverride", params);
    }

    /// Emulates `prefers-color-scheme: dark` (or light).
    pub fn prefer_dark(&mut self, dark: bool) {
        let value = if dark { "dark" } else { "light" };
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": value }] }),
        );
    }

    /// Saves a PNG screenshot of what the viewport shows to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let result = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(result["data"].as_str().expect("screenshot data"));
        std::fs::write(path, png).expect("writing the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Decodes standard base64 (padding optional).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &v)| n | (v as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGk="), b"hi");
        assert_eq!(super::base64_decode("YWJj"), b"abc");
    }
}
