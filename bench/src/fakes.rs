//! Fake subworkers: registrations that weigh on a control plane's routing and never run a task.

use std::sync::Arc;
use std::time::Duration;

use fastworker::protocol::{ErrorKind, Heartbeat, OfferedTask, Registration, Request, WorkerName};
use fastworker::{Client, ClientError, TaskId};
use nng::{Protocol, Socket};

use crate::setup::free_port;
use crate::{FAKE_HEARTBEAT, REGISTER_TIMEOUT};

/// Subworkers that only register with a control plane, from this process:
/// weight on its routing table, never sent a task. Each listens on a port of
/// its own (a Rep0 socket that is never read: the control plane only has to
/// connect back to it), provides one task that nobody submits (`noop_I`),
/// and, while registered, heartbeats every [`FAKE_HEARTBEAT`] as a real
/// subworker does, so that it stays active however long the phase.
pub(crate) struct FakeSubworkers {
    /// Keeps each fake's port open.
    pub(crate) _sockets: Vec<Socket>,
    pub(crate) registrations: Vec<Registration>,
    /// While registered: the control plane's management port and the heartbeats.
    pub(crate) joined: Option<(Client, tokio::task::JoinHandle<()>)>,
}

impl FakeSubworkers {
    /// `count` fakes of `concurrency` slots each, listening, not registered yet.
    pub(crate) fn new(count: usize, concurrency: u32) -> Result<FakeSubworkers, String> {
        let mut sockets = Vec::with_capacity(count);
        let mut registrations = Vec::with_capacity(count);
        for index in 0..count {
            let (socket, address) = listen_somewhere()?;
            sockets.push(socket);
            let task = OfferedTask::new(&format!("noop_{index}"));
            let name = WorkerName { worker_id: format!("fake{index}"), instance: TaskId::new_v4() };
            registrations.push(Registration { name, address, concurrency, prefetch: 0, tasks: vec![task] });
        }
        Ok(FakeSubworkers { _sockets: sockets, registrations, joined: None })
    }

    /// Registers every fake with the control plane at `control_plane`, all at
    /// once; returns once it has connected to each, with the failures.
    pub(crate) async fn join(&mut self, control_plane: &str) -> Vec<String> {
        let client = match Client::new(control_plane) {
            Ok(client) => client.with_timeout(REGISTER_TIMEOUT),
            Err(error) => return vec![error.to_string()],
        };
        let management = match client.discover().await {
            Ok(port) => client.with_management_port(port),
            Err(error) => return vec![format!("asking {control_plane} for its management port: {error}")],
        };
        // At most as many at once as a control plane dials back by default
        // (--max-pending-registrations 16); a Busy answer is retried.
        let mut pending = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        for registration in self.registrations.iter().cloned() {
            let (management, permits) = (management.clone(), permits.clone());
            pending.spawn(async move {
                let _permit = permits.acquire().await;
                let id = registration.name.worker_id.clone();
                let request = Request::Register(registration);
                for _ in 0..50 {
                    match management.manage(&request).await {
                        Err(ClientError::Refused(refusal)) if refusal.kind == ErrorKind::Busy => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        outcome => return outcome.map_err(|e| format!("registering {id}: {e}")),
                    }
                }
                Err(format!("registering {id}: still busy after 50 tries"))
            });
        }
        let mut failures = Vec::new();
        while let Some(outcome) = pending.join_next().await {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => failures.push(failure),
                Err(error) => failures.push(format!("a registration task failed: {error}")),
            }
        }
        let names = self.registrations.iter().map(|r| r.name.clone()).collect();
        let heartbeats = tokio::spawn(heartbeat_forever(management.clone(), names));
        self.joined = Some((management, heartbeats));
        failures
    }

    /// Unregisters every fake, as a subworker does when it stops; returns the failures.
    pub(crate) async fn leave(&mut self) -> Vec<String> {
        let Some((management, heartbeats)) = self.joined.take() else { return Vec::new() };
        heartbeats.abort();
        let mut failures = Vec::new();
        for Registration { name, .. } in &self.registrations {
            if let Err(error) = management.manage(&Request::Unregister(name.clone())).await {
                failures.push(format!("unregistering {}: {error}", name.worker_id));
            }
        }
        failures
    }
}

impl Drop for FakeSubworkers {
    fn drop(&mut self) {
        if let Some((_, heartbeats)) = &self.joined {
            heartbeats.abort();
        }
    }
}

/// Heartbeats for every fake every [`FAKE_HEARTBEAT`] (each with no task in
/// flight) until aborted; a failed heartbeat shows in the cluster check.
pub(crate) async fn heartbeat_forever(management: Client, names: Vec<WorkerName>) {
    loop {
        tokio::time::sleep(FAKE_HEARTBEAT).await;
        for name in &names {
            let _ = management.manage(&Request::Heartbeat(Heartbeat { name: name.clone(), in_flight: 0 })).await;
        }
    }
}

/// A Rep0 socket listening on a free port of 127.0.0.1, and its address.
pub(crate) fn listen_somewhere() -> Result<(Socket, String), String> {
    let mut last_error = String::new();
    for _attempt in 0..10 {
        let address = format!("tcp://127.0.0.1:{}", free_port()?);
        let socket = Socket::new(Protocol::Rep0).map_err(|e| e.to_string())?;
        match socket.listen(&address) {
            Ok(()) => return Ok((socket, address)),
            // Taken between our check and the bind: try another.
            Err(error) => last_error = format!("listening on {address}: {error}"),
        }
    }
    Err(last_error)
}
