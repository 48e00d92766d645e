//! The serving process: accepts tasks on the four priority ports and runs
//! them, on its own threads or on subworkers; answers result queries; and,
//! on a control plane, manages the subworkers. A subworker is the same
//! server with its task ports only.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

use crate::cluster::discovery::{Announcement, Announcer};
use crate::dashboard::{Dashboard, DashboardConfig, DashboardError};
use crate::plugins::Registry;
use crate::server::config::ControlPlaneConfig;
use crate::server::endpoint::{Handler, ListenError, Listener, PortAuth, PortOptions};
use crate::server::journal::{Journal, JournalError, RunsUnderWay};
use crate::server::membership::{self, Event};
use crate::server::routes;
use crate::server::state::State;
use crate::server::worker_processes::{WorkerProcesses, WorkerProcessesConfig};
use crate::wire::auth::{ReplayGuard, Sender};
use crate::wire::protocol::{ClusterStatus, Priority};

/// The contexts a control plane's task port starts with; it grows from
/// there to `--contexts-per-port` under load.
const INITIAL_CONTEXTS: usize = 256;

/// Why a control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port could not be listened on.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The `--state-dir` cannot be used.
    #[error(transparent)]
    State(#[from] JournalError),
}

/// A running control plane or subworker.
pub struct ControlPlane {
    state: Arc<State>,
    listeners: Vec<Listener>,
    membership: Option<(mpsc::Sender<Event>, JoinHandle<()>)>,
    announcer: Option<Announcer>,
    dashboard: Option<Dashboard>,
    /// On a subworker: notified when a connection to its CRITICAL port (the
    /// one its control plane dials) drops.
    dropped: Arc<tokio::sync::Notify>,
    /// The supervised worker processes running this control plane's tasks.
    worker_processes: Option<WorkerProcesses>,
}

