//! Whether a subworker's registration may be taken: its name, address,
//! offered tasks and their declared limits within the bounds, room left
//! under the cluster's bounds, and what it means for a worker already
//! registered under its id. Pure checks: the cluster's size and the
//! earlier worker are passed in, and the caller answers and counts.

use crate::cluster::routing::{Cluster, Phase, Worker, WorkerKey};
use crate::server::bounds::{Bound, Bounds, MAX_NAME_BYTES, MAX_OFFERED_TEXT_BYTES, MAX_SCHEDULE_BYTES};
use crate::wire::address::BaseAddress;
use crate::wire::protocol::{ErrorKind, ErrorReply, Registration, WorkerName, MAX_WORKER_SLOTS};

/// The longest base address a subworker may give.
const MAX_ADDRESS_BYTES: usize = 256;

/// Whether `name` is a usable worker id or task name: 1 to
/// [`MAX_NAME_BYTES`] bytes, no whitespace or control characters.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len()) && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// How much of the cluster's bounds is taken when a registration arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Room {
    /// Registrations whose link is still being connected.
    pub(crate) connecting: usize,
    /// Subworkers registered, not counting an earlier run of the one registering.
    pub(crate) workers: usize,
    /// Their slots together.
    pub(crate) slots: usize,
}

impl Room {
    /// The room `cluster` leaves for a registration of `worker_id`: a worker
    /// registering again replaces its earlier self, so that one is not counted.
    pub(crate) fn in_cluster<L>(cluster: &Cluster<L>, worker_id: &str, connecting: usize) -> Room {
        let (workers, slots) = cluster.size();
        match cluster.find(worker_id) {
            Some(earlier) => Room { connecting, workers: workers - 1, slots: slots - earlier.slots.len() },
            None => Room { connecting, workers, slots },
        }
    }
}

/// Why a registration is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It breaks a bound on what one registration may carry and can never
    /// be taken (`BadRegistration`); worth a line about the peer.
    Malformed(String),
    /// A bound of the cluster is full: it may be taken later (`Busy`),
    /// counted under that bound.
    Full(Bound, String),
    /// It asks for more slots than one subworker may have (`BadRegistration`).
    TooManySlots(String),
    /// Its address cannot be dialed (`WorkerUnreachable`).
    Undialable(String),
}

impl Refusal {
    /// The error the registering subworker is answered.
    pub(crate) fn into_reply(self) -> ErrorReply {
        match self {
            Refusal::Malformed(message) | Refusal::TooManySlots(message) => {
                ErrorReply::new(ErrorKind::BadRegistration, message)
            }
            Refusal::Full(_, message) => ErrorReply::new(ErrorKind::Busy, message),
            Refusal::Undialable(message) => ErrorReply::new(ErrorKind::WorkerUnreachable, message),
        }
    }
}

/// Checks `registration` against `bounds` and the `room` left, in this
/// order: what it carries, the cluster's bounds, its slots, its address.
/// Answers the base address to dial.
pub(crate) fn check(registration: &Registration, bounds: &Bounds, room: Room) -> Result<BaseAddress, Refusal> {
    carried(registration, bounds).map_err(Refusal::Malformed)?;
    let worker_id = &registration.name.worker_id;
    let full = |bound: Bound, what: String| {
        let (flag, value) = (bound.flag(), bound.value(bounds));
        let message =
            format!("the control plane cannot take subworker '{worker_id}' now: {what} ({flag} {value}); retry later");
        Err(Refusal::Full(bound, message))
    };
    if room.connecting >= bounds.max_pending_registrations {
        return full(Bound::PendingRegistrations, format!("{} registrations are being connected", room.connecting));
    }
    if room.workers >= bounds.max_subworkers {
        return full(Bound::Subworkers, format!("{} subworkers are registered", room.workers));
    }
    let asked = (registration.concurrency.max(1) as usize).saturating_add(registration.prefetch as usize);
    if room.slots.saturating_add(asked) > bounds.max_subworker_slots {
        return full(Bound::SubworkerSlots, format!("{} slots are registered and it asks for {asked}", room.slots));
    }
    let slots = u64::from(registration.concurrency.max(1)) + u64::from(registration.prefetch);
    if slots > u64::from(MAX_WORKER_SLOTS) {
        return Err(Refusal::TooManySlots(format!(
            "subworker '{worker_id}' asks for {slots} slots (--concurrency plus --prefetch); at most {MAX_WORKER_SLOTS} are allowed"
        )));
    }
    BaseAddress::parse(&registration.address).map_err(|error| {
        Refusal::Undialable(format!("subworker '{worker_id}' gave an address the control plane cannot dial: {error}"))
    })
}

