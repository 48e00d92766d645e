//! Discovery: a control plane announces where it serves, so that subworkers
//! and clients started without an address can find it.
//!
//! The control plane's [`Announcer`] listens with an NNG bus socket on the
//! discovery address (default [`DEFAULT_DISCOVERY_ADDRESS`]) and sends an
//! [`Announcement`] to every peer connected there: at once when a peer
//! connects, then every [`ANNOUNCE_INTERVAL`]. [`find`] dials the discovery
//! address and returns the first fresh announcement it receives.
//!
//! Frames are the protocol's envelope (a version byte, then postcard), so a
//! finder ignores announcements of another fastworker version. An
//! announcement older than [`STALE_AFTER`] by the finder's clock is ignored
//! too: hosts that discover each other need clocks that agree within a few
//! seconds.
//!
//! Discovery is optional: a control plane whose discovery address is taken
//! (by default every control plane of a host uses port 5550, and only the
//! first gets it) logs a warning and serves without announcing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nng::options::{Options, ReconnectMaxTime, ReconnectMinTime, RecvMaxSize, RecvTimeout};
use nng::{PipeEvent, Protocol, Socket};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::client::{Client, ClientError};
use crate::wire::address::BaseAddress;
use crate::wire::auth::{open, seal, Key, KeyRing, Role, Sender, ENVELOPE_BYTES};
use crate::wire::protocol::{decode, encode, now_ms};

/// The discovery address when none is given.
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "tcp://127.0.0.1:5550";

/// Time between two announcements (a peer that connects gets one at once).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);

/// Age after which an announcement is ignored: three missed intervals.
pub const STALE_AFTER: Duration = Duration::from_secs(6);

/// Largest announcement frame a finder accepts.
const MAX_ANNOUNCEMENT_BYTES: usize = 64 * 1024;

/// How often a pending [`find`] checks whether it was cancelled.
const POLL: Duration = Duration::from_millis(200);

/// What a control plane announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The control plane's `--worker-id`.
    pub worker_id: String,
    /// Its `--base-address`, as it listens (see [`find`] for `0.0.0.0`).
    pub base_address: String,
    /// Its subworker-management port (`--subworker-port`).
    pub management_port: u16,
    /// When this announcement was sent, in milliseconds since the Unix epoch.
    pub sent_ms: u64,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The discovery address is not `tcp://HOST:PORT`.
    #[error("'{address}' is not a discovery address: {reason} (expected tcp://HOST:PORT, for example {DEFAULT_DISCOVERY_ADDRESS})")]
    Address {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Another process (usually another control plane) listens there.
    #[error("{address} (discovery) is already in use, probably by another control plane; give this one another --discovery-address, or --no-discovery")]
    AddressInUse {
        /// The discovery address.
        address: String,
    },
    /// NNG failed.
    #[error("discovery on {address} failed: {source}")]
    Transport {
        /// The discovery address.
        address: String,
        /// NNG's error.
        source: nng::Error,
    },
    /// No fresh announcement arrived in time.
    #[error(
        "no control plane announced itself on {address} within {} s: start one with --discovery-address {address}, \
         or give the control plane's address explicitly (--address, or --control-plane-address for a subworker){ignored}",
        .after.as_secs_f64()
    )]
    Timeout {
        /// The discovery address.
        address: String,
        /// How long [`find`] waited.
        after: Duration,
        /// Empty, or why announcements that did arrive were ignored (starts with "; ").
        ignored: String,
    },
    /// A control plane was found but its address does not make a client.
    #[error("the control plane found on {discovery} announced an unusable address: {source}")]
    Client {
        /// The discovery address.
        discovery: String,
        /// Why the client could not be made.
        source: ClientError,
    },
}

