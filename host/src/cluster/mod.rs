//! The cluster: how a control plane and its subworkers find and reach each
//! other, and which worker gets which task.
//!
//! - `routing`: who provides which task, who has a free slot, and which
//!   task goes where (pure bookkeeping, no I/O).
//! - `worker`: one subworker as the control plane sees it, its phase and
//!   its slots (no I/O).
//! - `waiting`: the tasks waiting for a free slot, one line per priority
//!   (no I/O).
//! - `status`: what the cluster reports about itself (its size, the tasks
//!   on offer and their defaults, the `fastworker workers` table).
//! - `link`: the control plane's connection to one subworker (batched
//!   dispatch and collection of runs), over NNG or, to a worker process
//!   this process started, over a socket pair (`pipe_link`); `notes`: the
//!   bounded line of its notes (cancellations, revocations) over NNG (no
//!   I/O).
//! - [`subworker`]: the subworker's side of membership (register,
//!   heartbeat, leave).
//! - [`discovery`]: announcing and finding a control plane without an
//!   address.
//! - [`task_limits`]: cluster-wide rate and concurrency limits per task
//!   name (pure: the time comes in with each question).
//!
//! The control plane's side of membership, which drives the server's state,
//! is `server::membership`.

pub mod discovery;
pub(crate) mod link;
mod notes;
mod pipe_link;
pub(crate) mod routing;
mod status;
pub mod subworker;
pub mod task_limits;
mod waiting;
mod worker;
