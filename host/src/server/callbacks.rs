//! Completion notices pushed to callback addresses. Threads of their own
//! send them (`--callback-concurrency`), so an unreachable address delays
//! no task and no worker, and, as each address has at most one notice in
//! flight, other addresses' notices go on while one stalls. The queue is
//! bounded (`--callback-queue`): a notice beyond it is dropped and counted,
//! and the notices of one key's tasks (one connection's without keys) may
//! take only their share of it (`--queue-share`), so that one tenant's dead
//! addresses cannot crowd out others' notices.
//! An address that did not take a notice within `--callback-timeout` is
//! left alone for [`QUARANTINE`]: its waiting notices, and those that come
//! meanwhile, are dropped and counted rather than each costing a timeout.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nng::options::{Options, ReconnectMaxTime, SendTimeout};
use nng::{Protocol, Socket};
use tracing::{debug, warn};

use crate::server::bounds::{Bound, Bounds, Refusals};
use crate::wire::auth::Tenant;
use crate::wire::protocol::{encode_message, Notice};

/// How long an address that failed to take a notice gets none.
pub(crate) const QUARANTINE: Duration = Duration::from_secs(10);

/// The longest callback address accepted, in bytes.
pub(crate) const MAX_ADDRESS_BYTES: usize = 256;

/// Sockets each sending thread keeps open to recent callback addresses.
const OPEN_SOCKETS: usize = 16;

/// Addresses remembered as failing at most; beyond it the oldest are forgotten.
const QUARANTINED_ADDRESSES: usize = 4096;

/// The queue of notices to push.
pub(crate) struct Callbacks {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    /// The most notices one tenant's tasks may have waiting.
    share: usize,
    refusals: Arc<Refusals>,
}

#[derive(Default)]
struct Queue {
    /// Waiting notices by address, with whom each counts against.
    waiting: HashMap<String, VecDeque<(Notice, Option<Tenant>)>>,
    /// Notices waiting, by tenant.
    by_tenant: HashMap<Tenant, usize>,
    /// Addresses with waiting notices and none in flight, oldest first.
    turns: VecDeque<String>,
    /// Addresses with a notice in flight.
    sending: HashMap<String, ()>,
    /// Addresses that failed, and until when they get nothing.
    quarantined: HashMap<String, Instant>,
    /// Notices waiting, all addresses together.
    len: usize,
}

impl Callbacks {
    /// Starts `bounds.callback_concurrency` sending threads.
    pub(crate) fn start(bounds: &Bounds, refusals: Arc<Refusals>) -> Callbacks {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            capacity: bounds.callback_queue,
            share: bounds.share_of(bounds.callback_queue as u64) as usize,
            refusals,
        });
        for n in 0..bounds.callback_concurrency.max(1) {
            let (shared, timeout) = (shared.clone(), bounds.callback_timeout);
            std::thread::Builder::new()
                .name(format!("callbacks-{n}"))
                .spawn(move || send_loop(&shared, timeout))
                .expect("spawning a callback thread");
        }
        Callbacks { shared }
    }

    /// Queues a notice for `address` of a task `tenant` submitted, or drops
    /// and counts it when the queue or the tenant's share of it is full or
    /// the address is quarantined.
    pub(crate) fn push(&self, address: String, notice: Notice, tenant: Option<Tenant>) {
        let shared = &self.shared;
        let mut queue = shared.queue.lock().expect("callback queue");
        let task_id = notice.report.task_id;
        if queue.len >= shared.capacity {
            drop(queue);
            shared.refusals.count(Bound::CallbackQueue);
            shared.refusals.callbacks_dropped.fetch_add(1, Ordering::Relaxed);
            return debug!(%task_id, %address, "callback queue full (--callback-queue); notice dropped");
        }
        if tenant.is_some_and(|tenant| queue.by_tenant.get(&tenant).is_some_and(|held| *held >= shared.share)) {
            drop(queue);
            shared.refusals.count(Bound::QueueShare);
            shared.refusals.callbacks_dropped.fetch_add(1, Ordering::Relaxed);
            return debug!(%task_id, %address, "this key's share of the callback queue is full (--queue-share); notice dropped");
        }
        if let Some(until) = queue.quarantined.get(&address) {
            if *until > Instant::now() {
                drop(queue);
                shared.refusals.callbacks_dropped.fetch_add(1, Ordering::Relaxed);
                return debug!(%task_id, %address, "callback address failed lately; notice dropped");
            }
            queue.quarantined.remove(&address);
        }
        queue.len += 1;
        if let Some(tenant) = tenant {
            *queue.by_tenant.entry(tenant).or_default() += 1;
        }
        let first = !queue.waiting.contains_key(&address);
        queue.waiting.entry(address.clone()).or_default().push_back((notice, tenant));
        if first && !queue.sending.contains_key(&address) {
            queue.turns.push_back(address);
            drop(queue);
            shared.ready.notify_one();
        }
    }

    /// Notices waiting to be sent.
    pub(crate) fn len(&self) -> usize {
        self.shared.queue.lock().expect("callback queue").len
    }
}

