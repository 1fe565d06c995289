//! ICMP echo probes with surge-ping, IPv4 and IPv6. Every interval each target gets
//! `count` echo requests, `spacing_ms` apart; the probe reports RTT min/avg/max/p99,
//! jitter (mean difference of consecutive RTTs) and loss. RTT is wall time measured
//! around each ping (surge-ping starts its clock after the send returns, which
//! under-reports on fast paths). Every target is a resource `probe/<machine-id>/icmp/<ip>`
//! (kind `icmp_probe`, `runs_on` the host) whose attribute `icmp.result` is `ok`,
//! `loss` (at least 20 % of the replies missing) or `unreachable` (none came back).
//!
//! Sockets: an ICMP datagram socket when the kernel allows it
//! (`net.ipv4.ping_group_range`), else a raw socket (needs `CAP_NET_RAW`); when
//! neither is possible the collector says so once, clearly, and reports nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use infrawatch_common::time::now_unix_ms;
use serde::{Deserialize, Serialize};
use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence};

use super::{CollectError, Collection, Collector, ObservedResource};

/// One ICMP target as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpProbeConfig {
    /// IPv4 or IPv6 address.
    pub target: String,
    /// Echo requests per interval.
    #[serde(default = "default_count")]
    pub count: u16,
    /// Time between two requests.
    #[serde(default = "default_spacing_ms")]
    pub spacing_ms: u64,
    /// Time to wait for each reply.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

const fn default_count() -> u16 {
    10
}
const fn default_spacing_ms() -> u64 {
    100
}
const fn default_timeout_ms() -> u64 {
    1_000
}

impl IcmpProbeConfig {
    /// The longest one run of this probe can take.
    pub fn budget_ms(&self) -> u64 {
        u64::from(self.count.saturating_sub(1))
            .saturating_mul(self.spacing_ms)
            .saturating_add(self.timeout_ms)
    }

    /// Problems with this target's settings, for config validation.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.target.parse::<IpAddr>().is_err() {
            out.push(format!(
                "target {:?} must be an IPv4 or IPv6 address",
                self.target
            ));
        }
        if !(1..=1000).contains(&self.count) {
            out.push("count must be between 1 and 1000".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            out.push("timeout_ms must be between 1 and 60000".into());
        }
        if self.spacing_ms > 60_000 {
            out.push("spacing_ms must be at most 60000".into());
        }
        out
    }
}

/// Loss from which a run's outcome is `loss` (DEGRADED) rather than `ok`: one lost
/// reply in a run of ten is noise, not a degraded path.
pub const LOSS_OUTCOME_THRESHOLD: f64 = 0.2;

/// Statistics of one run of pings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingStats {
    /// Requests sent.
    pub sent: usize,
    /// Fraction without a reply.
    pub loss: f64,
    /// Min, mean, max and 99th percentile RTT in seconds (None without replies).
    pub rtt: Option<[f64; 4]>,
    /// Mean absolute difference of consecutive RTTs, seconds.
    pub jitter: Option<f64>,
}

