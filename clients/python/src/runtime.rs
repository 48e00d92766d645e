//! The process's one tokio runtime, which every call of every client runs
//! on, and the bridge from a blocking Python call to it.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// How often a blocking call takes the GIL back to see whether Python has a
/// signal to handle (Ctrl-C), so a long wait can still be interrupted.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// The runtime every call of every client of this process runs on.
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("fastworker-client")
            .build()
            .expect("the fastworker client cannot start its tokio runtime (threads)")
    })
}

/// Runs `future` on the runtime and waits for it without holding the GIL,
/// so other Python threads run meanwhile. A signal handler that raises (Ctrl-C's
/// `KeyboardInterrupt`) abandons the call and raises here.
pub(crate) fn block_on<T, F>(py: Python<'_>, future: F) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let runtime = runtime();
    let mut handle = runtime.spawn(future);
    loop {
        let done = py.detach(|| runtime.block_on(async { tokio::time::timeout(SIGNAL_POLL, &mut handle).await }));
        match done {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => {
                return Err(PyRuntimeError::new_err(format!("the fastworker call failed inside: {error}")))
            }
            Err(_elapsed) => {
                if let Err(error) = py.check_signals() {
                    handle.abort();
                    return Err(error);
                }
            }
        }
    }
}
