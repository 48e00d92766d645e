//! NNG is built (by `nng-sys`, feature `nng-tls`) with its TLS transport,
//! which calls mbedTLS: link the system's mbedTLS libraries
//! (`apt-get install libmbedtls-dev`).

fn main() {
    for library in ["mbedtls", "mbedx509", "mbedcrypto"] {
        println!("cargo:rustc-link-lib={library}");
    }
}
