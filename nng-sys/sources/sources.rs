//! Never compiled: this package only names the C sources nng-sys/build.rs compiles.
