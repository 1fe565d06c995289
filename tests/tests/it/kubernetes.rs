//! Kubernetes end to end: the real aggregator watches the fake API server
//! (`infrawatch_e2e::kube_api`, list and watch over HTTPS with
//! resourceVersions, bookmarks and `410 Gone`) through a kubeconfig, and the
//! scenarios an operator cares about turn into health, reasons and events:
//! a node going NotReady reaches its pods and their Services, a crash-looping
//! pod makes its Service DEGRADED and its Deployment below desired, a Service
//! without a ready endpoint is UNHEALTHY, a deleted object leaves the model
//! with a `deleted` event, and an expired watch relists with no duplicate and
//! no missed change.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use infrawatch_e2e::kube_api::FakeKube;
use infrawatch_e2e::{Aggregator, Pki, eventually};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn node(name: &str, ready: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"providerID": format!("fake://{name}")},
        "status": {
            "conditions": [{"type": "Ready", "status": ready, "reason": if ready == "True" {"KubeletReady"} else {"KubeletNotReady"},
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "nodeInfo": {"machineID": format!("machine-{name}"), "kubeletVersion": "v1.35.0", "architecture": "amd64",
                         "bootID": "b", "containerRuntimeVersion": "c", "kernelVersion": "k", "kubeProxyVersion": "",
                         "operatingSystem": "linux", "osImage": "o", "systemUUID": "u"}
        }
    }))
    .unwrap()
}

fn pod(name: &str, node: &str, waiting: Option<&str>) -> Pod {
    let ready = if waiting.is_some() { "False" } else { "True" };
    let state = match waiting {
        Some(reason) => json!({"waiting": {"reason": reason, "message": "back-off restarting"}}),
        None => json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-uid", "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "web:1",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{"name": "web", "image": "web:1", "imageID": "", "ready": waiting.is_none(),
                                   "restartCount": if waiting.is_some() { 5 } else { 0 }, "state": state}]
        }
    }))
    .unwrap()
}

fn service() -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "type": "ClusterIP", "clusterIP": "10.0.0.10", "ports": [{"port": 80}]}
    }))
    .unwrap()
}

fn deployment(available: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "generation": 1},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}}},
        "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": available, "availableReplicas": available, "updatedReplicas": 2}
    }))
    .unwrap()
}

fn replica_set() -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "generation": 1,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid", "controller": true}]},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
        "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "availableReplicas": 2}
    }))
    .unwrap()
}

