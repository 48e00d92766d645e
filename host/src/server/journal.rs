//! The durable mode's store (`--state-dir`): every accepted task, its
//! progress and its outcome, written to an embedded database ([redb]) so
//! that a control plane that crashes and restarts on the same directory
//! finishes what it had accepted and still answers for what it finished.
//!
//! The task state (`server/state`) never touches the disk: it hands
//! [`Record`]s to [`Journal::write`] under its lock (a channel send, never
//! a wait), and replies that must not leave before their records are on
//! disk to [`Journal::then`]. One writer thread takes everything pending,
//! writes it in one transaction with one fsync (group commit), and only then
//! runs the replies, in order. A submission is thus acknowledged only once
//! its task is on disk, and a waiting client hears an outcome only once the
//! outcome is on disk.
//!
//! The store holds three tables keyed by task id: `tasks` (what was
//! accepted, unchanged until the task ends), `progress` (runs and failures
//! so far, and when a retry is due) and `results` (final reports, for the
//! result cache; deleted as the cache drops them, so the store stays as
//! bounded as the cache), and `crashes` (how often a live task's runs died
//! with their process, docs/isolation.md). Workflows have `workflows` (descriptions),
//! `workflow_steps` (members' outcomes) and `workflow_ends` (when a finished
//! one ended; it is kept for its status until the control plane forgets it).
//! `meta` names the format: a directory written by another format is
//! refused, never guessed at.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Builder, Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::wire::protocol::{
    Callback, Priority, RetryPolicy, TaskError, TaskId, TaskReport, WorkflowId, WorkflowSubmit,
};
use crate::workflow::machine::Outcome;

/// The file inside `--state-dir`.
const FILE_NAME: &str = "fastworker-state.redb";

/// What `meta` says under [`FORMAT_KEY`]; any other value is refused.
const FORMAT: &str = "fastworker-state/1";
const FORMAT_KEY: &str = "format";

/// The first byte of every stored value: the record layout's version.
const RECORD_VERSION: u8 = 1;

/// Entries (records and replies) waiting for the writer at most: past it,
/// new submissions are answered `Busy` (the disk is not keeping up).
pub(crate) const MAX_PENDING: usize = 100_000;

/// The most entries one transaction takes.
const MAX_BATCH: usize = 8192;

/// How long records that nobody waits for (a run started, a task accepted
/// by a client that waits for its end) may wait for company before they are
/// written: most tasks end within it, and their acceptance, start and end
/// are then written as one record, in one transaction.
const LINGER: Duration = Duration::from_millis(2);

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tasks");
const PROGRESS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("progress");
const RESULTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("results");
/// How often each live task's runs died with their process (a worker
/// process, or an in-process control plane), by task id: the count toward
/// `--max-task-crashes` survives a restart.
const CRASHES: TableDefinition<&[u8], u32> = TableDefinition::new("crashes");
/// Running workflows' descriptions, by workflow id.
const WORKFLOWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("workflows");
/// Their members' outcomes, keyed by workflow id and node (big-endian).
const WORKFLOW_STEPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("workflow_steps");
/// When finished workflows ended (ms since the epoch), by workflow id: a
/// finished workflow's description and steps are kept with it, for its
/// status, until the control plane forgets it.
const WORKFLOW_ENDS: TableDefinition<&[u8], u64> = TableDefinition::new("workflow_ends");

/// The node of a workflow step that records the workflow's cancellation.
pub(crate) const CANCEL_STEP: u32 = u32::MAX;

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The directory cannot be created or is not a directory.
    #[error("--state-dir {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The store cannot be opened, read or written (corrupt, locked by
    /// another process, unwritable).
    #[error("--state-dir {path}: the store {FILE_NAME} cannot be used: {source}")]
    Store {
        /// The directory.
        path: PathBuf,
        /// The store's error.
        source: Box<redb::Error>,
    },
    /// The store file exists but is empty, damaged or not a store: what it
    /// held cannot be read, and starting empty would lose it.
    #[error("--state-dir {path}: the store {file} cannot be used: it {why}. It is left as it is, so that nothing it held is lost silently: restore it from a backup, or move it aside to start with an empty store (what it held is then lost)", file = path.join(FILE_NAME).display())]
    Damaged {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The store was written by another version of fastworker.
    #[error("--state-dir {path} was written in format '{found}', and this fastworker reads only '{FORMAT}': use the version that wrote it, or another directory")]
    Format {
        /// The directory.
        path: PathBuf,
        /// The format it names.
        found: String,
    },
    /// A record does not decode, or is larger than any this version writes.
    #[error("--state-dir {path}: the record of task {task_id} in table '{table}' is unreadable ({why}); the store is damaged or was written by another version")]
    Record {
        /// The directory.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The task.
        task_id: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A task as accepted: enough to run it again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskRecord {
    pub(crate) task_name: String,
    #[serde(with = "serde_bytes")]
    pub(crate) args: Vec<u8>,
    pub(crate) priority: Priority,
    pub(crate) created_ms: u64,
    /// Its countdown or ETA, if it had one.
    pub(crate) not_before_ms: Option<u64>,
    pub(crate) timeout_ms: u64,
    pub(crate) retry: RetryPolicy,
    pub(crate) callback: Option<Callback>,
    /// Runs already made when it was accepted (a forwarded retry).
    pub(crate) attempts: u32,
    /// The key id that submitted it, when ports authenticate.
    pub(crate) owner: Option<[u8; 8]>,
}

/// Where a task is between its acceptance and its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// Runs started so far (the last may have been interrupted).
    pub(crate) attempts: u32,
    /// Runs that failed so far.
    pub(crate) failures: u32,
    /// When its next run is due, while it waits for a retry.
    pub(crate) retry_at_ms: Option<u64>,
    /// The last run's error, while it waits for a retry.
    pub(crate) error: Option<TaskError>,
}

/// A final report, as the result cache holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResultRecord {
    pub(crate) report: TaskReport,
    pub(crate) args_digest: [u8; 16],
}

