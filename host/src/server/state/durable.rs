//! The durable mode's hooks (`--state-dir`): the records each change of
//! the ledger hands to the [`Journal`], and the replies that wait for them
//! to be on disk. In memory mode (no journal) every record is skipped and
//! every reply goes at once.

use nng::Message;
use tracing::warn;

use super::Outbox;
use crate::ledger::LiveTask;
use crate::server::cache::ResultCache;
use crate::server::endpoint::Replier;
use crate::server::journal::{Journal, Mark, Progress, Record, ResultRecord, RunsUnderWay, TaskRecord};
use crate::wire::protocol::{ErrorKind, ErrorReply, Reply, TaskId, TaskReport};

/// The journal, when this process keeps one, and what its records are of.
pub(super) struct Durable {
    journal: Option<Journal>,
    /// The runs under way on this process's own threads.
    under_way: Option<RunsUnderWay>,
    /// This process's name, in the refusals the store's state causes.
    worker_id: String,
}

impl Durable {
    /// The hooks of `journal` (`None`: memory mode) for process `worker_id`.
    pub(super) fn new(journal: Option<(Journal, RunsUnderWay)>, worker_id: String) -> Durable {
        let (journal, under_way) = journal.unzip();
        Durable { journal, under_way, worker_id }
    }

    /// Whether the durable mode is on.
    pub(super) fn is_on(&self) -> bool {
        self.journal.is_some()
    }

    /// Hands a record to the store (in durable mode).
    pub(super) fn write(&self, record: Record) {
        if let Some(journal) = &self.journal {
            journal.write(record);
        }
    }

    /// Writes what is pending and closes the store.
    pub(super) fn close(&self) {
        if let Some(journal) = &self.journal {
            journal.close();
        }
    }

    /// Sends `reply` now, or, in durable mode, once every record handed to
    /// the store before it is on disk (a submission is acknowledged only
    /// when its task is stored).
    pub(super) fn acknowledge(&self, replier: Replier, reply: Reply) {
        let Some(journal) = &self.journal else { return replier.send(&reply) };
        let worker_id = self.worker_id.clone();
        let state_dir = journal.path().display().to_string();
        journal.then(move |written| {
            if written {
                return replier.send(&reply);
            }
            let message = format!(
                "'{worker_id}' could not write to its --state-dir {state_dir}, so the submission is not acknowledged (it may still run once); retry later"
            );
            replier.send(&Reply::Error(ErrorReply::new(ErrorKind::Busy, message)));
        });
    }

    /// Queues the final report for the clients waiting for it: in durable
    /// mode, behind the record of the outcome.
    pub(super) fn answer_final(&self, waiters: Vec<Replier>, message: Message, outbox: &mut Outbox) {
        match &self.journal {
            None => outbox.0.push((waiters, message)),
            Some(journal) => journal.then(move |_| super::send_to_all(waiters, message)),
        }
    }

