//! The control plane's side of subworker membership: registration,
//! heartbeats, leaving, and noticing workers that go silent or away.
//!
//! All of it happens on one thread fed by a channel (management requests,
//! connection events of each worker's link, and a periodic tick), so that
//! membership changes are ordered and NNG callbacks never block on them.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nng::Message;
use tracing::{debug, info, warn};

use crate::cluster::link::{Link, LinkAuth};
use crate::cluster::routing::{Joining, Phase, WorkerKey};
use crate::plugins::schedule::Schedule;
use crate::server::config::ManagementConfig;
use crate::server::endpoint::Replier;
use crate::server::limits::{Bound, MAX_NAME_BYTES, MAX_OFFERED_TEXT_BYTES, MAX_SCHEDULE_BYTES};
use crate::server::state::{error_reply, Outbox, State};
use crate::wire::address::BaseAddress;
use crate::wire::auth::Role;
use crate::wire::protocol::{
    decode, ErrorKind, ErrorReply, Heartbeat, OfferedTask, Registration, Reply, Request, WorkerName, MAX_WORKER_SLOTS,
};

/// How often silence and registrations are checked.
const TICK: Duration = Duration::from_millis(100);

/// How long a registering subworker has to accept the control plane's connection.
const CONNECT_LIMIT: Duration = Duration::from_secs(3);

/// The longest base address a subworker may give.
const MAX_ADDRESS_BYTES: usize = 256;

