//! The control plane's side of subworker membership: registration,
//! heartbeats, leaving, and noticing workers that go silent or away.
//!
//! All of it happens on one thread fed by a channel (management requests,
//! connection events of each worker's link, and a periodic tick), so that
//! membership changes are ordered and NNG callbacks never block on them.
//!
//! This file routes the management port's requests and has workers join
//! and leave; the rest is one concern a file: [`admission`] (whether a
//! registration may be taken, and what it means for a worker of the same
//! id; pure), [`connecting`] (registrations waiting for their link, with
//! deadlines; pure), [`links`] (dialing a worker, and its link connecting
//! or dropping), [`sweep`] (workers gone silent or away, registrations not
//! connected in time) and [`schedules`] (the periodic tasks workers declare).

mod admission;
mod connecting;
mod links;
mod schedules;
mod sweep;

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nng::Message;
use tracing::{info, warn};

use crate::cluster::routing::{Joining, WorkerKey};
use crate::server::config::ManagementConfig;
use crate::server::endpoint::Replier;
use crate::server::state::{error_reply, State};
use crate::wire::auth::Role;
use crate::wire::protocol::{decode, now_ms, ErrorKind, Heartbeat, Registration, Reply, Request, WorkerName};
use admission::{Refusal, Rejoin, Room};
use connecting::Connecting;
use links::Dialer;

/// How often silence and registrations are checked.
const TICK: Duration = Duration::from_millis(100);

/// What the membership thread acts on.
pub(crate) enum Event {
    /// A frame that arrived on the management port.
    Frame(Replier, Message),
    /// A worker's link connected (`true`) or dropped (`false`).
    Connection(WorkerKey, bool),
    /// The control plane is stopping.
    Stop,
}

/// Starts the membership thread.
pub(crate) fn start(
    state: Arc<State>,
    config: ManagementConfig,
    events: Sender<Event>,
    receiver: Receiver<Event>,
) -> JoinHandle<()> {
    let mut membership =
        ManagementPort { state, config, dialer: Dialer::new(events), connecting: Connecting::default() };
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            let mut next_tick = Instant::now() + TICK;
            loop {
                match receiver.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                    Ok(Event::Frame(replier, message)) => membership.on_frame(replier, &message),
                    Ok(Event::Connection(key, up)) => {
                        links::on_connection(&membership.state, &mut membership.connecting, key, up)
                    }
                    Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                if Instant::now() >= next_tick {
                    membership.tick();
                    next_tick = Instant::now() + TICK;
                }
            }
            membership.close_all();
        })
        .expect("spawning the membership thread")
}

/// The membership thread's state (the control plane's side of membership;
/// a subworker's side is `cluster::subworker::Membership`): what it answers on the management port,
/// and the workers it is still connecting to.
struct ManagementPort {
    state: Arc<State>,
    config: ManagementConfig,
    /// Opens the link to each registering worker.
    dialer: Dialer,
    /// Registrations waiting for the control plane's connection to the worker.
    connecting: Connecting<Replier>,
}

