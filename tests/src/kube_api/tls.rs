//! The fake API server's certificates (a CA of its own, which the kubeconfig
//! embeds, and a server certificate for `127.0.0.1` and `localhost`) and its
//! HTTPS accept loop. The fake kubelet ([`crate::fake_kubelet`]) serves with
//! the same kind of pair and the same loop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use infrawatch_common::certs::DevCa;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The server's TLS configuration and the CA that clients trust.
pub(crate) struct ServerTls {
    /// The CA certificate, PEM.
    pub(crate) ca_pem: String,
    pub(crate) config: Arc<ServerConfig>,
}

/// A fresh CA and server certificate.
pub(crate) fn generate() -> anyhow::Result<ServerTls> {
    // The process-wide default may be set already; either way it is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = DevCa::generate()?;
    let issued = ca.issue_server(&[])?;
    let certs = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the generated server certificate")?;
    let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())?
        .context("the generated server key is missing")?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    // Watches are chunked HTTP/1.1 responses, as the real API server sends
    // them to clients that do not speak HTTP/2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls {
        ca_pem: ca.cert_pem().to_string(),
        config: Arc::new(config),
    })
}

/// Serves HTTP/1.1 over TLS on `listener`, answering each request with
/// `handle`, until the runtime running it stops.
pub(crate) async fn serve<H, B>(listener: TcpListener, acceptor: TlsAcceptor, handle: H)
where
    H: Fn(&Request<Incoming>) -> Response<B> + Clone + Send + Sync + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors, say: try again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // As Go's net/http (the API server's) does: a watch writes one small
        // chunk per event, which Nagle's algorithm would hold back behind the
        // client's delayed acknowledgement.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let response = handle(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            // A connection error is the client's business.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
