//! The membership thread's periodic sweep: workers silent for over
//! `--inactive-after` are excluded (their tasks go elsewhere), workers
//! gone that long are to be forgotten, and registrations whose link did
//! not connect in time are to be refused.

use std::time::Duration;

use crate::cluster::routing::{Cluster, Phase, WorkerKey};
use crate::server::state::{Outbox, State};

/// What a sweep found that is acted on once the task lock is released.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Workers gone for over `--inactive-after`, with their ids: removed.
    pub(crate) forget: Vec<(WorkerKey, String)>,
    /// Registrations whose link did not connect in time, with the
    /// address dialed: removed and refused.
    pub(crate) unreachable: Vec<(WorkerKey, String)>,
}

/// Excludes the workers silent for over `after` at `now`, taking back
/// their tasks, gives tasks to free slots, and lists the workers to
/// forget and the registrations (`expired`) to refuse.
pub(crate) fn sweep(state: &State, after: Duration, now: u64, expired: &[WorkerKey]) -> Swept {
    let mut outbox = Outbox::default();
    let mut tasks = state.lock();
    state.drive(&mut tasks, &mut outbox, |ledger, io| ledger.sweep(after, now, io));
    let forget = gone(tasks.ledger.cluster(), now, after);
    let address = |key: &WorkerKey| tasks.ledger.cluster().get(*key).map(|w| w.address.clone()).unwrap_or_default();
    let unreachable = expired.iter().map(|key| (*key, address(key))).collect();
    drop(tasks);
    outbox.deliver();
    Swept { forget, unreachable }
}

/// The workers whose link is down (after it had connected) and that have
/// been silent for over `after` at `now`, with their ids.
fn gone<L>(cluster: &Cluster<L>, now: u64, after: Duration) -> Vec<(WorkerKey, String)> {
    cluster
        .workers()
        .filter(|w| !w.connected && w.phase != Phase::Connecting)
        .filter(|w| u128::from(now.saturating_sub(w.last_seen_ms)) > after.as_millis())
        .map(|w| (w.key, w.name.worker_id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::routing::Joining;
    use crate::wire::protocol::{TaskId, WorkerName};

    /// The time of these tests (ms since the Unix epoch): no clock is read.
    const NOW: u64 = 1_700_000_000_000;

    fn add(cluster: &mut Cluster<()>, id: &str, phase: Phase, connected: bool) -> WorkerKey {
        let key = cluster.new_key();
        let name = WorkerName { worker_id: id.into(), instance: TaskId::new_v4() };
        let tasks = Default::default();
        cluster
            .add(Joining { key, name, address: "tcp://a:1".into(), concurrency: 1, prefetch: 0, tasks, link: () }, NOW);
        let worker = cluster.get_mut(key).unwrap();
        worker.phase = phase;
        worker.connected = connected;
        key
    }

    #[test]
    fn only_workers_down_and_silent_too_long_are_forgotten() {
        let mut cluster = Cluster::default();
        let down = add(&mut cluster, "down", Phase::Inactive, false);
        add(&mut cluster, "up", Phase::Inactive, true);
        add(&mut cluster, "dialing", Phase::Connecting, false);
        let after = Duration::from_secs(5);
        assert!(gone(&cluster, NOW, after).is_empty(), "nobody has been silent that long");
        let later = NOW + 6_000;
        assert_eq!(gone(&cluster, later, after), vec![(down, "down".to_string())]);
        cluster.get_mut(down).unwrap().last_seen_ms = later;
        assert!(gone(&cluster, later, after).is_empty(), "heard from again");
    }
}
