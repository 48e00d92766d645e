//! What one run measured: the rows of the table and the rest.

use crate::phase::Phase;
use crate::processes::FastworkerProcess;
use crate::{batch, durable, payload, scale, workflow};

/// Everything one run measured.
pub(crate) struct Results {
    /// The timed rows, floors first, in the order they are printed.
    pub(crate) rows: Vec<Row>,
    /// Resident memory of the control planes, in KiB (`None` where unknown).
    pub(crate) idle_kib: Option<u64>,
    pub(crate) idle_large_cache_kib: Option<u64>,
    pub(crate) cached_kib: Option<u64>,
    /// The durable mode's recovery after a SIGKILL (see `durable.rs`).
    pub(crate) recovery: Option<durable::Recovery>,
    /// The sleep-scaling rows (see `scale.rs`), smallest cluster first.
    pub(crate) sleep: Vec<scale::SleepRow>,
    /// The batch row (see `batch.rs`).
    pub(crate) batch: Option<batch::BatchRow>,
    /// The payload row (see `payload.rs`).
    pub(crate) payload: Option<payload::PayloadRow>,
    /// The workflow row (see `workflow.rs`).
    pub(crate) workflow: Option<workflow::WorkflowRow>,
    /// Processes that did not stop cleanly, fake subworkers that could not
    /// register or unregister, cluster listings that were not as expected.
    pub(crate) problems: Vec<String>,
}

/// One row of the table.
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) phase: Phase,
    /// Compared with the pipelined floor (else with the sequential one).
    pub(crate) pipelined: bool,
}

impl Results {
    /// The row named `name` (rows are named by [`run`](crate::run), so it exists).
    pub(crate) fn row(&self, name: &str) -> &Phase {
        &self.rows.iter().find(|row| row.name == name).unwrap_or_else(|| panic!("no row {name}")).phase
    }

    pub(crate) fn push(&mut self, name: String, pipelined: bool, phase: Phase) {
        self.rows.push(Row { name, phase, pipelined });
    }

    /// Records a process's stop (see [`FastworkerProcess::stop`]).
    pub(crate) fn stopped(&mut self, process: &mut FastworkerProcess) {
        if let Err(problem) = process.stop() {
            self.problems.push(problem);
        }
    }
}
