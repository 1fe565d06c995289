//! Row shapes and SQL text, shared by both backends.

use std::collections::BTreeMap;

use infrawatch_common::resource::health_name;
use serde::Serialize;

use super::{StoreError, health_from_db, reasons_from_db};
use crate::model::{Health, Reason, ResourceRecord};

pub(super) const UPSERT_RESOURCE: &str = "INSERT INTO resources \
    (id, kind, labels, attributes, health, reasons, observed_at_ms, resource_version, source, interval_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
    ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, labels = excluded.labels, \
    attributes = excluded.attributes, health = excluded.health, reasons = excluded.reasons, \
    observed_at_ms = excluded.observed_at_ms, resource_version = excluded.resource_version, \
    source = excluded.source, interval_ms = excluded.interval_ms, deleted_at_ms = NULL \
    WHERE resources.resource_version = excluded.resource_version - 1";

/// A resource deleted at its source becomes a tombstone: its last state, marked
/// deleted, at the version after the stored one (or nothing is written).
pub(super) const TOMBSTONE_RESOURCE: &str = "UPDATE resources SET health = $2, reasons = $3, \
    observed_at_ms = $4, resource_version = $5, source = $6, deleted_at_ms = $7 \
    WHERE id = $1 AND resource_version = $5 - 1";

pub(super) const SELECT_RESOURCES_WHERE_ID_IN: &str = "SELECT id, kind, labels, attributes, health, reasons, \
    observed_at_ms, resource_version, source, interval_ms, deleted_at_ms FROM resources WHERE id IN (";

pub(super) const SELECT_RESOURCES: &str = "SELECT id, kind, labels, attributes, health, reasons, \
    observed_at_ms, resource_version, source, interval_ms, deleted_at_ms FROM resources ORDER BY id";

pub(super) const INSERT_HISTORY: &str = "INSERT INTO health_history \
    (resource_id, resource_version, previous_health, health, reasons, changed, observed_at_ms, recorded_at_ms, source) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";

/// The newest history entry of `$1` observed at or before `$2`.
pub(super) const SELECT_HISTORY_BEFORE: &str = "SELECT resource_id, resource_version, previous_health, \
    health, reasons, changed, observed_at_ms, recorded_at_ms, source FROM health_history \
    WHERE resource_id = $1 AND observed_at_ms <= $2 ORDER BY resource_version DESC LIMIT 1";

/// The history entries of `$1` observed in `($2, $3]`, oldest first, at most `$4`.
pub(super) const SELECT_HISTORY_WITHIN: &str = "SELECT resource_id, resource_version, previous_health, \
    health, reasons, changed, observed_at_ms, recorded_at_ms, source FROM health_history \
    WHERE resource_id = $1 AND observed_at_ms > $2 AND observed_at_ms <= $3 \
    ORDER BY resource_version LIMIT $4";

pub(super) const SELECT_HISTORY: &str = "SELECT resource_id, resource_version, previous_health, health, \
    reasons, changed, observed_at_ms, recorded_at_ms, source FROM health_history \
    WHERE resource_id = $1 ORDER BY resource_version DESC LIMIT $2";

/// The sample flush moves a cursor forward (never back), while the session
/// epoch (`$4`) holds.
pub(super) const ADVANCE_CURSOR: &str = "UPDATE agent_cursors SET \
    last_seq = CASE WHEN $2 > last_seq THEN $2 ELSE last_seq END, \
    state_seq = CASE WHEN $2 > state_seq THEN $2 ELSE state_seq END, \
    updated_at_ms = $3 WHERE agent_id = $1 AND epoch = $4";
/// The same for many cursors at once on PostgreSQL (arrays of ids, seqs and
/// epochs); returns the ids whose epoch held.
pub(super) const ADVANCE_CURSORS_PG: &str = "UPDATE agent_cursors AS c SET \
    last_seq = CASE WHEN u.seq > c.last_seq THEN u.seq ELSE c.last_seq END, \
    state_seq = CASE WHEN u.seq > c.state_seq THEN u.seq ELSE c.state_seq END, \
    updated_at_ms = $4 \
    FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS u(id, seq, epoch) \
    WHERE c.agent_id = u.id AND c.epoch = u.epoch RETURNING c.agent_id";
