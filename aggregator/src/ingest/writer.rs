//! The single writer of the model.
//!
//! Requests arrive on a bounded channel (so a slow database slows acknowledgements
//! and agents buffer, instead of memory growing). The writer takes up to
//! `group_commit_batches` at once, plans every state change against the model plus
//! the changes planned so far, writes them in one transaction, applies them to the
//! model and answers each request. Nothing is applied or acknowledged unless the
//! transaction committed; a failed group is answered with `Unavailable` and resent
//! by the agents. The same task marks resources stale, so no two tasks ever race on
//! a resource version.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infrawatch_common::resource::kind;
use infrawatch_common::time::now_unix_ms;
use infrawatch_proto::v1::Ack;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::IngestError;
use super::decode::{DecodedBatch, SeriesSamples};
use crate::config::HealthConfig;
use crate::events::log::EventLog;
use crate::events::validate::{Bounds, validate};
use crate::events::{StoredEvent, build, metric as event_metric};
use crate::health;
use crate::model::{Health, ResourceRecord, changed_fields};
use crate::series::{SeriesKey, Stats};
use crate::state::{Model, State};
use crate::store::{COMMIT_SEQ, DeadLetter, GapRow};
use crate::store::{Commit, HistoryEntry, RollupDelta, Store, StoreError};
use crate::telemetry;
use infrawatch_proto::v1 as pb;

/// Width of a stored rollup bucket.
pub const ROLLUP_BUCKET_MS: i64 = 60_000;

/// Source recorded for changes the aggregator makes itself.
pub const STALENESS_SOURCE: &str = "aggregator/staleness";

/// Work for the writer, from the stream of agent `agent`.
#[derive(Debug)]
pub struct WriteRequest {
    /// Identity from the client certificate: owns the resources it reports.
    pub agent: String,
    /// Whose sequence the batch belongs to: the identity plus the machine id the
    /// agent announced, so agents sharing a certificate never share a cursor.
    pub cursor_key: String,
    /// What to do.
    pub work: Work,
    /// Receives the acknowledgement once durable, or why not.
    pub reply: oneshot::Sender<Result<Ack, IngestError>>,
    /// Marks a batch as received and not yet applied, until it is dropped after
    /// the commit (see [`State::applied_through`]).
    pub unapplied: Option<crate::state::Unapplied>,
}

/// What the writer is asked to do.
#[derive(Debug)]
pub enum Work {
    /// Apply a batch (effectively once).
    Batch(DecodedBatch),
    /// A stream opened. If the agent's sequence is below what was applied (it lost
    /// its state directory), its batches above `last_seq` count as new from now on;
    /// without this they would be taken for replays and dropped. A new stream also
    /// lifts the hold left by a failed write.
    Hello {
        /// The highest sequence the agent says it has assigned.
        last_seq: u64,
    },
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Health rules.
    pub health: HealthConfig,
    /// Batches per transaction at most.
    pub group_commit_batches: usize,
    /// How often to look for stale resources.
    pub sweep_interval: Duration,
    /// How far ahead of this clock an observation may lie (event validation).
    pub max_future_skew_ms: i64,
}

/// Changes planned for one transaction.
#[derive(Debug, Default)]
struct Plan {
    /// Latest planned record of every resource touched.
    records: HashMap<String, ResourceRecord>,
    /// Ids whose new version must be stored.
    changed: HashSet<String>,
    relations_changed: HashSet<String>,
    history: Vec<HistoryEntry>,
    cursors: HashMap<String, u64>,
    /// Cursors set back because an agent's sequence restarted.
    cursor_resets: HashMap<String, u64>,
    /// Rollup increments by series, one per minute bucket touched.
    rollups: HashMap<SeriesKey, Vec<RollupDelta>>,
    /// Samples to add to the hot store, and their window statistics so far.
    samples: Vec<SeriesSamples>,
    window: HashMap<SeriesKey, Stats>,
    /// Resources with fresh data (their last-seen time moves to now).
    seen: HashSet<String>,
    /// One event per new version, with the version it follows.
    events: Vec<(pb::InfrastructureStatusUpdatedEvent, u64)>,
    /// Data gaps agents reported.
    gaps: Vec<GapRow>,
}

