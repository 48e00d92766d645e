//! `fastworker.Client`: the Rust client behind a Python class, each call in
//! a blocking form (which releases the GIL while it waits) and an `async`
//! form (an asyncio future, resolved through `completions.rs`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fastworker::auth::KeyRing;
use fastworker::client::BatchTask;
use fastworker::protocol::TaskReport as RustReport;
use fastworker::SubmitOptions;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use serde_json::Value;

use crate::failure::{Class, Failure};
use crate::json::to_python;
use crate::options::{parse_task_id, task_args, OptionError, PyOptions};
use crate::report::{outcome, TaskReport};
use crate::runtime::block_on;

/// The most tasks one `batch` call takes (the frame limit bounds it too).
const MAX_BATCH: usize = 100_000;

/// A handle to one control plane, shared by any number of threads and
/// coroutines: every call takes its own request context on the same
/// connections, so calls overlap freely and each gets its own reply.
#[pyclass(frozen, module = "fastworker")]
pub(crate) struct Client {
    inner: fastworker::Client,
    address: String,
    timeout: Duration,
}

/// What a call's future yields, turned into a Python value with the GIL.
type Convert<T> = fn(Python<'_>, T) -> Result<Py<PyAny>, Failure>;

/// Runs `future` blocking (GIL released) or as an awaitable, and converts
/// its output with `convert`.
fn run<T: Send + 'static>(
    py: Python<'_>,
    asynchronous: bool,
    future: impl Future<Output = Result<T, Failure>> + Send + 'static,
    convert: Convert<T>,
) -> PyResult<Py<PyAny>> {
    if asynchronous {
        let (completions, token, awaitable) = pump_start(py)?;
        crate::runtime::runtime().spawn(async move {
            let output = future.await;
            completions.complete(token, Box::new(move |py| output.and_then(|value| convert(py, value))));
        });
        Ok(awaitable)
    } else {
        match block_on(py, future)? {
            Ok(value) => convert(py, value).map_err(|failure| failure.into_pyerr(py)),
            Err(failure) => Err(failure.into_pyerr(py)),
        }
    }
}

