//! DNS probes with hickory-resolver: each configured name and record type is looked
//! up against the system resolvers or explicit servers. Every probe is a resource
//! (`probe/<machine-id>/dns/<name>/<type>[/<first server>]`, kind `dns_probe`,
//! `runs_on` the host)
//! whose attribute `dns.result` is the outcome: `ok`, `wrong_answer`, `nxdomain`,
//! `no_records`, `servfail`, `refused`, `timeout` or `error`; the aggregator turns
//! each into a distinct health reason. Samples: lookup duration and answer count.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::{Resolver, TokioResolver};
use infrawatch_common::time::now_unix_ms;
use serde::{Deserialize, Serialize};

use super::{CollectError, Collection, Collector, ObservedResource};

/// One DNS probe as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsProbeConfig {
    /// Name to look up; a trailing dot makes it absolute (no search domains).
    pub name: String,
    /// Record type: A, AAAA, CNAME, MX, NS, PTR, SOA, SRV or TXT.
    #[serde(default = "default_record_type")]
    pub record_type: String,
    /// `ip:port` of servers to ask; empty means the system resolvers.
    #[serde(default)]
    pub servers: Vec<String>,
    /// If set, the answers (as text, e.g. IP addresses) must be exactly this set.
    #[serde(default)]
    pub expect: Vec<String>,
    /// Time one lookup may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Record types a probe may ask for.
pub const RECORD_TYPES: [&str; 9] = ["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT"];

fn default_record_type() -> String {
    "A".into()
}

const fn default_timeout_ms() -> u64 {
    2_000
}

impl DnsProbeConfig {
    /// Problems with this probe's settings, for config validation.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let name = self.name.trim_end_matches('.');
        let valid_name = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid_name {
            out.push(format!(
                "name {:?} must be a DNS name (letters, digits, '-', '_', dots)",
                self.name
            ));
        }
        if !RECORD_TYPES.contains(&self.record_type.to_ascii_uppercase().as_str()) {
            out.push(format!(
                "record_type {:?} must be one of {}",
                self.record_type,
                RECORD_TYPES.join(", ")
            ));
        }
        for s in &self.servers {
            if s.parse::<SocketAddr>().is_err() {
                out.push(format!("server {s:?} must be ip:port, e.g. 10.96.0.10:53"));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            out.push("timeout_ms must be between 1 and 60000".into());
        }
        out
    }
}

/// The outcome of one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answers as expected (or any answers when none are expected).
    Ok,
    /// Answers, but not the expected set.
    WrongAnswer,
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no record of this type.
    NoRecords,
    /// The server failed.
    ServFail,
    /// The server refused.
    Refused,
    /// No answer in time.
    Timeout,
    /// Anything else (network error, malformed response).
    Error,
}

