//! What a Kubernetes cluster's pods use against what they request, summed per
//! namespace, workload or node: the answer of `GET /api/v1/kubernetes/usage`.
//!
//! Three steps; only the second reads anything but the model:
//!
//! 1. [`pods_of`]: the cluster's active pods (phase neither `Succeeded` nor
//!    `Failed`) from the model, within the caller's scope, each with its
//!    namespace, node, workload, requests and limits (the pod's attributes),
//!    and the resource under which its node's agent reports its use
//!    (`k8s.pod.usage.resource`, from the kubelet).
//! 2. [`Readings`]: that use. An agent streams to one replica, so the newest
//!    figures come from this replica's memory where the agent streams here
//!    ([`from_memory`]), else from the newest stored one-minute rollups that
//!    whichever replica holds the agent flushed ([`Readings::add_stored`]; one
//!    query for every pod missing). A figure sampled more than [`FRESH_MS`]
//!    ago counts as none.
//! 3. [`summarize`]: the sums per group, sorted by name.
//!
//! A pod's workload is its top owner: a ReplicaSet's Deployment, a Job's
//! CronJob (through their `member_of` relations in the model), else its direct
//! owner; a pod without owner is a workload of its own, of kind `Pod`.
//!
//! Use figures are summed over the pods that have them, so a group says how
//! many pods have any (`pods_with_usage`), and a ratio of use to request
//! divides by the requests of the pods with that figure only: pods whose agent
//! is silent neither count as idle nor dilute the ratio. Network figures are
//! what the kubelet reports: bytes since each pod started (counters), not rates.
//! Limits sum the limits set; a pod without a limit adds nothing to them.

use std::collections::{BTreeMap, HashMap};

use infrawatch_common::resource::metric;

use crate::auth::scope::Scope;
use crate::model::ResourceRecord;
use crate::samples::SeriesKey;
use crate::samples::series::ROLLUP_BUCKET_MS;
use crate::sources::k8s::ids;
use crate::sources::k8s::objects::Kind;
use crate::state::{Model, State};
use crate::store::{LatestRollup, RolledUpResources, Store, StoreError};

/// A use figure sampled longer ago than this (ms) counts as none.
pub const FRESH_MS: i64 = 5 * 60_000;

/// The metrics read for each pod.
pub const USAGE_METRICS: [&str; 4] = [
    metric::K8S_POD_CPU_USAGE,
    metric::K8S_POD_MEMORY_WORKING_SET,
    metric::K8S_POD_NETWORK_IO,
    metric::K8S_POD_FILESYSTEM_USAGE,
];

/// The canonical attributes of the received-bytes series of
/// [`metric::K8S_POD_NETWORK_IO`].
const RECEIVE: &str = "direction=\"receive\"";
/// ... and of the sent bytes.
const TRANSMIT: &str = "direction=\"transmit\"";

/// The workload kind of a pod without owner.
pub const POD_KIND: &str = "Pod";

/// How pods are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Per namespace.
    Namespace,
    /// Per top owner (see the module doc), within its namespace.
    Workload,
    /// Per node; pods not yet scheduled are in no group.
    Node,
}

impl GroupBy {
    /// Every grouping, in the order messages list them.
    pub const ALL: [GroupBy; 3] = [GroupBy::Namespace, GroupBy::Workload, GroupBy::Node];

    /// The name in the API: `namespace`, `workload`, `node`.
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Namespace => "namespace",
            GroupBy::Workload => "workload",
            GroupBy::Node => "node",
        }
    }

    /// The grouping named `name`, if any.
    pub fn parse(name: &str) -> Option<GroupBy> {
        GroupBy::ALL.into_iter().find(|g| g.name() == name)
    }
}

/// Why usage could not be summed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// No cluster of that name is watched, or the caller's scope leaves it out
    /// (the same answer, so a scope reveals nothing of other clusters).
    #[error("no watched cluster named {0:?}")]
    UnknownCluster(String),
    /// The stored rollups could not be read.
    #[error("the stored usage of other replicas' agents could not be read")]
    Store(#[source] StoreError),
}

/// What to sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery<'a> {
    /// The cluster's name.
    pub cluster: &'a str,
    /// How to group.
    pub by: GroupBy,
    /// Only this namespace.
    pub namespace: Option<&'a str>,
}

/// A pod's workload: its top owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    /// The Kubernetes kind (`Deployment`, `StatefulSet`, ..., [`POD_KIND`]).
    pub kind: &'static str,
    /// Its name.
    pub name: String,
}

