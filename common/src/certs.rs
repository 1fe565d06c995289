//! A development certificate authority for local runs and tests.
//!
//! It issues a server certificate valid for `localhost`, `127.0.0.1` and `::1` (plus
//! any extra names) and client certificates that name their role and identity (a
//! `spiffe://infrawatch/<role>/<identity>` URI and a DNS subject alternative name). Production deployments bring their own PEM files instead.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::role::{DEFAULT_TRUST_DOMAIN, Role, spiffe_uri};

/// Errors creating or storing development certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Certificate generation failed (e.g. a name that is not a valid DNS name).
    #[error("cannot generate certificate")]
    Generate(#[from] rcgen::Error),
    /// A client identity that cannot name a certificate file and a DNS SAN.
    #[error(
        "{0:?} is not a valid identity: use 1 to 63 lowercase letters, digits, '-' and '.', not \"ca\" or \"server\""
    )]
    BadIdentity(String),
    /// Writing or reading a PEM file failed.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A CA that can sign server and agent certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

const CA_NAME: &str = "infrawatch development CA";

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl DevCa {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// A CA previously written by [`DevCa::generate`], from its PEM files.
    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(&key_pem)?;
        Ok(Self {
            cert_pem,
            key_pem,
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `localhost`, `127.0.0.1`, `::1` and `extra_names`.
    pub fn issue_server(&self, extra_names: &[String]) -> Result<IssuedCert, CertError> {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.extend(extra_names.iter().cloned());
        self.issue(
            names,
            "infrawatch aggregator",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate for `identity` in `role`: the URI SAN
    /// `spiffe://infrawatch/<role>/<identity>` (see [`crate::role`]) and the DNS
    /// SAN `identity`.
    pub fn issue_client(&self, identity: &str, role: Role) -> Result<IssuedCert, CertError> {
        self.issue_client_in(DEFAULT_TRUST_DOMAIN, identity, role)
    }

    /// Like [`DevCa::issue_client`], with the role URI in `trust_domain`.
    pub fn issue_client_in(
        &self,
        trust_domain: &str,
        identity: &str,
        role: Role,
    ) -> Result<IssuedCert, CertError> {
        self.issue(
            vec![
                spiffe_uri(trust_domain, role, identity),
                identity.to_string(),
            ],
            identity,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        names: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<IssuedCert, CertError> {
        let mut params = CertificateParams::default();
        for name in names {
            params
                .subject_alt_names
                .push(if name.starts_with("spiffe://") {
                    SanType::URI(name.try_into()?)
                } else if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName(name.try_into()?)
                });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// File names of a development PKI directory.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The directory.
    pub dir: PathBuf,
}

impl DevPki {
    /// A PKI rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// CA key (mode 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    /// Certificate of the end entity `name` ("server" or a client identity).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    /// Key of the end entity `name`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    /// The CA, certificate and key of the end entity `name`, as one endpoint's
    /// TLS files.
    pub fn tls_files(&self, name: &str) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            ca: self.ca_cert(),
            cert: self.cert(name),
            key: self.key(name),
        }
    }

    /// Loads the CA in `dir`, creating it first if it does not exist.
    pub fn ensure_ca(&self) -> Result<DevCa, CertError> {
        if self.ca_cert().is_file() && self.ca_key().is_file() {
            return DevCa::from_pem(read(&self.ca_cert())?, read(&self.ca_key())?);
        }
        fs::create_dir_all(&self.dir).map_err(|source| CertError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let ca = DevCa::generate()?;
        write(&self.ca_cert(), ca.cert_pem(), false)?;
        write(&self.ca_key(), &ca.key_pem, true)?;
        Ok(ca)
    }

    /// Writes a server certificate unless one exists.
    pub fn ensure_server(&self, ca: &DevCa, extra_names: &[String]) -> Result<(), CertError> {
        if self.cert("server").is_file() && self.key("server").is_file() {
            return Ok(());
        }
        let issued = ca.issue_server(extra_names)?;
        self.store("server", &issued)
    }

    /// Writes a client certificate for `identity` in `role` unless one with that
    /// role exists (a certificate of another role, or of none, is replaced).
    pub fn ensure_client(&self, ca: &DevCa, identity: &str, role: Role) -> Result<(), CertError> {
        if !is_valid_identity(identity) {
            return Err(CertError::BadIdentity(identity.to_string()));
        }
        if self.key(identity).is_file() && self.role_of(identity) == Some(role) {
            return Ok(());
        }
        let issued = ca.issue_client(identity, role)?;
        self.store(identity, &issued)
    }

    /// The role named by the stored certificate of `identity`, if it has one.
    pub fn role_of(&self, identity: &str) -> Option<Role> {
        let pem = fs::read(self.cert(identity)).ok()?;
        let der = rustls_pemfile::certs(&mut pem.as_slice()).next()?.ok()?;
        Some(crate::tls::peer_from_der(der.as_ref()).ok()?.role?.role)
    }

    fn store(&self, name: &str, issued: &IssuedCert) -> Result<(), CertError> {
        write(&self.cert(name), &issued.cert_pem, false)?;
        write(&self.key(name), &issued.key_pem, true)
    }
}

/// An identity usable as a file name and a DNS subject alternative name.
pub fn is_valid_identity(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && !matches!(name, "ca" | "server")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && !name.contains("..")
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloaded_ca_signs_verifiable_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new(dir.path());
        let ca = pki.ensure_ca().unwrap();
        pki.ensure_client(&ca, "agent-a", Role::Agent).unwrap();
        // A second load must reuse the same CA, not replace it.
        let again = pki.ensure_ca().unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        pki.ensure_client(&again, "agent-b", Role::Agent).unwrap();

        let ca_der = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca_der.as_ref()).unwrap();
        for name in ["agent-a", "agent-b"] {
            let pem = fs::read(pki.cert(name)).unwrap();
            let der = rustls_pemfile::certs(&mut pem.as_slice())
                .next()
                .unwrap()
                .unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
            cert.verify_signature(Some(ca_cert.public_key())).unwrap();
            assert_eq!(cert.issuer(), ca_cert.subject());
        }
        for bad in ["ca", "server", "../x", "Bad Name", "", "-a"] {
            assert!(
                matches!(
                    pki.ensure_client(&again, bad, Role::Agent),
                    Err(CertError::BadIdentity(_))
                ),
                "{bad:?}"
            );
        }
        let mode = fs::metadata(pki.ca_key()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
