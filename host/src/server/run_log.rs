//! The run log: how a control plane knows which runs a worker process was
//! executing when it died, exactly, even when the process holds runs
//! queued ahead (docs/isolation.md). The supervisor gives each worker
//! process the write end of a pipe; the process writes a record before a
//! run's task code starts and one after it returns. A record is 17 bytes,
//! written by one `write` (below `PIPE_BUF`, so records from several
//! threads never interleave) that is in the kernel before the task code
//! runs: whatever kills the process, its last starts are in the pipe. The
//! supervisor reads the pipe as it goes; at a death, the runs started and
//! not ended are the ones charged with the crash, and the runs only queued
//! in the process are sent again without one.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rustc_hash::FxHashSet;

use crate::wire::protocol::TaskId;

/// The bytes of one record: a tag and a task id.
const RECORD: usize = 17;
/// Tag of a record written before a run's task code starts.
const STARTING: u8 = b'S';
/// Tag of a record written after it returned.
const ENDED: u8 = b'E';
/// The pipe's room asked for (Linux), so that a burst of short runs
/// between two reads of the supervisor never waits on it.
#[cfg(target_os = "linux")]
const PIPE_BYTES: i32 = 1 << 20;

/// A worker process's end: records its runs' starts and ends.
pub(crate) struct RunLog(File);

impl RunLog {
    /// The run log on `fd`, the descriptor the supervisor passed
    /// (`--run-log-fd`); an error if it is not open.
    pub(crate) fn from_fd(fd: i32) -> std::io::Result<RunLog> {
        if fd <= 2 {
            // Standard input, output or error: never a run log.
            return Err(std::io::Error::new(ErrorKind::InvalidInput, "not a pipe handed over by a supervisor"));
        }
        // SAFETY: fcntl on any integer is sound; it fails on a closed fd.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above; processes this one starts do not inherit it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the fd is open (checked above) and was handed to this
        // process for this log alone, so this is its only owner.
        Ok(RunLog(unsafe { File::from_raw_fd(fd) }))
    }

    /// Records that `task_id`'s task code is about to run.
    pub(crate) fn starting(&self, task_id: TaskId) {
        self.write(STARTING, task_id);
    }

    /// Records that `task_id`'s task code returned.
    pub(crate) fn ended(&self, task_id: TaskId) {
        self.write(ENDED, task_id);
    }

    fn write(&self, tag: u8, task_id: TaskId) {
        let mut record = [0u8; RECORD];
        record[0] = tag;
        record[1..].copy_from_slice(task_id.as_bytes());
        // A supervisor that is gone cannot be told; the process dies with
        // it (parent-death signal).
        let _ = (&self.0).write_all(&record);
    }
}

/// The supervisor's end: the runs a worker process is executing.
pub(crate) struct RunLogReader {
    pipe: File,
    /// The start of a record cut by a read.
    partial: Vec<u8>,
    executing: FxHashSet<TaskId>,
    /// Runs started so far (for `--max-tasks-per-child` and `workers`).
    started: u64,
}

