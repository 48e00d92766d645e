//! The durable mode (`--state-dir`): every accepted task, its progress and
//! its outcome, kept so that a control plane that crashes and restarts on
//! the same directory finishes what it had accepted and still answers for
//! what it finished.
//!
//! The task state (`server/state`) never touches the disk: it hands
//! [`Record`]s to [`Journal::write`] under its lock (a channel send, never
//! a wait), and replies that must not leave before their records are on
//! disk to [`Journal::then`]. One writer thread takes everything pending,
//! appends it to the write-ahead log with one `fdatasync` (group commit,
//! log.rs), and only then runs the replies, in order; it then applies the
//! group to the store (store.rs, [redb]) without a sync, and makes the store
//! durable with a checkpoint when the log fills or now and then, after which
//! the log starts over. A submission is thus acknowledged only once its task
//! is on disk, and a waiting client hears an outcome only once the outcome
//! is on disk. A restart replays the log into the store before reading it.
//! Runs on the process's own threads are marked under way in a third file
//! that is never synced (under_way.rs), so that a run that kills the
//! process is counted at the restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use self::log::{Log, LOG_FILE};
use self::store::{Positions, FILE_NAME, FORMAT, FORMAT_BEFORE_LOG};

use crate::wire::protocol::{
    Callback, Priority, RetryPolicy, TaskError, TaskId, TaskReport, WorkflowId, WorkflowSubmit,
};
use crate::workflow::machine::Outcome;

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

/// The node of a workflow step that records the workflow's cancellation.
pub(crate) const CANCEL_STEP: u32 = u32::MAX;

/// A checkpoint is taken at the latest this long after the last one, when
/// the log holds anything (and sooner once it holds
/// [`log::CHECKPOINT_BYTES`]).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

mod log;
mod store;
mod under_way;

