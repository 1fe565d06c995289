//! The protobuf JSON mapping of events (the form `protoc`'s JSON printers and
//! every protobuf library's JSON parser use): lowerCamelCase field names, enum
//! values by name, 64-bit integers as decimal strings. All fields are written,
//! defaults included, so a reader never has to know the defaults.

use infrawatch_proto::v1 as pb;
use serde_json::{Map, Value, json};

use super::StoredEvent;

fn health(value: i32) -> Value {
    match pb::Health::try_from(value) {
        Ok(h) => Value::from(h.as_str_name()),
        // Protobuf JSON writes unknown enum values as numbers.
        Err(_) => Value::from(value),
    }
}

fn number(v: f64) -> Value {
    // JSON has no NaN or infinities; protobuf JSON spells them as strings.
    if v.is_nan() {
        Value::from("NaN")
    } else if v.is_infinite() {
        Value::from(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Value::from(v)
    }
}

/// `InfrastructureStatusUpdatedEvent` as protobuf JSON.
pub fn event_json(e: &pb::InfrastructureStatusUpdatedEvent) -> Value {
    let labels: Map<String, Value> = {
        let mut pairs: Vec<_> = e.labels.iter().collect();
        pairs.sort();
        pairs
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect()
    };
    json!({
        "eventId": e.event_id,
        "resourceId": e.resource_id,
        "resourceKind": e.resource_kind,
        "resourceVersion": e.resource_version.to_string(),
        "previousHealth": health(e.previous_health),
        "health": health(e.health),
        "reasons": e.reasons.iter().map(|r| json!({
            "code": r.code,
            "message": r.message,
            "metric": r.metric,
            "observed": number(r.observed),
            "threshold": number(r.threshold),
        })).collect::<Vec<_>>(),
        "changed": e.changed,
        "labels": labels,
        "observedAtUnixMs": e.observed_at_unix_ms.to_string(),
        "emittedAtUnixMs": e.emitted_at_unix_ms.to_string(),
        "source": e.source,
        "gap": e.gap.as_ref().map(gap_json),
    })
}

/// `DataGap` as protobuf JSON.
pub fn gap_json(g: &pb::DataGap) -> Value {
    json!({
        "firstSeq": g.first_seq.to_string(),
        "lastSeq": g.last_seq.to_string(),
        "fromUnixMs": g.from_unix_ms.to_string(),
        "toUnixMs": g.to_unix_ms.to_string(),
        "samplesLost": g.samples_lost.to_string(),
        "batchesLost": g.batches_lost.to_string(),
        "cause": g.cause,
        "exact": g.exact,
    })
}

/// `EventEnvelope` (position and event) as protobuf JSON.
pub fn envelope_json(e: &StoredEvent) -> Value {
    json!({
        "position": e.position.to_string(),
        "event": event_json(&e.event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_enums_and_64_bit_integers_follow_protobuf_json() {
        let e = pb::InfrastructureStatusUpdatedEvent {
            event_id: "0190b1c2-0000-7000-8000-000000000000".into(),
            resource_id: "host/a".into(),
            resource_kind: "host".into(),
            resource_version: 7,
            previous_health: pb::Health::Healthy as i32,
            health: pb::Health::Unhealthy as i32,
            reasons: vec![pb::HealthReason {
                code: "cpu_high".into(),
                message: "cpu 97%".into(),
                metric: "system.cpu.utilization".into(),
                observed: 0.97,
                threshold: f64::NAN,
            }],
            changed: vec!["health".into()],
            labels: [("node".to_string(), "n1".to_string())].into(),
            observed_at_unix_ms: 1_790_000_000_000,
            emitted_at_unix_ms: 1_790_000_000_100,
            source: "agent-a".into(),
            gap: None,
        };
        let v = envelope_json(&StoredEvent::new(12, e, None));
        assert_eq!(v["position"], "12");
        let e = &v["event"];
        assert_eq!(e["resourceVersion"], "7");
        assert_eq!(e["previousHealth"], "HEALTH_HEALTHY");
        assert_eq!(e["health"], "HEALTH_UNHEALTHY");
        assert_eq!(e["reasons"][0]["threshold"], "NaN");
        assert_eq!(e["observedAtUnixMs"], "1790000000000");
        assert_eq!(e["labels"]["node"], "n1");
    }
}
