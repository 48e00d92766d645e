//! Authentication of every frame with a cluster key: who may speak, in which
//! role, and proof that a frame is fresh.
//!
//! * **Keys.** An operator makes one *cluster key* (`fastworker keygen`).
//!   From it, HKDF-SHA-256 derives one key per [`Role`]: the control plane
//!   holds the cluster key and so every role key; a client is given only the
//!   client key, a subworker only the worker key (`fastworker keygen --role
//!   client --from cluster.key`), so that a client key cannot register a
//!   worker and a worker key cannot cancel tasks. A key file may hold two
//!   keys of the same kind: both are accepted, the first signs (rotation).
//! * **Control keys.** The control plane seals its links to a subworker
//!   with a [`Role::Control`] key derived from the cluster key *and that
//!   subworker's id*; the subworker's key file carries the one for its own
//!   id (HMAC needs the same key to check as to sign), so a worker key
//!   holder can speak as the control plane to its own subworker only.
//! * **Frames.** With a key, every frame is sealed: an envelope carries the
//!   key's id, the sender's id and a counter, the send time, and an
//!   HMAC-SHA-256 tag over all of it and the frame. A reply's tag also
//!   covers the sender id and counter of the request it answers, so a
//!   captured reply cannot answer another request.
//! * **Freshness.** A frame older or newer than [`WINDOW`] by the receiver's
//!   clock is refused; within it, a receiver remembers, per sender, which
//!   counters it has seen ([`ReplayGuard`]), so a captured frame sent again
//!   is refused.
//!
//! The cryptography is the RustCrypto crates' (`hmac`, `sha2`, `hkdf`);
//! none is written here.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The first byte of a sealed frame (a plain frame starts with its
/// protocol version, 2).
pub const SEALED: u8 = 0xA7;

/// Bytes of the envelope before the frame.
pub const ENVELOPE_BYTES: usize = 1 + 8 + 16 + 8 + 8 + 32;

/// How far a frame's send time may be from the receiver's clock.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Counters remembered per sender, below its highest.
const REPLAY_BITS: u64 = 4096;

/// Senders remembered at once, shared out by role (see [`ReplayGuard`]).
const MAX_SENDERS: usize = 65_536;

/// What a key lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything: submit, query, cancel any task, pause schedules, and
    /// (as the control plane) forward tasks and answer.
    Operator,
    /// Submit tasks, query them, cancel the tasks it submitted.
    Client,
    /// Register, heartbeat, leave (subworkers), and carry forwarded tasks.
    Worker,
    /// The control plane speaking to one subworker on its link: dispatch,
    /// collect, cancel, revoke. Derived per subworker id, so that only the
    /// cluster key's holder has it for every subworker.
    Control,
}

impl Role {
    /// Every role derived alike from a cluster key ([`Role::Control`] is
    /// derived per subworker: see [`KeyRing::control_ring`]).
    pub const ALL: [Role; 3] = [Role::Operator, Role::Client, Role::Worker];

    /// Its name in key files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Control => "control",
        }
    }

    fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// One secret and what it is for.
#[derive(Clone)]
pub struct Key {
    /// The role it signs as.
    pub role: Role,
    /// Its public id (from the secret, by HMAC), carried in every frame.
    pub id: [u8; 8],
    secret: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, {})", self.role.as_str(), hex(&self.id))
    }
}

impl Key {
    fn new(role: Role, secret: [u8; 32]) -> Key {
        let mut mac = HmacSha256::new_from_slice(&secret).expect("HMAC takes any key length");
        mac.update(b"fastworker key id");
        let mut id = [0; 8];
        id.copy_from_slice(&mac.finalize().into_bytes()[..8]);
        Key { role, id, secret }
    }

    /// The key of `role` derived from a cluster key.
    fn derive(cluster: &[u8; 32], role: Role) -> Key {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(b"fastworker cluster key v1"), cluster);
        let mut secret = [0; 32];
        hkdf.expand(role.as_str().as_bytes(), &mut secret).expect("32 bytes is a valid HKDF length");
        Key::new(role, secret)
    }

    /// The control key for subworker `worker_id` derived from a cluster key.
    fn derive_control(cluster: &[u8; 32], worker_id: &str) -> Key {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(b"fastworker cluster key v1"), cluster);
        let mut secret = [0; 32];
        // Worker ids hold no whitespace, so no role name reads the same.
        let info = format!("control {worker_id}");
        hkdf.expand(info.as_bytes(), &mut secret).expect("32 bytes is a valid HKDF length");
        Key::new(Role::Control, secret)
    }

    fn tag(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac
    }
}

