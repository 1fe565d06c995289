//! Hostile input against the limits, with the real aggregator: a decompression bomb
//! refused before it is inflated, series over an agent's budget refused and named
//! in the acknowledgement, resources and relations over an agent's budget
//! refused, connections over the per-identity limit closed, and
//! (scenario 7 of the reliability plan) one client doing all of that and more
//! while ten honest agents stream: the honest agents lose nothing and their
//! acknowledgements stay fast.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use infrawatch_e2e::rawgrpc::{self, RawAnswer};
use infrawatch_e2e::{Agent, Aggregator, Pki, RawStream, channel, eventually, http_get};
use infrawatch_proto::v1::{Batch, ResourceObservation, SampleColumns, SeriesDef};
use tokio::io::AsyncWriteExt;

use super::buffer::{longest_silence, now, start_fleet, uptime_samples_of, wait_drained};

const REPORT: &str = "/infrawatch.v1.AgentService/Report";

/// Honest agents' p99 acknowledgement latency (send to the first ack of a batch,
/// level `received`: how soon the aggregator takes their batches, not its flush
/// interval) while the hostile client runs must be at most this (a histogram
/// bucket bound).
pub(crate) const HONEST_P99_BOUND_S: f64 = 2.5;

/// How often the honest agents collect and send. Every 500 ms, ten agents keep a
/// debug build of the aggregator about a fifth of a core busy on two cores, which
/// leaves room for the attack on a slower machine too.
const HONEST_INTERVAL_MS: u64 = 500;

/// A runtime for the hostile client whose threads run at the lowest CPU priority
/// (nice 19). A real attacker has a machine of its own; here it shares two cores
/// with the aggregator and the honest agents, and the test is about what the
/// aggregator does with the attack, not about how much CPU the attacker's own
/// handshakes and encoding take from every process on the machine.
fn attacker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(lowest_cpu_priority)
        .build()
        .unwrap()
}

/// Gives the calling thread the lowest CPU priority (on Linux a nice value
/// belongs to a thread, and `who` 0 names the calling one).
fn lowest_cpu_priority() {
    #[allow(unsafe_code)]
    // SAFETY: setpriority takes no pointers and changes only this thread's priority.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    assert_eq!(done, 0, "setpriority: {}", std::io::Error::last_os_error());
}

/// A batch describing host `host` with `series` series named by `label` values
/// starting at `first`: every value is a new series.
fn many_series(seq: u64, host: &str, first: usize, series: usize) -> Batch {
    let mut strings = vec!["hostile.metric".to_string(), "id".to_string()];
    let mut defs = Vec::with_capacity(series);
    for i in 0..series {
        strings.push(format!("v{}", first + i));
        defs.push(SeriesDef {
            resource: 0,
            metric: 0,
            attributes: vec![1, (i + 2) as u32],
        });
    }
    let ts = now();
    Batch {
        seq,
        base_time_unix_ms: ts,
        resources: vec![ResourceObservation {
            id: host.into(),
            kind: "host".into(),
            interval_ms: 60_000,
            ..Default::default()
        }],
        strings,
        series: defs,
        samples: Some(SampleColumns {
            series: (0..series as u32).collect(),
            time_offset_ms: vec![0; series],
            values: vec![1.0; series],
        }),
        gaps: Vec::new(),
        sent_at_unix_ms: ts,
    }
}

