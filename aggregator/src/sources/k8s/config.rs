//! Settings of `[kubernetes]`: the clusters to watch and the thresholds of the
//! health rules. The defaults are those of the community's kubernetes-mixin
//! alerts (`for: 15m` on most of them), so a cluster is judged as its operators
//! already judge it; every duration can be shortened or lengthened.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of `[kubernetes]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// The clusters to watch (none: the Kubernetes source is off).
    pub clusters: Vec<ClusterSource>,
    /// How long changes are gathered before they are planned, in ms: a burst
    /// (a rollout, a node going away with its pods) becomes one report. While
    /// a report commits, what changes meanwhile gathers for the next one.
    pub batch_ms: u64,
    /// How often bound claims are judged against their volumes' use, in ms
    /// (volumes fill without any change in the Kubernetes API).
    pub volume_check_ms: u64,
    /// Thresholds and durations of the health rules.
    pub rules: RuleConfig,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            clusters: Vec::new(),
            batch_ms: 5,
            volume_check_ms: 30_000,
            rules: RuleConfig::default(),
        }
    }
}

/// One cluster to watch.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSource {
    /// The cluster's name in resource ids and the `k8s.cluster.name` label
    /// (letters, digits, '-', '_' and '.').
    pub name: String,
    /// A kubeconfig file; absent: the in-cluster service account (or
    /// `$KUBECONFIG` / `~/.kube/config` outside a cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; absent: its current context.
    #[serde(default)]
    pub context: Option<String>,
}

/// Thresholds and durations of the Kubernetes health rules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// How long a node may be unschedulable, under pressure or not ready before
    /// it counts (KubeNodeNotReady, KubeNodeUnreachable: 15m).
    pub node_not_ready_for_ms: u64,
    /// Ready transitions within `node_flapping_window_ms` that make a node
    /// flapping (KubeNodeReadinessFlapping: more than 2 in 15m).
    pub node_flapping_changes: u32,
    /// The window of `node_flapping_changes`.
    pub node_flapping_window_ms: u64,
    /// Fraction of a node's pod capacity in use that counts as near full
    /// (KubeletTooManyPods: 0.95).
    pub node_pods_fraction: f64,
    /// How long a pod may be pending or not ready (KubePodNotReady: 15m).
    pub pod_not_ready_for_ms: u64,
    /// How long a container may wait (CrashLoopBackOff, ImagePullBackOff, ...)
    /// before it counts (KubePodCrashLooping: 15m).
    pub container_waiting_for_ms: u64,
    /// Restarts of one container within `restart_window_ms` that count as
    /// restarting too often.
    pub restarts: u32,
    /// The window of `restarts`, and how long an OOM kill is reported.
    pub restart_window_ms: u64,
    /// How long a workload may run below its desired replicas, with a
    /// generation not observed or a rollout not progressing
    /// (KubeDeploymentReplicasMismatch, KubeStatefulSetReplicasMismatch,
    /// KubeDaemonSetRolloutStuck: 15m).
    pub workload_mismatch_for_ms: u64,
    /// How long a job may run (KubeJobNotCompleted: 12h).
    pub job_max_duration_ms: u64,
    /// How long an HPA may be at its maximum or away from its desired replicas
    /// (KubeHpaMaxedOut, KubeHpaReplicasMismatch: 15m).
    pub hpa_for_ms: u64,
    /// How long a PVC may stay unbound.
    pub pvc_pending_for_ms: u64,
    /// Free fraction of a volume below which it is UNHEALTHY
    /// (KubePersistentVolumeFillingUp: 3%).
    pub volume_free_critical: f64,
    /// Free fraction below which it is DEGRADED when it is predicted to fill
    /// within `volume_full_within_ms` (KubePersistentVolumeFillingUp: 15%, 4 days).
    pub volume_free_warning: f64,
    /// See `volume_free_warning`.
    pub volume_full_within_ms: u64,
    /// Fraction of a ResourceQuota in use that is DEGRADED (KubeQuotaAlmostFull: 0.9);
    /// over 1 it is UNHEALTHY (KubeQuotaExceeded).
    pub quota_fraction: f64,
}

const MINUTE: u64 = 60_000;

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            node_not_ready_for_ms: 15 * MINUTE,
            node_flapping_changes: 2,
            node_flapping_window_ms: 15 * MINUTE,
            node_pods_fraction: 0.95,
            pod_not_ready_for_ms: 15 * MINUTE,
            container_waiting_for_ms: 15 * MINUTE,
            restarts: 3,
            restart_window_ms: 10 * MINUTE,
            workload_mismatch_for_ms: 15 * MINUTE,
            job_max_duration_ms: 12 * 60 * MINUTE,
            hpa_for_ms: 15 * MINUTE,
            pvc_pending_for_ms: 5 * MINUTE,
            volume_free_critical: 0.03,
            volume_free_warning: 0.15,
            volume_full_within_ms: 4 * 24 * 60 * MINUTE,
            quota_fraction: 0.9,
        }
    }
}

impl KubernetesConfig {
    /// Problems with the settings, by field.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let ok = !c.name.is_empty()
                && c.name.len() <= 63
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
            if !ok {
                out.push((
                    format!("kubernetes.clusters[{i}].name"),
                    format!(
                        "{:?} must be 1 to 63 letters, digits, '-', '_' or '.'",
                        c.name
                    ),
                ));
            }
            if !names.insert(&c.name) {
                out.push((
                    format!("kubernetes.clusters[{i}].name"),
                    format!("{:?} names two clusters", c.name),
                ));
            }
        }
        if !(1..=10_000).contains(&self.batch_ms) {
            out.push((
                "kubernetes.batch_ms".into(),
                "must be between 1 and 10000".into(),
            ));
        }
        if !(100..=3_600_000).contains(&self.volume_check_ms) {
            out.push((
                "kubernetes.volume_check_ms".into(),
                "must be between 100 and 3600000".into(),
            ));
        }
        let r = &self.rules;
        for (field, v) in [
            ("node_pods_fraction", r.node_pods_fraction),
            ("volume_free_critical", r.volume_free_critical),
            ("volume_free_warning", r.volume_free_warning),
            ("quota_fraction", r.quota_fraction),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                out.push((
                    format!("kubernetes.rules.{field}"),
                    format!("{v} must be above 0 and at most 1"),
                ));
            }
        }
        if r.volume_free_critical > r.volume_free_warning {
            out.push((
                "kubernetes.rules.volume_free_critical".into(),
                "must not exceed volume_free_warning".into(),
            ));
        }
        if r.restarts == 0 {
            out.push((
                "kubernetes.rules.restarts".into(),
                "must be at least 1".into(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_mistakes_are_named() {
        assert!(KubernetesConfig::default().problems().is_empty());
        let mut c = KubernetesConfig {
            clusters: vec![
                ClusterSource {
                    name: "prod eu".into(),
                    kubeconfig: None,
                    context: None,
                },
                ClusterSource {
                    name: "a".into(),
                    kubeconfig: None,
                    context: None,
                },
                ClusterSource {
                    name: "a".into(),
                    kubeconfig: None,
                    context: None,
                },
            ],
            ..KubernetesConfig::default()
        };
        c.rules.quota_fraction = 1.5;
        let fields: Vec<String> = c.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "kubernetes.clusters[0].name",
                "kubernetes.clusters[2].name",
                "kubernetes.rules.quota_fraction"
            ]
        );
    }
}
