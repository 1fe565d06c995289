//! What replicas on one database coordinate through it: the leader lease,
//! replica heartbeats, agent sessions (the epoch that fences a replica which lost
//! an agent's stream) and the event sequencer. Lease and heartbeat times are the
//! database's clock, so replicas whose clocks differ still agree on expiry.
//!
//! No advisory locks and no LISTEN/NOTIFY: a lease is a row, fencing is a
//! condition in the writing statement, and replicas poll. That is what
//! PostgreSQL-compatible distributed engines (CockroachDB, YugabyteDB) support.

use sqlx::Row;

use super::events::{HEAD, event_from_row};
use super::rows::seq_to_db;
use super::{BeginWrite, Pool, Store, StoreError};
use crate::events::StoredEvent;
use crate::samples::ledger::Cursor;

/// The database's clock in Unix ms, as SQL, per backend.
macro_rules! pg_now {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT"
    };
}
macro_rules! sqlite_now {
    () => {
        "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)"
    };
}

/// Takes or renews lease `$1` for holder `$2` for `$3` ms: a new holder gets the
/// next epoch; the holder keeps its epoch. No row comes back while another
/// holder's lease runs.
macro_rules! take_lease {
    ($now:expr) => {
        concat!(
            "INSERT INTO leases AS l (name, holder, epoch, expires_at_ms) VALUES ($1, $2, 1, ",
            $now,
            " + $3) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch ELSE l.epoch + 1 END, \
             expires_at_ms = excluded.expires_at_ms \
             WHERE l.holder = excluded.holder OR l.expires_at_ms < ",
            $now,
            " RETURNING epoch"
        )
    };
}

macro_rules! heartbeat {
    ($now:expr) => {
        concat!(
            "INSERT INTO replicas (id, alive_until_ms, started_at_ms) VALUES ($1, ",
            $now,
            " + $2, ",
            $now,
            ") ON CONFLICT (id) DO UPDATE SET alive_until_ms = excluded.alive_until_ms"
        )
    };
}

macro_rules! live_replicas {
    ($now:expr) => {
        concat!("SELECT id FROM replicas WHERE alive_until_ms >= ", $now)
    };
}

/// An agent session just opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedSession {
    /// The agent's stored positions.
    pub cursor: Cursor,
    /// The epoch of the session before this one (0 if none).
    pub previous_epoch: u64,
    /// This session's epoch.
    pub epoch: u64,
    /// The last batch any data gap of this agent stored so far covers (0 if
    /// none): a gap at or below it is a repeat.
    pub gaps_through: u64,
}

/// Who holds an agent's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOwner {
    /// The agent's cursor key.
    pub key: String,
    /// The replica holding it.
    pub owner: String,
    /// The session's epoch.
    pub epoch: u64,
}

/// A lease as held: who, and at which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHold {
    /// The lease's name.
    pub name: String,
    /// The holder (a replica id).
    pub holder: String,
    /// The epoch it holds it at.
    pub epoch: u64,
}