impl ManagementPort {
    /// Answers one frame of the management port.
    fn on_frame(&mut self, mut replier: Replier, message: &Message) {
        let request = match decode::<Request>(message, self.state.config.bounds.max_frame_bytes) {
            Ok(request) => request,
            Err(error) => {
                replier.warn_peer("refused a frame", &error);
                return replier.send(&Reply::Error(error.to_reply()));
            }
        };
        const WORKERS: &[Role] = &[Role::Worker, Role::Operator];
        if matches!(
            request,
            Request::Register(_)
                | Request::Heartbeat(_)
                | Request::Leave(_)
                | Request::Unregister(_)
                | Request::Started(_)
        ) {
            let Some(allowed) = replier.allow(WORKERS, "register or manage subworkers") else { return };
            replier = allowed;
        }
        match request {
            Request::Register(registration) => self.register(registration, replier),
            Request::Heartbeat(heartbeat) => replier.send(&self.heartbeat(heartbeat)),
            Request::Leave(name) => replier.send(&self.leave(&name)),
            Request::Unregister(name) => replier.send(&self.unregister(&name)),
            Request::Started(started) => replier.send(&self.state.on_started(&started)),
            Request::Workers => {
                let Some(replier) = replier.allow(&[Role::Client, Role::Operator], "list workers") else { return };
                replier.send(&Reply::Workers(self.state.cluster_status()))
            }
            Request::Discover => replier.send(&Reply::Discovered { management_port: self.config.port }),
            Request::Submit(_)
            | Request::Status { .. }
            | Request::Cancel { .. }
            | Request::Batch(_)
            | Request::Schedules
            | Request::Dispatch(_)
            | Request::Revoke { .. }
            | Request::HandBack { .. }
            | Request::Collect
            | Request::Tasks
            | Request::TaskLimits
            | Request::SetTaskLimit { .. }
            | Request::ClearTaskLimit { .. }
            | Request::PauseSchedule { .. }
            | Request::SubmitWorkflow(_)
            | Request::WorkflowStatus { .. }
            | Request::CancelWorkflow { .. }
            | Request::Calls(_) => replier.send(&error_reply(
                ErrorKind::WrongEndpoint,
                "the management port is for subworkers: submit tasks to a priority port and query results on base+4"
                    .into(),
            )),
        }
    }

    /// Takes a registration the bounds allow (`admission`), as a worker
    /// whose link is dialed now; it is answered when the link connects.
    fn register(&mut self, registration: Registration, replier: Replier) {
        let (room, rejoin) = {
            let tasks = self.state.lock();
            let cluster = &tasks.ledger.cluster();
            let worker_id = &registration.name.worker_id;
            let room = Room::in_cluster(cluster, worker_id, self.connecting.len());
            (room, admission::rejoin(cluster.find(worker_id), &registration.name))
        };
        let base = match admission::check(&registration, &self.state.config.bounds, room) {
            Ok(base) => base,
            Err(refusal) => {
                match &refusal {
                    Refusal::Malformed(message) => replier.warn_peer("refused a registration", message),
                    Refusal::Full(bound, _) => self.state.refusals.count(*bound),
                    Refusal::TooManySlots(_) | Refusal::Undialable(_) => {}
                }
                return replier.send(&Reply::Error(refusal.into_reply()));
            }
        };
        let Registration { name, address, concurrency, prefetch, tasks: offered } = registration;
        match rejoin {
            Rejoin::New => {}
            // The same process again: its earlier request timed out.
            Rejoin::Again { connected: true, .. } => return replier.send(&Reply::Done),
            Rejoin::Again { key, connected: false } => {
                if let Ok(earlier) = self.connecting.supersede(key, replier) {
                    earlier.send(&Reply::Error(connecting::superseded()));
                }
                return;
            }
            Rejoin::Duplicate(message) => {
                warn!(worker = %name.worker_id, %address, "refused a duplicate subworker id");
                return replier.send(&error_reply(ErrorKind::DuplicateWorker, message));
            }
            Rejoin::Replaces(key) => {
                self.remove(key, &format!("subworker '{}' registered again as a new process", name.worker_id))
            }
        }
        let key = self.state.lock().ledger.new_worker_key();
        let link = match self.dialer.open(&self.state, key, &name.worker_id, &base) {
            Ok(link) => link,
            Err(error) => {
                return replier.send(&error_reply(
                    ErrorKind::WorkerUnreachable,
                    format!("the control plane cannot dial subworker '{}' at {address}: {error}", name.worker_id),
                ))
            }
        };
        let provided: HashMap<String, _> = offered.into_iter().map(|t| (t.name.clone(), t)).collect();
        let declared: Vec<_> = provided.values().filter_map(|t| Some((t.name.clone(), t.limit?))).collect();
        let joining = Joining { key, name, address, concurrency, prefetch, tasks: provided, link };
        // Only a control plane enforces the task limits subworkers declare.
        let declared = if !self.state.config.is_subworker() { declared } else { Vec::new() };
        self.state.lock().ledger.joined(joining, declared, now_ms());
        self.connecting.wait(key, replier, Instant::now());
    }

