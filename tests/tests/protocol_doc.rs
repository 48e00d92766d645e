//! docs/protocol.md is what clients in other languages are written from:
//! every request, reply and error kind it lists must have the index it
//! gives, and every field it names for a message must be that message's
//! field, in encoding order, with none left out.

use fastworker::protocol::{
    encode, Call, CallList, Calls, ClusterStatus, Dispatch, ErrorKind, ErrorReply, Heartbeat, OfferedTask, Outcome,
    Priority, Registration, Reply, Reported, Request, ScheduleStatus, Started, Submit, TaskInfo, TaskReport, TaskState,
    WorkerName, PROTOCOL_VERSION,
};
use fastworker::workflow::{MemberState, Receive, WorkflowNode, WorkflowReport, WorkflowState, WorkflowSubmit};
use fastworker::TaskId;
use serde::Serialize;

const DOC: &str = include_str!("../../docs/protocol.md");

/// The text under `heading`, up to the next heading.
fn section(heading: &str) -> &'static str {
    let start = DOC.find(heading).unwrap_or_else(|| panic!("docs/protocol.md has no '{heading}'"));
    let rest = &DOC[start + heading.len()..];
    &rest[..rest.find("\n#").unwrap_or(rest.len())]
}

/// The rows `| `Name` | index | text |` of the table under `heading`.
fn table(heading: &str) -> Vec<(String, u64, String)> {
    section(heading)
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            let index = cells.get(1)?.parse().ok()?;
            Some((name.to_string(), index, cells.get(2).copied().unwrap_or("").to_string()))
        })
        .collect()
}

/// The variant index postcard gives `message` (the byte after the version).
fn index_of(message: &impl Serialize) -> u64 {
    let frame = encode(message);
    assert_eq!(frame[0], PROTOCOL_VERSION);
    u64::from(frame[1])
}

/// The variant's name and its fields (for a struct-like variant or a
/// newtype of a struct), in declaration order, as serde sees them.
fn shape(message: &impl Serialize) -> (String, Vec<String>) {
    let text = serde_json::to_string(message).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    match value {
        serde_json::Value::String(name) => (name, Vec::new()),
        serde_json::Value::Object(outer) => {
            let (name, inner) = outer.into_iter().next().unwrap();
            // serde_json's map is sorted: take the order from the text.
            let fields = match inner {
                serde_json::Value::Object(fields) => {
                    let body = &text[text.find(':').unwrap() + 1..];
                    let mut names: Vec<(usize, String)> =
                        fields.keys().map(|key| (top_level_position(body, key), key.clone())).collect();
                    names.sort();
                    names.into_iter().map(|(_, key)| key).collect()
                }
                _ => Vec::new(),
            };
            (name, fields)
        }
        other => panic!("unexpected shape {other}"),
    }
}

/// Where `"key":` stands at the top level of the JSON object `body`.
fn top_level_position(body: &str, key: &str) -> usize {
    let (mut depth, mut in_string, mut escaped) = (0i32, false, false);
    let needle = format!("\"{key}\":");
    for (at, c) in body.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            '"' if depth == 1 && body[at..].starts_with(&needle) => return at,
            '"' => in_string = true,
            _ => {}
        }
    }
    panic!("{key} not found at the top level of {body}")
}

/// Checks every documented variant against the samples, and that every
/// sample's variant is documented.
fn check(heading: &str, samples: &[(u64, String, Vec<String>)]) {
    let rows = table(heading);
    for (index, name, fields) in samples {
        let row = rows.iter().find(|(doc_name, ..)| doc_name == name);
        let Some((_, doc_index, text)) = row else { panic!("{heading}: {name} is not documented") };
        assert_eq!(doc_index, index, "{heading}: {name} has index {index}, the doc says {doc_index}");
        // A row that names fields (`field`: …) names all of them, in order.
        if text.starts_with('`') && text.contains("`:") && !fields.is_empty() {
            let mut from = 0;
            for field in fields {
                let needle = format!("`{field}`:");
                match text[from..].find(&needle) {
                    Some(at) => from += at + needle.len(),
                    None => panic!("{heading}: {name}'s field `{field}` is missing or out of order in the doc: {text}"),
                }
            }
        }
    }
    for (name, ..) in &rows {
        assert!(samples.iter().any(|(_, sample, _)| sample == name), "{heading}: {name} is documented but unknown");
    }
}

