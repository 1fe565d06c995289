//! The flush: at an interval, every ledger's unflushed rollups and its cursor go
//! to the database (an agent's rollups and cursor always in one transaction,
//! agents together in transactions of about 20,000 rows); then each ledger's
//! durable seq moves, and the streams acknowledge their batches as durable.
//!
//! A flush writes increments: a minute written partly by one flush and partly by
//! the next (or by another aggregator after the agent moved) adds up in the
//! stored row. Because a ledger is only taken between two batches and its cursor
//! is the newest batch it applied, a flushed cursor covers exactly the batches
//! whose samples that flush (or an earlier one) wrote: an agent that sends the
//! batches after it again, to this aggregator after a crash or to another one,
//! adds each sample once.
//!
//! A failed flush keeps what it took, unit by unit with its cursor, and the next
//! one writes each unit only if the stored cursor is still below it (a flush that
//! committed although its reply was lost is not written twice); streams
//! keep reading until a source's data waits longer than `ingest.max_unflushed_ms`
//! (then they stop, and agents keep the batches in their disk buffers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::SampleStore;
use super::ledger::{Ledger, Taken};
use crate::store::{FlushSource, RollupDelta, Store, StoreError};
use crate::telemetry;

/// The flush task.
pub struct Flusher {
    samples: Arc<SampleStore>,
    store: Store,
    interval: Duration,
}

/// Rollup rows per flush transaction, about: a flush of many agents is cut into
/// transactions of whole agents up to this size, so the database's work (and
/// the CPU it takes from the streams on a small machine) comes in steps rather
/// than in one burst, and no transaction grows without bound. The rows of one
/// part are in memory twice while it is written (as rows, and as the
/// statement's parameters), so this also bounds the flush's extra memory.
const ROWS_PER_TRANSACTION: usize = 5_000;

/// The first retry after a failed flush (later ones double, up to the interval).
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// A part of one flush, written in one transaction: the units of some ledgers,
/// the same as flush sources, and how many rollup rows they hold.
struct Part {
    taken: Vec<(Arc<Ledger>, Vec<Taken>)>,
    sources: Vec<FlushSource>,
    rollups: usize,
}

/// What one successful flush wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Sources whose cursor moved or whose rollups were written.
    pub sources: usize,
    /// Rollup rows.
    pub rollups: usize,
}

impl Flusher {
    /// Flushes `samples` to `store` every `interval`.
    pub fn new(samples: Arc<SampleStore>, store: Store, interval: Duration) -> Self {
        Self {
            samples,
            store,
            interval,
        }
    }

