//! The periodic tasks subworkers' plugins declare: scheduled when a
//! worker providing one becomes active, unscheduled when the last
//! provider of one leaves (unless a plugin of this process declares it).

use tracing::warn;

use crate::cluster::routing::{Cluster, Worker};
use crate::plugins::schedule::Schedule;
use crate::server::state::State;
use crate::wire::protocol::OfferedTask;

/// Schedules the periodic tasks a subworker's plugins declare (checked
/// by the subworker when it loaded them).
pub(crate) fn offered(state: &State, offered: &[OfferedTask]) {
    let Some(scheduler) = &state.scheduler else { return };
    for task in offered {
        let added = Schedule::parse(&task.name, &task.schedule)
            .map_err(|e| e.to_string())
            .and_then(|schedule| scheduler.add(schedule).map_err(|e| e.to_string()));
        if let Err(error) = added {
            warn!("a subworker offers a periodic task that is not scheduled: {error}");
        }
    }
}

/// The periodic tasks of `departed` (no longer in `cluster`) that no worker
/// still registered declares and no schedule of this process (`local`) runs.
pub(crate) fn orphaned<L>(departed: &Worker<L>, cluster: &Cluster<L>, local: &[Schedule]) -> Vec<String> {
    departed
        .tasks
        .values()
        .filter(|t| !t.schedule.is_empty() && !cluster.schedules(&t.name))
        .filter(|t| !local.iter().any(|schedule| schedule.task_name == t.name))
        .map(|t| t.name.clone())
        .collect()
}

/// Unschedules `task_names`.
pub(crate) fn unschedule(state: &State, task_names: &[String]) {
    if let Some(scheduler) = &state.scheduler {
        for task_name in task_names {
            scheduler.remove(task_name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::routing::{Joining, WorkerKey};
    use crate::wire::protocol::{TaskId, WorkerName};

    const EVERY_MINUTE: &str = r#"{"every_ms":60000}"#;

    fn add(cluster: &mut Cluster<()>, id: &str, tasks: &[(&str, &str)]) -> WorkerKey {
        let tasks = tasks
            .iter()
            .map(|(name, schedule)| {
                (name.to_string(), OfferedTask { schedule: schedule.to_string(), ..OfferedTask::new(name) })
            })
            .collect();
        let key = cluster.new_key();
        let name = WorkerName { worker_id: id.into(), instance: TaskId::new_v4() };
        cluster.add(
            Joining { key, name, address: "tcp://a:1".into(), concurrency: 1, prefetch: 0, tasks, link: () },
            1_000,
        );
        key
    }

    #[test]
    fn a_schedule_leaves_with_its_last_provider_unless_declared_here() {
        let mut cluster = Cluster::default();
        let a = add(
            &mut cluster,
            "a",
            &[("tick", EVERY_MINUTE), ("tock", EVERY_MINUTE), ("add", ""), ("here", EVERY_MINUTE)],
        );
        add(&mut cluster, "b", &[("tock", EVERY_MINUTE)]);
        let local = [Schedule::parse("here", EVERY_MINUTE).expect("a schedule")];
        let (departed, _) = cluster.remove(a).expect("registered");
        assert_eq!(orphaned(&departed, &cluster, &local), vec!["tick".to_string()]);
        assert_eq!(orphaned(&departed, &cluster, &[]).len(), 2, "'here' too without the local schedule");
    }
}
