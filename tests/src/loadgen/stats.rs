//! What the simulated agents and the event observers count, shared by every task:
//! plain atomics for the counters, a mutex per histogram (recording is a few
//! nanoseconds; at 10,000 acknowledgements a second the lock is not contended on
//! a handful of worker threads), and snapshots that subtract into the figures of
//! an interval.
//!
//! Acknowledgements come at two levels (see `infrawatch_common::ack`): a batch's
//! first ack, `received` (or `durable` from an aggregator that sends only those),
//! is what the window and the `acked` figures count; `durable` figures count the
//! acks that say the batch is committed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::Histogram;

/// Where a change was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Observer {
    /// `EventService.WatchEvents` over gRPC: the aggregator's in-process event bus.
    Grpc,
    /// A NATS JetStream consumer of the aggregator's NATS sink.
    Nats,
    /// Polling the resource over REST until its health shows the change.
    Rest,
}

impl Observer {
    /// All observers, in report order.
    pub const ALL: [Observer; 3] = [Observer::Grpc, Observer::Nats, Observer::Rest];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Observer::Grpc => "grpc_watch",
            Observer::Nats => "nats_jetstream",
            Observer::Rest => "rest_query",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters shared by all tasks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Agents with an open stream (Hello sent).
    pub connected: AtomicU64,
    /// Connections established since the start (reconnections included).
    pub connections: AtomicU64,
    /// Batches and samples sent.
    pub batches_sent: AtomicU64,
    /// Samples in the batches sent.
    pub samples_sent: AtomicU64,
    /// Encoded `Batch` bytes sent (the gRPC frame and TLS overhead excluded).
    pub batch_bytes_sent: AtomicU64,
    /// Batches acknowledged (their first ack, of either level).
    pub batches_acked: AtomicU64,
    /// Samples in the batches acknowledged (less those refused).
    pub samples_acked: AtomicU64,
    /// Batches acknowledged durable.
    pub batches_durable: AtomicU64,
    /// Samples in the batches acknowledged durable (less those refused).
    pub samples_durable: AtomicU64,
    /// Batches sent but never acknowledged durable because their stream ended
    /// first (the load generator does not resend).
    pub batches_abandoned: AtomicU64,
    /// Samples in the batches abandoned.
    pub samples_abandoned: AtomicU64,
    /// Samples the schedule asked for but not sent, because the agent already had
    /// its maximum of unacknowledged batches (the aggregator is behind).
    pub samples_skipped: AtomicU64,
    /// Changes injected.
    pub changes: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    ack_latency: Mutex<Histogram>,
    durable_latency: Mutex<Histogram>,
    change_latency: [Mutex<Histogram>; 3],
    change_missed: [AtomicU64; 3],
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain counts behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stats {
    /// Counts one error of `kind` (a short, bounded vocabulary).
    pub fn error(&self, kind: impl Into<String>) {
        *lock(&self.errors).entry(kind.into()).or_default() += 1;
    }

    /// Counts `n` errors of `kind` at once (e.g. refused samples).
    pub fn error_n(&self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *lock(&self.errors).entry(kind.into()).or_default() += n;
        }
    }

    /// Records the latency from sending one batch to its first ack, of either
    /// level.
    pub fn ack(&self, latency: Duration, samples: u64) {
        lock(&self.ack_latency).record(latency);
        self.batches_acked.fetch_add(1, Ordering::Relaxed);
        self.samples_acked.fetch_add(samples, Ordering::Relaxed);
    }

    /// Records the latency from sending one batch to its durable ack.
    pub fn durable(&self, latency: Duration, samples: u64) {
        lock(&self.durable_latency).record(latency);
        self.batches_durable.fetch_add(1, Ordering::Relaxed);
        self.samples_durable.fetch_add(samples, Ordering::Relaxed);
    }

    /// Counts batches a stream left without a durable ack when it ended.
    pub fn abandoned(&self, batches: u64, samples: u64) {
        self.batches_abandoned.fetch_add(batches, Ordering::Relaxed);
        self.samples_abandoned.fetch_add(samples, Ordering::Relaxed);
    }

    /// Records how long `observer` took to see a change.
    pub fn change_seen(&self, observer: Observer, latency: Duration) {
        lock(&self.change_latency[observer.index()]).record(latency);
    }

    /// Counts a change `observer` never saw in time.
    pub fn change_missed(&self, observer: Observer) {
        self.change_missed[observer.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of every figure now.
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            at: std::time::Instant::now(),
            connected: load(&self.connected),
            connections: load(&self.connections),
            batches_sent: load(&self.batches_sent),
            samples_sent: load(&self.samples_sent),
            batch_bytes_sent: load(&self.batch_bytes_sent),
            batches_acked: load(&self.batches_acked),
            samples_acked: load(&self.samples_acked),
            batches_durable: load(&self.batches_durable),
            samples_durable: load(&self.samples_durable),
            batches_abandoned: load(&self.batches_abandoned),
            samples_abandoned: load(&self.samples_abandoned),
            samples_skipped: load(&self.samples_skipped),
            changes: load(&self.changes),
            errors: lock(&self.errors).clone(),
            ack_latency: lock(&self.ack_latency).clone(),
            durable_latency: lock(&self.durable_latency).clone(),
            change_latency: Observer::ALL.map(|o| lock(&self.change_latency[o.index()]).clone()),
            change_missed: Observer::ALL.map(|o| load(&self.change_missed[o.index()])),
        }
    }
}

