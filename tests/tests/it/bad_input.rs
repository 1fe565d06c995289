//! Bad input gets a clear error and leaves the process serving: malformed REST
//! parameters, unknown ids, oversized or invalid gRPC messages, broken configs.

use std::process::Command;

use infrawatch_e2e::{Aggregator, Pki, RawStream, batch, binary, http_request_with};
use infrawatch_proto::v1::{Batch, DataGap, SampleColumns, SeriesDef};

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
    // One rule for `limit` on every paged endpoint (1 to 1000; absent is the
    // endpoint's default), and a parameter may be given only once.
    for path in [
        "/api/v1/resources",
        "/api/v1/gaps",
        "/api/v1/events",
        "/api/v1/events/dead-letters",
    ] {
        for limit in ["0", "1001", "-1", "many"] {
            assert_json_error(
                &agg,
                &format!("{path}?limit={limit}"),
                400,
                "invalid_argument",
                "limit",
            );
        }
        let (status, body) = agg.get(&format!("{path}?limit=1000"));
        assert_eq!(status, 200, "{path}: {body}");
        assert_json_error(
            &agg,
            &format!("{path}?limit=5&limit=6"),
            400,
            "invalid_argument",
            "more than once",
        );
    }

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

    // Gaps must describe the agent's own earlier batches, with counts they can
    // hold: a gap over all of time that lost every sample is refused, and so is
    // one batch's loss reported twice.
    let endless = DataGap {
        first_seq: 1,
        last_seq: 1,
        from_unix_ms: i64::MIN,
        to_unix_ms: i64::MAX,
        samples_lost: u64::MAX,
        batches_lost: 1,
        cause: "buffer_full".into(),
        exact: true,
    };
    let honest = DataGap {
        from_unix_ms: now - 60_000,
        to_unix_ms: now - 30_000,
        samples_lost: 120,
        ..endless.clone()
    };
    for (gaps, says) in [
        (vec![endless], "gap 0: time"),
        (
            vec![honest.clone(), honest],
            "gaps 0 and 1 both cover seq 1",
        ),
    ] {
        let mut gapped = RawStream::open(&agg.endpoint(), &pki.client("agent-bad"), 0)
            .await
            .unwrap()
            .unwrap();
        let mut b = batch(2, "host/bad", "system.cpu.utilization", 0.1, now);
        b.gaps = gaps;
        gapped.send(b).await.unwrap();
        let status = gapped.next_ack().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(says),
            "{status:?} should say {says}"
        );
    }

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

/// A data gap reported again (in a later batch, or after a reconnect) is
/// neither stored nor published a second time; a new one is, within the
/// agent's budget of gaps per hour.
#[tokio::test(flavor = "multi_thread")]
async fn a_gap_reported_twice_is_stored_and_published_once() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-g"]).unwrap();
    let agg =
        Aggregator::start_sqlite(dir.path(), &pki, "[ingest]\nmax_gaps_per_hour = 2\n").unwrap();
    let now = infrawatch_common::time::now_unix_ms();
    let gap = |first_seq: u64, last_seq: u64| DataGap {
        first_seq,
        last_seq,
        from_unix_ms: now - 60_000,
        to_unix_ms: now - 30_000,
        samples_lost: 10,
        batches_lost: last_seq - first_seq + 1,
        cause: "buffer_full".into(),
        exact: true,
    };
    let send = |stream_seq: u64, seq: u64, gaps: Vec<DataGap>| {
        let files = pki.client("agent-g");
        let endpoint = agg.endpoint();
        async move {
            let mut s = RawStream::open(&endpoint, &files, stream_seq)
                .await
                .unwrap()
                .unwrap();
            let mut b = batch(seq, "host/g", "system.cpu.utilization", 0.1, now);
            b.gaps = gaps;
            s.send(b).await.unwrap();
            assert_eq!(s.next_ack().await.unwrap().seq, seq);
        }
    };
    send(2, 3, vec![gap(1, 2)]).await;
    // The same loss again in the next batch, and after a reconnect.
    send(3, 4, vec![gap(1, 2)]).await;
    send(4, 5, vec![gap(2, 2)]).await;
    // A new loss is stored; past the hour's budget (2) one is not.
    send(6, 7, vec![gap(6, 6)]).await;
    send(8, 9, vec![gap(8, 8)]).await;
    let (_, gaps) = agg.get("/api/v1/gaps");
    let ranges: Vec<(String, String)> = gaps["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["firstSeq"].as_str().unwrap_or_default().to_string(),
                g["lastSeq"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(ranges.len(), 2, "{gaps}");
    let (_, events) = agg.get("/api/v1/events?after=0&limit=1000&kinds=host");
    let published = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["event"]["changed"]
                .as_array()
                .is_some_and(|c| c.contains(&serde_json::json!("data_gap")))
        })
        .count();
    assert_eq!(published, 2, "{events}");
    let (_, metrics) = agg.get_text("/metrics");
    assert!(
        metrics.contains("infrawatch_aggregator_gaps_repeated_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("infrawatch_aggregator_refused_total{reason=\"budget\"} 1"),
        "{metrics}"
    );
}

