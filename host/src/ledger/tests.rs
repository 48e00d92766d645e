//! The ledger driven event by event, with the time passed in and every
//! effect recorded: the lifecycle of a task run here, and every case of
//! delivery to subworkers (leases, losses, silence, hand-backs, refusals,
//! late and duplicate reports). No process, socket or thread is started.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::wire::protocol::FailureKind;

use super::delivery::StartReports;
use super::local::LocalRun;
use super::*;
use crate::cluster::routing::{Joining, Phase, Slot, WorkerKey};
use crate::cluster::task_limits::TaskLimit;
use crate::wire::protocol::{
    encode_message, ErrorKind, ErrorReply, Forwarded, OfferedTask, Priority, Reply, Reported, TaskId, WorkerName,
};

/// A waiter: a number the test chose.
type Waiter = u32;

/// A subworker's connection, as the ledger's effects leave it.
#[derive(Default)]
struct FakeLink {
    /// Runs queued for the next frame: task, lease, run number.
    queued: Vec<(TaskId, u64, u32)>,
    /// Runs sent (flushed), in order.
    sent: Vec<(TaskId, u64, u32)>,
    /// Whether the next flush fails.
    broken: bool,
    /// Whether a run is taken once sent (a worker process's socket pair).
    taken_when_sent: bool,
    /// Notes go out on their own exchange, through a shared link (as the
    /// real one queues them).
    notes: RefCell<Vec<Request>>,
    resets: u32,
    /// Runs whose dispatch frame was given up unanswered.
    unanswered: Vec<TaskId>,
    /// Runs already sent when its outcomes were first collected.
    collected_after: RefCell<Option<usize>>,
}

/// What the ledger asked for, in order.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Accepted(TaskId),
    Progressed(TaskId, Option<u64>),
    RunHere(TaskId),
    SetAlarm(u64, Alarm),
    CancelAlarm(Alarm),
    Ended(TaskId),
    Count(Counted),
}

#[derive(Default)]
struct Recorder {
    effects: Vec<Effect>,
    /// Every task that ended so far, with its waiters.
    ended: Vec<(TaskReport, Vec<Waiter>)>,
    /// Whether this process's threads refuse work (shutting down).
    pool_closed: bool,
    /// The tasks whose run in progress was asked to stop.
    stopped: Vec<TaskId>,
    /// Each state change, as the dashboard shows it: the task and whether
    /// it was prefetched then.
    changed: Vec<(TaskId, TaskState, bool)>,
    /// Waiters answered with a live task's report (its state then).
    answered: Vec<(Vec<Waiter>, TaskState)>,
}

impl Effects<Waiter, FakeLink> for Recorder {
    fn accepted(&mut self, task: &LiveTask<Waiter>, _later: Option<u64>) {
        self.effects.push(Effect::Accepted(task.report.task_id));
    }
    fn changed(&mut self, task: &LiveTask<Waiter>) {
        self.changed.push((task.report.task_id, task.report.state, task.prefetched()));
    }
    fn progressed(&mut self, task: &LiveTask<Waiter>, retry_at_ms: Option<u64>) {
        self.effects.push(Effect::Progressed(task.report.task_id, retry_at_ms));
    }
    fn run_here(&mut self, task: &LiveTask<Waiter>) -> bool {
        self.effects.push(Effect::RunHere(task.report.task_id));
        !self.pool_closed
    }
    fn set_alarm(&mut self, due_ms: u64, alarm: Alarm) {
        self.effects.push(Effect::SetAlarm(due_ms, alarm));
    }
    fn cancel_alarm(&mut self, alarm: Alarm) {
        self.effects.push(Effect::CancelAlarm(alarm));
    }
    fn ended(&mut self, task: LiveTask<Waiter>) {
        self.effects.push(Effect::Ended(task.report.task_id));
        self.ended.push((task.report, task.waiters));
    }
    fn answer(&mut self, waiters: Vec<Waiter>, report: TaskReport) {
        self.answered.push((waiters, report.state));
    }
    fn dispatch(&mut self, link: &mut FakeLink, run: Forwarded<'_>) -> Taken {
        link.queued.push((run.task_id, run.lease, run.attempt));
        if link.taken_when_sent {
            Taken::WhenSent
        } else {
            Taken::WhenAnswered
        }
    }
    fn flush(&mut self, link: &mut FakeLink) -> Result<(), String> {
        if link.broken {
            link.queued.clear();
            return Err("connection refused".into());
        }
        link.sent.append(&mut link.queued);
        Ok(())
    }
    fn note(&mut self, link: &FakeLink, request: Request) {
        link.notes.borrow_mut().push(request);
    }
    fn collect(&mut self, link: &FakeLink) {
        link.collected_after.borrow_mut().get_or_insert(link.sent.len());
    }
    fn unanswered(&mut self, link: &mut FakeLink, task_id: TaskId) {
        link.unanswered.push(task_id);
    }
    fn reset(&mut self, link: &mut FakeLink) {
        link.resets += 1;
    }
    fn stop_run(&mut self, task: &LiveTask<Waiter>) {
        self.stopped.push(task.report.task_id);
    }
    fn count(&mut self, counted: Counted) {
        self.effects.push(Effect::Count(counted));
    }
}

impl Recorder {
    fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Every task that ended so far, with its report and waiters.
    fn ended(&self) -> Vec<(TaskReport, Vec<Waiter>)> {
        self.ended.clone()
    }
}

const T0: u64 = 1_000_000;
const MAX_RUN_MS: u64 = 60_000;
/// How long a subworker may take to answer a dispatch frame.
const ANSWER_MS: u64 = 5_000;
/// How long a task waits for an absent provider.
const GRACE_MS: u64 = 30_000;

/// A ledger whose process runs `local` tasks itself.
fn ledger(local: &[&str]) -> Ledger<Waiter, FakeLink> {
    let settings = Settings {
        worker_id: "cp".into(),
        max_subworker_run_ms: MAX_RUN_MS,
        answer_within_ms: ANSWER_MS,
        local_tasks: local.iter().map(|t| t.to_string()).collect(),
        provider_grace_ms: GRACE_MS,
    };
    Ledger::new(settings, TaskLimits::default())
}

/// Adds an active, connected subworker `id` with `slots` slots providing `tasks`.
fn worker(ledger: &mut Ledger<Waiter, FakeLink>, id: &str, slots: u32, tasks: &[&str]) -> WorkerKey {
    worker_sent_ahead(ledger, id, slots, 0, tasks)
}

/// As [`worker`], taking `prefetch` runs ahead of the `slots` it runs.
fn worker_sent_ahead(
    ledger: &mut Ledger<Waiter, FakeLink>,
    id: &str,
    slots: u32,
    prefetch: u32,
    tasks: &[&str],
) -> WorkerKey {
    let tasks: HashMap<String, OfferedTask> = tasks.iter().map(|t| (t.to_string(), OfferedTask::new(t))).collect();
    let key = ledger.cluster.new_key();
    let name = WorkerName { worker_id: id.into(), instance: TaskId::new_v4() };
    let address = format!("tcp://{id}:1");
    ledger
        .cluster
        .add(Joining { key, name, address, concurrency: slots, prefetch, tasks, link: FakeLink::default() }, T0);
    let worker = ledger.cluster.get_mut(key).unwrap();
    worker.phase = Phase::Active;
    worker.connected = true;
    key
}

fn link(ledger: &mut Ledger<Waiter, FakeLink>, key: WorkerKey) -> &mut FakeLink {
    &mut ledger.cluster.get_mut(key).unwrap().link
}

/// A task of `name` with `retries` retries 100 ms apart, no timeout.
fn task(name: &str, retries: u32, waiter: Option<Waiter>) -> LiveTask<Waiter> {
    task_timed(name, retries, 0, waiter)
}

fn task_timed(name: &str, retries: u32, timeout_ms: u64, waiter: Option<Waiter>) -> LiveTask<Waiter> {
    let report = TaskReport {
        task_id: TaskId::new_v4(),
        task_name: name.into(),
        state: TaskState::Queued,
        priority: Priority::Normal,
        worker: String::new(),
        attempts: 0,
        created_ms: T0,
        started_ms: None,
        finished_ms: None,
        result: None,
        error: None,
    };
    let retry = RetryPolicy { max_retries: retries, delay_ms: 100, factor: 2.0, max_delay_ms: 10_000 };
    let mut task = LiveTask::new(report, b"[1]".to_vec(), Plan { timeout_ms, retry, callback: None }, None);
    task.waiters.extend(waiter);
    task
}

fn admit(ledger: &mut Ledger<Waiter, FakeLink>, io: &mut Recorder, task: LiveTask<Waiter>) -> TaskId {
    let task_id = task.report.task_id;
    ledger.admit(task, None, T0, io);
    task_id
}

/// `count` tasks of "t" accepted one millisecond apart, in that order.
fn admit_one_after_another(ledger: &mut Ledger<Waiter, FakeLink>, io: &mut Recorder, count: u64) -> Vec<TaskId> {
    (0..count)
        .map(|n| {
            let mut task = task("t", 0, None);
            task.report.created_ms = T0 + n;
            admit(ledger, io, task)
        })
        .collect()
}

fn state(ledger: &Ledger<Waiter, FakeLink>, task_id: TaskId) -> Option<TaskState> {
    ledger.get(&task_id).map(|t| t.report.state)
}