impl Queue {
    /// A notice of `tenant` left the queue (sent or dropped).
    fn left(&mut self, tenant: Option<Tenant>) {
        self.len -= 1;
        let Some(tenant) = tenant else { return };
        if let Some(held) = self.by_tenant.get_mut(&tenant) {
            *held -= 1;
            if *held == 0 {
                self.by_tenant.remove(&tenant);
            }
        }
    }
}

/// One sending thread: takes the next address's oldest notice, sends it,
/// and hands the address back (or quarantines it when it failed).
fn send_loop(shared: &Shared, timeout: Duration) {
    let mut sockets: HashMap<String, Socket> = HashMap::new();
    let mut queue = shared.queue.lock().expect("callback queue");
    loop {
        let Some(address) = queue.turns.pop_front() else {
            queue = shared.ready.wait(queue).expect("callback queue");
            continue;
        };
        let Some((notice, tenant)) = queue.waiting.get_mut(&address).and_then(VecDeque::pop_front) else {
            queue.waiting.remove(&address);
            continue;
        };
        queue.left(tenant);
        queue.sending.insert(address.clone(), ());
        drop(queue);
        let delivered = deliver(&mut sockets, &address, &notice, timeout);
        queue = shared.queue.lock().expect("callback queue");
        queue.sending.remove(&address);
        if !delivered {
            sockets.remove(&address);
            shared.refusals.callbacks_dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(dropped) = queue.waiting.remove(&address) {
                shared.refusals.callbacks_dropped.fetch_add(dropped.len() as u64, Ordering::Relaxed);
                for (_, tenant) in dropped {
                    queue.left(tenant);
                }
            }
            if queue.quarantined.len() >= QUARANTINED_ADDRESSES {
                let now = Instant::now();
                queue.quarantined.retain(|_, until| *until > now);
                if queue.quarantined.len() >= QUARANTINED_ADDRESSES {
                    queue.quarantined.clear();
                }
            }
            queue.quarantined.insert(address, Instant::now() + QUARANTINE);
        } else if queue.waiting.get(&address).is_some_and(|w| !w.is_empty()) {
            queue.turns.push_back(address);
            shared.ready.notify_one();
        } else {
            queue.waiting.remove(&address);
        }
    }
}

/// Sends one notice; false (counted as dropped) when the address is
/// unusable or did not take it within `timeout`.
fn deliver(sockets: &mut HashMap<String, Socket>, address: &str, notice: &Notice, timeout: Duration) -> bool {
    let task_id = notice.report.task_id;
    if !sockets.contains_key(address) {
        if sockets.len() >= OPEN_SOCKETS {
            sockets.clear();
        }
        match open(address, timeout) {
            Ok(socket) => {
                sockets.insert(address.to_string(), socket);
            }
            Err(error) => {
                warn!(%task_id, %address, %error, "callback address unusable; notice dropped");
                return false;
            }
        }
    }
    match sockets[address].send(encode_message(notice)) {
        Ok(()) => {
            debug!(%task_id, %address, "callback notice sent");
            true
        }
        Err((_, error)) => {
            let limit = timeout.as_secs_f64();
            warn!(%task_id, %address, %error, "callback notice not delivered within {limit} s (--callback-timeout); dropped, and the address gets no notice for {} s", QUARANTINE.as_secs());
            false
        }
    }
}

fn open(address: &str, timeout: Duration) -> Result<Socket, nng::Error> {
    let socket = Socket::new(Protocol::Push0)?;
    socket.set_opt::<SendTimeout>(Some(timeout))?;
    socket.set_opt::<ReconnectMaxTime>(Some(Duration::from_secs(1)))?;
    crate::wire::tls::dial_async(&socket, address)?;
    Ok(socket)
}

/// Why a callback address is refused (`BadRequest`), if it is: too long,
/// or a scheme `--callback-schemes` does not allow.
pub(crate) fn check_address(address: &str, bounds: &Bounds) -> Result<(), String> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(format!(
            "a callback address may be at most {MAX_ADDRESS_BYTES} bytes; this one has {}",
            address.len()
        ));
    }
    let scheme = address.split_once("://").map_or("", |(scheme, _)| scheme);
    if !bounds.callback_schemes.iter().any(|allowed| allowed == scheme) {
        let shown: String = address.chars().take(64).collect();
        return Err(format!(
            "callback address '{shown}' does not use an allowed scheme: use {} (--callback-schemes)",
            bounds.callback_schemes.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_lengths_are_checked() {
        let bounds = Bounds::default();
        assert!(check_address("tcp://127.0.0.1:5000", &bounds).is_ok());
        assert!(check_address("ipc:///tmp/x", &bounds).unwrap_err().contains("--callback-schemes"));
        assert!(check_address("127.0.0.1:5000", &bounds).is_err());
        let long = format!("tcp://{}:1", "a".repeat(300));
        assert!(check_address(&long, &bounds).unwrap_err().contains("256 bytes"));
    }
}
