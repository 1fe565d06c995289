//! Sources: everything that tells the aggregator about resources. Each source
//! turns what it sees into a [`Report`] and hands it to the one planner
//! (`crate::planner`), which versions the resources, evaluates their health and
//! writes history and outbox rows, whoever the source is. Samples, where a
//! source has any, go to the sample path (`crate::samples`) instead.
//!
//! - [`agent`]: agent streams (mTLS gRPC): batch checks, series budgets, the
//!   per-agent ledger of the sample path, two-level acknowledgements.
//! - [`k8s`]: Kubernetes watches, on the elected leader, one source
//!   `k8s/<cluster>` per cluster.
//! - [`staleness`]: the aggregator itself, marking resources without fresh data
//!   UNKNOWN.
//!
//! A new source (a Kubernetes watcher, a cloud poller) gets a module here: it
//! builds [`Report`]s with a source name of its own (`k8s/<cluster>`, ...) and
//! submits them with [`crate::planner::PlannerHandle::submit`]; nothing else in the
//! state path needs to change.

pub mod agent;
pub mod k8s;
pub mod staleness;

use std::collections::BTreeMap;

use infrawatch_proto::v1::DataGap;

use crate::model::{Health, Reason, Relation};
use crate::store::GapRow;

/// A resource as a source observed it, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Resource id.
    pub id: String,
    /// Kind; empty means the source only refers to a resource it reported
    /// before (it keeps its labels, attributes and relations).
    pub kind: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Outgoing relations, sorted and unique.
    pub relations: Vec<Relation>,
    /// How often the source observes it (0: it never goes stale).
    pub interval_ms: u32,
    /// When it was observed (Unix ms): the newest sample of it, or the time the
    /// source looked.
    pub observed_at_ms: i64,
    /// The health the source assessed itself (a Kubernetes object's conditions
    /// judged against its cluster); `None`: the planner applies the rules of
    /// the kind.
    pub verdict: Option<Verdict>,
}

/// A health state with its reasons, sorted by code.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The health.
    pub health: Health,
    /// Why, when not healthy.
    pub reasons: Vec<Reason>,
}

/// One change a source reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A full observation by the resource's source; the planner evaluates its
    /// health with the rules of its kind.
    Observed(Observation),
    /// The resource has had no fresh data since `last_seen_ms` (the staleness
    /// check): it becomes UNKNOWN with `reason`, unless data arrived since.
    Stale {
        /// The resource.
        id: String,
        /// When data for it last arrived, as the check saw it.
        last_seen_ms: i64,
        /// Why.
        reason: Reason,
    },
    /// The resource no longer exists at its source (a deleted Kubernetes
    /// object): it leaves the model, its row becomes a tombstone, and an event
    /// (`changed` = `deleted`, health UNKNOWN with `reason`) announces it.
    Removed {
        /// The resource.
        id: String,
        /// Why, e.g. `deleted`.
        reason: Reason,
    },
    /// The source lost data before it could send it: stored, and announced by
    /// an event on the host (`changed` = `data_gap`).
    DataGap {
        /// The stored row.
        row: GapRow,
        /// The gap as the agent reported it (carried by the event).
        gap: DataGap,
    },
}

/// Where a report stands in its source's own sequence, stored with the changes
/// so that a report sent again changes nothing twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The source's cursor key.
    pub key: String,
    /// The sequence number of the report.
    pub seq: u64,
    /// The session the report arrived in: the changes are written only while
    /// it holds (another replica that took the source over fences this one).
    pub epoch: u64,
}

/// What one source reports at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Who reports: owns the resources it creates (`agent/...` identities, the
    /// staleness check, later `k8s/<cluster>`, ...).
    pub source: String,
    /// The changes.
    pub changes: Vec<Change>,
    /// The report's place in its source's sequence, if it has one.
    pub position: Option<Position>,
}