/// A subworker's encoded reply for a run.
fn outcome(task_id: TaskId, lease: u64, result: Result<&str, &str>) -> Reported {
    let report = TaskReport {
        task_id,
        task_name: String::new(),
        state: if result.is_ok() { TaskState::Succeeded } else { TaskState::Failed },
        priority: Priority::Normal,
        worker: String::new(),
        attempts: 1,
        created_ms: T0,
        started_ms: Some(T0 + 5),
        finished_ms: Some(T0 + 6),
        result: result.ok().map(|r| r.as_bytes().to_vec()),
        error: result.err().map(|e| TaskError { kind: FailureKind::Error, message: e.into() }),
    };
    reply(task_id, lease, &Reply::Report(report))
}

fn reply(task_id: TaskId, lease: u64, reply: &Reply) -> Reported {
    Reported { task_id, lease, reply: encode_message(reply).as_slice().to_vec() }
}

mod here {
    use super::*;

    #[test]
    fn a_task_runs_here_once_and_its_waiters_get_the_result() {
        let (mut ledger, mut io) = (ledger(&["add"]), Recorder::default());
        let task_id = admit(&mut ledger, &mut io, task("add", 0, Some(7)));
        assert_eq!(io.take(), vec![Effect::Accepted(task_id), Effect::RunHere(task_id)]);
        assert!(matches!(ledger.join(task_id, "add", b"[1]", Some(8)), Joined::Same));
        let run = ledger.local_started(task_id, T0 + 10, &mut io).expect("starts");
        assert_eq!(run, LocalRun { attempt: 1, deadline_ms: 0, lease: None });
        assert_eq!(state(&ledger, task_id), Some(TaskState::Running));
        assert!(ledger.local_started(task_id, T0 + 11, &mut io).is_none(), "a run starts once");
        io.take();
        ledger.local_ended(task_id, run, Ok(b"2".to_vec()), T0 + 20, &mut io);
        let ended = io.ended();
        assert_eq!(ended.len(), 1);
        let (report, waiters) = &ended[0];
        assert_eq!(
            (report.state, report.result.as_deref(), report.attempts),
            (TaskState::Succeeded, Some(&b"2"[..]), 1)
        );
        assert_eq!((report.started_ms, report.finished_ms), (Some(T0 + 10), Some(T0 + 20)));
        assert_eq!(waiters, &vec![7, 8]);
        assert_eq!(ledger.load(), (0, 0));
        // The same outcome again (a late duplicate) changes nothing.
        ledger.local_ended(task_id, run, Ok(b"3".to_vec()), T0 + 30, &mut io);
        assert_eq!(io.ended().len(), 1);
    }

    #[test]
    fn the_same_id_with_other_arguments_is_a_conflict() {
        let (mut ledger, mut io) = (ledger(&["add"]), Recorder::default());
        let task_id = admit(&mut ledger, &mut io, task("add", 0, None));
        match ledger.join(task_id, "add", b"[2]", Some(1)) {
            Joined::Conflict(name, Some(1)) => assert_eq!(name, "add"),
            _ => panic!("expected a conflict"),
        }
        assert!(matches!(ledger.join(TaskId::new_v4(), "add", b"[1]", None), Joined::NotLive(None)));
    }

    #[test]
    fn a_failed_run_retries_after_its_backoff_then_succeeds() {
        let (mut ledger, mut io) = (ledger(&["flaky"]), Recorder::default());
        let task_id = admit(&mut ledger, &mut io, task("flaky", 2, None));
        let run = ledger.local_started(task_id, T0, &mut io).unwrap();
        io.take();
        let error = TaskError { kind: FailureKind::Error, message: "boom".into() };
        ledger.local_ended(task_id, run, Err(error), T0 + 50, &mut io);
        assert_eq!(state(&ledger, task_id), Some(TaskState::Retrying));
        let effects = io.take();
        assert!(effects.contains(&Effect::Progressed(task_id, Some(T0 + 150))), "{effects:?}");
        assert!(effects.contains(&Effect::SetAlarm(T0 + 150, Alarm::Start(task_id))), "{effects:?}");
        ledger.alarm(Alarm::Start(task_id), T0 + 150, &mut io);
        assert_eq!(io.take(), vec![Effect::RunHere(task_id)]);
        let run = ledger.local_started(task_id, T0 + 160, &mut io).unwrap();
        assert_eq!(run.attempt, 2);
        ledger.local_ended(task_id, run, Ok(b"1".to_vec()), T0 + 170, &mut io);
        let ended = io.ended();
        assert_eq!((ended[0].0.state, ended[0].0.attempts), (TaskState::Succeeded, 2));
    }

    #[test]
    fn bad_arguments_and_the_last_retry_fail_the_task() {
        let (mut ledger, mut io) = (ledger(&["t"]), Recorder::default());
        let task_id = admit(&mut ledger, &mut io, task("t", 5, None));
        let run = ledger.local_started(task_id, T0, &mut io).unwrap();
        let error = TaskError { kind: FailureKind::BadArguments, message: "not a number".into() };
        ledger.local_ended(task_id, run, Err(error), T0 + 1, &mut io);
        assert_eq!(io.ended()[0].0.state, TaskState::Failed, "bad arguments never retry");

        let task_id = admit(&mut ledger, &mut io, task("t", 1, None));
        for at in [T0, T0 + 200] {
            ledger.alarm(Alarm::Start(task_id), at, &mut io);
            let run = ledger.local_started(task_id, at, &mut io).unwrap();
            let error = TaskError { kind: FailureKind::Error, message: format!("run {}", run.attempt) };
            ledger.local_ended(task_id, run, Err(error), at + 1, &mut io);
        }
        let ended = io.ended();
        let (report, _) = ended.last().unwrap();
        assert_eq!((report.state, report.attempts), (TaskState::Failed, 2));
        assert_eq!(report.error.as_ref().unwrap().message, "run 2");
    }

    #[test]
    fn a_run_past_its_timeout_ends_timed_out_and_its_late_outcome_is_dropped() {
        let (mut ledger, mut io) = (ledger(&["slow"]), Recorder::default());
        let task_id = admit(&mut ledger, &mut io, task_timed("slow", 3, 500, None));
        let run = ledger.local_started(task_id, T0, &mut io).unwrap();
        assert_eq!(run.deadline_ms, T0 + 500);
        assert!(io.take().contains(&Effect::SetAlarm(T0 + 500, Alarm::Deadline(task_id, 1))));
        ledger.alarm(Alarm::Deadline(task_id, 1), T0 + 500, &mut io);
        let ended = io.ended();
        assert_eq!(ended[0].0.state, TaskState::TimedOut, "a timeout is not retried");
        ledger.local_ended(task_id, run, Ok(b"1".to_vec()), T0 + 900, &mut io);
        assert_eq!(io.ended().len(), 1, "one outcome only");
        // The deadline of a run that ended in time guards nothing.
        let task_id = admit(&mut ledger, &mut io, task_timed("slow", 0, 500, None));
        let run = ledger.local_started(task_id, T0, &mut io).unwrap();
        ledger.local_ended(task_id, run, Ok(b"1".to_vec()), T0 + 10, &mut io);
        assert!(io.take().contains(&Effect::CancelAlarm(Alarm::Deadline(task_id, 1))));
        ledger.alarm(Alarm::Deadline(task_id, 1), T0 + 500, &mut io);
        assert_eq!(io.ended().len(), 2, "the second task ended once, in time");
        assert_eq!(io.ended()[1].0.state, TaskState::Succeeded);
    }

    #[test]
    fn a_scheduled_task_waits_for_its_alarm_and_a_cancel_ends_it_before_it_runs() {
        let (mut ledger, mut io) = (ledger(&["t"]), Recorder::default());
        let mut scheduled = task("t", 0, Some(1));
        scheduled.report.state = TaskState::Scheduled;
        let task_id = scheduled.report.task_id;
        ledger.admit(scheduled, Some(T0 + 5_000), T0, &mut io);
        assert_eq!(io.take(), vec![Effect::Accepted(task_id), Effect::SetAlarm(T0 + 5_000, Alarm::Start(task_id))]);
        assert!(matches!(ledger.cancel(task_id, Some(2), T0 + 1, &mut io), Cancel::Waits), "ended at once");
        let ended = io.ended();
        assert_eq!(
            (ended[0].0.state, ended[0].1.clone()),
            (TaskState::Cancelled, vec![1, 2]),
            "the canceller hears it"
        );
        ledger.alarm(Alarm::Start(task_id), T0 + 5_000, &mut io);
        assert!(!io.take().iter().any(|e| matches!(e, Effect::RunHere(_))), "a cancelled task never runs");
    }

    #[test]
    fn a_running_task_cancelled_is_asked_to_stop_and_ends_with_its_run() {
        let (mut ledger, mut io) = (ledger(&["t"]), Recorder::default());
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        let run = ledger.local_started(task_id, T0, &mut io).unwrap();
        let cancel = ledger.cancel(task_id, Some(2), T0 + 1, &mut io);
        assert!(matches!(cancel, Cancel::Answer(Some(2))), "answered as it is: {cancel:?}");
        assert_eq!(state(&ledger, task_id), Some(TaskState::Running));
        assert_eq!(io.stopped, vec![task_id], "its run is asked to stop, as an effect");
        let error = TaskError { kind: FailureKind::Error, message: "stopped".into() };
        ledger.local_ended(task_id, run, Err(error), T0 + 2, &mut io);
        assert_eq!(io.ended()[0].0.state, TaskState::Failed);
    }

