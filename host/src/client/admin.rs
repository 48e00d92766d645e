//! The Rust client's operator calls: the cluster's subworkers, the tasks
//! provided, the periodic tasks and their schedules, the cluster-wide task
//! limits, and where the management port is.

use super::{Client, ClientError, RESULTS};
use crate::wire::protocol::{ClusterStatus, Reply, Request, ScheduleStatus, TaskInfo};

impl Client {
    /// The control plane's subworkers and their health.
    pub async fn workers(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(RESULTS, &Request::Workers).await? {
            Reply::Workers(status) => Ok(status),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// The tasks the control plane and its live subworkers provide, with
    /// their declared defaults and the JSON Schemas of their arguments and
    /// results (`None` for a plugin built before schemas existed).
    pub async fn tasks(&self) -> Result<Vec<TaskInfo>, ClientError> {
        match self.request(RESULTS, &Request::Tasks).await? {
            Reply::Tasks(tasks) => Ok(tasks),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// The periodic tasks and their records.
    pub async fn schedules(&self) -> Result<Vec<ScheduleStatus>, ClientError> {
        match self.request(RESULTS, &Request::Schedules).await? {
            Reply::Schedules(statuses) => Ok(statuses),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// Pauses (`true`) or resumes a periodic task's schedule.
    pub async fn pause_schedule(&self, task_name: &str, paused: bool) -> Result<(), ClientError> {
        let request = Request::PauseSchedule { task_name: task_name.to_string(), paused };
        match self.request(RESULTS, &request).await? {
            Reply::Done => Ok(()),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// The cluster-wide task limits and what each holds now (docs/limits.md).
    pub async fn task_limits(&self) -> Result<Vec<crate::wire::task_limit::TaskLimitStatus>, ClientError> {
        match self.request(RESULTS, &Request::TaskLimits).await? {
            Reply::TaskLimits(rows) => Ok(rows),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// Sets a task's cluster-wide limit at run time (`None` lifts its
    /// declared or flag limit); needs the operator's key on a keyed cluster.
    pub async fn set_task_limit(
        &self,
        task_name: &str,
        limit: Option<crate::wire::task_limit::TaskLimit>,
    ) -> Result<(), ClientError> {
        let request = Request::SetTaskLimit { task_name: task_name.to_string(), limit };
        self.expect_done(&request).await
    }

    /// Drops a task's run-time limit: its declared or flag limit holds again.
    pub async fn clear_task_limit(&self, task_name: &str) -> Result<(), ClientError> {
        self.expect_done(&Request::ClearTaskLimit { task_name: task_name.to_string() }).await
    }

    async fn expect_done(&self, request: &Request) -> Result<(), ClientError> {
        match self.request(RESULTS, request).await? {
            Reply::Done => Ok(()),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// The control plane's subworker-management port.
    pub async fn discover(&self) -> Result<u16, ClientError> {
        match self.request(RESULTS, &Request::Discover).await? {
            Reply::Discovered { management_port } => Ok(management_port),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }
}
