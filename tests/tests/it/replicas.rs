//! Several aggregator replicas on one PostgreSQL server of the test's own.
//!
//! Agents are simulated by the test (tokio tasks driving [`RawStream`]s): each
//! sends numbered batches with a window of unacknowledged ones and, on any
//! failure (stream error, no acknowledgement in time, `Drain`), moves to its next
//! endpoint and sends again every batch not yet acknowledged. These streams do
//! not announce `ack.received`, so every acknowledgement they get means durable.
//!
//! Checks are exact: every batch of samples has a one-minute bucket of its own,
//! so each stored rollup row is compared with what its batch carried (no sample
//! lost, none counted twice); versions and event positions are checked for gaps
//! and repeats, in the database, in JetStream and on the live event streams of
//! every replica.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use infrawatch_aggregator::config::{HealthConfig, StorageConfig};
use infrawatch_aggregator::events::log::EventLog;
use infrawatch_aggregator::planner::PlannerHandle;
use infrawatch_aggregator::planner::writer::{Writer, WriterConfig};
use infrawatch_aggregator::sources::{Change, Observation, Report};
use infrawatch_aggregator::state::State;
use infrawatch_aggregator::store::Store;
use infrawatch_common::tls::TlsFiles;
use infrawatch_e2e::brokers::Nats;
use infrawatch_e2e::events::{Delivery, change_batch, read_jetstream, resource_ids};
use infrawatch_e2e::postgres::PgInstance;
use infrawatch_e2e::proxy::TcpProxy;
use infrawatch_e2e::{Aggregator, Pki, RawStream};
use infrawatch_proto::v1 as pb;
use infrawatch_proto::v1::aggregator_message::Body;
use infrawatch_proto::v1::event_service_client::EventServiceClient;
use sqlx::Connection;
use tokio::time::Instant;

/// Lease (and heartbeat) time of the replicas in these tests; renewed every
/// third of it.
const LEASE_TTL_MS: u64 = 3_000;
const METRIC: &str = "system.cpu.load_average.1m";
/// Samples per batch of [`sample_batch`].
const SAMPLES: u64 = 10;

fn cluster() -> String {
    format!("[cluster]\nlease_ttl_ms = {LEASE_TTL_MS}\n")
}

/// The start of the minute three hours ago: batch `seq` of [`sample_batch`]
/// fills minute `seq` after it.
fn sample_base() -> i64 {
    let t = infrawatch_common::time::now_unix_ms() - 3 * 3_600_000;
    t - t.rem_euclid(60_000)
}

/// Batch `seq` of host `resource`: samples `seq * 1000 + i` (i < [`SAMPLES`])
/// one second apart, all in the minute `base + seq * 60 s`.
fn sample_batch(resource: &str, seq: u64, base: i64) -> pb::Batch {
    pb::Batch {
        seq,
        base_time_unix_ms: base + seq as i64 * 60_000,
        resources: vec![pb::ResourceObservation {
            id: resource.into(),
            kind: "host".into(),
            interval_ms: 600_000,
            ..Default::default()
        }],
        strings: vec![METRIC.into()],
        series: vec![pb::SeriesDef {
            resource: 0,
            metric: 0,
            attributes: vec![],
        }],
        samples: Some(pb::SampleColumns {
            series: vec![0; SAMPLES as usize],
            time_offset_ms: (0..SAMPLES as i64).map(|i| i * 1_000).collect(),
            values: (0..SAMPLES).map(|i| (seq * 1000 + i) as f64).collect(),
        }),
        gaps: Vec::new(),
        sent_at_unix_ms: 0,
    }
}

/// One stored rollup row: (bucket start, count, sum, min, max).
type Row = (i64, i64, f64, f64, f64);

/// The row batch `seq` of [`sample_batch`] must have made.
fn expected_row(seq: u64, base: i64) -> Row {
    let first = (seq * 1000) as f64;
    let sum = (0..SAMPLES).map(|i| (seq * 1000 + i) as f64).sum();
    (
        base + seq as i64 * 60_000,
        SAMPLES as i64,
        sum,
        first,
        first + (SAMPLES - 1) as f64,
    )
}

/// Every stored rollup row of [`METRIC`], by resource, oldest first.
async fn stored_rows(url: &str) -> BTreeMap<String, Vec<Row>> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, i64, i64, f64, f64, f64)> = sqlx::query_as(
        "SELECT resource_id, bucket_start_ms, sample_count, value_sum, value_min, value_max \
         FROM metric_rollups WHERE metric = $1 ORDER BY resource_id, bucket_start_ms",
    )
    .bind(METRIC)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for (id, bucket, count, sum, min, max) in rows {
        out.entry(id)
            .or_default()
            .push((bucket, count, sum, min, max));
    }
    out
}

