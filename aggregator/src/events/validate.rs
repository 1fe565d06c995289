//! The checks an event passes before it enters the outbox. An event that fails is
//! written to the dead-letter table with the reason (in the same transaction as the
//! state change) and counted; it is never published and never silently dropped.

use infrawatch_common::resource::validate_resource_id;
use infrawatch_proto::v1 as pb;

use crate::model::Health;

/// Earliest plausible observation time: 2000-01-01T00:00:00Z.
const EARLIEST_MS: i64 = 946_684_800_000;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct InvalidEvent {
    /// Stable snake_case code, the `reason` label of the counter.
    pub code: &'static str,
    /// What exactly is wrong.
    pub detail: String,
}

fn invalid(code: &'static str, detail: String) -> InvalidEvent {
    InvalidEvent { code, detail }
}

/// Bounds the checks need.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The emitting process's clock (Unix ms).
    pub now_ms: i64,
    /// How far in the future an observation may lie (agent clock skew).
    pub max_future_skew_ms: i64,
}

/// Checks `event`, whose resource had version `previous_version` before (0 when it
/// is new).
pub fn validate(
    event: &pb::InfrastructureStatusUpdatedEvent,
    previous_version: u64,
    bounds: Bounds,
) -> Result<(), InvalidEvent> {
    match uuid::Uuid::parse_str(&event.event_id) {
        Ok(id) if id.get_version_num() == 7 => {}
        Ok(_) => {
            return Err(invalid(
                "event_id",
                format!("{:?} is not a UUIDv7", event.event_id),
            ));
        }
        Err(e) => {
            return Err(invalid(
                "event_id",
                format!("{:?} is not a UUID: {e}", event.event_id),
            ));
        }
    }
    validate_resource_id(&event.resource_id).map_err(|e| invalid("resource_id", e))?;
    if event.resource_kind.is_empty() {
        return Err(invalid("resource_kind", "is empty".into()));
    }
    if event.resource_version != previous_version.saturating_add(1) {
        return Err(invalid(
            "resource_version",
            format!(
                "{} does not follow the previous version {previous_version}",
                event.resource_version
            ),
        ));
    }
    for (field, value) in [
        ("health", event.health),
        ("previous_health", event.previous_health),
    ] {
        match Health::try_from(value) {
            Ok(Health::Unspecified) | Err(_) => {
                return Err(invalid(
                    "health",
                    format!("{field} {value} is not a health state"),
                ));
            }
            Ok(_) => {}
        }
    }
    if event.changed.is_empty() {
        return Err(invalid("changed", "names no changed field".into()));
    }
    let latest = bounds.now_ms.saturating_add(bounds.max_future_skew_ms);
    if !(EARLIEST_MS..=latest).contains(&event.observed_at_unix_ms) {
        return Err(invalid(
            "observed_at",
            format!(
                "{} ms is before 2000 or more than {} ms ahead of the aggregator's clock",
                event.observed_at_unix_ms, bounds.max_future_skew_ms
            ),
        ));
    }
    if event.emitted_at_unix_ms != bounds.now_ms {
        return Err(invalid(
            "emitted_at",
            format!(
                "{} ms is not the emission time {} ms",
                event.emitted_at_unix_ms, bounds.now_ms
            ),
        ));
    }
    if event.source.is_empty() {
        return Err(invalid("source", "is empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    fn bounds() -> Bounds {
        Bounds {
            now_ms: NOW,
            max_future_skew_ms: 600_000,
        }
    }

    fn event() -> pb::InfrastructureStatusUpdatedEvent {
        pb::InfrastructureStatusUpdatedEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            resource_id: "host/abc".into(),
            resource_kind: "host".into(),
            resource_version: 4,
            previous_health: Health::Healthy as i32,
            health: Health::Unhealthy as i32,
            reasons: vec![],
            changed: vec!["health".into()],
            labels: Default::default(),
            observed_at_unix_ms: NOW - 1000,
            emitted_at_unix_ms: NOW,
            source: "agent-a".into(),
            gap: None,
        }
    }

    #[test]
    fn a_well_formed_event_passes() {
        assert_eq!(validate(&event(), 3, bounds()), Ok(()));
    }

    type Spoil = Box<dyn Fn(&mut pb::InfrastructureStatusUpdatedEvent)>;

    #[test]
    fn each_defect_is_named() {
        let cases: Vec<(&str, Spoil, u64)> = vec![
            ("event_id", Box::new(|e| e.event_id = "nope".into()), 3),
            (
                "event_id",
                Box::new(|e| e.event_id = "550e8400-e29b-41d4-a716-446655440000".into()),
                3,
            ),
            ("resource_id", Box::new(|e| e.resource_id = "".into()), 3),
            ("resource_kind", Box::new(|e| e.resource_kind.clear()), 3),
            ("resource_version", Box::new(|_| {}), 4),
            ("resource_version", Box::new(|_| {}), 1),
            ("health", Box::new(|e| e.health = 0), 3),
            ("health", Box::new(|e| e.previous_health = 99), 3),
            ("changed", Box::new(|e| e.changed.clear()), 3),
            (
                "observed_at",
                Box::new(|e| e.observed_at_unix_ms = NOW + 700_000),
                3,
            ),
            ("observed_at", Box::new(|e| e.observed_at_unix_ms = 5), 3),
            ("emitted_at", Box::new(|e| e.emitted_at_unix_ms = 0), 3),
            ("source", Box::new(|e| e.source.clear()), 3),
        ];
        for (code, spoil, previous) in cases {
            let mut e = event();
            spoil(&mut e);
            let err = validate(&e, previous, bounds()).unwrap_err();
            assert_eq!(err.code, code, "{err}");
        }
    }
}