/// A workflow as accepted: enough to rebuild it after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkflowRecord {
    pub(crate) submit: WorkflowSubmit,
    pub(crate) owner: Option<[u8; 8]>,
    pub(crate) created_ms: u64,
}

/// A workflow found in the store, with its members' outcomes.
pub(crate) struct RecoveredWorkflow {
    pub(crate) workflow_id: WorkflowId,
    pub(crate) record: WorkflowRecord,
    /// Outcomes by node ([`CANCEL_STEP`]: the workflow was cancelled).
    pub(crate) steps: Vec<(u32, Outcome)>,
    /// When it ended, if it had (it is kept for its status).
    pub(crate) finished_ms: Option<u64>,
}

/// One change to the store.
pub(crate) enum Record {
    /// A task was accepted.
    Accepted(TaskId, Box<TaskRecord>),
    /// A task started a run or waits for a retry.
    Progress(TaskId, Progress),
    /// A task's runs died with their process this many times in all.
    Crashes(TaskId, u32),
    /// A task ended: it is no longer live, and its report is kept.
    Finished(Box<ResultRecord>),
    /// The result cache dropped these results.
    Forget(Vec<TaskId>),
    /// A workflow was accepted.
    WorkflowAccepted(WorkflowId, Box<WorkflowRecord>),
    /// A workflow's member ended (or, at [`CANCEL_STEP`], it was cancelled).
    WorkflowStep(WorkflowId, u32, Box<Outcome>),
    /// A workflow ended at this time (ms since the epoch): it is kept, for
    /// its status, until forgotten.
    WorkflowEnded(WorkflowId, u64),
    /// Finished workflows the control plane no longer keeps: nothing of
    /// them is kept.
    WorkflowForget(Vec<WorkflowId>),
}

/// A reply waiting for the records handed before it.
type Then = Box<dyn FnOnce(bool) + Send>;

/// What the writer thread is handed.
enum Entry {
    /// A record and its sequence number (1, 2, … in the order handed).
    Record(u64, Record),
    /// Runs once everything handed before it is written; told whether it was.
    Then(Then),
    Stop,
}

/// What a restart finds in the store.
#[derive(Default)]
pub(crate) struct Recovered {
    /// Tasks accepted and not ended, with their progress if they had any.
    pub(crate) tasks: Vec<(TaskId, TaskRecord, Option<Progress>)>,
    /// Final reports.
    pub(crate) results: Vec<ResultRecord>,
    /// The crash counts of tasks whose runs died with their process.
    pub(crate) crashes: FxHashMap<TaskId, u32>,
    /// Running workflows.
    pub(crate) workflows: Vec<RecoveredWorkflow>,
}

