//! `fastworker._native`: the Python client's extension module, a thin layer
//! over the Rust client (`fastworker::Client`) so that Python and Rust share
//! one implementation of the protocol. The package `fastworker` (in
//! `python/`) re-exports it and defines the exception classes.

use pyo3::prelude::*;

mod client;
mod completions;
mod failure;
mod json;
mod options;
mod report;
mod runtime;
mod workflow;

/// The module's contents: the client and its report type.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    // Before any client opens a socket: NNG reads its thread counts once
    // (FASTWORKER_NNG_* variables; a bad one fails the import, naming it).
    fastworker::wire::nng_threads::configure()
        .map_err(|error| pyo3::exceptions::PyValueError::new_err(error.to_string()))?;
    module.add_class::<client::Client>()?;
    module.add_class::<report::TaskReport>()?;
    module.add_class::<completions::Completions>()?;
    module.add("DEFAULT_ADDRESS", fastworker::DEFAULT_BASE_ADDRESS)?;
    Ok(())
}
