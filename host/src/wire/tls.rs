//! Encrypted links: `tls+tcp://` addresses through NNG's TLS transport
//! (mbedTLS), with mutual authentication by certificates of one CA.
//!
//! The `nng` crate sets TLS options only from files that hold a certificate
//! and its key together; this module builds NNG TLS configurations from a
//! certificate, a key and a CA file instead, through the few functions of
//! NNG's TLS API it needs, and applies them to listeners and dialers of
//! `tls+tcp://` addresses. Every `unsafe` block is an FFI call whose
//! pointers come from this module and live as long as the [`Tls`] value.
//!
//! A process has one TLS identity (its certificate), [`install`]ed once at
//! start-up; every socket of the process that listens on or dials a
//! `tls+tcp://` address uses it, through [`listen`] and [`dial_async`].
//! Addresses of other schemes are not touched.

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nng::{DialerBuilder, ListenerBuilder, Socket};

/// NNG's opaque TLS configuration.
#[repr(C)]
struct NngTlsConfig {
    _private: [u8; 0],
}

const MODE_CLIENT: c_int = 0;
const MODE_SERVER: c_int = 1;
const AUTH_REQUIRED: c_int = 2;

extern "C" {
    fn nng_tls_config_alloc(config: *mut *mut NngTlsConfig, mode: c_int) -> c_int;
    fn nng_tls_config_free(config: *mut NngTlsConfig);
    fn nng_tls_config_ca_chain(config: *mut NngTlsConfig, chain: *const c_char, crl: *const c_char) -> c_int;
    fn nng_tls_config_own_cert(
        config: *mut NngTlsConfig,
        cert: *const c_char,
        key: *const c_char,
        password: *const c_char,
    ) -> c_int;
    fn nng_tls_config_auth_mode(config: *mut NngTlsConfig, mode: c_int) -> c_int;
}

/// The URL scheme of encrypted links.
pub const TLS_SCHEME: &str = "tls+tcp://";

/// A certificate, its key and the cluster's CA, ready for NNG: one
/// configuration for listening, one for dialing.
pub struct Tls {
    server: *mut NngTlsConfig,
    client: *mut NngTlsConfig,
    /// Where the certificate came from, for messages.
    pub cert_path: PathBuf,
}

// SAFETY: NNG's TLS configurations are reference-counted and immutable once
// built; NNG uses them from its own threads. This value only frees them.
unsafe impl Send for Tls {}
// SAFETY: as above; no method mutates them after `Tls::load`.
unsafe impl Sync for Tls {}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({})", self.cert_path.display())
    }
}

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{flag} {path}: {source}")]
    Read {
        /// The flag naming it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A fastworker key file where a PEM file belongs.
    #[error("{flag} {path} is a fastworker key (it belongs to --cluster-key-file), not a PEM file: give {flag} a PEM file (docs/security.md shows how to make them)")]
    FastworkerKey {
        /// The flag naming it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// NNG (mbedTLS) refused the certificate, key or CA.
    #[error("{what} is not usable ({reason}): give PEM files, the key unencrypted and matching the certificate (docs/security.md shows how to make them)")]
    Refused {
        /// What was being loaded.
        what: &'static str,
        /// NNG's error.
        reason: String,
    },
    /// Some TLS flags but not all.
    #[error("TLS needs --tls-cert, --tls-key and --tls-ca together")]
    Incomplete,
    /// A `tls+tcp://` address with no TLS identity installed.
    #[error("{address} is a tls+tcp:// address: give --tls-cert, --tls-key and --tls-ca (docs/security.md shows how to make them)")]
    NoIdentity {
        /// The address.
        address: String,
    },
    /// [`install`] was called twice.
    #[error("this process already has a TLS identity")]
    AlreadyInstalled,
}

/// The process's TLS identity, once installed.
static IDENTITY: OnceLock<Tls> = OnceLock::new();

/// Makes `tls` the identity every `tls+tcp://` listener and dialer of this
/// process presents; once per process.
pub fn install(tls: Tls) -> Result<(), TlsError> {
    IDENTITY.set(tls).map_err(|_| TlsError::AlreadyInstalled)?;
    super::tls_failures::watch();
    Ok(())
}

/// Whether a TLS identity is installed.
pub fn installed() -> bool {
    IDENTITY.get().is_some()
}

/// Fails unless `address` can be used: any non-TLS address, or a
/// `tls+tcp://` one once an identity is installed.
pub fn check(address: &str) -> Result<(), TlsError> {
    if address.starts_with(TLS_SCHEME) && !installed() {
        return Err(TlsError::NoIdentity { address: address.to_string() });
    }
    Ok(())
}

/// Listens on `url`: through TLS, with the installed identity, for a
/// `tls+tcp://` address.
pub(crate) fn listen(socket: &Socket, url: &str) -> Result<(), nng::Error> {
    Tls::listen(IDENTITY.get(), socket, url)
}

/// Dials `url` in the background: through TLS, with the installed
/// identity, for a `tls+tcp://` address.
pub(crate) fn dial_async(socket: &Socket, url: &str) -> Result<(), nng::Error> {
    Tls::dial_async(IDENTITY.get(), socket, url)
}

impl Tls {
    /// Loads a certificate (PEM, with its chain), its private key (PEM,
    /// unencrypted) and the CA (PEM) that signs every member's certificate.
    /// Both sides of a link must present a certificate of that CA.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Tls, TlsError> {
        let read = |flag: &'static str, path: &Path| {
            let text = std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.into(), source })?;
            if text.split(|b| *b == b'\n').any(|line| line.trim_ascii_start().starts_with(b"fastworker-key ")) {
                return Err(TlsError::FastworkerKey { flag, path: path.into() });
            }
            CString::new(text).map_err(|_| TlsError::Refused { what: flag, reason: "it holds a NUL byte".into() })
        };
        let (cert_pem, key_pem, ca_pem) = (read("--tls-cert", cert)?, read("--tls-key", key)?, read("--tls-ca", ca)?);
        let mut tls = Tls { server: std::ptr::null_mut(), client: std::ptr::null_mut(), cert_path: cert.into() };
        tls.server = build(MODE_SERVER, &cert_pem, &key_pem, &ca_pem)?;
        tls.client = build(MODE_CLIENT, &cert_pem, &key_pem, &ca_pem)?;
        Ok(tls)
    }

    /// Listens on `url`: through TLS for a `tls+tcp://` address.
    fn listen(tls: Option<&Tls>, socket: &Socket, url: &str) -> Result<(), nng::Error> {
        match tls {
            Some(tls) if url.starts_with(TLS_SCHEME) => {
                let builder = ListenerBuilder::new(socket, url)?;
                set_listener_config(builder.nng_listener(), tls.server)?;
                builder.start().map(|_| ()).map_err(|(_, error)| error)
            }
            _ => socket.listen(url),
        }
    }

    /// Dials `url` in the background: through TLS for a `tls+tcp://` address.
    fn dial_async(tls: Option<&Tls>, socket: &Socket, url: &str) -> Result<(), nng::Error> {
        match tls {
            Some(tls) if url.starts_with(TLS_SCHEME) => {
                let builder = DialerBuilder::new(socket, url)?;
                set_dialer_config(builder.nng_dialer(), tls.client)?;
                builder.start(true).map(|_| ()).map_err(|(_, error)| error)
            }
            _ => socket.dial_async(url),
        }
    }
}

