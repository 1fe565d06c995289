//! One series in memory: its recent raw samples (the hot window, for real-time
//! queries and health rules) and the one-minute rollups not yet flushed to the
//! database.

use std::collections::VecDeque;

use smallvec::SmallVec;

use super::{Point, Stats};

/// Width of a rollup bucket.
pub const ROLLUP_BUCKET_MS: i64 = 60_000;

/// Upper bound of raw samples kept per series, whatever the window.
pub const MAX_POINTS_PER_SERIES: usize = 4096;

/// Statistics of one series over one minute, as far as this process received
/// them since the last flush. Flushes add these to the stored row of the same
/// minute, so several partial rollups of a minute sum up to the whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinuteRollup {
    /// Start of the minute (Unix ms).
    pub bucket_start_ms: i64,
    /// Count, sum, min and max.
    pub stats: Stats,
    /// The newest sample: (Unix ms, value).
    pub last: (i64, f64),
}

impl MinuteRollup {
    fn new(bucket_start_ms: i64) -> Self {
        Self {
            bucket_start_ms,
            stats: Stats::default(),
            last: (i64::MIN, 0.0),
        }
    }

    fn add(&mut self, ts: i64, value: f64) {
        self.stats.add(value);
        if ts >= self.last.0 {
            self.last = (ts, value);
        }
    }

    /// Adds what `other` (same minute) counted.
    pub fn merge(&mut self, other: &MinuteRollup) {
        self.stats.merge(&other.stats);
        if other.last.0 >= self.last.0 {
            self.last = other.last;
        }
    }
}

/// The start of the rollup bucket `ts` falls in.
pub fn bucket_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(ROLLUP_BUCKET_MS)
}

/// Unflushed minutes of a series, oldest first. Between flushes (at most a
/// minute apart) that is one minute, two around a minute's end: the first is held
/// inline, which saves every series a heap allocation (about 24 bytes a series
/// in all, 3 KiB an agent).
pub type OpenRollups = SmallVec<[MinuteRollup; 1]>;

/// Raw samples in time order and unflushed rollups of one series.
#[derive(Debug, Default)]
pub struct SeriesState {
    points: VecDeque<(i64, f64)>,
    open: OpenRollups,
}

impl SeriesState {
    /// Adds a sample: to the hot window unless it is older than `horizon`, and
    /// always to its minute's rollup.
    pub fn add(&mut self, ts: i64, value: f64, horizon: i64) {
        let bucket = bucket_of(ts);
        match self
            .open
            .iter_mut()
            .rev()
            .find(|r| r.bucket_start_ms == bucket)
        {
            Some(r) => r.add(ts, value),
            None => {
                let mut r = MinuteRollup::new(bucket);
                r.add(ts, value);
                let at = self.open.partition_point(|o| o.bucket_start_ms < bucket);
                // Past the inline one, grow one at a time (a Vec would take room
                // for four).
                self.open.reserve_exact(1);
                self.open.insert(at, r);
            }
        }
        if ts < horizon {
            return;
        }
        if self.points.is_empty() {
            // The first sample: room for a few, not VecDeque's default.
            self.points.reserve_exact(2);
        }
        match self.points.back() {
            Some(&(last, _)) if ts < last => {
                let at = self.points.partition_point(|&(t, _)| t <= ts);
                self.points.insert(at, (ts, value));
            }
            _ => self.points.push_back((ts, value)),
        }
        self.trim(horizon);
    }

    /// Drops raw samples older than `horizon` (and beyond the per-series cap).
    pub fn trim(&mut self, horizon: i64) {
        while self.points.front().is_some_and(|&(t, _)| t < horizon)
            || self.points.len() > MAX_POINTS_PER_SERIES
        {
            self.points.pop_front();
        }
    }