/// The store and its writer thread.
pub(crate) struct Journal {
    /// The channel to the writer, and the sequence number of the last
    /// record sent on it: numbered and sent under one lock, so the writer
    /// receives records in the order of their numbers.
    entries: Mutex<(mpsc::Sender<Entry>, u64)>,
    /// Every record numbered up to this one has been through a commit.
    stored_through: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl Journal {
    /// Opens (or creates) the store in `dir`, reads what it holds, and starts
    /// the writer. `max_record` bounds every stored value read back.
    pub(crate) fn open(dir: &Path, max_record: usize) -> Result<(Journal, Recovered), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Directory { path: dir.into(), source })?;
        let (db, recovered) = checked(dir, || open_store(dir, max_record))?;
        let (entries, receiver) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let writer_pending = pending.clone();
        let stored_through = Arc::new(AtomicU64::new(0));
        let writer_stored = stored_through.clone();
        let writer_path = dir.to_path_buf();
        // Replies are sent by a thread of their own, so that the writer
        // starts the next transaction while the last one's replies leave.
        let (sender, completions) = mpsc::channel::<(Vec<Then>, bool)>();
        let done = Replies { sender, queued: Arc::new(AtomicUsize::new(0)) };
        let queued = done.queued.clone();
        let replier = std::thread::Builder::new().name("journal-replies".into()).spawn(move || {
            for (thens, written) in completions {
                thens.into_iter().for_each(|then| then(written));
                queued.fetch_sub(1, Ordering::Release);
            }
        });
        let replier = replier.map_err(|source| JournalError::Directory { path: dir.into(), source })?;
        let writer = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                write_loop(&db, &writer_path, &receiver, &writer_pending, &writer_stored, &done);
                drop(done);
                let _ = replier.join();
            })
            .map_err(|source| JournalError::Directory { path: dir.into(), source })?;
        info!(
            state_dir = %dir.display(),
            tasks = recovered.tasks.len(),
            results = recovered.results.len(),
            "durable mode: state store opened"
        );
        let entries = Mutex::new((entries, 0));
        let journal = Journal { entries, stored_through, pending, writer: Mutex::new(Some(writer)), path: dir.into() };
        Ok((journal, recovered))
    }

    /// The state directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the writer has room for another submission.
    pub(crate) fn has_room(&self) -> bool {
        self.pending.load(Ordering::Relaxed) < MAX_PENDING
    }

    /// Entries waiting for the writer.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Hands a record to the writer; never waits. Returns its sequence
    /// number, for [`Journal::is_stored`].
    pub(crate) fn write(&self, record: Record) -> u64 {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.1 += 1;
        let seq = entries.1;
        if entries.0.send(Entry::Record(seq, record)).is_err() {
            // The writer stopped (shutdown): nothing more is written.
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        seq
    }

    /// The number of the last record handed so far (0: none).
    pub(crate) fn last_seq(&self) -> u64 {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).1
    }

    /// Whether the record numbered `seq` has been through a commit (it is
    /// on disk, unless the store failed, which is logged and refuses
    /// submissions).
    pub(crate) fn is_stored(&self, seq: u64) -> bool {
        seq <= self.stored_through.load(Ordering::Acquire)
    }

    /// Runs `then` once every record handed before it is on disk (`true`)
    /// or could not be written (`false`); on the writer thread, so it must
    /// only queue work (NNG sends).
    pub(crate) fn then(&self, then: impl FnOnce(bool) + Send + 'static) {
        self.send(Entry::Then(Box::new(then)));
    }

    fn send(&self, entry: Entry) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let sent = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).0.send(entry);
        if let Err(mpsc::SendError(entry)) = sent {
            // The writer stopped (shutdown): nothing more is written.
            self.pending.fetch_sub(1, Ordering::Relaxed);
            if let Entry::Then(then) = entry {
                then(false);
            }
        }
    }

    /// Writes everything pending and stops the writer.
    pub(crate) fn close(&self) {
        let _ = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).0.send(Entry::Stop);
        let writer = self.writer.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

/// Opens the store file in `dir`: a missing one is created; an empty one, or
/// one whose pages do not verify, is refused. Then sets the tables up and
/// reads them all.
fn open_store(dir: &Path, max_record: usize) -> Result<(Database, Recovered), JournalError> {
    let file = dir.join(FILE_NAME);
    let store = |source: redb::Error| JournalError::Store { path: dir.into(), source: Box::new(source) };
    let damaged = |why: String| JournalError::Damaged { path: dir.into(), why };
    let db = match std::fs::metadata(&file) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Database::create(&file).map_err(|e| store(e.into()))?
        }
        Err(error) => return Err(store(redb::StorageError::Io(error).into())),
        // Only a crash in the very first start, between creating the file
        // and writing its header, leaves an empty file with nothing
        // acknowledged; any other empty store was truncated and what it held
        // is gone. Refused either way, never taken for a fresh one.
        Ok(meta) if meta.len() == 0 => return Err(damaged("is empty (0 bytes)".into())),
        // Every page of an existing store is checked against its checksum,
        // so that a damaged one is refused instead of trusted.
        Ok(_) => Builder::new().set_check_integrity_on_open(true).open(&file).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => store(error.into()),
            redb::DatabaseError::Storage(redb::StorageError::Io(ref io))
                if !matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
            {
                store(error.into())
            }
            damage => damaged(format!("is damaged or not a store ({damage})")),
        })?,
    };
    let write = db.begin_write().map_err(|e| store(e.into()))?;
    {
        let mut meta = write.open_table(META).map_err(|e| store(e.into()))?;
        let found = meta.get(FORMAT_KEY).map_err(|e| store(e.into()))?.map(|v| v.value().to_string());
        match found {
            Some(found) if found != FORMAT => return Err(JournalError::Format { path: dir.into(), found }),
            Some(_) => {}
            None => {
                let empty = write.open_table(TASKS).map_err(|e| store(e.into()))?.is_empty();
                if !empty.map_err(|e| store(e.into()))? {
                    let found = "none".to_string();
                    return Err(JournalError::Format { path: dir.into(), found });
                }
                meta.insert(FORMAT_KEY, FORMAT).map_err(|e| store(e.into()))?;
            }
        }
        for table in [TASKS, PROGRESS, RESULTS, WORKFLOWS, WORKFLOW_STEPS] {
            write.open_table(table).map_err(|e| store(e.into()))?;
        }
        // Added after the first stores were written: created when missing.
        write.open_table(WORKFLOW_ENDS).map_err(|e| store(e.into()))?;
        write.open_table(CRASHES).map_err(|e| store(e.into()))?;
    }
    write.commit().map_err(|e| store(e.into()))?;
    let recovered = read_all(&db, dir, max_record)?;
    Ok((db, recovered))
}

