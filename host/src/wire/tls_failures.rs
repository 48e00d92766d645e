//! TLS handshakes that failed, reported in the log. NNG keeps no log
//! and gives no event for a handshake that fails (a pipe exists only
//! after it), but each listener and dialer counts the connections it lost
//! to authentication (`auth` in NNG's statistics: mbedTLS refused the
//! peer's certificate, found none, or the peer refused ours). A thread
//! started with the process's TLS identity looks at those counts every
//! second and logs, per address, how many handshakes failed and why that
//! is likely. Finer reasons (unknown CA, expired, no client certificate)
//! stay inside NNG's TLS layer, which maps them all to one error.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::time::Duration;

use nng_sys::{nng_stat, nng_stat_child, nng_stat_find, nng_stat_name, nng_stat_next, nng_stat_string};
use nng_sys::{nng_stat_value, nng_stats_free, nng_stats_get};
use tracing::warn;

/// How often the counts are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Starts the watcher (once per process, with the TLS identity).
pub(crate) fn watch() {
    let spawned = std::thread::Builder::new().name("tls-failures".into()).spawn(|| {
        let mut seen: HashMap<(bool, String), u64> = HashMap::new();
        loop {
            std::thread::sleep(EVERY);
            for ((listening, url), count) in counts() {
                let before = seen.insert((listening, url.clone()), count).unwrap_or(0);
                if count > before {
                    let failed = count - before;
                    if listening {
                        warn!(address = %url, failed, "TLS handshakes of peers connecting here failed: the peer's certificate is not signed by this process's --tls-ca, has expired, or is missing (a plain tcp:// peer, or one without --tls-cert); NNG gives no finer reason");
                    } else {
                        warn!(address = %url, failed, "TLS handshakes with the peer dialed failed: its certificate is not signed by this process's --tls-ca or has expired, or it refused this process's certificate (another CA); NNG gives no finer reason");
                    }
                }
            }
        }
    });
    if let Err(error) = spawned {
        warn!(%error, "TLS handshake failures will not be logged");
    }
}

/// The authentication failures of every `tls+tcp://` listener (`true`)
/// and dialer (`false`) of this process, by address, since each started.
fn counts() -> Vec<((bool, String), u64)> {
    let mut found = Vec::new();
    let mut root: *mut nng_stat = std::ptr::null_mut();
    // SAFETY: `root` is an out-pointer; on success NNG hands over a snapshot
    // we own, walked read-only below and freed once at the end. Every
    // pointer read is a node of that snapshot or a string it owns.
    unsafe {
        if nng_stats_get(&mut root) != 0 || root.is_null() {
            return found;
        }
        let (url_name, auth_name) = (CString::new("url").unwrap(), CString::new("auth").unwrap());
        let mut node = nng_stat_child(root);
        while !node.is_null() {
            let kind = CStr::from_ptr(nng_stat_name(node)).to_bytes();
            if kind == b"listener" || kind == b"dialer" {
                let (url, auth) = (nng_stat_find(node, url_name.as_ptr()), nng_stat_find(node, auth_name.as_ptr()));
                if !url.is_null() && !auth.is_null() && !nng_stat_string(url).is_null() {
                    let url = CStr::from_ptr(nng_stat_string(url)).to_string_lossy().into_owned();
                    if url.starts_with("tls+tcp://") {
                        found.push(((kind == b"listener", url), nng_stat_value(auth)));
                    }
                }
            }
            node = nng_stat_next(node);
        }
        nng_stats_free(root);
    }
    found
}