    #[test]
    fn threads_that_take_no_more_work_fail_the_task_saying_so() {
        let (mut ledger, mut io) = (ledger(&["t"]), Recorder { pool_closed: true, ..Default::default() });
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        let ended = io.ended();
        assert_eq!(ended[0].0.task_id, task_id);
        assert!(ended[0].0.error.as_ref().unwrap().message.contains("shut down"));
    }

    #[test]
    fn a_task_sent_by_a_control_plane_to_threads_that_stopped_stays_queued_to_be_handed_back() {
        // A stopping subworker (a worker process recycled by count) closed
        // its threads just before a run sent to it arrived: failing it would
        // end the task for good at its control plane.
        let (mut ledger, mut io) = (ledger(&["t"]), Recorder { pool_closed: true, ..Default::default() });
        let mut sent = task("t", 0, None);
        sent.lease = Some(7);
        let task_id = admit(&mut ledger, &mut io, sent);
        assert!(io.ended().is_empty(), "a task sent under a lease failed");
        assert_eq!(state(&ledger, task_id), Some(TaskState::Queued));
    }

    #[test]
    fn a_concurrency_limit_holds_runs_back_until_one_ends() {
        let local_tasks = ["t"].iter().map(|t| t.to_string()).collect();
        let settings = Settings {
            worker_id: "cp".into(),
            max_subworker_run_ms: MAX_RUN_MS,
            answer_within_ms: ANSWER_MS,
            local_tasks,
            provider_grace_ms: GRACE_MS,
        };
        let limit = TaskLimit { rate: None, max_running: Some(1) };
        let flags: Vec<(String, Option<TaskLimit>)> = Vec::new();
        let mut ledger = Ledger::new(settings, TaskLimits::new([("t".to_string(), limit)], flags, T0));
        let mut io = Recorder::default();
        let first = admit(&mut ledger, &mut io, task("t", 0, None));
        let second = admit(&mut ledger, &mut io, task("t", 0, None));
        let ran: Vec<_> = io.take().into_iter().filter(|e| matches!(e, Effect::RunHere(_))).collect();
        assert_eq!(ran, vec![Effect::RunHere(first)], "the second is held back");
        let run = ledger.local_started(first, T0, &mut io).unwrap();
        ledger.local_ended(first, run, Ok(b"1".to_vec()), T0 + 1, &mut io);
        assert!(io.take().contains(&Effect::RunHere(second)), "released when the first ended");
    }
}

mod cluster {
    use super::*;

    /// A ledger with no local tasks and one worker `w1` of `slots` slots for "t".
    fn one_worker(slots: u32) -> (Ledger<Waiter, FakeLink>, WorkerKey, Recorder) {
        let mut ledger = ledger(&[]);
        let key = worker(&mut ledger, "w1", slots, &["t"]);
        (ledger, key, Recorder::default())
    }

