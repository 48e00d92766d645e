//! The raw NNG request/reply floor against NNG 2.0 (see `../floor.rs`).

#[path = "../../echo_server.rs"]
mod echo_server;
#[path = "../../floor.rs"]
mod floor;
#[path = "../../tls_check.rs"]
mod tls_check;

/// What differs between NNG versions, for `floor.rs`: NNG 2.0 must be
/// initialised, and returns `nng_err` where 1.x returns `int`.
mod shim {
    use std::ffi::{c_char, c_void, CStr};

    use nng_sys::{nng_aio, nng_err};

    /// `NNG_ECLOSED` as `aio_result` returns it.
    pub const ECLOSED: i32 = nng_err::NNG_ECLOSED.0 as i32;
    /// `NNG_ECANCELED` as `aio_result` returns it.
    pub const ECANCELED: i32 = nng_err::NNG_ECANCELED.0 as i32;

    /// NNG 2.0 needs `nng_init` before any other call.
    pub fn init() {
        // SAFETY: a null parameter block asks for the defaults; called once, before anything else.
        unsafe { nng_sys::nng_init(std::ptr::null()) };
    }

    /// The result of the aio's last operation.
    ///
    /// # Safety
    /// `aio` must be a live aio.
    pub unsafe fn aio_result(aio: *mut nng_aio) -> i32 {
        nng_sys::nng_aio_result(aio).0 as i32
    }

    /// A new aio calling `callback(arg)` when each operation completes.
    pub fn aio_alloc(aio: &mut *mut nng_aio, callback: unsafe extern "C" fn(*mut c_void), arg: *mut c_void) -> i32 {
        // SAFETY: nng_aio_alloc writes a new aio on success; the caller keeps `arg` alive as long as the aio.
        unsafe { nng_sys::nng_aio_alloc(aio, Some(callback), arg).0 as i32 }
    }

    /// The static message of an NNG error code.
    pub fn strerror(code: i32) -> *const c_char {
        // SAFETY: nng_strerror accepts any code and returns a static string.
        unsafe { nng_sys::nng_strerror(nng_err(code as u32)) }
    }

    /// Gives a `tls+tcp://` listener its certificate and key (one PEM file),
    /// through NNG 2.0's TLS configuration object.
    pub fn tls_listener(listener: nng_sys::nng_listener, both: &CStr) -> i32 {
        use nng_sys::*;
        let mut config: *mut nng_tls_config = std::ptr::null_mut();
        // SAFETY: the configuration is allocated, filled, handed to the
        // listener (which holds its own reference) and released once.
        unsafe {
            let code = nng_tls_config_alloc(&mut config, nng_tls_mode::NNG_TLS_MODE_SERVER);
            if code != 0 {
                return code;
            }
            let mut code = nng_tls_config_cert_key_file(config, both.as_ptr(), std::ptr::null());
            if code == 0 {
                code = nng_listener_set_tls(listener, config);
            }
            nng_tls_config_free(config);
            code
        }
    }

    /// Makes a `tls+tcp://` dialer require a server certificate signed by `ca`, for `host`.
    pub fn tls_dialer(dialer: nng_sys::nng_dialer, ca: &CStr, host: &CStr) -> i32 {
        use nng_sys::*;
        let mut config: *mut nng_tls_config = std::ptr::null_mut();
        // SAFETY: as in `tls_listener`; the strings are NUL-terminated and copied.
        unsafe {
            let code = nng_tls_config_alloc(&mut config, nng_tls_mode::NNG_TLS_MODE_CLIENT);
            if code != 0 {
                return code;
            }
            let codes = [
                nng_tls_config_ca_file(config, ca.as_ptr()),
                nng_tls_config_server_name(config, host.as_ptr()),
                nng_tls_config_auth_mode(config, nng_tls_auth_mode::NNG_TLS_AUTH_MODE_REQUIRED),
                nng_dialer_set_tls(dialer, config),
            ];
            nng_tls_config_free(config);
            codes.into_iter().find(|&code| code != 0).unwrap_or(0)
        }
    }
}

fn main() -> std::process::ExitCode {
    floor::main()
}