/// What a key file holds.
#[derive(Clone)]
enum Entry {
    Cluster([u8; 32]),
    Role(Key),
    /// A control key, for the subworker named.
    Control(String, Key),
}

/// The keys a process holds, loaded from `--cluster-key-file`.
#[derive(Clone)]
pub struct KeyRing {
    /// Every key accepted, by role (derived from cluster keys, or given).
    accepted: Vec<Key>,
    /// The cluster keys of the file, in order (the control plane derives
    /// each subworker's control key from them).
    clusters: Vec<[u8; 32]>,
    /// The subworker the file's control keys are for, if it holds any.
    control_for: Option<String>,
    /// The file, for messages.
    pub path: PathBuf,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("accepted", &self.accepted)
            .field("clusters", &self.clusters.len())
            .field("control_for", &self.control_for)
            .field("path", &self.path)
            .finish()
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// It cannot be read.
    #[error("key file {path}: {source}; make one with `fastworker keygen --out {path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a key.
    #[error("key file {path}, line {line}: {reason}; a key line reads `fastworker-key v1 ROLE BASE64` (make one with `fastworker keygen`)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A PEM file (a TLS key or certificate) where a fastworker key belongs.
    #[error("key file {path} is a PEM file ({what}), not a fastworker key: give it to {flag}, and give --cluster-key-file a key made by `fastworker keygen` (docs/security.md)")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What it holds: a TLS private key or a certificate.
        what: &'static str,
        /// The flag that takes such a file.
        flag: &'static str,
    },
    /// No key at all.
    #[error("key file {path} holds no key; make one with `fastworker keygen --out {path}`")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Readable by others than its owner.
    #[error("key file {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It holds no key for the role asked.
    #[error("key file {path} holds no {role} key (nor a cluster key to derive one from)")]
    NoRole {
        /// The file.
        path: PathBuf,
        /// The role.
        role: &'static str,
    },
    /// A subworker's key file holds no control key for its id: the
    /// subworker could not tell its control plane from any worker key.
    #[error("key file {path} holds no control key for subworker '{worker_id}'{found}; make it again with `fastworker keygen --role worker --worker-id {worker_id} --from cluster.key --out {path}` (worker keys are made for one subworker id)")]
    NoControl {
        /// The file.
        path: PathBuf,
        /// The subworker's `--worker-id`.
        worker_id: String,
        /// What the file holds instead, for the message.
        found: String,
    },
}