/// A new call's place on the running event loop: `fastworker._pump.start()`.
fn pump_start(py: Python<'_>) -> PyResult<(Arc<crate::completions::Shared>, u64, Py<PyAny>)> {
    static START: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    let start = START.get_or_try_init(py, || py.import("fastworker._pump")?.getattr("start").map(Bound::unbind))?;
    let (completions, token, future): (Bound<'_, crate::completions::Completions>, u64, Py<PyAny>) =
        start.bind(py).call0()?.extract()?;
    Ok((completions.get().shared.clone(), token, future))
}

async fn client_call<T>(future: impl Future<Output = Result<T, fastworker::ClientError>>) -> Result<T, Failure> {
    match future.await {
        Ok(value) => Ok(value),
        Err(error) => Err(Failure::from_client(error).await),
    }
}

fn to_report(py: Python<'_>, report: RustReport) -> Result<Py<PyAny>, Failure> {
    let report = TaskReport::from_rust(py, &report)?;
    Py::new(py, report).map(Py::into_any).map_err(|error| Failure::new(Class::ProtocolError, error.to_string()))
}

fn to_result(py: Python<'_>, report: RustReport) -> Result<Py<PyAny>, Failure> {
    outcome(py, &report)
}

fn to_id(py: Python<'_>, task_id: fastworker::TaskId) -> Result<Py<PyAny>, Failure> {
    python_value(py, &Value::String(task_id.to_string()))
}

fn python_value(py: Python<'_>, value: &Value) -> Result<Py<PyAny>, Failure> {
    to_python(py, value).map(Bound::unbind).map_err(|error| Failure::new(Class::ProtocolError, error.to_string()))
}

type BatchOutcomes = Vec<Result<fastworker::TaskId, fastworker::protocol::ErrorReply>>;

fn to_batch(py: Python<'_>, outcomes: BatchOutcomes) -> Result<Py<PyAny>, Failure> {
    let list = PyList::empty(py);
    for outcome in outcomes {
        let item = match outcome {
            Ok(task_id) => to_id(py, task_id)?,
            Err(refusal) => Failure::refused(&refusal).into_pyerr(py).into_value(py).into_any(),
        };
        list.append(item).map_err(|error| Failure::new(Class::ProtocolError, error.to_string()))?;
    }
    Ok(list.into_any().unbind())
}

fn to_schedules(py: Python<'_>, statuses: Vec<fastworker::protocol::ScheduleStatus>) -> Result<Py<PyAny>, Failure> {
    let value =
        serde_json::to_value(&statuses).map_err(|error| Failure::new(Class::ProtocolError, error.to_string()))?;
    python_value(py, &value)
}

fn to_none(py: Python<'_>, (): ()) -> Result<Py<PyAny>, Failure> {
    Ok(py.None())
}

fn to_workers(py: Python<'_>, status: fastworker::protocol::ClusterStatus) -> Result<Py<PyAny>, Failure> {
    let value = serde_json::to_value(&status).map_err(|error| Failure::new(Class::ProtocolError, error.to_string()))?;
    python_value(py, &value)
}

/// Reads one batch entry: `(task, args)` or `(task, args, {options})`.
fn batch_entry(entry: &Bound<'_, PyAny>) -> Result<BatchTask, Failure> {
    let bad = || {
        Failure::new(Class::BadArguments, "each batch entry must be a tuple (task, args) or (task, args, {options})")
    };
    let tuple = entry.cast::<PyTuple>().map_err(|_| bad())?;
    if !(1..=3).contains(&tuple.len()) {
        return Err(bad());
    }
    let task_name: String = tuple.get_item(0).and_then(|name| name.extract()).map_err(|_| bad())?;
    let args = tuple.get_item(1).ok();
    let args = serde_json::to_vec(&task_args(args.as_ref())?)
        .map_err(|error| Failure::new(Class::BadArguments, error.to_string()))?;
    let options = match tuple.get_item(2) {
        Ok(options) => batch_options(&options)?,
        Err(_) => SubmitOptions::default(),
    };
    Ok(BatchTask { task_name, args, options })
}

fn batch_options(options: &Bound<'_, PyAny>) -> Result<SubmitOptions, Failure> {
    let bad = |message: String| Failure::new(Class::BadRequest, message);
    let dict = options.cast::<PyDict>().map_err(|_| bad("batch options must be a dict".into()))?;
    let read = PyOptions::by_name(Some(dict)).map_err(|error| match error {
        OptionError::NotText => bad("batch option names must be str".into()),
        OptionError::WrongType(key) => bad(format!("batch option '{key}' has a value of the wrong type")),
        OptionError::Unknown(key) => bad(format!("'{key}' is not a batch option")),
    })?;
    read.resolve()
}

/// The keyword options of `call`, `delay` and their awaitables, refused as
/// Python refuses a bad keyword argument (`TypeError`).
fn keyword_options<'py>(method: &str, options: Option<&Bound<'py, PyDict>>) -> PyResult<PyOptions<'py>> {
    PyOptions::by_name(options).map_err(|error| {
        PyTypeError::new_err(match error {
            OptionError::NotText => format!("{method}() keywords must be strings"),
            OptionError::WrongType(key) => format!("{method}() argument '{key}' has a value of the wrong type"),
            OptionError::Unknown(key) => format!("{method}() got an unexpected keyword argument '{key}'"),
        })
    })
}

