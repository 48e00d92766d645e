//! The router of a control plane's result port (base+4).

use nng::Message;

use crate::server::endpoint::Replier;
use crate::server::state::{error_reply, Caller, State};
use crate::wire::auth::Role;
use crate::wire::protocol::{decode, ErrorKind, Reply, Request};

/// Who may read tasks, workflows, schedules and limits.
const READERS: &[Role] = &[Role::Client, Role::Operator];

/// Who may change schedules and limits.
const OPERATORS: &[Role] = &[Role::Operator];

/// Routes one request that arrived on the result port; `management_port`
/// is what discovery answers.
pub(crate) fn result_port(state: &State, management_port: u16, replier: Replier, message: Message) {
    let request = match decode::<Request>(&message, state.config.bounds.max_frame_bytes) {
        Ok(request) => request,
        Err(error) => {
            replier.warn_peer("refused a frame", &error);
            return replier.send(&Reply::Error(error.to_reply()));
        }
    };
    let reply = match request {
        Request::Status { task_id } => {
            let Some(replier) = replier.allow(READERS, "read tasks") else { return };
            return replier.send(&state.status(task_id));
        }
        Request::Cancel { task_id } => {
            let Some(replier) = replier.allow(READERS, "cancel tasks") else { return };
            let caller = Caller::of(&replier);
            return state.cancel(task_id, caller, Some(replier));
        }
        Request::WorkflowStatus { workflow_id } => {
            let Some(replier) = replier.allow(READERS, "read workflows") else { return };
            return state.workflow_status(workflow_id, replier);
        }
        Request::CancelWorkflow { workflow_id } => {
            let Some(replier) = replier.allow(READERS, "cancel workflows") else { return };
            let caller = Caller::of(&replier);
            return state.cancel_workflow(workflow_id, caller, replier);
        }
        Request::Schedules => {
            let Some(replier) = replier.allow(READERS, "list schedules") else { return };
            return replier.send(&Reply::Schedules(state.schedule_statuses()));
        }
        Request::PauseSchedule { task_name, paused } => {
            let Some(replier) = replier.allow(OPERATORS, "pause or resume schedules") else { return };
            return replier.send(&state.pause_schedule(&task_name, paused));
        }
        Request::Workers => {
            let Some(replier) = replier.allow(READERS, "list workers") else { return };
            return replier.send(&Reply::Workers(state.cluster_status()));
        }
        Request::Tasks => {
            let Some(replier) = replier.allow(READERS, "list tasks") else { return };
            return replier.send(&Reply::Tasks(state.registered_tasks()));
        }
        Request::TaskLimits => {
            let Some(replier) = replier.allow(READERS, "list task limits") else { return };
            return replier.send(&Reply::TaskLimits(state.task_limit_statuses()));
        }
        // Changing a limit is an operator's action, like pausing a schedule.
        Request::SetTaskLimit { task_name, limit } => {
            let Some(replier) = replier.allow(OPERATORS, "change task limits") else { return };
            return replier.send(&state.set_task_limit(&task_name, limit));
        }
        Request::ClearTaskLimit { task_name } => {
            let Some(replier) = replier.allow(OPERATORS, "change task limits") else { return };
            return replier.send(&state.clear_task_limit(&task_name));
        }
        Request::Discover => Reply::Discovered { management_port },
        Request::Submit(_) | Request::Batch(_) | Request::SubmitWorkflow(_) => error_reply(
            ErrorKind::WrongEndpoint,
            "tasks and workflows are submitted to a priority port (base+0 to base+3), not the result port".into(),
        ),
        _ => error_reply(
            ErrorKind::WrongEndpoint,
            format!("subworkers register on the management port ({})", state.config.base.at_port(management_port)),
        ),
    };
    replier.send(&reply);
}
