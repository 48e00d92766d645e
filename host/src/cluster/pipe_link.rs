//! A link's transport to a worker process this process started: its end
//! of a Unix socket pair (`wire::pipe`), carrying `Dispatch` frames and
//! notes one way and outcomes the other, and nothing that answers a
//! request. A run written into the pair is received (or the pair breaks
//! and every run it carried is taken back), so a `Dispatch` frame awaits
//! no answer: the process admits its runs and answers each with its
//! outcome. No `Collect` is sent either: the process pushes its outcomes as
//! they come (`Outcomes` frames), heard as a `Collect` reply; each outcome
//! is taken only for a run under its current lease in one of this
//! process's slots, once (`Ledger::collected`), so a forged or repeated one
//! is dropped there. A frame of any other kind from the process (the
//! refusal of a whole frame, which a process under its supervisor's
//! credit never has reason to send, or one forged by its plugin code), the
//! end of the stream, or anything that is no frame is the connection
//! dropping.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nng::AioResult;
use tracing::warn;

use super::link::Channel;
use crate::wire::pipe::{FrameError, FrameReader, PipeWriter, Tag};

/// The socket pair's side of a link.
pub(crate) struct PipeLink {
    writer: PipeWriter,
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
        let closed = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            // A reply holds at most a frame's outcomes and its envelope
            // room, as on the NNG link (`RecvMaxSize`).
            frames: FrameReader::new(stream.try_clone()?, max_frame.saturating_mul(2)),
            worker_id: worker_id.to_string(),
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
        Ok(PipeLink { writer, stream, closed, threads: vec![reader_thread, writer_thread] })
    }

    /// Sends a frame of runs (its outcomes come back as `Outcomes`).
    pub(crate) fn dispatch(&self, frame: &[u8]) -> std::io::Result<()> {
        self.writer.send(Tag::Dispatch, frame)
    }

    /// Sends a note whose answer nobody reads.
    pub(crate) fn note(&self, frame: &[u8]) {
        let _ = self.writer.send(Tag::Note, frame);
    }
}

/// The reader thread's side.
struct Reader {
    frames: FrameReader,
    worker_id: String,
    closed: Arc<AtomicBool>,
}

impl Reader {
    fn run(mut self, on_connection: impl Fn(bool), on_event: impl Fn(Channel, AioResult)) {
        let error = loop {
            let frame = match self.frames.next_frame() {
                Ok(frame) => frame,
                Err(error) => break error,
            };
            if frame.tag != Tag::Outcomes {
                break FrameError::Unexpected(frame.tag);
            }
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            on_event(Channel::Collect, AioResult::Recv(Ok(frame.body)));
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
