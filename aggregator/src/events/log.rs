//! The event log as consumers see it: the newest events in memory (so live
//! consumers never touch the database), the rest read back from the outbox, and
//! the head position that wakes consumers when new events commit. It also links
//! this replica's planner to the sequencer and the tail: commits here wake them,
//! and remember when each event committed (for the publish latency).
//!
//! Events in memory are kept as their encoding only and decoded for each read:
//! the decoded form (its label map above all) would take three times the room,
//! and a new leader's first list of a large cluster fills the log at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, watch};

use bytes::Bytes;

use super::StoredEvent;
use crate::store::{LeaseHold, Store, StoreError};

/// Why events could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The events after the requested position were pruned.
    #[error(
        "events after position {after} are no longer kept; the oldest kept is {oldest} (resume from {} or later)",
        oldest.saturating_sub(1)
    )]
    Pruned {
        /// The requested position.
        after: u64,
        /// The oldest position still kept.
        oldest: u64,
    },
    /// The position lies beyond the newest event.
    #[error("position {after} is beyond the newest event {head}")]
    Ahead {
        /// The requested position.
        after: u64,
        /// The newest position.
        head: u64,
    },
    /// The outbox could not be read.
    #[error("cannot read the outbox")]
    Store(#[from] StoreError),
    /// An event kept in memory could not be decoded.
    #[error("the event at position {position} cannot be decoded: {reason}")]
    Undecodable {
        /// Its position.
        position: u64,
        /// What the decoder said.
        reason: String,
    },
}

/// An event as the log keeps it in memory.
#[derive(Debug, Clone)]
struct Kept {
    position: u64,
    payload: Bytes,
    committed_at: Option<Instant>,
}

impl Kept {
    fn decode(self) -> Result<Arc<StoredEvent>, LogError> {
        StoredEvent::decode(self.position, self.payload, self.committed_at)
            .map(Arc::new)
            .map_err(|e| LogError::Undecodable {
                position: self.position,
                reason: e.to_string(),
            })
    }
}

/// Events committed here whose commit time is remembered, at most (older ones
/// are forgotten; only their latency figure is lost).
const COMMIT_TIMES: usize = 100_000;

/// Recent events and the head position.
#[derive(Debug)]
pub struct EventLog {
    recent: Mutex<VecDeque<Kept>>,
    capacity: usize,
    head: watch::Sender<u64>,
    store: Store,
    /// When events committed by this replica committed, by event id.
    committed_at: Mutex<HashMap<String, Instant>>,
    /// Wakes the sequencer: events were staged here.
    staged: Notify,
    /// Wakes the tail: the sequencer gave events positions.
    sequenced: Notify,
    /// The lease the sequencer here runs under, if it runs.
    sequencing: Mutex<Option<LeaseHold>>,
}

/// Ends [`EventLog::sequencing_under`] when dropped (the sequencer stopped).
#[derive(Debug)]
pub struct SequencingGuard {
    log: Arc<EventLog>,
    lease: LeaseHold,
}

impl Drop for SequencingGuard {
    fn drop(&mut self) {
        let mut held = self
            .log
            .sequencing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if held.as_ref() == Some(&self.lease) {
            *held = None;
        }
    }
}

impl EventLog {
    /// A log whose newest stored event is `head`, keeping `capacity` events in memory.
    pub fn new(store: Store, head: u64, capacity: usize) -> Self {
        metrics::gauge!(super::metric::HEAD).set(head as f64);
        Self {
            recent: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
            head: watch::Sender::new(head),
            store,
            committed_at: Mutex::new(HashMap::new()),
            staged: Notify::new(),
            sequenced: Notify::new(),
            sequencing: Mutex::new(None),
        }
    }

    /// Notes events this replica's planner just committed (staged, without
    /// positions yet) and wakes the sequencer.
    pub fn committed_here(&self, events: &[StoredEvent]) {
        if events.is_empty() {
            return;
        }
        self.note_commit_times(events);
        self.staged.notify_one();
    }

    /// Notes when events this replica's planner committed did (for the
    /// publish latency).
    pub fn note_commit_times(&self, events: &[StoredEvent]) {
        if events.is_empty() {
            return;
        }
        metrics::counter!(super::metric::EMITTED).increment(events.len() as u64);
        let now = Instant::now();
        {
            let mut times = self.committed_at.lock().unwrap_or_else(|p| p.into_inner());
            if times.len() + events.len() > COMMIT_TIMES {
                times.clear();
            }
            for e in events {
                times.insert(e.event.event_id.clone(), now);
            }
        }
    }