impl ControlPlane {
    /// Opens the `--state-dir` if there is one, takes up what it holds,
    /// binds every port and starts the worker threads.
    pub fn start(config: ControlPlaneConfig, registry: Registry) -> Result<ControlPlane, StartError> {
        crate::server::memory::give_back_freed_memory();
        // A stored record is at most a task's arguments or its result (each
        // bounded by the frame size) and a little more.
        let max_record = config.bounds.max_frame_bytes.saturating_mul(2).saturating_add(1 << 20);
        let (journal, recovered) = match &config.state_dir {
            Some(dir) => {
                let (journal, mut recovered) = Journal::open(dir, max_record)?;
                // Read whatever the mode, so that a run that ended the
                // process before is counted after a switch of mode too.
                let (under_way, before) = RunsUnderWay::open(dir, config.concurrency).map_err(|source| {
                    JournalError::Directory { path: dir.join(crate::server::journal::UNDER_WAY_FILE), source }
                })?;
                recovered.under_way = before;
                (Some((journal, under_way)), Some(recovered))
            }
            None => (None, None),
        };
        let state = State::new(config, registry, journal);
        if let Some(recovered) = recovered {
            state.restore(recovered);
        }
        let config = &state.config;
        let bounds = &config.bounds;
        let auth = config.keys.as_ref().map(|ring| {
            Arc::new(PortAuth { ring: ring.clone(), sender: Sender::new(), guard: ReplayGuard::default() })
        });
        let dropped = Arc::new(tokio::sync::Notify::new());
        let options = |purpose: &'static str, contexts: usize| PortOptions {
            auth: auth.clone(),
            purpose,
            contexts,
            grow_to: None,
            max_frame: bounds.max_frame_bytes,
            per_connection: bounds.max_requests_per_connection,
            reply_timeout: bounds.reply_timeout,
            refusals: state.refusals.clone(),
            log: state.peer_log.clone(),
            on_drop: None,
        };
        let mut listeners = Vec::with_capacity(6);
        for priority in Priority::ALL {
            let port_state = state.clone();
            let handler: Handler = Arc::new(move |replier, message| routes::task_port(&port_state, replier, message));
            let address = config.base.task_address(priority);
            let mut port_options = options(priority_purpose(priority), bounds.contexts_per_port);
            if !config.is_subworker() {
                // A control plane's task ports start with up to 256 contexts
                // and grow on demand to --contexts-per-port.
                port_options.contexts = bounds.contexts_per_port.min(INITIAL_CONTEXTS);
                port_options.grow_to = Some(bounds.contexts_per_port);
            }
            if priority == Priority::Critical && config.is_subworker() {
                port_options.on_drop = Some(dropped.clone());
            }
            listeners.push(Listener::start(&address, port_options, handler)?);
        }
        let mut membership = None;
        if let Some(management) = &config.management {
            let (events, receiver) = mpsc::channel();
            let query_state = state.clone();
            let port = management.port;
            let handler: Handler =
                Arc::new(move |replier, message| routes::result_port(&query_state, port, replier, message));
            let contexts = bounds.contexts_per_port.min(64);
            let local = management.local_base.as_ref().unwrap_or(&config.base);
            listeners.push(Listener::start(&local.result_address(), options("result port", contexts), handler)?);
            let sender = events.clone();
            let handler: Handler = Arc::new(move |replier, message| {
                let _ = sender.send(Event::Frame(replier, message));
            });
            // Registrations being dialed back hold their context until
            // answered: heartbeats keep contexts of their own.
            let contexts = bounds.max_pending_registrations + 32;
            let address = local.at_port(management.port);
            listeners.push(Listener::start(&address, options("subworker management port", contexts), handler)?);
            let thread = membership::start(state.clone(), management.clone(), events.clone(), receiver);
            membership = Some((events, thread));
        }
        info!(
            worker_id = %config.worker_id,
            base = %config.base,
            concurrency = config.concurrency,
            tasks = state.registry.len(),
            "serving: CRITICAL {}, HIGH {}, NORMAL {}, LOW {}{}",
            config.base.task_address(Priority::Critical),
            config.base.task_address(Priority::High),
            config.base.task_address(Priority::Normal),
            config.base.task_address(Priority::Low),
            match &config.management {
                Some(m) => format!(", results {}, subworkers {}", config.base.result_address(), config.base.at_port(m.port)),
                None => String::new(),
            }
        );
        // Announced only once every port serves.
        let announcer = match (&config.discovery, &config.management) {
            (Some(address), Some(management)) => {
                let announcement = Announcement {
                    worker_id: config.worker_id.clone(),
                    base_address: config.base.to_string(),
                    management_port: management.port,
                    sent_ms: 0,
                };
                match Announcer::start(address, announcement, config.keys.clone()) {
                    Ok(announcer) => Some(announcer),
                    Err(error) => {
                        warn!("{error}; serving without announcing (subworkers and clients need this control plane's address)");
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(ControlPlane { state, listeners, membership, announcer, dashboard: None, dropped, worker_processes: None })
    }

    /// Serves the management dashboard (page, JSON API, events, metrics) on
    /// `config.host:config.port` until shutdown; returns the bound address.
    pub fn serve_dashboard(&mut self, config: DashboardConfig) -> Result<std::net::SocketAddr, DashboardError> {
        let dashboard = Dashboard::start(self.state.clone(), config)?;
        let address = dashboard.address();
        self.dashboard = Some(dashboard);
        Ok(address)
    }

    /// Runs this control plane's tasks in worker processes it starts and
    /// supervises (docs/isolation.md) rather than on its own threads (start
    /// it with `concurrency` 0). A crash costs the runs of one process.
    pub fn start_worker_processes(&mut self, config: WorkerProcessesConfig) {
        let config_here = &self.state.config;
        let Some(management) = &config_here.management else { return };
        if self.worker_processes.is_none() {
            // They dial this process's management side: on a subworker,
            // its own ports on 127.0.0.1.
            let base = management.local_base.as_ref().unwrap_or(&config_here.base).clone();
            self.worker_processes = Some(WorkerProcesses::start(&self.state, &base, config));
        }
    }

    /// Drops results older than the TTL; the server calls this every minute.
    pub fn sweep_expired(&self) -> usize {
        self.state.sweep_expired()
    }

    /// Tasks accepted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight()
    }

    /// On a subworker: the runs its control plane sent that have started
    /// since the last call and are still running, each with its lease, to
    /// report (`Started`).
    pub fn take_started(&self) -> Vec<(crate::wire::protocol::TaskId, u64)> {
        self.state.take_started()
    }

    /// On a subworker: runs taken by [`ControlPlane::take_started`] whose
    /// report was not sent, to report with the next.
    pub(crate) fn put_back_started(&self, runs: Vec<(crate::wire::protocol::TaskId, u64)>) {
        self.state.started_runs.put_back(runs);
    }

    /// Waits until a run has started since the last
    /// [`ControlPlane::take_started`], then a little more (so that short
    /// runs, already ended, need no report).
    pub async fn started_ready(&self) {
        self.state.started_runs.ready().await;
        tokio::time::sleep(crate::server::state::START_REPORT_DELAY).await;
    }

    /// In a worker process: records each run's start and end on the
    /// descriptor `fd` its supervisor passed (`--run-log-fd`), so that a
    /// crash is charged to the runs it interrupted (docs/isolation.md).
    pub fn log_runs_to(&self, fd: i32) -> std::io::Result<()> {
        let log = crate::server::run_log::RunLog::from_fd(fd)?;
        let _ = self.state.run_log.set(log);
        Ok(())
    }

    /// In a worker process: starts at most `max` runs, then starts no more
    /// and has [`ControlPlane::runs_spent`] resolve, so that its subworker
    /// stops to be replaced (`--max-tasks-per-child`, docs/isolation.md).
    pub fn stop_after_runs(&self, max: u64) {
        let _ = self.state.run_budget.set(crate::server::run_budget::RunBudget::new(max));
    }

    /// Resolves once the last run [`ControlPlane::stop_after_runs`] allows
    /// has started; never without such a bound.
    pub(crate) async fn runs_spent(&self) {
        match self.state.run_budget.get() {
            Some(budget) => {
                budget.spent().await;
                tracing::info!(
                    "started its last run (--max-tasks-per-child {}): stopping, to be replaced",
                    budget.max()
                );
            }
            None => std::future::pending().await,
        }
    }

    /// In a worker process: lets a spare thread read the link while the
    /// thread that read a run is still running it (see `server::pool`).
    pub(crate) fn hand_over_link(&self) {
        self.state.hand_over_link();
    }

    /// In a worker process: serves its control plane's link on the socket
    /// `fd` its supervisor passed (`--link-fd`) as the CRITICAL port would.
    /// When the control plane closes it while this process is not stopping
    /// (it gave this process up: a frame it could not read, or no answer in
    /// time), the process exits with status 3, so that its supervisor sees
    /// it gone and starts another.
    pub fn serve_link(&self, fd: i32) -> std::io::Result<()> {
        let stream = crate::wire::pipe::handed_socket(fd)
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string()))?;
        let state = self.state.clone();
        let dropped = self.dropped.clone();
        crate::server::pipe_port::serve(self.state.clone(), stream, move || {
            if state.is_accepting() {
                tracing::error!("the control plane closed this worker process's link: exiting (status 3)");
                std::process::exit(3);
            }
            dropped.notify_one();
        })
    }

