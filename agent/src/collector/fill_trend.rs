//! When a filesystem will be full: each mount's free bytes, one point a
//! minute over the last six hours (the node-exporter mixin's window; see
//! [`TrendConfig`]), and the least-squares line through them. Kept in memory
//! (a restart starts the window again); about 6 KiB per mount.

use std::collections::{HashMap, VecDeque};

use infrawatch_common::trend::slope;

/// How the trend is fitted (`[collectors.filesystem_trend]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrendConfig {
    /// The window the line is fitted over.
    pub window_ms: u64,
    /// One point per this long.
    pub point_ms: u64,
    /// The points must span at least this long before a time to full is told.
    pub min_span_ms: u64,
}

impl Default for TrendConfig {
    fn default() -> Self {
        Self {
            window_ms: 6 * 3_600_000,
            point_ms: 60_000,
            min_span_ms: 10 * 60_000,
        }
    }
}

/// Free bytes of each mount over the window.
#[derive(Debug, Default)]
pub struct FillTrends {
    config: TrendConfig,
    by_mount: HashMap<String, VecDeque<(i64, f64)>>,
}

impl FillTrends {
    /// Trends fitted as `config` says.
    pub fn new(config: TrendConfig) -> Self {
        Self {
            config,
            by_mount: HashMap::new(),
        }
    }

    /// Notes that `mount` had `free` bytes at `at_ms` (at most one point a
    /// minute is kept), and returns the seconds until it is full at the trend
    /// of the window, if it is filling and the points span long enough.
    pub fn observe(&mut self, mount: &str, at_ms: i64, free: f64) -> Option<f64> {
        let points = self.by_mount.entry(mount.to_string()).or_default();
        if points
            .back()
            .is_none_or(|(t, _)| at_ms - t >= ms(self.config.point_ms))
        {
            points.push_back((at_ms, free));
        }
        while points
            .front()
            .is_some_and(|(t, _)| at_ms - t > ms(self.config.window_ms))
        {
            points.pop_front();
        }
        let span = match (points.front(), points.back()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => 0,
        };
        if span < ms(self.config.min_span_ms) {
            return None;
        }
        let xy: Vec<(f64, f64)> = points
            .iter()
            .map(|(t, v)| ((t - at_ms) as f64, *v))
            .collect();
        let slope_per_ms = slope(&xy)?;
        (slope_per_ms < 0.0).then(|| free.max(0.0) / -slope_per_ms / 1000.0)
    }

    /// Forgets mounts not in `present`.
    pub fn retain(&mut self, present: &std::collections::HashSet<&str>) {
        self.by_mount.retain(|m, _| present.contains(m.as_str()));
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steadily_filling_mount_tells_its_time_to_full() {
        let mut t = FillTrends::default();
        // 100 GB free, losing 1 GB a minute: after 20 minutes 80 GB are left,
        // full in 80 minutes.
        let mut last = None;
        for minute in 0..=20 {
            let free = 100e9 - minute as f64 * 1e9;
            last = t.observe("/", minute * 60_000, free);
        }
        let full_in = last.unwrap();
        assert!((full_in - 80.0 * 60.0).abs() < 1.0, "{full_in}");
    }

    #[test]
    fn nothing_is_told_too_early_or_when_not_filling() {
        let mut t = FillTrends::default();
        for minute in 0..5 {
            assert_eq!(t.observe("/", minute * 60_000, 100.0 - minute as f64), None);
        }
        let mut steady = FillTrends::default();
        for minute in 0..=30 {
            let told = steady.observe("/", minute * 60_000, 50.0 + (minute % 2) as f64);
            assert!(told.is_none_or(|s| s > 1e6), "{told:?}");
        }
        let mut draining = FillTrends::default();
        let mut last = None;
        for minute in 0..=30 {
            last = draining.observe("/", minute * 60_000, 50.0 + minute as f64);
        }
        assert_eq!(last, None, "freeing space is not filling");
    }

    #[test]
    fn points_are_one_a_minute_over_six_hours_and_gone_mounts_are_forgotten() {
        let mut t = FillTrends::default();
        for second in 0..(7 * 3600) {
            t.observe("/", second * 1000, 1.0);
        }
        let kept = t.by_mount["/"].len();
        assert!((360..=361).contains(&kept), "{kept}");
        t.retain(&std::collections::HashSet::new());
        assert!(t.by_mount.is_empty());
    }
}
