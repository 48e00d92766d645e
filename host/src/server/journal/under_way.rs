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
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

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

/// The file of one process: mapped when this process runs tasks on its
/// own threads, only read (and cleared) otherwise.
pub(crate) struct RunsUnderWay {
    path: PathBuf,
    map: Option<Mapping>,
    /// The slots the process before left marked, until forgotten.
    before: Mutex<Vec<usize>>,
}

/// The file mapped into memory, `slots` slots long.
struct Mapping {
    start: NonNull<u8>,
    slots: usize,
}

// SAFETY: the mapping lives as long as the value; slots are claimed with
// atomic operations, and a claimed slot's bytes are written only by the
// thread that holds its `Mark`.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

/// A run marked under way: the mark is cleared when this is dropped (the
/// run's code returned, whatever it returned).
pub(crate) struct Mark<'a> {
    map: &'a Mapping,
    slot: usize,
}

impl RunsUnderWay {
    /// Opens the file in `dir` for `threads` task threads (0: none here,
    /// and the file is not mapped) and returns it with the runs the process
    /// before had marked. Their marks stay until
    /// [`RunsUnderWay::forget_before`] (once their crashes are stored), and
    /// their slots are not taken meanwhile; every other slot starts free,
    /// whatever the file held.
    pub(crate) fn open(dir: &Path, threads: usize) -> std::io::Result<(RunsUnderWay, Vec<TaskId>)> {
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut found = Vec::new();
        (&mut file).take((MAX_SLOTS * SLOT) as u64).read_to_end(&mut found)?;
        let before: Vec<usize> = found
            .chunks_exact(SLOT)
            .enumerate()
            .filter(|(_, slot)| u32::from_ne_bytes(slot[..4].try_into().expect("four bytes")) == MARKED)
            .map(|(index, _)| index)
            .collect();
        let ids = before
            .iter()
            .map(|&index| TaskId::from_bytes(found[index * SLOT + 8..index * SLOT + 24].try_into().expect("16 bytes")))
            .collect();
        if threads == 0 {
            return Ok((RunsUnderWay { path, map: None, before: Mutex::new(before) }, ids));
        }
        // Every slot written out (the marks found kept, the rest free), so
        // that the disk blocks exist before the mapping writes to them.
        let slots = threads.max(before.last().map_or(0, |last| last + 1));
        let mut content = vec![0u8; slots * SLOT];
        for &index in &before {
            content[index * SLOT..(index + 1) * SLOT].copy_from_slice(&found[index * SLOT..(index + 1) * SLOT]);
        }
        file.rewind()?;
        file.write_all(&content)?;
        file.set_len(content.len() as u64)?;
        // SAFETY: a shared read-write mapping of the whole file, just
        // written; the file may be closed once mapped.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                content.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = NonNull::new(start.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok((RunsUnderWay { path, map: Some(Mapping { start, slots }), before: Mutex::new(before) }, ids))
    }

    /// Marks `task_id`'s run under way in a free slot. `None` when the file
    /// is not mapped, or every slot is held: with a slot per task thread,
    /// only while the marks of the process before are still kept.
    pub(crate) fn mark(&self, task_id: TaskId) -> Option<Mark<'_>> {
        let map = self.map.as_ref()?;
        (0..map.slots).find_map(|slot| {
            let state = map.state(slot);
            state.compare_exchange(FREE, TAKEN, Ordering::Acquire, Ordering::Relaxed).ok()?;
            // SAFETY: the slot's id bytes are inside the mapping, and only
            // the holder of the slot (this thread, since the exchange) writes them.
            unsafe {
                std::ptr::copy_nonoverlapping(task_id.as_bytes().as_ptr(), map.start.as_ptr().add(slot * SLOT + 8), 16);
            }
            state.store(MARKED, Ordering::Release);
            Some(Mark { map, slot })
        })
    }

    /// Clears the marks the process before left (their crashes are
    /// stored): their slots are free again, and an unmapped file is emptied.
    pub(crate) fn forget_before(&self) -> std::io::Result<()> {
        let before = std::mem::take(&mut *self.before.lock().expect("marks before lock"));
        match &self.map {
            Some(map) => before.into_iter().for_each(|slot| map.state(slot).store(FREE, Ordering::Release)),
            None if !before.is_empty() => OpenOptions::new().write(true).open(&self.path)?.set_len(0)?,
            None => {}
        }
        Ok(())
    }
}

impl Mapping {
    fn state(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: the slot's first four bytes are inside the mapping and
        // aligned (the mapping is page-aligned, slots are 32 bytes), and are
        // only ever accessed atomically while mapped.
        unsafe { &*self.start.as_ptr().add(slot * SLOT).cast::<AtomicU32>() }
    }
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        self.map.state(self.slot).store(FREE, Ordering::Release);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once; no `Mark`
        // outlives it (a mark borrows it).
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.slots * SLOT) };
    }
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
            let first = runs.mark(innocent).expect("a slot");
            let second = runs.mark(killer).expect("the other slot");
            assert!(runs.mark(TaskId::new_v4()).is_none(), "two slots, both held");
            drop(first);
            // The process ends while the second run's code runs: its mark stays.
            std::mem::forget(second);
        }
        // Fewer threads now: the mark in the second slot is still read and kept.
        let (runs, before) = RunsUnderWay::open(&dir, 1).unwrap();
        assert_eq!(before, vec![killer]);
        // A run of this process takes the free slot; the kept one is not taken.
        let live = runs.mark(finished).expect("the first slot");
        assert!(runs.mark(innocent).is_none());
        // Forgetting the old mark leaves the live one: a later open finds it.
        runs.forget_before().unwrap();
        let again = runs.mark(innocent).expect("the slot forgotten");
        drop(again);
        std::mem::forget(live);
        drop(runs);
        let (runs, before) = RunsUnderWay::open(&dir, 1).unwrap();
        assert_eq!(before, vec![finished]);
        runs.forget_before().unwrap();
        drop(runs);
        assert!(RunsUnderWay::open(&dir, 1).unwrap().1.is_empty());
        // A file left otherwise: a whole slot marked is read, a cut one and
        // garbage are not, and a slot left taken or garbled is free again.
        let mut bytes = vec![0u8; SLOT + 8];
        bytes[..4].copy_from_slice(&MARKED.to_ne_bytes());
        bytes[8..24].copy_from_slice(&[7; 16]);
        std::fs::write(dir.join(FILE_NAME), &bytes).unwrap();
        assert_eq!(RunsUnderWay::open(&dir, 1).unwrap().1, vec![TaskId::from_bytes([7; 16])]);
        let mut bytes = vec![0xffu8; SLOT];
        bytes[..4].copy_from_slice(&TAKEN.to_ne_bytes());
        bytes.extend_from_slice(&[0xff; SLOT]);
        std::fs::write(dir.join(FILE_NAME), &bytes).unwrap();
        let (runs, before) = RunsUnderWay::open(&dir, 2).unwrap();
        assert!(before.is_empty());
        let (first, second) = (runs.mark(killer), runs.mark(innocent));
        assert!(first.is_some() && second.is_some(), "both slots free again");
        drop((first, second));
        // Not mapped (no task threads here): the marks are read, and
        // emptied once forgotten.
        std::mem::forget(runs.mark(killer).expect("a slot"));
        drop(runs);
        let (runs, before) = RunsUnderWay::open(&dir, 0).unwrap();
        assert_eq!(before, vec![killer]);
        assert!(runs.mark(innocent).is_none());
        runs.forget_before().unwrap();
        assert!(RunsUnderWay::open(&dir, 0).unwrap().1.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
