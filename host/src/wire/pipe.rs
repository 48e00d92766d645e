//! The link between a control plane and a worker process it started: a
//! Unix socket pair (docs/isolation.md), on which each frame is a header
//! of five bytes (the body's length, a channel tag) and the body, a protocol frame as a port would carry it. Only the two processes
//! hold the pair, so nothing is sealed; the length is still checked
//! against the frame bound before anything is allocated, as a child's
//! plugin code may write to its end.
//!
//! [`PipeWriter`] writes a frame at once when the socket has room (one
//! non-blocking `sendmsg`, no thread hand-off) and otherwise queues it for
//! its own thread, so that a caller holding a lock never waits on a full
//! socket; a [`FrameReader`] reads frames, bounded, on a reader's thread,
//! taking every frame waiting with one `read`.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The bytes of a frame's header: its body's length (u32, little endian)
/// and its channel's tag.
pub(crate) const HEADER: usize = 5;

/// Which exchange a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Runs going to the worker process (and, from it, the refusal of a
    /// whole frame, which ends the link).
    Dispatch = 0,
    /// A note whose answer nobody reads (revocations, cancellations).
    Note = 2,
    /// Outcomes the worker process pushes as they come, answering no
    /// request (its supervisor sends no `Collect`).
    Outcomes = 3,
}

impl Tag {
    fn from_byte(byte: u8) -> Option<Tag> {
        match byte {
            0 => Some(Tag::Dispatch),
            2 => Some(Tag::Note),
            3 => Some(Tag::Outcomes),
            _ => None,
        }
    }
}

/// Why a frame could not be read: the link is over either way.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The other end closed its side.
    #[error("the other end closed the link")]
    Closed,
    /// Reading failed.
    #[error("reading the link failed: {0}")]
    Io(#[from] std::io::Error),
    /// A length prefix beyond the frame bound (nothing was allocated).
    #[error("a frame of {size} bytes was announced, more than the {limit} allowed: the link is broken or hostile")]
    TooLarge {
        /// The length announced.
        size: u64,
        /// The bound.
        limit: usize,
    },
    /// A tag no side writes.
    #[error("a frame has the unknown channel tag {0}: the link is broken or hostile")]
    UnknownTag(u8),
    /// A frame of a kind this end is never sent.
    #[error("a {0:?} frame came, which this end is never sent: the link is broken or hostile")]
    Unexpected(Tag),
}

/// One frame read.
pub(crate) struct Frame {
    pub(crate) tag: Tag,
    pub(crate) body: nng::Message,
}

/// The most bytes one `read` takes at once: every frame waiting, up to
/// this, in one call; a larger body is read straight into its own
/// buffer once its length is checked.
const READ_BUFFER: usize = 64 * 1024;

/// Reads frames from one end of a link, each body at most `limit` bytes:
/// one `read` takes every frame waiting (up to [`READ_BUFFER`] bytes), so
/// that frames arriving together cost one call and one wake-up, not two
/// calls each.
pub(crate) struct FrameReader {
    stream: UnixStream,
    limit: usize,
    buffer: Box<[u8]>,
    /// The bytes read and not yet taken: `buffer[start..end]`.
    start: usize,
    end: usize,
    /// The reads made into the buffer (a test counts them).
    #[cfg(test)]
    reads: usize,
}

impl FrameReader {
    /// A reader of `stream` whose frames' bodies are at most `limit` bytes.
    pub(crate) fn new(stream: UnixStream, limit: usize) -> FrameReader {
        FrameReader {
            stream,
            limit,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            #[cfg(test)]
            reads: 0,
        }
    }

    /// The stream read.
    pub(crate) fn get_ref(&self) -> &UnixStream {
        &self.stream
    }

    /// Whether bytes wait to be taken, read already or in the stream (or
    /// its end), without waiting for any.
    pub(crate) fn has_input(&self) -> bool {
        // A failed poll says yes: the read that follows reports the failure.
        self.end > self.start || wait_for_input(self.stream.as_raw_fd(), 0).unwrap_or(true)
    }

