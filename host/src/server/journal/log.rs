//! The write-ahead log in front of the store (`fastworker-state.log`): the
//! records of a group are appended to a preallocated file and made durable
//! with one `fdatasync`, which is what a reply waits for. The store is then
//! written without a sync of its own and made durable now and then by a
//! checkpoint (store.rs), after which the log starts over.
//!
//! Layout: a 32-byte header (the magic below), then frames, each
//! `len: u32 LE | generation: u64 LE | crc32: u32 LE | payload (len bytes)`,
//! the checksum over the length, the generation and the payload, the payload
//! the records, each encoded with postcard. The generation is the store's
//! count of checkpoints: a checkpoint raises it, so the frames written before
//! it, left behind in the file, no longer count, and the log starts over at
//! its header without a write or a sync of its own. Reading stops at the
//! first frame that is not complete, checksummed and of the current
//! generation: a crash leaves at most the last group's frames torn, and that
//! group was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::Record;

/// The log's file inside `--state-dir`.
pub(crate) const LOG_FILE: &str = "fastworker-state.log";

/// The first bytes of every log.
const MAGIC: &[u8; HEADER_LEN as usize] = b"fastworker-state-log/1\n\0\0\0\0\0\0\0\0\0";
const HEADER_LEN: u64 = 32;
const FRAME_HEADER: usize = 16;

/// Bytes written (with zeros) when the log is created: an append into them
/// overwrites, so its `fdatasync` writes the data and no file size. Appends
/// past them grow the file (a dearer sync) until the first checkpoint; the
/// log keeps that size from then on, so later appends overwrite too.
const PREALLOCATED: u64 = 1 << 20;

/// Past this many bytes in the log, the writer takes a checkpoint: the log
/// stays within about this size (plus one group), and so does a replay.
pub(crate) const CHECKPOINT_BYTES: u64 = 4 << 20;

/// A frame is closed once its payload reaches this: frames stay small next to
/// the bound a replay reads with, whatever a group holds.
const FRAME_TARGET: usize = 1 << 20;

/// The largest payload a frame may have for records of at most `max_record`
/// bytes each: the frame holding one record past [`FRAME_TARGET`].
pub(crate) fn max_payload(max_record: usize) -> usize {
    max_record.saturating_mul(2).saturating_add(FRAME_TARGET)
}

/// The log, open for appending.
pub(crate) struct Log {
    file: File,
    /// Where the next frame goes.
    offset: u64,
    /// The generation frames are written with.
    generation: u64,
    max_payload: usize,
    /// The frames of one append, reused.
    buffer: Vec<u8>,
}

/// What a replay found.
pub(crate) struct Replayed {
    /// Records replayed.
    pub(crate) records: usize,
    /// Bytes of frames replayed (after the header).
    pub(crate) bytes: u64,
    /// Why reading stopped where it did, when not at a clean end (zeros or
    /// a whole frame of an earlier generation): a torn tail, or what is left
    /// of frames written before the last checkpoint, ignored.
    pub(crate) ignored: Option<String>,
}

/// Why the log cannot be used.
#[derive(Debug)]
pub(crate) enum LogError {
    /// The file cannot be read or written.
    Io(std::io::Error),
    /// The file is not a log of this format.
    Foreign,
    /// A complete, checksummed frame whose records do not decode: written by
    /// another version, or damaged in a way the checksum missed.
    Undecodable { offset: u64, why: String },
}

impl From<std::io::Error> for LogError {
    fn from(error: std::io::Error) -> Self {
        LogError::Io(error)
    }
}