/// A state commit moves the state position forward (never back), while the
/// session epoch (`$4`) holds.
pub(super) const ADVANCE_STATE_CURSOR: &str = "UPDATE agent_cursors SET \
    state_seq = CASE WHEN $2 > state_seq THEN $2 ELSE state_seq END, \
    updated_at_ms = $3 WHERE agent_id = $1 AND epoch = $4";
/// Rollup increments from arrays on PostgreSQL: one statement however many rows.
pub(super) const UPSERT_ROLLUPS_PG: &str = "INSERT INTO metric_rollups \
    (resource_id, metric, attributes, bucket_start_ms, sample_count, value_sum, value_min, value_max, value_last, last_ts_ms) \
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
    $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::bigint[])";
pub(super) const INSERT_ROLLUP_PREFIX: &str = "INSERT INTO metric_rollups \
    (resource_id, metric, attributes, bucket_start_ms, sample_count, value_sum, value_min, value_max, value_last, last_ts_ms) ";

pub(super) const ROLLUP_CONFLICT: &str = " ON CONFLICT (resource_id, metric, attributes, bucket_start_ms) DO UPDATE SET \
    sample_count = metric_rollups.sample_count + excluded.sample_count, \
    value_sum = metric_rollups.value_sum + excluded.value_sum, \
    value_min = CASE WHEN excluded.value_min < metric_rollups.value_min THEN excluded.value_min ELSE metric_rollups.value_min END, \
    value_max = CASE WHEN excluded.value_max > metric_rollups.value_max THEN excluded.value_max ELSE metric_rollups.value_max END, \
    value_last = CASE WHEN excluded.last_ts_ms >= metric_rollups.last_ts_ms THEN excluded.value_last ELSE metric_rollups.value_last END, \
    last_ts_ms = CASE WHEN excluded.last_ts_ms >= metric_rollups.last_ts_ms THEN excluded.last_ts_ms ELSE metric_rollups.last_ts_ms END";

pub(super) const SELECT_ROLLUPS: &str = "SELECT bucket_start_ms, sample_count, value_sum, value_min, \
    value_max, value_last FROM metric_rollups WHERE resource_id = $1 AND metric = $2 AND attributes = $3 \
    AND bucket_start_ms >= $4 AND bucket_start_ms <= $5 ORDER BY bucket_start_ms";

/// Sequence numbers are u64 on the wire and BIGINT in the database; the agent never
/// comes near 2^63, and a larger value saturates rather than wrapping.
pub(super) fn seq_to_db(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn json<T: Serialize>(id: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

fn from_json<T: serde::de::DeserializeOwned>(
    id: &str,
    field: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        reason: format!("{field}: {e}"),
    })
}

pub(super) struct ResourceRow {
    pub id: String,
    pub kind: String,
    pub labels: String,
    pub attributes: String,
    pub health: String,
    pub reasons: String,
    pub observed_at_ms: i64,
    pub resource_version: i64,
    pub source: String,
    pub interval_ms: i64,
    /// Set on a tombstone: when the resource was deleted.
    pub deleted_at_ms: Option<i64>,
}