    /// The next frame, read from what is buffered or else from the stream.
    pub(crate) fn next_frame(&mut self) -> Result<Frame, FrameError> {
        while self.end - self.start < HEADER {
            self.fill()?;
        }
        let header: [u8; HEADER] = self.buffer[self.start..self.start + HEADER].try_into().expect("five bytes");
        let size = u32::from_le_bytes(header[..4].try_into().expect("four bytes"));
        let tag = Tag::from_byte(header[4]).ok_or(FrameError::UnknownTag(header[4]))?;
        let size = usize::try_from(size).map_err(|_| FrameError::TooLarge { size: size.into(), limit: self.limit })?;
        if size > self.limit {
            return Err(FrameError::TooLarge { size: size as u64, limit: self.limit });
        }
        self.start += HEADER;
        let mut body = nng::Message::with_zeros(size);
        let buffered = size.min(self.end - self.start);
        body[..buffered].copy_from_slice(&self.buffer[self.start..self.start + buffered]);
        self.start += buffered;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        // The rest of a body larger than what was waiting: read in place.
        read_all(&self.stream, &mut body[buffered..])?;
        Ok(Frame { tag, body })
    }

    /// Reads what the stream has (at least one byte) after the bytes kept;
    /// its end before any byte of a header is a clean close, anywhere else
    /// a cut frame.
    fn fill(&mut self) -> Result<(), FrameError> {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        #[cfg(test)]
        {
            self.reads += 1;
        }
        match read_some(&self.stream, &mut self.buffer[self.end..])? {
            0 if self.end == 0 => Err(FrameError::Closed),
            0 => Err(FrameError::Io(ErrorKind::UnexpectedEof.into())),
            read => {
                self.end += read;
                Ok(())
            }
        }
    }
}

/// Fills `buffer` from `stream`; its end is a cut frame.
fn read_all(stream: &impl AsRawFd, buffer: &mut [u8]) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buffer.len() {
        match read_some(stream, &mut buffer[filled..])? {
            0 => return Err(FrameError::Io(ErrorKind::UnexpectedEof.into())),
            read => filled += read,
        }
    }
    Ok(())
}

/// Reads what `stream` has (0 at its end), waiting for it if need be.
///
/// It waits in `poll` for input only, not in a blocking read: a thread
/// blocked reading a Unix socket is also woken each time the other end
/// reads what this end wrote (the kernel's "room to write" wake-up shares
/// the socket's wait queue), and on this link that would be a wasted
/// switch per frame sent; `poll` filters that wake-up out.
fn read_some(stream: &impl AsRawFd, buffer: &mut [u8]) -> std::io::Result<usize> {
    let fd = stream.as_raw_fd();
    loop {
        // SAFETY: `buffer` is valid for writes of its length for the call.
        let read = unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT) };
        if read >= 0 {
            return Ok(read as usize);
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            ErrorKind::Interrupted => {}
            ErrorKind::WouldBlock => match wait_for_input(fd, -1) {
                Err(error) if error.kind() != ErrorKind::Interrupted => return Err(error),
                _ => {}
            },
            _ => return Err(error),
        }
    }
}

