//! Health rules: thresholds on host utilizations, the parts of hosts
//! ([`parts`]), probes, and staleness. Pure functions of their inputs, so every
//! rule is unit-tested without I/O.

pub mod parts;

use infrawatch_common::resource::metric;

use crate::config::{HealthConfig, Thresholds};
use crate::model::{Health, Reason};

/// Reason code of a resource without fresh data.
pub const STALE: &str = "stale";

/// One threshold rule on a host series (averaged over the evaluation window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRule {
    /// Rule name: the config key and the reason code prefix.
    pub name: &'static str,
    /// The series' metric.
    pub metric: &'static str,
    /// The series' canonical attributes.
    pub attributes: &'static str,
}

/// Every host rule. Utilizations and pressure are fractions of time.
pub const HOST_RULES: [HostRule; 8] = [
    HostRule {
        name: "cpu",
        metric: metric::CPU_UTILIZATION,
        attributes: "",
    },
    HostRule {
        name: "memory",
        metric: metric::MEMORY_UTILIZATION,
        attributes: "",
    },
    HostRule {
        name: "swap",
        metric: metric::PAGING_UTILIZATION,
        attributes: "",
    },
    HostRule {
        name: "cpu_steal",
        metric: metric::CPU_UTILIZATION,
        attributes: "state=\"steal\"",
    },
    HostRule {
        name: "cpu_iowait",
        metric: metric::CPU_UTILIZATION,
        attributes: "state=\"iowait\"",
    },
    HostRule {
        name: "cpu_pressure",
        metric: "system.linux.pressure",
        attributes: "level=\"some\",resource=\"cpu\",window=\"10s\"",
    },
    HostRule {
        name: "memory_pressure",
        metric: "system.linux.pressure",
        attributes: "level=\"some\",resource=\"memory\",window=\"10s\"",
    },
    HostRule {
        name: "io_pressure",
        metric: "system.linux.pressure",
        attributes: "level=\"some\",resource=\"io\",window=\"10s\"",
    },
];

impl HostRule {
    /// The configured thresholds of this rule.
    pub fn thresholds(&self, cfg: &HealthConfig) -> Thresholds {
        match self.name {
            "cpu" => cfg.cpu,
            "memory" => cfg.memory,
            "swap" => cfg.swap,
            "cpu_steal" => cfg.cpu_steal,
            "cpu_iowait" => cfg.cpu_iowait,
            "cpu_pressure" => cfg.cpu_pressure,
            "memory_pressure" => cfg.memory_pressure,
            _ => cfg.io_pressure,
        }
    }
}

/// Health of a host from the window averages of its rule series (a rule without
/// data is skipped): the worst of the rules; reasons sorted by code.
pub fn evaluate_host(figures: &[(HostRule, f64)], cfg: &HealthConfig) -> (Health, Vec<Reason>) {
    let mut reasons = Vec::new();
    let mut health = Health::Healthy;
    for (rule, value) in figures {
        if let Some((h, reason)) = threshold_reason(
            rule.name,
            rule.metric,
            *value,
            rule.thresholds(cfg),
            cfg.evaluation_window_ms,
        ) {
            health = worse(health, h);
            reasons.push(reason);
        }
    }
    reasons.sort_by(|a, b| a.code.cmp(&b.code));
    (health, reasons)
}

fn threshold_reason(
    name: &str,
    metric: &str,
    value: f64,
    limits: Thresholds,
    window_ms: u64,
) -> Option<(Health, Reason)> {
    let (health, threshold, level) = if value >= limits.unhealthy {
        (Health::Unhealthy, limits.unhealthy, "critical")
    } else if value >= limits.degraded {
        (Health::Degraded, limits.degraded, "high")
    } else {
        return None;
    };
    Some((
        health,
        Reason {
            code: format!("{name}_{level}"),
            message: format!(
                "{} averaged {:.1}% over {}s, threshold {:.1}%",
                name.replace('_', " "),
                value * 100.0,
                window_ms / 1000,
                threshold * 100.0
            ),
            metric: metric.to_string(),
            observed: value,
            threshold,
        },
    ))
}

