//! The few fields of each Kubernetes object that the rules, relations and
//! attributes use, copied out of the k8s-openapi types as soon as a watch
//! delivers them: the full objects (managed fields, annotations, images, ...)
//! are dropped at once, so the cache of a cluster of 50,000 pods stays small.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::quantity;

/// The kinds the source watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1/Node`.
    Node,
    /// `v1/Pod`.
    Pod,
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice` (folded into its Service).
    EndpointSlice,
    /// `v1/Namespace`.
    Namespace,
    /// `v1/ResourceQuota` (folded into its Namespace).
    ResourceQuota,
    /// `apps/v1/Deployment`.
    Deployment,
    /// `apps/v1/ReplicaSet`.
    ReplicaSet,
    /// `apps/v1/StatefulSet`.
    StatefulSet,
    /// `apps/v1/DaemonSet`.
    DaemonSet,
    /// `batch/v1/Job`.
    Job,
    /// `batch/v1/CronJob`.
    CronJob,
    /// `autoscaling/v2/HorizontalPodAutoscaler`.
    Hpa,
    /// `policy/v1/PodDisruptionBudget`.
    Pdb,
    /// `v1/PersistentVolumeClaim`.
    Pvc,
    /// `v1/PersistentVolume`.
    Pv,
    /// `events.k8s.io/v1/Event`, Warnings only (attached to the object they
    /// are about).
    Event,
}

impl Kind {
    /// Every watched kind.
    pub const ALL: [Kind; 17] = [
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Namespace,
        Kind::ResourceQuota,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::Job,
        Kind::CronJob,
        Kind::Hpa,
        Kind::Pdb,
        Kind::Pvc,
        Kind::Pv,
        Kind::Event,
    ];

    /// The segment of resource ids and the suffix of resource kinds
    /// (`k8s_<segment>`).
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::Namespace => "namespace",
            Kind::ResourceQuota => "resourcequota",
            Kind::Deployment => "deployment",
            Kind::ReplicaSet => "replicaset",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
            Kind::Job => "job",
            Kind::CronJob => "cronjob",
            Kind::Hpa => "hpa",
            Kind::Pdb => "pdb",
            Kind::Pvc => "pvc",
            Kind::Pv => "pv",
            Kind::Event => "event",
        }
    }

    /// The Kubernetes kind name, as in owner references and HPA targets.
    pub fn api_kind(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
            Kind::ResourceQuota => "ResourceQuota",
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
            Kind::Hpa => "HorizontalPodAutoscaler",
            Kind::Pdb => "PodDisruptionBudget",
            Kind::Pvc => "PersistentVolumeClaim",
            Kind::Pv => "PersistentVolume",
            Kind::Event => "Event",
        }
    }

    /// The kind of an owner reference or scale target, if watched.
    pub fn from_api_kind(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.api_kind() == name)
    }

    /// True for kinds that are resources of their own (EndpointSlices and
    /// ResourceQuotas are folded into their Service and Namespace, Warning
    /// events into the object they are about).
    pub fn is_resource(self) -> bool {
        !matches!(
            self,
            Kind::EndpointSlice | Kind::ResourceQuota | Kind::Event
        )
    }
}

/// Which object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Kind.
    pub kind: Kind,
    /// Namespace, empty for cluster-scoped kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// A namespaced key.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// What every object carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Meta {
    /// Name.
    pub name: String,
    /// Namespace (empty when cluster-scoped).
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Controlling owner: kind and name.
    pub owner: Option<(String, String)>,
    /// Unix ms of creation.
    pub created_ms: i64,
    /// `metadata.generation`.
    pub generation: i64,
}

impl Meta {
    fn from(m: ObjectMeta) -> Self {
        let owner = m.owner_references.and_then(|refs| {
            let controller = refs.iter().position(|r| r.controller == Some(true));
            let r = refs.into_iter().nth(controller.unwrap_or(0))?;
            Some((r.kind, r.name))
        });
        Self {
            name: m.name.unwrap_or_default(),
            namespace: m.namespace.unwrap_or_default(),
            labels: m.labels.unwrap_or_default(),
            owner,
            created_ms: time_ms(m.creation_timestamp.as_ref()).unwrap_or(0),
            generation: m.generation.unwrap_or(0),
        }
    }
}

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown` or absent.
    #[default]
    Unknown,
}

