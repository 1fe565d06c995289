//! Deletes outbox events nobody needs any more: those every configured sink and
//! every durable subscription has passed, once they are older than the minimum
//! retention (kept for clients resuming a live stream). A subscription that lags
//! beyond the maximum retention stops holding events back; a sink always does, so
//! a broker outage never loses an event.

use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use tokio_util::sync::CancellationToken;

use crate::store::{CursorKind, Store, StoreError};

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
    }
}
