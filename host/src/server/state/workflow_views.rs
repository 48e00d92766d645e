//! What the HTTP API and the dashboard read of workflows besides the
//! protocol's status: a wait for one's end that is answered when it ends
//! (no polling), and short summaries of the newest ones for the dashboard's
//! table. The task lock is held only while copying.

use super::State;
use crate::server::endpoint::Replier;
use crate::wire::protocol::now_ms;
use crate::workflow::{MemberState, WorkflowId, WorkflowState};

/// The longest result or failure text a summary carries, in bytes.
const PREVIEW_BYTES: usize = 160;

/// One row of the dashboard's workflows table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkflowSummary {
    pub(crate) workflow_id: WorkflowId,
    pub(crate) state: WorkflowState,
    /// Members that ended (succeeded, failed, timed out, cancelled, skipped).
    pub(crate) done: usize,
    /// Members in all.
    pub(crate) total: usize,
    pub(crate) created_ms: u64,
    pub(crate) finished_ms: Option<u64>,
    /// The start of the result's JSON text, once succeeded.
    pub(crate) result: Option<String>,
    /// The start of the first failure's message, with its member's task name.
    pub(crate) failure: Option<(Option<String>, String)>,
}

/// `text` cut to at most [`PREVIEW_BYTES`] on a character boundary, with
/// an ellipsis when cut.
fn preview(text: &str) -> String {
    if text.len() <= PREVIEW_BYTES {
        return text.to_string();
    }
    let mut end = PREVIEW_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl State {
    /// Answers `replier` with the workflow's status when it ends, or at
    /// once when it has ended or is unknown: the HTTP API's wait.
    pub(crate) fn wait_workflow(&self, workflow_id: WorkflowId, replier: Replier) {
        let mut tasks = self.lock();
        self.sweep_workflows(&mut tasks, now_ms());
        if let Some(entry) = tasks.workflows.get_mut(&workflow_id) {
            if entry.finished_ms.is_none() {
                // Waits that gave up leave, so that waiting again and again
                // on a long workflow leaves no trail.
                entry.waiters.retain(|waiter| !waiter.is_abandoned());
                entry.waiters.push(replier);
                return;
            }
        }
        drop(tasks);
        self.workflow_status(workflow_id, replier);
    }

    /// A count of the changes a workflow summary could show (it moves when
    /// a workflow is accepted, a member is created or ends, or one ends).
    pub(crate) fn workflow_generation(&self) -> u64 {
        self.lock().workflows.generation()
    }

    /// The number of workflows known, the newest `limit` of them (by
    /// acceptance time) summarized, and the durable record they reflect:
    /// they may be shown once it is stored ([`State::is_stored`]).
    pub(crate) fn workflow_summaries(&self, limit: usize) -> (usize, Vec<WorkflowSummary>, u64) {
        let mut tasks = self.lock();
        self.sweep_workflows(&mut tasks, now_ms());
        let mut newest: Vec<(u64, WorkflowId)> =
            tasks.workflows.iter().map(|(id, entry)| (entry.created_ms, id)).collect();
        let total = newest.len();
        let by_age = |a: &(u64, WorkflowId), b: &(u64, WorkflowId)| b.cmp(a);
        if newest.len() > limit && limit > 0 {
            newest.select_nth_unstable_by(limit - 1, by_age);
        }
        newest.truncate(limit);
        newest.sort_unstable_by(by_age);
        let record = newest.iter().filter_map(|(_, id)| tasks.workflows.get(id)).map(|e| e.record).max();
        let rows = newest
            .into_iter()
            .filter_map(|(_, id)| {
                let entry = tasks.workflows.get(&id)?;
                let machine = &entry.machine;
                let members = machine.members(|_| None);
                let done = members
                    .iter()
                    .filter(|(_, _, _, state)| {
                        !matches!(
                            state,
                            MemberState::Pending | MemberState::Queued | MemberState::Running | MemberState::Retrying
                        )
                    })
                    .count();
                Some(WorkflowSummary {
                    workflow_id: id,
                    state: machine.state(),
                    done,
                    total: members.len(),
                    created_ms: entry.created_ms,
                    finished_ms: entry.finished_ms,
                    result: machine.result().map(|bytes| preview(&String::from_utf8_lossy(bytes))),
                    failure: machine.failure().map(|f| (f.task_name.clone(), preview(&f.message))),
                })
            })
            .collect();
        (total, rows, record.unwrap_or(0))
    }

    /// Workflows running and the bytes they hold (descriptions and
    /// gathered results), then finished ones kept and their bytes.
    pub(crate) fn workflow_bytes(&self) -> [(usize, usize); 2] {
        let tasks = self.lock();
        [tasks.workflows.live(), tasks.workflows.kept()]
    }

    /// Whether the durable record numbered `record` is stored (always, in
    /// memory mode).
    pub(crate) fn is_stored(&self, record: u64) -> bool {
        self.durable.is_stored(record)
    }

    /// Resolves once the durable record numbered `record` is stored (at
    /// once in memory mode).
    pub(crate) fn when_stored(&self, record: u64) -> tokio::sync::oneshot::Receiver<()> {
        let (stored, wait) = tokio::sync::oneshot::channel();
        self.durable.after(record, move || {
            let _ = stored.send(());
        });
        wait
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn previews_are_cut_on_a_character_boundary() {
        assert_eq!(super::preview("[1,2]"), "[1,2]");
        let long = "é".repeat(200);
        let cut = super::preview(&long);
        assert!(cut.ends_with('…') && cut.len() <= super::PREVIEW_BYTES + '…'.len_utf8());
    }
}
