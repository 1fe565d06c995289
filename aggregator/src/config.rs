//! The aggregator's configuration: listeners, TLS, storage, health thresholds and
//! limits. Loaded by [`infrawatch_common::config::load`] and checked by
//! [`AggregatorConfig::validate`] (values) and [`AggregatorConfig::preflight`]
//! (the files they name) before any socket or database is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use infrawatch_common::config::{ConfigErrors, Problems};
use infrawatch_common::preflight;
use infrawatch_common::telemetry::LogFormat;
use infrawatch_common::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::auth::tokens::{self, TokenConfig};

/// Environment prefix of aggregator settings.
pub const ENV_PREFIX: &str = "INFRAWATCH_AGGREGATOR_";

/// Everything the aggregator can be told.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// The mTLS gRPC listener (agent stream, queries, health, reflection).
    pub grpc: GrpcConfig,
    /// The REST listener (queries, `/healthz`, `/readyz`, `/metrics`).
    pub rest: RestConfig,
    /// Where state, history, cursors and rollups are stored.
    pub storage: StorageConfig,
    /// Health rules.
    pub health: HealthConfig,
    /// Ingest pipeline limits.
    pub ingest: IngestConfig,
    /// Event outbox, sinks and retention.
    pub events: EventsConfig,
    /// Replicas on one database: replica id, leader lease, polling.
    pub cluster: crate::cluster::ClusterConfig,
    /// Kubernetes clusters to watch, and their health rules.
    pub kubernetes: crate::sources::k8s::KubernetesConfig,
    /// Rule files (health rules as data).
    pub rules: crate::rules::RulesConfig,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            grpc: GrpcConfig::default(),
            rest: RestConfig::default(),
            storage: StorageConfig::default(),
            health: HealthConfig::default(),
            ingest: IngestConfig::default(),
            events: EventsConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            kubernetes: crate::sources::k8s::KubernetesConfig::default(),
            rules: crate::rules::RulesConfig::default(),
        }
    }
}

/// The gRPC listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// CA that signs client certificates, and the server's certificate and key.
    pub tls: TlsFiles,
    /// Largest decoded message accepted, in bytes; larger ones end that stream.
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Open connections per client identity from one address; connections over
    /// it are closed right after the handshake (an agent needs one).
    pub max_connections_per_identity: usize,
    /// Trust domain of the role URIs in client certificates
    /// (`spiffe://<trust_domain>/<agent|reader|admin>/<name>`); a certificate
    /// whose role URI names another domain has no role here.
    pub trust_domain: String,
    /// How agent certificates are tied to machines (always: one machine per
    /// certificate identity, pinned on its first stream).
    pub machine_binding: MachineBinding,
}

/// How agent certificate identities are tied to machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineBinding {
    /// One machine per identity and one identity per machine: a machine whose
    /// certificate gets another name needs an admin to release the old binding.
    #[default]
    Exclusive,
    /// One machine per identity; a machine may be reported by several
    /// identities over time (per-pod certificates whose names change with every
    /// pod, e.g. from the cert-manager CSI driver). A resource another identity
    /// reports is taken over only once it is UNKNOWN.
    PerIdentity,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            tls: TlsFiles {
                ca: "/etc/infrawatch/tls/ca.pem".into(),
                cert: "/etc/infrawatch/tls/server.pem".into(),
                key: "/etc/infrawatch/tls/server-key.pem".into(),
            },
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 16,
            max_connections_per_identity: 16,
            trust_domain: infrawatch_common::role::DEFAULT_TRUST_DOMAIN.into(),
            machine_binding: MachineBinding::Exclusive,
        }
    }
}

/// The REST listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer tokens accepted on `/api/` and `/metrics`, by name, role and hash
    /// (`[[rest.tokens]]`). Required unless `listen` is a loopback address;
    /// `/healthz` and `/readyz` never need one.
    pub tokens: Vec<TokenConfig>,
    /// A connection that has not sent a request's head (request line and
    /// headers) within this many ms is closed.
    pub header_read_timeout_ms: u64,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            tokens: Vec::new(),
            header_read_timeout_ms: crate::server::http::HEADER_READ_TIMEOUT_MS,
        }
    }
}

/// The database.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `postgres://user@host/db` or `sqlite:///path/to/file.db`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Time to wait for a pooled connection.
    pub acquire_timeout_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "sqlite:///var/lib/infrawatch/infrawatch.db".into(),
            max_connections: 8,
            acquire_timeout_ms: 5_000,
        }
    }
}