/// Whether `name` is a usable worker id or task name: 1 to
/// [`MAX_NAME_BYTES`] bytes, no whitespace or control characters.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len()) && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

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
    let sender = Arc::new(crate::wire::auth::Sender::new());
    let mut membership = Membership { state, config, events, connecting: HashMap::new(), sender };
    std::thread::Builder::new()
        .name("membership".into())
        .spawn(move || {
            let mut next_tick = Instant::now() + TICK;
            loop {
                match receiver.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                    Ok(Event::Frame(replier, message)) => membership.on_frame(replier, &message),
                    Ok(Event::Connection(key, up)) => membership.on_connection(key, up),
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

struct Membership {
    state: Arc<State>,
    config: ManagementConfig,
    events: Sender<Event>,
    /// Registrations waiting for the control plane's connection to the
    /// worker, with their deadline.
    connecting: HashMap<WorkerKey, (Replier, Instant)>,
    /// The identity links seal forwarded tasks with.
    sender: Arc<crate::wire::auth::Sender>,
}

impl Membership {
    fn on_frame(&mut self, mut replier: Replier, message: &Message) {
        let request = match decode::<Request>(message, self.state.config.limits.max_frame_bytes) {
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
            Request::Workers => replier.send(&Reply::Workers(self.state.cluster_status())),
            Request::Discover => replier.send(&Reply::Discovered { management_port: self.config.port }),
            Request::Submit(_)
            | Request::Status { .. }
            | Request::Cancel { .. }
            | Request::Batch(_)
            | Request::Schedules
            | Request::Dispatch(_)
            | Request::Revoke { .. }
            | Request::Collect
            | Request::Tasks
            | Request::TaskLimits
            | Request::SetTaskLimit { .. }
            | Request::ClearTaskLimit { .. }
            | Request::PauseSchedule { .. }
            | Request::SubmitWorkflow(_)
            | Request::WorkflowStatus { .. }
            | Request::CancelWorkflow { .. } => replier.send(&error_reply(
                ErrorKind::WrongEndpoint,
                "the management port is for subworkers: submit tasks to a priority port and query results on base+4"
                    .into(),
            )),
        }
    }

    fn register(&mut self, registration: Registration, replier: Replier) {
        if let Err(refusal) = self.admissible(&registration) {
            if refusal.kind == ErrorKind::BadRegistration {
                replier.warn_peer("refused a registration", &refusal.message);
            }
            return replier.send(&Reply::Error(refusal));
        }
        let Registration { name, address, concurrency, prefetch, tasks: offered } = registration;
        let slots = u64::from(concurrency.max(1)) + u64::from(prefetch);
        if slots > u64::from(MAX_WORKER_SLOTS) {
            return replier.send(&error_reply(
                ErrorKind::BadRegistration,
                format!(
                    "subworker '{}' asks for {slots} slots (--concurrency plus --prefetch); at most {MAX_WORKER_SLOTS} are allowed",
                    name.worker_id
                ),
            ));
        }
        let base = match BaseAddress::parse(&address) {
            Ok(base) => base,
            Err(error) => {
                return replier.send(&error_reply(
                    ErrorKind::WorkerUnreachable,
                    format!("subworker '{}' gave an address the control plane cannot dial: {error}", name.worker_id),
                ))
            }
        };
        let replaced = {
            let tasks = self.state.lock();
            match tasks.ledger.cluster.find(&name.worker_id) {
                Some(existing) if existing.name == name => {
                    // The same process again: its earlier request timed out.
                    let key = existing.key;
                    let connected = existing.phase != Phase::Connecting;
                    drop(tasks);
                    if connected {
                        return replier.send(&Reply::Done);
                    }
                    if let Some((earlier, deadline)) = self.connecting.remove(&key) {
                        earlier
                            .send(&error_reply(ErrorKind::WorkerUnreachable, "superseded by a newer request".into()));
                        self.connecting.insert(key, (replier, deadline));
                    }
                    return;
                }
                Some(existing) if existing.alive() => {
                    let message = format!(
                        "a subworker with id '{}' is already registered from {} and is alive; give each subworker its own --worker-id",
                        name.worker_id, existing.address
                    );
                    drop(tasks);
                    warn!(worker = %name.worker_id, %address, "refused a duplicate subworker id");
                    return replier.send(&error_reply(ErrorKind::DuplicateWorker, message));
                }
                Some(existing) => Some(existing.key),
                None => None,
            }
        };
        if let Some(key) = replaced {
            self.remove(key, &format!("subworker '{}' registered again as a new process", name.worker_id));
        }
        let key = self.state.lock().ledger.cluster.new_key();
        let events = self.events.clone();
        let state = Arc::downgrade(&self.state);
        let auth = self.state.config.keys.as_ref().and_then(|ring| {
            let key = ring.signer(Role::Worker).ok()?;
            Some(LinkAuth::new(key, ring.clone(), self.sender.clone()))
        });
        let link = Link::open(
            &base.at_offset(0),
            self.state.config.limits.max_frame_bytes,
            auth,
            move |up| {
                let _ = events.send(Event::Connection(key, up));
            },
            move |channel, result| {
                if let Some(state) = state.upgrade() {
                    state.on_link_event(key, channel, result);
                }
            },
        );
        let link = match link {
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
        let mut tasks = self.state.lock();
        tasks.ledger.cluster.add(joining);
        if self.state.config.management.is_some() {
            for (task_name, limit) in declared {
                if tasks.ledger.task_limits.declare_offered(&task_name, limit, crate::wire::protocol::now_ms()) {
                    info!(task = %task_name, limit = %limit.describe(), "cluster-wide limit declared by a subworker's plugin");
                }
            }
        }
        drop(tasks);
        self.connecting.insert(key, (replier, Instant::now() + CONNECT_LIMIT));
    }

    /// Refuses a registration the limits do not allow: `BadRegistration`
    /// for one that can never be taken, `Busy` for one that may be later.
    fn admissible(&self, registration: &Registration) -> Result<(), ErrorReply> {
        let limits = &self.state.config.limits;
        let worker_id = &registration.name.worker_id;
        let bad = |message: String| Err(ErrorReply::new(ErrorKind::BadRegistration, message));
        if !valid_name(worker_id) {
            return bad(format!(
                "a --worker-id must be 1 to {MAX_NAME_BYTES} bytes without spaces or control characters (got {} bytes)",
                worker_id.len()
            ));
        }
        if registration.address.len() > MAX_ADDRESS_BYTES {
            return bad(format!("subworker '{worker_id}' gave an address longer than {MAX_ADDRESS_BYTES} bytes"));
        }
        if registration.tasks.len() > limits.max_offered_tasks {
            return bad(format!(
                "subworker '{worker_id}' offers {} tasks; at most {} are taken (--max-offered-tasks)",
                registration.tasks.len(),
                limits.max_offered_tasks
            ));
        }
        if let Some(task) =
            registration.tasks.iter().find(|t| !valid_name(&t.name) || t.schedule.len() > MAX_SCHEDULE_BYTES)
        {
            return bad(format!(
                "subworker '{worker_id}' offers a task whose name is not 1 to {MAX_NAME_BYTES} bytes without spaces, or whose schedule is over {MAX_SCHEDULE_BYTES} bytes ({} bytes)",
                task.name.len()
            ));
        }
        let text: usize = registration
            .tasks
            .iter()
            .map(|t| {
                let schemas = [&t.args_schema, &t.result_schema].map(|s| s.as_ref().map_or(0, String::len));
                t.doc.len().saturating_add(t.signature.len()).saturating_add(schemas[0]).saturating_add(schemas[1])
            })
            .fold(0, usize::saturating_add);
        if let Some((task, error)) =
            registration.tasks.iter().find_map(|t| Some((&t.name, t.limit.as_ref()?.check().err()?)))
        {
            return bad(format!(
                "subworker '{worker_id}' declares a limit for task '{task}' that is out of range: {error}"
            ));
        }
        if text > MAX_OFFERED_TEXT_BYTES {
            return bad(format!(
                "subworker '{worker_id}' offers {text} bytes of task docs, signatures and schemas; at most {MAX_OFFERED_TEXT_BYTES} are taken per registration"
            ));
        }
        let busy = |bound: Bound, what: String| {
            self.state.refusals.count(bound);
            Err(ErrorReply::new(
                ErrorKind::Busy,
                format!(
                    "the control plane cannot take subworker '{worker_id}' now: {what} ({} {}); retry later",
                    bound.flag(),
                    bound.value(limits)
                ),
            ))
        };
        if self.connecting.len() >= limits.max_pending_registrations {
            return busy(
                Bound::PendingRegistrations,
                format!("{} registrations are being connected", self.connecting.len()),
            );
        }
        let tasks = self.state.lock();
        let (workers, slots) = tasks.ledger.cluster.size();
        // A worker registering again replaces its earlier self.
        let (workers, slots) = match tasks.ledger.cluster.find(worker_id) {
            Some(earlier) => (workers - 1, slots - earlier.slots.len()),
            None => (workers, slots),
        };
        drop(tasks);
        if workers >= limits.max_subworkers {
            return busy(Bound::Subworkers, format!("{workers} subworkers are registered"));
        }
        let asked = (registration.concurrency.max(1) as usize).saturating_add(registration.prefetch as usize);
        if slots.saturating_add(asked) > limits.max_subworker_slots {
            return busy(Bound::SubworkerSlots, format!("{slots} slots are registered and it asks for {asked}"));
        }
        Ok(())
    }

    fn on_connection(&mut self, key: WorkerKey, up: bool) {
        let mut outbox = Outbox::default();
        let mut periodic = Vec::new();
        let mut tasks = self.state.lock();
        let Some(worker) = tasks.ledger.cluster.get_mut(key) else { return };
        if up {
            worker.connected = true;
            if worker.phase == Phase::Connecting {
                worker.phase = Phase::Active;
                worker.last_seen = Instant::now();
                worker.last_seen_ms = crate::wire::protocol::now_ms();
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
                if let Some((replier, _)) = self.connecting.remove(&key) {
                    replier.send(&Reply::Done);
                }
                periodic.extend(worker.tasks.values().filter(|t| !t.schedule.is_empty()).cloned());
            }
            if let Err(error) = worker.link.collect() {
                debug!(worker = %worker.name.worker_id, %error, "could not ask a subworker for outcomes");
            }
            self.state.fill(&mut tasks, &mut outbox);
        } else {
            let worker_id = tasks.ledger.cluster.disconnected(key).unwrap_or_default();
            let why = format!("the connection to subworker '{worker_id}' dropped");
            warn!(worker = %worker_id, "lost the connection to a subworker: excluded, its tasks go elsewhere");
            self.state.take_back(&mut tasks, key, &why, &mut outbox);
        }
        drop(tasks);
        outbox.deliver();
        // The scheduler's lock is taken before the task lock, never after.
        self.schedule_offered(&periodic);
    }

    /// Schedules the periodic tasks a subworker's plugins declare (checked
    /// by the subworker when it loaded them).
    fn schedule_offered(&self, offered: &[OfferedTask]) {
        let Some(scheduler) = &self.state.scheduler else { return };
        for task in offered {
            let added = Schedule::parse(&task.name, &task.schedule)
                .map_err(|e| e.to_string())
                .and_then(|schedule| scheduler.add(schedule).map_err(|e| e.to_string()));
            if let Err(error) = added {
                warn!("a subworker offers a periodic task that is not scheduled: {error}");
            }
        }
    }

    fn heartbeat(&mut self, heartbeat: Heartbeat) -> Reply {
        let mut tasks = self.state.lock();
        let key = match tasks.ledger.cluster.find(&heartbeat.name.worker_id) {
            Some(worker) if worker.name == heartbeat.name => worker.key,
            _ => {
                return error_reply(
                    ErrorKind::UnknownWorker,
                    format!(
                        "this control plane does not know subworker '{}' (it restarted, or forgot the worker after a long silence): register again",
                        heartbeat.name.worker_id
                    ),
                )
            }
        };
        if tasks.ledger.cluster.heard_from(key, heartbeat.in_flight) {
            info!(worker = %heartbeat.name.worker_id, "subworker heard from again: active");
            let mut outbox = Outbox::default();
            self.state.fill(&mut tasks, &mut outbox);
            drop(tasks);
            outbox.deliver();
        }
        Reply::Done
    }

    fn leave(&mut self, name: &WorkerName) -> Reply {
        let mut tasks = self.state.lock();
        let key = tasks.ledger.cluster.find(&name.worker_id).filter(|w| w.name == *name).map(|w| w.key);
        if let Some(worker) = key.and_then(|key| tasks.ledger.cluster.get_mut(key)) {
            worker.phase = Phase::Draining;
            info!(worker = %name.worker_id, "subworker stopping: no new tasks go to it");
            let mut outbox = Outbox::default();
            let why = format!("subworker '{}' is stopping", name.worker_id);
            self.state.settle_stranded(&mut tasks, &why, &mut outbox);
            drop(tasks);
            outbox.deliver();
        }
        Reply::Done
    }

    fn unregister(&mut self, name: &WorkerName) -> Reply {
        let key = self.state.lock().ledger.cluster.find(&name.worker_id).filter(|w| w.name == *name).map(|w| w.key);
        if let Some(key) = key {
            self.remove(key, &format!("subworker '{}' unregistered", name.worker_id));
            info!(worker = %name.worker_id, "subworker unregistered");
        }
        Reply::Done
    }

    /// Removes a worker, sending what it carried elsewhere, and closes its link.
    fn remove(&mut self, key: WorkerKey, why: &str) {
        let mut outbox = Outbox::default();
        let mut tasks = self.state.lock();
        let Some((worker, carried)) = tasks.ledger.cluster.remove(key) else { return };
        let carried = carried.into_iter().map(|(_, task_id)| task_id).collect();
        self.state.worker_left(&mut tasks, carried, why, &mut outbox);
        // Its schedules leave with it, unless another provider declares them.
        let local = self.state.registry.schedules();
        let orphaned: Vec<&str> = worker
            .tasks
            .values()
            .filter(|t| !t.schedule.is_empty() && !tasks.ledger.cluster.schedules(&t.name))
            .filter(|t| !local.iter().any(|schedule| schedule.task_name == t.name))
            .map(|t| t.name.as_str())
            .collect();
        drop(tasks);
        outbox.deliver();
        if let Some(scheduler) = &self.state.scheduler {
            for task_name in orphaned {
                scheduler.remove(task_name);
            }
        }
        if let Some((replier, _)) = self.connecting.remove(&key) {
            replier.send(&error_reply(ErrorKind::WorkerUnreachable, why.to_string()));
        }
        // Closing waits for the link's callbacks, which take the task lock:
        // it must be released by now.
        drop(worker);
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let after = self.config.inactive_after;
        let mut outbox = Outbox::default();
        let mut forget = Vec::new();
        let mut unreachable = Vec::new();
        {
            let mut tasks = self.state.lock();
            for key in tasks.ledger.cluster.silent(now, after) {
                let Some(worker) = tasks.ledger.cluster.get(key) else { continue };
                let why =
                    format!("subworker '{}' has been silent for over {} s", worker.name.worker_id, after.as_secs_f64());
                warn!(worker = %worker.name.worker_id, "no heartbeat for over {} s (--inactive-after): excluded until it heartbeats again", after.as_secs_f64());
                self.state.take_back(&mut tasks, key, &why, &mut outbox);
            }
            for worker in tasks.ledger.cluster.workers() {
                let silent_for = now.saturating_duration_since(worker.last_seen);
                if !worker.connected && worker.phase != Phase::Connecting && silent_for > after {
                    forget.push((worker.key, worker.name.worker_id.clone()));
                }
            }
            for (key, (_, deadline)) in &self.connecting {
                if now >= *deadline {
                    let address = tasks.ledger.cluster.get(*key).map(|w| w.address.clone()).unwrap_or_default();
                    unreachable.push((*key, address));
                }
            }
            self.state.fill(&mut tasks, &mut outbox);
        }
        outbox.deliver();
        for (key, worker_id) in forget {
            info!(worker = %worker_id, "forgot a subworker that has been gone for over {} s", after.as_secs_f64());
            self.remove(key, &format!("subworker '{worker_id}' is gone"));
        }
        for (key, address) in unreachable {
            let (replier, _) = self.connecting.remove(&key).expect("listed above");
            self.remove(key, "it could not be reached");
            warn!(%address, "a subworker registered, but the control plane could not connect to it");
            replier.send(&error_reply(
                ErrorKind::WorkerUnreachable,
                format!(
                    "the control plane could not connect to {address} within {} s: make sure the subworker's --base-address (or --advertise-address) is reachable from the control plane's host",
                    CONNECT_LIMIT.as_secs()
                ),
            ));
        }
    }

    /// Closes every link on the way out.
    fn close_all(&mut self) {
        let keys: Vec<WorkerKey> = self.state.lock().ledger.cluster.workers().map(|w| w.key).collect();
        for key in keys {
            self.remove(key, "the control plane stopped");
        }
    }
}