/// CPU (cores) or memory (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Amounts {
    /// CPU, cores.
    pub cpu: f64,
    /// Memory, bytes.
    pub memory: f64,
}

/// One active pod as the model describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its node; empty while it is not scheduled.
    pub node: String,
    /// Its top owner.
    pub workload: Workload,
    /// Sum of its containers' requests.
    pub requests: Amounts,
    /// Sum of its containers' limits (those set).
    pub limits: Amounts,
    /// Where its node's agent reports its use, once its node's machine is known.
    pub usage_resource: Option<String>,
}

/// What one pod uses, as far as known: each figure from a sample of the last
/// [`FRESH_MS`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodUsage {
    /// CPU, cores.
    pub cpu_cores: Option<f64>,
    /// Memory working set, bytes.
    pub working_set_bytes: Option<f64>,
    /// Bytes received since the pod started.
    pub receive_bytes: Option<f64>,
    /// Bytes sent since the pod started.
    pub transmit_bytes: Option<f64>,
    /// Ephemeral storage in use, bytes.
    pub ephemeral_storage_bytes: Option<f64>,
}

impl PodUsage {
    /// Takes `value` of series `metric{attributes}` when it is one of the
    /// figures.
    fn note(&mut self, metric: &str, attributes: &str, value: f64) {
        let slot = match (metric, attributes) {
            (metric::K8S_POD_CPU_USAGE, "") => &mut self.cpu_cores,
            (metric::K8S_POD_MEMORY_WORKING_SET, "") => &mut self.working_set_bytes,
            (metric::K8S_POD_NETWORK_IO, RECEIVE) => &mut self.receive_bytes,
            (metric::K8S_POD_NETWORK_IO, TRANSMIT) => &mut self.transmit_bytes,
            (metric::K8S_POD_FILESYSTEM_USAGE, "") => &mut self.ephemeral_storage_bytes,
            _ => return,
        };
        if value.is_finite() {
            *slot = Some(value);
        }
    }

    /// True when no figure is known.
    pub fn is_empty(&self) -> bool {
        *self == PodUsage::default()
    }
}

/// The use of each pod usage resource (by id) that has any fresh figure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readings(pub HashMap<String, PodUsage>);

impl Readings {
    /// Adds the stored rollups sampled at or after `now_ms -`[`FRESH_MS`],
    /// for resources without a reading yet.
    pub fn add_stored(&mut self, rollups: &[LatestRollup], now_ms: i64) {
        let mut stored: HashMap<&str, PodUsage> = HashMap::new();
        for r in rollups
            .iter()
            .filter(|r| r.sampled_at_ms >= now_ms.saturating_sub(FRESH_MS))
        {
            stored.entry(&r.key.resource_id).or_default().note(
                &r.key.metric,
                &r.key.attributes,
                r.value,
            );
        }
        for (id, usage) in stored {
            if !usage.is_empty() && !self.0.contains_key(id) {
                self.0.insert(id.to_string(), usage);
            }
        }
    }