/// Runs `open`, turning a panic in it (the store's code meeting a damaged
/// file it did not expect) into [`JournalError::Damaged`]. The panic's
/// message goes into the error instead of the log.
fn checked<T>(dir: &Path, open: impl FnOnce() -> Result<T, JournalError>) -> Result<T, JournalError> {
    thread_local! {
        static CAUGHT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let caught = CAUGHT.with(|caught| {
                let mut caught = caught.borrow_mut();
                caught.as_mut().map(|message| *message = info.to_string()).is_some()
            });
            if !caught {
                previous(info);
            }
        }));
    });
    CAUGHT.with(|caught| *caught.borrow_mut() = Some(String::new()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(open));
    let message = CAUGHT.with(|caught| caught.borrow_mut().take()).unwrap_or_default();
    result
        .unwrap_or_else(|_| Err(JournalError::Damaged { path: dir.into(), why: format!("cannot be read ({message})") }))
}

/// Encodes a stored value: the record version, then postcard.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![RECORD_VERSION];
    // Writing into a Vec cannot fail; serializing these types cannot either.
    if postcard::to_io(value, &mut bytes).is_err() {
        bytes.truncate(1);
    }
    bytes
}

/// Decodes a stored value of at most `max` bytes.
fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], max: usize) -> Result<T, String> {
    if bytes.len() > max {
        return Err(format!("{} bytes, more than the {max} a record may hold", bytes.len()));
    }
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((version, _)) => Err(format!("record version {version}, this fastworker reads {RECORD_VERSION}")),
        None => Err("empty".into()),
    }
}

fn task_id_of(key: &[u8]) -> Result<TaskId, String> {
    TaskId::from_slice(key).map_err(|_| format!("a key of {} bytes is not a task id", key.len()))
}

/// The key of a workflow step: the workflow's id, then the node, big-endian.
fn step_key(workflow_id: &WorkflowId, node: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(workflow_id.as_bytes());
    key[16..].copy_from_slice(&node.to_be_bytes());
    key
}

/// Reads every table, refusing anything that does not decode.
fn read_all(db: &Database, dir: &Path, max: usize) -> Result<Recovered, JournalError> {
    let store = |source: redb::Error| JournalError::Store { path: dir.into(), source: Box::new(source) };
    let bad = |table: &'static str, key: &[u8], why: String| JournalError::Record {
        path: dir.into(),
        table,
        task_id: TaskId::from_slice(key).map_or_else(|_| format!("{key:02x?}"), |id| id.to_string()),
        why,
    };
    let read = db.begin_read().map_err(|e| store(e.into()))?;
    let mut progress = FxHashMap::default();
    let table = read.open_table(PROGRESS).map_err(|e| store(e.into()))?;
    for entry in table.iter().map_err(|e| store(e.into()))? {
        let (key, value) = entry.map_err(|e| store(e.into()))?;
        let task_id = task_id_of(key.value()).map_err(|why| bad("progress", key.value(), why))?;
        let record: Progress = decode(value.value(), max).map_err(|why| bad("progress", key.value(), why))?;
        progress.insert(task_id, record);
    }
    let mut recovered = Recovered::default();
    let table = read.open_table(CRASHES).map_err(|e| store(e.into()))?;
    for entry in table.iter().map_err(|e| store(e.into()))? {
        let (key, value) = entry.map_err(|e| store(e.into()))?;
        let task_id = task_id_of(key.value()).map_err(|why| bad("crashes", key.value(), why))?;
        recovered.crashes.insert(task_id, value.value());
    }
    let table = read.open_table(TASKS).map_err(|e| store(e.into()))?;
    for entry in table.iter().map_err(|e| store(e.into()))? {
        let (key, value) = entry.map_err(|e| store(e.into()))?;
        let task_id = task_id_of(key.value()).map_err(|why| bad("tasks", key.value(), why))?;
        let record: TaskRecord = decode(value.value(), max).map_err(|why| bad("tasks", key.value(), why))?;
        recovered.tasks.push((task_id, record, progress.remove(&task_id)));
    }
    let table = read.open_table(RESULTS).map_err(|e| store(e.into()))?;
    for entry in table.iter().map_err(|e| store(e.into()))? {
        let (key, value) = entry.map_err(|e| store(e.into()))?;
        let record: ResultRecord = decode(value.value(), max).map_err(|why| bad("results", key.value(), why))?;
        if record.report.task_id.as_bytes() != key.value() {
            return Err(bad("results", key.value(), "its report names another task".into()));
        }
        recovered.results.push(record);
    }
    let mut steps: FxHashMap<WorkflowId, Vec<(u32, Outcome)>> = FxHashMap::default();
    let table = read.open_table(WORKFLOW_STEPS).map_err(|e| store(e.into()))?;
    for entry in table.iter().map_err(|e| store(e.into()))? {
        let (key, value) = entry.map_err(|e| store(e.into()))?;
        let key = key.value();
        let (Some(id), Some(node)) = (key.get(..16), key.get(16..20)) else {
            return Err(bad("workflow_steps", key, "a key that is not a workflow id and a node".into()));
        };
        let workflow_id = task_id_of(id).map_err(|why| bad("workflow_steps", key, why))?;
        let node = u32::from_be_bytes(node.try_into().unwrap_or_default());
        let outcome: Outcome = decode(value.value(), max).map_err(|why| bad("workflow_steps", key, why))?;
        steps.entry(workflow_id).or_default().push((node, outcome));
    }
    let mut ends: FxHashMap<WorkflowId, u64> = FxHashMap::default();
    let table = read.open_table(WORKFLOW_ENDS).map_err(|e| store(e.into()))?;
    for entry in table.iter().map_err(|e| store(e.into()))? {
        let (key, value) = entry.map_err(|e| store(e.into()))?;
        let workflow_id = task_id_of(key.value()).map_err(|why| bad("workflow_ends", key.value(), why))?;
        ends.insert(workflow_id, value.value());
    }
    let table = read.open_table(WORKFLOWS).map_err(|e| store(e.into()))?;
    for entry in table.iter().map_err(|e| store(e.into()))? {
        let (key, value) = entry.map_err(|e| store(e.into()))?;
        let workflow_id = task_id_of(key.value()).map_err(|why| bad("workflows", key.value(), why))?;
        let record: WorkflowRecord = decode(value.value(), max).map_err(|why| bad("workflows", key.value(), why))?;
        let steps = steps.remove(&workflow_id).unwrap_or_default();
        let finished_ms = ends.get(&workflow_id).copied();
        recovered.workflows.push(RecoveredWorkflow { workflow_id, record, steps, finished_ms });
    }
    recovered.workflows.sort_by_key(|w| w.record.created_ms);
    // Results in the order they finished, so the cache's LRU order is kept.
    recovered.results.sort_by_key(|r| r.report.finished_ms);
    recovered.tasks.sort_by_key(|(_, task, _)| task.created_ms);
    Ok(recovered)
}

