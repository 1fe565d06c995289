//! `kube-bench`: the aggregator's Kubernetes source at scale, on this machine.
//!
//! Starts the fake Kubernetes API server (`infrawatch_e2e::kube_api`) and fills
//! it with a cluster: nodes (Ready, allocatable, machine ids), namespaces,
//! Deployments with their ReplicaSets, pods owned by them (Running, Ready, one
//! container), one Service per Deployment selecting its pods and one
//! EndpointSlice per Service. Then it runs the real aggregator (a separate
//! process, SQLite or PostgreSQL) twice:
//!
//! 1. **baseline**: no cluster configured; its resident memory after a few
//!    seconds idle;
//! 2. **with the cluster**: the time from its start until every object is in
//!    its cache (`infrawatch_aggregator_k8s_objects`) and every resource is in
//!    its model (`GET /api/v1/status`, counts by kind), its resident memory
//!    then (the difference to the baseline is the memory of the Kubernetes
//!    model) and at its peak (`VmHWM`), read once the source is quiet (no
//!    list and no report for 3 s: a relist after a lost leadership is over);
//! 3. **changes**: at `--rate` changes per second for `--duration-s`, a random
//!    pod's readiness flips (and its EndpointSlice follows, as the endpoint
//!    controller does), each timed from the `apply` to the pod's event with its
//!    new health on the aggregator's gRPC `WatchEvents` stream.
//!
//! `--perf-dir` records `perf` profiles of both phases; `--wrap` runs the
//! aggregator under a heap profiler (with `--sigkill`, what heaptrack reports as
//! leaked is what was live at the end).
//!
//! Progress goes to stderr, the summary to stdout (JSON with `--json`). Run
//! with `tests/bench/kubernetes.sh` (release build), or
//! `cargo run --release -p infrawatch-e2e --bin kube-bench -- --help`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use infrawatch_e2e::kube_api::FakeKube;
use infrawatch_e2e::loadgen::aggregator::{Metrics, ProcFigures, parse_metrics, proc_figures};
use infrawatch_e2e::loadgen::histogram::Histogram;
use infrawatch_e2e::{Pki, Process, TestDatabase, free_port};
use infrawatch_proto::v1::event_service_client::EventServiceClient;
use infrawatch_proto::v1::{EventFilter, Health, WatchEventsRequest};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

/// Targets of the Kubernetes source at 5,000 nodes and 50,000 pods: memory of
/// the Kubernetes model, initial sync, change → event p99.
const TARGET_MODEL_RSS_MIB: f64 = 512.0;
const TARGET_SYNC_S: f64 = 30.0;
const TARGET_P99_MS: f64 = 50.0;

/// The cluster's name in the aggregator.
const CLUSTER: &str = "bench";
const CHANGE_TO_COMMIT: &str = "infrawatch_aggregator_k8s_change_to_commit_seconds";
const OBJECTS_GAUGE: &str = "infrawatch_aggregator_k8s_objects{cluster=\"bench\"}";
const LISTS: &str = "infrawatch_aggregator_k8s_lists_total{";
const WATCH_ERRORS: &str = "infrawatch_aggregator_k8s_watch_errors_total{";
const COMMITS: &str = "infrawatch_aggregator_k8s_change_to_commit_seconds_count{";
const STORE_DURATION: &str = "infrawatch_aggregator_store_duration_seconds";
const STORE_COMMITS: &str =
    "infrawatch_aggregator_store_duration_seconds_count{operation=\"commit\"";

