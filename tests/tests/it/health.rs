//! Health end to end: thresholds give DEGRADED/UNHEALTHY with machine-readable
//! reasons, silence gives UNKNOWN, and each transition is a new resource version.
//! Also: an agent fails over past a dead endpoint, the standard gRPC health
//! service answers, and availability adds up the time in each health.

use std::time::Duration;

use infrawatch_e2e::{Agent, Aggregator, Pki, eventually, free_port};
use serde_json::Value;

fn host_path() -> String {
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    format!("/api/v1/resources/host/{machine_id}")
}

/// The codes of the host's own reasons (those its parts give it name the
/// part, and depend on the machine's filesystems and links).
fn reason_codes(r: &Value) -> Vec<String> {
    r["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| !x["message"].as_str().unwrap_or("").starts_with("host/"))
                .filter_map(|x| x["code"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn thresholds_and_silence_change_health_with_reasons() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-h"]).unwrap();
    let db = format!("sqlite://{}", dir.path().join("iw.db").display());
    // Any host uses more than 0.1 % of its memory: the host must turn UNHEALTHY.
    // Only the memory rule can fire: the CPU, swap and contention rules (pressure,
    // steal, iowait) are switched off, since a loaded test machine would trip them.
    let rules = "[health]\nstale_after_missed_intervals = 2\nmemory = { degraded = 0.0005, unhealthy = 0.001 }\n\
                 cpu_pressure = { degraded = 1.0, unhealthy = 1.0 }\nmemory_pressure = { degraded = 1.0, unhealthy = 1.0 }\n\
                 io_pressure = { degraded = 1.0, unhealthy = 1.0 }\ncpu_steal = { degraded = 1.0, unhealthy = 1.0 }\n\
                 cpu_iowait = { degraded = 1.0, unhealthy = 1.0 }\ncpu = { degraded = 1.0, unhealthy = 1.0 }\n\
                 swap = { degraded = 1.0, unhealthy = 1.0 }\n";
    let agg = Aggregator::start(dir.path(), &pki, &db, rules).unwrap();
    // The first endpoint is dead: the agent must move on to the live one.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let mut agent =
        Agent::start(dir.path(), &pki, "agent-h", &[dead, agg.endpoint()], 500).unwrap();

    let path = host_path();
    let unhealthy = eventually(Duration::from_secs(15), "an UNHEALTHY host", || {
        let (status, r) = agg.get(&path);
        (status == 200 && r["health"] == "unhealthy").then_some(r)
    });
    // The memory rule fires (the built-in rule files may say more of a busy
    // machine: its load, its page faults).
    let codes = reason_codes(&unhealthy);
    assert!(codes.contains(&"memory_critical".to_string()), "{codes:?}");
    let reason = unhealthy["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "memory_critical")
        .unwrap();
    assert_eq!(reason["metric"], "system.memory.utilization");
    assert_eq!(reason["threshold"], 0.001);
    assert!(reason["observed"].as_f64().unwrap() > 0.001);
    let version = unhealthy["resource_version"].as_u64().unwrap();

    // Silence: after two missed intervals of 500 ms the host is UNKNOWN, reason stale.
    assert!(agent.process.stop().unwrap().success());
    let unknown = eventually(Duration::from_secs(10), "an UNKNOWN host", || {
        let (_, r) = agg.get(&path);
        (r["health"] == "unknown").then_some(r)
    });
    assert_eq!(reason_codes(&unknown), vec!["stale"]);
    assert_eq!(unknown["resource_version"].as_u64().unwrap(), version + 1);

    // The gRPC health service answers SERVING.
    let channel = infrawatch_e2e::channel(&agg.endpoint(), &pki.client("cli"))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "infrawatch.v1.QueryService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// Availability (SLA) from the health history: a host UNHEALTHY (the memory
/// rule set to fire) then UNKNOWN (its agent stopped) spent its time in those
/// two, the window's time before the host existed counts for nothing, and bad
/// windows are refused.
#[tokio::test(flavor = "multi_thread")]
async fn availability_adds_up_the_time_in_each_health() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-s"]).unwrap();
    let db = format!("sqlite://{}", dir.path().join("iw.db").display());
    let rules = "[health]\nstale_after_missed_intervals = 2\nmemory = { degraded = 0.0005, unhealthy = 0.001 }\n";
    let agg = Aggregator::start(dir.path(), &pki, &db, rules).unwrap();
    let mut agent = Agent::start(dir.path(), &pki, "agent-s", &[agg.endpoint()], 500).unwrap();
    let path = host_path();
    eventually(Duration::from_secs(15), "an UNHEALTHY host", || {
        (agg.get(&path).1["health"] == "unhealthy").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.process.stop().unwrap().success());
    eventually(Duration::from_secs(10), "an UNKNOWN host", || {
        (agg.get(&path).1["health"] == "unknown").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));

    let (status, a) = agg.get(&format!("{path}/availability?window=1h"));
    assert_eq!(status, 200, "{a}");
    let ms = |k: &str| a[k].as_i64().unwrap();
    assert_eq!(ms("to_unix_ms") - ms("from_unix_ms"), 3_600_000);
    assert!(ms("unhealthy_ms") >= 1_500, "{a}");
    assert!(ms("unknown_ms") >= 500, "{a}");
    let existing = ms("healthy_ms") + ms("degraded_ms") + ms("unhealthy_ms") + ms("unknown_ms");
    assert!(
        existing < 120_000,
        "only the time since the host appeared counts: {a}"
    );
    let share = a["healthy_share"].as_f64().unwrap();
    assert!(
        (share - ms("healthy_ms") as f64 / existing as f64).abs() < 1e-9,
        "{a}"
    );
    assert_eq!(a["complete"], true);

    // The same over gRPC.
    let channel = infrawatch_e2e::channel(&agg.endpoint(), &pki.client("cli"))
        .await
        .unwrap();
    let mut q = infrawatch_proto::v1::query_service_client::QueryServiceClient::new(channel);
    let now = infrawatch_common::time::now_unix_ms();
    let g = q
        .get_availability(infrawatch_proto::v1::GetAvailabilityRequest {
            resource_id: path.trim_start_matches("/api/v1/resources/").to_string(),
            from_unix_ms: now - 3_600_000,
            to_unix_ms: now,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        g.unhealthy_ms,
        ms("unhealthy_ms"),
        "no change since: {a} {g:?}"
    );

    // Bad windows and unknown resources.
    for (query, code) in [
        (format!("{path}/availability?window=week"), 400),
        (format!("{path}/availability?window=91d"), 400),
        (format!("{path}/availability?from=2000&to=1000"), 400),
        (format!("{path}/availability?window=1d&from=5"), 400),
        (format!("{path}/availability?since=5"), 400),
        ("/api/v1/resources/host/nope/availability".to_string(), 404),
    ] {
        assert_eq!(agg.get(&query).0, code, "{query}");
    }
}
