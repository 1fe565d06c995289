//! Per-agent series budgets: how many series one agent may keep active and how
//! fast it may start new ones.
//!
//! A series is active while it was seen within the active window. Samples of a
//! series the agent already has always pass; samples of a *new* series pass while
//! the agent is under its active-series limit and has new-series allowance left (a
//! bucket of `max_new_series_per_minute` that refills over a minute, so a starting
//! agent can describe itself at once but a runaway label cannot mint series
//! forever). Everything else is refused sample by sample and reported back in the
//! batch's acknowledgement, so one agent's explosion costs neither the aggregator's
//! memory nor the other agents' data.
//!
//! Memory: one entry of 16 bytes per active series in a sorted vector (a hash
//! table of the same entries takes twice that and more: 4.4 KiB instead of 1.9 KiB
//! for an agent of 120 series), so at most about 320 KiB per agent at the default
//! limit of 20,000 series; an agent silent for a whole window is forgotten.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::config::IngestConfig;
use crate::samples::SeriesKey;
use crate::sources::agent::decode::DecodedBatch;

/// The limits, from `[ingest]`.
#[derive(Debug, Clone, Copy)]
pub struct SeriesLimits {
    /// Active series per agent.
    pub max_active: usize,
    /// New series per minute per agent (and the size of the burst).
    pub max_new_per_minute: u32,
    /// How long a series stays active without samples.
    pub active_window_ms: i64,
}

impl SeriesLimits {
    /// The limits configured in `ingest`.
    pub fn for_ingest(ingest: &IngestConfig) -> Self {
        Self {
            max_active: ingest.max_active_series_per_agent,
            max_new_per_minute: ingest.max_new_series_per_minute,
            active_window_ms: i64::try_from(ingest.series_active_window_ms).unwrap_or(i64::MAX),
        }
    }
}

/// What a batch lost to the budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Series refused because the agent is at its active-series limit.
    pub series_over_active: usize,
    /// Their samples.
    pub samples_over_active: usize,
    /// Series refused because the agent started too many new series this minute.
    pub series_over_rate: usize,
    /// Their samples.
    pub samples_over_rate: usize,
}

/// Series hashes with the time each was last seen (Unix ms), sorted by hash.
#[derive(Debug, Default)]
struct SeenSeries(Vec<(u64, i64)>);

impl SeenSeries {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// The time `hash` was last seen, among the first `held` entries (the sorted
    /// part while a batch appends new ones).
    fn get_mut(&mut self, held: usize, hash: u64) -> Option<&mut i64> {
        let sorted = &mut self.0[..held];
        let at = sorted.binary_search_by_key(&hash, |&(h, _)| h).ok()?;
        Some(&mut sorted[at].1)
    }

    /// Appends a new series; [`Self::sort`] restores the order.
    fn push(&mut self, hash: u64, seen_ms: i64) {
        self.0.push((hash, seen_ms));
    }

    fn sort(&mut self) {
        self.0.sort_unstable_by_key(|&(h, _)| h);
    }

    fn retain_seen_since(&mut self, horizon: i64) {
        self.0.retain(|&(_, seen)| seen >= horizon);
        if self.0.capacity() > 2 * self.0.len() + 16 {
            self.0.shrink_to_fit();
        }
    }
}

/// The series of one agent.
#[derive(Debug)]
struct AgentSeries {
    seen: SeenSeries,
    /// New series the agent may still start now.
    allowance: f64,
    refilled_at_ms: i64,
    pruned_at_ms: i64,
    last_batch_ms: i64,
}

/// Budgets of every agent, keyed by the agent's stream key.
#[derive(Debug)]
pub struct SeriesBudgets {
    limits: SeriesLimits,
    hasher: RandomState,
    agents: Mutex<HashMap<String, Arc<Mutex<AgentSeries>>>>,
    /// When idle agents were last forgotten.
    swept_at_ms: Mutex<i64>,
}

/// How often an agent's expired series (and idle agents) are looked for.
const PRUNE_EVERY_MS: i64 = 60_000;

impl SeriesBudgets {
    /// Empty budgets with `limits`.
    pub fn new(limits: SeriesLimits) -> Self {
        Self {
            limits,
            hasher: RandomState::new(),
            agents: Mutex::new(HashMap::new()),
            swept_at_ms: Mutex::new(0),
        }
    }