    #[test]
    fn a_task_goes_to_a_free_slot_under_a_lease_and_its_outcome_settles_it() {
        let (mut ledger, key, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, Some(3)));
        assert_eq!(link(&mut ledger, key).sent, vec![(task_id, 1, 1)]);
        let effects = io.take();
        // The first look is at the bound on the dispatch frame's answer.
        assert!(effects.contains(&Effect::SetAlarm(T0 + ANSWER_MS, Alarm::Lease(task_id, 1))), "{effects:?}");
        assert_eq!(ledger.get(&task_id).unwrap().report.worker, "w1");
        ledger.collected(key, vec![outcome(task_id, 1, Ok("42"))], T0 + 10, &mut io);
        let ended = io.ended();
        assert_eq!((ended[0].0.state, ended[0].0.result.as_deref()), (TaskState::Succeeded, Some(&b"42"[..])));
        assert_eq!(ended[0].1, vec![3]);
        assert!(io.take().contains(&Effect::CancelAlarm(Alarm::Lease(task_id, 1))));
        assert_eq!(ledger.cluster.get(key).unwrap().slots, vec![Slot::Idle]);
        // The same outcome again is discarded and counted.
        ledger.collected(key, vec![outcome(task_id, 1, Ok("43"))], T0 + 11, &mut io);
        assert_eq!(io.take(), vec![Effect::Count(Counted::RevokedReport)]);
    }

    #[test]
    fn tasks_beyond_the_slots_wait_and_a_freed_slot_takes_the_next() {
        let (mut ledger, key, mut io) = one_worker(1);
        let first = admit(&mut ledger, &mut io, task("t", 0, None));
        let second = admit(&mut ledger, &mut io, task("t", 0, None));
        assert_eq!(state(&ledger, second), Some(TaskState::Queued));
        assert_eq!(link(&mut ledger, key).sent.len(), 1);
        ledger.collected(key, vec![outcome(first, 1, Ok("1"))], T0 + 1, &mut io);
        assert_eq!(link(&mut ledger, key).sent[1], (second, 2, 1));
        assert_eq!(state(&ledger, second), Some(TaskState::Running));
    }

    #[test]
    fn a_lost_worker_s_task_goes_to_another_and_the_old_lease_s_outcome_is_discarded() {
        let (mut ledger, first, mut io) = one_worker(1);
        let second = worker(&mut ledger, "w2", 1, &["t"]);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, Some(1)));
        let (on, other) = if link(&mut ledger, first).sent.is_empty() { (second, first) } else { (first, second) };
        let lease = link(&mut ledger, on).sent[0].1;
        ledger.link_broken(on, "connection reset", T0 + 5, &mut io);
        assert_eq!(link(&mut ledger, on).resets, 1, "a lost connection's exchanges are cancelled");
        let resent = link(&mut ledger, other).sent.clone();
        assert_eq!(resent.len(), 1);
        let (_, new_lease, attempt) = resent[0];
        assert!(new_lease > lease);
        assert_eq!(attempt, 2, "the lost run counted as a run");
        // The first worker's late outcome is discarded; the second's settles.
        io.take();
        ledger.collected(on, vec![outcome(task_id, lease, Ok("\"old\""))], T0 + 6, &mut io);
        assert_eq!(io.take(), vec![Effect::Count(Counted::RevokedReport)]);
        assert_eq!(state(&ledger, task_id), Some(TaskState::Running));
        ledger.collected(other, vec![outcome(task_id, new_lease, Ok("\"new\""))], T0 + 7, &mut io);
        let ended = io.ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].0.result.as_deref(), Some(&b"\"new\""[..]));
    }

    #[test]
    fn a_task_lost_with_three_workers_fails_saying_it_may_have_run_partly() {
        let mut ledger = ledger(&[]);
        let mut io = Recorder::default();
        let keys: Vec<WorkerKey> = (0..3).map(|i| worker(&mut ledger, &format!("w{i}"), 1, &["t"])).collect();
        let task_id = admit(&mut ledger, &mut io, task("t", 5, None));
        for round in 0..MAX_DISPATCHES {
            let key = *keys.iter().find(|k| ledger.cluster.slot_of(**k, task_id).is_some()).expect("carried");
            ledger.link_broken(key, &format!("lost {round}"), T0 + u64::from(round), &mut io);
        }
        let ended = io.ended();
        assert_eq!(ended.len(), 1);
        let message = &ended[0].0.error.as_ref().unwrap().message;
        assert!(message.contains("3 times") && message.contains("may have run partly"), "{message}");
    }

    #[test]
    fn a_task_nobody_else_provides_runs_here_or_fails_when_its_worker_is_lost() {
        let mut ledger = ledger(&["t"]);
        let key = worker(&mut ledger, "w1", 1, &["t", "only-there"]);
        let mut io = Recorder::default();
        let here = admit(&mut ledger, &mut io, task("t", 0, None));
        let there = admit(&mut ledger, &mut io, task("only-there", 0, None));
        io.take();
        // Taken back when it goes silent (the connection stays up).
        ledger.cluster.disconnected(key);
        ledger.take_back(key, "silent", T0 + 1, &mut io);
        let effects = io.take();
        assert!(effects.contains(&Effect::RunHere(here)), "{effects:?}");
        // The other waits, queued, for its provider to come back, then fails.
        assert!(effects.contains(&Effect::SetAlarm(T0 + 1 + GRACE_MS, Alarm::Provider(there))), "{effects:?}");
        assert_eq!(state(&ledger, there), Some(TaskState::Queued));
        assert!(io.ended().is_empty());
        ledger.alarm(Alarm::Provider(there), T0 + 1 + GRACE_MS, &mut io);
        let failed: Vec<_> = io.ended().into_iter().map(|(report, _)| report).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].task_id, there);
        let message = &failed[0].error.as_ref().unwrap().message;
        assert!(message.contains("no worker provides task 'only-there' any more (silent)"), "{message}");
        assert!(message.contains("within 30 s (--provider-grace)"), "{message}");
    }

    #[test]
    fn a_run_not_reported_started_in_time_is_revoked_and_sent_elsewhere() {
        let (mut ledger, first, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        ledger.dispatch_answered(first, vec![task_id], FrameAnswer::Taken, T0, &mut io);
        let second = worker(&mut ledger, "w2", 1, &["t"]);
        // The first look comes at the bound; nothing was reported.
        ledger.alarm(Alarm::Lease(task_id, 1), T0 + MAX_RUN_MS, &mut io);
        let effects = io.take();
        assert!(effects.contains(&Effect::Count(Counted::LeaseExpired)), "{effects:?}");
        let notes = format!("{:?}", link(&mut ledger, first).notes.borrow());
        assert_eq!(notes, format!("{:?}", vec![Request::Revoke { task_ids: vec![task_id] }]));
        assert_eq!(link(&mut ledger, second).sent, vec![(task_id, 2, 2)]);
        // The revoked run's slot stays taken until its worker reports it.
        assert_eq!(ledger.cluster.slot_of(first, task_id), Some((0, true)));
        ledger.collected(first, vec![outcome(task_id, 1, Ok("\"late\""))], T0 + MAX_RUN_MS + 1, &mut io);
        assert!(io.take().contains(&Effect::Count(Counted::RevokedReport)));
        assert_eq!(ledger.cluster.get(first).unwrap().slots, vec![Slot::Idle]);
        assert_eq!(state(&ledger, task_id), Some(TaskState::Running), "still running on w2");
    }

    #[test]
    fn a_run_sent_ahead_waits_behind_a_worker_making_progress_without_being_taken_back() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let key = worker_sent_ahead(&mut ledger, "busy", 1, 2, &["t"]);
        let ids = admit_one_after_another(&mut ledger, &mut io, 3);
        ledger.dispatch_answered(key, ids.clone(), FrameAnswer::Taken, T0, &mut io);
        ledger.started(key, &[(ids[0], 1)], T0 + 1, &mut io);
        // The first run takes most of the bound; its outcome is progress:
        // the two waiting behind it are bounded from then.
        let ended = T0 + MAX_RUN_MS - 10_000;
        ledger.collected(key, vec![outcome(ids[0], 1, Ok("1"))], ended, &mut io);
        ledger.started(key, &[(ids[1], 2)], ended + 1, &mut io);
        io.take();
        ledger.alarm(Alarm::Lease(ids[2], 3), T0 + MAX_RUN_MS + 1, &mut io);
        let effects = io.take();
        assert!(!effects.contains(&Effect::Count(Counted::LeaseExpired)), "taken back for waiting: {effects:?}");
        assert_eq!(state(&ledger, ids[2]), Some(TaskState::Running));
        assert!(ledger.get(&ids[2]).unwrap().prefetched(), "still waiting there");
        // With no progress for a whole bound, it is taken back.
        ledger.alarm(Alarm::Lease(ids[2], 3), ended + MAX_RUN_MS, &mut io);
        assert!(io.take().contains(&Effect::Count(Counted::LeaseExpired)));
    }

    #[test]
    fn a_start_report_times_the_run_from_its_start() {
        let (mut ledger, key, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task_timed("t", 0, 1_000, None));
        ledger.dispatch_answered(key, vec![task_id], FrameAnswer::Taken, T0, &mut io);
        let other = worker(&mut ledger, "w2", 1, &["t"]);
        // Dispatched with a 1 s timeout: the first look is at its timeout plus the grace.
        assert!(io.take().contains(&Effect::SetAlarm(T0 + 1_000 + REPORT_GRACE_MS, Alarm::Lease(task_id, 1))));
        // Queued there, not started: the alarm looks again later.
        ledger.alarm(Alarm::Lease(task_id, 1), T0 + 3_000, &mut io);
        assert_eq!(io.take(), vec![Effect::SetAlarm(T0 + 3_000 + 1_000 + REPORT_GRACE_MS, Alarm::Lease(task_id, 1))]);
        // Sent, not started: prefetched, and the change said so.
        assert!(ledger.get(&task_id).unwrap().prefetched());
        assert_eq!(io.changed.last(), Some(&(task_id, TaskState::Running, true)));
        // A client reads it waiting: queued, not started, no run counted.
        let reported = ledger.get(&task_id).unwrap().reported();
        assert_eq!((reported.state, reported.started_ms, reported.attempts), (TaskState::Queued, None, 0));
        assert_eq!(ledger.get(&task_id).unwrap().reported_state(), TaskState::Queued, "as its workflow reads it");
        let reports = ledger.started(key, &[(task_id, 1), (TaskId::new_v4(), 9)], T0 + 4_000, &mut io);
        assert_eq!((reports.taken, reports.revoked), (1, 0), "a run that already ended is not counted");
        assert!(!ledger.get(&task_id).unwrap().prefetched(), "reported started: running");
        let reported = ledger.get(&task_id).unwrap().reported();
        assert_eq!((reported.state, reported.started_ms, reported.attempts), (TaskState::Running, Some(T0 + 4_000), 1));
        assert_eq!(ledger.get(&task_id).unwrap().reported_state(), TaskState::Running);
        assert_eq!(io.changed.last(), Some(&(task_id, TaskState::Running, false)));
        assert_eq!(ledger.get(&task_id).unwrap().report.started_ms, Some(T0 + 4_000));
        // Its report is due a timeout plus the grace after its start.
        ledger.alarm(Alarm::Lease(task_id, 1), T0 + 6_000, &mut io);
        assert_eq!(io.take(), vec![Effect::SetAlarm(T0 + 4_000 + 1_000 + REPORT_GRACE_MS, Alarm::Lease(task_id, 1))]);
        ledger.alarm(Alarm::Lease(task_id, 1), T0 + 7_000, &mut io);
        assert!(io.take().contains(&Effect::Count(Counted::LeaseExpired)));
        assert_eq!(link(&mut ledger, other).sent, vec![(task_id, 2, 2)], "sent elsewhere");
        assert_eq!(io.changed.last(), Some(&(task_id, TaskState::Running, true)), "prefetched there");
        // A start report under the revoked lease is discarded and counted.
        let reports = ledger.started(key, &[(task_id, 1)], T0 + 7_001, &mut io);
        assert_eq!(reports, StartReports { taken: 0, revoked: 1 });
        assert_eq!(ledger.get(&task_id).unwrap().report.started_ms, Some(T0 + 7_000));
    }

    #[test]
    fn a_hand_back_does_not_count_as_a_run_and_the_task_goes_first_in_line() {
        let (mut ledger, first, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        let waiting = admit(&mut ledger, &mut io, task("t", 0, None));
        let second = worker(&mut ledger, "w2", 1, &["t"]);
        ledger.fill(T0, &mut io);
        assert_eq!(link(&mut ledger, second).sent, vec![(waiting, 2, 1)]);
        let refusal = Reply::Error(ErrorReply::new(ErrorKind::HandedBack, "stopping"));
        ledger.collected(first, vec![reply(task_id, 1, &refusal)], T0 + 1, &mut io);
        assert!(io.take().contains(&Effect::Count(Counted::HandedBack)));
        assert_eq!(ledger.cluster.get(first).unwrap().phase, Phase::Draining);
        let task = ledger.get(&task_id).unwrap();
        let report = &task.report;
        assert_eq!((report.state, report.attempts, report.started_ms), (TaskState::Queued, 0, None), "never started");
        ledger.collected(second, vec![outcome(waiting, 2, Ok("1"))], T0 + 2, &mut io);
        assert_eq!(link(&mut ledger, second).sent[1], (task_id, 3, 1), "sent again as its first run");
    }

    #[test]
    fn an_idle_worker_asks_back_a_run_sent_ahead_to_a_busy_one_which_then_runs_there() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let busy = worker_sent_ahead(&mut ledger, "busy", 1, 2, &["t"]);
        let ids = admit_one_after_another(&mut ledger, &mut io, 3);
        assert_eq!(link(&mut ledger, busy).sent.len(), 3, "one to run, two sent ahead");
        ledger.started(busy, &[(ids[0], 1)], T0 + 1, &mut io);
        let idle = worker(&mut ledger, "idle", 1, &["t"]);
        ledger.fill_worker(idle, T0 + 2, &mut io);
        // Of the two surely waiting there, the older is asked back, once.
        let notes = format!("{:?}", link(&mut ledger, busy).notes.borrow());
        assert_eq!(notes, format!("{:?}", vec![Request::HandBack { task_ids: vec![ids[1]] }]));
        ledger.fill_worker(idle, T0 + 3, &mut io);
        assert_eq!(link(&mut ledger, busy).notes.borrow().len(), 1, "asked once");
        // Handed back, it runs on the idle worker as its first run; the
        // busy worker is not taken for stopping.
        let handed = Reply::Error(ErrorReply::new(ErrorKind::HandedBack, "asked back"));
        ledger.collected(busy, vec![reply(ids[1], 2, &handed)], T0 + 4, &mut io);
        assert_eq!(link(&mut ledger, idle).sent, vec![(ids[1], 4, 1)]);
        assert_eq!(ledger.cluster.get(busy).unwrap().phase, Phase::Active);
        // A worker whose thread runs no run reported started (a short one,
        // perhaps already over) is not asked.
        let (mut other, mut io) = (super::ledger(&[]), Recorder::default());
        let short = worker_sent_ahead(&mut other, "short", 1, 2, &["t"]);
        admit_one_after_another(&mut other, &mut io, 3);
        let idle = worker(&mut other, "idle", 1, &["t"]);
        other.fill_worker(idle, T0 + 1, &mut io);
        assert!(link(&mut other, short).notes.borrow().is_empty());
    }

    #[test]
    fn refusals_send_again_or_fail_and_a_frame_that_cannot_be_trusted_sends_every_run_again() {
        let (mut ledger, key, mut io) = one_worker(2);
        let busy = admit(&mut ledger, &mut io, task("t", 0, None));
        let refused = admit(&mut ledger, &mut io, task("t", 0, None));
        let answer = |kind| reply(busy, 1, &Reply::Error(ErrorReply::new(kind, "no")));
        ledger.collected(key, vec![answer(ErrorKind::Busy)], T0 + 1, &mut io);
        assert_eq!(link(&mut ledger, key).sent.last(), Some(&(busy, 3, 2)), "busy: sent again");
        let no = reply(refused, 2, &Reply::Error(ErrorReply::new(ErrorKind::UnknownTask, "no such task")));
        ledger.collected(key, vec![no], T0 + 2, &mut io);
        let ended = io.ended();
        assert!(ended[0].0.error.as_ref().unwrap().message.contains("refused the task: no such task"));
        // A frame whose answer does not decode: each of its runs goes again.
        ledger.dispatch_answered(key, vec![busy], FrameAnswer::Broken("garbage".into()), T0 + 3, &mut io);
        assert_eq!(link(&mut ledger, key).sent.last(), Some(&(busy, 4, 3)));
        assert_eq!(ledger.get(&busy).unwrap().losses, 2);
    }

    #[test]
    fn a_result_that_is_not_json_fails_the_run_and_a_failure_retries_elsewhere() {
        let (mut ledger, key, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 1, None));
        ledger.collected(key, vec![outcome(task_id, 1, Ok("{not json"))], T0 + 1, &mut io);
        let effects = io.take();
        assert!(effects.contains(&Effect::Count(Counted::BadResult)));
        assert!(effects.contains(&Effect::SetAlarm(T0 + 101, Alarm::Start(task_id))), "retried: {effects:?}");
        ledger.alarm(Alarm::Start(task_id), T0 + 101, &mut io);
        assert_eq!(link(&mut ledger, key).sent.last(), Some(&(task_id, 2, 2)));
        ledger.collected(key, vec![outcome(task_id, 2, Err("boom"))], T0 + 200, &mut io);
        let ended = io.ended();
        assert_eq!((ended[0].0.state, ended[0].0.attempts), (TaskState::Failed, 2));
    }

    #[test]
    fn a_failed_send_marks_the_worker_lost_and_the_run_goes_elsewhere() {
        let (mut ledger, first, mut io) = one_worker(1);
        link(&mut ledger, first).broken = true;
        let second = worker(&mut ledger, "w2", 1, &["t"]);
        link(&mut ledger, second).broken = false;
        // Placement takes turns; make sure the first worker is tried first.
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        let on_second = link(&mut ledger, second).sent.clone();
        assert_eq!(on_second.len(), 1, "it ends on the live worker");
        assert_eq!(on_second[0].0, task_id);
        assert_eq!(state(&ledger, task_id), Some(TaskState::Running));
    }

    #[test]
    fn cancelling_a_task_running_on_a_subworker_tells_that_worker() {
        let (mut ledger, key, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        ledger.started(key, &[(task_id, 1)], T0 + 1, &mut io);
        assert!(matches!(ledger.cancel(task_id, Some(2), T0 + 2, &mut io), Cancel::Answer(Some(2))), "running");
        assert_eq!(ledger.get(&task_id).unwrap().reported().worker, "w1");
        let notes = format!("{:?}", link(&mut ledger, key).notes.borrow());
        assert_eq!(notes, format!("{:?}", vec![Request::Cancel { task_id }]));
    }

    /// A subworker's report of a run it cancelled before starting it.
    fn cancelled_there(task_id: TaskId, lease: u64) -> Reported {
        let error = TaskError { kind: FailureKind::Error, message: "cancelled by a client before it ran".into() };
        let report = TaskReport {
            task_id,
            task_name: String::new(),
            state: TaskState::Cancelled,
            priority: Priority::Normal,
            worker: String::new(),
            attempts: 0,
            created_ms: T0,
            started_ms: None,
            finished_ms: Some(T0 + 6),
            result: None,
            error: Some(error),
        };
        reply(task_id, lease, &Reply::Report(report))
    }

    #[test]
    fn a_cancel_of_a_run_sent_ahead_is_answered_once_its_worker_ended_it() {
        let (mut ledger, key, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, Some(1)));
        assert!(ledger.get(&task_id).unwrap().prefetched());
        assert!(matches!(ledger.cancel(task_id, Some(2), T0 + 1, &mut io), Cancel::Waits));
        assert!(matches!(ledger.cancel(task_id, Some(3), T0 + 2, &mut io), Cancel::Waits));
        let notes = format!("{:?}", link(&mut ledger, key).notes.borrow());
        assert_eq!(notes, format!("{:?}", vec![Request::Cancel { task_id }]), "its worker is asked once");
        assert!(io.ended().is_empty() && io.answered.is_empty(), "nobody is answered before the worker");
        ledger.collected(key, vec![cancelled_there(task_id, 1)], T0 + 3, &mut io);
        let ended = io.ended();
        let report = &ended[0].0;
        assert_eq!((report.state, report.attempts, report.started_ms), (TaskState::Cancelled, 0, None));
        assert_eq!(ended[0].1, vec![1, 2, 3], "its waiter and both cancellers hear its end");
    }

    #[test]
    fn a_cancel_of_a_run_sent_ahead_that_started_meanwhile_is_answered_running() {
        let (mut ledger, key, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        assert!(matches!(ledger.cancel(task_id, Some(2), T0 + 1, &mut io), Cancel::Waits));
        assert_eq!(io.stopped, vec![task_id], "asked to stop, should it start");
        ledger.started(key, &[(task_id, 1)], T0 + 2, &mut io);
        assert_eq!(io.answered, vec![(vec![2], TaskState::Running)]);
        ledger.collected(key, vec![outcome(task_id, 1, Ok("1"))], T0 + 3, &mut io);
        let ended = io.ended();
        assert_eq!((ended[0].0.state, ended[0].1.clone()), (TaskState::Succeeded, vec![]), "one outcome, its own");
    }

    #[test]
    fn a_worker_process_that_dies_hands_back_its_unstarted_runs_uncounted() {
        let (mut ledger, key, mut io) = one_worker(2);
        ledger.set_worker_processes(["w1".to_string()].into_iter().collect());
        let executing = admit(&mut ledger, &mut io, task("t", 0, None));
        let sent_ahead = admit(&mut ledger, &mut io, task("t", 0, None));
        ledger.started(key, &[(executing, 1)], T0 + 1, &mut io);
        ledger.link_broken(key, "its process died", T0 + 2, &mut io);
        let ahead = ledger.get(&sent_ahead).unwrap();
        assert_eq!((ahead.report.state, ahead.report.attempts, ahead.losses), (TaskState::Queued, 0, 0), "uncounted");
        let lost = ledger.get(&executing).unwrap();
        assert_eq!((lost.report.attempts, lost.losses), (1, 1), "the run it executed counts (its run log charges it)");
        // A subworker without a run log: a run not reported started may
        // still have started there, so it counts as lost.
        let (mut ledger, key, mut io) = one_worker(1);
        let sent = admit(&mut ledger, &mut io, task("t", 0, None));
        ledger.link_broken(key, "gone", T0 + 1, &mut io);
        let task = ledger.get(&sent).unwrap();
        assert_eq!((task.report.attempts, task.losses), (1, 1));
    }

    #[test]
    fn a_run_sent_ahead_and_cancelled_that_comes_back_unstarted_ends_cancelled() {
        let (mut ledger, key, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        let other = worker(&mut ledger, "w2", 1, &["t"]);
        assert!(matches!(ledger.cancel(task_id, Some(2), T0 + 1, &mut io), Cancel::Waits));
        ledger.link_broken(key, "gone", T0 + 2, &mut io);
        let ended = io.ended();
        let report = &ended[0].0;
        assert_eq!((report.state, report.attempts, report.started_ms), (TaskState::Cancelled, 0, None));
        assert_eq!(ended[0].1, vec![2]);
        assert!(link(&mut ledger, other).sent.is_empty(), "not sent again");
    }

    #[test]
    fn a_worker_that_left_hands_its_tasks_to_the_others_and_the_rest_fail() {
        let (mut ledger, key, mut io) = one_worker(1);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        let worker = ledger.remove_worker(key, "it left", T0 + 1, &mut io).expect("removed");
        assert_eq!(worker.name.worker_id, "w1");
        assert!(io.ended().is_empty(), "it waits for a provider first");
        ledger.alarm(Alarm::Provider(task_id), T0 + 1 + GRACE_MS, &mut io);
        let ended = io.ended();
        assert_eq!(ended[0].0.task_id, task_id);
        assert!(ended[0].0.error.as_ref().unwrap().message.contains("it left"));
        assert!(ledger.remove_worker(key, "again", T0 + 2, &mut io).is_none());
    }

    #[test]
    fn a_removed_workers_declared_limit_goes_and_another_providers_takes_over() {
        let (mut ledger, first, mut io) = one_worker(1);
        let second = worker(&mut ledger, "w2", 1, &["t"]);
        let tight = TaskLimit::parse("max_running:1").unwrap().unwrap();
        let loose = TaskLimit::parse("max_running:3").unwrap().unwrap();
        ledger.cluster.get_mut(second).unwrap().tasks.get_mut("t").unwrap().limit = Some(loose);
        assert!(ledger.task_limits.declare_offered("t", tight, first, T0));
        assert!(!ledger.task_limits.declare_offered("t", loose, second, T0));
        ledger.remove_worker(first, "it left", T0 + 1, &mut io);
        let rows = ledger.task_limits.statuses(|_| 0);
        assert_eq!(rows[0].limit.max_running, Some(3), "the remaining provider's declaration: {:?}", rows[0]);
        ledger.remove_worker(second, "it left", T0 + 2, &mut io);
        assert!(!ledger.task_limits.is_limited("t"), "no provider, no declared limit");
    }
}

mod tenants {
    use super::*;
    use crate::wire::auth::Tenant;

    #[test]
    fn each_tenants_live_tasks_are_counted_until_they_end() {
        let (mut ledger, mut io) = (ledger(&["add"]), Recorder::default());
        let (alice, bob) = (Tenant::Key([1; 8]), Tenant::Connection(7));
        let mut ids = Vec::new();
        for tenant in [Some(alice), Some(alice), Some(bob), None] {
            let mut task = task("add", 0, None);
            task.tenant = tenant;
            ids.push(admit(&mut ledger, &mut io, task));
        }
        assert_eq!(ledger.tenant_load(alice), (2, 6));
        assert_eq!(ledger.tenant_load(bob), (1, 3));
        assert_eq!(ledger.largest_tenant_load(), 2);
        let run = ledger.local_started(ids[0], T0 + 1, &mut io).unwrap();
        ledger.local_ended(ids[0], run, Ok(b"2".to_vec()), T0 + 2, &mut io);
        assert_eq!(ledger.tenant_load(alice), (1, 3));
        ledger.remove(&ids[2]);
        assert_eq!(ledger.tenant_load(bob), (0, 0));
        ledger.remove_all();
        assert_eq!((ledger.tenant_load(alice), ledger.largest_tenant_load()), ((0, 0), 0));
    }
}

mod workers {
    use super::*;
    use std::time::Duration;

    /// Registers (not yet connected) a worker `id` of one slot for "t".
    fn joining(ledger: &mut Ledger<Waiter, FakeLink>, id: &str) -> WorkerKey {
        let key = ledger.cluster.new_key();
        let name = WorkerName { worker_id: id.into(), instance: TaskId::new_v4() };
        let tasks = [("t".to_string(), OfferedTask::new("t"))].into_iter().collect();
        let address = format!("tcp://{id}:1");
        let joining = Joining { key, name, address, concurrency: 1, prefetch: 0, tasks, link: FakeLink::default() };
        let limit = TaskLimit { rate: None, max_running: Some(1) };
        ledger.joined(joining, vec![("t".into(), limit)], T0);
        key
    }

    #[test]
    fn a_worker_whose_link_comes_up_takes_the_waiting_tasks() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let busy = worker(&mut ledger, "w0", 1, &["t"]);
        let running = admit(&mut ledger, &mut io, task("t", 0, None));
        let waiting = admit(&mut ledger, &mut io, task("t", 0, None));
        assert_eq!(state(&ledger, waiting), Some(TaskState::Queued));
        let key = joining(&mut ledger, "w1");
        assert!(ledger.task_limits.is_limited("t"), "the limit its plugin declares counts");
        ledger.fill(T0, &mut io);
        assert!(link(&mut ledger, key).sent.is_empty(), "nothing before its link is up");
        assert!(ledger.connected(key, T0 + 1, &mut io), "its first connection");
        assert_eq!(link(&mut ledger, key).sent, vec![(waiting, 2, 1)]);
        // Its outcomes were collected before the first run was sent to it.
        assert_eq!(*link(&mut ledger, key).collected_after.borrow(), Some(0));
        // The run w0 has (started before the limit was declared) goes on.
        ledger.collected(busy, vec![outcome(running, 1, Ok("1"))], T0 + 2, &mut io);
        assert_eq!(io.ended()[0].0.task_id, running);
        assert!(!ledger.connected(key, T0 + 3, &mut io), "a reconnection is not a first");
    }

    #[test]
    fn a_silent_worker_is_excluded_and_a_heartbeat_brings_it_back() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let key = joining(&mut ledger, "w1");
        ledger.connected(key, T0, &mut io);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        ledger.sweep(Duration::from_secs(30), T0 + 31_000, &mut io);
        assert_eq!(ledger.cluster.get(key).unwrap().phase, Phase::Inactive);
        // Nobody else provides it: it waits for its provider, queued.
        assert!(io.ended().is_empty());
        assert_eq!(state(&ledger, task_id), Some(TaskState::Queued));
        let waiting = admit(&mut ledger, &mut io, task("t", 0, None));
        assert_eq!(state(&ledger, waiting), Some(TaskState::Queued), "it waits too");
        assert!(ledger.heartbeat(key, 0, T0 + 32_000, &mut io), "back");
        assert!(!ledger.heartbeat(key, 0, T0 + 33_000, &mut io), "already back");
        assert_eq!(ledger.cluster.get(key).unwrap().phase, Phase::Active);
        // The abandoned slot is still taken; the task sent again waits for
        // a slot, no longer for a provider, past its grace.
        ledger.alarm(Alarm::Provider(waiting), T0 + 60_000, &mut io);
        ledger.alarm(Alarm::Provider(task_id), T0 + 61_000, &mut io);
        assert!(io.ended().is_empty(), "{:?}", io.ended());
        ledger.collected(key, vec![outcome(task_id, 1, Ok("1"))], T0 + 62_000, &mut io);
        assert_eq!(
            link(&mut ledger, key).sent.len(),
            2,
            "its slot, freed, takes the next: {:?}",
            link(&mut ledger, key).sent
        );
    }

    #[test]
    fn a_stopping_worker_takes_nothing_new_and_tasks_only_it_provides_settle() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let key = joining(&mut ledger, "w1");
        ledger.connected(key, T0, &mut io);
        let running = admit(&mut ledger, &mut io, task("t", 0, None));
        let waiting = admit(&mut ledger, &mut io, task("t", 0, None));
        assert!(ledger.leaving(key, "w1 is stopping", T0 + 1, &mut io));
        assert_eq!(ledger.cluster.get(key).unwrap().phase, Phase::Draining);
        // The run it has goes on; the waiting task still waits for a provider.
        assert_eq!(state(&ledger, running), Some(TaskState::Running));
        assert_eq!(state(&ledger, waiting), Some(TaskState::Queued));
        ledger.collected(key, vec![outcome(running, 1, Ok("1"))], T0 + 2, &mut io);
        assert_eq!(link(&mut ledger, key).sent.len(), 1, "nothing new for a draining worker");
        // A key never given (keys are not reused) names no worker.
        assert!(!ledger.leaving(key + 1_000, "unknown", T0, &mut io));
    }

    #[test]
    fn a_dropped_connection_sends_the_tasks_elsewhere() {
        let (mut ledger, mut io) = (ledger(&["t"]), Recorder::default());
        let key = joining(&mut ledger, "w1");
        ledger.connected(key, T0, &mut io);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        assert_eq!(link(&mut ledger, key).sent.len(), 1);
        assert_eq!(ledger.connection_lost(key, T0 + 1, &mut io).as_deref(), Some("w1"));
        assert_eq!(link(&mut ledger, key).resets, 1);
        assert!(io.take().contains(&Effect::RunHere(task_id)), "run here instead");
        // A late event about a worker removed meanwhile changes nothing.
        ledger.remove_worker(key, "gone", T0 + 2, &mut io);
        assert_eq!(ledger.connection_lost(key, T0 + 3, &mut io), None);
        assert!(io.take().is_empty());
    }
}

