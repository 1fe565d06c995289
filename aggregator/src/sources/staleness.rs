//! The staleness check, a source like the others: every second it looks for
//! resources whose source has sent nothing for `health.stale_after_missed_intervals`
//! of their intervals and reports them stale; the planner makes them UNKNOWN
//! (unless data arrived in between). Silence is judged against the time up to
//! which every received batch is applied, not against the clock, so an
//! aggregator running behind does not take queued data for silence.
//!
//! With several replicas, each replica checks the resources of the agents whose
//! session it holds in the database (it alone sees their data arrive; an agent
//! that disconnected stays its to check until another replica takes it over),
//! and the leader also checks those whose session no live replica holds (its
//! replica died, or it never came back after a restart), timing their silence
//! from when it noticed. Who holds which session is read from the database every
//! few seconds, and again before anything is reported stale; a ledger whose
//! agent another replica took over is let go here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::resource;
use infrawatch_common::time::now_unix_ms;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Change, Report};
use crate::health;
use crate::model::{Health, Reason};
use crate::planner::{PlannerHandle, STALENESS_SOURCE};
use crate::state::{State, Tracked};
use crate::store::{LeaseHold, Store, StoreError};
use crate::telemetry;

/// How often the view of who holds which session is read when nothing is
/// about to be reported stale.
const OWNERS_REFRESH: Duration = Duration::from_secs(5);

/// How old the view may be when something is about to be reported stale.
const OWNERS_FRESH: Duration = Duration::from_secs(1);

/// How often the check looks.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Who holds which agent session, as last read from the database.
#[derive(Debug, Default)]
struct Owners {
    /// Agent cursor key → (replica holding its session, epoch).
    by_key: HashMap<String, (String, u64)>,
    /// Replicas whose heartbeat runs.
    live: HashSet<String>,
    read_at: Option<tokio::time::Instant>,
}

impl Owners {
    fn age(&self) -> Duration {
        self.read_at.map_or(Duration::MAX, |at| at.elapsed())
    }
}

