//! A worker process's end of its link (`wire::pipe`): the socket pair its
//! supervisor handed over (`--link-fd`) serves the control plane's
//! `Dispatch` and notes exactly as the CRITICAL port would
//! (`routes::task_port`). Its frames are read by whichever of the task
//! threads is free (the pool's duty, `server::pool`), so a run read starts
//! on the thread that read it. A `Dispatch` is not answered (its runs were
//! taken when sent), unless refused whole. Outcomes are pushed unasked, in
//! `Outcomes` frames, from the thread that ends a run
//! (`Collector::push_to`).

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use tracing::warn;

use crate::server::endpoint::{encode_reply, Replier};
use crate::server::pool::Turn;
use crate::server::routes;
use crate::server::state::State;
use crate::wire::pipe::{FrameError, FrameReader, PipeWriter, Tag};
use crate::wire::protocol::Reply;

/// Serves `stream` until it closes; then `on_closed` (on the thread that
/// read the end).
pub(crate) fn serve(
    state: Arc<State>,
    stream: UnixStream,
    on_closed: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let (writer, _writer_thread) = PipeWriter::start(stream.try_clone()?, "link-out")?;
    // A frame of runs is bounded as on the CRITICAL port (`RecvMaxSize`).
    let limit = state.config.bounds.max_frame_bytes.saturating_mul(2).max(64 * 1024);
    let mut frames = FrameReader::new(stream, limit);
    let pusher = writer.clone();
    // A closed link is seen by the reader; the writer never blocks.
    state.collector.push_to(move |outcomes| {
        let _ = pusher.send(Tag::Outcomes, &outcomes);
    });
    let done: Arc<[u8]> = encode_reply(&Reply::Done)[..].into();
    let mut on_closed = Some(on_closed);
    let served = state.clone();
    // One frame a turn (none if only looking and nothing waits): a run it
    // carries starts on this thread next.
    let read_one = move |turn: Turn| {
        if turn == Turn::Look && !frames.has_input() {
            return true;
        }
        let error = match frames.next_frame() {
            Ok(frame) => {
                let replier = match frame.tag {
                    Tag::Note => Replier::forwarding(|_| {}),
                    // Its runs were taken when sent: only a refusal of the whole
                    // frame goes back (which ends the link, see `cluster::pipe_link`).
                    Tag::Dispatch => {
                        let (writer, done) = (writer.clone(), done.clone());
                        Replier::forwarding(move |reply| {
                            if reply[..] != done[..] {
                                let _ = writer.send(Tag::Dispatch, &reply);
                            }
                        })
                    }
                    // Only this side pushes outcomes.
                    Tag::Outcomes => return closed(FrameError::Unexpected(Tag::Outcomes), &writer, &mut on_closed),
                };
                routes::task_port(&served, replier, frame.body);
                return true;
            }
            Err(error) => error,
        };
        closed(error, &writer, &mut on_closed)
    };
    state.give_pool_duty(Box::new(read_one));
    Ok(())
}

/// The link ended with `error`: nothing more is written, `on_closed` runs
/// (once), and the duty is over (`false`).
fn closed(error: FrameError, writer: &PipeWriter, on_closed: &mut Option<impl FnOnce()>) -> bool {
    if !matches!(error, FrameError::Closed) {
        warn!("the link to the control plane failed: {error}");
    }
    writer.close();
    if let Some(on_closed) = on_closed.take() {
        on_closed();
    }
    false
}