fn sample<T: Serialize>(message: T) -> (u64, String, Vec<String>) {
    let (name, fields) = shape(&message);
    (index_of(&message), name, fields)
}

fn worker() -> WorkerName {
    WorkerName { worker_id: "sw1".into(), instance: TaskId::from_bytes([1; 16]) }
}

#[test]
fn every_request_is_as_documented() {
    let id = TaskId::from_bytes([7; 16]);
    let offered = OfferedTask { priority: Priority::High, timeout_ms: 5000, ..OfferedTask::new("add") };
    let registration = Registration {
        name: worker(),
        address: "tcp://127.0.0.1:1".into(),
        concurrency: 2,
        prefetch: 0,
        tasks: vec![offered],
    };
    let samples = [
        sample(Request::Submit(Submit::default())),
        sample(Request::Status { task_id: id }),
        sample(Request::Discover),
        sample(Request::Workers),
        sample(Request::Register(registration)),
        sample(Request::Heartbeat(Heartbeat { name: worker(), in_flight: 1 })),
        sample(Request::Leave(worker())),
        sample(Request::Unregister(worker())),
        sample(Request::Cancel { task_id: id }),
        sample(Request::Batch(vec![])),
        sample(Request::Schedules),
        sample(Request::PauseSchedule { task_name: "tick".into(), paused: true }),
        sample(Request::Dispatch(vec![Dispatch { lease: 1, submit: Submit::default() }])),
        sample(Request::Started(Started { name: worker(), runs: vec![(id, 1)] })),
        sample(Request::Revoke { task_ids: vec![id] }),
        sample(Request::Collect),
        sample(Request::Tasks),
        sample(Request::SubmitWorkflow(workflow_submit())),
        sample(Request::WorkflowStatus { workflow_id: id }),
        sample(Request::CancelWorkflow { workflow_id: id }),
        sample(Request::TaskLimits),
        sample(Request::SetTaskLimit { task_name: "add".into(), limit: None }),
        sample(Request::ClearTaskLimit { task_name: "add".into() }),
        sample(Request::Calls(Calls {
            session: id,
            calls: CallList { calls: vec![Call { tag: 1, submit: Submit::default() }], over: None },
        })),
        sample(Request::HandBack { task_ids: vec![id] }),
    ];
    check("## Request", &samples);
    // The fields of a Submit, in order.
    let (_, submit_fields) = shape(&Request::Submit(Submit::default()));
    let documented: Vec<String> = table_fields("### Submit");
    assert_eq!(documented, submit_fields, "docs/protocol.md's Submit table");
}

