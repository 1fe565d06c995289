//! The kubelet collector end to end: a real agent scrapes a fake kubelet's
//! Summary API over HTTPS (its own CA, a bearer token from a file) and the
//! aggregator serves the pods and claims it reports, with the figures of the
//! document; a token the kubelet refuses marks the collector failing on the
//! agent's resource while the host's data keeps flowing, and the next good
//! token (re-read at every scrape) clears it.

use std::time::Duration;

use infrawatch_e2e::fake_kubelet::FakeKubelet;
use infrawatch_e2e::{Agent, Aggregator, Pki, eventually, machine_id};
use serde_json::{Value, json};

/// The latest value of `metric` whose attributes contain `attr`.
fn latest(resource: &Value, metric: &str, attr: &str) -> Option<(f64, i64)> {
    resource["latest"].as_array()?.iter().find_map(|l| {
        (l["metric"] == metric && l["attributes"].as_str().unwrap_or("").contains(attr))
            .then(|| Some((l["value"].as_f64()?, l["timestamp_unix_ms"].as_i64()?)))
            .flatten()
    })
}

/// Two pods, one with two containers, a claim and an emptyDir volume.
fn summary(web_cores: f64) -> Value {
    json!({
        "node": {"nodeName": "node-1", "cpu": {"usageNanoCores": 900_000_000u64}},
        "pods": [
            {
                "podRef": {"name": "web-0", "namespace": "shop", "uid": "6f1c2a7e-0000-4000-8000-000000000001"},
                "containers": [
                    {"name": "app", "cpu": {"usageNanoCores": (web_cores * 0.8e9) as u64},
                     "memory": {"workingSetBytes": 100_000_000u64}},
                    {"name": "proxy", "cpu": {"usageNanoCores": (web_cores * 0.2e9) as u64},
                     "memory": {"workingSetBytes": 23_456_789u64}}
                ],
                "cpu": {"usageNanoCores": (web_cores * 1e9) as u64},
                "memory": {"usageBytes": 150_000_000u64, "workingSetBytes": 123_456_789u64},
                "network": {"name": "eth0", "rxBytes": 1_000_000u64, "txBytes": 2_000_000u64},
                "volume": [
                    {"name": "data", "pvcRef": {"name": "data-web-0", "namespace": "shop"},
                     "availableBytes": 700_000_000u64, "capacityBytes": 1_000_000_000u64,
                     "usedBytes": 300_000_000u64, "inodesFree": 60_000u64, "inodes": 65_536u64},
                    {"name": "tmp", "availableBytes": 1u64, "capacityBytes": 2u64}
                ],
                "ephemeral-storage": {"usedBytes": 40_960u64}
            },
            {
                "podRef": {"name": "coredns-1", "namespace": "kube-system", "uid": "6f1c2a7e-0000-4000-8000-000000000002"},
                "cpu": {"usageNanoCores": 2_000_000u64},
                "memory": {"workingSetBytes": 30_000_000u64}
            }
        ]
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_the_aggregator_and_a_refused_token_marks_the_collector_failing() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-kubelet"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let kubelet = FakeKubelet::start("token-of-the-agent").unwrap();
    kubelet.set_summary(summary(0.25));
    let token = dir.path().join("token");
    let ca = dir.path().join("kubelet-ca.crt");
    std::fs::write(&token, "token-of-the-agent\n").unwrap();
    std::fs::write(&ca, kubelet.ca_pem()).unwrap();
    let extra = format!(
        "[collectors.kubelet]\nenabled = true\ninterval_ms = 1000\ndeadline_ms = 900\ntimeout_ms = 800\n\
         url = {:?}\ntoken_file = {:?}\nca_file = {:?}\n",
        kubelet.url(),
        token.display().to_string(),
        ca.display().to_string(),
    );
    let started = infrawatch_common::time::now_unix_ms();
    let mut agent = Agent::start_with(
        dir.path(),
        &pki,
        "agent-kubelet",
        &[agg.endpoint()],
        1000,
        &extra,
    )
    .unwrap();
    let machine = machine_id();
    let host = format!("host/{machine}");
    let pod = format!("/api/v1/resources/{host}/pod/shop/web-0");

    // The pod, with the document's figures.
    let r = eventually(Duration::from_secs(20), "the pod resource", || {
        let (status, r) = agg.get(&pod);
        (status == 200 && latest(&r, "k8s.container.memory.working_set", "proxy").is_some())
            .then_some(r)
    });
    assert_eq!(r["kind"], "k8s_pod_usage", "{r}");
    assert_eq!(r["labels"]["k8s.namespace.name"], "shop");
    assert_eq!(r["labels"]["k8s.pod.name"], "web-0");
    assert_eq!(
        r["attributes"]["k8s.pod.uid"],
        "6f1c2a7e-0000-4000-8000-000000000001"
    );
    assert_eq!(r["relations"][0]["type"], "runs_on");
    assert_eq!(r["relations"][0]["to"], host.as_str());
    for (metric, attr, expected) in [
        ("k8s.pod.cpu.usage", "", 0.25),
        ("k8s.pod.memory.working_set", "", 123_456_789.0),
        ("k8s.pod.memory.usage", "", 150_000_000.0),
        ("k8s.pod.network.io", "direction=\"receive\"", 1_000_000.0),
        ("k8s.pod.network.io", "direction=\"transmit\"", 2_000_000.0),
        ("k8s.pod.filesystem.usage", "", 40_960.0),
        ("k8s.container.cpu.usage", "k8s.container.name=\"app\"", 0.2),
        (
            "k8s.container.memory.working_set",
            "k8s.container.name=\"proxy\"",
            23_456_789.0,
        ),
    ] {
        let (value, _) =
            latest(&r, metric, attr).unwrap_or_else(|| panic!("no {metric}{{{attr}}} in {r}"));
        assert!(
            (value - expected).abs() < 1e-9,
            "{metric}{{{attr}}}: {value}"
        );
    }
    // The series through the metrics query.
    let (status, m) = agg.get(&format!(
        "{pod}/metrics?name=k8s.pod.cpu.usage&from={started}&step=1000"
    ));
    assert_eq!(status, 200, "{m}");
    let points = m["points"].as_array().cloned().unwrap_or_default();
    assert!(!points.is_empty(), "{m}");
    assert!(
        points
            .iter()
            .all(|p| (p["avg"].as_f64().unwrap() - 0.25).abs() < 1e-9),
        "{m}"
    );

    // The other pod and the claim; the emptyDir volume has no resource.
    let (status, dns) = agg.get(&format!(
        "/api/v1/resources/{host}/pod/kube-system/coredns-1"
    ));
    assert_eq!(status, 200, "{dns}");
    assert_eq!(
        latest(&dns, "k8s.pod.memory.working_set", "").map(|l| l.0),
        Some(30_000_000.0)
    );
    let (status, claim) = agg.get(&format!("/api/v1/resources/{host}/volume/shop/data-web-0"));
    assert_eq!(status, 200, "{claim}");
    assert_eq!(claim["kind"], "k8s_volume_usage");
    assert_eq!(
        claim["labels"]["k8s.persistentvolumeclaim.name"],
        "data-web-0"
    );
    assert_eq!(
        latest(&claim, "k8s.volume.capacity", "").map(|l| l.0),
        Some(1e9)
    );
    assert_eq!(
        latest(&claim, "k8s.volume.inodes.free", "").map(|l| l.0),
        Some(60_000.0)
    );
    let (status, _) = agg.get(&format!("/api/v1/resources/{host}/volume/shop/tmp"));
    assert_eq!(status, 404);

    // A change in the document shows at a later scrape.
    kubelet.set_summary(summary(0.5));
    eventually(Duration::from_secs(10), "the new CPU figure", || {
        let (_, r) = agg.get(&pod);
        (latest(&r, "k8s.pod.cpu.usage", "")?.0 == 0.5).then_some(())
    });

    let agent_resource = format!("/api/v1/resources/agent/{machine}");
    let failing = |r: &Value| {
        r["attributes"]["agent.failing_collectors"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .any(|c| c == "kubelet")
    };
    eventually(Duration::from_secs(10), "the collector not failing", || {
        let (status, me) = agg.get(&agent_resource);
        (status == 200 && !failing(&me)).then_some(())
    });

    // A token the kubelet refuses: the collector fails, the agent degrades, and
    // the host's own figures keep coming.
    std::fs::write(&token, "a-token-the-kubelet-refuses").unwrap();
    let refused = eventually(
        Duration::from_secs(15),
        "the kubelet collector failing",
        || {
            let (_, me) = agg.get(&agent_resource);
            failing(&me).then_some(me)
        },
    );
    assert_eq!(refused["health"], "degraded", "{refused}");
    assert!(kubelet.unauthorized() > 0);
    let failed_at = infrawatch_common::time::now_unix_ms();
    eventually(
        Duration::from_secs(10),
        "host figures after the failure",
        || {
            let (_, r) = agg.get(&format!("/api/v1/resources/{host}"));
            (latest(&r, "system.cpu.utilization", "")?.1 > failed_at).then_some(())
        },
    );
    assert!(agent.process.is_running(), "the agent runs on");

    // The next good token is read at the next scrape.
    std::fs::write(&token, "token-of-the-agent").unwrap();
    let requests = kubelet.requests();
    eventually(
        Duration::from_secs(15),
        "the collector healthy again",
        || {
            let (_, me) = agg.get(&agent_resource);
            (!failing(&me)).then_some(())
        },
    );
    assert!(kubelet.requests() > requests);
}
