//! The notes a link sends a subworker over NNG (cancellations and
//! revocations, whose answers nobody reads), in order and none dropped
//! while there is room: one leaves at a time on the link's notes exchange,
//! and those given meanwhile wait here until it has left (no I/O: the link
//! does the sending).
//!
//! The line is bounded: a subworker that reads nothing (or a connection
//! down for long) cannot make it grow without end. At
//! [`MAX_WAITING_NOTES`] the oldest waiting note is dropped for the new
//! one: the newest notes concern the runs most likely still there, and a
//! note dropped only delays what the control plane decides anyway (a
//! revoked run's reports are discarded; a canceller of a run sent ahead is
//! answered when that run starts or ends, and a run a worker does not
//! report in time is taken back under its lease).

use std::collections::VecDeque;

/// The most notes that wait while one leaves. A note is a few dozen bytes
/// (a revocation a few more per run), so the line holds well under a
/// megabyte; a worker holds at most its slots and its prefetch, so more
/// notes than this waiting means it is not reading.
pub(crate) const MAX_WAITING_NOTES: usize = 1024;

/// Notes waiting for the exchange, and whether one is leaving.
#[derive(Debug)]
pub(crate) struct NoteQueue<T> {
    waiting: VecDeque<T>,
    /// A note is leaving: the exchange is busy until [`NoteQueue::left`].
    leaving: bool,
    /// The exchange is closed for good: notes are dropped.
    closed: bool,
    /// Notes dropped at the bound since the line was last empty.
    dropped: u64,
}

/// What becomes of a note given to [`NoteQueue::push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push<T> {
    /// The exchange is free: send it now (and call [`NoteQueue::left`]
    /// when it has left).
    Send(T),
    /// It waits behind the note leaving.
    Waits,
    /// It waits, and the oldest waiting note was dropped to make room:
    /// `dropped` so far since the line was last empty.
    Dropped { dropped: u64 },
    /// The exchange is closed: it is dropped.
    Closed,
}

impl<T> Default for NoteQueue<T> {
    fn default() -> Self {
        NoteQueue { waiting: VecDeque::new(), leaving: false, closed: false, dropped: 0 }
    }
}

impl<T> NoteQueue<T> {
    /// A note to send.
    pub(crate) fn push(&mut self, note: T) -> Push<T> {
        if self.closed {
            return Push::Closed;
        }
        if !self.leaving {
            self.leaving = true;
            return Push::Send(note);
        }
        let full = self.waiting.len() >= MAX_WAITING_NOTES;
        if full {
            self.waiting.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        self.waiting.push_back(note);
        if full {
            Push::Dropped { dropped: self.dropped }
        } else {
            Push::Waits
        }
    }

    /// The note leaving has left (or failed to): the next one to send, if
    /// any (the exchange stays busy with it).
    pub(crate) fn left(&mut self) -> Option<T> {
        let next = if self.closed { None } else { self.waiting.pop_front() };
        if next.is_none() {
            self.leaving = false;
            self.dropped = 0;
        }
        next
    }

    /// The exchange closed: the waiting notes are dropped, and any given later.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.leaving = false;
        self.waiting = VecDeque::new();
    }

    /// How many notes wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_given_while_one_leaves_leave_after_it_in_order() {
        let mut queue = NoteQueue::default();
        assert_eq!(queue.push(1), Push::Send(1));
        assert_eq!(queue.push(2), Push::Waits);
        assert_eq!(queue.push(3), Push::Waits);
        assert_eq!(queue.left(), Some(2));
        // Still busy with 2: a new note waits behind 3.
        assert_eq!(queue.push(4), Push::Waits);
        assert_eq!(queue.left(), Some(3));
        assert_eq!(queue.left(), Some(4));
        assert_eq!(queue.left(), None);
        // Free again: the next note leaves at once.
        assert_eq!(queue.push(5), Push::Send(5));
    }

    #[test]
    fn at_the_bound_the_oldest_waiting_note_is_dropped_and_the_count_restarts_once_empty() {
        let mut queue = NoteQueue::default();
        assert_eq!(queue.push(0), Push::Send(0));
        for n in 1..=MAX_WAITING_NOTES {
            assert_eq!(queue.push(n), Push::Waits);
        }
        let over = MAX_WAITING_NOTES + 1;
        assert_eq!(queue.push(over), Push::Dropped { dropped: 1 });
        assert_eq!(queue.push(over + 1), Push::Dropped { dropped: 2 });
        assert_eq!(queue.len(), MAX_WAITING_NOTES);
        // The two oldest waiting (1 and 2) went; the rest leave in order.
        let left: Vec<usize> = std::iter::from_fn(|| queue.left()).collect();
        assert_eq!(left, (3..=over + 1).collect::<Vec<_>>());
        assert_eq!(queue.push(7), Push::Send(7));
        for n in 0..MAX_WAITING_NOTES {
            queue.push(n);
        }
        assert_eq!(queue.push(9), Push::Dropped { dropped: 1 }, "counted again from an empty line");
    }

    #[test]
    fn a_closed_exchange_drops_what_waits_and_what_comes() {
        let mut queue = NoteQueue::default();
        assert_eq!(queue.push(1), Push::Send(1));
        assert_eq!(queue.push(2), Push::Waits);
        queue.close();
        assert_eq!(queue.left(), None);
        assert_eq!(queue.push(3), Push::Closed);
    }
}
