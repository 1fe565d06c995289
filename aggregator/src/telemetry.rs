//! The aggregator's own metrics: names in one place, and the Prometheus recorder
//! whose rendering `/metrics` serves.

use std::sync::atomic::{AtomicI64, Ordering};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Lets a repeated warning through at most once per interval (refusals are
/// counted every time; their log lines are bounded).
#[derive(Debug)]
pub struct WarnEvery {
    every_ms: i64,
    warned_at_ms: AtomicI64,
}

impl WarnEvery {
    /// At most one warning per `every_ms`.
    pub const fn new(every_ms: i64) -> Self {
        Self {
            every_ms,
            warned_at_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// True at most once per interval: whether to log now (`now_ms`).
    pub fn should_warn(&self, now_ms: i64) -> bool {
        let last = self.warned_at_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= self.every_ms
            && self
                .warned_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Counter by `cluster` and `kind`: complete Kubernetes lists (the first, and
/// every relist after `410 Gone` or a broken watch).
pub const K8S_LISTS: &str = "infrawatch_aggregator_k8s_lists_total";
/// Counter by `cluster` and `kind`: failed Kubernetes list or watch calls.
pub const K8S_WATCH_ERRORS: &str = "infrawatch_aggregator_k8s_watch_errors_total";
/// Gauge by `cluster`: objects in the Kubernetes cache.
pub const K8S_OBJECTS: &str = "infrawatch_aggregator_k8s_objects";
/// Histogram by `cluster`: from a watch delivering a change to its report being
/// committed (batching included), seconds.
pub const K8S_CHANGE_TO_COMMIT: &str = "infrawatch_aggregator_k8s_change_to_commit_seconds";

/// Gauge: agents with an open stream.
pub const CONNECTED_AGENTS: &str = "infrawatch_aggregator_connected_agents";
/// Counter by `result` (applied, duplicate, rejected, failed): batches received.
pub const BATCHES: &str = "infrawatch_aggregator_ingest_batches_total";
/// Counter: samples applied.
pub const SAMPLES: &str = "infrawatch_aggregator_ingest_samples_total";
/// Counter by `reason`: samples dropped during validation.
pub const SAMPLES_DROPPED: &str = "infrawatch_aggregator_ingest_samples_dropped_total";
/// Histogram by `level` (received, durable): seconds from a batch's arrival to
/// its acknowledgement at that level.
pub const INGEST_TO_ACK: &str = "infrawatch_aggregator_ingest_to_ack_duration_seconds";
/// Histogram: seconds one flush of the sample path took (take, write, note).
pub const FLUSH_DURATION: &str = "infrawatch_aggregator_flush_duration_seconds";
/// Counter by `result` (ok, failed): flushes of the sample path.
pub const FLUSHES: &str = "infrawatch_aggregator_flushes_total";
/// Gauge: seconds since the oldest unflushed sample source was last flushed.
pub const FLUSH_AGE: &str = "infrawatch_aggregator_flush_age_seconds";
/// Counter: batches a source sent while its unflushed data was at the bound
/// (`ingest.max_unflushed_ms`); the stream waited for a flush before reading on.
pub const FLUSH_WAITS: &str = "infrawatch_aggregator_ingest_flush_waits_total";
/// Histogram by `operation`: seconds per database operation.
pub const DB_DURATION: &str = "infrawatch_aggregator_store_duration_seconds";
/// Counter by `table` (resources, history, cursors, rollups, events): rows written
/// by committed transactions.
pub const STORE_ROWS: &str = "infrawatch_aggregator_store_rows_total";
/// Histogram by `work` (batches, sweep): seconds the writer spent on one
/// committed group of batches (plan, commit, apply, answer) or one staleness
/// sweep that changed something; against
/// `store_duration_seconds{operation="commit"}` it gives the share of the
/// writer's time spent in the database.
pub const WRITE_GROUP_DURATION: &str = "infrawatch_aggregator_ingest_group_duration_seconds";
/// Counter: state commits refused because another replica had written a newer
/// version of a resource first (the group is planned again).
pub const STATE_CONFLICTS: &str = "infrawatch_aggregator_state_conflicts_total";
/// Counter: sources whose flushed data another replica's session fenced off.
pub const FLUSH_FENCED: &str = "infrawatch_aggregator_flush_fenced_total";
/// Gauge: 1 while this replica holds the leader lease.
pub const LEADER: &str = "infrawatch_aggregator_leader";
/// Counter: events the sequencer gave positions.
pub const SEQUENCED: &str = "infrawatch_aggregator_events_sequenced_total";
/// Gauge: health rules in force (built-in and from rule files).
pub const RULES_LOADED: &str = "infrawatch_aggregator_rules_loaded";
/// Counter: reloads of changed rule files that failed (the rules loaded
/// before stay in force).
pub const RULES_RELOAD_FAILURES: &str = "infrawatch_aggregator_rules_reload_failures_total";
/// Counter: resources the staleness sweep marked UNKNOWN.
pub const MARKED_STALE: &str = "infrawatch_aggregator_resources_marked_stale_total";
/// Counter by `operation`: failed database operations.
pub const DB_ERRORS: &str = "infrawatch_aggregator_store_errors_total";
/// Counter: resource state changes (new resource versions).
pub const STATE_CHANGES: &str = "infrawatch_aggregator_state_changes_total";
/// Gauge: resources in the model.
pub const RESOURCES: &str = "infrawatch_aggregator_resources";
/// Counter: data gaps an agent reported again (for batches an earlier gap
/// covered); left out, neither stored nor published twice.
pub const GAPS_REPEATED: &str = "infrawatch_aggregator_gaps_repeated_total";
/// Counter by `cause`: samples agents reported lost (data gaps).
pub const GAP_SAMPLES: &str = "infrawatch_aggregator_agent_lost_samples_total";
/// Counter by `reason` (handshake, timeout, connections_per_identity): connections
/// refused during or right after the TLS handshake.
pub const TLS_REFUSED: &str = "infrawatch_aggregator_tls_refused_total";
/// Counter by `reason` (role, ownership, scope, budget, stream_cap,
/// header_timeout): requests refused for
/// who the client is rather than what it sent.
pub const REFUSED: &str = "infrawatch_aggregator_refused_total";
/// Counter by `code` (the JSON error's code): REST requests answered with an
/// error.
pub const REST_ERRORS: &str = "infrawatch_aggregator_rest_errors_total";
/// Gauge by `agent`: the agent's clock minus the aggregator's, in seconds.
pub const CLOCK_SKEW: &str = "infrawatch_aggregator_agent_clock_skew_seconds";
/// Gauge: series in the hot sample store.
pub const HOT_SERIES: &str = "infrawatch_aggregator_hot_series";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Finer buckets for commit-to-broker-ack latency, whose target is milliseconds.
const PUBLISH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
    0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder (once) and returns the handle `/metrics` renders.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(
            Matcher::Full(crate::events::metric::PUBLISH_LATENCY.into()),
            PUBLISH_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}
