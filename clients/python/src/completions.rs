//! How async calls hand their outcomes to asyncio without a GIL hand-off
//! per call.
//!
//! A call's future runs on the tokio runtime; when it ends, its outcome is
//! pushed onto the queue of the event loop that awaits it, and the loop is
//! woken by one byte on a pipe (written only when the queue was empty) that
//! `loop.add_reader` watches. The loop's thread, which holds the GIL anyway,
//! then turns every queued outcome into Python values at once and resolves
//! the futures (python/fastworker/_pump.py). No tokio thread ever waits for
//! the GIL, which a busy event loop would keep for its switch interval.

use std::io::{PipeReader, PipeWriter, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::failure::Failure;

/// An ended call's outcome, to be turned into Python on the loop's thread.
pub(crate) type Outcome = Box<dyn FnOnce(Python<'_>) -> Result<Py<PyAny>, Failure> + Send>;

/// What the tokio side shares with one event loop.
pub(crate) struct Shared {
    queue: Mutex<Vec<(u64, Outcome)>>,
    /// Set when a wake-up byte is on its way and the loop has not drained yet.
    signalled: AtomicBool,
    writer: Mutex<PipeWriter>,
}

impl Shared {
    /// Queues call `token`'s outcome and wakes the loop if it is not already woken.
    pub(crate) fn complete(&self, token: u64, outcome: Outcome) {
        self.queue.lock().expect("completion queue lock").push((token, outcome));
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // A closed loop's reader is gone: nobody waits for this outcome.
            let _ = self.writer.lock().expect("wake-up pipe lock").write_all(&[1]);
        }
    }
}

/// The completions of one event loop (`fastworker._native.Completions`).
#[pyclass(frozen, module = "fastworker._native")]
pub(crate) struct Completions {
    pub(crate) shared: Arc<Shared>,
    reader: PipeReader,
}

#[pymethods]
impl Completions {
    #[new]
    fn new() -> PyResult<Completions> {
        let (reader, writer) = std::io::pipe()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            signalled: AtomicBool::new(false),
            writer: Mutex::new(writer),
        });
        Ok(Completions { shared, reader })
    }

    /// The pipe's read end, for `loop.add_reader`.
    fn fileno(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    /// Every outcome queued since the last call, as `(token, ok, value)`
    /// tuples: the result, or the exception instance when `ok` is false.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Clear the flag first: an outcome queued from now on wakes the loop again.
        self.shared.signalled.store(false, Ordering::Release);
        let taken = std::mem::take(&mut *self.shared.queue.lock().expect("completion queue lock"));
        let list = PyList::empty(py);
        for (token, outcome) in taken {
            let item = match outcome(py) {
                Ok(value) => {
                    PyTuple::new(py, [token.into_bound_py_any(py)?, true.into_bound_py_any(py)?, value.into_bound(py)])?
                }
                Err(failure) => {
                    let error = failure.into_pyerr(py).into_value(py).into_any().into_bound(py);
                    PyTuple::new(py, [token.into_bound_py_any(py)?, false.into_bound_py_any(py)?, error])?
                }
            };
            list.append(item)?;
        }
        Ok(list)
    }
}
