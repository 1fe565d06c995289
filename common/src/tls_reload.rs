//! TLS material that follows its files: certificate, key and CA are read again
//! when any of the three files changes (by modification time, size or inode), so
//! they can be rotated without a restart. New connections use the new material;
//! connections already established keep theirs. A change that does not load (a
//! half-written file, a key that does not match) is logged and the previous
//! material stays in use until the files are right.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::tls::{TlsError, TlsFiles, TlsMaterial};

/// What identifies a version of a file.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[derive(Debug)]
struct Current {
    stamps: [Stamp; 3],
    material: Arc<TlsMaterial>,
    /// Stamps of a version that failed to load, so it is reported once.
    rejected: Option<[Stamp; 3]>,
    version: u64,
}

/// TLS material reloaded from its files when they change.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl ReloadingTls {
    /// Loads the files; fails if they do not hold valid material now.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let stamps = Self::stamps_of(files);
        let material = TlsMaterial::load(files)?;
        Ok(Self {
            files: files.clone(),
            current: Mutex::new(Current {
                stamps,
                material: Arc::new(material),
                rejected: None,
                version: 1,
            }),
        })
    }

    fn stamps_of(files: &TlsFiles) -> [Stamp; 3] {
        [stamp(&files.ca), stamp(&files.cert), stamp(&files.key)]
    }

    /// The material to use for a new connection, and its version (which grows
    /// with every reload), reading the files again if they changed.
    pub fn current(&self) -> (Arc<TlsMaterial>, u64) {
        let stamps = Self::stamps_of(&self.files);
        let mut c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamps != c.stamps && c.rejected != Some(stamps) {
            match TlsMaterial::load(&self.files) {
                Ok(m) => {
                    c.material = Arc::new(m);
                    c.stamps = stamps;
                    c.rejected = None;
                    c.version += 1;
                    tracing::info!(
                        cert = %self.files.cert.display(),
                        ca = %self.files.ca.display(),
                        "TLS certificate, key or CA changed on disk; new connections use them."
                    );
                    metrics::counter!("infrawatch_tls_reloads_total", "result" => "ok")
                        .increment(1);
                }
                Err(e) => {
                    c.rejected = Some(stamps);
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "TLS files changed but do not load; keeping the previous ones."
                    );
                    metrics::counter!("infrawatch_tls_reloads_total", "result" => "error")
                        .increment(1);
                }
            }
        }
        (c.material.clone(), c.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::DevPki;

    #[test]
    fn follows_the_files_and_keeps_the_last_good_material() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new(dir.path());
        let ca = pki.ensure_ca().unwrap();
        pki.ensure_server(&ca, &[]).unwrap();
        let files = pki.tls_files("server");
        let tls = ReloadingTls::load(&files).unwrap();
        let (first, v1) = tls.current();
        assert_eq!(tls.current().1, v1, "unchanged files are not reloaded");

        // A new certificate and key from the same CA.
        let issued = ca.issue_server(&[]).unwrap();
        std::fs::write(&files.cert, &issued.cert_pem).unwrap();
        std::fs::write(&files.key, &issued.key_pem).unwrap();
        let (second, v2) = tls.current();
        assert!(v2 > v1);
        assert_ne!(first.cert_pem(), second.cert_pem());

        // A broken file keeps the previous material.
        std::fs::write(&files.key, "not a key").unwrap();
        let (kept, v3) = tls.current();
        assert_eq!(v3, v2);
        assert_eq!(kept.cert_pem(), second.cert_pem());
    }
}
