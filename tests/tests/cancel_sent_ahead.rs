//! Cancelling a run sent ahead to a worker (docs/isolation.md, "Cancel"):
//! a run a worker process or a subworker holds and has not started is the
//! worker's to end, so a cancel's answer waits for it, and is the truth:
//! `Cancelled` (no attempt, never started) when the worker ended it, or
//! `Running` (asked to stop) when it started first. Either way the task
//! ends once.
//!
//! Every test starts its own processes on ports of its own, with
//! `--concurrency 1` and a blocking `sleep_ms` run in front, so that what
//! follows is sent ahead and waits there.

use std::time::Duration;

use fastworker::workflow::{task, Workflow, WorkflowState};
use fastworker::{Client, SubmitOptions, TaskId, TaskReport, TaskState};
use fastworker_tests::{http, runtime, wait_until, Process};

/// Runs the worker processes of `cp` started, by their own run logs.
fn runs_started(cp: &Process) -> u64 {
    cp.workers().expect("workers").worker_processes.iter().map(|p| p.runs_total).sum()
}

/// How many tasks the dashboard shows sent ahead and not started (every
/// priority).
fn prefetched(gui: &str) -> u64 {
    let text = http::get(&format!("{gui}/metrics")).text();
    let count = |line: &str| line.strip_prefix("fastworker_tasks_prefetched{")?.split(' ').nth(1)?.parse::<u64>().ok();
    text.lines().filter_map(count).sum()
}

/// What must not change once a task ended: its outcome.
fn outcome(report: &TaskReport) -> (TaskState, u32, Option<u64>, Option<u64>) {
    (report.state, report.attempts, report.started_ms, report.finished_ms)
}

/// A cancelled task that never ran, as every reader tells it.
fn never_ran(report: &TaskReport, what: &str) {
    assert_eq!(report.state, TaskState::Cancelled, "{what}: {report:?}");
    assert_eq!((report.attempts, report.started_ms), (0, None), "{what} never started: {report:?}");
}

/// Submits a `sleep_ms(ms)` blocker and waits until it runs.
fn blocker(rt: &tokio::runtime::Runtime, client: &Client, ms: u64) -> TaskId {
    let id = rt.block_on(client.delay("sleep_ms", (ms,), SubmitOptions::default())).unwrap();
    assert!(wait_until(Duration::from_secs(30), || {
        rt.block_on(client.status(id)).is_ok_and(|r| r.state == TaskState::Running)
    }));
    id
}

/// Behind a blocker, three runs sent ahead to the one worker process: one
/// cancelled over the Rust client, one over the HTTP API v1 and one over
/// the dashboard's route. Each answer says `Cancelled` with no attempt,
/// status says so after, and the worker process's run log shows they never
/// ran; the run not cancelled runs.
/// A control plane with one worker process holding up to 4 runs ahead,
/// serving (a first run answered and seen in its run log), its client, and
/// the runs its run log counts so far.
fn serving_with_runs_sent_ahead() -> (Process, tokio::runtime::Runtime, Client, u64) {
    let flags = ["--concurrency", "1", "--prefetch-per-process", "4"];
    let cp = Process::control_plane_with_gui(&["example-tasks"], &flags, &[]);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    let echoed: String = rt.block_on(client.call("echo", ("up",))).unwrap();
    assert_eq!(echoed, "up");
    assert!(wait_until(Duration::from_secs(10), || runs_started(&cp) >= 1), "the run log shows the first run");
    let before = runs_started(&cp);
    (cp, rt, client, before)
}

