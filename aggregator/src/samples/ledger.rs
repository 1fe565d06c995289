//! What this aggregator holds of one source of samples (an agent, by its cursor
//! key) that the database may not have yet: the source's series with their
//! unflushed rollups, and where the source stands in its own sequence of
//! batches.
//!
//! Three positions, each never above the one before:
//!
//! - `applied_seq`: the newest batch whose samples are in memory (or durable);
//!   a batch at or below it is a replay.
//! - `durable_seq`: the newest batch whose samples and cursor are committed by a
//!   flush; acknowledged to the agent as durable.
//! - `state_seq`: the newest batch whose state changes are committed (a replay at
//!   or below it changes no state again).
//!
//! A batch is applied in two steps: [`Ledger::begin`] adds its samples, the state
//! path commits its changes, then [`Ledger::finish`] ends it. A flush never takes a
//! ledger with a batch between the two, so a flushed cursor never covers a batch
//! whose state changes are not committed, and samples it flushed are always
//! those of batches at or below that cursor (replays after a crash are exact).
//!
//! What a flush took stays one unit with its cursor: when the flush fails, the
//! unit waits (apart from what arrives later) for the next flush, which writes
//! it only if the stored cursor is still below the unit's. A flush that
//! committed although its reply was lost is so never written twice.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::series::{MinuteRollup, OpenRollups};
use super::series_map::SeriesMap;
use super::{Point, SeriesKey, SeriesSamples, Stats};

/// The stored position of a source (one row of `agent_cursors`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Newest batch whose samples are durable.
    pub durable_seq: u64,
    /// Newest batch whose state changes are committed.
    pub state_seq: u64,
}

/// What [`Ledger::begin`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begun {
    /// Applied; [`Ledger::finish`] must follow.
    Applied {
        /// Whether the state path must consider the batch's resources (false
        /// when a replay's state changes were committed before).
        state_due: bool,
    },
    /// Applied before: nothing was done.
    Replay,
}

/// Rollups and position taken from a ledger by a flush.
#[derive(Debug)]
pub struct Taken {
    /// The session epoch the ledger holds: the flush writes only while the
    /// database still has it.
    pub epoch: u64,
    /// The cursor the flush stores: every batch up to it is in `rollups` or
    /// was flushed before.
    pub seq: u64,
    /// Unflushed rollups of every series.
    pub rollups: Vec<(SeriesKey, OpenRollups)>,
}

/// One source's samples and positions.
#[derive(Debug)]
pub struct Ledger {
    key: String,
    inner: Mutex<Inner>,
    /// The newest durable seq, for the streams of this source to acknowledge.
    durable: watch::Sender<u64>,
    /// The stream allowed to apply this source's batches; a new stream cancels
    /// the previous one, so two never interleave.
    session: Mutex<CancellationToken>,
}

#[derive(Debug)]
struct Inner {
    /// The session epoch this replica opened the source's session with.
    epoch: u64,
    applied_seq: u64,
    durable_seq: u64,
    state_seq: u64,
    /// A batch is between `begin` and `finish`.
    in_progress: bool,
    series: SeriesMap,
    /// What failed flushes took, oldest first, each with its cursor.
    pending: Vec<Taken>,
    /// When rollups were last flushed (or the ledger was opened).
    flushed_at: Instant,
}

