//! Status events end to end: the real aggregator publishing to a NATS JetStream
//! server and a Pulsar-protocol broker that the tests start (and kill) themselves,
//! the outbox on PostgreSQL while the broker is down, and the live and durable
//! event streams over gRPC and REST. Every delivery is checked per resource:
//! each version exactly once, in order, none missing.

use std::time::Duration;

use infrawatch_e2e::brokers::{Nats, PulsarLite, python};
use infrawatch_e2e::events::{
    Delivery, change_batch, read_jetstream, read_jetstream_with, read_sse, resource_ids,
};
use infrawatch_e2e::{Aggregator, Pki, RawStream, TestDatabase, eventually, http_request};
use infrawatch_proto::v1 as pb;
use infrawatch_proto::v1::event_service_client::EventServiceClient;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Sends `change_batch(seq, ids, seq)` for every seq in `seqs`, each acknowledged.
async fn send_changes(stream: &mut RawStream, ids: &[String], seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        stream.send(change_batch(seq, ids, seq)).await.unwrap();
        let ack = stream.next_ack().await.unwrap();
        assert_eq!((ack.seq, ack.duplicate), (seq, false));
    }
}

/// The value of a metric line with these labels in a Prometheus text page.
fn metric(agg: &Aggregator, name: &str, labels: &str) -> Option<f64> {
    let (_, text) = agg.get_text("/metrics");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{labels}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn nats_sink(url: &str, stream: &str) -> String {
    format!("[events.nats]\nurl = {url:?}\nstream = {stream:?}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_receives_every_change_in_order_across_a_broker_restart() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-e"]).unwrap();
    let mut nats = Nats::start(dir.path()).unwrap();
    let agg =
        Aggregator::start_sqlite(dir.path(), &pki, &nats_sink(&nats.url(), "IW_BURST")).unwrap();
    let ids = resource_ids("e", "burst", 25);
    let mut stream = RawStream::open(&agg.endpoint(), &pki.client("agent-e"), 0)
        .await
        .unwrap()
        .unwrap();
    send_changes(&mut stream, &ids, 1..=15).await;
    // The broker dies in the middle of the burst and comes back with its store.
    nats.kill();
    send_changes(&mut stream, &ids, 16..=30).await;
    nats.resume().unwrap();
    send_changes(&mut stream, &ids, 31..=40).await;

    let got = match read_jetstream(&nats.url(), "IW_BURST", 1000, Duration::from_secs(60)).await {
        Ok(got) => got,
        Err(e) => panic!(
            "{e:#}\naggregator log:\n{}\nevent metrics:\n{}",
            agg.process.log_text(),
            agg.get_text("/metrics")
                .1
                .lines()
                .filter(|l| l.contains("events_") && !l.contains("bucket"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    let delivery = Delivery::check(got);
    assert_eq!(delivery.duplicates, 0, "JetStream drops re-sent event ids");
    delivery.assert_complete(&ids, 40);
    eventually(Duration::from_secs(10), "publisher lag back to 0", || {
        (metric(
            &agg,
            "infrawatch_aggregator_events_lag_events",
            "{sink=\"nats\"}",
        ) == Some(0.0))
        .then_some(())
    });
}

/// The NATS sink over TLS with token authentication: a wrong token is reported
/// (and nothing is lost), the right one delivers.
#[tokio::test(flavor = "multi_thread")]
async fn nats_sink_uses_tls_and_a_token() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-t"]).unwrap();
    let cert = pki.trusted.cert("server").display().to_string();
    let key = pki.trusted.key("server").display().to_string();
    let nats = Nats::start_with(
        dir.path(),
        &[
            "--auth",
            "s3cret-nats-token",
            "--tls",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ],
    )
    .unwrap();
    let ca = pki.trusted.ca_cert();
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let sink = |token: &str| {
        format!(
            "[events.nats]\nurl = {url:?}\nstream = \"IW_TLS\"\ntoken = {token:?}\nca = {:?}\n",
            ca.display().to_string()
        )
    };
    let agg = Aggregator::start_sqlite(dir.path(), &pki, &sink("wrong-token")).unwrap();
    let ids = resource_ids("t", "tls", 5);
    let files = pki.client("agent-t");
    let mut stream = RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    send_changes(&mut stream, &ids, 1..=2).await;
    eventually(Duration::from_secs(20), "the refusal reported", || {
        let (_, ready) = agg.get("/readyz");
        let error = ready["event_sinks"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        (error.contains("authoriz") && ready["event_sinks"][0]["lag_events"] == 10).then_some(())
    });
    drop(stream);

    // Fixed configuration, same database: the waiting events go out.
    let config = agg.config.clone();
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("wrong-token", "s3cret-nats-token"),
    )
    .unwrap();
    let agg = agg.restart(dir.path()).unwrap();
    let mut stream = RawStream::open(&agg.endpoint(), &files, 2)
        .await
        .unwrap()
        .unwrap();
    send_changes(&mut stream, &ids, 3..=4).await;
    let options = async_nats::ConnectOptions::with_token("s3cret-nats-token".into())
        .add_root_certificates(ca.clone())
        .require_tls(true);
    let got = read_jetstream_with(options, &url, "IW_TLS", 20, Duration::from_secs(30))
        .await
        .unwrap();
    Delivery::check(got).assert_complete(&ids, 4);
}

/// The outbox on PostgreSQL: the broker is down while 1,000 state changes happen
/// (and the aggregator restarts in between); when it comes back, every event is
/// published once, in order per resource.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_keeps_events_while_the_broker_is_down() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-o"]).unwrap();
    let db = TestDatabase::create("outbox").await.unwrap();
    let mut nats = Nats::stopped(dir.path());
    let agg = Aggregator::start(
        dir.path(),
        &pki,
        &db.url,
        &nats_sink(&nats.url(), "IW_OUTBOX"),
    )
    .unwrap();
    let ids = resource_ids("o", "outage", 50);
    let files = pki.client("agent-o");
    let mut stream = RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    send_changes(&mut stream, &ids, 1..=10).await;
    drop(stream);
    let agg = agg.restart(dir.path()).unwrap();
    let mut stream = RawStream::open(&agg.endpoint(), &files, 10)
        .await
        .unwrap()
        .unwrap();
    send_changes(&mut stream, &ids, 11..=20).await;

    // Everything waits in the outbox, and the lag is reported.
    eventually(Duration::from_secs(10), "lag of 1000 events", || {
        (metric(
            &agg,
            "infrawatch_aggregator_events_lag_events",
            "{sink=\"nats\"}",
        ) == Some(1000.0))
        .then_some(())
    });
    let (code, ready) = agg.get("/readyz");
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["event_sinks"][0]["sink"], "nats");
    assert_eq!(ready["event_sinks"][0]["lag_events"], 1000);
    assert!(ready["event_sinks"][0]["last_error"].is_string(), "{ready}");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_outbox")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 1000);

    nats.resume().unwrap();
    let got = match read_jetstream(&nats.url(), "IW_OUTBOX", 1000, Duration::from_secs(60)).await {
        Ok(got) => got,
        Err(e) => panic!("{e:#}\naggregator log:\n{}", agg.process.log_text()),
    };
    let delivery = Delivery::check(got);
    assert_eq!(delivery.received, 1000, "each event published once");
    delivery.assert_complete(&ids, 20);
    eventually(
        Duration::from_secs(10),
        "the sink cursor at the head",
        || {
            let position: i64 = block_on(
                sqlx::query_scalar("SELECT position FROM event_cursors WHERE name = 'sink:nats'")
                    .fetch_one(&mut conn),
            )
            .unwrap();
            (position == 1000).then_some(())
        },
    );
    drop(agg);
    db.drop_now().await.unwrap();
}

/// Events through the Pulsar sink (the `pulsar` crate), consumed with the official
/// Apache Pulsar Python client over a Key_Shared subscription. Against
/// `pulsar-lite` the broker is killed and restarted mid-burst; with `PULSAR_URL`
/// set (e.g. `pulsar://127.0.0.1:6650` of a `pulsar standalone`) the same test
/// runs against that broker, without the kill.
#[tokio::test(flavor = "multi_thread")]
async fn pulsar_receives_every_change_in_order() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-p"]).unwrap();
    let real = std::env::var("PULSAR_URL").ok();
    let mut lite = match &real {
        Some(_) => None,
        None => Some(PulsarLite::start(dir.path()).unwrap()),
    };
    let url = real.clone().unwrap_or_else(|| lite.as_ref().unwrap().url());
    let topic = format!(
        "iw-e2e-{}-{}",
        std::process::id(),
        infrawatch_common::time::now_unix_ms()
    );
    // pulsar-lite ignores credentials; sending a token from a file still runs the
    // sink's token path. A real broker gets PULSAR_TOKEN.
    let token = std::env::var("PULSAR_TOKEN").ok();
    let token_file = dir.path().join("pulsar-token");
    std::fs::write(
        &token_file,
        token.as_deref().unwrap_or("eyJhbGciOiJIUzI1NiJ9.e2e.sig"),
    )
    .unwrap();
    let token_line = format!("token_file = {:?}\n", token_file.display().to_string());
    // A second sink at the same time: NATS gets the same events.
    let nats = Nats::start(dir.path()).unwrap();
    let agg = Aggregator::start_sqlite(
        dir.path(),
        &pki,
        &format!(
            "[events.pulsar]\nurl = {url:?}\ntopic = {topic:?}\nbatch_size = 20\ncompression = \"lz4\"\n{token_line}{}",
            nats_sink(&nats.url(), "IW_BOTH")
        ),
    )
    .unwrap();
    let ids = resource_ids("p", "pulsar", 20);
    let mut stream = RawStream::open(&agg.endpoint(), &pki.client("agent-p"), 0)
        .await
        .unwrap()
        .unwrap();
    send_changes(&mut stream, &ids, 1..=10).await;
    if let Some(lite) = lite.as_mut() {
        eventually(
            Duration::from_secs(20),
            "the first events published",
            || {
                (metric(
                    &agg,
                    "infrawatch_aggregator_events_published_total",
                    "{sink=\"pulsar\"}",
                ) >= Some(200.0))
                .then_some(())
            },
        );
        lite.kill();
    }
    send_changes(&mut stream, &ids, 11..=20).await;
    if let Some(lite) = lite.as_mut() {
        lite.resume().unwrap();
    }
    send_changes(&mut stream, &ids, 21..=30).await;
    eventually(Duration::from_secs(60), "every event published", || {
        (metric(
            &agg,
            "infrawatch_aggregator_events_lag_events",
            "{sink=\"pulsar\"}",
        ) == Some(0.0)
            && metric(&agg, "infrawatch_aggregator_events_head_position", "") == Some(600.0))
        .then_some(())
    });

    let full_topic = format!("persistent://public/default/{topic}");
    let mut args = vec![
        concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/pulsar_consume.py").to_string(),
        url.clone(),
        full_topic,
        "600".into(),
        "60".into(),
    ];
    args.extend(token);
    let out = std::process::Command::new(python())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut items = Vec::new();
    let mut batched = 0;
    // The client library logs to stdout too; the messages are the JSON lines.
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
    {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let payload: Vec<u8> = (0..m["payload_hex"].as_str().unwrap().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&m["payload_hex"].as_str().unwrap()[i..i + 2], 16).unwrap())
            .collect();
        let e =
            <pb::InfrastructureStatusUpdatedEvent as prost::Message>::decode(payload.as_slice())
                .unwrap();
        assert_eq!(
            m["key"],
            e.resource_id.as_str(),
            "message key = resource id"
        );
        assert_eq!(m["properties"]["event_id"], e.event_id.as_str());
        assert_eq!(
            m["event_time"].as_i64(),
            Some(e.observed_at_unix_ms),
            "event time = observed_at"
        );
        if m["batch_index"].as_i64().unwrap_or(-1) > 0 {
            batched += 1;
        }
        items.push((e.resource_id, e.resource_version));
    }
    assert!(batched > 0, "the producer batches messages");
    let delivery = Delivery::check(items);
    delivery.assert_complete(&ids, 30);
    // A receipt lost in the kill makes the publisher send that event again; the
    // broker has no deduplication here, so consumers drop it by
    // (resource_id, resource_version). At most the events in flight can repeat.
    assert!(
        delivery.duplicates <= 50,
        "{} duplicates",
        delivery.duplicates
    );
    let both = read_jetstream(&nats.url(), "IW_BOTH", 600, Duration::from_secs(30))
        .await
        .unwrap();
    Delivery::check(both).assert_complete(&ids, 30);
    if real.is_none() {
        eprintln!(
            "pulsar-lite: {} received, {} duplicates, {batched} in batches",
            delivery.received, delivery.duplicates
        );
    }
}