impl Status {
    fn parse(s: &str) -> Self {
        match s {
            "True" => Status::True,
            "False" => Status::False,
            _ => Status::Unknown,
        }
    }
}

/// A condition: its status, reason, message and when it last changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Condition {
    /// Status.
    pub status: Status,
    /// Machine-readable reason.
    pub reason: String,
    /// Readable message.
    pub message: String,
    /// When the status last changed (Unix ms).
    pub since_ms: Option<i64>,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Node {
    /// Metadata.
    pub meta: Meta,
    /// The Ready condition.
    pub ready: Condition,
    /// Pressure conditions that are True: `MemoryPressure`, `DiskPressure`,
    /// `PIDPressure`, with when they started.
    pub pressure: Vec<(String, Condition)>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Allocatable CPU (cores), memory (bytes) and pods.
    pub allocatable: Resources,
    /// Pods the node takes at most.
    pub allocatable_pods: f64,
    /// `status.nodeInfo.machineID`.
    pub machine_id: String,
    /// `spec.providerID`.
    pub provider_id: String,
    /// Kubelet version.
    pub kubelet_version: String,
}

/// CPU in cores and memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    /// CPU cores.
    pub cpu: f64,
    /// Memory bytes.
    pub memory: f64,
}

impl Resources {
    fn from_map(map: Option<&BTreeMap<String, Quantity>>) -> Self {
        let get = |k: &str| {
            map.and_then(|m| m.get(k))
                .and_then(|q| quantity::parse(&q.0))
                .unwrap_or(0.0)
        };
        Self {
            cpu: get("cpu"),
            memory: get("memory"),
        }
    }

    /// The sum.
    pub fn add(&mut self, other: Resources) {
        self.cpu += other.cpu;
        self.memory += other.memory;
    }
}

/// One container's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerState {
    /// Name.
    pub name: String,
    /// Ready.
    pub ready: bool,
    /// Restarts so far.
    pub restarts: i32,
    /// Why it waits (`CrashLoopBackOff`, `ImagePullBackOff`, ...), with the
    /// message.
    pub waiting: Option<(String, String)>,
    /// Why its last run ended (`OOMKilled`, `Error`, ...) and when.
    pub last_terminated: Option<(String, i64)>,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pod {
    /// Metadata.
    pub meta: Meta,
    /// The node it is scheduled on (empty: not scheduled).
    pub node: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    /// `status.reason` (`Evicted`, ...).
    pub reason: String,
    /// The Ready condition.
    pub ready: Condition,
    /// Containers (init containers included, marked by name prefix `init:`).
    pub containers: Vec<ContainerState>,
    /// Sum of the containers' requests.
    pub requests: Resources,
    /// Sum of the containers' limits.
    pub limits: Resources,
    /// PersistentVolumeClaims it mounts.
    pub claims: Vec<String>,
    /// Being deleted.
    pub terminating: bool,
}

impl Pod {
    /// True while the pod takes node resources (scheduled, not finished).
    pub fn is_active(&self) -> bool {
        !self.node.is_empty() && !matches!(self.phase.as_str(), "Succeeded" | "Failed")
    }

    /// Restarts of all its containers.
    pub fn restarts(&self) -> i32 {
        self.containers.iter().map(|c| c.restarts).sum()
    }
}

