//! The ledger's side of workflows: accepting one, creating its members as
//! ordinary tasks when they become ready, feeding it the ends of its member
//! tasks (from [`State::finish`]), cancelling it, answering its status,
//! and taking it up again after a durable restart. The bookkeeping itself
//! is the pure state machine of `workflow/machine.rs`.

use std::collections::VecDeque;

use tracing::{debug, info, warn};

use super::{Caller, Outbox, State, Tasks};
use crate::server::bounds::{millis, Bound};
use crate::server::cache::{args_digest, Lookup};
use crate::server::endpoint::Replier;
use crate::server::journal::{Record, RecoveredWorkflow, WorkflowRecord, CANCEL_STEP};
use crate::wire::auth::Role;
use crate::wire::protocol::{
    now_ms, ErrorKind, ErrorReply, Reply, RetryPolicy, Submit, TaskId, TaskReport, TaskState, WorkflowId,
    WorkflowSubmit,
};
use crate::workflow::machine::{validate, Bounds, Machine, NextSteps, Outcome, Submission};
use crate::workflow::registry::Entry;
use crate::workflow::{WorkflowNode, MAX_DEPTH, MAX_MEMBERS};

/// Bytes kept free in a frame for what surrounds a member's arguments.
const FRAME_MARGIN: usize = 4096;

impl State {
    fn workflow_bounds(&self) -> Bounds {
        let bounds = &self.config.bounds;
        Bounds {
            max_members: MAX_MEMBERS.min(bounds.max_queued_tasks),
            max_depth: MAX_DEPTH,
            max_bytes: bounds.max_frame_bytes.saturating_sub(FRAME_MARGIN),
            max_retries: bounds.max_retries,
            max_delay_ms: millis(bounds.max_countdown),
        }
    }

    /// Answers a workflow submission: in durable mode once the workflow is
    /// stored.
    pub(crate) fn submit_workflow_for(&self, submit: WorkflowSubmit, replier: Replier) {
        let owner = replier.key_id();
        let reply = self.submit_workflow(submit, owner);
        self.durable.acknowledge(replier, reply);
    }

    /// Accepts a workflow submitted by `owner`: answered with its status.
    /// The same id with the same description again answers for the one
    /// already accepted.
    fn submit_workflow(&self, submit: WorkflowSubmit, owner: Option<[u8; 8]>) -> Reply {
        let bad = |kind, message: String| Reply::Error(ErrorReply::new(kind, message));
        if !self.accepting.load(std::sync::atomic::Ordering::SeqCst) {
            let message = format!("'{}' is shutting down and takes no new workflows", self.config.worker_id);
            return bad(ErrorKind::ShuttingDown, message);
        }
        let workflow_id = submit.workflow_id;
        let bounds = self.workflow_bounds();
        let parents = match validate(&submit, &bounds) {
            Ok(parents) => parents,
            Err(why) => return bad(ErrorKind::BadRequest, format!("workflow {workflow_id} refused: {why}")),
        };
        let encoded = postcard::to_stdvec(&submit).unwrap_or_default();
        let digest = args_digest(&encoded);
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        self.sweep_workflows(&mut tasks, now_ms());
        if let Some(existing) = tasks.workflows.get(&workflow_id) {
            if existing.digest != digest {
                let message =
                    format!("workflow id {workflow_id} is already used by another workflow: choose a fresh id");
                return bad(ErrorKind::IdConflict, message);
            }
            return self.workflow_report(&tasks, workflow_id);
        }
        if let Some(refusal) = self.workflow_refusal(&tasks, &submit, encoded.len()) {
            return Reply::Error(refusal);
        }
        let created_ms = now_ms();
        self.durable.write(Record::WorkflowAccepted(
            workflow_id,
            Box::new(WorkflowRecord { submit: submit.clone(), owner, created_ms }),
        ));
        let mut machine = Machine::new(submit, parents, bounds.max_bytes);
        let effects = machine.start();
        let mut entry = Entry::new(machine, owner, created_ms, digest, encoded.len());
        entry.record = self.durable.last_record();
        tasks.workflows.insert(workflow_id, entry);
        debug!(%workflow_id, "workflow accepted");
        self.apply(&mut tasks, workflow_id, effects, &mut outbox);
        let reply = self.workflow_report(&tasks, workflow_id);
        drop(tasks);
        outbox.deliver();
        reply
    }

