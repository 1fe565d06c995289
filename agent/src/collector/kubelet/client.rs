//! The kubelet collector's HTTPS client: one `GET` per scrape over a fresh
//! HTTP/1.1 connection (rustls with the ring provider), a bearer token, the
//! kubelet's serving certificate checked against a CA bundle (or, when so
//! configured, not checked at all), and a bound on the size of the answer. The
//! caller bounds the time.

use std::net::Ipv6Addr;
use std::sync::Arc;

use hyper::body::Body as _;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Where the summary is fetched from, parsed once.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as configured (for messages).
    pub url: String,
    host: String,
    port: u16,
    authority: String,
    path: String,
    server_name: ServerName<'static>,
}

/// Puts brackets around a bare IPv6 host followed by a port
/// (`https://fd00::1:10250/x` → `https://[fd00::1]:10250/x`), as a URL built from
/// an IPv6 node address (`https://$(HOST_IP):10250/...`) comes out; anything else
/// is returned as it is.
fn bracket_bare_ipv6(url: &str) -> String {
    let Some(rest) = url.strip_prefix("https://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.starts_with('[') || authority.matches(':').count() < 2 {
        return url.to_string();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if host.parse::<Ipv6Addr>().is_ok() && port.parse::<u16>().is_ok() => {
            format!("https://[{host}]:{port}{tail}")
        }
        _ => url.to_string(),
    }
}

impl Target {
    /// Parses an `https://host[:port]/path` URL (port 443 when none is given).
    pub fn parse(url: &str) -> Result<Self, String> {
        let fixed = bracket_bare_ipv6(url);
        let uri: Uri = fixed
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "{url:?} must be an https:// URL (the kubelet serves TLS only)"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?} must not hold credentials"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| format!("{url:?}: {host:?} is not a host name or IP address"))?;
        Ok(Self {
            url: url.to_string(),
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            host,
            server_name,
        })
    }
}

/// Accepts any server certificate (`insecure_skip_verify`), while still checking
/// that the server holds the key of the certificate it shows.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration trusting the certificates of `ca_pem`, or any
/// certificate when `ca_pem` is `None`.
pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match ca_pem {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("a certificate of the bundle is not usable: {e}"))?;
            }
            if roots.is_empty() {
                return Err("holds no PEM certificate".into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Aborts a task when dropped (the connection's driver, whatever way the
/// request ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `GET`s the target with `Authorization: Bearer <token>`: the body of a 2xx
/// answer of at most `max_bytes`, or why not. Never logs or returns the token.
pub async fn get(
    target: &Target,
    tls: Arc<ClientConfig>,
    token: &str,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    // Small request, one answer: no need to wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        // Its errors show in the request's result.
        let _ = connection.await;
    }));
    let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token holds characters a header may not hold".to_string())?;
    authorization.set_sensitive(true);
    let request = Request::get(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(ACCEPT, "application/json")
        .header(
            USER_AGENT,
            concat!("infrawatch-agent/", env!("CARGO_PKG_VERSION")),
        )
        .header(AUTHORIZATION, authorization)
        .body(String::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the kubelet answered {status}"));
    }
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || format!("the answer is larger than {max_bytes} bytes");
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(response.into_body());
    let mut out = Vec::with_capacity(declared.map_or(64 * 1024, |n| n as usize));
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| format!("reading the answer failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max_bytes {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("https://127.0.0.1:10250/stats/summary").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 10250));
        assert_eq!(t.path, "/stats/summary");
        assert_eq!(t.authority, "127.0.0.1:10250");
        let t =
            Target::parse("https://node-1.example/stats/summary?only_cpu_and_memory=true").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("node-1.example", 443));
        assert_eq!(t.path, "/stats/summary?only_cpu_and_memory=true");
        // An IPv6 node address, with or without brackets.
        for url in [
            "https://[fd00::1]:10250/stats/summary",
            "https://fd00::1:10250/stats/summary",
        ] {
            let t = Target::parse(url).unwrap();
            assert_eq!((t.host.as_str(), t.port), ("fd00::1", 10250), "{url}");
            assert_eq!(t.authority, "[fd00::1]:10250");
            assert!(matches!(t.server_name, ServerName::IpAddress(_)));
        }
        for bad in [
            "",
            "http://127.0.0.1:10250/stats/summary",
            "https://",
            "https:///stats/summary",
            "https://user:pw@127.0.0.1:10250/stats/summary",
            "127.0.0.1:10250",
            "https://a b/stats",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trust() {
        assert!(tls_config(None).is_ok());
        assert!(tls_config(Some(b"")).is_err());
        assert!(tls_config(Some(b"not pem")).is_err());
        let ca = infrawatch_common::certs::DevCa::generate().unwrap();
        assert!(tls_config(Some(ca.cert_pem().as_bytes())).is_ok());
    }
}
