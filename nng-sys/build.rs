//! Builds NNG 1.11 with its TLS transport, and mbedTLS 2.28 under it, with the
//! `cc` crate: a machine needs the Rust toolchain and a C compiler, no cmake and
//! no system mbedTLS.
//!
//! The C sources are never copied into this repository: they are the ones the
//! registry crates ship (NNG in crates.io's `nng-sys` 0.3.0, mbedTLS in
//! `mbedtls-sys-auto` 2.28.15), named by `sources/Cargo.toml` and located with
//! `cargo metadata`, which downloads them like any dependency. Their own build
//! scripts (cmake, bindgen with libclang) never run. The Rust bindings are the
//! ones `nng-sys` 0.3.0 pregenerated for NNG 1.11.
//!
//! NNG's file list and defines are those its own CMake build chooses on Linux
//! with glibc (`NNG_TESTS=OFF`, `NNG_ENABLE_TLS=ON`, `NNG_ENABLE_STATS=ON`),
//! with the random source fixed to getrandom(2) (glibc 2.25 and later).

use std::path::{Path, PathBuf};
use std::process::Command;

/// NNG's library sources, relative to its source root (the CMake build's list
/// for Linux: epoll poller, getrandom, mbedTLS engine, every protocol and
/// transport).
const NNG_SOURCES: &[&str] = &[
    "src/nng.c",
    "src/nng_legacy.c",
    "src/core/aio.c",
    "src/core/device.c",
    "src/core/dialer.c",
    "src/core/sockfd.c",
    "src/core/file.c",
    "src/core/idhash.c",
    "src/core/init.c",
    "src/core/list.c",
    "src/core/listener.c",
    "src/core/lmq.c",
    "src/core/log.c",
    "src/core/message.c",
    "src/core/msgqueue.c",
    "src/core/options.c",
    "src/core/pollable.c",
    "src/core/panic.c",
    "src/core/pipe.c",
    "src/core/reap.c",
    "src/core/sockaddr.c",
    "src/core/socket.c",
    "src/core/stats.c",
    "src/core/stream.c",
    "src/core/strs.c",
    "src/core/taskq.c",
    "src/core/tcp.c",
    "src/core/thread.c",
    "src/core/url.c",
    "src/platform/posix/posix_alloc.c",
    "src/platform/posix/posix_atomic.c",
    "src/platform/posix/posix_clock.c",
    "src/platform/posix/posix_debug.c",
    "src/platform/posix/posix_file.c",
    "src/platform/posix/posix_ipcconn.c",
    "src/platform/posix/posix_ipcdial.c",
    "src/platform/posix/posix_ipclisten.c",
    "src/platform/posix/posix_peerid.c",
    "src/platform/posix/posix_pipe.c",
    // posix_resolv_gai.c: compiled through csrc/resolv.c (see there).
    "src/platform/posix/posix_sockaddr.c",
    "src/platform/posix/posix_socketpair.c",
    "src/platform/posix/posix_sockfd.c",
    "src/platform/posix/posix_tcpconn.c",
    "src/platform/posix/posix_tcpdial.c",
    "src/platform/posix/posix_tcplisten.c",
    "src/platform/posix/posix_thread.c",
    "src/platform/posix/posix_udp.c",
    "src/platform/posix/posix_pollq_epoll.c",
    "src/platform/posix/posix_rand_getrandom.c",
    "src/sp/protocol/bus0/bus.c",
    "src/sp/protocol/pair0/pair.c",
    "src/sp/protocol/pair1/pair.c",
    "src/sp/protocol/pair1/pair1_poly.c",
    "src/sp/protocol/pipeline0/push.c",
    "src/sp/protocol/pipeline0/pull.c",
    "src/sp/protocol/pubsub0/pub.c",
    "src/sp/protocol/pubsub0/sub.c",
    "src/sp/protocol/pubsub0/xsub.c",
    "src/sp/protocol/reqrep0/req.c",
    "src/sp/protocol/reqrep0/xreq.c",
    "src/sp/protocol/reqrep0/rep.c",
    "src/sp/protocol/reqrep0/xrep.c",
    "src/sp/protocol/survey0/survey.c",
    "src/sp/protocol/survey0/xsurvey.c",
    "src/sp/protocol/survey0/respond.c",
    "src/sp/protocol/survey0/xrespond.c",
    "src/sp/transport/socket/sockfd.c",
    "src/sp/transport/inproc/inproc.c",
    "src/sp/transport/ipc/ipc.c",
    "src/sp/transport/tcp/tcp.c",
    "src/sp/transport/tls/tls.c",
    "src/sp/transport/ws/websocket.c",
    "src/sp/protocol.c",
    "src/sp/transport.c",
    "src/supplemental/base64/base64.c",
    "src/supplemental/http/http_public.c",
    "src/supplemental/http/http_client.c",
    "src/supplemental/http/http_chunk.c",
    "src/supplemental/http/http_conn.c",
    "src/supplemental/http/http_msg.c",
    "src/supplemental/http/http_schemes.c",
    "src/supplemental/http/http_server.c",
    "src/supplemental/sha1/sha1.c",
    "src/supplemental/tls/mbedtls/tls.c",
    "src/supplemental/tls/tls_common.c",
    "src/supplemental/util/idhash.c",
    "src/supplemental/util/options.c",
    "src/supplemental/websocket/websocket.c",
];