    /// Removes from `batch` the series `agent` may not start now, and says what
    /// was removed.
    pub fn admit(&self, agent: &str, batch: &mut DecodedBatch, now_ms: i64) -> Refusals {
        self.forget_idle_agents(now_ms);
        let entry = {
            let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            agents
                .entry(agent.to_string())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(AgentSeries {
                        seen: SeenSeries::default(),
                        allowance: f64::from(self.limits.max_new_per_minute),
                        refilled_at_ms: now_ms,
                        pruned_at_ms: now_ms,
                        last_batch_ms: now_ms,
                    }))
                })
                .clone()
        };
        let mut series = entry.lock().unwrap_or_else(|p| p.into_inner());
        series.last_batch_ms = now_ms;
        self.refill(&mut series, now_ms);
        self.prune(&mut series, now_ms);

        let mut refused = Refusals::default();
        let held = series.seen.len();
        // Series this batch started (a batch names a series once, but nothing
        // outside this function promises it).
        let mut started: HashSet<u64> = HashSet::new();
        batch.series.retain(|s| {
            let hash = self.hash(&s.key);
            if let Some(seen) = series.seen.get_mut(held, hash) {
                *seen = now_ms;
                return true;
            }
            if started.contains(&hash) {
                return true;
            }
            if series.seen.len() >= self.limits.max_active {
                refused.series_over_active += 1;
                refused.samples_over_active += s.points.len();
                return false;
            }
            if series.allowance < 1.0 {
                refused.series_over_rate += 1;
                refused.samples_over_rate += s.points.len();
                return false;
            }
            series.allowance -= 1.0;
            series.seen.push(hash, now_ms);
            started.insert(hash);
            true
        });
        if !started.is_empty() {
            series.seen.sort();
        }
        batch.sample_count = batch
            .sample_count
            .saturating_sub(refused.samples_over_active + refused.samples_over_rate);
        refused
    }

    /// Active series of `agent` now.
    pub fn active_series(&self, agent: &str) -> usize {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents
            .get(agent)
            .map(|a| a.lock().unwrap_or_else(|p| p.into_inner()).seen.len())
            .unwrap_or(0)
    }

    fn hash(&self, key: &SeriesKey) -> u64 {
        self.hasher
            .hash_one((&key.resource_id, &key.metric, &key.attributes))
    }

    fn refill(&self, series: &mut AgentSeries, now_ms: i64) {
        let elapsed = (now_ms - series.refilled_at_ms).max(0) as f64;
        let per_ms = f64::from(self.limits.max_new_per_minute) / 60_000.0;
        series.allowance =
            (series.allowance + elapsed * per_ms).min(f64::from(self.limits.max_new_per_minute));
        series.refilled_at_ms = now_ms;
    }

    fn prune(&self, series: &mut AgentSeries, now_ms: i64) {
        if now_ms - series.pruned_at_ms < PRUNE_EVERY_MS {
            return;
        }
        series.pruned_at_ms = now_ms;
        let horizon = now_ms.saturating_sub(self.limits.active_window_ms);
        series.seen.retain_seen_since(horizon);
    }

    /// Forgets agents that sent nothing for a whole active window (at most once a
    /// minute), so budgets of agents gone for good do not accumulate.
    fn forget_idle_agents(&self, now_ms: i64) {
        {
            let mut swept = self.swept_at_ms.lock().unwrap_or_else(|p| p.into_inner());
            if now_ms - *swept < PRUNE_EVERY_MS {
                return;
            }
            *swept = now_ms;
        }
        let horizon = now_ms.saturating_sub(self.limits.active_window_ms);
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.retain(|_, a| a.lock().unwrap_or_else(|p| p.into_inner()).last_batch_ms >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::SeriesSamples;

    fn batch(series: std::ops::Range<usize>) -> DecodedBatch {
        let series: Vec<SeriesSamples> = series
            .map(|i| SeriesSamples {
                key: SeriesKey::new("host/a", "m", &format!("i=\"{i}\"")),
                points: vec![(1, 1.0), (2, 2.0)],
            })
            .collect();
        DecodedBatch {
            seq: 1,
            resources: Vec::new(),
            sample_count: series.len() * 2,
            series,
            dropped_non_finite: 0,
            dropped_out_of_range: 0,
            gaps: Vec::new(),
        }
    }

    fn budgets(max_active: usize, max_new_per_minute: u32) -> SeriesBudgets {
        SeriesBudgets::new(SeriesLimits {
            max_active,
            max_new_per_minute,
            active_window_ms: 3_600_000,
        })
    }

    #[test]
    fn known_series_always_pass_and_new_ones_stop_at_the_active_limit() {
        let b = budgets(10, 1000);
        let mut first = batch(0..8);
        assert_eq!(b.admit("a", &mut first, 0), Refusals::default());
        let mut second = batch(0..20);
        let refused = b.admit("a", &mut second, 1000);
        assert_eq!(refused.series_over_active, 10);
        assert_eq!(refused.samples_over_active, 20);
        assert_eq!(second.series.len(), 10);
        assert_eq!(second.sample_count, 20);
        assert_eq!(b.active_series("a"), 10);
        // Another agent has its own budget.
        let mut other = batch(0..10);
        assert_eq!(b.admit("b", &mut other, 1000), Refusals::default());
    }

    #[test]
    fn new_series_are_rate_limited_and_the_allowance_refills_over_a_minute() {
        let b = budgets(100_000, 60);
        let mut burst = batch(0..100);
        let refused = b.admit("a", &mut burst, 0);
        assert_eq!(burst.series.len(), 60);
        assert_eq!(refused.series_over_rate, 40);
        // Half a minute later, 30 more.
        let mut later = batch(0..100);
        let refused = b.admit("a", &mut later, 30_000);
        assert_eq!(later.series.len(), 90);
        assert_eq!(refused.series_over_rate, 10);
    }

    #[test]
    fn a_series_named_twice_in_a_batch_is_started_once() {
        let b = budgets(10, 1000);
        let mut twice = batch(0..3);
        twice.series.push(twice.series[1].clone());
        twice.sample_count += 2;
        assert_eq!(b.admit("a", &mut twice, 0), Refusals::default());
        assert_eq!(twice.series.len(), 4, "both copies pass");
        assert_eq!(b.active_series("a"), 3);
        // And it is known from then on, among series started later.
        let mut next = batch(0..12);
        let refused = b.admit("a", &mut next, 1000);
        assert_eq!(refused.series_over_active, 2);
        assert_eq!(b.active_series("a"), 10);
    }

    #[test]
    fn series_silent_for_the_window_stop_counting() {
        let b = SeriesBudgets::new(SeriesLimits {
            max_active: 10,
            max_new_per_minute: 1000,
            active_window_ms: 120_000,
        });
        let mut old = batch(0..10);
        b.admit("a", &mut old, 0);
        let mut fresh = batch(10..20);
        assert_eq!(b.admit("a", &mut fresh, 60_000).series_over_active, 10);
        let mut fresh = batch(10..20);
        assert_eq!(b.admit("a", &mut fresh, 200_000), Refusals::default());
        assert_eq!(b.active_series("a"), 10);
    }
}