#[test]
fn runs_sent_ahead_to_a_worker_process_and_cancelled_never_run() {
    let (cp, rt, client, before) = serving_with_runs_sent_ahead();
    let gui = cp.gui.clone().unwrap();
    let sleeper = blocker(&rt, &client, 3_000);
    let ids: Vec<TaskId> = (0..4)
        .map(|n| rt.block_on(client.delay("echo", (format!("{n}"),), SubmitOptions::default())).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(10), || prefetched(&gui) == 4), "sent ahead: {}", prefetched(&gui));

    never_ran(&rt.block_on(client.cancel(ids[0])).unwrap(), "the client's cancel answer");
    let answer = http::request("POST", &format!("{gui}/api/v1/tasks/{}/cancel", ids[1]), &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!((body["state"].as_str(), body["attempts"].as_u64()), (Some("cancelled"), Some(0)), "{body}");
    let answer = http::request("POST", &format!("{gui}/api/tasks/{}/cancel", ids[2]), &[]);
    assert_eq!(answer.json()["cancelled"], true, "{}", answer.text());

    for id in &ids[..3] {
        never_ran(&rt.block_on(client.status(*id)).unwrap(), "status after the cancel");
        let body = http::get(&format!("{gui}/api/v1/tasks/{id}")).json();
        assert_eq!(body["state"], "cancelled", "{body}");
    }
    let slept = rt.block_on(client.wait(sleeper, Duration::from_secs(30))).unwrap();
    assert_eq!(slept.state, TaskState::Succeeded, "{slept:?}");
    let kept = rt.block_on(client.wait(ids[3], Duration::from_secs(30))).unwrap();
    assert_eq!((kept.state, kept.attempts), (TaskState::Succeeded, 1), "{kept:?}");
    // One more run: once the run log shows it started, it has shown every
    // run started before it (one pipe, in order). The sleeper, the echo
    // not cancelled and this one ran; the three cancelled never did.
    let last: String = rt.block_on(client.call("echo", ("last",))).unwrap();
    assert_eq!(last, "last");
    assert!(wait_until(Duration::from_secs(10), || runs_started(&cp) >= before + 3));
    assert_eq!(runs_started(&cp), before + 3, "only the runs not cancelled started");
    for id in &ids[..3] {
        never_ran(&rt.block_on(client.status(*id)).unwrap(), "status at the end");
    }
}

/// A cancel sent around the moment the run in front ends races the start
/// of the run sent ahead: whichever wins, the answer is the truth and the task
/// ends once. Answered `Cancelled` without a start, it never ran (and
/// stays so); answered with a start (`Running`, or its end if it stopped
/// before its start was reported), it ran; the runs started match the
/// answers.
#[test]
fn a_cancel_racing_the_start_of_a_run_sent_ahead_ends_it_once() {
    let (cp, rt, client, before) = serving_with_runs_sent_ahead();
    let (mut cancelled, mut running) = (0u64, 0u64);
    for round in 0..12u64 {
        let sleeper = blocker(&rt, &client, 250);
        let raced = rt.block_on(client.delay("sleep_ms", (2_000,), SubmitOptions::default())).unwrap();
        // Not a wait for anything: the cancel leaves at a different moment
        // around the blocker's end each round, so that it lands before the
        // raced run starts in some rounds and after in others.
        std::thread::sleep(Duration::from_millis(120 + 20 * round));
        let answer = match rt.block_on(client.cancel(raced)) {
            Ok(answer) => answer,
            Err(error) => panic!("round {round}: the cancel was refused: {error}"),
        };
        let end = rt.block_on(client.wait(raced, Duration::from_secs(30))).unwrap();
        if answer.started_ms.is_none() {
            never_ran(&answer, "the answer");
            assert_eq!(outcome(&end), outcome(&answer), "round {round}: the end is the answer");
            cancelled += 1;
        } else {
            // It started first: asked to stop, it runs on (`Running`), or
            // had already ended by the time its worker answered (its end).
            assert_eq!(answer.attempts, 1, "round {round}: {answer:?}");
            assert!(end.state.is_final() && end.started_ms.is_some(), "round {round}: it ran: {end:?}");
            match answer.state {
                TaskState::Running => {}
                state if state.is_final() => assert_eq!(outcome(&end), outcome(&answer), "round {round}"),
                _ => panic!("round {round}: a started run answers running or its end, not {answer:?}"),
            }
            running += 1;
        }
        let slept = rt.block_on(client.wait(sleeper, Duration::from_secs(30))).unwrap();
        assert_eq!(slept.state, TaskState::Succeeded, "round {round}: the blocker ran out: {slept:?}");
        // Asked again, it ended: one outcome, the one read.
        assert_eq!(outcome(&rt.block_on(client.status(raced)).unwrap()), outcome(&end), "round {round}");
    }
    let last: String = rt.block_on(client.call("echo", ("last",))).unwrap();
    assert_eq!(last, "last");
    let expected = before + 12 + running + 1;
    assert!(wait_until(Duration::from_secs(10), || runs_started(&cp) >= expected));
    assert_eq!(runs_started(&cp), expected, "{cancelled} cancelled never started, {running} answered running did");
    eprintln!("{cancelled} cancelled before their start, {running} after");
}

