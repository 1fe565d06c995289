//! Health rules for Kubernetes objects, after the conditions the community's
//! kubernetes-mixin alerts on. Each rule yields a [`Finding`]: a reason code,
//! the health it implies, a message with the figures, and how long the
//! condition must hold before it counts (the alert's `for:`), with when it
//! started where the API says so. Pure functions of the cache: every rule is
//! unit-tested without a cluster.

use super::cache::Cache;
use super::config::RuleConfig;
use super::ids;
use super::objects::{
    Hpa, Job, Key, Kind, Namespace, Node, Object, Pdb, Pod, Pv, Pvc, Service, Status, Workload,
};
use crate::model::Health;

/// A condition a rule found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Reason code.
    pub code: &'static str,
    /// The health it implies once it holds long enough.
    pub health: Health,
    /// Readable explanation.
    pub message: String,
    /// When the condition started, if the API says (a condition's last
    /// transition); otherwise the source counts from when it first saw it.
    pub since_ms: Option<i64>,
    /// How long it must hold before it counts.
    pub hold_ms: u64,
    /// Observed figure, if any.
    pub observed: f64,
    /// Threshold crossed, if any.
    pub threshold: f64,
}

impl Finding {
    fn new(code: &'static str, health: Health, message: String) -> Self {
        Self {
            code,
            health,
            message,
            since_ms: None,
            hold_ms: 0,
            observed: 0.0,
            threshold: 0.0,
        }
    }

    fn held(mut self, hold_ms: u64, since_ms: Option<i64>) -> Self {
        self.hold_ms = hold_ms;
        self.since_ms = since_ms;
        self
    }

    fn figures(mut self, observed: f64, threshold: f64) -> Self {
        self.observed = observed;
        self.threshold = threshold;
        self
    }
}

/// What the rules read besides the object.
pub struct Context<'a> {
    /// The cluster's objects.
    pub cache: &'a Cache,
    /// The cluster's name.
    pub cluster: &'a str,
    /// Thresholds.
    pub rules: &'a RuleConfig,
    /// Now (Unix ms).
    pub now_ms: i64,
    /// Ready transitions of a node within the flapping window.
    pub node_flaps: &'a dyn Fn(&str) -> u32,
    /// Restarts of a pod's containers within the restart window.
    pub pod_restarts: &'a dyn Fn(&Key) -> i32,
    /// What the agents say of a claim's volume, if they report it.
    pub volume_usage: &'a dyn Fn(&Pvc) -> Option<VolumeUsage>,
}

/// A volume's use as the kubelet reports it through the node's agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VolumeUsage {
    /// Bytes available now.
    pub available: f64,
    /// Capacity in bytes.
    pub capacity: f64,
    /// Change of the available bytes per ms over the recent window (negative
    /// while it fills), if there are enough samples to tell.
    pub trend_per_ms: Option<f64>,
}

impl VolumeUsage {
    /// When it will be full at the current trend (ms from now), if it fills.
    pub fn full_in_ms(&self) -> Option<f64> {
        let trend = self.trend_per_ms?;
        (trend < 0.0).then(|| self.available / -trend)
    }
}

/// The findings for `object`.
pub fn evaluate(ctx: &Context<'_>, object: &Object) -> Vec<Finding> {
    match object {
        Object::Node(n) => node(ctx, n),
        Object::Pod(p) => pod(ctx, p),
        Object::Service(s) => service(ctx, s),
        Object::Namespace(n) => namespace(ctx, n),
        Object::Workload(kind, w) => workload(ctx, *kind, w),
        Object::Job(j) => job(ctx, j),
        Object::Hpa(h) => hpa(ctx, h),
        Object::Pdb(p) => pdb(p),
        Object::Pvc(c) => pvc(ctx, c),
        Object::Pv(v) => pv(v),
        Object::CronJob(_) | Object::EndpointSlice(_) | Object::Quota(_) | Object::Warning(_) => {
            Vec::new()
        }
    }
}

