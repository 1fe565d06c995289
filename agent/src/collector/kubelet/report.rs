//! Turns a kubelet [`Summary`] into resources and series: one resource per pod
//! (`host/<machine-id>/pod/<namespace>/<pod>`, kind `k8s_pod_usage`, `runs_on` the
//! host) with its CPU, memory, network and ephemeral-storage figures and those of
//! its containers, and one per PersistentVolumeClaim mounted here
//! (`host/<machine-id>/volume/<namespace>/<claim>`, kind `k8s_volume_usage`,
//! `attached_to` the pods mounting it) with its space and inodes. Other volumes
//! (emptyDir, ConfigMap, projected, ...) are part of the pod's ephemeral storage
//! and get no resource. Missing figures are left out, and pods and claims beyond
//! the configured caps are left out (the same ones at every scrape: the first by
//! namespace and name), so one agent stays within its resource budget at the
//! aggregator.

use std::collections::BTreeMap;

use infrawatch_common::resource::{kind, metric, validate_resource_id};

use super::summary::{PodStats, Summary, VolumeStats};
use crate::collector::{Collection, ObservedResource};

/// Most pods a claim's resource names as `attached_to` (a claim is mounted by a
/// handful of pods at most; the aggregator bounds relations per resource).
const MAX_ATTACHED_PODS: usize = 16;

/// Caps on what one scrape reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pods, at most.
    pub max_pods: usize,
    /// Claims, at most.
    pub max_volumes: usize,
}

/// What a report left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Pods reported.
    pub pods: usize,
    /// Claims reported.
    pub volumes: usize,
    /// Pods over [`Limits::max_pods`].
    pub pods_left_out: usize,
    /// Claims over [`Limits::max_volumes`].
    pub volumes_left_out: usize,
    /// Pods without a usable namespace and name (or a second entry of one).
    pub pods_skipped: usize,
}

