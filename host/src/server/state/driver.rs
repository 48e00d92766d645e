//! Carries out the ledger's effects in a serving process: the worker
//! pool, the timers, the subworker links, the journal, the result cache,
//! the callbacks, the dashboard's monitor, and the replies (queued in an
//! [`Outbox`], sent once the task lock is released).

use std::sync::atomic::Ordering;

use crate::cluster::link::Link;
use crate::ledger::{Alarm, Counted, Effects, LiveTask, Taken};
use crate::server::cache::{args_digest, ArgsKey, HASH_LATER_BYTES};
use crate::server::endpoint::{encode_reply, Replier};
use crate::server::monitor::TaskSummary;
use crate::wire::protocol::{encode_message, Forwarded, Notice, Reply, Request, TaskId, TaskReport};
use crate::workflow::registry::Workflows;

use super::{Job, Outbox, State};

/// The effects of one event, carried out as the ledger asks for them.
pub(crate) struct Driver<'a> {
    state: &'a State,
    outbox: &'a mut Outbox,
    workflows: &'a Workflows<Replier>,
    /// Workflow members that ended: their workflows move on once the
    /// ledger's event is over.
    pub(super) members_ended: Vec<TaskReport>,
}

impl<'a> Driver<'a> {
    /// The driver of one event: replies go to `outbox`; `workflows` says
    /// which ended tasks are members.
    pub(super) fn new(state: &'a State, outbox: &'a mut Outbox, workflows: &'a Workflows<Replier>) -> Driver<'a> {
        Driver { state, outbox, workflows, members_ended: Vec::new() }
    }
}

impl Effects<Replier, Link> for Driver<'_> {
    fn accepted(&mut self, task: &LiveTask<Replier>, later: Option<u64>) {
        self.state.monitor.accepted(&task.report);
        self.state.durable.record_accepted(task, later);
    }

    fn changed(&mut self, task: &LiveTask<Replier>) {
        self.state.monitor.changed(|| TaskSummary::live(task));
    }

    fn progressed(&mut self, task: &LiveTask<Replier>, retry_at_ms: Option<u64>) {
        if retry_at_ms.is_some() {
            self.state.monitor.retrying(&task.report);
        }
        self.state.durable.record_progress(task, retry_at_ms);
    }

    fn run_here(&mut self, task: &LiveTask<Replier>) -> bool {
        let report = &task.report;
        let Some(loaded) = self.state.registry.get(&report.task_name) else { return false };
        let job = Job {
            task_id: report.task_id,
            decl: loaded.decl,
            args: task.args.clone(),
            cancelled: task.cancelled.clone(),
            stored_before: match task.waiters.is_empty() {
                true => self.state.durable.last_record(),
                // Someone holds a request until the outcome: the task's
                // acceptance may wait for it, to be written in one commit
                // (docs/durability.md, "A blocking call's commits").
                false => 0,
            },
        };
        // A thread, if one is owed, is woken once the task lock is
        // released (the outbox).
        match self.state.pool.push_quietly(report.priority, job) {
            Ok(owes_wake) => {
                if owes_wake {
                    self.outbox.queued_on(&self.state.pool);
                }
                true
            }
            Err(_) => false,
        }
    }

    fn set_alarm(&mut self, due_ms: u64, alarm: Alarm) {
        self.state.timers.set(due_ms, alarm);
    }

    fn cancel_alarm(&mut self, alarm: Alarm) {
        self.state.timers.cancel(alarm);
    }

    fn ended(&mut self, task: LiveTask<Replier>) {
        let state = self.state;
        let report = task.report;
        state.monitor.finished(&report, &task.args);
        if let Some(callback) = task.plan.callback {
            let notice = Notice { report: report.clone(), data: callback.data };
            state.callbacks.push(callback.address, notice, task.tenant);
        }
        // What tells a later submission under this id whether it is the
        // same task: the digest of its arguments, stored with its outcome
        // in durable mode; else large arguments are held until their digest
        // is computed after the reply has left (`State::hash_ended`). A
        // cache that keeps nothing (a subworker's, a worker process's:
        // results are kept by their control plane) needs no digest.
        let keeps_nothing = state.config.result_cache_size == 0 && !state.durable.is_on();
        let (args, record) = if keeps_nothing {
            (ArgsKey::Digest([0; 16]), 0)
        } else if state.durable.is_on() || task.args.len() < HASH_LATER_BYTES {
            let digest = args_digest(&task.args);
            (ArgsKey::Digest(digest), state.durable.record_finished(&report, digest))
        } else {
            if !state.unhashed.hold(report.task_id, task.args.clone()) {
                // Too much is held already: hashed here, as small ones are.
                state.hash_ended();
            }
            (ArgsKey::Held(task.args), 0)
        };
        if self.workflows.member_of(&report.task_id).is_some() {
            self.members_ended.push(report.clone());
        }
        let reply = Reply::Report(report);
        if !task.waiters.is_empty() {
            state.durable.answer_final(task.waiters, encode_reply(&reply), self.outbox);
        }
        let Reply::Report(report) = reply else { unreachable!() };
        let mut cache = state.cache.lock().expect("cache lock");
        cache.insert_recorded(report, args, record);
        state.durable.forget_dropped(&mut cache);
    }

    fn answer(&mut self, waiters: Vec<Replier>, report: TaskReport) {
        if !waiters.is_empty() {
            self.outbox.0.push((waiters, encode_reply(&Reply::Report(report))));
        }
    }

    fn dispatch(&mut self, link: &mut Link, run: Forwarded<'_>) -> Taken {
        link.queue(run);
        if link.taken_when_sent() {
            Taken::WhenSent
        } else {
            Taken::WhenAnswered
        }
    }

    fn flush(&mut self, link: &mut Link) -> Result<(), String> {
        link.flush().map_err(|(error, unsent)| format!("{error} ({} runs unsent)", unsent.len()))
    }

    fn note(&mut self, link: &Link, request: Request) {
        link.note(encode_message(&request));
    }

    fn collect(&mut self, link: &Link) {
        if let Err(error) = link.collect() {
            tracing::debug!(%error, "could not ask a subworker for outcomes");
        }
    }

    fn unanswered(&mut self, link: &mut Link, task_id: TaskId) {
        link.abandon_dispatch(task_id);
    }

    fn reset(&mut self, link: &mut Link) {
        link.reset();
    }

    fn stop_run(&mut self, task: &LiveTask<Replier>) {
        task.cancelled.store(true, Ordering::SeqCst);
    }

    fn count(&mut self, counted: Counted) {
        let delivery = &self.state.delivery;
        let counter = match counted {
            Counted::RevokedReport => &delivery.revoked_reports,
            Counted::HandedBack => &delivery.handed_back,
            Counted::LeaseExpired => &delivery.leases_expired,
            Counted::BadResult => &self.state.refusals.bad_results,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