fn node(ctx: &Context<'_>, n: &Node) -> Vec<Finding> {
    let r = ctx.rules;
    let mut out = Vec::new();
    match n.ready.status {
        Status::True => {}
        Status::False => out.push(
            Finding::new(
                "node_not_ready",
                Health::Unhealthy,
                format!("Ready is False: {} {}", n.ready.reason, n.ready.message)
                    .trim_end()
                    .to_string(),
            )
            .held(r.node_not_ready_for_ms, n.ready.since_ms),
        ),
        Status::Unknown => out.push(
            Finding::new(
                "node_unreachable",
                Health::Unhealthy,
                format!(
                    "the kubelet stopped posting the node's status ({})",
                    if n.ready.reason.is_empty() {
                        "no Ready condition"
                    } else {
                        &n.ready.reason
                    }
                ),
            )
            .held(r.node_not_ready_for_ms, n.ready.since_ms),
        ),
    }
    for (kind, cond) in &n.pressure {
        let code = match kind.as_str() {
            "MemoryPressure" => "node_memory_pressure",
            "DiskPressure" => "node_disk_pressure",
            _ => "node_pid_pressure",
        };
        out.push(
            Finding::new(
                code,
                Health::Degraded,
                format!("{kind} is True: {}", cond.message),
            )
            .held(r.node_not_ready_for_ms, cond.since_ms),
        );
    }
    if n.unschedulable {
        out.push(
            Finding::new(
                "node_unschedulable",
                Health::Degraded,
                "the node is cordoned (unschedulable)".into(),
            )
            .held(r.node_not_ready_for_ms, None),
        );
    }
    let flaps = (ctx.node_flaps)(&n.meta.name);
    if flaps > r.node_flapping_changes {
        out.push(
            Finding::new(
                "node_readiness_flapping",
                Health::Degraded,
                format!(
                    "Ready changed {flaps} times in {} min",
                    r.node_flapping_window_ms / 60_000
                ),
            )
            .figures(f64::from(flaps), f64::from(r.node_flapping_changes)),
        );
    }
    if n.allocatable_pods > 0.0 {
        let pods = ctx
            .cache
            .pods_on(&n.meta.name)
            .filter(|p| p.is_active())
            .count() as f64;
        let fraction = pods / n.allocatable_pods;
        if fraction >= r.node_pods_fraction {
            out.push(
                Finding::new(
                    "node_pods_near_capacity",
                    Health::Degraded,
                    format!("{pods} pods of at most {}", n.allocatable_pods),
                )
                .held(r.node_not_ready_for_ms, None)
                .figures(fraction, r.node_pods_fraction),
            );
        }
    }
    out
}

/// Why a container waits, as a reason code, for the waiting reasons that mean
/// it cannot run (a container waiting in `ContainerCreating` is just starting).
fn waiting_code(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "CrashLoopBackOff" => "crash_loop_back_off",
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
            "image_pull_failing"
        }
        "CreateContainerConfigError"
        | "CreateContainerError"
        | "RunContainerError"
        | "PreCreateHookError"
        | "PostStartHookError" => "container_config_error",
        _ => return None,
    })
}