/// Benchmarks the aggregator's Kubernetes source against the fake API server:
/// memory of the Kubernetes model, initial sync time, change → event latency.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kube-bench", version)]
struct Args {
    /// Nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods, spread over the nodes and the namespaces.
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Namespaces (Deployments go round robin over them).
    #[arg(long, default_value_t = 500)]
    namespaces: usize,
    /// Pods per Deployment (each Deployment has one ReplicaSet, Service and
    /// EndpointSlice).
    #[arg(long, default_value_t = 10)]
    pods_per_deployment: usize,
    /// Readiness changes per second in the change phase.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of the change phase (0: none).
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// The aggregator's `kubernetes.batch_ms`.
    #[arg(long, default_value_t = 5)]
    batch_ms: u64,
    /// Flip only the pods, leaving their EndpointSlices as they are.
    #[arg(long)]
    no_slice_updates: bool,
    /// Skip the baseline aggregator (no cluster).
    #[arg(long)]
    no_baseline: bool,
    /// PostgreSQL instead of SQLite: a fresh database per aggregator through
    /// INFRAWATCH_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres).
    #[arg(long)]
    postgres: bool,
    /// Give up on the initial sync after this many seconds.
    #[arg(long, default_value_t = 900)]
    sync_timeout_s: u64,
    /// Seconds to wait after the last change for the events still due.
    #[arg(long, default_value_t = 30)]
    drain_timeout_s: u64,
    /// Seconds idle before the baseline and the after-sync memory are read.
    #[arg(long, default_value_t = 5)]
    settle_s: u64,
    /// The aggregator binary (default: infrawatch-aggregator next to this one).
    #[arg(long)]
    aggregator_bin: Option<PathBuf>,
    /// A command the cluster's aggregator runs under, split at spaces (e.g.
    /// `heaptrack -o target/kube.heaptrack`); memory is read from the
    /// aggregator process below it.
    #[arg(long)]
    wrap: Option<String>,
    /// Stop the cluster's aggregator with SIGKILL instead of SIGTERM: a heap
    /// profiler (`--wrap heaptrack ...`) then reports what was still live at
    /// the end as leaked.
    #[arg(long)]
    sigkill: bool,
    /// Record `perf` profiles of the cluster's aggregator into this directory:
    /// sync.data (from its start to the end of the sync) and changes.data.
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// Arguments of `perf record` (before `-p PID -o FILE`).
    #[arg(
        long,
        default_value = "-F 99 --call-graph dwarf,16384",
        allow_hyphen_values = true
    )]
    perf_args: String,
    /// TOML appended to both aggregators' configuration (e.g. an `[events]`
    /// section).
    #[arg(long)]
    extra_config: Option<PathBuf>,
    /// Keep configurations, logs and databases in this directory (default: a
    /// temporary directory, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seed of the random choice of pods.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.nodes == 0 || self.pods == 0 || self.namespaces == 0 {
            out.push("--nodes, --pods and --namespaces must be at least 1".into());
        }
        if self.pods_per_deployment == 0 {
            out.push("--pods-per-deployment must be at least 1".into());
        }
        if self.pods >= 60_000_000 {
            out.push("--pods must be below 60,000,000".into());
        }
        if self.duration_s > 0 && self.rate == 0 {
            out.push("--rate must be at least 1".into());
        }
        if self.rate as usize * 2 > self.pods && self.duration_s > 0 {
            out.push(
                "--rate must be at most half of --pods (a pod changes again only after its event)"
                    .into(),
            );
        }
        out
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let problems = args.problems();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("kube-bench: {p}");
        }
        return ExitCode::from(64);
    }
    infrawatch_common::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kube-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    match runtime.block_on(run(args)) {
        Ok(summary) => {
            if json {
                match serde_json::to_string_pretty(&summary.json()) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("kube-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", summary.text());
            }
            runtime.shutdown_timeout(Duration::from_secs(2));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kube-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The cluster

/// Sizes and names of the generated cluster.
#[derive(Debug, Clone)]
struct Plan {
    nodes: usize,
    pods: usize,
    namespaces: usize,
    per: usize,
    deployments: usize,
}

impl Plan {
    fn new(a: &Args) -> Self {
        Self {
            nodes: a.nodes,
            pods: a.pods,
            namespaces: a.namespaces,
            per: a.pods_per_deployment,
            deployments: a.pods.div_ceil(a.pods_per_deployment),
        }
    }

    /// Objects in the aggregator's cache once listed.
    fn objects(&self) -> usize {
        self.nodes + self.pods + self.namespaces + 4 * self.deployments
    }

    /// Resources in the model by kind (EndpointSlices are folded into their
    /// Service; the cluster is one resource of its own).
    fn resources(&self) -> BTreeMap<&'static str, usize> {
        BTreeMap::from([
            ("k8s_cluster", 1),
            ("k8s_deployment", self.deployments),
            ("k8s_namespace", self.namespaces),
            ("k8s_node", self.nodes),
            ("k8s_pod", self.pods),
            ("k8s_replicaset", self.deployments),
            ("k8s_service", self.deployments),
        ])
    }

    fn namespace(&self, d: usize) -> String {
        format!("ns-{:04}", d % self.namespaces)
    }

    fn deployment(d: usize) -> String {
        format!("app-{d:05}")
    }

    fn replica_set(d: usize) -> String {
        format!("app-{d:05}-{}", template_hash(d))
    }

    fn pod_name(&self, i: usize) -> String {
        format!(
            "{}-{}",
            Self::replica_set(i / self.per),
            base36(i as u64, 5)
        )
    }

    fn node_name(n: usize) -> String {
        format!("node-{n:05}")
    }

    fn node_of(&self, i: usize) -> usize {
        i % self.nodes
    }

    /// The pods of Deployment `d`.
    fn pods_of(&self, d: usize) -> std::ops::Range<usize> {
        d * self.per..((d + 1) * self.per).min(self.pods)
    }

    fn pod_id(&self, i: usize) -> String {
        format!(
            "k8s/{CLUSTER}/pod/{}/{}",
            self.namespace(i / self.per),
            self.pod_name(i)
        )
    }
}

/// splitmix64: a fixed, well-mixed number from `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small random number generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(1);
        (mix(self.0) % n as u64) as usize
    }
}