impl Store {
    /// Takes or renews lease `name` for `holder` for `ttl_ms`; the epoch when
    /// held, `None` while another holder's lease runs.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let row = match &self.pool {
            Pool::Postgres(p) => sqlx::query(take_lease!(pg_now!()))
                .bind(name)
                .bind(holder)
                .bind(ttl_ms)
                .fetch_optional(p)
                .await?
                .map(|r| r.try_get::<i64, _>("epoch")),
            Pool::Sqlite(p) => sqlx::query(take_lease!(sqlite_now!()))
                .bind(name)
                .bind(holder)
                .bind(ttl_ms)
                .fetch_optional(p)
                .await?
                .map(|r| r.try_get::<i64, _>("epoch")),
        };
        Ok(row.transpose()?.map(|e| u64::try_from(e).unwrap_or(0)))
    }

    /// Gives lease `name` up at once if `holder` holds it (a stopping leader),
    /// so another replica takes over without waiting for it to expire.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE leases SET expires_at_ms = 0 WHERE name = $1 AND holder = $2")
                .bind(name).bind(holder).execute(pool).await?;
            Ok(())
        })
    }

    /// Notes that replica `id` is alive for `ttl_ms` more.
    pub async fn heartbeat(&self, id: &str, ttl_ms: i64) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Postgres(p) => {
                sqlx::query(heartbeat!(pg_now!()))
                    .bind(id)
                    .bind(ttl_ms)
                    .execute(p)
                    .await?;
            }
            Pool::Sqlite(p) => {
                sqlx::query(heartbeat!(sqlite_now!()))
                    .bind(id)
                    .bind(ttl_ms)
                    .execute(p)
                    .await?;
            }
        }
        Ok(())
    }

    /// Replica `id` stops: no longer counted as alive.
    pub async fn retire(&self, id: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE replicas SET alive_until_ms = 0 WHERE id = $1")
                .bind(id).execute(pool).await?;
            Ok(())
        })
    }

    /// Replicas whose heartbeat has not run out.
    pub async fn live_replicas(&self) -> Result<Vec<String>, StoreError> {
        let rows = match &self.pool {
            Pool::Postgres(p) => sqlx::query(live_replicas!(pg_now!())).fetch_all(p).await?,
            Pool::Sqlite(p) => {
                let rows = sqlx::query(live_replicas!(sqlite_now!()))
                    .fetch_all(p)
                    .await?;
                return rows
                    .iter()
                    .map(|r| Ok(r.try_get::<String, _>("id")?))
                    .collect();
            }
        };
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("id")?))
            .collect()
    }

    /// Every agent session: who holds it and at which epoch.
    pub async fn session_owners(&self) -> Result<Vec<SessionOwner>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT agent_id, owner, epoch FROM agent_cursors").fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok(SessionOwner {
                    key: r.try_get("agent_id")?,
                    owner: r.try_get("owner")?,
                    epoch: u64::try_from(r.try_get::<i64, _>("epoch")?).unwrap_or(0),
                }))
                .collect()
        })
    }

    /// Opens a session of agent `key` on replica `owner`: the epoch goes up by
    /// one, which fences whichever replica held the session before.
    pub async fn open_session(&self, key: &str, owner: &str) -> Result<OpenedSession, StoreError> {
        let now = infrawatch_common::time::now_unix_ms();
        let lock = match self.pool {
            Pool::Postgres(_) => " FOR UPDATE",
            Pool::Sqlite(_) => "",
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO agent_cursors (agent_id, last_seq, state_seq, updated_at_ms, epoch, owner) \
                VALUES ($1, 0, 0, $2, 0, '') ON CONFLICT (agent_id) DO NOTHING")
                .bind(key).bind(now).execute(&mut *tx).await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT last_seq, state_seq, epoch FROM agent_cursors WHERE agent_id = $1{lock}"
            )))
                .bind(key).fetch_one(&mut *tx).await?;
            let get = |c: &str| -> Result<u64, StoreError> {
                Ok(u64::try_from(row.try_get::<i64, _>(c)?).unwrap_or(0))
            };
            let cursor = Cursor { durable_seq: get("last_seq")?, state_seq: get("state_seq")? };
            let previous_epoch = get("epoch")?;
            let epoch = previous_epoch + 1;
            sqlx::query("UPDATE agent_cursors SET epoch = $2, owner = $3, updated_at_ms = $4 WHERE agent_id = $1")
                .bind(key).bind(seq_to_db(epoch)).bind(owner).bind(now)
                .execute(&mut *tx).await?;
            let gaps_through: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(last_seq), 0) FROM data_gaps WHERE agent_id = $1")
                .bind(key).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            let gaps_through = u64::try_from(gaps_through).unwrap_or(0);
            Ok(OpenedSession { cursor, previous_epoch, epoch, gaps_through })
        })
    }

    /// Sets both positions of agent `key` to `seq` (its sequence restarted),
    /// if session `epoch` still holds it.
    pub async fn reset_cursor(&self, key: &str, seq: u64, epoch: u64) -> Result<(), StoreError> {
        let now = infrawatch_common::time::now_unix_ms();
        let updated = on_pool!(self, pool => {
            sqlx::query("UPDATE agent_cursors SET last_seq = $2, state_seq = $2, updated_at_ms = $3 \
                WHERE agent_id = $1 AND epoch = $4")
                .bind(key).bind(seq_to_db(seq)).bind(now).bind(seq_to_db(epoch))
                .execute(pool).await?.rows_affected()
        });
        if updated == 0 {
            return Err(StoreError::SessionFenced {
                key: key.to_string(),
            });
        }
        Ok(())
    }

    /// Gives positions to staged events, oldest first, at most `max`, while
    /// `lease` is held, and returns them with their positions (consecutive after
    /// the head as it was), in one transaction. On PostgreSQL the transaction
    /// locks the head row first, as the leader's state commits do when they
    /// position events themselves, so the two never give out the same
    /// positions; a staged event that commits meanwhile waits for the next
    /// round, whatever its id.
    pub async fn sequence_events(
        &self,
        lease: &LeaseHold,
        max: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let now = infrawatch_common::time::now_unix_ms();
        let rows = match &self.pool {
            Pool::Postgres(pool) => sequence_pg(pool, lease, max, now).await?,
            Pool::Sqlite(pool) => sequence_sqlite(pool, lease, max, now).await?,
        };
        rows.iter()
            .map(|(position, payload)| event_from_row(*position, payload))
            .collect()
    }
}