mod absent {
    use super::*;

    fn failed_message(io: &Recorder, task_id: TaskId) -> String {
        let ended = io.ended();
        let (report, _) = ended.iter().find(|(r, _)| r.task_id == task_id).expect("ended");
        assert_eq!(report.state, TaskState::Failed, "{report:?}");
        report.error.as_ref().unwrap().message.clone()
    }

    #[test]
    fn a_retry_and_a_countdown_due_while_the_only_provider_is_gone_wait_for_the_next_one() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let first = worker(&mut ledger, "w1", 1, &["t"]);
        let retried = admit(&mut ledger, &mut io, task("t", 1, None));
        ledger.collected(first, vec![outcome(retried, 1, Err("once"))], T0 + 1, &mut io);
        assert_eq!(state(&ledger, retried), Some(TaskState::Retrying));
        let mut countdown = task("t", 0, None);
        countdown.report.state = TaskState::Scheduled;
        let counted = countdown.report.task_id;
        ledger.admit(countdown, Some(T0 + 500), T0, &mut io);
        // The only provider goes away; both come due meanwhile.
        ledger.connection_lost(first, T0 + 50, &mut io);
        ledger.remove_worker(first, "it restarted", T0 + 60, &mut io);
        io.take();
        ledger.alarm(Alarm::Start(retried), T0 + 101, &mut io);
        ledger.alarm(Alarm::Start(counted), T0 + 500, &mut io);
        let effects = io.take();
        assert!(effects.contains(&Effect::SetAlarm(T0 + 101 + GRACE_MS, Alarm::Provider(retried))), "{effects:?}");
        assert!(effects.contains(&Effect::SetAlarm(T0 + 500 + GRACE_MS, Alarm::Provider(counted))), "{effects:?}");
        assert_eq!(
            (state(&ledger, retried), state(&ledger, counted)),
            (Some(TaskState::Queued), Some(TaskState::Queued))
        );
        assert!(io.ended().is_empty());
        // A provider registers 3 s later: both go to it, their graces end.
        let second = worker(&mut ledger, "w2", 2, &["t"]);
        ledger.connected(second, T0 + 3_000, &mut io);
        let sent: Vec<TaskId> = link(&mut ledger, second).sent.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(sent, vec![retried, counted]);
        let effects = io.take();
        assert!(effects.contains(&Effect::CancelAlarm(Alarm::Provider(retried))), "{effects:?}");
        assert!(effects.contains(&Effect::CancelAlarm(Alarm::Provider(counted))), "{effects:?}");
        // An alarm that rings all the same changes nothing.
        ledger.alarm(Alarm::Provider(retried), T0 + 101 + GRACE_MS, &mut io);
        assert_eq!(state(&ledger, retried), Some(TaskState::Running));
        let (retry_lease, count_lease) = (link(&mut ledger, second).sent[0].1, link(&mut ledger, second).sent[1].1);
        let outcomes = vec![outcome(retried, retry_lease, Ok("2")), outcome(counted, count_lease, Ok("3"))];
        ledger.collected(second, outcomes, T0 + 3_100, &mut io);
        let ended = io.ended();
        assert_eq!(ended.len(), 2);
        assert!(ended.iter().all(|(r, _)| r.state == TaskState::Succeeded), "{ended:?}");
        assert_eq!(ended.iter().find(|(r, _)| r.task_id == retried).unwrap().0.attempts, 2);
    }

    #[test]
    fn the_last_provider_s_hand_backs_wait_for_the_next_provider() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let first = worker(&mut ledger, "w1", 3, &["t"]);
        // Accepted one after another (the line orders runs taken back by that).
        let ids = admit_one_after_another(&mut ledger, &mut io, 3);
        let refusal = Reply::Error(ErrorReply::new(ErrorKind::HandedBack, "stopping"));
        let handed = vec![reply(ids[1], 2, &refusal), reply(ids[2], 3, &refusal)];
        ledger.collected(first, handed, T0 + 1, &mut io);
        assert!(ledger.leaving(first, "w1 is stopping", T0 + 2, &mut io));
        // Held while the draining worker is there, then waiting for another.
        ledger.remove_worker(first, "w1 stopped", T0 + 3_000, &mut io);
        assert!(io.ended().is_empty(), "{:?}", io.ended());
        for task_id in &ids {
            assert_eq!(state(&ledger, *task_id), Some(TaskState::Queued));
        }
        let effects = io.take();
        for task_id in &ids {
            assert!(
                effects.contains(&Effect::SetAlarm(T0 + 3_000 + GRACE_MS, Alarm::Provider(*task_id))),
                "{effects:?}"
            );
        }
        // A new provider with two slots: two go, the third waits for a
        // slot, no longer for a provider, past its grace.
        let second = worker(&mut ledger, "w2", 2, &["t"]);
        ledger.connected(second, T0 + 5_000, &mut io);
        assert_eq!(link(&mut ledger, second).sent.len(), 2);
        for task_id in &ids {
            ledger.alarm(Alarm::Provider(*task_id), T0 + 3_000 + GRACE_MS, &mut io);
        }
        assert!(io.ended().is_empty(), "{:?}", io.ended());
        let (done, lease, _) = link(&mut ledger, second).sent[0];
        ledger.collected(second, vec![outcome(done, lease, Ok("1"))], T0 + 40_000, &mut io);
        assert_eq!(link(&mut ledger, second).sent.len(), 3, "the third went to the freed slot");
        // The run lost with w1, accepted first, went first, and counts;
        // hand-backs do not.
        assert_eq!((done, io.ended()[0].0.attempts), (ids[0], 2));
        let attempts: Vec<u32> = ids[1..].iter().filter_map(|id| ledger.get(id)).map(|t| t.report.attempts).collect();
        assert_eq!(attempts, vec![1, 1], "a hand-back does not count a run");
    }

    #[test]
    fn past_the_grace_the_tasks_still_without_a_provider_fail_together_saying_why() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let key = worker(&mut ledger, "w1", 1, &["t"]);
        let ids: Vec<TaskId> = (0..3).map(|_| admit(&mut ledger, &mut io, task("t", 0, None))).collect();
        ledger.connection_lost(key, T0 + 10, &mut io);
        let later = task("t", 0, None);
        let later_id = later.report.task_id;
        ledger.admit(later, None, T0 + 1_000, &mut io);
        assert!(io.ended().is_empty());
        ledger.alarm(Alarm::Provider(ids[2]), T0 + 10 + GRACE_MS - 1, &mut io);
        assert!(io.ended().is_empty(), "not before its grace is over");
        ledger.alarm(Alarm::Provider(ids[2]), T0 + 10 + GRACE_MS, &mut io);
        assert_eq!(io.ended().len(), 3, "the three whose grace is over fail in one pass");
        let message = failed_message(&io, ids[0]);
        assert!(
            message.contains("no worker provides task 't' any more (the connection to subworker 'w1' dropped)"),
            "{message}"
        );
        assert!(message.contains("none came back within 30 s (--provider-grace)"), "{message}");
        let effects = io.take();
        assert!(effects.contains(&Effect::CancelAlarm(Alarm::Provider(ids[0]))), "{effects:?}");
        assert_eq!(state(&ledger, later_id), Some(TaskState::Queued), "its grace runs on");
        ledger.alarm(Alarm::Provider(ids[0]), T0 + 10 + GRACE_MS, &mut io);
        assert_eq!(io.ended().len(), 3);
        ledger.alarm(Alarm::Provider(later_id), T0 + 1_000 + GRACE_MS, &mut io);
        assert!(failed_message(&io, later_id).contains("(no live subworker provides it)"));
        assert!(ledger.cluster.stranded().is_empty(), "nothing is left in line");
    }

    #[test]
    fn without_a_grace_a_task_nobody_provides_fails_at_once() {
        let mut ledger = ledger(&[]);
        ledger.settings.provider_grace_ms = 0;
        let mut io = Recorder::default();
        let key = worker(&mut ledger, "w1", 1, &["t"]);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        ledger.connection_lost(key, T0 + 10, &mut io);
        let message = failed_message(&io, task_id);
        assert!(message.contains("any more (the connection to subworker 'w1' dropped); submit it again"), "{message}");
        assert!(!io.take().iter().any(|e| matches!(e, Effect::SetAlarm(_, Alarm::Provider(_)))));
    }

    #[test]
    fn a_restored_task_waits_for_its_provider_to_register() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let restored = task("t", 0, None);
        let task_id = restored.report.task_id;
        ledger.restore(restored, None, T0, &mut io);
        let retrying = task("t", 0, None);
        let retrying_id = retrying.report.task_id;
        ledger.restore(retrying, Some(T0 + 100), T0, &mut io);
        let effects = io.take();
        assert!(effects.contains(&Effect::SetAlarm(T0 + GRACE_MS, Alarm::Provider(task_id))), "{effects:?}");
        assert!(effects.contains(&Effect::SetAlarm(T0 + 100, Alarm::Start(retrying_id))), "{effects:?}");
        assert!(!effects.contains(&Effect::SetAlarm(T0 + GRACE_MS, Alarm::Provider(retrying_id))), "{effects:?}");
        let key = worker(&mut ledger, "w1", 1, &["t"]);
        ledger.connected(key, T0 + 1_000, &mut io);
        assert_eq!(link(&mut ledger, key).sent, vec![(task_id, 1, 1)]);
        assert!(io.take().contains(&Effect::CancelAlarm(Alarm::Provider(task_id))));
        // Unrestored subworker: the message says what it waited for.
        ledger.remove_worker(key, "gone", T0 + 2_000, &mut io);
        ledger.alarm(Alarm::Provider(task_id), T0 + 2_000 + GRACE_MS, &mut io);
        assert!(failed_message(&io, task_id).contains("(gone)"));
        let mut fresh = super::ledger(&[]);
        let alone = task("t", 0, None);
        let alone_id = alone.report.task_id;
        fresh.restore(alone, None, T0, &mut io);
        fresh.alarm(Alarm::Provider(alone_id), T0 + GRACE_MS, &mut io);
        assert!(failed_message(&io, alone_id).contains("(no subworker providing it has registered since the restart)"));
    }
}

