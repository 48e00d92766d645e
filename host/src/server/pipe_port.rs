//! A worker process's end of its link (`wire::pipe`): the socket pair its
//! supervisor handed over (`--link-fd`) serves the control plane's
//! `Dispatch`, `Collect` and notes exactly as the CRITICAL port would
//! (`routes::task_port`), one reader thread taking frames and each reply
//! written back tagged with its request's exchange and id (a parked
//! `Collect` is answered when an outcome comes, from that thread).

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use tracing::warn;

use crate::server::endpoint::Replier;
use crate::server::routes;
use crate::server::state::State;
use crate::wire::pipe::{read_frame, FrameError, PipeWriter, Tag};

/// Serves `stream` until it closes; then `on_closed` (on the reader thread).
pub(crate) fn serve(
    state: Arc<State>,
    stream: UnixStream,
    on_closed: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let (writer, _writer_thread) = PipeWriter::start(stream.try_clone()?, "link-out")?;
    let mut stream = stream;
    // A frame of runs is bounded as on the CRITICAL port (`RecvMaxSize`).
    let limit = state.config.bounds.max_frame_bytes.saturating_mul(2).max(64 * 1024);
    std::thread::Builder::new().name("link-in".into()).spawn(move || {
        let error = loop {
            let frame = match read_frame(&mut stream, limit) {
                Ok(frame) => frame,
                Err(error) => break error,
            };
            let replier = match frame.tag {
                Tag::Note => Replier::forwarding(|_| {}),
                tag => {
                    let writer = writer.clone();
                    let id = frame.id;
                    Replier::forwarding(move |reply| {
                        // A closed link is seen by the reader.
                        let _ = writer.send(tag, id, &reply);
                    })
                }
            };
            routes::task_port(&state, replier, frame.body);
        };
        if !matches!(error, FrameError::Closed) {
            warn!("the link to the control plane failed: {error}");
        }
        writer.close();
        on_closed();
    })?;
    Ok(())
}