/// The defines NNG's CMake build passes on Linux with glibc.
const NNG_DEFINES: &[(&str, Option<&str>)] = &[
    ("NNG_ENABLE_IPV6", None),
    ("NNG_ENABLE_STATS", None),
    ("NNG_HAVE_ABSTRACT_SOCKETS", None),
    ("NNG_HAVE_BACKTRACE", Some("1")),
    ("NNG_HAVE_BUS0", None),
    ("NNG_HAVE_CLOCK_GETTIME", None),
    ("NNG_HAVE_CLOCK_GETTIME_LIBC", Some("1")),
    ("NNG_HAVE_EPOLL", Some("1")),
    ("NNG_HAVE_EPOLL_CREATE1", Some("1")),
    ("NNG_HAVE_EVENTFD", Some("1")),
    ("NNG_HAVE_FLOCK", Some("1")),
    ("NNG_HAVE_GETRANDOM", Some("1")),
    ("NNG_HAVE_INET6", Some("1")),
    ("NNG_HAVE_LOCALTIME_R", Some("1")),
    ("NNG_HAVE_LOCKF", Some("1")),
    ("NNG_HAVE_MSG_CONTROL", Some("1")),
    ("NNG_HAVE_PAIR0", None),
    ("NNG_HAVE_PAIR1", None),
    ("NNG_HAVE_PTHREAD_ATFORK_PTHREAD", Some("1")),
    ("NNG_HAVE_PTHREAD_SETNAME_NP", Some("1")),
    ("NNG_HAVE_PUB0", None),
    ("NNG_HAVE_PULL0", None),
    ("NNG_HAVE_PUSH0", None),
    ("NNG_HAVE_REP0", None),
    ("NNG_HAVE_REQ0", None),
    ("NNG_HAVE_RESPONDENT0", None),
    ("NNG_HAVE_SEMAPHORE_PTHREAD", Some("1")),
    ("NNG_HAVE_SOCKETPAIR", Some("1")),
    ("NNG_HAVE_SOPEERCRED", Some("1")),
    ("NNG_HAVE_STDATOMIC", Some("1")),
    ("NNG_HAVE_STRCASECMP", Some("1")),
    ("NNG_HAVE_STRNCASECMP", Some("1")),
    ("NNG_HAVE_STRNLEN", Some("1")),
    ("NNG_HAVE_SUB0", None),
    ("NNG_HAVE_SURVEYOR0", None),
    ("NNG_HAVE_UNIX_SOCKETS", Some("1")),
    ("NNG_HIDDEN_VISIBILITY", None),
    ("NNG_MAX_EXPIRE_THREADS", Some("8")),
    ("NNG_MAX_POLLER_THREADS", Some("8")),
    ("NNG_MAX_TASKQ_THREADS", Some("16")),
    ("NNG_PLATFORM_LINUX", None),
    ("NNG_PLATFORM_POSIX", None),
    ("NNG_PRIVATE", None),
    ("NNG_RESOLV_CONCURRENCY", Some("4")),
    ("NNG_STATIC_LIB", None),
    ("NNG_SUPP_HTTP", None),
    ("NNG_SUPP_TLS", None),
    ("NNG_SUPP_TLS_PSK", None),
    ("NNG_TLS_ENGINE_FINI", Some("nng_tls_engine_fini_mbed")),
    ("NNG_TLS_ENGINE_INIT", Some("nng_tls_engine_init_mbed")),
    ("NNG_TLS_ENGINE_MBEDTLS", None),
    ("NNG_TRANSPORT_FDC", None),
    ("NNG_TRANSPORT_INPROC", None),
    ("NNG_TRANSPORT_IPC", None),
    ("NNG_TRANSPORT_TCP", None),
    ("NNG_TRANSPORT_TLS", None),
    ("NNG_TRANSPORT_WS", None),
    ("NNG_TRANSPORT_WSS", None),
    ("NNG_USE_EVENTFD", None),
    ("_GNU_SOURCE", None),
    ("_POSIX_PTHREAD_SEMANTICS", None),
    ("_REENTRANT", None),
    ("_THREAD_SAFE", None),
];

