//! Durable storage through sqlx, on PostgreSQL or SQLite with the same statements
//! (both accept `$N` placeholders and `ON CONFLICT ... DO UPDATE`).
//!
//! Two kinds of transaction, one per path:
//!
//! - [`Commit`] (the state path, `crate::planner`): changed resources, their
//!   history rows and outbox events, data gaps, and the state position of the
//!   agents whose batches they came from.
//! - [`Flush`] (the sample path, `crate::samples::flush`): rollup increments of
//!   every series and the cursor of every agent they came from, in bulk (arrays
//!   on PostgreSQL: one statement whatever the number of rows).
//!
//! Each writes a position with its data, so a batch sent again after a crash is
//! recognised and applied exactly once.

mod rows;

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

use crate::config::{Backend, StorageConfig};
use crate::events::StoredEvent;
use crate::model::{Health, Reason, ResourceRecord};
use crate::samples::ledger::Cursor;
use crate::samples::{SeriesKey, Stats};
use crate::telemetry;

pub use rows::HistoryEntry;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported storage url {0:?}")]
    UnsupportedUrl(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A query failed.
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another stream took over agent `key` (its session epoch moved): the
    /// write did nothing.
    #[error("the session of agent {key} is now held by another stream")]
    SessionFenced {
        /// The agent's cursor key.
        key: String,
    },
    /// The lease this write needs is held by another replica now (or at
    /// another epoch): the write did nothing.
    #[error("lease {0} is no longer held")]
    LeaseLost(String),
    /// Resources changed since the writer read them (another replica wrote a
    /// newer version); nothing was written. Read them again and plan again.
    #[error("resources changed meanwhile: {}", .0.join(", "))]
    Conflict(Vec<String>),
    /// A stored row could not be interpreted.
    #[error("stored row for {id} is corrupt: {reason}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// True when the same operation may succeed later (connection or pool problems).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Db(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => {
                true
            }
            Self::Db(sqlx::Error::Database(e)) => e.code().is_some_and(|c| {
                // PostgreSQL: connection exceptions (08xxx), shutdown (57P01-57P03),
                // serialization failure, too many connections. SQLite: BUSY and
                // LOCKED, plain or extended.
                c.starts_with("08")
                    || matches!(
                        &*c,
                        "57P01"
                            | "57P02"
                            | "57P03"
                            | "40001"
                            | "53300"
                            | "5"
                            | "6"
                            | "261"
                            | "517"
                            | "262"
                    )
            }),
            _ => false,
        }
    }
}

/// Increment of one rollup bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupDelta {
    /// The series.
    pub key: SeriesKey,
    /// Start of the minute.
    pub bucket_start_ms: i64,
    /// Statistics of the new samples.
    pub stats: Stats,
    /// Newest new sample's value and time.
    pub last: (i64, f64),
}

/// One stored rollup bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    /// Start of the minute.
    pub bucket_start_ms: i64,
    /// Statistics of the minute.
    pub stats: Stats,
    /// Last value of the minute.
    pub last: f64,
}

/// Everything one state transaction writes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Commit {
    /// New versions of resources.
    pub resources: Vec<ResourceRecord>,
    /// Resources whose relations changed (their full new set is in `resources`).
    pub relations_changed: Vec<String>,
    /// History rows, one per new version.
    pub history: Vec<HistoryEntry>,
    /// New state position per agent: the newest batch whose changes this commit
    /// holds (a position never moves back through this), written only while the
    /// session epoch holds.
    pub state_cursors: Vec<StatePosition>,
    /// Events, one per new resource version that passed validation; staged
    /// for the sequencer, which gives them positions after commit, unless
    /// [`Commit::sequence`] positions them in the commit itself.
    pub events: Vec<StoredEvent>,
    /// Events that failed validation.
    pub dead_letters: Vec<DeadLetter>,
    /// Data gaps reported by agents.
    pub gaps: Vec<GapRow>,
    /// Resources deleted at their source: their tombstone state, at the version
    /// after the stored one.
    pub removed: Vec<ResourceRecord>,
    /// The leader's own commits: while this lease is held at its epoch, the
    /// staged events (other replicas' and this commit's) get their positions
    /// in the same transaction, so an event needs one commit, not two, before
    /// it streams. SQLite has one writer at a time; on PostgreSQL the commit
    /// takes the head row's lock last, as the sequencer's rounds take it
    /// first, so positions are given out by one transaction at a time.
    pub sequence: Option<LeaseHold>,
}

