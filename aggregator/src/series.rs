//! Recent raw samples in memory, per series, for real-time queries and health
//! evaluation. Each series keeps the samples of the last `window_ms` (and at most
//! [`MAX_POINTS_PER_SERIES`]); older data lives only in the stored rollups.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

/// Upper bound of samples kept per series, whatever the window.
pub const MAX_POINTS_PER_SERIES: usize = 4096;

/// Identifies a series: resource, metric, canonical attributes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Resource id.
    pub resource_id: String,
    /// Metric name.
    pub metric: String,
    /// Canonical attributes (`k="v",...`), "" for none.
    pub attributes: String,
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

/// Recent samples of every series.
#[derive(Debug)]
pub struct SeriesStore {
    window_ms: i64,
    /// When this store started receiving samples: nothing older is in memory.
    started_at_ms: i64,
    series: BTreeMap<SeriesKey, VecDeque<(i64, f64)>>,
}

impl SeriesStore {
    /// Keeps `window_ms` of samples per series.
    pub fn new(window_ms: u64) -> Self {
        Self {
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            started_at_ms: infrawatch_common::time::now_unix_ms(),
            series: BTreeMap::new(),
        }
    }

    /// Oldest time the store holds every sample from, given the present: the
    /// window, but never before the store started.
    pub fn horizon(&self, now_ms: i64) -> i64 {
        self.retention_start(now_ms).max(self.started_at_ms)
    }

    fn retention_start(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.window_ms)
    }

    /// Adds a sample, keeping each series in time order, and trims old samples.
    pub fn insert(&mut self, key: &SeriesKey, timestamp_ms: i64, value: f64, now_ms: i64) {
        let horizon = self.retention_start(now_ms);
        if timestamp_ms < horizon {
            return;
        }
        let points = match self.series.get_mut(key) {
            Some(p) => p,
            None => self.series.entry(key.clone()).or_default(),
        };
        match points.back() {
            Some(&(last, _)) if timestamp_ms < last => {
                let at = points.partition_point(|&(t, _)| t <= timestamp_ms);
                points.insert(at, (timestamp_ms, value));
            }
            _ => points.push_back((timestamp_ms, value)),
        }
        while points.front().is_some_and(|&(t, _)| t < horizon)
            || points.len() > MAX_POINTS_PER_SERIES
        {
            points.pop_front();
        }
    }

    /// Drops series whose newest sample is older than the window.
    pub fn evict(&mut self, now_ms: i64) {
        let horizon = self.retention_start(now_ms);
        self.series
            .retain(|_, p| p.back().is_some_and(|&(t, _)| t >= horizon));
    }

    /// Statistics of one series' samples at or after `since_ms`.
    pub fn stats_since(&self, key: &SeriesKey, since_ms: i64) -> Stats {
        let mut s = Stats::default();
        if let Some(points) = self.series.get(key) {
            for &(_, v) in points.iter().rev().take_while(|&&(t, _)| t >= since_ms) {
                s.add(v);
            }
        }
        s
    }

    /// The newest sample of every series of `resource_id`.
    pub fn latest_of(&self, resource_id: &str) -> Vec<(&SeriesKey, i64, f64)> {
        let start = SeriesKey {
            resource_id: resource_id.to_string(),
            metric: String::new(),
            attributes: String::new(),
        };
        self.series
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(|(k, _)| k.resource_id == resource_id)
            .filter_map(|(k, p)| p.back().map(|&(t, v)| (k, t, v)))
            .collect()
    }

    /// Samples of one series in `[from_ms, to_ms]`, summarised per `step_ms`.
    pub fn range(&self, key: &SeriesKey, from_ms: i64, to_ms: i64, step_ms: i64) -> Vec<Point> {
        let Some(points) = self.series.get(key) else {
            return Vec::new();
        };
        let step = step_ms.max(1);
        let start = points.partition_point(|&(t, _)| t < from_ms);
        let mut out: Vec<Point> = Vec::new();
        for &(t, v) in points.range(start..).take_while(|&&(t, _)| t <= to_ms) {
            let bucket = from_ms + (t - from_ms) / step * step;
            match out.last_mut() {
                Some(p) if p.timestamp_ms == bucket => p.stats.add(v),
                _ => {
                    let mut stats = Stats::default();
                    stats.add(v);
                    out.push(Point {
                        timestamp_ms: bucket,
                        stats,
                    });
                }
            }
        }
        out
    }

    /// Number of series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when no series is held.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(r: &str, m: &str) -> SeriesKey {
        SeriesKey {
            resource_id: r.into(),
            metric: m.into(),
            attributes: String::new(),
        }
    }

    #[test]
    fn window_stats_range_and_latest() {
        let mut s = SeriesStore::new(60_000);
        let k = key("host/a", "cpu");
        for i in 0..10 {
            s.insert(&k, 100_000 + i * 1000, i as f64, 110_000);
        }
        s.insert(&key("host/b", "cpu"), 109_000, 5.0, 110_000);
        let st = s.stats_since(&k, 105_000);
        assert_eq!((st.count, st.min, st.max), (5, 5.0, 9.0));
        let pts = s.range(&k, 100_000, 109_000, 5_000);
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].stats.mean(), Some(2.0));
        assert_eq!(pts[1].timestamp_ms, 105_000);
        let latest = s.latest_of("host/a");
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].2, 9.0);
        // Everything ages out.
        s.insert(&k, 200_000, 1.0, 200_000);
        assert_eq!(s.stats_since(&k, 0).count, 1);
        s.evict(200_000);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn out_of_order_samples_are_kept_sorted() {
        let mut s = SeriesStore::new(60_000);
        let k = key("host/a", "cpu");
        s.insert(&k, 3_000, 3.0, 10_000);
        s.insert(&k, 1_000, 1.0, 10_000);
        s.insert(&k, 2_000, 2.0, 10_000);
        let pts = s.range(&k, 0, 10_000, 1_000);
        let ts: Vec<i64> = pts.iter().map(|p| p.timestamp_ms).collect();
        assert_eq!(ts, vec![1_000, 2_000, 3_000]);
    }
}