/// Health of a probe from the outcome its agent reports in an attribute
/// (`dns.result` for `dns_probe`, `tcp.result` for `tcp_probe`): `ok` is HEALTHY;
/// a DNS answer other than the expected one is DEGRADED; anything else is
/// UNHEALTHY with reason `<probe>_<outcome>` (e.g. `dns_nxdomain`, `tcp_refused`).
/// `None` for kinds without such a rule.
pub fn evaluate_probe(
    kind: &str,
    attributes: &std::collections::BTreeMap<String, String>,
) -> Option<(Health, Vec<Reason>)> {
    if kind == "agent" {
        let failing = attributes
            .get("agent.failing_collectors")
            .map(String::as_str)
            .unwrap_or_default();
        if failing.is_empty() {
            return Some((Health::Healthy, Vec::new()));
        }
        return Some((
            Health::Degraded,
            vec![Reason {
                code: "agent_collector_failing".into(),
                message: format!("the last run of these collectors failed: {failing}"),
                metric: String::new(),
                observed: 0.0,
                threshold: 0.0,
            }],
        ));
    }
    let (prefix, key) = match kind {
        "dns_probe" => ("dns", "dns.result"),
        "tcp_probe" => ("tcp", "tcp.result"),
        "icmp_probe" => ("icmp", "icmp.result"),
        _ => return None,
    };
    let outcome = attributes.get(key).map(String::as_str).unwrap_or("error");
    if outcome == "ok" {
        return Some((Health::Healthy, Vec::new()));
    }
    let health = if matches!(outcome, "wrong_answer" | "loss") {
        Health::Degraded
    } else {
        Health::Unhealthy
    };
    let target = attributes
        .get("dns.question.name")
        .or_else(|| attributes.get("server.address"))
        .or_else(|| attributes.get("network.peer.address"))
        .cloned()
        .unwrap_or_default();
    let message = match (prefix, outcome) {
        ("dns", "wrong_answer") => format!(
            "{target} answered {:?}, expected {:?}",
            attributes.get("dns.answers").cloned().unwrap_or_default(),
            attributes.get("dns.expected").cloned().unwrap_or_default()
        ),
        ("dns", "nxdomain") => format!("{target} does not exist (NXDOMAIN)"),
        ("dns", "no_records") => format!("{target} has no record of the asked type"),
        ("dns", "servfail") => format!("the server failed to answer for {target} (SERVFAIL)"),
        ("dns", "refused") => format!("the server refused to answer for {target} (REFUSED)"),
        (_, "timeout") => format!("{target} did not answer in time"),
        ("tcp", "refused") => format!("{target} refused the connection"),
        ("tcp", "unreachable") => format!("{target} is unreachable"),
        ("icmp", "loss") => format!("{target}: some echo replies were lost"),
        ("icmp", "unreachable") => format!("{target}: no echo reply came back"),
        _ => format!("{target}: {outcome}"),
    };
    let code: String = format!("{prefix}_{outcome}")
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .take(64)
        .collect();
    Some((
        health,
        vec![Reason {
            code,
            message,
            metric: String::new(),
            observed: 0.0,
            threshold: 0.0,
        }],
    ))
}

/// The worse of two health values (UNKNOWN counts as worst, as it hides the truth).
pub fn worse(a: Health, b: Health) -> Health {
    fn rank(h: Health) -> u8 {
        match h {
            Health::Unspecified => 0,
            Health::Healthy => 1,
            Health::Degraded => 2,
            Health::Unhealthy => 3,
            Health::Unknown => 4,
        }
    }
    if rank(b) > rank(a) { b } else { a }
}

