//! The sample path: every sample an agent sends lands in memory, never in a
//! database row of its own.
//!
//! - [`series`]: one series: the hot window of raw samples (real-time queries,
//!   health rules) and its unflushed one-minute rollups.
//! - [`series_map`]: a source's series, sorted by key in one vector.
//! - [`ledger`]: one source's series and its positions (applied, durable, state).
//! - [`flush`]: the task that writes every ledger's rollups and cursor in one
//!   transaction at an interval, then lets the streams acknowledge durable.
//! - [`names`]: metric names and attribute strings, kept once for all series.
//! - [`SampleStore`]: every ledger, and which ledger holds a resource's series.
//!
//! State changes (resources, health, events) take their own path, the planner
//! (`crate::planner`), in transactions of their own.

pub mod flush;
pub mod ledger;
pub mod names;
pub mod series;
pub mod series_map;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use self::ledger::{Cursor, Ledger};
use self::series::MinuteRollup;
/// Identifies a series: resource, metric, canonical attributes. The parts are
/// shared strings: a key is three pointers, a copy costs no allocation, the
/// series of one resource share its id and names repeat across series and
/// agents without copies ([`names`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Resource id.
    pub resource_id: Arc<str>,
    /// Metric name.
    pub metric: Arc<str>,
    /// Canonical attributes (`k="v",...`), "" for none.
    pub attributes: Arc<str>,
}

impl SeriesKey {
    /// A key from plain strings (the metric and attributes interned).
    pub fn new(resource_id: &str, metric: &str, attributes: &str) -> Self {
        Self {
            resource_id: Arc::from(resource_id),
            metric: names::intern(metric),
            attributes: names::intern(attributes),
        }
    }
}

/// Count, sum, min and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Number of samples.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Stats {
    /// Adds one value.
    pub fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds the values counted in `other`.
    pub fn merge(&mut self, other: &Stats) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Mean, if any value was added.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// One output point of a range query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Start of the step, Unix ms.
    pub timestamp_ms: i64,
    /// Statistics of the samples in the step.
    pub stats: Stats,
}

/// Samples of one series, in batch order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSamples {
    /// The series.
    pub key: SeriesKey,
    /// (Unix ms, value).
    pub points: Vec<(i64, f64)>,
}

/// Every source's ledger, and an index from resource to the ledger holding its
/// series.
#[derive(Debug)]
pub struct SampleStore {
    window_ms: i64,
    /// When this store started receiving samples: nothing older is in memory.
    started_at_ms: i64,
    ledgers: RwLock<HashMap<String, Arc<Ledger>>>,
    by_resource: RwLock<HashMap<String, Arc<Ledger>>>,
    /// Held by a flush for its whole length, and by a cursor reset, so a flush
    /// that took a ledger before the reset cannot store its older cursor after it.
    flush_gate: tokio::sync::Mutex<()>,
    /// Wakes the flusher before its interval (a draining stream wants its
    /// batches durable now).
    flush_wanted: tokio::sync::Notify,
}

impl SampleStore {
    /// Keeps `window_ms` of raw samples per series.
    pub fn new(window_ms: u64) -> Self {
        Self {
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            started_at_ms: infrawatch_common::time::now_unix_ms(),
            ledgers: RwLock::new(HashMap::new()),
            by_resource: RwLock::new(HashMap::new()),
            flush_gate: tokio::sync::Mutex::new(()),
            flush_wanted: tokio::sync::Notify::new(),
        }
    }