pub(crate) use self::under_way::{Mark, RunsUnderWay, FILE_NAME as UNDER_WAY_FILE};

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
    #[error("--state-dir {path} was written in format '{found}', and this fastworker reads only '{FORMAT}' (and '{FORMAT_BEFORE_LOG}', which it upgrades): use the version that wrote it, or another directory")]
    Format {
        /// The directory.
        path: PathBuf,
        /// The format it names.
        found: String,
    },
    /// The write-ahead log exists but cannot be used (not a log, a frame
    /// that does not decode, unreadable): what it holds may have been
    /// acknowledged, so the start is refused.
    #[error("--state-dir: the log {path} cannot be used: it {why}. It is left as it is: restore the directory from a backup, or move the log aside to start from the store alone (what was acknowledged since the store's last checkpoint is then lost)")]
    Log {
        /// The log file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
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

/// One change to the store (written to the log as it is).
#[derive(Serialize, Deserialize)]
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
    /// Tasks whose run was under way on the process's own threads when it
    /// ended ([`RunsUnderWay`]).
    pub(crate) under_way: Vec<TaskId>,
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
        let (db, generation, recovered) = store::checked(dir, || {
            let (db, generation) = store::open(dir)?;
            let generation = store::replay(&db, dir, generation, max_record)?;
            let recovered = store::read_all(&db, dir, max_record)?;
            Ok((db, generation, recovered))
        })?;
        let log = Log::open(dir, generation, log::max_payload(max_record)).map_err(|error| JournalError::Log {
            path: dir.join(LOG_FILE),
            why: format!("cannot be created or opened ({error})"),
        })?;
        let mut writer = Writer {
            db,
            log,
            dir: dir.into(),
            generation,
            last_checkpoint: Instant::now(),
            needs_checkpoint: false,
            broken: false,
        };
        let (entries, receiver) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let writer_pending = pending.clone();
        let stored_through = Arc::new(AtomicU64::new(0));
        let writer_stored = stored_through.clone();
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
                write_loop(&mut writer, &receiver, &writer_pending, &writer_stored, &done);
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

/// The way to the thread that sends replies, and how many batches of
/// replies it has not sent yet.
struct Replies {
    sender: mpsc::Sender<(Vec<Then>, bool)>,
    queued: Arc<AtomicUsize>,
}

/// What the writer thread owns: the store, the log, and whether either
/// needs care after an error.
struct Writer {
    db: Database,
    log: Log,
    dir: PathBuf,
    /// The generation the log's frames are written with.
    generation: u64,
    last_checkpoint: Instant,
    /// An append failed: nothing more is logged until a checkpoint has
    /// made whatever reached the file stale.
    needs_checkpoint: bool,
    /// A logged group could not be applied to the store: the log holds what
    /// the store lacks, so no checkpoint may start it over, and nothing more
    /// is written until a restart replays it.
    broken: bool,
}

impl Writer {
    /// Makes the store durable and starts the log over (one durable
    /// commit); says whether it did.
    fn checkpoint(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let Some(next) = self.generation.checked_add(1) else { return false };
        match store::checkpoint(&self.db, next) {
            Ok(()) => {
                self.generation = next;
                self.log.restart(next);
                self.needs_checkpoint = false;
                self.last_checkpoint = Instant::now();
                true
            }
            Err(error) => {
                error!(state_dir = %self.dir.display(), %error, "could not write to the state store: submissions are refused until it works again");
                self.needs_checkpoint = true;
                false
            }
        }
    }

    /// Appends a group's records to the log, but those a later record of
    /// the group undoes: says whether they are on disk.
    fn log(&mut self, records: &[&Record], positions: &Positions) -> bool {
        if self.broken || (self.needs_checkpoint && !self.checkpoint()) {
            return false;
        }
        let logged = records.iter().enumerate().filter(|(index, record)| !positions.superseded(record, *index));
        match self.log.append(logged.map(|(_, record)| *record)) {
            Ok(()) => true,
            Err(error) => {
                error!(state_dir = %self.dir.display(), %error, "could not write to the state store's log: submissions are refused until it works again");
                self.checkpoint();
                false
            }
        }
    }

    /// Applies a logged group to the store, without a sync of its own.
    fn apply(&mut self, records: &[&Record], positions: &Positions) {
        if let Err(error) = store::apply(&self.db, records, positions, Durability::None) {
            error!(state_dir = %self.dir.display(), %error, "could not apply logged changes to the state store: submissions are refused; restart the control plane, which replays them from the log");
            self.broken = true;
        }
    }

    /// How long the writer may wait for entries before a checkpoint is due
    /// (`None`: the log holds nothing, so none is).
    fn checkpoint_in(&self) -> Option<Duration> {
        (self.log.len() > 0).then(|| CHECKPOINT_EVERY.saturating_sub(self.last_checkpoint.elapsed()))
    }
}

/// The writer thread: takes what is pending, appends it to the log with one
/// fdatasync, runs the replies that waited for it, then applies it to the
/// store.
fn write_loop(
    writer: &mut Writer,
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
            None => match writer.checkpoint_in() {
                None => match entries.recv() {
                    Ok(entry) => entry,
                    Err(_) => break,
                },
                Some(wait) => match entries.recv_timeout(wait) {
                    Ok(entry) => entry,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        writer.checkpoint();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
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
        let mut records = Vec::new();
        let mut thens = Vec::new();
        let mut last_seq = None;
        for entry in batch.drain(..) {
            match entry {
                Entry::Then(then) => thens.push(then),
                Entry::Stop => stop = true,
                Entry::Record(seq, record) => {
                    last_seq = Some(seq);
                    records.push(record);
                }
            }
        }
        let records: Vec<&Record> = records.iter().collect();
        let positions = Positions::of(&records);
        let written = records.is_empty() || writer.log(&records, &positions);
        // Records arrive in the order of their numbers: all up to the last
        // of this batch have been through a commit.
        if let Some(seq) = last_seq {
            stored_through.store(seq, Ordering::Release);
        }
        pending.fetch_sub(taken, Ordering::Relaxed);
        if !thens.is_empty() {
            // With nothing else pending and no earlier replies still
            // leaving, the writer would only wait: it sends the replies
            // itself, in order, sparing a lone blocking call a thread's
            // wake-up. Otherwise the replier sends them while the next batch
            // is written.
            carried = entries.try_recv().ok();
            if carried.is_none() && done.queued.load(Ordering::Acquire) == 0 {
                thens.into_iter().for_each(|then| then(written));
            } else {
                done.queued.fetch_add(1, Ordering::Release);
                if let Err(mpsc::SendError((thens, written))) = done.sender.send((thens, written)) {
                    done.queued.fetch_sub(1, Ordering::Release);
                    thens.into_iter().for_each(|then| then(written));
                }
            }
        }
        // The replies are out: the store is written while the next group
        // gathers.
        if written && !records.is_empty() {
            writer.apply(&records, &positions);
        }
        if stop || writer.log.len() >= log::CHECKPOINT_BYTES {
            writer.checkpoint();
        }
    }
    if writer.log.len() > 0 {
        writer.checkpoint();
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::store::{apply, decode, encode, FORMAT_KEY, META, PROGRESS, RESULTS, TASKS, WORKFLOWS, WORKFLOW_STEPS};
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
        // A count kept for an id no task was stored under (a blocking call
        // that killed the process within the commit window) stays until a
        // task of that id ends, even one accepted and ended in one group.
        let c = TaskId::new_v4();
        journal.write(Record::Crashes(c, 1));
        assert!(flush(&journal));
        journal.close();
        drop(journal);
        let (journal, recovered) = Journal::open(&dir, 1 << 20).expect("reopen");
        assert_eq!(recovered.crashes.get(&c), Some(&1));
        journal.write(Record::Accepted(c, Box::new(task("abort_now"))));
        journal.write(Record::Finished(Box::new(finished(c))));
        assert!(flush(&journal));
        journal.close();
        drop(journal);
        let (journal, recovered) = Journal::open(&dir, 1 << 20).expect("reopen");
        assert_eq!(recovered.crashes.get(&c), None);
        assert_eq!(recovered.crashes.get(&a), Some(&2));
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
            let batch = [
                Record::Accepted(a, Box::new(task("add"))),
                Record::Accepted(b, Box::new(task("add"))),
                Record::Progress(a, progress),
                Record::Finished(Box::new(finished(a))),
                Record::Finished(Box::new(finished(b))),
                Record::Forget(vec![b]),
            ];
            let batch: Vec<&Record> = batch.iter().collect();
            let db = Database::create(dir.join("direct.redb")).expect("db");
            let write = db.begin_write().expect("write");
            for table in [TASKS, PROGRESS, RESULTS, WORKFLOWS, WORKFLOW_STEPS] {
                write.open_table(table).expect("table");
            }
            write.commit().expect("commit");
            apply(&db, &batch, &Positions::of(&batch), Durability::Immediate).expect("batch");
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

    /// What a crash leaves: groups in the log that the store does not hold
    /// (`applied`: the store holds them too, not yet checkpointed or, after
    /// a crash in a replay, already checkpointed).
    fn crash_after_logging(dir: &Path, groups: &[Vec<Record>], applied: bool) {
        std::fs::create_dir_all(dir).expect("dir");
        let (db, generation) = store::open(dir).expect("store");
        let generation = store::replay(&db, dir, generation, 1 << 20).expect("replay");
        let mut log = Log::open(dir, generation, log::max_payload(1 << 20)).expect("log");
        for group in groups {
            let group: Vec<&Record> = group.iter().collect();
            log.append(group.iter().copied()).expect("append");
            if applied {
                let durability = if generation.is_multiple_of(2) { Durability::None } else { Durability::Immediate };
                apply(&db, &group, &Positions::of(&group), durability).expect("apply");
            }
        }
        // Dropped without a checkpoint, as a kill -9 leaves it.
    }

    #[test]
    fn what_is_only_in_the_log_at_a_crash_is_replayed_once() {
        let dir = std::env::temp_dir().join(format!("fw-journal-log-{}", TaskId::new_v4()));
        let (a, b, c) = (TaskId::new_v4(), TaskId::new_v4(), TaskId::new_v4());
        let progress = Progress { attempts: 1, failures: 0, retry_at_ms: None, error: None };
        let groups = vec![
            vec![Record::Accepted(a, Box::new(task("add"))), Record::Accepted(b, Box::new(task("add")))],
            vec![Record::Progress(a, progress), Record::Finished(Box::new(finished(b)))],
            vec![Record::Accepted(c, Box::new(task("add"))), Record::Finished(Box::new(finished(c)))],
            vec![Record::Forget(vec![c])],
        ];
        // In the log alone, and in the log and the store (replayed on top
        // of what holds it already): the same outcome, twice over.
        for applied in [false, true, false, true] {
            crash_after_logging(&dir, &groups, applied);
            let (journal, recovered) = Journal::open(&dir, 1 << 20).expect("reopen");
            journal.close();
            let tasks: Vec<_> =
                recovered.tasks.iter().map(|(id, _, p)| (*id, p.as_ref().map(|p| p.attempts))).collect();
            assert_eq!(tasks, vec![(a, Some(1))], "applied: {applied}");
            let results: Vec<_> = recovered.results.iter().map(|r| r.report.task_id).collect();
            assert_eq!(results, vec![b], "applied: {applied}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_written_before_the_log_is_read_and_marked_with_the_new_format() {
        let dir = std::env::temp_dir().join(format!("fw-journal-v1-{}", TaskId::new_v4()));
        let a = TaskId::new_v4();
        std::fs::create_dir_all(&dir).expect("dir");
        {
            let db = Database::create(dir.join(FILE_NAME)).expect("raw open");
            let write = db.begin_write().expect("write");
            write.open_table(META).expect("meta").insert(FORMAT_KEY, FORMAT_BEFORE_LOG).expect("insert");
            let record = encode(&task("add"));
            write.open_table(TASKS).expect("tasks").insert(a.as_bytes().as_slice(), record.as_slice()).expect("insert");
            write.commit().expect("commit");
        }
        let (journal, recovered) = Journal::open(&dir, 1 << 20).expect("open");
        journal.close();
        assert_eq!(recovered.tasks.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), vec![a]);
        let db = Database::open(dir.join(FILE_NAME)).expect("raw open");
        let read = db.begin_read().expect("read");
        let format = read.open_table(META).expect("meta").get(FORMAT_KEY).expect("get").map(|v| v.value().to_string());
        assert_eq!(format.as_deref(), Some(FORMAT));
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
