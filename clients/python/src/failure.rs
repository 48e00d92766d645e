//! Why a call failed, as the Python exception that says so.
//!
//! A [`Failure`] is built without the GIL (inside the call's future) from the
//! Rust client's [`ClientError`] or a task's final report, and becomes an
//! instance of a class of `fastworker.errors` once the GIL is held again.

use std::time::Duration;

use fastworker::protocol::{ErrorKind, ErrorReply, FailureKind, TaskReport, TaskState};
use fastworker::ClientError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};

/// The exception classes of `fastworker.errors` (python/fastworker/errors.py).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    UnknownTask,
    BadArguments,
    TaskFailed,
    TaskPanicked,
    TimedOut,
    TaskTimedOut,
    Cancelled,
    Busy,
    Unreachable,
    Unauthenticated,
    Forbidden,
    UnknownTaskId,
    UnknownWorkflowId,
    ExpiredTaskId,
    InvalidTaskId,
    UnknownSchedule,
    AlreadyFinished,
    IdConflict,
    BadRequest,
    NoWorker,
    ShuttingDown,
    TooLarge,
    InvalidAddress,
    InvalidKey,
    ProtocolError,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::UnknownTask => "UnknownTask",
            Class::BadArguments => "BadArguments",
            Class::TaskFailed => "TaskFailed",
            Class::TaskPanicked => "TaskPanicked",
            Class::TimedOut => "TimedOut",
            Class::TaskTimedOut => "TaskTimedOut",
            Class::Cancelled => "Cancelled",
            Class::Busy => "Busy",
            Class::Unreachable => "Unreachable",
            Class::Unauthenticated => "Unauthenticated",
            Class::Forbidden => "Forbidden",
            Class::UnknownTaskId => "UnknownTaskId",
            Class::UnknownWorkflowId => "UnknownWorkflowId",
            Class::ExpiredTaskId => "ExpiredTaskId",
            Class::InvalidTaskId => "InvalidTaskId",
            Class::UnknownSchedule => "UnknownSchedule",
            Class::AlreadyFinished => "AlreadyFinished",
            Class::IdConflict => "IdConflict",
            Class::BadRequest => "BadRequest",
            Class::NoWorker => "NoWorker",
            Class::ShuttingDown => "ShuttingDown",
            Class::TooLarge => "TooLarge",
            Class::InvalidAddress => "InvalidAddress",
            Class::InvalidKey => "InvalidKey",
            Class::ProtocolError => "ProtocolError",
        }
    }

    /// The class of a control plane's refusal.
    fn of_refusal(kind: ErrorKind) -> Class {
        match kind {
            ErrorKind::UnknownTask => Class::UnknownTask,
            ErrorKind::UnknownTaskId => Class::UnknownTaskId,
            ErrorKind::UnknownWorkflowId => Class::UnknownWorkflowId,
            ErrorKind::ExpiredTaskId => Class::ExpiredTaskId,
            ErrorKind::ShuttingDown => Class::ShuttingDown,
            ErrorKind::NoWorker | ErrorKind::NotYetProvided => Class::NoWorker,
            ErrorKind::AlreadyFinished => Class::AlreadyFinished,
            ErrorKind::Busy => Class::Busy,
            ErrorKind::BadRequest | ErrorKind::BadTaskLimit => Class::BadRequest,
            ErrorKind::Unauthenticated => Class::Unauthenticated,
            ErrorKind::Forbidden => Class::Forbidden,
            ErrorKind::IdConflict => Class::IdConflict,
            ErrorKind::UnknownSchedule => Class::UnknownSchedule,
            ErrorKind::FrameTooLarge => Class::TooLarge,
            ErrorKind::MalformedFrame
            | ErrorKind::UnsupportedVersion
            | ErrorKind::WrongEndpoint
            | ErrorKind::DuplicateWorker
            | ErrorKind::UnknownWorker
            | ErrorKind::WorkerUnreachable
            | ErrorKind::BadRegistration
            | ErrorKind::HandedBack => Class::ProtocolError,
        }
    }
}

/// A failed call, ready to be raised.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) class: Class,
    pub(crate) message: String,
    /// The control plane's error kind (`ErrorKind`'s name), for refusals.
    pub(crate) kind: Option<String>,
    /// The task concerned, when the failure is a task's outcome.
    pub(crate) task_id: Option<String>,
    pub(crate) task_name: Option<String>,
}

impl Failure {
    /// A failure with only a class and a message.
    pub(crate) fn new(class: Class, message: impl Into<String>) -> Failure {
        Failure { class, message: message.into(), kind: None, task_id: None, task_name: None }
    }

    /// A control plane's refusal.
    pub(crate) fn refused(reply: &ErrorReply) -> Failure {
        Failure {
            kind: Some(format!("{:?}", reply.kind)),
            ..Failure::new(Class::of_refusal(reply.kind), &reply.message)
        }
    }

