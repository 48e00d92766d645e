//! The store behind the log (`fastworker-state.redb`, [redb]): what the
//! control plane keeps across a restart, in tables keyed by task id, read in
//! full at start-up. The writer applies each group to it without a sync of
//! its own once the group is in the log (log.rs), and makes it durable with
//! a checkpoint now and then; a restart replays the log's frames into it.
//!
//! The tables: `tasks` (what was accepted, unchanged until the task ends),
//! `progress` (runs and failures so far, and when a retry is due),
//! `results` (final reports, for the result cache; deleted as the cache
//! drops them, so the store stays as bounded as the cache), and `crashes`
//! (how often a live task's runs died with their process,
//! docs/isolation.md). Workflows have `workflows` (descriptions),
//! `workflow_steps` (members' outcomes) and `workflow_ends` (when a
//! finished one ended; it is kept for its status until the control plane
//! forgets it). `meta` names the format (a directory written by another
//! format is refused, never guessed at) and the log's generation.

use std::path::Path;

use redb::{Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::log::{self, LogError, LOG_FILE};
use super::{JournalError, Progress, Record, Recovered, RecoveredWorkflow, ResultRecord, TaskRecord, WorkflowRecord};
use crate::wire::protocol::{TaskId, WorkflowId};
use crate::workflow::machine::Outcome;

/// The file inside `--state-dir`.
pub(crate) const FILE_NAME: &str = "fastworker-state.redb";

/// What `meta` says under [`FORMAT_KEY`]; any other value is refused, but
/// for [`FORMAT_BEFORE_LOG`].
pub(crate) const FORMAT: &str = "fastworker-state/2";
/// The format before the log: the same tables, no log. Such a store is
/// taken as it is and marked [`FORMAT`], so that a fastworker that does
/// not read the log refuses it from then on instead of missing what the
/// log holds.
pub(crate) const FORMAT_BEFORE_LOG: &str = "fastworker-state/1";
pub(crate) const FORMAT_KEY: &str = "format";
/// The log's generation in `meta` (decimal): frames of this generation are
/// not in the store yet. A checkpoint raises it.
const GENERATION_KEY: &str = "log-generation";

/// Bytes replayed from the log between two durable commits of the replay,
/// so that a log of any size holds only this much in memory.
const REPLAY_COMMIT_BYTES: u64 = 16 << 20;

/// The first byte of every stored value: the record layout's version.
const RECORD_VERSION: u8 = 1;

pub(crate) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(crate) const TASKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tasks");
pub(crate) const PROGRESS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("progress");
pub(crate) const RESULTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("results");
/// How often each live task's runs died with their process (a worker
/// process, or an in-process control plane), by task id: the count toward
/// `--max-task-crashes` survives a restart.
const CRASHES: TableDefinition<&[u8], u32> = TableDefinition::new("crashes");
/// Running workflows' descriptions, by workflow id.
pub(crate) const WORKFLOWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("workflows");
/// Their members' outcomes, keyed by workflow id and node (big-endian).
pub(crate) const WORKFLOW_STEPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("workflow_steps");
/// When finished workflows ended (ms since the epoch), by workflow id: a
/// finished workflow's description and steps are kept with it, for its
/// status, until the control plane forgets it.
const WORKFLOW_ENDS: TableDefinition<&[u8], u64> = TableDefinition::new("workflow_ends");

/// Opens the store file in `dir`: a missing one is created; an empty one, or
/// one whose pages do not verify, is refused. Then sets the tables up and
/// returns the log's generation.
pub(crate) fn open(dir: &Path) -> Result<(Database, u64), JournalError> {
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
            Some(found) if found == FORMAT_BEFORE_LOG => {
                meta.insert(FORMAT_KEY, FORMAT).map_err(|e| store(e.into()))?;
            }
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
    let generation = {
        let meta = write.open_table(META).map_err(|e| store(e.into()))?;
        let found = meta.get(GENERATION_KEY).map_err(|e| store(e.into()))?.map(|v| v.value().to_string());
        match found.map(|found| found.parse::<u64>().map_err(|_| found)) {
            None => 0,
            Some(Ok(generation)) => generation,
            Some(Err(found)) => {
                return Err(JournalError::Damaged { path: dir.into(), why: format!("names log generation '{found}'") })
            }
        }
    };
    write.commit().map_err(|e| store(e.into()))?;
    Ok((db, generation))
}

/// Replays the frames of `generation` from `dir`'s log into the store, then
/// takes a checkpoint (the next generation), so that the log starts over.
/// Replaying is idempotent: every record sets or removes keys, so the
/// frames applied again on top of a store that holds some of them (a crash
/// during a replay) leave what they left the first time.
pub(crate) fn replay(db: &Database, dir: &Path, generation: u64, max_record: usize) -> Result<u64, JournalError> {
    let store = |source: redb::Error| JournalError::Store { path: dir.into(), source: Box::new(source) };
    let log_error = |why: String| JournalError::Log { path: dir.join(LOG_FILE), why };
    let mut since_commit = 0u64;
    let replayed = log::replay(dir, generation, log::max_payload(max_record), |records, bytes| {
        let records: Vec<&Record> = records.iter().collect();
        apply(db, &records, &Positions::default(), Durability::None)?;
        since_commit = since_commit.saturating_add(bytes as u64);
        if since_commit >= REPLAY_COMMIT_BYTES {
            since_commit = 0;
            db.begin_write()?.commit()?;
        }
        Ok::<(), redb::Error>(())
    });
    let replayed = match replayed {
        Ok(Ok(replayed)) => replayed,
        Ok(Err(error)) => return Err(store(error)),
        Err(LogError::Io(error)) => return Err(log_error(format!("cannot be read ({error})"))),
        Err(LogError::Foreign) => return Err(log_error("is not a fastworker log (its header is not one)".into())),
        Err(LogError::Undecodable { offset, why }) => {
            return Err(log_error(format!("holds a complete frame at byte {offset} that does not decode ({why}): it was written by another version or is damaged")))
        }
    };
    let next = generation.checked_add(1).ok_or_else(|| log_error("has run out of generations".into()))?;
    checkpoint(db, next).map_err(store)?;
    if replayed.records > 0 {
        info!(state_dir = %dir.display(), records = replayed.records, bytes = replayed.bytes, "durable mode: replayed the log into the store");
    }
    if let Some(why) = replayed.ignored {
        info!(state_dir = %dir.display(), "durable mode: the log's end was ignored: {why}; it is a group a crash cut off before it was acknowledged, or what is left of frames the store already held");
    }
    Ok(next)
}

/// Makes everything applied so far durable, and the log's frames of
/// generations before `next` with it (one durable commit, one fsync).
pub(crate) fn checkpoint(db: &Database, next: u64) -> Result<(), redb::Error> {
    let write = db.begin_write()?;
    write.open_table(META)?.insert(GENERATION_KEY, next.to_string().as_str())?;
    write.commit()?;
    Ok(())
}

/// Runs `open`, turning a panic in it (the store's code meeting a damaged
/// file it did not expect) into [`JournalError::Damaged`]. The panic's
/// message goes into the error instead of the log.
pub(crate) fn checked<T>(dir: &Path, open: impl FnOnce() -> Result<T, JournalError>) -> Result<T, JournalError> {
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
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![RECORD_VERSION];
    // Writing into a Vec cannot fail; serializing these types cannot either.
    if postcard::to_io(value, &mut bytes).is_err() {
        bytes.truncate(1);
    }
    bytes
}

/// Decodes a stored value of at most `max` bytes.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], max: usize) -> Result<T, String> {
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
pub(crate) fn read_all(db: &Database, dir: &Path, max: usize) -> Result<Recovered, JournalError> {
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

/// Where in a batch each task's last acceptance, end and forgetting are,
/// so that what a later record of the same batch undoes is not written.
#[derive(Default)]
pub(crate) struct Positions {
    accepted: FxHashMap<TaskId, usize>,
    finished: FxHashMap<TaskId, usize>,
    forgotten: FxHashMap<TaskId, usize>,
}

impl Positions {
    pub(crate) fn of(records: &[&Record]) -> Positions {
        let mut positions = Positions::default();
        for (index, record) in records.iter().enumerate() {
            match record {
                Record::Accepted(task_id, _) => {
                    positions.accepted.insert(*task_id, index);
                }
                Record::Finished(result) => {
                    positions.finished.insert(result.report.task_id, index);
                }
                Record::Forget(task_ids) => {
                    positions.forgotten.extend(task_ids.iter().map(|task_id| (*task_id, index)));
                }
                _ => {}
            }
        }
        positions
    }

    /// Whether the record at `index` is undone by a later one of the
    /// batch (a task's acceptance, start or crash count, when it ends later
    /// in it), so that it need not be written at all.
    pub(crate) fn superseded(&self, record: &Record, index: usize) -> bool {
        match record {
            Record::Accepted(task_id, _) | Record::Progress(task_id, _) | Record::Crashes(task_id, _) => {
                self.ends_after(task_id, index)
            }
            _ => false,
        }
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

/// Writes `records` in one transaction, with `durability`. With the
/// `positions` of the batch, a task accepted and ended within it is written
/// as its result alone; with none (a replay), every record is applied as
/// it is.
pub(crate) fn apply(
    db: &Database,
    records: &[&Record],
    positions: &Positions,
    durability: Durability,
) -> Result<(), redb::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let mut write = db.begin_write()?;
    write.set_durability(durability)?;
    {
        let mut tasks = write.open_table(TASKS)?;
        let mut progress = write.open_table(PROGRESS)?;
        let mut results = write.open_table(RESULTS)?;
        let mut workflows = write.open_table(WORKFLOWS)?;
        let mut steps = write.open_table(WORKFLOW_STEPS)?;
        let mut ends = write.open_table(WORKFLOW_ENDS)?;
        let mut crashes = write.open_table(CRASHES)?;
        for (index, record) in records.iter().enumerate() {
            match record {
                _ if positions.superseded(record, index) => {}
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
                    }
                    // Even when accepted in this group: a count kept for its
                    // id before it was stored (restore.rs) ends with it.
                    crashes.remove(key)?;
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
