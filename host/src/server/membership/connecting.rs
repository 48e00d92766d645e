//! The registrations waiting for the control plane's link to the
//! registering subworker to connect, each with the request to answer (`R`)
//! and a deadline. No I/O: the time is passed in, and the membership
//! thread answers what comes out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cluster::routing::WorkerKey;
use crate::wire::protocol::{ErrorKind, ErrorReply};

/// How long a registering subworker has to accept the control plane's connection.
pub(crate) const CONNECT_LIMIT: Duration = Duration::from_secs(3);

/// Registrations whose link is being connected, by worker.
pub(crate) struct Connecting<R> {
    waiting: HashMap<WorkerKey, (R, Instant)>,
}

impl<R> Default for Connecting<R> {
    fn default() -> Self {
        Connecting { waiting: HashMap::new() }
    }
}

impl<R> Connecting<R> {
    /// Registrations waiting now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Waits for `key`'s link from `now`, answering `request` when it
    /// connects or when [`CONNECT_LIMIT`] has passed.
    pub(crate) fn wait(&mut self, key: WorkerKey, request: R, now: Instant) {
        self.waiting.insert(key, (request, now + CONNECT_LIMIT));
    }

    /// Puts `request` (the same registration sent again) in the place of
    /// the one waiting for `key`, keeping its deadline, and gives back the
    /// earlier one to answer; gives back `request` itself if none waits.
    pub(crate) fn supersede(&mut self, key: WorkerKey, request: R) -> Result<R, R> {
        match self.waiting.get_mut(&key) {
            Some((earlier, _)) => Ok(std::mem::replace(earlier, request)),
            None => Err(request),
        }
    }

    /// Stops waiting for `key`'s link: the request to answer, if one waited.
    pub(crate) fn take(&mut self, key: WorkerKey) -> Option<R> {
        self.waiting.remove(&key).map(|(request, _)| request)
    }

    /// The workers whose deadline has passed at `now`.
    pub(crate) fn expired(&self, now: Instant) -> Vec<WorkerKey> {
        self.waiting.iter().filter(|(_, (_, deadline))| now >= *deadline).map(|(key, _)| *key).collect()
    }
}

/// The answer to an earlier request of a registration sent again.
pub(crate) fn superseded() -> ErrorReply {
    ErrorReply::new(ErrorKind::WorkerUnreachable, "superseded by a newer request")
}

/// The answer to a registration whose link did not connect in time.
pub(crate) fn timed_out(address: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::WorkerUnreachable,
        format!(
            "the control plane could not connect to {address} within {} s: make sure the subworker's --base-address (or --advertise-address) is reachable from the control plane's host",
            CONNECT_LIMIT.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_waits_until_taken_or_its_deadline() {
        let start = Instant::now();
        let mut connecting = Connecting::default();
        connecting.wait(1, "first", start);
        connecting.wait(2, "second", start + Duration::from_secs(1));
        assert_eq!(connecting.len(), 2);
        assert!(connecting.expired(start + CONNECT_LIMIT - Duration::from_millis(1)).is_empty());
        assert_eq!(connecting.expired(start + CONNECT_LIMIT), vec![1]);
        assert_eq!(connecting.take(1), Some("first"));
        assert_eq!(connecting.take(1), None, "answered once");
        assert_eq!(connecting.len(), 1);
        assert_eq!(connecting.expired(start + CONNECT_LIMIT * 2), vec![2]);
    }

    #[test]
    fn a_registration_sent_again_keeps_the_first_deadline() {
        let start = Instant::now();
        let mut connecting = Connecting::default();
        connecting.wait(7, "first", start);
        assert_eq!(connecting.supersede(7, "again"), Ok("first"));
        assert_eq!(connecting.supersede(8, "stray"), Err("stray"), "nothing waits for 8");
        assert_eq!(connecting.len(), 1);
        assert_eq!(connecting.expired(start + CONNECT_LIMIT), vec![7]);
        assert_eq!(connecting.take(7), Some("again"));
    }

    #[test]
    fn a_timed_out_registration_says_where_it_could_not_connect() {
        let reply = timed_out("tcp://10.1.2.3:9000");
        assert_eq!(reply.kind, ErrorKind::WorkerUnreachable);
        assert!(reply.message.contains("tcp://10.1.2.3:9000 within 3 s"), "{}", reply.message);
        assert_eq!(superseded().kind, ErrorKind::WorkerUnreachable);
    }
}
