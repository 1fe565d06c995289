//! The writer task: takes groups of submitted reports from a bounded queue, plans
//! them together against the model, commits the group in one transaction
//! ([`super::commit`]), applies it ([`super::apply`]) and answers each report.
//! Nothing is applied or answered as done unless the transaction committed.

use std::sync::Arc;
use std::time::Instant;

use infrawatch_common::time::now_unix_ms;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::apply::{apply, count_rows, publish};
use super::commit::commit_with_retries;
use super::plan::{Context, Plan};
use super::{Outcome, StateError, Submission};
use crate::config::HealthConfig;
use crate::events::log::EventLog;
use crate::events::validate::Bounds;
use crate::state::State;
use crate::store::Store;
use crate::telemetry;

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
    queue: mpsc::Receiver<Submission>,
    /// Where committed events go.
    events: Arc<EventLog>,
    /// Number of the last commit (stored with each commit).
    commit_seq: u64,
}

/// A report's reply channel and its planned answer.
type Answer = (
    oneshot::Sender<Result<Outcome, StateError>>,
    Result<Outcome, StateError>,
);

impl Writer {
    /// A writer fed by `queue`.
    pub fn new(
        state: Arc<State>,
        store: Store,
        config: WriterConfig,
        queue: mpsc::Receiver<Submission>,
        events: Arc<EventLog>,
        commit_seq: u64,
    ) -> Self {
        Self {
            state,
            store,
            config,
            queue,
            events,
            commit_seq,
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

    /// Plans, commits, applies and answers one group of reports.
    async fn commit_group(&mut self, group: Vec<Submission>, stop: &CancellationToken) {
        let span = tracing::info_span!(
            "state_commit",
            reports = group.len(),
            commit = self.commit_seq + 1
        );
        async {
            let started = Instant::now();
            let now = now_unix_ms();
            let mut plan = Plan::default();
            let mut answers: Vec<Answer> = Vec::with_capacity(group.len());
            {
                let model = self.state.read();
                let ctx = Context {
                    model: &model,
                    samples: &self.state.samples,
                    health: &self.config.health,
                    now_ms: now,
                };
                for s in group {
                    let before = plan.version_count();
                    let result = plan.add(&ctx, &s.report).map(|()| Outcome {
                        changes: plan.version_count() - before,
                    });
                    answers.push((s.reply, result));
                }
            }
            let bounds = Bounds {
                now_ms: now,
                max_future_skew_ms: self.config.max_future_skew_ms,
            };
            let (mut commit, applied) = plan.into_commit(self.events.head() + 1, bounds);
            commit.commit_seq = self.commit_seq + 1;
            if let Err(e) = commit_with_retries(&self.store, &commit, stop, true).await {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    reports = answers.len(),
                    "Database write failed; the sources send their reports again."
                );
                for (reply, result) in answers {
                    let _ = reply.send(result.and(Err(StateError::Unavailable(e.to_string()))));
                }
                return;
            }
            if !commit.is_empty() {
                self.commit_seq = commit.commit_seq;
            }
            count_rows(&commit);
            apply(&self.state, applied, now);
            publish(&self.events, &mut commit);
            for (reply, result) in answers {
                let _ = reply.send(result);
            }
            metrics::histogram!(telemetry::WRITE_GROUP_DURATION, "work" => "state")
                .record(started.elapsed().as_secs_f64());
        }
        .instrument(span)
        .await
    }
}