/// Waits up to `timeout_ms` (-1: with no end) for `fd` to have input (or
/// its end), and says whether it has.
fn wait_for_input(fd: RawFd, timeout_ms: libc::c_int) -> std::io::Result<bool> {
    let mut wait = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the call's duration.
    match unsafe { libc::poll(&mut wait, 1, timeout_ms) } {
        ready if ready >= 0 => Ok(ready > 0),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The header of a frame of `body_len` bytes (at most `u32::MAX`: the
/// frame bound is far below it).
fn header(tag: Tag, body_len: usize) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    header[4] = tag as u8;
    header
}

/// Writes frames to one end of a link, in order, never blocking its caller.
#[derive(Clone)]
pub(crate) struct PipeWriter {
    shared: Arc<Shared>,
}

struct Shared {
    fd: RawFd,
    /// Kept open for as long as a writer uses its descriptor.
    _stream: UnixStream,
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Frames (or what is left of one) waiting for the writer thread.
    frames: VecDeque<Vec<u8>>,
    /// The writer thread is writing a frame taken from `frames`.
    writing: bool,
    /// Closed by its owner, or a write failed: nothing more is written.
    closed: bool,
}

impl PipeWriter {
    /// A writer on `stream` (a clone of the end a reader reads), with its
    /// thread for the frames the socket had no room for.
    pub(crate) fn start(stream: UnixStream, name: &str) -> std::io::Result<(PipeWriter, JoinHandle<()>)> {
        let shared =
            Arc::new(Shared { fd: stream.as_raw_fd(), _stream: stream, queue: Mutex::default(), wake: Condvar::new() });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || thread_shared.run())?;
        Ok((PipeWriter { shared }, thread))
    }

    /// Sends a frame: at once if nothing is queued and the socket has room,
    /// else after those queued. An error once the link is closed.
    pub(crate) fn send(&self, tag: Tag, body: &[u8]) -> std::io::Result<()> {
        let header = header(tag, body.len());
        let mut queue = self.shared.queue.lock().expect("pipe writer lock");
        if queue.closed {
            return Err(ErrorKind::BrokenPipe.into());
        }
        let mut written = 0;
        if queue.frames.is_empty() && !queue.writing {
            match send_now(self.shared.fd, &header, body) {
                Ok(sent) => written = sent,
                Err(error) => {
                    queue.closed = true;
                    return Err(error);
                }
            }
        }
        let total = HEADER + body.len();
        if written < total {
            let mut rest = Vec::with_capacity(total - written);
            if written < HEADER {
                rest.extend_from_slice(&header[written..]);
                rest.extend_from_slice(body);
            } else {
                rest.extend_from_slice(&body[written - HEADER..]);
            }
            queue.frames.push_back(rest);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Writes nothing more; the thread ends.
    pub(crate) fn close(&self) {
        self.shared.queue.lock().expect("pipe writer lock").closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    /// The writer thread: writes queued frames in order, blocking on a
    /// full socket (nobody else waits for it).
    fn run(&self) {
        let mut queue = self.queue.lock().expect("pipe writer lock");
        loop {
            if queue.closed {
                queue.frames.clear();
                return;
            }
            if let Some(frame) = queue.frames.pop_front() {
                queue.writing = true;
                drop(queue);
                let result = send_blocking(self.fd, &frame);
                queue = self.queue.lock().expect("pipe writer lock");
                queue.writing = false;
                if result.is_err() {
                    queue.closed = true;
                }
                continue;
            }
            queue = self.wake.wait(queue).expect("pipe writer lock");
        }
    }
}

/// Writes as much of the frame as the socket takes without waiting; the
/// bytes written (`WouldBlock` is no error: nothing, or part, was written).
fn send_now(fd: RawFd, header: &[u8], body: &[u8]) -> std::io::Result<usize> {
    let mut written = 0;
    let total = header.len() + body.len();
    while written < total {
        let (first, second) = if written < header.len() {
            (&header[written..], body)
        } else {
            (&body[written - header.len()..], &[][..])
        };
        match sendmsg(fd, first, second, libc::MSG_DONTWAIT) {
            Ok(sent) => written += sent,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(written)
}

/// Writes the whole frame, waiting for room.
fn send_blocking(fd: RawFd, frame: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < frame.len() {
        match sendmsg(fd, &frame[written..], &[], 0) {
            Ok(sent) => written += sent,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn sendmsg(fd: RawFd, first: &[u8], second: &[u8], flags: libc::c_int) -> std::io::Result<usize> {
    let mut iov = [
        libc::iovec { iov_base: first.as_ptr() as *mut libc::c_void, iov_len: first.len() },
        libc::iovec { iov_base: second.as_ptr() as *mut libc::c_void, iov_len: second.len() },
    ];
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = iov.as_mut_ptr();
    message.msg_iovlen = if second.is_empty() { 1 } else { 2 };
    // SAFETY: the iovecs point into slices that outlive the call, which
    // only reads them; MSG_NOSIGNAL turns a closed peer into EPIPE.
    let sent = unsafe { libc::sendmsg(fd, &message, flags | libc::MSG_NOSIGNAL) };
    usize::try_from(sent).map_err(|_| std::io::Error::last_os_error())
}

/// Why a descriptor handed over on the command line is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandedFdError {
    /// Standard input, output or error.
    #[error("descriptor {0} is standard input, output or error, not a socket handed over by a supervisor")]
    Standard(i32),
    /// Not open in this process.
    #[error("descriptor {0} is not open: {1}")]
    NotOpen(i32, std::io::Error),
    /// Open, but not a socket.
    #[error("descriptor {0} is not a socket")]
    NotSocket(i32),
}

/// The socket on `fd`, which a supervisor handed to this process (closed
/// on exec from now on); refused when it cannot be one.
pub(crate) fn handed_socket(fd: i32) -> Result<UnixStream, HandedFdError> {
    if fd <= 2 {
        return Err(HandedFdError::Standard(fd));
    }
    // SAFETY: fcntl on any integer is sound; it fails on a closed fd.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(HandedFdError::NotOpen(fd, std::io::Error::last_os_error()));
    }
    // SAFETY: a zeroed stat is a valid buffer; fstat only writes it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on an open fd.
    if unsafe { libc::fstat(fd, &mut stat) } < 0 || stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(HandedFdError::NotSocket(fd));
    }
    // SAFETY: as above; processes this one starts do not inherit it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the fd is an open socket (checked above) handed to this
    // process for this link alone, so this is its only owner.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn frames_written_at_once_or_queued_arrive_whole_and_in_order() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let (writer, thread) = PipeWriter::start(ours, "test-writer").expect("writer");
        // More than a socket buffer holds: some of it waits for the thread.
        let big = vec![7u8; 4 << 20];
        writer.send(Tag::Dispatch, b"first").expect("sent");
        writer.send(Tag::Outcomes, &big).expect("queued");
        writer.send(Tag::Note, b"third").expect("queued behind");
        let mut theirs = FrameReader::new(theirs, 8 << 20);
        let first = theirs.next_frame().expect("first");
        assert_eq!((first.tag, &first.body[..]), (Tag::Dispatch, &b"first"[..]));
        let second = theirs.next_frame().expect("second");
        assert_eq!((second.tag, second.body.len()), (Tag::Outcomes, big.len()));
        assert!(second.body.iter().all(|&b| b == 7));
        let third = theirs.next_frame().expect("third");
        assert_eq!((third.tag, &third.body[..]), (Tag::Note, &b"third"[..]));
        writer.close();
        thread.join().expect("writer thread");
    }

    /// The voluntary switches of thread `tid` of this process so far.
    fn switches_of(tid: libc::pid_t) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("status");
        let line = status.lines().find(|line| line.starts_with("voluntary_ctxt_switches")).expect("switches");
        line.split_whitespace().nth(1).expect("count").parse().expect("number")
    }

    #[test]
    fn a_waiting_reader_is_not_woken_when_the_other_end_reads_what_its_end_wrote() {
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let mut sender = ours.try_clone().expect("clone");
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_sender.send(unsafe { libc::gettid() }).expect("tid");
            let mut frames = FrameReader::new(ours, 64);
            frames.next_frame().map(|frame| frame.tag)
        });
        let tid = tid.recv().expect("tid");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let before = switches_of(tid);
        // Each read here frees room on the reader's end: the kernel's
        // "room to write" wake-up, which a blocking read would take.
        let mut byte = [0u8; 1];
        for _ in 0..50 {
            sender.write_all(&[1]).expect("write");
            theirs.read_exact(&mut byte).expect("read");
            // Time for a wake-up, if there was one, to be taken.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let woken = switches_of(tid) - before;
        theirs.write_all(&[0, 0, 0, 0, Tag::Note as u8]).expect("frame");
        assert_eq!(reader.join().expect("reader").expect("frame"), Tag::Note);
        assert!(woken < 10, "the waiting reader was woken {woken} times for 50 reads at the other end");
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating_it() {
        let (mut ours, theirs) = UnixStream::pair().expect("pair");
        ours.write_all(&[0xff, 0xff, 0xff, 0xff, 0]).expect("write");
        match FrameReader::new(theirs, 1 << 20).next_frame() {
            Err(FrameError::TooLarge { size, limit }) => assert_eq!((size, limit), (u32::MAX as u64, 1 << 20)),
            other => panic!("expected TooLarge, got {:?}", other.map(|f| f.tag)),
        }
    }

    #[test]
    fn an_unknown_tag_a_cut_frame_and_a_close_are_told_apart() {
        let (mut ours, theirs) = UnixStream::pair().expect("pair");
        ours.write_all(&[1, 0, 0, 0, 9, 0]).expect("write");
        assert!(matches!(FrameReader::new(theirs, 64).next_frame(), Err(FrameError::UnknownTag(9))));
        let (mut ours, theirs) = UnixStream::pair().expect("pair");
        ours.write_all(&[10, 0, 0, 0, 0, 1, 2]).expect("write");
        drop(ours);
        assert!(matches!(FrameReader::new(theirs, 64).next_frame(), Err(FrameError::Io(_))));
        // A header cut short is a cut frame too, not a clean close.
        let (mut ours, theirs) = UnixStream::pair().expect("pair");
        ours.write_all(&[10, 0, 0]).expect("write");
        drop(ours);
        assert!(matches!(FrameReader::new(theirs, 64).next_frame(), Err(FrameError::Io(_))));
        let (ours, theirs) = UnixStream::pair().expect("pair");
        drop(ours);
        assert!(matches!(FrameReader::new(theirs, 64).next_frame(), Err(FrameError::Closed)));
    }

    #[test]
    fn a_closed_writer_refuses() {
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        let (writer, thread) = PipeWriter::start(ours, "test-writer").expect("writer");
        writer.close();
        thread.join().expect("writer thread");
        assert!(writer.send(Tag::Note, b"x").is_err());
    }

    #[test]
    fn frames_waiting_together_are_taken_with_one_read_and_a_large_one_whole() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let (writer, thread) = PipeWriter::start(ours, "test-writer").expect("writer");
        for id in 1..=3u32 {
            writer.send(Tag::Outcomes, &id.to_le_bytes()).expect("sent");
        }
        let mut reader = FrameReader::new(theirs, 1 << 20);
        for id in 1..=3u32 {
            let frame = reader.next_frame().expect("frame");
            assert_eq!((frame.tag, &frame.body[..]), (Tag::Outcomes, &id.to_le_bytes()[..]));
        }
        assert_eq!(reader.reads, 1, "three frames waiting, one read");
        // Larger than the read buffer, after a small one: split between
        // the buffer and the reads into its own body, it arrives whole.
        let large: Vec<u8> = (0..(3 * READ_BUFFER + 5)).map(|i| i as u8).collect();
        writer.send(Tag::Note, b"small").expect("sent");
        writer.send(Tag::Outcomes, &large).expect("sent");
        writer.send(Tag::Note, b"after").expect("sent");
        assert_eq!(&reader.next_frame().expect("small").body[..], b"small");
        let frame = reader.next_frame().expect("large");
        assert_eq!((frame.tag, &frame.body[..]), (Tag::Outcomes, &large[..]));
        assert_eq!(&reader.next_frame().expect("after").body[..], b"after");
        writer.close();
        thread.join().expect("writer thread");
    }

    #[test]
    fn handed_descriptors_that_are_no_socket_are_refused() {
        for fd in [0, 1, 2] {
            assert!(matches!(handed_socket(fd), Err(HandedFdError::Standard(_))));
        }
        assert!(matches!(handed_socket(100_000), Err(HandedFdError::NotOpen(..))));
        let file = std::fs::File::open("/proc/self/stat").expect("a file");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        assert!(matches!(handed_socket(fd), Err(HandedFdError::NotSocket(_))));
        // SAFETY: the fd was released above and is closed once here.
        unsafe { libc::close(fd) };
    }
}