    /// The usage resources of `pods` that have no reading (each once).
    pub fn missing(&self, pods: &[PodFacts]) -> Vec<String> {
        let mut ids: Vec<String> = pods
            .iter()
            .filter_map(|p| p.usage_resource.as_ref())
            .filter(|id| !self.0.contains_key(*id))
            .cloned()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Sums of one figure against requests and limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Compared {
    /// Sum of the use of the pods with a figure; `None` when none has one.
    pub usage: Option<f64>,
    /// Sum of the requests of every pod.
    pub request: f64,
    /// Sum of the limits set.
    pub limit: f64,
    /// Sum of the requests of the pods with a figure.
    pub request_with_usage: f64,
}

impl Compared {
    fn add(&mut self, usage: Option<f64>, request: f64, limit: f64) {
        self.request += request;
        self.limit += limit;
        if let Some(u) = usage {
            self.usage = Some(self.usage.unwrap_or(0.0) + u);
            self.request_with_usage += request;
        }
    }

    /// Use over request, of the pods with a figure; `None` without figures or
    /// without requests among them.
    pub fn usage_of_request(&self) -> Option<f64> {
        let usage = self.usage?;
        (self.request_with_usage > 0.0).then(|| usage / self.request_with_usage)
    }
}

/// The sums of one group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    /// The namespace, workload or node name.
    pub name: String,
    /// The namespace (groups by namespace and by workload).
    pub namespace: Option<String>,
    /// The workload kind (groups by workload).
    pub kind: Option<&'static str>,
    /// Active pods.
    pub pods: usize,
    /// Those with any fresh use figure.
    pub pods_with_usage: usize,
    /// CPU, cores.
    pub cpu: Compared,
    /// Memory: the working set against requests and limits, bytes.
    pub memory: Compared,
    /// Bytes received since each pod started, summed.
    pub receive_bytes: Option<f64>,
    /// Bytes sent since each pod started, summed.
    pub transmit_bytes: Option<f64>,
    /// Ephemeral storage in use, bytes.
    pub ephemeral_storage_bytes: Option<f64>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The groups, sorted by name (then namespace and kind).
    pub groups: Vec<Group>,
    /// The time the figures were judged fresh against (Unix ms).
    pub as_of_ms: i64,
}

/// Sums the use of the pods of `query` within `scope` at `now_ms`: pods from
/// the model, use from this replica's memory, else from the stored rollups (one
/// query).
pub async fn usage(
    state: &State,
    store: &Store,
    query: &UsageQuery<'_>,
    scope: Option<&Scope>,
    now_ms: i64,
) -> Result<Usage, UsageError> {
    let pods = pods_of(&state.read(), query, scope)?;
    let mut readings = from_memory(&pods, now_ms, |id| state.samples.latest_of(id));
    let missing = readings.missing(&pods);
    if !missing.is_empty() {
        // A minute's rollup may hold a sample up to a minute after its start.
        let since = now_ms.saturating_sub(FRESH_MS + ROLLUP_BUCKET_MS);
        let stored = store
            .latest_rollups(RolledUpResources::Ids(&missing), &USAGE_METRICS, since)
            .await
            .map_err(UsageError::Store)?;
        readings.add_stored(&stored, now_ms);
    }
    Ok(Usage {
        groups: summarize(&pods, &readings, query.by),
        as_of_ms: now_ms,
    })
}

/// The active pods of `query` in `model` that `scope` admits.
pub fn pods_of(
    model: &Model,
    query: &UsageQuery<'_>,
    scope: Option<&Scope>,
) -> Result<Vec<PodFacts>, UsageError> {
    let cluster = query.cluster;
    let visible = model.resources.contains_key(&ids::cluster(cluster))
        && scope.is_none_or(|s| s.clusters.is_empty() || s.clusters.iter().any(|c| c == cluster));
    if !visible {
        return Err(UsageError::UnknownCluster(cluster.to_string()));
    }
    let pods_prefix = format!("k8s/{cluster}/pod/");
    let prefix = match query.namespace {
        Some(ns) => format!("{pods_prefix}{ns}/"),
        None => pods_prefix.clone(),
    };
    let pod_kind = ids::resource_kind(Kind::Pod);
    let mut pods = Vec::new();
    for (id, tracked) in model
        .resources
        .range(prefix.clone()..)
        .take_while(|(id, _)| id.starts_with(&prefix))
    {
        let r = &tracked.record;
        let finished = matches!(
            r.attributes.get("k8s.pod.phase").map(String::as_str),
            Some("Succeeded" | "Failed")
        );
        if r.kind != pod_kind || finished || scope.is_some_and(|s| !s.admits_record(r)) {
            continue;
        }
        let Some((namespace, name)) = id
            .strip_prefix(&pods_prefix)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        let figure = |key: &str| {
            r.attributes
                .get(key)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
        };
        pods.push(PodFacts {
            namespace: namespace.to_string(),
            name: name.to_string(),
            node: r.labels.get("k8s.node.name").cloned().unwrap_or_default(),
            workload: workload_of(model, cluster, namespace, name, r),
            requests: Amounts {
                cpu: figure("k8s.pod.cpu.request"),
                memory: figure("k8s.pod.memory.request"),
            },
            limits: Amounts {
                cpu: figure("k8s.pod.cpu.limit"),
                memory: figure("k8s.pod.memory.limit"),
            },
            usage_resource: r
                .attributes
                .get("k8s.pod.usage.resource")
                .filter(|v| !v.is_empty())
                .cloned(),
        });
    }
    Ok(pods)
}

/// The top owner of pod `name` (record `pod`): see the module doc.
fn workload_of(
    model: &Model,
    cluster: &str,
    namespace: &str,
    name: &str,
    pod: &ResourceRecord,
) -> Workload {
    let Some((kind, owner)) = owner_of(cluster, namespace, pod) else {
        return Workload {
            kind: POD_KIND,
            name: name.to_string(),
        };
    };
    let direct = Workload {
        kind: kind.api_kind(),
        name: owner.to_string(),
    };
    let above = match kind {
        Kind::ReplicaSet => Kind::Deployment,
        Kind::Job => Kind::CronJob,
        _ => return direct,
    };
    let owner_id = ids::of(
        cluster,
        &crate::sources::k8s::objects::Key::new(kind, namespace, owner),
    );
    model
        .resources
        .get(&owner_id)
        .and_then(|o| owner_of(cluster, namespace, &o.record))
        .filter(|(k, _)| *k == above)
        .map_or(direct, |(k, n)| Workload {
            kind: k.api_kind(),
            name: n.to_string(),
        })
}

/// The kind and name of the owner of `record` (its `member_of` relation to an
/// object of the same cluster and namespace), if any.
fn owner_of<'a>(
    cluster: &str,
    namespace: &str,
    record: &'a ResourceRecord,
) -> Option<(Kind, &'a str)> {
    record
        .relations
        .iter()
        .filter(|r| r.relation_type == "member_of")
        .find_map(|r| {
            let rest = r
                .to_id
                .strip_prefix("k8s/")?
                .strip_prefix(cluster)?
                .strip_prefix('/')?;
            let (segment, rest) = rest.split_once('/')?;
            let name = rest.strip_prefix(namespace)?.strip_prefix('/')?;
            let kind = Kind::ALL.into_iter().find(|k| k.segment() == segment)?;
            (!name.is_empty() && !name.contains('/')).then_some((kind, name))
        })
}

