//! The raw NNG request/reply floor against NNG 1.11 (see `../floor.rs`).

#[path = "../../echo_server.rs"]
mod echo_server;
#[path = "../../floor.rs"]
mod floor;
#[path = "../../tls_check.rs"]
mod tls_check;

/// What differs between NNG versions, for `floor.rs`.
mod shim {
    use std::ffi::{c_char, c_void, CStr};

    use nng_sys::nng_aio;

    /// `NNG_ECLOSED` as `aio_result` returns it.
    pub const ECLOSED: i32 = nng_sys::NNG_ECLOSED as i32;
    /// `NNG_ECANCELED` as `aio_result` returns it.
    pub const ECANCELED: i32 = nng_sys::NNG_ECANCELED as i32;

    /// NNG 1.x initialises itself on first use.
    pub fn init() {}

    /// The result of the aio's last operation.
    ///
    /// # Safety
    /// `aio` must be a live aio.
    pub unsafe fn aio_result(aio: *mut nng_aio) -> i32 {
        nng_sys::nng_aio_result(aio)
    }

    /// A new aio calling `callback(arg)` when each operation completes.
    pub fn aio_alloc(aio: &mut *mut nng_aio, callback: unsafe extern "C" fn(*mut c_void), arg: *mut c_void) -> i32 {
        // SAFETY: nng_aio_alloc writes a new aio on success; the caller keeps `arg` alive as long as the aio.
        unsafe { nng_sys::nng_aio_alloc(aio, Some(callback), arg) }
    }

    /// The static message of an NNG error code.
    pub fn strerror(code: i32) -> *const c_char {
        // SAFETY: nng_strerror accepts any code and returns a static string.
        unsafe { nng_sys::nng_strerror(code) }
    }

    /// Gives a `tls+tcp://` listener its certificate and key (one PEM file),
    /// through NNG 1.x's file option.
    pub fn tls_listener(listener: nng_sys::nng_listener, both: &CStr) -> i32 {
        // SAFETY: the option name and the path are NUL-terminated; NNG copies them.
        unsafe { nng_sys::nng_listener_set_string(listener, nng_sys::NNG_OPT_TLS_CERT_KEY_FILE.as_ptr().cast(), both.as_ptr()) }
    }

    /// Makes a `tls+tcp://` dialer require a server certificate signed by `ca`, for `host`.
    pub fn tls_dialer(dialer: nng_sys::nng_dialer, ca: &CStr, host: &CStr) -> i32 {
        use nng_sys::{nng_dialer_set_int, nng_dialer_set_string, NNG_OPT_TLS_AUTH_MODE, NNG_OPT_TLS_CA_FILE, NNG_OPT_TLS_SERVER_NAME};
        /// `NNG_TLS_AUTH_MODE_REQUIRED`: the peer must present a valid certificate.
        const REQUIRED: i32 = 2;
        // SAFETY: the option names and values are NUL-terminated; NNG copies them.
        unsafe {
            let codes = [
                nng_dialer_set_string(dialer, NNG_OPT_TLS_CA_FILE.as_ptr().cast(), ca.as_ptr()),
                nng_dialer_set_string(dialer, NNG_OPT_TLS_SERVER_NAME.as_ptr().cast(), host.as_ptr()),
                nng_dialer_set_int(dialer, NNG_OPT_TLS_AUTH_MODE.as_ptr().cast(), REQUIRED),
            ];
            codes.into_iter().find(|&code| code != 0).unwrap_or(0)
        }
    }
}

fn main() -> std::process::ExitCode {
    floor::main()
}
