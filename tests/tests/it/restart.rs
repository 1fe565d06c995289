//! Durability across restarts, on PostgreSQL: a restarted aggregator serves the same
//! state; a restarted agent continues its sequence; a replayed batch is
//! acknowledged without being applied twice.

use std::time::Duration;

use infrawatch_e2e::{Agent, Aggregator, Pki, RawStream, TestDatabase, batch, eventually};
use sqlx::Connection;

async fn cursor(url: &str, agent: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT COALESCE(MAX(last_seq), 0) FROM agent_cursors WHERE agent_id = $1 OR agent_id LIKE $1 || '/%'")
        .bind(agent)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn rollup_count(url: &str, resource: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(sample_count), 0)::BIGINT FROM metric_rollups WHERE resource_id = $1",
    )
    .bind(resource)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregator_and_agent_restarts_keep_state_and_sequence() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-r"]).unwrap();
    let db = TestDatabase::create("restart").await.unwrap();
    let agg = Aggregator::start(dir.path(), &pki, &db.url, "").unwrap();
    let mut agent = Agent::start(dir.path(), &pki, "agent-r", &[agg.endpoint()], 500).unwrap();

    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let path = format!("/api/v1/resources/host/{machine_id}");
    eventually(Duration::from_secs(10), "the host", || {
        (agg.get(&path).0 == 200).then_some(())
    });
    eventually(Duration::from_secs(10), "a few batches", || {
        (block_on(cursor(&db.url, "agent-r")) >= 3).then_some(())
    });

    // Stop the agent so the state is quiet, then restart the aggregator.
    assert!(agent.process.stop().unwrap().success());
    let (_, before) = agg.get(&path);
    let seq_before = cursor(&db.url, "agent-r").await;
    let agg = agg.restart(dir.path()).unwrap();
    let (status, after) = agg.get(&path);
    assert_eq!(status, 200);
    for field in [
        "id",
        "kind",
        "health",
        "resource_version",
        "attributes",
        "labels",
        "source",
    ] {
        assert_eq!(
            before[field], after[field],
            "{field} differs after the restart"
        );
    }

    // The agent, restarted, continues above its last sequence number.
    let _agent = Agent::start(dir.path(), &pki, "agent-r", &[agg.endpoint()], 500).unwrap();
    eventually(
        Duration::from_secs(10),
        "new batches after the agent restart",
        || (block_on(cursor(&db.url, "agent-r")) > seq_before).then_some(()),
    );
    drop(_agent);
    drop(agg);
    db.drop_now().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_batch_is_acknowledged_but_not_applied_twice() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-replay"]).unwrap();
    let db = TestDatabase::create("replay").await.unwrap();
    let agg = Aggregator::start(dir.path(), &pki, &db.url, "").unwrap();
    let files = pki.client("agent-replay");
    let now = infrawatch_common::time::now_unix_ms();

    let mut s = RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    for seq in 1..=3 {
        s.send(batch(
            seq,
            "host/replay",
            "system.cpu.utilization",
            0.1 * seq as f64,
            now + seq as i64,
        ))
        .await
        .unwrap();
    }
    for seq in 1..=3 {
        let ack = s.next_ack().await.unwrap();
        assert_eq!((ack.seq, ack.duplicate), (seq, false));
    }
    drop(s);
    assert_eq!(rollup_count(&db.url, "host/replay").await, 3);

    // A reconnecting agent resends 2 and 3 (never acknowledged, as far as it knows), then 4.
    let mut s = RawStream::open(&agg.endpoint(), &files, 3)
        .await
        .unwrap()
        .unwrap();
    for seq in 2..=4 {
        s.send(batch(
            seq,
            "host/replay",
            "system.cpu.utilization",
            0.1 * seq as f64,
            now + seq as i64,
        ))
        .await
        .unwrap();
    }
    let acks: Vec<(u64, bool)> = [(); 3]
        .iter()
        .map(|_| {
            block_on(s.next_ack())
                .map(|a| (a.seq, a.duplicate))
                .unwrap()
        })
        .collect();
    assert_eq!(acks, vec![(2, true), (3, true), (4, false)]);
    assert_eq!(
        rollup_count(&db.url, "host/replay").await,
        4,
        "replays must not be counted again"
    );
    assert_eq!(cursor(&db.url, "agent-replay").await, 4);

    // After an aggregator restart the cursor still protects against replays.
    drop(s);
    let agg = agg.restart(dir.path()).unwrap();
    let mut s = RawStream::open(&agg.endpoint(), &files, 4)
        .await
        .unwrap()
        .unwrap();
    s.send(batch(
        4,
        "host/replay",
        "system.cpu.utilization",
        0.4,
        now + 4,
    ))
    .await
    .unwrap();
    let ack = s.next_ack().await.unwrap();
    assert_eq!((ack.seq, ack.duplicate), (4, true));
    assert_eq!(rollup_count(&db.url, "host/replay").await, 4);
    drop(s);
    drop(agg);
    db.drop_now().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_that_lost_its_state_is_not_taken_for_replays() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-reborn"]).unwrap();
    let db = TestDatabase::create("reborn").await.unwrap();
    let agg = Aggregator::start(dir.path(), &pki, &db.url, "").unwrap();
    let files = pki.client("agent-reborn");
    let now = infrawatch_common::time::now_unix_ms();

    let mut s = RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    for seq in 1..=5 {
        s.send(batch(
            seq,
            "host/reborn",
            "system.cpu.utilization",
            0.5,
            now + seq as i64,
        ))
        .await
        .unwrap();
    }
    for _ in 1..=5 {
        s.next_ack().await.unwrap();
    }
    drop(s);
    assert_eq!(cursor(&db.url, "agent-reborn").await, 5);

    // Same identity, state directory gone: its Hello says it has assigned nothing.
    let mut s = RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    s.send(batch(
        1,
        "host/reborn",
        "system.cpu.utilization",
        0.7,
        now + 10,
    ))
    .await
    .unwrap();
    let ack = s.next_ack().await.unwrap();
    assert_eq!(
        (ack.seq, ack.duplicate),
        (1, false),
        "new data must be applied, not dropped as a replay"
    );
    assert_eq!(rollup_count(&db.url, "host/reborn").await, 6);
    assert_eq!(cursor(&db.url, "agent-reborn").await, 1);
    drop(s);
    drop(agg);
    db.drop_now().await.unwrap();
}