/// The same through a subworker: runs its control plane sent ahead to it
/// (`--prefetch`, default 16) and, with `--prefetch-per-process 4`, on to
/// its worker process. A cancel at the control plane is answered
/// `Cancelled` with no attempt once the subworker ended the run.
#[test]
fn runs_sent_ahead_through_a_subworker_and_cancelled_never_run() {
    let cp = Process::control_plane(&[], &[]);
    let flags = ["--concurrency", "1", "--prefetch-per-process", "4"];
    let _sw = Process::subworker(&cp, "sw1", &["example-tasks"], &flags);
    let rt = runtime();
    let client = cp.client().with_timeout(Duration::from_secs(30));
    let sleeper = blocker(&rt, &client, 3_000);
    let ids: Vec<TaskId> = (0..6)
        .map(|n| rt.block_on(client.delay("echo", (format!("{n}"),), SubmitOptions::default())).unwrap())
        .collect();
    for id in &ids[..5] {
        never_ran(&rt.block_on(client.cancel(*id)).unwrap(), "the cancel's answer");
        never_ran(&rt.block_on(client.status(*id)).unwrap(), "status after the cancel");
    }
    let kept = rt.block_on(client.wait(ids[5], Duration::from_secs(30))).unwrap();
    assert_eq!(kept.state, TaskState::Succeeded, "{kept:?}");
    let slept = rt.block_on(client.wait(sleeper, Duration::from_secs(30))).unwrap();
    assert_eq!(slept.state, TaskState::Succeeded, "{slept:?}");
    for id in &ids[..5] {
        never_ran(&rt.block_on(client.status(*id)).unwrap(), "status at the end");
    }
}

/// A control plane with a dashboard and a network subworker of one run
/// sending `prefetch` runs ahead, busy with a 15 s sleeper; and the
/// `ahead` tasks `submit` gives it, once all are sent ahead.
struct BusySubworker {
    _cp: Process,
    _subworker: Process,
    gui: String,
    rt: tokio::runtime::Runtime,
    client: Client,
    sleeper: TaskId,
}

impl BusySubworker {
    fn start(prefetch: usize) -> BusySubworker {
        let cp = Process::control_plane_with_gui(&[], &[], &[]);
        let gui = cp.gui.clone().unwrap();
        let prefetch = prefetch.to_string();
        let flags = ["--concurrency", "1", "--prefetch", prefetch.as_str()];
        let subworker = Process::subworker(&cp, "sw1", &["example-tasks"], &flags);
        let rt = runtime();
        let client = cp.client().with_timeout(Duration::from_secs(60));
        let sleeper = blocker(&rt, &client, 15_000);
        BusySubworker { _cp: cp, _subworker: subworker, gui, rt, client, sleeper }
    }

    fn wait_sent_ahead(&self, ahead: usize) {
        assert!(
            wait_until(Duration::from_secs(10), || prefetched(&self.gui) == ahead as u64),
            "sent ahead: {}",
            prefetched(&self.gui)
        );
    }

