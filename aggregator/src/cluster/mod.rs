//! Replicas on one database: who this replica is, its heartbeat, and the leader
//! lease ([`lease`]) under which cluster-wide work runs ([`leader`]).
//!
//! Any replica serves any agent and any query; only the work that must happen
//! once for the whole cluster runs on the leader: the event sequencer, the
//! publishers, outbox retention and the staleness check of resources no replica
//! serves. A replica that stops gracefully gives the lease up; one that dies is
//! replaced when its lease runs out.

pub mod leader;
pub mod lease;

use serde::{Deserialize, Serialize};

/// Settings of `[cluster]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This replica's name in the database (leases, sessions, heartbeats);
    /// empty: the host name and a random suffix, new at every start.
    pub replica_id: String,
    /// How long a lease (and a heartbeat) lasts, in ms: a dead leader is
    /// replaced within this time. Renewed every third of it.
    pub lease_ttl_ms: u64,
    /// How often a replica looks for events other replicas committed, in ms
    /// (its own it sees at once): the bound on how stale another replica's
    /// changes are in this one's answers.
    pub poll_interval_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            replica_id: String::new(),
            lease_ttl_ms: 10_000,
            poll_interval_ms: 50,
        }
    }
}

impl ClusterConfig {
    /// Problems with the settings, by field.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(1_000..=300_000).contains(&self.lease_ttl_ms) {
            out.push((
                "cluster.lease_ttl_ms",
                "must be between 1000 and 300000".to_string(),
            ));
        }
        if !(5..=10_000).contains(&self.poll_interval_ms) {
            out.push((
                "cluster.poll_interval_ms",
                "must be between 5 and 10000".to_string(),
            ));
        }
        let id_ok = self.replica_id.len() <= 128
            && self
                .replica_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !id_ok {
            out.push((
                "cluster.replica_id",
                "must be at most 128 letters, digits, '-', '_' or '.'".to_string(),
            ));
        }
        out
    }

    /// The replica id to use: the configured one, or the host name with a
    /// random suffix.
    pub fn resolved_replica_id(&self) -> String {
        if !self.replica_id.is_empty() {
            return self.replica_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            .take(64)
            .collect();
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let suffix = &suffix[suffix.len() - 8..];
        if host.is_empty() {
            format!("replica-{suffix}")
        } else {
            format!("{host}-{suffix}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_checked_and_generated() {
        assert!(ClusterConfig::default().problems().is_empty());
        let bad = ClusterConfig {
            replica_id: "a b".into(),
            lease_ttl_ms: 10,
            poll_interval_ms: 0,
        };
        assert_eq!(bad.problems().len(), 3);
        let id = ClusterConfig::default().resolved_replica_id();
        assert!(
            !id.is_empty()
                && ClusterConfig {
                    replica_id: id,
                    ..ClusterConfig::default()
                }
                .problems()
                .is_empty()
        );
    }
}
