//! A log-linear latency histogram in microseconds, in the manner of HdrHistogram:
//! values below 128 µs are exact, larger ones fall in one of 128 buckets per power
//! of two, so every reported percentile is within 0.8 % of the true value. It is a
//! plain array of counts, so two snapshots subtract into the histogram of the
//! interval between them (how the stages and the periodic reports are made).

use std::time::Duration;

/// Bits of sub-bucket resolution: 2^7 = 128 buckets per power of two.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Largest power of two kept apart; larger values land in the last bucket
/// (2^40 µs is about 12 days).
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

/// Counts of latencies, microsecond resolution.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max_us", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

/// Bucket of `v` microseconds.
fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = (63 - v.leading_zeros()).min(MAX_EXP);
    let v = v.min((1u64 << (MAX_EXP + 1)) - 1);
    // The SUB_BITS bits after the leading one.
    let mantissa = (v >> (exp - SUB_BITS)) - SUB;
    (SUB + u64::from(exp - SUB_BITS) * SUB + mantissa) as usize
}

/// Lowest value and width of bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, 1);
    }
    let exp = (i - SUB) / SUB + u64::from(SUB_BITS);
    let mantissa = (i - SUB) % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    ((SUB + mantissa) * width, width)
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one value in microseconds.
    pub fn record_us(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded, µs (not reduced by [`Histogram::since`]).
    pub fn max_us(&self) -> u64 {
        self.max
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// What was recorded after `earlier`, a copy of this histogram taken before.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .zip(&earlier.counts)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let total = counts.iter().sum();
        let max = counts.iter().rposition(|c| *c > 0).map_or(0, |i| {
            let (low, width) = bounds(i);
            (low + width - 1).min(self.max)
        });
        Histogram { counts, total, max }
    }

    /// The value at quantile `q` (0..=1) in microseconds: the middle of the bucket
    /// holding the value of rank ⌈q·n⌉; `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bounds(i);
                let mid = low as f64 + (width as f64 - 1.0) / 2.0;
                // Never report more than the largest value seen.
                return Some(mid.min(self.max as f64));
            }
        }
        Some(self.max as f64)
    }

    /// The value at quantile `q` in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.quantile_us(q).map(|us| us / 1000.0)
    }
}

/// Quantile `q` of a Prometheus histogram given as its cumulative buckets
/// `(le, count)` (`+Inf` as infinity), interpolating linearly inside the
/// bucket, as PromQL's `histogram_quantile` does; `None` without samples.
pub fn bucket_quantile(mut buckets: Vec<(f64, f64)>, q: f64) -> Option<f64> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let share = if count > below {
                (rank - below) / (count - below)
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        lower = le;
        below = count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_once_and_in_order() {
        let mut last = 0usize;
        for v in (0..5_000u64).chain([1 << 20, (1 << 20) + 1, 1 << 39, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            assert!(i >= last, "indexes must not go back");
            last = i;
            let (low, width) = bounds(i);
            if v < 1 << (MAX_EXP + 1) {
                assert!(
                    low <= v && v < low + width,
                    "{v} not in bucket {i} ({low}+{width})"
                );
            }
        }
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = Histogram::default();
        for us in 1..=100_000u64 {
            h.record_us(us);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile_us(q).unwrap();
            assert!(
                (got - want).abs() / want < 0.008,
                "p{q}: {got} against {want}"
            );
        }
        assert_eq!(h.quantile_us(1.0), Some(100_000.0));
        assert_eq!(h.quantile_us(0.0), Some(1.0));
    }

    #[test]
    fn small_values_are_exact_and_empty_has_no_percentile() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for us in [3, 3, 3, 7] {
            h.record_us(us);
        }
        assert_eq!(h.quantile_us(0.5), Some(3.0));
        assert_eq!(h.quantile_us(0.99), Some(7.0));
        assert_eq!(h.quantile_ms(0.99), Some(0.007));
    }

    #[test]
    fn an_interval_is_the_difference_of_two_snapshots() {
        let mut h = Histogram::default();
        for _ in 0..1000 {
            h.record(Duration::from_millis(1));
        }
        let before = h.clone();
        for _ in 0..10 {
            h.record(Duration::from_millis(50));
        }
        let interval = h.since(&before);
        assert_eq!(interval.count(), 10);
        let p50 = interval.quantile_ms(0.5).unwrap();
        assert!((p50 - 50.0).abs() < 0.5, "{p50}");
        let mut merged = before.clone();
        merged.merge(&interval);
        assert_eq!(merged.count(), h.count());
    }
}
