//! Log lines about what peers did wrong (a refused frame, a reply they did
//! not read), rate-limited per peer address: a flood of bad frames costs one
//! line per peer every [`INTERVAL`], and the next line says how many were
//! left out. A global budget bounds the lines of many peers together.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::server::bounds::Refusals;

/// One line per peer at most this often.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// Peers remembered; beyond this the least recent is forgotten.
const PEERS: usize = 1024;

/// Lines all peers together may write per second.
const LINES_PER_SECOND: u32 = 20;

/// The rate limiter.
pub(crate) struct PeerLog {
    state: Mutex<Book>,
    refusals: Arc<Refusals>,
}

struct Book {
    peers: LruCache<String, Seen>,
    second: Instant,
    lines_this_second: u32,
}

struct Seen {
    last_line: Instant,
    suppressed: u64,
}

impl PeerLog {
    /// A limiter counting what it leaves out in `refusals`.
    pub(crate) fn new(refusals: Arc<Refusals>) -> PeerLog {
        let book = Book {
            peers: LruCache::new(NonZeroUsize::new(PEERS).expect("not zero")),
            second: Instant::now(),
            lines_this_second: 0,
        };
        PeerLog { state: Mutex::new(book), refusals }
    }

    /// Calls `write` with the number of lines of this `kind` left out for
    /// `peer` since its last one, unless `peer` had such a line less than
    /// [`INTERVAL`] ago or the global budget is spent (then the line is
    /// only counted).
    pub(crate) fn warn(&self, peer: &str, kind: &str, write: impl FnOnce(u64)) {
        let now = Instant::now();
        let suppressed = {
            let mut book = self.state.lock().expect("peer log lock");
            if now.duration_since(book.second) >= Duration::from_secs(1) {
                book.second = now;
                book.lines_this_second = 0;
            }
            let over_budget = book.lines_this_second >= LINES_PER_SECOND;
            let seen = book.peers.get_or_insert_mut(format!("{peer} {kind}"), || Seen {
                last_line: now.checked_sub(INTERVAL).unwrap_or(now),
                suppressed: 0,
            });
            let due = now.duration_since(seen.last_line) >= INTERVAL || seen.last_line == now;
            if !due || over_budget {
                seen.suppressed += 1;
                drop(book);
                self.refusals.log_lines_suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            seen.last_line = now;
            let suppressed = std::mem::take(&mut seen.suppressed);
            book.lines_this_second += 1;
            suppressed
        };
        write(suppressed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_per_interval_and_the_rest_counted() {
        let refusals = Arc::new(Refusals::default());
        let log = PeerLog::new(refusals.clone());
        let mut written = Vec::new();
        for _ in 0..1000 {
            log.warn("10.0.0.1", "bad frame", |suppressed| written.push(("10.0.0.1", suppressed)));
            log.warn("10.0.0.2", "bad frame", |suppressed| written.push(("10.0.0.2", suppressed)));
        }
        assert_eq!(written, vec![("10.0.0.1", 0), ("10.0.0.2", 0)]);
        assert_eq!(refusals.log_lines_suppressed.load(Ordering::Relaxed), 1998);
    }

    #[test]
    fn many_peers_share_a_budget() {
        let log = PeerLog::new(Arc::default());
        let mut lines = 0;
        for peer in 0..5000 {
            log.warn(&format!("peer-{peer}"), "bad frame", |_| lines += 1);
        }
        assert!(lines <= LINES_PER_SECOND * 2, "{lines} lines");
    }
}
