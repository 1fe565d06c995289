//! The agent's configuration: where the aggregators are, how to authenticate, what
//! to collect and how often. Loaded by [`infrawatch_common::config::load`] and checked
//! by [`AgentConfig::validate`] before anything opens a socket or a file.

use std::path::PathBuf;

use infrawatch_common::config::{ConfigErrors, Problems};
use infrawatch_common::preflight;
use infrawatch_common::resource::{MAX_INTERVAL_MS, MIN_INTERVAL_MS};
use infrawatch_common::telemetry::LogFormat;
use infrawatch_common::tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// Environment prefix of agent settings.
pub const ENV_PREFIX: &str = "INFRAWATCH_AGENT_";

/// Everything the agent can be told.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Name used in logs; the certificate's identity is what the aggregator trusts.
    /// Empty means the hostname.
    pub name: String,
    /// Kubernetes node name (label `k8s.node.name` of the host); `NODE_NAME` fills it.
    pub node_name: String,
    /// Address of the local Prometheus `/metrics` endpoint; empty turns it off.
    pub metrics_listen: String,
    /// Directory for the agent's durable state (its sequence number).
    pub state_dir: PathBuf,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Where and how to reach the aggregators.
    pub aggregator: AggregatorConfig,
    /// Batching.
    pub batch: BatchConfig,
    /// The disk buffer of unacknowledged batches.
    pub buffer: crate::buffer::BufferConfig,
    /// Per-collector settings.
    pub collectors: CollectorsConfig,
    /// Roots of the host's filesystems, for an agent running in a container.
    pub host: HostPaths,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            node_name: String::new(),
            metrics_listen: "127.0.0.1:9465".into(),
            state_dir: PathBuf::from("/var/lib/infrawatch-agent"),
            log_format: LogFormat::Text,
            aggregator: AggregatorConfig::default(),
            batch: BatchConfig::default(),
            buffer: crate::buffer::BufferConfig::default(),
            collectors: CollectorsConfig::default(),
            host: HostPaths::default(),
        }
    }
}

/// Connection to the aggregator replicas.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// `https://host:port` of each replica; the agent moves to the next on failure.
    pub endpoints: Vec<String>,
    /// Name expected in the aggregator's certificate.
    pub server_name: String,
    /// CA, client certificate and key (PEM).
    pub tls: TlsFiles,
    /// Time allowed for a TCP+TLS connection.
    pub connect_timeout_ms: u64,
    /// Batches sent but not yet acknowledged at any level (received or durable),
    /// at most.
    pub max_in_flight_batches: usize,
    /// First reconnect delay; doubles per failure up to `backoff_max_ms`, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["https://127.0.0.1:7443".into()],
            server_name: "localhost".into(),
            tls: TlsFiles {
                ca: "/etc/infrawatch/tls/ca.pem".into(),
                cert: "/etc/infrawatch/tls/agent.pem".into(),
                key: "/etc/infrawatch/tls/agent-key.pem".into(),
            },
            connect_timeout_ms: 5_000,
            max_in_flight_batches: 64,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
        }
    }
}

/// How observations are grouped into batches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch is closed at most this long after its first collection (sooner
    /// when a collection arrives and it is at least half this old).
    pub flush_interval_ms: u64,
    /// A batch is closed when it holds this many samples.
    pub max_samples: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 1_000,
            max_samples: 10_000,
        }
    }
}

/// Settings of every collector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorsConfig {
    /// CPU, load, memory, swap, uptime and host identity.
    pub host: CollectorSchedule,
    /// Disk I/O per whole device.
    pub disk: FilteredSchedule,
    /// Filesystem space and inodes per mount point.
    pub filesystem: FilteredSchedule,
    /// Interfaces, TCP/UDP figures and listening sockets.
    pub network: FilteredSchedule,
    /// How often the network collector re-reads the listening sockets (costly:
    /// the kernel walks its whole socket table); described in every batch anyway.
    pub listening_interval_ms: u64,
    /// How the time to full of each filesystem is fitted.
    pub filesystem_trend: crate::collector::fill_trend::TrendConfig,
    /// Steal, iowait, pressure stall information, paging, run queue.
    pub pressure: CollectorSchedule,
    /// Kernel tables and hardware health: conntrack, file handles, sockets,
    /// listen queue drops, OOM kills, boot time, temperatures, EDAC memory
    /// errors, md RAID and bonding (each only where the kernel has it).
    pub kernel: CollectorSchedule,
    /// NVIDIA GPUs through NVML (quiet where there is no driver).
    pub gpu: CollectorSchedule,
    /// The agent's own health: collector runs, CPU, memory, dropped batches.
    pub agent: CollectorSchedule,
    /// DNS probes (none by default).
    pub dns: ProbeSet<crate::collector::dns::DnsProbeConfig>,
    /// TCP connect probes (none by default).
    pub tcp: ProbeSet<crate::collector::tcp::TcpProbeConfig>,
    /// ICMP echo probes (none by default).
    pub icmp: ProbeSet<crate::collector::icmp::IcmpProbeConfig>,
    /// Per-pod and per-claim usage from the node's kubelet (off by default).
    pub kubelet: crate::collector::kubelet::KubeletConfig,
}