/// What is left of a deleted resource: its id, its last version and when it
/// went away. A resource created again under the same id continues from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// The version of the deletion.
    pub version: u64,
    /// When it was deleted (Unix ms).
    pub deleted_at_ms: i64,
}

/// Resources as stored: live ones, and tombstones of deleted ones by id.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Live resources with their relations.
    pub records: Vec<ResourceRecord>,
    /// Deleted resources.
    pub tombstones: Vec<(String, Tombstone)>,
}

impl Fetched {
    fn push(&mut self, row: rows::ResourceRow) -> Result<(), StoreError> {
        match row.deleted_at_ms {
            Some(deleted_at_ms) => self.tombstones.push((
                row.id,
                Tombstone {
                    version: u64::try_from(row.resource_version).unwrap_or(0),
                    deleted_at_ms,
                },
            )),
            None => self.records.push(row.into_record()?),
        }
        Ok(())
    }
}

/// An agent's state position as a commit writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePosition {
    /// The agent's cursor key.
    pub key: String,
    /// The newest batch whose changes the commit holds.
    pub seq: u64,
    /// The session epoch the batch arrived in.
    pub epoch: u64,
}

impl Commit {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
            && self.history.is_empty()
            && self.state_cursors.is_empty()
            && self.events.is_empty()
            && self.dead_letters.is_empty()
            && self.gaps.is_empty()
            && self.removed.is_empty()
    }
}

/// What one sample flush writes for one agent: its rollup increments and its
/// cursor, both only while session `epoch` holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlushSource {
    /// The agent's cursor key.
    pub key: String,
    /// The session epoch the ledger was opened with.
    pub epoch: u64,
    /// The newest batch whose samples are now durable.
    pub seq: u64,
    /// Rollup increments, added to the stored rows of their minute.
    pub rollups: Vec<RollupDelta>,
}

#[derive(Debug, Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

/// Runs `$body` with `$pool` bound to the concrete pool and `Db` to its database type.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Postgres($pool) => {
                #[allow(dead_code)]
                type Db = sqlx::Postgres;
                $body
            }
            Pool::Sqlite($pool) => {
                #[allow(dead_code)]
                type Db = sqlx::Sqlite;
                $body
            }
        }
    };
}

/// Starts a transaction that writes.
///
/// On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a deferred
/// transaction that reads first and writes later fails at once with "database is
/// locked", without waiting out the busy timeout, when another connection wrote
/// in between; an immediate one waits for the lock like any other writer.
trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin()
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

mod bulk;
mod cluster;
mod events;
mod gaps;
mod latest;
mod machines;
mod tombstones;
mod warnings;

pub use cluster::{INLINE_ROUND, LeaseHold, OpenedSession, SessionOwner};

pub use events::{CursorKind, CursorRow, DeadLetter};
pub use gaps::GapRow;
pub use latest::{LatestRollup, RolledUpResources};
pub use machines::Binding;
pub use warnings::{WarningFilter, WarningRow};

/// Rows per multi-row rollup INSERT on SQLite (it allows 32766 parameters; 10
/// per row). A prepared statement's size in SQLite's heap grows with its rows,
/// and each pooled connection keeps its own.
const ROLLUP_ROWS_SQLITE: usize = 250;