impl Plan {
    /// The highest applied seq of `key`, counting what this plan already applies.
    fn applied_seq(&self, model: &Model, key: &str) -> u64 {
        self.cursors
            .get(key)
            .or_else(|| self.cursor_resets.get(key))
            .copied()
            .or_else(|| model.cursors.get(key).copied())
            .unwrap_or(0)
    }

    fn record<'a>(&'a self, model: &'a Model, id: &str) -> Option<&'a ResourceRecord> {
        self.records
            .get(id)
            .or_else(|| model.resources.get(id).map(|t| &t.record))
    }

    /// Stores `next` as the new state of its resource, bumping the version and
    /// writing history when a field that consumers care about changed.
    fn update(&mut self, model: &Model, mut next: ResourceRecord, now_ms: i64) {
        let before = self.record(model, &next.id).cloned();
        let changed = changed_fields(before.as_ref(), &next);
        if changed.is_empty() {
            self.records.insert(next.id.clone(), next);
            return;
        }
        next.version = before.as_ref().map_or(0, |b| b.version) + 1;
        if changed.contains(&"relations")
            || (changed.contains(&"created") && !next.relations.is_empty())
        {
            self.relations_changed.insert(next.id.clone());
        }
        self.push_version(before.as_ref(), next, &changed, None, now_ms);
    }

    /// Records that the agent on host `id` lost data: a new version of the host
    /// whose event carries the gap (`changed` = `data_gap`).
    fn data_gap(&mut self, model: &Model, id: &str, gap: &pb::DataGap, now_ms: i64) {
        let Some(before) = self.record(model, id).cloned() else {
            return;
        };
        let mut next = before.clone();
        next.version += 1;
        self.push_version(
            Some(&before),
            next,
            &["data_gap"],
            Some(gap.clone()),
            now_ms,
        );
    }

    /// Plans `next` (already at its new version) with its event and history row.
    fn push_version(
        &mut self,
        before: Option<&ResourceRecord>,
        next: ResourceRecord,
        changed: &[&str],
        gap: Option<pb::DataGap>,
        now_ms: i64,
    ) {
        let previous_health = before.map_or(Health::Unknown, |b| b.health);
        let mut event = build::event_for(&next, previous_health, changed, &next.source, now_ms);
        event.gap = gap;
        self.events.push((event, before.map_or(0, |b| b.version)));
        self.history.push(HistoryEntry {
            resource_id: next.id.clone(),
            resource_version: next.version,
            previous_health,
            health: next.health,
            reasons: next.reasons.clone(),
            changed: changed.iter().map(|s| s.to_string()).collect(),
            observed_at_ms: next.observed_at_ms,
            recorded_at_ms: now_ms,
            source: next.source.clone(),
        });
        self.changed.insert(next.id.clone());
        self.records.insert(next.id.clone(), next);
    }

    /// Adds the samples of one series: its rollup increments, its statistics
    /// over the evaluation window and the samples for the hot store. The series
    /// key is copied once per series and minute, never per sample.
    fn add_series(&mut self, series: SeriesSamples, window_start: i64) {
        let buckets = match self.rollups.get_mut(&series.key) {
            Some(b) => b,
            None => self.rollups.entry(series.key.clone()).or_default(),
        };
        let mut window = Stats::default();
        for &(ts, value) in &series.points {
            let bucket = ts - ts.rem_euclid(ROLLUP_BUCKET_MS);
            let at = match buckets.iter().position(|d| d.bucket_start_ms == bucket) {
                Some(at) => at,
                None => {
                    buckets.push(RollupDelta {
                        key: series.key.clone(),
                        bucket_start_ms: bucket,
                        stats: Stats::default(),
                        last: (i64::MIN, 0.0),
                    });
                    buckets.len() - 1
                }
            };
            let delta = &mut buckets[at];
            delta.stats.add(value);
            if ts >= delta.last.0 {
                delta.last = (ts, value);
            }
            if ts >= window_start {
                window.add(value);
            }
        }
        if window.count > 0 {
            match self.window.get_mut(&series.key) {
                Some(w) => w.merge(&window),
                None => {
                    self.window.insert(series.key.clone(), window);
                }
            }
        }
        self.samples.push(series);
    }

