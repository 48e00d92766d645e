//! The Rust client's workflow calls: submit a [`Workflow`], read its
//! status, wait for it, cancel it.

use std::time::{Duration, Instant};

use super::{Client, ClientError, RESULTS};
use crate::wire::protocol::{ErrorKind, ErrorReply, Priority, Reply, Request};
use crate::wire::workflow::{WorkflowId, WorkflowReport, WorkflowSubmit};
use crate::workflow::spec::Workflow;

/// The longest pause between two status requests while waiting.
const MAX_WAIT_PAUSE: Duration = Duration::from_millis(20);

impl Client {
    /// Submits a workflow under a fresh id; answers its first status.
    pub async fn submit_workflow(&self, workflow: &Workflow) -> Result<WorkflowReport, ClientError> {
        self.submit_workflow_as(WorkflowId::new_v4(), workflow).await
    }

    /// Submits a workflow under `workflow_id` (resubmitting the same one
    /// under its id does not run it twice).
    pub async fn submit_workflow_as(
        &self,
        workflow_id: WorkflowId,
        workflow: &Workflow,
    ) -> Result<WorkflowReport, ClientError> {
        let submit = workflow
            .to_submit(workflow_id)
            .map_err(|error| ClientError::Refused(ErrorReply::new(ErrorKind::BadRequest, error.to_string())))?;
        self.submit_workflow_raw(submit).await
    }

    /// Submits a flattened workflow as it is (it may be refused `BadRequest`).
    /// A control plane that has just started may not know its subworkers'
    /// tasks yet (`NotYetProvided`): asked again, within the call's timeout.
    pub async fn submit_workflow_raw(&self, submit: WorkflowSubmit) -> Result<WorkflowReport, ClientError> {
        let request = Request::SubmitWorkflow(submit);
        let deadline = Instant::now().checked_add(self.timeout());
        let mut pause = Duration::from_millis(100);
        loop {
            match self.expect_report(Priority::Normal.index(), &request).await {
                Err(ClientError::Refused(error)) if error.kind == ErrorKind::NotYetProvided => {
                    match (Instant::now().checked_add(pause), deadline) {
                        (Some(again), Some(deadline)) if again < deadline => {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                        _ => return Err(ClientError::Refused(error)),
                    }
                }
                outcome => return outcome,
            }
        }
    }

    /// A workflow's state, members, result or first failure.
    pub async fn workflow_status(&self, workflow_id: WorkflowId) -> Result<WorkflowReport, ClientError> {
        self.expect_report(RESULTS, &Request::WorkflowStatus { workflow_id }).await
    }

    /// Cancels a workflow: pending members never run, queued ones are
    /// cancelled, running ones are asked to stop. Answers its status.
    pub async fn cancel_workflow(&self, workflow_id: WorkflowId) -> Result<WorkflowReport, ClientError> {
        self.expect_report(RESULTS, &Request::CancelWorkflow { workflow_id }).await
    }

    /// Waits up to `limit` for a workflow to end and returns its final status.
    pub async fn wait_workflow(&self, workflow_id: WorkflowId, limit: Duration) -> Result<WorkflowReport, ClientError> {
        let pauses = (Duration::from_millis(2), MAX_WAIT_PAUSE);
        self.poll_until(limit, pauses, || self.workflow_status(workflow_id), |report| report.state.is_final()).await
    }

    async fn expect_report(&self, port: usize, request: &Request) -> Result<WorkflowReport, ClientError> {
        match self.request(port, request).await? {
            Reply::Workflow(report) => Ok(report),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }
}