/// The staleness check.
pub struct Staleness {
    state: Arc<State>,
    planner: PlannerHandle,
    missed_intervals: u32,
    store: Store,
    replica_id: String,
    leader: watch::Receiver<Option<LeaseHold>>,
    owners: Owners,
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

/// Which sources this replica checks.
struct Duty {
    /// Sources of the sessions this replica holds.
    here: HashSet<String>,
    /// When leading: sources of the sessions some live replica holds (the rest
    /// is the leader's to check). `None` when not leading.
    anywhere: Option<HashSet<String>>,
}

impl Staleness {
    /// A check of `state` that reports to `planner`; a resource is stale after
    /// `missed_intervals` of its intervals without data. `replica_id` is this
    /// replica in the database; `leader` says when it leads.
    pub fn new(
        state: Arc<State>,
        planner: PlannerHandle,
        missed_intervals: u32,
        store: Store,
        replica_id: &str,
        leader: watch::Receiver<Option<LeaseHold>>,
    ) -> Self {
        Self {
            state,
            planner,
            missed_intervals,
            store,
            replica_id: replica_id.to_string(),
            leader,
            owners: Owners::default(),
            orphaned_since: HashMap::new(),
        }
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
            if self.owners.age() >= OWNERS_REFRESH {
                self.read_owners().await;
            }
            let mut report = self.look(now_unix_ms());
            if report.is_some() && self.owners.age() >= OWNERS_FRESH {
                // Check who holds the sessions again before saying anything.
                self.read_owners().await;
                report = self.look(now_unix_ms());
            }
            let Some(report) = report else {
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

    /// Reads who holds which session; lets go of ledgers whose agent another
    /// replica holds now.
    async fn read_owners(&mut self) {
        let read = async {
            let live: HashSet<String> = self.store.live_replicas().await?.into_iter().collect();
            let by_key: HashMap<String, (String, u64)> = self
                .store
                .session_owners()
                .await?
                .into_iter()
                .map(|s| (s.key, (s.owner, s.epoch)))
                .collect();
            Ok::<_, StoreError>((live, by_key))
        };
        match read.await {
            Ok((live, by_key)) => {
                for ledger in self.state.samples.ledgers() {
                    // A newer session elsewhere (a read from before this replica
                    // reopened the session shows an older epoch, and is ignored).
                    let taken = by_key.get(ledger.key()).is_some_and(|(owner, epoch)| {
                        owner != &self.replica_id && *epoch > ledger.epoch()
                    });
                    if taken {
                        tracing::debug!(
                            agent = ledger.key(),
                            "Another replica holds this agent now; letting its ledger go."
                        );
                        ledger.fence();
                        self.state.samples.forget(ledger.key());
                    }
                }
                self.owners = Owners {
                    by_key,
                    live,
                    read_at: Some(tokio::time::Instant::now()),
                };
            }
            Err(e) => tracing::debug!(
                error = &e as &dyn std::error::Error,
                "Could not read which replicas hold which agents."
            ),
        }
    }

    /// The sources this replica checks now.
    fn duty(&self) -> Duty {
        let mut here = HashSet::new();
        for ledger in self.state.samples.ledgers() {
            let owner = self.owners.by_key.get(ledger.key());
            // Before the first read (or a read older than the session), a ledger
            // here is taken to be held here.
            if owner.is_none_or(|(o, epoch)| o == &self.replica_id || *epoch <= ledger.epoch()) {
                sources_of(ledger.key(), &mut here);
            }
        }
        let anywhere =
            (self.leader.borrow().is_some() && self.owners.read_at.is_some()).then(|| {
                let mut served = HashSet::new();
                for (key, (owner, _)) in &self.owners.by_key {
                    if self.owners.live.contains(owner) {
                        sources_of(key, &mut served);
                    }
                }
                served
            });
        Duty { here, anywhere }
    }

    /// The report of every resource stale at `now_ms` that this replica checks,
    /// if any.
    fn look(&mut self, now_ms: i64) -> Option<Report> {
        let duty = self.duty();
        if duty.anywhere.is_none() {
            self.orphaned_since.clear();
        }
        let horizon = self.state.applied_through(now_ms);
        let model = self.state.read();
        let orphaned_since = &mut self.orphaned_since;
        let missed = self.missed_intervals;
        let mut still_orphaned = HashSet::new();
        let mut changes: Vec<Change> = model
            .resources
            .values()
            // Resources without an interval (Kubernetes objects, ...) are
            // never stale: skipped first, they cost nothing here.
            .filter(|t| t.record.interval_ms > 0 && t.record.health != Health::Unknown)
            .filter_map(|t| {
                let source = &t.record.source;
                let mut last_seen_ms = t.last_seen_ms();
                if !duty.here.contains(source) {
                    let served = duty.anywhere.as_ref()?;
                    if served.contains(source) {
                        return None;
                    }
                    let since = *orphaned_since.entry(t.record.id.clone()).or_insert(now_ms);
                    still_orphaned.insert(t.record.id.clone());
                    last_seen_ms = last_seen_ms.max(since);
                }
                let reason =
                    health::stale_reason(horizon, last_seen_ms, t.record.interval_ms, missed)?;
                Some(Change::Stale {
                    id: t.record.id.clone(),
                    last_seen_ms,
                    reason,
                })
            })
            .collect();
        changes.extend(
            model
                .resources
                .values()
                .filter(|t| transient_gone(t, now_ms))
                .filter(|t| {
                    duty.here.contains(&t.record.source)
                        || duty
                            .anywhere
                            .as_ref()
                            .is_some_and(|served| !served.contains(&t.record.source))
                })
                .map(|t| Change::Removed {
                    id: t.record.id.clone(),
                    reason: Reason {
                        code: "gone".into(),
                        message: "no longer reported by its agent (what it measured went away)"
                            .into(),
                        metric: String::new(),
                        observed: 0.0,
                        threshold: 0.0,
                    },
                }),
        );
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

/// True when `t` is of a transient kind (a pod's usage, ...), UNKNOWN, and
/// silent for [`resource::TRANSIENT_REMOVE_AFTER_INTERVALS`] intervals (and at
/// least [`resource::TRANSIENT_REMOVE_AFTER_MIN_MS`]) at `now_ms`: what it
/// measured went away, and it leaves the model.
fn transient_gone(t: &Tracked, now_ms: i64) -> bool {
    if t.record.health != Health::Unknown
        || !resource::kind::TRANSIENT.contains(&t.record.kind.as_str())
    {
        return false;
    }
    let silent = now_ms - t.last_seen_ms().max(t.observed_at_ms());
    let after = (i64::from(t.record.interval_ms) * resource::TRANSIENT_REMOVE_AFTER_INTERVALS)
        .max(resource::TRANSIENT_REMOVE_AFTER_MIN_MS);
    silent > after
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::ResourceRecord;

    fn tracked(kind: &str, health: Health, seen_ms: i64) -> Tracked {
        Tracked::new(
            ResourceRecord {
                id: "host/m/pod/ns/p".into(),
                kind: kind.into(),
                labels: BTreeMap::new(),
                attributes: BTreeMap::new(),
                relations: Vec::new(),
                health,
                reasons: Vec::new(),
                observed_at_ms: seen_ms,
                version: 3,
                source: "agent-m".into(),
                interval_ms: 15_000,
            },
            seen_ms,
        )
    }

    #[test]
    fn only_silent_unknown_resources_of_transient_kinds_go() {
        let kind = resource::kind::K8S_POD_USAGE;
        // 20 intervals of 15 s are 5 min; the floor of 10 min applies.
        assert!(transient_gone(&tracked(kind, Health::Unknown, 0), 600_001));
        assert!(!transient_gone(&tracked(kind, Health::Unknown, 0), 599_000));
        assert!(!transient_gone(
            &tracked(kind, Health::Healthy, 0),
            10_000_000
        ));
        assert!(!transient_gone(
            &tracked("host", Health::Unknown, 0),
            10_000_000
        ));
    }
}