impl KeyRing {
    /// Loads a key file: lines `fastworker-key v1 ROLE BASE64` where ROLE
    /// is `cluster`, `operator`, `client`, `worker` or `control:WORKER_ID`;
    /// `#` starts a comment.
    pub fn load(path: &Path) -> Result<KeyRing, KeyError> {
        let read = |source| KeyError::Read { path: path.to_path_buf(), source };
        let metadata = std::fs::metadata(path).map_err(read)?;
        if metadata.len() > 64 * 1024 {
            let reason = "the file is larger than 64 KiB".to_string();
            return Err(KeyError::Malformed { path: path.to_path_buf(), line: 0, reason });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        // A TLS file given by mistake is named as such, before its mode
        // (a certificate is often readable by all) is held against it.
        pem_check(&text, path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Exposed { path: path.to_path_buf(), mode });
            }
        }
        KeyRing::parse(&text, path)
    }

    /// Parses the text of a key file (see [`KeyRing::load`]).
    pub fn parse(text: &str, path: &Path) -> Result<KeyRing, KeyError> {
        pem_check(text, path)?;
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let malformed =
                |reason: &str| KeyError::Malformed { path: path.to_path_buf(), line: index + 1, reason: reason.into() };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [magic, version, role, secret] = fields[..] else {
                return Err(malformed("expected four fields"));
            };
            if magic != "fastworker-key" || version != "v1" {
                return Err(malformed("it does not start with `fastworker-key v1`"));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret)
                .map_err(|_| malformed("the key is not base64"))?;
            let secret: [u8; 32] = bytes.try_into().map_err(|_| malformed("the key is not 32 bytes"))?;
            entries.push(match (role, role.strip_prefix("control:")) {
                ("cluster", _) => Entry::Cluster(secret),
                (_, Some(worker_id)) if !worker_id.is_empty() => {
                    Entry::Control(worker_id.to_string(), Key::new(Role::Control, secret))
                }
                (other, _) => Entry::Role(Key::new(
                    Role::parse(other).ok_or_else(|| {
                        malformed("the role is not cluster, operator, client, worker or control:WORKER_ID")
                    })?,
                    secret,
                )),
            });
        }
        if entries.is_empty() {
            return Err(KeyError::Empty { path: path.to_path_buf() });
        }
        let mut ring =
            KeyRing { accepted: Vec::new(), clusters: Vec::new(), control_for: None, path: path.to_path_buf() };
        for entry in entries {
            match entry {
                Entry::Cluster(secret) => {
                    ring.accepted.extend(Role::ALL.iter().map(|role| Key::derive(&secret, *role)));
                    ring.clusters.push(secret);
                }
                Entry::Role(key) => ring.accepted.push(key),
                Entry::Control(worker_id, key) => {
                    if ring.control_for.as_ref().is_some_and(|first| *first != worker_id) {
                        let reason = "it holds control keys for two different subworkers".to_string();
                        return Err(KeyError::Malformed { path: path.to_path_buf(), line: 0, reason });
                    }
                    ring.control_for = Some(worker_id);
                    ring.accepted.push(key);
                }
            }
        }
        Ok(ring)
    }

    /// The keys of the control plane's link to subworker `worker_id`: its
    /// control keys, derived from each cluster key of the file in order (the
    /// first signs); `None` without a cluster key.
    pub fn control_ring(&self, worker_id: &str) -> Option<KeyRing> {
        if self.clusters.is_empty() {
            return None;
        }
        let accepted = self.clusters.iter().map(|secret| Key::derive_control(secret, worker_id)).collect();
        Some(KeyRing { accepted, clusters: Vec::new(), control_for: Some(worker_id.into()), path: self.path.clone() })
    }

    /// The keys subworker `worker_id` serves with: those of the file, and
    /// the control keys for its id (derived, with a cluster key; else the
    /// file must hold them, made for this id).
    pub fn for_subworker(&self, worker_id: &str) -> Result<KeyRing, KeyError> {
        self.signer(Role::Worker)?;
        if let Some(control) = self.control_ring(worker_id) {
            let mut ring = self.clone();
            ring.accepted.extend(control.accepted);
            ring.control_for = Some(worker_id.into());
            return Ok(ring);
        }
        match &self.control_for {
            Some(id) if id == worker_id => Ok(self.clone()),
            found => Err(KeyError::NoControl {
                path: self.path.clone(),
                worker_id: worker_id.into(),
                found: match found {
                    Some(other) => format!(" (it holds the one for '{other}')"),
                    None => " (a worker key made before control keys)".into(),
                },
            }),
        }
    }

    /// The key to sign with as `role`: the first such key of the file.
    pub fn signer(&self, role: Role) -> Result<Key, KeyError> {
        self.accepted
            .iter()
            .find(|key| key.role == role)
            .cloned()
            .ok_or(KeyError::NoRole { path: self.path.clone(), role: role.as_str() })
    }

    /// The key a client command signs with: operator when the file holds a
    /// cluster or operator key, else client.
    pub fn client_signer(&self) -> Result<Key, KeyError> {
        self.signer(Role::Operator).or_else(|_| self.signer(Role::Client))
    }

    /// Whether the file held a cluster key (needed to serve a control plane).
    pub fn is_cluster(&self) -> bool {
        !self.clusters.is_empty()
    }

    fn find(&self, id: &[u8]) -> Option<&Key> {
        self.accepted.iter().find(|key| key.id == id)
    }
}

