//! Overlapping requests on one port each get their own reply.

use std::sync::Arc;

use fastworker::{Priority, SubmitOptions};
use fastworker_tests::{runtime, Process};

#[test]
fn many_requests_in_flight_from_several_clients_each_get_their_own_result() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "2"]);
    const CLIENTS: i64 = 4;
    const IN_FLIGHT_PER_CLIENT: i64 = 40;
    runtime().block_on(async {
        let mut calls = Vec::new();
        for c in 0..CLIENTS {
            let client = Arc::new(cp.client());
            for i in 0..IN_FLIGHT_PER_CLIENT {
                let client = client.clone();
                calls.push(tokio::spawn(async move {
                    let (x, y) = (c * 1000 + i, i * 7 + 1);
                    // Half sleep so that requests really overlap on the port.
                    if i % 2 == 0 {
                        let ms = (i % 5) as u64;
                        let slept: u64 = client.call("sleep_ms", (ms,)).await.unwrap();
                        assert!(slept >= ms);
                    }
                    let options = SubmitOptions { priority: Some(Priority::Normal), ..Default::default() };
                    let report = client.submit("add", (x, y), options).await.unwrap();
                    let sum: i64 = serde_json::from_slice(report.result.as_ref().unwrap()).unwrap();
                    (x + y, sum)
                }));
            }
        }
        assert!(calls.len() >= 64);
        let mut wrong = 0;
        for call in calls {
            let (expected, got) = call.await.unwrap();
            if expected != got {
                wrong += 1;
            }
        }
        assert_eq!(wrong, 0, "some clients got another request's result");
    });
}
