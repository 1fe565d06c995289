//! The in-memory model: current resources, recent samples, agent cursors and the
//! count of connected agents. Queries read it; only the ingest writer changes it,
//! and only after the database has committed the same change.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::model::ResourceRecord;
use crate::series::SeriesStore;

/// A resource and when data for it last arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    /// Current state.
    pub record: ResourceRecord,
    /// When the last batch mentioning it was applied (Unix ms, this process's clock).
    pub last_seen_ms: i64,
}

/// Everything behind the lock.
#[derive(Debug)]
pub struct Model {
    /// Resources by id, so listing is ordered and cursor pagination is a range scan.
    pub resources: BTreeMap<String, Tracked>,
    /// Recent samples.
    pub series: SeriesStore,
    /// Highest applied seq per agent identity.
    pub cursors: HashMap<String, u64>,
}

/// Shared state. Locks are held only for in-memory work, never across an await.
#[derive(Debug)]
pub struct State {
    model: RwLock<Model>,
    connected_agents: AtomicU64,
}

impl State {
    /// Empty state keeping `hot_window_ms` of samples.
    pub fn new(hot_window_ms: u64) -> Self {
        Self {
            model: RwLock::new(Model {
                resources: BTreeMap::new(),
                series: SeriesStore::new(hot_window_ms),
                cursors: HashMap::new(),
            }),
            connected_agents: AtomicU64::new(0),
        }
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