/// A schedule and a list of probes; the collector runs only when the list is not empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSet<T> {
    /// Whether the collector runs at all.
    pub enabled: bool,
    /// Time between runs.
    pub interval_ms: u64,
    /// A run still going after this long is abandoned and counted as failed.
    pub deadline_ms: u64,
    /// The probes.
    pub probes: Vec<T>,
}

impl<T> ProbeSet<T> {
    fn empty() -> Self {
        Self {
            enabled: true,
            interval_ms: 30_000,
            deadline_ms: 10_000,
            probes: Vec::new(),
        }
    }

    /// The schedule part; disabled when there is nothing to probe.
    pub fn schedule(&self) -> CollectorSchedule {
        CollectorSchedule {
            enabled: self.enabled && !self.probes.is_empty(),
            interval_ms: self.interval_ms,
            deadline_ms: self.deadline_ms,
        }
    }
}

const fn every_10s(enabled: bool) -> CollectorSchedule {
    CollectorSchedule {
        enabled,
        interval_ms: 10_000,
        deadline_ms: 5_000,
    }
}

fn filtered(exclude: &[&str]) -> FilteredSchedule {
    FilteredSchedule {
        enabled: true,
        interval_ms: 10_000,
        deadline_ms: 5_000,
        include: Vec::new(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

impl Default for CollectorsConfig {
    fn default() -> Self {
        Self {
            host: every_10s(true),
            disk: filtered(&crate::collector::disk::DEFAULT_EXCLUDE),
            filesystem: filtered(&crate::collector::filesystem::DEFAULT_EXCLUDE),
            network: filtered(&crate::collector::network::DEFAULT_EXCLUDE),
            listening_interval_ms: crate::collector::network::LISTENING_INTERVAL_MS,
            filesystem_trend: crate::collector::fill_trend::TrendConfig::default(),
            pressure: every_10s(true),
            kernel: every_10s(true),
            gpu: every_10s(true),
            agent: every_10s(true),
            dns: ProbeSet::empty(),
            tcp: ProbeSet::empty(),
            icmp: ProbeSet::empty(),
            kubelet: crate::collector::kubelet::KubeletConfig::default(),
        }
    }
}

impl CollectorsConfig {
    /// Every collector's schedule with its config key.
    pub fn schedules(&self) -> [(&'static str, CollectorSchedule); 12] {
        [
            ("host", self.host),
            ("disk", self.disk.schedule()),
            ("filesystem", self.filesystem.schedule()),
            ("network", self.network.schedule()),
            ("pressure", self.pressure),
            ("kernel", self.kernel),
            ("gpu", self.gpu),
            ("agent", self.agent),
            ("dns", self.dns.schedule()),
            ("tcp", self.tcp.schedule()),
            ("icmp", self.icmp.schedule()),
            ("kubelet", self.kubelet.schedule()),
        ]
    }
}

/// A schedule plus include/exclude lists of names (`*` matches any run of characters).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilteredSchedule {
    /// Whether the collector runs at all.
    pub enabled: bool,
    /// Time between runs.
    pub interval_ms: u64,
    /// A run still going after this long is abandoned and counted as failed.
    pub deadline_ms: u64,
    /// Only these names (all when empty).
    pub include: Vec<String>,
    /// Never these names (applied after `include`).
    pub exclude: Vec<String>,
}

impl FilteredSchedule {
    /// The schedule part.
    pub fn schedule(&self) -> CollectorSchedule {
        CollectorSchedule {
            enabled: self.enabled,
            interval_ms: self.interval_ms,
            deadline_ms: self.deadline_ms,
        }
    }

    /// The filter part.
    pub fn filter(&self) -> crate::collector::filter::NameFilter {
        crate::collector::filter::NameFilter::new(&self.include, &self.exclude)
    }
}

/// When a collector runs and how long one run may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSchedule {
    /// Whether the collector runs at all.
    pub enabled: bool,
    /// Time between runs.
    pub interval_ms: u64,
    /// A run still going after this long is abandoned and counted as failed.
    pub deadline_ms: u64,
}

/// Filesystem roots of the monitored host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostPaths {
    /// procfs of the host (`HOST_PROC` in a container, e.g. `/host/proc`).
    pub proc: PathBuf,
    /// sysfs of the host.
    pub sys: PathBuf,
    /// The host's root filesystem (for `/etc/machine-id`, `/etc/os-release`).
    pub root: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            sys: "/sys".into(),
            root: "/".into(),
        }
    }
}