fn slice(ready: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<Value> = ready
        .iter()
        .map(|(pod, ready)| {
            json!({"addresses": ["10.1.0.1"], "conditions": {"ready": ready},
                   "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints
    }))
    .unwrap()
}

/// The aggregator's `[kubernetes]` section: cluster `test` through
/// `kubeconfig`, every hold switched off so transitions show at once.
fn kubernetes_config(kubeconfig: &Path) -> String {
    format!(
        "[kubernetes]\nbatch_ms = 20\n[[kubernetes.clusters]]\nname = \"test\"\nkubeconfig = {:?}\n\
         [kubernetes.rules]\nnode_not_ready_for_ms = 0\npod_not_ready_for_ms = 0\ncontainer_waiting_for_ms = 0\n\
         workload_mismatch_for_ms = 0\n",
        kubeconfig.display().to_string()
    )
}

fn codes(r: &Value) -> Vec<String> {
    r["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["code"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until resource `id` has `health`, and returns it; on a timeout the
/// panic shows what the aggregator last answered and its log.
fn wait_health(agg: &Aggregator, id: &str, health: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (status, r) = agg.get(&format!("/api/v1/resources/{id}"));
        if status == 200 && r["health"] == health {
            return r;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {id} {health}; last answer {status} {r}\n\
             aggregator log:\n{}",
            agg.process.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every event the aggregator kept, oldest first.
fn events(agg: &Aggregator) -> Vec<Value> {
    let (status, page) = agg.get("/api/v1/events?after=0&limit=1000");
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

fn event_count(events: &[Value], id: &str) -> usize {
    events
        .iter()
        .filter(|e| e["event"]["resourceId"] == id)
        .count()
}

/// Two nodes, and a Deployment `shop/web` of two pods (one per node) behind
/// a Service.
fn apply_web(kube: &FakeKube) {
    kube.apply(node("n1", "True"));
    kube.apply(node("n2", "True"));
    kube.apply(pod("web-a", "n1", None));
    kube.apply(pod("web-b", "n2", None));
    kube.apply(service());
    kube.apply(deployment(2));
    kube.apply(replica_set());
}

async fn cluster_with_web() -> (tempfile::TempDir, FakeKube, Aggregator) {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-k"]).unwrap();
    let kube = FakeKube::start().await.unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "test").unwrap();
    apply_web(&kube);
    let agg = Aggregator::start_sqlite(dir.path(), &pki, &kubernetes_config(&kubeconfig)).unwrap();
    wait_health(&agg, "k8s/test/service/shop/web", "healthy");
    (dir, kube, agg)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_going_not_ready_reaches_its_pods_and_their_services() {
    let (_dir, kube, agg) = cluster_with_web().await;
    let (_, n1) = agg.get("/api/v1/resources/k8s/test/node/n1");
    assert_eq!(n1["kind"], "k8s_node");
    assert_eq!(n1["labels"]["k8s.cluster.name"], "test");
    assert!(
        n1["relations"].to_string().contains("host/machine-n1"),
        "a node runs on its agent's host: {n1}"
    );
    let (_, web_a) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-a");
    let relations = web_a["relations"].to_string();
    assert!(relations.contains("k8s/test/node/n1"), "{relations}");
    assert!(
        relations.contains("k8s/test/replicaset/shop/web-1"),
        "{relations}"
    );
    let (_, rs) = agg.get("/api/v1/resources/k8s/test/replicaset/shop/web-1");
    assert!(
        rs["relations"]
            .to_string()
            .contains("k8s/test/deployment/shop/web"),
        "{rs}"
    );

    kube.apply(node("n1", "False"));
    let n1 = wait_health(&agg, "k8s/test/node/n1", "unhealthy");
    assert_eq!(codes(&n1), vec!["node_not_ready"]);
    let web_a = wait_health(&agg, "k8s/test/pod/shop/web-a", "degraded");
    assert_eq!(codes(&web_a), vec!["node_not_ready"]);
    assert!(
        web_a["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("k8s/test/node/n1"),
        "{web_a}"
    );
    let svc = wait_health(&agg, "k8s/test/service/shop/web", "degraded");
    assert!(codes(&svc).contains(&"node_not_ready".to_string()), "{svc}");
    let (_, web_b) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-b");
    assert_eq!(
        web_b["health"], "healthy",
        "the pod on the other node is untouched"
    );
    let events = events(&agg);
    for id in [
        "k8s/test/node/n1",
        "k8s/test/pod/shop/web-a",
        "k8s/test/service/shop/web",
    ] {
        assert!(
            events.iter().any(|e| {
                e["event"]["resourceId"] == id
                    && e["event"]["changed"].to_string().contains("health")
            }),
            "a status event for {id}"
        );
    }

    kube.apply(node("n1", "True"));
    wait_health(&agg, "k8s/test/service/shop/web", "healthy");
    wait_health(&agg, "k8s/test/pod/shop/web-a", "healthy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_pod_degrades_its_service_and_deployment() {
    let (_dir, kube, agg) = cluster_with_web().await;
    kube.apply(pod("web-b", "n2", Some("CrashLoopBackOff")));
    kube.apply(deployment(1));
    let web_b = wait_health(&agg, "k8s/test/pod/shop/web-b", "unhealthy");
    assert!(
        codes(&web_b).contains(&"crash_loop_back_off".to_string()),
        "{web_b}"
    );
    let svc = wait_health(&agg, "k8s/test/service/shop/web", "degraded");
    assert_eq!(codes(&svc), vec!["endpoints_not_ready"]);
    let d = wait_health(&agg, "k8s/test/deployment/shop/web", "degraded");
    assert_eq!(codes(&d), vec!["replicas_unavailable"]);

    // With EndpointSlices the Service follows them: the last ready endpoint
    // gone makes it UNHEALTHY.
    kube.apply(slice(&[("web-a", true), ("web-b", false)]));
    let svc = eventually(WAIT, "the service backed by its slice's pods", || {
        let (_, r) = agg.get("/api/v1/resources/k8s/test/service/shop/web");
        r["relations"]
            .to_string()
            .contains("backed_by")
            .then_some(r)
    });
    assert_eq!(svc["health"], "degraded", "{svc}");
    assert_eq!(
        svc["attributes"]["k8s.service.endpoints.ready"], "1",
        "{svc}"
    );
    kube.apply(slice(&[("web-a", false), ("web-b", false)]));
    let svc = wait_health(&agg, "k8s/test/service/shop/web", "unhealthy");
    assert_eq!(codes(&svc), vec!["no_ready_endpoints"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_object_leaves_with_an_event_and_comes_back_at_the_next_version() {
    let (_dir, kube, agg) = cluster_with_web().await;
    let (_, before) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-b");
    let version = before["resource_version"].as_u64().unwrap();
    assert!(kube.delete::<Pod>(Some("shop"), "web-b"));
    eventually(WAIT, "web-b gone", || {
        let (status, _) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-b");
        (status == 404).then_some(())
    });
    let deleted: Vec<Value> = events(&agg)
        .into_iter()
        .map(|e| e["event"].clone())
        .filter(|e| {
            e["resourceId"] == "k8s/test/pod/shop/web-b"
                && e["changed"].to_string().contains("deleted")
        })
        .collect();
    assert_eq!(deleted.len(), 1, "one deleted event");
    assert_eq!(deleted[0]["health"], "HEALTH_UNKNOWN");
    kube.apply(pod("web-b", "n2", None));
    let again = wait_health(&agg, "k8s/test/pod/shop/web-b", "healthy");
    assert_eq!(
        again["resource_version"].as_u64().unwrap(),
        version + 2,
        "it continues after its tombstone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_watch_relists_without_duplicates_or_missed_changes() {
    let (_dir, kube, agg) = cluster_with_web().await;
    let lists_before = kube.requests("pods", "list");
    let before = events(&agg);
    // The history is forgotten and the watches end: the watchers' next watch
    // gets 410 Gone and they list again. Changes made meanwhile must arrive.
    kube.compact();
    kube.close_watches();
    kube.apply(pod("web-c", "n2", None));
    assert!(kube.delete::<Pod>(Some("shop"), "web-a"));
    eventually(WAIT, "web-c created and web-a deleted", || {
        let (c, _) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-c");
        let (a, _) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-a");
        (c == 200 && a == 404).then_some(())
    });
    eventually(WAIT, "a relist of pods", || {
        (kube.requests("pods", "list") > lists_before).then_some(())
    });
    // Let every kind finish its relist, then compare.
    std::thread::sleep(Duration::from_secs(2));
    let after = events(&agg);
    let new: Vec<&Value> = after[before.len()..].iter().collect();
    let ids: BTreeMap<String, usize> = new.iter().fold(BTreeMap::new(), |mut m, e| {
        let id = e["event"]["resourceId"].as_str().unwrap_or_default();
        *m.entry(id.to_string()).or_default() += 1;
        m
    });
    assert_eq!(ids.get("k8s/test/pod/shop/web-c"), Some(&1), "{ids:?}");
    assert_eq!(ids.get("k8s/test/pod/shop/web-a"), Some(&1), "{ids:?}");
    assert_eq!(
        ids.get("k8s/test/node/n1"),
        None,
        "unchanged objects are not reported again: {:#?}",
        new.iter()
            .map(|e| (
                &e["event"]["resourceId"],
                &e["event"]["changed"],
                &e["event"]["reasons"]
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(ids.get("k8s/test/deployment/shop/web"), None, "{ids:?}");
    assert_eq!(
        event_count(&after, "k8s/test/node/n2"),
        event_count(&before, "k8s/test/node/n2")
    );
}

/// Writes a client certificate whose role URI names pod `ns/pod` of cluster
/// `test`, as the cert-manager CSI driver issues them to agent pods.
fn pod_certificate(pki: &Pki, dir: &Path, ns: &str, pod: &str) -> infrawatch_common::tls::TlsFiles {
    let ca = pki.trusted.ensure_ca().unwrap();
    let issued = ca
        .issue_client(
            &format!("k8s/test/{ns}/{pod}"),
            infrawatch_common::role::Role::Agent,
        )
        .unwrap();
    let cert = dir.join(format!("{pod}.pem"));
    let key = dir.join(format!("{pod}-key.pem"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    infrawatch_common::tls::TlsFiles {
        ca: pki.trusted.ca_cert(),
        cert,
        key,
    }
}

fn agent_pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "infrawatch", "labels": {"app.kubernetes.io/component": "agent"}},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "infrawatch-agent"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

/// Why the aggregator refuses a stream of `files` announcing `machine` (read
/// from the stream itself, before any batch is sent).
async fn refusal(
    endpoint: &str,
    files: &infrawatch_common::tls::TlsFiles,
    machine: &str,
) -> String {
    match infrawatch_e2e::RawStream::open_as(endpoint, files, 0, Some(machine)).await {
        Err(e) => panic!("connect: {e:#}"),
        Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
        Ok(Ok(mut stream)) => match stream.next_ack().await {
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
            Ok(ack) => panic!("the stream was accepted: {ack:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_pod_reports_for_its_own_node_only() {
    let (dir, kube, agg) = cluster_with_web().await;
    kube.apply(agent_pod("agent-a", "n1"));
    let pki = Pki::new(dir.path(), &["agent-k"]).unwrap();
    let files = pod_certificate(&pki, dir.path(), "infrawatch", "agent-a");
    let endpoint = agg.endpoint();

    // On node n1 it may report n1's machine, and nothing else.
    let refused = refusal(&endpoint, &files, "machine-n2").await;
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(
        refused.contains("node n1"),
        "the refusal names the pod's node: {refused}"
    );
    super::auth::try_report_as(&endpoint, &files, "machine-n1", "host/machine-n1")
        .await
        .unwrap();

    // A certificate for a pod that does not exist, or of a cluster that is
    // not watched, is refused.
    let ghost = pod_certificate(&pki, dir.path(), "infrawatch", "agent-ghost");
    let refused = refusal(&endpoint, &ghost, "machine-n1").await;
    assert!(refused.contains("does not exist"), "{refused}");
    let ca = pki.trusted.ensure_ca().unwrap();
    let issued = ca
        .issue_client(
            "k8s/elsewhere/infrawatch/agent-a",
            infrawatch_common::role::Role::Agent,
        )
        .unwrap();
    std::fs::write(dir.path().join("elsewhere.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("elsewhere-key.pem"), &issued.key_pem).unwrap();
    let elsewhere = infrawatch_common::tls::TlsFiles {
        ca: pki.trusted.ca_cert(),
        cert: dir.path().join("elsewhere.pem"),
        key: dir.path().join("elsewhere-key.pem"),
    };
    let refused = refusal(&endpoint, &elsewhere, "machine-n1").await;
    assert!(refused.contains("does not watch"), "{refused}");
}

fn metric(agg: &Aggregator, name: &str) -> Option<f64> {
    let (_, text) = agg.get_text("/metrics");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leader_hands_the_watches_over_without_losing_or_repeating_a_change() {
    super::init();
    const LEASE_TTL_MS: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-k"]).unwrap();
    let db = infrawatch_e2e::TestDatabase::create("k8s_leader")
        .await
        .unwrap();
    let kube = FakeKube::start().await.unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "test").unwrap();
    apply_web(&kube);
    let extra = format!(
        "[cluster]\nlease_ttl_ms = {LEASE_TTL_MS}\n{}",
        kubernetes_config(&kubeconfig)
    );
    let x = Aggregator::start(dir.path(), &pki, &db.url, &extra).unwrap();
    let y = Aggregator::start(dir.path(), &pki, &db.url, &extra).unwrap();
    let leads = |a: &Aggregator| metric(a, "infrawatch_aggregator_leader") == Some(1.0);
    let x_leads = eventually(WAIT, "a leader", || match (leads(&x), leads(&y)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    });
    let (mut leader, follower) = if x_leads { (x, y) } else { (y, x) };
    wait_health(&follower, "k8s/test/service/shop/web", "healthy");
    wait_health(&follower, "k8s/test/deployment/shop/web", "healthy");
    let before = events(&follower);

    let killed = std::time::Instant::now();
    leader.process.kill();
    // Changed while no replica watches: the next leader must see it.
    kube.apply(node("n1", "False"));
    eventually(WAIT, "the survivor leads", || {
        leads(&follower).then_some(())
    });
    let took_over = killed.elapsed();
    assert!(
        took_over <= Duration::from_millis(LEASE_TTL_MS * 2) + Duration::from_secs(2),
        "took over after {took_over:?}"
    );
    wait_health(&follower, "k8s/test/node/n1", "unhealthy");
    wait_health(&follower, "k8s/test/pod/shop/web-a", "degraded");
    wait_health(&follower, "k8s/test/service/shop/web", "degraded");
    // Let the new leader's lists settle, then count what it emitted.
    std::thread::sleep(Duration::from_secs(2));
    let after = events(&follower);
    let new = |id: &str| event_count(&after, id) - event_count(&before, id);
    assert_eq!(new("k8s/test/node/n1"), 1, "the missed change arrives once");
    assert_eq!(new("k8s/test/pod/shop/web-a"), 1);
    assert_eq!(new("k8s/test/service/shop/web"), 1);
    for unchanged in [
        "k8s/test/node/n2",
        "k8s/test/pod/shop/web-b",
        "k8s/test/deployment/shop/web",
        "k8s/test/replicaset/shop/web-1",
    ] {
        assert_eq!(
            new(unchanged),
            0,
            "{unchanged} is not reported again by the new leader"
        );
    }
    drop(follower);
    db.drop_now().await.unwrap();
}

/// A batch from the agent of machine `machine`: its host, and the volume of
/// claim `db/data` with ten minutes of samples in which the available bytes
/// fall from 20 GiB to 10 GiB of 100 GiB.
fn filling_volume_batch(machine: &str) -> infrawatch_proto::v1::Batch {
    use infrawatch_proto::v1::{Batch, ResourceObservation, SampleColumns, SeriesDef};
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let now = infrawatch_common::time::now_unix_ms();
    let base = now - 10 * 60_000;
    let mut samples = SampleColumns::default();
    for minute in 0..=10 {
        for (series, value) in [(0, (20.0 - minute as f64) * GIB), (1, 100.0 * GIB)] {
            samples.series.push(series);
            samples.time_offset_ms.push(minute * 60_000);
            samples.values.push(value);
        }
    }
    Batch {
        seq: 1,
        base_time_unix_ms: base,
        resources: vec![
            ResourceObservation {
                id: format!("host/{machine}"),
                kind: "host".into(),
                interval_ms: 60_000,
                ..Default::default()
            },
            ResourceObservation {
                id: format!("host/{machine}/volume/db/data"),
                kind: "k8s_volume_usage".into(),
                interval_ms: 60_000,
                ..Default::default()
            },
        ],
        strings: vec!["k8s.volume.available".into(), "k8s.volume.capacity".into()],
        series: vec![
            SeriesDef {
                resource: 1,
                metric: 0,
                attributes: vec![],
            },
            SeriesDef {
                resource: 1,
                metric: 1,
                attributes: vec![],
            },
        ],
        samples: Some(samples),
        gaps: Vec::new(),
        sent_at_unix_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filling_volume_gets_a_reason_with_its_predicted_time_to_full() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-machine-n1"]).unwrap();
    let kube = FakeKube::start().await.unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "test").unwrap();
    kube.apply(node("n1", "True"));
    let db_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "db-0", "namespace": "db", "labels": {"app": "db"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "db", "image": "db"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    kube.apply(db_pod);
    let claim: k8s_openapi::api::core::v1::PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data", "namespace": "db"},
        "spec": {"volumeName": "pv-data", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Gi"}}},
        "status": {"phase": "Bound", "capacity": {"storage": "100Gi"}}
    }))
    .unwrap();
    kube.apply(claim);
    let extra = kubernetes_config(&kubeconfig).replacen(
        "batch_ms = 20\n",
        "batch_ms = 20\nvolume_check_ms = 200\n",
        1,
    );
    let agg = Aggregator::start_sqlite(dir.path(), &pki, &extra).unwrap();
    let claim = wait_health(&agg, "k8s/test/pvc/db/data", "healthy");
    assert!(
        claim["relations"]
            .to_string()
            .contains("k8s/test/pv/pv-data"),
        "{claim}"
    );
    assert_eq!(
        claim["attributes"]["k8s.pvc.usage.resource"], "host/machine-n1/volume/db/data",
        "the claim names where its node's agent reports its use: {claim}"
    );

    // The node's agent reports the volume: 10% free, a GiB less every minute.
    let files = pki.client("agent-machine-n1");
    let mut stream = infrawatch_e2e::RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    stream
        .send(filling_volume_batch("machine-n1"))
        .await
        .unwrap();
    stream.next_ack().await.unwrap();
    let claim = wait_health(&agg, "k8s/test/pvc/db/data", "degraded");
    assert_eq!(codes(&claim), vec!["volume_filling_up"]);
    let message = claim["reasons"][0]["message"].as_str().unwrap();
    // 10 GiB left at 1 GiB a minute: full in about ten minutes.
    assert!(
        message.contains("10.0% free") && message.contains("full in 0.2 h"),
        "{message}"
    );
}

fn event(name: &str, kind: &str, about: &str, reason: &str) -> k8s_openapi::api::events::v1::Event {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "type": kind,
        "reason": reason,
        "note": format!("{reason} on {about}"),
        "action": "Observed",
        "regarding": {"kind": "Pod", "namespace": "shop", "name": about},
        "eventTime": "2026-12-05T03:00:00.000000Z",
        "reportingController": "kubelet",
        "reportingInstance": "n1"
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn warning_events_are_attached_to_their_objects_and_queryable() {
    let (_dir, kube, agg) = cluster_with_web().await;
    kube.apply(event("web-a.1", "Warning", "web-a", "BackOff"));
    kube.apply(event("web-a.2", "Normal", "web-a", "Pulled"));
    kube.apply(event("web-b.1", "Warning", "web-b", "FailedMount"));
    let pod = eventually(WAIT, "the warning on web-a", || {
        let (_, r) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-a");
        (r["attributes"]["k8s.warnings"] == "BackOff").then_some(r)
    });
    assert_eq!(
        pod["health"], "healthy",
        "a warning alone changes no health"
    );
    let list = |query: &str| {
        let (status, body) = agg.get(&format!("/api/v1/kubernetes/events{query}"));
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().cloned().unwrap_or_default()
    };
    eventually(WAIT, "both warnings stored", || {
        (list("").len() == 2).then_some(())
    });
    let backoff = list("?reason=BackOff");
    assert_eq!(backoff.len(), 1, "Normal events are not kept: {backoff:?}");
    assert_eq!(backoff[0]["resourceId"], "k8s/test/pod/shop/web-a");
    assert_eq!(backoff[0]["note"], "BackOff on web-a");
    assert_eq!(
        list("?resource=k8s/test/pod/shop/web-b")[0]["reason"],
        "FailedMount"
    );
    assert_eq!(list("?namespace=shop&cluster=test").len(), 2);
    assert!(list("?namespace=other").is_empty());
    let (status, _) = agg.get("/api/v1/kubernetes/events?colour=red");
    assert_eq!(status, 400, "unknown parameters are refused");

    // The API server expires the event: gone from the pod and the stream.
    assert!(kube.delete::<k8s_openapi::api::events::v1::Event>(Some("shop"), "web-a.1"));
    eventually(WAIT, "the warning gone from web-a", || {
        let (_, r) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-a");
        r["attributes"].get("k8s.warnings").is_none().then_some(())
    });
    eventually(WAIT, "one warning left", || {
        (list("").len() == 1).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn one_aggregator_watches_several_clusters_apart() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-k"]).unwrap();
    let east = FakeKube::start().await.unwrap();
    let west = FakeKube::start().await.unwrap();
    let (east_config, west_config) = (dir.path().join("east"), dir.path().join("west"));
    east.write_kubeconfig(&east_config, "east").unwrap();
    west.write_kubeconfig(&west_config, "west").unwrap();
    // The same names in both clusters: the ids keep them apart.
    for kube in [&east, &west] {
        kube.apply(node("n1", "True"));
        kube.apply(pod("web-a", "n1", None));
    }
    let extra = format!(
        "[kubernetes]\nbatch_ms = 20\n\
         [[kubernetes.clusters]]\nname = \"east\"\nkubeconfig = {:?}\n\
         [[kubernetes.clusters]]\nname = \"west\"\nkubeconfig = {:?}\n",
        east_config.display().to_string(),
        west_config.display().to_string()
    );
    let agg = Aggregator::start_sqlite(dir.path(), &pki, &extra).unwrap();
    wait_health(&agg, "k8s/east/pod/shop/web-a", "healthy");
    wait_health(&agg, "k8s/west/pod/shop/web-a", "healthy");
    west.apply(node("n1", "Unknown"));
    let n1 = wait_health(&agg, "k8s/west/node/n1", "unhealthy");
    assert_eq!(n1["labels"]["k8s.cluster.name"], "west");
    let (_, east_n1) = agg.get("/api/v1/resources/k8s/east/node/n1");
    assert_eq!(
        east_n1["health"], "healthy",
        "the other cluster is untouched"
    );
    // The default holds apply here (15 minutes), counted from the condition's
    // lastTransitionTime, which the fixture puts long ago: it counts at once.
    let west_pod = wait_health(&agg, "k8s/west/pod/shop/web-a", "degraded");
    assert_eq!(codes(&west_pod), vec!["node_not_ready"]);
    let (_, east_pod) = agg.get("/api/v1/resources/k8s/east/pod/shop/web-a");
    assert_eq!(east_pod["health"], "healthy", "{east_pod}");
}

/// The fake kubelet's figures of node `n1`: CPU in cores and working set in
/// bytes of `shop/web-a`, `shop/web-b` and `billing/invoice-0` (the last also
/// with network counters and ephemeral storage).
fn usage_summary() -> Value {
    let pod = |ns: &str, name: &str, cores: f64, working_set: u64| {
        json!({
            "podRef": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
            "cpu": {"usageNanoCores": (cores * 1e9) as u64},
            "memory": {"usageBytes": working_set + 1_000_000, "workingSetBytes": working_set}
        })
    };
    let mut invoice = pod("billing", "invoice-0", 0.2, 300_000_000);
    invoice["network"] = json!({"name": "eth0", "rxBytes": 1_000u64, "txBytes": 2_000u64});
    invoice["ephemeral-storage"] = json!({"usedBytes": 4_096u64});
    json!({
        "node": {"nodeName": "n1"},
        "pods": [
            pod("shop", "web-a", 0.05, 100_000_000),
            pod("shop", "web-b", 0.25, 60_000_000),
            invoice,
        ]
    })
}

/// Asserts that `v` is a number within 1e-6 of `expected`.
fn assert_close(v: &Value, expected: f64, what: &str) {
    let got = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {v} is no number"));
    assert!(
        (got - expected).abs() <= 1e-6 * expected.abs().max(1.0),
        "{what}: {got}, expected {expected}"
    );
}

/// The groups of `GET /api/v1/kubernetes/usage?<query>`, by name.
fn usage_groups(agg: &Aggregator, query: &str) -> BTreeMap<String, Value> {
    let (status, body) = agg.get(&format!("/api/v1/kubernetes/usage?{query}"));
    assert_eq!(status, 200, "{body}");
    body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap().to_string(), g.clone()))
        .collect()
}

/// Asserts the sums of the scenario below: namespaces `shop` (Deployment
/// `web`: web-a and web-b on n1 with figures, web-c on n2 without) and
/// `billing` (the bare pod invoice-0 on n1), by namespace, workload and node.
fn assert_usage_sums(agg: &Aggregator) {
    const MI: f64 = 1024.0 * 1024.0;
    let by_ns = usage_groups(agg, "cluster=test&by=namespace");
    assert_eq!(by_ns.keys().collect::<Vec<_>>(), ["billing", "shop"]);
    let shop = &by_ns["shop"];
    assert_eq!(shop["namespace"], "shop");
    assert_eq!(
        (shop["pods"].as_u64(), shop["podsWithUsage"].as_u64()),
        (Some(3), Some(2)),
        "{shop}"
    );
    assert_close(&shop["cpu"]["usageCores"], 0.05 + 0.25, "shop CPU use");
    assert_close(&shop["cpu"]["requestCores"], 0.3, "shop CPU requests");
    assert_close(&shop["cpu"]["limitCores"], 0.0, "no CPU limits set");
    // Over the requests of the two pods with figures: 0.3 of 0.2 cores.
    assert_close(
        &shop["cpu"]["usageOfRequest"],
        1.5,
        "shop CPU use of request",
    );
    assert_close(
        &shop["memory"]["workingSetBytes"],
        160e6,
        "shop working set",
    );
    assert_close(
        &shop["memory"]["requestBytes"],
        3.0 * 128.0 * MI,
        "shop memory requests",
    );
    assert_close(
        &shop["memory"]["limitBytes"],
        3.0 * 256.0 * MI,
        "shop memory limits",
    );
    assert_close(
        &shop["memory"]["usageOfRequest"],
        160e6 / (2.0 * 128.0 * MI),
        "shop memory use of request",
    );
    assert!(
        shop["network"]["receiveBytesTotal"].is_null(),
        "no figure is not zero: {shop}"
    );
    let billing = &by_ns["billing"];
    assert_eq!(
        (billing["pods"].as_u64(), billing["podsWithUsage"].as_u64()),
        (Some(1), Some(1)),
        "the finished pod does not count: {billing}"
    );
    assert_close(&billing["cpu"]["usageCores"], 0.2, "billing CPU use");
    assert_close(&billing["cpu"]["limitCores"], 0.5, "billing CPU limit");
    assert_close(
        &billing["cpu"]["usageOfRequest"],
        0.8,
        "billing CPU use of request",
    );
    assert_close(
        &billing["memory"]["workingSetBytes"],
        300e6,
        "billing working set",
    );
    assert_close(
        &billing["network"]["receiveBytesTotal"],
        1_000.0,
        "billing received",
    );
    assert_close(
        &billing["network"]["transmitBytesTotal"],
        2_000.0,
        "billing sent",
    );
    assert_close(
        &billing["ephemeralStorageBytes"],
        4_096.0,
        "billing ephemeral storage",
    );

    let by_workload = usage_groups(agg, "cluster=test&by=workload");
    assert_eq!(by_workload.keys().collect::<Vec<_>>(), ["invoice-0", "web"]);
    let web = &by_workload["web"];
    assert_eq!(
        (web["kind"].as_str(), web["namespace"].as_str()),
        (Some("Deployment"), Some("shop")),
        "the ReplicaSet's pods under its Deployment: {web}"
    );
    assert_eq!(web["pods"], 3);
    assert_close(&web["cpu"]["usageCores"], 0.3, "web CPU use");
    let invoice = &by_workload["invoice-0"];
    assert_eq!(
        (invoice["kind"].as_str(), invoice["namespace"].as_str()),
        (Some("Pod"), Some("billing")),
        "{invoice}"
    );

    let by_node = usage_groups(agg, "cluster=test&by=node");
    assert_eq!(by_node.keys().collect::<Vec<_>>(), ["n1", "n2"]);
    let n1 = &by_node["n1"];
    assert!(
        n1.get("namespace").is_none() && n1.get("kind").is_none(),
        "{n1}"
    );
    assert_eq!(
        (n1["pods"].as_u64(), n1["podsWithUsage"].as_u64()),
        (Some(3), Some(3)),
        "{n1}"
    );
    assert_close(&n1["cpu"]["usageCores"], 0.5, "n1 CPU use");
    assert_close(&n1["cpu"]["requestCores"], 0.45, "n1 CPU requests");
    assert_close(&n1["memory"]["workingSetBytes"], 460e6, "n1 working set");
    let n2 = &by_node["n2"];
    assert_eq!(
        (n2["pods"].as_u64(), n2["podsWithUsage"].as_u64()),
        (Some(1), Some(0)),
        "{n2}"
    );
    assert!(
        n2["cpu"]["usageCores"].is_null() && n2["cpu"]["usageOfRequest"].is_null(),
        "{n2}"
    );
    assert_close(&n2["cpu"]["requestCores"], 0.1, "n2 CPU requests");

    let billing_nodes = usage_groups(agg, "cluster=test&by=node&namespace=billing");
    assert_eq!(billing_nodes.keys().collect::<Vec<_>>(), ["n1"]);
    assert_eq!(billing_nodes["n1"]["pods"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_usage_is_summed_against_requests_per_namespace_workload_and_node() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-usage"]).unwrap();
    let kube = FakeKube::start().await.unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "test").unwrap();
    // Node n1 is this machine, where the agent reads the fake kubelet; n2's
    // machine runs no agent.
    let machine = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let mut n1 = node("n1", "True");
    if let Some(info) = n1.status.as_mut().and_then(|s| s.node_info.as_mut()) {
        info.machine_id = machine.clone();
    }
    kube.apply(n1);
    kube.apply(node("n2", "True"));
    kube.apply(deployment(3));
    kube.apply(replica_set());
    kube.apply(pod("web-a", "n1", None));
    kube.apply(pod("web-b", "n1", None));
    kube.apply(pod("web-c", "n2", None));
    let billing_pod = |name: &str, phase: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "billing"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "invoice:1",
                     "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    };
    kube.apply(billing_pod("invoice-0", "Running"));
    kube.apply(billing_pod("invoice-migrate", "Succeeded"));
    let agg = Aggregator::start_sqlite(dir.path(), &pki, &kubernetes_config(&kubeconfig)).unwrap();

    let kubelet = infrawatch_e2e::fake_kubelet::FakeKubelet::start("kubelet-token").unwrap();
    kubelet.set_summary(usage_summary());
    let (token, ca) = (dir.path().join("token"), dir.path().join("kubelet-ca.crt"));
    std::fs::write(&token, "kubelet-token\n").unwrap();
    std::fs::write(&ca, kubelet.ca_pem()).unwrap();
    let collector = format!(
        "[collectors.kubelet]\nenabled = true\ninterval_ms = 1000\ndeadline_ms = 900\ntimeout_ms = 800\n\
         url = {:?}\ntoken_file = {:?}\nca_file = {:?}\n",
        kubelet.url(),
        token.display().to_string(),
        ca.display().to_string(),
    );
    let mut agent = infrawatch_e2e::Agent::start_with(
        dir.path(),
        &pki,
        "agent-usage",
        &[agg.endpoint()],
        1000,
        &collector,
    )
    .unwrap();

    // The model's pods name where the agent reports their use.
    let web_a = eventually(WAIT, "web-a's usage resource", || {
        let (_, r) = agg.get("/api/v1/resources/k8s/test/pod/shop/web-a");
        r["attributes"]["k8s.pod.usage.resource"]
            .as_str()
            .map(|_| r.clone())
    });
    assert_eq!(
        web_a["attributes"]["k8s.pod.usage.resource"],
        format!("host/{machine}/pod/shop/web-a")
    );
    eventually(WAIT, "every figure of n1's pods", || {
        let n1 = usage_groups(&agg, "cluster=test&by=node").remove("n1")?;
        (n1["podsWithUsage"] == 3).then_some(())
    });
    assert_usage_sums(&agg);

    // Parameters: `by` and `cluster` are required, others refused.
    for (query, status, names) in [
        ("cluster=test&by=pod", 400, "by"),
        ("cluster=test", 400, "by"),
        ("by=node", 400, "cluster"),
        ("cluster=test&by=node&colour=red", 400, "colour"),
        ("cluster=elsewhere&by=node", 404, "elsewhere"),
    ] {
        let (got, body) = agg.get(&format!("/api/v1/kubernetes/usage?{query}"));
        assert_eq!(got, status, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{query}: {message}");
    }

    // Without the agent and after a restart, this replica's memory holds no
    // figure: the same sums come from the stored rollups (as on a replica the
    // agent does not stream to).
    agent.process.stop().unwrap();
    let agg = agg.restart(dir.path()).unwrap();
    eventually(WAIT, "the figures from the stored rollups", || {
        let n1 = usage_groups(&agg, "cluster=test&by=node").remove("n1")?;
        (n1["podsWithUsage"] == 3).then_some(())
    });
    assert_usage_sums(&agg);
}
