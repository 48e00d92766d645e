//! The build needs no system library beyond glibc: NNG and mbedTLS are
//! compiled into the binary by nng-sys/ (docs/install.md), so a machine
//! without libmbedtls runs it. A return to the system's mbedTLS, or to a
//! shared NNG, fails here.

use std::process::Command;

#[test]
fn the_binary_links_no_mbedtls_or_nng_shared_library() {
    let binary = fastworker_tests::fastworker_bin();
    let output = Command::new("ldd").arg(&binary).output().expect("running ldd (glibc's)");
    assert!(output.status.success(), "ldd {}: {}", binary.display(), String::from_utf8_lossy(&output.stderr));
    let needed = String::from_utf8_lossy(&output.stdout);
    assert!(needed.contains("libc.so"), "ldd printed no libc, so it read nothing:\n{needed}");
    for library in ["libmbedtls", "libmbedx509", "libmbedcrypto", "libnng"] {
        assert!(!needed.contains(library), "{} links {library} dynamically:\n{needed}", binary.display());
    }
}
