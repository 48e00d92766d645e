//! With every worker thread busy, waiting tasks start CRITICAL first, LOW last.

use std::time::{Duration, Instant};

use fastworker::{Priority, SubmitOptions, TaskState};
use fastworker_tests::{runtime, Process};

#[test]
fn a_saturated_pool_starts_waiting_tasks_by_priority() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "1"]);
    let client = cp.client();
    runtime().block_on(async {
        // Long enough that the submissions below all wait behind it on a loaded machine.
        let blocker = client.delay("sleep_ms", (1500,), SubmitOptions::default()).await.unwrap();
        // Wait until it occupies the only thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.status(blocker).await.unwrap().state != TaskState::Running {
            assert!(Instant::now() < deadline, "the blocker never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Submitted least urgent first, so arrival order is the reverse of priority order.
        let mut waiting = Vec::new();
        for priority in [Priority::Low, Priority::Normal, Priority::High, Priority::Critical] {
            for _ in 0..2 {
                let options = SubmitOptions { priority: Some(priority), ..Default::default() };
                let id = client.delay("sleep_ms", (20,), options).await.unwrap();
                waiting.push((priority, id));
            }
        }
        for (_, id) in &waiting {
            assert_eq!(client.status(*id).await.unwrap().state, TaskState::Queued);
        }
        let mut started = Vec::new();
        for (priority, id) in &waiting {
            let mut report = client.status(*id).await.unwrap();
            for _ in 0..500 {
                if report.state.is_final() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                report = client.status(*id).await.unwrap();
            }
            assert_eq!(report.state, TaskState::Succeeded);
            started.push((report.started_ms.unwrap(), *priority, *id));
        }
        started.sort();
        let order: Vec<Priority> = started.iter().map(|(_, p, _)| *p).collect();
        assert_eq!(
            order,
            [
                Priority::Critical,
                Priority::Critical,
                Priority::High,
                Priority::High,
                Priority::Normal,
                Priority::Normal,
                Priority::Low,
                Priority::Low
            ],
            "start order by priority"
        );
        // First come, first served within a priority.
        for pair in waiting.chunks(2) {
            let first = started.iter().position(|s| s.2 == pair[0].1).unwrap();
            let second = started.iter().position(|s| s.2 == pair[1].1).unwrap();
            assert!(first < second);
        }
    });
}