/// The stale reason if a resource last seen at `last_seen_ms`, reporting every
/// `interval_ms`, has missed `missed` intervals by `now_ms`.
pub fn stale_reason(
    now_ms: i64,
    last_seen_ms: i64,
    interval_ms: u32,
    missed: u32,
) -> Option<Reason> {
    if interval_ms == 0 {
        return None;
    }
    let allowed = i64::from(interval_ms) * i64::from(missed);
    let silent = now_ms - last_seen_ms;
    (silent > allowed).then(|| Reason {
        code: STALE.to_string(),
        message: format!(
            "no data for {}s (expected every {}s, allowed {} missed intervals)",
            silent / 1000,
            f64::from(interval_ms) / 1000.0,
            missed
        ),
        metric: String::new(),
        observed: silent as f64 / 1000.0,
        threshold: allowed as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(values: &[(&str, f64)]) -> Vec<(HostRule, f64)> {
        values
            .iter()
            .map(|(name, v)| (*HOST_RULES.iter().find(|r| r.name == *name).unwrap(), *v))
            .collect()
    }

    #[test]
    fn thresholds() {
        let cfg = HealthConfig::default();
        let ok = figures(&[("cpu", 0.5), ("memory", 0.5), ("swap", 0.0)]);
        assert_eq!(evaluate_host(&ok, &cfg), (Health::Healthy, vec![]));

        let (h, r) = evaluate_host(&figures(&[("cpu", 0.93), ("memory", 0.5)]), &cfg);
        assert_eq!(h, Health::Degraded);
        assert_eq!(r[0].code, "cpu_high");
        assert_eq!(r[0].threshold, 0.9);

        let bad = figures(&[("cpu", 0.93), ("memory", 0.99), ("swap", 0.6)]);
        let (h, r) = evaluate_host(&bad, &cfg);
        assert_eq!(h, Health::Unhealthy);
        let codes: Vec<_> = r.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(codes, vec!["cpu_high", "memory_critical", "swap_high"]);
    }

    #[test]
    fn contention_degrades_a_host() {
        let cfg = HealthConfig::default();
        let (h, r) = evaluate_host(&figures(&[("cpu_steal", 0.2), ("io_pressure", 0.6)]), &cfg);
        assert_eq!(h, Health::Unhealthy);
        let codes: Vec<_> = r.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(codes, vec!["cpu_steal_high", "io_pressure_critical"]);
        assert!(
            r[0].message.starts_with("cpu steal averaged 20.0%"),
            "{}",
            r[0].message
        );
    }

    #[test]
    fn missing_figures_are_not_a_problem() {
        let cfg = HealthConfig::default();
        assert_eq!(evaluate_host(&[], &cfg).0, Health::Healthy);
    }

    #[test]
    fn probe_outcomes_are_distinct_reasons() {
        let attrs =
            |k: &str, v: &str| std::collections::BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            evaluate_probe("dns_probe", &attrs("dns.result", "ok")),
            Some((Health::Healthy, vec![]))
        );
        let (h, r) = evaluate_probe("dns_probe", &attrs("dns.result", "nxdomain")).unwrap();
        assert_eq!((h, r[0].code.as_str()), (Health::Unhealthy, "dns_nxdomain"));
        let (h, r) = evaluate_probe("dns_probe", &attrs("dns.result", "wrong_answer")).unwrap();
        assert_eq!(
            (h, r[0].code.as_str()),
            (Health::Degraded, "dns_wrong_answer")
        );
        let (_, r) = evaluate_probe("tcp_probe", &attrs("tcp.result", "refused")).unwrap();
        assert_eq!(r[0].code, "tcp_refused");
        assert_eq!(evaluate_probe("host", &attrs("x", "y")), None);
    }

    #[test]
    fn staleness() {
        assert!(stale_reason(10_000, 7_000, 1_000, 3).is_none());
        let r = stale_reason(10_001, 7_000, 1_000, 3).unwrap();
        assert_eq!(r.code, STALE);
        assert!(
            stale_reason(1_000_000, 0, 0, 3).is_none(),
            "no interval, never stale"
        );
    }

    #[test]
    fn worse_orders_health() {
        assert_eq!(worse(Health::Healthy, Health::Degraded), Health::Degraded);
        assert_eq!(
            worse(Health::Unhealthy, Health::Degraded),
            Health::Unhealthy
        );
        assert_eq!(worse(Health::Unhealthy, Health::Unknown), Health::Unknown);
    }
}