impl ResourceRow {
    /// Reads the columns of [`SELECT_RESOURCES`] from a result row of either
    /// backend.
    pub(super) fn read<'r, R>(row: &'r R) -> Result<Self, StoreError>
    where
        R: sqlx::Row,
        &'static str: sqlx::ColumnIndex<R>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            labels: row.try_get("labels")?,
            attributes: row.try_get("attributes")?,
            health: row.try_get("health")?,
            reasons: row.try_get("reasons")?,
            observed_at_ms: row.try_get("observed_at_ms")?,
            resource_version: row.try_get("resource_version")?,
            source: row.try_get("source")?,
            interval_ms: row.try_get("interval_ms")?,
            deleted_at_ms: row.try_get("deleted_at_ms")?,
        })
    }

    pub(super) fn from_record(r: &ResourceRecord) -> Result<Self, StoreError> {
        Ok(Self {
            id: r.id.clone(),
            kind: r.kind.clone(),
            labels: json(&r.id, &r.labels)?,
            attributes: json(&r.id, &r.attributes)?,
            health: health_name(r.health).to_string(),
            reasons: json(&r.id, &r.reasons)?,
            observed_at_ms: r.observed_at_ms,
            resource_version: seq_to_db(r.version),
            source: r.source.clone(),
            interval_ms: i64::from(r.interval_ms),
            deleted_at_ms: None,
        })
    }

    pub(super) fn into_record(self) -> Result<ResourceRecord, StoreError> {
        let labels: BTreeMap<String, String> = from_json(&self.id, "labels", &self.labels)?;
        let attributes: BTreeMap<String, String> =
            from_json(&self.id, "attributes", &self.attributes)?;
        Ok(ResourceRecord {
            health: health_from_db(&self.id, &self.health)?,
            reasons: reasons_from_db(&self.id, &self.reasons)?,
            kind: self.kind,
            labels,
            attributes,
            relations: Vec::new(),
            observed_at_ms: self.observed_at_ms,
            version: u64::try_from(self.resource_version).unwrap_or(0),
            source: self.source,
            interval_ms: u32::try_from(self.interval_ms).unwrap_or(0),
            id: self.id,
        })
    }
}

/// One stored change of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// The resource.
    pub resource_id: String,
    /// Its new version.
    pub resource_version: u64,
    /// Health before the change.
    pub previous_health: Health,
    /// Health after.
    pub health: Health,
    /// Reasons after.
    pub reasons: Vec<Reason>,
    /// Which fields changed.
    pub changed: Vec<String>,
    /// When the data was observed.
    pub observed_at_ms: i64,
    /// When the aggregator recorded the change.
    pub recorded_at_ms: i64,
    /// Who observed it.
    pub source: String,
}

impl HistoryRow {
    /// Reads the columns of [`SELECT_HISTORY`] from a result row of either
    /// backend.
    pub(super) fn read<'r, R>(row: &'r R) -> Result<Self, StoreError>
    where
        R: sqlx::Row,
        &'static str: sqlx::ColumnIndex<R>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
            resource_id: row.try_get("resource_id")?,
            resource_version: row.try_get("resource_version")?,
            previous_health: row.try_get("previous_health")?,
            health: row.try_get("health")?,
            reasons: row.try_get("reasons")?,
            changed: row.try_get("changed")?,
            observed_at_ms: row.try_get("observed_at_ms")?,
            recorded_at_ms: row.try_get("recorded_at_ms")?,
            source: row.try_get("source")?,
        })
    }
}

pub(super) struct HistoryRow {
    pub resource_id: String,
    pub resource_version: i64,
    pub previous_health: String,
    pub health: String,
    pub reasons: String,
    pub changed: String,
    pub observed_at_ms: i64,
    pub recorded_at_ms: i64,
    pub source: String,
}

impl HistoryRow {
    pub(super) fn from_entry(h: &HistoryEntry) -> Result<Self, StoreError> {
        Ok(Self {
            resource_id: h.resource_id.clone(),
            resource_version: seq_to_db(h.resource_version),
            previous_health: health_name(h.previous_health).to_string(),
            health: health_name(h.health).to_string(),
            reasons: json(&h.resource_id, &h.reasons)?,
            changed: json(&h.resource_id, &h.changed)?,
            observed_at_ms: h.observed_at_ms,
            recorded_at_ms: h.recorded_at_ms,
            source: h.source.clone(),
        })
    }

    pub(super) fn into_entry(self) -> Result<HistoryEntry, StoreError> {
        Ok(HistoryEntry {
            previous_health: health_from_db(&self.resource_id, &self.previous_health)?,
            health: health_from_db(&self.resource_id, &self.health)?,
            reasons: reasons_from_db(&self.resource_id, &self.reasons)?,
            changed: from_json(&self.resource_id, "changed", &self.changed)?,
            resource_version: u64::try_from(self.resource_version).unwrap_or(0),
            observed_at_ms: self.observed_at_ms,
            recorded_at_ms: self.recorded_at_ms,
            source: self.source,
            resource_id: self.resource_id,
        })
    }
}