    /// On a subworker: waits until a connection to its CRITICAL port drops
    /// (its control plane dials that port: it may have died or restarted).
    pub async fn connection_dropped(&self) {
        self.dropped.notified().await
    }

    /// The subworkers and their health.
    pub fn workers(&self) -> ClusterStatus {
        self.state.cluster_status()
    }

    /// Stops taking tasks (late submissions get a "shutting down" reply),
    /// lets queued and running tasks finish within the shutdown timeout,
    /// and answers every client still waiting; the ports stay open.
    pub fn drain(&self) {
        if self.state.config.is_subworker() {
            // A subworker's worker processes hand back at once the runs sent
            // ahead to them, which go back to its control plane with the
            // rest of what it has not started; the running ones finish.
            if let Some(workers) = &self.worker_processes {
                workers.ask_to_stop();
            }
        }
        self.state.drain();
    }

    /// Drains (see [`ControlPlane::drain`]) and closes the sockets.
    pub fn shutdown(mut self) {
        // A stopping control plane is no longer announced.
        self.announcer = None;
        self.drain();
        // Drained: the worker processes finished what they had.
        if let Some(workers) = self.worker_processes.take() {
            workers.stop();
        }
        // The dashboard shows the drain, then goes.
        self.dashboard = None;
        if let Some((events, thread)) = self.membership {
            let _ = events.send(Event::Stop);
            let _ = thread.join();
        }
        // On a subworker, outcomes still waiting are collected by the
        // control plane within moments, unless it is gone.
        let collected_by = std::time::Instant::now() + Duration::from_secs(2);
        while self.state.collector.pending() > 0 && std::time::Instant::now() < collected_by {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Give the last replies a moment to leave before the sockets close.
        std::thread::sleep(Duration::from_millis(100));
        drop(self.listeners);
        self.state.close_journal();
        info!("stopped");
    }
}

fn priority_purpose(priority: Priority) -> &'static str {
    match priority {
        Priority::Critical => "CRITICAL task port",
        Priority::High => "HIGH task port",
        Priority::Normal => "NORMAL task port",
        Priority::Low => "LOW task port",
    }
}
