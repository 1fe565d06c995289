//! The agent's disk buffer end to end, with the real agent and aggregator: an agent
//! killed with SIGKILL over and over repeats nothing and loses nothing it had
//! closed; data collected while the aggregator is down survives an agent restart;
//! a buffer over its cap drops the oldest data and the aggregator learns exactly
//! what was lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use infrawatch_e2e::proxy::TcpProxy;
use infrawatch_e2e::{Agent, Aggregator, Pki, eventually, http_get, machine_id};

const INTERVAL_MS: u64 = 200;

/// Raw timestamps of this host's `system.uptime` samples in `[from, to]`, with
/// how often each was stored (a repeated batch would store a timestamp twice).
fn uptime_samples(agg: &Aggregator, from: i64, to: i64) -> BTreeMap<i64, u64> {
    uptime_samples_of(agg, &machine_id(), from, to)
}

/// The same for the host with `machine_id`.
pub(crate) fn uptime_samples_of(
    agg: &Aggregator,
    machine_id: &str,
    from: i64,
    to: i64,
) -> BTreeMap<i64, u64> {
    let mut out = BTreeMap::new();
    let mut start = from;
    while start <= to {
        // Step 1 ms: one bucket per stored timestamp (at most 11,000 per query).
        let end = (start + 10_000).min(to);
        let path = format!(
            "/api/v1/resources/host/{machine_id}/metrics?name=system.uptime&step=1&from={start}&to={end}"
        );
        let (code, body) = agg.get(&path);
        assert_eq!(code, 200, "{body}");
        for p in body["points"].as_array().unwrap() {
            let t = p["timestamp_unix_ms"].as_i64().unwrap();
            *out.entry(t).or_insert(0) += p["count"].as_u64().unwrap();
        }
        start = end + 1;
    }
    out
}

/// The longest interval without a sample, and where it starts.
pub(crate) fn longest_silence(samples: &BTreeMap<i64, u64>) -> (i64, i64) {
    let ts: Vec<i64> = samples.keys().copied().collect();
    ts.windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or((0, 0))
}

pub(crate) fn now() -> i64 {
    infrawatch_common::time::now_unix_ms()
}

/// Waits until the aggregator has made durable everything the agent collected
/// before the call (a backlog of a few seconds at most).
pub(crate) fn wait_drained(agent: &Agent) {
    let since = now();
    eventually(
        Duration::from_secs(30),
        "the agent's buffer drained",
        || agent.acknowledged_before(since).then_some(()),
    );
}

/// Waits until every agent's backlog from an outage of `outage` is durable on
/// the aggregator, and returns how long that took. The bound is the outage's own
/// length: a fleet whose backlog drains more slowly than it accrued never catches
/// up. How much faster it drains depends on the machine and the build (a debug
/// build replays at a few hundred batches per second on two cores), so the time
/// is reported, not asserted.
pub(crate) fn wait_fleet_drained(agents: &[Agent], outage: Duration) -> Duration {
    let since = now();
    let started = Instant::now();
    eventually(outage, "every agent's backlog drained", || {
        agents
            .iter()
            .all(|a| a.acknowledged_before(since))
            .then_some(())
    });
    started.elapsed()
}