/// Health rules for hosts. Utilizations are fractions (0.9 = 90 %), averaged over
/// `evaluation_window_ms`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A resource with no data for this many of its intervals becomes UNKNOWN.
    pub stale_after_missed_intervals: u32,
    /// Window over which samples are averaged before comparing with thresholds.
    pub evaluation_window_ms: u64,
    /// CPU utilization thresholds.
    pub cpu: Thresholds,
    /// Memory utilization thresholds.
    pub memory: Thresholds,
    /// Swap utilization thresholds.
    pub swap: Thresholds,
    /// Share of CPU time stolen by the hypervisor.
    pub cpu_steal: Thresholds,
    /// Share of CPU time idle waiting for I/O.
    pub cpu_iowait: Thresholds,
    /// Pressure stall information, `some` over 10 s, per resource.
    pub cpu_pressure: Thresholds,
    /// See `cpu_pressure`.
    pub memory_pressure: Thresholds,
    /// See `cpu_pressure`.
    pub io_pressure: Thresholds,
    /// Filesystems of hosts.
    pub filesystem: FilesystemRules,
    /// Network interfaces of hosts.
    pub network_interface: InterfaceRules,
}

/// Filesystem rules, after the node-exporter mixin's alerts: space or inodes
/// almost out (free share below a level), filling up (free share below a
/// level and, at the trend of the free space over the last six hours, out
/// within a time), and turned read-only. Shares are fractions.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemRules {
    /// Free space share below which a filesystem is DEGRADED.
    pub space_free_degraded: f64,
    /// Free space share below which it is UNHEALTHY.
    pub space_free_unhealthy: f64,
    /// Free inode share below which it is DEGRADED.
    pub inodes_free_degraded: f64,
    /// Free inode share below which it is UNHEALTHY.
    pub inodes_free_unhealthy: f64,
    /// Filling up, DEGRADED: free share below this...
    pub filling_free_below_degraded: f64,
    /// ...and out of space within this many ms at the current trend.
    pub filling_full_within_ms_degraded: u64,
    /// Filling up, UNHEALTHY: free share below this...
    pub filling_free_below_unhealthy: f64,
    /// ...and out of space within this many ms.
    pub filling_full_within_ms_unhealthy: u64,
}

impl Default for FilesystemRules {
    fn default() -> Self {
        Self {
            space_free_degraded: 0.05,
            space_free_unhealthy: 0.03,
            inodes_free_degraded: 0.05,
            inodes_free_unhealthy: 0.03,
            filling_free_below_degraded: 0.40,
            filling_full_within_ms_degraded: 24 * 3_600_000,
            filling_free_below_unhealthy: 0.20,
            filling_full_within_ms_unhealthy: 4 * 3_600_000,
        }
    }
}

/// Network interface rules: receive or transmit errors, or drops, as a share
/// of the packets over the evaluation window (the mixin's 1 %).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterfaceRules {
    /// Errors per packet above which an interface is DEGRADED.
    pub error_ratio: f64,
    /// Drops per packet above which an interface is DEGRADED.
    pub drop_ratio: f64,
}

impl Default for InterfaceRules {
    fn default() -> Self {
        Self {
            error_ratio: 0.01,
            drop_ratio: 0.01,
        }
    }
}

const fn limits(degraded: f64, unhealthy: f64) -> Thresholds {
    Thresholds {
        degraded,
        unhealthy,
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stale_after_missed_intervals: 3,
            evaluation_window_ms: 60_000,
            cpu: limits(0.90, 0.98),
            memory: limits(0.90, 0.97),
            swap: limits(0.50, 0.90),
            cpu_steal: limits(0.10, 0.30),
            cpu_iowait: limits(0.30, 0.60),
            cpu_pressure: limits(0.25, 0.50),
            memory_pressure: limits(0.10, 0.30),
            io_pressure: limits(0.25, 0.50),
            filesystem: FilesystemRules::default(),
            network_interface: InterfaceRules::default(),
        }
    }
}

/// A DEGRADED and an UNHEALTHY threshold.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// At or above this the resource is DEGRADED.
    pub degraded: f64,
    /// At or above this the resource is UNHEALTHY.
    pub unhealthy: f64,
}