impl Outcome {
    /// The `dns.result` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::WrongAnswer => "wrong_answer",
            Self::NxDomain => "nxdomain",
            Self::NoRecords => "no_records",
            Self::ServFail => "servfail",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Classifies a failed lookup.
pub fn classify(error: &NetError) -> Outcome {
    match error {
        NetError::Timeout => Outcome::Timeout,
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::NXDomain =>
        {
            Outcome::NxDomain
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => Outcome::NoRecords,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => Outcome::ServFail,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => Outcome::Refused,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => Outcome::NxDomain,
        _ => Outcome::Error,
    }
}

/// Compares answers with the expected set (order and case do not matter; a trailing
/// dot on names is ignored).
pub fn answers_match(answers: &[String], expect: &[String]) -> bool {
    let norm = |s: &String| s.trim_end_matches('.').to_ascii_lowercase();
    let got: BTreeSet<String> = answers.iter().map(norm).collect();
    let want: BTreeSet<String> = expect.iter().map(norm).collect();
    got == want
}

struct Probe {
    config: DnsProbeConfig,
    record_type: RecordType,
    resolver: TokioResolver,
    resource_id: String,
}

/// The DNS probe collector.
pub struct DnsCollector {
    host_id: String,
    interval_ms: u32,
    probes: Vec<Probe>,
}

fn resolver(cfg: &DnsProbeConfig) -> Result<TokioResolver, CollectError> {
    let err = |reason: String| CollectError::Parse {
        path: format!("collectors.dns probe {}", cfg.name),
        reason,
    };
    let mut builder = if cfg.servers.is_empty() {
        Resolver::builder_tokio().map_err(|e| err(format!("system resolver configuration: {e}")))?
    } else {
        let servers = cfg
            .servers
            .iter()
            .map(|s| {
                let addr: SocketAddr = s
                    .parse()
                    .map_err(|_| err(format!("server {s:?} is not ip:port")))?;
                // The port of a non-standard server goes in each connection's config.
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                Ok(server)
            })
            .collect::<Result<Vec<_>, CollectError>>()?;
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_millis(cfg.timeout_ms);
    opts.attempts = 1;
    // A probe measures the server every time, never a cache.
    opts.cache_size = 0;
    builder.build().map_err(|e| err(e.to_string()))
}

impl DnsCollector {
    /// Probes for `host_id`.
    pub fn new(
        host_id: String,
        interval_ms: u32,
        probes: &[DnsProbeConfig],
    ) -> Result<Self, CollectError> {
        let machine = host_id.trim_start_matches("host/").to_string();
        let probes = probes
            .iter()
            .map(|cfg| {
                let record_type = cfg
                    .record_type
                    .to_ascii_uppercase()
                    .parse::<RecordType>()
                    .map_err(|e| CollectError::Parse {
                        path: format!("collectors.dns probe {}", cfg.name),
                        reason: e.to_string(),
                    })?;
                let name = cfg.name.trim_end_matches('.');
                let mut resource_id = format!(
                    "probe/{machine}/dns/{name}/{}",
                    cfg.record_type.to_ascii_lowercase()
                );
                if let Some(server) = cfg.servers.first() {
                    resource_id = format!("{resource_id}/{server}");
                }
                Ok(Probe {
                    resolver: resolver(cfg)?,
                    resource_id,
                    record_type,
                    config: cfg.clone(),
                })
            })
            .collect::<Result<Vec<_>, CollectError>>()?;
        Ok(Self {
            host_id,
            interval_ms,
            probes,
        })
    }
}

async fn run_probe(probe: &Probe) -> (Outcome, Duration, Vec<String>) {
    let started = Instant::now();
    // The resolver has its own timeout per request; this bounds the whole lookup
    // (retries over UDP and TCP included) so a probe never outlives its budget.
    let deadline = Duration::from_millis(probe.config.timeout_ms);
    let result = tokio::time::timeout(
        deadline,
        probe
            .resolver
            .lookup(probe.config.name.as_str(), probe.record_type),
    )
    .await;
    let elapsed = started.elapsed();
    match result {
        Err(_) => (Outcome::Timeout, elapsed, Vec::new()),
        Ok(Err(e)) => (classify(&e), elapsed, Vec::new()),
        Ok(Ok(lookup)) => {
            let answers: Vec<String> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == probe.record_type)
                .map(|r| r.data.to_string())
                .collect();
            let outcome = if !probe.config.expect.is_empty()
                && !answers_match(&answers, &probe.config.expect)
            {
                Outcome::WrongAnswer
            } else {
                Outcome::Ok
            };
            (outcome, elapsed, answers)
        }
    }
}

#[async_trait::async_trait]
impl Collector for DnsCollector {
    fn name(&self) -> &'static str {
        "dns"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let results = futures::future::join_all(self.probes.iter().map(run_probe)).await;
        let ts = now_unix_ms();
        for (probe, (outcome, elapsed, answers)) in self.probes.iter().zip(results) {
            let mut attributes = BTreeMap::new();
            attributes.insert("dns.question.name".into(), probe.config.name.clone());
            attributes.insert(
                "dns.question.type".into(),
                probe.config.record_type.to_ascii_uppercase(),
            );
            attributes.insert(
                "dns.servers".into(),
                if probe.config.servers.is_empty() {
                    "system".into()
                } else {
                    probe.config.servers.join(",")
                },
            );
            attributes.insert("dns.result".into(), outcome.as_str().into());
            if !probe.config.expect.is_empty() {
                attributes.insert("dns.expected".into(), probe.config.expect.join(","));
            }
            let mut shown: Vec<String> = answers.clone();
            shown.sort();
            let list = shown.join(",");
            // Cut to the attribute limit by the batch builder, at a character boundary.
            attributes.insert("dns.answers".into(), list);
            out.resources.push(ObservedResource {
                id: probe.resource_id.clone(),
                kind: "dns_probe",
                labels: BTreeMap::new(),
                attributes,
                relations: vec![("runs_on".into(), self.host_id.clone())],
                interval_ms: self.interval_ms,
            });
            let id = probe.resource_id.as_str();
            out.sample(id, "dns.lookup.duration", &[], ts, elapsed.as_secs_f64());
            out.sample(id, "dns.lookup.answers", &[], ts, answers.len() as f64);
            out.sample(
                id,
                "dns.lookup.success",
                &[],
                ts,
                if outcome == Outcome::Ok { 1.0 } else { 0.0 },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_answers_ignore_order_case_and_trailing_dots() {
        let a = vec!["10.0.0.2".to_string(), "Host.Example.".to_string()];
        assert!(answers_match(
            &a,
            &["host.example".into(), "10.0.0.2".into()]
        ));
        assert!(!answers_match(&a, &["10.0.0.2".into()]));
    }

    #[test]
    fn probe_settings_are_checked() {
        let mut p = DnsProbeConfig {
            name: "example.internal".into(),
            record_type: "A".into(),
            servers: vec!["127.0.0.1:5353".into()],
            expect: vec![],
            timeout_ms: 1000,
        };
        assert!(p.problems().is_empty());
        p.record_type = "BOGUS".into();
        p.servers = vec!["not-an-address".into()];
        assert_eq!(p.problems().len(), 2);
    }
}
