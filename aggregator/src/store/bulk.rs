//! The bulk parts of a state commit: resource versions, relation sets,
//! history rows and staged events, the rows a commit has one of per resource.
//! SQLite runs in this process, so a statement per row costs little there;
//! PostgreSQL is a round trip away, so there each part is one statement over
//! arrays (`UNNEST`), whatever the number of rows: a new leader's first list
//! of a large cluster is tens of thousands of resources.

use std::collections::HashMap;

use sqlx::Row;

use super::rows::{self, HistoryRow, ResourceRow};
use super::{StoreError, events};
use crate::events::StoredEvent;
use crate::model::ResourceRecord;

/// Resource rows, their relations, history and staged events, written inside
/// one transaction (`self`).
pub(super) trait BulkWrite {
    /// Writes each row whose stored version is the one before (or that is
    /// new), in the order given (the lock order); the ids not written.
    fn upsert_resources(
        &mut self,
        rows: &[ResourceRow],
    ) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Replaces the relations of each of `ids` by those of its record in
    /// `by_id` (none for an id without one).
    fn replace_relations(
        &mut self,
        ids: &[&String],
        by_id: &HashMap<&str, &ResourceRecord>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Inserts history rows (a row already there stays).
    fn insert_history(
        &mut self,
        rows: &[HistoryRow],
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Stages `events` for the sequencer, in order, created at `now`.
    fn stage_events(
        &mut self,
        events: &[StoredEvent],
        now: i64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl BulkWrite for sqlx::SqliteConnection {
    async fn upsert_resources(&mut self, rows: &[ResourceRow]) -> Result<Vec<String>, StoreError> {
        let mut conflicts = Vec::new();
        for row in rows {
            let written = sqlx::query(rows::UPSERT_RESOURCE)
                .bind(&row.id)
                .bind(&row.kind)
                .bind(&row.labels)
                .bind(&row.attributes)
                .bind(&row.health)
                .bind(&row.reasons)
                .bind(row.observed_at_ms)
                .bind(row.resource_version)
                .bind(&row.source)
                .bind(row.interval_ms)
                .execute(&mut *self)
                .await?
                .rows_affected();
            if written == 0 {
                conflicts.push(row.id.clone());
            }
        }
        Ok(conflicts)
    }

    async fn replace_relations(
        &mut self,
        ids: &[&String],
        by_id: &HashMap<&str, &ResourceRecord>,
    ) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query("DELETE FROM relations WHERE from_id = $1")
                .bind(*id)
                .execute(&mut *self)
                .await?;
            for rel in by_id.get(id.as_str()).map_or(&[][..], |r| &r.relations[..]) {
                sqlx::query(INSERT_RELATION)
                    .bind(*id)
                    .bind(&rel.relation_type)
                    .bind(&rel.to_id)
                    .execute(&mut *self)
                    .await?;
            }
        }
        Ok(())
    }

    async fn insert_history(&mut self, rows: &[HistoryRow]) -> Result<(), StoreError> {
        for row in rows {
            sqlx::query(rows::INSERT_HISTORY)
                .bind(&row.resource_id)
                .bind(row.resource_version)
                .bind(&row.previous_health)
                .bind(&row.health)
                .bind(&row.reasons)
                .bind(&row.changed)
                .bind(row.observed_at_ms)
                .bind(row.recorded_at_ms)
                .bind(&row.source)
                .execute(&mut *self)
                .await?;
        }
        Ok(())
    }

    async fn stage_events(&mut self, events: &[StoredEvent], now: i64) -> Result<(), StoreError> {
        for e in events {
            sqlx::query(events::STAGE_EVENT)
                .bind(&e.event.event_id)
                .bind(&e.event.resource_id)
                .bind(&e.event.resource_kind)
                .bind(rows::seq_to_db(e.event.resource_version))
                .bind(e.payload.as_ref())
                .bind(now)
                .execute(&mut *self)
                .await?;
        }
        Ok(())
    }
}

const INSERT_RELATION: &str = "INSERT INTO relations (from_id, relation_type, to_id) \
    VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

/// [`rows::UPSERT_RESOURCE`] over arrays, in the arrays' order; returns the
/// ids written.
const UPSERT_RESOURCES_PG: &str = "INSERT INTO resources \
    (id, kind, labels, attributes, health, reasons, observed_at_ms, resource_version, source, interval_ms) \
    SELECT id, kind, labels, attributes, health, reasons, observed_at_ms, resource_version, source, interval_ms \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
    $7::bigint[], $8::bigint[], $9::text[], $10::bigint[]) WITH ORDINALITY \
    AS t(id, kind, labels, attributes, health, reasons, observed_at_ms, resource_version, source, interval_ms, n) \
    ORDER BY n \
    ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, labels = excluded.labels, \
    attributes = excluded.attributes, health = excluded.health, reasons = excluded.reasons, \
    observed_at_ms = excluded.observed_at_ms, resource_version = excluded.resource_version, \
    source = excluded.source, interval_ms = excluded.interval_ms, deleted_at_ms = NULL \
    WHERE resources.resource_version = excluded.resource_version - 1 \
    RETURNING id";

impl BulkWrite for sqlx::PgConnection {
    async fn upsert_resources(&mut self, rows: &[ResourceRow]) -> Result<Vec<String>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let column = |f: fn(&ResourceRow) -> &String| -> Vec<&str> {
            rows.iter().map(|r| f(r).as_str()).collect()
        };
        let written = sqlx::query(UPSERT_RESOURCES_PG)
            .bind(column(|r| &r.id))
            .bind(column(|r| &r.kind))
            .bind(column(|r| &r.labels))
            .bind(column(|r| &r.attributes))
            .bind(column(|r| &r.health))
            .bind(column(|r| &r.reasons))
            .bind(rows.iter().map(|r| r.observed_at_ms).collect::<Vec<i64>>())
            .bind(
                rows.iter()
                    .map(|r| r.resource_version)
                    .collect::<Vec<i64>>(),
            )
            .bind(column(|r| &r.source))
            .bind(rows.iter().map(|r| r.interval_ms).collect::<Vec<i64>>())
            .fetch_all(&mut *self)
            .await?;
        let written: std::collections::HashSet<String> = written
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?;
        Ok(rows
            .iter()
            .filter(|r| !written.contains(&r.id))
            .map(|r| r.id.clone())
            .collect())
    }