fn observe(operation: &'static str, started: Instant, ok: bool) {
    metrics::histogram!(telemetry::DB_DURATION, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    if !ok {
        metrics::counter!(telemetry::DB_ERRORS, "operation" => operation).increment(1);
    }
}

impl Store {
    /// Opens a lazy pool for the configured URL (no connection is made yet).
    pub fn open(cfg: &StorageConfig) -> Result<Self, StoreError> {
        let acquire = Duration::from_millis(cfg.acquire_timeout_ms);
        let pool = match cfg.backend() {
            Some(Backend::Postgres) => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(cfg.max_connections)
                    .acquire_timeout(acquire)
                    .connect_lazy(&cfg.url)?,
            ),
            Some(Backend::Sqlite) => {
                if let Some(dir) = cfg
                    .sqlite_path()
                    .as_deref()
                    .and_then(std::path::Path::parent)
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                let options = SqliteConnectOptions::from_str(&cfg.url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true);
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(cfg.max_connections)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(options),
                )
            }
            None => return Err(StoreError::UnsupportedUrl(cfg.url.clone())),
        };
        Ok(Self { pool })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await?,
            Pool::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await?,
        }
        Ok(())
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()));
        observe("ping", started, r.is_ok());
        Ok(r?)
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }

    /// Writes `commit` in one transaction; the events that got positions in
    /// it (see [`Commit::sequence`]), in position order.
    pub async fn commit(&self, commit: &Commit) -> Result<Vec<StoredEvent>, StoreError> {
        if commit.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let result = self.commit_inner(commit).await;
        observe("commit", started, result.is_ok());
        result
    }

    async fn commit_inner(&self, c: &Commit) -> Result<Vec<StoredEvent>, StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // Each version follows the stored one, or nothing is written: the
            // statement takes the row lock and checks, so two replicas changing
            // a resource at once cannot both write the same version.
            let rows: Vec<rows::ResourceRow> = in_lock_order(&c.resources, |r| &r.id)
                .into_iter()
                .map(rows::ResourceRow::from_record)
                .collect::<Result<_, _>>()?;
            let mut conflicts = bulk::BulkWrite::upsert_resources(&mut *tx, &rows).await?;
            let now = infrawatch_common::time::now_unix_ms();
            for r in in_lock_order(&c.removed, |r| &r.id) {
                let row = rows::ResourceRow::from_record(r)?;
                let written = sqlx::query(rows::TOMBSTONE_RESOURCE)
                    .bind(&row.id).bind(&row.health).bind(&row.reasons).bind(row.observed_at_ms)
                    .bind(row.resource_version).bind(&row.source).bind(now)
                    .execute(&mut *tx).await?.rows_affected();
                if written == 0 {
                    conflicts.push(r.id.clone());
                }
                sqlx::query("DELETE FROM relations WHERE from_id = $1").bind(&row.id).execute(&mut *tx).await?;
            }
            if !conflicts.is_empty() {
                return Err(StoreError::Conflict(conflicts));
            }
            // By id: a commit may hold tens of thousands of resources (a
            // cluster's first list), and a scan per id would be quadratic.
            let by_id: std::collections::HashMap<&str, &ResourceRecord> =
                c.resources.iter().map(|r| (r.id.as_str(), r)).collect();
            let relations_changed = in_lock_order(&c.relations_changed, |id| id);
            bulk::BulkWrite::replace_relations(&mut *tx, &relations_changed, &by_id).await?;
            let history: Vec<rows::HistoryRow> = c
                .history
                .iter()
                .map(rows::HistoryRow::from_entry)
                .collect::<Result<_, _>>()?;
            bulk::BulkWrite::insert_history(&mut *tx, &history).await?;
            for p in in_lock_order(&c.state_cursors, |p| &p.key) {
                let written = sqlx::query(rows::ADVANCE_STATE_CURSOR)
                    .bind(&p.key).bind(rows::seq_to_db(p.seq)).bind(now).bind(rows::seq_to_db(p.epoch))
                    .execute(&mut *tx).await?.rows_affected();
                if written == 0 {
                    return Err(StoreError::SessionFenced { key: p.key.clone() });
                }
            }
            bulk::BulkWrite::stage_events(&mut *tx, &c.events, now).await?;
            for d in &c.dead_letters {
                sqlx::query(events::INSERT_DEAD_LETTER)
                    .bind(&d.event.event_id).bind(&d.event.resource_id)
                    .bind(rows::seq_to_db(d.event.resource_version)).bind(&d.reason)
                    .bind(prost::Message::encode_to_vec(&d.event)).bind(d.recorded_at_ms)
                    .execute(&mut *tx).await?;
            }
            for g in &c.gaps {
                sqlx::query(gaps::INSERT_GAP)
                    .bind(&g.agent_id).bind(&g.host_id)
                    .bind(rows::seq_to_db(g.first_seq)).bind(rows::seq_to_db(g.last_seq))
                    .bind(g.from_ms).bind(g.to_ms)
                    .bind(rows::seq_to_db(g.samples_lost)).bind(rows::seq_to_db(g.batches_lost))
                    .bind(&g.cause).bind(g.exact).bind(g.recorded_at_ms)
                    .execute(&mut *tx).await?;
            }
            let sequenced = match &c.sequence {
                Some(lease) if !c.events.is_empty() => {
                    cluster::SequenceInline::sequence_inline(&mut *tx, lease, now).await?
                }
                _ => Vec::new(),
            };
            // Decoded before the commit: an error after it would report a
            // committed transaction as failed.
            let sequenced = sequenced
                .iter()
                .map(|(position, payload)| events::event_from_row(*position, payload))
                .collect::<Result<Vec<StoredEvent>, StoreError>>()?;
            tx.commit().await?;
            Ok(sequenced)
        })
    }

    /// Resources `ids` as stored now: live ones with their relations, and the
    /// tombstones of deleted ones (ids never stored are in neither).
    pub async fn load_resources(&self, ids: &[String]) -> Result<Fetched, StoreError> {
        let mut out = Fetched::default();
        for chunk in ids.chunks(500) {
            on_pool!(self, pool => {
                let mut qb: QueryBuilder<Db> = QueryBuilder::new(rows::SELECT_RESOURCES_WHERE_ID_IN);
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(id.clone());
                }
                qb.push(")");
                let mut found = Fetched::default();
                for row in qb.build().fetch_all(pool).await? {
                    found.push(rows::ResourceRow::read(&row)?)?;
                }
                let mut qb: QueryBuilder<Db> = QueryBuilder::new("SELECT from_id, relation_type, to_id FROM relations WHERE from_id IN (");
                let mut list = qb.separated(", ");
                for id in chunk {
                    list.push_bind(id.clone());
                }
                qb.push(") ORDER BY from_id, relation_type, to_id");
                let mut by_id: std::collections::HashMap<String, Vec<crate::model::Relation>> = Default::default();
                for row in qb.build().fetch_all(pool).await? {
                    by_id.entry(row.try_get("from_id")?).or_default().push(crate::model::Relation {
                        relation_type: row.try_get("relation_type")?,
                        to_id: row.try_get("to_id")?,
                    });
                }
                for mut r in found.records {
                    r.relations = by_id.remove(&r.id).unwrap_or_default();
                    out.records.push(r);
                }
                out.tombstones.extend(found.tombstones);
            });
        }
        Ok(out)
    }

    /// A counter from `aggregator_meta` (0 if absent).
    pub async fn meta(&self, name: &str) -> Result<u64, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT value FROM aggregator_meta WHERE name = $1")
                .bind(name).fetch_optional(pool).await?;
            match row {
                Some(r) => Ok(u64::try_from(r.try_get::<i64, _>("value")?).unwrap_or(0)),
                None => Ok(0),
            }
        })
    }

    /// Writes a flush in one transaction: each source's cursor moves where its
    /// session epoch still holds, then the rollups of those sources are added.
    /// Returns the keys of the sources that were fenced (their data is not
    /// written; whoever holds the agent now gets it again from the agent).
    pub async fn flush(&self, sources: &[FlushSource]) -> Result<Vec<String>, StoreError> {
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let result = match &self.pool {
            Pool::Postgres(pool) => flush_postgres(pool, sources).await,
            Pool::Sqlite(pool) => flush_sqlite(pool, sources).await,
        };
        observe("flush", started, result.is_ok());
        result
    }

    /// The stored positions of agent `key` (zeros if it has none).
    pub async fn cursor(&self, key: &str) -> Result<Cursor, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT last_seq, state_seq FROM agent_cursors WHERE agent_id = $1")
                .bind(key).fetch_optional(pool).await?;
            match row {
                Some(r) => Ok(Cursor {
                    durable_seq: u64::try_from(r.try_get::<i64, _>("last_seq")?).unwrap_or(0),
                    state_seq: u64::try_from(r.try_get::<i64, _>("state_seq")?).unwrap_or(0),
                }),
                None => Ok(Cursor::default()),
            }
        })
    }

    /// Every resource, for a restarted aggregator.
    pub async fn load(&self) -> Result<Fetched, StoreError> {
        let started = Instant::now();
        let result = self.load_inner().await;
        observe("load", started, result.is_ok());
        result
    }

    async fn load_inner(&self) -> Result<Fetched, StoreError> {
        on_pool!(self, pool => {
            let mut out = Fetched::default();
            for row in sqlx::query(rows::SELECT_RESOURCES).fetch_all(pool).await? {
                out.push(rows::ResourceRow::read(&row)?)?;
            }
            let relations = sqlx::query("SELECT from_id, relation_type, to_id FROM relations ORDER BY from_id, relation_type, to_id")
                .fetch_all(pool).await?;
            let mut by_id: std::collections::HashMap<String, Vec<crate::model::Relation>> = Default::default();
            for row in relations {
                by_id.entry(row.try_get("from_id")?).or_default().push(crate::model::Relation {
                    relation_type: row.try_get("relation_type")?,
                    to_id: row.try_get("to_id")?,
                });
            }
            for r in &mut out.records {
                if let Some(rels) = by_id.remove(&r.id) {
                    r.relations = rels;
                }
            }
            Ok(out)
        })
    }

    /// Stored rollups of one series with buckets in `[from_ms, to_ms]`, oldest first.
    pub async fn rollups(
        &self,
        key: &SeriesKey,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let started = Instant::now();
        let result: Result<Vec<RollupRow>, StoreError> = on_pool!(self, pool => {
            let rows = sqlx::query(rows::SELECT_ROLLUPS)
                .bind(&*key.resource_id).bind(&*key.metric).bind(&*key.attributes)
                .bind(from_ms).bind(to_ms)
                .fetch_all(pool).await;
            match rows {
                Ok(rows) => rows.iter().map(|row| {
                    let count: i64 = row.try_get("sample_count")?;
                    Ok(RollupRow {
                        bucket_start_ms: row.try_get("bucket_start_ms")?,
                        stats: Stats {
                            count: u64::try_from(count).unwrap_or(0),
                            sum: row.try_get("value_sum")?,
                            min: row.try_get("value_min")?,
                            max: row.try_get("value_max")?,
                        },
                        last: row.try_get("value_last")?,
                    })
                }).collect(),
                Err(e) => Err(e.into()),
            }
        });
        observe("rollups", started, result.is_ok());
        result
    }

    /// History of one resource, newest first, at most `limit` rows.
    pub async fn history(
        &self,
        resource_id: &str,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let started = Instant::now();
        let result: Result<Vec<HistoryEntry>, StoreError> = on_pool!(self, pool => {
            match sqlx::query(rows::SELECT_HISTORY)
                .bind(resource_id).bind(i64::from(limit))
                .fetch_all(pool).await
            {
                Ok(rows) => rows.iter().map(|row| rows::HistoryRow::read(row)?.into_entry()).collect(),
                Err(e) => Err(e.into()),
            }
        });
        observe("history", started, result.is_ok());
        result
    }

    /// The health history of `resource_id` that a window `(from_ms, to_ms]`
    /// needs, oldest first: the newest entry observed at or before `from_ms`
    /// (the state the window starts in), then those observed within it, at
    /// most `max` of them.
    pub async fn history_window(
        &self,
        resource_id: &str,
        from_ms: i64,
        to_ms: i64,
        max: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let started = Instant::now();
        let result: Result<Vec<HistoryEntry>, StoreError> = on_pool!(self, pool => {
            let before = sqlx::query(rows::SELECT_HISTORY_BEFORE)
                .bind(resource_id).bind(from_ms)
                .fetch_all(pool).await?;
            let within = sqlx::query(rows::SELECT_HISTORY_WITHIN)
                .bind(resource_id).bind(from_ms).bind(to_ms).bind(i64::from(max))
                .fetch_all(pool).await?;
            before
                .iter()
                .chain(within.iter())
                .map(|row| rows::HistoryRow::read(row)?.into_entry())
                .collect()
        });
        observe("history_window", started, result.is_ok());
        result
    }
}

