//! The control plane's link to each registering subworker: dialing it,
//! and what happens when it connects (the worker becomes active and its
//! registration is answered) or drops (its tasks go elsewhere).

use std::sync::mpsc::Sender;
use std::sync::Arc;

use tracing::info;

use super::connecting::Connecting;
use super::{schedules, Event};
use crate::cluster::link::{Link, LinkAuth, LinkError};
use crate::cluster::routing::WorkerKey;
use crate::server::endpoint::Replier;
use crate::server::state::{Outbox, State};
use crate::wire::address::BaseAddress;
use crate::wire::auth::Role;
use crate::wire::protocol::{now_ms, Reply};

/// Dials subworkers, with what every link shares.
pub(crate) struct Dialer {
    /// Where each link's connection events go: the membership thread.
    events: Sender<Event>,
    /// The identity links seal forwarded tasks with.
    sender: Arc<crate::wire::auth::Sender>,
}

impl Dialer {
    /// A dialer whose links report their connection to `events`.
    pub(crate) fn new(events: Sender<Event>) -> Dialer {
        Dialer { events, sender: Arc::new(crate::wire::auth::Sender::new()) }
    }

    /// Opens the link to worker `key` (`worker_id`) at `base`: it connects
    /// in the background (reported as [`Event::Connection`]), and its frames
    /// go to the state for as long as the state lives. With a cluster key,
    /// its frames are sealed with that worker's control key, which no other
    /// subworker holds. A worker process this process started is reached
    /// over the socket pair its supervisor made for it instead (taken once:
    /// registering again, it is dialed).
    pub(crate) fn open(
        &self,
        state: &Arc<State>,
        key: WorkerKey,
        worker_id: &str,
        base: &BaseAddress,
    ) -> Result<Link, LinkError> {
        let events = self.events.clone();
        let weak = Arc::downgrade(state);
        let pipe = state.worker_pipes.lock().expect("worker pipes lock").remove(worker_id);
        if let Some(stream) = pipe {
            return Link::pipe(
                stream,
                worker_id,
                state.config.bounds.max_frame_bytes,
                move |up| {
                    let _ = events.send(Event::Connection(key, up));
                },
                move |channel, result| {
                    if let Some(state) = weak.upgrade() {
                        state.on_link_event(key, channel, result);
                    }
                },
            );
        }
        let auth = state.config.keys.as_ref().and_then(|ring| {
            let ring = ring.control_ring(worker_id)?;
            let key = ring.signer(Role::Control).ok()?;
            Some(LinkAuth::new(key, Arc::new(ring), self.sender.clone()))
        });
        Link::open(
            &base.at_offset(0),
            state.config.bounds.max_frame_bytes,
            auth,
            move |up| {
                let _ = events.send(Event::Connection(key, up));
            },
            move |channel, result| {
                if let Some(state) = weak.upgrade() {
                    state.on_link_event(key, channel, result);
                }
            },
        )
        .map_err(LinkError::from)
    }
}

/// Acts on worker `key`'s link connecting (`up`) or dropping: a worker
/// connecting for the first time becomes active, its registration is
/// answered and its periodic tasks are scheduled; a drop takes its tasks back.
pub(crate) fn on_connection(state: &State, connecting: &mut Connecting<Replier>, key: WorkerKey, up: bool) {
    let mut periodic = Vec::new();
    let mut outbox = Outbox::default();
    let mut tasks = state.lock();
    // A late event of a worker removed meanwhile changes nothing.
    if tasks.ledger.cluster().get(key).is_none() {
        return;
    }
    if !up {
        state.drive(&mut tasks, &mut outbox, |ledger, io| ledger.connection_lost(key, now_ms(), io));
    } else {
        let first = state.drive(&mut tasks, &mut outbox, |ledger, io| ledger.connected(key, now_ms(), io));
        // It is still there: the event does not remove workers.
        if let Some(worker) = tasks.ledger.cluster().get(key) {
            if first {
                let mut names: Vec<&str> = worker.tasks.keys().map(String::as_str).collect();
                names.sort_unstable();
                info!(
                    worker = %worker.name.worker_id,
                    address = %worker.address,
                    concurrency = worker.concurrency,
                    prefetch = worker.slots.len() as u32 - worker.concurrency,
                    tasks = %names.join(", "),
                    "subworker registered"
                );
                if let Some(replier) = connecting.take(key) {
                    replier.send(&Reply::Done);
                }
                periodic.extend(worker.tasks.values().filter(|t| !t.schedule.is_empty()).cloned());
            }
        }
    }
    drop(tasks);
    outbox.deliver();
    // The scheduler's lock is taken before the task lock, never after.
    schedules::offered(state, &periodic);
}