/// The way to the thread that sends replies, and how many batches of
/// replies it has not sent yet.
struct Replies {
    sender: mpsc::Sender<(Vec<Then>, bool)>,
    queued: Arc<AtomicUsize>,
}

/// The writer thread: takes what is pending, writes it in one transaction,
/// then runs the replies that waited for it.
fn write_loop(
    db: &Database,
    dir: &Path,
    entries: &mpsc::Receiver<Entry>,
    pending: &AtomicUsize,
    stored_through: &AtomicU64,
    done: &Replies,
) {
    let mut batch = Vec::new();
    let mut stop = false;
    // An entry taken while looking whether anything was pending: the next
    // batch's first.
    let mut carried = None;
    while !stop {
        let first = match carried.take() {
            Some(entry) => entry,
            None => match entries.recv() {
                Ok(entry) => entry,
                Err(_) => break,
            },
        };
        batch.push(first);
        // Until someone waits for what is taken, linger a little for more.
        let linger_until = Instant::now() + LINGER;
        let mut awaited = matches!(batch[0], Entry::Then(_) | Entry::Stop);
        while batch.len() < MAX_BATCH {
            let next = match awaited {
                true => entries.try_recv().ok(),
                false => entries.recv_timeout(linger_until.saturating_duration_since(Instant::now())).ok(),
            };
            let Some(entry) = next else { break };
            awaited |= matches!(entry, Entry::Then(_) | Entry::Stop);
            batch.push(entry);
        }
        let taken = batch.len();
        let written = match commit(db, &batch) {
            Ok(()) => true,
            Err(error) => {
                error!(state_dir = %dir.display(), %error, "could not write to the state store: submissions are refused until it works again");
                false
            }
        };
        let mut thens = Vec::new();
        let mut last_seq = None;
        for entry in batch.drain(..) {
            match entry {
                Entry::Then(then) => thens.push(then),
                Entry::Stop => stop = true,
                Entry::Record(seq, _) => last_seq = Some(seq),
            }
        }
        // Records arrive in the order of their numbers: all up to the last
        // of this batch have been through a commit.
        if let Some(seq) = last_seq {
            stored_through.store(seq, Ordering::Release);
        }
        pending.fetch_sub(taken, Ordering::Relaxed);
        if thens.is_empty() {
            continue;
        }
        // With nothing else pending and no earlier replies still leaving,
        // the writer would only wait: it sends the replies itself, in order,
        // sparing a lone blocking call a thread's wake-up. Otherwise the
        // replier sends them while the next batch is written.
        carried = entries.try_recv().ok();
        if carried.is_none() && done.queued.load(Ordering::Acquire) == 0 {
            thens.into_iter().for_each(|then| then(written));
            continue;
        }
        done.queued.fetch_add(1, Ordering::Release);
        if let Err(mpsc::SendError((thens, written))) = done.sender.send((thens, written)) {
            done.queued.fetch_sub(1, Ordering::Release);
            thens.into_iter().for_each(|then| then(written));
        }
    }
}