/// Live streams resume from a position without gaps or repeats; filters pick
/// health transitions; durable subscriptions keep their cursor across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn streams_resume_and_subscriptions_catch_up() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-w", "cli"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let ids = resource_ids("w", "watch", 5);
    let files = pki.client("agent-w");
    let mut stream = RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    let channel = infrawatch_e2e::channel(&agg.endpoint(), &pki.client("cli"))
        .await
        .unwrap();
    let mut events = EventServiceClient::new(channel.clone());

    // gRPC: from the beginning, read part, leave, resume after the last position.
    send_changes(&mut stream, &ids, 1..=4).await;
    let service = pb::EventFilter {
        kinds: vec!["service".into()],
        ..Default::default()
    };
    let mut watch = events
        .watch_events(pb::WatchEventsRequest {
            filter: Some(service.clone()),
            after_position: Some(0),
            subscription: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(watch.message().await.unwrap().unwrap());
    }
    drop(watch);
    send_changes(&mut stream, &ids, 5..=8).await;
    let last = seen.last().unwrap().position;
    let mut watch = events
        .watch_events(pb::WatchEventsRequest {
            filter: Some(service.clone()),
            after_position: Some(last),
            subscription: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..30 {
        seen.push(watch.message().await.unwrap().unwrap());
    }
    let positions: Vec<u64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=40).collect::<Vec<_>>(),
        "no gaps, no repeats"
    );
    let delivery = Delivery::check(seen.iter().map(|e| {
        let ev = e.event.as_ref().unwrap();
        (ev.resource_id.clone(), ev.resource_version)
    }));
    delivery.assert_complete(&ids, 8);

    // A position beyond the head is refused with a clear status.
    let err = events
        .watch_events(pb::WatchEventsRequest {
            after_position: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    let err = events
        .watch_events(pb::WatchEventsRequest {
            filter: Some(pb::EventFilter {
                transitions: vec!["became_sad".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // A transition filter: only the probe turning unhealthy comes through.
    let mut unhealthy = events
        .watch_events(pb::WatchEventsRequest {
            filter: Some(pb::EventFilter {
                transitions: vec!["became_unhealthy".into()],
                ..Default::default()
            }),
            after_position: None,
            subscription: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    for (seq, result) in [(9, "ok"), (10, "refused"), (11, "refused")] {
        let mut b = change_batch(seq, &[], 0);
        b.resources.push(pb::ResourceObservation {
            id: "probe/w/tcp/db".into(),
            kind: "tcp_probe".into(),
            interval_ms: infrawatch_common::resource::MAX_INTERVAL_MS,
            attributes: [("tcp.result".to_string(), result.to_string())].into(),
            ..Default::default()
        });
        stream.send(b).await.unwrap();
        assert_eq!(stream.next_ack().await.unwrap().seq, seq);
    }
    let e = tokio::time::timeout(Duration::from_secs(10), unhealthy.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ev = e.event.unwrap();
    assert_eq!(ev.resource_id, "probe/w/tcp/db");
    assert_eq!(ev.health, pb::Health::Unhealthy as i32);
    assert_eq!(ev.previous_health, pb::Health::Healthy as i32);
    assert_eq!(ev.changed, vec!["health", "reasons", "attributes"]);

    // REST page of events, protobuf JSON names.
    let (code, page) = agg.get("/api/v1/events?after=0&limit=5&kinds=service");
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 5);
    assert_eq!(page["events"][0]["position"], "1");
    assert_eq!(page["events"][0]["event"]["resourceVersion"], "1");
    assert_eq!(page["nextAfter"], "5");
    let (code, _) = agg.get("/api/v1/events?after=x");
    assert_eq!(code, 400);

    // SSE resumes after Last-Event-ID.
    let sse = read_sse(
        agg.rest,
        "/api/v1/events/stream?kinds=service",
        Some(37),
        3,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        sse.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![38, 39, 40]
    );
    assert_eq!(sse[0].1["position"], "38");

    // A durable subscription: created at the head, fed, acknowledged halfway, kept
    // across a restart, and read from its cursor.
    let body = r#"{"name":"alerting","filter":{"kinds":["service"]}}"#;
    let (code, created) =
        http_request(agg.rest, "POST", "/api/v1/subscriptions", Some(body)).unwrap();
    assert_eq!(code, 201, "{created}");
    let (code, _) = http_request(agg.rest, "POST", "/api/v1/subscriptions", Some(body)).unwrap();
    assert_eq!(code, 409);
    let (code, _) = http_request(
        agg.rest,
        "POST",
        "/api/v1/subscriptions",
        Some(r#"{"name":"a b"}"#),
    )
    .unwrap();
    assert_eq!(code, 400);
    let head: u64 = serde_json::from_str::<serde_json::Value>(&created).unwrap()["position"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    send_changes(&mut stream, &ids, 12..=13).await;
    let sub = read_sse(
        agg.rest,
        "/api/v1/events/stream?subscription=alerting",
        None,
        10,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(sub.len(), 10);
    assert_eq!(sub[0].0, head + 1);
    let acked = sub[4].0;
    let (code, after_ack) = http_request(
        agg.rest,
        "POST",
        "/api/v1/subscriptions/alerting/ack",
        Some(&format!(r#"{{"position":"{acked}"}}"#)),
    )
    .unwrap();
    assert_eq!(code, 200, "{after_ack}");

    drop(stream);
    let agg = agg.restart(dir.path()).unwrap();
    let (code, got) = agg.get("/api/v1/subscriptions/alerting");
    assert_eq!(code, 200);
    assert_eq!(got["position"], acked.to_string());
    let mut stream = RawStream::open(&agg.endpoint(), &files, 13)
        .await
        .unwrap()
        .unwrap();
    send_changes(&mut stream, &ids, 14..=14).await;
    let channel = infrawatch_e2e::channel(&agg.endpoint(), &pki.client("cli"))
        .await
        .unwrap();
    let mut events = EventServiceClient::new(channel);
    let mut resumed = events
        .watch_events(pb::WatchEventsRequest {
            subscription: "alerting".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut after_restart = Vec::new();
    for _ in 0..10 {
        after_restart.push(resumed.message().await.unwrap().unwrap().position);
    }
    let mut expected: Vec<u64> = sub[5..].iter().map(|(p, _)| *p).collect();
    expected.extend((1..=5).map(|i| sub[9].0 + i));
    assert_eq!(after_restart, expected, "the rest, then the new events");
    let listed = events
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.subscriptions.len(), 1);
    assert_eq!(listed.subscriptions[0].head_position, sub[9].0 + 5);
    let (code, _) =
        http_request(agg.rest, "DELETE", "/api/v1/subscriptions/alerting", None).unwrap();
    assert_eq!(code, 204);
    assert_eq!(agg.get("/api/v1/subscriptions/alerting").0, 404);
}