/// Merges rows of one series and minute (given sorted by series and minute:
/// two agents' ledgers can hold the same series after a takeover, one statement
/// may not update a row twice, and a stable order keeps concurrent flushes from
/// deadlocking).
fn merged(rows: Vec<&RollupDelta>) -> Vec<RollupDelta> {
    let mut out: Vec<RollupDelta> = Vec::with_capacity(rows.len());
    for r in rows {
        match out.last_mut() {
            Some(last) if last.key == r.key && last.bucket_start_ms == r.bucket_start_ms => {
                last.stats.merge(&r.stats);
                if r.last.0 >= last.last.0 {
                    last.last = r.last;
                }
            }
            _ => out.push(r.clone()),
        }
    }
    out
}

/// `items` sorted by `key`: the order a transaction writes, and so locks, rows
/// in. Every writer taking row locks in one order, two replicas committing the
/// same resources (or agent cursors) at once wait for each other instead of
/// deadlocking, which PostgreSQL resolves only after its `deadlock_timeout` by
/// failing one of the transactions (and the batches in it).
fn in_lock_order<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a str) -> Vec<&'a T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by(|a, b| key(a).cmp(key(b)));
    sorted
}

/// What a flush writes, decided against the stored cursors (read and locked in
/// the same transaction): per agent, the newest seq now durable and the rollups
/// to add; and the agents whose session moved (fenced).
#[derive(Debug, Default)]
struct FlushPlan {
    /// (key, epoch, seq) of every agent whose cursor moves.
    cursors: Vec<(String, u64, u64)>,
    rollups: Vec<RollupDelta>,
    fenced: Vec<String>,
}

