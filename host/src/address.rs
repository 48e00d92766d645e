//! Base addresses and the port layout derived from them.

use fastworker_plugin_sdk::Priority;

/// The default base address of a control plane.
pub const DEFAULT_BASE_ADDRESS: &str = "tcp://127.0.0.1:5555";

/// Offset of the result-query port from the base port.
pub const RESULT_PORT_OFFSET: u16 = 4;

/// Offset of the subworker-management port from the base port.
pub const MANAGEMENT_PORT_OFFSET: u16 = 5;

/// A `tcp://host:port` address from which the other ports are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseAddress {
    host: String,
    port: u16,
}

/// An address that cannot serve as a base address.
#[derive(Debug, thiserror::Error)]
#[error("'{address}' is not a base address: {reason} (expected tcp://HOST:PORT, for example {DEFAULT_BASE_ADDRESS})")]
pub struct AddressError {
    address: String,
    reason: &'static str,
}

impl BaseAddress {
    /// Parses `tcp://host:port`.
    pub fn parse(address: &str) -> Result<Self, AddressError> {
        let error = |reason| AddressError { address: address.to_string(), reason };
        let rest = address.strip_prefix("tcp://").ok_or_else(|| error("only tcp:// addresses have numbered ports"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| error("the port is missing"))?;
        if host.is_empty() {
            return Err(error("the host is missing"));
        }
        let port: u16 = port.parse().map_err(|_| error("the port is not a number from 1 to 65535"))?;
        if port == 0 || port > u16::MAX - MANAGEMENT_PORT_OFFSET {
            return Err(error("the port must leave room for the five ports above it"));
        }
        Ok(BaseAddress { host: host.to_string(), port })
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
        format!("tcp://{}:{}", self.host, port)
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
        write!(f, "tcp://{}:{}", self.host, self.port)
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
    }

    #[test]
    fn bad_addresses_say_why() {
        for bad in ["127.0.0.1:5555", "tcp://127.0.0.1", "tcp://:5555", "tcp://h:0", "tcp://h:65533", "ipc:///tmp/x"] {
            assert!(BaseAddress::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
