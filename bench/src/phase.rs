//! Measurement bookkeeping: budgets of requests or time, and what a phase measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::WARMUP;

/// How much of a phase is left: a deadline or a number of requests.
pub(crate) struct Budget {
    /// Requests handed out so far (also the sequence number of the next one).
    pub(crate) claimed: AtomicU64,
    /// Number of requests, if the budget is a count.
    pub(crate) limit: Option<u64>,
    /// How long the phase runs, if the budget is a duration.
    pub(crate) length: Option<Duration>,
    /// The deadline, fixed by [`Budget::start`].
    pub(crate) deadline: OnceLock<Instant>,
}

impl Budget {
    pub(crate) fn time(length: Duration) -> Budget {
        Budget { claimed: AtomicU64::new(0), limit: None, length: Some(length), deadline: OnceLock::new() }
    }

    pub(crate) fn requests(n: u64) -> Budget {
        Budget { claimed: AtomicU64::new(0), limit: Some(n), length: None, deadline: OnceLock::new() }
    }

    /// Starts the clock; returns the start instant.
    pub(crate) fn start(&self) -> Instant {
        let now = Instant::now();
        if let Some(length) = self.length {
            let _ = self.deadline.set(now + length);
        }
        now
    }

    /// The sequence number of one more request, or `None` if the budget is spent.
    pub(crate) fn claim(&self) -> Option<u64> {
        if self.deadline.get().is_some_and(|&d| Instant::now() >= d) {
            return None;
        }
        let n = self.claimed.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(limit) if n >= limit => None,
            _ => Some(n),
        }
    }
}

/// What one phase measured.
#[derive(Default)]
pub(crate) struct Phase {
    /// Round-trip time of every correctly answered request, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Wall time from the first send to the last reply.
    pub(crate) elapsed: Duration,
    /// Replies with the wrong content.
    pub(crate) wrong: u64,
    /// Requests with no reply (error or timeout).
    pub(crate) missing: u64,
    /// A description of the first wrong or missing reply.
    pub(crate) first_problem: Option<String>,
    /// Correct replies during the warm-up (checked, not timed).
    pub(crate) warmup_replies: u64,
}

impl Phase {
    pub(crate) fn finish(mut self, elapsed: Duration) -> Phase {
        self.elapsed = elapsed;
        self.latencies.sort_unstable();
        self
    }

    /// This measured phase, with the wrong and missing replies of its warm-up added.
    pub(crate) fn after_warmup(mut self, warmup: Phase) -> Phase {
        self.warmup_replies = warmup.latencies.len() as u64;
        self.wrong += warmup.wrong;
        self.missing += warmup.missing;
        if let Some(problem) = warmup.first_problem {
            self.first_problem = Some(format!("{problem} (in the warm-up)"));
        }
        self
    }

    /// Two measurements of the same thing, taken at different times, as one.
    pub(crate) fn merge(mut self, other: Phase) -> Phase {
        self.elapsed += other.elapsed;
        self.warmup_replies += other.warmup_replies;
        self.absorb(other);
        self.latencies.sort_unstable();
        self
    }

    /// Adds what another part of the same phase measured (a pipelined slot).
    pub(crate) fn absorb(&mut self, part: Phase) {
        self.latencies.extend(part.latencies);
        self.wrong += part.wrong;
        self.missing += part.missing;
        if self.first_problem.is_none() {
            self.first_problem = part.first_problem;
        }
    }

    /// Counts a wrong (`wrong`) or missing reply.
    pub(crate) fn problem(&mut self, wrong: bool, what: impl FnOnce() -> String) {
        if wrong {
            self.wrong += 1;
        } else {
            self.missing += 1;
        }
        self.first_problem.get_or_insert_with(what);
    }

    /// Correct replies per second of wall time.
    pub(crate) fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The nearest-rank percentile of the latencies.
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs `phase` once unmeasured with a [`WARMUP`] budget, then with `budget`.
pub(crate) fn warmed(budget: Budget, phase: impl Fn(Budget) -> Result<Phase, String>) -> Result<Phase, String> {
    let warm = phase(Budget::time(WARMUP))?;
    Ok(phase(budget)?.after_warmup(warm))
}
