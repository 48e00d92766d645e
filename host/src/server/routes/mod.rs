//! One router per kind of port, beside the state it drives: each decodes a
//! request, checks the caller's role, and hands it to [`State`]. The
//! management port's router is [`crate::server::membership`], which runs on
//! its own thread.
//!
//! - [`task_port`]: the four priority ports; a control plane takes
//!   submissions there, a subworker its control plane's runs, collections,
//!   revocations and cancellations.
//! - [`result_port`]: a control plane's result port (base+4): status,
//!   cancellation, workflows, schedules, workers, task limits, discovery.
//!
//! [`State`]: crate::server::state::State

mod result_port;
mod task_port;

pub(crate) use result_port::result_port;
pub(crate) use task_port::task_port;
