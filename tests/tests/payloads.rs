//! Large arguments and results are carried byte for byte through the
//! control plane on every path a task can take (its own threads, its worker
//! processes, a subworker), up to the frame bound; one byte over it is
//! refused with `FrameTooLarge`, and the control plane keeps serving.

use fastworker::protocol::{encode, ErrorKind, Reply, Request, Submit};
use fastworker::{Client, ClientError, SubmitOptions, TaskId, TaskState};
use fastworker_tests::{runtime, Process};

/// The frame bound of the control planes (and subworkers) of the bound test.
const BOUND: usize = 3 << 19;

/// A text of `bytes` bytes (UTF-8) that JSON must escape in places:
/// quotes, backslashes, control characters, and multi-byte letters, so
/// that a copy that re-encodes or cuts it shows.
fn text(bytes: usize, seed: u64) -> String {
    const PIECES: [&str; 8] = ["abc", "\"", "\\", "\n", "é", "\u{1}", "🦀", "xyz0123456789"];
    let mut text = format!("{seed}:");
    let mut i = seed as usize;
    while text.len() < bytes {
        let piece = PIECES[i % PIECES.len()];
        if text.len() + piece.len() > bytes {
            text.push('.');
        } else {
            text.push_str(piece);
        }
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text
}

/// The `echo` submission of `text` under `task_id`, as the client frames it.
fn echo_frame_bytes(task_id: TaskId, text: &str) -> usize {
    let args = serde_json::to_vec(&(text,)).unwrap();
    let submit = Submit { task_id, task_name: "echo".into(), args, wait: true, ..Default::default() };
    encode(&Request::Submit(submit)).len()
}

/// Echoes `text` and checks the result byte for byte: as the client
/// decodes it, as the report carries it, and as the result cache keeps it.
async fn echo_exact(client: &Client, text: &str, path: &str) {
    let task_id = TaskId::new_v4();
    let options = SubmitOptions { task_id: Some(task_id), ..Default::default() };
    let report = client.submit("echo", (text,), options.clone()).await.unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(report.state, TaskState::Succeeded, "{path}: {:?}", report.error);
    let expected = serde_json::to_vec(text).unwrap();
    let result = report.result.expect("a result");
    assert!(result == expected, "{path}: the result of {} bytes differs from the {} sent", result.len(), text.len());
    let kept = client.status(task_id).await.unwrap();
    assert!(kept.result.as_deref() == Some(&expected[..]), "{path}: the cached result differs");
    // The same task again is answered from the cache (it does not run
    // twice); other arguments under its id are refused.
    let again = client.submit("echo", (text,), options.clone()).await.unwrap();
    assert_eq!((again.attempts, again.result.as_deref() == Some(&expected[..])), (1, true), "{path}");
    // Same length, so that it is refused for its id, not its size.
    let other = format!("x{}", &text[1..]);
    match client.submit("echo", (&other,), options).await {
        Err(ClientError::Refused(error)) => assert_eq!(error.kind, ErrorKind::IdConflict, "{path}: {}", error.message),
        other => panic!("{path}: other arguments under a used id: {other:?}"),
    }
}

/// The three paths: (name, control plane, subworker if any).
fn paths(flags: &[&str]) -> Vec<(&'static str, Process, Option<Process>)> {
    let in_process = [flags, &["--in-process"]].concat();
    let routing = Process::control_plane(&[], flags);
    let subworker = Process::subworker(&routing, "large", &["example-tasks"], flags);
    vec![
        ("in-process", Process::control_plane(&["example-tasks"], &in_process), None),
        ("worker processes", Process::control_plane(&["example-tasks"], flags), None),
        ("subworker", routing, Some(subworker)),
    ]
}

#[test]
fn a_mebibyte_of_arguments_and_result_round_trips_byte_exact_on_every_path() {
    for (path, control_plane, _subworker) in paths(&[]) {
        let client = control_plane.client();
        runtime().block_on(async {
            echo_exact(&client, &text(1 << 20, 1), path).await;
        });
    }
}

#[test]
fn a_payload_at_the_frame_bound_round_trips_and_one_byte_over_is_refused() {
    let bound = BOUND.to_string();
    for (path, control_plane, _subworker) in paths(&["--max-frame-bytes", &bound]) {
        let client = control_plane.client();
        // The largest text whose submission is exactly the bound: the
        // longest text that fits (its escapes make it grow unevenly), then
        // letters, one byte each.
        let id = TaskId::new_v4();
        let (mut fits, mut over) = (0, BOUND);
        while over - fits > 1 {
            let middle = (fits + over) / 2;
            if echo_frame_bytes(id, &text(middle, 3)) < BOUND {
                fits = middle;
            } else {
                over = middle;
            }
        }
        let mut at_bound = text(fits, 3);
        while echo_frame_bytes(id, &at_bound) < BOUND {
            at_bound.push('a');
        }
        assert_eq!(echo_frame_bytes(id, &at_bound), BOUND);
        runtime().block_on(async {
            echo_exact(&client, &at_bound, path).await;
            let over = format!("{at_bound}a");
            let options = SubmitOptions { task_id: Some(id), ..Default::default() };
            match client.submit("echo", (&over,), options).await {
                Err(ClientError::Refused(error)) => {
                    assert_eq!(error.kind, ErrorKind::FrameTooLarge, "{path}: {}", error.message);
                    assert!(error.message.contains(&bound), "{path}: {}", error.message);
                }
                other => panic!("{path}: a frame one byte over the bound: {other:?}"),
            }
            // Still serving.
            let reply = client.submit_raw("add", b"[2,3]".to_vec(), SubmitOptions::default(), true).await.unwrap();
            assert!(matches!(reply, Reply::Report(report) if report.result.as_deref() == Some(&b"5"[..])), "{path}");
        });
    }
}
