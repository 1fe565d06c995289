//! Availability (SLA) of a resource over a window: how long it spent in each
//! health, from its health history, and the share of the time it was known
//! that it was HEALTHY. Time before the resource existed, or after it was
//! deleted, counts for nothing.

use infrawatch_proto::v1 as pb;

use crate::model::Health;
use crate::query::QueryError;
use crate::state::State;
use crate::store::{HistoryEntry, Store};

/// History entries one answer reads at most (a resource flapping every
/// minute for 30 days has about 43,000).
pub const MAX_ENTRIES: u32 = 100_000;

/// The longest window asked for: 90 days.
pub const MAX_WINDOW_MS: i64 = 90 * 86_400_000;

/// Time in each health over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durations {
    /// HEALTHY.
    pub healthy_ms: i64,
    /// DEGRADED.
    pub degraded_ms: i64,
    /// UNHEALTHY.
    pub unhealthy_ms: i64,
    /// UNKNOWN (no data, or not judged yet).
    pub unknown_ms: i64,
}

impl Durations {
    /// Time the resource existed within the window.
    pub fn existing_ms(&self) -> i64 {
        self.healthy_ms + self.degraded_ms + self.unhealthy_ms + self.unknown_ms
    }

    /// The share of the time it existed that it was HEALTHY; `None` if it did
    /// not exist in the window.
    pub fn healthy_share(&self) -> Option<f64> {
        let all = self.existing_ms();
        (all > 0).then(|| self.healthy_ms as f64 / all as f64)
    }

    fn add(&mut self, health: Health, ms: i64) {
        let slot = match health {
            Health::Healthy => &mut self.healthy_ms,
            Health::Degraded => &mut self.degraded_ms,
            Health::Unhealthy => &mut self.unhealthy_ms,
            Health::Unknown | Health::Unspecified => &mut self.unknown_ms,
        };
        *slot += ms.max(0);
    }
}

/// Time in each health over `(from_ms, to_ms]` from `history` (oldest first,
/// the first entry possibly before the window: the state it starts in). A
/// `deleted` entry ends the resource's time until a later entry brings it
/// back.
pub fn durations(history: &[HistoryEntry], from_ms: i64, to_ms: i64) -> Durations {
    let mut out = Durations::default();
    // (since, health) while the resource exists.
    let mut current: Option<(i64, Health)> = None;
    let mut last_at = from_ms;
    for e in history {
        // Observation times may step back (a replayed backlog): never count
        // time twice.
        let at = e.observed_at_ms.clamp(last_at, to_ms.max(last_at));
        last_at = at;
        if let Some((since, health)) = current.take() {
            out.add(health, at - since);
        }
        let deleted = e.changed.iter().any(|c| c == "deleted");
        if !deleted {
            current = Some((at.max(from_ms), e.health));
        }
    }
    if let Some((since, health)) = current {
        out.add(health, to_ms - since);
    }
    out
}

/// A window length: `<n>d` days, `<n>h` hours, or milliseconds.
pub fn parse_window(text: &str) -> Option<i64> {
    let (number, unit) = match text.strip_suffix('d') {
        Some(n) => (n, 86_400_000),
        None => match text.strip_suffix('h') {
            Some(n) => (n, 3_600_000),
            None => (text, 1),
        },
    };
    let n: i64 = number.parse().ok()?;
    (n > 0).then(|| n.saturating_mul(unit))
}

/// The window `(from, to]` asked for: `to` 0 is `now_ms`, `from` 0 one day
/// before `to`.
pub fn window(from_ms: i64, to_ms: i64, now_ms: i64) -> (i64, i64) {
    let to = if to_ms == 0 { now_ms } else { to_ms };
    let from = if from_ms == 0 {
        to - 86_400_000
    } else {
        from_ms
    };
    (from, to)
}