/// Every figure at one moment; [`Snapshot::since`] gives an interval.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub at: std::time::Instant,
    /// Agents connected (a level, not a count).
    pub connected: u64,
    /// Connections established.
    pub connections: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Samples sent.
    pub samples_sent: u64,
    /// Encoded batch bytes sent.
    pub batch_bytes_sent: u64,
    /// Batches acknowledged (first ack, either level).
    pub batches_acked: u64,
    /// Samples acknowledged (first ack, either level).
    pub samples_acked: u64,
    /// Batches acknowledged durable.
    pub batches_durable: u64,
    /// Samples acknowledged durable.
    pub samples_durable: u64,
    /// Batches left without a durable ack by a stream that ended.
    pub batches_abandoned: u64,
    /// Samples in them.
    pub samples_abandoned: u64,
    /// Samples skipped because the agent's window was full.
    pub samples_skipped: u64,
    /// Changes injected.
    pub changes: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency from send to the first ack (received, or durable from an
    /// aggregator that sends only durable acks).
    pub ack_latency: Histogram,
    /// Latency from send to the durable ack.
    pub durable_latency: Histogram,
    /// Change-to-observation latency per [`Observer`].
    pub change_latency: [Histogram; 3],
    /// Changes not observed in time, per [`Observer`].
    pub change_missed: [u64; 3],
}

impl Snapshot {
    /// The interval from `earlier` to this snapshot (levels are this snapshot's).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let mut errors = self.errors.clone();
        for (k, v) in errors.iter_mut() {
            *v = d(*v, earlier.errors.get(k).copied().unwrap_or(0));
        }
        errors.retain(|_, v| *v > 0);
        Snapshot {
            at: self.at,
            connected: self.connected,
            connections: d(self.connections, earlier.connections),
            batches_sent: d(self.batches_sent, earlier.batches_sent),
            samples_sent: d(self.samples_sent, earlier.samples_sent),
            batch_bytes_sent: d(self.batch_bytes_sent, earlier.batch_bytes_sent),
            batches_acked: d(self.batches_acked, earlier.batches_acked),
            samples_acked: d(self.samples_acked, earlier.samples_acked),
            batches_durable: d(self.batches_durable, earlier.batches_durable),
            samples_durable: d(self.samples_durable, earlier.samples_durable),
            batches_abandoned: d(self.batches_abandoned, earlier.batches_abandoned),
            samples_abandoned: d(self.samples_abandoned, earlier.samples_abandoned),
            samples_skipped: d(self.samples_skipped, earlier.samples_skipped),
            changes: d(self.changes, earlier.changes),
            errors,
            ack_latency: self.ack_latency.since(&earlier.ack_latency),
            durable_latency: self.durable_latency.since(&earlier.durable_latency),
            change_latency: [0, 1, 2]
                .map(|i| self.change_latency[i].since(&earlier.change_latency[i])),
            change_missed: [0, 1, 2].map(|i| d(self.change_missed[i], earlier.change_missed[i])),
        }
    }

    /// Errors of every kind, plus samples skipped for a full window (counted as
    /// one error kind in reports).
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum::<u64>() + u64::from(self.samples_skipped > 0)
    }

    /// Batches sent that are neither acknowledged durable nor abandoned: a
    /// durable ack may still come for them.
    pub fn awaiting_durable(&self) -> u64 {
        self.batches_sent
            .saturating_sub(self.batches_durable)
            .saturating_sub(self.batches_abandoned)
    }

    /// Encoded batch bytes per sample sent.
    pub fn bytes_per_sample(&self) -> Option<f64> {
        (self.samples_sent > 0).then(|| self.batch_bytes_sent as f64 / self.samples_sent as f64)
    }

    /// The change latency histogram of `observer`.
    pub fn change(&self, observer: Observer) -> &Histogram {
        &self.change_latency[observer.index()]
    }

    /// Changes `observer` missed.
    pub fn missed(&self, observer: Observer) -> u64 {
        self.change_missed[observer.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_holds_only_what_happened_in_it() {
        let s = Stats::default();
        s.error("connect");
        s.ack(Duration::from_millis(2), 100);
        let a = s.snapshot();
        s.error("connect");
        s.error("ack_timeout");
        s.ack(Duration::from_millis(9), 50);
        s.durable(Duration::from_millis(900), 150);
        s.change_seen(Observer::Nats, Duration::from_millis(4));
        s.change_missed(Observer::Rest);
        let i = s.snapshot().since(&a);
        assert_eq!(i.samples_acked, 50);
        assert_eq!(i.errors.get("connect"), Some(&1));
        assert_eq!(i.errors.get("ack_timeout"), Some(&1));
        assert_eq!(i.ack_latency.count(), 1);
        assert_eq!((i.samples_durable, i.batches_durable), (150, 1));
        assert_eq!(i.durable_latency.count(), 1);
        assert_eq!(i.change(Observer::Nats).count(), 1);
        assert_eq!(i.change(Observer::Grpc).count(), 0);
        assert_eq!(i.missed(Observer::Rest), 1);
        assert_eq!(i.error_total(), 2);
    }

    #[test]
    fn batches_await_a_durable_ack_until_it_comes_or_their_stream_ends() {
        let s = Stats::default();
        s.batches_sent.fetch_add(5, Ordering::Relaxed);
        s.ack(Duration::from_millis(1), 10);
        s.durable(Duration::from_millis(3), 10);
        assert_eq!(s.snapshot().awaiting_durable(), 4);
        s.abandoned(2, 20);
        let snap = s.snapshot();
        assert_eq!(snap.awaiting_durable(), 2);
        assert_eq!(snap.samples_abandoned, 20);
    }
}
