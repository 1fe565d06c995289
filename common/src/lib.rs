//! What the infrawatch agent, aggregator and CLI share.
//!
//! # Layout
//!
//! - [`ack`]: the protocol features an agent announces, and the books of
//!   two-level acknowledgements (in-flight window, received and durable marks).
//! - [`config`]: layered configuration loading (defaults, TOML file, `INFRAWATCH_*`
//!   environment, command-line overrides) with errors that name the field, and the
//!   `EX_USAGE` exit code for invalid configuration.
//! - [`tls`]: rustls-backed TLS settings for tonic built from PEM files, and the
//!   peer identity taken from a client certificate's subject alternative name.
//! - [`certs`]: a development certificate authority that issues server and agent
//!   certificates for local runs.
//! - [`role`]: client roles (agent, reader, admin) and the certificate URI that
//!   carries them.
//! - [`resource`]: resource ids and kinds, health names, metric names and the
//!   canonical form of series attributes.
//! - [`process`]: error printing and termination signals for the binaries.
//! - [`telemetry`]: tracing set-up for the binaries.
//! - [`time`]: wall-clock helpers in Unix milliseconds.
//! - [`trend`]: the least-squares slope of a series.

pub mod ack;
pub mod certs;
pub mod config;
pub mod preflight;
pub mod process;
pub mod resource;
pub mod role;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod tls_reload;
pub mod trend;

/// Installs ring as the process-wide rustls crypto provider.
///
/// Call first thing in every `main` and TLS test: if another provider were linked in,
/// rustls would otherwise refuse to pick one at the first handshake. Calling it twice
/// is harmless.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}
