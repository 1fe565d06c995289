//! Per-pod utilization from the node's kubelet: every interval the collector
//! reads the Summary API (`GET https://<node>:10250/stats/summary`) with the
//! pod's service-account token and reports one resource per pod and per
//! PersistentVolumeClaim mounted on the node, under the host
//! (`host/<machine-id>/pod/<namespace>/<pod>`,
//! `host/<machine-id>/volume/<namespace>/<claim>`), with the figures the
//! OpenTelemetry kubeletstats receiver reports (see [`report`]).
//!
//! The token file is read at every scrape (projected tokens are rotated), and so
//! is the CA file (re-parsed only when it changed). An unreachable kubelet, a
//! refused token, an answer over the size bound or past the timeout, or a body
//! that is not a summary fails the run: the collector shows in the agent's
//! `agent.failing_collectors` until a scrape succeeds again, and the agent and
//! its other collectors carry on.

pub mod client;
pub mod report;
pub mod summary;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use serde::{Deserialize, Serialize};

use super::{CollectError, Collection, Collector};
use crate::config::CollectorSchedule;

/// Where a pod finds its service-account token.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where a pod finds its cluster's CA.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The kubelet of the machine itself (an agent in a pod sets the node's address).
pub const DEFAULT_URL: &str = "https://127.0.0.1:10250/stats/summary";

/// Largest Summary API answer read, by default (a node with hundreds of pods
/// answers a few MiB).
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 32 << 20;
/// Largest value `max_response_bytes` may take.
const MAX_RESPONSE_BYTES_LIMIT: u64 = 256 << 20;
/// Largest value `max_pods` and `max_volumes` may take.
const MAX_RESOURCES_LIMIT: usize = 10_000;

/// `[collectors.kubelet]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeletConfig {
    /// Whether the collector runs at all (off unless configured: it needs a
    /// kubelet, a token and RBAC for `nodes/stats`).
    pub enabled: bool,
    /// Time between scrapes.
    pub interval_ms: u64,
    /// A run still going after this long is abandoned and counted as failed.
    pub deadline_ms: u64,
    /// The Summary API URL, `https://` only.
    pub url: String,
    /// The bearer token, read at every scrape.
    pub token_file: PathBuf,
    /// CA bundle (PEM) that signs the kubelet's serving certificate.
    pub ca_file: PathBuf,
    /// Accept any serving certificate (kubelets with self-signed ones): the token
    /// is then sent to whoever answers at `url`.
    pub insecure_skip_verify: bool,
    /// Time one scrape may take: connection, TLS, request and answer.
    pub timeout_ms: u64,
    /// Largest answer read; a larger one fails the scrape.
    pub max_response_bytes: u64,
    /// Pods reported per scrape, at most (the first by namespace and name).
    pub max_pods: usize,
    /// Claims reported per scrape, at most (the first by namespace and name).
    pub max_volumes: usize,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_ms: 15_000,
            deadline_ms: 10_000,
            url: DEFAULT_URL.into(),
            token_file: DEFAULT_TOKEN_FILE.into(),
            ca_file: DEFAULT_CA_FILE.into(),
            insecure_skip_verify: false,
            timeout_ms: 5_000,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_pods: 500,
            max_volumes: 250,
        }
    }
}

impl KubeletConfig {
    /// The schedule part.
    pub fn schedule(&self) -> CollectorSchedule {
        CollectorSchedule {
            enabled: self.enabled,
            interval_ms: self.interval_ms,
            deadline_ms: self.deadline_ms,
        }
    }