/// Makes a new cluster key file's text (32 random bytes).
pub fn new_cluster_key() -> Result<String, getrandom::Error> {
    let mut secret = [0; 32];
    getrandom::fill(&mut secret)?;
    Ok(format!(
        "# fastworker cluster key: keep it secret (chmod 600); derive role keys with `fastworker keygen --role ROLE --from FILE`\nfastworker-key v1 cluster {}\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    ))
}

/// The text of a role key file derived from the cluster keys of `ring`
/// (every cluster key of the file, in order, so a rotation carries over).
/// A worker key file is made for one subworker, `worker_id`: it also holds
/// the control keys for that id, with which the subworker checks that its
/// links come from the control plane.
pub fn derived_key_file(ring: &KeyRing, role: Role, worker_id: Option<&str>) -> Result<String, KeyError> {
    if !ring.is_cluster() {
        return Err(KeyError::NoRole { path: ring.path.clone(), role: "cluster" });
    }
    let encode = |key: &Key| base64::engine::general_purpose::STANDARD.encode(key.secret);
    let mut text = format!("# fastworker {} key, derived from a cluster key\n", role.as_str());
    for key in ring.accepted.iter().filter(|k| k.role == role) {
        text.push_str(&format!("fastworker-key v1 {} {}\n", role.as_str(), encode(key)));
    }
    match (role, worker_id) {
        (Role::Worker, Some(worker_id)) => {
            text.push_str(&format!(
                "# subworker '{worker_id}' checks with these that its links come from the control plane\n"
            ));
            let control = ring.control_ring(worker_id).expect("a cluster key");
            for key in &control.accepted {
                text.push_str(&format!("fastworker-key v1 control:{worker_id} {}\n", encode(key)));
            }
        }
        (Role::Worker, None) => {
            return Err(KeyError::NoControl {
                path: ring.path.clone(),
                worker_id: "WORKER_ID".into(),
                found: ": a worker key needs the subworker's id".into(),
            })
        }
        _ => {}
    }
    Ok(text)
}

/// Who sealed a frame: a random id per process (or client), and a counter
/// that grows with every frame it sends.
pub struct Sender {
    id: [u8; 16],
    counter: std::sync::atomic::AtomicU64,
}

impl Sender {
    /// A new sender with a random id.
    pub fn new() -> Sender {
        let mut id = [0; 16];
        // A random id is only needed to tell senders apart; if the system
        // has no randomness, a time-based id still does.
        if getrandom::fill(&mut id).is_err() {
            id[..16].copy_from_slice(&uuid::Uuid::now_v7().into_bytes());
        }
        Sender { id, counter: std::sync::atomic::AtomicU64::new(1) }
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for Sender {
    fn default() -> Self {
        Sender::new()
    }
}

/// Who a queued task counts against for its share of the queue
/// (`--queue-share`): the key that sealed its submission, or, on a port
/// without keys, the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// A key, by id.
    Key([u8; 8]),
    /// A connection (NNG pipe id) of a port without keys.
    Connection(i32),
}

/// A request's identity, which its reply's tag covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seal {
    /// The sender's id.
    pub sender: [u8; 16],
    /// The sender's counter.
    pub counter: u64,
}

impl Seal {
    fn bytes(&self) -> [u8; 24] {
        let mut bytes = [0; 24];
        bytes[..16].copy_from_slice(&self.sender);
        bytes[16..].copy_from_slice(&self.counter.to_be_bytes());
        bytes
    }
}

/// A frame that failed authentication.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No envelope: the peer has no key.
    #[error("the frame is not authenticated: this peer needs the cluster's key (--cluster-key-file)")]
    Missing,
    /// An envelope, but no key of ours has its id.
    #[error("the frame is signed with a key this process does not accept (a wrong or retired --cluster-key-file)")]
    UnknownKey,
    /// The tag does not match.
    #[error("the frame's signature does not match: it was altered, or signed with another key")]
    BadTag,
    /// Sent too long ago (or in the future) by the receiver's clock.
    #[error("the frame was sent {skew_ms} ms away from this host's clock (at most {} s allowed): a replay, or clocks that disagree", WINDOW.as_secs())]
    Stale {
        /// How far off, in milliseconds.
        skew_ms: u64,
    },
    /// Already received.
    #[error("the frame was already received: a replay")]
    Replayed,
    /// From a sender not remembered, sent before the latest frame of a
    /// sender this receiver had to forget: possibly a replay of it.
    #[error("the frame was sent before the newest frame of a peer this host had to forget (many new peers with this role's key at once): a replay, or a peer whose clock is behind; send it again")]
    Forgotten,
}

/// Seals `frame` with `key` as sender `sender`; a reply passes the seal of
/// the request it answers as `answers`. Returns the envelope to put before
/// the frame and this frame's own seal.
pub fn seal(
    key: &Key,
    sender: &Sender,
    frame: &[u8],
    answers: Option<Seal>,
    now_ms: u64,
) -> ([u8; ENVELOPE_BYTES], Seal) {
    let own = Seal { sender: sender.id, counter: sender.next() };
    let mut envelope = [0; ENVELOPE_BYTES];
    envelope[0] = SEALED;
    envelope[1..9].copy_from_slice(&key.id);
    envelope[9..25].copy_from_slice(&own.sender);
    envelope[25..33].copy_from_slice(&own.counter.to_be_bytes());
    envelope[33..41].copy_from_slice(&now_ms.to_be_bytes());
    let answered = answers.map(|seal| seal.bytes()).unwrap_or([0; 24]);
    let direction: &[u8] = if answers.is_some() { b"reply" } else { b"request" };
    let tag = key.tag(&[direction, &envelope[..41], &answered, frame]).finalize().into_bytes();
    envelope[41..].copy_from_slice(&tag);
    (envelope, own)
}

/// What an opened envelope says.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The key that signed it.
    pub key: Key,
    /// The frame's own seal (a reply to it must cover it).
    pub seal: Seal,
    /// When it was sent, by the sender's clock (ms since the epoch).
    pub sent_ms: u64,
}

