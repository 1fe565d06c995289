//! The staleness check, a source like the others: every second it looks for
//! resources whose source has sent nothing for `health.stale_after_missed_intervals`
//! of their intervals and reports them stale; the planner makes them UNKNOWN
//! (unless data arrived in between). Silence is judged against the time up to
//! which every received batch is applied, not against the clock, so an
//! aggregator running behind does not take queued data for silence.

use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use tokio_util::sync::CancellationToken;

use super::{Change, Report};
use crate::health;
use crate::model::Health;
use crate::planner::{PlannerHandle, STALENESS_SOURCE};
use crate::state::State;
use crate::telemetry;

/// How often the check looks.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The staleness check.
pub struct Staleness {
    state: Arc<State>,
    planner: PlannerHandle,
    missed_intervals: u32,
}

impl Staleness {
    /// A check of `state` that reports to `planner`; a resource is stale after
    /// `missed_intervals` of its intervals without data.
    pub fn new(state: Arc<State>, planner: PlannerHandle, missed_intervals: u32) -> Self {
        Self {
            state,
            planner,
            missed_intervals,
        }
    }

    /// Looks every [`INTERVAL`] until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(report) = self.look(now_unix_ms()) else {
                continue;
            };
            let candidates = report.changes.len();
            match self.planner.submit(report).await {
                Ok(outcome) if outcome.changes > 0 => {
                    metrics::counter!(telemetry::MARKED_STALE).increment(outcome.changes as u64);
                    tracing::info!(
                        resources = outcome.changes,
                        candidates,
                        "Resources without fresh data marked unknown."
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "Could not store stale states; will retry."
                ),
            }
        }
    }

    /// The report of every resource stale at `now_ms`, if any.
    fn look(&self, now_ms: i64) -> Option<Report> {
        let horizon = self.state.applied_through(now_ms);
        let model = self.state.read();
        let changes: Vec<Change> = model
            .resources
            .values()
            .filter(|t| t.record.health != Health::Unknown)
            .filter_map(|t| {
                let last_seen_ms = t.last_seen_ms();
                let reason = health::stale_reason(
                    horizon,
                    last_seen_ms,
                    t.record.interval_ms,
                    self.missed_intervals,
                )?;
                Some(Change::Stale {
                    id: t.record.id.clone(),
                    last_seen_ms,
                    reason,
                })
            })
            .collect();
        (!changes.is_empty()).then(|| Report {
            source: STALENESS_SOURCE.to_string(),
            changes,
            position: None,
        })
    }
}