/// Checks that `address` is `tcp://HOST:PORT` or `tls+tcp://HOST:PORT`.
pub fn check_address(address: &str) -> Result<(), DiscoveryError> {
    let error = |reason| DiscoveryError::Address { address: address.to_string(), reason };
    let rest = address
        .strip_prefix("tcp://")
        .or_else(|| address.strip_prefix(crate::wire::tls::TLS_SCHEME))
        .ok_or_else(|| error("only tcp:// and tls+tcp:// addresses are supported"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| error("the port is missing"))?;
    if host.is_empty() {
        return Err(error("the host is missing"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(error("the port is not a number from 1 to 65535")),
    }
}

/// A control plane's announcements; they stop when it is dropped.
pub struct Announcer {
    address: String,
    socket: Socket,
    wake: mpsc::Sender<Wake>,
    thread: Option<JoinHandle<()>>,
}

/// What wakes the announcing thread before its interval is up.
enum Wake {
    /// A peer connected: announce now.
    PeerJoined,
    /// The announcer was dropped.
    Stop,
}

impl Announcer {
    /// Listens on `address` and announces `announcement` (with a fresh
    /// `sent_ms` each time) to every peer there, from a thread of its own.
    /// With `keys` (a cluster key), each announcement is sent once sealed
    /// with each role's key, and finders holding a key ignore the rest.
    pub fn start(
        address: &str,
        announcement: Announcement,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<Announcer, DiscoveryError> {
        check_address(address)?;
        let transport = |source| DiscoveryError::Transport { address: address.to_string(), source };
        let socket = Socket::new(Protocol::Bus0).map_err(transport)?;
        // Finders send nothing; keep whatever arrives small.
        socket.set_opt::<RecvMaxSize>(1024).map_err(transport)?;
        let (wake, woken) = mpsc::channel();
        let joined = wake.clone();
        socket
            .pipe_notify(move |_, event| {
                if event == PipeEvent::AddPost {
                    let _ = joined.send(Wake::PeerJoined);
                }
            })
            .map_err(transport)?;
        crate::wire::tls::listen(&socket, address).map_err(|source| match source {
            nng::Error::AddressInUse => DiscoveryError::AddressInUse { address: address.to_string() },
            source => transport(source),
        })?;
        let sender = socket.clone();
        let thread = std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || announce(sender, announcement, keys, woken))
            .map_err(|_| transport(nng::Error::OutOfMemory))?;
        info!(%address, "announcing this control plane every {} s", ANNOUNCE_INTERVAL.as_secs_f64());
        Ok(Announcer { address: address.to_string(), socket, wake, thread: Some(thread) })
    }

    /// The discovery address it listens on.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        let _ = self.wake.send(Wake::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.socket.close();
    }
}

/// The announcing thread: one announcement per interval and per new peer.
fn announce(socket: Socket, mut announcement: Announcement, keys: Option<Arc<KeyRing>>, woken: mpsc::Receiver<Wake>) {
    let sender = Sender::new();
    let signers: Vec<Key> = match &keys {
        Some(ring) => Role::ALL.iter().filter_map(|role| ring.signer(*role).ok()).collect(),
        None => Vec::new(),
    };
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        let due = now >= next;
        if !due {
            match woken.recv_timeout(next - now) {
                Ok(Wake::PeerJoined) => {}
                Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
            }
        }
        announcement.sent_ms = now_ms();
        // Bus sends are best effort: a peer that is not ready misses this
        // one and gets the next.
        let frame = encode(&announcement);
        let frames: Vec<Vec<u8>> = match signers.is_empty() {
            true => vec![frame],
            false => signers
                .iter()
                .map(|key| [&seal(key, &sender, &frame, None, announcement.sent_ms).0[..], &frame].concat())
                .collect(),
        };
        for frame in frames {
            if let Err((_, error)) = socket.try_send(&frame[..]) {
                debug!(%error, "an announcement was not sent");
            }
        }
        if due {
            next = Instant::now() + ANNOUNCE_INTERVAL;
        }
    }
}

/// Dials `discovery_address` and waits up to `timeout` for a fresh
/// announcement.
///
/// Announcements older than [`STALE_AFTER`] or of another fastworker version
/// are ignored (the timeout error says so). A control plane listening on
/// every interface (`tcp://0.0.0.0:PORT`) announces that address, which
/// cannot be dialed from another host: its host is then replaced by the
/// discovery address's host, which reached the same process.
///
/// The waiting runs on tokio's blocking pool; dropping the future stops it
/// within a fraction of a second.
pub async fn find(discovery_address: &str, timeout: Duration) -> Result<Announcement, DiscoveryError> {
    find_sealed(discovery_address, timeout, None).await
}

/// As [`find`], taking only announcements sealed with a key of `keys`
/// (when given): an impostor on the discovery address redirects nobody.
pub async fn find_sealed(
    discovery_address: &str,
    timeout: Duration,
    keys: Option<Arc<KeyRing>>,
) -> Result<Announcement, DiscoveryError> {
    check_address(discovery_address)?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(cancelled.clone());
    let address = discovery_address.to_string();
    let found = tokio::task::spawn_blocking(move || find_blocking(&address, timeout, keys.as_deref(), &cancelled))
        .await
        .expect("the discovery thread panicked");
    drop(guard);
    found
}

/// A client of the control plane found on `discovery_address` (see [`find`]).
pub async fn connect_via_discovery(discovery_address: &str, timeout: Duration) -> Result<Client, DiscoveryError> {
    let announcement = find(discovery_address, timeout).await?;
    Client::new(&announcement.base_address)
        .map_err(|source| DiscoveryError::Client { discovery: discovery_address.to_string(), source })
}

/// Sets its flag when dropped, so that an abandoned [`find`] stops waiting.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn find_blocking(
    address: &str,
    timeout: Duration,
    keys: Option<&KeyRing>,
    cancelled: &AtomicBool,
) -> Result<Announcement, DiscoveryError> {
    let transport = |source| DiscoveryError::Transport { address: address.to_string(), source };
    let deadline = Instant::now() + timeout;
    let socket = Socket::new(Protocol::Bus0).map_err(transport)?;
    socket.set_opt::<RecvMaxSize>(MAX_ANNOUNCEMENT_BYTES).map_err(transport)?;
    socket.set_opt::<ReconnectMinTime>(Some(Duration::from_millis(100))).map_err(transport)?;
    socket.set_opt::<ReconnectMaxTime>(Some(Duration::from_millis(500))).map_err(transport)?;
    // Keeps dialing in the background until an announcer listens.
    crate::wire::tls::dial_async(&socket, address).map_err(transport)?;
    let mut stale = 0u32;
    let mut oldest_ms = 0u64;
    let mut foreign = 0u32;
    let mut unsealed = 0u32;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || cancelled.load(Ordering::Relaxed) {
            let mut ignored = String::new();
            if stale > 0 {
                ignored += &format!(
                    "; ignored {stale} stale announcement(s), sent up to {:.1} s ago by the finder's clock \
                     (older than {} s: is that control plane's clock behind?)",
                    oldest_ms as f64 / 1000.0,
                    STALE_AFTER.as_secs()
                );
            }
            if unsealed > 0 {
                ignored += &format!(
                    "; ignored {unsealed} announcement(s) not sealed with this cluster's key (an impostor, or a control plane of another cluster)"
                );
            }
            if foreign > 0 {
                ignored +=
                    &format!("; ignored {foreign} announcement(s) that do not decode (another fastworker version?)");
            }
            break Err(DiscoveryError::Timeout { address: address.to_string(), after: timeout, ignored });
        }
        socket.set_opt::<RecvTimeout>(Some(left.min(POLL))).map_err(transport)?;
        let mut message = match socket.recv() {
            Ok(message) => message,
            Err(nng::Error::TimedOut) => continue,
            Err(source) => break Err(transport(source)),
        };
        if let Some(ring) = keys {
            if open(ring, &message, None, now_ms()).is_err() {
                unsealed += 1;
                continue;
            }
            message.trim(ENVELOPE_BYTES);
        }
        match decode::<Announcement>(&message, MAX_ANNOUNCEMENT_BYTES) {
            Ok(announcement) => {
                let age = now_ms().saturating_sub(announcement.sent_ms);
                if age > STALE_AFTER.as_millis() as u64 {
                    stale += 1;
                    oldest_ms = oldest_ms.max(age);
                    continue;
                }
                break Ok(reachable(announcement, address));
            }
            Err(error) => {
                debug!(%error, "ignored a discovery frame");
                foreign += 1;
            }
        }
    };
    socket.close();
    result
}

