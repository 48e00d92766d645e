//! The router of the four priority ports.

use nng::Message;

use crate::server::endpoint::Replier;
use crate::server::state::{error_reply, Caller, State};
use crate::wire::auth::Role;
use crate::wire::protocol::{decode, ErrorKind, Reply, Request, DISPATCH_OVERHEAD, MAX_CALLS_PER_FRAME};

/// Routes one request that arrived on a priority port.
pub(crate) fn task_port(state: &State, replier: Replier, message: Message) {
    // A subworker takes a run of a submission at the bound with what its
    // control plane adds to it.
    let bound = state.config.bounds.max_frame_bytes;
    let limit = if state.config.is_subworker() { bound.saturating_add(DISPATCH_OVERHEAD) } else { bound };
    let request = match decode::<Request>(&message, limit) {
        Ok(request) => request,
        Err(error) => {
            replier.warn_peer("refused a frame", &error);
            return replier.send(&Reply::Error(error.to_reply()));
        }
    };
    if state.config.is_subworker() {
        subworker(state, replier, request)
    } else {
        control_plane(state, replier, request)
    }
}

/// A control plane takes tasks, batches and workflows from clients.
fn control_plane(state: &State, replier: Replier, request: Request) {
    const SUBMITTERS: &[Role] = &[Role::Client, Role::Operator];
    match request {
        Request::Submit(submit) => {
            let Some(replier) = replier.allow(SUBMITTERS, "submit tasks here") else { return };
            state.submit(submit, replier)
        }
        Request::Batch(submits) => {
            let Some(replier) = replier.allow(SUBMITTERS, "submit tasks here") else { return };
            state.submit_batch(submits, replier)
        }
        Request::Calls(calls) => {
            let Some(replier) = replier.allow(SUBMITTERS, "submit tasks here") else { return };
            if let Some(count) = calls.calls.over {
                let message = format!(
                    "a Calls frame carries at most {MAX_CALLS_PER_FRAME} calls, not {count}: none of them was submitted; send them in smaller frames"
                );
                replier.warn_peer("refused a frame", &message);
                return replier.send(&error_reply(ErrorKind::BadRequest, message));
            }
            state.submit_calls(calls, replier)
        }
        Request::SubmitWorkflow(workflow) => {
            let Some(replier) = replier.allow(SUBMITTERS, "submit workflows here") else { return };
            state.submit_workflow_for(workflow, replier)
        }
        _ => {
            let message = format!(
                "a task port takes only submissions: status and cluster queries go to the result port ({})",
                state.config.base.result_address()
            );
            replier.send(&error_reply(ErrorKind::WrongEndpoint, message))
        }
    }
}

/// A subworker takes its control plane's runs, each under a lease (their
/// outcomes wait to be collected), and hears here which runs it took back
/// or cancelled. Workflows are tracked by a control plane, not here.
fn subworker(state: &State, replier: Replier, request: Request) {
    // Only its control plane, which seals its link with the control key
    // for this subworker (a worker key holder cannot speak for it).
    const CONTROL: &[Role] = &[Role::Control];
    match request {
        Request::Submit(submit) => {
            let Some(replier) = replier.allow(CONTROL, "submit tasks here") else { return };
            state.submit(submit, replier)
        }
        Request::Batch(submits) => {
            let Some(replier) = replier.allow(CONTROL, "submit tasks here") else { return };
            state.submit_batch(submits, replier)
        }
        Request::Dispatch(runs) => {
            let Some(replier) = replier.allow(CONTROL, "submit tasks here") else { return };
            // Outcomes not yet collected are bounded like the tasks behind
            // them: a peer that dispatches and never collects is refused,
            // not remembered without end.
            let uncollected = state.collector.pending().saturating_add(runs.len());
            if uncollected > state.config.bounds.max_queued_tasks {
                let message = format!(
                    "{uncollected} outcomes would wait to be collected, more than --max-queued-tasks ({}): collect them first",
                    state.config.bounds.max_queued_tasks
                );
                return replier.send(&error_reply(ErrorKind::Busy, message));
            }
            let owner = replier.key_id();
            // Queued here before the answer, so that the next frame (sent on
            // the answer, and served on another context) queues behind them:
            // first come, first served within a priority.
            for run in runs {
                let answer = state.collector.replier_for(run.submit.task_id, run.lease);
                state.submit_leased(run.submit, Some(run.lease), owner, answer);
            }
            replier.send(&Reply::Done);
        }
        Request::Collect => {
            let Some(replier) = replier.allow(CONTROL, "collect outcomes here") else { return };
            state.collector.collect(replier)
        }
        Request::HandBack { task_ids } => {
            let Some(replier) = replier.allow(CONTROL, "ask runs back here") else { return };
            state.hand_back_unstarted(task_ids, "its control plane asked for it back, for an idle worker");
            replier.send(&Reply::Done)
        }
        Request::Revoke { task_ids } => {
            let Some(replier) = replier.allow(CONTROL, "revoke tasks here") else { return };
            state.revoke(&task_ids, Caller::of(&replier));
            replier.send(&Reply::Done)
        }
        Request::Cancel { task_id } => {
            let Some(replier) = replier.allow(CONTROL, "cancel tasks here") else { return };
            let caller = Caller::of(&replier);
            state.cancel(task_id, caller, Some(replier))
        }
        _ => replier.send(&error_reply(
            ErrorKind::WrongEndpoint,
            "a subworker's ports take only submissions: query the control plane".to_string(),
        )),
    }
}
