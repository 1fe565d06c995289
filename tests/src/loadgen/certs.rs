//! One client certificate per simulated agent, from the development CA, cached in
//! a directory so that a rerun reuses them.
//!
//! The directory is a [`DevPki`]: `ca.pem`, `server.pem` (for the aggregator under
//! test) and `<identity>.pem`/`<identity>-key.pem` per agent. Only the missing
//! certificates are issued, on every core at once; an ECDSA P-256 certificate
//! costs well under a millisecond, so 10,000 agents take seconds the first time
//! and nothing after.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use infrawatch_common::certs::DevPki;
use infrawatch_common::role::Role;

/// Identity of agent `index` with `prefix` (e.g. `loadgen-00042`).
pub fn identity(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:05}")
}

/// Identity of the client that watches events.
pub fn watcher_identity(prefix: &str) -> String {
    format!("{prefix}-watch")
}

/// The role of a load generator identity: the watcher reads events, every
/// other identity is an agent.
pub fn role(identity: &str) -> Role {
    if identity.ends_with("-watch") {
        Role::Reader
    } else {
        Role::Agent
    }
}

/// Creates the CA and server certificate if missing, and a client certificate
/// for every identity in `identities` that has none of its [`role`]; returns
/// how many it issued.
pub fn ensure(dir: &Path, identities: &[String]) -> anyhow::Result<usize> {
    let pki = DevPki::new(dir);
    let ca = pki
        .ensure_ca()
        .with_context(|| format!("creating the CA in {}", dir.display()))?;
    pki.ensure_server(&ca, &[])?;
    let missing: Vec<&String> = identities
        .iter()
        .filter(|id| !(pki.key(id).is_file() && pki.role_of(id) == Some(role(id))))
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(missing.len());
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    // Each thread loads the CA from its files: no sharing of the key.
                    let ca = pki.ensure_ca()?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = missing.get(i) else {
                            return Ok(());
                        };
                        pki.ensure_client(&ca, id, role(id))
                            .with_context(|| format!("issuing a certificate for {id}"))?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a certificate thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(missing.len())
}

/// PEM files of one client.
#[derive(Debug, Clone)]
pub struct ClientPem {
    /// Certificate.
    pub cert: Vec<u8>,
    /// Private key.
    pub key: Vec<u8>,
}

/// Reads the certificate and key of `identity` from `dir`.
pub fn load(dir: &Path, identity: &str) -> anyhow::Result<ClientPem> {
    let pki = DevPki::new(dir);
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));
    Ok(ClientPem {
        cert: read(pki.cert(identity))?,
        key: read(pki.key(identity))?,
    })
}

/// The CA certificate of `dir`.
pub fn ca(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let p = DevPki::new(dir).ca_cert();
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_issued_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..6).map(|i| identity("lg", i)).collect();
        assert_eq!(ensure(dir.path(), &ids).unwrap(), 6);
        let before = load(dir.path(), &ids[3]).unwrap();
        assert_eq!(
            ensure(dir.path(), &ids).unwrap(),
            0,
            "a rerun issues nothing"
        );
        assert_eq!(load(dir.path(), &ids[3]).unwrap().cert, before.cert);
        let more: Vec<String> = (0..8).map(|i| identity("lg", i)).collect();
        assert_eq!(ensure(dir.path(), &more).unwrap(), 2);
        let files = DevPki::new(dir.path()).tls_files(&ids[0]);
        let material = infrawatch_common::tls::TlsMaterial::load(&files).unwrap();
        assert_eq!(material.own_identity().unwrap(), "lg-00000");
    }
}
