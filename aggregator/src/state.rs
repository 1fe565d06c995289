//! The in-memory model: current resources, recent samples (the sample path's
//! store) and what is known of connected agents. Queries read it; only the
//! planner changes resources, and only after the database has committed the same
//! change. Streams note under the read lock, through atomics, when a resource was
//! last seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::model::ResourceRecord;
use crate::samples::SampleStore;
use crate::store::Tombstone;

/// A resource and when data for it last arrived.
#[derive(Debug)]
pub struct Tracked {
    /// Current state, as stored.
    pub record: ResourceRecord,
    /// When the last report mentioning it was applied (Unix ms, this process's
    /// clock).
    last_seen_ms: AtomicI64,
    /// When it was last observed: newer than `record.observed_at_ms` when later
    /// observations changed nothing (those are not stored).
    observed_at_ms: AtomicI64,
}

impl Tracked {
    /// `record`, last seen at `seen_ms`.
    pub fn new(record: ResourceRecord, seen_ms: i64) -> Self {
        let observed = record.observed_at_ms;
        Self {
            record,
            last_seen_ms: AtomicI64::new(seen_ms),
            observed_at_ms: AtomicI64::new(observed),
        }
    }

    /// When data for it last arrived.
    pub fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// When it was last observed.
    pub fn observed_at_ms(&self) -> i64 {
        self.observed_at_ms
            .load(Ordering::Relaxed)
            .max(self.record.observed_at_ms)
    }

    /// Notes data that arrived at `now_ms`, observed at `observed_at_ms`.
    pub fn seen(&self, now_ms: i64, observed_at_ms: i64) {
        self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.observed_at_ms
            .fetch_max(observed_at_ms, Ordering::Relaxed);
    }
}

/// Everything behind the lock.
#[derive(Debug)]
pub struct Model {
    /// Resources by id, so listing is ordered and cursor pagination is a range scan.
    pub resources: BTreeMap<String, Tracked>,
    /// Deleted resources by id: a resource created again continues from the
    /// tombstone's version.
    pub tombstones: HashMap<String, Tombstone>,
}

impl Model {
    /// The parts of host `host_id` (its filesystems, disks and interfaces), by
    /// id: a range of the ordered map, not a scan.
    pub fn parts_of<'a>(
        &'a self,
        host_id: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Tracked)> {
        let prefix = format!("{host_id}/");
        self.resources
            .range(prefix.clone()..)
            .take_while(move |(id, _)| id.starts_with(&prefix))
            .filter(move |(id, _)| infrawatch_common::resource::host_of_part(id) == Some(host_id))
            .map(|(id, t)| (id.as_str(), t))
    }

    /// Ids of the tombstones of resources deleted before `cutoff_ms`.
    pub fn expired_tombstones(&self, cutoff_ms: i64) -> Vec<String> {
        self.tombstones
            .iter()
            .filter(|(_, t)| t.deleted_at_ms < cutoff_ms)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Drops the tombstones `ids` that are still of deletions before
    /// `cutoff_ms`; returns how many went.
    pub fn drop_tombstones(&mut self, ids: &[String], cutoff_ms: i64) -> usize {
        let before = self.tombstones.len();
        for id in ids {
            if self
                .tombstones
                .get(id)
                .is_some_and(|t| t.deleted_at_ms < cutoff_ms)
            {
                self.tombstones.remove(id);
            }
        }
        before - self.tombstones.len()
    }
}

/// What the aggregator knows about one agent (by cursor key: identity and
/// machine id), for operators: `GET /api/v1/agents`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// Identity from the client certificate.
    pub identity: String,
    /// Name the agent announced.
    pub name: String,
    /// Version the agent announced.
    pub version: String,
    /// Open streams.
    pub streams: u32,
    /// When its last batch arrived (this process's clock, Unix ms).
    pub last_batch_ms: i64,
    /// Its last batch's sequence number.
    pub last_seq: u64,
    /// Its clock minus ours when it sent its last batch (ms; network delay
    /// included), if it said when it sent it.
    pub clock_skew_ms: Option<i64>,
}

/// Clock skew beyond which an agent is reported in the log.
pub const CLOCK_SKEW_WARNING_MS: i64 = 5_000;