/// REST requests too large in any part are answered with the JSON error (414,
/// 431, 413), and a client that does not finish its request head in time is
/// disconnected and counted; the server keeps serving.
#[test]
fn oversized_and_slow_rest_requests_get_the_json_error_or_are_closed() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &[]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "[rest]\nheader_read_timeout_ms = 1000\n")
        .unwrap();
    let addr = agg.rest;
    let request = |path: &str, headers: &[&str]| {
        let (status, body) = http_request_with(addr, "GET", path, headers, None).unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    let long_uri = format!("/api/v1/resources?label={}", "a".repeat(9000));
    let (status, body) = request(&long_uri, &[]);
    assert_eq!(
        (status, &body["error"]["code"]),
        (414, &"uri_too_long".into()),
        "{body}"
    );
    let padding = format!("X-Padding: {}", "b".repeat(17_000));
    let (status, body) = request("/api/v1/status", &[&padding]);
    assert_eq!(
        (status, &body["error"]["code"]),
        (431, &"headers_too_large".into()),
        "{body}"
    );
    // A body declared larger than the limit is refused before it is read.
    let (status, body) = http_request_with(
        addr,
        "POST",
        "/api/v1/subscriptions",
        &["Content-Length: 100000"],
        None,
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &"body_too_large".into()),
        "{body}"
    );

    // A keep-alive connection that was served and then idles past the deadline
    // is closed quietly (not counted as a refusal).
    {
        use std::io::{Read, Write};
        let mut idle = std::net::TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut raw = Vec::new();
        let mut chunk = [0u8; 1024];
        // The response, then the close after the idle deadline.
        loop {
            match idle.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("an idle keep-alive connection was not closed: {e}"),
            }
        }
        assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    }

    // Half a request head, then silence: closed after the deadline, unanswered.
    let started = std::time::Instant::now();
    {
        use std::io::{Read, Write};
        let mut half = std::net::TcpStream::connect(addr).unwrap();
        half.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        half.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = half.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "a half request was answered {answer:?}"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900)
            && waited < std::time::Duration::from_secs(9),
        "closed after {waited:?}"
    );
    let (status, metrics) = agg.get_text("/metrics");
    assert_eq!(status, 200);
    let timeouts: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("infrawatch_aggregator_refused_total{reason=\"header_timeout\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    assert_eq!(timeouts, 1.0, "{metrics}");
    let errors: f64 = ["uri_too_long", "headers_too_large", "body_too_large"]
        .iter()
        .filter_map(|code| {
            metrics.lines().find_map(|l| {
                l.strip_prefix(&format!(
                    "infrawatch_aggregator_rest_errors_total{{code=\"{code}\"}} "
                ))?
                .parse::<f64>()
                .ok()
            })
        })
        .sum();
    assert_eq!(errors, 3.0, "{metrics}");
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
            "[rest]\ntokens = [\"a-token-in-clear-0123456789\"]\n",
            &[],
            "rest.tokens",
        ),
        (
            "infrawatch-aggregator",
            "[[rest.tokens]]\nname = \"ci\"\nrole = \"reader\"\nhash = \"a-token-in-clear-0123456789\"\n",
            &[],
            "`rest.tokens[0].hash`: must be sha256:<salt hex>:<digest hex>",
        ),
        (
            "infrawatch-aggregator",
            "[[rest.tokens]]\nname = \"ci\"\nrole = \"agent\"\nhash = \"sha256:00112233445566778899aabbccddeeff:0011223344556677889900112233445566778899001122334455667788990011\"\n",
            &[],
            "rest.tokens[0].role",
        ),
        (
            "infrawatch-aggregator",
            "[[rest.tokens]]\nname = \"ops\"\nrole = \"admin\"\nnamespaces = [\"payments\"]\nhash = \"sha256:00112233445566778899aabbccddeeff:0011223344556677889900112233445566778899001122334455667788990011\"\n",
            &[],
            "rest.tokens[0].namespaces",
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
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-v"]).unwrap();
    let (code, stderr) = run_with(
        "infrawatch-aggregator",
        &format!(
            "[storage]\nurl = \"sqlite::memory:\"\n{}",
            tls_section("grpc.tls", &pki.server())
        ),
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
}

fn tls_section(table: &str, files: &infrawatch_common::tls::TlsFiles) -> String {
    format!(
        "[{table}]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        files.ca.display().to_string(),
        files.cert.display().to_string(),
        files.key.display().to_string()
    )
}

/// `validate` checks what start-up needs from the machine, and names every
/// problem at once: certificate files that are missing or do not belong
/// together, a database or state directory that cannot be written, files the
/// event sinks read, URLs that do not parse. Start-up refuses the same
/// configuration the same way.
#[test]
fn validate_checks_the_files_and_directories_start_up_needs() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-v"]).unwrap();
    let server = pki.server();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "x").unwrap();

    let missing_cert = infrawatch_common::tls::TlsFiles {
        cert: dir.path().join("missing.pem"),
        ..server.clone()
    };
    let swapped_key = infrawatch_common::tls::TlsFiles {
        key: server.cert.clone(),
        ..server.clone()
    };
    // (binary, configuration, what stderr must name)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "infrawatch-aggregator",
            format!(
                "[storage]\nurl = \"sqlite::memory:\"\n{}",
                tls_section("grpc.tls", &missing_cert)
            ),
            vec!["grpc.tls.cert", "missing.pem"],
        ),
        (
            "infrawatch-aggregator",
            format!(
                "[storage]\nurl = \"sqlite::memory:\"\n{}",
                tls_section("grpc.tls", &swapped_key)
            ),
            vec!["grpc.tls"],
        ),
        (
            "infrawatch-aggregator",
            format!(
                "[storage]\nurl = \"sqlite:\"\n{}",
                tls_section("grpc.tls", &server)
            ),
            vec!["storage.url", "names no database file"],
        ),
        (
            "infrawatch-aggregator",
            format!(
                "[storage]\nurl = \"sqlite://{}/sub/iw.db\"\n{}",
                a_file.display(),
                tls_section("grpc.tls", &server)
            ),
            vec!["storage.url", "is not a directory"],
        ),
        (
            "infrawatch-aggregator",
            format!(
                "[storage]\nurl = \"sqlite::memory:\"\n{}[events.nats]\nurl = \"nats://host:notaport\"\n[events.pulsar]\nurl = \"pulsar://127.0.0.1:6650\"\ntoken_file = \"{}/no-token\"\n",
                tls_section("grpc.tls", &server),
                dir.path().display()
            ),
            vec!["events.nats.url", "events.pulsar.token_file", "no-token"],
        ),
        (
            "infrawatch-agent",
            format!(
                "state_dir = \"{}/state\"\n{}",
                a_file.display(),
                tls_section("aggregator.tls", &missing_cert)
            ),
            vec!["state_dir", "is not a directory", "aggregator.tls.cert"],
        ),
    ];
    for (bin, config, names) in &cases {
        let (code, stderr) = run_with(bin, config, &[]);
        assert_eq!(code, Some(64), "{bin} with {config:?}: {stderr}");
        for name in names {
            assert!(
                stderr.contains(name),
                "{bin} with {config:?}: stderr {stderr:?} should name {name}"
            );
        }
    }
    // A good agent configuration passes.
    let (code, stderr) = run_with(
        "infrawatch-agent",
        &format!(
            "state_dir = \"{}/state\"\n{}",
            dir.path().display(),
            tls_section("aggregator.tls", &pki.client("agent-v"))
        ),
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    // Start-up refuses what validate refuses, with the same message.
    let config = dir.path().join("start.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nurl = \"sqlite::memory:\"\n{}",
            tls_section("grpc.tls", &missing_cert)
        ),
    )
    .unwrap();
    let out = Command::new(binary("infrawatch-aggregator"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("grpc.tls.cert"), "{stderr}");
}
