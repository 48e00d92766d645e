//! Overlapping requests on one port each get their own reply; a control
//! plane's port grows its contexts so that 1 000 blocking calls at once are
//! all served, and past `--contexts-per-port` a call is answered `Busy`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fastworker::protocol::{now_ms, ErrorKind, Reply, Request, Submit};
use fastworker::{ClientError, Priority, SubmitOptions, TaskId};
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

/// The NORMAL task port's index among a client's endpoints.
const NORMAL: usize = 2;

/// One call's outcome and how long it took.
type Timed = (Result<fastworker::TaskReport, ClientError>, Duration);

/// Starts `count` blocking `add` submissions at once, spread over clients
/// of 100 calls each (one client keeps at most 128 in service), each to
/// run `countdown` from now, so that every one holds a context of the port
/// until then. Each is a plain `Submit` request, as an older client (or
/// one in another language) sends it: the Rust client's own blocking calls
/// share two frames per port (tests/tests/client_batching.rs) and hold no
/// context each. Their outcomes, each with how long it took, and how long
/// the last took.
fn blocking_at_once(cp: &Process, count: usize, countdown: Duration) -> (Vec<Timed>, Duration) {
    let clients: Vec<Arc<fastworker::Client>> =
        (0..count.div_ceil(100)).map(|_| Arc::new(cp.client().with_timeout(Duration::from_secs(30)))).collect();
    runtime().block_on(async {
        let started = Instant::now();
        let calls: Vec<_> = (0..count)
            .map(|i| {
                let client = clients[i / 100].clone();
                tokio::spawn(async move {
                    let submit = Submit {
                        task_id: TaskId::now_v7(),
                        task_name: "add".into(),
                        args: serde_json::to_vec(&(i as i64, 1)).unwrap(),
                        wait: true,
                        not_before_ms: Some(now_ms() + countdown.as_millis() as u64),
                        ..Default::default()
                    };
                    let asked = Instant::now();
                    let outcome = match client.request(NORMAL, &Request::Submit(submit)).await {
                        Ok(Reply::Report(report)) => Ok(report),
                        Ok(Reply::Error(refusal)) => Err(ClientError::Refused(refusal)),
                        Ok(other) => panic!("a submission answered {other:?}"),
                        Err(error) => Err(error),
                    };
                    (outcome, asked.elapsed())
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(count);
        for call in calls {
            outcomes.push(call.await.unwrap());
        }
        (outcomes, started.elapsed())
    })
}

#[test]
fn a_thousand_blocking_submissions_at_once_are_all_served() {
    let cp = Process::control_plane(&["example-tasks"], &["--concurrency", "2"]);
    let countdown = Duration::from_secs(4);
    let (outcomes, took) = blocking_at_once(&cp, 1000, countdown);
    let outcomes: Vec<_> = outcomes.into_iter().map(|(outcome, _)| outcome).collect();
    let failed: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err().map(|e| e.to_string())).collect();
    assert!(failed.is_empty(), "{} of 1000 failed, e.g. {:?}", failed.len(), &failed[..failed.len().min(3)]);
    for (i, outcome) in outcomes.iter().enumerate() {
        let report = outcome.as_ref().unwrap();
        assert_eq!(report.result.as_deref(), Some((i as i64 + 1).to_string().as_bytes()), "{report:?}");
    }
    // All 1000 were in service together: they end with their countdown,
    // not in rounds of a fixed set of contexts (256 would take 4 rounds).
    assert!(took < countdown * 2, "the last of 1000 was answered {took:?} after they were sent");
    eprintln!("1000 blocking submissions with a {countdown:?} countdown all answered within {took:.2?}");
}

#[test]
fn past_contexts_per_port_a_call_is_answered_busy_naming_the_flag() {
    let cp =
        Process::control_plane_with_gui(&["example-tasks"], &["--concurrency", "2", "--contexts-per-port", "40"], &[]);
    let countdown = Duration::from_secs(5);
    let (outcomes, _) = blocking_at_once(&cp, 100, countdown);
    let mut served = 0;
    let mut busy = 0;
    for (outcome, took) in &outcomes {
        match outcome {
            Ok(report) => {
                assert_eq!(report.state, fastworker::TaskState::Succeeded, "{report:?}");
                served += 1;
            }
            Err(ClientError::Refused(refusal)) => {
                assert_eq!(refusal.kind, ErrorKind::Busy, "{refusal:?}");
                assert!(refusal.message.contains("--contexts-per-port 40"), "{}", refusal.message);
                // Refused at once, not after the countdown it would have waited.
                assert!(*took < Duration::from_secs(1), "a call past the bound was refused after {took:?}");
                busy += 1;
            }
            Err(other) => panic!("neither served nor refused: {other}"),
        }
    }
    // 39 in service at once, the 40th context answering the rest.
    assert_eq!(served + busy, 100);
    assert!((39..=60).contains(&served), "served {served}, refused {busy}");
    let metrics = fastworker_tests::http::get(&format!("{}/metrics", cp.gui.as_ref().unwrap())).text();
    let counted = format!("fastworker_limit_refusals_total{{limit=\"contexts-per-port\"}} {busy}");
    assert!(metrics.contains(&counted), "{counted} in /metrics:\n{metrics}");
}