    /// The transaction for this plan: events that pass validation get positions
    /// from `first_position` on, the others become dead letters.
    fn into_commit(self, first_position: u64, bounds: Bounds) -> (Commit, Applied) {
        let mut events = Vec::with_capacity(self.events.len());
        let mut dead_letters = Vec::new();
        for (event, previous_version) in self.events {
            match validate(&event, previous_version, bounds) {
                Ok(()) => {
                    let position = first_position + events.len() as u64;
                    events.push(StoredEvent::new(position, event, None));
                }
                Err(invalid) => {
                    tracing::error!(
                        resource = %event.resource_id,
                        version = event.resource_version,
                        reason = %invalid,
                        "Event failed validation; kept as a dead letter."
                    );
                    metrics::counter!(event_metric::INVALID, "reason" => invalid.code).increment(1);
                    dead_letters.push(DeadLetter {
                        event,
                        reason: invalid.to_string(),
                        recorded_at_ms: bounds.now_ms,
                    });
                }
            }
        }
        let resources: Vec<ResourceRecord> = self
            .changed
            .iter()
            .filter_map(|id| self.records.get(id).cloned())
            .collect();
        let commit = Commit {
            resources,
            relations_changed: self.relations_changed.into_iter().collect(),
            history: self.history,
            cursors: self.cursors.iter().map(|(a, s)| (a.clone(), *s)).collect(),
            cursor_resets: self
                .cursor_resets
                .iter()
                .map(|(a, s)| (a.clone(), *s))
                .collect(),
            rollups: self.rollups.into_values().flatten().collect(),
            events,
            dead_letters,
            gaps: self.gaps,
            commit_seq: 0,
        };
        let applied = Applied {
            records: self.records,
            changes: self.changed.len(),
            cursor_resets: self.cursor_resets,
            cursors: self.cursors,
            samples: self.samples,
            seen: self.seen,
        };
        (commit, applied)
    }
}

/// A request's reply channel, its planned answer and its sample count (`None`
/// for a `Hello`, which is not a batch).
type Answer = (
    oneshot::Sender<Result<Ack, IngestError>>,
    Result<Ack, IngestError>,
    Option<usize>,
);

/// What goes into the model once the commit succeeded.
struct Applied {
    records: HashMap<String, ResourceRecord>,
    changes: usize,
    cursor_resets: HashMap<String, u64>,
    cursors: HashMap<String, u64>,
    samples: Vec<SeriesSamples>,
    seen: HashSet<String>,
}

/// The writer task.
pub struct Writer {
    state: Arc<State>,
    store: Store,
    config: WriterConfig,
    requests: mpsc::Receiver<WriteRequest>,
    /// Where committed events go.
    events: Arc<EventLog>,
    /// Number of the last commit (stored with each commit).
    commit_seq: u64,
    /// Per cursor key, the lowest seq whose write failed for good; later batches of
    /// that agent wait until it is resent or the agent opens a new stream.
    held: HashMap<String, u64>,
}

impl Writer {
    /// A writer fed by `requests`.
    pub fn new(
        state: Arc<State>,
        store: Store,
        config: WriterConfig,
        requests: mpsc::Receiver<WriteRequest>,
        events: Arc<EventLog>,
        commit_seq: u64,
    ) -> Self {
        Self {
            state,
            store,
            config,
            requests,
            events,
            commit_seq,
            held: HashMap::new(),
        }
    }

