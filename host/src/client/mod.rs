//! The client: submits tasks and queries results over NNG request/reply.
//!
//! One [`Client`] is meant to be shared (`Clone + Send + Sync`): any number
//! of calls may overlap on the same sockets and each gets its own reply.
//! Every call has a timeout.
//!
//! Blocking submissions ([`Client::call`], [`Client::submit`]) batch by
//! themselves: a lone call leaves at once in a frame of its own, calls made
//! while the port's two frames are in flight leave together in the next
//! one, and their outcomes come back many to a frame (`client/calls.rs`,
//! `docs/client.md`). Other requests each take their own NNG context.

mod admin;
mod calls;
mod endpoint;
mod exchange;
mod probe;
mod workflow;

pub(crate) use endpoint::stop;
use endpoint::Endpoint;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::address::{AddressError, BaseAddress};
use crate::wire::auth::{AuthError, Key, KeyError, KeyRing, Sender};
use crate::wire::protocol::{
    decode, Callback, DecodeError, ErrorKind, ErrorReply, Priority, Reply, Request, RetryPolicy, Submit, TaskError,
    TaskId, TaskReport, TaskState, DEFAULT_MAX_FRAME_BYTES,
};

/// Calls one client keeps in service on one port at once; more wait in
/// the client. It matches the control plane's default
/// `--max-requests-per-connection`, so a client never sees that limit's
/// `Busy` answer unless the control plane lowers it.
pub const MAX_IN_FLIGHT_PER_PORT: usize = 128;

/// Arguments from this size on leave as a plain `Submit`, not in a frame
/// of calls: such a call fills a frame on its own, so sharing one gains
/// nothing, and the control plane's `--max-frame-bytes` is stated against
/// the plain submission (one at the bound must still be accepted).
const LARGE_CALL_BYTES: usize = 64 * 1024;

/// The timeout of a call when none is set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The first pause before a submission refused `NotYetProvided` is sent
/// again; each further pause doubles, up to [`NOT_YET_PROVIDED_MAX_PAUSE`].
const NOT_YET_PROVIDED_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between submissions refused `NotYetProvided`.
const NOT_YET_PROVIDED_MAX_PAUSE: Duration = Duration::from_secs(1);

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a base address.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// No reply within the timeout.
    #[error("no reply from {address} within {:.1} s: is a control plane running there? (raise --timeout for long tasks)", .after.as_secs_f64())]
    Timeout {
        /// Where the request went.
        address: String,
        /// The timeout.
        after: Duration,
    },
    /// Nothing accepts connections at the address: it is wrong, or
    /// nothing serves there yet. Said within a second of the call.
    #[error("nothing accepts connections at {address} ({port}): {why}; is a control plane running there?")]
    Unreachable {
        /// The address of the port tried.
        address: String,
        /// Which port of which base address it is.
        port: String,
        /// What the connection attempt said.
        why: String,
    },
    /// NNG failed.
    #[error("transport error talking to {address}: {source}")]
    Transport {
        /// Where the request went.
        address: String,
        /// NNG's error.
        source: nng::Error,
    },
    /// The request is too large to send.
    #[error("request of {size} bytes exceeds the frame limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The arguments could not be encoded as JSON.
    #[error("arguments cannot be encoded as JSON: {0}")]
    Arguments(serde_json::Error),
    /// The reply did not decode.
    #[error("reply from {address} does not decode: {source}")]
    Decode {
        /// Where it came from.
        address: String,
        /// Why.
        source: DecodeError,
    },
    /// The control plane refused the request.
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// The task ran and failed.
    #[error("{}", crate::wire::protocol::describe_failure(task_name, error))]
    TaskFailed {
        /// The task.
        task_name: String,
        /// Its error.
        error: TaskError,
    },
    /// The task's result does not decode as the type asked for.
    #[error("result of task '{task_name}' does not decode as the requested type: {source}")]
    Result {
        /// The task.
        task_name: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The key file cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The reply is not sealed for this request with a key of the client's.
    #[error("the reply from {address} is not authenticated ({source}): is it the control plane of this cluster?")]
    Unauthenticated {
        /// Where it came from.
        address: String,
        /// Why it failed.
        source: AuthError,
    },
    /// The control plane answered with a message that does not fit the request.
    #[error("unexpected reply from {address}: {reply}")]
    Unexpected {
        /// Where it came from.
        address: String,
        /// What came.
        reply: String,
    },
}

/// Index of the result port among a client's endpoints.
pub(crate) const RESULTS: usize = 4;
/// Index of the management port among a client's endpoints.
const MANAGEMENT: usize = 5;

