//! The raw NNG request/reply floor against NNG 1.11 (see `../floor.rs`).

#[path = "../../floor.rs"]
mod floor;

/// What differs between NNG versions, for `floor.rs`.
mod shim {
    use std::ffi::{c_char, c_void};

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
}

fn main() -> std::process::ExitCode {
    floor::main()
}