    /// Why a valid workflow cannot be taken now: too many live ones, too
    /// many bytes, or a task nobody provides.
    fn workflow_refusal(&self, tasks: &Tasks, submit: &WorkflowSubmit, bytes: usize) -> Option<ErrorReply> {
        let bounds = &self.config.bounds;
        let (live, live_bytes) = tasks.workflows.live();
        let busy = |what: String, bound: Bound| Some(self.busy(bound, &what));
        if live >= bounds.max_queued_tasks {
            return busy(format!("{live} workflows are running"), Bound::QueuedTasks);
        }
        if (live_bytes + bytes) as u64 > bounds.max_queued_bytes {
            return busy(format!("running workflows hold {live_bytes} bytes"), Bound::QueuedBytes);
        }
        for node in &submit.nodes {
            let WorkflowNode::Task(step) = node else { continue };
            let name = &step.task_name;
            // Provided here, by a live subworker, or by this control plane's
            // worker processes (which may still be starting or restarting).
            let here = tasks.ledger.runs_here(name) || tasks.ledger.awaits(name);
            if here || tasks.ledger.cluster().provider(name).is_some() {
                continue;
            }
            if let Some(refusal) = self.restart_window_refusal(name) {
                return Some(refusal);
            }
            return Some(ErrorReply::new(ErrorKind::UnknownTask, self.nobody_provides(tasks, name)));
        }
        None
    }

    /// Carries out what the workflow's machine asked for, and what that in
    /// turn makes it ask for: members to create, tasks to cancel, its end.
    fn apply(&self, tasks: &mut Tasks, workflow_id: WorkflowId, effects: NextSteps, outbox: &mut Outbox) {
        let mut queue = VecDeque::from([effects]);
        while let Some(effects) = queue.pop_front() {
            tasks.workflows.note(workflow_id, &effects);
            let owner = tasks.workflows.get(&workflow_id).and_then(|e| e.owner);
            // Members count against their key's share of the queue.
            let by = super::Admitted { owner, tenant: owner.map(crate::wire::auth::Tenant::Key) };
            for Submission { node, task_id, step } in effects.submit {
                let Some(entry) = tasks.workflows.get_mut(&workflow_id) else { break };
                if entry.machine.state().is_final() {
                    // It ended meanwhile (a member created before this one
                    // failed at once): this member is never created.
                    entry.machine.member_not_created(node);
                    tasks.workflows.forget_member(&task_id);
                    continue;
                }
                let retry = step.max_retries.map(|max_retries| RetryPolicy {
                    max_retries,
                    delay_ms: step.retry_delay_ms.unwrap_or(1000),
                    factor: super::DEFAULT_RETRY_FACTOR,
                    max_delay_ms: super::DEFAULT_MAX_RETRY_DELAY_MS.max(step.retry_delay_ms.unwrap_or(0)),
                });
                let submit = Submit {
                    task_id,
                    task_name: step.task_name,
                    args: step.args,
                    priority: step.priority,
                    timeout_ms: step.timeout_ms,
                    retry,
                    ..Default::default()
                };
                match self.admit(tasks, submit, None, by, None, outbox) {
                    Err((refusal, _)) => {
                        tasks.workflows.forget_member(&task_id);
                        let message = format!("member {node} could not be created: {}", refusal.message);
                        let outcome = Box::new(Outcome::Failed(failure(&message)));
                        self.durable.write(Record::WorkflowStep(workflow_id, node, outcome));
                        if let Some(entry) = tasks.workflows.get_mut(&workflow_id) {
                            queue.push_back(entry.machine.member_refused(node, message));
                        }
                    }
                    // A task of that id had already ended (its result is
                    // cached): its end is the member's.
                    Ok(_) if tasks.ledger.get(&task_id).is_none() && tasks.workflows.member_of(&task_id).is_some() => {
                        let cached = self.cache.lock().expect("cache lock").get(&task_id);
                        if let Lookup::Found(report) = cached {
                            self.member_ended(tasks, &report, outbox);
                        }
                    }
                    Ok(_) => {}
                }
            }
            for task_id in effects.cancel {
                self.drive(tasks, outbox, |ledger, io| ledger.cancel(task_id, None, now_ms(), io));
            }
            if effects.ended {
                let now = now_ms();
                let waiters = tasks.workflows.finished(workflow_id, now);
                self.durable.write(Record::WorkflowEnded(workflow_id, now));
                if let Some(entry) = tasks.workflows.get(&workflow_id) {
                    info!(%workflow_id, state = entry.machine.state().as_str(), "workflow ended");
                }
                if !waiters.is_empty() {
                    let reply = self.workflow_report(tasks, workflow_id);
                    let message = crate::server::endpoint::encode_reply(&reply);
                    self.durable.answer_final(waiters, message, outbox);
                }
                self.sweep_workflows(tasks, now);
            }
        }
        // What it shows now is shown once the records written for it (its
        // members' ends, its own) are stored.
        let record = self.durable.last_record();
        if let Some(entry) = tasks.workflows.get_mut(&workflow_id) {
            entry.record = record;
        }
        tasks.workflows.recount(&workflow_id);
    }