/// How to submit one task. Every field is optional.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// The priority; `None` takes the task's declared default.
    pub priority: Option<Priority>,
    /// The task's id; `None` makes a fresh one.
    pub task_id: Option<TaskId>,
    /// Run it no sooner than this long from now.
    pub countdown: Option<Duration>,
    /// Run it no sooner than this time (the later of `countdown` and `eta` wins).
    pub eta: Option<SystemTime>,
    /// Its timeout, overriding the declared one (`Duration::ZERO`: none).
    pub timeout: Option<Duration>,
    /// Its retries, overriding the declared ones.
    pub retry: Option<RetryPolicy>,
    /// Where to push a notice when it ends ([`Notice`](crate::wire::protocol::Notice)).
    pub callback: Option<Callback>,
}

impl SubmitOptions {
    /// The earliest start these options ask for, in ms since the Unix epoch.
    fn not_before_ms(&self) -> Option<u64> {
        let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let countdown = self.countdown.map(|c| since_epoch(SystemTime::now() + c));
        countdown.max(self.eta.map(since_epoch))
    }

    fn submission(&self, task_name: &str, args: Vec<u8>, wait: bool) -> Submit {
        Submit {
            task_id: self.task_id.unwrap_or_else(TaskId::now_v7),
            task_name: task_name.to_string(),
            args,
            priority: self.priority,
            wait,
            not_before_ms: self.not_before_ms(),
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64),
            retry: self.retry,
            callback: self.callback.clone(),
            attempt: None,
        }
    }
}

/// One task of a batch.
#[derive(Debug, Clone)]
pub struct BatchTask {
    /// The task's name.
    pub task_name: String,
    /// Its arguments as JSON (see [`BatchTask::new`]).
    pub args: Vec<u8>,
    /// How to submit it.
    pub options: SubmitOptions,
}

impl BatchTask {
    /// A batch entry with serde arguments.
    pub fn new(task_name: &str, args: impl Serialize, options: SubmitOptions) -> Result<BatchTask, ClientError> {
        let args = fastworker_plugin_sdk::json::to_vec(&args).map_err(ClientError::Arguments)?;
        Ok(BatchTask { task_name: task_name.to_string(), args, options })
    }
}

/// A handle to a control plane.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    base: BaseAddress,
    /// Four task ports, the result port, then the management port.
    addresses: [String; 6],
    timeout: Duration,
    max_frame: usize,
    /// One per address, each opened on first use.
    endpoints: [OnceLock<Result<Endpoint, nng::Error>>; 6],
    /// With a cluster key: the key every request is sealed with.
    auth: Option<Arc<ClientAuth>>,
}

/// How a client seals its requests and checks the replies.
struct ClientAuth {
    key: Key,
    ring: Arc<KeyRing>,
    sender: Sender,
}

