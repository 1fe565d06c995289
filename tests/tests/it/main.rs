//! End-to-end tests: the real binaries, real databases, loopback only.

// Test code: a failed unwrap is a failed test with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod bad_input;
mod buffer;
mod collectors;
mod events;
mod failover;
mod faults;
mod health;
mod host_parts;
mod hostile;
mod icmp;
mod kubelet;
mod kubernetes;
mod manifests;
mod node_exporter;
mod outage;
mod partition;
mod pipeline;
mod probes;
mod replicas;
mod restart;
mod rotation;
mod rules;
mod up;

/// Every test installs the ring provider first (idempotent).
fn init() {
    infrawatch_common::install_crypto_provider();
}
