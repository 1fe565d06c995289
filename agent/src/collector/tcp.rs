//! TCP connect probes: how long a TCP handshake with each configured `host:port`
//! takes, and whether it succeeds. Every target is a resource
//! (`probe/<machine-id>/tcp/<host:port>`, kind `tcp_probe`, `runs_on` the host)
//! whose attribute `tcp.result` is `ok`, `refused`, `timeout`, `unreachable` or
//! `error`; the aggregator turns failures into health reasons.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use infrawatch_common::time::now_unix_ms;
use serde::{Deserialize, Serialize};

use super::{CollectError, Collection, Collector, ObservedResource};

/// One TCP target as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbeConfig {
    /// `host:port` or `ip:port` (`[v6]:port`).
    pub address: String,
    /// Time the handshake may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

const fn default_timeout_ms() -> u64 {
    2_000
}

impl TcpProbeConfig {
    /// Problems with this target's settings, for config validation.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let valid_host = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        };
        let ok = self.address.parse::<std::net::SocketAddr>().is_ok()
            || self.address.rsplit_once(':').is_some_and(|(host, port)| {
                valid_host(host) && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
        if !ok {
            out.push(format!(
                "address {:?} must be host:port or ip:port ([v6]:port for IPv6)",
                self.address
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            out.push("timeout_ms must be between 1 and 60000".into());
        }
        out
    }
}

/// Outcome name of a failed connect.
pub fn classify(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::TimedOut => "timeout",
        ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::AddrNotAvailable => "unreachable",
        _ => "error",
    }
}

/// The TCP probe collector.
pub struct TcpCollector {
    host_id: String,
    machine: String,
    interval_ms: u32,
    targets: Vec<TcpProbeConfig>,
}

impl TcpCollector {
    /// Probes for `host_id`.
    pub fn new(host_id: String, interval_ms: u32, targets: &[TcpProbeConfig]) -> Self {
        Self {
            machine: host_id.trim_start_matches("host/").to_string(),
            host_id,
            interval_ms,
            targets: targets.to_vec(),
        }
    }
}

async fn connect(target: &TcpProbeConfig) -> (&'static str, Duration) {
    let started = Instant::now();
    let timeout = Duration::from_millis(target.timeout_ms);
    let result = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect(target.address.as_str()),
    )
    .await;
    let elapsed = started.elapsed();
    match result {
        Err(_) => ("timeout", elapsed),
        Ok(Err(e)) => (classify(&e), elapsed),
        Ok(Ok(_stream)) => ("ok", elapsed),
    }
}

#[async_trait::async_trait]
impl Collector for TcpCollector {
    fn name(&self) -> &'static str {
        "tcp"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let results = futures::future::join_all(self.targets.iter().map(connect)).await;
        let ts = now_unix_ms();
        for (target, (outcome, elapsed)) in self.targets.iter().zip(results) {
            let id = format!(
                "probe/{}/tcp/{}",
                self.machine,
                target.address.replace(['[', ']'], "")
            );
            let mut attributes = BTreeMap::new();
            attributes.insert("server.address".into(), target.address.clone());
            attributes.insert("tcp.result".into(), outcome.into());
            out.resources.push(ObservedResource {
                id: id.clone(),
                kind: "tcp_probe",
                labels: BTreeMap::new(),
                attributes,
                relations: vec![("runs_on".into(), self.host_id.clone())],
                interval_ms: self.interval_ms,
            });
            if outcome == "ok" {
                out.sample(&id, "tcp.connect.duration", &[], ts, elapsed.as_secs_f64());
            }
            out.sample(
                &id,
                "tcp.connect.success",
                &[],
                ts,
                if outcome == "ok" { 1.0 } else { 0.0 },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_and_closed_ports() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let targets = vec![
            TcpProbeConfig {
                address: open.clone(),
                timeout_ms: 1000,
            },
            TcpProbeConfig {
                address: closed,
                timeout_ms: 1000,
            },
        ];
        let mut c = TcpCollector::new("host/m".into(), 1000, &targets);
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        assert_eq!(out.resources[0].attributes["tcp.result"], "ok");
        assert_eq!(out.resources[0].id, format!("probe/m/tcp/{open}"));
        assert_eq!(out.resources[1].attributes["tcp.result"], "refused");
        assert!(
            TcpProbeConfig {
                address: "nope".into(),
                timeout_ms: 1
            }
            .problems()
            .len()
                == 1
        );
    }
}
