//! The result cache: LRU by count, TTL by age, and clear answers for ids it
//! no longer has.

use std::time::Duration;

use fastworker::{ClientError, SubmitOptions, TaskId};
use fastworker_tests::{run_cli, runtime, stderr, Process};

async fn run_add(client: &fastworker::Client, x: i64) -> TaskId {
    client.submit("add", (x, 1), SubmitOptions::default()).await.unwrap().task_id
}

fn refusal(result: Result<fastworker::TaskReport, ClientError>) -> String {
    match result {
        Err(ClientError::Refused(refusal)) => refusal.message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_least_recently_used_result_is_evicted_and_a_read_refreshes() {
    let cp = Process::control_plane(&["example-tasks"], &["--result-cache-size", "2"]);
    let client = cp.client();
    runtime().block_on(async {
        let a = run_add(&client, 1).await;
        let b = run_add(&client, 2).await;
        assert_eq!(client.status(a).await.unwrap().result.unwrap(), b"2"); // refreshes a
        let c = run_add(&client, 3).await;
        assert!(client.status(a).await.is_ok());
        assert!(client.status(c).await.is_ok());
        let message = refusal(client.status(b).await);
        assert!(message.contains("evicted") && message.contains("--result-cache-size"), "{message}");
    });
}

#[test]
fn results_expire_after_the_ttl_and_the_cli_says_so() {
    let cp = Process::control_plane(&["example-tasks"], &["--result-cache-ttl", "1"]);
    let client = cp.client();
    let id = runtime().block_on(run_add(&client, 5));
    let fresh = run_cli(&["status", "--address", &cp.address, "--task-id", &id.to_string()]);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    std::thread::sleep(Duration::from_millis(1300));
    let expired = run_cli(&["status", "--address", &cp.address, "--task-id", &id.to_string()]);
    assert_eq!(expired.status.code(), Some(1));
    assert!(
        stderr(&expired).contains("expired") && stderr(&expired).contains("--result-cache-ttl"),
        "{}",
        stderr(&expired)
    );
}

#[test]
fn ttl_zero_keeps_results_until_evicted() {
    let cp = Process::control_plane(&["example-tasks"], &["--result-cache-ttl", "0", "--result-cache-size", "100"]);
    let client = cp.client();
    runtime().block_on(async {
        let id = run_add(&client, 5).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(client.status(id).await.unwrap().result.unwrap(), b"6");
    });
}