/// Reads the frames of `generation` in `dir`'s log, in order, handing each
/// frame's records (and its size) to `each`. A missing log holds nothing. At most one
/// frame (bounded by `max_payload`) is held at a time, whatever the file's
/// size.
pub(crate) fn replay<E>(
    dir: &Path,
    generation: u64,
    max_payload: usize,
    mut each: impl FnMut(Vec<Record>, usize) -> Result<(), E>,
) -> Result<Result<Replayed, E>, LogError> {
    let mut replayed = Replayed { records: 0, bytes: 0, ignored: None };
    let file = match File::open(dir.join(LOG_FILE)) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(replayed)),
        opened => opened?,
    };
    let len = file.metadata()?.len();
    let mut magic = [0u8; HEADER_LEN as usize];
    if len < HEADER_LEN || file.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
        return Err(LogError::Foreign);
    }
    let mut offset = HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        let Some(body) = offset.checked_add(FRAME_HEADER as u64).filter(|&end| end <= len) else {
            break;
        };
        file.read_exact_at(&mut header, offset)?;
        let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let found = u64::from_le_bytes(header[4..12].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if size == 0 && found == 0 && crc == 0 {
            // Preallocated space: nothing was written here.
            break;
        }
        if size as usize > max_payload {
            replayed.ignored =
                Some(format!("a frame of {size} bytes at byte {offset}, more than the {max_payload} one may hold"));
            break;
        }
        let Some(end) = body.checked_add(u64::from(size)).filter(|&end| end <= len) else {
            replayed.ignored = Some(format!("a frame at byte {offset} is cut short by the end of the file"));
            break;
        };
        payload.resize(size as usize, 0);
        file.read_exact_at(&mut payload, body)?;
        if checksum(&header[..12], &payload) != crc {
            replayed.ignored = Some(format!("the frame at byte {offset} does not match its checksum"));
            break;
        }
        if found != generation {
            // Written before the last checkpoint: already in the store.
            break;
        }
        let mut records = Vec::new();
        let mut rest = payload.as_slice();
        while !rest.is_empty() {
            let (record, after) = postcard::take_from_bytes::<Record>(rest)
                .map_err(|error| LogError::Undecodable { offset, why: error.to_string() })?;
            records.push(record);
            rest = after;
        }
        replayed.records += records.len();
        if let Err(error) = each(records, payload.len()) {
            return Ok(Err(error));
        }
        offset = end;
        replayed.bytes = end - HEADER_LEN;
    }
    Ok(Ok(replayed))
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

impl Log {
    /// Opens `dir`'s log for appending frames of `generation` from its start
    /// (its header was checked by [`replay`]), or creates it: written in
    /// full under another name, synced, then renamed, so that a log that
    /// exists is whole.
    pub(crate) fn open(dir: &Path, generation: u64, max_payload: usize) -> std::io::Result<Log> {
        let path = dir.join(LOG_FILE);
        if !path.exists() {
            let fresh = dir.join(format!("{LOG_FILE}.new"));
            let mut file = File::create(&fresh)?;
            file.write_all(MAGIC)?;
            let zeros = vec![0u8; 256 << 10];
            let mut left = PREALLOCATED - HEADER_LEN;
            while left > 0 {
                let now = left.min(zeros.len() as u64);
                file.write_all(&zeros[..now as usize])?;
                left -= now;
            }
            file.sync_all()?;
            std::fs::rename(&fresh, &path)?;
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        Ok(Log { file, offset: HEADER_LEN, generation, max_payload, buffer: Vec::new() })
    }

    /// Bytes of frames written since the log last started over.
    pub(crate) fn len(&self) -> u64 {
        self.offset - HEADER_LEN
    }

    /// Appends `records` and waits for them to be on disk (one write, one
    /// `fdatasync`). On an error nothing counts as written; the caller takes
    /// a checkpoint, so whatever reached the file is of a past generation.
    pub(crate) fn append<'a>(&mut self, records: impl Iterator<Item = &'a Record>) -> std::io::Result<()> {
        self.buffer.clear();
        let mut start = None;
        for record in records {
            let frame = *start.get_or_insert_with(|| {
                let at = self.buffer.len();
                self.buffer.extend_from_slice(&[0; FRAME_HEADER]);
                at
            });
            postcard::to_io(record, &mut self.buffer).map_err(std::io::Error::other)?;
            if self.buffer.len() - frame - FRAME_HEADER >= FRAME_TARGET {
                self.close_frame(frame)?;
                start = None;
            }
        }
        if let Some(frame) = start {
            self.close_frame(frame)?;
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buffer, self.offset)?;
        self.file.sync_data()?;
        self.offset += self.buffer.len() as u64;
        if self.buffer.capacity() > 2 * FRAME_TARGET {
            self.buffer = Vec::new();
        }
        Ok(())
    }

