//! What part of the fleet a restricted token sees: resources (and their
//! events) of some clusters and/or namespaces, by the `cluster` and
//! `namespace` topology labels events carry (from the resource's labels, or
//! its `k8s.cluster.name` / `k8s.namespace.name` labels or attributes). A
//! resource without the label is outside every restriction on it.

/// A restriction to clusters and/or namespaces; an empty list does not
/// restrict that dimension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Allowed values of the `cluster` label.
    pub clusters: Vec<String>,
    /// Allowed values of the `namespace` label.
    pub namespaces: Vec<String>,
}

/// The label a resource's cluster is in.
pub const CLUSTER_LABEL: &str = "cluster";
/// The label a resource's namespace is in.
pub const NAMESPACE_LABEL: &str = "namespace";

impl Scope {
    /// True when a resource whose labels `label` looks up lies inside.
    pub fn admits<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        let within = |allowed: &[String], name: &str| {
            allowed.is_empty() || label(name).is_some_and(|v| allowed.iter().any(|a| a == v))
        };
        within(&self.clusters, CLUSTER_LABEL) && within(&self.namespaces, NAMESPACE_LABEL)
    }

    /// True when `record` lies inside, by the topology labels its events carry
    /// (`cluster` and `namespace`, also from `k8s.cluster.name` and
    /// `k8s.namespace.name` labels or attributes).
    pub fn admits_record(&self, record: &crate::model::ResourceRecord) -> bool {
        self.admits(|name| crate::events::build::topology_label(record, name))
    }

    /// True when a resource with `labels` lies inside.
    pub fn admits_labels(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.admits(|name| labels.get(name).map(String::as_str))
    }

    /// A description for messages: `clusters [..] and namespaces [..]`.
    pub fn describe(&self) -> String {
        match (self.clusters.is_empty(), self.namespaces.is_empty()) {
            (false, false) => format!(
                "clusters {:?} and namespaces {:?}",
                self.clusters, self.namespaces
            ),
            (false, true) => format!("clusters {:?}", self.clusters),
            (true, false) => format!("namespaces {:?}", self.namespaces),
            (true, true) => "everything".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_scope_admits_its_clusters_and_namespaces_only() {
        let payments = Scope {
            clusters: vec!["prod".into()],
            namespaces: vec!["payments".into(), "billing".into()],
        };
        assert!(payments.admits_labels(&labels(&[("cluster", "prod"), ("namespace", "billing")])));
        assert!(!payments.admits_labels(&labels(&[("cluster", "dev"), ("namespace", "billing")])));
        assert!(!payments.admits_labels(&labels(&[("cluster", "prod"), ("namespace", "web")])));
        assert!(!payments.admits_labels(&labels(&[("cluster", "prod")])));
        assert!(!payments.admits_labels(&labels(&[])));
        let prod = Scope {
            clusters: vec!["prod".into()],
            namespaces: vec![],
        };
        assert!(prod.admits_labels(&labels(&[("cluster", "prod")])));
        assert!(Scope::default().admits_labels(&labels(&[])));
        assert_eq!(prod.describe(), "clusters [\"prod\"]");
    }
}
