//! Turns a cached object and its findings into the source-neutral
//! [`Observation`] the planner takes: id, kind, labels (the object's own that
//! fit, plus `k8s.cluster.name`, `k8s.namespace.name`, `k8s.node.name`),
//! attributes with the figures people ask for, relations, and the verdict.
//!
//! Attributes hold state, not load: a node's pod count or a cluster's sum of
//! requests would make a new version (and an event) of the node or cluster at
//! every pod change, so those figures show only in reasons when a rule fires.

use std::collections::BTreeMap;

use infrawatch_common::resource::{host_id, validate_label};

use super::cache::Cache;
use super::ids;
use super::objects::{Key, Kind, Object, Status};
use super::rules::ClusterFigures;
use crate::model::Relation;
use crate::sources::{Observation, Verdict};

/// Labels of the object that are kept (the planner's limits).
const MAX_OWN_LABELS: usize = 64;

/// The observation of `object` with `verdict`, at `now_ms`.
pub fn observation(
    cache: &Cache,
    cluster: &str,
    object: &Object,
    verdict: Verdict,
    now_ms: i64,
) -> Observation {
    let key = object.key();
    let meta = object.meta();
    let mut labels: BTreeMap<String, String> = meta
        .labels
        .iter()
        .filter(|(k, v)| validate_label(k, v).is_ok())
        .take(MAX_OWN_LABELS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert("k8s.cluster.name".into(), cluster.into());
    if !meta.namespace.is_empty() {
        labels.insert("k8s.namespace.name".into(), meta.namespace.clone());
    }
    let mut attributes = BTreeMap::new();
    let mut relations = Vec::new();
    let mut attr = |k: &str, v: String| {
        attributes.insert(k.to_string(), v);
    };
    let name_key = format!("k8s.{}.name", key.kind.segment());
    attr(&name_key, meta.name.clone());
    match object {
        Object::Node(n) => {
            labels.insert("k8s.node.name".into(), n.meta.name.clone());
            attr("k8s.node.ready", status_name(n.ready.status).into());
            attr("k8s.node.unschedulable", n.unschedulable.to_string());
            attr("k8s.node.allocatable.cpu", n.allocatable.cpu.to_string());
            attr(
                "k8s.node.allocatable.memory",
                n.allocatable.memory.to_string(),
            );
            attr("k8s.node.allocatable.pods", n.allocatable_pods.to_string());
            if !n.machine_id.is_empty() {
                attr("host.id", n.machine_id.clone());
                relations.push(rel("runs_on", host_id(&n.machine_id)));
            }
            if !n.provider_id.is_empty() {
                attr("k8s.node.provider_id", n.provider_id.clone());
            }
            if !n.kubelet_version.is_empty() {
                attr("k8s.kubelet.version", n.kubelet_version.clone());
            }
        }
        Object::Pod(p) => {
            if !p.node.is_empty() {
                labels.insert("k8s.node.name".into(), p.node.clone());
                relations.push(rel("runs_on", ids::node(cluster, &p.node)));
                if let Some(machine) = machine_of(cache, &p.node) {
                    // Where the node's agent reports the pod's use (kubelet).
                    attr(
                        "k8s.pod.usage.resource",
                        format!(
                            "{}/pod/{}/{}",
                            host_id(machine),
                            p.meta.namespace,
                            p.meta.name
                        ),
                    );
                }
            }
            attr("k8s.pod.phase", p.phase.clone());
            attr("k8s.pod.ready", status_name(p.ready.status).into());
            let restarts = p.restarts();
            attr("k8s.pod.restarts", restarts.to_string());
            attr("k8s.pod.cpu.request", p.requests.cpu.to_string());
            attr("k8s.pod.cpu.limit", p.limits.cpu.to_string());
            attr("k8s.pod.memory.request", p.requests.memory.to_string());
            attr("k8s.pod.memory.limit", p.limits.memory.to_string());
            if let Some((kind, name)) = &p.meta.owner
                && let Some(kind) = Kind::from_api_kind(kind)
            {
                relations.push(rel(
                    "member_of",
                    ids::of(cluster, &Key::new(kind, &p.meta.namespace, name)),
                ));
            }
            for claim in &p.claims {
                relations.push(rel(
                    "depends_on",
                    ids::of(cluster, &Key::new(Kind::Pvc, &p.meta.namespace, claim)),
                ));
            }
        }
        Object::Service(s) => {
            attr("k8s.service.type", s.service_type.clone());
            if !s.cluster_ip.is_empty() {
                attr("k8s.service.cluster_ip", s.cluster_ip.clone());
            }
            relations.extend(selects(cache, cluster, &object.key()));
            let mut total = 0;
            let mut ready = 0;
            for slice in cache.slices_of(&s.meta.namespace, &s.meta.name) {
                for e in &slice.endpoints {
                    total += 1;
                    ready += usize::from(e.ready);
                    if let Some(pod) = &e.pod {
                        relations.push(rel(
                            "backed_by",
                            ids::of(cluster, &Key::new(Kind::Pod, &s.meta.namespace, pod)),
                        ));
                    }
                }
            }
            attr("k8s.service.endpoints", total.to_string());
            attr("k8s.service.endpoints.ready", ready.to_string());
        }
        Object::Namespace(n) => {
            labels.insert("k8s.namespace.name".into(), n.meta.name.clone());
            attr("k8s.namespace.phase", n.phase.clone());
            for q in cache.quotas_of(&n.meta.name) {
                for (resource, hard) in &q.hard {
                    let used = q.used.get(resource).copied().unwrap_or(0.0);
                    attr(
                        &format!("k8s.resourcequota.{}.{resource}.hard", q.meta.name),
                        hard.to_string(),
                    );
                    attr(
                        &format!("k8s.resourcequota.{}.{resource}.used", q.meta.name),
                        used.to_string(),
                    );
                }
            }
        }
        Object::Workload(kind, w) => {
            let segment = kind.segment();
            attr(&format!("k8s.{segment}.desired"), w.desired.to_string());
            attr(&format!("k8s.{segment}.ready"), w.ready.to_string());
            attr(&format!("k8s.{segment}.available"), w.available.to_string());
            attr(&format!("k8s.{segment}.updated"), w.updated.to_string());
            if let Some((owner, name)) = &w.meta.owner
                && let Some(owner) = Kind::from_api_kind(owner)
            {
                relations.push(rel(
                    "member_of",
                    ids::of(cluster, &Key::new(owner, &w.meta.namespace, name)),
                ));
            }
        }
        Object::Job(j) => {
            attr("k8s.job.active", j.active.to_string());
            attr("k8s.job.complete", j.complete.to_string());
            if let Some((owner, name)) = &j.meta.owner
                && owner == "CronJob"
            {
                relations.push(rel(
                    "member_of",
                    ids::of(cluster, &Key::new(Kind::CronJob, &j.meta.namespace, name)),
                ));
            }
        }
        Object::CronJob(c) => {
            attr("k8s.cronjob.schedule", c.schedule.clone());
            attr("k8s.cronjob.suspended", c.suspended.to_string());
        }
        Object::Hpa(h) => {
            attr("k8s.hpa.min_replicas", h.min.to_string());
            attr("k8s.hpa.max_replicas", h.max.to_string());
            attr("k8s.hpa.current_replicas", h.current.to_string());
            attr("k8s.hpa.desired_replicas", h.desired.to_string());
            if let Some(kind) = Kind::from_api_kind(&h.target.0) {
                relations.push(rel(
                    "selects",
                    ids::of(cluster, &Key::new(kind, &h.meta.namespace, &h.target.1)),
                ));
            }
        }
        Object::Pdb(b) => {
            attr("k8s.pdb.current_healthy", b.current_healthy.to_string());
            attr("k8s.pdb.desired_healthy", b.desired_healthy.to_string());
            attr(
                "k8s.pdb.disruptions_allowed",
                b.disruptions_allowed.to_string(),
            );
            relations.extend(selects(cache, cluster, &object.key()));
        }
        Object::Pvc(c) => {
            let mounted_on =
                cache
                    .in_namespace(&c.meta.namespace, Kind::Pod)
                    .find_map(|o| match o {
                        Object::Pod(p) if p.is_active() && p.claims.contains(&c.meta.name) => {
                            machine_of(cache, &p.node)
                        }
                        _ => None,
                    });
            if let Some(machine) = mounted_on {
                // Where the agent of the node mounting it reports its use.
                attr(
                    "k8s.pvc.usage.resource",
                    format!(
                        "{}/volume/{}/{}",
                        host_id(machine),
                        c.meta.namespace,
                        c.meta.name
                    ),
                );
            }
            attr("k8s.pvc.phase", c.phase.clone());
            attr("k8s.pvc.capacity", c.capacity_bytes.to_string());
            if !c.storage_class.is_empty() {
                attr("k8s.pvc.storage_class", c.storage_class.clone());
            }
            if !c.volume.is_empty() {
                relations.push(rel(
                    "attached_to",
                    ids::of(cluster, &Key::new(Kind::Pv, "", &c.volume)),
                ));
            }
        }
        Object::Pv(v) => {
            attr("k8s.pv.phase", v.phase.clone());
            attr("k8s.pv.capacity", v.capacity_bytes.to_string());
            if !v.storage_class.is_empty() {
                attr("k8s.pv.storage_class", v.storage_class.clone());
            }
        }
        Object::EndpointSlice(_) | Object::Quota(_) | Object::Warning(_) => {}
    }
    let mut warnings: Vec<&str> = cache
        .warnings_about(&key)
        .map(|w| w.reason.as_str())
        .collect();
    if !warnings.is_empty() {
        warnings.sort_unstable();
        warnings.dedup();
        // The reasons only: counts and times change with every repeat, and
        // the events themselves are at GET /api/v1/kubernetes/events.
        attributes.insert("k8s.warnings".into(), warnings.join(","));
    }
    relations.sort();
    relations.dedup();
    Observation {
        id: ids::of(cluster, &key),
        kind: ids::resource_kind(key.kind),
        labels,
        attributes,
        relations,
        interval_ms: 0,
        observed_at_ms: now_ms,
        verdict: Some(verdict),
    }
}

/// The observation of the cluster itself.
pub fn cluster_observation(
    cluster: &str,
    figures: &ClusterFigures,
    verdict: Verdict,
    now_ms: i64,
) -> Observation {
    let attributes = BTreeMap::from([
        ("k8s.cluster.nodes".to_string(), figures.nodes.to_string()),
        (
            "k8s.cluster.nodes.ready".to_string(),
            figures.nodes_ready.to_string(),
        ),
        (
            "k8s.cluster.cpu.allocatable".to_string(),
            figures.allocatable.cpu.to_string(),
        ),
        (
            "k8s.cluster.memory.allocatable".to_string(),
            figures.allocatable.memory.to_string(),
        ),
    ]);
    Observation {
        id: ids::cluster(cluster),
        kind: ids::CLUSTER_KIND.into(),
        labels: BTreeMap::from([("k8s.cluster.name".to_string(), cluster.to_string())]),
        attributes,
        relations: Vec::new(),
        interval_ms: 0,
        observed_at_ms: now_ms,
        verdict: Some(verdict),
    }
}

/// The machine id of node `name`, if the cache knows it.
pub fn machine_of<'a>(cache: &'a Cache, name: &str) -> Option<&'a str> {
    match cache.get(&Key::new(Kind::Node, "", name)) {
        Some(Object::Node(n)) if !n.machine_id.is_empty() => Some(&n.machine_id),
        _ => None,
    }
}

/// `selects` relations from a Service or PodDisruptionBudget to its pods.
fn selects<'a>(
    cache: &'a Cache,
    cluster: &'a str,
    owner: &'a Key,
) -> impl Iterator<Item = Relation> + 'a {
    cache.pods_selected(owner).map(move |pod| {
        rel(
            "selects",
            ids::of(
                cluster,
                &Key::new(Kind::Pod, &pod.meta.namespace, &pod.meta.name),
            ),
        )
    })
}

fn rel(relation_type: &str, to_id: String) -> Relation {
    Relation {
        relation_type: relation_type.into(),
        to_id,
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::True => "true",
        Status::False => "false",
        Status::Unknown => "unknown",
    }
}
