//! The echo server of the floor (`--echo-server ADDRESS`, a child process
//! of the measuring one), as in `bench/src/nng_floor.rs`: a Rep0 socket with
//! 256 contexts, each with an aio looping receive → send the same message
//! back → receive, served by NNG's own threads.

use std::ffi::{c_void, CString};
use std::io::{Read, Write};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};

use nng_sys::{
    nng_aio, nng_aio_free, nng_aio_get_msg, nng_aio_set_msg, nng_aio_stop, nng_ctx, nng_ctx_open, nng_ctx_recv,
    nng_ctx_send, nng_listen, nng_msg_free, nng_rep0_open, nng_socket_close,
};

use crate::floor::{check, open, ECHO_CONTEXTS};
use crate::shim;

/// One echo context of the server: its aio, and whether a send is pending.
struct EchoSlot {
    ctx: nng_ctx,
    aio: *mut nng_aio,
    sending: AtomicBool,
}

/// The echo server's aio callback: receive → send it back → receive.
///
/// # Safety
/// Called by NNG only, with the argument given to `nng_aio_alloc`: a live
/// [`EchoSlot`]. An aio's callback never runs twice at once, so the slot's
/// aio is never driven from two threads.
unsafe extern "C" fn echo_event(arg: *mut c_void) {
    // SAFETY: `arg` is the EchoSlot registered with this aio; it outlives the aio (see `serve`).
    let slot = &*(arg as *const EchoSlot);
    let result = shim::aio_result(slot.aio);
    if slot.sending.swap(false, Ordering::AcqRel) {
        if result != 0 {
            // A failed send leaves the message with the aio: free it.
            nng_msg_free(nng_aio_get_msg(slot.aio));
        }
    } else if result == 0 {
        // The received message moves straight back into the send.
        nng_aio_set_msg(slot.aio, nng_aio_get_msg(slot.aio));
        slot.sending.store(true, Ordering::Release);
        return nng_ctx_send(slot.ctx, slot.aio);
    }
    if result != shim::ECLOSED && result != shim::ECANCELED {
        nng_ctx_recv(slot.ctx, slot.aio);
    }
}

/// The child-process mode: echoes until standard input closes.
pub fn serve(address: &str) -> Result<(), String> {
    let socket = open(nng_rep0_open)?;
    let url = CString::new(address).map_err(|e| e.to_string())?;
    // SAFETY: `url` is NUL-terminated; no listener handle is asked for.
    check("nng_listen", unsafe { nng_listen(socket, url.as_ptr(), null_mut(), 0) })?;
    // Boxed so that each slot's address, given to its aio, never moves.
    let mut slots: Vec<Box<EchoSlot>> = Vec::with_capacity(ECHO_CONTEXTS);
    for _ in 0..ECHO_CONTEXTS {
        let mut slot = Box::new(EchoSlot { ctx: nng_ctx::default(), aio: null_mut(), sending: AtomicBool::new(false) });
        // SAFETY: `socket` is open; nng_ctx_open writes the new context id.
        check("nng_ctx_open", unsafe { nng_ctx_open(&mut slot.ctx, socket) })?;
        let arg = (&*slot as *const EchoSlot).cast_mut().cast::<c_void>();
        // SAFETY: the callback's argument is the boxed slot, freed only after the aio is stopped.
        check("nng_aio_alloc", shim::aio_alloc(&mut slot.aio, echo_event, arg))?;
        // SAFETY: the context and aio are live; the callback takes over from here.
        unsafe { nng_ctx_recv(slot.ctx, slot.aio) };
        slots.push(slot);
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    // SAFETY: closing the socket ends every operation; nng_aio_stop waits for
    // each callback, after which the aio and then its slot may be freed.
    unsafe {
        nng_socket_close(socket);
        for slot in &slots {
            nng_aio_stop(slot.aio);
            nng_aio_free(slot.aio);
        }
    }
    Ok(())
}
