//! The writer task: takes groups of submitted reports from a bounded queue, plans
//! them together against the model, commits the group in one transaction
//! ([`super::commit`]), applies it ([`super::apply`]) and answers each report.
//! Nothing is applied or answered as done unless the transaction committed.
//! On the leader, the transaction also gives the events their
//! positions, and the writer hands them to the event log itself: one commit
//! between a change and its event, not two.
//!
//! Other replicas write the same database. When a resource's stored version moved
//! past the model's (a conflict), the writer reads those resources again and
//! plans the group again; when an agent's session moved to another stream (it is
//! fenced), that agent's reports are answered as such and the rest is planned
//! again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use infrawatch_common::time::now_unix_ms;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::apply::{apply, count_rows, refresh};
use super::commit::commit_with_retries;
use super::plan::{Context, Plan};
use super::{Outcome, StateError, Submission};
use crate::config::HealthConfig;
use crate::events::log::EventLog;
use crate::events::tail::absorb;
use crate::events::validate::Bounds;
use crate::sources::{Change, Report};
use crate::state::State;
use crate::store::{INLINE_ROUND, Store, StoreError};
use crate::telemetry;

/// Times a group is planned again after conflicts before its reports are
/// answered with an error (and sent again by their sources).
const MAX_REPLANS: usize = 5;

/// Splits `group` into layers, in order, so that no two reports of a layer
/// touch the same resource (a part touches its host too, whose health rolls
/// it up): a report goes one layer after the last that touched any of its
/// resources, so the reports about one resource stay in their order. Reports
/// of different agents share a layer; one agent's next report waits for the
/// commit of its previous one.
fn layers(group: Vec<Submission>) -> Vec<Vec<Submission>> {
    let mut out: Vec<Vec<Submission>> = Vec::new();
    let mut last: HashMap<String, usize> = HashMap::new();
    for s in group {
        let touched = touched(&s.report);
        let layer = touched
            .iter()
            .filter_map(|id| last.get(id.as_str()))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        for id in touched {
            last.insert(id, layer);
        }
        if out.len() <= layer {
            out.resize_with(layer + 1, Vec::new);
        }
        out[layer].push(s);
    }
    out
}

/// The resources a report may change.
fn touched(report: &Report) -> Vec<String> {
    let mut ids = Vec::with_capacity(report.changes.len());
    for change in &report.changes {
        let id = match change {
            Change::Observed(obs) => obs.id.as_str(),
            Change::Stale { id, .. } | Change::Removed { id, .. } => id.as_str(),
            Change::DataGap { row, .. } => row.host_id.as_str(),
        };
        if let Some(host) = infrawatch_common::resource::host_of_part(id) {
            ids.push(host.to_string());
        }
        ids.push(id.to_string());
    }
    ids
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Health rules.
    pub health: HealthConfig,
    /// Reports per transaction at most.
    pub group_commit_reports: usize,
    /// How far ahead of this clock an observation may lie (event validation).
    pub max_future_skew_ms: i64,
}

/// The writer task.
pub struct Writer {
    state: Arc<State>,
    store: Store,
    config: WriterConfig,
    queue: tokio::sync::mpsc::Receiver<Submission>,
    /// Told about committed events (latency, and the sequencer's wake-up).
    events: Arc<EventLog>,
}

impl Writer {
    /// A writer fed by `queue`.
    pub fn new(
        state: Arc<State>,
        store: Store,
        config: WriterConfig,
        queue: tokio::sync::mpsc::Receiver<Submission>,
        events: Arc<EventLog>,
    ) -> Self {
        Self {
            state,
            store,
            config,
            queue,
            events,
        }
    }

    /// Runs until every sender is gone (after shutdown, once the sources ended)
    /// or `stop` is cancelled; in both cases what is queued is written first.
    pub async fn run(mut self, stop: CancellationToken) {
        let max = self.config.group_commit_reports.max(1);
        let mut group = Vec::with_capacity(max);
        loop {
            tokio::select! {
                n = self.queue.recv_many(&mut group, max) => {
                    if n == 0 {
                        return;
                    }
                    self.commit_group(std::mem::take(&mut group), &stop).await;
                }
                _ = stop.cancelled() => {
                    self.queue.close();
                    while self.queue.recv_many(&mut group, max).await > 0 {
                        self.commit_group(std::mem::take(&mut group), &stop).await;
                    }
                    return;
                }
            }
        }
    }

    /// Plans, commits, applies and answers one group of reports: in layers
    /// ([`layers`]) where two reports change the same resource, so that each
    /// commit moves a resource by one version.
    async fn commit_group(&mut self, group: Vec<Submission>, stop: &CancellationToken) {
        for layer in layers(group) {
            let span = tracing::info_span!("state_commit", reports = layer.len());
            self.commit_group_inner(layer, stop).instrument(span).await;
        }
    }