fn pod(ctx: &Context<'_>, p: &Pod) -> Vec<Finding> {
    let r = ctx.rules;
    let mut out = Vec::new();
    match p.phase.as_str() {
        "Succeeded" => return out,
        "Failed" => {
            out.push(Finding::new(
                "pod_failed",
                Health::Unhealthy,
                format!(
                    "the pod failed{}",
                    if p.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", p.reason)
                    }
                ),
            ));
            return out;
        }
        _ => {}
    }
    for c in &p.containers {
        if let Some((reason, message)) = &c.waiting
            && let Some(code) = waiting_code(reason)
        {
            out.push(
                Finding::new(
                    code,
                    Health::Unhealthy,
                    format!("container {} waits: {reason} {message}", c.name)
                        .trim_end()
                        .to_string(),
                )
                .held(r.container_waiting_for_ms, None),
            );
        }
        if let Some((reason, at)) = &c.last_terminated
            && reason == "OOMKilled"
            && ctx.now_ms - at <= i64::try_from(r.restart_window_ms).unwrap_or(i64::MAX)
        {
            out.push(Finding::new(
                "oom_killed",
                Health::Degraded,
                format!("container {} was killed for using too much memory", c.name),
            ));
        }
    }
    let restarts = (ctx.pod_restarts)(&Key::new(Kind::Pod, &p.meta.namespace, &p.meta.name));
    if restarts >= i32::try_from(r.restarts).unwrap_or(i32::MAX) {
        out.push(
            Finding::new(
                "restarting",
                Health::Degraded,
                format!(
                    "{restarts} container restarts in {} min",
                    r.restart_window_ms / 60_000
                ),
            )
            .figures(f64::from(restarts), f64::from(r.restarts)),
        );
    }
    if !p.node.is_empty()
        && let Some(Object::Node(n)) = ctx.cache.get(&Key::new(Kind::Node, "", &p.node))
        && n.ready.status != Status::True
    {
        out.push(
            Finding::new(
                "node_not_ready",
                Health::Degraded,
                format!(
                    "runs on {}, which is not ready",
                    ids::node(ctx.cluster, &p.node)
                ),
            )
            .held(r.node_not_ready_for_ms, n.ready.since_ms),
        );
    }
    match p.phase.as_str() {
        "Running" if p.ready.status != Status::True && !p.terminating => out.push(
            Finding::new(
                "pod_not_ready",
                Health::Degraded,
                format!("running but not ready {}", p.ready.reason)
                    .trim_end()
                    .to_string(),
            )
            .held(r.pod_not_ready_for_ms, p.ready.since_ms),
        ),
        "Pending" | "Unknown" | "" if !p.terminating => out.push(
            Finding::new(
                "pod_not_ready",
                Health::Unhealthy,
                format!(
                    "{} {}",
                    if p.phase.is_empty() {
                        "Pending"
                    } else {
                        &p.phase
                    },
                    if p.node.is_empty() {
                        "(not scheduled)"
                    } else {
                        ""
                    }
                )
                .trim_end()
                .to_string(),
            )
            .held(r.pod_not_ready_for_ms, Some(p.meta.created_ms)),
        ),
        _ => {}
    }
    out
}

fn service(ctx: &Context<'_>, s: &Service) -> Vec<Finding> {
    let mut out = Vec::new();
    if s.service_type == "ExternalName" || s.selector.is_empty() {
        return out;
    }
    let ns = &s.meta.namespace;
    let mut total = 0usize;
    let mut ready = 0usize;
    let mut sliced = false;
    for slice in ctx.cache.slices_of(ns, &s.meta.name) {
        sliced = true;
        total += slice.endpoints.len();
        ready += slice.endpoints.iter().filter(|e| e.ready).count();
    }
    let pods: Vec<&Pod> = ctx
        .cache
        .pods_selected(&Key::new(Kind::Service, ns, &s.meta.name))
        .filter(|p| p.is_active())
        .collect();
    if !sliced {
        total = pods.len();
        ready = pods
            .iter()
            .filter(|p| p.ready.status == Status::True)
            .count();
    }
    if ready == 0 {
        out.push(
            Finding::new(
                "no_ready_endpoints",
                Health::Unhealthy,
                format!("none of {total} endpoints is ready"),
            )
            .figures(0.0, total as f64),
        );
    } else if ready < total {
        out.push(
            Finding::new(
                "endpoints_not_ready",
                Health::Degraded,
                format!("{} of {total} endpoints are not ready", total - ready),
            )
            .figures(ready as f64, total as f64),
        );
    }
    let mut nodes: Vec<&str> = pods
        .iter()
        .filter(|p| {
            matches!(ctx.cache.get(&Key::new(Kind::Node, "", &p.node)), Some(Object::Node(n)) if n.ready.status != Status::True)
        })
        .map(|p| p.node.as_str())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    if !nodes.is_empty() {
        let since = nodes
            .iter()
            .filter_map(|n| match ctx.cache.get(&Key::new(Kind::Node, "", n)) {
                Some(Object::Node(n)) => n.ready.since_ms,
                _ => None,
            })
            .min();
        let listed: Vec<String> = nodes.iter().map(|n| ids::node(ctx.cluster, n)).collect();
        out.push(
            Finding::new(
                "node_not_ready",
                Health::Degraded,
                format!(
                    "selected pods run on nodes that are not ready: {}",
                    listed.join(", ")
                ),
            )
            .held(ctx.rules.node_not_ready_for_ms, since),
        );
    }
    out
}