    /// `Busy` when the store's writer is too far behind to take more.
    pub(super) fn has_room(&self) -> Result<(), ErrorReply> {
        match &self.journal {
            Some(journal) if !journal.has_room() => Err(ErrorReply::new(
                ErrorKind::Busy,
                format!(
                    "'{}' is busy: {} changes wait to be written to its --state-dir (the disk is not keeping up); retry later",
                    self.worker_id,
                    journal.pending()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Records a task just accepted (`later`: its countdown or ETA).
    pub(super) fn record_accepted(&self, task: &LiveTask<Replier>, later: Option<u64>) {
        let Some(journal) = &self.journal else { return };
        let record = TaskRecord {
            task_name: task.report.task_name.clone(),
            args: task.args.to_vec(),
            priority: task.report.priority,
            created_ms: task.report.created_ms,
            not_before_ms: later,
            timeout_ms: task.plan.timeout_ms,
            retry: task.plan.retry,
            callback: task.plan.callback.clone(),
            attempts: task.report.attempts,
            owner: task.owner,
        };
        journal.write(Record::Accepted(task.report.task_id, Box::new(record)));
    }

    /// Records that a task started a run, or waits for a retry due at `retry_at_ms`.
    pub(super) fn record_progress(&self, task: &LiveTask<Replier>, retry_at_ms: Option<u64>) {
        let Some(journal) = &self.journal else { return };
        let progress = Progress {
            attempts: task.report.attempts,
            failures: task.failures,
            retry_at_ms,
            error: retry_at_ms.and(task.report.error.clone()),
        };
        journal.write(Record::Progress(task.report.task_id, progress));
    }

    /// Records that `task_id`'s runs died with their process `count` times.
    pub(super) fn record_crashes(&self, task_id: TaskId, count: u32) {
        self.write(Record::Crashes(task_id, count));
    }

    /// In durable mode, before a run's code starts on this process's
    /// threads: waits until the records up to `record` (its task's
    /// acceptance among them; 0: none, a blocking call's run) are stored,
    /// and marks the run under way until
    /// the returned mark is dropped, so that a crash of this process during
    /// the run is counted at the restart. The run's own start record is not
    /// waited for.
    pub(super) fn before_run(&self, record: u64, task_id: TaskId) -> Option<Mark<'_>> {
        let journal = self.journal.as_ref()?;
        wait_stored(journal, record);
        let mark = self.under_way.as_ref().and_then(|runs| runs.mark(task_id));
        if mark.is_none() {
            // A slot per task thread leaves none only while the marks of the
            // process before are kept (a periodic run during the restore).
            warn!(%task_id, "no slot free to mark the run under way: if its code kills this process, the crash is not counted");
        }
        mark
    }

    /// In durable mode, once every record handed so far is stored, clears
    /// the runs the process before left marked under way (their crashes
    /// are among those records).
    pub(super) fn forget_under_way_before(&self) {
        let (Some(journal), Some(runs)) = (&self.journal, &self.under_way) else { return };
        wait_stored(journal, journal.last_seq());
        if let Err(error) = runs.forget_before() {
            warn!(%error, "could not clear the runs the process before left under way; they may count again at the next restart");
        }
    }

    /// Records how a task ended; returns the record's number (0 in memory
    /// mode), for [`Durable::is_stored`].
    pub(super) fn record_finished(&self, report: &TaskReport, args_digest: [u8; 16]) -> u64 {
        let Some(journal) = &self.journal else { return 0 };
        journal.write(Record::Finished(Box::new(ResultRecord { report: report.clone(), args_digest })))
    }

    /// Whether the record numbered `record` (0: none) is stored: an
    /// outcome is shown only once it is, so that no client sees an outcome
    /// that a crash could take back (the task would run again).
    pub(super) fn is_stored(&self, record: u64) -> bool {
        record == 0 || self.journal.as_ref().is_none_or(|journal| journal.is_stored(record))
    }

    /// The number of the last record handed to the store (0: none, or
    /// memory mode): what a view must wait for before it shows a change
    /// just made, with [`Durable::after`].
    pub(super) fn last_record(&self) -> u64 {
        self.journal.as_ref().map_or(0, Journal::last_seq)
    }

    /// Runs `then` now if the record numbered `record` is stored, else once
    /// it is (or could not be written).
    pub(super) fn after(&self, record: u64, then: impl FnOnce() + Send + 'static) {
        match &self.journal {
            Some(journal) if !journal.is_stored(record) => journal.then(move |_| then()),
            _ => then(),
        }
    }

    /// Deletes from the store the results the cache dropped.
    pub(super) fn forget_dropped(&self, cache: &mut ResultCache) {
        let Some(journal) = &self.journal else { return };
        let forgotten = cache.take_forgotten();
        if !forgotten.is_empty() {
            journal.write(Record::Forget(forgotten));
        }
    }
}

/// Waits until the record numbered `record` (0: none) is stored.
fn wait_stored(journal: &Journal, record: u64) {
    if record == 0 || journal.is_stored(record) {
        return;
    }
    let (stored, wait) = std::sync::mpsc::sync_channel(1);
    journal.then(move |_| {
        let _ = stored.send(());
    });
    let _ = wait.recv();
}