    /// Problems with these settings as (field under `collectors.kubelet`, what is
    /// wrong), for config validation. The schedule is checked with the others'.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = client::Target::parse(&self.url) {
            out.push((
                "url",
                format!("{e}; e.g. \"https://127.0.0.1:10250/stats/summary\""),
            ));
        }
        if self.token_file.as_os_str().is_empty() {
            out.push((
                "token_file",
                format!("must name a file, e.g. {DEFAULT_TOKEN_FILE:?}"),
            ));
        }
        if self.ca_file.as_os_str().is_empty() && !self.insecure_skip_verify {
            out.push((
                "ca_file",
                format!(
                    "must name a PEM file, e.g. {DEFAULT_CA_FILE:?} (or set insecure_skip_verify)"
                ),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms >= self.deadline_ms {
            out.push((
                "timeout_ms",
                format!(
                    "must be at least 1 and below collectors.kubelet.deadline_ms ({})",
                    self.deadline_ms
                ),
            ));
        }
        if !(1024..=MAX_RESPONSE_BYTES_LIMIT).contains(&self.max_response_bytes) {
            out.push((
                "max_response_bytes",
                format!("must be 1024 to {MAX_RESPONSE_BYTES_LIMIT}"),
            ));
        }
        if !(1..=MAX_RESOURCES_LIMIT).contains(&self.max_pods) {
            out.push(("max_pods", format!("must be 1 to {MAX_RESOURCES_LIMIT}")));
        }
        if self.max_volumes > MAX_RESOURCES_LIMIT {
            out.push((
                "max_volumes",
                format!("must be 0 (no volumes) to {MAX_RESOURCES_LIMIT}"),
            ));
        }
        out
    }
}

/// The kubelet collector.
pub struct KubeletCollector {
    host_id: String,
    interval_ms: u32,
    config: KubeletConfig,
    target: Result<client::Target, String>,
    /// The TLS configuration, with the CA file contents it was built from
    /// (`None` when any certificate is accepted).
    tls: Option<(Option<Vec<u8>>, Arc<rustls::ClientConfig>)>,
    /// Whether the last scrape left pods, claims out (logged on change).
    capped: (bool, bool),
}

impl KubeletCollector {
    /// Reports pods and claims under `host_id`.
    pub fn new(host_id: String, interval_ms: u32, config: &KubeletConfig) -> Self {
        Self {
            host_id,
            interval_ms,
            target: client::Target::parse(&config.url),
            config: config.clone(),
            tls: None,
            capped: (false, false),
        }
    }

    fn read(path: &Path) -> Result<Vec<u8>, CollectError> {
        std::fs::read(path).map_err(|source| CollectError::Read {
            path: path.display().to_string(),
            source,
        })
    }

    /// The token, re-read now.
    fn token(&self) -> Result<String, CollectError> {
        let path = &self.config.token_file;
        let raw = Self::read(path)?;
        let token = String::from_utf8(raw)
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        if token.is_empty() {
            return Err(CollectError::Parse {
                path: path.display().to_string(),
                reason: "holds no token".into(),
            });
        }
        Ok(token)
    }

    /// The TLS configuration for this scrape: rebuilt when the CA file changed.
    fn tls(&mut self) -> Result<Arc<rustls::ClientConfig>, CollectError> {
        let ca = if self.config.insecure_skip_verify {
            None
        } else {
            Some(Self::read(&self.config.ca_file)?)
        };
        if let Some((built_from, config)) = &self.tls
            && *built_from == ca
        {
            return Ok(config.clone());
        }
        let config = client::tls_config(ca.as_deref()).map_err(|reason| CollectError::Parse {
            path: self.config.ca_file.display().to_string(),
            reason,
        })?;
        self.tls = Some((ca, config.clone()));
        Ok(config)
    }

    fn note_caps(&mut self, outcome: &report::Outcome) {
        metrics::gauge!("infrawatch_agent_kubelet_left_out", "what" => "pods")
            .set(outcome.pods_left_out as f64);
        metrics::gauge!("infrawatch_agent_kubelet_left_out", "what" => "volumes")
            .set(outcome.volumes_left_out as f64);
        let capped = (outcome.pods_left_out > 0, outcome.volumes_left_out > 0);
        if capped.0 && !self.capped.0 {
            tracing::warn!(
                reported = outcome.pods,
                left_out = outcome.pods_left_out,
                "More pods on this node than collectors.kubelet.max_pods: the rest are left out."
            );
        }
        if capped.1 && !self.capped.1 {
            tracing::warn!(
                reported = outcome.volumes,
                left_out = outcome.volumes_left_out,
                "More claims mounted on this node than collectors.kubelet.max_volumes: the rest are left out."
            );
        }
        if (self.capped.0 && !capped.0) || (self.capped.1 && !capped.1) {
            tracing::info!(
                pods = outcome.pods,
                volumes = outcome.volumes,
                "Every pod and claim of this node within the caps again."
            );
        }
        self.capped = capped;
    }
}

#[async_trait::async_trait]
impl Collector for KubeletCollector {
    fn name(&self) -> &'static str {
        "kubelet"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let url = self.config.url.clone();
        let remote = |reason: String| CollectError::Remote {
            url: url.clone(),
            reason,
        };
        let target = self.target.clone().map_err(remote)?;
        let token = self.token()?;
        let tls = self.tls()?;
        let max_bytes = usize::try_from(self.config.max_response_bytes).unwrap_or(usize::MAX);
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let body = tokio::time::timeout(timeout, client::get(&target, tls, &token, max_bytes))
            .await
            .map_err(|_| remote(format!("no answer within {} ms", self.config.timeout_ms)))?
            .map_err(remote)?;
        let summary = summary::parse(&body).map_err(|reason| CollectError::Parse {
            path: url.clone(),
            reason,
        })?;
        let outcome = report::build(
            &summary,
            &self.host_id,
            self.interval_ms,
            now_unix_ms(),
            report::Limits {
                max_pods: self.config.max_pods,
                max_volumes: self.config.max_volumes,
            },
            out,
        );
        if outcome.pods_skipped > 0 {
            tracing::debug!(
                skipped = outcome.pods_skipped,
                "Pods without a usable namespace and name were left out."
            );
        }
        self.note_caps(&outcome);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn defaults_are_valid_and_problems_name_the_field() {
        assert!(KubeletConfig::default().problems().is_empty());
        assert!(!KubeletConfig::default().enabled);
        let bad = KubeletConfig {
            url: "http://127.0.0.1:10250/stats/summary".into(),
            token_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            timeout_ms: 20_000,
            max_response_bytes: 10,
            max_pods: 0,
            max_volumes: 20_000,
            ..KubeletConfig::default()
        };
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            vec![
                "url",
                "token_file",
                "ca_file",
                "timeout_ms",
                "max_response_bytes",
                "max_pods",
                "max_volumes"
            ]
        );
        let insecure = KubeletConfig {
            ca_file: PathBuf::new(),
            insecure_skip_verify: true,
            ..KubeletConfig::default()
        };
        assert!(insecure.problems().is_empty());
    }

    /// A kubelet stand-in: HTTPS on loopback with a certificate of a fresh CA;
    /// the path picks the answer, and a request without `Bearer good` gets 401.
    struct Kubelet {
        base: String,
        ca_pem: String,
    }

    async fn kubelet() -> Kubelet {
        use rustls::pki_types::PrivateKeyDer;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca = infrawatch_common::certs::DevCa::generate().unwrap();
        let issued = ca.issue_server(&[]).unwrap();
        let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let ok = |body: &str| {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let answer = if !head.contains("authorization: Bearer good\r\n") {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\nUnauthorized"
                            .to_string()
                    } else {
                        match path.as_str() {
                            "/stats/summary" => ok(report::tests::SUMMARY),
                            "/garbage" => ok("{\"pods\": 7}"),
                            "/big" => ok(&" ".repeat(4096)),
                            "/big-chunked" => format!(
                                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n{}\r\n0\r\n\r\n",
                                " ".repeat(4096)
                            ),
                            "/slow" => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                ok("{}")
                            }
                            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
                        }
                    };
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Kubelet {
            base,
            ca_pem: ca.cert_pem().to_string(),
        }
    }

    #[tokio::test]
    async fn scrapes_over_https_with_the_token_and_fails_cleanly_otherwise() {
        let k = kubelet().await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&token, "good\n").unwrap();
        std::fs::write(&ca, &k.ca_pem).unwrap();
        let config = |path: &str| KubeletConfig {
            enabled: true,
            url: format!("{}{path}", k.base),
            token_file: token.clone(),
            ca_file: ca.clone(),
            timeout_ms: 1_000,
            max_response_bytes: 2_048,
            ..KubeletConfig::default()
        };
        let run = |cfg: KubeletConfig| async move {
            let mut c = KubeletCollector::new("host/m1".into(), 15_000, &cfg);
            let mut out = Collection::default();
            let result = c.collect(&mut out).await.map_err(|e| e.to_string());
            (result, out)
        };

        let (result, out) = run(config("/stats/summary")).await;
        result.unwrap();
        assert_eq!(out.resources.len(), 3);
        assert!(out.samples.iter().any(|s| s.metric == "k8s.pod.cpu.usage"
            && s.resource_id == "host/m1/pod/shop/web-0"
            && (s.value - 0.2).abs() < 1e-12));

        // The token is re-read at every scrape.
        let mut c = KubeletCollector::new("host/m1".into(), 15_000, &config("/stats/summary"));
        std::fs::write(&token, "stale").unwrap();
        let e = c
            .collect(&mut Collection::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("401 Unauthorized"), "{e}");
        std::fs::write(&token, "good").unwrap();
        c.collect(&mut Collection::default()).await.unwrap();

        for (path, expected) in [
            ("/garbage", "not a kubelet summary"),
            ("/big", "larger than 2048 bytes"),
            ("/big-chunked", "larger than 2048 bytes"),
            ("/slow", "no answer within 1000 ms"),
            ("/nothing", "404 Not Found"),
        ] {
            let (result, out) = run(config(path)).await;
            let e = result.unwrap_err();
            assert!(e.contains(expected), "{path}: {e}");
            assert!(out.resources.is_empty() && out.samples.is_empty());
        }

        // Another CA: the handshake fails, unless every certificate is accepted.
        let other = infrawatch_common::certs::DevCa::generate().unwrap();
        std::fs::write(&ca, other.cert_pem()).unwrap();
        let (result, _) = run(config("/stats/summary")).await;
        let e = result.unwrap_err();
        assert!(e.contains("TLS handshake failed"), "{e}");
        let (result, _) = run(KubeletConfig {
            insecure_skip_verify: true,
            ..config("/stats/summary")
        })
        .await;
        result.unwrap();
    }

    /// Nothing listens: the run fails with the URL and the reason, and does not
    /// panic; a missing token file is named.
    #[tokio::test]
    async fn failures_are_errors_naming_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = KubeletConfig {
            enabled: true,
            url: format!("https://127.0.0.1:{port}/stats/summary"),
            token_file: token.clone(),
            insecure_skip_verify: true,
            ..KubeletConfig::default()
        };
        let mut c = KubeletCollector::new("host/m1".into(), 15_000, &config);
        let mut out = Collection::default();
        let e = c.collect(&mut out).await.unwrap_err().to_string();
        assert!(e.contains("token"), "{e}");
        std::fs::write(&token, "abc\n").unwrap();
        let e = c.collect(&mut out).await.unwrap_err().to_string();
        assert!(
            e.contains(&config.url) && e.contains("cannot connect"),
            "{e}"
        );
        assert!(!e.contains("abc"), "the token never shows: {e}");
        assert_eq!(out, Collection::default());

        std::fs::write(&token, "").unwrap();
        let e = c.collect(&mut out).await.unwrap_err().to_string();
        assert!(e.contains("holds no token"), "{e}");

        let with_ca = KubeletConfig {
            insecure_skip_verify: false,
            ca_file: dir.path().join("missing-ca.crt"),
            ..config
        };
        std::fs::write(&token, "abc").unwrap();
        let mut c = KubeletCollector::new("host/m1".into(), 15_000, &with_ca);
        let e = c.collect(&mut out).await.unwrap_err().to_string();
        assert!(e.contains("missing-ca.crt"), "{e}");
    }
}
