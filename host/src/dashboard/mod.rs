//! The management dashboard: a live web page, a JSON API under `/api/`,
//! server-sent events on `/api/events`, Prometheus metrics on `/metrics` and
//! the health checks `/healthz` and `/readyz`,
//! served by the control plane on `--gui-host`/`--gui-port`. The page's
//! assets are compiled into the binary; nothing is fetched at run time.
//!
//! It runs on its own thread with a current-thread tokio runtime: HTTP never
//! shares a thread with the NNG callbacks, the worker threads or the control
//! plane's main loop, and a subworker (which serves no dashboard) pays
//! nothing for it. It reads the control plane's state through short copies
//! (see `State`'s dashboard accessors and `server::monitor`).

mod api;
mod connections;
mod error;
mod events;
mod followed;
mod health;
mod hosts;
mod metrics;
mod openapi;
mod roles;
mod task_api;
mod task_limits;
mod workflow_api;
mod workflows;

pub(crate) use error::{error, ApiError};
pub use hosts::check_allowed_hosts;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{oneshot, Semaphore};
use tracing::{info, warn};

use crate::server::state::State;
use crate::wire::protocol::TaskReport;
use crate::workflow::WorkflowReport;

/// Where and how the dashboard is served.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// The host to bind (`--gui-host`); the dashboard binds nothing else.
    pub host: String,
    /// The port (`--gui-port`).
    pub port: u16,
    /// The operator credential (`--gui-api-key`): when set, every action and
    /// every read of arguments and results needs `Authorization: Bearer <key>`
    /// (see [`roles`]); a keyed cluster's dashboard needs one for them at all.
    pub api_key: Option<String>,
    /// `Host` names served besides the bound address and, on loopback, the
    /// loopback names (`--gui-allowed-hosts`; at most 64 of at most 255 bytes).
    pub allowed_hosts: Vec<String>,
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The port is taken.
    #[error("{address} (dashboard, --gui-port) is already in use; stop the process holding it, choose another --gui-port, or pass --no-gui")]
    AddressInUse {
        /// The address.
        address: String,
    },
    /// A `--gui-allowed-hosts` list that is too long or not of host names.
    #[error("{0}")]
    AllowedHosts(String),
    /// A keyed cluster's dashboard bound beyond loopback with no operator
    /// credential: its actions would be refused to everyone, and a
    /// credential-less dashboard on the network is what protected mode is for.
    #[error("the dashboard would listen on {address}, beyond this machine, for a control plane with a cluster key but no operator credential: pass --gui-api-key (FASTWORKER_GUI_API_KEY), or listen on 127.0.0.1 (--gui-host)")]
    NoCredential {
        /// The address.
        address: String,
    },
    /// Any other failure to listen.
    #[error("cannot serve the dashboard on {address} (--gui-host/--gui-port): {source}")]
    Other {
        /// The address.
        address: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// The running dashboard; dropping it stops it.
pub(crate) struct Dashboard {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What every handler shares.
pub(crate) struct Shared {
    pub(crate) state: Arc<State>,
    pub(crate) api_key: Option<String>,
    /// `http://host:port`, for the overview.
    pub(crate) url: String,
    /// The `Host` values served, lower case (see [`hosts`]).
    pub(crate) allowed_hosts: Vec<String>,
    /// Permits for open connections (`--gui-max-connections`).
    pub(crate) connections: Arc<Semaphore>,
    /// Event streams open now, at most [`Shared::max_streams`].
    pub(crate) streams: AtomicUsize,
    /// Permits for requests waiting for a task or workflow (`--gui-max-waits`).
    pub(crate) waits: Arc<Semaphore>,
}

impl Shared {
    /// The most event streams open at once: half the connections, so that
    /// plain requests always have room.
    pub(crate) fn max_streams(&self) -> usize {
        (self.state.config.bounds.gui_max_connections / 2).max(1)
    }
}

impl Dashboard {
    /// Binds `--gui-host:--gui-port` now (so that a taken port stops the
    /// start-up with a clear error) and serves on a thread of its own.
    pub(crate) fn start(state: Arc<State>, config: DashboardConfig) -> Result<Dashboard, DashboardError> {
        let address = format!("{}:{}", config.host, config.port);
        hosts::check_allowed_hosts(&config.allowed_hosts).map_err(DashboardError::AllowedHosts)?;
        let listener =
            TcpListener::bind((config.host.as_str(), config.port)).map_err(|source| match source.kind() {
                std::io::ErrorKind::AddrInUse => DashboardError::AddressInUse { address: address.clone() },
                _ => DashboardError::Other { address: address.clone(), source },
            })?;
        let fail = |source| DashboardError::Other { address: address.clone(), source };
        listener.set_nonblocking(true).map_err(fail)?;
        let local = listener.local_addr().map_err(fail)?;
        let api_key = config.api_key.filter(|k| !k.is_empty());
        if state.config.keys.is_some() && api_key.is_none() && !local.ip().is_loopback() {
            return Err(DashboardError::NoCredential { address });
        }
        let url = match local {
            SocketAddr::V6(v6) => format!("http://[{}]:{}", v6.ip(), v6.port()),
            SocketAddr::V4(v4) => format!("http://{v4}"),
        };
        let connections = connections::limit(state.config.bounds.gui_max_connections);
        let waits = connections::limit(state.config.bounds.gui_max_waits);
        let shared = Arc::new(Shared {
            state,
            api_key,
            url: url.clone(),
            allowed_hosts: hosts::allowed(local, &config.allowed_hosts),
            connections,
            streams: AtomicUsize::new(0),
            waits,
        });
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("dashboard".into())
            .spawn(move || serve(listener, shared, stopped))
            .map_err(fail)?;
        info!(url = %url, "dashboard serving");
        Ok(Dashboard { address: local, stop: Some(stop), thread: Some(thread) })
    }

    /// The address it listens on.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The dashboard thread: serves until told to stop, then drops every
/// connection (event streams never end by themselves).
fn serve(listener: TcpListener, shared: Arc<Shared>, stopped: oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => return warn!(%error, "the dashboard could not serve"),
        };
        tokio::spawn(events::watch_cluster(shared.clone()));
        let app = router(shared.clone());
        tokio::select! {
            _ = connections::serve(listener, app, shared) => {}
            _ = stopped => {}
        }
    });
}

