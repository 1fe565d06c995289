//! Pruning tombstones: the rows of deleted resources, once they are of no use.
//!
//! A tombstone keeps a deleted resource's last version so that an object
//! created again under its id continues from there. Once no event about the
//! deletion can be replayed, the leader's retention deletes it, and with it
//! the rows that only it gave meaning to, which nothing else ever prunes:
//!
//! - its `health_history` (keyed by id and version: a resource created again
//!   under the id starts over at version 1, and its history rows would collide
//!   with the old ones and be dropped);
//! - its `metric_rollups` (readable only while the resource is live).
//!
//! Its own relations went when it was deleted; relations of live resources
//! that point at it belong to them. Its outbox events have their own retention.

use std::time::Instant;

use sqlx::Row;

use super::{BeginWrite, Pool, Store, StoreError, observe};

/// Tombstones deleted per transaction at most (a first prune after a long
/// time may find many).
const PRUNE_BATCH: u32 = 1000;

/// The oldest tombstones deleted before `$1`, at most `$2`.
const SELECT_EXPIRED: &str = "SELECT id FROM resources \
    WHERE deleted_at_ms IS NOT NULL AND deleted_at_ms < $1 \
    ORDER BY deleted_at_ms LIMIT $2";

/// Deletes tombstone `$1` if it is still one deleted before `$2` (it may have
/// been created again meanwhile); returns its version.
const DELETE_TOMBSTONE: &str = "DELETE FROM resources \
    WHERE id = $1 AND deleted_at_ms IS NOT NULL AND deleted_at_ms < $2 \
    RETURNING resource_version";

/// History of resource `$1` up to its tombstone's version `$2`.
const DELETE_HISTORY: &str =
    "DELETE FROM health_history WHERE resource_id = $1 AND resource_version <= $2";

/// Rollups of resource `$1`.
const DELETE_ROLLUPS: &str = "DELETE FROM metric_rollups WHERE resource_id = $1";

impl Store {
    /// Deletes the tombstones of resources deleted before `older_than_ms`
    /// (Unix ms), with their history and rollups; live resources and newer
    /// tombstones stay. Returns how many tombstones went.
    pub async fn prune_tombstones(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let started = Instant::now();
        let result = self.prune_tombstones_inner(older_than_ms).await;
        observe("prune_tombstones", started, result.is_ok());
        result
    }

    async fn prune_tombstones_inner(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let mut pruned = 0;
        loop {
            let (candidates, deleted) = self.prune_tombstone_batch(older_than_ms).await?;
            pruned += deleted;
            if candidates < u64::from(PRUNE_BATCH) {
                return Ok(pruned);
            }
        }
    }

    /// One transaction: picks up to [`PRUNE_BATCH`] expired tombstones and
    /// deletes them one by one in id order (the order commits lock resource
    /// rows in, so the two never deadlock). Returns how many were picked and
    /// how many deleted.
    async fn prune_tombstone_batch(&self, older_than_ms: i64) -> Result<(u64, u64), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut ids = sqlx::query(SELECT_EXPIRED)
                .bind(older_than_ms).bind(i64::from(PRUNE_BATCH))
                .fetch_all(&mut *tx).await?
                .iter()
                .map(|row| row.try_get::<String, _>("id"))
                .collect::<Result<Vec<_>, _>>()?;
            ids.sort();
            let mut deleted = 0;
            for id in &ids {
                let gone = sqlx::query(DELETE_TOMBSTONE)
                    .bind(id).bind(older_than_ms)
                    .fetch_optional(&mut *tx).await?;
                let Some(row) = gone else { continue };
                let version: i64 = row.try_get("resource_version")?;
                sqlx::query(DELETE_HISTORY).bind(id).bind(version).execute(&mut *tx).await?;
                sqlx::query(DELETE_ROLLUPS).bind(id).execute(&mut *tx).await?;
                deleted += 1;
            }
            tx.commit().await?;
            Ok((ids.len() as u64, deleted))
        })
    }
}