fn namespace(ctx: &Context<'_>, n: &Namespace) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut worst: Option<(f64, String)> = None;
    for q in ctx.cache.quotas_of(&n.meta.name) {
        for (resource, hard) in &q.hard {
            let used = q.used.get(resource).copied().unwrap_or(0.0);
            if *hard <= 0.0 {
                continue;
            }
            let fraction = used / hard;
            if worst.as_ref().is_none_or(|(f, _)| fraction > *f) {
                worst = Some((
                    fraction,
                    format!("{resource} of quota {}: {used} of {hard}", q.meta.name),
                ));
            }
        }
    }
    if let Some((fraction, what)) = worst {
        if fraction > 1.0 {
            out.push(
                Finding::new("quota_exceeded", Health::Unhealthy, what).figures(fraction, 1.0),
            );
        } else if fraction >= ctx.rules.quota_fraction {
            out.push(
                Finding::new("quota_almost_full", Health::Degraded, what)
                    .figures(fraction, ctx.rules.quota_fraction),
            );
        }
    }
    out
}

fn workload(ctx: &Context<'_>, kind: Kind, w: &Workload) -> Vec<Finding> {
    let hold = ctx.rules.workload_mismatch_for_ms;
    let mut out = Vec::new();
    if w.meta.generation > w.observed_generation && w.observed_generation > 0 {
        out.push(
            Finding::new(
                "generation_not_observed",
                Health::Degraded,
                format!(
                    "generation {} not yet observed (at {})",
                    w.meta.generation, w.observed_generation
                ),
            )
            .held(hold, None),
        );
    }
    let have = if kind == Kind::Deployment || kind == Kind::DaemonSet {
        w.available
    } else {
        w.ready
    };
    if w.desired > 0 && have < w.desired {
        let (code, health) = if have == 0 {
            ("no_replicas_available", Health::Unhealthy)
        } else {
            ("replicas_unavailable", Health::Degraded)
        };
        out.push(
            Finding::new(
                code,
                health,
                format!("{have} of {} desired pods available", w.desired),
            )
            .held(hold, None)
            .figures(f64::from(have), f64::from(w.desired)),
        );
    }
    if w.progress_deadline_exceeded {
        out.push(Finding::new(
            "rollout_stuck",
            Health::Unhealthy,
            "the rollout exceeded its progress deadline".into(),
        ));
    }
    if w.revision_pending && w.updated < w.desired {
        out.push(
            Finding::new(
                "rollout_stuck",
                Health::Degraded,
                format!("{} of {} pods at the update revision", w.updated, w.desired),
            )
            .held(hold, None),
        );
    }
    if w.unscheduled > 0 {
        out.push(
            Finding::new(
                "daemonset_not_scheduled",
                Health::Degraded,
                format!("{} nodes that should run a pod do not", w.unscheduled),
            )
            .held(hold, None)
            .figures(f64::from(w.unscheduled), 0.0),
        );
    }
    if w.misscheduled > 0 {
        out.push(
            Finding::new(
                "daemonset_misscheduled",
                Health::Degraded,
                format!(
                    "{} pods run on nodes that should not run one",
                    w.misscheduled
                ),
            )
            .held(hold, None)
            .figures(f64::from(w.misscheduled), 0.0),
        );
    }
    out
}

fn job(ctx: &Context<'_>, j: &Job) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(failed) = &j.failed {
        out.push(Finding::new(
            "job_failed",
            Health::Unhealthy,
            format!("{} {}", failed.reason, failed.message)
                .trim()
                .to_string(),
        ));
    } else if !j.complete
        && let Some(started) = j.started_ms
    {
        let running = ctx.now_ms - started;
        let max = i64::try_from(ctx.rules.job_max_duration_ms).unwrap_or(i64::MAX);
        if running > max {
            out.push(
                Finding::new(
                    "job_running_too_long",
                    Health::Degraded,
                    format!("running for {} min", running / 60_000),
                )
                .figures(running as f64 / 1000.0, max as f64 / 1000.0),
            );
        }
    }
    out
}

