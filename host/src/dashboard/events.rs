//! `/api/events`: the page's live stream (server-sent events). Task state
//! changes come from the monitor's broadcast as they happen; subworker
//! changes and the once-a-second overview come from [`watch_cluster`],
//! which looks only while someone watches.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::api::{overview, worker_json};
use super::Shared;
use crate::monitor::{Event, Watch};
use crate::protocol::WorkerState;

/// How often subworkers are looked at for changes while the page is open.
const WORKER_POLL: Duration = Duration::from_millis(250);

/// How often the overview is sent.
const SNAPSHOT_EVERY: u32 = 4;

/// GET /api/events: `snapshot` first, then `task`, `worker` and `snapshot`
/// events as they come; `resync` when this stream fell behind and missed some.
pub(crate) async fn events(State(shared): State<Arc<Shared>>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let watch = shared.state.monitor.watch();
    let first = sse(&Event::Snapshot(overview(&shared)));
    let rest = stream::unfold(watch, |mut watch: Watch| async move {
        let event = match watch.events.recv().await {
            Ok(event) => sse(&event),
            Err(RecvError::Lagged(missed)) => SseEvent::default().event("resync").data(missed.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), watch))
    });
    Sse::new(stream::once(async move { Ok(first) }).chain(rest)).keep_alive(KeepAlive::default())
}

fn sse(event: &Event) -> SseEvent {
    let data = match event {
        Event::Task(summary) => serde_json::to_string(summary),
        Event::Worker(value) | Event::Snapshot(value) => serde_json::to_string(value),
    };
    SseEvent::default().event(event.name()).data(data.expect("JSON"))
}

/// While anyone watches: sends a `worker` event when a subworker joins,
/// changes status or leaves, and the overview every second.
pub(crate) async fn watch_cluster(shared: Arc<Shared>) {
    let monitor = &shared.state.monitor;
    let mut known: HashMap<String, (WorkerState, bool)> = HashMap::new();
    let mut tick = tokio::time::interval(WORKER_POLL);
    let mut ticks = 0u32;
    loop {
        tick.tick().await;
        if !monitor.watched() {
            continue;
        }
        ticks += 1;
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