/// Limits and batching of the ingest path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Reports with state changes waiting for the planner, across all sources;
    /// when full, sources wait (and so agents buffer) instead of memory growing.
    pub queue_batches: usize,
    /// Reports written in one state transaction at most (group commit).
    pub group_commit_batches: usize,
    /// Batches of one stream applied and not yet acknowledged, at most.
    pub per_stream_in_flight: usize,
    /// How often the sample path writes its rollups and the agents' cursors
    /// (then acknowledges their batches as durable), in ms; at most 60000.
    pub flush_interval_ms: u64,
    /// A stream stops reading while its agent's samples have waited this long
    /// for a flush (the database is down or slow), in ms; agents keep their
    /// batches meanwhile. At least twice `flush_interval_ms`.
    pub max_unflushed_ms: u64,
    /// Recent raw samples kept in memory per series, by age.
    pub hot_window_ms: u64,
    /// Samples whose time is further than this in the future are dropped and counted.
    pub max_future_skew_ms: i64,
    /// Samples older than this are dropped and counted.
    pub max_sample_age_ms: i64,
    /// Series one agent may have active (seen within `series_active_window_ms`);
    /// samples of further new series are refused and reported in the ack.
    pub max_active_series_per_agent: usize,
    /// New series one agent may start per minute (a bucket of this size that
    /// refills over a minute, so a starting agent can describe itself at once).
    pub max_new_series_per_minute: u32,
    /// A series not seen for this long no longer counts as active.
    pub series_active_window_ms: u64,
    /// Resources one agent's machine may have (its host, probes, GPUs, ...); a
    /// batch that would add more is refused.
    pub max_resources_per_agent: usize,
    /// Relations one resource may carry.
    pub max_relations_per_resource: usize,
    /// Relations all of one agent's resources may carry together.
    pub max_relations_per_agent: usize,
    /// Data gaps one agent identity may have stored (and published) per hour;
    /// further ones are left out and counted.
    pub max_gaps_per_hour: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            queue_batches: 1024,
            group_commit_batches: 64,
            per_stream_in_flight: 64,
            flush_interval_ms: 60_000,
            max_unflushed_ms: 300_000,
            hot_window_ms: 15 * 60 * 1000,
            max_future_skew_ms: 10 * 60 * 1000,
            max_sample_age_ms: 7 * 24 * 3600 * 1000,
            max_active_series_per_agent: 20_000,
            max_new_series_per_minute: 10_000,
            series_active_window_ms: 3600 * 1000,
            max_resources_per_agent: 1_000,
            max_relations_per_resource: 64,
            max_relations_per_agent: 10_000,
            max_gaps_per_hour: 60,
        }
    }
}

/// The event outbox and where events go (`[events]`). A sink is enabled by
/// giving its section (`[events.nats]`, `[events.pulsar]`); several may be.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Every event stays in the outbox at least this long (ms), so clients can
    /// resume live streams from a position.
    pub retention_ms: u64,
    /// Durable subscriptions hold events back at most this long (ms); sinks hold
    /// them until published, however long that takes.
    pub max_retention_ms: u64,
    /// Newest events kept in memory for live consumers.
    pub memory_events: usize,
    /// A publisher readiness check fails when its oldest unpublished event is older
    /// than this (ms); 0 never fails it (the lag is still reported).
    pub max_ready_lag_ms: u64,
    /// NATS JetStream sink.
    pub nats: Option<crate::events::sink::nats::NatsConfig>,
    /// Apache Pulsar sink.
    pub pulsar: Option<crate::events::sink::pulsar::PulsarConfig>,
    /// Event streams (gRPC `WatchEvents` and REST server-sent events) one client
    /// may have open at once.
    pub max_streams_per_client: usize,
    /// Event streams the aggregator serves at once, all clients together.
    pub max_streams: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_ms: 24 * 3600 * 1000,
            max_retention_ms: 7 * 24 * 3600 * 1000,
            memory_events: 65_536,
            max_ready_lag_ms: 0,
            nats: None,
            pulsar: None,
            max_streams_per_client: 8,
            max_streams: 1024,
        }
    }
}

