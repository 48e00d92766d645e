//! A client that batches by itself (issue 29): many blocking calls of one
//! `Client` share frames out and back; each still gets its own answer,
//! once, a lone or quick call is not held back, and the control plane
//! bounds what one client's frames may make it hold. Real processes, real
//! sockets; the hostile frames are built by hand and sent raw.

use std::time::{Duration, Instant};

use fastworker::protocol::{
    decode, encode_message, Call, CallList, Calls, ErrorKind, Reply, Request, Submit, MAX_CALLS_PER_FRAME,
};
use fastworker::{Client, ClientError, Priority, SubmitOptions, TaskId, TaskState};
use fastworker_tests::{http, runtime, wait_until, Process};
use uuid::Uuid;

/// The NORMAL task port's index among a client's endpoints.
const NORMAL: usize = 2;

fn submit(task_name: &str, args: &str) -> Submit {
    Submit {
        task_id: TaskId::now_v7(),
        task_name: task_name.into(),
        args: args.as_bytes().to_vec(),
        priority: Some(Priority::Normal),
        wait: true,
        ..Default::default()
    }
}

/// Sends one `Calls` frame of `session` raw on the NORMAL port.
async fn frame(client: &Client, session: Uuid, calls: Vec<Call>) -> Reply {
    let request = Request::Calls(Calls { session, calls: CallList { calls, over: None } });
    let reply = client.exchange(NORMAL, encode_message(&request)).await.expect("an answer to the frame");
    decode::<Reply>(&reply, usize::MAX).expect("the answer decodes")
}

/// The outcomes of an `Outcomes` answer, decoded, by tag.
fn outcomes(reply: Reply) -> Vec<(u64, Reply)> {
    let Reply::Outcomes(outcomes) = reply else { panic!("expected Outcomes, got {reply:?}") };
    outcomes.into_iter().map(|o| (o.tag, decode::<Reply>(&o.reply, usize::MAX).expect("an outcome decodes"))).collect()
}

fn owed(gui: &str) -> Option<u64> {
    let text = http::get(&format!("{gui}/metrics")).text();
    text.lines().find_map(|line| line.strip_prefix("fastworker_call_outcomes_owed ")).and_then(|v| v.parse().ok())
}

#[test]
fn many_calls_of_mixed_durations_through_one_client_each_get_their_own_answer_once() {
    let cp = Process::control_plane(&["example-tasks"], &["--in-process", "--concurrency", "8"]);
    let client = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(60));
    let runtime = runtime();
    let calls: Vec<_> = (0..600i64)
        .map(|i| {
            let client = client.clone();
            runtime.spawn(async move {
                if i % 5 == 0 {
                    // Slow ones, of different lengths, among quick ones.
                    let ms = (i % 7) as u64 * 30;
                    let slept: u64 = client.call("sleep_ms", (ms,)).await?;
                    Ok::<_, ClientError>(slept >= ms)
                } else {
                    // add on its own (HIGH) port and on NORMAL, beside sleep_ms.
                    let options =
                        SubmitOptions { priority: (i % 2 == 0).then_some(Priority::Normal), ..Default::default() };
                    let sum: i64 = client.call_with("add", (i, 1000 * i), options).await?;
                    Ok(sum == 1001 * i)
                }
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        match runtime.block_on(call).expect("the call's task") {
            Ok(true) => {}
            other => wrong.push((i, other)),
        }
    }
    assert!(wrong.is_empty(), "every call should get its own right answer; these did not: {wrong:?}");
}

#[test]
fn a_quick_call_is_not_held_behind_a_slow_one_on_the_same_port() {
    let cp = Process::control_plane(&["example-tasks"], &["--in-process", "--concurrency", "4"]);
    let client = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(30));
    let runtime = runtime();
    let normal = || SubmitOptions { priority: Some(Priority::Normal), ..Default::default() };
    // A lone call: one frame out, one back.
    assert_eq!(runtime.block_on(client.call_with::<i64>("add", (1, 2), normal())).unwrap(), 3);
    let slow_id = TaskId::now_v7();
    let slow = {
        let client = client.clone();
        let options = SubmitOptions { task_id: Some(slow_id), ..normal() };
        runtime.spawn(async move { client.call_with::<u64>("sleep_ms", (4000,), options).await })
    };
    let running = wait_until(
        Duration::from_secs(10),
        || matches!(runtime.block_on(client.status(slow_id)), Ok(report) if report.state == TaskState::Running),
    );
    assert!(running, "the slow call should be running");
    // Twenty quick calls one after another, while the slow one's frame waits.
    for i in 0..20i64 {
        let started = Instant::now();
        let sum: i64 = runtime.block_on(client.call_with("add", (i, i), normal())).unwrap();
        assert_eq!(sum, 2 * i);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a quick call took {:?} beside a slow one (the bound is one frame, well under 1 s)",
            started.elapsed()
        );
    }
    assert!(!slow.is_finished(), "the slow call should still be running");
    let slept = runtime.block_on(slow).unwrap().expect("the slow call's own answer");
    assert!(slept >= 4000, "sleep_ms(4000) answered {slept}");
}