/// The availability of resource `id` over `(from_ms, to_ms]` (at most
/// [`MAX_WINDOW_MS`]), for a caller limited to `scope`.
pub async fn of_resource(
    state: &State,
    store: &Store,
    id: &str,
    from_ms: i64,
    to_ms: i64,
    scope: Option<&crate::auth::scope::Scope>,
) -> Result<pb::Availability, QueryError> {
    if to_ms <= from_ms {
        return Err(QueryError::InvalidArgument(format!(
            "the window ends ({to_ms}) before it starts ({from_ms})"
        )));
    }
    if to_ms - from_ms > MAX_WINDOW_MS {
        return Err(QueryError::InvalidArgument(format!(
            "the window is {} days, at most {} are answered",
            (to_ms - from_ms) / 86_400_000,
            MAX_WINDOW_MS / 86_400_000
        )));
    }
    // Known here (and visible to the caller), or it has no availability to tell.
    crate::query::get(state, id, scope)?;
    let history = store
        .history_window(id, from_ms, to_ms, MAX_ENTRIES)
        .await
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    let d = durations(&history, from_ms, to_ms);
    Ok(pb::Availability {
        resource_id: id.to_string(),
        from_unix_ms: from_ms,
        to_unix_ms: to_ms,
        healthy_ms: d.healthy_ms,
        degraded_ms: d.degraded_ms,
        unhealthy_ms: d.unhealthy_ms,
        unknown_ms: d.unknown_ms,
        healthy_share: d.healthy_share().unwrap_or(0.0),
        complete: history.len() < MAX_ENTRIES as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64, health: Health, changed: &str) -> HistoryEntry {
        HistoryEntry {
            resource_id: "host/a".into(),
            resource_version: 0,
            previous_health: Health::Unknown,
            health,
            reasons: Vec::new(),
            changed: vec![changed.to_string()],
            observed_at_ms: ms,
            recorded_at_ms: ms,
            source: "agent".into(),
        }
    }

    #[test]
    fn windows_are_days_hours_or_milliseconds() {
        assert_eq!(parse_window("30d"), Some(30 * 86_400_000));
        assert_eq!(parse_window("6h"), Some(6 * 3_600_000));
        assert_eq!(parse_window("60000"), Some(60_000));
        assert_eq!(parse_window("-1d"), None);
        assert_eq!(parse_window("week"), None);
        assert_eq!(
            window(0, 0, 100_000_000),
            (100_000_000 - 86_400_000, 100_000_000)
        );
    }

    #[test]
    fn time_in_each_health_over_the_window() {
        // Healthy before the window, degraded from 600 to 700, healthy again.
        let h = [
            at(0, Health::Healthy, "created"),
            at(600, Health::Degraded, "health"),
            at(700, Health::Healthy, "health"),
        ];
        let d = durations(&h, 500, 1_500);
        assert_eq!(
            d,
            Durations {
                healthy_ms: 900,
                degraded_ms: 100,
                unhealthy_ms: 0,
                unknown_ms: 0
            }
        );
        assert_eq!(d.healthy_share(), Some(0.9));
    }

    #[test]
    fn before_creation_and_after_deletion_count_for_nothing() {
        let h = [
            at(1_200, Health::Healthy, "created"),
            at(1_400, Health::Unknown, "deleted"),
        ];
        let d = durations(&h, 1_000, 2_000);
        assert_eq!(d.existing_ms(), 200);
        assert_eq!(d.healthy_share(), Some(1.0));
        assert_eq!(durations(&[], 0, 1_000).healthy_share(), None);
        // Deleted, then back: both stretches count.
        let h = [
            at(0, Health::Unhealthy, "created"),
            at(100, Health::Unknown, "deleted"),
            at(300, Health::Healthy, "created"),
        ];
        let d = durations(&h, 0, 400);
        assert_eq!((d.unhealthy_ms, d.healthy_ms, d.unknown_ms), (100, 100, 0));
    }

    #[test]
    fn an_observation_time_that_steps_back_counts_no_time_twice() {
        let h = [
            at(0, Health::Healthy, "created"),
            at(500, Health::Degraded, "health"),
            at(400, Health::Healthy, "health"),
        ];
        let d = durations(&h, 0, 1_000);
        assert_eq!(d.existing_ms(), 1_000);
        assert_eq!((d.healthy_ms, d.degraded_ms), (1_000, 0));
    }
}
