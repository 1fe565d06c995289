//! The outbox, event cursors and dead letters.

use std::time::Instant;

use infrawatch_proto::v1 as pb;
use prost::Message;
use sqlx::Row;

use super::{Pool, Store, StoreError, observe, rows::seq_to_db};
use crate::events::StoredEvent;

/// Name of the meta row that holds the newest event position.
pub(super) const HEAD: &str = "event_head";

/// An event that failed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The refused event.
    pub event: pb::InfrastructureStatusUpdatedEvent,
    /// Why it was refused.
    pub reason: String,
    /// When (Unix ms).
    pub recorded_at_ms: i64,
}

/// Whether a cursor belongs to a sink or to a durable subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorKind {
    /// A publisher's cursor.
    Sink,
    /// A named durable subscription.
    Subscription,
}

impl CursorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sink => "sink",
            Self::Subscription => "subscription",
        }
    }
}

/// A stored cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRow {
    /// Unique name.
    pub name: String,
    /// Sink or subscription.
    pub kind: CursorKind,
    /// The subscription's filter as JSON (`{}` for sinks).
    pub filter: String,
    /// Last consumed position.
    pub position: u64,
    /// Created (Unix ms).
    pub created_at_ms: i64,
    /// Last moved (Unix ms).
    pub updated_at_ms: i64,
    /// Who created it (see [`crate::auth::Principal::owner_key`]); empty for
    /// sinks and for subscriptions older than roles.
    pub owner: String,
}

const SELECT_CURSORS: &str = "SELECT name, kind, filter, position, created_at_ms, updated_at_ms, \
    owner FROM event_cursors ORDER BY name";
const SELECT_CURSOR: &str = "SELECT name, kind, filter, position, created_at_ms, updated_at_ms, \
    owner FROM event_cursors WHERE name = $1";

/// Reads a [`CursorRow`] from a result row of [`SELECT_CURSORS`].
macro_rules! cursor_from_row {
    ($row:expr) => {{
        let row = $row;
        let name: String = row.try_get("name")?;
        let kind: String = row.try_get("kind")?;
        let position: i64 = row.try_get("position")?;
        cursor_row(
            name,
            &kind,
            row.try_get("filter")?,
            position,
            row.try_get("created_at_ms")?,
            row.try_get("updated_at_ms")?,
            row.try_get("owner")?,
        )
    }};
}

fn cursor_row(
    name: String,
    kind: &str,
    filter: String,
    position: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
    owner: String,
) -> Result<CursorRow, StoreError> {
    let kind = match kind {
        "sink" => CursorKind::Sink,
        "subscription" => CursorKind::Subscription,
        other => {
            return Err(StoreError::Corrupt {
                id: name,
                reason: format!("unknown cursor kind {other:?}"),
            });
        }
    };
    Ok(CursorRow {
        name,
        kind,
        filter,
        position: u64::try_from(position).unwrap_or(0),
        created_at_ms,
        updated_at_ms,
        owner,
    })
}

pub(super) fn event_from_row(position: i64, payload: &[u8]) -> Result<StoredEvent, StoreError> {
    let position = u64::try_from(position).unwrap_or(0);
    StoredEvent::decode(position, bytes::Bytes::copy_from_slice(payload), None).map_err(|e| {
        StoreError::Corrupt {
            id: format!("event position {position}"),
            reason: e.to_string(),
        }
    })
}

impl Store {
    /// The newest event position (0 before the first event).
    pub async fn event_head(&self) -> Result<u64, StoreError> {
        self.meta(HEAD).await
    }

