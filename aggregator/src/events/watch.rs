//! Streams of events for clients (gRPC `WatchEvents`, REST server-sent events):
//! from a position, filtered, live. Each stream is a task that reads the log and
//! feeds a bounded channel, so a slow client holds at most the channel's worth of
//! events in memory and slows only its own task.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::StoredEvent;
use super::filter::EventFilter;
use super::log::{EventLog, LogError};
use super::metric;

/// Events per channel.
pub const CHANNEL_EVENTS: usize = 256;
/// Events read per round.
const READ_BATCH: usize = 256;

/// Starts a stream of the events after `after` that pass `filter`. The receiver
/// ends after an error item, when `stop` is cancelled, or never while the client
/// reads.
pub fn watch(
    log: Arc<EventLog>,
    after: u64,
    filter: EventFilter,
    stop: CancellationToken,
) -> mpsc::Receiver<Result<Arc<StoredEvent>, LogError>> {
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    tokio::spawn(async move {
        let gauge = metrics::gauge!(metric::WATCHERS);
        gauge.increment(1.0);
        let mut cursor = after;
        let mut head = log.subscribe();
        loop {
            head.borrow_and_update();
            let events = match log.read_after(cursor, READ_BATCH).await {
                Ok(events) => events,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            };
            if events.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    changed = head.changed() => if changed.is_err() { break },
                }
                continue;
            }
            let mut gone = false;
            for e in events {
                cursor = e.position;
                if filter.matches(&e.event) && tx.send(Ok(e)).await.is_err() {
                    gone = true;
                    break;
                }
            }
            if gone || stop.is_cancelled() {
                break;
            }
        }
        gauge.decrement(1.0);
    });
    rx
}