/// Starts one agent per name, each on a host of its own: a root directory with its
/// own machine id (`id_base + i`, 32 hex digits) and hostname (`{prefix}-{i}`), every
/// collector every `interval_ms`. Returns the agents and their machine ids.
pub(crate) fn start_fleet(
    dir: &std::path::Path,
    pki: &Pki,
    names: &[String],
    endpoints: &[String],
    interval_ms: u64,
    id_base: u64,
    prefix: &str,
) -> (Vec<Agent>, Vec<String>) {
    let mut agents = Vec::new();
    let mut hosts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let root = dir.join(format!("root-{i}"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let machine_id = format!("{:032x}", id_base + i as u64);
        std::fs::write(root.join("etc/machine-id"), &machine_id).unwrap();
        std::fs::write(root.join("etc/hostname"), format!("{prefix}-{i}")).unwrap();
        let extra = format!("[host]\nroot = {:?}\n", root.display().to_string());
        agents.push(Agent::start_with(dir, pki, name, endpoints, interval_ms, &extra).unwrap());
        hosts.push(machine_id);
    }
    (agents, hosts)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_over_and_over_repeats_nothing() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-k"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let endpoints = [agg.endpoint()];
    let start = now();
    let mut agent = Agent::start(dir.path(), &pki, "agent-k", &endpoints, INTERVAL_MS).unwrap();
    let mut kills = Vec::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1500));
        kills.push(now());
        agent.process.kill();
        agent = Agent::start(dir.path(), &pki, "agent-k", &endpoints, INTERVAL_MS).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    wait_drained(&agent);
    let end = now();
    assert!(agent.process.stop().unwrap().success());

    let samples = uptime_samples(&agg, start, end);
    let repeated: Vec<_> = samples.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "samples stored twice: {repeated:?}");
    // A kill loses only the batch still open in memory (at most one flush
    // interval, 200 ms) plus the restart; everything closed was in the log.
    let (silence, at) = longest_silence(&samples);
    assert!(
        silence < 2_000,
        "{silence} ms without samples from {at} (kills at {kills:?})"
    );
    assert!(samples.len() > 40, "{} samples", samples.len());
    eprintln!(
        "RELIABILITY agent-sigkill-x8: stored={} duplicated=0 longest_silence={silence}ms",
        samples.len()
    );
    let (_, gaps) = agg.get("/api/v1/gaps");
    for g in gaps["gaps"].as_array().unwrap() {
        // Only a record torn by the kill itself may be reported; it is reported.
        assert_eq!(g["cause"], "corrupt", "{g}");
    }
}

/// The network between agent and aggregator goes away (a proxy the test cuts;
/// the aggregator keeps running); the agent is restarted in the middle of the
/// outage, so what it collected before is only on disk; when the network comes
/// back every sample arrives, once.
#[tokio::test(flavor = "multi_thread")]
async fn data_from_an_outage_survives_an_agent_restart() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-b"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let mut proxy = TcpProxy::start(agg.grpc).unwrap();
    let endpoints = [proxy.endpoint()];
    let mut agent = Agent::start(dir.path(), &pki, "agent-b", &endpoints, INTERVAL_MS).unwrap();
    wait_drained(&agent);

    proxy.cut();
    let start = now();
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.process.stop().unwrap().success());
    let first_log = agent.process.log_text();
    let restarted = now();
    agent = Agent::start(dir.path(), &pki, "agent-b", &endpoints, INTERVAL_MS).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let back = now();
    proxy.restore().unwrap();
    wait_drained(&agent);

    let samples = uptime_samples(&agg, start, back);
    let (silence, at) = longest_silence(&samples);
    assert!(
        silence < 1_500,
        "{silence} ms without samples from {at} (agent restarted at {restarted})\n\
         first agent:\n{first_log}\nsecond agent:\n{}",
        agent.process.log_text()
    );
    let first = *samples.keys().next().unwrap();
    assert!(
        first - start < 1_000,
        "the first samples of the outage are missing"
    );
    assert!(samples.values().all(|n| *n == 1), "samples stored twice");
    let (_, gaps) = agg.get("/api/v1/gaps");
    assert_eq!(gaps["gaps"], serde_json::json!([]), "nothing was lost");
    eprintln!(
        "RELIABILITY network-cut-6s-agent-restarted: stored={} duplicated=0 lost=0 longest_silence={silence}ms",
        samples.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_drops_the_oldest_and_reports_it_exactly() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-c"]).unwrap();
    let mut agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let endpoints = [agg.endpoint()];
    assert!(agg.process.stop().unwrap().success());

    // The smallest buffer: two segments of 64 KiB.
    let small = "[buffer]\nmax_bytes = 131072\nsegment_bytes = 65536\n";
    let agent =
        Agent::start_with(dir.path(), &pki, "agent-c", &endpoints, INTERVAL_MS, small).unwrap();
    let dropped = |agent: &Agent| -> Option<u64> {
        let (_, text) = http_get(agent.metrics, "/metrics").ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with("infrawatch_agent_buffer_dropped_samples_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum(),
        )
    };
    let started = Instant::now();
    eventually(Duration::from_secs(90), "the buffer over its cap", || {
        dropped(&agent).filter(|n| *n > 0)
    });
    let filled_in = started.elapsed();
    let agg = agg.restart(dir.path()).unwrap();
    wait_drained(&agent);
    let lost_by_agent = dropped(&agent).unwrap();

    let (_, gaps) = agg.get("/api/v1/gaps");
    let gaps = gaps["gaps"].as_array().unwrap().clone();
    assert!(!gaps.is_empty(), "the loss is reported");
    let mut reported = 0;
    for g in &gaps {
        assert_eq!(g["cause"], "buffer_full", "{g}");
        assert_eq!(g["exact"], true);
        assert_eq!(g["hostId"], format!("host/{}", machine_id()));
        reported += g["samplesLost"].as_str().unwrap().parse::<u64>().unwrap();
    }
    // The agent may have dropped more since the aggregator came back only if it
    // kept overflowing; it did not (the buffer drained), so the counts agree.
    assert_eq!(
        reported, lost_by_agent,
        "exact: agent dropped {lost_by_agent}"
    );
    // The loss was published as an event on the host.
    let (_, events) = agg.get("/api/v1/events?after=0&limit=1000&kinds=host");
    let with_gap: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["event"]["changed"]
                .as_array()
                .is_some_and(|c| c.contains(&serde_json::json!("data_gap")))
        })
        .collect();
    assert_eq!(with_gap.len(), gaps.len(), "one event per gap");
    assert_eq!(with_gap[0]["event"]["gap"]["cause"], "buffer_full");
    eprintln!(
        "RELIABILITY buffer-over-cap: 128 KiB filled in {filled_in:?}; agent dropped {lost_by_agent} samples; {} gaps report {reported}",
        gaps.len()
    );
}

