//! Frames that do not decode, carry another version, are too large or go to
//! the wrong port each get an error reply, and the server keeps serving.

use fastworker::protocol::{decode, encode, ErrorKind, Reply, Request, Submit, PROTOCOL_VERSION};
use fastworker::{Priority, TaskId};
use fastworker_tests::{runtime, Process};
use nng::Message;

fn error_kind(reply: Message) -> (ErrorKind, String) {
    match decode::<Reply>(&reply, usize::MAX).unwrap() {
        Reply::Error(error) => (error.kind, error.message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn add_request() -> Request {
    Request::Submit(Submit {
        task_id: TaskId::new_v4(),
        task_name: "add".into(),
        args: b"[2,3]".to_vec(),
        priority: None,
        wait: true,
        ..Default::default()
    })
}

#[test]
fn bad_frames_get_error_replies_and_the_server_keeps_serving() {
    // In-process: a worker process's registration (the plugin's schemas)
    // does not fit a 4 KiB frame.
    let cp = Process::control_plane(&["example-tasks"], &["--max-frame-bytes", "4096", "--in-process"]);
    let client = cp.client();
    let port = Priority::Normal.index();
    runtime().block_on(async {
        let (kind, message) = error_kind(client.exchange(port, Message::from(&[][..])).await.unwrap());
        assert_eq!(kind, ErrorKind::MalformedFrame, "{message}");

        let (kind, message) =
            error_kind(client.exchange(port, Message::from(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff][..])).await.unwrap());
        assert_eq!(kind, ErrorKind::MalformedFrame, "{message}");

        let mut other_version = encode(&add_request());
        other_version[0] = PROTOCOL_VERSION + 1;
        let (kind, message) = error_kind(client.exchange(port, Message::from(&other_version[..])).await.unwrap());
        assert_eq!(kind, ErrorKind::UnsupportedVersion);
        assert!(message.contains(&format!("version {}", PROTOCOL_VERSION + 1)), "{message}");

        let big = Request::Submit(Submit {
            task_id: TaskId::new_v4(),
            task_name: "add".into(),
            args: vec![b' '; 10_000],
            priority: None,
            wait: true,
            ..Default::default()
        });
        let (kind, message) = error_kind(client.exchange(port, Message::from(&encode(&big)[..])).await.unwrap());
        assert_eq!(kind, ErrorKind::FrameTooLarge);
        assert!(message.contains("4096"), "{message}");

        let (kind, _) = error_kind(client.exchange(4, Message::from(&encode(&add_request())[..])).await.unwrap());
        assert_eq!(kind, ErrorKind::WrongEndpoint);
        let status = Request::Status { task_id: TaskId::new_v4() };
        let (kind, _) = error_kind(client.exchange(port, Message::from(&encode(&status)[..])).await.unwrap());
        assert_eq!(kind, ErrorKind::WrongEndpoint);

        // Still serving, on every port.
        for p in 0..4 {
            let reply = decode::<Reply>(
                &client.exchange(p, Message::from(&encode(&add_request())[..])).await.unwrap(),
                usize::MAX,
            )
            .unwrap();
            match reply {
                Reply::Report(report) => assert_eq!(report.result.unwrap(), b"5"),
                other => panic!("expected a report, got {other:?}"),
            }
        }
    });
    assert!(cp.log().contains("refused a frame"), "bad frames are logged");
}

#[test]
fn a_resubmitted_task_id_does_not_run_twice() {
    let cp = Process::control_plane(&["example-tasks"], &[]);
    let client = cp.client();
    runtime().block_on(async {
        let request = Request::Submit(Submit {
            task_id: TaskId::new_v4(),
            task_name: "sleep_ms".into(),
            args: b"[300]".to_vec(),
            priority: None,
            wait: true,
            ..Default::default()
        });
        let frame = encode(&request);
        let (first, second) =
            tokio::join!(client.exchange(2, Message::from(&frame[..])), client.exchange(2, Message::from(&frame[..])));
        for reply in [first.unwrap(), second.unwrap()] {
            match decode::<Reply>(&reply, usize::MAX).unwrap() {
                Reply::Report(report) => assert_eq!(report.attempts, 1),
                other => panic!("expected a report, got {other:?}"),
            }
        }
    });
}
