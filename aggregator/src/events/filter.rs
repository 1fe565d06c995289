//! Which events a stream or a durable subscription carries: kinds, a label
//! selector over the event's labels, Kubernetes namespaces and health transitions.
//! Empty parts match everything; all given parts must match.

use std::sync::Arc;

use infrawatch_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::auth::scope::Scope;
use crate::model::Health;
use crate::selector::Selector;

/// Transitions a filter may ask for.
pub const TRANSITIONS: &[&str] = &[
    "became_unhealthy",
    "became_degraded",
    "became_healthy",
    "became_unknown",
    "health_changed",
];

/// Most entries in each list of a filter.
pub const MAX_FILTER_ENTRIES: usize = 64;

/// A filter as given by a client and stored with a subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSpec {
    /// Resource kinds.
    pub kinds: Vec<String>,
    /// Label selector over the event labels.
    pub label_selector: String,
    /// Values of the `namespace` label.
    pub namespaces: Vec<String>,
    /// Health transitions (see [`TRANSITIONS`]).
    pub transitions: Vec<String>,
}

impl FilterSpec {
    /// From the wire form.
    pub fn from_proto(f: Option<&pb::EventFilter>) -> Self {
        f.map(|f| Self {
            kinds: f.kinds.clone(),
            label_selector: f.label_selector.clone(),
            namespaces: f.namespaces.clone(),
            transitions: f.transitions.clone(),
        })
        .unwrap_or_default()
    }

    /// To the wire form.
    pub fn to_proto(&self) -> pb::EventFilter {
        pb::EventFilter {
            kinds: self.kinds.clone(),
            label_selector: self.label_selector.clone(),
            namespaces: self.namespaces.clone(),
            transitions: self.transitions.clone(),
        }
    }

    /// True when it has no condition.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Checks the filter and prepares it for matching.
    pub fn compile(&self) -> Result<EventFilter, String> {
        for (name, list) in [
            ("kinds", &self.kinds),
            ("namespaces", &self.namespaces),
            ("transitions", &self.transitions),
        ] {
            if list.len() > MAX_FILTER_ENTRIES {
                return Err(format!(
                    "filter {name} has {} entries; at most {MAX_FILTER_ENTRIES} are allowed",
                    list.len()
                ));
            }
            if list.iter().any(|s| s.is_empty()) {
                return Err(format!("filter {name} contains an empty entry"));
            }
        }
        let mut transitions = Vec::with_capacity(self.transitions.len());
        for t in &self.transitions {
            let parsed = match t.as_str() {
                "became_unhealthy" => Transition::Became(Health::Unhealthy),
                "became_degraded" => Transition::Became(Health::Degraded),
                "became_healthy" => Transition::Became(Health::Healthy),
                "became_unknown" => Transition::Became(Health::Unknown),
                "health_changed" => Transition::AnyHealthChange,
                other => {
                    return Err(format!(
                        "unknown transition {other:?}; expected one of {}",
                        TRANSITIONS.join(", ")
                    ));
                }
            };
            transitions.push(parsed);
        }
        let selector = Selector::parse(&self.label_selector)
            .map_err(|e| format!("filter label_selector: {e}"))?;
        Ok(EventFilter {
            kinds: self.kinds.clone(),
            selector,
            namespaces: self.namespaces.clone(),
            transitions,
            scope: None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Became(Health),
    AnyHealthChange,
}

/// A checked filter.
#[derive(Debug, Clone)]
pub struct EventFilter {
    kinds: Vec<String>,
    selector: Selector,
    namespaces: Vec<String>,
    transitions: Vec<Transition>,
    /// The reader's restriction, on top of what it asked for.
    scope: Option<Arc<Scope>>,
}

impl EventFilter {
    /// The filter, passing only events of resources within `scope` as well.
    pub fn within(self, scope: Option<Arc<Scope>>) -> Self {
        Self { scope, ..self }
    }

    /// True when `event` passes.
    pub fn matches(&self, event: &pb::InfrastructureStatusUpdatedEvent) -> bool {
        if let Some(scope) = &self.scope
            && !scope.admits(|name| event.labels.get(name).map(String::as_str))
        {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&event.resource_kind) {
            return false;
        }
        if !self.namespaces.is_empty()
            && !event
                .labels
                .get("namespace")
                .is_some_and(|ns| self.namespaces.contains(ns))
        {
            return false;
        }
        if !self.transitions.is_empty() {
            let changed = event.health != event.previous_health;
            let hit = self.transitions.iter().any(|t| match t {
                Transition::AnyHealthChange => changed,
                Transition::Became(h) => changed && event.health == *h as i32,
            });
            if !hit {
                return false;
            }
        }
        self.selector
            .matches_lookup(|k| event.labels.get(k).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        kind: &str,
        from: Health,
        to: Health,
        ns: Option<&str>,
    ) -> pb::InfrastructureStatusUpdatedEvent {
        let mut labels = std::collections::HashMap::new();
        labels.insert("cluster".to_string(), "prod".to_string());
        if let Some(ns) = ns {
            labels.insert("namespace".to_string(), ns.to_string());
        }
        pb::InfrastructureStatusUpdatedEvent {
            resource_kind: kind.into(),
            previous_health: from as i32,
            health: to as i32,
            labels,
            ..Default::default()
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = FilterSpec::default().compile().unwrap();
        assert!(f.matches(&event("host", Health::Healthy, Health::Healthy, None)));
    }

    #[test]
    fn every_part_must_match() {
        let f = FilterSpec {
            kinds: vec!["pod".into()],
            label_selector: "cluster=prod".into(),
            namespaces: vec!["payments".into()],
            transitions: vec!["became_unhealthy".into()],
        }
        .compile()
        .unwrap();
        assert!(f.matches(&event(
            "pod",
            Health::Healthy,
            Health::Unhealthy,
            Some("payments")
        )));
        assert!(!f.matches(&event(
            "host",
            Health::Healthy,
            Health::Unhealthy,
            Some("payments")
        )));
        assert!(!f.matches(&event(
            "pod",
            Health::Healthy,
            Health::Unhealthy,
            Some("web")
        )));
        assert!(!f.matches(&event("pod", Health::Healthy, Health::Unhealthy, None)));
        assert!(!f.matches(&event(
            "pod",
            Health::Unhealthy,
            Health::Unhealthy,
            Some("payments")
        )));
        assert!(!f.matches(&event(
            "pod",
            Health::Healthy,
            Health::Degraded,
            Some("payments")
        )));
    }

    #[test]
    fn bad_filters_are_named() {
        let bad = FilterSpec {
            transitions: vec!["became_sad".into()],
            ..Default::default()
        };
        assert!(bad.compile().unwrap_err().contains("became_sad"));
        let bad = FilterSpec {
            label_selector: "=x".into(),
            ..Default::default()
        };
        assert!(bad.compile().unwrap_err().contains("label_selector"));
    }
}