fn refused(ack: &infrawatch_proto::v1::Ack, reason: &str) -> u64 {
    ack.refused
        .iter()
        .filter(|r| r.reason == reason)
        .map(|r| r.samples)
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A counter's value in a Prometheus text page (summed over its label sets).
pub(crate) fn counter(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn bomb(agg: &Aggregator, pki: &Pki, who: &str) -> RawAnswer {
    let bomb = rawgrpc::gzip_bomb(1024).unwrap();
    assert!(bomb.len() <= 1200 * 1024, "the bomb is about 1 MiB");
    rawgrpc::call(
        agg.grpc,
        &pki.client(who),
        REPORT,
        &[("grpc-encoding", "gzip")],
        rawgrpc::frame(true, &bomb).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_message_is_refused_before_it_is_inflated() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-z"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let before = rss_kib(agg.process.pid());
    let answer = bomb(&agg, &pki, "agent-z").await;
    // UNIMPLEMENTED: the server offers no compression, so it reads nothing of a
    // compressed message, let alone inflates it to 1 GiB.
    assert_eq!(answer.status, Some(12), "{answer:?}");
    assert!(answer.message.contains("gzip"), "{answer:?}");
    let after = rss_kib(agg.process.pid());
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // The same client, uncompressed, is served.
    let mut s = RawStream::open(&agg.endpoint(), &pki.client("agent-z"), 0)
        .await
        .unwrap()
        .unwrap();
    s.send(many_series(1, "host/z", 0, 10)).await.unwrap();
    assert_eq!(s.next_ack().await.unwrap().seq, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn series_over_the_budget_are_refused_and_named_in_the_ack() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-c", "agent-d"]).unwrap();
    let agg = Aggregator::start_sqlite(
        dir.path(),
        &pki,
        "[ingest]\nmax_active_series_per_agent = 1000\nmax_new_series_per_minute = 100000\n",
    )
    .unwrap();
    let mut s = RawStream::open(&agg.endpoint(), &pki.client("agent-c"), 0)
        .await
        .unwrap()
        .unwrap();
    // 1,200 new series: 1,000 fit under the active limit.
    s.send(many_series(1, "host/c", 0, 1200)).await.unwrap();
    let ack = s.next_ack().await.unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(refused(&ack, "active_series_limit"), 200, "{ack:?}");
    let detail = &ack.refused[0].detail;
    assert!(
        detail.contains("ingest.max_active_series_per_agent"),
        "{detail}"
    );
    // The series it has keep flowing; new ones still do not.
    s.send(many_series(2, "host/c", 0, 1000)).await.unwrap();
    let ack = s.next_ack().await.unwrap();
    assert!(ack.refused.is_empty(), "{ack:?}");
    s.send(many_series(3, "host/c", 5000, 10)).await.unwrap();
    assert_eq!(
        refused(&s.next_ack().await.unwrap(), "active_series_limit"),
        10
    );

    let (_, metrics) = agg.get_text("/metrics");
    assert_eq!(
        counter(
            &metrics,
            "infrawatch_aggregator_ingest_samples_dropped_total",
            "reason=\"active_series_limit\""
        ),
        210.0
    );

    // The rate of new series: 600 at once, then 10 a second.
    let dir = tempfile::tempdir().unwrap();
    let agg = Aggregator::start_sqlite(
        dir.path(),
        &pki,
        "[ingest]\nmax_active_series_per_agent = 100000\nmax_new_series_per_minute = 600\n",
    )
    .unwrap();
    let mut d = RawStream::open(&agg.endpoint(), &pki.client("agent-d"), 0)
        .await
        .unwrap()
        .unwrap();
    d.send(many_series(1, "host/d", 0, 900)).await.unwrap();
    let ack = d.next_ack().await.unwrap();
    assert_eq!(refused(&ack, "new_series_rate"), 300, "{ack:?}");
    assert!(
        ack.refused[0]
            .detail
            .contains("ingest.max_new_series_per_minute"),
        "{ack:?}"
    );
    // The 600 admitted keep flowing.
    d.send(many_series(2, "host/d", 0, 600)).await.unwrap();
    assert!(d.next_ack().await.unwrap().refused.is_empty());
}

/// Probes `probe/<machine>/p-<i>` for `i` in `ids`, each with `relations`
/// relations, in one batch.
fn probes(seq: u64, machine: &str, ids: std::ops::Range<usize>, relations: usize) -> Batch {
    Batch {
        seq,
        base_time_unix_ms: now(),
        resources: ids
            .map(|i| ResourceObservation {
                id: format!("probe/{machine}/p-{i}"),
                kind: "tcp_probe".into(),
                interval_ms: 60_000,
                relations: (0..relations)
                    .map(|r| infrawatch_proto::v1::Relation {
                        relation_type: "depends_on".into(),
                        to_id: format!("service/s-{r}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Resources and relations are budgeted per agent machine, counted in the
/// model: a batch that would pass a budget is refused whole, naming the
/// setting, and counted; what the agent had stays, and another agent is not
/// affected.
#[tokio::test(flavor = "multi_thread")]
async fn resources_and_relations_over_the_budget_are_refused() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-r", "agent-s"]).unwrap();
    let agg = Aggregator::start_sqlite(
        dir.path(),
        &pki,
        "[ingest]\nmax_resources_per_agent = 5\nmax_relations_per_resource = 3\nmax_relations_per_agent = 8\n",
    )
    .unwrap();
    let mut r = RawStream::open(&agg.endpoint(), &pki.client("agent-r"), 0)
        .await
        .unwrap()
        .unwrap();
    r.send(probes(1, "r", 0..4, 2)).await.unwrap();
    r.next_ack().await.unwrap();
    let refused = |batch: Batch| {
        let files = pki.client("agent-r");
        let endpoint = agg.endpoint();
        async move {
            let seq = batch.seq;
            let mut s = RawStream::open(&endpoint, &files, seq - 1)
                .await
                .unwrap()
                .unwrap();
            s.send(batch).await.unwrap();
            s.next_ack().await.unwrap_err()
        }
    };
    // Five resources are allowed, six are not (counted with what is stored).
    let err = refused(probes(2, "r", 4..6, 0)).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("machine r would have 6 resources, the most one agent may report is 5 (ingest.max_resources_per_agent)"),
        "{err:?}"
    );
    let err = refused(probes(2, "r", 0..1, 4)).await;
    assert!(
        err.message().contains("ingest.max_relations_per_resource"),
        "{err:?}"
    );
    let err = refused(probes(2, "r", 0..2, 3)).await;
    assert!(
        err.message().contains("would have 10 relations")
            && err.message().contains("ingest.max_relations_per_agent"),
        "{err:?}"
    );
    // Within the budgets still works, and another agent has its own.
    let mut r = RawStream::open(&agg.endpoint(), &pki.client("agent-r"), 1)
        .await
        .unwrap()
        .unwrap();
    r.send(probes(2, "r", 4..5, 0)).await.unwrap();
    r.next_ack().await.unwrap();
    let mut s = RawStream::open(&agg.endpoint(), &pki.client("agent-s"), 0)
        .await
        .unwrap()
        .unwrap();
    s.send(probes(1, "s", 0..5, 1)).await.unwrap();
    s.next_ack().await.unwrap();
    let (_, page) = agg.get("/api/v1/resources?kind=tcp_probe");
    assert_eq!(
        page["resources"].as_array().map(Vec::len),
        Some(10),
        "{page}"
    );
    let (_, metrics) = agg.get_text("/metrics");
    let budget = counter(
        &metrics,
        "infrawatch_aggregator_refused_total",
        "reason=\"budget\"",
    );
    assert_eq!(budget, 3.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_per_identity_limit_are_closed() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-m", "agent-n"]).unwrap();
    let agg = Aggregator::start_sqlite(
        dir.path(),
        &pki,
        "[grpc]\nmax_connections_per_identity = 3\n",
    )
    .unwrap();
    let mut streams = Vec::new();
    let mut refused_streams = 0;
    for _ in 0..6u64 {
        match RawStream::open(&agg.endpoint(), &pki.client("agent-m"), 0).await {
            Ok(Ok(mut s)) => {
                s.send(many_series(1, "host/m", 0, 1)).await.ok();
                match s.next_ack().await {
                    Ok(_) => streams.push(s),
                    Err(_) => refused_streams += 1,
                }
            }
            _ => refused_streams += 1,
        }
    }
    assert_eq!(streams.len(), 3);
    assert_eq!(refused_streams, 3);
    // Another identity is not affected.
    let mut other = RawStream::open(&agg.endpoint(), &pki.client("agent-n"), 0)
        .await
        .unwrap()
        .unwrap();
    other.send(many_series(1, "host/n", 0, 1)).await.unwrap();
    other.next_ack().await.unwrap();
    // Each refused client was closed at least once (a channel may retry).
    let (_, metrics) = agg.get_text("/metrics");
    let closed = counter(
        &metrics,
        "infrawatch_aggregator_tls_refused_total",
        "connections_per_identity",
    );
    assert!(closed >= 3.0, "{closed}");
    // Closing a connection frees its place.
    drop(streams.pop());
    eventually(Duration::from_secs(10), "a place freed", || {
        let files = pki.client("agent-m");
        let endpoint = agg.endpoint();
        let opened = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().ok()?.block_on(async {
                let mut s = RawStream::open(&endpoint, &files, 0).await.ok()?.ok()?;
                s.send(many_series(1, "host/m", 0, 1)).await.ok()?;
                s.next_ack().await.ok()
            })
        });
        opened.join().ok().flatten().map(|_| ())
    });
}

/// Cumulative counts of an agent's acknowledgement latency histogram at level
/// `received` (send to the batch's first ack, whichever its level), by bucket
/// bound (seconds).
pub(crate) fn ack_buckets(agent: &Agent) -> Vec<(f64, u64)> {
    let (_, text) = http_get(agent.metrics, "/metrics").unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("infrawatch_agent_export_ack_latency_seconds_bucket{"))
        .filter_map(|l| {
            let (labels, count) = l.rsplit_once(' ')?;
            if !labels.contains("level=\"received\"") {
                return None;
            }
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// The smallest bucket bound under which 99 % of the acknowledgements between the
/// two snapshots of every agent fall.
pub(crate) fn p99_between(before: &[Vec<(f64, u64)>], after: &[Vec<(f64, u64)>]) -> f64 {
    let mut delta: BTreeMap<u64, u64> = BTreeMap::new();
    for (b, a) in before.iter().zip(after) {
        for (le, count) in a {
            let earlier = b.iter().find(|(l, _)| l == le).map_or(0, |(_, c)| *c);
            *delta.entry(le.to_bits()).or_insert(0) += count - earlier;
        }
    }
    let mut bounds: Vec<(f64, u64)> = delta
        .into_iter()
        .map(|(bits, n)| (f64::from_bits(bits), n))
        .collect();
    bounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = bounds.last().map_or(0, |b| b.1);
    assert!(total > 0, "no acknowledgements between the snapshots");
    bounds
        .iter()
        .find(|(_, n)| *n as f64 >= 0.99 * total as f64)
        .map_or(f64::INFINITY, |b| b.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_client_does_not_hurt_honest_agents() {
    super::init();
    let _heavy = infrawatch_e2e::HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut names: Vec<String> = (0..10).map(|i| format!("honest-{i}")).collect();
    // The hostile client: one identity per behaviour, so that the connection
    // flood (which the per-identity limit stops) does not starve the others.
    for hostile in ["mallory", "bloater", "sloth", "flooder"] {
        names.push(hostile.into());
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = Pki::new(dir.path(), &refs).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let endpoints = [agg.endpoint()];
    let (agents, hosts) = start_fleet(
        dir.path(),
        &pki,
        &names[..10],
        &endpoints,
        HONEST_INTERVAL_MS,
        0x0bad_c0de_0000,
        "honest",
    );
    for a in &agents {
        wait_drained(a);
    }
    // Ten seconds without the hostile client, for comparison.
    let quiet: Vec<_> = agents.iter().map(ack_buckets).collect();
    std::thread::sleep(Duration::from_secs(10));
    let before: Vec<_> = agents.iter().map(ack_buckets).collect();
    let baseline = p99_between(&quiet, &before);
    let rss_before = rss_kib(agg.process.pid());
    let start = now();
    let hostile_for = Duration::from_secs(30);
    let until = Instant::now() + hostile_for;
    let mut tasks = tokio::task::JoinSet::new();
    // Every hostile task is spawned on the attacker's runtime.
    let attacker = attacker_runtime();
    let attacking = attacker.enter();

    // Garbage bytes where a TLS handshake should be.
    let grpc = agg.grpc;
    tasks.spawn(async move {
        let mut n = 0u64;
        while Instant::now() < until {
            if let Ok(mut tcp) = tokio::net::TcpStream::connect(grpc).await {
                let junk: Vec<u8> = (0..4096).map(|i| (i * 7919 % 251) as u8).collect();
                let _ = tcp.write_all(&junk).await;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        format!("garbage connections: {n}")
    });
    // Garbage protobuf and decompression bombs over valid mTLS.
    let files = pki.client("mallory");
    tasks.spawn({
        let files = files.clone();
        async move {
            let (mut garbage, mut bombs) = (0u64, 0u64);
            let bomb = Bytes::from(rawgrpc::gzip_bomb(1024).unwrap());
            let junk = rawgrpc::frame(false, &[0xff; 1000]).unwrap();
            while Instant::now() < until {
                let a = rawgrpc::call(grpc, &files, REPORT, &[], junk.clone()).await;
                assert!(
                    a.as_ref().map(|a| a.status != Some(0)).unwrap_or(true),
                    "garbage accepted: {a:?}"
                );
                garbage += 1;
                let framed = rawgrpc::frame(true, &bomb).unwrap();
                let a =
                    rawgrpc::call(grpc, &files, REPORT, &[("grpc-encoding", "gzip")], framed).await;
                if let Ok(a) = a {
                    assert_eq!(a.status, Some(12), "bomb: {a:?}");
                }
                bombs += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            format!("garbage messages: {garbage}, bombs: {bombs}")
        }
    });
    // Oversized messages (over the 4 MiB limit) and thousands of new series.
    let endpoint = agg.endpoint();
    tasks.spawn({
        let files = pki.client("bloater");
        let endpoint = endpoint.clone();
        async move {
            let (mut oversized, mut refused_samples, mut seq) = (0u64, 0u64, 0u64);
            // About 7 MiB encoded, over the 4 MiB message limit.
            let oversized_batch = many_series(0, "host/bloater", 0, 250_000);
            while Instant::now() < until {
                if let Ok(Ok(mut s)) = RawStream::open(&endpoint, &files, seq).await {
                    seq += 1;
                    let mut big = oversized_batch.clone();
                    big.seq = seq;
                    let _ = s.send(big).await;
                    assert!(
                        s.next_ack().await.is_err(),
                        "an oversized batch was accepted"
                    );
                    oversized += 1;
                }
                if let Ok(Ok(mut s)) = RawStream::open(&endpoint, &files, seq).await {
                    for _ in 0..5 {
                        seq += 1;
                        let first = (seq as usize) * 5000;
                        if s.send(many_series(seq, "host/bloater", first, 5000))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        match s.next_ack().await {
                            Ok(ack) => {
                                refused_samples +=
                                    ack.refused.iter().map(|r| r.samples).sum::<u64>()
                            }
                            Err(_) => break,
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(
                refused_samples > 0,
                "the series budget never refused anything"
            );
            format!("oversized: {oversized}, samples refused: {refused_samples}")
        }
    });
    // A slow reader: batches sent, acknowledgements never read; and an event
    // stream never read.
    tasks.spawn({
        let files = pki.client("sloth");
        let endpoint = endpoint.clone();
        let rest = agg.rest;
        async move {
            let mut sse = std::net::TcpStream::connect(rest).unwrap();
            sse.write_all(
                b"GET /api/v1/events/stream HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
            )
            .unwrap();
            let mut sent = 0u64;
            if let Ok(Ok(s)) = RawStream::open(&endpoint, &files, 1_000_000).await {
                let mut seq = 1_000_000u64;
                while Instant::now() < until {
                    seq += 1;
                    let send = s.send(many_series(seq, "host/sloth", 0, 10));
                    match tokio::time::timeout(Duration::from_millis(500), send).await {
                        Ok(Ok(())) => sent += 1,
                        Ok(Err(_)) => break,
                        Err(_) => {} // flow control holds the slow stream back
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                drop(s);
            }
            drop(sse);
            format!("slow reader batches sent: {sent}")
        }
    });
    // A connection flood with one identity.
    tasks.spawn({
        let files = pki.client("flooder");
        let endpoint = endpoint.clone();
        async move {
            let mut held = Vec::new();
            let mut opened = 0u64;
            for _ in 0..200 {
                if let Ok(c) = channel(&endpoint, &files).await {
                    held.push(c);
                    opened += 1;
                }
            }
            tokio::time::sleep_until(until.into()).await;
            format!("flood connections opened: {opened}")
        }
    });
    drop(attacking);
    while let Some(done) = tasks.join_next().await {
        eprintln!("hostile: {}", done.unwrap());
    }
    attacker.shutdown_background();
    let end = now();
    let after: Vec<_> = agents.iter().map(ack_buckets).collect();
    let worst = p99_between(&before, &after);
    let rss_after = rss_kib(agg.process.pid());

    for a in &agents {
        wait_drained(a);
    }
    let mut total = 0;
    let mut per_host = BTreeMap::new();
    for machine_id in &hosts {
        let samples = uptime_samples_of(&agg, machine_id, start, end);
        let (silence, at) = longest_silence(&samples);
        assert!(
            silence < 1_500,
            "host {machine_id}: {silence} ms without samples from {at}"
        );
        assert!(
            samples.values().all(|n| *n == 1),
            "host {machine_id}: samples stored twice"
        );
        total += samples.len();
        per_host.insert(machine_id.clone(), samples.len());
    }
    let (_, gaps) = agg.get("/api/v1/gaps");
    assert_eq!(gaps["gaps"], serde_json::json!([]), "nothing was lost");
    assert!(
        worst <= HONEST_P99_BOUND_S,
        "honest acknowledgement p99 {worst} s over {HONEST_P99_BOUND_S} s (alone: {baseline} s)"
    );
    let (code, _) = http_get(agg.rest, "/readyz").unwrap();
    assert_eq!(code, 200);
    let (_, metrics) = agg.get_text("/metrics");
    assert!(
        counter(
            &metrics,
            "infrawatch_aggregator_tls_refused_total",
            "connections_per_identity"
        ) > 0.0
    );
    eprintln!(
        "RELIABILITY hostile-client-ten-honest-agents: hostile_for={hostile_for:?} \
         honest_stored={total} lost=0 duplicated=0 honest_ack_p99_at_most={worst}s (alone {baseline}s) \
         aggregator_rss_kib={rss_before}->{rss_after}"
    );
    let _ = std::io::stderr().flush();
}