impl RunLogReader {
    /// A new pipe: the reader, and the write end to hand to one worker
    /// process (closed on exec unless the child clears that).
    pub(crate) fn pipe() -> std::io::Result<(RunLogReader, OwnedFd)> {
        let (reader, writer) = std::io::pipe()?;
        let reader = File::from(OwnedFd::from(reader));
        let fd = reader.as_raw_fd();
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            #[cfg(target_os = "linux")]
            libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES);
        }
        let reader = RunLogReader {
            pipe: reader,
            partial: Vec::with_capacity(RECORD),
            executing: FxHashSet::default(),
            started: 0,
        };
        Ok((reader, OwnedFd::from(writer)))
    }

    /// Reads every record written so far, without waiting; `true` once
    /// the write end is closed (the worker process is gone).
    pub(crate) fn read_available(&mut self) -> bool {
        let mut buffer = [0u8; 4096];
        loop {
            match self.pipe.read(&mut buffer) {
                Ok(0) => return true,
                Ok(read) => self.apply(&buffer[..read]),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits up to `timeout` for the write end to close (the worker
    /// process died: its supervisor hears it at once, before the runs lost
    /// with it can be sent again and lost again). Records are read at the
    /// next [`RunLogReader::read_available`] (within `timeout`, and always
    /// after a death), so a busy process costs its supervisor no wake-up
    /// per run.
    pub(crate) fn wait(&self, timeout: std::time::Duration) {
        // Poll reports POLLHUP (every writer closed) with no event asked.
        let mut fd = libc::pollfd { fd: self.pipe.as_raw_fd(), events: 0, revents: 0 };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the call's duration; poll has no other effect.
        unsafe { libc::poll(&mut fd, 1, millis) };
    }

    /// The runs the process has started so far.
    pub(crate) fn started(&self) -> u64 {
        self.started
    }

    /// Takes the runs started and not ended (after a death: the runs it
    /// killed), and forgets every record.
    pub(crate) fn take_executing(&mut self) -> Vec<TaskId> {
        self.partial.clear();
        self.executing.drain().collect()
    }

    fn apply(&mut self, mut bytes: &[u8]) {
        if !self.partial.is_empty() {
            let take = (RECORD - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let Ok(record) = <[u8; RECORD]>::try_from(&self.partial[..]) else { return };
            self.partial.clear();
            self.record(&record);
        }
        let mut records = bytes.chunks_exact(RECORD);
        for record in &mut records {
            self.record(record);
        }
        self.partial.extend_from_slice(records.remainder());
    }

    fn record(&mut self, record: &[u8]) {
        let Ok(id) = <[u8; 16]>::try_from(&record[1..]) else { return };
        let task_id = TaskId::from_bytes(id);
        match record[0] {
            STARTING => {
                self.started = self.started.saturating_add(1);
                self.executing.insert(task_id);
            }
            ENDED => {
                self.executing.remove(&task_id);
            }
            // Not a record this side writes: a broken log names nobody.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tag: u8, task_id: TaskId) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(task_id.as_bytes());
        bytes
    }

    #[test]
    fn the_runs_started_and_not_ended_are_executing_even_across_cut_reads() {
        let (mut reader, writer) = RunLogReader::pipe().expect("pipe");
        let (a, b, c) = (TaskId::new_v4(), TaskId::new_v4(), TaskId::new_v4());
        let mut bytes = Vec::new();
        for part in [record(STARTING, a), record(STARTING, b), record(ENDED, a), record(STARTING, c)] {
            bytes.extend(part);
        }
        // Cut in uneven pieces, as reads of a pipe may be.
        for piece in bytes.chunks(5) {
            reader.apply(piece);
        }
        let mut executing = reader.take_executing();
        executing.sort();
        let mut expected = vec![b, c];
        expected.sort();
        assert_eq!(executing, expected);
        assert!(reader.take_executing().is_empty(), "taken once");
        drop(writer);
    }

    #[test]
    fn a_wait_ends_at_once_when_the_writer_closes_but_not_for_a_record() {
        let (mut reader, writer) = RunLogReader::pipe().expect("pipe");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(writer);
        let log = RunLog::from_fd(fd).expect("an open fd");
        log.starting(TaskId::new_v4());
        let waited = std::time::Instant::now();
        reader.wait(std::time::Duration::from_millis(200));
        assert!(waited.elapsed() >= std::time::Duration::from_millis(150), "a record woke the wait");
        drop(log);
        let waited = std::time::Instant::now();
        reader.wait(std::time::Duration::from_secs(10));
        assert!(waited.elapsed() < std::time::Duration::from_secs(5), "the close did not wake the wait");
        assert!(reader.read_available(), "closed");
        assert_eq!(reader.take_executing().len(), 1);
    }

    #[test]
    fn records_written_by_a_run_log_are_read_back_from_the_pipe() {
        let (mut reader, writer) = RunLogReader::pipe().expect("pipe");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(writer);
        let log = RunLog::from_fd(fd).expect("an open fd");
        let (a, b) = (TaskId::new_v4(), TaskId::new_v4());
        log.starting(a);
        log.starting(b);
        log.ended(b);
        reader.read_available();
        assert_eq!(reader.take_executing(), vec![a]);
        // Nothing more written: a read does not wait.
        reader.read_available();
        assert!(reader.take_executing().is_empty());
    }
}
