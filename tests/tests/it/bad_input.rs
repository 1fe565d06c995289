//! Bad input gets a clear error and leaves the process serving: malformed REST
//! parameters, unknown ids, oversized or invalid gRPC messages, broken configs.

use std::process::Command;

use infrawatch_e2e::{Aggregator, Pki, RawStream, batch, binary};
use infrawatch_proto::v1::{Batch, SampleColumns, SeriesDef};

fn assert_json_error(agg: &Aggregator, path: &str, status: u16, code: &str, mentions: &str) {
    let (got, body) = agg.get(path);
    assert_eq!(got, status, "{path}: {body}");
    assert_eq!(body["error"]["code"], code, "{path}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "{path}: message {message:?} should mention {mentions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_rest_parameters_are_400_and_unknown_ids_404() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-x"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let files = pki.client("agent-x");
    let mut s = RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    s.send(batch(
        1,
        "host/x",
        "system.cpu.utilization",
        0.5,
        infrawatch_common::time::now_unix_ms(),
    ))
    .await
    .unwrap();
    s.next_ack().await.unwrap();

    assert_json_error(
        &agg,
        "/api/v1/resources?limit=abc",
        400,
        "invalid_argument",
        "limit",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources?limit=5000",
        400,
        "invalid_argument",
        "limit",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources?limit=0",
        400,
        "invalid_argument",
        "limit",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources?health=sick",
        400,
        "invalid_argument",
        "health",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources?label=a%20b%3Dc",
        400,
        "invalid_argument",
        "label selector",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources?cursor=%21%21",
        400,
        "invalid_argument",
        "cursor",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources?colour=red",
        400,
        "invalid_argument",
        "colour",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources/host/x/metrics?name=m&from=yesterday",
        400,
        "invalid_argument",
        "from",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources/host/x/metrics?name=m&from=10&to=5",
        400,
        "invalid_argument",
        "from",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources/host/x/metrics?name=m&step=1&from=1&to=100000000",
        400,
        "invalid_argument",
        "step",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources/host/nope",
        404,
        "not_found",
        "host/nope",
    );
    assert_json_error(
        &agg,
        "/api/v1/resources/host/nope/metrics?name=m",
        404,
        "not_found",
        "host/nope",
    );
    assert_json_error(&agg, "/api/v2/anything", 404, "not_found", "endpoint");

    // Percent-encoded ids work too, and the server still serves.
    let (status, r) = agg.get("/api/v1/resources/host%2Fx");
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["id"], "host/x");
}

fn big_batch(seq: u64, samples: usize) -> Batch {
    let now = infrawatch_common::time::now_unix_ms();
    let mut b = batch(seq, "host/big", "system.cpu.utilization", 0.5, now);
    b.series = vec![SeriesDef {
        resource: 0,
        metric: 0,
        attributes: vec![],
    }];
    b.samples = Some(SampleColumns {
        series: vec![0; samples],
        time_offset_ms: (0..samples as i64).collect(),
        values: vec![0.25; samples],
    });
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_invalid_batches_end_only_their_own_stream() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-ok", "agent-big", "agent-bad"]).unwrap();
    let db = format!("sqlite://{}", dir.path().join("iw.db").display());
    let agg = Aggregator::start(
        dir.path(),
        &pki,
        &db,
        "[ingest]\nper_stream_in_flight = 4\n",
    )
    .unwrap();
    // The default limit is 4 MiB: send 6 MiB.
    let now = infrawatch_common::time::now_unix_ms();
    let mut ok = RawStream::open(&agg.endpoint(), &pki.client("agent-ok"), 0)
        .await
        .unwrap()
        .unwrap();
    ok.send(batch(1, "host/ok", "system.cpu.utilization", 0.1, now))
        .await
        .unwrap();
    assert_eq!(ok.next_ack().await.unwrap().seq, 1);

    let mut big = RawStream::open(&agg.endpoint(), &pki.client("agent-big"), 0)
        .await
        .unwrap()
        .unwrap();
    big.send(big_batch(1, 400_000)).await.unwrap();
    let status = big.next_ack().await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
        ),
        "oversized message: {status:?}"
    );
    assert!(
        status.message().contains("too large") || status.message().contains("length"),
        "{status:?}"
    );

    let mut bad = RawStream::open(&agg.endpoint(), &pki.client("agent-bad"), 0)
        .await
        .unwrap()
        .unwrap();
    let mut invalid = batch(1, "host/bad", "system.cpu.utilization", 0.1, now);
    invalid.series[0].metric = 42;
    bad.send(invalid).await.unwrap();
    let status = bad.next_ack().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("series[0] metric"), "{status:?}");

    // The healthy stream carries on.
    ok.send(batch(2, "host/ok", "system.cpu.utilization", 0.2, now + 1))
        .await
        .unwrap();
    assert_eq!(ok.next_ack().await.unwrap().seq, 2);
    let (_, page) = agg.get("/api/v1/resources");
    let ids: Vec<&str> = page["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["host/ok"]);
}

fn run_with(bin: &str, config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(binary(bin))
        .arg("--config")
        .arg(&path)
        .arg("validate")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn broken_configurations_exit_64_and_name_the_field() {
    // (binary, configuration file, environment, field the error must name)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            "infrawatch-aggregator",
            "[grpc]\nlisten = 12\n",
            &[],
            "grpc.listen",
        ),
        (
            "infrawatch-aggregator",
            "[storage]\nurl = \"mysql://db\"\n",
            &[],
            "storage.url",
        ),
        (
            "infrawatch-aggregator",
            "[rest]\nlisten = \"0.0.0.0:7080\"\n",
            &[],
            "rest.tokens",
        ),
        (
            "infrawatch-aggregator",
            "[health.cpu]\ndegraded = 0.99\nunhealthy = 0.5\n",
            &[],
            "health.cpu",
        ),
        (
            "infrawatch-aggregator",
            "[storage]\nurll = \"x\"\n",
            &[],
            "urll",
        ),
        (
            "infrawatch-aggregator",
            "",
            &[("INFRAWATCH_AGGREGATOR_INGEST__QUEUE_BATCHES", "many")],
            "ingest.queue_batches",
        ),
        (
            "infrawatch-agent",
            "[collectors.host]\ninterval_ms = \"often\"\nenabled = true\ndeadline_ms = 1\n",
            &[],
            "collectors.host.interval_ms",
        ),
        (
            "infrawatch-agent",
            "[aggregator]\nendpoints = [\"http://plain:80\"]\n",
            &[],
            "aggregator.endpoints[0]",
        ),
        (
            "infrawatch-agent",
            "",
            &[("INFRAWATCH_AGENT_BATCH__MAX_SAMPLES", "lots")],
            "batch.max_samples",
        ),
        ("infrawatch-agent", "this is not toml", &[], "config"),
    ];
    for (bin, config, env, field) in cases {
        let (code, stderr) = run_with(bin, config, env);
        assert_eq!(code, Some(64), "{bin} with {config:?}: {stderr}");
        assert!(
            stderr.contains(field),
            "{bin} with {config:?}: stderr {stderr:?} should name {field}"
        );
    }
    // A missing file is a usage error too, and a valid one passes.
    let out = Command::new(binary("infrawatch-agent"))
        .args(["--config", "/nonexistent.toml", "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let (code, stderr) = run_with(
        "infrawatch-aggregator",
        "[storage]\nurl = \"sqlite::memory:\"\n",
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
}