    /// Called by [`State::finish`] for every task that ends: a workflow's
    /// member moves its workflow on.
    pub(super) fn member_ended(&self, tasks: &mut Tasks, report: &TaskReport, outbox: &mut Outbox) {
        let Some((workflow_id, node)) = tasks.workflows.member_of(&report.task_id) else { return };
        tasks.workflows.forget_member(&report.task_id);
        let error = || report.error.clone().unwrap_or_else(|| failure("ended without a result"));
        let outcome = match report.state {
            TaskState::Succeeded => Outcome::Succeeded(report.result.clone().unwrap_or_else(|| b"null".to_vec())),
            TaskState::TimedOut => Outcome::TimedOut(error()),
            TaskState::Cancelled => Outcome::Cancelled(error()),
            _ => Outcome::Failed(error()),
        };
        let Some(entry) = tasks.workflows.get_mut(&workflow_id) else { return };
        let running = !entry.machine.state().is_final();
        let effects = entry.machine.member_ended(node, outcome.clone());
        if running {
            self.durable.write(Record::WorkflowStep(workflow_id, node, Box::new(outcome)));
        }
        let abort = self.past_gathered_bound(tasks, workflow_id);
        self.apply(tasks, workflow_id, effects, outbox);
        if let Some(effects) = abort {
            self.apply(tasks, workflow_id, effects, outbox);
        }
    }

    /// When the results running workflows gather pass `--max-queued-bytes`
    /// with what `workflow_id` just gathered, it fails, saying so (the
    /// failure is stored as its stop step): the effects of that.
    fn past_gathered_bound(&self, tasks: &mut Tasks, workflow_id: WorkflowId) -> Option<NextSteps> {
        let bound = self.config.bounds.max_queued_bytes;
        let live_bytes = tasks.workflows.recount(&workflow_id);
        let entry = tasks.workflows.get_mut(&workflow_id)?;
        let held = entry.machine.held();
        if live_bytes as u64 <= bound || held == 0 || entry.machine.state().is_final() {
            return None;
        }
        let message = format!(
            "the results its groups gathered ({held} bytes) bring what running workflows hold to {live_bytes} bytes, more than --max-queued-bytes ({bound}) allows: gather fewer or smaller results at once, or raise --max-queued-bytes"
        );
        warn!(%workflow_id, "workflow failed: {message}");
        let effects = entry.machine.abort(message.clone());
        self.durable.write(Record::WorkflowStep(
            workflow_id,
            CANCEL_STEP,
            Box::new(Outcome::Failed(failure(&message))),
        ));
        tasks.workflows.recount(&workflow_id);
        Some(effects)
    }

    /// Answers `replier` with a workflow's status, or why it is not known:
    /// in durable mode once every record it reflects is stored, so that no
    /// member is shown ended (nor the workflow) before a crash could no
    /// longer take that back.
    pub(crate) fn workflow_status(&self, workflow_id: WorkflowId, replier: Replier) {
        let mut tasks = self.lock();
        self.sweep_workflows(&mut tasks, now_ms());
        let reply = self.workflow_report(&tasks, workflow_id);
        let record = tasks.workflows.get(&workflow_id).map_or(0, |entry| entry.record);
        drop(tasks);
        self.durable.after(record, move || replier.send(&reply));
    }

