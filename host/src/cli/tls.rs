//! `--tls-cert`, `--tls-key` and `--tls-ca` on every command: the
//! process's TLS identity for `tls+tcp://` addresses (see `fastworker::tls`
//! and docs/security.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use fastworker::tls::{self, Tls, TlsError};

use crate::{fail, EXIT_USAGE};

/// The certificate a process presents on `tls+tcp://` links.
#[derive(Args, Clone)]
pub(crate) struct TlsArgs {
    /// Certificate (PEM, with its chain) this process presents on tls+tcp:// links.
    #[arg(long, env = "FASTWORKER_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Private key (PEM, unencrypted) of --tls-cert.
    #[arg(long, env = "FASTWORKER_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signs every member's certificate; peers without one are refused.
    #[arg(long, env = "FASTWORKER_TLS_CA")]
    pub(crate) tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// Installs the identity the flags name (if any), then checks that
    /// every `tls+tcp://` address among `addresses` (flag, address) has one:
    /// exit 2 saying what to do otherwise.
    pub(crate) fn install(&self, addresses: &[(&str, &str)]) -> Result<(), ExitCode> {
        let loaded = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(Tls::load(cert, key, ca)),
            _ => Some(Err(TlsError::Incomplete)),
        };
        if let Some(loaded) = loaded {
            loaded.and_then(tls::install).map_err(|error| fail(EXIT_USAGE, error))?;
        }
        for (flag, address) in addresses {
            tls::check(address).map_err(|error| fail(EXIT_USAGE, format_args!("{flag}: {error}")))?;
        }
        Ok(())
    }
}