    fn heartbeat(&mut self, heartbeat: Heartbeat) -> Reply {
        let name = &heartbeat.name;
        let back = self.state.drive_locked(|ledger, io| {
            let key = ledger.cluster().find(&name.worker_id).filter(|w| w.name == *name)?.key;
            Some(ledger.heartbeat(key, heartbeat.in_flight, now_ms(), io))
        });
        match back {
            Some(back) => {
                if back {
                    info!(worker = %name.worker_id, "subworker heard from again: active");
                }
                Reply::Done
            }
            None => error_reply(
                ErrorKind::UnknownWorker,
                format!(
                    "this control plane does not know subworker '{}' (it restarted, or forgot the worker after a long silence): register again",
                    name.worker_id
                ),
            ),
        }
    }

    fn leave(&mut self, name: &WorkerName) -> Reply {
        let why = format!("subworker '{}' is stopping", name.worker_id);
        let left = self.state.drive_locked(|ledger, io| {
            let key = ledger.cluster().find(&name.worker_id).filter(|w| w.name == *name).map(|w| w.key);
            key.is_some_and(|key| ledger.leaving(key, &why, now_ms(), io))
        });
        if left {
            info!(worker = %name.worker_id, "subworker stopping: no new tasks go to it");
        }
        Reply::Done
    }

    fn unregister(&mut self, name: &WorkerName) -> Reply {
        let key = self.state.lock().ledger.cluster().find(&name.worker_id).filter(|w| w.name == *name).map(|w| w.key);
        if let Some(key) = key {
            self.remove(key, &format!("subworker '{}' unregistered", name.worker_id));
            info!(worker = %name.worker_id, "subworker unregistered");
        }
        Reply::Done
    }

    /// Removes a worker, sending what it carried elsewhere, and closes its link.
    fn remove(&mut self, key: WorkerKey, why: &str) {
        let local = self.state.registry.schedules();
        let removed = self.state.drive_locked(|ledger, io| {
            let worker = ledger.remove_worker(key, why, now_ms(), io)?;
            // Its schedules leave with it, unless another provider declares them.
            let orphaned = schedules::orphaned(&worker, ledger.cluster(), local);
            Some((worker, orphaned))
        });
        let Some((worker, orphaned)) = removed else { return };
        schedules::unschedule(&self.state, &orphaned);
        if let Some(replier) = self.connecting.take(key) {
            replier.send(&error_reply(ErrorKind::WorkerUnreachable, why.to_string()));
        }
        // Closing waits for the link's callbacks, which take the task lock:
        // it must be released by now.
        drop(worker);
    }

    /// Sweeps for silence (`sweep`), then forgets the workers gone and
    /// refuses the registrations not connected in time.
    fn tick(&mut self) {
        let after = self.config.inactive_after;
        let swept = sweep::sweep(&self.state, after, now_ms(), &self.connecting.expired(Instant::now()));
        for (key, worker_id) in swept.forget {
            info!(worker = %worker_id, "forgot a subworker that has been gone for over {} s", after.as_secs_f64());
            self.remove(key, &format!("subworker '{worker_id}' is gone"));
        }
        for (key, address) in swept.unreachable {
            let replier = self.connecting.take(key).expect("listed above");
            self.remove(key, "it could not be reached");
            warn!(%address, "a subworker registered, but the control plane could not connect to it");
            replier.send(&Reply::Error(connecting::timed_out(&address)));
        }
    }

    /// Closes every link on the way out.
    fn close_all(&mut self) {
        let keys: Vec<WorkerKey> = self.state.lock().ledger.cluster().workers().map(|w| w.key).collect();
        for key in keys {
            self.remove(key, "the control plane stopped");
        }
    }
}