#[test]
fn every_reply_and_error_kind_is_as_documented() {
    let id = TaskId::from_bytes([7; 16]);
    let report = TaskReport {
        task_id: id,
        task_name: "add".into(),
        state: TaskState::Succeeded,
        priority: Priority::Normal,
        worker: "w".into(),
        attempts: 1,
        created_ms: 0,
        started_ms: None,
        finished_ms: None,
        result: None,
        error: None,
    };
    let schedule = ScheduleStatus {
        task_name: "tick".into(),
        schedule: "every 30s".into(),
        paused: false,
        next_ms: None,
        runs: 0,
        skipped: 0,
        last_task_id: None,
        last_run_ms: None,
        last_outcome: None,
    };
    let (_, report_fields) = shape(&Reply::Report(report.clone()));
    let samples = [
        sample(Reply::Accepted { task_id: id }),
        sample(Reply::Report(report)),
        sample(Reply::Error(ErrorReply::new(ErrorKind::Busy, "x"))),
        sample(Reply::Discovered { management_port: 5560 }),
        sample(Reply::Workers(ClusterStatus {
            total_subworkers: 0,
            active_subworkers: 0,
            subworkers: vec![],
            worker_processes: vec![],
        })),
        sample(Reply::Done),
        sample(Reply::Batch(vec![])),
        sample(Reply::Schedules(vec![schedule])),
        sample(Reply::Reports(vec![Reported { task_id: id, lease: 1, reply: vec![] }])),
        sample(Reply::Tasks(vec![TaskInfo {
            name: "add".into(),
            doc: String::new(),
            signature: String::new(),
            priority: Priority::High,
            timeout_ms: 0,
            max_retries: 0,
            args_schema: None,
            result_schema: None,
            providers: vec![],
        }])),
        sample(Reply::Workflow(workflow_report())),
        sample(Reply::TaskLimits(vec![])),
        sample(Reply::Outcomes(vec![Outcome { tag: 1, reply: vec![] }])),
    ];
    check("## Reply", &samples);
    assert_eq!(table_fields("### TaskReport"), report_fields, "docs/protocol.md's TaskReport table");
    let (_, workflow_fields) = shape(&Reply::Workflow(workflow_report()));
    assert_eq!(table_fields("### WorkflowReport"), workflow_fields, "docs/protocol.md's WorkflowReport table");
    let (_, submit_fields) = shape(&Request::SubmitWorkflow(workflow_submit()));
    assert_eq!(table_fields("### WorkflowSubmit"), submit_fields, "docs/protocol.md's WorkflowSubmit table");

    // Error kinds: each documented index decodes to the kind named, and the
    // index after the last decodes to none.
    let kinds = table("### ErrorKind");
    assert!(!kinds.is_empty());
    for (name, index, _) in &kinds {
        let kind: ErrorKind = postcard::from_bytes(&[*index as u8])
            .unwrap_or_else(|_| panic!("ErrorKind index {index} ({name}) does not decode"));
        assert_eq!(&format!("{kind:?}"), name, "ErrorKind index {index}");
    }
    let next = kinds.iter().map(|(_, index, _)| index + 1).max().unwrap() as u8;
    assert!(postcard::from_bytes::<ErrorKind>(&[next]).is_err(), "ErrorKind {next} exists but is not documented");
    let version_row = &kinds.iter().find(|(name, ..)| name == "UnsupportedVersion").unwrap().2;
    assert!(version_row.contains(&format!("`{PROTOCOL_VERSION}`")), "UnsupportedVersion's row: {version_row}");
}

fn workflow_submit() -> WorkflowSubmit {
    let step = match fastworker::workflow::task("add", serde_json::json!([1, 2])) {
        fastworker::workflow::Workflow::Task(step) => step,
        _ => unreachable!(),
    };
    WorkflowSubmit { workflow_id: TaskId::from_bytes([3; 16]), nodes: vec![WorkflowNode::Task(step)] }
}

fn workflow_report() -> WorkflowReport {
    WorkflowReport {
        workflow_id: TaskId::from_bytes([3; 16]),
        state: WorkflowState::Running,
        created_ms: 0,
        finished_ms: None,
        members: vec![],
        result: None,
        failure: None,
    }
}

/// The variant indexes of the workflow enums, as docs/protocol.md gives them.
#[test]
fn workflow_enums_are_as_documented() {
    let index = |value: &dyn erased::Encode| value.first_byte();
    assert_eq!(index(&WorkflowState::Cancelled), 3);
    assert_eq!(index(&MemberState::Skipped), 8);
    assert_eq!(index(&Receive::Key("k".into())), 2);
    assert_eq!(index(&WorkflowNode::Group(vec![])), 2);
    let doc = section("### WorkflowReport");
    assert!(doc.contains("`Cancelled` 3") && doc.contains("`Skipped` 8"), "{doc}");
    assert!(section("### WorkflowSubmit").contains("`Group` 2"));
}

mod erased {
    /// The first byte of a value's postcard encoding (its variant index).
    pub(super) trait Encode {
        fn first_byte(&self) -> u8;
    }
    impl<T: serde::Serialize> Encode for T {
        fn first_byte(&self) -> u8 {
            postcard::to_stdvec(self).unwrap()[0]
        }
    }
}

/// The first column of a `| field | type | meaning |` table.
fn table_fields(heading: &str) -> Vec<String> {
    section(heading)
        .lines()
        .filter_map(|line| {
            let first = line.trim().trim_start_matches('|').split('|').next()?.trim();
            Some(first.strip_prefix('`')?.strip_suffix('`')?.to_string())
        })
        .collect()
}