/// Scenario 1: ten agents (each its own host: a root directory with its own
/// machine id) keep collecting while the aggregator is unreachable for two
/// minutes (the network to it is cut; it keeps running); when it is reachable
/// again every agent's data arrives, once, with no silence.
#[tokio::test(flavor = "multi_thread")]
async fn ten_agents_through_a_two_minute_outage() {
    super::init();
    let _heavy = infrawatch_e2e::HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("agent-fleet-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(dir.path(), &refs).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let mut proxy = TcpProxy::start(agg.grpc).unwrap();
    let endpoints = [proxy.endpoint()];
    let (agents, hosts) = start_fleet(
        dir.path(),
        &pki,
        &names,
        &endpoints,
        INTERVAL_MS,
        0x000f_1ee7_0000,
        "fleet",
    );
    for a in &agents {
        wait_drained(a);
    }

    proxy.cut();
    let start = now();
    let outage = Duration::from_secs(120);
    std::thread::sleep(outage);
    let back = now();
    proxy.restore().unwrap();
    let recovery = wait_fleet_drained(&agents, outage);

    let mut total = 0;
    for machine_id in &hosts {
        let samples = uptime_samples_of(&agg, machine_id, start, back);
        let (silence, at) = longest_silence(&samples);
        assert!(
            silence < 1_500,
            "host {machine_id}: {silence} ms without samples from {at}"
        );
        assert!(
            samples.values().all(|n| *n == 1),
            "host {machine_id}: samples stored twice"
        );
        let first = *samples.keys().next().unwrap();
        let last = *samples.keys().last().unwrap();
        assert!(
            first - start < 1_000 && back - last < 1_000,
            "host {machine_id}: edges missing"
        );
        total += samples.len();
    }
    let (_, gaps) = agg.get("/api/v1/gaps");
    assert_eq!(gaps["gaps"], serde_json::json!([]), "nothing was lost");
    eprintln!(
        "RELIABILITY ten-agents-aggregator-unreachable-2min: stored={total} duplicated=0 lost=0 \
         all_delivered_after={recovery:?}"
    );
}
