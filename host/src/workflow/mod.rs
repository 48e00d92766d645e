//! Workflows: chains, groups and chords of tasks, tracked by the control
//! plane with counters as their members finish (`docs/workflows.md`).
//!
//! [`spec`] is what clients write (in Rust or JSON), `machine` one
//! workflow's pure state machine, `registry` the set a process knows. What
//! travels is `wire::workflow`; the client's calls are in `client`; the
//! server's state (`server::state`'s `workflows.rs`) feeds the machines the
//! ends of member tasks and carries out what they decide.

pub(crate) mod machine;
pub(crate) mod registry;
pub mod spec;

pub use crate::wire::workflow::{
    MemberReport, MemberState, Receive, WorkflowFailure, WorkflowId, WorkflowNode, WorkflowReport, WorkflowState,
    WorkflowStep, WorkflowSubmit,
};
pub use spec::{task, SpecError, Workflow, MAX_DEPTH, MAX_MEMBERS};
