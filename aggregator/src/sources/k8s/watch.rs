//! One watch per kind and cluster (kube-runtime's watcher: list, then watch from
//! the list's resourceVersion with bookmarks; a relist after `410 Gone` or a
//! broken stream; exponential back-off on API errors). Each object is made
//! compact at once and handed to the cluster's correlator in order.

use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::events::v1 as events;
use k8s_openapi::api::policy::v1 as policy;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cache::Update;
use super::objects::{Compact, Kind, Object};
use crate::telemetry;

/// Starts a watch of every kind on `client`; updates go to `tx` until `stop`.
pub fn spawn_all(
    client: &Client,
    cluster: &str,
    tx: &mpsc::Sender<Update>,
    stop: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    for kind in Kind::ALL {
        let w = Watch {
            client: client.clone(),
            cluster: cluster.to_string(),
            kind,
            tx: tx.clone(),
            stop: stop.clone(),
        };
        match kind {
            Kind::Node => tasks.spawn(w.run::<core::Node>()),
            Kind::Pod => tasks.spawn(w.run::<core::Pod>()),
            Kind::Service => tasks.spawn(w.run::<core::Service>()),
            Kind::EndpointSlice => tasks.spawn(w.run::<discovery::EndpointSlice>()),
            Kind::Namespace => tasks.spawn(w.run::<core::Namespace>()),
            Kind::ResourceQuota => tasks.spawn(w.run::<core::ResourceQuota>()),
            Kind::Deployment => tasks.spawn(w.run::<apps::Deployment>()),
            Kind::ReplicaSet => tasks.spawn(w.run::<apps::ReplicaSet>()),
            Kind::StatefulSet => tasks.spawn(w.run::<apps::StatefulSet>()),
            Kind::DaemonSet => tasks.spawn(w.run::<apps::DaemonSet>()),
            Kind::Job => tasks.spawn(w.run::<batch::Job>()),
            Kind::CronJob => tasks.spawn(w.run::<batch::CronJob>()),
            Kind::Hpa => tasks.spawn(w.run::<autoscaling::HorizontalPodAutoscaler>()),
            Kind::Pdb => tasks.spawn(w.run::<policy::PodDisruptionBudget>()),
            Kind::Pvc => tasks.spawn(w.run::<core::PersistentVolumeClaim>()),
            Kind::Pv => tasks.spawn(w.run::<core::PersistentVolume>()),
            Kind::Event => tasks.spawn(w.run::<events::Event>()),
        };
    }
}

struct Watch {
    client: Client,
    cluster: String,
    kind: Kind,
    tx: mpsc::Sender<Update>,
    stop: CancellationToken,
}

impl Watch {
    async fn run<K>(self)
    where
        K: kube::Resource<DynamicType = ()>
            + Compact
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + 'static,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let kind = self.kind.segment();
        let warn = telemetry::WarnEvery::new(30_000);
        loop {
            let event = tokio::select! {
                _ = self.stop.cancelled() => return,
                event = stream.next() => event,
            };
            let update = match event {
                None => return,
                Some(Ok(Event::Apply(o))) => match kept(o.compact()) {
                    Some(o) => Update::Apply(o),
                    None => continue,
                },
                Some(Ok(Event::Delete(o))) => Update::Delete(o.compact().key()),
                Some(Ok(Event::Init)) => Update::ListStart(self.kind),
                Some(Ok(Event::InitApply(o))) => match kept(o.compact()) {
                    Some(o) => Update::Listed(o),
                    None => continue,
                },
                Some(Ok(Event::InitDone)) => {
                    metrics::counter!(telemetry::K8S_LISTS, "cluster" => self.cluster.clone(), "kind" => kind)
                        .increment(1);
                    Update::ListDone(self.kind)
                }
                Some(Err(e)) => {
                    metrics::counter!(telemetry::K8S_WATCH_ERRORS, "cluster" => self.cluster.clone(), "kind" => kind)
                        .increment(1);
                    if warn.should_warn(infrawatch_common::time::now_unix_ms()) {
                        tracing::warn!(
                            cluster = %self.cluster,
                            kind,
                            error = &e as &dyn std::error::Error,
                            "Kubernetes watch failed; retrying with back-off."
                        );
                    }
                    continue;
                }
            };
            if self.tx.send(update).await.is_err() {
                return;
            }
        }
    }
}

/// `object`, unless it is an event of type Normal (only Warnings are kept).
fn kept(object: Object) -> Option<Object> {
    match &object {
        Object::Warning(w) if !w.is_warning => None,
        _ => Some(object),
    }
}