mod unanswered {
    use super::*;

    #[test]
    fn a_dispatch_not_answered_in_time_is_taken_back_and_sent_elsewhere() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let hole = worker(&mut ledger, "hole", 2, &["t"]);
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        assert!(io.take().contains(&Effect::SetAlarm(T0 + ANSWER_MS, Alarm::Lease(task_id, 1))));
        let real = worker(&mut ledger, "real", 1, &["t"]);
        ledger.alarm(Alarm::Lease(task_id, 1), T0 + ANSWER_MS - 1, &mut io);
        assert_eq!(io.take(), vec![Effect::SetAlarm(T0 + ANSWER_MS, Alarm::Lease(task_id, 1))], "not before the bound");
        ledger.alarm(Alarm::Lease(task_id, 1), T0 + ANSWER_MS, &mut io);
        assert!(io.take().contains(&Effect::Count(Counted::LeaseExpired)));
        // The frame is given up, the worker told, the task sent to the other.
        assert_eq!(link(&mut ledger, hole).unanswered, vec![task_id]);
        let notes = format!("{:?}", link(&mut ledger, hole).notes.borrow());
        assert_eq!(notes, format!("{:?}", vec![Request::Revoke { task_ids: vec![task_id] }]));
        assert_eq!(link(&mut ledger, real).sent, vec![(task_id, 2, 2)]);
        assert_eq!(ledger.get(&task_id).unwrap().losses, 1);
        // The silent worker gets nothing new until it heartbeats.
        let next = admit(&mut ledger, &mut io, task("t", 0, None));
        assert_eq!(state(&ledger, next), Some(TaskState::Queued));
        assert_eq!(link(&mut ledger, hole).sent.len(), 1);
    }

    #[test]
    fn an_answered_dispatch_is_bounded_by_its_start_report_and_a_start_report_is_an_answer() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let key = worker(&mut ledger, "w1", 2, &["t"]);
        let answered = admit(&mut ledger, &mut io, task("t", 0, None));
        let started = admit(&mut ledger, &mut io, task("t", 0, None));
        ledger.dispatch_answered(key, vec![answered], FrameAnswer::Taken, T0 + 1, &mut io);
        ledger.started(key, &[(started, 2)], T0 + 2, &mut io);
        io.take();
        // At the answer's bound, neither is taken back: the answered one is
        // looked at again at --max-subworker-run, the started one at its end.
        ledger.alarm(Alarm::Lease(answered, 1), T0 + ANSWER_MS, &mut io);
        ledger.alarm(Alarm::Lease(started, 2), T0 + ANSWER_MS, &mut io);
        let effects = io.take();
        assert!(!effects.contains(&Effect::Count(Counted::LeaseExpired)), "{effects:?}");
        assert!(effects.contains(&Effect::SetAlarm(T0 + MAX_RUN_MS, Alarm::Lease(answered, 1))), "{effects:?}");
        assert!(link(&mut ledger, key).unanswered.is_empty());
        assert_eq!(
            (state(&ledger, answered), state(&ledger, started)),
            (Some(TaskState::Running), Some(TaskState::Running))
        );
    }

    #[test]
    fn a_run_taken_when_sent_awaits_no_answer_only_its_start() {
        let (mut ledger, mut io) = (ledger(&[]), Recorder::default());
        let pair = worker(&mut ledger, "process", 1, &["t"]);
        link(&mut ledger, pair).taken_when_sent = true;
        let task_id = admit(&mut ledger, &mut io, task("t", 0, None));
        let effects = io.take();
        // Its first look is at its start's bound, not the answer's.
        assert!(effects.contains(&Effect::SetAlarm(T0 + MAX_RUN_MS, Alarm::Lease(task_id, 1))), "{effects:?}");
        assert_eq!(ledger.get(&task_id).unwrap().dispatch.unwrap().answer_by_ms, None);
        // Past the answer's bound with no answer, it is still running there.
        ledger.alarm(Alarm::Lease(task_id, 1), T0 + ANSWER_MS, &mut io);
        let effects = io.take();
        assert!(!effects.contains(&Effect::Count(Counted::LeaseExpired)), "{effects:?}");
        assert!(link(&mut ledger, pair).unanswered.is_empty());
        assert_eq!(state(&ledger, task_id), Some(TaskState::Running));
        // Its outcome settles it as any other's.
        ledger.collected(pair, vec![outcome(task_id, 1, Ok("3"))], T0 + 5, &mut io);
        assert_eq!(state(&ledger, task_id), None);
    }
}