/// Checks the envelope at the start of `sealed` against `ring`: the key,
/// the tag over the rest (with `answers`, the seal of the request this
/// frame answers, for replies), and the send time. Replays are checked
/// separately ([`ReplayGuard`]) by receivers of requests.
pub fn open(ring: &KeyRing, sealed: &[u8], answers: Option<Seal>, now_ms: u64) -> Result<Opened, AuthError> {
    if sealed.len() < ENVELOPE_BYTES || sealed[0] != SEALED {
        return Err(AuthError::Missing);
    }
    let key = ring.find(&sealed[1..9]).ok_or(AuthError::UnknownKey)?;
    let answered = answers.map(|seal| seal.bytes()).unwrap_or([0; 24]);
    let direction: &[u8] = if answers.is_some() { b"reply" } else { b"request" };
    let mac = key.tag(&[direction, &sealed[..41], &answered, &sealed[ENVELOPE_BYTES..]]);
    mac.verify_slice(&sealed[41..ENVELOPE_BYTES]).map_err(|_| AuthError::BadTag)?;
    let sent_ms = u64::from_be_bytes(sealed[33..41].try_into().expect("8 bytes"));
    let skew_ms = sent_ms.abs_diff(now_ms);
    if skew_ms > WINDOW.as_millis() as u64 {
        return Err(AuthError::Stale { skew_ms });
    }
    let mut sender = [0; 16];
    sender.copy_from_slice(&sealed[9..25]);
    let counter = u64::from_be_bytes(sealed[25..33].try_into().expect("8 bytes"));
    Ok(Opened { key: key.clone(), seal: Seal { sender, counter }, sent_ms })
}

/// The counters each sender has used recently, so that a frame sent again
/// is refused. Bounded without ever refusing for lack of room: each role
/// has its share of [`MAX_SENDERS`] ([`share`]); a new sender beyond its
/// role's share evicts that role's least recently seen sender, and the
/// latest send time of any sender evicted becomes the role's *floor*: a
/// frame from a sender not remembered is taken only when sent after it, so
/// an evicted sender's frames stay refused. A flood of new senders under
/// one role's keys evicts only that role's senders: the operator, control
/// and worker roles keep their room.
pub struct ReplayGuard {
    /// By role ([`Role`] as index): a lock each, so that a flood under one
    /// role does not wait on another's.
    roles: [Mutex<Senders>; 4],
}

/// One role's remembered senders.
struct Senders {
    seen: lru::LruCache<[u8; 16], Seen>,
    capacity: usize,
    /// Frames of senders not remembered must be sent after this (ms).
    floor_ms: u64,
}

struct Seen {
    highest: u64,
    /// Bit `i` set: counter `highest - i` was received.
    bits: [u64; (REPLAY_BITS / 64) as usize],
    /// The latest send time of its frames taken.
    sent_ms: u64,
}

/// How many of `total` remembered senders a role may take: most for
/// clients (every CLI call and restart is a new one), a reserve for each
/// other role.
fn share(role: Role, total: usize) -> usize {
    let share = match role {
        Role::Client => total / 4 * 3,
        Role::Worker => total / 8,
        Role::Operator | Role::Control => total / 16,
    };
    share.max(1)
}

fn role_index(role: Role) -> usize {
    match role {
        Role::Operator => 0,
        Role::Client => 1,
        Role::Worker => 2,
        Role::Control => 3,
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::with_capacity(MAX_SENDERS)
    }
}

impl ReplayGuard {
    /// A guard remembering at most `total` senders, shared out by role.
    pub fn with_capacity(total: usize) -> ReplayGuard {
        let senders =
            |role| Mutex::new(Senders { seen: lru::LruCache::unbounded(), capacity: share(role, total), floor_ms: 0 });
        ReplayGuard { roles: [Role::Operator, Role::Client, Role::Worker, Role::Control].map(senders) }
    }

