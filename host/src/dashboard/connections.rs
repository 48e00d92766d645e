//! The dashboard's accept loop: at most `--gui-max-connections` connections
//! at once (one more is answered 503 and closed at once), and each must send
//! a request's headers within `--gui-header-timeout` (an idle kept-alive
//! connection is closed after it too), so that stalled or idle clients cannot
//! hold sockets and memory.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use super::Shared;
use crate::server::bounds::Bound;

/// The most bytes a request's head may take (hyper's read buffer).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `app` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, app: Router, shared: Arc<Shared>) {
    let bounds = &shared.state.config.bounds;
    let timeout = bounds.gui_header_timeout;
    let refused = refusal(bounds.gui_max_connections);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: let some close.
                debug!(%error, "the dashboard could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared.state.refusals.count(Bound::GuiConnections);
            // Read what already came (so that closing sends FIN, not RST)
            // and say why; never wait for this client.
            let mut scratch = [0u8; 4096];
            let _ = stream.try_read(&mut scratch);
            let _ = stream.try_write(refused.as_bytes());
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(timeout).max_buf_size(MAX_HEAD_BYTES);
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                debug!(%error, "dashboard connection ended");
            }
        });
    }
}

/// The semaphore of `max` connections.
pub(crate) fn limit(max: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)))
}

/// The whole answer to a connection beyond the limit.
fn refusal(max: usize) -> String {
    let body = serde_json::json!({
        "error": "busy",
        "message": format!("the dashboard has {max} connections open (--gui-max-connections); retry later"),
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}
