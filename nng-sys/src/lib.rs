//! NNG 1.11's C API for the `nng` crate, in place of crates.io's nng-sys 1.4
//! (see build.rs for how NNG and mbedTLS are compiled and where their sources
//! come from).

#![cfg_attr(not(feature = "std"), no_std)]
#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/nng_sys_lib.rs"));
