//! Whether anything listens at an address: asked when a call has had no
//! connection for a moment, so that a wrong address fails within a second,
//! naming what was typed, instead of after the whole timeout.

use std::time::Duration;

/// How long one probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why nothing accepts connections at `address` (`tcp://` or `tls+tcp://`),
/// or `None` when something does, or when it cannot tell (other
/// transports, a slow network): then the call waits out its timeout.
pub(super) async fn refused(address: &str) -> Option<String> {
    let host_port = address.strip_prefix("tcp://").or_else(|| address.strip_prefix("tls+tcp://"))?;
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(host_port)).await {
        Ok(Err(error)) if is_refusal(&error) => Some(error.to_string()),
        _ => None,
    }
}

/// Errors that say nothing listens there (as opposed to a slow path).
fn is_refusal(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::AddrNotAvailable
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
    )
}
