//! `/api/events`: the page's live stream (server-sent events). Task state
//! changes come from the monitor's broadcast as they happen; subworker
//! changes, workflow changes and the once-a-second overview come from
//! [`watch_cluster`], which looks only while someone watches.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::api::{overview, worker_json};
use super::{ApiError, Shared};
use crate::server::monitor::{Event, Watch};
use crate::wire::protocol::WorkerState;

/// How often subworkers are looked at for changes while the page is open.
const WORKER_POLL: Duration = Duration::from_millis(250);

/// How often the overview is sent.
const SNAPSHOT_EVERY: u32 = 4;

/// GET /api/events: `snapshot` first, then `task`, `worker`, `workflow` and `snapshot`
/// events as they come; `resync` when this stream fell behind and missed some.
/// Beyond [`Shared::max_streams`] open streams, 503 `busy`.
pub(crate) async fn events(
    State(shared): State<Arc<Shared>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let open = StreamSlot::take(&shared)?;
    let watch = shared.state.monitor.watch();
    let first = sse(&Event::Snapshot(overview(&shared)));
    let rest = stream::unfold((watch, open), |(mut watch, open): (Watch, StreamSlot)| async move {
        let event = match watch.events.recv().await {
            Ok(event) => sse(&event),
            Err(RecvError::Lagged(missed)) => SseEvent::default().event("resync").data(missed.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (watch, open)))
    });
    Ok(Sse::new(stream::once(async move { Ok(first) }).chain(rest)).keep_alive(KeepAlive::default()))
}

/// One open event stream, counted in [`Shared::streams`] until dropped.
struct StreamSlot(Arc<Shared>);

impl StreamSlot {
    fn take(shared: &Arc<Shared>) -> Result<StreamSlot, ApiError> {
        let max = shared.max_streams();
        if shared.streams.fetch_add(1, Ordering::SeqCst) >= max {
            shared.streams.fetch_sub(1, Ordering::SeqCst);
            shared.state.refusals.count(crate::server::bounds::Bound::GuiConnections);
            let message =
                format!("{max} event streams are open, half of --gui-max-connections; close one or retry later");
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message).closing());
        }
        Ok(StreamSlot(shared.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn sse(event: &Event) -> SseEvent {
    let data = match event {
        Event::Task(summary) => serde_json::to_string(summary),
        Event::Worker(value) | Event::Snapshot(value) | Event::Workflow(value) => serde_json::to_string(value),
    };
    SseEvent::default().event(event.name()).data(data.expect("JSON"))
}

/// While anyone watches: sends a `worker` event when a subworker joins,
/// changes status or leaves, and the overview every second.
pub(crate) async fn watch_cluster(shared: Arc<Shared>) {
    let monitor = &shared.state.monitor;
    let mut known: HashMap<String, (WorkerState, bool)> = HashMap::new();
    let mut workflows = super::workflows::Watched::default();
    let mut tick = tokio::time::interval(WORKER_POLL);
    let mut ticks = 0u32;
    loop {
        tick.tick().await;
        if !monitor.watched() {
            continue;
        }
        ticks += 1;
        super::workflows::watch_workflows(&shared, &mut workflows);
        if ticks == SNAPSHOT_EVERY {
            ticks = 0;
            monitor.publish(Event::Snapshot(overview(&shared)));
        }
        let cluster = shared.state.cluster_status();
        let mut seen = HashMap::with_capacity(cluster.subworkers.len());
        for worker in &cluster.subworkers {
            let now = (worker.status, worker.connected);
            let change = match known.get(&worker.worker_id) {
                None => Some("joined"),
                Some(before) if *before != now => Some("status"),
                Some(_) => None,
            };
            if let Some(change) = change {
                let mut value = worker_json(worker);
                value["change"] = json!(change);
                monitor.publish(Event::Worker(value));
            }
            seen.insert(worker.worker_id.clone(), now);
        }
        for gone in known.keys().filter(|id| !seen.contains_key(*id)) {
            monitor.publish(Event::Worker(json!({ "worker_id": gone, "change": "left" })));
        }
        known = seen;
    }
}
