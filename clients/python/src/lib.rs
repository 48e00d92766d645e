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
    module.add_class::<client::Client>()?;
    module.add_class::<report::TaskReport>()?;
    module.add_class::<completions::Completions>()?;
    module.add("DEFAULT_ADDRESS", fastworker::DEFAULT_BASE_ADDRESS)?;
    Ok(())
}