    /// The Rust client's error. A timeout is checked against the address
    /// first: when nothing accepts connections there, it is `Unreachable`.
    pub(crate) async fn from_client(error: ClientError) -> Failure {
        match error {
            ClientError::Address(error) => Failure::new(Class::InvalidAddress, error.to_string()),
            ClientError::Key(error) => Failure::new(Class::InvalidKey, error.to_string()),
            ClientError::Timeout { address, after } => match refused_connection(&address).await {
                Some(why) => Failure::new(
                    Class::Unreachable,
                    format!("nothing accepts connections at {address} ({why}): is a control plane running there?"),
                ),
                None => Failure::new(Class::TimedOut, timeout_message(&address, after)),
            },
            ClientError::Unreachable { .. } => Failure::new(Class::Unreachable, error.to_string()),
            ClientError::Transport { address, source } => {
                Failure::new(Class::Unreachable, format!("cannot talk to {address}: {source}"))
            }
            ClientError::TooLarge { .. } => Failure::new(Class::TooLarge, error.to_string()),
            ClientError::Arguments(_) => Failure::new(Class::BadArguments, error.to_string()),
            ClientError::Refused(reply) => Failure::refused(&reply),
            ClientError::TaskFailed { task_name, error } => {
                let class = match error.kind {
                    FailureKind::Error => Class::TaskFailed,
                    FailureKind::Panic => Class::TaskPanicked,
                    FailureKind::BadArguments => Class::BadArguments,
                    FailureKind::Crashed => Class::TaskFailed,
                };
                Failure { task_name: Some(task_name), ..Failure::new(class, error.message) }
            }
            ClientError::Unauthenticated { .. } => Failure::new(Class::Unauthenticated, error.to_string()),
            ClientError::Decode { .. } | ClientError::Result { .. } | ClientError::Unexpected { .. } => {
                Failure::new(Class::ProtocolError, error.to_string())
            }
        }
    }

    /// The failure a final report stands for, if it is not a success.
    pub(crate) fn of_report(report: &TaskReport) -> Option<Failure> {
        let message = |fallback: String| report.error.as_ref().map_or(fallback, |error| error.message.clone());
        let (class, message) = match report.state {
            TaskState::Succeeded => return None,
            TaskState::Failed => match report.error.as_ref().map(|error| error.kind) {
                Some(FailureKind::Panic) => (Class::TaskPanicked, message(String::new())),
                Some(FailureKind::BadArguments) => (Class::BadArguments, message(String::new())),
                _ => (Class::TaskFailed, message(format!("task '{}' failed", report.task_name))),
            },
            TaskState::Cancelled => (Class::Cancelled, message(format!("task {} was cancelled", report.task_id))),
            TaskState::TimedOut => {
                (Class::TaskTimedOut, message(format!("task {} ran past its timeout", report.task_id)))
            }
            state => (
                Class::ProtocolError,
                format!("task {} is {} where a final state was expected", report.task_id, state.as_str()),
            ),
        };
        Some(Failure {
            task_id: Some(report.task_id.to_string()),
            task_name: Some(report.task_name.clone()),
            ..Failure::new(class, message)
        })
    }

    /// The Python exception.
    pub(crate) fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self.instantiate(py) {
            Ok(error) => error,
            Err(error) => error,
        }
    }

    fn instantiate(self, py: Python<'_>) -> PyResult<PyErr> {
        let class = errors_module(py)?.getattr(self.class.name())?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("kind", self.kind)?;
        kwargs.set_item("task_id", self.task_id)?;
        kwargs.set_item("task_name", self.task_name)?;
        let instance = class.call((self.message,), Some(&kwargs))?;
        Ok(PyErr::from_value(instance))
    }
}

/// `fastworker.errors`, imported once.
pub(crate) fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE.get_or_try_init(py, || py.import("fastworker.errors").map(Bound::unbind)).map(|module| module.bind(py))
}

fn timeout_message(address: &str, after: Duration) -> String {
    format!(
        "no answer from {address} within {} s (Client(timeout=...) bounds each call, wait(timeout=...) a wait)",
        after.as_secs_f64()
    )
}

/// Why nothing accepts a TCP connection at `address` (`tcp://HOST:PORT` or
/// `tls+tcp://HOST:PORT`), or `None` when something does (or it cannot tell).
async fn refused_connection(address: &str) -> Option<String> {
    let host_port = address.strip_prefix("tcp://").or_else(|| address.strip_prefix("tls+tcp://"))?;
    let probe = tokio::net::TcpStream::connect(host_port);
    match tokio::time::timeout(Duration::from_secs(1), probe).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some("no TCP connection within 1 s".into()),
    }
}