    fn workflow_report(&self, tasks: &Tasks, workflow_id: WorkflowId) -> Reply {
        match tasks.workflows.report(workflow_id, |task_id| tasks.ledger.get(&task_id).map(|t| t.reported_state())) {
            Some(report) => Reply::Workflow(report),
            None => Reply::Error(ErrorReply::new(
                ErrorKind::UnknownWorkflowId,
                format!(
                    "workflow {workflow_id} is unknown to '{}' (or finished long enough ago to be forgotten: --result-cache-ttl, --result-cache-size)",
                    self.config.worker_id
                ),
            )),
        }
    }

    /// Cancels a workflow: pending members never run, queued ones are
    /// cancelled, running ones have their cancellation flag set.
    /// The answer, the workflow's status, goes to `replier` once its
    /// cancellation is stored.
    pub(crate) fn cancel_workflow(&self, workflow_id: WorkflowId, caller: Caller, replier: Replier) {
        let reply = self.cancel_workflow_now(workflow_id, caller);
        let record = self.lock().workflows.get(&workflow_id).map_or(0, |entry| entry.record);
        self.durable.after(record, move || replier.send(&reply));
    }

    fn cancel_workflow_now(&self, workflow_id: WorkflowId, caller: Caller) -> Reply {
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let Some(entry) = tasks.workflows.get_mut(&workflow_id) else {
            return self.workflow_report(&tasks, workflow_id);
        };
        if caller.role == Some(Role::Client) && entry.owner != caller.key_id {
            return Reply::Error(ErrorReply::new(
                ErrorKind::Forbidden,
                format!("workflow {workflow_id} was submitted with another key: only that key or the operator's may cancel it"),
            ));
        }
        if entry.machine.state().is_final() {
            return Reply::Error(ErrorReply::new(
                ErrorKind::AlreadyFinished,
                format!("workflow {workflow_id} already ended ({}); nothing to cancel", entry.machine.state().as_str()),
            ));
        }
        let effects = entry.machine.cancel("the workflow was cancelled by a client".into());
        self.durable.write(Record::WorkflowStep(
            workflow_id,
            CANCEL_STEP,
            Box::new(Outcome::Cancelled(failure("cancelled"))),
        ));
        self.apply(&mut tasks, workflow_id, effects, &mut outbox);
        let reply = self.workflow_report(&tasks, workflow_id);
        drop(tasks);
        outbox.deliver();
        reply
    }

    /// A client cancels `task_id`: if it is a workflow's member, its
    /// workflow is cancelled with it (the other live members too).
    pub(super) fn cancel_member_workflow(&self, tasks: &mut Tasks, task_id: TaskId, outbox: &mut Outbox) {
        let Some((workflow_id, node)) = tasks.workflows.member_of(&task_id) else { return };
        let Some(entry) = tasks.workflows.get_mut(&workflow_id) else { return };
        let message = format!("its member {node} (task {task_id}) was cancelled by a client");
        let effects = entry.machine.cancel(message);
        if effects.ended {
            self.durable.write(Record::WorkflowStep(
                workflow_id,
                CANCEL_STEP,
                Box::new(Outcome::Cancelled(failure("cancelled"))),
            ));
        }
        self.apply(tasks, workflow_id, effects, outbox);
    }

    /// Hands a workflow record to the durable store, if there is one.
    /// Forgets the finished workflows past their age or beyond the count
    /// kept, in the store too.
    pub(super) fn sweep_workflows(&self, tasks: &mut Tasks, now: u64) {
        let forgotten = tasks.workflows.sweep(now);
        if !forgotten.is_empty() {
            self.durable.write(Record::WorkflowForget(forgotten));
        }
    }