/// Checks what one registration carries: its id, address, offered tasks,
/// their schedules, declared limits and text.
fn carried(registration: &Registration, bounds: &Bounds) -> Result<(), String> {
    let worker_id = &registration.name.worker_id;
    if !valid_name(worker_id) {
        return Err(format!(
            "a --worker-id must be 1 to {MAX_NAME_BYTES} bytes without spaces or control characters (got {} bytes)",
            worker_id.len()
        ));
    }
    if registration.address.len() > MAX_ADDRESS_BYTES {
        return Err(format!("subworker '{worker_id}' gave an address longer than {MAX_ADDRESS_BYTES} bytes"));
    }
    if registration.tasks.len() > bounds.max_offered_tasks {
        return Err(format!(
            "subworker '{worker_id}' offers {} tasks; at most {} are taken (--max-offered-tasks)",
            registration.tasks.len(),
            bounds.max_offered_tasks
        ));
    }
    if let Some(task) =
        registration.tasks.iter().find(|t| !valid_name(&t.name) || t.schedule.len() > MAX_SCHEDULE_BYTES)
    {
        return Err(format!(
            "subworker '{worker_id}' offers a task whose name is not 1 to {MAX_NAME_BYTES} bytes without spaces, or whose schedule is over {MAX_SCHEDULE_BYTES} bytes ({} bytes)",
            task.name.len()
        ));
    }
    if let Some((task, error)) =
        registration.tasks.iter().find_map(|t| Some((&t.name, t.limit.as_ref()?.check().err()?)))
    {
        return Err(format!(
            "subworker '{worker_id}' declares a limit for task '{task}' that is out of range: {error}"
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
    if text > MAX_OFFERED_TEXT_BYTES {
        return Err(format!(
            "subworker '{worker_id}' offers {text} bytes of task docs, signatures and schemas; at most {MAX_OFFERED_TEXT_BYTES} are taken per registration"
        ));
    }
    Ok(())
}

/// What a registration means for the worker registered under its id, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejoin {
    /// No worker has its id.
    New,
    /// The same process again (its earlier request timed out): answered
    /// at once if its link is up, else when it connects.
    Again {
        /// The worker it already is.
        key: WorkerKey,
        /// Whether its link has connected.
        connected: bool,
    },
    /// A new process under the id of one that is not alive: that one is
    /// removed first.
    Replaces(WorkerKey),
    /// Another process with its id is alive: refused (`DuplicateWorker`)
    /// with this message.
    Duplicate(String),
}

/// What registering `name` means, given the worker already registered under its id.
pub(crate) fn rejoin<L>(existing: Option<&Worker<L>>, name: &WorkerName) -> Rejoin {
    match existing {
        None => Rejoin::New,
        Some(existing) if existing.name == *name => {
            Rejoin::Again { key: existing.key, connected: existing.phase != Phase::Connecting }
        }
        Some(existing) if existing.alive() => Rejoin::Duplicate(format!(
            "a subworker with id '{}' is already registered from {} and is alive; give each subworker its own --worker-id",
            name.worker_id, existing.address
        )),
        Some(existing) => Rejoin::Replaces(existing.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::routing::Joining;
    use crate::wire::protocol::{OfferedTask, TaskId};
    use crate::wire::task_limit::TaskLimit;

    fn name(id: &str) -> WorkerName {
        WorkerName { worker_id: id.into(), instance: TaskId::new_v4() }
    }

    fn registration(id: &str, tasks: &[&str]) -> Registration {
        Registration {
            name: name(id),
            address: "tcp://127.0.0.1:9000".into(),
            concurrency: 2,
            prefetch: 1,
            tasks: tasks.iter().map(|t| OfferedTask::new(t)).collect(),
        }
    }

    const EMPTY: Room = Room { connecting: 0, workers: 0, slots: 0 };

    /// Adds a worker of `slots` slots, connected and active when `alive`.
    fn add(cluster: &mut Cluster<()>, name: &WorkerName, slots: u32, alive: bool) -> WorkerKey {
        let key = cluster.new_key();
        let address = "tcp://10.0.0.1:1".to_string();
        let tasks = Default::default();
        let joining = Joining { key, name: name.clone(), address, concurrency: slots, prefetch: 0, tasks, link: () };
        cluster.add(joining, 1_000);
        let worker = cluster.get_mut(key).unwrap();
        worker.phase = if alive { Phase::Active } else { Phase::Inactive };
        worker.connected = alive;
        key
    }

    fn malformed(refusal: Result<BaseAddress, Refusal>) -> String {
        match refusal {
            Err(Refusal::Malformed(message)) => message,
            other => panic!("expected a malformed refusal, got {other:?}"),
        }
    }

    #[test]
    fn names_are_one_to_the_limit_of_bytes_without_spaces_or_controls() {
        assert!(valid_name("worker-1"));
        assert!(valid_name(&"a".repeat(MAX_NAME_BYTES)));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(MAX_NAME_BYTES + 1)));
        assert!(!valid_name("two words"));
        assert!(!valid_name("bell\u{7}"));
    }

    #[test]
    fn a_sound_registration_is_taken_with_its_base_address() {
        let base = check(&registration("w1", &["add"]), &Bounds::default(), EMPTY).expect("taken");
        assert_eq!(base.at_offset(0), "tcp://127.0.0.1:9000");
    }

    #[test]
    fn what_a_registration_carries_is_bounded() {
        let bounds = Bounds { max_offered_tasks: 2, ..Bounds::default() };
        let message = malformed(check(&registration("bad id", &[]), &bounds, EMPTY));
        assert!(message.contains("--worker-id"), "{message}");
        let mut long = registration("w1", &[]);
        long.address = format!("tcp://{}:1", "h".repeat(MAX_ADDRESS_BYTES));
        assert!(malformed(check(&long, &bounds, EMPTY)).contains("address longer"));
        let message = malformed(check(&registration("w1", &["a", "b", "c"]), &bounds, EMPTY));
        assert!(message.contains("offers 3 tasks") && message.contains("--max-offered-tasks"), "{message}");
        assert!(malformed(check(&registration("w1", &["no good"]), &bounds, EMPTY)).contains("a task whose name"));
        let mut scheduled = registration("w1", &["tick"]);
        scheduled.tasks[0].schedule = "x".repeat(MAX_SCHEDULE_BYTES + 1);
        assert!(malformed(check(&scheduled, &bounds, EMPTY)).contains("schedule is over"));
        let mut wordy = registration("w1", &["doc"]);
        wordy.tasks[0].doc = "d".repeat(MAX_OFFERED_TEXT_BYTES + 1);
        assert!(malformed(check(&wordy, &bounds, EMPTY)).contains("bytes of task docs"));
    }

    #[test]
    fn a_declared_limit_out_of_range_is_malformed() {
        let mut limited = registration("w1", &["capped"]);
        limited.tasks[0].limit = Some(TaskLimit { max_running: Some(0), ..TaskLimit::default() });
        let message = malformed(check(&limited, &Bounds::default(), EMPTY));
        assert!(message.contains("declares a limit for task 'capped'"), "{message}");
    }

    #[test]
    fn a_full_bound_is_busy_and_names_its_flag() {
        let bounds =
            Bounds { max_pending_registrations: 1, max_subworkers: 2, max_subworker_slots: 10, ..Bounds::default() };
        let sound = registration("w1", &["add"]);
        let busy = |room| match check(&sound, &bounds, room) {
            Err(Refusal::Full(bound, message)) => (bound, message),
            other => panic!("expected busy, got {other:?}"),
        };
        let (bound, message) = busy(Room { connecting: 1, ..EMPTY });
        assert_eq!(bound, Bound::PendingRegistrations);
        assert!(message.contains("--max-pending-registrations 1") && message.ends_with("retry later"), "{message}");
        assert_eq!(busy(Room { workers: 2, ..EMPTY }).0, Bound::Subworkers);
        // 2 runs plus 1 prefetched on top of 8 is over 10.
        let (bound, message) = busy(Room { slots: 8, ..EMPTY });
        assert_eq!(bound, Bound::SubworkerSlots);
        assert!(message.contains("8 slots are registered and it asks for 3"), "{message}");
        assert!(check(&sound, &bounds, Room { slots: 7, ..EMPTY }).is_ok(), "exactly at the bound is taken");
    }

    #[test]
    fn more_slots_than_one_worker_may_have_or_an_undialable_address_is_refused() {
        let bounds = Bounds { max_subworker_slots: usize::MAX, ..Bounds::default() };
        let mut greedy = registration("w1", &[]);
        greedy.concurrency = MAX_WORKER_SLOTS;
        let refusal = check(&greedy, &bounds, EMPTY).unwrap_err();
        assert!(matches!(&refusal, Refusal::TooManySlots(m) if m.contains("--concurrency plus --prefetch")));
        assert_eq!(refusal.into_reply().kind, ErrorKind::BadRegistration);
        let mut lost = registration("w1", &[]);
        lost.address = "not an address".into();
        let refusal = check(&lost, &bounds, EMPTY).unwrap_err();
        assert!(matches!(&refusal, Refusal::Undialable(m) if m.contains("cannot dial")));
        assert_eq!(refusal.into_reply().kind, ErrorKind::WorkerUnreachable);
    }

    #[test]
    fn a_worker_registering_again_does_not_count_against_the_room() {
        let mut cluster = Cluster::default();
        let first = name("w1");
        add(&mut cluster, &first, 3, true);
        add(&mut cluster, &name("w2"), 2, true);
        assert_eq!(Room::in_cluster(&cluster, "w3", 1), Room { connecting: 1, workers: 2, slots: 5 });
        assert_eq!(Room::in_cluster(&cluster, "w1", 0), Room { connecting: 0, workers: 1, slots: 2 });
    }

    #[test]
    fn an_id_is_new_the_same_process_again_a_successor_or_a_duplicate() {
        let mut cluster = Cluster::default();
        let live = name("live");
        let live_key = add(&mut cluster, &live, 1, true);
        let gone = name("gone");
        let gone_key = add(&mut cluster, &gone, 1, false);
        assert_eq!(rejoin(cluster.find("none"), &name("none")), Rejoin::New);
        assert_eq!(rejoin(cluster.find("live"), &live), Rejoin::Again { key: live_key, connected: true });
        assert_eq!(rejoin(cluster.find("gone"), &name("gone")), Rejoin::Replaces(gone_key));
        let Rejoin::Duplicate(message) = rejoin(cluster.find("live"), &name("live")) else { panic!("a duplicate") };
        assert!(message.contains("already registered from tcp://10.0.0.1:1"), "{message}");
        cluster.get_mut(gone_key).unwrap().phase = Phase::Connecting;
        assert_eq!(rejoin(cluster.find("gone"), &gone), Rejoin::Again { key: gone_key, connected: false });
    }
}