/// Every route.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", include_str!("assets/index.html")) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("assets/app.js")) }))
        .route("/style.css", get(|| async { asset("text/css; charset=utf-8", include_str!("assets/style.css")) }))
        .route("/metrics", get(metrics::metrics))
        .route("/api/status", get(api::status))
        .route("/api/workers", get(api::workers))
        .route("/api/tasks", get(api::tasks))
        .route("/api/tasks/{id}", get(api::task))
        .route("/api/tasks/{id}/cancel", post(api::cancel))
        .route("/api/tasks/{id}/retry", post(api::retry))
        .route("/api/queues", get(api::queues))
        .route("/api/cache", get(api::cache))
        .route("/api/registered-tasks", get(api::registered_tasks))
        .route("/api/throughput", get(api::throughput))
        .route("/api/schedules", get(api::schedules))
        .route("/api/workflows", get(workflows::list))
        .route("/api/workflows/{id}", get(workflows::detail))
        .route("/api/workflows/{id}/cancel", post(workflows::cancel))
        .route("/api/events", get(events::events))
        .merge(task_routes(shared.clone()))
        .merge(task_limits::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(shared.clone(), roles::check))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), hosts::check_host))
        .with_state(shared)
}

/// The HTTP API for tasks and workflows (docs/http-api.md), with its own body limit.
fn task_routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let limit = task_api::MAX_BODY_BYTES.min(shared.state.config.bounds.max_frame_bytes.max(4096));
    task_api_routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| router.route(path, handler))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
}

/// Every route of the HTTP API, with its method: the router is built from
/// this list, and a test holds `/api/openapi.json` to it both ways.
fn task_api_routes() -> Vec<(Method, &'static str, axum::routing::MethodRouter<Arc<Shared>>)> {
    vec![
        (Method::POST, "/api/v1/tasks", post(task_api::submit)),
        (Method::POST, "/api/v1/tasks/batch", post(task_api::batch)),
        (Method::GET, "/api/v1/tasks/{id}", get(followed::status::<TaskReport>)),
        (Method::GET, "/api/v1/tasks/{id}/wait", get(followed::wait::<TaskReport>)),
        (Method::POST, "/api/v1/tasks/{id}/cancel", post(followed::cancel::<TaskReport>)),
        (Method::GET, "/api/v1/registered-tasks", get(task_api::registered)),
        (Method::POST, "/api/v1/workflows", post(workflow_api::submit)),
        (Method::GET, "/api/v1/workflows/{id}", get(followed::status::<WorkflowReport>)),
        (Method::GET, "/api/v1/workflows/{id}/wait", get(followed::wait::<WorkflowReport>)),
        (Method::POST, "/api/v1/workflows/{id}/cancel", post(followed::cancel::<WorkflowReport>)),
        (Method::GET, "/api/openapi.json", get(openapi::serve)),
        (Method::GET, "/healthz", get(health::healthz)),
        (Method::GET, "/readyz", get(health::readyz)),
    ]
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let docs = if error::is_v1(uri.path()) { "docs/http-api.md" } else { "docs/dashboard.md" };
    let message = format!("no such endpoint: {method} {uri} (see {docs})");
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message).for_path(uri.path()).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("{uri} does not take {method}");
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message).for_path(uri.path()).into_response()
}
