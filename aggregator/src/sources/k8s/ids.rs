//! Resource ids, kinds and the source name of Kubernetes objects. Every id
//! carries its cluster: `k8s/<cluster>/<kind>/<namespace>/<name>` for
//! namespaced objects, `k8s/<cluster>/<kind>/<name>` for cluster-scoped ones,
//! and `k8s/<cluster>/cluster` for the cluster itself.

use super::objects::{Key, Kind};

/// The source name of a cluster's watches (and the owner of its resources).
pub fn source(cluster: &str) -> String {
    format!("k8s/{cluster}")
}

/// The resource kind of `kind`: `k8s_node`, `k8s_pod`, ...
pub fn resource_kind(kind: Kind) -> String {
    format!("k8s_{}", kind.segment())
}

/// The resource kind of a cluster.
pub const CLUSTER_KIND: &str = "k8s_cluster";

/// The id of the object under `key`.
pub fn of(cluster: &str, key: &Key) -> String {
    if key.namespace.is_empty() {
        format!("k8s/{cluster}/{}/{}", key.kind.segment(), key.name)
    } else {
        format!(
            "k8s/{cluster}/{}/{}/{}",
            key.kind.segment(),
            key.namespace,
            key.name
        )
    }
}

/// The id of node `name`.
pub fn node(cluster: &str, name: &str) -> String {
    format!("k8s/{cluster}/node/{name}")
}

/// The id of the cluster itself.
pub fn cluster(cluster: &str) -> String {
    format!("k8s/{cluster}/cluster")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_cluster() {
        assert_eq!(
            of("prod", &Key::new(Kind::Pod, "shop", "web-1")),
            "k8s/prod/pod/shop/web-1"
        );
        assert_eq!(
            of("prod", &Key::new(Kind::Node, "", "n1")),
            node("prod", "n1")
        );
        assert_eq!(resource_kind(Kind::Deployment), "k8s_deployment");
    }
}