/// Replaces a wildcard host in the announced base address by the host of
/// the discovery address (when that one is specific).
fn reachable(mut announcement: Announcement, discovery_address: &str) -> Announcement {
    let is_wildcard = |host: &str| matches!(host, "0.0.0.0" | "[::]" | "*");
    let discovery_host = discovery_address
        .strip_prefix("tcp://")
        .or_else(|| discovery_address.strip_prefix(crate::wire::tls::TLS_SCHEME))
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(host, _)| host)
        .filter(|host| !is_wildcard(host));
    if let (Ok(base), Some(host)) = (BaseAddress::parse(&announcement.base_address), discovery_host) {
        if is_wildcard(base.host()) {
            announcement.base_address = base.with_host(host).to_string();
        }
    }
    announcement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn sample() -> Announcement {
        Announcement {
            worker_id: "cp".into(),
            base_address: "tcp://127.0.0.1:5555".into(),
            management_port: 5560,
            sent_ms: 0,
        }
    }

    #[test]
    fn addresses_are_checked() {
        assert!(check_address("tcp://127.0.0.1:5550").is_ok());
        assert!(check_address("127.0.0.1:5550").is_err());
        assert!(check_address("tcp://127.0.0.1").is_err());
        assert!(check_address("tcp://:5550").is_err());
        assert!(check_address("tcp://h:0").is_err());
    }

    #[test]
    fn a_wildcard_host_takes_the_discovery_host() {
        let announcement = Announcement { base_address: "tcp://0.0.0.0:6000".into(), ..sample() };
        assert_eq!(reachable(announcement.clone(), "tcp://10.1.2.3:5550").base_address, "tcp://10.1.2.3:6000");
        assert_eq!(reachable(announcement, "tcp://0.0.0.0:5550").base_address, "tcp://0.0.0.0:6000");
        assert_eq!(reachable(sample(), "tcp://10.1.2.3:5550").base_address, "tcp://127.0.0.1:5555");
    }

    #[tokio::test]
    async fn a_finder_gets_the_announcement_at_once_and_a_second_announcer_is_refused() {
        let address = format!("tcp://127.0.0.1:{}", free_port());
        let announcer = Announcer::start(&address, sample(), None).unwrap();
        assert!(matches!(Announcer::start(&address, sample(), None), Err(DiscoveryError::AddressInUse { .. })));
        let started = Instant::now();
        let found = find(&address, Duration::from_secs(5)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(found.base_address, "tcp://127.0.0.1:5555");
        assert_eq!(found.management_port, 5560);
        assert!(now_ms() - found.sent_ms < 1000);
        let stopping = Instant::now();
        drop(announcer);
        assert!(stopping.elapsed() < Duration::from_millis(500));
        let error = find(&address, Duration::from_millis(500)).await.unwrap_err();
        assert!(error.to_string().starts_with(&format!("no control plane announced itself on {address} within 0.5 s")));
    }
}