    /// Up to `limit` events after `after`, oldest first.
    pub async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let started = Instant::now();
        let result: Result<Vec<StoredEvent>, StoreError> = on_pool!(self, pool => {
            match sqlx::query("SELECT position, payload FROM event_outbox WHERE position > $1 ORDER BY position LIMIT $2")
                .bind(seq_to_db(after)).bind(i64::from(limit))
                .fetch_all(pool).await
            {
                Ok(rows) => rows.iter().map(|row| {
                    let position: i64 = row.try_get("position")?;
                    let payload: Vec<u8> = row.try_get("payload")?;
                    event_from_row(position, &payload)
                }).collect(),
                Err(e) => Err(e.into()),
            }
        });
        observe("events_after", started, result.is_ok());
        result
    }

    /// The oldest position still in the outbox, if any.
    pub async fn oldest_event_position(&self) -> Result<Option<u64>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT MIN(position) AS p FROM event_outbox").fetch_one(pool).await?;
            let p: Option<i64> = row.try_get("p")?;
            Ok(p.map(|p| u64::try_from(p).unwrap_or(0)))
        })
    }

    /// When the oldest event still in the outbox entered it (Unix ms), if any.
    pub async fn oldest_event_created_at_ms(&self) -> Result<Option<i64>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT MIN(created_at_ms) AS t FROM event_outbox").fetch_one(pool).await?;
            Ok(row.try_get::<Option<i64>, _>("t")?)
        })
    }

    /// Every cursor, by name.
    pub async fn cursors(&self) -> Result<Vec<CursorRow>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(SELECT_CURSORS).fetch_all(pool).await?;
            rows.iter().map(|row| cursor_from_row!(row)).collect()
        })
    }

    /// One cursor.
    pub async fn cursor_row(&self, name: &str) -> Result<Option<CursorRow>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(SELECT_CURSOR)
                .bind(name).fetch_optional(pool).await?;
            match row { Some(row) => Ok(Some(cursor_from_row!(&row)?)), None => Ok(None) }
        })
    }

    /// Creates a cursor at `position`, owned by `owner`, unless one with that
    /// name exists; returns `false` if it existed (and leaves it as it was).
    pub async fn create_cursor(
        &self,
        name: &str,
        kind: CursorKind,
        filter: &str,
        position: u64,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let now = infrawatch_common::time::now_unix_ms();
        on_pool!(self, pool => {
            let r = sqlx::query("INSERT INTO event_cursors (name, kind, filter, position, created_at_ms, updated_at_ms, owner) \
                VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (name) DO NOTHING")
                .bind(name).bind(kind.as_str()).bind(filter).bind(seq_to_db(position)).bind(now).bind(owner)
                .execute(pool).await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Moves a cursor forward to `position` (never back). `None` if there is no
    /// such cursor.
    pub async fn advance_cursor(
        &self,
        name: &str,
        position: u64,
    ) -> Result<Option<CursorRow>, StoreError> {
        let now = infrawatch_common::time::now_unix_ms();
        let started = Instant::now();
        let result: Result<u64, StoreError> = on_pool!(self, pool => {
            sqlx::query("UPDATE event_cursors SET position = $2, updated_at_ms = $3 \
                WHERE name = $1 AND position < $2")
                .bind(name).bind(seq_to_db(position)).bind(now)
                .execute(pool).await.map(|r| r.rows_affected()).map_err(StoreError::from)
        });
        observe("advance_cursor", started, result.is_ok());
        result?;
        self.cursor_row(name).await
    }

    /// Deletes a cursor of `kind`; `false` if there was none.
    pub async fn delete_cursor(&self, name: &str, kind: CursorKind) -> Result<bool, StoreError> {
        on_pool!(self, pool => {
            let r = sqlx::query("DELETE FROM event_cursors WHERE name = $1 AND kind = $2")
                .bind(name).bind(kind.as_str()).execute(pool).await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Deletes outbox events at or below `max_position` created before
    /// `created_before_ms`; returns how many.
    pub async fn prune_events(
        &self,
        max_position: u64,
        created_before_ms: i64,
    ) -> Result<u64, StoreError> {
        let started = Instant::now();
        let result: Result<u64, StoreError> = on_pool!(self, pool => {
            sqlx::query("DELETE FROM event_outbox WHERE position <= $1 AND created_at_ms < $2")
                .bind(seq_to_db(max_position)).bind(created_before_ms)
                .execute(pool).await.map(|r| r.rows_affected()).map_err(StoreError::from)
        });
        observe("prune_events", started, result.is_ok());
        result
    }

    /// The newest dead letters, at most `limit`.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT payload, reason, recorded_at_ms FROM event_dead_letters \
                ORDER BY recorded_at_ms DESC, event_id DESC LIMIT $1")
                .bind(i64::from(limit)).fetch_all(pool).await?;
            rows.iter().map(|row| {
                let payload: Vec<u8> = row.try_get("payload")?;
                let reason: String = row.try_get("reason")?;
                let event = pb::InfrastructureStatusUpdatedEvent::decode(payload.as_slice())
                    .map_err(|e| StoreError::Corrupt { id: "dead letter".into(), reason: e.to_string() })?;
                Ok(DeadLetter { event, reason, recorded_at_ms: row.try_get("recorded_at_ms")? })
            }).collect()
        })
    }
}

/// Writes the events and dead letters of a commit inside its transaction.
pub(super) const STAGE_EVENT: &str = "INSERT INTO event_staging \
    (event_id, resource_id, resource_kind, resource_version, payload, created_at_ms) \
    VALUES ($1, $2, $3, $4, $5, $6)";

pub(super) const INSERT_DEAD_LETTER: &str = "INSERT INTO event_dead_letters \
    (event_id, resource_id, resource_version, reason, payload, recorded_at_ms) \
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING";

pub(super) const SET_META: &str = "INSERT INTO aggregator_meta (name, value) VALUES ($1, $2) \
    ON CONFLICT (name) DO UPDATE SET value = excluded.value";
