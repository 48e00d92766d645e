//! The raw NNG request/reply floor against NNG 2.0 (see `../floor.rs`).

#[path = "../../floor.rs"]
mod floor;

/// What differs between NNG versions, for `floor.rs`: NNG 2.0 must be
/// initialised, and returns `nng_err` where 1.x returns `int`.
mod shim {
    use std::ffi::{c_char, c_void};

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
}

fn main() -> std::process::ExitCode {
    floor::main()
}