/// Checks, row by row, that `resource` holds exactly the samples of batches
/// `1..=batches`; returns the rows checked.
fn check_rows(
    stored: &BTreeMap<String, Vec<Row>>,
    resource: &str,
    batches: u64,
    base: i64,
) -> usize {
    let got = stored.get(resource).cloned().unwrap_or_default();
    let want: Vec<Row> = (1..=batches).map(|seq| expected_row(seq, base)).collect();
    if got != want {
        let by_bucket: BTreeMap<i64, Row> = got.iter().map(|r| (r.0, *r)).collect();
        let wrong: Vec<String> = (1..=batches)
            .filter_map(|seq| {
                let w = expected_row(seq, base);
                match by_bucket.get(&w.0) {
                    Some(g) if *g == w => None,
                    Some(g) => Some(format!(
                        "batch {seq}: stored count {} sum {} (want {} and {})",
                        g.1, g.2, w.1, w.2
                    )),
                    None => Some(format!("batch {seq}: no row")),
                }
            })
            .collect();
        panic!(
            "{resource}: {} rows stored, {batches} expected; {} wrong: {wrong:?}",
            got.len(),
            wrong.len()
        );
    }
    got.len()
}

/// Sum of a metric's lines (any labels) on a replica's `/metrics`; `None` when
/// it is not exported (yet).
fn metric(agg: &Aggregator, name: &str) -> Option<f64> {
    let (_, text) = tokio::task::block_in_place(|| agg.get_text("/metrics"));
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn is_leader(agg: &Aggregator) -> bool {
    metric(agg, "infrawatch_aggregator_leader") == Some(1.0)
}

/// GET on a replica's REST API from async code.
fn rest(agg: &Aggregator, path: &str) -> (u16, serde_json::Value) {
    tokio::task::block_in_place(|| agg.get(path))
}

/// Polls `check` every 50 ms until it gives a value, for at most `timeout`.
async fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a simulated agent stands, for the test body to follow.
#[derive(Debug, Default)]
struct Progress {
    /// The newest batch acknowledged (every one before it is too).
    acked: AtomicU64,
    /// Index of the endpoint it uses now.
    endpoint: AtomicUsize,
}

type MakeBatch = Arc<dyn Fn(u64) -> pb::Batch + Send + Sync>;

/// A hand-driven agent: `batches` batches, a new one every `pace` (all at once
/// when zero), at most `window` unacknowledged, resent elsewhere after a
/// failure.
struct SimAgent {
    name: String,
    files: TlsFiles,
    machine_id: Option<String>,
    endpoints: Vec<String>,
    batches: u64,
    pace: Duration,
    window: usize,
    /// A stream that acknowledges nothing for this long has failed.
    ack_timeout: Duration,
    /// Stop at the first failure instead of moving on (an agent that dies with
    /// its replica).
    give_up: bool,
    make: MakeBatch,
    progress: Arc<Progress>,
}

/// What a simulated agent went through.
#[derive(Debug, Default)]
struct Run {
    /// The newest batch acknowledged.
    acked: u64,
    /// Streams opened (successfully or not) after the first.
    reconnects: u32,
    drains: u32,
    timeouts: u32,
    stream_errors: u32,
    /// Acks saying the batch had been applied before (a resent batch).
    duplicate_acks: u64,
    /// Batches sent more than once.
    resent: u64,
    /// The endpoint whose stream acknowledged the last batch.
    last_endpoint: String,
    /// When and why streams failed.
    failures: Vec<(Instant, String)>,
    /// Protocol violations (acks out of order): must stay empty.
    anomalies: Vec<String>,
}

impl SimAgent {
    fn new(name: &str, files: TlsFiles, endpoints: Vec<String>, make: MakeBatch) -> Self {
        Self {
            name: name.to_string(),
            machine_id: infrawatch_e2e::machine_of(&files).ok(),
            files,
            endpoints,
            batches: 60,
            pace: Duration::from_millis(150),
            window: 4,
            ack_timeout: Duration::from_secs(4),
            give_up: false,
            make,
            progress: Arc::default(),
        }
    }

    /// Batches created by `now` (the agent's buffer).
    fn created(&self, start: Instant, now: Instant) -> u64 {
        if self.pace.is_zero() {
            return self.batches;
        }
        let n = (now - start).as_millis() / self.pace.as_millis() + 1;
        u64::try_from(n).unwrap_or(u64::MAX).min(self.batches)
    }

    fn created_at(&self, start: Instant, seq: u64) -> Instant {
        start + self.pace * u32::try_from(seq.saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// Runs until every batch is acknowledged (or, with `give_up`, the first
    /// failure); panics after `limit`.
    async fn run(self, limit: Duration) -> Run {
        let start = Instant::now();
        let mut run = Run::default();
        let mut ep = 0usize;
        let mut sent_ever = 0u64;
        let mut first = true;
        while run.acked < self.batches {
            assert!(
                start.elapsed() < limit,
                "{}: not every batch acknowledged within {limit:?}: {run:?}",
                self.name
            );
            if !first {
                run.reconnects += 1;
            }
            first = false;
            self.progress.endpoint.store(ep, Ordering::Relaxed);
            let endpoint = self.endpoints[ep].clone();
            // Every batch it may send again is at or below this.
            let last_seq = self.created(start, Instant::now()).max(sent_ever);
            let opened = tokio::time::timeout(
                Duration::from_secs(5),
                RawStream::open_as(&endpoint, &self.files, last_seq, self.machine_id.as_deref()),
            )
            .await;
            let failure = match opened {
                Ok(Ok(Ok(mut stream))) => {
                    self.stream(&mut stream, &mut run, &mut sent_ever, start, &endpoint)
                        .await
                }
                Ok(Ok(Err(status))) => Some(format!("refused: {status}")),
                Ok(Err(e)) => Some(format!("no connection: {e:#}")),
                Err(_) => Some("no connection within 5 s".into()),
            };
            let Some(why) = failure else { break };
            run.failures
                .push((Instant::now(), format!("{endpoint}: {why}")));
            if self.give_up {
                break;
            }
            ep = (ep + 1) % self.endpoints.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        run
    }

    /// Sends and reads acks on one stream: `None` once every batch is
    /// acknowledged, or why the stream failed.
    async fn stream(
        &self,
        stream: &mut RawStream,
        run: &mut Run,
        sent_ever: &mut u64,
        start: Instant,
        endpoint: &str,
    ) -> Option<String> {
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut next = run.acked + 1;
        let mut waiting_since = Instant::now();
        loop {
            let due = self.created(start, Instant::now());
            while in_flight.len() < self.window && next <= due {
                if stream.send((self.make)(next)).await.is_err() {
                    run.stream_errors += 1;
                    return Some("send failed".into());
                }
                if next <= *sent_ever {
                    run.resent += 1;
                } else {
                    *sent_ever = next;
                }
                if in_flight.is_empty() {
                    waiting_since = Instant::now();
                }
                in_flight.push_back(next);
                next += 1;
            }
            let ack_deadline = (!in_flight.is_empty()).then(|| waiting_since + self.ack_timeout);
            let next_batch = (next <= self.batches && in_flight.len() < self.window)
                .then(|| self.created_at(start, next));
            let wake = [ack_deadline, next_batch]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                m = stream.next_message() => match m {
                    Ok(Some(pb::AggregatorMessage { body: Some(Body::Ack(ack)) })) => {
                        if in_flight.front() != Some(&ack.seq) {
                            run.anomalies.push(format!(
                                "{}: ack of {} from {endpoint} while {:?} were in flight",
                                self.name, ack.seq, in_flight
                            ));
                            return Some("acknowledgement out of order".into());
                        }
                        in_flight.pop_front();
                        waiting_since = Instant::now();
                        run.acked = ack.seq;
                        if ack.duplicate {
                            run.duplicate_acks += 1;
                        }
                        run.last_endpoint = endpoint.to_string();
                        self.progress.acked.store(ack.seq, Ordering::Relaxed);
                        if run.acked == self.batches {
                            return None;
                        }
                    }
                    Ok(Some(pb::AggregatorMessage { body: Some(Body::Drain(_)) })) => {
                        run.drains += 1;
                        return Some("drained".into());
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        run.stream_errors += 1;
                        return Some("stream ended".into());
                    }
                    Err(status) => {
                        run.stream_errors += 1;
                        return Some(format!("stream failed: {status}"));
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    if ack_deadline.is_some_and(|d| Instant::now() >= d) {
                        run.timeouts += 1;
                        return Some(format!("no acknowledgement within {:?}", self.ack_timeout));
                    }
                }
            }
        }
    }
}

async fn pg_conn(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url).await.unwrap()
}

/// Waits until the sequencer gave every staged event its position and the
/// outbox stopped growing; returns the number of events.
async fn settled_outbox(url: &str) -> u64 {
    let mut conn = pg_conn(url).await;
    let start = Instant::now();
    let mut last = None;
    loop {
        let (staged, count, head): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM event_staging), (SELECT COUNT(*) FROM event_outbox), \
             (SELECT COALESCE(MAX(position), 0) FROM event_outbox)",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if staged == 0 && last == Some((count, head)) {
            assert_eq!(count, head, "outbox positions 1..={head} without gaps");
            return count as u64;
        }
        last = (staged == 0).then_some((count, head));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "events still staged: {staged}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks the outbox and the history in the database: positions `1..=P`,
/// every resource's versions `1..=V` once each in `health_history`, and its
/// events in version order of position. Returns (P, versions by resource).
async fn check_versions_in_database(url: &str) -> (u64, BTreeMap<String, u64>) {
    let mut conn = pg_conn(url).await;
    let resources: BTreeMap<String, u64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT id, resource_version FROM resources ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, v)| (id, v as u64))
    .collect();
    let history: Vec<(String, i64)> = sqlx::query_as(
        "SELECT resource_id, resource_version FROM health_history \
         ORDER BY resource_id, resource_version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut by_resource: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (id, v) in history {
        by_resource.entry(id).or_default().push(v as u64);
    }
    for (id, v) in &resources {
        let want: Vec<u64> = (1..=*v).collect();
        assert_eq!(
            by_resource.get(id),
            Some(&want),
            "{id}: health_history versions must be exactly 1..={v}"
        );
    }
    assert_eq!(
        by_resource.len(),
        resources.len(),
        "history of unknown resources"
    );
    let outbox: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT position, resource_id, resource_version FROM event_outbox ORDER BY position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for (i, (position, _, _)) in outbox.iter().enumerate() {
        assert_eq!(*position, i as i64 + 1, "outbox positions without gaps");
    }
    let delivery = Delivery::check(outbox.into_iter().map(|(_, id, v)| (id, v as u64)));
    assert_eq!(delivery.duplicates, 0, "an event staged twice");
    for (id, v) in &resources {
        let want: Vec<u64> = (1..=*v).collect();
        assert_eq!(
            delivery.versions.get(id),
            Some(&want),
            "{id}: outbox events in version order of position"
        );
    }
    (delivery.received as u64, resources)
}

/// Every event `agg`'s WatchEvents gives from position 0, until `expected`
/// arrived: (position, resource, version).
async fn watch_all(agg: &Aggregator, pki: &Pki, expected: u64) -> Vec<(u64, String, u64)> {
    let channel = infrawatch_e2e::channel(&agg.endpoint(), &pki.client("cli"))
        .await
        .unwrap();
    let mut events = EventServiceClient::new(channel);
    let mut watch = events
        .watch_events(pb::WatchEventsRequest {
            filter: None,
            after_position: Some(0),
            subscription: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::with_capacity(expected as usize);
    while (out.len() as u64) < expected {
        let e = tokio::time::timeout(Duration::from_secs(20), watch.message())
            .await
            .unwrap_or_else(|_| panic!("{} of {expected} events after 20 s of silence", out.len()))
            .unwrap()
            .unwrap();
        let ev = e.event.unwrap();
        out.push((e.position, ev.resource_id, ev.resource_version));
    }
    // Nothing beyond them.
    let more = tokio::time::timeout(Duration::from_millis(500), watch.message()).await;
    assert!(more.is_err(), "an event past the head: {more:?}");
    out
}

/// Scenario: 30 agents spread over replicas A, B and C; A is killed with
/// SIGKILL, B stopped gracefully, and the fleet ends up on C with every sample
/// of every batch stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_lose_nothing_when_one_is_killed_and_one_stopped() {
    super::init();
    let _heavy = infrawatch_e2e::HEAVY.lock().await;
    const AGENTS: usize = 30;
    const BATCHES: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..AGENTS)
        .map(|i| format!("agent-replica-test-{i}"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(dir.path(), &refs).unwrap();
    let pg = PgInstance::start(dir.path()).unwrap();
    let url = pg.url();
    let mut a = Aggregator::start(dir.path(), &pki, &url, &cluster()).unwrap();
    let b = Aggregator::start(dir.path(), &pki, &url, &cluster()).unwrap();
    let c = Aggregator::start(dir.path(), &pki, &url, &cluster()).unwrap();
    let replicas = [a.endpoint(), b.endpoint(), c.endpoint()];
    let base = sample_base();
    let started = Instant::now();
    let mut fleet = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // Agent i starts on replica i % 3 and moves on in that order.
        let endpoints = (0..3).map(|k| replicas[(i + k) % 3].clone()).collect();
        let resource = format!("host/replica-test-{i}");
        let mut agent = SimAgent::new(
            name,
            pki.client(name),
            endpoints,
            Arc::new(move |seq| sample_batch(&resource, seq, base)),
        );
        agent.batches = BATCHES;
        fleet.push(tokio::spawn(agent.run(Duration::from_secs(120))));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| a.process.kill());
    let killed_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopping = tokio::task::spawn_blocking(move || {
        let mut b = b;
        let status = b.process.stop();
        (b, status)
    });
    let stopped_at = started.elapsed();
    let mut runs = Vec::new();
    for task in fleet {
        runs.push(task.await.unwrap());
    }
    let all_acked_after = started.elapsed();
    let (b, status) = stopping.await.unwrap();
    let status = status.unwrap();
    assert!(
        status.success(),
        "B stopped with {status}:\n{}",
        b.process.log_text()
    );

    for (i, r) in runs.iter().enumerate() {
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.acked, BATCHES);
        assert_eq!(
            r.last_endpoint,
            c.endpoint(),
            "agent {i} ended on C: {:?}",
            r.failures
        );
        if i % 3 != 2 {
            assert!(r.reconnects > 0, "agent {i} started on A or B and moved");
        }
    }
    let moved = runs.iter().filter(|r| r.reconnects > 0).count();
    let drains: u32 = runs.iter().map(|r| r.drains).sum();
    let timeouts: u32 = runs.iter().map(|r| r.timeouts).sum();
    let resent: u64 = runs.iter().map(|r| r.resent).sum();
    let duplicate_acks: u64 = runs.iter().map(|r| r.duplicate_acks).sum();
    assert!(drains > 0, "B drained its agents with Drain messages");

    // Sample by sample: every batch's minute once, with its count and sum.
    let stored = stored_rows(&url).await;
    let mut rows = 0;
    for i in 0..AGENTS {
        rows += check_rows(&stored, &format!("host/replica-test-{i}"), BATCHES, base);
    }
    assert_eq!(stored.len(), AGENTS, "rollups of unexpected resources");
    let mut conn = pg_conn(&url).await;
    let cursors: Vec<(String, i64)> =
        sqlx::query_as("SELECT agent_id, last_seq FROM agent_cursors ORDER BY agent_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(cursors.len(), AGENTS);
    assert!(
        cursors.iter().all(|(_, s)| *s == BATCHES as i64),
        "{cursors:?}"
    );

    // Every resource exactly once, in the database and on C.
    let in_db: Vec<String> = sqlx::query_scalar("SELECT id FROM resources ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let want: BTreeSet<String> = (0..AGENTS)
        .map(|i| format!("host/replica-test-{i}"))
        .collect();
    assert_eq!(in_db.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(in_db.len(), AGENTS);
    let (code, page) = rest(&c, "/api/v1/resources?kind=host&limit=1000");
    assert_eq!(code, 200, "{page}");
    let on_c: Vec<String> = page["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(on_c.len(), AGENTS, "{on_c:?}");
    assert_eq!(on_c.into_iter().collect::<BTreeSet<_>>(), want);

    let samples = AGENTS as u64 * BATCHES * SAMPLES;
    eprintln!(
        "RELIABILITY replicas-kill-one-stop-one: agents={AGENTS} batches={} samples={samples} \
         rows_checked={rows} lost=0 duplicated=0 a_killed_at={killed_at:?} b_stopped_at={stopped_at:?} \
         agents_moved={moved} drains={drains} ack_timeouts={timeouts} batches_resent={resent} \
         acked_as_replay={duplicate_acks} all_acked_after={all_acked_after:?} resources_on_c={AGENTS}",
        AGENTS as u64 * BATCHES
    );
}

/// Scenario: the leader of two replicas is killed in the middle of a burst of
/// state changes. The survivor takes the lease within the lease time, every
/// event reaches JetStream exactly once and in order per resource, and the
/// staleness check of an agent that only the dead leader served resumes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_and_events_are_neither_lost_nor_repeated() {
    super::init();
    let _heavy = infrawatch_e2e::HEAVY.lock().await;
    const BATCHES: u64 = 150;
    const STALE_INTERVAL_MS: u32 = 1_000;
    const STALE: &str = "host/replica-stale";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(
        dir.path(),
        &["changer-l", "changer-f", "agent-replica-stale"],
    )
    .unwrap();
    let pg = PgInstance::start(dir.path()).unwrap();
    let url = pg.url();
    let nats = Nats::start(dir.path()).unwrap();
    let extra = format!(
        "{}[events.nats]\nurl = {:?}\nstream = \"IW_REPLICAS\"\n",
        cluster(),
        nats.url()
    );
    let x = Aggregator::start(dir.path(), &pki, &url, &extra).unwrap();
    let y = Aggregator::start(dir.path(), &pki, &url, &extra).unwrap();
    let x_leads = wait_for(Duration::from_secs(15), "a leader", || {
        match (is_leader(&x), is_leader(&y)) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    })
    .await;
    let (mut leader, follower) = if x_leads { (x, y) } else { (y, x) };

    // State changes through both replicas; the leader's changer moves to the
    // survivor when the leader dies.
    let lead_ids = resource_ids("changer-l", "lead", 10);
    let fol_ids = resource_ids("changer-f", "fol", 10);
    let mut changer_l = SimAgent::new(
        "changer-l",
        pki.client("changer-l"),
        vec![leader.endpoint(), follower.endpoint()],
        Arc::new({
            let ids = lead_ids.clone();
            move |seq| change_batch(seq, &ids, seq)
        }),
    );
    changer_l.batches = BATCHES;
    changer_l.pace = Duration::from_millis(100);
    let l_progress = changer_l.progress.clone();
    let mut changer_f = SimAgent::new(
        "changer-f",
        pki.client("changer-f"),
        vec![follower.endpoint()],
        Arc::new({
            let ids = fol_ids.clone();
            move |seq| change_batch(seq, &ids, seq)
        }),
    );
    changer_f.batches = BATCHES;
    changer_f.pace = Duration::from_millis(100);
    // An agent only the leader serves, reporting a host every 300 ms.
    let mut stale_agent = SimAgent::new(
        "agent-replica-stale",
        pki.client("agent-replica-stale"),
        vec![leader.endpoint()],
        Arc::new(|seq| pb::Batch {
            seq,
            base_time_unix_ms: infrawatch_common::time::now_unix_ms(),
            resources: vec![pb::ResourceObservation {
                id: STALE.into(),
                kind: "host".into(),
                interval_ms: STALE_INTERVAL_MS,
                ..Default::default()
            }],
            ..Default::default()
        }),
    );
    stale_agent.batches = 1_000_000;
    stale_agent.pace = Duration::from_millis(300);
    stale_agent.give_up = true;
    let l_task = tokio::spawn(changer_l.run(Duration::from_secs(120)));
    let f_task = tokio::spawn(changer_f.run(Duration::from_secs(120)));
    let stale_task = tokio::spawn(stale_agent.run(Duration::from_secs(120)));

    let health_on = |agg: &Aggregator| -> Option<(String, Vec<String>)> {
        let (code, r) = rest(agg, &format!("/api/v1/resources/{STALE}"));
        (code == 200).then(|| {
            let reasons = r["reasons"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x["code"].as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default();
            (
                r["health"].as_str().unwrap_or_default().to_string(),
                reasons,
            )
        })
    };
    wait_for(
        Duration::from_secs(30),
        "the burst under way and the host known on the follower",
        || {
            (l_progress.acked.load(Ordering::Relaxed) >= 30 && health_on(&follower).is_some())
                .then_some(())
        },
    )
    .await;
    let before = health_on(&follower).unwrap();
    assert_ne!(before.0, "unknown", "the host is fresh before the kill");

    let killed = Instant::now();
    tokio::task::block_in_place(|| leader.process.kill());
    let acked_at_kill = l_progress.acked.load(Ordering::Relaxed);
    let takeover = wait_for(Duration::from_secs(30), "the survivor leads", || {
        is_leader(&follower).then(|| killed.elapsed())
    })
    .await;
    let takeover_bound =
        Duration::from_millis(LEASE_TTL_MS + LEASE_TTL_MS / 3) + Duration::from_secs(2);
    assert!(
        takeover <= takeover_bound,
        "the survivor took the lease after {takeover:?} (bound {takeover_bound:?})"
    );
    // The dead leader's heartbeat runs out with its lease (the same time); the
    // new leader then finds the agent unserved and times its silence from there:
    // 3 missed intervals, plus the check's own second and slack.
    let stale_bound = takeover_bound
        + Duration::from_millis(u64::from(STALE_INTERVAL_MS) * 3)
        + Duration::from_secs(1 + 3);
    let stale_after = wait_for(
        Duration::from_secs(60),
        "the host stale on the survivor",
        || {
            let (health, reasons) = health_on(&follower)?;
            (health == "unknown" && reasons.iter().any(|r| r == "stale")).then(|| killed.elapsed())
        },
    )
    .await;
    assert!(
        stale_after <= stale_bound,
        "stale after {stale_after:?} (bound {stale_bound:?})"
    );
    let stale_run = stale_task.await.unwrap();
    let (failed_at, why) = stale_run.failures.last().cloned().unwrap();
    assert!(
        failed_at >= killed,
        "the stale agent's stream ended with the leader, not before: {why}"
    );

    let l_run = l_task.await.unwrap();
    let f_run = f_task.await.unwrap();
    for r in [&l_run, &f_run] {
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.acked, BATCHES);
        assert_eq!(r.last_endpoint, follower.endpoint());
    }
    assert!(l_run.reconnects > 0, "the leader's changer moved");

    // Every version once in the database, positions without gaps.
    let settled = settled_outbox(&url).await;
    let (events, versions) = check_versions_in_database(&url).await;
    assert_eq!(settled, events);
    for id in lead_ids.iter().chain(&fol_ids) {
        assert_eq!(
            versions.get(id),
            Some(&BATCHES),
            "{id}: one version per batch"
        );
    }
    assert_eq!(versions.len(), lead_ids.len() + fol_ids.len() + 1);

    // JetStream: every event once (the broker drops ids it already has), in
    // version order per resource, none missing.
    let got = match read_jetstream(
        &nats.url(),
        "IW_REPLICAS",
        events as usize,
        Duration::from_secs(60),
    )
    .await
    {
        Ok(got) => got,
        Err(e) => panic!("{e:#}\nsurvivor's log:\n{}", follower.process.log_text()),
    };
    let delivery = Delivery::check(got);
    assert_eq!(delivery.duplicates, 0, "an event twice in JetStream");
    for (id, v) in &versions {
        assert_eq!(
            delivery.versions.get(id),
            Some(&(1..=*v).collect::<Vec<_>>()),
            "{id}: versions once each, in order, none missing"
        );
    }
    assert_eq!(delivery.versions.len(), versions.len());
    eprintln!(
        "RELIABILITY replicas-leader-killed: takeover_after={takeover:?} (bound {takeover_bound:?}) \
         stale_on_survivor_after={stale_after:?} (bound {stale_bound:?}) events={events} \
         in_jetstream={} duplicates=0 lost=0 resources={} changer_acked_at_kill={acked_at_kill} \
         changer_resent={} changer_acked_as_replay={}",
        delivery.received,
        versions.len(),
        l_run.resent,
        l_run.duplicate_acks
    );
}

/// Scenario: two writers on two processes' state paths commit changes to the
/// same resources at once, every report changing all of them. No agent may do
/// this (one certificate speaks for one machine, and a machine's resources
/// belong to it), but the state path must hold whoever its sources are (the
/// staleness check, Kubernetes and cloud sources share resources with agents):
/// the two writers are this test's own, each with its own model and database
/// pool as a replica has, and the two real replicas sequence and serve the
/// events. The writes conflict; versions and event positions still come out
/// contiguous, each report's change exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_committing_the_same_resources_keep_versions_contiguous() {
    super::init();
    let _heavy = infrawatch_e2e::HEAVY.lock().await;
    const BATCHES: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &[]).unwrap();
    let pg = PgInstance::start(dir.path()).unwrap();
    let url = pg.url();
    let x = Aggregator::start(dir.path(), &pki, &url, &cluster()).unwrap();
    let y = Aggregator::start(dir.path(), &pki, &url, &cluster()).unwrap();
    let ids = resource_ids("twin", "shared", 20);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for parity in [0, 1] {
        let ids = ids.clone();
        let writer = StateWriter::open(&url).await;
        // Generations differ between the two, so every report changes every resource.
        tasks.push(tokio::spawn(async move {
            let mut retried = 0u32;
            let mut failures = BTreeMap::<String, usize>::new();
            for seq in 1..=BATCHES {
                let report = change_report(&ids, seq * 2 + parity);
                loop {
                    match writer.planner.submit(report.clone()).await {
                        Ok(_) => break,
                        Err(e) => {
                            // What an agent does with a failed batch: send it again.
                            *failures.entry(e.to_string()).or_default() += 1;
                            retried += 1;
                            assert!(retried < 1000, "writer {parity}: {failures:?}");
                        }
                    }
                }
            }
            writer.stop().await;
            (retried, failures)
        }));
    }
    let mut failures = BTreeMap::<String, usize>::new();
    let mut retried = 0;
    for t in tasks {
        let (r, f) = t.await.unwrap();
        retried += r;
        for (k, v) in f {
            *failures.entry(k).or_default() += v;
        }
    }
    let sent_in = started.elapsed();

    let settled = settled_outbox(&url).await;
    let (events, versions) = check_versions_in_database(&url).await;
    assert_eq!(settled, events);
    for id in &ids {
        assert_eq!(
            versions.get(id),
            Some(&(2 * BATCHES)),
            "{id}: each batch of each agent changed it exactly once"
        );
    }
    assert_eq!(versions.len(), ids.len());
    assert_eq!(events, 2 * BATCHES * ids.len() as u64);

    // Both replicas' live streams from position 0: the same events, 1..=P.
    let mut conn = pg_conn(&url).await;
    let outbox: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT position, resource_id, resource_version FROM event_outbox ORDER BY position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let outbox: Vec<(u64, String, u64)> = outbox
        .into_iter()
        .map(|(p, id, v)| (p as u64, id, v as u64))
        .collect();
    for agg in [&x, &y] {
        let watched = watch_all(agg, &pki, events).await;
        let positions: Vec<u64> = watched.iter().map(|e| e.0).collect();
        assert_eq!(
            positions,
            (1..=events).collect::<Vec<_>>(),
            "{}: positions without gaps or repeats",
            agg.endpoint()
        );
        assert!(watched == outbox, "{}: the outbox's events", agg.endpoint());
    }
    let conflicts: Vec<f64> = [&x, &y]
        .iter()
        .map(|a| metric(a, "infrawatch_aggregator_state_conflicts_total").unwrap_or(0.0))
        .collect();
    // Conflicts are planned again (and, past a few rounds, the report fails and
    // is sent again); a write that fails otherwise is a bug, e.g. two writers
    // locking the same rows in different orders (a deadlock).
    if failures.keys().any(|k| k.contains("database error")) {
        panic!("state writes failed: {failures:?}");
    }
    eprintln!(
        "RELIABILITY replicas-same-resources: batches={} resources={} versions_each={} events={events} \
         gaps=0 repeats=0 conflicts_x={} conflicts_y={} resubmitted={retried} {:?} \
         watched_on_both=2x{events} sent_in={sent_in:?}",
        2 * BATCHES,
        ids.len(),
        2 * BATCHES,
        conflicts[0],
        conflicts[1],
        failures
    );
}

/// A state path of this test's own on the test's database: a model, an event
/// log, a writer and the handle to submit to, as a replica has them.
struct StateWriter {
    planner: PlannerHandle,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl StateWriter {
    async fn open(url: &str) -> Self {
        let store = Store::open(&StorageConfig {
            url: url.to_string(),
            ..StorageConfig::default()
        })
        .unwrap();
        let state = Arc::new(State::new(60_000));
        let log = Arc::new(EventLog::new(
            store.clone(),
            store.event_head().await.unwrap(),
            1024,
        ));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let writer = Writer::new(
            state,
            store,
            WriterConfig {
                health: HealthConfig::default(),
                group_commit_reports: 8,
                max_future_skew_ms: 60_000,
            },
            rx,
            log,
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(writer.run(stop.clone()));
        Self {
            planner: PlannerHandle::new(tx),
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A report changing every resource in `ids`: attribute `generation` becomes
/// `generation` (what [`change_batch`] does on the agent stream).
fn change_report(ids: &[String], generation: u64) -> Report {
    let now = infrawatch_common::time::now_unix_ms();
    Report {
        source: "twin".into(),
        changes: ids
            .iter()
            .map(|id| {
                Change::Observed(Observation {
                    verdict: None,
                    id: id.clone(),
                    kind: "service".into(),
                    labels: Default::default(),
                    attributes: [("generation".to_string(), generation.to_string())].into(),
                    relations: Vec::new(),
                    interval_ms: infrawatch_common::resource::MAX_INTERVAL_MS,
                    observed_at_ms: now,
                })
            })
            .collect(),
        position: None,
    }
}

/// Scenario: replica P loses its database (a proxy cut) while serving an agent;
/// the agent moves to Q, which applies what was not acknowledged. When P's
/// database returns, P's flush of that agent is fenced (its session epoch
/// moved) and the rows are exactly right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_the_database_cannot_write_for_agents_that_moved() {
    super::init();
    let _heavy = infrawatch_e2e::HEAVY.lock().await;
    const BATCHES: u64 = 80;
    const RESOURCE: &str = "host/cut";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-cut"]).unwrap();
    let pg = PgInstance::start(dir.path()).unwrap();
    let mut proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port))).unwrap();
    let p_url = format!("postgres://postgres@{}/postgres", proxy.addr);
    let p = Aggregator::start(dir.path(), &pki, &p_url, &cluster()).unwrap();
    let q = Aggregator::start(dir.path(), &pki, &pg.url(), &cluster()).unwrap();
    let base = sample_base();
    let mut agent = SimAgent::new(
        "agent-cut",
        pki.client("agent-cut"),
        vec![p.endpoint(), q.endpoint()],
        Arc::new(move |seq| sample_batch(RESOURCE, seq, base)),
    );
    agent.batches = BATCHES;
    agent.pace = Duration::from_millis(100);
    agent.ack_timeout = Duration::from_secs(3);
    let progress = agent.progress.clone();
    let task = tokio::spawn(agent.run(Duration::from_secs(120)));

    wait_for(
        Duration::from_secs(30),
        "20 batches acknowledged by P",
        || (progress.acked.load(Ordering::Relaxed) >= 20).then_some(()),
    )
    .await;
    proxy.cut();
    let cut = Instant::now();
    let acked_at_cut = progress.acked.load(Ordering::Relaxed);
    let moved_after = wait_for(
        Duration::from_secs(30),
        "the agent acknowledged on Q",
        || {
            (progress.endpoint.load(Ordering::Relaxed) == 1
                && progress.acked.load(Ordering::Relaxed) > acked_at_cut)
                .then(|| cut.elapsed())
        },
    )
    .await;
    // Q has applied and flushed batches past what P acknowledged: P's session
    // epoch is gone. P's flush waits for a connection, gives up after the pool's
    // acquire timeout and keeps what it took for the next try; then P gets its
    // database back.
    let flush_failed_after = wait_for(Duration::from_secs(30), "P's flush failed", || {
        tokio::task::block_in_place(|| p.process.log_text())
            .contains("Sample flush failed")
            .then(|| cut.elapsed())
    })
    .await;
    proxy.restore().unwrap();
    let restored = Instant::now();
    let run = task.await.unwrap();
    assert!(run.anomalies.is_empty(), "{:?}", run.anomalies);
    assert_eq!(run.acked, BATCHES);
    assert_eq!(run.last_endpoint, q.endpoint(), "{:?}", run.failures);

    let fenced_after = wait_for(Duration::from_secs(30), "P's flush fenced", || {
        (metric(&p, "infrawatch_aggregator_flush_fenced_total").unwrap_or(0.0) >= 1.0
            && p.process
                .log_text()
                .contains("Another stream holds this agent now"))
        .then(|| restored.elapsed())
    })
    .await;
    let fenced = metric(&p, "infrawatch_aggregator_flush_fenced_total").unwrap_or(0.0);
    // A few more flush intervals: nothing of P's lands later.
    tokio::time::sleep(Duration::from_millis(
        5 * infrawatch_e2e::TEST_FLUSH_INTERVAL_MS,
    ))
    .await;
    let stored = stored_rows(&pg.url()).await;
    let rows = check_rows(&stored, RESOURCE, BATCHES, base);
    let mut conn = pg_conn(&pg.url()).await;
    let (last_seq, owner_epoch): (i64, i64) = sqlx::query_as(
        "SELECT last_seq, epoch FROM agent_cursors WHERE agent_id = 'agent-cut/cut'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(last_seq, BATCHES as i64);
    assert!(owner_epoch >= 2, "Q opened a later session");
    eprintln!(
        "RELIABILITY replicas-db-cut-fencing: batches={BATCHES} samples={} rows_checked={rows} lost=0 \
         duplicated=0 acked_by_p_before_cut={acked_at_cut} moved_to_q_after={moved_after:?} \
         batches_resent={} p_flush_failed_after_cut={flush_failed_after:?} \
         p_fenced_flushes={fenced} fenced_after_restore={fenced_after:?} session_epoch={owner_epoch}",
        BATCHES * SAMPLES,
        run.resent
    );
}