/// A service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    /// Metadata.
    pub meta: Meta,
    /// Pod selector (empty: endpoints are managed by hand).
    pub selector: BTreeMap<String, String>,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalName`.
    pub service_type: String,
    /// Cluster IP.
    pub cluster_ip: String,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Endpoint {
    /// Ready (absent counts as ready, as the API says).
    pub ready: bool,
    /// The pod behind it, if any.
    pub pod: Option<String>,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndpointSlice {
    /// Metadata.
    pub meta: Meta,
    /// The service (label `kubernetes.io/service-name`).
    pub service: String,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A namespace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Namespace {
    /// Metadata.
    pub meta: Meta,
    /// `Active` or `Terminating`.
    pub phase: String,
}

/// A ResourceQuota: hard limits and usage by resource name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quota {
    /// Metadata.
    pub meta: Meta,
    /// Hard limits.
    pub hard: BTreeMap<String, f64>,
    /// Usage.
    pub used: BTreeMap<String, f64>,
}

/// A Deployment, ReplicaSet, StatefulSet or DaemonSet, in one shape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Workload {
    /// Metadata.
    pub meta: Meta,
    /// Desired pods (`spec.replicas`, or `desiredNumberScheduled`).
    pub desired: i32,
    /// Ready pods.
    pub ready: i32,
    /// Available pods.
    pub available: i32,
    /// Pods at the newest template.
    pub updated: i32,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// DaemonSet: nodes that should run a pod and do not.
    pub unscheduled: i32,
    /// DaemonSet: pods on nodes that should not run one.
    pub misscheduled: i32,
    /// Deployment: the Progressing condition says ProgressDeadlineExceeded.
    pub progress_deadline_exceeded: bool,
    /// StatefulSet: current and update revisions differ.
    pub revision_pending: bool,
}

/// A Job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Job {
    /// Metadata.
    pub meta: Meta,
    /// The Failed condition, when True.
    pub failed: Option<Condition>,
    /// Completed.
    pub complete: bool,
    /// When it started (Unix ms).
    pub started_ms: Option<i64>,
    /// Pods running.
    pub active: i32,
}

/// A CronJob.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CronJob {
    /// Metadata.
    pub meta: Meta,
    /// Suspended.
    pub suspended: bool,
    /// Schedule.
    pub schedule: String,
}

/// A HorizontalPodAutoscaler.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hpa {
    /// Metadata.
    pub meta: Meta,
    /// Target kind and name.
    pub target: (String, String),
    /// Bounds.
    pub min: i32,
    /// Bounds.
    pub max: i32,
    /// Current replicas.
    pub current: i32,
    /// Desired replicas.
    pub desired: i32,
}

/// A PodDisruptionBudget.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pdb {
    /// Metadata.
    pub meta: Meta,
    /// Pod selector (equality part).
    pub selector: BTreeMap<String, String>,
    /// Healthy pods now.
    pub current_healthy: i32,
    /// Healthy pods required.
    pub desired_healthy: i32,
    /// Pods it covers.
    pub expected_pods: i32,
    /// Disruptions allowed now.
    pub disruptions_allowed: i32,
}

/// A PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pvc {
    /// Metadata.
    pub meta: Meta,
    /// `Pending`, `Bound` or `Lost`.
    pub phase: String,
    /// The bound volume.
    pub volume: String,
    /// Storage class.
    pub storage_class: String,
    /// Capacity (bytes).
    pub capacity_bytes: f64,
}

/// A PersistentVolume.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pv {
    /// Metadata.
    pub meta: Meta,
    /// `Available`, `Bound`, `Released`, `Failed` or `Pending`.
    pub phase: String,
    /// Why, when failed.
    pub message: String,
    /// The claim it is bound to: namespace and name.
    pub claim: Option<(String, String)>,
    /// Capacity (bytes).
    pub capacity_bytes: f64,
    /// Storage class.
    pub storage_class: String,
}

/// A Warning event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Warning {
    /// Metadata (the event object's namespace and name).
    pub meta: Meta,
    /// The object it is about, if watched.
    pub about: Option<Key>,
    /// Why (`BackOff`, `FailedMount`, ...).
    pub reason: String,
    /// What happened.
    pub note: String,
    /// How many times (a series counts its repeats).
    pub count: i64,
    /// When it last happened (Unix ms).
    pub last_ms: i64,
    /// False for `Normal` events, which are not kept.
    pub is_warning: bool,
}

/// Any watched object. Each kind is boxed: the cache holds tens of thousands
/// of objects, and an enum is as large as its largest variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A node.
    Node(Box<Node>),
    /// A pod.
    Pod(Box<Pod>),
    /// A service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A namespace.
    Namespace(Box<Namespace>),
    /// A ResourceQuota.
    Quota(Box<Quota>),
    /// A Deployment, ReplicaSet, StatefulSet or DaemonSet.
    Workload(Kind, Box<Workload>),
    /// A Job.
    Job(Box<Job>),
    /// A CronJob.
    CronJob(Box<CronJob>),
    /// An HPA.
    Hpa(Box<Hpa>),
    /// A PDB.
    Pdb(Box<Pdb>),
    /// A PVC.
    Pvc(Box<Pvc>),
    /// A PV.
    Pv(Box<Pv>),
    /// A Warning event.
    Warning(Box<Warning>),
}

impl Object {
    /// Its metadata.
    pub fn meta(&self) -> &Meta {
        match self {
            Object::Node(o) => &o.meta,
            Object::Pod(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::EndpointSlice(o) => &o.meta,
            Object::Namespace(o) => &o.meta,
            Object::Quota(o) => &o.meta,
            Object::Workload(_, o) => &o.meta,
            Object::Job(o) => &o.meta,
            Object::CronJob(o) => &o.meta,
            Object::Hpa(o) => &o.meta,
            Object::Pdb(o) => &o.meta,
            Object::Pvc(o) => &o.meta,
            Object::Pv(o) => &o.meta,
            Object::Warning(o) => &o.meta,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Namespace(_) => Kind::Namespace,
            Object::Quota(_) => Kind::ResourceQuota,
            Object::Workload(k, _) => *k,
            Object::Job(_) => Kind::Job,
            Object::CronJob(_) => Kind::CronJob,
            Object::Hpa(_) => Kind::Hpa,
            Object::Pdb(_) => Kind::Pdb,
            Object::Pvc(_) => Kind::Pvc,
            Object::Pv(_) => Kind::Pv,
            Object::Warning(_) => Kind::Event,
        }
    }

    /// Its key.
    pub fn key(&self) -> Key {
        let m = self.meta();
        Key::new(self.kind(), &m.namespace, &m.name)
    }
}

fn time_ms(t: Option<&Time>) -> Option<i64> {
    t.map(|t| t.0.as_millisecond())
}

fn condition(
    status: &str,
    reason: Option<String>,
    message: Option<String>,
    since: Option<&Time>,
) -> Condition {
    Condition {
        status: Status::parse(status),
        reason: reason.unwrap_or_default(),
        message: message.unwrap_or_default(),
        since_ms: time_ms(since),
    }
}

/// Copies what is used out of a Kubernetes object.
pub trait Compact {
    /// The compact object.
    fn compact(self) -> Object;
}

impl Compact for core::Node {
    fn compact(self) -> Object {
        let mut node = Node {
            meta: Meta::from(self.metadata),
            ..Node::default()
        };
        if let Some(spec) = self.spec {
            node.unschedulable = spec.unschedulable.unwrap_or(false);
            node.provider_id = spec.provider_id.unwrap_or_default();
        }
        if let Some(status) = self.status {
            node.allocatable = Resources::from_map(status.allocatable.as_ref());
            node.allocatable_pods = status
                .allocatable
                .as_ref()
                .and_then(|m| m.get("pods"))
                .and_then(|q| quantity::parse(&q.0))
                .unwrap_or(0.0);
            if let Some(info) = status.node_info {
                node.machine_id = info.machine_id;
                node.kubelet_version = info.kubelet_version;
            }
            for c in status.conditions.unwrap_or_default() {
                let cond = condition(
                    &c.status,
                    c.reason,
                    c.message,
                    c.last_transition_time.as_ref(),
                );
                match c.type_.as_str() {
                    "Ready" => node.ready = cond,
                    "MemoryPressure" | "DiskPressure" | "PIDPressure"
                        if cond.status == Status::True =>
                    {
                        node.pressure.push((c.type_, cond));
                    }
                    _ => {}
                }
            }
            node.pressure.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Object::Node(Box::new(node))
    }
}

fn container_state(s: core::ContainerStatus, prefix: &str) -> ContainerState {
    let waiting = s
        .state
        .and_then(|st| st.waiting)
        .and_then(|w| Some((w.reason?, w.message.unwrap_or_default())));
    let last_terminated = s.last_state.and_then(|st| st.terminated).map(|t| {
        (
            t.reason.unwrap_or_default(),
            time_ms(t.finished_at.as_ref()).unwrap_or(0),
        )
    });
    ContainerState {
        name: format!("{prefix}{}", s.name),
        ready: s.ready,
        restarts: s.restart_count,
        waiting,
        last_terminated,
    }
}

impl Compact for core::Pod {
    fn compact(self) -> Object {
        let mut pod = Pod {
            terminating: self.metadata.deletion_timestamp.is_some(),
            meta: Meta::from(self.metadata),
            ..Pod::default()
        };
        if let Some(spec) = self.spec {
            pod.node = spec.node_name.unwrap_or_default();
            for c in &spec.containers {
                if let Some(r) = &c.resources {
                    pod.requests.add(Resources::from_map(r.requests.as_ref()));
                    pod.limits.add(Resources::from_map(r.limits.as_ref()));
                }
            }
            pod.claims = spec
                .volumes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
                .collect();
            pod.claims.sort();
            pod.claims.dedup();
        }
        if let Some(status) = self.status {
            pod.phase = status.phase.unwrap_or_default();
            pod.reason = status.reason.unwrap_or_default();
            for c in status.conditions.unwrap_or_default() {
                if c.type_ == "Ready" {
                    pod.ready = condition(
                        &c.status,
                        c.reason,
                        c.message,
                        c.last_transition_time.as_ref(),
                    );
                }
            }
            for s in status.init_container_statuses.unwrap_or_default() {
                pod.containers.push(container_state(s, "init:"));
            }
            for s in status.container_statuses.unwrap_or_default() {
                pod.containers.push(container_state(s, ""));
            }
        }
        Object::Pod(Box::new(pod))
    }
}

impl Compact for core::Service {
    fn compact(self) -> Object {
        let spec = self.spec.unwrap_or_default();
        Object::Service(Box::new(Service {
            meta: Meta::from(self.metadata),
            selector: spec.selector.unwrap_or_default(),
            service_type: spec.type_.unwrap_or_else(|| "ClusterIP".into()),
            cluster_ip: spec.cluster_ip.unwrap_or_default(),
        }))
    }
}

impl Compact for discovery::EndpointSlice {
    fn compact(self) -> Object {
        let meta = Meta::from(self.metadata);
        let service = meta
            .labels
            .get("kubernetes.io/service-name")
            .cloned()
            .unwrap_or_default();
        let endpoints = self
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                ready: e.conditions.and_then(|c| c.ready).unwrap_or(true),
                pod: e
                    .target_ref
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name),
            })
            .collect();
        Object::EndpointSlice(Box::new(EndpointSlice {
            meta,
            service,
            endpoints,
        }))
    }
}

impl Compact for core::Namespace {
    fn compact(self) -> Object {
        Object::Namespace(Box::new(Namespace {
            meta: Meta::from(self.metadata),
            phase: self.status.and_then(|s| s.phase).unwrap_or_default(),
        }))
    }
}

fn quantities(map: Option<BTreeMap<String, Quantity>>) -> BTreeMap<String, f64> {
    map.unwrap_or_default()
        .into_iter()
        .filter_map(|(k, q)| quantity::parse(&q.0).map(|v| (k, v)))
        .collect()
}

impl Compact for core::ResourceQuota {
    fn compact(self) -> Object {
        let status = self.status.unwrap_or_default();
        Object::Quota(Box::new(Quota {
            meta: Meta::from(self.metadata),
            hard: quantities(status.hard),
            used: quantities(status.used),
        }))
    }
}

impl Compact for apps::Deployment {
    fn compact(self) -> Object {
        let desired = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = self.status.unwrap_or_default();
        let progress_deadline_exceeded = status.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        Object::Workload(
            Kind::Deployment,
            Box::new(Workload {
                meta: Meta::from(self.metadata),
                desired,
                ready: status.ready_replicas.unwrap_or(0),
                available: status.available_replicas.unwrap_or(0),
                updated: status.updated_replicas.unwrap_or(0),
                observed_generation: status.observed_generation.unwrap_or(0),
                progress_deadline_exceeded,
                ..Workload::default()
            }),
        )
    }
}

impl Compact for apps::ReplicaSet {
    fn compact(self) -> Object {
        let desired = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = self.status.unwrap_or_default();
        Object::Workload(
            Kind::ReplicaSet,
            Box::new(Workload {
                meta: Meta::from(self.metadata),
                desired,
                ready: status.ready_replicas.unwrap_or(0),
                available: status.available_replicas.unwrap_or(0),
                updated: status.replicas,
                observed_generation: status.observed_generation.unwrap_or(0),
                ..Workload::default()
            }),
        )
    }
}

impl Compact for apps::StatefulSet {
    fn compact(self) -> Object {
        let desired = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = self.status.unwrap_or_default();
        let revision_pending =
            status.update_revision.is_some() && status.current_revision != status.update_revision;
        Object::Workload(
            Kind::StatefulSet,
            Box::new(Workload {
                meta: Meta::from(self.metadata),
                desired,
                ready: status.ready_replicas.unwrap_or(0),
                available: status.available_replicas.unwrap_or(0),
                updated: status.updated_replicas.unwrap_or(0),
                observed_generation: status.observed_generation.unwrap_or(0),
                revision_pending,
                ..Workload::default()
            }),
        )
    }
}

impl Compact for apps::DaemonSet {
    fn compact(self) -> Object {
        let status = self.status.unwrap_or_default();
        Object::Workload(
            Kind::DaemonSet,
            Box::new(Workload {
                meta: Meta::from(self.metadata),
                desired: status.desired_number_scheduled,
                ready: status.number_ready,
                available: status.number_available.unwrap_or(0),
                updated: status.updated_number_scheduled.unwrap_or(0),
                observed_generation: status.observed_generation.unwrap_or(0),
                unscheduled: (status.desired_number_scheduled - status.current_number_scheduled)
                    .max(0),
                misscheduled: status.number_misscheduled,
                ..Workload::default()
            }),
        )
    }
}

impl Compact for batch::Job {
    fn compact(self) -> Object {
        let status = self.status.unwrap_or_default();
        let mut job = Job {
            meta: Meta::from(self.metadata),
            started_ms: time_ms(status.start_time.as_ref()),
            active: status.active.unwrap_or(0),
            ..Job::default()
        };
        for c in status.conditions.unwrap_or_default() {
            match (c.type_.as_str(), c.status.as_str()) {
                ("Failed", "True") => {
                    job.failed = Some(condition(
                        &c.status,
                        c.reason,
                        c.message,
                        c.last_transition_time.as_ref(),
                    ));
                }
                ("Complete", "True") => job.complete = true,
                _ => {}
            }
        }
        Object::Job(Box::new(job))
    }
}

impl Compact for batch::CronJob {
    fn compact(self) -> Object {
        let spec = self.spec.unwrap_or_default();
        Object::CronJob(Box::new(CronJob {
            meta: Meta::from(self.metadata),
            suspended: spec.suspend.unwrap_or(false),
            schedule: spec.schedule,
        }))
    }
}

impl Compact for autoscaling::HorizontalPodAutoscaler {
    fn compact(self) -> Object {
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        Object::Hpa(Box::new(Hpa {
            meta: Meta::from(self.metadata),
            target: (spec.scale_target_ref.kind, spec.scale_target_ref.name),
            min: spec.min_replicas.unwrap_or(1),
            max: spec.max_replicas,
            current: status.current_replicas.unwrap_or(0),
            desired: status.desired_replicas,
        }))
    }
}

impl Compact for policy::PodDisruptionBudget {
    fn compact(self) -> Object {
        let selector = self
            .spec
            .and_then(|s| s.selector)
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        let status = self.status.unwrap_or_default();
        Object::Pdb(Box::new(Pdb {
            meta: Meta::from(self.metadata),
            selector,
            current_healthy: status.current_healthy,
            desired_healthy: status.desired_healthy,
            expected_pods: status.expected_pods,
            disruptions_allowed: status.disruptions_allowed,
        }))
    }
}

fn storage_bytes(map: Option<&BTreeMap<String, Quantity>>) -> f64 {
    map.and_then(|m| m.get("storage"))
        .and_then(|q| quantity::parse(&q.0))
        .unwrap_or(0.0)
}

impl Compact for core::PersistentVolumeClaim {
    fn compact(self) -> Object {
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        Object::Pvc(Box::new(Pvc {
            meta: Meta::from(self.metadata),
            phase: status.phase.unwrap_or_default(),
            volume: spec.volume_name.unwrap_or_default(),
            storage_class: spec.storage_class_name.unwrap_or_default(),
            capacity_bytes: storage_bytes(status.capacity.as_ref()),
        }))
    }
}

impl Compact for core::PersistentVolume {
    fn compact(self) -> Object {
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        Object::Pv(Box::new(Pv {
            meta: Meta::from(self.metadata),
            phase: status.phase.unwrap_or_default(),
            message: status.message.or(status.reason).unwrap_or_default(),
            claim: spec
                .claim_ref
                .and_then(|r| Some((r.namespace.unwrap_or_default(), r.name?))),
            capacity_bytes: storage_bytes(spec.capacity.as_ref()),
            storage_class: spec.storage_class_name.unwrap_or_default(),
        }))
    }
}

impl Compact for k8s_openapi::api::events::v1::Event {
    fn compact(self) -> Object {
        let about = self.regarding.and_then(|r| {
            let kind = Kind::from_api_kind(r.kind.as_deref()?)?;
            Some(Key::new(
                kind,
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref()?,
            ))
        });
        let last_ms = self
            .series
            .as_ref()
            .map(|s| s.last_observed_time.0.as_millisecond())
            .or_else(|| self.event_time.as_ref().map(|t| t.0.as_millisecond()))
            .or_else(|| time_ms(self.deprecated_last_timestamp.as_ref()))
            .or_else(|| time_ms(self.metadata.creation_timestamp.as_ref()))
            .unwrap_or(0);
        let count = self
            .series
            .as_ref()
            .map(|s| i64::from(s.count))
            .or(self.deprecated_count.map(i64::from))
            .unwrap_or(1);
        Object::Warning(Box::new(Warning {
            is_warning: self.type_.as_deref() == Some("Warning"),
            meta: Meta::from(self.metadata),
            about,
            reason: self.reason.unwrap_or_default(),
            note: self.note.unwrap_or_default(),
            count,
            last_ms,
        }))
    }
}
