//! With every worker thread busy, waiting tasks start CRITICAL first, LOW last;
//! with runs sent ahead to the worker processes, each process starts those it
//! holds most urgent first.

use std::time::{Duration, Instant};

use fastworker::{Client, Priority, SubmitOptions, TaskId, TaskState};
use fastworker_tests::{runtime, Process};

/// Starts a 1.5 s blocker, long enough that what follows waits behind it on
/// a loaded machine, and once it runs submits two `sleep_ms(ms)` tasks of
/// each priority, least urgent first (arrival order is the reverse of
/// priority order).
async fn behind_a_blocker(client: &Client, ms: u64) -> Vec<(Priority, TaskId)> {
    let blocker = client.delay("sleep_ms", (1500,), SubmitOptions::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.status(blocker).await.unwrap().state != TaskState::Running {
        assert!(Instant::now() < deadline, "the blocker never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut waiting = Vec::new();
    for priority in [Priority::Low, Priority::Normal, Priority::High, Priority::Critical] {
        for _ in 0..2 {
            let options = SubmitOptions { priority: Some(priority), ..Default::default() };
            waiting.push((priority, client.delay("sleep_ms", (ms,), options).await.unwrap()));
        }
    }
    waiting
}

#[test]
fn a_saturated_pool_starts_waiting_tasks_by_priority() {
    // No run sent ahead: strict priority holds only for runs not yet sent
    // to a worker process (see docs/isolation.md, runs sent ahead).
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "1", "--prefetch-per-process", "0"]);
    let client = cp.client();
    runtime().block_on(async {
        let waiting = behind_a_blocker(&client, 20).await;
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

/// With runs sent ahead (`--prefetch-per-process 4`), two LOW and two
/// NORMAL runs are sent to the only worker process while a blocker runs
/// there; the HIGH and CRITICAL runs submitted after them wait in the
/// control plane. Each time a run ends, the process starts the most urgent
/// run it holds, and the control plane sends the most urgent waiting run
/// into the place that freed, which starts at the next end. So at most one
/// less urgent run starts ahead of each CRITICAL and HIGH run (a NORMAL
/// one), and both LOW runs start last.
#[test]
fn a_worker_process_starts_the_runs_sent_ahead_most_urgent_first() {
    let flags = ["--concurrency", "1", "--prefetch-per-process", "4"];
    let cp = Process::control_plane(&["example-tasks"], &flags);
    let client = cp.client();
    runtime().block_on(async {
        // Each long enough that the next run sent reaches the process
        // before the one it runs ends, on a loaded machine too.
        let waiting = behind_a_blocker(&client, 300).await;
        // The four sent ahead read waiting, like the four still here.
        for (_, id) in &waiting {
            let report = client.status(*id).await.unwrap();
            assert_eq!((report.state, report.started_ms, report.attempts), (TaskState::Queued, None, 0), "{report:?}");
        }
        let mut started = Vec::new();
        for (priority, id) in &waiting {
            let report = client.wait(*id, Duration::from_secs(20)).await.unwrap();
            assert_eq!((report.state, report.attempts), (TaskState::Succeeded, 1), "{report:?}");
            started.push((report.started_ms.unwrap(), *priority));
        }
        started.sort();
        let order: Vec<Priority> = started.iter().map(|(_, p)| *p).collect();
        assert_eq!(order[5..], [Priority::Normal, Priority::Low, Priority::Low], "{order:?}");
        for urgent in [Priority::Critical, Priority::High] {
            assert_eq!(order[..5].iter().filter(|p| **p == urgent).count(), 2, "{order:?}");
        }
    });
}
