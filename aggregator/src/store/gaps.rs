//! Reported data gaps.

use std::time::Instant;

use sqlx::Row;

use super::{Pool, Store, StoreError, observe};

/// One gap an agent reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapRow {
    /// The agent's cursor key (identity/machine id).
    pub agent_id: String,
    /// The host the agent runs on.
    pub host_id: String,
    /// First and last lost batch.
    pub first_seq: u64,
    /// Last lost batch.
    pub last_seq: u64,
    /// Time range of the lost samples (Unix ms).
    pub from_ms: i64,
    /// End of the range.
    pub to_ms: i64,
    /// Samples lost.
    pub samples_lost: u64,
    /// Batches lost.
    pub batches_lost: u64,
    /// Why.
    pub cause: String,
    /// False when the count is a lower bound.
    pub exact: bool,
    /// When the aggregator stored it.
    pub recorded_at_ms: i64,
}

pub(super) const INSERT_GAP: &str = "INSERT INTO data_gaps (agent_id, host_id, first_seq, last_seq, \
    from_ms, to_ms, samples_lost, batches_lost, cause, exact, recorded_at_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING";

impl Store {
    /// Gaps overlapping `[from_ms, to_ms]`, of one agent or host when `who` is not
    /// empty (matching the agent id prefix or the host id), newest first.
    pub async fn gaps(
        &self,
        who: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<GapRow>, StoreError> {
        let started = Instant::now();
        let result: Result<Vec<GapRow>, StoreError> = on_pool!(self, pool => {
            let rows = sqlx::query("SELECT agent_id, host_id, first_seq, last_seq, from_ms, to_ms, \
                samples_lost, batches_lost, cause, exact, recorded_at_ms FROM data_gaps \
                WHERE to_ms >= $1 AND from_ms <= $2 \
                AND ($3 = '' OR host_id = $3 OR agent_id = $3 OR agent_id LIKE $4) \
                ORDER BY to_ms DESC, agent_id, first_seq LIMIT $5")
                .bind(from_ms).bind(to_ms).bind(who).bind(format!("{who}/%")).bind(i64::from(limit))
                .fetch_all(pool).await;
            match rows {
                Ok(rows) => rows.iter().map(|r| {
                    let n = |name: &str| -> Result<u64, sqlx::Error> {
                        Ok(u64::try_from(r.try_get::<i64, _>(name)?).unwrap_or(0))
                    };
                    Ok(GapRow {
                        agent_id: r.try_get("agent_id")?,
                        host_id: r.try_get("host_id")?,
                        first_seq: n("first_seq")?,
                        last_seq: n("last_seq")?,
                        from_ms: r.try_get("from_ms")?,
                        to_ms: r.try_get("to_ms")?,
                        samples_lost: n("samples_lost")?,
                        batches_lost: n("batches_lost")?,
                        cause: r.try_get("cause")?,
                        exact: r.try_get("exact")?,
                        recorded_at_ms: r.try_get("recorded_at_ms")?,
                    })
                }).collect(),
                Err(e) => Err(e.into()),
            }
        });
        observe("gaps", started, result.is_ok());
        result
    }
}