/// A non-empty string field.
fn text(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// Adds `value` when there is one and it is a number.
fn sample(
    out: &mut Collection,
    id: &str,
    name: &'static str,
    attributes: &[(&'static str, &str)],
    ts: i64,
    value: Option<f64>,
) {
    if let Some(v) = value.filter(|v| v.is_finite()) {
        out.sample(id, name, attributes, ts, v);
    }
}

/// One claim as this node sees it.
struct Claim<'a> {
    stats: &'a VolumeStats,
    volume_name: Option<&'a str>,
    pod_name: &'a str,
    pod_uid: Option<&'a str>,
    pods: Vec<String>,
}

/// Adds the resources and series of `summary` to `out`, for the host resource
/// `host_id` (`host/<machine-id>`), all taken at `ts`.
pub fn build(
    summary: &Summary,
    host_id: &str,
    interval_ms: u32,
    ts: i64,
    limits: Limits,
    out: &mut Collection,
) -> Outcome {
    let mut outcome = Outcome::default();
    let node_name = summary
        .node
        .as_ref()
        .and_then(|n| text(&n.node_name))
        .map(str::to_string);
    // Pods by (namespace, name): sorted, so the caps keep the same pods at every
    // scrape, and one entry per id (a pod replaced under the same name may be
    // listed twice for a moment).
    let mut pods: BTreeMap<(&str, &str), (&PodStats, String)> = BTreeMap::new();
    for pod in summary.pods.iter().flatten() {
        let named = pod
            .pod_ref
            .as_ref()
            .and_then(|r| Some((text(&r.namespace)?, text(&r.name)?)));
        let Some((namespace, name)) = named else {
            outcome.pods_skipped += 1;
            continue;
        };
        let id = format!("{host_id}/pod/{namespace}/{name}");
        if validate_resource_id(&id).is_err() || pods.contains_key(&(namespace, name)) {
            outcome.pods_skipped += 1;
            continue;
        }
        pods.insert((namespace, name), (pod, id));
    }
    outcome.pods_left_out = pods.len().saturating_sub(limits.max_pods);
    let mut claims: BTreeMap<(&str, &str), Claim<'_>> = BTreeMap::new();
    for ((namespace, name), (pod, id)) in pods.iter().take(limits.max_pods) {
        let uid = pod.pod_ref.as_ref().and_then(|r| text(&r.uid));
        pod_report(
            out,
            pod,
            id,
            (namespace, name, uid),
            &node_name,
            host_id,
            interval_ms,
            ts,
        );
        outcome.pods += 1;
        for volume in pod.volume.iter().flatten() {
            let Some(claim) = volume.pvc_ref.as_ref() else {
                continue;
            };
            let Some(claim_name) = text(&claim.name) else {
                continue;
            };
            let claim_namespace = text(&claim.namespace).unwrap_or(namespace);
            let entry = claims
                .entry((claim_namespace, claim_name))
                .or_insert_with(|| Claim {
                    stats: volume,
                    volume_name: text(&volume.name),
                    pod_name: name,
                    pod_uid: uid,
                    pods: Vec::new(),
                });
            if entry.pods.len() < MAX_ATTACHED_PODS && !entry.pods.contains(id) {
                entry.pods.push(id.clone());
            }
        }
    }
    outcome.volumes_left_out = claims.len().saturating_sub(limits.max_volumes);
    for ((namespace, name), claim) in claims.into_iter().take(limits.max_volumes) {
        let id = format!("{host_id}/volume/{namespace}/{name}");
        if validate_resource_id(&id).is_err() {
            continue;
        }
        volume_report(out, &id, (namespace, name), claim, interval_ms, ts);
        outcome.volumes += 1;
    }
    outcome
}

/// The resource and series of one pod.
#[allow(clippy::too_many_arguments)]
fn pod_report(
    out: &mut Collection,
    pod: &PodStats,
    id: &str,
    (namespace, name, uid): (&str, &str, Option<&str>),
    node_name: &Option<String>,
    host_id: &str,
    interval_ms: u32,
    ts: i64,
) {
    let mut labels = BTreeMap::new();
    labels.insert("k8s.namespace.name".to_string(), namespace.to_string());
    labels.insert("k8s.pod.name".to_string(), name.to_string());
    let mut attributes = BTreeMap::new();
    if let Some(uid) = uid {
        attributes.insert("k8s.pod.uid".to_string(), uid.to_string());
    }
    if let Some(node) = node_name {
        attributes.insert("k8s.node.name".to_string(), node.clone());
    }
    out.resources.push(ObservedResource {
        id: id.to_string(),
        kind: kind::K8S_POD_USAGE,
        labels,
        attributes,
        relations: vec![("runs_on".into(), host_id.to_string())],
        interval_ms,
    });
    let cores = |cpu: &Option<super::summary::CpuStats>| {
        cpu.as_ref()
            .and_then(|c| c.usage_nano_cores)
            .map(|n| n / 1e9)
    };
    sample(out, id, metric::K8S_POD_CPU_USAGE, &[], ts, cores(&pod.cpu));
    if let Some(m) = &pod.memory {
        sample(
            out,
            id,
            metric::K8S_POD_MEMORY_WORKING_SET,
            &[],
            ts,
            m.working_set_bytes,
        );
        sample(
            out,
            id,
            metric::K8S_POD_MEMORY_USAGE,
            &[],
            ts,
            m.usage_bytes,
        );
    }
    if let Some(net) = &pod.network {
        // The default interface's figures; without them, the sum of the
        // interfaces listed.
        let sum = |f: fn(&super::summary::InterfaceStats) -> Option<f64>| {
            net.interfaces
                .iter()
                .flatten()
                .filter_map(f)
                .reduce(|a, b| a + b)
        };
        let rx = net.rx_bytes.or_else(|| sum(|i| i.rx_bytes));
        let tx = net.tx_bytes.or_else(|| sum(|i| i.tx_bytes));
        for (direction, value) in [("receive", rx), ("transmit", tx)] {
            sample(
                out,
                id,
                metric::K8S_POD_NETWORK_IO,
                &[("direction", direction)],
                ts,
                value,
            );
        }
    }
    sample(
        out,
        id,
        metric::K8S_POD_FILESYSTEM_USAGE,
        &[],
        ts,
        pod.ephemeral_storage.as_ref().and_then(|e| e.used_bytes),
    );
    for container in pod.containers.iter().flatten() {
        let Some(container_name) = text(&container.name) else {
            continue;
        };
        let attrs = [("k8s.container.name", container_name)];
        sample(
            out,
            id,
            metric::K8S_CONTAINER_CPU_USAGE,
            &attrs,
            ts,
            cores(&container.cpu),
        );
        sample(
            out,
            id,
            metric::K8S_CONTAINER_MEMORY_WORKING_SET,
            &attrs,
            ts,
            container.memory.as_ref().and_then(|m| m.working_set_bytes),
        );
    }
}

/// The resource and series of one claim.
fn volume_report(
    out: &mut Collection,
    id: &str,
    (namespace, name): (&str, &str),
    claim: Claim<'_>,
    interval_ms: u32,
    ts: i64,
) {
    let mut labels = BTreeMap::new();
    labels.insert("k8s.namespace.name".to_string(), namespace.to_string());
    labels.insert(
        "k8s.persistentvolumeclaim.name".to_string(),
        name.to_string(),
    );
    let mut attributes = BTreeMap::new();
    attributes.insert("k8s.pod.name".to_string(), claim.pod_name.to_string());
    if let Some(uid) = claim.pod_uid {
        attributes.insert("k8s.pod.uid".to_string(), uid.to_string());
    }
    if let Some(volume) = claim.volume_name {
        attributes.insert("k8s.volume.name".to_string(), volume.to_string());
    }
    out.resources.push(ObservedResource {
        id: id.to_string(),
        kind: kind::K8S_VOLUME_USAGE,
        labels,
        attributes,
        relations: claim
            .pods
            .into_iter()
            .map(|pod| ("attached_to".to_string(), pod))
            .collect(),
        interval_ms,
    });
    let v = claim.stats;
    for (name, value) in [
        (metric::K8S_VOLUME_AVAILABLE, v.available_bytes),
        (metric::K8S_VOLUME_CAPACITY, v.capacity_bytes),
        (metric::K8S_VOLUME_INODES_FREE, v.inodes_free),
        (metric::K8S_VOLUME_INODES, v.inodes),
    ] {
        sample(out, id, name, &[], ts, value);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::summary::parse;
    use super::*;
    use crate::batch::BatchBuilder;
    use infrawatch_common::resource::canonical_attributes;

    /// A node with two pods: `web-0` (two containers, a claim and an emptyDir)
    /// and `dns` (one container, no volume, a figure missing).
    pub(crate) const SUMMARY: &str = r#"{
      "node": {"nodeName": "node-1", "cpu": {"usageNanoCores": 1200000000}},
      "pods": [
        {
          "podRef": {"name": "web-0", "namespace": "shop", "uid": "0c5b7e2a-1111-4d3e-9f00-000000000001"},
          "startTime": "2024-05-01T10:00:00Z",
          "containers": [
            {"name": "app", "cpu": {"time": "2024-05-01T10:05:00Z", "usageNanoCores": 150000000, "usageCoreNanoSeconds": 1},
             "memory": {"usageBytes": 140000000, "workingSetBytes": 100000000}},
            {"name": "sidecar", "cpu": {"usageNanoCores": 50000000},
             "memory": {"workingSetBytes": 20000000}}
          ],
          "cpu": {"usageNanoCores": 200000000},
          "memory": {"usageBytes": 160000000, "workingSetBytes": 120000000},
          "network": {"name": "eth0", "rxBytes": 5000, "txBytes": 7000,
                      "interfaces": [{"name": "eth0", "rxBytes": 5000, "txBytes": 7000}]},
          "volume": [
            {"name": "data", "pvcRef": {"name": "data-web-0", "namespace": "shop"},
             "availableBytes": 800, "capacityBytes": 1000, "usedBytes": 200,
             "inodesFree": 90, "inodes": 100, "inodesUsed": 10},
            {"name": "cache", "availableBytes": 5, "capacityBytes": 10, "usedBytes": 5}
          ],
          "ephemeral-storage": {"usedBytes": 4096}
        },
        {
          "podRef": {"name": "dns", "namespace": "kube-system", "uid": "0c5b7e2a-2222-4d3e-9f00-000000000002"},
          "containers": [{"name": "coredns", "cpu": {"usageNanoCores": 3000000}}],
          "cpu": {"usageNanoCores": 3000000},
          "memory": {"workingSetBytes": 30000000}
        }
      ]
    }"#;

    const LIMITS: Limits = Limits {
        max_pods: 500,
        max_volumes: 500,
    };

    fn built(json: &str, limits: Limits) -> (Collection, Outcome) {
        let mut out = Collection::default();
        let outcome = build(
            &parse(json.as_bytes()).unwrap(),
            "host/m1",
            15_000,
            1_000,
            limits,
            &mut out,
        );
        (out, outcome)
    }

    /// The samples of `id` as (metric, canonical attributes) → value.
    fn series(out: &Collection, id: &str) -> BTreeMap<(String, String), f64> {
        out.samples
            .iter()
            .filter(|s| s.resource_id == id)
            .map(|s| {
                let attrs = canonical_attributes(
                    s.attributes.iter().map(|(k, v)| (k.as_ref(), v.as_str())),
                );
                ((s.metric.to_string(), attrs), s.value)
            })
            .collect()
    }

    fn key(metric: &str, attrs: &str) -> (String, String) {
        (metric.to_string(), attrs.to_string())
    }

    #[test]
    fn pods_containers_and_claims_become_resources_and_series() {
        let (out, outcome) = built(SUMMARY, LIMITS);
        assert_eq!(
            outcome,
            Outcome {
                pods: 2,
                volumes: 1,
                ..Outcome::default()
            }
        );
        let ids: Vec<&str> = out.resources.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "host/m1/pod/kube-system/dns",
                "host/m1/pod/shop/web-0",
                "host/m1/volume/shop/data-web-0",
            ],
            "the emptyDir volume has no resource"
        );
        for id in &ids {
            assert!(
                infrawatch_common::resource::agent_may_report("m1", id),
                "{id}"
            );
        }

        let web = &out.resources[1];
        assert_eq!(web.kind, "k8s_pod_usage");
        assert_eq!(web.labels["k8s.namespace.name"], "shop");
        assert_eq!(web.labels["k8s.pod.name"], "web-0");
        assert_eq!(
            web.attributes["k8s.pod.uid"],
            "0c5b7e2a-1111-4d3e-9f00-000000000001"
        );
        assert_eq!(web.attributes["k8s.node.name"], "node-1");
        assert_eq!(
            web.relations,
            vec![("runs_on".to_string(), "host/m1".to_string())]
        );
        assert_eq!(web.interval_ms, 15_000);

        let s = series(&out, "host/m1/pod/shop/web-0");
        let expected = BTreeMap::from([
            (key("k8s.pod.cpu.usage", ""), 0.2),
            (key("k8s.pod.memory.working_set", ""), 120e6),
            (key("k8s.pod.memory.usage", ""), 160e6),
            (key("k8s.pod.network.io", "direction=\"receive\""), 5000.0),
            (key("k8s.pod.network.io", "direction=\"transmit\""), 7000.0),
            (key("k8s.pod.filesystem.usage", ""), 4096.0),
            (
                key("k8s.container.cpu.usage", "k8s.container.name=\"app\""),
                0.15,
            ),
            (
                key("k8s.container.cpu.usage", "k8s.container.name=\"sidecar\""),
                0.05,
            ),
            (
                key(
                    "k8s.container.memory.working_set",
                    "k8s.container.name=\"app\"",
                ),
                100e6,
            ),
            (
                key(
                    "k8s.container.memory.working_set",
                    "k8s.container.name=\"sidecar\"",
                ),
                20e6,
            ),
        ]);
        assert_eq!(s, expected);

        // The dns pod has no network, no ephemeral storage, no memory usage and
        // no container memory: those series are simply absent.
        let s = series(&out, "host/m1/pod/kube-system/dns");
        let names: Vec<_> = s.keys().map(|(m, a)| format!("{m}{{{a}}}")).collect();
        assert_eq!(
            names,
            vec![
                "k8s.container.cpu.usage{k8s.container.name=\"coredns\"}",
                "k8s.pod.cpu.usage{}",
                "k8s.pod.memory.working_set{}",
            ]
        );

        let volume = &out.resources[2];
        assert_eq!(volume.kind, "k8s_volume_usage");
        assert_eq!(volume.labels["k8s.namespace.name"], "shop");
        assert_eq!(
            volume.labels["k8s.persistentvolumeclaim.name"],
            "data-web-0"
        );
        assert_eq!(
            volume.attributes["k8s.pod.uid"],
            "0c5b7e2a-1111-4d3e-9f00-000000000001"
        );
        assert_eq!(volume.attributes["k8s.volume.name"], "data");
        assert_eq!(
            volume.relations,
            vec![(
                "attached_to".to_string(),
                "host/m1/pod/shop/web-0".to_string()
            )]
        );
        let s = series(&out, "host/m1/volume/shop/data-web-0");
        assert_eq!(
            s,
            BTreeMap::from([
                (key("k8s.volume.available", ""), 800.0),
                (key("k8s.volume.capacity", ""), 1000.0),
                (key("k8s.volume.inodes.free", ""), 90.0),
                (key("k8s.volume.inodes", ""), 100.0),
            ])
        );
        assert!(out.samples.iter().all(|s| s.timestamp_ms == 1_000));
    }

    #[test]
    fn everything_the_batch_builder_is_given_is_accepted() {
        let (out, _) = built(SUMMARY, LIMITS);
        let samples = out.samples.len();
        let mut b = BatchBuilder::default();
        b.add(out);
        let batch = b.finish(1);
        assert_eq!(batch.resources.len(), 3);
        assert_eq!(batch.samples.unwrap().values.len(), samples);
    }

    #[test]
    fn missing_fields_and_unnamed_pods_are_skipped() {
        let json = r#"{"pods":[
            {},
            {"podRef":{"name":"a"}},
            {"podRef":{"namespace":"ns","name":""}},
            {"podRef":{"namespace":"ns","name":"bad name"}},
            {"podRef":{"namespace":"ns","name":"ok"},"cpu":{},"memory":null,"network":{},
             "containers":[{},{"name":"c"}],
             "volume":[{"pvcRef":{}},{"name":"v","pvcRef":{"name":"claim"}}]},
            {"podRef":{"namespace":"ns","name":"ok","uid":"second"}}
        ]}"#;
        let (out, outcome) = built(json, LIMITS);
        assert_eq!(outcome.pods, 1);
        assert_eq!(outcome.pods_skipped, 5);
        assert_eq!(outcome.volumes, 1);
        assert!(out.samples.is_empty(), "{:?}", out.samples);
        let ids: Vec<&str> = out.resources.iter().map(|r| r.id.as_str()).collect();
        // A claim without a namespace is in its pod's.
        assert_eq!(ids, vec!["host/m1/pod/ns/ok", "host/m1/volume/ns/claim"]);
        assert!(!out.resources[0].attributes.contains_key("k8s.pod.uid"));
        let (out, outcome) = built("{}", LIMITS);
        assert_eq!((out, outcome), (Collection::default(), Outcome::default()));
    }

    #[test]
    fn caps_keep_the_first_pods_and_claims_by_name() {
        let pods: Vec<String> = (0..5)
            .rev()
            .map(|i| {
                format!(
                    r#"{{"podRef":{{"namespace":"ns","name":"p{i}"}},"cpu":{{"usageNanoCores":1}},
                        "volume":[{{"name":"v","pvcRef":{{"name":"c{i}","namespace":"ns"}},"capacityBytes":1}},
                                  {{"name":"shared","pvcRef":{{"name":"shared","namespace":"ns"}},"capacityBytes":1}}]}}"#
                )
            })
            .collect();
        let json = format!(r#"{{"pods":[{}]}}"#, pods.join(","));
        let (out, outcome) = built(
            &json,
            Limits {
                max_pods: 3,
                max_volumes: 2,
            },
        );
        assert_eq!(
            outcome,
            Outcome {
                pods: 3,
                volumes: 2,
                pods_left_out: 2,
                // c0, c1, c2 and shared: the claims of the pods reported.
                volumes_left_out: 2,
                pods_skipped: 0,
            }
        );
        let ids: Vec<&str> = out.resources.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "host/m1/pod/ns/p0",
                "host/m1/pod/ns/p1",
                "host/m1/pod/ns/p2",
                "host/m1/volume/ns/c0",
                "host/m1/volume/ns/c1",
            ]
        );
        // A claim mounted by several pods is one resource attached to each.
        let (out, _) = built(&json, LIMITS);
        let shared = out
            .resources
            .iter()
            .find(|r| r.id == "host/m1/volume/ns/shared")
            .unwrap();
        assert_eq!(shared.relations.len(), 5);
        assert_eq!(shared.attributes["k8s.pod.name"], "p0");
    }
}
