//! The staleness check, a source like the others: every second it looks for
//! resources whose source has sent nothing for `health.stale_after_missed_intervals`
//! of their intervals and reports them stale; the planner makes them UNKNOWN
//! (unless data arrived in between). Silence is judged against the time up to
//! which every received batch is applied, not against the clock, so an
//! aggregator running behind does not take queued data for silence.
//!
//! With several replicas, each checks the resources of the agents it serves
//! (it alone knows when their data last arrived), and the leader also checks
//! those whose agent no live replica serves (its replica died, or it never
//! came back after a restart), timing their silence from when it noticed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Change, Report};
use crate::health;
use crate::model::Health;
use crate::planner::{PlannerHandle, STALENESS_SOURCE};
use crate::state::State;
use crate::store::{LeaseHold, Store};
use crate::telemetry;

/// How often the leader reads which agents live replicas serve.
const SERVED_REFRESH: Duration = Duration::from_secs(5);

/// How often the check looks.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The staleness check.
pub struct Staleness {
    state: Arc<State>,
    planner: PlannerHandle,
    missed_intervals: u32,
    store: Store,
    leader: watch::Receiver<Option<LeaseHold>>,
    /// Sources some live replica serves (the leader's view, refreshed every
    /// [`SERVED_REFRESH`]); `None` until read.
    served_anywhere: Option<HashSet<String>>,
    served_read_at: Option<tokio::time::Instant>,
    /// Since when the leader has seen each resource unserved (its silence is
    /// timed from there, or from its last data here, whichever is later).
    orphaned_since: HashMap<String, i64>,
}

/// The sources an agent's cursor key stands for: the key itself (an agent
/// without a machine id) and the identity before `/<machine id>`.
fn sources_of(key: &str, into: &mut HashSet<String>) {
    into.insert(key.to_string());
    if let Some((identity, _machine)) = key.rsplit_once('/') {
        into.insert(identity.to_string());
    }
}

impl Staleness {
    /// A check of `state` that reports to `planner`; a resource is stale after
    /// `missed_intervals` of its intervals without data. `leader` says when this
    /// replica leads (then it also checks resources no replica serves).
    pub fn new(
        state: Arc<State>,
        planner: PlannerHandle,
        missed_intervals: u32,
        store: Store,
        leader: watch::Receiver<Option<LeaseHold>>,
    ) -> Self {
        Self {
            state,
            planner,
            missed_intervals,
            store,
            leader,
            served_anywhere: None,
            served_read_at: None,
            orphaned_since: HashMap::new(),
        }
    }

    /// The leader's view of which sources live replicas serve, read again when
    /// older than [`SERVED_REFRESH`]; `None` when not leading (or unreadable).
    async fn served_anywhere(&mut self) -> Option<&HashSet<String>> {
        if self.leader.borrow().is_none() {
            self.served_anywhere = None;
            self.orphaned_since.clear();
            return None;
        }
        let due = self
            .served_read_at
            .is_none_or(|at| at.elapsed() >= SERVED_REFRESH);
        if due {
            let read = async {
                let live: HashSet<String> = self.store.live_replicas().await?.into_iter().collect();
                let owners = self.store.session_owners().await?;
                Ok::<_, crate::store::StoreError>((live, owners))
            };
            match read.await {
                Ok((live, owners)) => {
                    let mut served = HashSet::new();
                    for (key, owner) in owners {
                        if live.contains(&owner) {
                            sources_of(&key, &mut served);
                        }
                    }
                    self.served_anywhere = Some(served);
                    self.served_read_at = Some(tokio::time::Instant::now());
                }
                Err(e) => tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "Could not read which replicas serve which agents."
                ),
            }
        }
        self.served_anywhere.as_ref()
    }

    /// Looks every [`INTERVAL`] until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let served_anywhere = self.served_anywhere().await.cloned();
            let Some(report) = self.look(now_unix_ms(), served_anywhere.as_ref()) else {
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

    /// The report of every resource stale at `now_ms` that this replica checks,
    /// if any: those of the agents it serves, and (when leading: given
    /// `served_anywhere`) those no live replica serves.
    fn look(&mut self, now_ms: i64, served_anywhere: Option<&HashSet<String>>) -> Option<Report> {
        let horizon = self.state.applied_through(now_ms);
        let mut served_here = HashSet::new();
        for ledger in self.state.samples.ledgers() {
            sources_of(ledger.key(), &mut served_here);
        }
        let model = self.state.read();
        let orphaned_since = &mut self.orphaned_since;
        let mut still_orphaned = HashSet::new();
        let changes: Vec<Change> = model
            .resources
            .values()
            .filter(|t| t.record.health != Health::Unknown)
            .filter_map(|t| {
                let source = &t.record.source;
                let mut last_seen_ms = t.last_seen_ms();
                if !served_here.contains(source) {
                    let served = served_anywhere?;
                    if served.contains(source) {
                        return None;
                    }
                    let since = *orphaned_since.entry(t.record.id.clone()).or_insert(now_ms);
                    still_orphaned.insert(t.record.id.clone());
                    last_seen_ms = last_seen_ms.max(since);
                }
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
        drop(model);
        self.orphaned_since
            .retain(|id, _| still_orphaned.contains(id));
        (!changes.is_empty()).then(|| Report {
            source: STALENESS_SOURCE.to_string(),
            changes,
            position: None,
        })
    }
}
