//! Deletes outbox events nobody needs any more: those every configured sink and
//! every durable subscription has passed, once they are older than the minimum
//! retention (kept for clients resuming a live stream). A subscription that lags
//! beyond the maximum retention stops holding events back; a sink always does, so
//! a broker outage never loses an event.
//!
//! Tombstones of deleted resources go once no event about the deletion can be
//! replayed: older than the maximum retention, and older than every event a
//! sink still holds. The leader deletes them from the database
//! ([`prune_tombstones_once`]); every replica forgets them in memory on its own
//! clock ([`forget_tombstones`]).

use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use tokio_util::sync::CancellationToken;

use crate::state::State;
use crate::store::{CursorKind, Store, StoreError};

/// How long after a deletion its event may enter the outbox (the sequencer
/// moves committed events there a moment later): a tombstone is kept this
/// much longer than the oldest event in the outbox.
const SEQUENCING_MARGIN_MS: i64 = 60_000;

/// How long events are kept.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Every event is kept at least this long (ms).
    pub min_ms: u64,
    /// Subscriptions hold events at most this long (ms).
    pub max_ms: u64,
    /// Cursor names of the configured sinks (`sink:<name>`).
    pub sinks: Vec<String>,
}

/// Deletes what may go; returns how many events were deleted.
pub async fn prune_once(
    store: &Store,
    retention: &Retention,
    head: u64,
) -> Result<u64, StoreError> {
    let cursors = store.cursors().await?;
    let sinks_floor = cursors
        .iter()
        .filter(|c| c.kind == CursorKind::Sink && retention.sinks.contains(&c.name))
        .map(|c| c.position)
        .min()
        .unwrap_or(head);
    // A configured sink without a cursor yet starts at the head: nothing to hold.
    let subscriptions_floor = cursors
        .iter()
        .filter(|c| c.kind == CursorKind::Subscription)
        .map(|c| c.position)
        .min()
        .unwrap_or(head);
    let now = now_unix_ms();
    let min_age = i64::try_from(retention.min_ms).unwrap_or(i64::MAX);
    let max_age = i64::try_from(retention.max_ms).unwrap_or(i64::MAX);
    let mut deleted = store
        .prune_events(
            sinks_floor.min(subscriptions_floor),
            now.saturating_sub(min_age),
        )
        .await?;
    if max_age > min_age {
        deleted += store
            .prune_events(sinks_floor, now.saturating_sub(max_age))
            .await?;
    }
    Ok(deleted)
}

/// Prunes every `every` until `stop` is cancelled.
pub async fn run(
    store: Store,
    retention: Retention,
    log: std::sync::Arc<super::log::EventLog>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match prune_once(&store, &retention, log.head()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(events = n, "Pruned delivered events from the outbox."),
            Err(e) => tracing::warn!(
                error = &e as &dyn std::error::Error,
                "Cannot prune the outbox; will retry."
            ),
        }
        match prune_tombstones_once(&store, &retention).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(tombstones = n, "Pruned tombstones of deleted resources."),
            Err(e) => tracing::warn!(
                error = &e as &dyn std::error::Error,
                "Cannot prune tombstones; will retry."
            ),
        }
    }
}

/// The time before which a resource's deletion is past the maximum retention
/// `max_ms` at `now_ms`: its tombstone is no longer needed.
pub fn tombstone_cutoff(now_ms: i64, max_ms: u64) -> i64 {
    now_ms.saturating_sub(i64::try_from(max_ms).unwrap_or(i64::MAX))
}

/// [`tombstone_cutoff`], held back to before the oldest event still in the
/// outbox (`oldest_event_ms`), which a sink that lags beyond the maximum
/// retention keeps there: a deletion whose event it has yet to publish keeps
/// its tombstone.
pub fn stored_tombstone_cutoff(now_ms: i64, max_ms: u64, oldest_event_ms: Option<i64>) -> i64 {
    let cutoff = tombstone_cutoff(now_ms, max_ms);
    oldest_event_ms.map_or(cutoff, |oldest| {
        cutoff.min(oldest.saturating_sub(SEQUENCING_MARGIN_MS))
    })
}

/// Deletes the stored tombstones past [`stored_tombstone_cutoff`]; returns how
/// many.
pub async fn prune_tombstones_once(
    store: &Store,
    retention: &Retention,
) -> Result<u64, StoreError> {
    let oldest = store.oldest_event_created_at_ms().await?;
    let cutoff = stored_tombstone_cutoff(now_unix_ms(), retention.max_ms, oldest);
    store.prune_tombstones(cutoff).await
}

/// On every replica: forgets the in-memory tombstones past
/// [`tombstone_cutoff`] (of `max_ms`) every `every` until `stop` is cancelled.
/// A replica that forgot one the database still holds (a lagging sink keeps it
/// there) reads it back when it creates the resource again: its write
/// conflicts with the stored version.
pub async fn forget_tombstones(
    state: Arc<State>,
    max_ms: u64,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let n = state.prune_tombstones(tombstone_cutoff(now_unix_ms(), max_ms));
        if n > 0 {
            tracing::debug!(tombstones = n, "Forgot tombstones of deleted resources.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    #[test]
    fn the_cutoff_is_the_maximum_retention_ago() {
        assert_eq!(tombstone_cutoff(10 * DAY as i64, 7 * DAY), 3 * DAY as i64);
        assert_eq!(tombstone_cutoff(0, u64::MAX), -i64::MAX, "no overflow");
    }

    #[test]
    fn events_a_sink_still_holds_hold_the_stored_cutoff_back() {
        let now = 10 * DAY as i64;
        // Nothing older than the maximum retention in the outbox.
        assert_eq!(
            stored_tombstone_cutoff(now, 7 * DAY, Some(9 * DAY as i64)),
            3 * DAY as i64
        );
        assert_eq!(stored_tombstone_cutoff(now, 7 * DAY, None), 3 * DAY as i64);
        // A sink holds events from day 1: deletions after them stay.
        assert_eq!(
            stored_tombstone_cutoff(now, 7 * DAY, Some(DAY as i64)),
            DAY as i64 - SEQUENCING_MARGIN_MS
        );
    }
}