/// Locks the head row (`$4` in `aggregator_meta`, created at 0 if missing)
/// and returns its value, while lease `$1` is held by `$2` at epoch `$3` (its
/// row locked FOR SHARE until commit, so a new leader cannot take it
/// meanwhile); no row while it is not. Every positioning transaction starts
/// here: the lock orders them, and the value it returns is the committed head.
const LOCK_HEAD_PG: &str = "WITH lease AS ( \
        SELECT epoch FROM leases WHERE name = $1 AND holder = $2 AND epoch = $3 FOR SHARE \
    ) \
    INSERT INTO aggregator_meta (name, value) SELECT $4, 0 WHERE EXISTS (SELECT 1 FROM lease) \
    ON CONFLICT (name) DO UPDATE SET value = aggregator_meta.value \
    RETURNING value";

/// Under the head lock: the oldest staged events (at most `$1`) leave the
/// staging table and enter the outbox with positions after head `$3`, created
/// at `$2`; the head (`$4`) moves; the moved events come back in position order.
const MOVE_STAGED_PG: &str = "WITH picked AS ( \
        SELECT id FROM event_staging ORDER BY id LIMIT $1 \
    ), moved AS ( \
        DELETE FROM event_staging s USING picked p WHERE s.id = p.id \
        RETURNING s.id, s.event_id, s.resource_id, s.resource_kind, s.resource_version, s.payload \
    ), numbered AS ( \
        SELECT $3 + ROW_NUMBER() OVER (ORDER BY id) AS position, moved.* FROM moved \
    ), inserted AS ( \
        INSERT INTO event_outbox (position, event_id, resource_id, resource_kind, resource_version, payload, created_at_ms) \
        SELECT position, event_id, resource_id, resource_kind, resource_version, payload, $2 FROM numbered \
        RETURNING position, payload \
    ), head AS ( \
        UPDATE aggregator_meta SET value = (SELECT MAX(position) FROM inserted) \
        WHERE name = $4 AND EXISTS (SELECT 1 FROM inserted) \
    ) \
    SELECT position, payload FROM inserted ORDER BY position";

/// One round of the sequencer on PostgreSQL. Idle rounds (nothing staged)
/// only read, so a quiet cluster writes nothing per poll; otherwise one
/// transaction positions the events under the head lock.
async fn sequence_pg(
    pool: &sqlx::PgPool,
    lease: &LeaseHold,
    max: u32,
    now: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let staged: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM event_staging)")
        .fetch_one(pool)
        .await?;
    if !staged {
        let held =
            sqlx::query("SELECT epoch FROM leases WHERE name = $1 AND holder = $2 AND epoch = $3")
                .bind(&lease.name)
                .bind(&lease.holder)
                .bind(seq_to_db(lease.epoch))
                .fetch_optional(pool)
                .await?;
        return match held {
            Some(_) => Ok(Vec::new()),
            None => Err(lease_lost(lease)),
        };
    }
    let mut tx = pool.begin().await?;
    let Some(out) = sequence_pg_in(&mut tx, lease, i64::from(max), now).await? else {
        return Err(lease_lost(lease));
    };
    tx.commit().await?;
    Ok(out)
}

/// Gives the oldest staged events (at most `max`) their positions inside
/// transaction `tx`, holding the head row's lock until it ends; `None`,
/// writing nothing, when `lease` is not held at its epoch. Staged rows another
/// transaction commits while this one waits for the lock are seen: each
/// statement after the lock reads what was committed before it.
async fn sequence_pg_in(
    tx: &mut sqlx::PgConnection,
    lease: &LeaseHold,
    max: i64,
    now: i64,
) -> Result<Option<Vec<(i64, Vec<u8>)>>, StoreError> {
    let head: Option<i64> = sqlx::query_scalar(LOCK_HEAD_PG)
        .bind(&lease.name)
        .bind(&lease.holder)
        .bind(seq_to_db(lease.epoch))
        .bind(HEAD)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(head) = head else {
        return Ok(None);
    };
    let rows = sqlx::query(MOVE_STAGED_PG)
        .bind(max)
        .bind(now)
        .bind(head)
        .bind(HEAD)
        .fetch_all(&mut *tx)
        .await?;
    let out = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("position")?,
                r.try_get::<Vec<u8>, _>("payload")?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(out))
}