impl Client {
    fn wait_limit(&self, timeout: Option<f64>) -> PyResult<Duration> {
        match timeout {
            None => Ok(self.timeout),
            Some(seconds) => positive_seconds("timeout", seconds),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        asynchronous: bool,
        wait: bool,
        task: String,
        args: Option<&Bound<'_, PyAny>>,
        options: PyOptions<'_>,
    ) -> PyResult<Py<PyAny>> {
        let prepared = task_args(args).and_then(|args| Ok((args, options.resolve()?)));
        let (args, options) = prepared.map_err(|failure| failure.into_pyerr(py))?;
        let client = self.inner.clone();
        if wait {
            run(py, asynchronous, async move { client_call(client.submit(&task, args, options)).await }, to_result)
        } else {
            run(py, asynchronous, async move { client_call(client.delay(&task, args, options)).await }, to_id)
        }
    }

    fn batch_impl(&self, py: Python<'_>, asynchronous: bool, tasks: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let mut batch = Vec::new();
        for entry in tasks.try_iter()? {
            if batch.len() == MAX_BATCH {
                let message = format!("a batch holds at most {MAX_BATCH} tasks: split it");
                return Err(Failure::new(Class::TooLarge, message).into_pyerr(py));
            }
            batch.push(batch_entry(&entry?).map_err(|failure| failure.into_pyerr(py))?);
        }
        let client = self.inner.clone();
        run(py, asynchronous, async move { client_call(client.submit_batch(batch)).await }, to_batch)
    }

    fn by_id(
        &self,
        py: Python<'_>,
        asynchronous: bool,
        task_id: &str,
        what: ById,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let task_id = parse_task_id(task_id).map_err(|failure| failure.into_pyerr(py))?;
        let limit = self.wait_limit(timeout)?;
        let client = self.inner.clone();
        match what {
            ById::Status => run(py, asynchronous, async move { client_call(client.status(task_id)).await }, to_report),
            ById::Cancel => run(py, asynchronous, async move { client_call(client.cancel(task_id)).await }, to_report),
            ById::Wait => {
                run(py, asynchronous, async move { client_call(client.wait(task_id, limit)).await }, to_report)
            }
            ById::Result => {
                run(py, asynchronous, async move { client_call(client.wait(task_id, limit)).await }, to_result)
            }
        }
    }

    fn workflow_impl(
        &self,
        py: Python<'_>,
        asynchronous: bool,
        description: &Bound<'_, PyAny>,
        workflow_id: Option<&str>,
    ) -> PyResult<Py<PyAny>> {
        let prepared = crate::workflow::description(description).and_then(|workflow| {
            let workflow_id = match workflow_id {
                None => fastworker::workflow::WorkflowId::new_v4(),
                Some(text) => crate::workflow::parse_id(text)?,
            };
            Ok((workflow, workflow_id))
        });
        let (workflow, workflow_id) = prepared.map_err(|failure| failure.into_pyerr(py))?;
        let client = self.inner.clone();
        let future = async move { client_call(client.submit_workflow_as(workflow_id, &workflow)).await };
        run(py, asynchronous, future, crate::workflow::to_id)
    }

    fn workflow_by_id(
        &self,
        py: Python<'_>,
        asynchronous: bool,
        workflow_id: &str,
        what: WorkflowCall,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let workflow_id = crate::workflow::parse_id(workflow_id).map_err(|failure| failure.into_pyerr(py))?;
        let limit = self.wait_limit(timeout)?;
        let client = self.inner.clone();
        match what {
            WorkflowCall::Status => run(
                py,
                asynchronous,
                async move { client_call(client.workflow_status(workflow_id)).await },
                crate::workflow::to_status,
            ),
            WorkflowCall::Cancel => run(
                py,
                asynchronous,
                async move { client_call(client.cancel_workflow(workflow_id)).await },
                crate::workflow::to_status,
            ),
            WorkflowCall::Wait => run(
                py,
                asynchronous,
                async move { client_call(client.wait_workflow(workflow_id, limit)).await },
                crate::workflow::to_result,
            ),
        }
    }

    fn workers_impl(&self, py: Python<'_>, asynchronous: bool) -> PyResult<Py<PyAny>> {
        let client = self.inner.clone();
        run(py, asynchronous, async move { client_call(client.workers()).await }, to_workers)
    }

    fn schedules_impl(&self, py: Python<'_>, asynchronous: bool) -> PyResult<Py<PyAny>> {
        let client = self.inner.clone();
        run(py, asynchronous, async move { client_call(client.schedules()).await }, to_schedules)
    }

    fn pause_impl(&self, py: Python<'_>, asynchronous: bool, task: String, paused: bool) -> PyResult<Py<PyAny>> {
        let client = self.inner.clone();
        run(py, asynchronous, async move { client_call(client.pause_schedule(&task, paused)).await }, to_none)
    }
}

/// The calls that name a workflow by its id.
#[derive(Clone, Copy)]
enum WorkflowCall {
    Status,
    Cancel,
    Wait,
}

/// The calls that name a task by its id.
#[derive(Clone, Copy)]
enum ById {
    Status,
    Cancel,
    Wait,
    Result,
}

fn positive_seconds(what: &str, seconds: f64) -> PyResult<Duration> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= 365.0 * 24.0 * 3600.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(PyValueError::new_err(format!(
            "{what} must be a positive number of seconds (at most a year), not {seconds}"
        )))
    }
}