    async fn replace_relations(
        &mut self,
        ids: &[&String],
        by_id: &HashMap<&str, &ResourceRecord>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let from: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        sqlx::query("DELETE FROM relations WHERE from_id = ANY($1::text[])")
            .bind(&from)
            .execute(&mut *self)
            .await?;
        let (mut froms, mut types, mut tos) = (Vec::new(), Vec::new(), Vec::new());
        for id in &from {
            for rel in by_id.get(id).map_or(&[][..], |r| &r.relations[..]) {
                froms.push(*id);
                types.push(rel.relation_type.as_str());
                tos.push(rel.to_id.as_str());
            }
        }
        if !froms.is_empty() {
            sqlx::query(
                "INSERT INTO relations (from_id, relation_type, to_id) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            )
            .bind(&froms)
            .bind(&types)
            .bind(&tos)
            .execute(&mut *self)
            .await?;
        }
        Ok(())
    }

    async fn insert_history(&mut self, rows: &[HistoryRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&HistoryRow) -> &String| -> Vec<&str> {
            rows.iter().map(|r| f(r).as_str()).collect()
        };
        sqlx::query(
            "INSERT INTO health_history \
             (resource_id, resource_version, previous_health, health, reasons, changed, observed_at_ms, recorded_at_ms, source) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::bigint[], $8::bigint[], $9::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(column(|r| &r.resource_id))
        .bind(rows.iter().map(|r| r.resource_version).collect::<Vec<i64>>())
        .bind(column(|r| &r.previous_health))
        .bind(column(|r| &r.health))
        .bind(column(|r| &r.reasons))
        .bind(column(|r| &r.changed))
        .bind(rows.iter().map(|r| r.observed_at_ms).collect::<Vec<i64>>())
        .bind(rows.iter().map(|r| r.recorded_at_ms).collect::<Vec<i64>>())
        .bind(column(|r| &r.source))
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn stage_events(&mut self, events: &[StoredEvent], now: i64) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // In the arrays' order: staging ids follow commit order.
        sqlx::query(
            "INSERT INTO event_staging \
             (event_id, resource_id, resource_kind, resource_version, payload, created_at_ms) \
             SELECT event_id, resource_id, resource_kind, resource_version, payload, $6 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[]) WITH ORDINALITY \
             AS t(event_id, resource_id, resource_kind, resource_version, payload, n) ORDER BY n",
        )
        .bind(events.iter().map(|e| e.event.event_id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.resource_id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.resource_kind.as_str()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| rows::seq_to_db(e.event.resource_version))
                .collect::<Vec<i64>>(),
        )
        .bind(events.iter().map(|e| e.payload.to_vec()).collect::<Vec<Vec<u8>>>())
        .bind(now)
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}