/// Plans a flush of `sources` (several units per agent possible) given the
/// stored (epoch, cursor) of each agent: a unit is written only while its
/// session holds and the stored cursor is below its seq, so a unit that a flush
/// committed although its reply was lost is not added again.
fn plan_flush(
    sources: &[FlushSource],
    stored: &std::collections::HashMap<String, (u64, u64)>,
) -> FlushPlan {
    let mut units: Vec<&FlushSource> = sources.iter().collect();
    units.sort_by(|a, b| (&a.key, a.seq).cmp(&(&b.key, b.seq)));
    let mut plan = FlushPlan::default();
    let mut accepted: Vec<&RollupDelta> = Vec::new();
    for group in units.chunk_by(|a, b| a.key == b.key) {
        let key = &group[0].key;
        let fenced = match stored.get(key) {
            Some(&(epoch, _)) => group.iter().any(|u| u.epoch != epoch),
            None => true,
        };
        if fenced {
            plan.fenced.push(key.clone());
            continue;
        }
        let Some(&(epoch, before)) = stored.get(key) else {
            continue;
        };
        let mut at = before;
        for u in group {
            if u.seq > at {
                at = u.seq;
                accepted.extend(u.rollups.iter());
            }
        }
        if at > before {
            plan.cursors.push((key.clone(), epoch, at));
        }
    }
    accepted.sort_by(|a, b| (&a.key, a.bucket_start_ms).cmp(&(&b.key, b.bucket_start_ms)));
    plan.rollups = merged(accepted);
    plan
}

