//! Fault injection on the aggregator side, checked sample by sample: a stream of
//! batches with known samples (every batch `seq` carries samples whose values sum
//! to a known figure) is sent as an agent would, resending what was not
//! acknowledged, while the aggregator is killed or its PostgreSQL server stops.
//! At the end the stored rollups must hold every sample exactly once: the count
//! and the sum of values both match.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use infrawatch_e2e::postgres::PgInstance;
use infrawatch_e2e::{Aggregator, Pki, RawStream};
use infrawatch_proto::v1::{Batch, ResourceObservation, SampleColumns, SeriesDef};
use sqlx::Connection;

const SAMPLES_PER_BATCH: usize = 50;
const RESOURCE: &str = "host/f";
const METRIC: &str = "system.cpu.load_average.1m";

/// Batch `seq`: samples `seq * 1000 + i` at distinct times.
fn batch(seq: u64, base_ms: i64) -> Batch {
    let n = SAMPLES_PER_BATCH;
    Batch {
        seq,
        base_time_unix_ms: base_ms + seq as i64 * n as i64,
        resources: vec![ResourceObservation {
            id: RESOURCE.into(),
            kind: "host".into(),
            interval_ms: 600_000,
            ..Default::default()
        }],
        strings: vec![METRIC.into()],
        series: vec![SeriesDef {
            resource: 0,
            metric: 0,
            attributes: vec![],
        }],
        samples: Some(SampleColumns {
            series: vec![0; n],
            time_offset_ms: (0..n as i64).collect(),
            values: (0..n).map(|i| (seq * 1000 + i as u64) as f64).collect(),
        }),
        gaps: Vec::new(),
        sent_at_unix_ms: 0,
    }
}

fn expected(seqs: impl Iterator<Item = u64>) -> (i64, f64) {
    seqs.fold((0, 0.0), |(c, s), seq| {
        let sum: f64 = (0..SAMPLES_PER_BATCH)
            .map(|i| (seq * 1000 + i as u64) as f64)
            .sum();
        (c + SAMPLES_PER_BATCH as i64, s + sum)
    })
}

/// (samples, sum of values) stored for the series.
async fn stored(url: &str) -> (i64, f64) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_as::<_, (i64, f64)>(
        "SELECT COALESCE(SUM(sample_count), 0)::BIGINT, COALESCE(SUM(value_sum), 0) \
         FROM metric_rollups WHERE resource_id = $1 AND metric = $2",
    )
    .bind(RESOURCE)
    .bind(METRIC)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Sends batches `from..=to` as an agent does: up to `window` unacknowledged,
/// stopping at the first failure. Returns the acknowledged seqs.
async fn send(
    endpoint: &str,
    pki: &Pki,
    seqs: &[u64],
    base_ms: i64,
    window: usize,
    acked: &mut BTreeSet<u64>,
) -> Result<(), String> {
    let last = seqs.iter().copied().max().unwrap_or(0);
    let mut stream = match RawStream::open(endpoint, &pki.client("agent-f"), last).await {
        Ok(Ok(s)) => s,
        Ok(Err(s)) => return Err(s.to_string()),
        Err(e) => return Err(e.to_string()),
    };
    let mut in_flight = std::collections::VecDeque::new();
    for &seq in seqs {
        if in_flight.len() == window {
            let ack = stream.next_ack().await.map_err(|s| s.to_string())?;
            acked.insert(ack.seq);
            in_flight.pop_front();
        }
        stream
            .send(batch(seq, base_ms))
            .await
            .map_err(|e| e.to_string())?;
        in_flight.push_back(seq);
    }
    while in_flight.pop_front().is_some() {
        let ack = stream.next_ack().await.map_err(|s| s.to_string())?;
        acked.insert(ack.seq);
    }
    Ok(())
}

