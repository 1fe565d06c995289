//! The tail (every replica): follows the outbox from the event log's head, so
//! that live streams on this replica see every replica's events, in position
//! order. The leader's sequencer hands the events it positions over directly
//! ([`absorb`]), so there the tail only catches up after a failure. Events of resources this replica's model holds at an older version
//! (changed by another replica) make it read those resources again: the model
//! lags another replica's writes by at most the poll interval plus the
//! sequencer's round.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::StoredEvent;
use super::log::EventLog;
use crate::planner::apply::refresh;
use crate::state::State;
use crate::store::Store;

/// Events read per query, at most.
const PAGE: u32 = 1_000;

/// Takes events that got positions into this replica: resources they name at a
/// newer version than the model holds are read again from the database, then
/// the events join the event log (with when they committed, if they did here).
/// False when the resources could not be read (the events wait for the next
/// round).
pub async fn absorb(
    store: &Store,
    log: &EventLog,
    state: &State,
    mut events: Vec<StoredEvent>,
) -> bool {
    let stale: Vec<String> = {
        let model = state.read();
        let mut ids: HashSet<&str> = HashSet::new();
        for e in &events {
            let known = model
                .resources
                .get(&e.event.resource_id)
                .map_or(0, |t| t.record.version);
            if known < e.event.resource_version {
                ids.insert(e.event.resource_id.as_str());
            }
        }
        ids.into_iter().map(str::to_string).collect()
    };
    if !stale.is_empty() {
        match store.load_resources(&stale).await {
            Ok(records) => refresh(state, records),
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "Could not read resources another replica changed; retrying."
                );
                return false;
            }
        }
    }
    for e in &mut events {
        e.committed_at = log.take_commit_time(&e.event.event_id);
    }
    let last = events.last().map(|e| e.position);
    log.append(events);
    // The sequencer and the leader's writer both hand events over; the one
    // whose positions come later may come first and stop at the gap: the tail
    // then reads them from the outbox.
    if last.is_some_and(|p| p > log.head()) {
        log.wake_tail();
    }
    true
}

/// Follows the outbox until `stop`.
pub async fn run(
    store: Store,
    log: Arc<EventLog>,
    state: Arc<State>,
    poll: Duration,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        loop {
            let after = log.head();
            let events = match store.events_after(after, PAGE).await {
                Ok(e) => {
                    failing = false;
                    e
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "Could not read new events; retrying."
                        );
                        failing = true;
                    }
                    break;
                }
            };
            if events.is_empty() {
                break;
            }
            let full = events.len() == PAGE as usize;
            if !absorb(&store, &log, &state, events).await {
                break;
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = log.sequenced() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
