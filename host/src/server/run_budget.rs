//! A worker process's run budget: `--max-tasks-per-child` kept by the
//! process itself (docs/isolation.md, *Recycling*). A supervisor that read
//! the count from the run log and then signalled would let a process that
//! holds runs sent ahead start several more before the signal lands; the
//! process counts its own starts instead, starts its last run, and then
//! starts no more: it stops as if asked (hands back what it has not
//! started, finishes what runs) and its supervisor replaces it.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The runs a worker process may still start, and the signal that the
/// last one started.
pub(crate) struct RunBudget {
    /// Runs it may still start. Read and spent under the task lock (in
    /// `State::run`), so two threads never both take the last one.
    left: AtomicU64,
    /// Told once, when the last run started.
    spent: Notify,
    /// The bound, for the log.
    max: u64,
}

impl RunBudget {
    /// A budget of `max` runs (at least 1).
    pub(crate) fn new(max: u64) -> RunBudget {
        let max = max.max(1);
        RunBudget { left: AtomicU64::new(max), spent: Notify::new(), max }
    }

    /// Whether a run may start now.
    pub(crate) fn allows(&self) -> bool {
        self.left.load(Ordering::Acquire) > 0
    }

    /// A run started: one fewer left; the last one tells [`RunBudget::spent`].
    pub(crate) fn spend(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.spent.notify_one();
        }
    }

    /// Resolves once the last run allowed has started.
    pub(crate) async fn spent(&self) {
        self.spent.notified().await;
    }

    /// The bound it was made with.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_run_tells_once_and_none_is_allowed_after_it() {
        let budget = RunBudget::new(2);
        assert!(budget.allows());
        budget.spend();
        assert!(budget.allows());
        budget.spend();
        assert!(!budget.allows());
        // notify_one stored a permit: the wait ends at once.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), budget.spent()).await.expect("told");
        });
    }

    #[test]
    fn a_budget_of_zero_allows_one_run() {
        let budget = RunBudget::new(0);
        assert_eq!(budget.max(), 1);
        assert!(budget.allows());
    }
}