    /// Flushes every interval until `stop`, then once more, so that a graceful
    /// stop leaves nothing unflushed.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // After a failure the flush is tried again sooner than the interval
        // (from half a second, doubling up to it), so that a short database
        // hiccup does not hold every agent's acknowledgements for a whole
        // interval.
        let mut retry: Option<Duration> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.samples.flush_requested() => {}
                _ = tokio::time::sleep(retry.unwrap_or(Duration::MAX)), if retry.is_some() => {}
            }
            match self.flush_once().await {
                Ok(_) => {
                    if retry.take().is_some() {
                        tracing::info!("Sample flush succeeded again.");
                    }
                }
                Err(e) => {
                    let next = retry.map_or(FIRST_RETRY, |r| r * 2).min(self.interval);
                    if retry.is_none() {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            retry_in_ms = next.as_millis() as u64,
                            "Sample flush failed; retrying while agents keep their batches."
                        );
                    }
                    retry = Some(next);
                }
            }
            let now = infrawatch_common::time::now_unix_ms();
            let series = self.samples.evict(now);
            metrics::gauge!(telemetry::HOT_SERIES).set(series as f64);
            super::names::forget_unused();
        }
        match self.flush_once().await {
            Ok(f) => tracing::info!(
                sources = f.sources,
                rollups = f.rollups,
                "Final sample flush done."
            ),
            Err(e) => tracing::warn!(
                error = &e as &dyn std::error::Error,
                "Final sample flush failed; agents send the batches again."
            ),
        }
    }

    /// Takes the unflushed data of the next ledgers of `ledgers`, as flush
    /// sources, until the part holds about [`ROWS_PER_TRANSACTION`] rows or the
    /// ledgers run out; `None` when no ledger is left with anything to write.
    /// `oldest` grows to the longest time a ledger went unflushed.
    fn take_part(
        ledgers: &mut std::vec::IntoIter<Arc<Ledger>>,
        oldest: &mut Duration,
    ) -> Option<Part> {
        let mut part = Part {
            taken: Vec::new(),
            sources: Vec::new(),
            rollups: 0,
        };
        while part.rollups < ROWS_PER_TRANSACTION {
            let Some(ledger) = ledgers.next() else { break };
            *oldest = (*oldest).max(ledger.since_flush());
            let units = ledger.take();
            if units.is_empty() {
                continue;
            }
            for t in &units {
                let mut source = FlushSource {
                    key: ledger.key().to_string(),
                    epoch: t.epoch,
                    seq: t.seq,
                    rollups: Vec::new(),
                };
                for (key, minutes) in &t.rollups {
                    for r in minutes {
                        source.rollups.push(RollupDelta {
                            key: key.clone(),
                            bucket_start_ms: r.bucket_start_ms,
                            stats: r.stats,
                            last: r.last,
                        });
                    }
                }
                part.rollups += source.rollups.len();
                part.sources.push(source);
            }
            part.taken.push((ledger, units));
        }
        (!part.taken.is_empty()).then_some(part)
    }

    /// Writes every ledger's unflushed data, one transaction per part. A part is
    /// taken only when the one before it is written, so a flush holds one part's
    /// copy of the data at a time, not the whole fleet's (at 10,000 agents of 120
    /// series that was about 270 MB at every flush). When a part fails, its units
    /// go back to their ledgers and the ledgers after it are left for the next
    /// flush.
    pub async fn flush_once(&self) -> Result<Flushed, StoreError> {
        let _gate = self.samples.flush_gate().await;
        let started = Instant::now();
        let mut ledgers = self.samples.ledgers().into_iter();
        let mut oldest = Duration::ZERO;
        let mut outcome = Flushed::default();
        let mut failure = None;
        let mut parts = 0usize;
        while let Some(part) = crate::cpu_bound(|| Self::take_part(&mut ledgers, &mut oldest)) {
            parts += 1;
            match self.store.flush(&part.sources).await {
                Ok(fenced) => {
                    let fenced: std::collections::HashSet<String> = fenced.into_iter().collect();
                    outcome.sources += part.taken.len() - fenced.len();
                    outcome.rollups += part.rollups;
                    for (ledger, units) in part.taken {
                        if fenced.contains(ledger.key()) {
                            tracing::info!(
                                agent = ledger.key(),
                                "Another stream holds this agent now; its unflushed samples here are dropped (it sends them there)."
                            );
                            ledger.fence();
                            self.samples.forget(ledger.key());
                            metrics::counter!(telemetry::FLUSH_FENCED).increment(1);
                        } else if let Some(seq) = units.iter().map(|u| u.seq).max() {
                            ledger.flushed(seq);
                        }
                    }
                }
                Err(e) => {
                    for (ledger, units) in part.taken {
                        ledger.flush_failed(units);
                    }
                    failure = Some(e);
                    break;
                }
            }
        }
        // Ledgers not reached (after a failed part) count for the age too.
        for ledger in ledgers {
            oldest = oldest.max(ledger.since_flush());
        }
        metrics::gauge!(telemetry::FLUSH_AGE).set(oldest.as_secs_f64());
        if parts == 0 {
            return Ok(outcome);
        }
        if let Some(e) = failure {
            metrics::counter!(telemetry::FLUSHES, "result" => "failed").increment(1);
            return Err(e);
        }
        metrics::counter!(telemetry::FLUSHES, "result" => "ok").increment(1);
        metrics::counter!(telemetry::STORE_ROWS, "table" => "rollups")
            .increment(outcome.rollups as u64);
        metrics::counter!(telemetry::STORE_ROWS, "table" => "cursors")
            .increment(outcome.sources as u64);
        metrics::histogram!(telemetry::FLUSH_DURATION).record(started.elapsed().as_secs_f64());
        Ok(outcome)
    }
}