    /// The lease this replica's sequencer runs under, while it runs: the
    /// planner's commits then give their events positions themselves.
    pub fn sequencing(&self) -> Option<LeaseHold> {
        self.sequencing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks this replica's sequencer as running under `lease` until the
    /// returned guard drops.
    pub fn sequencing_under(self: &Arc<Self>, lease: &LeaseHold) -> SequencingGuard {
        *self.sequencing.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease.clone());
        SequencingGuard {
            log: Arc::clone(self),
            lease: lease.clone(),
        }
    }

    /// When event `event_id` committed, if it did here (taken: asked once).
    pub fn take_commit_time(&self, event_id: &str) -> Option<Instant> {
        self.committed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(event_id)
    }

    /// Resolves when this replica staged events.
    pub async fn staged(&self) {
        self.staged.notified().await;
    }

    /// Wakes the sequencer: events may be staged.
    pub fn wake_sequencer(&self) {
        self.staged.notify_one();
    }

    /// Wakes the tail (the sequencer gave events positions).
    pub fn wake_tail(&self) {
        self.sequenced.notify_one();
    }

    /// Resolves when the sequencer gave events positions here.
    pub async fn sequenced(&self) {
        self.sequenced.notified().await;
    }

    /// The newest committed position.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver that changes whenever new events commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Adds events that got positions, in position order. Events at or below the
    /// head are skipped (the sequencer and the tail may both hand the same ones
    /// over); the rest must follow the head without a gap, else nothing more is
    /// added (the tail reads them again from the outbox). Returns how many were
    /// added.
    pub fn append(&self, events: impl IntoIterator<Item = StoredEvent>) -> usize {
        let mut added = 0;
        let mut last = None;
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let mut head = self.head();
            for e in events {
                if e.position <= head {
                    continue;
                }
                if e.position != head + 1 {
                    tracing::debug!(
                        head,
                        position = e.position,
                        "Event after a gap not added; the tail reads it again."
                    );
                    break;
                }
                head = e.position;
                last = Some(e.position);
                if recent.len() == self.capacity {
                    recent.pop_front();
                }
                recent.push_back(Kept {
                    position: e.position,
                    payload: e.payload,
                    committed_at: e.committed_at,
                });
                added += 1;
            }
            if let Some(p) = last {
                // Moved under the lock, so two appenders cannot interleave.
                self.head.send_replace(p);
            }
        }
        if let Some(p) = last {
            metrics::gauge!(super::metric::HEAD).set(p as f64);
        }
        added
    }

    /// Up to `limit` events after `after`, oldest first; empty when `after` is the
    /// head.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>, LogError> {
        let head = self.head();
        if after > head {
            return Err(LogError::Ahead { after, head });
        }
        if after == head || limit == 0 {
            return Ok(Vec::new());
        }
        let kept: Option<Vec<Kept>> = {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            match recent.front().map(|e| e.position) {
                Some(first) if after + 1 >= first => {
                    let skip = usize::try_from(after + 1 - first).unwrap_or(usize::MAX);
                    Some(recent.iter().skip(skip).take(limit).cloned().collect())
                }
                _ => None,
            }
        };
        if let Some(kept) = kept {
            return kept.into_iter().map(Kept::decode).collect();
        }
        let limit32 = u32::try_from(limit).unwrap_or(u32::MAX);
        let events = self.store.events_after(after, limit32).await?;
        match events.first() {
            Some(first) if first.position == after + 1 => {
                Ok(events.into_iter().map(Arc::new).collect())
            }
            Some(first) => Err(LogError::Pruned {
                after,
                oldest: first.position,
            }),
            None => Err(LogError::Pruned {
                after,
                oldest: head + 1,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;
    use infrawatch_proto::v1 as pb;

    fn event(position: u64) -> StoredEvent {
        StoredEvent::new(
            position,
            pb::InfrastructureStatusUpdatedEvent {
                resource_id: format!("host/{position}"),
                ..Default::default()
            },
            None,
        )
    }

    fn log(capacity: usize) -> EventLog {
        let store = Store::open(&StorageConfig {
            url: "sqlite::memory:".into(),
            ..StorageConfig::default()
        })
        .unwrap();
        EventLog::new(store, 10, capacity)
    }

    #[tokio::test]
    async fn reads_recent_events_from_memory_in_order() {
        let log = log(4);
        let mut rx = log.subscribe();
        log.append((11..=16).map(event));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 16);
        let got: Vec<u64> = log
            .read_after(13, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(got, vec![14, 15, 16]);
        let got: Vec<u64> = log
            .read_after(12, 2)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(got, vec![13, 14]);
        assert!(log.read_after(16, 10).await.unwrap().is_empty());
        assert!(matches!(
            log.read_after(17, 10).await,
            Err(LogError::Ahead { .. })
        ));
    }
}