/// Keeps sending until every seq in `1..=total` is acknowledged, retrying after
/// failures (what the agent's transport does), for at most `timeout`.
async fn deliver_all(
    agg_endpoint: &str,
    pki: &Pki,
    total: u64,
    base_ms: i64,
    acked: &mut BTreeSet<u64>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let missing: Vec<u64> = (1..=total).filter(|s| !acked.contains(s)).collect();
        if missing.is_empty() {
            return;
        }
        if let Err(e) = send(agg_endpoint, pki, &missing, base_ms, 8, acked).await {
            assert!(Instant::now() < deadline, "not delivered in time: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Scenario 3: the aggregator killed with SIGKILL in the middle of a stream.
/// Nothing acknowledged before the kill is lost, and after the agent resends what
/// was not acknowledged every sample is stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn aggregator_killed_mid_stream_loses_nothing_acknowledged() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-f"]).unwrap();
    let pg = PgInstance::start(dir.path()).unwrap();
    let mut agg = Aggregator::start(dir.path(), &pki, &pg.url(), "").unwrap();
    let base = infrawatch_common::time::now_unix_ms() - 60_000;
    let total = 5000;
    let mut acked = BTreeSet::new();
    let endpoint = agg.endpoint();
    let killer = std::thread::spawn({
        let pid = agg.process.pid();
        move || {
            std::thread::sleep(Duration::from_millis(500));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let all: Vec<u64> = (1..=total).collect();
    let first = send(&endpoint, &pki, &all, base, 8, &mut acked).await;
    killer.join().unwrap();
    assert!(first.is_err(), "the kill interrupted the stream");
    assert!(
        !acked.is_empty() && acked.len() < total as usize,
        "killed mid-stream ({} acked)",
        acked.len()
    );
    agg.process.kill();
    let agg = agg.restart(dir.path()).unwrap();

    // What was acknowledged before the kill is there, once.
    let (count, sum) = stored(&pg.url()).await;
    let (min_count, _) = expected(acked.iter().copied());
    assert!(
        count >= min_count,
        "acknowledged samples lost: {count} < {min_count}"
    );

    let restarted = Instant::now();
    let acked_before = acked.len();
    deliver_all(
        &agg.endpoint(),
        &pki,
        total,
        base,
        &mut acked,
        Duration::from_secs(60),
    )
    .await;
    let (count, sum_after) = stored(&pg.url()).await;
    let (want_count, want_sum) = expected(1..=total);
    assert_eq!(count, want_count, "every sample once");
    assert_eq!(
        sum_after, want_sum,
        "and no other (sum before resend {sum})"
    );
    eprintln!(
        "RELIABILITY aggregator-sigkill: sent={want_count} stored={count} lost=0 duplicated=0 \
         batches_acked_before_kill={acked_before} rest_delivered_after_restart={:?}",
        restarted.elapsed()
    );
}

/// Scenario 4: the database stops for a minute under load. Ingest waits (new
/// sessions are refused and sample flushes fail and are retried, durable
/// acknowledgements stop, the sender keeps its batches and resends after
/// timeouts), the aggregator recovers by itself when the database returns, and
/// every sample is stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn database_outage_under_load_loses_nothing() {
    super::init();
    let _heavy = infrawatch_e2e::HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-f"]).unwrap();
    let mut pg = PgInstance::start(dir.path()).unwrap();
    let url = pg.url();
    let agg = Aggregator::start(dir.path(), &pki, &url, "").unwrap();
    let base = infrawatch_common::time::now_unix_ms() - 120_000;
    let total = 600;
    let mut acked = BTreeSet::new();
    // Part of the load goes in before the outage.
    deliver_all(
        &agg.endpoint(),
        &pki,
        100,
        base,
        &mut acked,
        Duration::from_secs(30),
    )
    .await;
    let outage = std::thread::spawn(move || {
        pg.stop("fast").unwrap();
        std::thread::sleep(Duration::from_secs(60));
        pg.resume().unwrap();
        pg
    });
    let started = Instant::now();
    deliver_all(
        &agg.endpoint(),
        &pki,
        total,
        base,
        &mut acked,
        Duration::from_secs(180),
    )
    .await;
    let delivered = started.elapsed();
    let _pg = outage.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(55),
        "delivery waited for the database"
    );
    let (count, sum) = stored(&url).await;
    let (want_count, want_sum) = expected(1..=total);
    assert_eq!(
        (count, sum),
        (want_count, want_sum),
        "every sample exactly once"
    );
    // Depending on where the outage caught it, the aggregator refused new
    // sessions (an agent's cursor is read at Hello) or failed flushes and
    // retried; either way ingest waited for the database.
    let log = agg.process.log_text();
    assert!(
        log.contains("Agent session not opened") || log.contains("Sample flush failed"),
        "the outage was felt:\n{log}"
    );
    eprintln!(
        "RELIABILITY postgres-stopped-60s: sent={want_count} stored={count} lost=0 duplicated=0 \
         all_acknowledged_after={delivered:?} recovery_after_database_returned={:?}",
        delivered.saturating_sub(Duration::from_secs(60))
    );
}

/// Scenario 9: the agent's clock 10 minutes ahead, then stepped back 30 s in the
/// middle of the run. Batches are applied in sequence order whatever their
/// times, nothing is refused or applied twice, every sample is stored, and the
/// aggregator reports the agent's clock skew (and logs it once, not per batch).
#[tokio::test(flavor = "multi_thread")]
async fn agent_clock_ahead_then_stepped_back() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-f"]).unwrap();
    let db = dir.path().join("iw.db");
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let mut stream = RawStream::open(&agg.endpoint(), &pki.client("agent-f"), 0)
        .await
        .unwrap()
        .unwrap();
    let skew_of = |agg: &Aggregator| -> Option<i64> {
        let (_, body) = agg.get("/api/v1/agents");
        body["agents"][0]["clockSkewMs"].as_str()?.parse().ok()
    };
    let now = infrawatch_common::time::now_unix_ms;
    for (seqs, ahead_ms) in [(1..=10u64, 599_000i64), (11..=20, 569_000)] {
        for seq in seqs {
            let mut b = batch(seq, 0);
            // This agent's clock: the batch and its samples carry its time.
            let agent_now = now() + ahead_ms;
            b.base_time_unix_ms = agent_now - SAMPLES_PER_BATCH as i64;
            b.sent_at_unix_ms = agent_now;
            stream.send(b).await.unwrap();
            let ack = stream.next_ack().await.unwrap();
            assert_eq!((ack.seq, ack.duplicate), (seq, false));
        }
        let skew = skew_of(&agg).unwrap();
        assert!(
            (skew - ahead_ms).abs() < 2_000,
            "reported skew {skew} ms, the agent is {ahead_ms} ms ahead"
        );
    }
    drop(stream);
    let mut conn =
        <sqlx::SqliteConnection as Connection>::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
    let (count, sum): (i64, f64) = sqlx::query_as(
        "SELECT COALESCE(SUM(sample_count), 0), COALESCE(SUM(value_sum), 0) FROM metric_rollups \
         WHERE resource_id = ? AND metric = ?",
    )
    .bind(RESOURCE)
    .bind(METRIC)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let (want_count, want_sum) = expected(1..=20);
    assert_eq!((count, sum), (want_count, want_sum), "every sample, once");
    let (_, metrics) = agg.get_text("/metrics");
    assert!(
        metrics.contains("infrawatch_aggregator_agent_clock_skew_seconds{agent=\"agent-f"),
        "skew exported"
    );
    assert_eq!(
        agg.process
            .log_text()
            .matches("Agent clock skew changed")
            .count(),
        1,
        "reported once when it crossed the threshold, not per batch"
    );
    eprintln!(
        "RELIABILITY clock-ahead-10min-then-back-30s: sent={want_count} stored={count} lost=0 duplicated=0 refused=0 skew_reported=true"
    );
}