    /// True when the series holds nothing: no raw sample, no unflushed rollup.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.open.is_empty()
    }

    /// Takes the unflushed rollups (for a flush).
    pub fn take_open(&mut self) -> OpenRollups {
        std::mem::take(&mut self.open)
    }

    /// Puts back rollups a failed flush took, merging them with what arrived
    /// since.
    pub fn restore_open(&mut self, taken: OpenRollups) {
        for r in taken {
            match self
                .open
                .iter_mut()
                .find(|o| o.bucket_start_ms == r.bucket_start_ms)
            {
                Some(o) => o.merge(&r),
                None => {
                    let at = self
                        .open
                        .partition_point(|o| o.bucket_start_ms < r.bucket_start_ms);
                    self.open.insert(at, r);
                }
            }
        }
    }

    /// Unflushed rollups with buckets in `[from_ms, to_ms]`.
    pub fn open_between(&self, from_ms: i64, to_ms: i64) -> impl Iterator<Item = &MinuteRollup> {
        self.open
            .iter()
            .filter(move |r| r.bucket_start_ms >= from_ms && r.bucket_start_ms <= to_ms)
    }

    /// Statistics of the raw samples at or after `since_ms`.
    pub fn stats_since(&self, since_ms: i64) -> Stats {
        let mut s = Stats::default();
        for &(_, v) in self
            .points
            .iter()
            .rev()
            .take_while(|&&(t, _)| t >= since_ms)
        {
            s.add(v);
        }
        s
    }

    /// The newest raw sample.
    pub fn latest(&self) -> Option<(i64, f64)> {
        self.points.back().copied()
    }

    /// Raw samples in `[from_ms, to_ms]`, summarised per `step_ms` from `from_ms`.
    pub fn range(&self, from_ms: i64, to_ms: i64, step_ms: i64) -> Vec<Point> {
        let step = step_ms.max(1);
        let start = self.points.partition_point(|&(t, _)| t < from_ms);
        let mut out: Vec<Point> = Vec::new();
        for &(t, v) in self.points.range(start..).take_while(|&&(t, _)| t <= to_ms) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_go_to_the_window_and_to_their_minute() {
        let mut s = SeriesState::default();
        for i in 0..10 {
            s.add(100_000 + i * 10_000, i as f64, 0);
        }
        let open = s.take_open();
        let buckets: Vec<(i64, u64)> = open
            .iter()
            .map(|r| (r.bucket_start_ms, r.stats.count))
            .collect();
        assert_eq!(buckets, vec![(60_000, 2), (120_000, 6), (180_000, 2)]);
        assert_eq!(open[1].last, (170_000, 7.0));
        assert_eq!(s.stats_since(150_000).count, 5);
        assert_eq!(s.latest(), Some((190_000, 9.0)));
        let pts = s.range(100_000, 190_000, 50_000);
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].stats.mean(), Some(2.0));
        assert!(!s.is_empty());
        s.trim(200_000);
        assert!(s.is_empty());
    }

    #[test]
    fn old_samples_skip_the_window_but_not_the_rollup() {
        let mut s = SeriesState::default();
        s.add(1_000, 1.0, 50_000);
        assert_eq!(s.latest(), None);
        assert_eq!(s.take_open()[0].stats.count, 1);
    }

    #[test]
    fn out_of_order_samples_are_kept_sorted() {
        let mut s = SeriesState::default();
        s.add(3_000, 3.0, 0);
        s.add(1_000, 1.0, 0);
        s.add(2_000, 2.0, 0);
        let ts: Vec<i64> = s
            .range(0, 10_000, 1_000)
            .iter()
            .map(|p| p.timestamp_ms)
            .collect();
        assert_eq!(ts, vec![1_000, 2_000, 3_000]);
        // The newest by time is the minute's last value, whatever the order.
        assert_eq!(s.take_open()[0].last, (3_000, 3.0));
    }

    #[test]
    fn a_failed_flush_puts_its_rollups_back() {
        let mut s = SeriesState::default();
        s.add(1_000, 1.0, 0);
        s.add(61_000, 2.0, 0);
        let taken = s.take_open();
        s.add(2_000, 5.0, 0);
        s.restore_open(taken);
        let open = s.take_open();
        assert_eq!(open.len(), 2);
        assert_eq!((open[0].stats.count, open[0].stats.sum), (2, 6.0));
        assert_eq!(open[0].last, (2_000, 5.0));
        assert_eq!(open[1].stats.count, 1);
    }
}