impl Client {
    /// A client of the control plane at `base_address` (no I/O happens yet).
    pub fn new(base_address: &str) -> Result<Client, ClientError> {
        let base = BaseAddress::parse(base_address)?;
        Ok(Client {
            inner: Arc::new(Inner {
                addresses: std::array::from_fn(|index| base.at_offset(index as u16)),
                base,
                timeout: DEFAULT_TIMEOUT,
                max_frame: DEFAULT_MAX_FRAME_BYTES,
                endpoints: Default::default(),
                auth: None,
            }),
        })
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(self, timeout: Duration) -> Client {
        self.rebuilt(timeout, self.inner.addresses.clone())
    }

    /// The same client for a control plane whose management port is not
    /// base+5 (`--subworker-port`); [`Client::discover`] tells which it is.
    pub fn with_management_port(self, port: u16) -> Client {
        let mut addresses = self.inner.addresses.clone();
        addresses[MANAGEMENT] = self.inner.base.at_port(port);
        self.rebuilt(self.inner.timeout, addresses)
    }

    fn rebuilt(&self, timeout: Duration, addresses: [String; 6]) -> Client {
        let inner = Inner {
            base: self.inner.base.clone(),
            addresses,
            timeout,
            max_frame: self.inner.max_frame,
            endpoints: Default::default(),
            auth: self.inner.auth.clone(),
        };
        Client { inner: Arc::new(inner) }
    }

    /// The same client sealing every request with `key` (from a cluster key
    /// file, see [`crate::wire::auth`]) and accepting only replies sealed with a
    /// key of `ring`. A control plane started with `--cluster-key-file`
    /// answers nothing else.
    pub fn with_key(self, key: Key, ring: Arc<KeyRing>) -> Client {
        let auth = Arc::new(ClientAuth { key, ring, sender: Sender::new() });
        let inner = Inner {
            base: self.inner.base.clone(),
            addresses: self.inner.addresses.clone(),
            timeout: self.inner.timeout,
            max_frame: self.inner.max_frame,
            endpoints: Default::default(),
            auth: Some(auth),
        };
        Client { inner: Arc::new(inner) }
    }

    /// The same client with the key a client command uses from `ring`: the
    /// operator key when it holds a cluster or operator key, else the client key.
    pub fn with_keys(self, ring: Arc<KeyRing>) -> Result<Client, KeyError> {
        let key = ring.client_signer()?;
        Ok(self.with_key(key, ring))
    }

    /// Runs `task_name` with `args` (a tuple or array, for positional
    /// arguments, or a struct or map, by name) and waits for its result.
    pub async fn call<R: DeserializeOwned>(&self, task_name: &str, args: impl Serialize) -> Result<R, ClientError> {
        let report = self.submit(task_name, args, SubmitOptions::default()).await?;
        decode_result(report)
    }

    /// As [`Client::call`], with options (priority, countdown, timeout, retries, callback…).
    pub async fn call_with<R: DeserializeOwned>(
        &self,
        task_name: &str,
        args: impl Serialize,
        options: SubmitOptions,
    ) -> Result<R, ClientError> {
        decode_result(self.submit(task_name, args, options).await?)
    }

    /// Runs a task and waits for its final report (failed tasks are `Ok` here).
    pub async fn submit(
        &self,
        task_name: &str,
        args: impl Serialize,
        options: SubmitOptions,
    ) -> Result<TaskReport, ClientError> {
        let args = fastworker_plugin_sdk::json::to_vec(&args).map_err(ClientError::Arguments)?;
        match self.submit_raw(task_name, args, options, true).await? {
            Reply::Report(report) => Ok(report),
            other => Err(self.unexpected(other)),
        }
    }

    /// Queues a task and returns its id without waiting for it to run.
    pub async fn delay(
        &self,
        task_name: &str,
        args: impl Serialize,
        options: SubmitOptions,
    ) -> Result<TaskId, ClientError> {
        let args = fastworker_plugin_sdk::json::to_vec(&args).map_err(ClientError::Arguments)?;
        match self.submit_raw(task_name, args, options, false).await? {
            Reply::Accepted { task_id } => Ok(task_id),
            Reply::Report(report) => Ok(report.task_id),
            other => Err(self.unexpected(other)),
        }
    }

    /// Submits JSON `args` as they are; `wait` chooses a report or an acceptance.
    pub async fn submit_raw(
        &self,
        task_name: &str,
        args: Vec<u8>,
        options: SubmitOptions,
        wait: bool,
    ) -> Result<Reply, ClientError> {
        let port = options.priority.unwrap_or(Priority::Normal).index();
        let request = Request::Submit(options.submission(task_name, args, wait));
        // A control plane that has just started may not know its subworkers'
        // tasks yet (`NotYetProvided`): ask again, within this call's timeout.
        let deadline = Instant::now().checked_add(self.inner.timeout);
        let mut pause = NOT_YET_PROVIDED_FIRST_PAUSE;
        loop {
            let batched = match &request {
                Request::Submit(submit) if wait => self.call_batched(port, submit).await?,
                _ => None,
            };
            let reply = match batched {
                Some(reply) => reply,
                None => self.request(port, &request).await?,
            };
            match reply {
                Reply::Error(error) if error.kind == ErrorKind::NotYetProvided => {
                    let again = Instant::now().checked_add(pause);
                    match (again, deadline) {
                        (Some(again), Some(deadline)) if again < deadline => {
                            tokio::time::sleep(pause).await;
                            pause = pause.saturating_mul(2).min(NOT_YET_PROVIDED_MAX_PAUSE);
                        }
                        _ => return Err(ClientError::Refused(error)),
                    }
                }
                Reply::Error(error) => return Err(ClientError::Refused(error)),
                reply => return Ok(reply),
            }
        }
    }

    /// Sends a blocking submission among this client's other calls on the
    /// port, many to a frame (`client/calls.rs`); `None` when the control
    /// plane does not take batched calls (an older one), to send it plainly.
    async fn call_batched(&self, port: usize, submit: &Submit) -> Result<Option<Reply>, ClientError> {
        if submit.args.len() >= LARGE_CALL_BYTES {
            return Ok(None);
        }
        let address = self.address(port);
        let size = submit.args.len() + submit.task_name.len() + 256 + crate::wire::auth::ENVELOPE_BYTES;
        if size > self.inner.max_frame {
            return Err(ClientError::TooLarge { size, limit: self.inner.max_frame });
        }
        let endpoint = self.endpoint(port)?;
        let started = Instant::now();
        let _permit = self.permit(port, endpoint).await?;
        let answer = match endpoint.calls.call(submit) {
            Ok((answer, flush)) => {
                if flush {
                    // The other callers woken with this one queue their calls first.
                    tokio::task::yield_now().await;
                    endpoint.calls.flush();
                }
                answer
            }
            Err(calls::Failure::Unsupported) => return Ok(None),
            Err(failure) => return Err(self.failure(port, failure)),
        };
        let timeout = self.inner.timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let reply = match self.await_answer(port, endpoint, answer, timeout, Duration::ZERO).await? {
            Ok(Ok(reply)) => reply,
            Ok(Err(calls::Failure::Unsupported)) => return Ok(None),
            Ok(Err(calls::Failure::Refused(error))) => return Ok(Some(Reply::Error(error))),
            Ok(Err(failure)) => return Err(self.failure(port, failure)),
            Err(_) => return Err(ClientError::Transport { address: address.to_string(), source: nng::Error::Closed }),
        };
        decode::<Reply>(&reply, usize::MAX)
            .map(Some)
            .map_err(|source| ClientError::Decode { address: address.to_string(), source })
    }

    /// The error of a batched call on `port` that has no reply of its own.
    fn failure(&self, port: usize, failure: calls::Failure) -> ClientError {
        let address = self.address(port).to_string();
        match failure {
            calls::Failure::Transport(nng::Error::TimedOut) => {
                ClientError::Timeout { address, after: self.inner.timeout }
            }
            calls::Failure::Transport(source) => ClientError::Transport { address, source },
            calls::Failure::Refused(error) => ClientError::Refused(error),
            calls::Failure::Unauthenticated(source) => ClientError::Unauthenticated { address, source },
            calls::Failure::Decode(reply) => ClientError::Unexpected { address, reply },
            calls::Failure::Unsupported => {
                ClientError::Unexpected { address, reply: "the control plane does not take batched calls".to_string() }
            }
        }
    }

    /// Submits many tasks in one request; each outcome is the task's id or
    /// why it was refused, in order.
    pub async fn submit_batch(&self, batch: Vec<BatchTask>) -> Result<Vec<Result<TaskId, ErrorReply>>, ClientError> {
        let submits =
            batch.into_iter().map(|task| task.options.submission(&task.task_name, task.args, false)).collect();
        match self.request(Priority::Normal.index(), &Request::Batch(submits)).await? {
            Reply::Batch(outcomes) => Ok(outcomes),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// Cancels a task. A task that had not started is `Cancelled` in the
    /// report (for a run sent ahead to a worker, once that worker ended it);
    /// a running one stays `Running` with its cancellation flag set.
    /// An ended or unknown task is refused (`AlreadyFinished`, `UnknownTaskId`).
    pub async fn cancel(&self, task_id: TaskId) -> Result<TaskReport, ClientError> {
        match self.request(RESULTS, &Request::Cancel { task_id }).await? {
            Reply::Report(report) => Ok(report),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// Waits up to `limit` for a task to end and returns its final report.
    pub async fn wait(&self, task_id: TaskId, limit: Duration) -> Result<TaskReport, ClientError> {
        let pauses = (Duration::from_millis(5), Duration::from_millis(200));
        self.poll_until(limit, pauses, || self.status(task_id), |report| report.state.is_final()).await
    }

    /// Asks `status` until `done` says its answer is final or `limit` has
    /// passed, pausing from `pauses.0` and doubling up to `pauses.1`.
    pub(crate) async fn poll_until<R, F: std::future::Future<Output = Result<R, ClientError>>>(
        &self,
        limit: Duration,
        pauses: (Duration, Duration),
        mut status: impl FnMut() -> F,
        done: impl Fn(&R) -> bool,
    ) -> Result<R, ClientError> {
        let deadline = Instant::now() + limit;
        let mut pause = pauses.0;
        loop {
            let answer = status().await?;
            if done(&answer) {
                return Ok(answer);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout { address: self.address(RESULTS).to_string(), after: limit });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(pauses.1);
        }
    }

    /// Waits up to `limit` for a task and returns its typed result.
    pub async fn result<R: DeserializeOwned>(&self, task_id: TaskId, limit: Duration) -> Result<R, ClientError> {
        decode_result(self.wait(task_id, limit).await?)
    }

    /// The state, result or error of a task.
    pub async fn status(&self, task_id: TaskId) -> Result<TaskReport, ClientError> {
        match self.request(RESULTS, &Request::Status { task_id }).await? {
            Reply::Report(report) => Ok(report),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }
}

/// Turns a final report into the task's typed result.
pub fn decode_result<R: DeserializeOwned>(report: TaskReport) -> Result<R, ClientError> {
    match (report.state, report.result, report.error) {
        (TaskState::Succeeded, Some(bytes), _) => {
            serde_json::from_slice(&bytes).map_err(|source| ClientError::Result { task_name: report.task_name, source })
        }
        (_, _, Some(error)) => Err(ClientError::TaskFailed { task_name: report.task_name, error }),
        (state, _, _) => Err(ClientError::Unexpected {
            address: String::new(),
            reply: format!("task '{}' is {}", report.task_name, state.as_str()),
        }),
    }
}