impl AgentConfig {
    /// Applies the conventional container variables: `HOST_PROC`, `HOST_SYS` and
    /// `HOST_ROOT` set the host roots (unless the configuration set them), and
    /// `NODE_NAME` the node name. `env` reads a variable, so tests need not touch
    /// the process environment.
    pub fn apply_container_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let defaults = HostPaths::default();
        for (var, current, default) in [
            ("HOST_PROC", &mut self.host.proc, &defaults.proc),
            ("HOST_SYS", &mut self.host.sys, &defaults.sys),
            ("HOST_ROOT", &mut self.host.root, &defaults.root),
        ] {
            if current == default
                && let Some(v) = env(var).filter(|v| !v.is_empty())
            {
                *current = PathBuf::from(v);
            }
        }
        if self.node_name.is_empty()
            && let Some(v) = env("NODE_NAME").filter(|v| !v.is_empty())
        {
            self.node_name = v;
        }
    }

    /// Checks what start-up needs from the machine (`validate` and start-up run
    /// it after [`Self::validate`]): the client certificate, key and CA load, and
    /// the state directory (sequence numbers, disk buffer) can be written or
    /// created. Reads files, writes nothing.
    pub fn preflight(&self) -> Result<(), ConfigErrors> {
        let mut p = Problems::default();
        preflight::tls_files(&mut p, "aggregator.tls", &self.aggregator.tls);
        preflight::writable_dir(&mut p, "state_dir", &self.state_dir);
        p.finish()
    }

    /// Checks values that parse but make no sense. Pure: touches no file or socket.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut p = Problems::default();
        let a = &self.aggregator;
        p.check(!a.endpoints.is_empty(), "aggregator.endpoints", || {
            "at least one endpoint is required, e.g. [\"https://aggregator:7443\"]".into()
        });
        for (i, e) in a.endpoints.iter().enumerate() {
            p.check(
                e.starts_with("https://") && e.len() > "https://".len(),
                &format!("aggregator.endpoints[{i}]"),
                || format!("{e:?} must be an https:// URL (the stream is always TLS)"),
            );
        }
        p.check(!a.server_name.is_empty(), "aggregator.server_name", || {
            "must name the aggregator's certificate, e.g. \"localhost\"".into()
        });
        p.check(
            a.max_in_flight_batches >= 1,
            "aggregator.max_in_flight_batches",
            || "must be at least 1".into(),
        );
        p.check(
            a.backoff_initial_ms >= 1 && a.backoff_initial_ms <= a.backoff_max_ms,
            "aggregator.backoff_initial_ms",
            || "must be at least 1 and at most aggregator.backoff_max_ms".into(),
        );
        p.check(
            a.connect_timeout_ms >= 1,
            "aggregator.connect_timeout_ms",
            || "must be at least 1".into(),
        );
        p.check(
            self.batch.flush_interval_ms >= 10,
            "batch.flush_interval_ms",
            || "must be at least 10".into(),
        );
        p.check(self.batch.max_samples >= 1, "batch.max_samples", || {
            "must be at least 1".into()
        });
        for (field, message) in self.buffer.problems() {
            p.push(format!("buffer.{field}"), message);
        }
        p.check(
            self.metrics_listen.is_empty()
                || self.metrics_listen.parse::<std::net::SocketAddr>().is_ok(),
            "metrics_listen",
            || {
                format!(
                    "{:?} must be ip:port (e.g. 127.0.0.1:9465) or empty",
                    self.metrics_listen
                )
            },
        );
        p.check(
            self.collectors.filesystem_trend.point_ms >= 1_000
                && self.collectors.filesystem_trend.min_span_ms
                    <= self.collectors.filesystem_trend.window_ms,
            "collectors.filesystem_trend",
            || "point_ms must be at least 1000 and min_span_ms at most window_ms".into(),
        );
        p.check(
            self.collectors.listening_interval_ms >= 1_000,
            "collectors.listening_interval_ms",
            || "must be at least 1000".into(),
        );
        p.check(
            self.collectors.schedules().iter().any(|(_, s)| s.enabled),
            "collectors",
            || "at least one collector must be enabled".into(),
        );
        for (field, problem) in self.collectors.kubelet.problems() {
            p.push(format!("collectors.kubelet.{field}"), problem);
        }
        for (i, probe) in self.collectors.dns.probes.iter().enumerate() {
            for problem in probe.problems() {
                p.push(format!("collectors.dns.probes[{i}]"), problem);
            }
        }
        for (i, probe) in self.collectors.tcp.probes.iter().enumerate() {
            for problem in probe.problems() {
                p.push(format!("collectors.tcp.probes[{i}]"), problem);
            }
        }
        // Probes of one target are one resource: a second would overwrite the first
        // (and duplicate ICMP targets would see each other's replies).
        let mut seen = std::collections::HashSet::new();
        for (i, probe) in self.collectors.dns.probes.iter().enumerate() {
            let key = (
                probe.name.trim_end_matches('.').to_ascii_lowercase(),
                probe.record_type.to_ascii_uppercase(),
                probe.servers.first().cloned(),
            );
            p.check(
                seen.insert(key),
                &format!("collectors.dns.probes[{i}]"),
                || "repeats another probe's name, record type and first server".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, probe) in self.collectors.tcp.probes.iter().enumerate() {
            p.check(
                seen.insert(probe.address.clone()),
                &format!("collectors.tcp.probes[{i}]"),
                || format!("address {:?} appears twice", probe.address),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, probe) in self.collectors.icmp.probes.iter().enumerate() {
            let target = probe
                .target
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            p.check(
                seen.insert(target),
                &format!("collectors.icmp.probes[{i}]"),
                || format!("target {:?} appears twice", probe.target),
            );
        }
        // Probes run in parallel; the slowest must finish within the deadline, or
        // the whole run (every probe's result) is abandoned.
        let slowest_dns = self
            .collectors
            .dns
            .probes
            .iter()
            .map(|p| p.timeout_ms)
            .max()
            .unwrap_or(0);
        let slowest_tcp = self
            .collectors
            .tcp
            .probes
            .iter()
            .map(|p| p.timeout_ms)
            .max()
            .unwrap_or(0);
        let slowest_icmp = self
            .collectors
            .icmp
            .probes
            .iter()
            .map(|p| p.budget_ms())
            .max()
            .unwrap_or(0);
        for (i, probe) in self.collectors.icmp.probes.iter().enumerate() {
            for problem in probe.problems() {
                p.push(format!("collectors.icmp.probes[{i}]"), problem);
            }
        }
        for (name, slowest, deadline) in [
            ("dns", slowest_dns, self.collectors.dns.deadline_ms),
            ("tcp", slowest_tcp, self.collectors.tcp.deadline_ms),
            ("icmp", slowest_icmp, self.collectors.icmp.deadline_ms),
        ] {
            p.check(
                slowest < deadline,
                &format!("collectors.{name}.deadline_ms"),
                || format!("must be above the longest probe run ({slowest} ms: timeout, and for ICMP the spacing of the requests)"),
            );
        }
        for (name, s) in self.collectors.schedules() {
            p.check(
                (u64::from(MIN_INTERVAL_MS)..=u64::from(MAX_INTERVAL_MS)).contains(&s.interval_ms),
                &format!("collectors.{name}.interval_ms"),
                || {
                    format!(
                        "must be {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS} (one hour), got {}",
                        s.interval_ms
                    )
                },
            );
            p.check(
                s.deadline_ms >= 1 && s.deadline_ms <= s.interval_ms,
                &format!("collectors.{name}.deadline_ms"),
                || format!("must be at least 1 and at most collectors.{name}.interval_ms"),
            );
        }
        p.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::build_collectors;
    use infrawatch_common::config::{ConfigSources, load};

    #[test]
    fn packaged_example_config_loads_and_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/agent.toml");
        let cfg: AgentConfig = load(ConfigSources {
            file: Some(std::path::Path::new(path)),
            env_prefix: "INFRAWATCH_AGENT_TEST_UNSET_",
            overrides: &[],
        })
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.aggregator.endpoints,
            vec!["https://aggregator.example:7443"]
        );
        assert_eq!(cfg.collectors.host.interval_ms, 10_000);
    }

    #[test]
    fn container_variables_fill_unset_paths_only() {
        let mut cfg = AgentConfig::default();
        cfg.host.sys = "/custom/sys".into();
        let env = |k: &str| match k {
            "HOST_PROC" => Some("/host/proc".to_string()),
            "HOST_SYS" => Some("/host/sys".to_string()),
            "NODE_NAME" => Some("node-7".to_string()),
            _ => None,
        };
        cfg.apply_container_env(env);
        assert_eq!(cfg.host.proc, PathBuf::from("/host/proc"));
        assert_eq!(
            cfg.host.sys,
            PathBuf::from("/custom/sys"),
            "configured value wins"
        );
        assert_eq!(cfg.host.root, PathBuf::from("/"));
        assert_eq!(cfg.node_name, "node-7");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut cfg = AgentConfig::default();
        cfg.aggregator.endpoints = vec!["http://plain:80".into()];
        cfg.collectors.host.interval_ms = 10;
        let err = cfg.validate().unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"aggregator.endpoints[0]"), "{fields:?}");
        assert!(
            fields.contains(&"collectors.host.interval_ms"),
            "{fields:?}"
        );
    }

    #[test]
    fn kubelet_settings_load_and_are_checked() {
        let load_with = |overrides: &[&str]| -> Result<AgentConfig, ConfigErrors> {
            let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
            load(ConfigSources {
                file: None,
                env_prefix: "INFRAWATCH_AGENT_TEST_UNSET_",
                overrides: &overrides,
            })
        };
        let cfg = load_with(&[]).unwrap();
        assert!(!cfg.collectors.kubelet.enabled, "off unless configured");
        cfg.validate().unwrap();

        // An IPv6 node address put into the URL as it is, as $(HOST_IP) does.
        let cfg = load_with(&[
            "collectors.kubelet.enabled=true",
            "collectors.kubelet.url=https://fd00::7:10250/stats/summary",
            "collectors.kubelet.insecure_skip_verify=true",
        ])
        .unwrap();
        assert_eq!(cfg.collectors.kubelet.interval_ms, 15_000);
        cfg.validate().unwrap();
        assert!(
            build_collectors(&cfg, "host/m")
                .unwrap()
                .iter()
                .any(|c| c.collector.name() == "kubelet")
        );

        let cfg = load_with(&[
            "collectors.kubelet.enabled=true",
            "collectors.kubelet.url=http://127.0.0.1:10250/stats/summary",
            "collectors.kubelet.interval_ms=50",
            "collectors.kubelet.timeout_ms=20000",
        ])
        .unwrap();
        let err = cfg.validate().unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        for field in [
            "collectors.kubelet.url",
            "collectors.kubelet.timeout_ms",
            "collectors.kubelet.interval_ms",
        ] {
            assert!(fields.contains(&field), "{field} in {fields:?}");
        }
        let err = load_with(&["collectors.kubelet.tokenfile=/x"]).unwrap_err();
        assert!(err.to_string().contains("tokenfile"), "{err}");
    }

    mod fuzz {
        //! Property tests of the configuration parser: any file text and any
        //! `--set` override either loads or yields errors naming fields; nothing
        //! panics, and validation of whatever loads does not panic either.

        use super::*;
        use proptest::prelude::*;

        fn toml_like() -> impl Strategy<Value = String> {
            let line = prop_oneof![
                "[a-z_.]{1,30} = [0-9]{1,12}",
                "[a-z_.]{1,30} = \"[ -~]{0,20}\"",
                "\\[[a-z_.]{1,20}\\]",
                "[a-z_]{1,12} = \\[[0-9, \"a-z]{0,20}\\]",
                ".{0,30}",
                Just("[buffer]\\nmax_bytes = 1".to_string()),
            ];
            prop::collection::vec(line, 0..8).prop_map(|l| l.join("\n"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn any_file_and_override_loads_or_names_the_problem(
                text in toml_like(),
                key in "[a-z_.]{0,30}",
                value in ".{0,20}",
            ) {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("c.toml");
                std::fs::write(&path, &text).unwrap();
                let overrides = vec![format!("{key}={value}")];
                let loaded: Result<AgentConfig, _> = load(ConfigSources {
                    file: Some(&path),
                    env_prefix: "INFRAWATCH_FUZZ_UNSET_",
                    overrides: &overrides,
                });
                match loaded {
                    Ok(c) => {
                        if let Err(e) = c.validate() {
                            prop_assert!(e.0.iter().all(|p| !p.field.is_empty()));
                        }
                    }
                    Err(e) => prop_assert!(!e.0.is_empty()),
                }
            }
        }
    }
}
