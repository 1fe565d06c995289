//! The bounded queue of batches that are closed but not yet acknowledged.
//!
//! The batcher appends, the transport reads in order and removes what the
//! aggregator acknowledged. When the queue is full the oldest batch is dropped and
//! counted (a disk buffer replaces this limit in a later version).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use infrawatch_proto::v1::Batch;
use tokio::sync::watch;

/// Totals of what was dropped, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Batches dropped because the queue was full.
    pub overflow_batches: u64,
    /// Samples in those batches.
    pub overflow_samples: u64,
    /// Batches the aggregator rejected as invalid.
    pub rejected_batches: u64,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Arc<Batch>>,
    dropped: Dropped,
}

/// Closed batches awaiting acknowledgement, oldest first.
#[derive(Debug)]
pub struct PendingBatches {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Carries the newest seq pushed, so the transport wakes without lost signals.
    newest: watch::Sender<u64>,
}

fn sample_count(b: &Batch) -> u64 {
    b.samples.as_ref().map_or(0, |s| s.values.len() as u64)
}

impl PendingBatches {
    /// An empty queue holding at most `capacity` batches.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            newest: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every mutation is a single VecDeque call), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a batch; drops the oldest when full and returns what it dropped.
    pub fn push(&self, batch: Batch) -> Option<u64> {
        let seq = batch.seq;
        let dropped = {
            let mut inner = self.lock();
            let dropped = if inner.queue.len() >= self.capacity {
                inner.queue.pop_front().map(|old| {
                    inner.dropped.overflow_batches += 1;
                    inner.dropped.overflow_samples += sample_count(&old);
                    old.seq
                })
            } else {
                None
            };
            inner.queue.push_back(Arc::new(batch));
            dropped
        };
        self.newest.send_replace(seq);
        dropped
    }

    /// Removes every batch up to and including `seq`.
    pub fn ack(&self, seq: u64) {
        let mut inner = self.lock();
        while inner.queue.front().is_some_and(|b| b.seq <= seq) {
            inner.queue.pop_front();
        }
    }

    /// The oldest batch with a seq above `seq`.
    pub fn next_after(&self, seq: u64) -> Option<Arc<Batch>> {
        let inner = self.lock();
        inner.queue.iter().find(|b| b.seq > seq).cloned()
    }

    /// Drops the oldest batch because the aggregator refused it; returns its seq.
    pub fn reject_oldest(&self) -> Option<u64> {
        let mut inner = self.lock();
        let seq = inner.queue.pop_front().map(|b| b.seq);
        if seq.is_some() {
            inner.dropped.rejected_batches += 1;
        }
        seq
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.lock().dropped
    }

    /// A receiver that changes whenever a batch is pushed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> Batch {
        Batch {
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn order_ack_and_overflow() {
        let q = PendingBatches::new(3);
        for s in 1..=3 {
            assert_eq!(q.push(batch(s)), None);
        }
        assert_eq!(q.push(batch(4)), Some(1));
        assert_eq!(q.dropped().overflow_batches, 1);
        assert_eq!(q.next_after(0).unwrap().seq, 2);
        assert_eq!(q.next_after(2).unwrap().seq, 3);
        q.ack(3);
        assert_eq!(q.len(), 1);
        assert!(q.next_after(4).is_none());
        assert_eq!(q.reject_oldest(), Some(4));
        assert!(q.is_empty());
    }
}
