//! The leader lease: a row in `leases`, taken when free or expired and renewed
//! every third of its time, on the database's clock. Every new holder gets a
//! higher epoch; leader writes that must not happen twice (the sequencer's)
//! check holder and epoch in their own transaction, so a replica that paused or
//! lost its database past the lease cannot write as leader afterwards. The same
//! loop keeps this replica's heartbeat row alive.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{LeaseHold, Store};
use crate::telemetry;

/// The lease the leader holds.
pub const LEADER_LEASE: &str = "leader";

/// Keeps this replica's heartbeat and tries for the leader lease until `stop`;
/// `leader` holds the lease while held (and `None` otherwise). A stopping
/// leader gives the lease up.
pub async fn run(
    store: Store,
    replica_id: String,
    ttl: Duration,
    leader: watch::Sender<Option<LeaseHold>>,
    stop: CancellationToken,
) {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the lease held now runs out by this process's clock (measured from
    // before the request, so never later than the database's).
    let mut held_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let asked_at = tokio::time::Instant::now();
        if let Err(e) = store.heartbeat(&replica_id, ttl_ms).await {
            tracing::debug!(error = &e as &dyn std::error::Error, "Heartbeat failed.");
        }
        match store.take_lease(LEADER_LEASE, &replica_id, ttl_ms).await {
            Ok(Some(epoch)) => {
                held_until = Some(asked_at + ttl);
                let hold = LeaseHold {
                    name: LEADER_LEASE.to_string(),
                    holder: replica_id.clone(),
                    epoch,
                };
                leader.send_if_modified(|current| {
                    if current.as_ref() == Some(&hold) {
                        return false;
                    }
                    tracing::info!(epoch, "This replica is the leader.");
                    *current = Some(hold);
                    true
                });
                metrics::gauge!(telemetry::LEADER).set(1.0);
            }
            Ok(None) => step_down(&leader, &mut held_until, "another replica holds the lease"),
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "Could not renew the leader lease."
                );
                // Still the leader until the lease would have run out.
                if held_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
                    step_down(&leader, &mut held_until, "the lease ran out");
                }
            }
        }
    }
    if leader.borrow().is_some() {
        step_down(&leader, &mut held_until, "stopping");
        if let Err(e) = store.release_lease(LEADER_LEASE, &replica_id).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "Could not give the leader lease up; it runs out by itself."
            );
        }
    }
    if let Err(e) = store.retire(&replica_id).await {
        tracing::debug!(
            error = &e as &dyn std::error::Error,
            "Could not mark this replica stopped; its heartbeat runs out by itself."
        );
    }
}

fn step_down(
    leader: &watch::Sender<Option<LeaseHold>>,
    held_until: &mut Option<tokio::time::Instant>,
    why: &str,
) {
    *held_until = None;
    leader.send_if_modified(|current| {
        if current.is_none() {
            return false;
        }
        tracing::info!(why, "This replica is no longer the leader.");
        *current = None;
        true
    });
    metrics::gauge!(telemetry::LEADER).set(0.0);
}