/// Builds one NNG TLS configuration.
fn build(mode: c_int, cert: &CString, key: &CString, ca: &CString) -> Result<*mut NngTlsConfig, TlsError> {
    let refused = |what: &'static str, rv: c_int| TlsError::Refused { what, reason: nng_error(rv) };
    let mut config = std::ptr::null_mut();
    // SAFETY: `config` is a valid out-pointer; on success NNG returns a
    // configuration we own (freed below on error, else by `Tls::drop`).
    let rv = unsafe { nng_tls_config_alloc(&mut config, mode) };
    if rv != 0 {
        return Err(refused("the TLS configuration", rv));
    }
    // SAFETY: `config` is the configuration just allocated; the strings are
    // NUL-terminated and outlive the calls (NNG copies what it keeps).
    let steps = unsafe {
        [
            ("--tls-ca", nng_tls_config_ca_chain(config, ca.as_ptr(), std::ptr::null())),
            (
                "--tls-cert and --tls-key",
                nng_tls_config_own_cert(config, cert.as_ptr(), key.as_ptr(), std::ptr::null()),
            ),
            ("the TLS authentication mode", nng_tls_config_auth_mode(config, AUTH_REQUIRED)),
        ]
    };
    if let Some((what, rv)) = steps.into_iter().find(|(_, rv)| *rv != 0) {
        // SAFETY: allocated above and not shared with NNG yet.
        unsafe { nng_tls_config_free(config) };
        return Err(refused(what, rv));
    }
    Ok(config)
}

/// The name of NNG's option for a TLS configuration.
fn option_name() -> *const c_char {
    nng_sys::NNG_OPT_TLS_CONFIG.as_ptr() as *const c_char
}

/// Sets `config` on a listener that has not started.
fn set_listener_config(handle: nng_sys::nng_listener, config: *mut NngTlsConfig) -> Result<(), nng::Error> {
    // SAFETY: the handle is a live listener (its builder is held by the
    // caller); NNG takes its own reference to the configuration.
    status(unsafe { nng_sys::nng_listener_setopt_ptr(handle, option_name(), config as *mut c_void) })
}

/// Sets `config` on a dialer that has not started.
fn set_dialer_config(handle: nng_sys::nng_dialer, config: *mut NngTlsConfig) -> Result<(), nng::Error> {
    // SAFETY: as for listeners.
    status(unsafe { nng_sys::nng_dialer_setopt_ptr(handle, option_name(), config as *mut c_void) })
}

fn status(rv: c_int) -> Result<(), nng::Error> {
    match std::num::NonZeroU32::new(rv as u32) {
        None => Ok(()),
        Some(code) => Err(nng::Error::from(code)),
    }
}

fn nng_error(rv: c_int) -> String {
    // SAFETY: nng_strerror returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(nng_sys::nng_strerror(rv)) }.to_string_lossy().into_owned()
}

impl Drop for Tls {
    fn drop(&mut self) {
        for config in [self.server, self.client] {
            if !config.is_null() {
                // SAFETY: ours; NNG holds its own references for endpoints.
                unsafe { nng_tls_config_free(config) };
            }
        }
    }
}
