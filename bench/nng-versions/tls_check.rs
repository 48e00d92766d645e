//! `--tls-check`: one request and reply over `tls+tcp://`, the server's
//! certificate checked by the client, to show whether this build of NNG has
//! a working TLS transport (build with `--features tls`, against the
//! system's mbedTLS). The certificate is a fresh self-signed one for
//! 127.0.0.1, made with the `openssl` command in a temporary directory.
//! How TLS is configured differs between versions (each project's `shim`).

use std::ffi::{c_char, CString};
use std::process::Command;
use std::ptr::null_mut;

use nng_sys::*;

use crate::floor::check;
use crate::shim;

fn name(option: &[u8]) -> *const c_char {
    option.as_ptr().cast()
}

/// Runs the check; what happened, or why it failed.
pub fn run() -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("nng-tls-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let (key, cert, both) = (dir.join("key.pem"), dir.join("cert.pem"), dir.join("both.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "1", "-subj", "/CN=127.0.0.1"])
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    if !made.status.success() {
        return Err(format!("openssl failed: {}", String::from_utf8_lossy(&made.stderr)));
    }
    let pem = [std::fs::read(&cert), std::fs::read(&key)].into_iter().collect::<Result<Vec<_>, _>>();
    std::fs::write(&both, pem.map_err(|e| e.to_string())?.concat()).map_err(|e| e.to_string())?;
    let outcome = exchange(&both, &cert);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// One request and reply over tls+tcp:// with `both` (certificate and key) on the server, `ca` on the client.
fn exchange(both: &std::path::Path, ca: &std::path::Path) -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
    let url = CString::new(format!("tls+tcp://127.0.0.1:{}", port.port())).map_err(|e| e.to_string())?;
    let both = CString::new(both.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    let ca = CString::new(ca.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    let host = CString::new("127.0.0.1").map_err(|e| e.to_string())?;
    let (mut rep, mut req) = (nng_socket::default(), nng_socket::default());
    let (mut listener, mut dialer) = (nng_listener::default(), nng_dialer::default());
    // SAFETY: every pointer passed is NUL-terminated or an out-parameter of
    // the right type; the sockets are closed once, at the end; messages are
    // owned by whoever NNG says (a failed send leaves it with us).
    unsafe {
        check("nng_rep0_open", nng_rep0_open(&mut rep))?;
        check("nng_req0_open", nng_req0_open(&mut req))?;
        for socket in [rep, req] {
            check("recv-timeout", nng_socket_set_ms(socket, name(NNG_OPT_RECVTIMEO), 5000))?;
        }
        check("tls+tcp:// listener", nng_listener_create(&mut listener, rep, url.as_ptr()))?;
        check("server TLS configuration", shim::tls_listener(listener, &both))?;
        check("listening", nng_listener_start(listener, 0))?;
        check("tls+tcp:// dialer", nng_dialer_create(&mut dialer, req, url.as_ptr()))?;
        check("client TLS configuration", shim::tls_dialer(dialer, &ca, &host))?;
        check("dialing", nng_dialer_start(dialer, 0))?;
        let mut msg: *mut nng_msg = null_mut();
        check("nng_msg_alloc", nng_msg_alloc(&mut msg, 0))?;
        check("nng_msg_append", nng_msg_append(msg, b"hello".as_ptr().cast(), 5))?;
        let sent = nng_sendmsg(req, msg, 0);
        if sent != 0 {
            nng_msg_free(msg);
        }
        check("sending the request", sent)?;
        let mut got: *mut nng_msg = null_mut();
        check("receiving the request", nng_recvmsg(rep, &mut got, 0))?;
        let sent = nng_sendmsg(rep, got, 0);
        if sent != 0 {
            nng_msg_free(got);
        }
        check("sending the reply", sent)?;
        let mut reply: *mut nng_msg = null_mut();
        check("receiving the reply", nng_recvmsg(req, &mut reply, 0))?;
        let body = std::slice::from_raw_parts(nng_msg_body(reply).cast::<u8>(), nng_msg_len(reply)).to_vec();
        nng_msg_free(reply);
        nng_socket_close(req);
        nng_socket_close(rep);
        if body != b"hello" {
            return Err(format!("the reply came back as {body:?}"));
        }
    }
    Ok(format!("one request and reply over {} with the server certificate verified", url.to_string_lossy()))
}