    /// Runs until every sender is gone (after shutdown, once the streams ended) or
    /// `stop` is cancelled; in both cases what is queued is written first.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max = self.config.group_commit_batches.max(1);
        let mut group = Vec::with_capacity(max);
        loop {
            // The sweep comes first so that a steady stream of batches cannot starve it.
            tokio::select! {
                biased;
                _ = sweep.tick() => self.sweep().await,
                n = self.requests.recv_many(&mut group, max) => {
                    if n == 0 {
                        return;
                    }
                    self.apply_group(std::mem::take(&mut group), &stop).await;
                }
                _ = stop.cancelled() => {
                    self.requests.close();
                    while self.requests.recv_many(&mut group, max).await > 0 {
                        self.apply_group(std::mem::take(&mut group), &stop).await;
                    }
                    return;
                }
            }
        }
    }

    /// Plans, commits, applies and answers one group of requests.
    async fn apply_group(&mut self, group: Vec<WriteRequest>, stop: &CancellationToken) {
        let started = Instant::now();
        let now = now_unix_ms();
        let mut plan = Plan::default();
        // Batches this group applies, to hold their agents back if the write fails.
        let mut written: Vec<(String, u64)> = Vec::new();
        let mut answers: Vec<Answer> = Vec::with_capacity(group.len());
        // Held to the end: these batches count as unapplied until then.
        let mut _unapplied = Vec::with_capacity(group.len());
        let state = self.state.clone();
        {
            let model = state.read();
            for req in group {
                _unapplied.push(req.unapplied);
                let answer = match req.work {
                    Work::Batch(batch) => {
                        let seq = batch.seq;
                        let samples = batch.sample_count;
                        let result = self.plan_batch(
                            &model,
                            &mut plan,
                            &req.agent,
                            &req.cursor_key,
                            batch,
                            now,
                        );
                        if matches!(result, Ok(false)) {
                            written.push((req.cursor_key.clone(), seq));
                        }
                        (
                            req.reply,
                            result.map(|duplicate| Ack {
                                seq,
                                duplicate,
                                ..Ack::default()
                            }),
                            Some(samples),
                        )
                    }
                    Work::Hello { last_seq } => {
                        self.held.remove(&req.cursor_key);
                        let applied = plan.applied_seq(&model, &req.cursor_key);
                        if last_seq < applied {
                            tracing::warn!(
                                agent = %req.cursor_key,
                                agent_last_seq = last_seq,
                                applied_seq = applied,
                                "Agent sequence restarted below the applied one (state directory lost?); accepting its new batches."
                            );
                            plan.cursors.remove(&req.cursor_key);
                            plan.cursor_resets.insert(req.cursor_key, last_seq);
                        }
                        (
                            req.reply,
                            Ok(Ack {
                                seq: last_seq,
                                ..Ack::default()
                            }),
                            // Not a batch: not counted as one.
                            None,
                        )
                    }
                };
                answers.push(answer);
            }
        }
        let (mut commit, applied) = plan.into_commit(self.events.head() + 1, self.bounds(now));
        commit.commit_seq = self.commit_seq + 1;
        if let Err(e) = self.commit_with_retries(&commit, stop).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                batches = answers.len(),
                "Database write failed; batches will be resent by their agents."
            );
            for (key, seq) in written {
                let entry = self.held.entry(key).or_insert(seq);
                *entry = (*entry).min(seq);
            }
            for (reply, result, samples) in answers {
                let answer = match result {
                    Ok(_) => Err(IngestError::Unavailable(e.to_string())),
                    Err(rejected) => Err(rejected),
                };
                if samples.is_some() {
                    count_result(&answer);
                }
                let _ = reply.send(answer);
            }
            return;
        }
        self.commit_seq = commit.commit_seq;
        count_rows(&commit);
        self.apply(applied, now);
        self.publish(&mut commit);
        for (reply, result, samples) in answers {
            let Some(samples) = samples else {
                let _ = reply.send(result);
                continue;
            };
            if matches!(
                result,
                Ok(Ack {
                    duplicate: false,
                    ..
                })
            ) {
                metrics::counter!(telemetry::SAMPLES).increment(samples as u64);
            }
            count_result(&result);
            let _ = reply.send(result);
        }
        metrics::histogram!(telemetry::WRITE_GROUP_DURATION, "work" => "batches")
            .record(started.elapsed().as_secs_f64());
    }

    fn bounds(&self, now_ms: i64) -> Bounds {
        Bounds {
            now_ms,
            max_future_skew_ms: self.config.max_future_skew_ms,
        }
    }

    /// Hands the committed events to the log (publishers and live streams).
    fn publish(&self, commit: &mut Commit) {
        let committed_at = Instant::now();
        let events = std::mem::take(&mut commit.events);
        metrics::counter!(event_metric::EMITTED).increment(events.len() as u64);
        self.events.append(events.into_iter().map(|mut e| {
            e.committed_at = Some(committed_at);
            e
        }));
    }

    /// Writes `commit`, retrying connection-type failures with backoff until they
    /// pass or `stop` is cancelled. While it retries nothing else is written, so
    /// acknowledgements slow down and agents keep their batches: a database outage
    /// delays data but loses none.
    async fn commit_with_retries(
        &self,
        commit: &Commit,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            match self.store.commit(commit).await {
                Ok(()) => {
                    if attempts > 0 {
                        tracing::info!(attempts, "Database write succeeded after retries.");
                    }
                    return Ok(());
                }
                Err(e) if self.committed_despite(commit, &e).await => return Ok(()),
                Err(e) if e.is_retryable() && !stop.is_cancelled() => {
                    if attempts == 0 {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "Database write failed; retrying while ingest waits."
                        );
                    }
                    attempts += 1;
                    tokio::select! {
                        _ = stop.cancelled() => return Err(e),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a failed commit, whether it committed all the same: the connection can
    /// break after the database committed and before it said so. Every commit
    /// records its number, so the answer is in the database. Without this check
    /// the model would miss a committed change, and the next commit would reuse
    /// its event positions.
    async fn committed_despite(&self, commit: &Commit, error: &StoreError) -> bool {
        match self.store.meta(COMMIT_SEQ).await {
            Ok(stored) if stored >= commit.commit_seq => {
                tracing::warn!(
                    error = error as &dyn std::error::Error,
                    commit = commit.commit_seq,
                    "The database reported a failure, but the commit is there; going on."
                );
                true
            }
            _ => false,
        }
    }

    /// Plans one batch; `Ok(true)` when it was applied before (a replay).
    fn plan_batch(
        &mut self,
        model: &Model,
        plan: &mut Plan,
        agent: &str,
        cursor_key: &str,
        batch: DecodedBatch,
        now: i64,
    ) -> Result<bool, IngestError> {
        let applied = plan.applied_seq(model, cursor_key);
        if batch.seq <= applied {
            return Ok(true);
        }
        // After a failed write of batch N, nothing later from the same agent may be
        // applied before N is: the cursor would pass N and its resend would be
        // dropped as a replay.
        if let Some(&failed) = self.held.get(cursor_key) {
            if batch.seq > failed {
                return Err(IngestError::Unavailable(format!(
                    "batch {failed} of this agent was not stored; resend it first"
                )));
            }
            self.held.remove(cursor_key);
        }
        // Check everything before planning anything, so a rejected batch leaves no trace.
        for obs in &batch.resources {
            match plan.record(model, &obs.id) {
                // A resource whose reporter went silent (UNKNOWN) may be taken over,
                // e.g. after a certificate was replaced.
                Some(existing)
                    if existing.source != agent && existing.health != Health::Unknown =>
                {
                    return Err(IngestError::Forbidden(format!(
                        "resource {} is reported by {}, not by {agent} (two hosts with the same machine id?)",
                        obs.id, existing.source
                    )));
                }
                None if obs.kind.is_empty() => {
                    return Err(IngestError::Invalid(format!(
                        "batch {} refers to unknown resource {} without a kind",
                        batch.seq, obs.id
                    )));
                }
                _ => {}
            }
        }
        let window_start =
            now - i64::try_from(self.config.health.evaluation_window_ms).unwrap_or(i64::MAX);
        let mut newest: HashMap<String, i64> = HashMap::new();
        for s in batch.series {
            if let Some(ts) = s.points.iter().map(|p| p.0).max() {
                match newest.get_mut(&s.key.resource_id) {
                    Some(e) => *e = (*e).max(ts),
                    None => {
                        newest.insert(s.key.resource_id.clone(), ts);
                    }
                }
            }
            plan.add_series(s, window_start);
        }
        for obs in &batch.resources {
            let existing = plan.record(model, &obs.id).cloned();
            let mut next = existing.unwrap_or_else(|| ResourceRecord {
                id: obs.id.clone(),
                kind: obs.kind.clone(),
                labels: Default::default(),
                attributes: Default::default(),
                relations: Vec::new(),
                health: Health::Unknown,
                reasons: Vec::new(),
                observed_at_ms: now,
                version: 0,
                source: agent.to_string(),
                interval_ms: 0,
            });
            if !obs.kind.is_empty() {
                next.kind = obs.kind.clone();
                next.labels = obs.labels.clone();
                next.attributes = obs.attributes.clone();
                next.relations = obs.relations.clone();
                next.interval_ms = obs.interval_ms;
            }
            next.source = agent.to_string();
            next.observed_at_ms = newest.get(obs.id.as_str()).copied().unwrap_or(now);
            // A replayed backlog holds only samples older than the window: they say
            // nothing about the present, so the health stays as it is.
            let current = newest
                .get(obs.id.as_str())
                .is_none_or(|&t| t >= window_start);
            if current || next.version == 0 {
                let (health, reasons) = self.evaluate(model, plan, &next, window_start);
                next.health = health;
                next.reasons = reasons;
            }
            plan.seen.insert(next.id.clone());
            plan.update(model, next, now);
        }
        if !batch.gaps.is_empty() {
            let host = batch
                .resources
                .iter()
                .find(|o| o.kind == kind::HOST)
                .map(|o| o.id.clone())
                .unwrap_or_default();
            for g in &batch.gaps {
                tracing::warn!(
                    agent = cursor_key,
                    first_seq = g.first_seq,
                    last_seq = g.last_seq,
                    samples = g.samples_lost,
                    cause = %g.cause,
                    "Agent reports lost data."
                );
                metrics::counter!(telemetry::GAP_SAMPLES, "cause" => g.cause.clone())
                    .increment(g.samples_lost);
                plan.gaps.push(GapRow {
                    agent_id: cursor_key.to_string(),
                    host_id: host.clone(),
                    first_seq: g.first_seq,
                    last_seq: g.last_seq,
                    from_ms: g.from_unix_ms,
                    to_ms: g.to_unix_ms,
                    samples_lost: g.samples_lost,
                    batches_lost: g.batches_lost,
                    cause: g.cause.clone(),
                    exact: g.exact,
                    recorded_at_ms: now,
                });
                if !host.is_empty() {
                    plan.data_gap(model, &host, g, now);
                }
            }
        }
        plan.cursors.insert(cursor_key.to_string(), batch.seq);
        Ok(false)
    }

    /// Health of a resource that just reported.
    fn evaluate(
        &self,
        model: &Model,
        plan: &Plan,
        record: &ResourceRecord,
        window_start: i64,
    ) -> (Health, Vec<crate::model::Reason>) {
        if let Some(verdict) = health::evaluate_probe(&record.kind, &record.attributes) {
            return verdict;
        }
        if record.kind != kind::HOST {
            return (Health::Healthy, Vec::new());
        }
        let figures: Vec<(health::HostRule, f64)> = health::HOST_RULES
            .iter()
            .filter_map(|rule| {
                let key = SeriesKey {
                    resource_id: record.id.clone(),
                    metric: rule.metric.to_string(),
                    attributes: rule.attributes.to_string(),
                };
                let mut stats = model.series.stats_since(&key, window_start);
                if let Some(fresh) = plan.window.get(&key) {
                    stats.count += fresh.count;
                    stats.sum += fresh.sum;
                }
                stats.mean().map(|m| (*rule, m))
            })
            .collect();
        health::evaluate_host(&figures, &self.config.health)
    }

    fn apply(&self, applied: Applied, now: i64) {
        let mut model = self.state.write();
        for (id, record) in applied.records {
            let last_seen = if applied.seen.contains(&id) {
                now
            } else {
                model.resources.get(&id).map_or(now, |t| t.last_seen_ms)
            };
            model.resources.insert(
                id,
                crate::state::Tracked {
                    record,
                    last_seen_ms: last_seen,
                },
            );
        }
        for (agent, seq) in applied.cursor_resets {
            model.cursors.insert(agent, seq);
        }
        for (agent, seq) in applied.cursors {
            model.cursors.insert(agent, seq);
        }
        for s in &applied.samples {
            for &(ts, v) in &s.points {
                model.series.insert(&s.key, ts, v, now);
            }
        }
        metrics::counter!(telemetry::STATE_CHANGES).increment(applied.changes as u64);
        metrics::gauge!(telemetry::RESOURCES).set(model.resources.len() as f64);
        metrics::gauge!(telemetry::HOT_SERIES).set(model.series.len() as f64);
    }

    /// Marks resources without fresh data UNKNOWN, and forgets old samples.
    async fn sweep(&mut self) {
        let now = now_unix_ms();
        // Judged against the time up to which every received batch is applied, so
        // that a writer running behind does not take queued data for silence.
        let horizon = self.state.applied_through(now);
        let missed = self.config.health.stale_after_missed_intervals;
        let mut plan = Plan::default();
        {
            let model = self.state.read();
            for t in model.resources.values() {
                if t.record.health == Health::Unknown {
                    continue;
                }
                if let Some(reason) =
                    health::stale_reason(horizon, t.last_seen_ms, t.record.interval_ms, missed)
                {
                    let mut next = t.record.clone();
                    next.health = Health::Unknown;
                    next.reasons = vec![reason];
                    plan.update(&model, next, now);
                }
            }
        }
        if plan.changed.is_empty() {
            self.state.write().series.evict(now);
            return;
        }
        let stale = plan.changed.len();
        // The history rows name the staleness check as the observer.
        for h in &mut plan.history {
            h.source = STALENESS_SOURCE.to_string();
            h.observed_at_ms = now;
        }
        for (e, _) in &mut plan.events {
            e.source = STALENESS_SOURCE.to_string();
            e.observed_at_unix_ms = now;
        }
        let (mut commit, applied) = plan.into_commit(self.events.head() + 1, self.bounds(now));
        commit.commit_seq = self.commit_seq + 1;
        let started = Instant::now();
        let result = match self.store.commit(&commit).await {
            Err(e) if self.committed_despite(&commit, &e).await => Ok(()),
            other => other,
        };
        match result {
            Ok(()) => {
                self.commit_seq = commit.commit_seq;
                count_rows(&commit);
                tracing::info!(resources = stale, elapsed = ?started.elapsed(), "Resources without fresh data marked unknown.");
                self.apply(applied, now);
                self.publish(&mut commit);
                self.state.write().series.evict(now);
                metrics::counter!(telemetry::MARKED_STALE).increment(stale as u64);
                metrics::histogram!(telemetry::WRITE_GROUP_DURATION, "work" => "sweep")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "Could not store stale states; will retry."
                );
            }
        }
    }
}

/// Counts the rows a committed transaction wrote, by table.
fn count_rows(commit: &Commit) {
    let cursors = commit.cursors.len() + commit.cursor_resets.len();
    for (table, rows) in [
        ("resources", commit.resources.len()),
        ("history", commit.history.len()),
        ("cursors", cursors),
        ("rollups", commit.rollups.len()),
        ("events", commit.events.len() + commit.dead_letters.len()),
    ] {
        if rows > 0 {
            metrics::counter!(telemetry::STORE_ROWS, "table" => table).increment(rows as u64);
        }
    }
}

fn count_result(result: &Result<Ack, IngestError>) {
    let label = match result {
        Ok(Ack {
            duplicate: false, ..
        }) => "applied",
        Ok(Ack {
            duplicate: true, ..
        }) => "duplicate",
        Err(IngestError::Invalid(_) | IngestError::Forbidden(_)) => "rejected",
        Err(_) => "failed",
    };
    metrics::counter!(telemetry::BATCHES, "result" => label).increment(1);
}
