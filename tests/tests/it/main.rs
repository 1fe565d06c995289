//! End-to-end tests: the real binaries, real databases, loopback only.

mod auth;
mod bad_input;
mod pipeline;
mod restart;
mod up;

/// Every test installs the ring provider first (idempotent).
fn init() {
    infrawatch_common::install_crypto_provider();
}
