//! An agent on this host reaches the aggregator over mTLS; its host shows up in
//! REST and gRPC within two collection intervals, with values matching /proc.

use std::time::Duration;

use infrawatch_e2e::{Agent, Aggregator, Pki, eventually, query_client};
use infrawatch_proto::v1 as pb;
use serde_json::Value;

fn meminfo(key: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        * 1024.0
}

fn latest(resource: &Value, metric: &str, attributes: &str) -> Option<f64> {
    resource["latest"].as_array()?.iter().find_map(|l| {
        (l["metric"] == metric && l["attributes"] == attributes)
            .then(|| l["value"].as_f64())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn host_appears_in_rest_and_grpc_with_values_matching_proc() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-e2e"]).unwrap();
    let db = format!("sqlite://{}", dir.path().join("db/iw.db").display());
    let agg = Aggregator::start(dir.path(), &pki, &db, "").unwrap();
    let ready_at = infrawatch_common::time::now_unix_ms();

    let interval = Duration::from_millis(1000);
    let started = std::time::Instant::now();
    let _agent = Agent::start(dir.path(), &pki, "agent-e2e", &[agg.endpoint()], 1000).unwrap();
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let id = format!("host/{machine_id}");

    // Within two collection intervals (plus start-up of the process).
    let resource = eventually(
        2 * interval + Duration::from_secs(2),
        "the host in REST",
        || {
            let (status, body) = agg.get(&format!("/api/v1/resources/{id}"));
            (status == 200).then_some(body)
        },
    );
    eprintln!("host visible after {:?}", started.elapsed());
    assert_eq!(resource["kind"], "host");
    assert_eq!(
        resource["source"], "agent-e2e",
        "identity comes from the certificate"
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(resource["attributes"]["host.name"], hostname.trim());
    assert_eq!(resource["attributes"]["host.id"], machine_id);

    // Values against /proc, once CPU utilization (needs two readings) is there too.
    let resource = eventually(Duration::from_secs(5), "CPU utilization", || {
        let (_, body) = agg.get(&format!("/api/v1/resources/{id}"));
        latest(&body, "system.cpu.utilization", "").map(|_| body)
    });
    let mem_total = latest(&resource, "system.memory.limit", "").unwrap();
    assert_eq!(mem_total, meminfo("MemTotal"));
    let mem_util = latest(&resource, "system.memory.utilization", "").unwrap();
    let now_util = 1.0 - meminfo("MemAvailable") / meminfo("MemTotal");
    assert!(
        (mem_util - now_util).abs() < 0.1,
        "memory utilization {mem_util} vs /proc {now_util}"
    );
    let cpus = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(
        latest(&resource, "system.cpu.logical.count", ""),
        Some(cpus as f64)
    );
    let cpu = latest(&resource, "system.cpu.utilization", "").unwrap();
    assert!((0.0..=1.0).contains(&cpu), "cpu utilization {cpu}");
    assert!(
        latest(&resource, "system.cpu.utilization", "cpu=\"0\"").is_some(),
        "per-core series"
    );
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let reported = latest(&resource, "system.uptime", "").unwrap();
    assert!(
        (uptime - reported).abs() < 10.0,
        "uptime {reported} vs /proc {uptime}"
    );
    // Health follows the thresholds: a busy test machine may really be DEGRADED,
    // so check that the health and its reasons agree rather than assume HEALTHY.
    // (Reasons rolled up from the host's parts name the part; their figures
    // follow the part's rule.)
    let health = resource["health"].as_str().unwrap().to_string();
    let reasons = resource["reasons"].as_array().unwrap();
    if health == "healthy" {
        assert!(reasons.is_empty(), "{resource}");
    } else {
        assert!(!reasons.is_empty(), "{resource}");
        // The threshold rules (`cpu_high`, `memory_critical`, ...) fire at or
        // above their threshold.
        let own = reasons.iter().filter(|r| {
            let code = r["code"].as_str().unwrap_or("");
            !r["message"].as_str().unwrap_or("").starts_with("host/")
                && !code.starts_with("host_")
                && (code.ends_with("_high") || code.ends_with("_critical"))
        });
        for r in own {
            assert!(r["observed"].as_f64() >= r["threshold"].as_f64(), "{r}");
        }
    }

    // The same resource over gRPC.
    let mut q = query_client(&agg.endpoint(), &pki).await.unwrap();
    let r = q
        .get_resource(pb::GetResourceRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kind, "host");
    if Some(r.resource_version) == resource["resource_version"].as_u64() {
        let grpc_health = pb::Health::try_from(r.health).unwrap();
        assert_eq!(
            infrawatch_common::resource::health_name(grpc_health),
            health
        );
    }
    let list = q
        .list_resources(pb::ListResourcesRequest {
            kind: "host".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.resources.len(), 1);
    let summary = q
        .get_summary(pb::GetSummaryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.connected_agents, 1);
    assert_eq!(summary.by_kind["host"], 1);
    assert_eq!(
        summary.by_kind["listening_ports"], 1,
        "the network collector's socket inventory"
    );

    // A recent metric range comes from memory; an hour back, from the stored rollups.
    let from = ready_at;
    let (status, m) = agg.get(&format!(
        "/api/v1/resources/{id}/metrics?name=system.memory.limit&step=1000&from={from}"
    ));
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["source"], "memory");
    assert!(!m["points"].as_array().unwrap().is_empty());
    assert_eq!(m["points"][0]["max"].as_f64(), Some(meminfo("MemTotal")));
    let (status, m) = agg.get(&format!(
        "/api/v1/resources/{id}/metrics?name=system.memory.limit"
    ));
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["source"], "rollup");
    assert_eq!(m["step_ms"], 60_000);
    let points = m["points"].as_array().unwrap();
    assert!(
        !points.is_empty(),
        "the current minute is already rolled up: {m}"
    );
    assert_eq!(
        points.last().unwrap()["max"].as_f64(),
        Some(meminfo("MemTotal"))
    );

    // Selectors and health filters.
    let (_, page) = agg.get(&format!(
        "/api/v1/resources?kind=host&label=host.name%3D{}",
        hostname.trim()
    ));
    assert_eq!(page["resources"].as_array().unwrap().len(), 1);
    // A live host is never UNKNOWN.
    let (_, page) = agg.get("/api/v1/resources?health=unknown");
    assert!(page["resources"].as_array().unwrap().is_empty());

    // The aggregator's own metrics.
    let (status, text) = agg.get_text("/metrics");
    assert_eq!(status, 200);
    for name in [
        "infrawatch_aggregator_connected_agents 1",
        "infrawatch_aggregator_ingest_batches_total{result=\"applied\"}",
        "infrawatch_aggregator_ingest_samples_total",
        "infrawatch_aggregator_ingest_to_ack_duration_seconds_bucket",
        "infrawatch_aggregator_store_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
}
