//! Workflows: chains, groups and chords of tasks, tracked by the control
//! plane with counters as their members finish (`docs/workflows.md`).
//!
//! [`spec`] is what clients write, [`wire`] what travels, `machine` one
//! workflow's pure state machine, `registry` the set a process knows. The
//! ledger (`state/workflows.rs`) feeds them the ends of member tasks.

mod client;
pub(crate) mod machine;
pub(crate) mod registry;
pub mod spec;
pub mod wire;

pub use spec::{task, SpecError, Workflow, MAX_DEPTH, MAX_MEMBERS};
pub use wire::{
    MemberReport, MemberState, Receive, WorkflowFailure, WorkflowId, WorkflowNode, WorkflowReport, WorkflowState,
    WorkflowStep, WorkflowSubmit,
};
