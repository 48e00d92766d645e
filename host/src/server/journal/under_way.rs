//! The runs under way on a durable control plane's own threads
//! (`--in-process` with `--state-dir`): a small file in the state directory,
//! mapped into memory, with one slot per task thread.
//!
//! A thread marks its slot with the task's id before the task's code runs
//! and clears it after, with plain memory writes: no system call and no
//! disk sync on a run's path. The mapping is the kernel's page cache of the
//! file, so a mark outlives the process however it ends (a signal,
//! `abort`, `exit`, `kill -9`), and the next start reads which runs were
//! under way when the process ended: each counts one crash of its task
//! (docs/isolation.md). A crash of the machine itself may lose the marks;
//! a run cut short by a power cut then runs again with no crash counted,
//! as no task cuts the power.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::wire::protocol::TaskId;

/// The file, in the state directory.
pub(crate) const FILE_NAME: &str = "fastworker-runs-under-way";

/// Bytes of one slot: its state (u32, at 0) and a task id (at 8).
const SLOT: usize = 32;
/// A slot nobody holds.
const FREE: u32 = 0;
/// A thread took the slot and is writing its task's id.
const TAKEN: u32 = 1;
/// The slot names a run whose code may be running.
const MARKED: u32 = 2;
/// The most slots read from a file left by the process before (more than
/// any `--concurrency` takes): a larger file is read that far.
const MAX_SLOTS: usize = 1 << 16;

/// The mapped file of one process.
pub(crate) struct RunsUnderWay {
    map: NonNull<u8>,
    slots: usize,
}

// SAFETY: the mapping lives as long as the value; slots are claimed with
// atomic operations, and a claimed slot's bytes are written only by the
// thread that holds its `Mark`.
unsafe impl Send for RunsUnderWay {}
// SAFETY: as above.
unsafe impl Sync for RunsUnderWay {}

/// A run marked under way: the mark is cleared when this is dropped (the
/// run's code returned, whatever it returned).
pub(crate) struct Mark<'a> {
    runs: &'a RunsUnderWay,
    slot: usize,
}

impl RunsUnderWay {
    /// Opens the file in `dir` with a slot for each of `slots` threads and
    /// returns it with the runs the process before had marked; their marks
    /// stay until [`RunsUnderWay::forget_before`] (once their crashes are
    /// stored), and their slots are not taken meanwhile.
    pub(crate) fn open(dir: &Path, slots: usize) -> std::io::Result<(RunsUnderWay, Vec<TaskId>)> {
        let path = dir.join(FILE_NAME);
        let slots = slots.clamp(1, MAX_SLOTS);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut before = Vec::new();
        (&mut file).take((MAX_SLOTS * SLOT) as u64).read_to_end(&mut before)?;
        file.set_len((slots * SLOT) as u64)?;
        // SAFETY: a shared read-write mapping of the whole file, just sized;
        // the file may be closed once mapped.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                slots * SLOT,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = NonNull::new(map.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok((RunsUnderWay { map, slots }, marked(&before)))
    }

    /// Marks `task_id`'s run under way in a free slot (`None` if every slot
    /// is held, which one slot per task thread never leaves).
    pub(crate) fn mark(&self, task_id: TaskId) -> Option<Mark<'_>> {
        (0..self.slots).find_map(|slot| {
            let state = self.state(slot);
            state.compare_exchange(FREE, TAKEN, Ordering::Acquire, Ordering::Relaxed).ok()?;
            // SAFETY: the slot's id bytes are inside the mapping, and only
            // the holder of the slot (this thread, since the exchange) writes them.
            unsafe {
                std::ptr::copy_nonoverlapping(task_id.as_bytes().as_ptr(), self.map.as_ptr().add(slot * SLOT + 8), 16);
            }
            state.store(MARKED, Ordering::Release);
            Some(Mark { runs: self, slot })
        })
    }

    /// Clears the marks the process before left (called before any run of
    /// this process is marked).
    pub(crate) fn forget_before(&self) {
        for slot in 0..self.slots {
            let _ = self.state(slot).compare_exchange(MARKED, FREE, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn state(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: the slot's first four bytes are inside the mapping and
        // aligned (the mapping is page-aligned, slots are 32 bytes), and are
        // only ever accessed atomically while mapped.
        unsafe { &*self.map.as_ptr().add(slot * SLOT).cast::<AtomicU32>() }
    }
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        self.runs.state(self.slot).store(FREE, Ordering::Release);
    }
}

impl Drop for RunsUnderWay {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once; no `Mark`
        // outlives `self`.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.slots * SLOT) };
    }
}

/// The task ids of the slots marked in `bytes` (a file's content).
fn marked(bytes: &[u8]) -> Vec<TaskId> {
    bytes
        .chunks_exact(SLOT)
        .filter(|slot| u32::from_ne_bytes(slot[..4].try_into().expect("four bytes")) == MARKED)
        .map(|slot| TaskId::from_bytes(slot[8..24].try_into().expect("sixteen bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_whose_mark_was_never_cleared_is_found_at_the_next_open_and_only_it() {
        let dir = std::env::temp_dir().join(format!("fastworker-under-way-{}", TaskId::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (killer, innocent, finished) = (TaskId::new_v4(), TaskId::new_v4(), TaskId::new_v4());
        {
            let (runs, before) = RunsUnderWay::open(&dir, 2).unwrap();
            assert!(before.is_empty());
            drop(runs.mark(finished).expect("a slot"));
            let first = runs.mark(killer).expect("a slot");
            let second = runs.mark(innocent).expect("the other slot");
            assert!(runs.mark(TaskId::new_v4()).is_none(), "two slots, both held");
            drop(second);
            // The process ends while the first run's code runs: its mark stays.
            std::mem::forget(first);
        }
        let (runs, before) = RunsUnderWay::open(&dir, 1).unwrap();
        assert_eq!(before, vec![killer]);
        // Kept until forgotten (its crash stored): its slot is not taken.
        assert!(runs.mark(finished).is_none());
        drop(runs);
        let (runs, before) = RunsUnderWay::open(&dir, 1).unwrap();
        assert_eq!(before, vec![killer]);
        runs.forget_before();
        drop(runs.mark(finished).expect("the slot, free again"));
        drop(runs);
        assert!(RunsUnderWay::open(&dir, 1).unwrap().1.is_empty());
        // A file left otherwise: a whole slot marked is read, a cut one and
        // garbage are not.
        let mut bytes = vec![0u8; SLOT + 8];
        bytes[..4].copy_from_slice(&MARKED.to_ne_bytes());
        bytes[8..24].copy_from_slice(&[7; 16]);
        std::fs::write(dir.join(FILE_NAME), &bytes).unwrap();
        assert_eq!(RunsUnderWay::open(&dir, 1).unwrap().1, vec![TaskId::from_bytes([7; 16])]);
        std::fs::write(dir.join(FILE_NAME), [0xff; 40]).unwrap();
        assert!(RunsUnderWay::open(&dir, 1).unwrap().1.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
