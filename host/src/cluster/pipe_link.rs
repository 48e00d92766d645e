//! A link's transport to a worker process this process started: its end
//! of a Unix socket pair (`wire::pipe`), with the NNG link's `Dispatch`
//! exchange and its notes. Each request carries an id; a reader thread
//! hands the reply that answers the latest request of its exchange to the
//! link's callback as an NNG exchange's reply would be (so the state hears
//! the same events), once, and drops any other (the answer of a request
//! given up, a second answer, or one forged by the process's plugin code).
//! No `Collect` is sent: the process pushes its outcomes as they come
//! (`Outcomes` frames), heard as a `Collect` reply; each outcome is taken
//! only for a run under its current lease in one of this process's slots,
//! once (`Ledger::collected`), so a forged or repeated one is dropped
//! there. The end of the stream, or anything that is no frame, is the
//! connection dropping.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nng::AioResult;
use tracing::warn;

use super::link::Channel;
use crate::wire::pipe::{FrameError, FrameReader, PipeWriter, Tag};

/// The socket pair's side of a link.
pub(crate) struct PipeLink {
    writer: PipeWriter,
    /// Per exchange, the id of the request whose reply is awaited (0: none).
    awaited: Arc<[AtomicU32; 2]>,
    next_id: AtomicU32,
    stream: UnixStream,
    /// Set when the link is dropped: the reader reports nothing more.
    closed: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PipeLink {
    /// Starts reading and writing `stream`; `on_connection(true)` is
    /// called before this returns.
    pub(crate) fn open(
        stream: UnixStream,
        worker_id: &str,
        max_frame: usize,
        on_connection: impl Fn(bool) + Send + Sync + 'static,
        on_event: impl Fn(Channel, AioResult) + Send + Sync + 'static,
    ) -> std::io::Result<PipeLink> {
        let (writer, writer_thread) = PipeWriter::start(stream.try_clone()?, &format!("fw-{worker_id}-out"))?;
        let awaited: Arc<[AtomicU32; 2]> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            // A reply holds at most a frame's outcomes and its envelope
            // room, as on the NNG link (`RecvMaxSize`).
            frames: FrameReader::new(stream.try_clone()?, max_frame.saturating_mul(2)),
            worker_id: worker_id.to_string(),
            awaited: awaited.clone(),
            closed: closed.clone(),
        };
        let on_connection = Arc::new(on_connection);
        let dropped = on_connection.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fw-{worker_id}-in"))
            .spawn(move || reader.run(move |up| dropped(up), on_event));
        let reader_thread = match spawned {
            Ok(thread) => thread,
            Err(error) => {
                writer.close();
                return Err(error);
            }
        };
        on_connection(true);
        Ok(PipeLink {
            writer,
            awaited,
            next_id: AtomicU32::new(1),
            stream,
            closed,
            threads: vec![reader_thread, writer_thread],
        })
    }

    fn id(&self) -> u32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Sends a request on `channel`; its reply is the one awaited there.
    pub(crate) fn request(&self, channel: Channel, frame: &[u8]) -> std::io::Result<()> {
        let id = self.id();
        self.awaited[channel as usize].store(id, Ordering::SeqCst);
        self.writer.send(tag(channel), id, frame)
    }

    /// Sends a note whose answer nobody reads.
    pub(crate) fn note(&self, frame: &[u8]) {
        let _ = self.writer.send(Tag::Note, 0, frame);
    }

    /// The dispatch frame in flight is given up: its answer is not heard.
    pub(crate) fn forget_dispatch(&self) {
        self.awaited[Channel::Dispatch as usize].store(0, Ordering::SeqCst);
    }

    /// No reply in flight is heard any more.
    pub(crate) fn forget_requests(&self) {
        for awaited in self.awaited.iter() {
            awaited.store(0, Ordering::SeqCst);
        }
    }
}

fn tag(channel: Channel) -> Tag {
    match channel {
        Channel::Dispatch => Tag::Dispatch,
        Channel::Collect => Tag::Collect,
    }
}

/// The reader thread's side.
struct Reader {
    frames: FrameReader<UnixStream>,
    worker_id: String,
    awaited: Arc<[AtomicU32; 2]>,
    closed: Arc<AtomicBool>,
}

impl Reader {
    fn run(mut self, on_connection: impl Fn(bool), on_event: impl Fn(Channel, AioResult)) {
        let error = loop {
            let frame = match self.frames.next_frame() {
                Ok(frame) => frame,
                Err(error) => break error,
            };
            let channel = match frame.tag {
                Tag::Dispatch => Channel::Dispatch,
                Tag::Collect => Channel::Collect,
                // Only this side sends notes.
                Tag::Note => continue,
                Tag::Outcomes => {
                    if self.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    on_event(Channel::Collect, AioResult::Recv(Ok(frame.body)));
                    continue;
                }
            };
            // Heard once: a second reply to the same request is dropped too.
            let awaited = &self.awaited[channel as usize];
            if frame.id == 0 || awaited.compare_exchange(frame.id, 0, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                continue;
            }
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            on_event(channel, AioResult::Recv(Ok(frame.body)));
        };
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        match error {
            FrameError::Closed => {}
            error => warn!(worker = %self.worker_id, "worker process link closed: {error}"),
        }
        // Whatever the other end does next, this link is over.
        let _ = self.frames.get_ref().shutdown(std::net::Shutdown::Both);
        on_connection(false);
    }
}

impl Drop for PipeLink {
    fn drop(&mut self) {
        // Dropped on the membership thread without the task lock, never on
        // these threads: waiting for them cannot deadlock.
        self.closed.store(true, Ordering::SeqCst);
        self.writer.close();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let here = std::thread::current().id();
        for thread in self.threads.drain(..) {
            if thread.thread().id() != here {
                let _ = thread.join();
            }
        }
    }
}