/// The distinct agent keys of `sources`, in lock order.
fn flush_keys(sources: &[FlushSource]) -> Vec<String> {
    let mut keys: Vec<String> = sources.iter().map(|s| s.key.clone()).collect();
    keys.sort();
    keys.dedup();
    keys
}

async fn flush_postgres(pool: &PgPool, sources: &[FlushSource]) -> Result<Vec<String>, StoreError> {
    let keys = flush_keys(sources);
    let mut tx = pool.begin_write().await?;
    let stored: std::collections::HashMap<String, (u64, u64)> = sqlx::query(
        "SELECT agent_id, epoch, last_seq FROM agent_cursors WHERE agent_id = ANY($1) \
         ORDER BY agent_id FOR UPDATE",
    )
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get::<String, _>("agent_id")?,
            (
                u64::try_from(r.try_get::<i64, _>("epoch")?).unwrap_or(0),
                u64::try_from(r.try_get::<i64, _>("last_seq")?).unwrap_or(0),
            ),
        ))
    })
    .collect::<Result<_, StoreError>>()?;
    let plan = crate::cpu_bound(|| plan_flush(sources, &stored));
    if !plan.cursors.is_empty() {
        let ids: Vec<&str> = plan.cursors.iter().map(|(k, _, _)| k.as_str()).collect();
        let epochs: Vec<i64> = plan
            .cursors
            .iter()
            .map(|(_, e, _)| rows::seq_to_db(*e))
            .collect();
        let seqs: Vec<i64> = plan
            .cursors
            .iter()
            .map(|(_, _, s)| rows::seq_to_db(*s))
            .collect();
        sqlx::query(rows::ADVANCE_CURSORS_PG)
            .bind(&ids)
            .bind(&seqs)
            .bind(&epochs)
            .bind(infrawatch_common::time::now_unix_ms())
            .execute(&mut *tx)
            .await?;
    }
    let rows = &plan.rollups;
    if !rows.is_empty() {
        let mut ids = Vec::with_capacity(rows.len());
        let mut metrics = Vec::with_capacity(rows.len());
        let mut attributes = Vec::with_capacity(rows.len());
        let mut buckets = Vec::with_capacity(rows.len());
        let mut counts = Vec::with_capacity(rows.len());
        let mut sums = Vec::with_capacity(rows.len());
        let mut mins = Vec::with_capacity(rows.len());
        let mut maxs = Vec::with_capacity(rows.len());
        let mut lasts = Vec::with_capacity(rows.len());
        let mut last_ts = Vec::with_capacity(rows.len());
        for d in rows {
            ids.push(&*d.key.resource_id);
            metrics.push(&*d.key.metric);
            attributes.push(&*d.key.attributes);
            buckets.push(d.bucket_start_ms);
            counts.push(i64::try_from(d.stats.count).unwrap_or(i64::MAX));
            sums.push(d.stats.sum);
            mins.push(d.stats.min);
            maxs.push(d.stats.max);
            lasts.push(d.last.1);
            last_ts.push(d.last.0);
        }
        // Both parts are constants of this module.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{}{}",
            rows::UPSERT_ROLLUPS_PG,
            rows::ROLLUP_CONFLICT
        )))
        .bind(&ids)
        .bind(&metrics)
        .bind(&attributes)
        .bind(&buckets)
        .bind(&counts)
        .bind(&sums)
        .bind(&mins)
        .bind(&maxs)
        .bind(&lasts)
        .bind(&last_ts)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(plan.fenced)
}

