//! The sequencer (leader only): gives staged events their positions in the
//! outbox, oldest first, in transactions that check the leader lease, and hands
//! them straight to this replica's event log (publishers, live streams). Woken
//! at once by this replica's commits, and every poll interval for other
//! replicas'. While it runs, this replica's own commits give their events
//! positions in their own transaction (`Commit::sequence`), so it mostly
//! positions other replicas' events and a new leader's backlog.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::log::EventLog;
use crate::state::State;
use crate::store::{LeaseHold, Store, StoreError};
use crate::telemetry;

/// Events one transaction gives positions to, at most.
const ROUND: u32 = 2_000;

/// Runs while `lease` is held, until `stop`.
pub async fn run(
    store: Store,
    log: Arc<EventLog>,
    state: Arc<State>,
    lease: LeaseHold,
    poll: Duration,
    stop: CancellationToken,
) {
    let _sequencing = log.sequencing_under(&lease);
    let mut failing = false;
    loop {
        loop {
            match store.sequence_events(&lease, ROUND).await {
                Ok(events) => {
                    if failing {
                        tracing::info!("Event sequencing works again.");
                        failing = false;
                    }
                    let n = events.len();
                    if n == 0 {
                        break;
                    }
                    metrics::counter!(telemetry::SEQUENCED).increment(n as u64);
                    if !super::tail::absorb(&store, &log, &state, events).await {
                        log.wake_tail();
                    }
                    if n < ROUND as usize {
                        break;
                    }
                }
                Err(StoreError::LeaseLost(what)) => {
                    tracing::warn!(
                        lease = what,
                        "The leader lease is lost; the sequencer stops."
                    );
                    return;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "Could not give events positions; retrying."
                        );
                        failing = true;
                    }
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = log.staged() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
