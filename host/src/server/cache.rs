//! The result cache: finished tasks by id, bounded by count and by bytes
//! (LRU, a read refreshes) and by age (TTL from when the result was stored).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::wire::protocol::{TaskId, TaskReport};

/// The most ids of dropped results remembered, to tell "expired" from "unknown".
const MAX_REMEMBERED_DROPS: usize = 100_000;

/// What the cache knows of an id.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The finished task.
    Found(TaskReport),
    /// Its result outlived the TTL and was dropped.
    Expired,
    /// Its result was pushed out by newer ones (the cache was full).
    Evicted,
    /// Never stored here, or forgotten long ago.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
enum Dropped {
    Expired,
    Evicted,
}

struct Cached {
    report: TaskReport,
    stored: Instant,
    /// The task's arguments, or their digest, to tell a resubmission of the
    /// same task from another task under a reused id.
    args: ArgsKey,
    /// In durable mode, the sequence number of the journal record of its
    /// outcome (0: none, or stored before it came here).
    record: u64,
}

/// What the cache keeps of a finished task's arguments.
#[derive(Debug, Clone)]
pub(crate) enum ArgsKey {
    /// Their digest ([`args_digest`]).
    Digest([u8; 16]),
    /// The arguments themselves, for the moment between the task's end and
    /// their digest being computed outside the task lock, after the reply
    /// has left (see [`Unhashed`]).
    Held(Arc<Vec<u8>>),
}

impl ArgsKey {
    /// Whether `args` are the arguments this key was made of.
    fn matches(&self, args: &[u8]) -> bool {
        match self {
            ArgsKey::Digest(digest) => *digest == args_digest(args),
            ArgsKey::Held(held) => held.as_slice() == args,
        }
    }
}

