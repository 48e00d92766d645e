//! How the Rust client sends one request: sealed with its key, bounded
//! by the frame limit, on the port's endpoint within the call's timeout,
//! and its reply opened and decoded.

use std::time::{Duration, Instant};

use nng::Message;

use super::endpoint::Endpoint;
use super::probe;
use super::{Client, ClientError, MANAGEMENT, MAX_IN_FLIGHT_PER_PORT};
use crate::wire::auth::{open, seal, AuthError, ENVELOPE_BYTES};
use crate::wire::protocol::{decode, encode_message, now_ms, ErrorReply, Reply, Request};

/// How long a call waits for its first connection before asking whether
/// anything listens at the address at all.
const PROBE_AFTER: Duration = Duration::from_millis(300);

/// What the port at `index` of a base address is, for messages.
fn port_name(index: usize) -> &'static str {
    match index {
        0 => "the CRITICAL task port",
        1 => "the HIGH task port",
        2 => "the NORMAL task port",
        3 => "the LOW task port",
        4 => "the result port",
        _ => "the management port",
    }
}

impl Client {
    /// Sends a request to the management port and expects [`Reply::Done`].
    pub async fn manage(&self, request: &Request) -> Result<(), ClientError> {
        match self.request(MANAGEMENT, request).await? {
            Reply::Done => Ok(()),
            Reply::Error(error) => Err(ClientError::Refused(error)),
            other => Err(self.unexpected(other)),
        }
    }

    /// Sends any request to endpoint `index` (0-3 task ports, 4 results, 5 management).
    pub async fn request(&self, index: usize, request: &Request) -> Result<Reply, ClientError> {
        let reply = self.exchange(index, encode_message(request)).await?;
        decode::<Reply>(&reply, usize::MAX)
            .map_err(|source| ClientError::Decode { address: self.address(index).to_string(), source })
    }

    /// Sends a raw frame to endpoint `index` and returns the raw reply.
    pub async fn exchange(&self, index: usize, mut frame: Message) -> Result<Message, ClientError> {
        let inner = &self.inner;
        let sealed = inner.auth.as_ref().map(|auth| {
            let (envelope, seal) = seal(&auth.key, &auth.sender, &frame, None, now_ms());
            frame.push_front(&envelope);
            (auth, seal)
        });
        if frame.len() > inner.max_frame {
            return Err(ClientError::TooLarge { size: frame.len(), limit: inner.max_frame });
        }
        let address = self.address(index);
        let transport = |source| ClientError::Transport { address: address.to_string(), source };
        let endpoint = self.endpoint(index)?;
        let timeout = inner.timeout;
        let started = Instant::now();
        let _permit = self.permit(index, endpoint).await?;
        let timeout = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let receiver = endpoint.send(frame, timeout).map_err(transport)?;
        let answer = self.await_answer(index, endpoint, receiver, timeout, Duration::from_secs(1)).await?;
        match answer {
            Ok(Ok(mut message)) => match sealed {
                None => Ok(message),
                // An unauthenticated error reply says why the request was
                // refused; anything else must be sealed for this request.
                Some((auth, seal)) => match open(&auth.ring, &message, Some(seal), now_ms()) {
                    Ok(_) => {
                        message.trim(ENVELOPE_BYTES);
                        Ok(message)
                    }
                    Err(AuthError::Missing) if is_refusal(&message) => Ok(message),
                    Err(source) => Err(ClientError::Unauthenticated { address: address.to_string(), source }),
                },
            },
            Ok(Err(nng::Error::TimedOut)) => Err(ClientError::Timeout { address: address.to_string(), after: timeout }),
            Ok(Err(error)) => Err(transport(error)),
            Err(_) => Err(transport(nng::Error::Closed)),
        }
    }

    /// The endpoint of port `index`, dialed on first use.
    pub(super) fn endpoint(&self, index: usize) -> Result<&Endpoint, ClientError> {
        let inner = &self.inner;
        let address = self.address(index);
        let frame_timeout = inner.timeout.saturating_add(Duration::from_secs(1));
        inner.endpoints[index]
            .get_or_init(|| {
                Endpoint::open(address, inner.max_frame, MAX_IN_FLIGHT_PER_PORT, inner.auth.clone(), frame_timeout)
            })
            .as_ref()
            .map_err(|e| ClientError::Transport { address: address.to_string(), source: *e })
    }

    /// A place among the calls in service on port `index`, within the timeout.
    pub(super) async fn permit<'a>(
        &self,
        index: usize,
        endpoint: &'a Endpoint,
    ) -> Result<tokio::sync::SemaphorePermit<'a>, ClientError> {
        let address = self.address(index);
        match tokio::time::timeout(self.inner.timeout, endpoint.in_flight.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ClientError::Transport { address: address.to_string(), source: nng::Error::Closed }),
            Err(_) => Err(ClientError::Timeout { address: address.to_string(), after: self.inner.timeout }),
        }
    }

    /// Waits for `receiver`, the answer to a request on port `index`,
    /// within `timeout` and `slack` (a plain request's own NNG timeout comes
    /// first, so it gives a second's slack against a lost wake-up; a batched
    /// call, whose frame may outlive it, gives none). Until a connection has
    /// come up, a refused dial ends the wait early.
    pub(super) async fn await_answer<T>(
        &self,
        index: usize,
        endpoint: &Endpoint,
        receiver: tokio::sync::oneshot::Receiver<T>,
        timeout: Duration,
        slack: Duration,
    ) -> Result<Result<T, tokio::sync::oneshot::error::RecvError>, ClientError> {
        let address = self.address(index);
        let reply = tokio::time::timeout(timeout + slack, receiver);
        if endpoint.ever_connected() {
            let answer = reply.await;
            return answer.map_err(|_| ClientError::Timeout { address: address.to_string(), after: timeout });
        }
        let refused = async {
            loop {
                tokio::time::sleep(PROBE_AFTER).await;
                if endpoint.ever_connected() {
                    return std::future::pending().await;
                }
                if let Some(why) = probe::refused(address).await {
                    return why;
                }
            }
        };
        tokio::select! {
            answer = reply => answer.map_err(|_| ClientError::Timeout { address: address.to_string(), after: timeout }),
            why = refused => {
                let port = format!("{}, base+{index} of {}", port_name(index), self.inner.base);
                Err(ClientError::Unreachable { address: address.to_string(), port, why })
            }
        }
    }

    pub(crate) fn address(&self, index: usize) -> &str {
        &self.inner.addresses[index]
    }

    pub(crate) fn unexpected(&self, reply: Reply) -> ClientError {
        ClientError::Unexpected { address: self.inner.base.to_string(), reply: format!("{reply:?}") }
    }
}

/// Whether an unsealed reply is a refusal that a server sends without a
/// seal (the request itself was not authenticated, so nothing is trusted).
pub(super) fn is_refusal(message: &[u8]) -> bool {
    matches!(
        decode::<Reply>(message, usize::MAX),
        Ok(Reply::Error(ErrorReply {
            kind: crate::wire::protocol::ErrorKind::Unauthenticated | crate::wire::protocol::ErrorKind::Busy,
            ..
        }))
    )
}