    /// Excludes flushes while held (see the field).
    pub async fn flush_gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.flush_gate.lock().await
    }

    /// Asks the flusher to flush now rather than at its next interval.
    pub fn request_flush(&self) {
        self.flush_wanted.notify_one();
    }

    /// Resolves when a flush was requested.
    pub async fn flush_requested(&self) {
        self.flush_wanted.notified().await;
    }

    /// Oldest time the store holds every raw sample from, given the present: the
    /// window, but never before the store started.
    pub fn horizon(&self, now_ms: i64) -> i64 {
        self.retention_start(now_ms).max(self.started_at_ms)
    }

    /// Where the hot window starts.
    pub fn retention_start(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.window_ms)
    }

    /// The ledger of source `key` for a session just opened at `epoch` (after
    /// `previous_epoch`, with `cursor` stored): this process's ledger reopened,
    /// or a new one.
    pub fn open_ledger(
        &self,
        key: &str,
        cursor: Cursor,
        previous_epoch: u64,
        epoch: u64,
    ) -> Arc<Ledger> {
        if let Some(l) = self.ledger(key) {
            l.reopen(cursor, previous_epoch, epoch);
            return l;
        }
        let mut ledgers = self.ledgers.write().unwrap_or_else(|p| p.into_inner());
        ledgers
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Ledger::new(key, cursor, epoch)))
            .clone()
    }

    /// Forgets the ledger of source `key` (another replica holds the source).
    pub fn forget(&self, key: &str) {
        self.ledgers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The ledger of source `key`, if any.
    pub fn ledger(&self, key: &str) -> Option<Arc<Ledger>> {
        self.ledgers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Every ledger.
    pub fn ledgers(&self) -> Vec<Arc<Ledger>> {
        self.ledgers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Notes that `ledger` holds the series of `resources` (from now on queries
    /// read them there).
    pub fn index(&self, ledger: &Arc<Ledger>, resources: Vec<String>) {
        if resources.is_empty() {
            return;
        }
        let mut index = self.by_resource.write().unwrap_or_else(|p| p.into_inner());
        for r in resources {
            index.insert(r, ledger.clone());
        }
    }

    fn holder(&self, resource_id: &str) -> Option<Arc<Ledger>> {
        self.by_resource
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(resource_id)
            .cloned()
    }

    /// Statistics of one series' raw samples at or after `since_ms`.
    pub fn stats_since(&self, key: &SeriesKey, since_ms: i64) -> Stats {
        self.holder(&key.resource_id)
            .map_or_else(Stats::default, |l| l.stats_since(key, since_ms))
    }

    /// Window statistics since `since_ms` of several series of one resource,
    /// given as (metric, canonical attributes), in that order: one lookup and one
    /// lock for all of them (the health rules of a host).
    pub fn window_stats(
        &self,
        resource_id: &str,
        series: &[(&str, &str)],
        since_ms: i64,
    ) -> Vec<Stats> {
        match self.holder(resource_id) {
            Some(l) => l.window_stats(resource_id, series, since_ms),
            None => vec![Stats::default(); series.len()],
        }
    }

    /// The newest sample of every series of `resource_id`.
    pub fn latest_of(&self, resource_id: &str) -> Vec<(SeriesKey, i64, f64)> {
        self.holder(resource_id)
            .map(|l| l.latest_of(resource_id))
            .unwrap_or_default()
    }

    /// Raw samples of one series in `[from_ms, to_ms]`, summarised per `step_ms`.
    pub fn range(&self, key: &SeriesKey, from_ms: i64, to_ms: i64, step_ms: i64) -> Vec<Point> {
        self.holder(&key.resource_id)
            .map(|l| l.range(key, from_ms, to_ms, step_ms))
            .unwrap_or_default()
    }

    /// Rollups of one series not yet flushed, with buckets in `[from_ms, to_ms]`.
    pub fn open_rollups(&self, key: &SeriesKey, from_ms: i64, to_ms: i64) -> Vec<MinuteRollup> {
        self.holder(&key.resource_id)
            .map(|l| l.open_rollups(key, from_ms, to_ms))
            .unwrap_or_default()
    }

    /// Trims raw samples older than the window; returns the series held.
    pub fn evict(&self, now_ms: i64) -> usize {
        let horizon = self.retention_start(now_ms);
        self.ledgers().iter().map(|l| l.evict(horizon)).sum()
    }
}