/// Where in a batch each task's last acceptance, end and forgetting are,
/// so that what a later record of the same batch undoes is not written.
#[derive(Default)]
struct Positions {
    accepted: FxHashMap<TaskId, usize>,
    finished: FxHashMap<TaskId, usize>,
    forgotten: FxHashMap<TaskId, usize>,
}

impl Positions {
    fn of(batch: &[Entry]) -> Positions {
        let mut positions = Positions::default();
        for (index, entry) in batch.iter().enumerate() {
            match entry {
                Entry::Record(_, Record::Accepted(task_id, _)) => {
                    positions.accepted.insert(*task_id, index);
                }
                Entry::Record(_, Record::Finished(result)) => {
                    positions.finished.insert(result.report.task_id, index);
                }
                Entry::Record(_, Record::Forget(task_ids)) => {
                    positions.forgotten.extend(task_ids.iter().map(|task_id| (*task_id, index)));
                }
                _ => {}
            }
        }
        positions
    }

    /// Whether the task ends later in the batch.
    fn ends_after(&self, task_id: &TaskId, index: usize) -> bool {
        self.finished.get(task_id).is_some_and(|&at| at > index)
    }

    /// Whether the task's result is forgotten later in the batch.
    fn forgotten_after(&self, task_id: &TaskId, index: usize) -> bool {
        self.forgotten.get(task_id).is_some_and(|&at| at > index)
    }

    /// Whether the task was accepted earlier in the batch (so nothing of
    /// it is stored yet).
    fn accepted_before(&self, task_id: &TaskId, index: usize) -> bool {
        self.accepted.get(task_id).is_some_and(|&at| at < index)
    }
}

