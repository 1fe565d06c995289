//! `event-bench`: events through the outbox to NATS JetStream on this machine.
//!
//! Starts a `nats-server` (JetStream) and the real aggregator (SQLite, or
//! PostgreSQL with `--postgres`), streams resource changes over mTLS gRPC as an
//! agent would, and reports:
//!
//! 1. latency at a steady rate (default 1,000 changes/s for 30 s): commit to the
//!    broker's acknowledgement (the aggregator's own histogram) and commit to a
//!    JetStream consumer receiving the event;
//! 2. throughput: events per second published when the outbox holds a backlog
//!    (the broker was down during a burst), and end to end with the broker up.
//!
//! Run with `make bench-events` (release build) or
//! `cargo run --release -p infrawatch-e2e --bin event-bench -- --help`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use infrawatch_e2e::brokers::Nats;
use infrawatch_e2e::events::{change_batch, resource_ids};
use infrawatch_e2e::{Aggregator, Pki, RawStream, TestDatabase};

struct Args {
    rate: u64,
    seconds: u64,
    burst: u64,
    postgres: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        rate: 1000,
        seconds: 30,
        burst: 50_000,
        postgres: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<u64> {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--rate" => a.rate = value()?,
            "--seconds" => a.seconds = value()?,
            "--burst" => a.burst = value()?,
            "--postgres" => a.postgres = true,
            "-h" | "--help" => {
                println!(
                    "event-bench [--rate CHANGES_PER_S (1000)] [--seconds S (30)] [--burst CHANGES (50000)] [--postgres]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(
        a.rate >= 10 && a.rate.is_multiple_of(10),
        "--rate must be a multiple of 10"
    );
    Ok(a)
}

/// Quantile `q` from Prometheus histogram lines `name_bucket{...,le="x"} count`,
/// interpolating linearly inside the bucket.
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    infrawatch_e2e::loadgen::histogram::bucket_quantile(buckets, q)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn metric_value(agg: &Aggregator, line_prefix: &str) -> Option<f64> {
    let (_, text) = agg.get_text("/metrics");
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_lag_zero(agg: &Aggregator, head: f64, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let lag = metric_value(
            agg,
            "infrawatch_aggregator_events_lag_events{sink=\"nats\"}",
        );
        let at = metric_value(agg, "infrawatch_aggregator_events_head_position");
        if lag == Some(0.0) && at == Some(head) {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "publisher did not catch up (lag {lag:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    infrawatch_common::install_crypto_provider();
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path(), &["bench-agent"])?;
    // JetStream with its default sync schedule, as deployed by default (the
    // tests make it fsync every message).
    let mut nats = Nats::stopped(dir.path());
    nats.sync_always = false;
    nats.resume()?;
    let sink = format!(
        "[events.nats]\nurl = {:?}\nstream = \"IW_BENCH\"\n",
        nats.url()
    );
    let db = if a.postgres {
        Some(TestDatabase::create("bench").await?)
    } else {
        None
    };
    let agg = match &db {
        Some(db) => Aggregator::start(dir.path(), &pki, &db.url, &sink)?,
        None => Aggregator::start_sqlite(dir.path(), &pki, &sink)?,
    };
    let per_batch = (a.rate / 10) as usize;
    let ids = resource_ids("bench-agent", "bench", per_batch);
    let mut stream = RawStream::open(&agg.endpoint(), &pki.client("bench-agent"), 0)
        .await?
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let mut seq = 0u64;
    let send = async |stream: &mut RawStream, seq: &mut u64| -> anyhow::Result<()> {
        *seq += 1;
        stream.send(change_batch(*seq, &ids, *seq)).await?;
        stream
            .next_ack()
            .await
            .map_err(|s| anyhow::anyhow!("{s}"))?;
        Ok(())
    };
    // Creates the resources and the stream before measuring.
    send(&mut stream, &mut seq).await?;
    wait_lag_zero(&agg, per_batch as f64, Duration::from_secs(30))?;

    // 1. Steady rate, a JetStream consumer timing arrival against emission.
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let consumer = js
        .get_stream("IW_BENCH")
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let expected = (a.rate * a.seconds) as usize;
    let consumer_task = tokio::spawn(async move {
        use prost::Message;
        let mut messages = consumer.messages().await?;
        let mut lat = Vec::with_capacity(expected);
        while lat.len() < expected {
            match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
                Ok(Some(Ok(m))) => {
                    let e = infrawatch_proto::v1::InfrastructureStatusUpdatedEvent::decode(
                        m.payload.as_ref(),
                    )?;
                    let now = infrawatch_common::time::now_unix_ms();
                    lat.push((now - e.emitted_at_unix_ms) as f64);
                }
                _ => break,
            }
        }
        anyhow::Ok(lat)
    });
    let (_, before) = agg.get_text("/metrics");
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..a.seconds * 10 {
        tick.tick().await;
        send(&mut stream, &mut seq).await?;
    }
    let steady = started.elapsed();
    let mut consumer_lat = consumer_task.await??;
    consumer_lat.sort_by(f64::total_cmp);
    let (_, after) = agg.get_text("/metrics");
    let name = "infrawatch_aggregator_events_publish_latency_seconds";
    // The histogram is cumulative: the steady phase is `after` minus `before`.
    let diff = subtract_histograms(&after, &before, name);
    println!(
        "# infrawatch event benchmark ({})",
        if a.postgres { "PostgreSQL" } else { "SQLite" }
    );
    println!(
        "steady: {} changes/s for {:.1} s, {} events received by the consumer",
        a.rate,
        steady.as_secs_f64(),
        consumer_lat.len()
    );
    for q in [0.5, 0.99, 0.999] {
        println!(
            "  commit -> broker ack   p{:<5} {:.2} ms",
            q * 100.0,
            histogram_quantile(&diff, name, q).unwrap_or(f64::NAN) * 1000.0
        );
    }
    for q in [0.5, 0.99, 0.999] {
        println!(
            "  change -> consumer     p{:<5} {:.0} ms (1 ms resolution; includes the database commit)",
            q * 100.0,
            percentile(&consumer_lat, q)
        );
    }

    // 2a. Backlog: the broker is down during a burst, then returns.
    nats.kill();
    let burst_batches = a.burst / per_batch as u64;
    let started = Instant::now();
    for _ in 0..burst_batches {
        send(&mut stream, &mut seq).await?;
    }
    let ingest = started.elapsed();
    let head = (seq * per_batch as u64) as f64;
    nats.resume()?;
    // The publisher retries with backoff (at most 5 s): time from its reconnect,
    // that is from the first event it publishes after the outage.
    let published = || {
        metric_value(
            &agg,
            "infrawatch_aggregator_events_published_total{sink=\"nats\"}",
        )
        .unwrap_or(0.0)
    };
    let before = published();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (start_count, reconnected) = loop {
        let now = published();
        if now > before {
            break (now, Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "publisher did not reconnect");
        std::thread::sleep(Duration::from_millis(1));
    };
    wait_lag_zero(&agg, head, Duration::from_secs(300))?;
    let drained = reconnected.elapsed();
    let backlog = published() - start_count;
    println!(
        "backlog: {} changes ingested in {:.2} s ({:.0} changes/s) with the broker down; \
         after it returned, {:.0} events published in {:.2} s: {:.0} events/s",
        a.burst,
        ingest.as_secs_f64(),
        a.burst as f64 / ingest.as_secs_f64(),
        backlog,
        drained.as_secs_f64(),
        backlog / drained.as_secs_f64()
    );

    // 2b. Live: a burst with the broker up, from the first send to the last ack.
    let started = Instant::now();
    for _ in 0..burst_batches {
        send(&mut stream, &mut seq).await?;
    }
    let head = (seq * per_batch as u64) as f64;
    wait_lag_zero(&agg, head, Duration::from_secs(300))?;
    let total = started.elapsed();
    println!(
        "live: {} changes from the first send to the broker's last ack in {:.2} s: {:.0} events/s",
        a.burst,
        total.as_secs_f64(),
        a.burst as f64 / total.as_secs_f64()
    );
    drop(stream);
    drop(agg);
    if let Some(db) = db {
        db.drop_now().await?;
    }
    Ok(())
}

/// `after - before` for every bucket, sum and count line of histogram `name`.
fn subtract_histograms(after: &str, before: &str, name: &str) -> String {
    let value = |text: &str, key: &str| -> f64 {
        text.lines()
            .find(|l| l.rsplit_once(' ').map(|(k, _)| k) == Some(key))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    after
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let (key, v) = l.rsplit_once(' ')?;
            let v: f64 = v.parse().ok()?;
            Some(format!("{key} {}", v - value(before, key)))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