    /// Records an opened frame received at `now_ms`; refuses a counter
    /// already received, one too far below the sender's highest to tell,
    /// and a frame of a sender not remembered sent no later than its role's
    /// floor (it may be an evicted sender's).
    pub fn check(&self, opened: &Opened, now_ms: u64) -> Result<(), AuthError> {
        let seal = opened.seal;
        let mut senders = self.roles[role_index(opened.key.role)].lock().expect("replay lock");
        if let Some(seen) = senders.seen.get_mut(&seal.sender) {
            return seen.take(seal.counter, opened.sent_ms);
        }
        if opened.sent_ms <= senders.floor_ms {
            return Err(AuthError::Forgotten);
        }
        // Senders whose every frame is stale by now need no remembering:
        // a few go with each new one, so the room comes back.
        for _ in 0..2 {
            match senders.seen.peek_lru() {
                Some((_, oldest)) if oldest.sent_ms.saturating_add(WINDOW.as_millis() as u64) < now_ms => {
                    senders.seen.pop_lru();
                }
                _ => break,
            }
        }
        while senders.seen.len() >= senders.capacity {
            let Some((_, evicted)) = senders.seen.pop_lru() else { break };
            senders.floor_ms = senders.floor_ms.max(evicted.sent_ms);
        }
        let mut seen = Seen { highest: 0, bits: [0; (REPLAY_BITS / 64) as usize], sent_ms: opened.sent_ms };
        let taken = seen.take(seal.counter, opened.sent_ms);
        senders.seen.push(seal.sender, seen);
        taken
    }
}