/// Shared state. Locks are held only for in-memory work, never across an await.
#[derive(Debug)]
pub struct State {
    model: RwLock<Model>,
    /// Recent samples and unflushed rollups (their own locks, not the model's).
    pub samples: Arc<SampleStore>,
    /// The health rules in force (built-in and from rule files).
    pub rules: Arc<crate::rules::Rules>,
    connected_agents: AtomicU64,
    agents: Mutex<BTreeMap<String, AgentStatus>>,
    /// Batches received and not yet applied, by arrival time (Unix ms).
    unapplied: Arc<Mutex<BTreeMap<i64, usize>>>,
}

impl State {
    /// Empty state keeping `hot_window_ms` of samples.
    pub fn new(hot_window_ms: u64) -> Self {
        Self {
            model: RwLock::new(Model {
                resources: BTreeMap::new(),
                tombstones: HashMap::new(),
            }),
            samples: Arc::new(SampleStore::new(hot_window_ms)),
            rules: Arc::default(),
            connected_agents: AtomicU64::new(0),
            agents: Mutex::new(BTreeMap::new()),
            unapplied: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn agents_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, AgentStatus>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a stream opening (`opened`) or closing for agent `key`.
    pub fn agent_stream(&self, key: &str, identity: &str, name: &str, version: &str, opened: bool) {
        let mut agents = self.agents_lock();
        let a = agents.entry(key.to_string()).or_default();
        a.identity = identity.to_string();
        if opened {
            a.name = name.to_string();
            a.version = version.to_string();
            a.streams += 1;
        } else {
            a.streams = a.streams.saturating_sub(1);
        }
    }

    /// Records a batch of agent `key` sent at `sent_at_ms` (its clock; 0 when it
    /// did not say) and received at `now_ms`. Returns the skew when it crossed
    /// [`CLOCK_SKEW_WARNING_MS`] (either way), so the caller can log it once.
    pub fn agent_batch(&self, key: &str, seq: u64, sent_at_ms: i64, now_ms: i64) -> Option<i64> {
        let mut agents = self.agents_lock();
        let a = agents.entry(key.to_string()).or_default();
        a.last_batch_ms = now_ms;
        a.last_seq = seq;
        if sent_at_ms == 0 {
            return None;
        }
        let skew = sent_at_ms.saturating_sub(now_ms);
        let was_off = a
            .clock_skew_ms
            .is_some_and(|s| s.abs() > CLOCK_SKEW_WARNING_MS);
        a.clock_skew_ms = Some(skew);
        let is_off = skew.abs() > CLOCK_SKEW_WARNING_MS;
        // Only agents whose clock is (or was) off get a series, so a large fleet
        // of agents with good clocks does not make one gauge each.
        if is_off || was_off {
            metrics::gauge!(crate::telemetry::CLOCK_SKEW, "agent" => key.to_string())
                .set(skew as f64 / 1000.0);
        }
        (was_off != is_off).then_some(skew)
    }

    /// Notes a batch that arrived at `received_ms` and waits to be applied; the
    /// note lasts until the returned guard is dropped (once the batch is applied
    /// or failed).
    pub fn batch_received(&self, received_ms: i64) -> Unapplied {
        let mut unapplied = self.unapplied.lock().unwrap_or_else(|p| p.into_inner());
        *unapplied.entry(received_ms).or_insert(0) += 1;
        Unapplied {
            unapplied: self.unapplied.clone(),
            received_ms,
        }
    }

    /// The time up to which every batch received has been applied: `now_ms`, or
    /// the arrival time of the oldest batch still waiting. A resource can only be
    /// judged stale against this time, not against the clock, or a writer that is
    /// behind would mark live resources stale while their data waits in the queue.
    pub fn applied_through(&self, now_ms: i64) -> i64 {
        let unapplied = self.unapplied.lock().unwrap_or_else(|p| p.into_inner());
        unapplied
            .keys()
            .next()
            .map_or(now_ms, |oldest| (*oldest).min(now_ms))
    }

    /// Every agent seen since this process started, by key.
    pub fn agents(&self) -> Vec<(String, AgentStatus)> {
        self.agents_lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Read access.
    pub fn read(&self) -> RwLockReadGuard<'_, Model> {
        // The writer's updates under this lock are plain map inserts that cannot
        // panic halfway in practice; should one, serving the model as it stands beats
        // taking every query down with the poison.
        self.model.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Write access (the ingest writer only).
    pub fn write(&self) -> RwLockWriteGuard<'_, Model> {
        self.model.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the tombstones of resources deleted before `cutoff_ms`; returns
    /// how many. They are looked for under the read lock, so queries go on
    /// meanwhile, and only those found are removed under the write lock.
    pub fn prune_tombstones(&self, cutoff_ms: i64) -> usize {
        let expired = self.read().expired_tombstones(cutoff_ms);
        if expired.is_empty() {
            return 0;
        }
        self.write().drop_tombstones(&expired, cutoff_ms)
    }

    /// Agents with an open stream.
    pub fn connected_agents(&self) -> u64 {
        self.connected_agents.load(Ordering::Relaxed)
    }

    /// Counts a stream as connected until the guard is dropped.
    pub fn agent_connected(self: &Arc<Self>) -> ConnectedGuard {
        let n = self.connected_agents.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(crate::telemetry::CONNECTED_AGENTS).set(n as f64);
        ConnectedGuard(self.clone())
    }
}

/// A received batch not yet applied; dropping it says it was.
#[derive(Debug)]
pub struct Unapplied {
    unapplied: Arc<Mutex<BTreeMap<i64, usize>>>,
    received_ms: i64,
}

impl Drop for Unapplied {
    fn drop(&mut self) {
        let mut unapplied = self.unapplied.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = unapplied.get_mut(&self.received_ms) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                unapplied.remove(&self.received_ms);
            }
        }
    }
}

/// Decrements the connected-agent count when dropped.
#[derive(Debug)]
pub struct ConnectedGuard(Arc<State>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        let n = self
            .0
            .connected_agents
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!(crate::telemetry::CONNECTED_AGENTS).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tombstone(version: u64, deleted_at_ms: i64) -> Tombstone {
        Tombstone {
            version,
            deleted_at_ms,
        }
    }

    #[test]
    fn tombstones_older_than_the_cutoff_are_forgotten() {
        let state = State::new(60_000);
        {
            let mut model = state.write();
            model
                .tombstones
                .insert("pod/old".into(), tombstone(3, 1_000));
            model
                .tombstones
                .insert("pod/edge".into(), tombstone(2, 2_000));
            model
                .tombstones
                .insert("pod/new".into(), tombstone(5, 3_000));
        }
        assert_eq!(state.prune_tombstones(2_000), 1);
        let model = state.read();
        let mut left: Vec<&str> = model.tombstones.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["pod/edge", "pod/new"], "not before the cutoff");
        drop(model);
        assert_eq!(state.prune_tombstones(2_000), 0, "nothing left to forget");
    }

    #[test]
    fn a_tombstone_renewed_meanwhile_stays() {
        let mut model = Model {
            resources: BTreeMap::new(),
            tombstones: HashMap::from([("pod/a".to_string(), tombstone(1, 1_000))]),
        };
        let expired = model.expired_tombstones(2_000);
        assert_eq!(expired, vec!["pod/a".to_string()]);
        // Created again and deleted again between the look and the removal.
        model.tombstones.insert("pod/a".into(), tombstone(3, 5_000));
        assert_eq!(model.drop_tombstones(&expired, 2_000), 0);
        assert_eq!(model.tombstones.get("pod/a"), Some(&tombstone(3, 5_000)));
    }

    #[test]
    fn applied_through_waits_for_the_oldest_unapplied_batch() {
        let state = State::new(60_000);
        assert_eq!(state.applied_through(1_000), 1_000);
        let first = state.batch_received(100);
        let second = state.batch_received(200);
        let again = state.batch_received(200);
        assert_eq!(state.applied_through(1_000), 100);
        drop(first);
        assert_eq!(state.applied_through(1_000), 200);
        drop(second);
        assert_eq!(state.applied_through(1_000), 200);
        drop(again);
        assert_eq!(state.applied_through(1_000), 1_000);
    }
}