/// The attacks of the brief: a frame with too many calls, calls beyond the
/// session's credit, outcomes never fetched, and another connection's
/// frame naming the session.
#[test]
fn hostile_frames_are_bounded_and_answered_with_typed_errors() {
    let cp = Process::control_plane_with_gui(
        &["example-tasks"],
        &["--in-process", "--concurrency", "2", "--max-requests-per-connection", "4"],
        &[],
    );
    let gui = cp.gui.clone().expect("the dashboard");
    let client = Client::new(&cp.address).unwrap().with_timeout(Duration::from_secs(20));
    let runtime = runtime();
    runtime.block_on(async {
        // 200 000 calls in one frame: refused whole, none submitted.
        let many = (0..200_000u64).map(|tag| Call { tag, submit: submit("add", "[1,2]") }).collect();
        let started = Instant::now();
        let Reply::Error(error) = frame(&client, Uuid::new_v4(), many).await else { panic!("expected a refusal") };
        assert_eq!(error.kind, ErrorKind::BadRequest, "{}", error.message);
        assert!(error.message.contains(&format!("at most {MAX_CALLS_PER_FRAME} calls")), "{}", error.message);
        assert!(started.elapsed() < Duration::from_secs(15), "refused in {:?}", started.elapsed());
        assert_eq!(owed(&gui), Some(0), "nothing of that frame is kept");

        // Six calls with room for four: the last two are refused Busy at once.
        let session = Uuid::new_v4();
        let calls: Vec<Call> = (0..6u64).map(|tag| Call { tag, submit: submit("sleep_ms", "[300]") }).collect();
        let ids: Vec<TaskId> = calls.iter().map(|call| call.submit.task_id).collect();
        let first = outcomes(frame(&client, session, calls).await);
        let busy: Vec<u64> = first
            .iter()
            .filter_map(|(tag, reply)| matches!(reply, Reply::Error(e) if e.kind == ErrorKind::Busy).then_some(*tag))
            .collect();
        assert_eq!((busy, first.len()), (vec![4, 5], 2), "the calls beyond the credit are refused, one by one");

        // The client never comes back for the rest: they end, their
        // outcomes are kept within the credit, and a bystander is served.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ended = false;
        while !ended && Instant::now() < deadline {
            ended = true;
            for id in &ids[..4] {
                let state = client.status(*id).await.map(|report| report.state);
                ended &= matches!(state, Ok(TaskState::Succeeded));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ended, "the four accepted calls should end");
        assert_eq!(owed(&gui), Some(4), "their outcomes are kept for the session");
        let bystander = Client::new(&cp.address).unwrap();
        assert_eq!(bystander.call::<i64>("add", (2, 2)).await.unwrap(), 4);

        // More calls in that session are refused while its outcomes wait,
        // and the frame carries those outcomes back at once.
        let calls = (6..9u64).map(|tag| Call { tag, submit: submit("add", "[0,0]") }).collect();
        let mut answered = Vec::new();
        for (tag, reply) in outcomes(frame(&client, session, calls).await) {
            match reply {
                Reply::Error(e) if tag >= 6 && e.kind == ErrorKind::Busy => {}
                Reply::Report(report) if tag < 4 => {
                    assert_eq!(report.task_id, ids[tag as usize], "call {tag} got another call's outcome");
                    assert_eq!(report.state, TaskState::Succeeded);
                    answered.push(tag);
                }
                other => panic!("call {tag}: {other:?}"),
            }
        }
        answered.sort();
        assert_eq!(answered, vec![0, 1, 2, 3], "each accepted call's own outcome, once");
        assert_eq!(owed(&gui), Some(0));

        // Another connection naming a session reaches nothing of it.
        let session = Uuid::new_v4();
        let owner = {
            let client = client.clone();
            tokio::spawn(async move {
                frame(&client, session, vec![Call { tag: 7, submit: submit("sleep_ms", "[1500]") }]).await
            })
        };
        assert!(wait_until_async(|| owed(&gui) == Some(1)).await, "the owner's call is in");
        let thief = Client::new(&cp.address).unwrap();
        let started = Instant::now();
        assert!(outcomes(frame(&thief, session, Vec::new()).await).is_empty(), "another connection got outcomes");
        assert!(started.elapsed() < Duration::from_secs(1), "a bare frame of an unknown session is answered at once");
        let mine = outcomes(owner.await.unwrap());
        assert!(matches!(&mine[..], [(7, Reply::Report(r))] if r.state == TaskState::Succeeded), "{mine:?}");
    });
}

async fn wait_until_async(mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ready()
}

/// A control plane killed, or stopped with SIGTERM, with calls in flight:
/// every call ends once, with its own answer if it had one, else a clear
/// error, within its timeout.
#[test]
fn a_control_plane_killed_or_drained_mid_frame_gives_each_call_one_clear_end() {
    let timeout = Duration::from_secs(3);
    let runtime = runtime();
    for signal in ["KILL", "TERM"] {
        let cp = Process::control_plane(&["example-tasks"], &["--in-process", "--concurrency", "4"]);
        let client = Client::new(&cp.address).unwrap().with_timeout(timeout);
        assert_eq!(runtime.block_on(client.call::<i64>("add", (1, 1))).unwrap(), 2);
        let first_sleep_id = std::sync::Arc::new(std::sync::Mutex::new(None));
        let calls: Vec<_> = (0..40u64)
            .map(|i| {
                let client = client.clone();
                let task_id = TaskId::now_v7();
                if i == 0 {
                    *first_sleep_id.lock().unwrap() = Some(task_id);
                }
                runtime.spawn(async move {
                    let started = Instant::now();
                    let options = SubmitOptions {
                        priority: Some(Priority::Normal),
                        task_id: Some(task_id),
                        ..Default::default()
                    };
                    let answer = if i % 2 == 0 {
                        client.call_with::<u64>("sleep_ms", (800 + i,), options).await.map(|v| (v >= 800 + i, v))
                    } else {
                        client.call_with::<i64>("add", (i, 1), options).await.map(|v| (v == i as i64 + 1, v as u64))
                    };
                    (answer, started.elapsed())
                })
            })
            .collect();
        let first_sleep = first_sleep_id.clone();
        let running = wait_until(Duration::from_secs(10), || {
            let id = *first_sleep.lock().unwrap();
            id.is_some_and(
                |id| matches!(runtime.block_on(client.status(id)), Ok(report) if report.state == TaskState::Running),
            )
        });
        assert!(running, "the calls should be running before the {signal}");
        cp.signal(signal);
        for (i, call) in calls.into_iter().enumerate() {
            let (answer, took) = runtime.block_on(call).unwrap();
            match answer {
                Ok((right, value)) => assert!(right, "{signal}: call {i} got another call's answer: {value}"),
                Err(ClientError::Timeout { .. } | ClientError::Transport { .. }) => {}
                Err(ClientError::Refused(error)) if error.kind == ErrorKind::ShuttingDown => {}
                Err(other) => panic!("{signal}: call {i} ended with an unclear error: {other:?}"),
            }
            assert!(took < timeout + Duration::from_millis(1500), "{signal}: call {i} took {took:?}");
        }
    }
}