/// Poison tasks and the tasks that wait for this control plane's worker
/// processes (`crashes.rs`).
mod crashes {
    use super::*;

    #[test]
    fn a_crashed_task_ends_crashed_and_its_run_is_revoked() {
        let mut ledger = ledger(&[]);
        let mut io = Recorder::default();
        let key = worker(&mut ledger, "local-1", 1, &["t"]);
        let task_id = admit(&mut ledger, &mut io, task("t", 3, Some(7)));
        let lease = link(&mut ledger, key).sent[0].1;
        ledger.crashed(task_id, "killed by signal 6 (SIGABRT), 2 times".into(), T0 + 1, &mut io);
        let ended = io.ended();
        assert_eq!(ended.len(), 1, "ended once, its retries not used");
        let error = ended[0].0.error.as_ref().unwrap();
        assert_eq!((ended[0].0.state, error.kind), (TaskState::Failed, FailureKind::Crashed));
        assert!(error.message.contains("SIGABRT"));
        assert_eq!(ended[0].1, vec![7], "its waiter is answered");
        let notes = link(&mut ledger, key).notes.borrow().clone();
        assert!(matches!(&notes[..], [Request::Revoke { task_ids }] if task_ids == &vec![task_id]), "{notes:?}");
        // The run's late outcome is discarded; a second crash report is nothing.
        io.take();
        ledger.collected(key, vec![outcome(task_id, lease, Ok("1"))], T0 + 2, &mut io);
        ledger.crashed(task_id, "again".into(), T0 + 3, &mut io);
        assert!(io.ended().len() == 1 && state(&ledger, task_id).is_none());
    }