/// Lower-case base-36 digits of `n`, at least `width` of them, as the
/// suffixes Kubernetes generates.
fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 || out.len() < width {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

fn template_hash(d: usize) -> String {
    base36(mix(d as u64 ^ 0x5eed) % 36u64.pow(9), 9)
}

/// A UUID-shaped uid for object `i` of type `tag`.
fn uid(tag: u64, i: usize) -> String {
    let a = mix((tag << 40) ^ i as u64);
    let b = mix(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b & 0xfff,
        b >> 16
    )
}

const CREATED: &str = "2026-11-01T10:00:00Z";
const STARTED: &str = "2026-11-20T08:00:00Z";

fn node(n: usize) -> Value {
    let name = Plan::node_name(n);
    let zone = format!("zone-{}", (b'a' + (n % 3) as u8) as char);
    let machine = format!("{:016x}{:016x}", mix(n as u64), mix(!(n as u64)));
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": STARTED, "lastTransitionTime": CREATED})
    };
    json!({
        "metadata": {
            "name": name, "uid": uid(1, n), "creationTimestamp": CREATED,
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m6i.2xlarge",
                "topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": zone,
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"providerID": format!("aws:///eu-west-1/i-{:017x}", mix(n as u64 ^ 7) >> 4),
                 "podCIDR": format!("10.{}.{}.0/24", 128 + ((n >> 8) & 127), n & 255)},
        "status": {
            "capacity": {"cpu": "8", "memory": "32475800Ki", "pods": "110", "ephemeral-storage": "104845292Ki"},
            "allocatable": {"cpu": "7910m", "memory": "31324824Ki", "pods": "110", "ephemeral-storage": "96625420948"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": format!("172.16.{}.{}", (n >> 8) & 255, n & 255)},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": machine, "systemUUID": uid(2, n), "bootID": uid(3, n),
                         "kernelVersion": "6.1.0-28-cloud-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "containerRuntimeVersion": "containerd://1.7.24", "kubeletVersion": "v1.35.0",
                         "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        }
    })
}

fn namespace(k: usize) -> Value {
    let name = format!("ns-{k:04}");
    json!({
        "metadata": {"name": name, "uid": uid(4, k), "creationTimestamp": CREATED,
                     "labels": {"kubernetes.io/metadata.name": name, "team": format!("team-{}", k % 37)}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

fn labels(d: usize) -> Value {
    json!({"app.kubernetes.io/name": Plan::deployment(d), "app.kubernetes.io/part-of": format!("shop-{}", d % 50),
           "pod-template-hash": template_hash(d)})
}

fn selector(d: usize) -> Value {
    json!({"app.kubernetes.io/name": Plan::deployment(d)})
}

fn container(d: usize) -> Value {
    json!({"name": "app", "image": format!("registry.example/shop/app-{}:1.{}.0", d % 50, d % 7),
           "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
           "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
           "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
           "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
           "imagePullPolicy": "IfNotPresent"})
}

fn deployment(plan: &Plan, d: usize) -> Value {
    let n = plan.pods_of(d).len();
    json!({
        "metadata": {"name": Plan::deployment(d), "namespace": plan.namespace(d), "uid": uid(5, d),
                     "creationTimestamp": CREATED, "generation": 1,
                     "labels": {"app.kubernetes.io/name": Plan::deployment(d)},
                     "annotations": {"deployment.kubernetes.io/revision": "1"}},
        "spec": {"replicas": n, "selector": {"matchLabels": selector(d)},
                 "template": {"metadata": {"labels": selector(d)}, "spec": {"containers": [container(d)]}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                 "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600},
        "status": {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                   "availableReplicas": n,
                   "conditions": [
                       {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                        "message": "Deployment has minimum availability.", "lastUpdateTime": CREATED, "lastTransitionTime": CREATED},
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                        "message": format!("ReplicaSet \"{}\" has successfully progressed.", Plan::replica_set(d)),
                        "lastUpdateTime": CREATED, "lastTransitionTime": CREATED}]}
    })
}

fn replica_set(plan: &Plan, d: usize) -> Value {
    let n = plan.pods_of(d).len();
    json!({
        "metadata": {"name": Plan::replica_set(d), "namespace": plan.namespace(d), "uid": uid(6, d),
                     "creationTimestamp": CREATED, "generation": 1, "labels": labels(d),
                     "annotations": {"deployment.kubernetes.io/desired-replicas": n.to_string(),
                                     "deployment.kubernetes.io/max-replicas": (n + n.div_ceil(4)).to_string(),
                                     "deployment.kubernetes.io/revision": "1"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": Plan::deployment(d),
                                          "uid": uid(5, d), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"replicas": n, "selector": {"matchLabels": labels(d)},
                 "template": {"metadata": {"labels": labels(d)}, "spec": {"containers": [container(d)]}}},
        "status": {"observedGeneration": 1, "replicas": n, "fullyLabeledReplicas": n, "readyReplicas": n,
                   "availableReplicas": n}
    })
}

fn pod_ip(i: usize) -> String {
    format!(
        "10.{}.{}.{}",
        128 + ((i >> 16) & 127),
        (i >> 8) & 255,
        i & 255
    )
}

/// Pod `i`, Ready or not since `since`.
fn pod(plan: &Plan, i: usize, ready: bool, since: &str) -> Value {
    let d = i / plan.per;
    let n = plan.node_of(i);
    let status = if ready { "True" } else { "False" };
    let reason = if ready {
        Value::Null
    } else {
        Value::from("ContainersNotReady")
    };
    let message = if ready {
        Value::Null
    } else {
        Value::from("containers with unready status: [app]")
    };
    json!({
        "metadata": {
            "name": plan.pod_name(i), "generateName": format!("{}-", Plan::replica_set(d)),
            "namespace": plan.namespace(d), "uid": uid(7, i), "creationTimestamp": STARTED,
            "labels": labels(d),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": Plan::replica_set(d),
                                 "uid": uid(6, d), "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "nodeName": Plan::node_name(n), "containers": [container(d)], "restartPolicy": "Always",
            "serviceAccountName": "default", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "priority": 0, "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "qosClass": "Burstable",
            "hostIP": format!("172.16.{}.{}", (n >> 8) & 255, n & 255),
            "podIP": pod_ip(i), "podIPs": [{"ip": pod_ip(i)}], "startTime": STARTED,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": STARTED},
                {"type": "Initialized", "status": "True", "lastTransitionTime": STARTED},
                {"type": "Ready", "status": status, "reason": reason, "message": message, "lastTransitionTime": since},
                {"type": "ContainersReady", "status": status, "reason": reason, "message": message, "lastTransitionTime": since},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": STARTED}],
            "containerStatuses": [{
                "name": "app", "ready": ready, "restartCount": 0, "started": true,
                "image": format!("registry.example/shop/app-{}:1.{}.0", d % 50, d % 7),
                "imageID": format!("registry.example/shop/app-{}@sha256:{:016x}{:016x}", d % 50, mix(d as u64), mix(d as u64 + 1)),
                "containerID": format!("containerd://{:016x}{:016x}", mix(i as u64 ^ 9), mix(i as u64 ^ 10)),
                "state": {"running": {"startedAt": STARTED}}}],
        }
    })
}

fn service(plan: &Plan, d: usize) -> Value {
    json!({
        "metadata": {"name": Plan::deployment(d), "namespace": plan.namespace(d), "uid": uid(8, d),
                     "creationTimestamp": CREATED, "labels": {"app.kubernetes.io/name": Plan::deployment(d)}},
        "spec": {"type": "ClusterIP", "selector": selector(d),
                 "clusterIP": format!("10.96.{}.{}", (d >> 8) & 255, d & 255),
                 "clusterIPs": [format!("10.96.{}.{}", (d >> 8) & 255, d & 255)],
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                 "internalTrafficPolicy": "Cluster",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]},
        "status": {"loadBalancer": {}}
    })
}

/// The EndpointSlice of Deployment `d`'s Service, its pods ready as `ready`
/// says (indexed by pod).
fn slice(plan: &Plan, d: usize, ready: &[bool]) -> Value {
    let ns = plan.namespace(d);
    let endpoints: Vec<Value> = plan
        .pods_of(d)
        .map(|i| {
            let r = ready.get(i).copied().unwrap_or(true);
            json!({"addresses": [pod_ip(i)],
                   "conditions": {"ready": r, "serving": r, "terminating": false},
                   "nodeName": Plan::node_name(plan.node_of(i)),
                   "targetRef": {"kind": "Pod", "name": plan.pod_name(i), "namespace": ns, "uid": uid(7, i)}})
        })
        .collect();
    json!({
        "metadata": {"name": format!("{}-{}", Plan::deployment(d), base36(mix(d as u64 ^ 3) % 60_466_176, 5)),
                     "generateName": format!("{}-", Plan::deployment(d)),
                     "namespace": ns, "uid": uid(9, d), "creationTimestamp": CREATED,
                     "labels": {"kubernetes.io/service-name": Plan::deployment(d),
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                                "app.kubernetes.io/name": Plan::deployment(d)},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": Plan::deployment(d),
                                          "uid": uid(8, d), "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

fn typed<K: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<K> {
    serde_json::from_value(v).context("a generated object does not fit its type")
}

/// Fills `kube` with the cluster of `plan`; every pod Ready.
fn populate(kube: &FakeKube, plan: &Plan) -> anyhow::Result<()> {
    for k in 0..plan.namespaces {
        kube.apply(typed::<Namespace>(namespace(k))?);
    }
    for n in 0..plan.nodes {
        kube.apply(typed::<Node>(node(n))?);
    }
    let all_ready = vec![true; plan.pods];
    for d in 0..plan.deployments {
        kube.apply(typed::<Deployment>(deployment(plan, d))?);
        kube.apply(typed::<ReplicaSet>(replica_set(plan, d))?);
        kube.apply(typed::<Service>(service(plan, d))?);
        for i in plan.pods_of(d) {
            kube.apply(typed::<Pod>(pod(plan, i, true, STARTED))?);
        }
        kube.apply(typed::<EndpointSlice>(slice(plan, d, &all_ready))?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The aggregator

/// An aggregator process under test.
struct Agg {
    process: Process,
    /// The aggregator's own process (below the wrapper, if any).
    pid: u32,
    rest: SocketAddr,
    grpc: SocketAddr,
    started: Instant,
    db: Option<TestDatabase>,
}

impl Agg {
    async fn start(
        a: &Args,
        dir: &Path,
        pki: &Pki,
        tag: &str,
        extra: &str,
        wrap: Option<&str>,
    ) -> anyhow::Result<Self> {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let rest = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let db = if a.postgres {
            Some(TestDatabase::create(&format!("kube_{tag}")).await?)
        } else {
            None
        };
        let url = match &db {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", dir.join(format!("{tag}.db")).display()),
        };
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let config = dir.join(format!("{tag}.toml"));
        std::fs::write(
            &config,
            format!(
                "[grpc]\nlisten = \"{grpc}\"\n[grpc.tls]\nca = {}\ncert = {}\nkey = {}\n\
                 [rest]\nlisten = \"{rest}\"\n[storage]\nurl = {url:?}\n{extra}",
                q(pki.trusted.ca_cert()),
                q(pki.trusted.cert("server")),
                q(pki.trusted.key("server")),
            ),
        )?;
        let bin = match &a.aggregator_bin {
            Some(b) => b.clone(),
            None => infrawatch_e2e::binary("infrawatch-aggregator"),
        };
        let config = config.display().to_string();
        let log = dir.join(format!("{tag}.log"));
        let started = Instant::now();
        let process = match wrap {
            Some(w) => {
                let mut words: Vec<String> = w.split_whitespace().map(String::from).collect();
                if words.is_empty() {
                    bail!("--wrap names no command");
                }
                let program = PathBuf::from(words.remove(0));
                words.extend([bin.display().to_string(), "--config".into(), config]);
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                Process::spawn(&program, &words, log)?
            }
            None => Process::spawn(&bin, &["--config", &config], log)?,
        };
        let pid = if wrap.is_some() {
            // The kernel keeps the first 15 bytes of a program's name.
            let name = bin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let comm: String = name.chars().take(15).collect();
            aggregator_below(process.pid(), &comm, Duration::from_secs(30))?
        } else {
            process.pid()
        };
        Ok(Self {
            process,
            pid,
            rest,
            grpc,
            started,
            db,
        })
    }

    /// Waits until `/readyz` answers 200.
    async fn ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = get(self.rest, "/readyz").await {
                return Ok(());
            }
            if !self.process.is_running() || start.elapsed() > timeout {
                bail!(
                    "aggregator did not become ready; log:\n{}",
                    self.process.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn figures(&self) -> anyhow::Result<ProcFigures> {
        proc_figures(self.pid).context("the aggregator process is gone")
    }

    async fn metrics(&self) -> anyhow::Result<Metrics> {
        match get(self.rest, "/metrics").await? {
            (200, body) => Ok(parse_metrics(&body)),
            (code, body) => bail!("/metrics answered {code}: {body}"),
        }
    }

    /// Resources in the model by kind.
    async fn by_kind(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let (code, body) = get(self.rest, "/api/v1/status").await?;
        anyhow::ensure!(code == 200, "/api/v1/status answered {code}: {body}");
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["by_kind"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Stops it (SIGTERM, or `signal`, to the aggregator itself, then the
    /// wrapper's exit).
    async fn stop(mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        let waited = tokio::task::spawn_blocking(move || {
            let status = self.process.wait(Duration::from_secs(300));
            (status, self.db)
        })
        .await?;
        let (status, db) = waited;
        if let Some(db) = db {
            db.drop_now().await?;
        }
        status.map(|_| ())
    }
}

/// The process named `comm` below `root` (a wrapper such as heaptrack).
fn aggregator_below(root: u32, comm: &str, timeout: Duration) -> anyhow::Result<u32> {
    let start = Instant::now();
    loop {
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if pid != root && name.trim_end() == comm {
                return Ok(pid);
            }
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for task in tasks.flatten() {
                    let children =
                        std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                    queue.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        if start.elapsed() > timeout {
            bail!("no process {comm:?} below {root} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    Ok(infrawatch_e2e::loadgen::http::get(addr, path, Duration::from_secs(30)).await?)
}

/// A `perf record` of one process, stopped (SIGINT) by [`Perf::stop`].
struct Perf(Child);

impl Perf {
    fn start(args: &str, pid: u32, out: &Path) -> anyhow::Result<Self> {
        let child = Command::new("perf")
            .arg("record")
            .args(args.split_whitespace())
            .arg("-p")
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(out.with_extension("log"))?)
            .spawn()
            .context("starting perf record")?;
        Ok(Self(child))
    }

    fn stop(mut self) -> anyhow::Result<()> {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        self.0.wait()?;
        Ok(())
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Quantile `q` of the histogram `name` (bucket lines `name_bucket{...le="x"}`
/// whose labels hold `labels`) over what `after` counted since `before`,
/// interpolated within the bucket.
fn bucket_quantile(
    after: &Metrics,
    before: &Metrics,
    name: &str,
    labels: &str,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let buckets: Vec<(f64, f64)> = after
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(k, _)| k.contains(labels))
        .filter_map(|(k, v)| {
            let le = k.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    infrawatch_e2e::loadgen::histogram::bucket_quantile(buckets, q)
}

/// The sum of every series of `prefix` (a name with its opening `{`).
fn sum(m: &Metrics, prefix: &str) -> f64 {
    m.range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .fold(0.0, |total, (_, v)| total + v)
}

/// Series of `prefix` (a name with its opening `{`): for the lists counter,
/// the kinds listed at least once.
fn series(m: &Metrics, prefix: &str) -> f64 {
    m.range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .count() as f64
}

/// Times the aggregator lost the leadership (and with it the Kubernetes
/// watches), from its log.
fn leader_losses(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("no longer the leader") && !l.contains("stopping"))
        .count()
}

// ---------------------------------------------------------------------------
// The run

/// What a run measured.
#[derive(Debug, Default)]
struct Summary {
    plan: Option<Plan>,
    objects: usize,
    resources: usize,
    populate_s: f64,
    baseline: Option<ProcFigures>,
    ready_s: f64,
    listed_s: Option<f64>,
    synced_s: f64,
    sync_cpu_s: f64,
    after_sync: Option<ProcFigures>,
    sync_peak_rss: u64,
    /// When the source was quiet after the sync (no list, no report for 3 s).
    settled_s: f64,
    /// Complete lists of a kind during the sync (`kinds` without a relist).
    sync_lists: f64,
    /// Kinds the aggregator watches.
    kinds: f64,
    sync_watch_errors: f64,
    sync_leader_losses: usize,
    changes: Option<Changes>,
    end: Option<ProcFigures>,
}

/// The change phase.
#[derive(Debug, Default)]
struct Changes {
    rate: u64,
    offered: u64,
    applied: u64,
    wall_s: f64,
    slice_updates: bool,
    matched: u64,
    missed: u64,
    latency: Histogram,
    events_by_kind: BTreeMap<String, u64>,
    events_s: f64,
    cores: f64,
    /// This process (the fake API server and the changes) meanwhile.
    bench_cores: f64,
    max_rss: u64,
    commit_p50_ms: Option<f64>,
    commit_p99_ms: Option<f64>,
    store_commit_p50_ms: Option<f64>,
    store_commit_p99_ms: Option<f64>,
    store_commits_s: f64,
    lists: f64,
    watch_errors: f64,
    leader_losses: usize,
}

async fn run(a: Args) -> anyhow::Result<Summary> {
    let plan = Plan::new(&a);
    let temp = tempfile::tempdir()?;
    let dir = match &a.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let pki = Pki::new(&dir, &[])?;
    let own = match &a.extra_config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => String::new(),
    };
    let mut s = Summary {
        objects: plan.objects(),
        resources: plan.resources().values().sum(),
        ..Summary::default()
    };

    // 1. The baseline: the same aggregator without a cluster.
    if !a.no_baseline {
        let mut agg = Agg::start(&a, &dir, &pki, "baseline", &own, None).await?;
        agg.ready(Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_secs(a.settle_s)).await;
        let f = agg.figures()?;
        eprintln!(
            "baseline: RSS {:.1} MiB (peak {:.1} MiB)",
            mib(f.rss_bytes),
            mib(f.peak_rss_bytes)
        );
        s.baseline = Some(f);
        agg.stop(nix::sys::signal::Signal::SIGTERM).await?;
    }

    // 2. The cluster.
    let kube = FakeKube::start().await?;
    let kubeconfig = dir.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, CLUSTER)?;
    let started = Instant::now();
    populate(&kube, &plan)?;
    // No watch is open yet: the history of the creations can go.
    kube.compact();
    s.populate_s = started.elapsed().as_secs_f64();
    eprintln!(
        "fake API server: {} nodes, {} pods, {} namespaces, {} Deployments, ReplicaSets, Services and EndpointSlices ({} objects) in {:.1} s",
        plan.nodes, plan.pods, plan.namespaces, plan.deployments, s.objects, s.populate_s
    );

    // 3. The aggregator with the cluster: the initial sync.
    let extra = format!(
        "[kubernetes]\nbatch_ms = {}\n[[kubernetes.clusters]]\nname = \"{CLUSTER}\"\nkubeconfig = {:?}\n\
         [kubernetes.rules]\nnode_not_ready_for_ms = 0\npod_not_ready_for_ms = 0\ncontainer_waiting_for_ms = 0\n\
         workload_mismatch_for_ms = 0\n{own}\n",
        a.batch_ms,
        kubeconfig.display().to_string()
    );
    let mut agg = Agg::start(&a, &dir, &pki, "cluster", &extra, a.wrap.as_deref()).await?;
    eprintln!("aggregator with the cluster: pid {}", agg.pid);
    if let Some(p) = &a.perf_dir {
        std::fs::create_dir_all(p)?;
    }
    let perf = match &a.perf_dir {
        Some(p) => Some(Perf::start(&a.perf_args, agg.pid, &p.join("sync.data"))?),
        None => None,
    };
    agg.ready(Duration::from_secs(120)).await?;
    s.ready_s = agg.started.elapsed().as_secs_f64();
    let expected = plan.resources();
    let deadline = Duration::from_secs(a.sync_timeout_s);
    let mut last_report = Instant::now();
    loop {
        let elapsed = agg.started.elapsed();
        if s.listed_s.is_none()
            && let Ok(m) = agg.metrics().await
            && m.get(OBJECTS_GAUGE)
                .is_some_and(|v| *v >= plan.objects() as f64)
        {
            s.listed_s = Some(elapsed.as_secs_f64());
            eprintln!(
                "  every object in the aggregator's cache after {:.1} s",
                elapsed.as_secs_f64()
            );
        }
        let by_kind = agg.by_kind().await.unwrap_or_default();
        let done = expected
            .iter()
            .all(|(k, n)| by_kind.get(*k).copied().unwrap_or(0) >= *n as u64);
        if done {
            s.synced_s = agg.started.elapsed().as_secs_f64();
            break;
        }
        if !agg.process.is_running() {
            bail!("the aggregator exited; log:\n{}", agg.process.log_text());
        }
        if elapsed > deadline {
            bail!("no complete sync after {deadline:?}: {by_kind:?}");
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let rss = agg.figures().map(|f| mib(f.rss_bytes)).unwrap_or(0.0);
            eprintln!(
                "  {:.0} s: pods in the model {} of {}, RSS {rss:.0} MiB",
                elapsed.as_secs_f64(),
                by_kind.get("k8s_pod").copied().unwrap_or(0),
                plan.pods
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(p) = perf {
        p.stop()?;
    }
    let f = agg.figures()?;
    s.sync_cpu_s = f.cpu_seconds;
    s.sync_peak_rss = f.peak_rss_bytes;
    eprintln!(
        "initial sync: every resource in the model after {:.1} s ({:.1} CPU s), RSS {:.1} MiB, peak {:.1} MiB",
        s.synced_s,
        f.cpu_seconds,
        mib(f.rss_bytes),
        mib(f.peak_rss_bytes)
    );
    // A relist (after a lost leadership, say) must be over before the memory
    // is read and the changes start.
    let mut last: Option<(f64, f64)> = None;
    let mut quiet = 0;
    while quiet < 3 {
        if agg.started.elapsed() > deadline {
            bail!("the Kubernetes source did not settle within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = agg.metrics().await?;
        let now = (sum(&m, LISTS), sum(&m, COMMITS));
        let cached = m.get(OBJECTS_GAUGE).copied().unwrap_or(0.0);
        if last == Some(now) && cached >= plan.objects() as f64 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        last = Some(now);
    }
    s.settled_s = agg.started.elapsed().as_secs_f64() - 3.0;
    let m = agg.metrics().await?;
    s.sync_lists = sum(&m, LISTS);
    s.kinds = series(&m, LISTS);
    s.sync_watch_errors = sum(&m, WATCH_ERRORS);
    s.sync_leader_losses = leader_losses(&agg.process.log_text());
    eprintln!(
        "settled after {:.1} s: {} lists ({} without a relist), {} watch errors, leadership lost {} times",
        s.settled_s, s.sync_lists, s.kinds, s.sync_watch_errors, s.sync_leader_losses
    );
    tokio::time::sleep(Duration::from_secs(a.settle_s)).await;
    let f = agg.figures()?;
    eprintln!(
        "after {} s idle: RSS {:.1} MiB",
        a.settle_s,
        mib(f.rss_bytes)
    );
    s.after_sync = Some(f);

    // 4. Changes.
    if a.duration_s > 0 {
        let perf = match &a.perf_dir {
            Some(p) => Some(Perf::start(&a.perf_args, agg.pid, &p.join("changes.data"))?),
            None => None,
        };
        let changes = drive(&a, &plan, &kube, &agg, &pki).await;
        if let Some(p) = perf {
            p.stop()?;
        }
        s.changes = Some(changes?);
    }
    s.end = Some(agg.figures()?);
    s.plan = Some(plan);
    let signal = if a.sigkill {
        nix::sys::signal::Signal::SIGKILL
    } else {
        nix::sys::signal::Signal::SIGTERM
    };
    // A killed aggregator's exit status is not a failure here.
    let stopped = agg.stop(signal).await;
    if !a.sigkill {
        stopped?;
    }
    drop(kube);
    Ok(s)
}

/// Changes waiting for their event: pod id → (health expected, applied at).
type Pending = Arc<Mutex<HashMap<String, (i32, Instant)>>>;

#[derive(Default)]
struct Seen {
    latency: Histogram,
    matched: u64,
    by_kind: BTreeMap<String, u64>,
}

async fn drive(
    a: &Args,
    plan: &Plan,
    kube: &FakeKube,
    agg: &Agg,
    pki: &Pki,
) -> anyhow::Result<Changes> {
    let pending: Pending = Arc::default();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let channel =
        infrawatch_e2e::channel(&format!("https://{}", agg.grpc), &pki.client("cli")).await?;
    let mut stream = EventServiceClient::new(channel)
        .watch_events(WatchEventsRequest {
            filter: Some(EventFilter::default()),
            after_position: None,
            subscription: String::new(),
        })
        .await?
        .into_inner();
    let reader = {
        let pending = pending.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(envelope) = stream.message().await? {
                let at = Instant::now();
                let Some(e) = envelope.event else { continue };
                let hit = take_if(&mut lock(&pending), &e.resource_id, e.health)
                    .map(|applied| at.saturating_duration_since(applied));
                let mut seen = lock(&seen);
                *seen.by_kind.entry(e.resource_kind.clone()).or_default() += 1;
                if let Some(l) = hit {
                    seen.latency.record(l);
                    seen.matched += 1;
                }
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = agg.metrics().await?;
    let leader_losses_before = leader_losses(&agg.process.log_text());
    let cpu_before = agg.figures()?.cpu_seconds;
    let own_before = proc_figures(std::process::id()).map_or(0.0, |f| f.cpu_seconds);
    let mut ready = vec![true; plan.pods];
    let mut rng = Rng(a.seed);
    let offered = a.rate * a.duration_s;
    let mut applied = 0u64;
    let mut max_rss = 0u64;
    let started = Instant::now();
    let mut next_sample = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(10);
    let events_before = total_events(&seen);
    while applied < offered {
        let due = ((started.elapsed().as_secs_f64() * a.rate as f64) as u64 + 1).min(offered);
        while applied < due {
            let i = loop {
                let i = rng.below(plan.pods);
                if !lock(&pending).contains_key(&plan.pod_id(i)) {
                    break i;
                }
            };
            ready[i] = !ready[i];
            let now = k8s_openapi::jiff::Timestamp::now();
            let since = k8s_openapi::jiff::Timestamp::from_second(now.as_second())?.to_string();
            let object: Pod = typed(pod(plan, i, ready[i], &since))?;
            let d = i / plan.per;
            let slice_object: Option<EndpointSlice> = if a.no_slice_updates {
                None
            } else {
                Some(typed(slice(plan, d, &ready))?)
            };
            let health = if ready[i] {
                Health::Healthy
            } else {
                Health::Degraded
            };
            lock(&pending).insert(plan.pod_id(i), (health as i32, Instant::now()));
            kube.apply(object);
            if let Some(o) = slice_object {
                kube.apply(o);
            }
            applied += 1;
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            if let Ok(f) = agg.figures() {
                max_rss = max_rss.max(f.rss_bytes);
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            let s = lock(&seen);
            eprintln!(
                "  {:.0} s: {applied} changes applied, {} matched, {} waiting, p99 so far {:.1} ms",
                started.elapsed().as_secs_f64(),
                s.matched,
                lock(&pending).len(),
                s.latency.quantile_ms(0.99).unwrap_or(f64::NAN)
            );
        }
        if reader.is_finished() {
            bail!("the event stream ended");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let wall = started.elapsed();
    let drain_until = Instant::now() + Duration::from_secs(a.drain_timeout_s);
    while !lock(&pending).is_empty() && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events_wall = started.elapsed();
    let cpu_after = agg.figures()?.cpu_seconds;
    let own_after = proc_figures(std::process::id()).map_or(0.0, |f| f.cpu_seconds);
    let after = agg.metrics().await?;
    reader.abort();
    let missed = lock(&pending).len() as u64;
    let seen = std::mem::take(&mut *lock(&seen));
    let events = seen.by_kind.values().sum::<u64>() - events_before;
    let q = |q: f64| {
        bucket_quantile(&after, &before, CHANGE_TO_COMMIT, "cluster=\"bench\"", q)
            .map(|s| s * 1000.0)
    };
    let store = |q: f64| {
        bucket_quantile(&after, &before, STORE_DURATION, "operation=\"commit\"", q)
            .map(|s| s * 1000.0)
    };
    let commits = sum(&after, STORE_COMMITS) - sum(&before, STORE_COMMITS);
    let losses = leader_losses(&agg.process.log_text()).saturating_sub(leader_losses_before);
    Ok(Changes {
        rate: a.rate,
        offered,
        applied,
        wall_s: wall.as_secs_f64(),
        slice_updates: !a.no_slice_updates,
        matched: seen.matched,
        missed,
        latency: seen.latency,
        events_by_kind: seen.by_kind,
        events_s: events as f64 / events_wall.as_secs_f64(),
        cores: (cpu_after - cpu_before) / events_wall.as_secs_f64(),
        bench_cores: (own_after - own_before) / events_wall.as_secs_f64(),
        max_rss,
        commit_p50_ms: q(0.5),
        commit_p99_ms: q(0.99),
        store_commit_p50_ms: store(0.5),
        store_commit_p99_ms: store(0.99),
        store_commits_s: commits / events_wall.as_secs_f64(),
        lists: sum(&after, LISTS) - sum(&before, LISTS),
        watch_errors: sum(&after, WATCH_ERRORS) - sum(&before, WATCH_ERRORS),
        leader_losses: losses,
    })
}

fn total_events(seen: &Mutex<Seen>) -> u64 {
    lock(seen).by_kind.values().sum()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the change of `id` when it waits for `health`; when it was applied.
fn take_if(
    pending: &mut HashMap<String, (i32, Instant)>,
    id: &str,
    health: i32,
) -> Option<Instant> {
    match pending.get(id) {
        Some((h, at)) if *h == health => {
            let at = *at;
            pending.remove(id);
            Some(at)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Reporting

impl Summary {
    fn model_rss(&self) -> Option<i64> {
        let base = self.baseline?.rss_bytes as i64;
        Some(self.after_sync?.rss_bytes as i64 - base)
    }

    fn targets(&self) -> Vec<(&'static str, bool, String)> {
        let mut out = Vec::new();
        if let Some(m) = self.model_rss() {
            let m = m as f64 / (1024.0 * 1024.0);
            out.push((
                "model_rss",
                m <= TARGET_MODEL_RSS_MIB,
                format!("RSS of the Kubernetes model {m:.0} MiB (target ≤ {TARGET_MODEL_RSS_MIB:.0} MiB)"),
            ));
        }
        out.push((
            "initial_sync",
            self.synced_s < TARGET_SYNC_S,
            format!(
                "initial sync {:.1} s (target < {TARGET_SYNC_S:.0} s)",
                self.synced_s
            ),
        ));
        if let Some(c) = &self.changes {
            let p99 = c.latency.quantile_ms(0.99).unwrap_or(f64::INFINITY);
            out.push((
                "change_to_event_p99",
                p99 < TARGET_P99_MS,
                format!("change → event p99 {p99:.1} ms (target < {TARGET_P99_MS:.0} ms)"),
            ));
            out.push((
                "no_missed_event",
                c.missed == 0,
                format!("{} changes without an event (target 0)", c.missed),
            ));
            out.push((
                "rate_held",
                c.applied as f64 / c.wall_s >= c.rate as f64 * 0.95,
                format!(
                    "{:.0} changes/s applied of {} offered",
                    c.applied as f64 / c.wall_s,
                    c.rate
                ),
            ));
        }
        out
    }

    fn json(&self) -> Value {
        let fig = |f: Option<ProcFigures>| {
            f.map(|f| {
                json!({"rss_bytes": f.rss_bytes, "peak_rss_bytes": f.peak_rss_bytes, "cpu_seconds": f.cpu_seconds})
            })
        };
        let plan = self.plan.as_ref();
        json!({
            "cluster": plan.map(|p| json!({
                "nodes": p.nodes, "pods": p.pods, "namespaces": p.namespaces,
                "deployments": p.deployments, "replica_sets": p.deployments, "services": p.deployments,
                "endpoint_slices": p.deployments, "objects": self.objects, "resources": self.resources,
            })),
            "populate_seconds": self.populate_s,
            "baseline": fig(self.baseline),
            "sync": {
                "ready_seconds": self.ready_s,
                "objects_cached_seconds": self.listed_s,
                "resources_in_model_seconds": self.synced_s,
                "cpu_seconds": self.sync_cpu_s,
                "peak_rss_bytes": self.sync_peak_rss,
                "settled_seconds": self.settled_s,
                "lists": self.sync_lists,
                "kinds": self.kinds,
                "watch_errors": self.sync_watch_errors,
                "leader_losses": self.sync_leader_losses,
                "after": fig(self.after_sync),
            },
            "model_rss_bytes": self.model_rss(),
            "model_bytes_per_pod": self.model_rss().zip(plan).map(|(m, p)| m as f64 / p.pods as f64),
            "model_bytes_per_object": self.model_rss().map(|m| m as f64 / self.objects as f64),
            "changes": self.changes.as_ref().map(|c| json!({
                "rate": c.rate, "offered": c.offered, "applied": c.applied, "seconds": c.wall_s,
                "slice_updates": c.slice_updates,
                "matched": c.matched, "missed": c.missed,
                "change_to_event_ms": {
                    "p50": c.latency.quantile_ms(0.5), "p95": c.latency.quantile_ms(0.95),
                    "p99": c.latency.quantile_ms(0.99), "max": c.latency.max_us() as f64 / 1000.0,
                },
                "aggregator_change_to_commit_ms": {"p50": c.commit_p50_ms, "p99": c.commit_p99_ms},
                "store_commit_ms": {"p50": c.store_commit_p50_ms, "p99": c.store_commit_p99_ms},
                "store_commits_per_second": c.store_commits_s,
                "events_per_second": c.events_s,
                "events_by_kind": c.events_by_kind,
                "aggregator_cores": c.cores,
                "bench_cores": c.bench_cores,
                "max_rss_bytes": c.max_rss,
                "lists": c.lists,
                "watch_errors": c.watch_errors,
                "leader_losses": c.leader_losses,
            })),
            "end": fig(self.end),
            "targets": self.targets().into_iter().map(|(k, ok, what)| (k.to_string(), json!({"met": ok, "what": what}))).collect::<serde_json::Map<_, _>>(),
        })
    }

    fn text(&self) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let _ = writeln!(t, "# infrawatch Kubernetes benchmark");
        if let Some(p) = &self.plan {
            let _ = writeln!(
                t,
                "cluster: {} nodes, {} pods, {} namespaces, {} Deployments/ReplicaSets/Services/EndpointSlices: {} objects, {} resources",
                p.nodes, p.pods, p.namespaces, p.deployments, self.objects, self.resources
            );
        }
        if let Some(b) = self.baseline {
            let _ = writeln!(t, "baseline (no cluster): RSS {:.1} MiB", mib(b.rss_bytes));
        }
        let _ = writeln!(
            t,
            "initial sync: ready {:.1} s, every object cached {}, every resource in the model {:.1} s; {:.1} CPU s; peak RSS {:.1} MiB",
            self.ready_s,
            self.listed_s
                .map_or("-".to_string(), |s| format!("{s:.1} s")),
            self.synced_s,
            self.sync_cpu_s,
            mib(self.sync_peak_rss)
        );
        let _ = writeln!(
            t,
            "  settled after {:.1} s: {} lists ({} without a relist), {} watch errors, leadership lost {} times",
            self.settled_s,
            self.sync_lists,
            self.kinds,
            self.sync_watch_errors,
            self.sync_leader_losses
        );
        if let Some(f) = self.after_sync {
            let _ = writeln!(t, "after sync: RSS {:.1} MiB", mib(f.rss_bytes));
        }
        if let (Some(m), Some(p)) = (self.model_rss(), &self.plan) {
            let _ = writeln!(
                t,
                "Kubernetes model: {:.1} MiB = {:.0} bytes per pod, {:.0} bytes per object",
                m as f64 / (1024.0 * 1024.0),
                m as f64 / p.pods as f64,
                m as f64 / self.objects as f64
            );
        }
        if let Some(c) = &self.changes {
            let _ = writeln!(
                t,
                "changes: {} of {} applied in {:.1} s ({:.0}/s{}), {} matched, {} without an event",
                c.applied,
                c.offered,
                c.wall_s,
                c.applied as f64 / c.wall_s,
                if c.slice_updates {
                    ", each with its EndpointSlice"
                } else {
                    ""
                },
                c.matched,
                c.missed
            );
            let q = |q: f64| c.latency.quantile_ms(q).unwrap_or(f64::NAN);
            let _ = writeln!(
                t,
                "  change → event p50 / p95 / p99 / max: {:.1} / {:.1} / {:.1} / {:.1} ms",
                q(0.5),
                q(0.95),
                q(0.99),
                c.latency.max_us() as f64 / 1000.0
            );
            let _ = writeln!(
                t,
                "  aggregator watch → commit p50 / p99: {} / {} ms",
                c.commit_p50_ms.map_or("-".into(), |v| format!("{v:.1}")),
                c.commit_p99_ms.map_or("-".into(), |v| format!("{v:.1}"))
            );
            let _ = writeln!(
                t,
                "  database commits: {:.0}/s, p50 / p99 {} / {} ms",
                c.store_commits_s,
                c.store_commit_p50_ms
                    .map_or("-".into(), |v| format!("{v:.1}")),
                c.store_commit_p99_ms
                    .map_or("-".into(), |v| format!("{v:.1}"))
            );
            let _ = writeln!(
                t,
                "  during the changes: {} lists, {} watch errors, leadership lost {} times",
                c.lists, c.watch_errors, c.leader_losses
            );
            let _ = writeln!(
                t,
                "  events: {:.0}/s ({}); aggregator {:.2} cores (fake API server and bench {:.2}); max RSS {:.1} MiB",
                c.events_s,
                c.events_by_kind
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.cores,
                c.bench_cores,
                mib(c.max_rss)
            );
        }
        if let Some(f) = self.end {
            let _ = writeln!(
                t,
                "end: RSS {:.1} MiB, peak (VmHWM) {:.1} MiB",
                mib(f.rss_bytes),
                mib(f.peak_rss_bytes)
            );
        }
        for (_, ok, what) in self.targets() {
            let _ = writeln!(t, "{} {what}", if ok { "MET   " } else { "MISSED" });
        }
        t
    }
}