/// The digest [`ResultCache`] keeps of a task's arguments (SHA-256, first
/// 16 bytes: a reused id cannot be made to match other arguments).
pub(crate) fn args_digest(args: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let full = sha2::Sha256::digest(args);
    let mut digest = [0; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

/// Arguments at least this large have their digest computed after the
/// task's reply has left rather than before (hashing 1 MiB takes about
/// half a millisecond); smaller ones at once.
pub(crate) const HASH_LATER_BYTES: usize = 64 * 1024;

/// Held arguments beyond this many bytes are hashed at once, by whoever
/// ends the next task: nobody can make the cache hold arguments without bound.
const MAX_UNHASHED_BYTES: usize = 64 << 20;

/// The arguments of ended tasks whose digest is still to be computed: the
/// cache holds them meanwhile ([`ArgsKey::Held`]), and the thread that ended
/// them (or the next submission's) computes their digests once the task
/// lock is released and the reply sent ([`ResultCache::settle`]).
#[derive(Default)]
pub(crate) struct Unhashed {
    /// Whether any are held: a submission checks this, not the lock.
    any: AtomicBool,
    held: Mutex<Held>,
}

/// The held arguments and their bytes.
#[derive(Default)]
struct Held {
    args: Vec<(TaskId, Arc<Vec<u8>>)>,
    bytes: usize,
}

impl Unhashed {
    /// Holds `args` of the ended task `id` to be hashed later; false when
    /// too many bytes are held already (then hash them now, [`Unhashed::take`]).
    pub(crate) fn hold(&self, id: TaskId, args: Arc<Vec<u8>>) -> bool {
        let mut held = self.held.lock().expect("unhashed lock");
        held.bytes = held.bytes.saturating_add(args.len());
        held.args.push((id, args));
        self.any.store(true, Ordering::Release);
        held.bytes <= MAX_UNHASHED_BYTES
    }

    /// Every held argument, to be hashed: their digests go to the cache
    /// with [`ResultCache::settle`].
    pub(crate) fn take(&self) -> Vec<(TaskId, Arc<Vec<u8>>)> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut held = self.held.lock().expect("unhashed lock");
        self.any.store(false, Ordering::Release);
        held.bytes = 0;
        std::mem::take(&mut held.args)
    }
}

/// Finished tasks, bounded by count and age.
pub(crate) struct ResultCache {
    results: Option<LruCache<TaskId, Cached>>,
    dropped: LruCache<TaskId, Dropped>,
    ttl: Option<Duration>,
    /// Bytes the held results take (their result, error and name).
    bytes: u64,
    max_bytes: u64,
    /// Ids of results dropped since the last [`ResultCache::take_forgotten`],
    /// when a durable store must delete them too (`None`: nobody asks).
    forgotten: Option<Vec<TaskId>>,
    /// The most results held since the table was last rebuilt.
    peak: usize,
}

/// A sweep that leaves fewer than 1/`SHRINK_FACTOR` of the peak rebuilds
/// the table, so that the memory a large cache filled is given back.
const SHRINK_FACTOR: usize = 4;

/// Tables of fewer entries than this are never rebuilt (not worth it).
const SHRINK_ABOVE: usize = 4096;

/// Notes that `id`'s result is no longer held, for whoever tracks it.
fn note(forgotten: &mut Option<Vec<TaskId>>, id: TaskId) {
    if let Some(forgotten) = forgotten {
        forgotten.push(id);
    }
}

/// The bytes a cached report is counted for.
fn size_of(report: &TaskReport) -> u64 {
    let error = report.error.as_ref().map_or(0, |e| e.message.len());
    (report.result.as_ref().map_or(0, Vec::len) + error + report.task_name.len() + 128) as u64
}

impl ResultCache {
    /// A cache of at most `capacity` results (0 keeps none) and
    /// `max_bytes` bytes, kept at most `ttl` (`None` keeps them until evicted).
    pub(crate) fn new(capacity: usize, max_bytes: u64, ttl: Option<Duration>) -> Self {
        let remembered = NonZeroUsize::new(capacity.clamp(1024, MAX_REMEMBERED_DROPS)).expect("clamped above zero");
        let results = NonZeroUsize::new(capacity).map(LruCache::new);
        ResultCache { results, dropped: LruCache::new(remembered), ttl, bytes: 0, max_bytes, forgotten: None, peak: 0 }
    }

    /// Stores a finished task, evicting the least recently used one if full.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, report: TaskReport, args_digest: [u8; 16]) {
        self.insert_aged(report, args_digest, Duration::ZERO);
    }

    /// Stores a finished task whose arguments are still held (see [`Unhashed`]).
    #[cfg(test)]
    pub(crate) fn insert_held(&mut self, report: TaskReport, args: Arc<Vec<u8>>) {
        self.put(report, ArgsKey::Held(args), Duration::ZERO, 0);
    }

    /// Stores a finished task whose outcome is the journal's record
    /// number `record` (see [`ResultCache::record_of`]).
    pub(crate) fn insert_recorded(&mut self, report: TaskReport, args: ArgsKey, record: u64) {
        self.put(report, args, Duration::ZERO, record);
    }

    /// The journal record number of a held result's outcome (0: none, or
    /// stored before it came here), without refreshing it.
    pub(crate) fn record_of(&self, id: &TaskId) -> u64 {
        self.results.as_ref().and_then(|results| results.peek(id)).map_or(0, |cached| cached.record)
    }

    /// Stores a task that finished `age` ago (read back from a durable
    /// store): one already past the TTL is not stored.
    pub(crate) fn insert_aged(&mut self, report: TaskReport, args_digest: [u8; 16], age: Duration) {
        self.put(report, ArgsKey::Digest(args_digest), age, 0);
    }

    fn put(&mut self, report: TaskReport, args: ArgsKey, age: Duration, record: u64) {
        let id = report.task_id;
        let Some(results) = self.results.as_mut() else { return note(&mut self.forgotten, id) };
        if self.ttl.is_some_and(|ttl| age >= ttl) {
            self.dropped.put(id, Dropped::Expired);
            return note(&mut self.forgotten, id);
        }
        // An age beyond the monotonic clock's start (the machine rebooted)
        // counts from now: such a result is kept up to one TTL too long.
        let stored = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.bytes += size_of(&report);
        if let Some((evicted, old)) = results.push(id, Cached { report, stored, args, record }) {
            self.bytes -= size_of(&old.report);
            if evicted != id {
                self.dropped.put(evicted, Dropped::Evicted);
                note(&mut self.forgotten, evicted);
            }
        }
        while self.bytes > self.max_bytes {
            let Some((evicted, old)) = results.pop_lru() else { break };
            self.bytes -= size_of(&old.report);
            self.dropped.put(evicted, Dropped::Evicted);
            note(&mut self.forgotten, evicted);
        }
        self.dropped.pop(&id);
        self.peak = self.peak.max(results.len());
    }

    /// Starts noting the ids of dropped results (see [`ResultCache::take_forgotten`]).
    pub(crate) fn track_forgotten(&mut self) {
        self.forgotten.get_or_insert_with(Vec::new);
    }

    /// The ids of results dropped since the last call.
    pub(crate) fn take_forgotten(&mut self) -> Vec<TaskId> {
        self.forgotten.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Whether the held result of `id` was made of `args` (`None`: no
    /// result held), without refreshing it.
    pub(crate) fn same_args(&self, id: &TaskId, args: &[u8]) -> Option<bool> {
        self.results.as_ref()?.peek(id).map(|cached| cached.args.matches(args))
    }

    /// Replaces the held arguments `args` of `id`'s result with their
    /// `digest` (nothing if the result is gone or holds others).
    pub(crate) fn settle(&mut self, id: &TaskId, args: &Arc<Vec<u8>>, digest: [u8; 16]) {
        let Some(cached) = self.results.as_mut().and_then(|results| results.peek_mut(id)) else { return };
        if matches!(&cached.args, ArgsKey::Held(held) if Arc::ptr_eq(held, args)) {
            cached.args = ArgsKey::Digest(digest);
        }
    }

    /// Bytes the held results take.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Looks up `id`, refreshing its place in the LRU order.
    pub(crate) fn get(&mut self, id: &TaskId) -> Lookup {
        let ttl = self.ttl;
        if let Some(results) = self.results.as_mut() {
            if let Some(cached) = results.get(id) {
                if ttl.is_some_and(|ttl| cached.stored.elapsed() >= ttl) {
                    if let Some(old) = results.pop(id) {
                        self.bytes -= size_of(&old.report);
                    }
                    self.dropped.put(*id, Dropped::Expired);
                    note(&mut self.forgotten, *id);
                    return Lookup::Expired;
                }
                return Lookup::Found(cached.report.clone());
            }
        }
        match self.dropped.get(id) {
            Some(Dropped::Expired) => Lookup::Expired,
            Some(Dropped::Evicted) => Lookup::Evicted,
            None => Lookup::Unknown,
        }
    }

    /// Drops every result older than the TTL; returns how many.
    pub(crate) fn sweep(&mut self) -> usize {
        let (Some(ttl), Some(results)) = (self.ttl, self.results.as_mut()) else { return 0 };
        let expired: Vec<TaskId> =
            results.iter().filter(|(_, cached)| cached.stored.elapsed() >= ttl).map(|(id, _)| *id).collect();
        for id in &expired {
            if let Some(old) = results.pop(id) {
                self.bytes -= size_of(&old.report);
            }
            self.dropped.put(*id, Dropped::Expired);
            note(&mut self.forgotten, *id);
        }
        self.shrink_after_emptying();
        expired.len()
    }

    /// Once most of a large table has emptied, moves what is left into a
    /// new table, in the same order: the old one's pages (touched when it
    /// was full) go back to the allocator, and so to the system.
    fn shrink_after_emptying(&mut self) {
        let Some(results) = self.results.as_mut() else { return };
        if self.peak < SHRINK_ABOVE || results.len().saturating_mul(SHRINK_FACTOR) >= self.peak {
            return;
        }
        let mut fresh = LruCache::new(results.cap());
        while let Some((id, cached)) = results.pop_lru() {
            fresh.push(id, cached);
        }
        self.peak = fresh.len();
        *results = fresh;
    }

    /// How many results are held.
    pub(crate) fn len(&self) -> usize {
        self.results.as_ref().map_or(0, LruCache::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::{Priority, TaskState};

    fn report(id: TaskId) -> TaskReport {
        TaskReport {
            task_id: id,
            task_name: "t".into(),
            state: TaskState::Succeeded,
            priority: Priority::Normal,
            worker: "w".into(),
            attempts: 1,
            created_ms: 0,
            started_ms: None,
            finished_ms: None,
            result: Some(b"1".to_vec()),
            error: None,
        }
    }

    #[test]
    fn held_arguments_and_their_digest_tell_the_same_task_from_another() {
        let mut cache = ResultCache::new(10, u64::MAX, None);
        let (a, b) = (TaskId::new_v4(), TaskId::new_v4());
        let args = Arc::new(b"[1,2]".to_vec());
        cache.insert_held(report(a), args.clone());
        cache.insert(report(b), args_digest(b"[1,2]"));
        for id in [a, b] {
            assert_eq!(cache.same_args(&id, b"[1,2]"), Some(true));
            assert_eq!(cache.same_args(&id, b"[1,3]"), Some(false));
        }
        // Other held arguments do not settle it; its own do.
        cache.settle(&a, &Arc::new(b"[1,2]".to_vec()), [9; 16]);
        assert!(matches!(cache.results.as_ref().unwrap().peek(&a).unwrap().args, ArgsKey::Held(_)));
        cache.settle(&a, &args, args_digest(b"[1,2]"));
        assert!(matches!(cache.results.as_ref().unwrap().peek(&a).unwrap().args, ArgsKey::Digest(_)));
        assert_eq!(cache.same_args(&a, b"[1,2]"), Some(true));
        assert_eq!(cache.same_args(&a, b"[1,3]"), Some(false));
        assert_eq!(cache.same_args(&TaskId::new_v4(), b"[1,2]"), None);
        // Held bytes beyond the bound ask for hashing now.
        let unhashed = Unhashed::default();
        assert!(unhashed.hold(a, args.clone()));
        assert!(!unhashed.hold(b, Arc::new(vec![0; MAX_UNHASHED_BYTES])));
        assert_eq!(unhashed.take().len(), 2);
        assert!(unhashed.take().is_empty());
    }

    #[test]
    fn a_read_refreshes_and_the_least_recent_is_evicted() {
        let mut cache = ResultCache::new(2, u64::MAX, None);
        let (a, b, c) = (TaskId::new_v4(), TaskId::new_v4(), TaskId::new_v4());
        cache.insert(report(a), [0; 16]);
        cache.insert(report(b), [0; 16]);
        assert!(matches!(cache.get(&a), Lookup::Found(_)));
        cache.insert(report(c), [0; 16]);
        assert!(matches!(cache.get(&a), Lookup::Found(_)));
        assert!(matches!(cache.get(&b), Lookup::Evicted));
        assert!(matches!(cache.get(&TaskId::new_v4()), Lookup::Unknown));
    }

    #[test]
    fn results_expire_after_the_ttl() {
        let mut cache = ResultCache::new(10, u64::MAX, Some(Duration::from_millis(30)));
        let (a, b) = (TaskId::new_v4(), TaskId::new_v4());
        cache.insert(report(a), [0; 16]);
        cache.insert(report(b), [0; 16]);
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(cache.get(&a), Lookup::Expired));
        assert_eq!(cache.sweep(), 1);
        assert!(matches!(cache.get(&b), Lookup::Expired));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut cache = ResultCache::new(0, u64::MAX, None);
        let a = TaskId::new_v4();
        cache.insert(report(a), [0; 16]);
        assert!(matches!(cache.get(&a), Lookup::Unknown));
    }

    #[test]
    fn the_byte_bound_evicts_the_least_recent() {
        let mut cache = ResultCache::new(100, 3 * size_of(&report(TaskId::nil())), None);
        let ids: Vec<TaskId> = (0..5).map(|_| TaskId::new_v4()).collect();
        ids.iter().for_each(|id| cache.insert(report(*id), [0; 16]));
        assert_eq!(cache.len(), 3);
        assert!(matches!(cache.get(&ids[0]), Lookup::Evicted));
        assert!(matches!(cache.get(&ids[4]), Lookup::Found(_)));
        assert_eq!(cache.bytes(), 3 * size_of(&report(ids[0])));
    }

    #[test]
    fn dropped_results_are_noted_when_tracked_and_old_ones_are_not_stored() {
        let mut cache = ResultCache::new(2, u64::MAX, Some(Duration::from_secs(60)));
        cache.track_forgotten();
        let ids: Vec<TaskId> = (0..4).map(|_| TaskId::new_v4()).collect();
        cache.insert(report(ids[0]), [0; 16]);
        cache.insert(report(ids[1]), [0; 16]);
        cache.insert(report(ids[2]), [0; 16]);
        cache.insert_aged(report(ids[3]), [0; 16], Duration::from_secs(61));
        assert_eq!(cache.take_forgotten(), vec![ids[0], ids[3]]);
        assert!(cache.take_forgotten().is_empty());
        assert!(matches!(cache.get(&ids[3]), Lookup::Expired));
    }

    #[test]
    fn a_sweep_that_empties_a_large_table_keeps_the_rest_in_order() {
        let mut cache = ResultCache::new(10_000, u64::MAX, Some(Duration::from_secs(1)));
        for _ in 0..9_000 {
            cache.insert(report(TaskId::new_v4()), [0; 16]);
        }
        std::thread::sleep(Duration::from_millis(1050));
        let (older, newer) = (TaskId::new_v4(), TaskId::new_v4());
        cache.insert(report(older), [0; 16]);
        cache.insert(report(newer), [0; 16]);
        assert_eq!(cache.sweep(), 9_000);
        assert_eq!((cache.len(), cache.peak), (2, 2), "the table was rebuilt");
        // The order held: filling up evicts the least recently used first.
        for _ in 0..9_999 {
            cache.insert(report(TaskId::new_v4()), [0; 16]);
        }
        assert!(matches!(cache.get(&older), Lookup::Evicted));
        assert!(matches!(cache.get(&newer), Lookup::Found(_)));
    }
}