fn lease_lost(lease: &LeaseHold) -> StoreError {
    StoreError::LeaseLost(format!("{} at epoch {}", lease.name, lease.epoch))
}

/// One round of the sequencer on SQLite, in a transaction of its own.
async fn sequence_sqlite(
    pool: &sqlx::SqlitePool,
    lease: &LeaseHold,
    max: u32,
    now: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let mut tx = pool.begin_write().await?;
    let Some(out) = sequence_sqlite_in(&mut tx, lease, i64::from(max), now).await? else {
        return Err(lease_lost(lease));
    };
    tx.commit().await?;
    Ok(out)
}

/// Gives the oldest staged events (at most `max`) their positions, inside the
/// write transaction `tx` (a single writer: the rows between the first and
/// the last id read are exactly those read); `None`, writing nothing, when
/// `lease` is not held at its epoch.
async fn sequence_sqlite_in(
    tx: &mut sqlx::SqliteConnection,
    lease: &LeaseHold,
    max: i64,
    now: i64,
) -> Result<Option<Vec<(i64, Vec<u8>)>>, StoreError> {
    let held =
        sqlx::query("SELECT epoch FROM leases WHERE name = $1 AND holder = $2 AND epoch = $3")
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(seq_to_db(lease.epoch))
            .fetch_optional(&mut *tx)
            .await?;
    if held.is_none() {
        return Ok(None);
    }
    let head = match sqlx::query("SELECT value FROM aggregator_meta WHERE name = $1")
        .bind(HEAD)
        .fetch_optional(&mut *tx)
        .await?
    {
        Some(r) => r.try_get::<i64, _>("value")?,
        None => 0,
    };
    let staged = sqlx::query("SELECT id, payload FROM event_staging ORDER BY id LIMIT $1")
        .bind(max)
        .fetch_all(&mut *tx)
        .await?;
    let mut out = Vec::with_capacity(staged.len());
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for (i, r) in staged.iter().enumerate() {
        let id: i64 = r.try_get("id")?;
        first = first.min(id);
        last = last.max(id);
        out.push((head + i as i64 + 1, r.try_get::<Vec<u8>, _>("payload")?));
    }
    if out.is_empty() {
        return Ok(Some(out));
    }
    sqlx::query(
        "INSERT INTO event_outbox (position, event_id, resource_id, resource_kind, resource_version, payload, created_at_ms) \
         SELECT $1 + ROW_NUMBER() OVER (ORDER BY id), event_id, resource_id, resource_kind, resource_version, payload, $2 \
         FROM event_staging WHERE id >= $3 AND id <= $4",
    )
    .bind(head)
    .bind(now)
    .bind(first)
    .bind(last)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM event_staging WHERE id >= $1 AND id <= $2")
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?;
    sqlx::query(super::events::SET_META)
        .bind(HEAD)
        .bind(head + out.len() as i64)
        .execute(&mut *tx)
        .await?;
    Ok(Some(out))
}

/// Staged events one state commit gives positions to, at most; a backlog
/// beyond it (after a failover) is left to the sequencer's rounds, so no state
/// commit holds the write lock for long.
pub const INLINE_ROUND: usize = 2_000;

/// Positions given inside a state commit's transaction ([`super::Commit::sequence`]).
pub(super) trait SequenceInline {
    /// The oldest staged events (at most [`INLINE_ROUND`]), positioned while
    /// `lease` holds: (position, payload).
    /// Nothing when the lease is lost (the next leader's sequencer gives them
    /// positions) or where the backend leaves it to the sequencer.
    fn sequence_inline(
        &mut self,
        lease: &LeaseHold,
        now: i64,
    ) -> impl std::future::Future<Output = Result<Vec<(i64, Vec<u8>)>, StoreError>> + Send;
}

impl SequenceInline for sqlx::SqliteConnection {
    async fn sequence_inline(
        &mut self,
        lease: &LeaseHold,
        now: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        Ok(sequence_sqlite_in(self, lease, INLINE_ROUND as i64, now)
            .await?
            .unwrap_or_default())
    }
}

impl SequenceInline for sqlx::PgConnection {
    /// Under the head lock, which the sequencer's rounds take first too; taken
    /// last in the commit, so it is held only for the commit's end.
    async fn sequence_inline(
        &mut self,
        lease: &LeaseHold,
        now: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        Ok(sequence_pg_in(self, lease, INLINE_ROUND as i64, now)
            .await?
            .unwrap_or_default())
    }
}
