//! A fake kubelet for the end-to-end tests: the Summary API
//! (`GET /stats/summary`) over HTTPS on 127.0.0.1, with a CA of its own (the
//! fake API server's certificate helper), a required bearer token (401
//! otherwise), the JSON document the test sets, and a count of the requests.
//! It runs on a small runtime of its own, so it keeps answering while a test
//! body blocks the runtime it runs on, and it listens on loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the server shares with its connections.
struct Shared {
    token: String,
    summary: Mutex<Value>,
    requests: AtomicU64,
    unauthorized: AtomicU64,
}

/// A running fake kubelet; it stops serving when dropped.
pub struct FakeKubelet {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca_pem: String,
    /// Runs the listener and the connections; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeKubelet {
    /// Starts serving on 127.0.0.1:<free port>, requiring
    /// `Authorization: Bearer <token>`; the summary is `{}` until
    /// [`FakeKubelet::set_summary`].
    pub fn start(token: &str) -> anyhow::Result<Self> {
        let tls = crate::kube_api::tls::generate()?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-kubelet")
            .enable_all()
            .build()
            .context("starting the fake kubelet's runtime")?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let shared = Arc::new(Shared {
            token: token.to_string(),
            summary: Mutex::new(Value::Object(Default::default())),
            requests: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
        });
        runtime.spawn(serve(
            listener,
            TlsAcceptor::from(tls.config),
            shared.clone(),
        ));
        Ok(Self {
            addr,
            shared,
            ca_pem: tls.ca_pem,
            runtime: Some(runtime),
        })
    }

    /// `https://127.0.0.1:PORT/stats/summary`.
    pub fn url(&self) -> String {
        format!("https://{}/stats/summary", self.addr)
    }

    /// The PEM certificate of the CA that signed the server's certificate
    /// (for `127.0.0.1` and `localhost`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Serves `summary` from now on.
    pub fn set_summary(&self, summary: Value) {
        *lock(&self.shared.summary) = summary;
    }

    /// Requests received so far (any path, authorized or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Requests answered 401 so far (no token, or another one).
    pub fn unauthorized(&self) -> u64 {
        self.shared.unauthorized.load(Ordering::Relaxed)
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        // A test drops the server inside its own async runtime, where a
        // blocking shutdown is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn lock(m: &Mutex<Value>) -> std::sync::MutexGuard<'_, Value> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the Summary API on `listener` until the runtime running it stops.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    crate::kube_api::tls::serve(listener, acceptor, move |req| handle(&shared, req)).await;
}

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, v);
    }
    response
}

/// Answers one request.
fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<String> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let expected = format!("Bearer {}", shared.token);
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        shared.unauthorized.fetch_add(1, Ordering::Relaxed);
        return answer(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "Unauthorized".into(),
        );
    }
    if req.method() != Method::GET {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "Method Not Allowed".into(),
        );
    }
    if req.uri().path() != "/stats/summary" {
        return answer(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found".into(),
        );
    }
    let body = lock(&shared.summary).to_string();
    answer(StatusCode::OK, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw HTTPS GET trusting the fake's CA: (status, body).
    async fn get(kubelet: &FakeKubelet, path: &str, token: Option<&str>) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut kubelet.ca_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(kubelet.addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    #[tokio::test]
    async fn serves_the_summary_to_the_token_only() {
        let kubelet = FakeKubelet::start("secret").unwrap();
        assert!(kubelet.url().starts_with("https://127.0.0.1:"));
        assert_eq!(
            get(&kubelet, "/stats/summary", Some("secret")).await,
            (200, "{}".into())
        );
        kubelet.set_summary(serde_json::json!({"pods": []}));
        let (status, body) = get(&kubelet, "/stats/summary", Some("secret")).await;
        assert_eq!((status, body.as_str()), (200, r#"{"pods":[]}"#));
        assert_eq!(get(&kubelet, "/stats/summary", Some("other")).await.0, 401);
        assert_eq!(get(&kubelet, "/stats/summary", None).await.0, 401);
        assert_eq!(get(&kubelet, "/metrics", Some("secret")).await.0, 404);
        assert_eq!(kubelet.requests(), 5);
        assert_eq!(kubelet.unauthorized(), 2);
    }
}
