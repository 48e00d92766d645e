//! The serving process's parts: the ports and what answers on them, the
//! task state behind them, and the machinery that state drives.
//!
//! - Ports: [`endpoint`] (a listening socket and its repliers),
//!   [`routes`] (the routers of the task ports and the result port),
//!   [`calls`] (clients' batched calls, their outcomes kept by session),
//!   [`membership`] (the management port), [`collector`] (a subworker's
//!   outcomes waiting to be collected), [`peer_log`] (rate-limited lines
//!   about refused peers), [`pipe_port`] (a worker process's end of its
//!   socket-pair link).
//! - State: [`state`] (the live tasks, their lifecycle, the cluster's
//!   slots and the clients waiting), [`cache`] (finished results),
//!   [`journal`] (the durable mode's log and store), [`monitor`] (what the
//!   dashboard shows), [`offered_schemas`] (schemas of tasks only
//!   subworkers provide).
//! - Machinery: [`pool`] (worker threads), [`timers`] (time-outs, retries,
//!   leases), [`callbacks`] (completion notices), [`scheduler`] (periodic
//!   runs), [`memory`], [`worker_processes`] (a control plane's
//!   supervised worker processes), [`run_log`] (which runs a worker
//!   process was executing when it died) and [`run_budget`] (the runs one
//!   may start before it is replaced).
//! - Settings: [`config`] and [`bounds`] (the bounds on what a peer may
//!   ask for).

pub mod bounds;
pub(crate) mod cache;
pub(crate) mod callbacks;
pub(crate) mod calls;
pub(crate) mod collector;
pub mod config;
pub(crate) mod endpoint;
pub(crate) mod journal;
pub(crate) mod membership;
pub(crate) mod memory;
pub(crate) mod monitor;
pub(crate) mod offered_schemas;
pub(crate) mod peer_log;
pub(crate) mod pipe_port;
pub(crate) mod pool;
pub(crate) mod routes;
pub(crate) mod run_budget;
pub(crate) mod run_log;
pub(crate) mod scheduler;
pub(crate) mod state;
pub(crate) mod timers;
pub(crate) mod worker_processes;