/// Writes the records of `batch` in one transaction (one fsync). A task
/// accepted and ended within the batch is written as its result alone.
fn commit(db: &Database, batch: &[Entry]) -> Result<(), redb::Error> {
    if !batch.iter().any(|entry| matches!(entry, Entry::Record(..))) {
        return Ok(());
    }
    let positions = Positions::of(batch);
    let write = db.begin_write()?;
    {
        let mut tasks = write.open_table(TASKS)?;
        let mut progress = write.open_table(PROGRESS)?;
        let mut results = write.open_table(RESULTS)?;
        let mut workflows = write.open_table(WORKFLOWS)?;
        let mut steps = write.open_table(WORKFLOW_STEPS)?;
        let mut ends = write.open_table(WORKFLOW_ENDS)?;
        let mut crashes = write.open_table(CRASHES)?;
        for (index, entry) in batch.iter().enumerate() {
            let Entry::Record(_, record) = entry else { continue };
            match record {
                Record::Accepted(task_id, _) | Record::Progress(task_id, _) | Record::Crashes(task_id, _)
                    if positions.ends_after(task_id, index) => {}
                Record::Accepted(task_id, task) => {
                    tasks.insert(task_id.as_bytes().as_slice(), encode(task).as_slice())?;
                }
                Record::Progress(task_id, state) => {
                    progress.insert(task_id.as_bytes().as_slice(), encode(state).as_slice())?;
                }
                Record::Crashes(task_id, count) => {
                    crashes.insert(task_id.as_bytes().as_slice(), *count)?;
                }
                Record::Finished(result) => {
                    let task_id = &result.report.task_id;
                    let key = task_id.as_bytes().as_slice();
                    if !positions.accepted_before(task_id, index) {
                        tasks.remove(key)?;
                        progress.remove(key)?;
                        crashes.remove(key)?;
                    }
                    if !positions.forgotten_after(task_id, index) {
                        results.insert(key, encode(result).as_slice())?;
                    }
                }
                Record::Forget(task_ids) => {
                    for task_id in task_ids {
                        results.remove(task_id.as_bytes().as_slice())?;
                    }
                }
                Record::WorkflowAccepted(workflow_id, workflow) => {
                    workflows.insert(workflow_id.as_bytes().as_slice(), encode(workflow).as_slice())?;
                }
                Record::WorkflowStep(workflow_id, node, outcome) => {
                    let key = step_key(workflow_id, *node);
                    steps.insert(key.as_slice(), encode(outcome).as_slice())?;
                }
                Record::WorkflowEnded(workflow_id, finished_ms) => {
                    ends.insert(workflow_id.as_bytes().as_slice(), *finished_ms)?;
                }
                Record::WorkflowForget(workflow_ids) => {
                    for workflow_id in workflow_ids {
                        workflows.remove(workflow_id.as_bytes().as_slice())?;
                        ends.remove(workflow_id.as_bytes().as_slice())?;
                        let (first, last) = (step_key(workflow_id, 0), step_key(workflow_id, u32::MAX));
                        steps.retain_in(first.as_slice()..=last.as_slice(), |_, _| false)?;
                    }
                }
            }
        }
    }
    write.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::TaskState;

    fn task(name: &str) -> TaskRecord {
        TaskRecord {
            task_name: name.into(),
            args: b"[1,2]".to_vec(),
            priority: Priority::Normal,
            created_ms: 1,
            not_before_ms: None,
            timeout_ms: 0,
            retry: RetryPolicy::NONE,
            callback: None,
            attempts: 0,
            owner: None,
        }
    }

    fn finished(task_id: TaskId) -> ResultRecord {
        ResultRecord {
            report: TaskReport {
                task_id,
                task_name: "add".into(),
                state: TaskState::Succeeded,
                priority: Priority::Normal,
                worker: "w".into(),
                attempts: 1,
                created_ms: 1,
                started_ms: Some(2),
                finished_ms: Some(3),
                result: Some(b"3".to_vec()),
                error: None,
            },
            args_digest: [7; 16],
        }
    }

    fn flush(journal: &Journal) -> bool {
        let (done, wait) = mpsc::channel();
        journal.then(move |written| {
            let _ = done.send(written);
        });
        wait.recv().unwrap_or(false)
    }

    #[test]
    fn what_is_written_is_read_back_after_a_reopen() {
        let dir = std::env::temp_dir().join(format!("fw-journal-{}", TaskId::new_v4()));
        let (a, b, c) = (TaskId::new_v4(), TaskId::new_v4(), TaskId::new_v4());
        {
            let (journal, recovered) = Journal::open(&dir, 1 << 20).expect("open");
            assert!(recovered.tasks.is_empty() && recovered.results.is_empty());
            journal.write(Record::Accepted(a, Box::new(task("add"))));
            journal.write(Record::Accepted(b, Box::new(task("add"))));
            journal.write(Record::Accepted(c, Box::new(task("add"))));
            let progress = Progress { attempts: 1, failures: 0, retry_at_ms: None, error: None };
            journal.write(Record::Progress(b, progress));
            journal.write(Record::Finished(Box::new(finished(a))));
            journal.write(Record::Finished(Box::new(finished(c))));
            journal.write(Record::Forget(vec![c]));
            assert!(flush(&journal));
            journal.close();
        }
        let (journal, recovered) = Journal::open(&dir, 1 << 20).expect("reopen");
        assert_eq!(recovered.tasks.len(), 1);
        let (id, record, progress) = &recovered.tasks[0];
        assert_eq!((*id, record.task_name.as_str()), (b, "add"));
        assert_eq!(progress.as_ref().map(|p| p.attempts), Some(1));
        assert_eq!(recovered.results.len(), 1);
        assert_eq!(recovered.results[0].report.task_id, a);
        journal.close();
        drop(journal);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn crash_counts_are_kept_while_their_task_lives() {
        let dir = std::env::temp_dir().join(format!("fw-journal-{}", TaskId::new_v4()));
        let (a, b) = (TaskId::new_v4(), TaskId::new_v4());
        {
            let (journal, _) = Journal::open(&dir, 1 << 20).expect("open");
            journal.write(Record::Accepted(a, Box::new(task("abort_now"))));
            journal.write(Record::Accepted(b, Box::new(task("abort_now"))));
            assert!(flush(&journal));
            journal.write(Record::Crashes(a, 1));
            journal.write(Record::Crashes(a, 2));
            journal.write(Record::Crashes(b, 1));
            journal.write(Record::Finished(Box::new(finished(b))));
            assert!(flush(&journal));
            journal.close();
        }
        let (journal, recovered) = Journal::open(&dir, 1 << 20).expect("reopen");
        // The last count of the live task; nothing of the ended one.
        assert_eq!(recovered.crashes.get(&a), Some(&2));
        assert_eq!(recovered.crashes.get(&b), None);
        journal.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn replies_leave_in_order_whether_the_writer_or_the_replier_sends_them() {
        let dir = std::env::temp_dir().join(format!("fw-journal-order-{}", TaskId::new_v4()));
        let (journal, _) = Journal::open(&dir, 1 << 20).expect("open");
        let (sent, received) = mpsc::channel();
        // Bursts (the replier sends while the next batch is written) and
        // lone ones (the writer sends them itself), interleaved.
        for burst in 0..20u32 {
            let size = if burst % 2 == 0 { 1 } else { 50 };
            for n in 0..size {
                journal.write(Record::Finished(Box::new(finished(TaskId::new_v4()))));
                let sent = sent.clone();
                journal.then(move |written| {
                    let _ = sent.send((burst, n, written));
                });
            }
            if size == 1 {
                assert!(flush(&journal), "a lone reply is sent once its record is written");
            }
        }
        assert!(flush(&journal));
        drop(sent);
        let order: Vec<(u32, u32, bool)> = received.iter().collect();
        assert_eq!(order.len(), 10 + 10 * 50);
        assert!(order.iter().all(|&(_, _, written)| written));
        assert!(order.windows(2).all(|pair| (pair[0].0, pair[0].1) < (pair[1].0, pair[1].1)), "{order:?}");
        journal.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_finished_workflow_is_kept_with_its_end_until_it_is_forgotten() {
        let dir = std::env::temp_dir().join(format!("fw-journal-wf-{}", TaskId::new_v4()));
        let (running, ended) = (WorkflowId::new_v4(), WorkflowId::new_v4());
        let submit = WorkflowSubmit { workflow_id: running, nodes: Vec::new() };
        let record = || Box::new(WorkflowRecord { submit: submit.clone(), owner: None, created_ms: 1 });
        let reopen = |dir: &Path| {
            let (journal, recovered) = Journal::open(dir, 1 << 20).expect("open");
            journal.close();
            let mut found: Vec<_> =
                recovered.workflows.iter().map(|w| (w.workflow_id, w.steps.len(), w.finished_ms)).collect();
            found.sort();
            found
        };
        {
            let (journal, _) = Journal::open(&dir, 1 << 20).expect("open");
            for id in [running, ended] {
                journal.write(Record::WorkflowAccepted(id, record()));
                journal.write(Record::WorkflowStep(id, 0, Box::new(Outcome::Succeeded(b"1".to_vec()))));
            }
            journal.write(Record::WorkflowEnded(ended, 77));
            assert!(flush(&journal));
            journal.close();
        }
        let mut expected = vec![(running, 1, None), (ended, 1, Some(77))];
        expected.sort();
        assert_eq!(reopen(&dir), expected);
        {
            let (journal, _) = Journal::open(&dir, 1 << 20).expect("open");
            journal.write(Record::WorkflowForget(vec![ended]));
            assert!(flush(&journal));
            journal.close();
        }
        assert_eq!(reopen(&dir), vec![(running, 1, None)], "nothing of a forgotten workflow is kept");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_batch_keeps_what_its_later_records_leave() {
        let dir = std::env::temp_dir().join(format!("fw-journal-{}", TaskId::new_v4()));
        let (a, b) = (TaskId::new_v4(), TaskId::new_v4());
        {
            let (journal, _) = Journal::open(&dir, 1 << 20).expect("open");
            // Accepted, started and ended in one batch: written as its result;
            // b's result is forgotten in the same batch: nothing is kept of b.
            let progress = Progress { attempts: 1, failures: 0, retry_at_ms: None, error: None };
            let batch = vec![
                Entry::Record(1, Record::Accepted(a, Box::new(task("add")))),
                Entry::Record(2, Record::Accepted(b, Box::new(task("add")))),
                Entry::Record(3, Record::Progress(a, progress)),
                Entry::Record(4, Record::Finished(Box::new(finished(a)))),
                Entry::Record(5, Record::Finished(Box::new(finished(b)))),
                Entry::Record(6, Record::Forget(vec![b])),
            ];
            let db = Database::create(dir.join("direct.redb")).expect("db");
            let write = db.begin_write().expect("write");
            for table in [TASKS, PROGRESS, RESULTS, WORKFLOWS, WORKFLOW_STEPS] {
                write.open_table(table).expect("table");
            }
            write.commit().expect("commit");
            commit(&db, &batch).expect("batch");
            let read = db.begin_read().expect("read");
            assert!(read.open_table(TASKS).expect("tasks").is_empty().expect("len"));
            assert!(read.open_table(PROGRESS).expect("progress").is_empty().expect("len"));
            let results = read.open_table(RESULTS).expect("results");
            assert!(results.get(a.as_bytes().as_slice()).expect("get").is_some());
            assert!(results.get(b.as_bytes().as_slice()).expect("get").is_none());
            journal.close();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_another_format_or_a_foreign_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("fw-journal-{}", TaskId::new_v4()));
        {
            let (journal, _) = Journal::open(&dir, 1 << 20).expect("open");
            journal.close();
        }
        {
            let db = Database::create(dir.join(FILE_NAME)).expect("raw open");
            let write = db.begin_write().expect("write");
            write.open_table(META).expect("meta").insert(FORMAT_KEY, "fastworker-state/99").expect("insert");
            write.commit().expect("commit");
        }
        assert!(matches!(Journal::open(&dir, 1 << 20), Err(JournalError::Format { .. })));
        std::fs::write(dir.join(FILE_NAME), b"not a database at all, just some bytes").expect("overwrite");
        assert!(matches!(Journal::open(&dir, 1 << 20), Err(JournalError::Damaged { .. })));
        std::fs::write(dir.join(FILE_NAME), b"").expect("truncate");
        assert!(matches!(Journal::open(&dir, 1 << 20), Err(JournalError::Damaged { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_oversized_or_foreign_record_is_refused() {
        assert!(decode::<Progress>(&[9, 1, 2], 100).is_err());
        assert!(decode::<Progress>(&[1; 200], 100).is_err());
        let ok = encode(&Progress { attempts: 2, failures: 1, retry_at_ms: Some(5), error: None });
        assert_eq!(decode::<Progress>(&ok, 100).map(|p| p.attempts), Ok(2));
    }
}