    #[test]
    fn crashes_are_counted_per_live_task() {
        let mut ledger = ledger(&[]);
        let mut io = Recorder::default();
        let (a, b) = (admit(&mut ledger, &mut io, task("t", 0, None)), admit(&mut ledger, &mut io, task("t", 0, None)));
        assert_eq!(ledger.count_crash(a), Some(1));
        assert_eq!(ledger.count_crash(a), Some(2));
        assert_eq!(ledger.count_crash(b), Some(1));
        ledger.crashed(a, "twice".into(), T0 + 1, &mut io);
        assert_eq!(ledger.count_crash(a), None, "an ended task counts nothing");
    }

    #[test]
    fn an_awaited_task_waits_for_a_provider_and_fails_once_none_is_awaited() {
        let mut ledger = ledger(&[]);
        let mut io = Recorder::default();
        ledger.set_awaited(["t".to_string()].into_iter().collect(), T0, &mut io);
        assert!(ledger.awaits("t") && !ledger.awaits("u"));
        // Nobody provides it yet: it waits rather than fails.
        let waiting = admit(&mut ledger, &mut io, task("t", 0, None));
        assert_eq!(state(&ledger, waiting), Some(TaskState::Queued));
        assert!(io.ended().is_empty());
        // A worker process that provides it takes it.
        let key = worker(&mut ledger, "local-1", 1, &["t"]);
        ledger.connected(key, T0 + 1, &mut io);
        assert_eq!(state(&ledger, waiting), Some(TaskState::Running), "{:?}", link(&mut ledger, key).sent);
        // Its process dies: the task waits for the restart.
        ledger.link_broken(key, "worker process died", T0 + 2, &mut io);
        assert_eq!(state(&ledger, waiting), Some(TaskState::Queued));
        assert!(io.ended().is_empty());
        // Every worker process given up: after the provider grace, like any
        // task whose provider is gone, it fails, saying nobody provides it.
        ledger.set_awaited(Default::default(), T0 + 3, &mut io);
        assert!(io.ended().is_empty(), "it waits out the grace first");
        ledger.alarm(Alarm::Provider(waiting), T0 + 3 + GRACE_MS, &mut io);
        let ended = io.ended();
        assert_eq!(ended.len(), 1);
        assert!(ended[0].0.error.as_ref().unwrap().message.contains("no worker provides"), "{ended:?}");
    }

    #[test]
    fn tasks_waiting_for_worker_processes_and_taken_back_keep_their_order() {
        let mut ledger = ledger(&[]);
        let mut io = Recorder::default();
        ledger.set_awaited(["t".to_string()].into_iter().collect(), T0, &mut io);
        // Accepted before any worker process registered: they wait in
        // submission order (they were once put first, hence reversed).
        let ids = admit_one_after_another(&mut ledger, &mut io, 3);
        let first = worker(&mut ledger, "local-1", 3, &["t"]);
        ledger.connected(first, T0 + 5, &mut io);
        let sent = |ledger: &mut Ledger<Waiter, FakeLink>, key| -> Vec<TaskId> {
            let link = link(ledger, key);
            link.sent.iter().chain(&link.queued).map(|(task_id, ..)| *task_id).collect()
        };
        assert_eq!(sent(&mut ledger, first), ids);
        // Its process dies with all three: they wait for the next one in
        // the same order, not reversed.
        ledger.link_broken(first, "worker process died", T0 + 6, &mut io);
        assert!(ids.iter().all(|id| state(&ledger, *id) == Some(TaskState::Queued)));
        let second = worker(&mut ledger, "local-2", 3, &["t"]);
        ledger.connected(second, T0 + 7, &mut io);
        assert_eq!(sent(&mut ledger, second), ids);
    }
}