impl Ledger {
    /// A ledger for source `key` at its stored `cursor`, in session `epoch`.
    pub fn new(key: &str, cursor: Cursor, epoch: u64) -> Self {
        Self {
            key: key.to_string(),
            inner: Mutex::new(Inner {
                epoch,
                applied_seq: cursor.durable_seq,
                durable_seq: cursor.durable_seq,
                state_seq: cursor.state_seq.max(cursor.durable_seq),
                in_progress: false,
                series: SeriesMap::default(),
                pending: Vec::new(),
                flushed_at: Instant::now(),
            }),
            durable: watch::channel(cursor.durable_seq).0,
            session: Mutex::new(CancellationToken::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Updates under this lock are plain field and map writes; a panic halfway
        // leaves at worst a partial batch that its replay completes.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The source's cursor key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Makes a new stream the one that applies this source's batches: the
    /// previous stream's token is cancelled. Returns the new stream's token.
    pub fn take_over(&self) -> CancellationToken {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        session.cancel();
        *session = CancellationToken::new();
        session.clone()
    }

    /// A new session of this source opened here at `epoch`, after
    /// `previous_epoch` in the database, which holds `cursor`. When the previous
    /// session was this ledger's, what it holds is still the source's and stays;
    /// when another replica held the source in between, what this ledger holds
    /// is stale: dropped, and the positions go to the stored ones.
    pub fn reopen(&self, cursor: Cursor, previous_epoch: u64, epoch: u64) {
        let mut inner = self.lock();
        if inner.epoch != previous_epoch {
            drop_unflushed(&mut inner);
            inner.applied_seq = cursor.durable_seq;
            inner.durable_seq = cursor.durable_seq;
            inner.state_seq = cursor.state_seq.max(cursor.durable_seq);
            self.durable.send_replace(cursor.durable_seq);
        }
        inner.epoch = epoch;
        // Units a failed flush left are this ledger's too: they go out under
        // the new session.
        for unit in &mut inner.pending {
            unit.epoch = epoch;
        }
    }

    /// Another replica holds the source now (a flush found its epoch moved):
    /// this ledger's stream ends and what it holds unflushed is dropped (the
    /// source sends it to whoever holds it now).
    pub fn fence(&self) {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
        let mut inner = self.lock();
        drop_unflushed(&mut inner);
        inner.applied_seq = inner.durable_seq;
    }

    /// The session epoch this ledger writes under.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The source restarted its sequence below what was applied (it lost its
    /// state): positions go back to `seq`. Unflushed rollups stay; they belong to
    /// batches applied before and are flushed with the lower cursor, which is
    /// what the database now says too.
    pub fn reset(&self, seq: u64) {
        let mut inner = self.lock();
        inner.applied_seq = seq;
        inner.durable_seq = seq;
        inner.state_seq = seq;
        self.durable.send_replace(seq);
    }

    /// Positions: (applied, durable, state).
    pub fn positions(&self) -> (u64, u64, u64) {
        let inner = self.lock();
        (inner.applied_seq, inner.durable_seq, inner.state_seq)
    }

    /// Follows the durable seq.
    pub fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Applies the samples of batch `seq` unless it was applied before; samples
    /// older than `horizon` go to the rollups only. Returns the resources whose
    /// series were new to this ledger.
    pub fn begin(&self, seq: u64, series: &[SeriesSamples], horizon: i64) -> (Begun, Vec<String>) {
        let mut inner = self.lock();
        if seq <= inner.applied_seq {
            return (Begun::Replay, Vec::new());
        }
        let added = inner.series.apply_each(
            series.len(),
            |i| &series[i].key,
            |i, state| {
                for &(ts, v) in &series[i].points {
                    state.add(ts, v, horizon);
                }
            },
        );
        let mut new_resources: Vec<String> = Vec::new();
        for i in added {
            let resource = &*series[i].key.resource_id;
            if new_resources.last().map(String::as_str) != Some(resource) {
                new_resources.push(resource.to_string());
            }
        }
        inner.applied_seq = seq;
        inner.in_progress = true;
        let state_due = seq > inner.state_seq;
        new_resources.dedup();
        (Begun::Applied { state_due }, new_resources)
    }

    /// Ends the batch [`Ledger::begin`] applied: its state changes are committed
    /// (`committed`), or failed and the source will send it again. A failed
    /// batch's samples cannot be taken out of the rollups, so everything not yet
    /// durable is dropped and the source resends it from its durable position
    /// (its disk buffer holds it).
    pub fn finish(&self, seq: u64, committed: bool) {
        let mut inner = self.lock();
        inner.in_progress = false;
        if committed {
            inner.state_seq = inner.state_seq.max(seq);
            return;
        }
        inner.applied_seq = inner.durable_seq;
        drop_unflushed(&mut inner);
    }

    /// Takes what a flush must write, oldest first: units a failed flush left,
    /// then what arrived since. Empty when there is nothing new or a batch is
    /// between `begin` and `finish` (the next flush takes it).
    pub fn take(&self) -> Vec<Taken> {
        let mut inner = self.lock();
        if inner.in_progress {
            return Vec::new();
        }
        let mut units = std::mem::take(&mut inner.pending);
        let mut rollups = Vec::new();
        for (key, state) in inner.series.iter_mut() {
            let open = state.take_open();
            if !open.is_empty() {
                rollups.push((key, open));
            }
        }
        let newest = units.last().map_or(inner.durable_seq, |u| u.seq);
        if !rollups.is_empty() || inner.applied_seq > newest {
            units.push(Taken {
                epoch: inner.epoch,
                seq: inner.applied_seq,
                rollups,
            });
        }
        units
    }

    /// The flush of `taken` committed.
    pub fn flushed(&self, seq: u64) {
        let mut inner = self.lock();
        inner.durable_seq = inner.durable_seq.max(seq);
        inner.flushed_at = Instant::now();
        let durable = inner.durable_seq;
        drop(inner);
        self.durable.send_if_modified(|d| {
            let changed = *d != durable;
            *d = durable;
            changed
        });
    }

    /// The flush of `units` failed: they wait, as they are, for the next one.
    pub fn flush_failed(&self, units: Vec<Taken>) {
        let mut inner = self.lock();
        let newer = std::mem::take(&mut inner.pending);
        inner.pending = units;
        inner.pending.extend(newer);
    }

    /// How long ago rollups of this source were last flushed.
    pub fn since_flush(&self) -> std::time::Duration {
        self.lock().flushed_at.elapsed()
    }

    /// Trims raw samples older than `horizon` and forgets empty series.
    pub fn evict(&self, horizon: i64) -> usize {
        let mut inner = self.lock();
        inner.series.retain(|s| {
            s.trim(horizon);
            !s.is_empty()
        });
        inner.series.len()
    }

    /// Window statistics of `key` since `since_ms`.
    pub fn stats_since(&self, key: &SeriesKey, since_ms: i64) -> Stats {
        self.lock()
            .series
            .get(key)
            .map_or_else(Stats::default, |s| s.stats_since(since_ms))
    }

    /// Window statistics of several series of `resource_id` (see
    /// [`super::SampleStore::window_stats`]).
    pub fn window_stats(
        &self,
        resource_id: &str,
        series: &[(&str, &str)],
        since_ms: i64,
    ) -> Vec<Stats> {
        let resource: std::sync::Arc<str> = std::sync::Arc::from(resource_id);
        // Every key held is interned: a name the table lacks has no series.
        let keys: Vec<Option<SeriesKey>> = series
            .iter()
            .map(|(metric, attributes)| {
                Some(SeriesKey {
                    resource_id: resource.clone(),
                    metric: super::names::get(metric)?,
                    attributes: super::names::get(attributes)?,
                })
            })
            .collect();
        let inner = self.lock();
        keys.iter()
            .map(|key| {
                key.as_ref()
                    .and_then(|k| inner.series.get(k))
                    .map_or_else(Stats::default, |s| s.stats_since(since_ms))
            })
            .collect()
    }

    /// The newest sample of every series of `resource_id`.
    pub fn latest_of(&self, resource_id: &str) -> Vec<(SeriesKey, i64, f64)> {
        let inner = self.lock();
        inner
            .series
            .of_resource(resource_id)
            .filter_map(|(k, s)| s.latest().map(|(t, v)| (k, t, v)))
            .collect()
    }

    /// Raw samples of `key` in `[from_ms, to_ms]` per `step_ms`.
    pub fn range(&self, key: &SeriesKey, from_ms: i64, to_ms: i64, step_ms: i64) -> Vec<Point> {
        self.lock()
            .series
            .get(key)
            .map(|s| s.range(from_ms, to_ms, step_ms))
            .unwrap_or_default()
    }

    /// Unflushed rollups of `key` with buckets in `[from_ms, to_ms]`.
    pub fn open_rollups(&self, key: &SeriesKey, from_ms: i64, to_ms: i64) -> Vec<MinuteRollup> {
        let inner = self.lock();
        let mut out: Vec<MinuteRollup> = inner
            .series
            .get(key)
            .map(|s| s.open_between(from_ms, to_ms).copied().collect())
            .unwrap_or_default();
        for unit in &inner.pending {
            for (k, minutes) in &unit.rollups {
                if k == key {
                    out.extend(
                        minutes
                            .iter()
                            .filter(|r| r.bucket_start_ms >= from_ms && r.bucket_start_ms <= to_ms),
                    );
                }
            }
        }
        out
    }
}

/// Forgets every unflushed rollup (raw samples stay in the hot window).
fn drop_unflushed(inner: &mut Inner) {
    inner.pending.clear();
    for state in inner.series.values_mut() {
        drop(state.take_open());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(resource: &str, points: &[(i64, f64)]) -> Vec<SeriesSamples> {
        vec![SeriesSamples {
            key: SeriesKey::new(resource, "m", ""),
            points: points.to_vec(),
        }]
    }

    #[test]
    fn replays_are_recognised_and_flushes_move_the_durable_seq() {
        let ledger = Ledger::new("a", Cursor::default(), 1);
        let (begun, new) = ledger.begin(1, &batch("host/x", &[(1_000, 1.0)]), 0);
        assert_eq!(begun, Begun::Applied { state_due: true });
        assert_eq!(new, vec!["host/x".to_string()]);
        ledger.finish(1, true);
        assert_eq!(ledger.begin(1, &batch("host/x", &[]), 0).0, Begun::Replay);
        let taken = ledger.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].seq, 1);
        assert_eq!(taken[0].rollups.len(), 1);
        ledger.flushed(taken[0].seq);
        assert_eq!(*ledger.subscribe_durable().borrow(), 1);
        assert!(ledger.take().is_empty(), "nothing new to flush");
    }

    #[test]
    fn a_batch_in_progress_is_never_flushed() {
        let ledger = Ledger::new("a", Cursor::default(), 1);
        ledger.begin(1, &batch("host/x", &[(1_000, 1.0)]), 0);
        assert!(ledger.take().is_empty());
        ledger.finish(1, true);
        assert_eq!(ledger.take()[0].seq, 1);
    }

    #[test]
    fn a_failed_state_commit_drops_what_is_not_durable() {
        let ledger = Ledger::new("a", Cursor::default(), 1);
        ledger.begin(1, &batch("host/x", &[(1_000, 1.0)]), 0);
        ledger.finish(1, true);
        let taken = ledger.take();
        ledger.flushed(taken[0].seq);
        ledger.begin(2, &batch("host/x", &[(2_000, 2.0)]), 0);
        ledger.finish(2, true);
        ledger.begin(3, &batch("host/x", &[(3_000, 3.0)]), 0);
        ledger.finish(3, false);
        assert_eq!(ledger.positions(), (1, 1, 2));
        // Batches 2 and 3 are sent again and applied again.
        assert!(ledger.take().is_empty());
        assert_eq!(
            ledger.begin(2, &batch("host/x", &[(2_000, 2.0)]), 0).0,
            Begun::Applied { state_due: false }
        );
    }

    #[test]
    fn a_failed_flush_keeps_its_unit_apart_for_the_next() {
        let ledger = Ledger::new("a", Cursor::default(), 1);
        ledger.begin(1, &batch("host/x", &[(1_000, 1.0)]), 0);
        ledger.finish(1, true);
        let taken = ledger.take();
        ledger.begin(2, &batch("host/x", &[(2_000, 2.0)]), 0);
        ledger.finish(2, true);
        ledger.flush_failed(taken);
        // Queries still see the failed unit's minute.
        let key = batch("host/x", &[])[0].key.clone();
        let open: u64 = ledger
            .open_rollups(&key, 0, 60_000)
            .iter()
            .map(|r| r.stats.count)
            .sum();
        assert_eq!(open, 2);
        let again = ledger.take();
        let units: Vec<(u64, u64)> = again
            .iter()
            .map(|u| (u.seq, u.rollups[0].1[0].stats.count))
            .collect();
        assert_eq!(units, vec![(1, 1), (2, 1)], "the failed unit stays apart");
    }

    #[test]
    fn replays_below_the_state_seq_need_no_state_work() {
        let ledger = Ledger::new(
            "a",
            Cursor {
                durable_seq: 5,
                state_seq: 7,
            },
            1,
        );
        assert_eq!(ledger.begin(5, &batch("h", &[]), 0).0, Begun::Replay);
        assert_eq!(
            ledger.begin(6, &batch("h", &[]), 0).0,
            Begun::Applied { state_due: false }
        );
        ledger.finish(6, true);
        assert_eq!(
            ledger.begin(8, &batch("h", &[]), 0).0,
            Begun::Applied { state_due: true }
        );
    }

    #[test]
    fn a_session_taken_over_elsewhere_makes_the_ledger_start_again() {
        let ledger = Ledger::new("a", Cursor::default(), 1);
        ledger.begin(1, &batch("host/x", &[(1_000, 1.0)]), 0);
        ledger.finish(1, true);
        // Reopened here right after its own session: what it holds stays.
        ledger.reopen(Cursor::default(), 1, 2);
        assert_eq!(ledger.positions(), (1, 0, 1));
        assert_eq!(ledger.take()[0].epoch, 2);
        ledger.begin(2, &batch("host/x", &[(2_000, 2.0)]), 0);
        ledger.finish(2, true);
        // Another replica held it (epochs 3 and 4) and flushed up to 5.
        let stored = Cursor {
            durable_seq: 5,
            state_seq: 5,
        };
        ledger.reopen(stored, 4, 5);
        assert_eq!(ledger.positions(), (5, 5, 5));
        assert!(ledger.take().is_empty(), "the stale rollups are gone");
    }

    #[test]
    fn a_fenced_ledger_drops_what_is_not_durable_and_ends_its_stream() {
        let ledger = Ledger::new("a", Cursor::default(), 1);
        let stream = ledger.take_over();
        ledger.begin(1, &batch("host/x", &[(1_000, 1.0)]), 0);
        ledger.finish(1, true);
        ledger.fence();
        assert!(stream.is_cancelled());
        assert_eq!(ledger.positions().0, 0);
        assert!(ledger.take().is_empty());
    }
}
