//! `fastworker.TaskReport`: everything known about one task, as Python sees it.

use fastworker::protocol::TaskReport as RustReport;
use pyo3::prelude::*;

use crate::failure::{Class, Failure};
use crate::json::to_python;

/// A task's state and, once it has ended, its result or error.
#[pyclass(frozen, get_all, module = "fastworker")]
pub(crate) struct TaskReport {
    /// The task's id.
    task_id: String,
    /// The task's name.
    task_name: String,
    /// queued, scheduled, running, retrying, succeeded, failed, cancelled or timed_out.
    state: String,
    /// Whether the task has ended (it never changes state again).
    finished: bool,
    /// The priority it was queued at.
    priority: String,
    /// The worker that ran (or runs) it.
    worker: String,
    /// Runs started so far.
    attempts: u32,
    /// When it was accepted, in ms since the Unix epoch.
    created_ms: u64,
    /// When its last run started.
    started_ms: Option<u64>,
    /// When it finished.
    finished_ms: Option<u64>,
    /// The result, once succeeded (else None).
    result: Py<PyAny>,
    /// The error's message, once failed.
    error: Option<String>,
    /// How it failed: error, panic or bad_arguments.
    error_kind: Option<String>,
}

#[pymethods]
impl TaskReport {
    fn __repr__(&self) -> String {
        format!("TaskReport(task_id='{}', task_name='{}', state='{}')", self.task_id, self.task_name, self.state)
    }
}

impl TaskReport {
    /// The Python report of a Rust one; its result parsed from JSON.
    pub(crate) fn from_rust(py: Python<'_>, report: &RustReport) -> Result<TaskReport, Failure> {
        let result = match &report.result {
            Some(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
                    Failure::new(
                        Class::ProtocolError,
                        format!("the result of task {} is not JSON: {error}", report.task_id),
                    )
                })?;
                to_python(py, &value).map_err(|error| Failure::new(Class::ProtocolError, error.to_string()))?.unbind()
            }
            None => py.None(),
        };
        Ok(TaskReport {
            task_id: report.task_id.to_string(),
            task_name: report.task_name.clone(),
            state: report.state.as_str().to_string(),
            finished: report.state.is_final(),
            priority: report.priority.as_str().to_string(),
            worker: report.worker.clone(),
            attempts: report.attempts,
            created_ms: report.created_ms,
            started_ms: report.started_ms,
            finished_ms: report.finished_ms,
            result,
            error: report.error.as_ref().map(|error| error.message.clone()),
            error_kind: report.error.as_ref().map(|error| error.kind.as_str().to_string()),
        })
    }
}

/// The result of a final report, or the exception its ending stands for.
pub(crate) fn outcome(py: Python<'_>, report: &RustReport) -> Result<Py<PyAny>, Failure> {
    if let Some(failure) = Failure::of_report(report) {
        return Err(failure);
    }
    TaskReport::from_rust(py, report).map(|report| report.result)
}
