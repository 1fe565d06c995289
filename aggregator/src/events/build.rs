//! Builds the event for one new version of a resource.
//!
//! An event is emitted for every new `resource_version`, and a version is created
//! only when a field consumers care about changes (see
//! [`crate::model::changed_fields`]): health, the set of reason codes, labels,
//! attributes, relations, kind, reporting source or interval, or the resource
//! appearing. A new sample that changes none of these emits nothing.

use std::collections::BTreeMap;

use infrawatch_proto::v1 as pb;

use crate::model::{Health, ResourceRecord, reason_to_proto};

/// Resource labels that fill the event's short topology labels.
const TOPOLOGY_LABELS: &[(&str, &[&str])] = &[
    ("cluster", &["k8s.cluster.name"]),
    ("namespace", &["k8s.namespace.name"]),
    ("node", &["k8s.node.name", "host.name"]),
    ("cloud", &["cloud.provider"]),
    ("region", &["cloud.region"]),
];

/// The event announcing `record` (already at its new version), which had
/// `previous_health` before. `source` names the observer; `now_ms` is the emission
/// time.
pub fn event_for(
    record: &ResourceRecord,
    previous_health: Health,
    changed: &[&str],
    source: &str,
    now_ms: i64,
) -> pb::InfrastructureStatusUpdatedEvent {
    pb::InfrastructureStatusUpdatedEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        resource_id: record.id.clone(),
        resource_kind: record.kind.clone(),
        resource_version: record.version,
        previous_health: previous_health as i32,
        health: record.health as i32,
        reasons: record.reasons.iter().map(reason_to_proto).collect(),
        changed: changed.iter().map(|c| c.to_string()).collect(),
        labels: event_labels(record).into_iter().collect(),
        observed_at_unix_ms: record.observed_at_ms,
        emitted_at_unix_ms: now_ms,
        source: source.to_string(),
        gap: None,
    }
}

/// The value of topology label `short` (`cluster`, `namespace`, ...) of
/// `record`, as its events carry it (see [`event_labels`]).
pub fn topology_label<'a>(record: &'a ResourceRecord, short: &str) -> Option<&'a str> {
    if let Some(v) = record.labels.get(short) {
        return Some(v);
    }
    let (_, sources) = TOPOLOGY_LABELS.iter().find(|(s, _)| *s == short)?;
    sources
        .iter()
        .find_map(|k| {
            record
                .labels
                .get(*k)
                .or_else(|| record.attributes.get(*k))
                .filter(|v| !v.is_empty())
        })
        .map(String::as_str)
}

/// The resource's labels plus the short topology labels (`cluster`, `namespace`,
/// `node`, `cloud`, `region`) where the resource has them, from its labels or
/// attributes. A resource label with the same short name wins.
pub fn event_labels(record: &ResourceRecord) -> BTreeMap<String, String> {
    let mut labels = record.labels.clone();
    for (short, sources) in TOPOLOGY_LABELS {
        if labels.contains_key(*short) {
            continue;
        }
        let value = sources.iter().find_map(|k| {
            record
                .labels
                .get(*k)
                .or_else(|| record.attributes.get(*k))
                .filter(|v| !v.is_empty())
        });
        if let Some(v) = value {
            labels.insert(short.to_string(), v.clone());
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_labels_come_from_labels_then_attributes() {
        let mut r = ResourceRecord {
            id: "host/m1".into(),
            kind: "host".into(),
            labels: BTreeMap::from([
                ("host.name".into(), "n1".into()),
                ("k8s.cluster.name".into(), "prod".into()),
            ]),
            attributes: BTreeMap::from([("cloud.region".into(), "eu-west-1".into())]),
            relations: vec![],
            health: Health::Unhealthy,
            reasons: vec![],
            observed_at_ms: 5,
            version: 3,
            source: "agent-a".into(),
            interval_ms: 1000,
        };
        let e = event_for(&r, Health::Healthy, &["health"], "agent-a", 9);
        assert_eq!(e.labels["cluster"], "prod");
        assert_eq!(e.labels["node"], "n1");
        assert_eq!(e.labels["region"], "eu-west-1");
        assert!(!e.labels.contains_key("namespace"));
        assert_eq!(e.resource_version, 3);
        assert_eq!(e.previous_health, Health::Healthy as i32);
        assert_eq!(
            uuid::Uuid::parse_str(&e.event_id)
                .unwrap()
                .get_version_num(),
            7
        );
        r.labels.insert("node".into(), "explicit".into());
        assert_eq!(event_labels(&r)["node"], "explicit");
    }
}