    async fn commit_group_inner(&mut self, mut group: Vec<Submission>, stop: &CancellationToken) {
        let started = Instant::now();
        for _ in 0..=MAX_REPLANS {
            let now = now_unix_ms();
            // Reports that fail planning are answered at once; the rest is one plan.
            let mut plan = Plan::default();
            let mut planned: Vec<(Submission, Outcome)> = Vec::with_capacity(group.len());
            {
                let model = self.state.read();
                let rules = self.state.rules.current();
                let ctx = Context {
                    model: &model,
                    samples: &self.state.samples,
                    health: &self.config.health,
                    rules: &rules,
                    now_ms: now,
                };
                for s in group.drain(..) {
                    let before = plan.version_count();
                    match plan.add(&ctx, &s.report) {
                        Ok(()) => {
                            let changes = plan.version_count() - before;
                            planned.push((s, Outcome { changes }));
                        }
                        Err(e) => {
                            let _ = s.reply.send(Err(e));
                        }
                    }
                }
            }
            let bounds = Bounds {
                now_ms: now,
                max_future_skew_ms: self.config.max_future_skew_ms,
            };
            let (mut commit, applied) = plan.into_commit(bounds);
            commit.sequence = self.events.sequencing();
            match commit_with_retries(&self.store, &commit, stop, true).await {
                Ok(sequenced) => {
                    count_rows(&commit);
                    apply(&self.state, applied, now);
                    if sequenced.is_empty() {
                        self.events.committed_here(&commit.events);
                    } else {
                        self.events.note_commit_times(&commit.events);
                        metrics::counter!(telemetry::SEQUENCED).increment(sequenced.len() as u64);
                        if sequenced.len() >= INLINE_ROUND {
                            // A backlog may be left: the sequencer's turn.
                            self.events.wake_sequencer();
                        }
                        if !absorb(&self.store, &self.events, &self.state, sequenced).await {
                            self.events.wake_tail();
                        }
                    }
                    for (s, outcome) in planned {
                        let _ = s.reply.send(Ok(outcome));
                    }
                    metrics::histogram!(telemetry::WRITE_GROUP_DURATION, "work" => "state")
                        .record(started.elapsed().as_secs_f64());
                    return;
                }
                Err(StoreError::Conflict(ids)) => {
                    metrics::counter!(telemetry::STATE_CONFLICTS).increment(1);
                    tracing::debug!(resources = ?ids, "Resources changed on another replica; planning again.");
                    match self.store.load_resources(&ids).await {
                        Ok(records) => refresh(&self.state, records),
                        Err(e) => {
                            answer_all(planned, &StateError::Unavailable(e.to_string()));
                            return;
                        }
                    }
                    group = planned.into_iter().map(|(s, _)| s).collect();
                }
                Err(StoreError::SessionFenced { key }) => {
                    for (s, _) in planned {
                        if s.report.position.as_ref().is_some_and(|p| p.key == key) {
                            let _ = s.reply.send(Err(StateError::Fenced(key.clone())));
                        } else {
                            group.push(s);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        reports = planned.len(),
                        "Database write failed; the sources send their reports again."
                    );
                    answer_all(planned, &StateError::Unavailable(e.to_string()));
                    return;
                }
            }
            if group.is_empty() {
                return;
            }
        }
        tracing::warn!(
            reports = group.len(),
            "Reports kept conflicting with other replicas' writes; the sources send them again."
        );
        for s in group {
            let _ = s.reply.send(Err(StateError::Unavailable(
                "resources kept changing on other replicas".into(),
            )));
        }
    }
}

fn answer_all(planned: Vec<(Submission, Outcome)>, error: &StateError) {
    for (s, _) in planned {
        let _ = s.reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Observation;

    fn submission(ids: &[&str]) -> Submission {
        let (reply, _) = tokio::sync::oneshot::channel();
        Submission {
            report: Report {
                source: "agent-a".into(),
                changes: ids
                    .iter()
                    .map(|id| {
                        Change::Observed(Observation {
                            id: (*id).to_string(),
                            kind: String::new(),
                            labels: Default::default(),
                            attributes: Default::default(),
                            relations: Vec::new(),
                            interval_ms: 0,
                            observed_at_ms: 0,
                            verdict: None,
                        })
                    })
                    .collect(),
                position: None,
            },
            reply,
        }
    }

    fn ids(layers: &[Vec<Submission>]) -> Vec<Vec<Vec<String>>> {
        layers
            .iter()
            .map(|l| l.iter().map(|s| touched(&s.report)).collect())
            .collect()
    }

    #[test]
    fn reports_that_touch_one_resource_go_to_later_layers_in_order() {
        let group = vec![
            submission(&["host/a"]),
            submission(&["host/b"]),
            // A part of host/a: it touches host/a too.
            submission(&["host/a/filesystem/root"]),
            submission(&["host/c"]),
            submission(&["host/a"]),
        ];
        let layered = layers(group);
        assert_eq!(
            ids(&layered),
            vec![
                vec![
                    vec!["host/a".to_string()],
                    vec!["host/b".to_string()],
                    vec!["host/c".to_string()]
                ],
                vec![vec![
                    "host/a".to_string(),
                    "host/a/filesystem/root".to_string()
                ]],
                vec![vec!["host/a".to_string()]],
            ]
        );
        assert!(layers(Vec::new()).is_empty());
    }
}