impl Seen {
    fn take(&mut self, counter: u64, sent_ms: u64) -> Result<(), AuthError> {
        if counter > self.highest {
            let shift = counter - self.highest;
            shift_bits(&mut self.bits, shift);
            self.highest = counter;
            self.bits[0] |= 1;
            self.sent_ms = self.sent_ms.max(sent_ms);
            return Ok(());
        }
        let back = self.highest - counter;
        if back >= REPLAY_BITS {
            return Err(AuthError::Replayed);
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        if self.bits[word] & (1 << bit) != 0 {
            return Err(AuthError::Replayed);
        }
        self.bits[word] |= 1 << bit;
        self.sent_ms = self.sent_ms.max(sent_ms);
        Ok(())
    }
}

/// Moves every bit `shift` places toward older counters.
fn shift_bits(bits: &mut [u64], shift: u64) {
    let words = bits.len() as u64;
    if shift >= words * 64 {
        bits.fill(0);
        return;
    }
    let (word_shift, bit_shift) = ((shift / 64) as usize, (shift % 64) as u32);
    for index in (0..bits.len()).rev() {
        let from = index.checked_sub(word_shift);
        let high = from.map_or(0, |from| bits[from] << bit_shift);
        let low = match (from.and_then(|f| f.checked_sub(1)), bit_shift) {
            (Some(from), 1..) => bits[from] >> (64 - bit_shift),
            _ => 0,
        };
        bits[index] = high | low;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a PEM file (`-----BEGIN ...`), naming what it holds and the flag
/// that takes it.
fn pem_check(text: &str, path: &Path) -> Result<(), KeyError> {
    let Some(label) = text.trim_start().strip_prefix("-----BEGIN ") else { return Ok(()) };
    let (what, flag) = if label.starts_with("CERTIFICATE") {
        ("a certificate", "--tls-cert (or, for the CA's, --tls-ca)")
    } else if label.split("-----").next().is_some_and(|l| l.contains("PRIVATE KEY")) {
        ("a TLS private key", "--tls-key")
    } else {
        ("a TLS file", "--tls-cert, --tls-key or --tls-ca")
    };
    Err(KeyError::Pem { path: path.to_path_buf(), what, flag })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::parse(text, Path::new("test.key")).unwrap()
    }

    fn cluster() -> KeyRing {
        ring(&new_cluster_key().unwrap())
    }

    #[test]
    fn a_sealed_frame_opens_once_and_not_after_a_change() {
        let ring = cluster();
        let key = ring.signer(Role::Client).unwrap();
        let sender = Sender::new();
        let frame = b"\x02hello";
        let (envelope, seal) = seal(&key, &sender, frame, None, 1_000_000);
        let sealed = [&envelope[..], frame].concat();
        let opened = open(&ring, &sealed, None, 1_000_500).unwrap();
        assert_eq!((opened.key.role, opened.seal), (Role::Client, seal));
        let guard = ReplayGuard::default();
        guard.check(&opened, 1_000_500).unwrap();
        assert_eq!(guard.check(&opened, 1_000_500), Err(AuthError::Replayed));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(open(&ring, &altered, None, 1_000_500).unwrap_err(), AuthError::BadTag);
        assert!(matches!(open(&ring, &sealed, None, 1_000_000 + 31_000), Err(AuthError::Stale { .. })));
        assert_eq!(open(&cluster(), &sealed, None, 1_000_000).unwrap_err(), AuthError::UnknownKey);
        assert_eq!(open(&ring, frame, None, 1_000_000).unwrap_err(), AuthError::Missing);
    }

    #[test]
    fn a_reply_opens_only_for_its_request() {
        let ring = cluster();
        let key = ring.signer(Role::Operator).unwrap();
        let (client, server) = (Sender::new(), Sender::new());
        let (_, request) = seal(&key, &client, b"\x02q", None, 5);
        let (_, other) = seal(&key, &client, b"\x02q", None, 5);
        let (envelope, _) = seal(&key, &server, b"\x02a", Some(request), 5);
        let reply = [&envelope[..], b"\x02a"].concat();
        assert!(open(&ring, &reply, Some(request), 5).is_ok());
        assert_eq!(open(&ring, &reply, Some(other), 5).unwrap_err(), AuthError::BadTag);
        assert_eq!(open(&ring, &reply, None, 5).unwrap_err(), AuthError::BadTag);
    }

    #[test]
    fn role_keys_derive_from_the_cluster_key_and_carry_only_their_role() {
        let cluster = cluster();
        let client_file = derived_key_file(&cluster, Role::Client, None).unwrap();
        let client = ring(&client_file);
        assert!(!client.is_cluster());
        assert_eq!(client.signer(Role::Client).unwrap().id, cluster.signer(Role::Client).unwrap().id);
        assert!(client.signer(Role::Worker).is_err() && client.signer(Role::Operator).is_err());
        assert_eq!(client.client_signer().unwrap().role, Role::Client);
        assert_eq!(cluster.client_signer().unwrap().role, Role::Operator);
        assert!(derived_key_file(&client, Role::Worker, Some("sw1")).is_err());
    }

    #[test]
    fn a_worker_key_checks_only_its_own_subworkers_control_key() {
        let cluster = cluster();
        let sw1 = ring(&derived_key_file(&cluster, Role::Worker, Some("sw1")).unwrap());
        assert!(derived_key_file(&cluster, Role::Worker, None).is_err(), "a worker key names its subworker");
        let serving = sw1.for_subworker("sw1").unwrap();
        let link = cluster.control_ring("sw1").unwrap();
        let (envelope, _) = seal(&link.signer(Role::Control).unwrap(), &Sender::new(), b"\x02c", None, 9);
        let opened = open(&serving, &[&envelope[..], b"\x02c"].concat(), None, 9).unwrap();
        assert_eq!(opened.key.role, Role::Control);
        // Another subworker's control key is not known to sw1, and sw1's
        // file cannot serve as another subworker.
        let other = cluster.control_ring("sw2").unwrap().signer(Role::Control).unwrap();
        let (envelope, _) = seal(&other, &Sender::new(), b"\x02c", None, 9);
        assert_eq!(open(&serving, &[&envelope[..], b"\x02c"].concat(), None, 9).unwrap_err(), AuthError::UnknownKey);
        assert!(sw1.for_subworker("sw2").unwrap_err().to_string().contains("--worker-id sw2"));
        // Nor can a worker key derive any control key.
        assert!(sw1.control_ring("sw2").is_none() && !sw1.is_cluster());
        // A worker key made before control keys is refused with what to do.
        let old = ring(&derived_key_file(&cluster, Role::Client, None).unwrap().replace("client", "worker"));
        let error = old.for_subworker("sw1").unwrap_err().to_string();
        assert!(error.contains("made before control keys") && error.contains("keygen --role worker"), "{error}");
        // A subworker holding the cluster key derives its own.
        assert!(open(&cluster.for_subworker("sw2").unwrap(), &[&envelope[..], b"\x02c"].concat(), None, 9).is_ok());
    }

    #[test]
    fn two_cluster_keys_are_both_accepted_and_the_first_signs() {
        let (old, new) = (new_cluster_key().unwrap(), new_cluster_key().unwrap());
        let both = ring(&format!("{new}{old}"));
        let old = ring(&old);
        let sender = Sender::new();
        let (envelope, _) = seal(&old.signer(Role::Worker).unwrap(), &sender, b"\x02x", None, 9);
        assert!(open(&both, &[&envelope[..], b"\x02x"].concat(), None, 9).is_ok());
        assert_eq!(both.signer(Role::Worker).unwrap().id, ring(&new).signer(Role::Worker).unwrap().id);
    }

    /// A frame of `role` from `sender` with `counter`, sent at `sent_ms`.
    fn frame(role: Role, sender: [u8; 16], counter: u64, sent_ms: u64) -> Opened {
        Opened { key: Key::new(role, [1; 32]), seal: Seal { sender, counter }, sent_ms }
    }

    #[test]
    fn counters_out_of_order_are_taken_once_each() {
        let guard = ReplayGuard::default();
        let check = |counter| guard.check(&frame(Role::Client, [7; 16], counter, 5), 5);
        for counter in [5, 3, 9, 4, 200, 6, 1, 2] {
            check(counter).unwrap();
        }
        for counter in [5, 3, 9, 200, 1] {
            assert_eq!(check(counter), Err(AuthError::Replayed), "counter {counter}");
        }
        check(200 + REPLAY_BITS + 10).unwrap();
        assert_eq!(check(7), Err(AuthError::Replayed), "too old to tell");
        assert!(check(200 + REPLAY_BITS + 9).is_ok());
    }

    #[test]
    fn a_flood_of_new_senders_evicts_its_own_roles_oldest_and_their_frames_stay_refused() {
        let guard = ReplayGuard::with_capacity(64);
        let client_share = share(Role::Client, 64);
        let sender = |n: u32| {
            let mut id = [0; 16];
            id[..4].copy_from_slice(&n.to_be_bytes());
            id
        };
        // An operator and a worker are remembered before the flood.
        let operator = frame(Role::Operator, [0xAA; 16], 1, 1_000);
        guard.check(&operator, 1_000).unwrap();
        // A first client, then many more new ones than the clients' share,
        // one a millisecond: never refused for lack of room.
        let first = frame(Role::Client, sender(0), 1, 1_000);
        guard.check(&first, 1_000).unwrap();
        for n in 1..10 * client_share as u32 {
            let now = 1_000 + u64::from(n);
            guard.check(&frame(Role::Client, sender(n), 1, now), now).unwrap();
        }
        let remembered = guard.roles[role_index(Role::Client)].lock().unwrap().seen.len();
        assert_eq!(remembered, client_share, "memory stays bounded");
        let now = 1_000 + 10 * client_share as u64;
        // The first client was evicted: its frame sent again is refused, and
        // so is any frame of a forgotten sender sent before the floor.
        assert_eq!(guard.check(&first, now), Err(AuthError::Forgotten));
        assert_eq!(guard.check(&frame(Role::Client, sender(1), 1, 1_001), now), Err(AuthError::Forgotten));
        // A remembered sender's replay is refused as before.
        let recent = frame(Role::Client, sender(10 * client_share as u32 - 1), 1, now - 1);
        assert_eq!(guard.check(&recent, now), Err(AuthError::Replayed));
        // A new client sending now is taken, and the other roles lost nothing.
        guard.check(&frame(Role::Client, [0xCC; 16], 1, now), now).unwrap();
        assert_eq!(guard.check(&operator, now), Err(AuthError::Replayed), "the operator is still remembered");
        guard.check(&frame(Role::Operator, [0xAA; 16], 2, now), now).unwrap();
        guard.check(&frame(Role::Operator, [0xAB; 16], 1, 1_000), now).unwrap();
        guard.check(&frame(Role::Control, [0xAC; 16], 1, 1_000), now).unwrap();
    }

    #[test]
    fn senders_whose_frames_are_all_stale_make_room_without_raising_the_floor() {
        let guard = ReplayGuard::with_capacity(64);
        let capacity = share(Role::Worker, 64);
        for n in 0..capacity as u8 {
            guard.check(&frame(Role::Worker, [n; 16], 1, 1_000), 1_000).unwrap();
        }
        let later = 1_000 + WINDOW.as_millis() as u64 + 1;
        for n in 0..capacity as u8 {
            guard.check(&frame(Role::Worker, [n + 100; 16], 1, later), later).unwrap();
        }
        let senders = guard.roles[role_index(Role::Worker)].lock().unwrap();
        assert_eq!(senders.seen.len(), capacity);
        assert!(senders.floor_ms <= 1_000, "only stale senders were forgotten");
    }

    #[test]
    fn malformed_key_files_say_what_is_wrong() {
        let error = |text: &str| KeyRing::parse(text, Path::new("k")).unwrap_err().to_string();
        assert!(error("").contains("holds no key"));
        assert!(error("fastworker-key v1 cluster AAAA").contains("not 32 bytes"));
        assert!(error("fastworker-key v1 admin AAAA").contains("not 32 bytes") || error("x").contains("four fields"));
        assert!(error("hello").contains("four fields"));
    }
}
