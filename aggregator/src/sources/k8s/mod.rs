//! The Kubernetes source: watches every configured cluster (nodes, pods,
//! services, endpoint slices, namespaces, quotas, workloads, jobs, autoscalers,
//! disruption budgets and volumes), judges each object with the rules the
//! community's kubernetes-mixin alerts on, relates them (pod `runs_on` node,
//! node `runs_on` its agent's host, Service `selects` / `backed_by` pods, owner
//! chains as `member_of`, claims `attached_to` volumes), and reports them to
//! the planner as source `k8s/<cluster>`. The watches run on the elected
//! leader only; another replica takes them over when the lease moves.
//!
//! - [`config`]: `[kubernetes]` settings and rule thresholds.
//! - [`objects`]: the fields kept of each object; [`quantity`] parses sizes.
//! - [`watch`]: one kube-runtime watcher per kind.
//! - [`cache`]: a cluster's objects, indexes and dependents.
//! - [`rules`]: health findings; [`observe`]: observations; [`ids`]: ids.
//! - [`correlator`]: batches changes into reports.
//! - [`pod_identity`]: agents with pod certificates speak for their node only.

pub mod cache;
pub mod config;
pub mod correlator;
pub mod ids;
pub mod objects;
pub mod observe;
pub mod pod_identity;
pub mod quantity;
pub mod rules;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::KubernetesConfig;

use crate::planner::PlannerHandle;
use crate::state::State;
use crate::store::Store;

/// Updates queued between the watches of a cluster and its correlator.
const QUEUE: usize = 8_192;

/// Why a cluster could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The kubeconfig could not be read or used.
    #[error("cluster {cluster}: {message}")]
    Config {
        /// The cluster.
        cluster: String,
        /// What is wrong.
        message: String,
    },
}

/// A client for `source`: its kubeconfig and context, or what the
/// environment offers (in-cluster service account, `$KUBECONFIG`).
pub async fn client(source: &config::ClusterSource) -> Result<kube::Client, SourceError> {
    let fail = |message: String| SourceError::Config {
        cluster: source.name.clone(),
        message,
    };
    let options = KubeConfigOptions {
        context: source.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &source.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| fail(format!("kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| fail(format!("kubeconfig {}: {e}", path.display())))?
        }
        None if source.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| fail(e.to_string()))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| fail(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| fail(e.to_string()))
}

/// Watches every cluster of `config` until `stop` (one leader term).
pub async fn run(
    config: KubernetesConfig,
    state: Arc<State>,
    planner: PlannerHandle,
    store: Store,
    stop: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for source in &config.clusters {
        let client = match client(source).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Kubernetes cluster not watched.");
                continue;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        watch::spawn_all(&client, &source.name, &tx, &stop, &mut tasks);
        let correlator = correlator::Correlator::new(
            &source.name,
            config.rules.clone(),
            Duration::from_millis(config.batch_ms),
            state.clone(),
            planner.clone(),
        )
        .volumes_every(Duration::from_millis(config.volume_check_ms))
        .with_store(store.clone());
        tasks.spawn(correlator.run(rx, stop.clone()));
        tracing::info!(cluster = %source.name, "Watching Kubernetes cluster.");
    }
    stop.cancelled().await;
    tasks.shutdown().await;
}
