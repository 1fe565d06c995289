//! TLS settings for the gRPC transport, built from PEM files, and the identity of a
//! peer taken from its certificate.
//!
//! Both sides use rustls with the ring provider. The aggregator requires a client
//! certificate signed by the configured CA; an agent's identity is the first URI or
//! DNS subject alternative name of that certificate, never a field it sends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::role::{RoleUri, parse_spiffe_uri};

/// Errors reading or interpreting TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no item of the expected type.
    #[error("{path} holds no {what} in PEM format")]
    Empty {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// A certificate could not be parsed as X.509.
    #[error("certificate is not valid X.509: {0}")]
    BadCertificate(String),
    /// The certificate has no name usable as an identity.
    #[error("certificate has no URI or DNS subject alternative name")]
    NoIdentity,
    /// The key does not belong to the certificate, or rustls refused the material.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The certificate file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// Paths to the PEM files of one TLS endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA bundle that signs the peer's certificate.
    pub ca: PathBuf,
    /// This endpoint's certificate chain.
    pub cert: PathBuf,
    /// This endpoint's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// PEM contents of one TLS endpoint, checked to hold what they should.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl TlsMaterial {
    /// Reads and checks the three files.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca_pem = read(&files.ca)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        require_certificate(&files.ca, &ca_pem)?;
        require_certificate(&files.cert, &cert_pem)?;
        let Some(key) = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .ok()
            .flatten()
        else {
            return Err(TlsError::Empty {
                path: files.key.clone(),
                what: "private key",
            });
        };
        // The key must belong to the certificate: while a rotation writes one file
        // and then the other, the pair is inconsistent for a moment.
        let chain = certs(&cert_pem);
        rustls::sign::CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            TlsError::Mismatch {
                path: files.cert.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    /// The certificate chain, PEM.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// A rustls server configuration: our certificate, a client certificate
    /// signed by the CA required, HTTP/2 by ALPN.
    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let bad = |reason: String| TlsError::Mismatch {
            path: PathBuf::from("<server TLS material>"),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&self.ca_pem) {
            roots.add(ca).map_err(|e| bad(e.to_string()))?;
        }
        let provider = Arc::new(provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_slice())
            .ok()
            .flatten()
            .ok_or_else(|| bad("no private key".into()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert_pem), key)
            .map_err(|e| bad(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Server side: present our certificate and require a client certificate
    /// signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// Client side: trust the CA, present our certificate, and expect the server to
    /// be named `server_name`.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name.to_string())
    }

    /// Identity of our own certificate (first URI or DNS SAN).
    pub fn own_identity(&self) -> Result<String, TlsError> {
        let der = rustls_pemfile::certs(&mut self.cert_pem.as_slice())
            .next()
            .and_then(Result::ok)
            .ok_or(TlsError::NoIdentity)?;
        identity_from_der(der.as_ref())
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut &pem[..])
        .filter_map(Result::ok)
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn require_certificate(path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let mut reader = pem;
    match rustls_pemfile::certs(&mut reader).next() {
        Some(Ok(_)) => Ok(()),
        _ => Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        }),
    }
}

/// Longest identity accepted from a certificate.
pub const MAX_IDENTITY_LEN: usize = 253;

/// Who a client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The client's name: the name of its role URI, else its first URI SAN, else
    /// its first DNS SAN.
    pub name: String,
    /// Its role URI (`spiffe://<trust-domain>/<role>/<name>`), when it has one.
    pub role: Option<RoleUri>,
}

/// The identity in a DER certificate (see [`PeerIdentity`]).
pub fn peer_from_der(der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?
        .ok_or(TlsError::NoIdentity)?;
    let names = &san.value.general_names;
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let dns = names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    let role = uris.iter().find_map(|u| parse_spiffe_uri(u));
    let name = match &role {
        Some(r) => r.name.as_str(),
        None => uris.first().copied().or(dns).ok_or(TlsError::NoIdentity)?,
    };
    if name.is_empty() || name.len() > MAX_IDENTITY_LEN || name.chars().any(char::is_control) {
        return Err(TlsError::NoIdentity);
    }
    Ok(PeerIdentity {
        name: name.to_string(),
        role,
    })
}

/// The identity name in a DER certificate (see [`PeerIdentity::name`]).
pub fn identity_from_der(der: &[u8]) -> Result<String, TlsError> {
    peer_from_der(der).map(|p| p.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::DevCa;
    use crate::role::Role;

    #[test]
    fn identity_is_the_agent_san() {
        let ca = DevCa::generate().unwrap();
        let agent = ca.issue_client("agent-node-1", Role::Agent).unwrap();
        let der = rustls_pemfile::certs(&mut agent.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let peer = peer_from_der(der.as_ref()).unwrap();
        assert_eq!(peer.name, "agent-node-1");
        let role = peer.role.unwrap();
        assert_eq!(
            (role.trust_domain.as_str(), role.role),
            ("infrawatch", Role::Agent)
        );
        assert_eq!(identity_from_der(der.as_ref()).unwrap(), "agent-node-1");
    }

    #[test]
    fn load_reports_the_file_without_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate().unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&files.ca, ca.cert_pem()).unwrap();
        std::fs::write(&files.cert, ca.cert_pem()).unwrap();
        std::fs::write(&files.key, "not a key").unwrap();
        let err = TlsMaterial::load(&files).unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        let missing = TlsFiles {
            ca: dir.path().join("absent.pem"),
            ..files
        };
        assert!(matches!(
            TlsMaterial::load(&missing),
            Err(TlsError::Read { .. })
        ));
    }
}