    /// Fills in the header of the frame starting at `frame` in the buffer.
    fn close_frame(&mut self, frame: usize) -> std::io::Result<()> {
        let size = self.buffer.len() - frame - FRAME_HEADER;
        let size = u32::try_from(size)
            .ok()
            .filter(|&size| size as usize <= self.max_payload)
            .ok_or_else(|| std::io::Error::other(format!("a record of {size} bytes, more than the log may hold")))?;
        self.buffer[frame..frame + 4].copy_from_slice(&size.to_le_bytes());
        self.buffer[frame + 4..frame + 12].copy_from_slice(&self.generation.to_le_bytes());
        let (header, payload) = self.buffer[frame..].split_at(FRAME_HEADER);
        let crc = checksum(&header[..12], payload);
        self.buffer[frame + 12..frame + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Starts over at the header with frames of `generation`, once a
    /// checkpoint holds everything the log held. A log that grew far past
    /// the checkpoint's size (a large group) is cut back to it.
    pub(crate) fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.offset = HEADER_LEN;
        if self.file.metadata().is_ok_and(|meta| meta.len() > 2 * CHECKPOINT_BYTES) {
            // Frames past it are of a past generation: cutting them loses nothing.
            let _ = self.file.set_len(CHECKPOINT_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::journal::Progress;
    use crate::wire::protocol::TaskId;

    fn progress(attempts: u32) -> Record {
        Record::Progress(TaskId::new_v4(), Progress { attempts, failures: 0, retry_at_ms: None, error: None })
    }

    fn attempts(dir: &Path, generation: u64) -> (Vec<u32>, Option<String>) {
        let mut found = Vec::new();
        let replayed = replay::<()>(dir, generation, max_payload(1 << 20), |records, _| {
            found.extend(records.iter().map(|r| match r {
                Record::Progress(_, p) => p.attempts,
                _ => u32::MAX,
            }));
            Ok(())
        });
        let Ok(Ok(replayed)) = replayed else { panic!("replay failed") };
        (found, replayed.ignored)
    }

    fn temp() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fw-log-{}", TaskId::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn frames_of_the_current_generation_are_replayed_and_a_restart_drops_the_rest() {
        let dir = temp();
        let mut log = Log::open(&dir, 7, max_payload(1 << 20)).expect("open");
        log.append([progress(1), progress(2)].iter()).expect("append");
        log.append([progress(3)].iter()).expect("append");
        assert_eq!(attempts(&dir, 7), (vec![1, 2, 3], None));
        // A checkpoint: the old frames stay in the file but no longer count.
        log.restart(8);
        assert_eq!(attempts(&dir, 8), (vec![], None));
        log.append([progress(4)].iter()).expect("append");
        assert_eq!(attempts(&dir, 8).0, vec![4], "what is left of the stale frames after it is not read");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_or_garbage_tail_is_ignored_and_said_and_a_foreign_file_refused() {
        let dir = temp();
        let mut log = Log::open(&dir, 1, max_payload(1 << 20)).expect("open");
        log.append([progress(1)].iter()).expect("append");
        let tail = HEADER_LEN + log.len();
        log.append([progress(2), progress(3)].iter()).expect("append");
        let end = HEADER_LEN + log.len();
        let file = OpenOptions::new().read(true).write(true).open(dir.join(LOG_FILE)).expect("file");
        // A byte of the second frame flipped: the first alone is replayed.
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, end - 1).expect("read");
        file.write_all_at(&[byte[0] ^ 0x40], end - 1).expect("flip");
        let (found, ignored) = attempts(&dir, 1);
        assert_eq!(found, vec![1]);
        assert!(ignored.is_some_and(|why| why.contains("checksum")));
        // A hostile length: nothing of its size is allocated, and it is said.
        let mut huge = [0u8; FRAME_HEADER];
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[4..12].copy_from_slice(&1u64.to_le_bytes());
        file.write_all_at(&huge, tail).expect("write");
        let (found, ignored) = attempts(&dir, 1);
        assert_eq!(found, vec![1]);
        assert!(ignored.is_some_and(|why| why.contains("more than")));
        // A frame cut short by the end of the file.
        file.set_len(end - 3).expect("truncate");
        file.write_all_at(&((end - tail) as u32).to_le_bytes(), tail).expect("write");
        let (_, ignored) = attempts(&dir, 1);
        assert!(ignored.is_some_and(|why| why.contains("cut short")));
        // Not a log at all: refused, never taken for an empty one.
        std::fs::write(dir.join(LOG_FILE), b"something else entirely, and long enough to hold a header")
            .expect("write");
        assert!(matches!(replay::<()>(&dir, 1, 1 << 20, |_, _| Ok(())), Err(LogError::Foreign)));
        std::fs::write(dir.join(LOG_FILE), b"").expect("write");
        assert!(matches!(replay::<()>(&dir, 1, 1 << 20, |_, _| Ok(())), Err(LogError::Foreign)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_checksummed_frame_that_does_not_decode_is_refused() {
        let dir = temp();
        let mut log = Log::open(&dir, 1, max_payload(1 << 20)).expect("open");
        log.append([progress(1)].iter()).expect("append");
        // A well-formed frame whose payload is not a record.
        log.buffer = vec![0; FRAME_HEADER];
        log.buffer.extend_from_slice(&[0xff; 9]);
        log.close_frame(0).expect("frame");
        log.file.write_all_at(&log.buffer, HEADER_LEN + log.len()).expect("write");
        let replayed = replay::<()>(&dir, 1, 1 << 20, |_, _| Ok(()));
        assert!(matches!(replayed, Err(LogError::Undecodable { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