#[pymethods]
impl Client {
    /// A client of the control plane at `address` (its base address). `key`
    /// is the path of a key file (`fastworker keygen`) when the cluster has
    /// one; `timeout` bounds each call, in seconds. No I/O happens yet.
    #[new]
    #[pyo3(signature = (address = fastworker::DEFAULT_BASE_ADDRESS.to_string(), key = None, timeout = 30.0))]
    fn new(py: Python<'_>, address: String, key: Option<PathBuf>, timeout: f64) -> PyResult<Client> {
        let timeout = positive_seconds("timeout", timeout)?;
        let client = fastworker::Client::new(&address)
            .map_err(|error| Failure::new(Class::InvalidAddress, error.to_string()).into_pyerr(py))?
            .with_timeout(timeout);
        let inner = match key {
            None => client,
            Some(path) => {
                let invalid = |error: fastworker::auth::KeyError| Failure::new(Class::InvalidKey, error.to_string());
                let ring = KeyRing::load(&path).map_err(|error| invalid(error).into_pyerr(py))?;
                client.with_keys(Arc::new(ring)).map_err(|error| invalid(error).into_pyerr(py))?
            }
        };
        Ok(Client { inner, address, timeout })
    }

    /// The base address.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// The per-call timeout, in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout.as_secs_f64()
    }

    fn __repr__(&self) -> String {
        format!("Client(address='{}', timeout={})", self.address, self.timeout.as_secs_f64())
    }

    /// Runs `task` with `args` (a list/tuple, or a dict by name) and returns its result; the options
    /// (`priority`, `countdown`, `eta`, `task_timeout`, `retries`, `retry_delay`, `retry_max_delay`,
    /// `task_id`) are keywords, read in one place (`PyOptions::by_name`).
    #[pyo3(signature = (task, args = None, **options))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        task: String,
        args: Option<Bound<'py, PyAny>>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let options = keyword_options("call", options)?;
        self.submit(py, false, true, task, args.as_ref(), options)
    }

    /// `call` as an awaitable.
    #[pyo3(signature = (task, args = None, **options))]
    fn call_async<'py>(
        &self,
        py: Python<'py>,
        task: String,
        args: Option<Bound<'py, PyAny>>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let options = keyword_options("call_async", options)?;
        self.submit(py, true, true, task, args.as_ref(), options)
    }

    /// Queues `task` and returns its id (a str) without waiting for it; the options as for `call`.
    #[pyo3(signature = (task, args = None, **options))]
    fn delay<'py>(
        &self,
        py: Python<'py>,
        task: String,
        args: Option<Bound<'py, PyAny>>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let options = keyword_options("delay", options)?;
        self.submit(py, false, false, task, args.as_ref(), options)
    }

    /// `delay` as an awaitable.
    #[pyo3(signature = (task, args = None, **options))]
    fn delay_async<'py>(
        &self,
        py: Python<'py>,
        task: String,
        args: Option<Bound<'py, PyAny>>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let options = keyword_options("delay_async", options)?;
        self.submit(py, true, false, task, args.as_ref(), options)
    }

    /// Queues many tasks in one request: `tasks` holds `(task, args)` or
    /// `(task, args, {options})` tuples. Returns, in order, each task's id or
    /// the exception (not raised) saying why it was refused.
    fn batch(&self, py: Python<'_>, tasks: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.batch_impl(py, false, tasks)
    }

    /// `batch` as an awaitable.
    fn batch_async(&self, py: Python<'_>, tasks: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.batch_impl(py, true, tasks)
    }

    /// The task's report now (whatever its state).
    fn status(&self, py: Python<'_>, task_id: &str) -> PyResult<Py<PyAny>> {
        self.by_id(py, false, task_id, ById::Status, None)
    }

    /// `status` as an awaitable.
    fn status_async(&self, py: Python<'_>, task_id: &str) -> PyResult<Py<PyAny>> {
        self.by_id(py, true, task_id, ById::Status, None)
    }

    /// Waits up to `timeout` seconds (default: the client's) for the task to
    /// end; its final report (raises `TimedOut` if it has not ended).
    #[pyo3(signature = (task_id, timeout = None))]
    fn wait(&self, py: Python<'_>, task_id: &str, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.by_id(py, false, task_id, ById::Wait, timeout)
    }

    /// `wait` as an awaitable.
    #[pyo3(signature = (task_id, timeout = None))]
    fn wait_async(&self, py: Python<'_>, task_id: &str, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.by_id(py, true, task_id, ById::Wait, timeout)
    }

    /// Waits as `wait` does and returns the task's result, or raises what
    /// its ending stands for (`TaskFailed`, `Cancelled`, `TaskTimedOut`…).
    #[pyo3(signature = (task_id, timeout = None))]
    fn result(&self, py: Python<'_>, task_id: &str, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.by_id(py, false, task_id, ById::Result, timeout)
    }

    /// `result` as an awaitable.
    #[pyo3(signature = (task_id, timeout = None))]
    fn result_async(&self, py: Python<'_>, task_id: &str, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.by_id(py, true, task_id, ById::Result, timeout)
    }

    /// Cancels a task; its report after. A task not started yet is
    /// `cancelled`; a running one stays `running`, asked to stop.
    fn cancel(&self, py: Python<'_>, task_id: &str) -> PyResult<Py<PyAny>> {
        self.by_id(py, false, task_id, ById::Cancel, None)
    }

    /// `cancel` as an awaitable.
    fn cancel_async(&self, py: Python<'_>, task_id: &str) -> PyResult<Py<PyAny>> {
        self.by_id(py, true, task_id, ById::Cancel, None)
    }

    /// Submits a workflow (a dict as docs/workflows.md describes, or built
    /// with `fastworker.chain`, `group`, `chord` and `task`) and returns its
    /// id (a str). Sending it again under the same `workflow_id` does not
    /// run it twice.
    #[pyo3(signature = (description, *, workflow_id = None))]
    fn workflow(
        &self,
        py: Python<'_>,
        description: &Bound<'_, PyAny>,
        workflow_id: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        self.workflow_impl(py, false, description, workflow_id.as_deref())
    }

    /// `workflow` as an awaitable.
    #[pyo3(signature = (description, *, workflow_id = None))]
    fn workflow_async(
        &self,
        py: Python<'_>,
        description: &Bound<'_, PyAny>,
        workflow_id: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        self.workflow_impl(py, true, description, workflow_id.as_deref())
    }

    /// The workflow's status now, as a dict: state, members (with their
    /// task ids and states), result or first failure.
    fn workflow_status(&self, py: Python<'_>, workflow_id: &str) -> PyResult<Py<PyAny>> {
        self.workflow_by_id(py, false, workflow_id, WorkflowCall::Status, None)
    }

    /// `workflow_status` as an awaitable.
    fn workflow_status_async(&self, py: Python<'_>, workflow_id: &str) -> PyResult<Py<PyAny>> {
        self.workflow_by_id(py, true, workflow_id, WorkflowCall::Status, None)
    }

    /// Waits up to `timeout` seconds (default: the client's) for the
    /// workflow to end and returns its result, or raises what its first
    /// failure stands for (`TaskFailed` naming the member, `Cancelled`…;
    /// `TimedOut` if it has not ended).
    #[pyo3(signature = (workflow_id, timeout = None))]
    fn wait_workflow(&self, py: Python<'_>, workflow_id: &str, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.workflow_by_id(py, false, workflow_id, WorkflowCall::Wait, timeout)
    }

    /// `wait_workflow` as an awaitable.
    #[pyo3(signature = (workflow_id, timeout = None))]
    fn wait_workflow_async(&self, py: Python<'_>, workflow_id: &str, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.workflow_by_id(py, true, workflow_id, WorkflowCall::Wait, timeout)
    }

    /// Cancels a running workflow (pending members never run); its status after.
    fn cancel_workflow(&self, py: Python<'_>, workflow_id: &str) -> PyResult<Py<PyAny>> {
        self.workflow_by_id(py, false, workflow_id, WorkflowCall::Cancel, None)
    }

    /// `cancel_workflow` as an awaitable.
    fn cancel_workflow_async(&self, py: Python<'_>, workflow_id: &str) -> PyResult<Py<PyAny>> {
        self.workflow_by_id(py, true, workflow_id, WorkflowCall::Cancel, None)
    }

    /// The control plane's subworkers and their health, as a dict.
    fn workers(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.workers_impl(py, false)
    }

    /// `workers` as an awaitable.
    fn workers_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.workers_impl(py, true)
    }

    /// The periodic tasks and their records, as a list of dicts.
    fn schedules(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.schedules_impl(py, false)
    }

    /// `schedules` as an awaitable.
    fn schedules_async(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.schedules_impl(py, true)
    }

    /// Pauses (or, with `paused=False`, resumes) a periodic task's schedule
    /// (an operator's key is needed when the cluster has keys).
    #[pyo3(signature = (task, paused = true))]
    fn pause_schedule(&self, py: Python<'_>, task: String, paused: bool) -> PyResult<Py<PyAny>> {
        self.pause_impl(py, false, task, paused)
    }

    /// `pause_schedule` as an awaitable.
    #[pyo3(signature = (task, paused = true))]
    fn pause_schedule_async(&self, py: Python<'_>, task: String, paused: bool) -> PyResult<Py<PyAny>> {
        self.pause_impl(py, true, task, paused)
    }
}