/// The kind of database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl StorageConfig {
    /// The backend named by the URL scheme.
    pub fn backend(&self) -> Option<Backend> {
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if self.url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else {
            None
        }
    }

    /// What is wrong with a URL of a known scheme: one that does not parse, or
    /// an SQLite URL without a file (`sqlite::memory:` is allowed, and loses
    /// everything at a restart).
    pub fn url_problem(&self) -> Option<String> {
        match self.backend()? {
            Backend::Postgres => sqlx::postgres::PgConnectOptions::from_str(&self.url)
                .err()
                .map(|e| format!("{:?} does not parse: {e}", self.url)),
            Backend::Sqlite => {
                if self.sqlite_target().is_none_or(str::is_empty) {
                    return Some(format!(
                        "{:?} names no database file; e.g. sqlite:///var/lib/infrawatch/infrawatch.db",
                        self.url
                    ));
                }
                sqlx::sqlite::SqliteConnectOptions::from_str(&self.url)
                    .err()
                    .map(|e| format!("{:?} does not parse: {e}", self.url))
            }
        }
    }

    /// For SQLite, the database file, if the URL names one.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.sqlite_target()
            .filter(|path| !path.is_empty() && *path != ":memory:")
            .map(PathBuf::from)
    }

    /// For SQLite, what the URL names before its options: a path, `:memory:`,
    /// or nothing.
    fn sqlite_target(&self) -> Option<&str> {
        let rest = self
            .url
            .strip_prefix("sqlite://")
            .or_else(|| self.url.strip_prefix("sqlite:"))?;
        rest.split('?').next()
    }
}

impl AggregatorConfig {
    /// Checks what start-up needs from the machine (`validate` and start-up run
    /// it after [`Self::validate`]): the gRPC certificate, key and CA load, the
    /// SQLite database can be written (or created), and the files
    /// the event sinks read exist. Reads files, writes nothing.
    pub fn preflight(&self) -> Result<(), ConfigErrors> {
        let mut p = Problems::default();
        preflight::tls_files(&mut p, "grpc.tls", &self.grpc.tls);
        if let Some(db) = self.storage.sqlite_path() {
            preflight::writable_file(&mut p, "storage.url", &db);
        }
        if let Some(nats) = &self.events.nats {
            for (field, path) in nats.files() {
                preflight::file(&mut p, &format!("events.nats.{field}"), path);
            }
        }
        if let Some(pulsar) = &self.events.pulsar {
            for (field, path) in pulsar.files() {
                preflight::file(&mut p, &format!("events.pulsar.{field}"), path);
            }
        }
        if let Err(errors) = crate::rules::load(&self.rules, self.ingest.hot_window_ms) {
            for e in errors {
                p.push("rules.paths", e.to_string());
            }
        }
        for (i, c) in self.kubernetes.clusters.iter().enumerate() {
            if let Some(path) = &c.kubeconfig {
                preflight::file(
                    &mut p,
                    &format!("kubernetes.clusters[{i}].kubeconfig"),
                    path,
                );
            }
        }
        p.finish()
    }

