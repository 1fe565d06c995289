//! An agent with two aggregator endpoints (two replicas, each with its own
//! database): when its replica is stopped, the replica acknowledges what it read
//! and drains the agent, which moves to the other one at once and carries on from
//! its last acknowledged batch; when its replica is killed, the agent fails over
//! after its backoff and resends what was not acknowledged.
//!
//! The check is by batch sequence: replica A's stored cursor (the last batch it
//! applied, read from its database after it stopped) plus the batches B applied
//! must equal the agent's last sequence, so no batch was lost or applied on both;
//! and B's samples are checked one by one.

use std::path::Path;
use std::time::{Duration, Instant};

use infrawatch_e2e::{Agent, Aggregator, Pki, eventually, machine_id};
use sqlx::Connection;

use super::buffer::{
    longest_silence, now, start_fleet, uptime_samples_of, wait_drained, wait_fleet_drained,
};

/// True when `agg` has an open stream from an agent.
fn streaming_to(agg: &Aggregator) -> bool {
    let (_, body) = agg.get("/api/v1/agents");
    body["agents"]
        .as_array()
        .is_some_and(|list| list.iter().any(|a| a["streams"].as_u64() > Some(0)))
}

/// The last batch the replica whose SQLite database is in `dir` applied.
async fn stored_cursor(dir: &Path) -> u64 {
    let url = format!("sqlite://{}", dir.join("iw.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let seq: i64 = sqlx::query_scalar("SELECT MAX(last_seq) FROM agent_cursors")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    seq as u64
}

/// (last sequence seen, batches applied) on a running replica.
fn applied(agg: &Aggregator) -> (u64, u64) {
    let (_, body) = agg.get("/api/v1/agents");
    let last: u64 = body["agents"][0]["lastSeq"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap();
    let (_, metrics) = agg.get_text("/metrics");
    let count = metrics
        .lines()
        .find(|l| {
            l.starts_with("infrawatch_aggregator_ingest_batches_total") && l.contains("applied")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap() as u64;
    (last, count)
}

/// Two replicas and an agent streaming to the first.
async fn two_replicas(dir: &Path, name: &str) -> (Pki, Aggregator, Aggregator, Agent) {
    let pki = Pki::new(dir, &[name]).unwrap();
    let dir_a = dir.join("a");
    let dir_b = dir.join("b");
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let a = Aggregator::start_sqlite(&dir_a, &pki, "").unwrap();
    let b = Aggregator::start_sqlite(&dir_b, &pki, "").unwrap();
    let endpoints = [a.endpoint(), b.endpoint()];
    let agent = Agent::start(dir, &pki, name, &endpoints, 200).unwrap();
    eventually(Duration::from_secs(20), "the agent streams to A", || {
        streaming_to(&a).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    (pki, a, b, agent)
}

/// B's samples since it took over: each once, none missing.
fn check_samples_on(b: &Aggregator, from: i64, to: i64) -> usize {
    let on_b = uptime_samples_of(b, &machine_id(), from, to);
    assert!(on_b.values().all(|n| *n == 1), "a sample stored twice on B");
    let (silence, at) = longest_silence(&on_b);
    assert!(silence < 1_500, "{silence} ms without samples from {at}");
    on_b.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_replica_drains_its_agent_to_the_other() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let (_pki, mut a, b, mut agent) = two_replicas(dir.path(), "agent-f").await;
    let stopping = Instant::now();
    let stopped_at = now();
    a.process.stop().unwrap();
    eventually(Duration::from_secs(10), "the agent streams to B", || {
        streaming_to(&b).then_some(())
    });
    let moved_after = stopping.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    wait_drained(&agent);
    let checked_until = now() - 1_000;
    // A graceful stop sends the open batch and waits for its acknowledgement, so
    // the sequence and B's count stop moving.
    agent.process.stop().unwrap();
    let log = agent.process.log_text();
    assert!(
        log.contains("Aggregator is shutting down; moving to the next endpoint."),
        "the agent was not told to move:\n{log}"
    );
    assert!(
        !log.contains("Stream to aggregator ended"),
        "the drain ended the stream with an error:\n{log}"
    );
    let on_a = stored_cursor(&dir.path().join("a")).await;
    let (last, on_b) = applied(&b);
    assert!(on_a > 0);
    assert_eq!(
        on_a + on_b,
        last,
        "batches 1..={on_a} on A and {on_b} on B should make 1..={last}"
    );
    let samples = check_samples_on(&b, stopped_at + 1_000, checked_until);
    eprintln!(
        "RELIABILITY drain: batches_on_a={on_a} batches_on_b={on_b} last_seq={last} \
         duplicated=0 lost=0 samples_checked_on_b={samples} moved_after={moved_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_fails_over_and_nothing_is_lost() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let (_pki, mut a, b, mut agent) = two_replicas(dir.path(), "agent-g").await;
    let killed = Instant::now();
    let killed_at = now();
    a.process.kill();
    eventually(Duration::from_secs(10), "the agent streams to B", || {
        streaming_to(&b).then_some(())
    });
    let moved_after = killed.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    wait_drained(&agent);
    let checked_until = now() - 1_000;
    agent.process.stop().unwrap();
    let on_a = stored_cursor(&dir.path().join("a")).await;
    let (last, on_b) = applied(&b);
    assert!(on_a > 0);
    // Nothing lost: together they hold every batch. A batch that A committed but
    // could not acknowledge before it died is sent again to B, so with separate
    // databases at most the in-flight window is on both.
    assert!(
        on_a + on_b >= last,
        "{on_a} + {on_b} < {last}: batches lost"
    );
    let on_both = on_a + on_b - last;
    assert!(on_both <= 64, "{on_both} batches on both replicas");
    let samples = check_samples_on(&b, killed_at + 1_000, checked_until);
    eprintln!(
        "RELIABILITY failover-kill: batches_on_a={on_a} batches_on_b={on_b} last_seq={last} \
         on_both={on_both} lost=0 samples_checked_on_b={samples} moved_after={moved_after:?}"
    );
}

/// Every agent's stored cursor in the SQLite database in `dir`, by agent key.
async fn stored_cursors(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    let url = format!("sqlite://{}", dir.join("iw.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT agent_id, last_seq FROM agent_cursors")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.into_iter().map(|(k, v)| (k, v as u64)).collect()
}

/// A counter of the aggregator's `/metrics`, by a label it carries.
fn batches(agg: &Aggregator, result: &str) -> u64 {
    let (_, metrics) = agg.get_text("/metrics");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("infrawatch_aggregator_ingest_batches_total")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_agents_through_a_two_minute_aggregator_stop() {
    super::init();
    let _heavy = infrawatch_e2e::HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("agent-stop-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(dir.path(), &refs).unwrap();
    let mut agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let endpoints = [agg.endpoint()];
    let (agents, _) = start_fleet(
        dir.path(),
        &pki,
        &names,
        &endpoints,
        200,
        0x0057_0900_0000,
        "stop",
    );
    eventually(
        Duration::from_secs(60),
        "every agent applied a batch",
        || {
            let (_, body) = agg.get("/api/v1/agents");
            let streaming = body["agents"]
                .as_array()?
                .iter()
                .filter(|a| a["lastSeq"].as_str().and_then(|s| s.parse::<u64>().ok()) > Some(0));
            (streaming.count() == 10).then_some(())
        },
    );
    for a in &agents {
        wait_drained(a);
    }
    agg.process.stop().unwrap();
    let at_stop = stored_cursors(dir.path()).await;
    assert_eq!(at_stop.len(), 10);
    let outage = Duration::from_secs(120);
    std::thread::sleep(outage);
    let agg = agg.restart(dir.path()).unwrap();
    let recovery = wait_fleet_drained(&agents, outage);
    // Give the last acknowledgements' batches time to be counted, then stop the
    // agents so the sequences stop moving.
    for mut a in agents {
        a.process.stop().unwrap();
    }
    let applied = batches(&agg, "applied");
    let duplicates = batches(&agg, "duplicate");
    let (_, gaps) = agg.get("/api/v1/gaps");
    let mut agg = agg;
    agg.process.stop().unwrap();
    let at_end = stored_cursors(dir.path()).await;
    let mut expected = 0;
    for (key, before) in &at_stop {
        let after = at_end[key];
        assert!(
            after > before + 500,
            "{key}: only {} batches",
            after - before
        );
        expected += after - before;
    }
    // Sequences are contiguous within one agent run, so every batch from each
    // agent's cursor at the stop to its last one was applied exactly once.
    assert_eq!(applied, expected, "batches applied after the restart");
    assert_eq!(duplicates, 0);
    assert_eq!(gaps["gaps"], serde_json::json!([]), "nothing was lost");
    eprintln!(
        "RELIABILITY ten-agents-aggregator-stopped-2min: batches_after_stop={expected} \
         applied_once={applied} duplicated={duplicates} lost=0 all_delivered_after={recovery:?}"
    );
}