    /// The runs were ended while the sleeper still ran, none is left sent
    /// ahead; then the sleeper stops, a last run goes through, and no run
    /// cancelled ever started there (no start report to discard).
    fn check_ended_before_the_sleeper_and_never_started(&self, ids: &[TaskId]) {
        let sleeping = self.rt.block_on(self.client.status(self.sleeper)).unwrap();
        assert_eq!(sleeping.state, TaskState::Running, "the runs ended while the run in front ran");
        assert_eq!(prefetched(&self.gui), 0, "nothing is left sent ahead");
        self.rt.block_on(self.client.cancel(self.sleeper)).unwrap();
        let last: String = self.rt.block_on(self.client.call("echo", ("last",))).unwrap();
        assert_eq!(last, "last");
        let metrics = http::get(&format!("{}/metrics", self.gui)).text();
        assert!(metrics.lines().any(|line| line == "fastworker_revoked_reports_total 0"), "{metrics}");
        for id in ids {
            never_ran(&self.rt.block_on(self.client.status(*id)).unwrap(), "status at the end");
        }
    }
}

/// Cancels of several runs sent ahead to a network subworker, all at once:
/// the control plane's notes to it overlap, and each leaves after the one
/// before it (a note given while another was leaving used to be dropped,
/// its canceller held until the run started, and the run not cancelled).
/// Every canceller hears `Cancelled`, no attempt, while the run in front
/// still runs: the subworker ended each run, none of which ever started.
#[test]
fn cancels_at_once_of_runs_sent_ahead_to_a_subworker_all_reach_it() {
    const AHEAD: usize = 16;
    let busy = BusySubworker::start(AHEAD);
    let (rt, client) = (&busy.rt, &busy.client);
    let ids: Vec<TaskId> = (0..AHEAD)
        .map(|n| rt.block_on(client.delay("echo", (format!("{n}"),), SubmitOptions::default())).unwrap())
        .collect();
    busy.wait_sent_ahead(AHEAD);

    let answers: Vec<TaskReport> = rt.block_on(async {
        let cancels: Vec<_> = ids
            .iter()
            .map(|&id| {
                let client = client.clone();
                tokio::spawn(async move { client.cancel(id).await })
            })
            .collect();
        let mut answers = Vec::new();
        for cancel in cancels {
            answers.push(cancel.await.expect("the cancel's task").expect("the cancel's answer"));
        }
        answers
    });
    // Answered by the subworker, not by the runs' start after the sleeper.
    for answer in &answers {
        never_ran(answer, "each cancel's answer");
    }
    busy.check_ended_before_the_sleeper_and_never_started(&ids);
}

/// A workflow whose members wait sent ahead to a network subworker,
/// cancelled: the control plane asks the subworker to end every member in
/// one go, its notes given back to back. Each member ends `Cancelled`
/// without an attempt while the run in front still runs, and never starts.
#[test]
fn a_cancelled_workflow_ends_all_its_members_sent_ahead_to_a_subworker() {
    const MEMBERS: usize = 8;
    let busy = BusySubworker::start(MEMBERS);
    let (rt, client) = (&busy.rt, &busy.client);
    let group = Workflow::group((0..MEMBERS as i64).map(|i| task("add", serde_json::json!([i, i]))));
    let id = rt.block_on(client.submit_workflow(&group)).unwrap().workflow_id;
    busy.wait_sent_ahead(MEMBERS);

    let cancelled = rt.block_on(client.cancel_workflow(id)).unwrap();
    assert_eq!(cancelled.state, WorkflowState::Cancelled, "{cancelled:?}");
    // Each member ends as the subworker ends it, before the run in front.
    for member in &cancelled.members {
        let report = rt.block_on(client.wait(member.task_id.unwrap(), Duration::from_secs(30))).unwrap();
        never_ran(&report, "a member at its end");
    }
    let members: Vec<TaskId> = cancelled.members.iter().map(|member| member.task_id.unwrap()).collect();
    busy.check_ended_before_the_sleeper_and_never_started(&members);
}
