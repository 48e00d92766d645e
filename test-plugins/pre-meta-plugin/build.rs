//! abi_stable records the package that defines a type in its layout and the
//! host compares it: the root module type must read as the SDK's own.
fn main() {
    println!("cargo:rustc-env=CARGO_PKG_NAME=fastworker-plugin-sdk");
}