fn hpa(ctx: &Context<'_>, h: &Hpa) -> Vec<Finding> {
    let hold = ctx.rules.hpa_for_ms;
    let mut out = Vec::new();
    if h.max > 0 && h.current >= h.max {
        out.push(
            Finding::new(
                "hpa_maxed_out",
                Health::Degraded,
                format!("at its maximum of {} replicas", h.max),
            )
            .held(hold, None)
            .figures(f64::from(h.current), f64::from(h.max)),
        );
    }
    if h.desired != h.current {
        out.push(
            Finding::new(
                "hpa_not_converging",
                Health::Degraded,
                format!("{} replicas, {} desired", h.current, h.desired),
            )
            .held(hold, None)
            .figures(f64::from(h.current), f64::from(h.desired)),
        );
    }
    out
}

fn pdb(p: &Pdb) -> Vec<Finding> {
    if p.current_healthy < p.desired_healthy {
        vec![
            Finding::new(
                "pdb_insufficient_healthy",
                Health::Degraded,
                format!(
                    "{} healthy pods, {} required",
                    p.current_healthy, p.desired_healthy
                ),
            )
            .figures(f64::from(p.current_healthy), f64::from(p.desired_healthy)),
        ]
    } else {
        Vec::new()
    }
}

fn pvc(ctx: &Context<'_>, c: &Pvc) -> Vec<Finding> {
    match c.phase.as_str() {
        "Lost" => vec![Finding::new(
            "pvc_lost",
            Health::Unhealthy,
            format!("its volume {} is gone", c.volume),
        )],
        "Pending" | "" => vec![
            Finding::new(
                "pvc_not_bound",
                Health::Degraded,
                "not bound to a volume".into(),
            )
            .held(ctx.rules.pvc_pending_for_ms, Some(c.meta.created_ms)),
        ],
        "Bound" => volume_filling(ctx, c),
        _ => Vec::new(),
    }
}

/// KubePersistentVolumeFillingUp: under 3% free is UNHEALTHY; under 15% free
/// and full within four days at the current trend is DEGRADED.
fn volume_filling(ctx: &Context<'_>, c: &Pvc) -> Vec<Finding> {
    let Some(usage) = (ctx.volume_usage)(c) else {
        return Vec::new();
    };
    if usage.capacity <= 0.0 {
        return Vec::new();
    }
    let free = usage.available / usage.capacity;
    let r = ctx.rules;
    let full_in = usage.full_in_ms();
    let predicted = full_in.map_or_else(
        || "not filling".to_string(),
        |ms| format!("full in {:.1} h at the current rate", ms / 3_600_000.0),
    );
    if free < r.volume_free_critical {
        return vec![
            Finding::new(
                "volume_almost_full",
                Health::Unhealthy,
                format!("{:.1}% free ({predicted})", free * 100.0),
            )
            .figures(free, r.volume_free_critical),
        ];
    }
    let soon = full_in.is_some_and(|ms| ms <= r.volume_full_within_ms as f64);
    if free < r.volume_free_warning && soon {
        return vec![
            Finding::new(
                "volume_filling_up",
                Health::Degraded,
                format!("{:.1}% free, {predicted}", free * 100.0),
            )
            .figures(free, r.volume_free_warning),
        ];
    }
    Vec::new()
}

fn pv(v: &Pv) -> Vec<Finding> {
    match v.phase.as_str() {
        "Failed" => vec![Finding::new(
            "pv_failed",
            Health::Unhealthy,
            v.message.clone(),
        )],
        "Pending" => vec![Finding::new(
            "pv_pending",
            Health::Degraded,
            v.message.clone(),
        )],
        _ => Vec::new(),
    }
}