/// Summarises RTTs in send order (`None` = lost).
pub fn summarise(rtts: &[Option<f64>]) -> PingStats {
    let got: Vec<f64> = rtts.iter().flatten().copied().collect();
    let sent = rtts.len();
    let loss = if sent == 0 {
        0.0
    } else {
        (sent - got.len()) as f64 / sent as f64
    };
    if got.is_empty() {
        return PingStats {
            sent,
            loss,
            rtt: None,
            jitter: None,
        };
    }
    let mut sorted = got.clone();
    sorted.sort_by(f64::total_cmp);
    let p99_index = ((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1;
    let mean = got.iter().sum::<f64>() / got.len() as f64;
    let jitter = (got.len() > 1)
        .then(|| got.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (got.len() - 1) as f64);
    PingStats {
        sent,
        loss,
        rtt: Some([sorted[0], mean, sorted[sorted.len() - 1], sorted[p99_index]]),
        jitter,
    }
}

struct Target {
    config: IcmpProbeConfig,
    ip: IpAddr,
    resource_id: String,
}

/// The ICMP probe collector.
pub struct IcmpCollector {
    host_id: String,
    interval_ms: u32,
    targets: Vec<Target>,
    clients: Option<(Option<Client>, Option<Client>)>,
    told_unavailable: bool,
}

impl IcmpCollector {
    /// Probes for `host_id`; targets must have been validated.
    pub fn new(host_id: String, interval_ms: u32, probes: &[IcmpProbeConfig]) -> Self {
        let machine = host_id.trim_start_matches("host/").to_string();
        let targets = probes
            .iter()
            .filter_map(|p| {
                let ip: IpAddr = p.target.parse().ok()?;
                Some(Target {
                    resource_id: format!("probe/{machine}/icmp/{ip}"),
                    ip,
                    config: p.clone(),
                })
            })
            .collect();
        Self {
            host_id,
            interval_ms,
            targets,
            clients: None,
            told_unavailable: false,
        }
    }

    /// Opens the sockets the targets need (once).
    fn clients(&mut self) -> Result<(), String> {
        if self.clients.is_some() {
            return Ok(());
        }
        let need_v4 = self.targets.iter().any(|t| t.ip.is_ipv4());
        let need_v6 = self.targets.iter().any(|t| t.ip.is_ipv6());
        let open = |kind: ICMP| {
            Client::new(&Config::builder().kind(kind).build()).map_err(|e| {
                format!(
                    "cannot open an ICMP socket ({e}); allow ICMP datagram sockets \
                     (sysctl net.ipv4.ping_group_range=\"0 2147483647\") or grant CAP_NET_RAW"
                )
            })
        };
        let v4 = if need_v4 { Some(open(ICMP::V4)?) } else { None };
        let v6 = if need_v6 { Some(open(ICMP::V6)?) } else { None };
        self.clients = Some((v4, v6));
        Ok(())
    }
}

/// Sends `count` requests `spacing_ms` apart without waiting for earlier replies
/// (a slow path must not stretch the schedule), and summarises what came back.
async fn ping_target(client: Client, target: &Target, ident: u16) -> PingStats {
    let payload = [0u8; 56];
    let start = tokio::time::Instant::now();
    let spacing = Duration::from_millis(target.config.spacing_ms);
    let timeout = Duration::from_millis(target.config.timeout_ms);
    let pings = (0..target.config.count).map(|seq| {
        let client = client.clone();
        async move {
            tokio::time::sleep_until(start + spacing * u32::from(seq)).await;
            let mut pinger = client.pinger(target.ip, PingIdentifier(ident)).await;
            pinger.timeout(timeout);
            let sent = Instant::now();
            let reply = pinger.ping(PingSequence(seq), &payload).await;
            reply.ok().map(|_| sent.elapsed().as_secs_f64())
        }
    });
    let rtts: Vec<Option<f64>> = futures::future::join_all(pings).await;
    summarise(&rtts)
}

#[async_trait::async_trait]
impl Collector for IcmpCollector {
    fn name(&self) -> &'static str {
        "icmp"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        if let Err(reason) = self.clients() {
            if !self.told_unavailable {
                tracing::error!(reason, "ICMP probes cannot run on this host.");
                self.told_unavailable = true;
            }
            return Err(CollectError::Parse {
                path: "icmp socket".into(),
                reason,
            });
        }
        let Some((v4, v6)) = &self.clients else {
            return Ok(());
        };
        let base: u16 = rand::random();
        let runs = self.targets.iter().enumerate().filter_map(|(i, t)| {
            let client = if t.ip.is_ipv4() {
                v4.clone()
            } else {
                v6.clone()
            }?;
            Some(async move { (t, ping_target(client, t, base.wrapping_add(i as u16)).await) })
        });
        let results = futures::future::join_all(runs).await;
        let ts = now_unix_ms();
        for (t, stats) in results {
            let outcome = if stats.loss >= 1.0 {
                "unreachable"
            } else if stats.loss >= LOSS_OUTCOME_THRESHOLD {
                "loss"
            } else {
                "ok"
            };
            let mut attributes = BTreeMap::new();
            attributes.insert("network.peer.address".to_string(), t.ip.to_string());
            attributes.insert("icmp.result".to_string(), outcome.to_string());
            out.resources.push(ObservedResource {
                id: t.resource_id.clone(),
                kind: "icmp_probe",
                labels: BTreeMap::new(),
                attributes,
                relations: vec![("runs_on".into(), self.host_id.clone())],
                interval_ms: self.interval_ms,
            });
            let id = t.resource_id.as_str();
            out.sample(id, "icmp.loss", &[], ts, stats.loss);
            out.sample(id, "icmp.sent", &[], ts, stats.sent as f64);
            if let Some([min, avg, max, p99]) = stats.rtt {
                for (stat, v) in [("min", min), ("avg", avg), ("max", max), ("p99", p99)] {
                    out.sample(id, "icmp.rtt", &[("stat", stat)], ts, v);
                }
            }
            if let Some(j) = stats.jitter {
                out.sample(id, "icmp.jitter", &[], ts, j);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        let s = summarise(&[Some(0.010), None, Some(0.030), Some(0.020)]);
        assert_eq!(s.sent, 4);
        assert_eq!(s.loss, 0.25);
        let [min, avg, max, p99] = s.rtt.unwrap();
        assert_eq!((min, max, p99), (0.010, 0.030, 0.030));
        assert!((avg - 0.020).abs() < 1e-12);
        assert!((s.jitter.unwrap() - 0.015).abs() < 1e-12);
        let none = summarise(&[None, None]);
        assert_eq!((none.loss, none.rtt, none.jitter), (1.0, None, None));
    }

    #[test]
    fn settings() {
        let p = IcmpProbeConfig {
            target: "10.0.0.1".into(),
            count: 10,
            spacing_ms: 100,
            timeout_ms: 1000,
        };
        assert!(p.problems().is_empty());
        assert_eq!(p.budget_ms(), 1900);
        let bad = IcmpProbeConfig {
            target: "example.com".into(),
            count: 0,
            ..p
        };
        assert_eq!(bad.problems().len(), 2);
    }
}