    /// After a durable restart (tasks already restored): rebuilds each
    /// workflow from its description and the member outcomes recorded,
    /// then goes on: members whose task ended meanwhile are fed its end,
    /// members whose task was never stored are created again.
    pub(super) fn restore_workflows(&self, recovered: Vec<RecoveredWorkflow>) {
        let bounds = self.workflow_bounds();
        let mut outbox = Outbox::default();
        let mut tasks = self.lock();
        let count = recovered.len();
        for RecoveredWorkflow { workflow_id, record, steps, finished_ms } in recovered {
            let WorkflowRecord { submit, owner, created_ms } = record;
            let encoded = postcard::to_stdvec(&submit).unwrap_or_default();
            let parents = match validate(&submit, &bounds) {
                Ok(parents) => parents,
                Err(why) => {
                    warn!(%workflow_id, "a stored workflow no longer fits this control plane's bounds, dropped: {why}");
                    self.durable.write(Record::WorkflowForget(vec![workflow_id]));
                    continue;
                }
            };
            let mut machine = Machine::new(submit, parents, bounds.max_bytes);
            let mut made: rustc_hash::FxHashMap<u32, Submission> = rustc_hash::FxHashMap::default();
            let remember = |effects: NextSteps, made: &mut rustc_hash::FxHashMap<u32, Submission>| {
                for submission in effects.submit {
                    made.insert(submission.node, submission);
                }
            };
            remember(machine.start(), &mut made);
            let mut stopped = None;
            let mut pending: Vec<(u32, Outcome)> = Vec::new();
            for (node, outcome) in steps {
                if node == CANCEL_STEP {
                    stopped = Some(outcome);
                } else {
                    pending.push((node, outcome));
                }
            }
            // In node order: whatever must end before a member starts has a
            // smaller node (depth-first pre-order), so each member is live
            // when its outcome comes.
            pending.sort_by_key(|(node, _)| *node);
            for (node, outcome) in pending {
                remember(machine.member_ended(node, outcome), &mut made);
            }
            match stopped {
                // Failed by a bound of the control plane.
                Some(Outcome::Failed(error)) => drop(machine.abort(error.message)),
                Some(_) => drop(machine.cancel("the workflow was cancelled by a client".into())),
                None => {}
            }
            let ended = machine.state().is_final();
            let live: Vec<(u32, TaskId)> = machine.live_members().collect();
            let digest = args_digest(&encoded);
            let entry = Entry::new(machine, owner, created_ms, digest, encoded.len());
            tasks.workflows.insert(workflow_id, entry);
            let note = NextSteps {
                submit: live.iter().filter_map(|(node, _)| made.get(node).cloned()).collect(),
                ..Default::default()
            };
            tasks.workflows.note(workflow_id, &note);
            if let Some(at) = finished_ms.filter(|_| ended) {
                // It had ended: kept for its status, as it was. A member still
                // running at the crash (cancelled as the workflow failed) stops.
                for (_, task_id) in live {
                    self.drive(&mut tasks, &mut outbox, |ledger, io| ledger.cancel(task_id, None, now_ms(), io));
                }
                tasks.workflows.finished(workflow_id, at);
                continue;
            }
            if ended {
                let effects = NextSteps {
                    cancel: live.iter().map(|(_, task_id)| *task_id).collect(),
                    ended: true,
                    ..Default::default()
                };
                self.apply(&mut tasks, workflow_id, effects, &mut outbox);
                continue;
            }
            for (node, task_id) in live {
                if tasks.ledger.get(&task_id).is_some() {
                    continue;
                }
                let still_live = tasks.workflows.member_of(&task_id).is_some()
                    && tasks.workflows.get(&workflow_id).is_some_and(|e| !e.machine.state().is_final());
                let cached = self.cache.lock().expect("cache lock").get(&task_id);
                match cached {
                    // It ended before the restart without its workflow hearing of it.
                    Lookup::Found(report) => self.member_ended(&mut tasks, &report, &mut outbox),
                    // It was never stored: it is created again.
                    _ if still_live => {
                        if let Some(submission) = made.remove(&node) {
                            let effects = NextSteps { submit: vec![submission], ..Default::default() };
                            self.apply(&mut tasks, workflow_id, effects, &mut outbox);
                        }
                    }
                    _ => {}
                }
            }
        }
        drop(tasks);
        outbox.deliver();
        if count > 0 {
            info!(workflows = count, "durable mode: workflows taken up again after the restart");
        }
    }
}

fn failure(message: &str) -> crate::wire::protocol::TaskError {
    crate::wire::protocol::TaskError { kind: crate::wire::protocol::FailureKind::Error, message: message.to_string() }
}