/// mbedTLS's stock configuration, plus pthread locking as distributions build
/// it, plus the pre-2.28.10 rule for clients: a peer is authenticated by the
/// cluster's CA (`--tls-ca`), not by a host name, as fastworker's TLS always
/// did (NNG sets no host name on a configuration it is given, and mbedTLS
/// 2.28.10 made that a handshake failure).
const MBEDTLS_DEFINES: &[&str] = &[
    "MBEDTLS_THREADING_C",
    "MBEDTLS_THREADING_PTHREAD",
    "MBEDTLS_SSL_CLI_ALLOW_WEAK_CERTIFICATE_VERIFICATION_WITHOUT_HOSTNAME",
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let sources_manifest = manifest_dir.join("sources").join("Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/resolv.c");
    println!("cargo:rerun-if-changed={}", sources_manifest.display());
    println!("cargo:rerun-if-changed=sources/Cargo.lock");

    let nng_crate = crate_dir(&sources_manifest, "nng-sys");
    let mbedtls_crate = crate_dir(&sources_manifest, "mbedtls-sys-auto");
    let nng_root = nng_crate.join("nng");
    let mbedtls_root = mbedtls_crate.join("vendor");
    let mbedtls_include = mbedtls_root.join("include");

    // mbedTLS: every file of its library (its own Makefile's rule).
    let mut mbedtls = cc::Build::new();
    mbedtls.include(&mbedtls_include).include(mbedtls_root.join("library")).warnings(false).cargo_metadata(false);
    for define in MBEDTLS_DEFINES {
        mbedtls.define(define, None);
    }
    let mut library_files: Vec<PathBuf> = std::fs::read_dir(mbedtls_root.join("library"))
        .unwrap_or_else(|e| panic!("mbedTLS sources at {}: {e}", mbedtls_root.display()))
        .map(|entry| entry.expect("listing mbedTLS's library directory").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    library_files.sort();
    mbedtls.files(&library_files).compile("fastworker_mbedtls");

    let mut nng = cc::Build::new();
    nng.include(nng_root.join("src"))
        .include(nng_root.join("include"))
        .include(&mbedtls_include)
        .flag_if_supported("-std=gnu99")
        .warnings(false)
        .cargo_metadata(false);
    for define in MBEDTLS_DEFINES {
        nng.define(define, None);
    }
    for (name, value) in NNG_DEFINES {
        nng.define(name, *value);
    }
    for file in NNG_SOURCES {
        nng.file(nng_root.join(file));
    }
    nng.file(manifest_dir.join("csrc").join("resolv.c"));
    nng.compile("nng");

    // NNG calls mbedTLS, so NNG comes first on the link line.
    println!("cargo:rustc-link-search=native={}", out_dir.display());
    println!("cargo:rustc-link-lib=static=nng");
    println!("cargo:rustc-link-lib=static=fastworker_mbedtls");
    println!("cargo:rustc-link-lib=pthread");
    println!("cargo:include={}", nng_root.join("include").display());

    write_bindings(&nng_crate, &out_dir);
    println!("cargo::rustc-check-cfg=cfg(try_from)");
    println!("cargo:rustc-cfg=try_from");
}

/// The Rust side: nng-sys 0.3.0's pregenerated NNG 1.11 bindings and its
/// library file, whose inner attributes move to this crate's src/lib.rs so it
/// can be included.
fn write_bindings(nng_crate: &Path, out_dir: &Path) {
    // The `nng` crate matches these enums exhaustively, as nng-sys 1.4
    // generated them: without `#[non_exhaustive]`, and without the address
    // family NNG 1.10 added (abstract sockets, which NNG reports to the `nng`
    // crate as an unknown family: `SocketAddr::Unspecified`).
    let bindings = nng_crate.join("src").join("bindings.rs");
    let text = std::fs::read_to_string(&bindings).unwrap_or_else(|e| panic!("reading {}: {e}", bindings.display()));
    let text: String = text
        .lines()
        .filter(|line| {
            let line = line.trim();
            line != "#[non_exhaustive]" && line != "NNG_AF_ABSTRACT = 6,"
        })
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(out_dir.join("bindings.rs"), text).expect("writing bindings.rs");
    let lib = nng_crate.join("src").join("lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap_or_else(|e| panic!("reading {}: {e}", lib.display()));
    let body = match text.find("*/") {
        Some(end) if text.trim_start().starts_with("/*!") => &text[end + 2..],
        _ => text.as_str(),
    };
    let body: String =
        body.lines().filter(|line| !line.trim_start().starts_with("#![")).map(|line| format!("{line}\n")).collect();
    std::fs::write(out_dir.join("nng_sys_lib.rs"), body).expect("writing nng_sys_lib.rs");
}

/// Where cargo unpacked the registry crate `name` named in `manifest`
/// (downloading it first when it is not yet in cargo's cache).
fn crate_dir(manifest: &Path, name: &str) -> PathBuf {
    let output = Command::new(env("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
        .arg(manifest)
        .args(["--filter-platform", &env("TARGET")])
        .output()
        .unwrap_or_else(|e| panic!("running cargo metadata: {e}"));
    if !output.status.success() {
        panic!("cargo metadata for {} failed: {}", manifest.display(), String::from_utf8_lossy(&output.stderr));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata printed JSON");
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{name} missing from cargo metadata of {}", manifest.display()));
    let manifest_path = package["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest_path).parent().expect("crate directory").to_path_buf()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}
