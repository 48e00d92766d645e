//! Base addresses and the port layout derived from them.

use fastworker_plugin_sdk::Priority;

/// The default base address of a control plane.
pub const DEFAULT_BASE_ADDRESS: &str = "tcp://127.0.0.1:5555";

/// Offset of the result-query port from the base port.
pub const RESULT_PORT_OFFSET: u16 = 4;

/// Offset of the subworker-management port from the base port.
pub const MANAGEMENT_PORT_OFFSET: u16 = 5;

/// A `tcp://host:port` (or `tls+tcp://host:port`) address from which the
/// other ports are counted; every port counted from it has its scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseAddress {
    scheme: &'static str,
    host: String,
    port: u16,
}

/// The schemes a base address may have: plain TCP, or TLS over TCP.
const SCHEMES: [&str; 2] = ["tcp://", "tls+tcp://"];

/// An address that cannot serve as a base address.
#[derive(Debug, thiserror::Error)]
#[error("'{address}' is not a base address: {reason} (expected tcp://HOST:PORT or tls+tcp://HOST:PORT, for example {DEFAULT_BASE_ADDRESS})")]
pub struct AddressError {
    address: String,
    reason: &'static str,
}

impl BaseAddress {
    /// Parses `tcp://host:port` or `tls+tcp://host:port`.
    pub fn parse(address: &str) -> Result<Self, AddressError> {
        let error = |reason| AddressError { address: address.to_string(), reason };
        let (scheme, rest) = SCHEMES
            .iter()
            .find_map(|scheme| address.strip_prefix(scheme).map(|rest| (*scheme, rest)))
            .ok_or_else(|| error("only tcp:// and tls+tcp:// addresses have numbered ports"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| error("the port is missing"))?;
        if host.is_empty() {
            return Err(error("the host is missing"));
        }
        let port: u16 = port.parse().map_err(|_| error("the port is not a number from 1 to 65535"))?;
        if port == 0 || port > u16::MAX - MANAGEMENT_PORT_OFFSET {
            return Err(error("the port must leave room for the five ports above it"));
        }
        Ok(BaseAddress { scheme, host: host.to_string(), port })
    }

    /// Whether its ports are reached through TLS (`tls+tcp://`).
    pub fn is_tls(&self) -> bool {
        self.scheme != SCHEMES[0]
    }

    /// The same address with another host (as found by discovery).
    pub fn with_host(&self, host: &str) -> BaseAddress {
        BaseAddress { host: host.to_string(), ..self.clone() }
    }

    /// The host part (`127.0.0.1`, `[::1]`, `0.0.0.0`, a name).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The base port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address of the port `offset` above the base.
    pub fn at_offset(&self, offset: u16) -> String {
        self.at_port(self.port + offset)
    }

    /// The address of `port` on the same host.
    pub fn at_port(&self, port: u16) -> String {
        format!("{}{}:{}", self.scheme, self.host, port)
    }

    /// Where tasks of `priority` are submitted.
    pub fn task_address(&self, priority: Priority) -> String {
        self.at_offset(priority.index() as u16)
    }

    /// Where results are queried.
    pub fn result_address(&self) -> String {
        self.at_offset(RESULT_PORT_OFFSET)
    }
}

impl std::fmt::Display for BaseAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}:{}", self.scheme, self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_count_up_from_the_base() {
        let base = BaseAddress::parse("tcp://127.0.0.1:5555").unwrap();
        assert_eq!(base.task_address(Priority::Critical), "tcp://127.0.0.1:5555");
        assert_eq!(base.task_address(Priority::Low), "tcp://127.0.0.1:5558");
        assert_eq!(base.result_address(), "tcp://127.0.0.1:5559");
        let tls = BaseAddress::parse("tls+tcp://10.0.0.1:6000").unwrap();
        assert!(tls.is_tls());
        assert_eq!(tls.at_offset(5), "tls+tcp://10.0.0.1:6005");
        assert_eq!(tls.to_string(), "tls+tcp://10.0.0.1:6000");
    }

    #[test]
    fn bad_addresses_say_why() {
        for bad in [
            "127.0.0.1:5555",
            "tcp://127.0.0.1",
            "tcp://:5555",
            "tcp://h:0",
            "tcp://h:65533",
            "ipc:///tmp/x",
            "tls://h:1",
            "tls+tcp://:5",
        ] {
            assert!(BaseAddress::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