/// Findings of the cluster as a whole: requests against allocatable, and
/// whether the cluster survives losing its largest node (KubeCPUOvercommit,
/// KubeMemoryOvercommit).
pub fn cluster(cache: &Cache) -> (Vec<Finding>, ClusterFigures) {
    let mut fig = ClusterFigures::default();
    let mut largest = super::objects::Resources::default();
    for o in cache.all(Kind::Node) {
        if let Object::Node(n) = o {
            fig.nodes += 1;
            if n.ready.status == Status::True {
                fig.nodes_ready += 1;
            }
            fig.allocatable.add(n.allocatable);
            largest.cpu = largest.cpu.max(n.allocatable.cpu);
            largest.memory = largest.memory.max(n.allocatable.memory);
        }
    }
    for o in cache.all(Kind::Pod) {
        if let Object::Pod(p) = o
            && p.is_active()
        {
            fig.pods += 1;
            fig.requests.add(p.requests);
        }
    }
    let mut out = Vec::new();
    if fig.nodes >= 2 {
        for (code, what, requested, allocatable, largest) in [
            (
                "cpu_overcommit",
                "CPU",
                fig.requests.cpu,
                fig.allocatable.cpu,
                largest.cpu,
            ),
            (
                "memory_overcommit",
                "memory",
                fig.requests.memory,
                fig.allocatable.memory,
                largest.memory,
            ),
        ] {
            let survivable = allocatable - largest;
            if allocatable > 0.0 && requested > survivable {
                out.push(
                    Finding::new(
                        code,
                        Health::Degraded,
                        format!(
                            "pods request {:.1}% of allocatable {what}; the cluster cannot lose its largest node",
                            requested / allocatable * 100.0
                        ),
                    )
                    .figures(requested, survivable),
                );
            }
        }
    }
    (out, fig)
}

/// Totals of a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClusterFigures {
    /// Nodes.
    pub nodes: usize,
    /// Ready nodes.
    pub nodes_ready: usize,
    /// Active pods.
    pub pods: usize,
    /// Sum of allocatable.
    pub allocatable: super::objects::Resources,
    /// Sum of active pods' requests.
    pub requests: super::objects::Resources,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::k8s::objects::Meta;

    fn findings_for(object: &Object, usage: Option<VolumeUsage>) -> Vec<Finding> {
        let cache = Cache::default();
        let rules = RuleConfig::default();
        let no_flaps = |_: &str| 0;
        let no_restarts = |_: &Key| 0;
        let volume = move |_: &Pvc| usage;
        let ctx = Context {
            cache: &cache,
            cluster: "c",
            rules: &rules,
            now_ms: 1_000_000,
            node_flaps: &no_flaps,
            pod_restarts: &no_restarts,
            volume_usage: &volume,
        };
        evaluate(&ctx, object)
    }

    fn bound() -> Object {
        Object::Pvc(Box::new(Pvc {
            meta: Meta {
                name: "data".into(),
                namespace: "db".into(),
                ..Meta::default()
            },
            phase: "Bound".into(),
            ..Pvc::default()
        }))
    }

    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const HOUR_MS: f64 = 3_600_000.0;

    #[test]
    fn a_filling_volume_is_degraded_with_its_predicted_time_to_full() {
        // 10% free of 100 GiB, losing 1 GiB an hour: full in 10 hours.
        let filling = VolumeUsage {
            available: 10.0 * GIB,
            capacity: 100.0 * GIB,
            trend_per_ms: Some(-GIB / HOUR_MS),
        };
        let f = findings_for(&bound(), Some(filling));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "volume_filling_up");
        assert_eq!(f[0].health, Health::Degraded);
        assert!(f[0].message.contains("full in 10.0 h"), "{}", f[0].message);
        // The same free space, not filling: nothing to say.
        let steady = VolumeUsage {
            trend_per_ms: Some(0.0),
            ..filling
        };
        assert!(findings_for(&bound(), Some(steady)).is_empty());
        // Under 3% free is UNHEALTHY whatever the trend.
        let full = VolumeUsage {
            available: 2.0 * GIB,
            trend_per_ms: None,
            ..filling
        };
        let f = findings_for(&bound(), Some(full));
        assert_eq!(f[0].code, "volume_almost_full");
        assert_eq!(f[0].health, Health::Unhealthy);
        // No agent reports the volume: no finding.
        assert!(findings_for(&bound(), None).is_empty());
    }

    #[test]
    fn a_claim_not_bound_or_lost_is_named() {
        let mut pending = bound();
        if let Object::Pvc(c) = &mut pending {
            c.phase = "Pending".into();
        }
        assert_eq!(findings_for(&pending, None)[0].code, "pvc_not_bound");
        let mut lost = bound();
        if let Object::Pvc(c) = &mut lost {
            c.phase = "Lost".into();
        }
        assert_eq!(findings_for(&lost, None)[0].health, Health::Unhealthy);
    }
}
