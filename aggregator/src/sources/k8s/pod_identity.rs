//! Agents in a DaemonSet speak for their own node only. Each agent pod gets a
//! certificate of its own from the cert-manager CSI driver, whose role URI names
//! the pod: `spiffe://<trust-domain>/agent/k8s/<cluster>/<namespace>/<pod>`.
//! Before such an agent's stream is accepted, the aggregator asks that
//! cluster's API server where the pod runs and which machine the node is
//! (`status.nodeInfo.machineID`), and accepts the stream only for that machine:
//! an agent on node A can never report for node B, whatever its Hello says.
//!
//! Why a pod certificate and not the service-account token with a
//! TokenReview: the certificate is already what every agent stream
//! authenticates with (mTLS), it is short-lived and bound to the pod by the CSI
//! driver, and the check needs two `get`s the aggregator's watches already
//! have RBAC for; a token would add a second credential and the `create
//! tokenreviews` verb.
//!
//! A pod verified once is trusted for [`VERIFIED_FOR`] on this replica, so a
//! fleet reconnecting after a restart costs two API calls per agent, once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;

use super::KubernetesConfig;

/// How long a verified pod stays verified on this replica.
pub const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// Prefix of the certificate identities of pod agents.
pub const PREFIX: &str = "k8s/";

/// Why an agent's pod identity was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PodIdentityError {
    /// The pod does not speak for the machine, or cannot be found.
    #[error("{0}")]
    Refused(String),
    /// The API server could not be asked; the agent tries again.
    #[error("{0}")]
    Unavailable(String),
}

/// The clusters whose pods agents may be, with their clients.
pub struct PodIdentities {
    clients: HashMap<String, kube::Client>,
    verified: Mutex<HashMap<(String, String), Instant>>,
}

impl PodIdentities {
    /// Clients for every cluster of `config` (a cluster whose kubeconfig
    /// cannot be used is left out, and its agents are refused, with a log).
    pub async fn new(config: &KubernetesConfig) -> Self {
        let mut clients = HashMap::new();
        for source in &config.clusters {
            match super::client(source).await {
                Ok(c) => {
                    clients.insert(source.name.clone(), c);
                }
                Err(e) => tracing::error!(error = %e, "Agents of this cluster cannot be verified."),
            }
        }
        Self {
            clients,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// True when `identity` names a pod (`k8s/...`).
    pub fn applies(identity: &str) -> bool {
        identity.starts_with(PREFIX)
    }

    /// Checks that the pod `identity` names runs on the node of `machine_id`.
    pub async fn check(&self, identity: &str, machine_id: &str) -> Result<(), PodIdentityError> {
        let refuse = |m: String| Err(PodIdentityError::Refused(m));
        let Some((cluster, namespace, pod)) = parse(identity) else {
            return refuse(format!(
                "certificate {identity} is no pod identity: expected k8s/<cluster>/<namespace>/<pod>"
            ));
        };
        let key = (identity.to_string(), machine_id.to_string());
        if self
            .lock()
            .get(&key)
            .is_some_and(|at| at.elapsed() < VERIFIED_FOR)
        {
            return Ok(());
        }
        let Some(client) = self.clients.get(cluster) else {
            return refuse(format!(
                "certificate {identity} names cluster {cluster}, which this aggregator does not watch (kubernetes.clusters)"
            ));
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let found = pods.get_opt(pod).await.map_err(|e| {
            PodIdentityError::Unavailable(format!(
                "cluster {cluster}: reading pod {namespace}/{pod}: {e}"
            ))
        })?;
        let Some(found) = found else {
            return refuse(format!(
                "certificate {identity}: pod {namespace}/{pod} does not exist in cluster {cluster}"
            ));
        };
        let node_name = found.spec.and_then(|s| s.node_name).unwrap_or_default();
        if node_name.is_empty() {
            return refuse(format!(
                "certificate {identity}: pod {namespace}/{pod} is not scheduled on a node"
            ));
        }
        let nodes: Api<Node> = Api::all(client.clone());
        let node = nodes.get_opt(&node_name).await.map_err(|e| {
            PodIdentityError::Unavailable(format!(
                "cluster {cluster}: reading node {node_name}: {e}"
            ))
        })?;
        let node_machine = node
            .and_then(|n| n.status)
            .and_then(|s| s.node_info)
            .map(|i| i.machine_id)
            .unwrap_or_default();
        if node_machine.is_empty() || node_machine != machine_id {
            return refuse(format!(
                "certificate {identity}: pod {namespace}/{pod} runs on node {node_name}, whose machine id is {node_machine:?}, not {machine_id:?}; an agent reports for its own node only"
            ));
        }
        let mut verified = self.lock();
        verified.retain(|_, at| at.elapsed() < VERIFIED_FOR);
        verified.insert(key, Instant::now());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `k8s/<cluster>/<namespace>/<pod>` → its three parts.
fn parse(identity: &str) -> Option<(&str, &str, &str)> {
    let rest = identity.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let (cluster, namespace, pod) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && ![cluster, namespace, pod].iter().any(|p| p.is_empty()))
        .then_some((cluster, namespace, pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_identities_name_cluster_namespace_and_pod() {
        assert_eq!(
            parse("k8s/prod/infrawatch/agent-x7k2p"),
            Some(("prod", "infrawatch", "agent-x7k2p"))
        );
        assert_eq!(parse("k8s/prod/infrawatch"), None);
        assert_eq!(parse("k8s/prod//agent"), None);
        assert_eq!(parse("k8s/a/b/c/d"), None);
        assert_eq!(parse("agent-1"), None);
        assert!(PodIdentities::applies("k8s/prod/ns/p"));
        assert!(!PodIdentities::applies("agent-k8s"));
    }
}