async fn flush_sqlite(
    pool: &SqlitePool,
    sources: &[FlushSource],
) -> Result<Vec<String>, StoreError> {
    let mut tx = pool.begin_write().await?;
    let mut stored = std::collections::HashMap::new();
    for key in flush_keys(sources) {
        let row = sqlx::query("SELECT epoch, last_seq FROM agent_cursors WHERE agent_id = $1")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(r) = row {
            stored.insert(
                key,
                (
                    u64::try_from(r.try_get::<i64, _>("epoch")?).unwrap_or(0),
                    u64::try_from(r.try_get::<i64, _>("last_seq")?).unwrap_or(0),
                ),
            );
        }
    }
    let plan = crate::cpu_bound(|| plan_flush(sources, &stored));
    let now = infrawatch_common::time::now_unix_ms();
    for (key, epoch, seq) in &plan.cursors {
        sqlx::query(rows::ADVANCE_CURSOR)
            .bind(key)
            .bind(rows::seq_to_db(*seq))
            .bind(now)
            .bind(rows::seq_to_db(*epoch))
            .execute(&mut *tx)
            .await?;
    }
    for chunk in plan.rollups.chunks(ROLLUP_ROWS_SQLITE) {
        let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(rows::INSERT_ROLLUP_PREFIX);
        qb.push_values(chunk, |mut b, d| {
            b.push_bind(d.key.resource_id.to_string())
                .push_bind(d.key.metric.to_string())
                .push_bind(d.key.attributes.to_string())
                .push_bind(d.bucket_start_ms)
                .push_bind(i64::try_from(d.stats.count).unwrap_or(i64::MAX))
                .push_bind(d.stats.sum)
                .push_bind(d.stats.min)
                .push_bind(d.stats.max)
                .push_bind(d.last.1)
                .push_bind(d.last.0);
        });
        qb.push(rows::ROLLUP_CONFLICT);
        // Only the full-size statement is worth keeping prepared: the last,
        // shorter chunk has a different text every flush, and each would stay
        // in the connection's statement cache.
        qb.build()
            .persistent(chunk.len() == ROLLUP_ROWS_SQLITE)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(plan.fenced)
}

/// Parses a stored health name.
fn health_from_db(id: &str, s: &str) -> Result<Health, StoreError> {
    infrawatch_common::resource::parse_health(s).ok_or_else(|| StoreError::Corrupt {
        id: id.to_string(),
        reason: format!("unknown health {s:?}"),
    })
}

fn reasons_from_db(id: &str, s: &str) -> Result<Vec<Reason>, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        reason: format!("reasons: {e}"),
    })
}