    /// Checks values that parse but make no sense. Pure: touches no file or socket.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut p = Problems::default();
        for (field, problem) in self.cluster.problems() {
            p.check(false, field, || problem.clone());
        }
        for (field, problem) in self.kubernetes.problems() {
            p.push(field, problem);
        }
        p.check(self.storage.backend().is_some(), "storage.url", || {
            format!(
                "{:?} must start with postgres://, postgresql:// or sqlite:",
                self.storage.url
            )
        });
        if let Some(problem) = self.storage.url_problem() {
            p.push("storage.url", problem);
        }
        p.check(
            self.storage.max_connections >= 1,
            "storage.max_connections",
            || "must be at least 1".into(),
        );
        p.check(
            !self.rest.tokens.is_empty() || self.rest.listen.ip().is_loopback(),
            "rest.tokens",
            || {
                format!(
                    "at least one token is required when rest.listen ({}) is not a loopback address",
                    self.rest.listen
                )
            },
        );
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.rest.tokens.iter().enumerate() {
            let field = format!("rest.tokens[{i}]");
            p.check(
                tokens::valid_name(&t.name),
                &format!("{field}.name"),
                || {
                    format!(
                        "{:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                        t.name
                    )
                },
            );
            p.check(names.insert(&t.name), &format!("{field}.name"), || {
                format!("{:?} names two tokens", t.name)
            });
            p.check(t.role.may_read(), &format!("{field}.role"), || {
                "must be reader or admin (an agent token could do nothing on REST)".into()
            });
            p.check(
                t.scope().is_none() || t.role == infrawatch_common::role::Role::Reader,
                &format!("{field}.namespaces"),
                || {
                    "clusters and namespaces restrict reader tokens only (an admin sees everything)"
                        .into()
                },
            );
            for (what, list) in [("clusters", &t.clusters), ("namespaces", &t.namespaces)] {
                p.check(
                    list.iter().all(|v| !v.is_empty() && v.len() <= 253),
                    &format!("{field}.{what}"),
                    || "entries must be 1 to 253 characters".into(),
                );
            }
            if let Err(e) = tokens::TokenHash::parse(&t.hash) {
                p.push(format!("{field}.hash"), e);
            }
        }
        p.check(
            (100..=600_000).contains(&self.rest.header_read_timeout_ms),
            "rest.header_read_timeout_ms",
            || "must be 100 to 600000".into(),
        );
        p.check(
            !self.grpc.trust_domain.is_empty()
                && self
                    .grpc
                    .trust_domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')),
            "grpc.trust_domain",
            || {
                "must be letters, digits, '-', '.' or '_' (the host of spiffe://<trust_domain>/...)"
                    .into()
            },
        );
        p.check(
            self.grpc.max_message_bytes >= 1024,
            "grpc.max_message_bytes",
            || "must be at least 1024".into(),
        );
        p.check(
            self.grpc.max_concurrent_streams >= 1,
            "grpc.max_concurrent_streams",
            || "must be at least 1".into(),
        );
        let h = &self.health;
        p.check(
            h.stale_after_missed_intervals >= 1,
            "health.stale_after_missed_intervals",
            || "must be at least 1".into(),
        );
        for rule in crate::health::HOST_RULES {
            let (name, t) = (rule.name, rule.thresholds(h));
            let ok = (0.0..=1.0).contains(&t.degraded)
                && (0.0..=1.0).contains(&t.unhealthy)
                && t.degraded <= t.unhealthy;
            p.check(ok, &format!("health.{name}"), || {
                format!(
                    "degraded ({}) and unhealthy ({}) must be fractions between 0 and 1 with degraded <= unhealthy",
                    t.degraded, t.unhealthy
                )
            });
        }
        let i = &self.ingest;
        for (field, v) in [
            ("ingest.queue_batches", i.queue_batches),
            ("ingest.group_commit_batches", i.group_commit_batches),
            ("ingest.per_stream_in_flight", i.per_stream_in_flight),
            (
                "ingest.max_active_series_per_agent",
                i.max_active_series_per_agent,
            ),
            (
                "ingest.max_new_series_per_minute",
                i.max_new_series_per_minute as usize,
            ),
            (
                "grpc.max_connections_per_identity",
                self.grpc.max_connections_per_identity,
            ),
            ("ingest.max_resources_per_agent", i.max_resources_per_agent),
            (
                "ingest.max_relations_per_resource",
                i.max_relations_per_resource,
            ),
            ("ingest.max_relations_per_agent", i.max_relations_per_agent),
            ("ingest.max_gaps_per_hour", i.max_gaps_per_hour),
            (
                "events.max_streams_per_client",
                self.events.max_streams_per_client,
            ),
            ("events.max_streams", self.events.max_streams),
        ] {
            p.check(v >= 1, field, || "must be at least 1".into());
        }
        p.check(
            i.series_active_window_ms >= 60_000,
            "ingest.series_active_window_ms",
            || "must be at least 60000".into(),
        );
        p.check(
            (100..=60_000).contains(&i.flush_interval_ms),
            "ingest.flush_interval_ms",
            || "must be between 100 and 60000".into(),
        );
        p.check(
            i.max_unflushed_ms >= i.flush_interval_ms.saturating_mul(2),
            "ingest.max_unflushed_ms",
            || {
                format!(
                    "must be at least twice ingest.flush_interval_ms ({})",
                    i.flush_interval_ms
                )
            },
        );
        p.check(i.hot_window_ms >= 60_000, "ingest.hot_window_ms", || {
            "must be at least 60000 (one rollup bucket)".into()
        });
        p.check(
            i.max_future_skew_ms >= 0,
            "ingest.max_future_skew_ms",
            || "must not be negative".into(),
        );
        p.check(
            i.max_sample_age_ms >= 60_000,
            "ingest.max_sample_age_ms",
            || "must be at least 60000".into(),
        );
        let e = &self.events;
        p.check(e.memory_events >= 1, "events.memory_events", || {
            "must be at least 1".into()
        });
        p.check(
            e.max_retention_ms >= e.retention_ms,
            "events.max_retention_ms",
            || format!("must be at least events.retention_ms ({})", e.retention_ms),
        );
        if let Some(nats) = &e.nats {
            for (field, message) in nats.problems() {
                p.push(format!("events.nats.{field}"), message);
            }
        }
        if let Some(pulsar) = &e.pulsar {
            for (field, message) in pulsar.problems() {
                p.push(format!("events.pulsar.{field}"), message);
            }
        }
        p.check(
            h.evaluation_window_ms >= 1_000,
            "health.evaluation_window_ms",
            || "must be at least 1000".into(),
        );
        p.check(
            self.rules.reload_interval_ms >= 100,
            "rules.reload_interval_ms",
            || "must be at least 100".into(),
        );
        let fs = &h.filesystem;
        for (field, value) in [
            ("space_free_degraded", fs.space_free_degraded),
            ("space_free_unhealthy", fs.space_free_unhealthy),
            ("inodes_free_degraded", fs.inodes_free_degraded),
            ("inodes_free_unhealthy", fs.inodes_free_unhealthy),
            (
                "filling_free_below_degraded",
                fs.filling_free_below_degraded,
            ),
            (
                "filling_free_below_unhealthy",
                fs.filling_free_below_unhealthy,
            ),
        ] {
            p.check(
                (0.0..=1.0).contains(&value),
                &format!("health.filesystem.{field}"),
                || format!("must be a share from 0 to 1, not {value}"),
            );
        }
        for (field, degraded, unhealthy) in [
            (
                "space_free_unhealthy",
                fs.space_free_degraded,
                fs.space_free_unhealthy,
            ),
            (
                "inodes_free_unhealthy",
                fs.inodes_free_degraded,
                fs.inodes_free_unhealthy,
            ),
        ] {
            p.check(
                unhealthy <= degraded,
                &format!("health.filesystem.{field}"),
                || format!("must not be above the degraded level {degraded}"),
            );
        }
        let ni = &h.network_interface;
        for (field, value) in [
            ("error_ratio", ni.error_ratio),
            ("drop_ratio", ni.drop_ratio),
        ] {
            p.check(
                (0.0..=1.0).contains(&value),
                &format!("health.network_interface.{field}"),
                || format!("must be a share from 0 to 1, not {value}"),
            );
        }
        p.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrawatch_common::config::{ConfigSources, load};