/// The fresh figures at `now_ms` of the pods' usage resources, from `latest`
/// (the newest sample of every series of a resource: this replica's memory).
pub fn from_memory(
    pods: &[PodFacts],
    now_ms: i64,
    latest: impl Fn(&str) -> Vec<(SeriesKey, i64, f64)>,
) -> Readings {
    let fresh_since = now_ms.saturating_sub(FRESH_MS);
    let mut readings = Readings::default();
    for id in pods.iter().filter_map(|p| p.usage_resource.as_deref()) {
        if readings.0.contains_key(id) {
            continue;
        }
        let mut usage = PodUsage::default();
        for (key, ts, value) in latest(id) {
            if ts >= fresh_since {
                usage.note(&key.metric, &key.attributes, value);
            }
        }
        if !usage.is_empty() {
            readings.0.insert(id.to_string(), usage);
        }
    }
    readings
}

/// The sums of `pods` with `readings`, grouped `by`, sorted by name.
pub fn summarize(pods: &[PodFacts], readings: &Readings, by: GroupBy) -> Vec<Group> {
    let mut groups: BTreeMap<(&str, &str, &str), Group> = BTreeMap::new();
    for pod in pods {
        let key = match by {
            GroupBy::Namespace => (pod.namespace.as_str(), pod.namespace.as_str(), ""),
            GroupBy::Workload => (
                pod.workload.name.as_str(),
                pod.namespace.as_str(),
                pod.workload.kind,
            ),
            GroupBy::Node if pod.node.is_empty() => continue,
            GroupBy::Node => (pod.node.as_str(), "", ""),
        };
        let g = groups.entry(key).or_insert_with(|| Group {
            name: key.0.to_string(),
            namespace: (by != GroupBy::Node).then(|| pod.namespace.clone()),
            kind: (by == GroupBy::Workload).then_some(pod.workload.kind),
            ..Group::default()
        });
        let usage = pod
            .usage_resource
            .as_ref()
            .and_then(|id| readings.0.get(id))
            .copied()
            .unwrap_or_default();
        g.pods += 1;
        g.pods_with_usage += usize::from(!usage.is_empty());
        g.cpu.add(usage.cpu_cores, pod.requests.cpu, pod.limits.cpu);
        g.memory.add(
            usage.working_set_bytes,
            pod.requests.memory,
            pod.limits.memory,
        );
        for (sum, value) in [
            (&mut g.receive_bytes, usage.receive_bytes),
            (&mut g.transmit_bytes, usage.transmit_bytes),
            (
                &mut g.ephemeral_storage_bytes,
                usage.ephemeral_storage_bytes,
            ),
        ] {
            if let Some(v) = value {
                *sum = Some(sum.unwrap_or(0.0) + v);
            }
        }
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use infrawatch_common::resource::canonical_attributes;

    use super::*;
    use crate::model::{Health, Relation};
    use crate::state::Tracked;

    const NOW: i64 = 1_800_000_000_000;

    fn record(id: &str, kind: &str, relations: &[(&str, &str)]) -> ResourceRecord {
        ResourceRecord {
            id: id.into(),
            kind: kind.into(),
            labels: BTreeMap::new(),
            attributes: BTreeMap::new(),
            relations: relations
                .iter()
                .map(|(t, to)| Relation {
                    relation_type: t.to_string(),
                    to_id: to.to_string(),
                })
                .collect(),
            health: Health::Healthy,
            reasons: vec![],
            observed_at_ms: NOW,
            version: 1,
            source: "k8s/prod".into(),
            interval_ms: 0,
        }
    }

    /// Pod `ns/name` of cluster `prod` on `node`, requesting `cpu` cores and
    /// `memory` bytes (limits twice that), owned through `owner`.
    fn pod(
        ns: &str,
        name: &str,
        node: &str,
        owner: Option<&str>,
        cpu: f64,
        memory: f64,
    ) -> ResourceRecord {
        let relations: Vec<(&str, &str)> = owner.map(|o| ("member_of", o)).into_iter().collect();
        let mut r = record(&format!("k8s/prod/pod/{ns}/{name}"), "k8s_pod", &relations);
        r.labels.insert("k8s.cluster.name".into(), "prod".into());
        r.labels.insert("k8s.namespace.name".into(), ns.into());
        r.labels.insert("k8s.node.name".into(), node.into());
        for (key, value) in [
            ("k8s.pod.phase", "Running".to_string()),
            ("k8s.pod.cpu.request", cpu.to_string()),
            ("k8s.pod.cpu.limit", (2.0 * cpu).to_string()),
            ("k8s.pod.memory.request", memory.to_string()),
            ("k8s.pod.memory.limit", (2.0 * memory).to_string()),
            (
                "k8s.pod.usage.resource",
                format!("host/m-{node}/pod/{ns}/{name}"),
            ),
        ] {
            r.attributes.insert(key.into(), value);
        }
        r
    }

    fn model(records: Vec<ResourceRecord>) -> Model {
        let mut resources = BTreeMap::new();
        resources.insert(
            "k8s/prod/cluster".to_string(),
            Tracked::new(record("k8s/prod/cluster", "k8s_cluster", &[]), NOW),
        );
        for r in records {
            resources.insert(r.id.clone(), Tracked::new(r, NOW));
        }
        Model {
            resources,
            tombstones: HashMap::new(),
        }
    }

    /// A shop: Deployment `web` (ReplicaSet `web-1`, two pods), StatefulSet
    /// `db` (one pod), CronJob `report` (Job `report-1`, one pod), a Job
    /// without CronJob, a bare pod, a finished pod, and `kube-system/dns`.
    fn shop() -> Model {
        let mut finished = pod("shop", "old", "n1", None, 5.0, 5.0);
        finished
            .attributes
            .insert("k8s.pod.phase".into(), "Succeeded".into());
        let mut failed = pod("shop", "broken", "n1", None, 5.0, 5.0);
        failed
            .attributes
            .insert("k8s.pod.phase".into(), "Failed".into());
        let mut pending = pod("shop", "waiting", "", None, 0.5, 100.0);
        pending.labels.remove("k8s.node.name");
        pending.attributes.remove("k8s.pod.usage.resource");
        model(vec![
            record(
                "k8s/prod/replicaset/shop/web-1",
                "k8s_replicaset",
                &[("member_of", "k8s/prod/deployment/shop/web")],
            ),
            record("k8s/prod/deployment/shop/web", "k8s_deployment", &[]),
            record(
                "k8s/prod/job/shop/report-1",
                "k8s_job",
                &[("member_of", "k8s/prod/cronjob/shop/report")],
            ),
            record("k8s/prod/job/shop/once", "k8s_job", &[]),
            pod(
                "shop",
                "web-1-a",
                "n1",
                Some("k8s/prod/replicaset/shop/web-1"),
                0.25,
                1000.0,
            ),
            pod(
                "shop",
                "web-1-b",
                "n2",
                Some("k8s/prod/replicaset/shop/web-1"),
                0.25,
                1000.0,
            ),
            pod(
                "shop",
                "db-0",
                "n2",
                Some("k8s/prod/statefulset/shop/db"),
                1.0,
                4000.0,
            ),
            pod(
                "shop",
                "report-1-x",
                "n1",
                Some("k8s/prod/job/shop/report-1"),
                0.1,
                10.0,
            ),
            pod(
                "shop",
                "once-y",
                "n1",
                Some("k8s/prod/job/shop/once"),
                0.1,
                10.0,
            ),
            pod(
                "shop",
                "orphan-rs",
                "n1",
                Some("k8s/prod/replicaset/shop/gone"),
                0.1,
                10.0,
            ),
            finished,
            failed,
            pending,
            pod(
                "kube-system",
                "dns",
                "n1",
                Some("k8s/prod/daemonset/kube-system/dns"),
                0.1,
                70.0,
            ),
            pod("other", "x", "n9", None, 1.0, 1.0),
        ])
    }

    fn query(by: GroupBy) -> UsageQuery<'static> {
        UsageQuery {
            cluster: "prod",
            by,
            namespace: None,
        }
    }

    fn sample(id: &str, metric: &str, attributes: &str, ts: i64, v: f64) -> (SeriesKey, i64, f64) {
        (SeriesKey::new(id, metric, attributes), ts, v)
    }

    fn workloads(pods: &[PodFacts]) -> BTreeMap<&str, (&str, &str)> {
        pods.iter()
            .map(|p| (p.name.as_str(), (p.workload.kind, p.workload.name.as_str())))
            .collect()
    }

    #[test]
    fn a_pod_belongs_to_its_top_owner() {
        let m = shop();
        let pods = pods_of(&m, &query(GroupBy::Workload), None).unwrap();
        let w = workloads(&pods);
        assert_eq!(
            w["web-1-a"],
            ("Deployment", "web"),
            "ReplicaSet -> Deployment"
        );
        assert_eq!(w["db-0"], ("StatefulSet", "db"), "the direct owner");
        assert_eq!(w["report-1-x"], ("CronJob", "report"), "Job -> CronJob");
        assert_eq!(w["once-y"], ("Job", "once"), "a Job without CronJob");
        assert_eq!(
            w["orphan-rs"],
            ("ReplicaSet", "gone"),
            "a ReplicaSet not (or no longer) in the model stays the owner"
        );
        assert_eq!(
            w["waiting"],
            ("Pod", "waiting"),
            "no owner: its own workload"
        );
        assert_eq!(w["dns"], ("DaemonSet", "dns"));
    }

    #[test]
    fn finished_pods_do_not_count() {
        let m = shop();
        let pods = pods_of(&m, &query(GroupBy::Namespace), None).unwrap();
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert!(
            !names.contains(&"old") && !names.contains(&"broken"),
            "{names:?}"
        );
        assert!(
            names.contains(&"waiting"),
            "pending pods request resources: {names:?}"
        );
        assert_eq!(pods.len(), 9);
    }

    #[test]
    fn a_namespace_narrows_the_pods() {
        let m = shop();
        let q = UsageQuery {
            namespace: Some("kube-system"),
            ..query(GroupBy::Namespace)
        };
        let pods = pods_of(&m, &q, None).unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].name, "dns");
        // A namespace whose name starts another's takes none of the other's.
        let q = UsageQuery {
            namespace: Some("sho"),
            ..query(GroupBy::Namespace)
        };
        assert!(pods_of(&m, &q, None).unwrap().is_empty());
    }

    #[test]
    fn a_scope_sees_its_namespaces_and_clusters_only() {
        let m = shop();
        let scope = Scope {
            clusters: vec![],
            namespaces: vec!["kube-system".into()],
        };
        let pods = pods_of(&m, &query(GroupBy::Node), Some(&scope)).unwrap();
        let groups = summarize(&pods, &Readings::default(), GroupBy::Node);
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!(
            (groups[0].name.as_str(), groups[0].pods),
            ("n1", 1),
            "only its pods count on a node"
        );

        let elsewhere = Scope {
            clusters: vec!["staging".into()],
            namespaces: vec![],
        };
        assert!(matches!(
            pods_of(&m, &query(GroupBy::Node), Some(&elsewhere)),
            Err(UsageError::UnknownCluster(c)) if c == "prod"
        ));
        let unknown = UsageQuery {
            cluster: "nope",
            ..query(GroupBy::Node)
        };
        assert!(matches!(
            pods_of(&m, &unknown, None),
            Err(UsageError::UnknownCluster(_))
        ));
    }

    #[test]
    fn sums_per_namespace_workload_and_node() {
        let m = shop();
        let pods = pods_of(&m, &query(GroupBy::Workload), None).unwrap();
        let latest = |id: &str| match id {
            "host/m-n1/pod/shop/web-1-a" => vec![
                sample(id, metric::K8S_POD_CPU_USAGE, "", NOW - 1_000, 0.2),
                sample(
                    id,
                    metric::K8S_POD_MEMORY_WORKING_SET,
                    "",
                    NOW - 1_000,
                    600.0,
                ),
                sample(id, metric::K8S_POD_NETWORK_IO, RECEIVE, NOW - 1_000, 10.0),
                sample(id, metric::K8S_POD_NETWORK_IO, TRANSMIT, NOW - 1_000, 20.0),
                sample(
                    id,
                    metric::K8S_POD_FILESYSTEM_USAGE,
                    "",
                    NOW - 1_000,
                    4096.0,
                ),
                // Container series are not the pod's figures.
                sample(
                    id,
                    metric::K8S_CONTAINER_CPU_USAGE,
                    "k8s.container.name=\"app\"",
                    NOW,
                    9.0,
                ),
            ],
            "host/m-n2/pod/shop/web-1-b" => vec![
                sample(id, metric::K8S_POD_CPU_USAGE, "", NOW - 2_000, 0.3),
                sample(
                    id,
                    metric::K8S_POD_MEMORY_WORKING_SET,
                    "",
                    NOW - 2_000,
                    900.0,
                ),
            ],
            _ => vec![],
        };
        let readings = from_memory(&pods, NOW, latest);

        let by_workload = summarize(&pods, &readings, GroupBy::Workload);
        let names: Vec<(&str, Option<&str>)> = by_workload
            .iter()
            .map(|g| (g.name.as_str(), g.kind))
            .collect();
        assert_eq!(
            names,
            vec![
                ("db", Some("StatefulSet")),
                ("dns", Some("DaemonSet")),
                ("gone", Some("ReplicaSet")),
                ("once", Some("Job")),
                ("report", Some("CronJob")),
                ("waiting", Some("Pod")),
                ("web", Some("Deployment")),
                ("x", Some("Pod")),
            ],
            "sorted by name"
        );
        let web = by_workload.iter().find(|g| g.name == "web").unwrap();
        assert_eq!(web.namespace.as_deref(), Some("shop"));
        assert_eq!((web.pods, web.pods_with_usage), (2, 2));
        assert!((web.cpu.usage.unwrap() - 0.5).abs() < 1e-9);
        assert!((web.cpu.request - 0.5).abs() < 1e-9);
        assert!((web.cpu.limit - 1.0).abs() < 1e-9);
        assert!((web.cpu.usage_of_request().unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(web.memory.usage, Some(1500.0));
        assert_eq!(web.memory.request, 2000.0);
        assert_eq!(web.memory.limit, 4000.0);
        assert_eq!(web.memory.usage_of_request(), Some(0.75));
        assert_eq!(
            web.receive_bytes,
            Some(10.0),
            "only web-1-a reports network"
        );
        assert_eq!(web.transmit_bytes, Some(20.0));
        assert_eq!(web.ephemeral_storage_bytes, Some(4096.0));
        let db = by_workload.iter().find(|g| g.name == "db").unwrap();
        assert_eq!((db.pods, db.pods_with_usage), (1, 0));
        assert_eq!(db.cpu.usage, None, "no figure is not zero");
        assert_eq!(db.cpu.usage_of_request(), None);
        assert_eq!(db.cpu.request, 1.0);

        let by_namespace = summarize(&pods, &readings, GroupBy::Namespace);
        let shop = by_namespace.iter().find(|g| g.name == "shop").unwrap();
        assert_eq!(shop.namespace.as_deref(), Some("shop"));
        assert_eq!(shop.kind, None);
        assert_eq!((shop.pods, shop.pods_with_usage), (7, 2));
        assert!((shop.cpu.request - (0.25 + 0.25 + 1.0 + 0.1 + 0.1 + 0.1 + 0.5)).abs() < 1e-9);
        // The ratio is over the pods with figures: web's 0.5 cores used of 0.5.
        assert!((shop.cpu.usage_of_request().unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(
            by_namespace
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>(),
            vec!["kube-system", "other", "shop"]
        );

        let by_node = summarize(&pods, &readings, GroupBy::Node);
        assert_eq!(
            by_node
                .iter()
                .map(|g| (g.name.as_str(), g.pods))
                .collect::<Vec<_>>(),
            vec![("n1", 5), ("n2", 2), ("n9", 1)],
            "the pending pod is on no node"
        );
        assert!(
            by_node
                .iter()
                .all(|g| g.namespace.is_none() && g.kind.is_none())
        );
        let n2 = &by_node[1];
        assert!((n2.cpu.usage.unwrap() - 0.3).abs() < 1e-9);
        assert!((n2.cpu.request - 1.25).abs() < 1e-9);
        assert!((n2.cpu.usage_of_request().unwrap() - 0.3 / 0.25).abs() < 1e-9);
    }

    #[test]
    fn stale_figures_count_as_none() {
        let m = shop();
        let pods = pods_of(&m, &query(GroupBy::Workload), None).unwrap();
        let latest = |id: &str| match id {
            "host/m-n1/pod/shop/web-1-a" => vec![
                sample(id, metric::K8S_POD_CPU_USAGE, "", NOW - FRESH_MS - 1, 0.2),
                sample(
                    id,
                    metric::K8S_POD_MEMORY_WORKING_SET,
                    "",
                    NOW - FRESH_MS,
                    600.0,
                ),
            ],
            "host/m-n2/pod/shop/web-1-b" => vec![sample(
                id,
                metric::K8S_POD_CPU_USAGE,
                "",
                NOW - FRESH_MS - 1,
                0.3,
            )],
            _ => vec![],
        };
        let readings = from_memory(&pods, NOW, latest);
        assert_eq!(
            readings.0.get("host/m-n1/pod/shop/web-1-a"),
            Some(&PodUsage {
                working_set_bytes: Some(600.0),
                ..PodUsage::default()
            }),
            "the stale CPU figure is left out, the fresh memory one kept"
        );
        assert!(
            !readings.0.contains_key("host/m-n2/pod/shop/web-1-b"),
            "nothing fresh"
        );
        let groups = summarize(&pods, &readings, GroupBy::Workload);
        let web = groups.iter().find(|g| g.name == "web").unwrap();
        assert_eq!((web.pods, web.pods_with_usage), (2, 1));
        assert_eq!(web.cpu.usage, None);
        assert_eq!(web.memory.usage, Some(600.0));
        assert_eq!(
            web.memory.usage_of_request(),
            Some(0.6),
            "over web-1-a's request only"
        );
    }

    #[test]
    fn stored_rollups_fill_in_for_pods_without_figures_in_memory() {
        let m = shop();
        let pods = pods_of(&m, &query(GroupBy::Node), None).unwrap();
        let mut readings = from_memory(&pods, NOW, |id| {
            if id == "host/m-n1/pod/shop/web-1-a" {
                vec![sample(id, metric::K8S_POD_CPU_USAGE, "", NOW, 0.2)]
            } else {
                vec![]
            }
        });
        let missing = readings.missing(&pods);
        assert!(!missing.contains(&"host/m-n1/pod/shop/web-1-a".to_string()));
        assert!(missing.contains(&"host/m-n2/pod/shop/db-0".to_string()));
        assert!(
            !missing.iter().any(|id| id.contains("waiting")),
            "a pod without usage resource is never asked for"
        );
        let rollup = |id: &str, metric: &str, ts: i64, value: f64| LatestRollup {
            key: SeriesKey::new(id, metric, ""),
            bucket_start_ms: ts - ts.rem_euclid(ROLLUP_BUCKET_MS),
            value,
            sampled_at_ms: ts,
        };
        readings.add_stored(
            &[
                rollup(
                    "host/m-n2/pod/shop/db-0",
                    metric::K8S_POD_CPU_USAGE,
                    NOW - 30_000,
                    0.7,
                ),
                rollup(
                    "host/m-n2/pod/shop/web-1-b",
                    metric::K8S_POD_CPU_USAGE,
                    NOW - FRESH_MS - 1,
                    0.3,
                ),
                // Memory already has this pod: the store does not override it.
                rollup(
                    "host/m-n1/pod/shop/web-1-a",
                    metric::K8S_POD_CPU_USAGE,
                    NOW - 30_000,
                    5.0,
                ),
            ],
            NOW,
        );
        let groups = summarize(&pods, &readings, GroupBy::Node);
        let cpu = |node: &str| groups.iter().find(|g| g.name == node).unwrap().cpu.usage;
        assert_eq!(
            cpu("n2"),
            Some(0.7),
            "db-0 from the store; web-1-b's stored figure is stale"
        );
        assert_eq!(cpu("n1"), Some(0.2));
    }

    #[test]
    fn groupings_and_attributes_have_their_api_names() {
        for by in GroupBy::ALL {
            assert_eq!(GroupBy::parse(by.name()), Some(by));
        }
        assert_eq!(GroupBy::parse("pod"), None);
        assert_eq!(canonical_attributes([("direction", "receive")]), RECEIVE);
        assert_eq!(canonical_attributes([("direction", "transmit")]), TRANSMIT);
        assert_eq!(
            ids::of(
                "prod",
                &crate::sources::k8s::objects::Key::new(Kind::Pod, "shop", "web")
            ),
            "k8s/prod/pod/shop/web",
            "the prefix pods_of scans"
        );
    }
}
