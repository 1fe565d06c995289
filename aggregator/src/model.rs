//! The aggregator's view of a resource, and its conversion to the wire types.

use std::collections::BTreeMap;

use infrawatch_proto::v1 as pb;
use serde::{Deserialize, Serialize};

pub use pb::Health;

/// A machine-readable reason for a health state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Stable snake_case code, e.g. `cpu_high`.
    pub code: String,
    /// Readable explanation with the figures.
    pub message: String,
    /// Metric behind the reason, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metric: String,
    /// Observed value (average over the evaluation window).
    #[serde(default)]
    pub observed: f64,
    /// Threshold crossed.
    #[serde(default)]
    pub threshold: f64,
}

/// A typed edge from this resource to another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Relation {
    /// runs_on, part_of, member_of, selects, backed_by, attached_to or depends_on.
    pub relation_type: String,
    /// Target resource id.
    pub to_id: String,
}

/// The current state of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRecord {
    /// Stable id.
    pub id: String,
    /// Kind, e.g. `host`.
    pub kind: String,
    /// Labels for selection.
    pub labels: BTreeMap<String, String>,
    /// Descriptive attributes.
    pub attributes: BTreeMap<String, String>,
    /// Outgoing relations, sorted.
    pub relations: Vec<Relation>,
    /// Current health.
    pub health: Health,
    /// Why, when not healthy.
    pub reasons: Vec<Reason>,
    /// When the data behind this state was observed (Unix ms).
    pub observed_at_ms: i64,
    /// Grows by one per change.
    pub version: u64,
    /// Agent identity or watcher that reports it.
    pub source: String,
    /// Expected reporting interval, for stale detection (0 = never stale).
    pub interval_ms: u32,
}

impl ResourceRecord {
    /// The wire form, with `latest` values supplied by the caller.
    pub fn to_proto(&self, latest: Vec<pb::LatestValue>) -> pb::Resource {
        pb::Resource {
            id: self.id.clone(),
            kind: self.kind.clone(),
            labels: self.labels.clone().into_iter().collect(),
            attributes: self.attributes.clone().into_iter().collect(),
            health: self.health as i32,
            reasons: self.reasons.iter().map(reason_to_proto).collect(),
            observed_at_unix_ms: self.observed_at_ms,
            resource_version: self.version,
            source: self.source.clone(),
            relations: self
                .relations
                .iter()
                .map(|r| pb::Relation {
                    from_id: self.id.clone(),
                    relation_type: r.relation_type.clone(),
                    to_id: r.to_id.clone(),
                })
                .collect(),
            latest,
            parts: Vec::new(),
        }
    }
}

/// Wire form of a reason.
pub fn reason_to_proto(r: &Reason) -> pb::HealthReason {
    pb::HealthReason {
        code: r.code.clone(),
        message: r.message.clone(),
        metric: r.metric.clone(),
        observed: r.observed,
        threshold: r.threshold,
    }
}

/// What changed between two versions of a resource, in the event vocabulary.
pub fn changed_fields(
    before: Option<&ResourceRecord>,
    after: &ResourceRecord,
) -> Vec<&'static str> {
    let Some(b) = before else {
        return vec!["created"];
    };
    let mut changed = Vec::new();
    if b.health != after.health {
        changed.push("health");
    }
    let codes = |r: &ResourceRecord| r.reasons.iter().map(|x| x.code.clone()).collect::<Vec<_>>();
    if codes(b) != codes(after) {
        changed.push("reasons");
    }
    if b.labels != after.labels {
        changed.push("labels");
    }
    if b.attributes != after.attributes {
        changed.push("attributes");
    }
    if b.relations != after.relations {
        changed.push("relations");
    }
    if b.kind != after.kind {
        changed.push("kind");
    }
    if b.source != after.source {
        changed.push("source");
    }
    if b.interval_ms != after.interval_ms {
        changed.push("interval");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ResourceRecord {
        ResourceRecord {
            id: "host/a".into(),
            kind: "host".into(),
            labels: BTreeMap::new(),
            attributes: BTreeMap::new(),
            relations: vec![],
            health: Health::Healthy,
            reasons: vec![],
            observed_at_ms: 1,
            version: 1,
            source: "agent-a".into(),
            interval_ms: 1000,
        }
    }

    #[test]
    fn reason_message_changes_are_not_changes() {
        let a = record();
        let mut b = a.clone();
        b.observed_at_ms = 99;
        assert!(changed_fields(Some(&a), &b).is_empty());
        b.health = Health::Degraded;
        b.reasons.push(Reason {
            code: "cpu_high".into(),
            message: "92%".into(),
            metric: String::new(),
            observed: 0.92,
            threshold: 0.9,
        });
        assert_eq!(changed_fields(Some(&a), &b), vec!["health", "reasons"]);
        let mut c = b.clone();
        c.reasons[0].message = "93%".into();
        assert!(changed_fields(Some(&b), &c).is_empty());
        assert_eq!(changed_fields(None, &a), vec!["created"]);
    }
}