    #[test]
    fn packaged_example_config_loads_and_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/aggregator.toml");
        let cfg: AggregatorConfig = load(ConfigSources {
            file: Some(std::path::Path::new(path)),
            env_prefix: "INFRAWATCH_AGGREGATOR_TEST_UNSET_",
            overrides: &[],
        })
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.storage.backend(), Some(Backend::Postgres));
        assert_eq!(cfg.health.cpu.degraded, 0.9);
    }

    #[test]
    fn storage_urls_must_parse_and_sqlite_must_name_a_file() {
        let problem = |url: &str| {
            StorageConfig {
                url: url.into(),
                ..StorageConfig::default()
            }
            .url_problem()
        };
        assert_eq!(problem("sqlite:///var/lib/infrawatch/iw.db"), None);
        assert_eq!(problem("sqlite::memory:"), None);
        assert_eq!(problem("postgres://iw@db:5432/iw"), None);
        assert!(
            problem("sqlite:")
                .unwrap()
                .contains("names no database file")
        );
        assert!(
            problem("sqlite://")
                .unwrap()
                .contains("names no database file")
        );
        assert!(
            problem("postgres://iw@db:notaport/iw")
                .unwrap()
                .contains("does not parse")
        );
    }

    #[test]
    fn public_rest_needs_a_token_and_storage_needs_a_scheme() {
        let mut cfg = AggregatorConfig::default();
        cfg.rest.listen = "0.0.0.0:7080".parse().unwrap();
        cfg.storage.url = "mysql://x".into();
        cfg.health.cpu.degraded = 2.0;
        let err = cfg.validate().unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["storage.url", "rest.tokens", "health.cpu"]);
    }

    #[test]
    fn sqlite_paths() {
        let mut s = StorageConfig::default();
        assert_eq!(
            s.sqlite_path(),
            Some(PathBuf::from("/var/lib/infrawatch/infrawatch.db"))
        );
        s.url = "sqlite::memory:".into();
        assert_eq!(s.sqlite_path(), None);
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
                Just("[storage]\\nurl = \"sqlite::memory:\"".to_string()),
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
                let loaded: Result<AggregatorConfig, _> = load(ConfigSources {
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
