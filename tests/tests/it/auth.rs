//! Who may do what: agents must present a certificate signed by the configured
//! CA (anything else is refused at the TLS layer and nothing of it is stored);
//! the role in a certificate or a token decides what it may call; a reader
//! keeps to its own subscriptions.

use std::time::Duration;

use infrawatch_aggregator::auth::tokens::TokenHash;
use infrawatch_common::role::Role;
use infrawatch_common::tls::TlsFiles;
use infrawatch_e2e::{Agent, Aggregator, Pki, RawStream, batch, binary, http_request_with};

use super::hostile::{HONEST_P99_BOUND_S, ack_buckets, counter, p99_between};
use infrawatch_proto::v1 as pb;
use infrawatch_proto::v1::event_service_client::EventServiceClient;
use infrawatch_proto::v1::query_service_client::QueryServiceClient;
use sqlx::Connection;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Opens a stream and sends one batch; Ok only if the batch was acknowledged.
async fn try_report(endpoint: &str, files: &TlsFiles, id: &str) -> Result<(), String> {
    let machine = infrawatch_e2e::machine_of(files).map_err(|e| e.to_string())?;
    try_report_as(endpoint, files, &machine, id).await
}

/// [`try_report`] announcing `machine` in `Hello`.
pub(crate) async fn try_report_as(
    endpoint: &str,
    files: &TlsFiles,
    machine: &str,
    id: &str,
) -> Result<(), String> {
    let mut stream = match RawStream::open_as(endpoint, files, 0, Some(machine)).await {
        Err(e) => return Err(format!("connect: {e:#}")),
        Ok(Err(status)) => return Err(format!("report: {status}")),
        Ok(Ok(s)) => s,
    };
    let now = infrawatch_common::time::now_unix_ms();
    let sent = stream
        .send(batch(1, id, "system.cpu.utilization", 0.5, now))
        .await;
    // A refused stream may end before the batch goes out: the status that
    // ended it says why, whichever came first.
    let acked = stream.next_ack().await;
    match (sent, acked) {
        (_, Err(status)) => Err(format!("ack: {status}")),
        (Err(e), Ok(_)) => Err(e.to_string()),
        (Ok(()), Ok(_)) => Ok(()),
    }
}

async fn stored_rows(db: &std::path::Path) -> (i64, i64, i64) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let count = |table: &'static str| format!("SELECT COUNT(*) FROM {table}");
    let mut out = [0i64; 3];
    for (i, t) in ["resources", "agent_cursors", "metric_rollups"]
        .into_iter()
        .enumerate()
    {
        out[i] = sqlx::query_scalar(sqlx::AssertSqlSafe(count(t)))
            .fetch_one(&mut conn)
            .await
            .unwrap();
    }
    (out[0], out[1], out[2])
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_ca_and_missing_certificates_are_refused_and_nothing_is_stored() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-good"]).unwrap();
    let db = dir.path().join("iw.db");
    let agg =
        Aggregator::start(dir.path(), &pki, &format!("sqlite://{}", db.display()), "").unwrap();

    // A certificate from another CA.
    let refused = try_report(&agg.endpoint(), &pki.intruder(), "host/intruder").await;
    assert!(refused.is_err(), "a foreign-CA client was accepted");

    // No client certificate at all.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(pki.trusted.ca_cert()).unwrap(),
        ))
        .domain_name("localhost");
    let no_cert = async {
        let channel = Endpoint::from_shared(agg.endpoint())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let mut q = infrawatch_proto::v1::query_service_client::QueryServiceClient::new(channel);
        q.get_summary(infrawatch_proto::v1::GetSummaryRequest {})
            .await?;
        anyhow::Ok(())
    }
    .await;
    assert!(no_cert.is_err(), "a client without certificate was served");

    // Nothing of either is visible or stored.
    let (_, page) = agg.get("/api/v1/resources");
    assert_eq!(
        page["resources"].as_array().map(Vec::len),
        Some(0),
        "{page}"
    );
    assert_eq!(stored_rows(&db).await, (0, 0, 0));

    // The same path with a trusted certificate works, so the refusals were about trust.
    try_report(&agg.endpoint(), &pki.client("agent-good"), "host/good")
        .await
        .unwrap();
    let (resources, cursors, rollups) = stored_rows(&db).await;
    assert_eq!((resources, cursors), (1, 1));
    assert!(rollups >= 1);
    let (_, r) = agg.get("/api/v1/resources/host/good");
    assert_eq!(r["source"], "agent-good");
}

/// With `rest.tokens` set, `/api/` and `/metrics` answer only a known bearer
/// token (the scheme in any case), with the JSON error otherwise; the probes
/// need none. Tokens are configured by their hashes.
#[test]
fn rest_needs_a_known_bearer_token_in_any_case_of_the_scheme() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &[]).unwrap();
    let token = "e2e-token-0123456789abcdef";
    let agg = Aggregator::start_sqlite(
        dir.path(),
        &pki,
        &format!("[rest]\n{}", token_entry("e2e", "reader", token)),
    )
    .unwrap();
    let get = |path: &str, authorization: Option<&str>| {
        let header = authorization.map(|a| format!("Authorization: {a}"));
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        http_request_with(agg.rest, "GET", path, &headers, None).unwrap()
    };
    let cases = [
        (None, 401),
        (Some("Bearer wrong-token-0123456789".to_string()), 401),
        (Some("Basic ZTJlOmUyZQ==".to_string()), 401),
        (Some(format!("Bearer {token}")), 200),
        (Some(format!("bearer {token}")), 200),
        (Some(format!("BEARER  {token}")), 200),
    ];
    for (authorization, expected) in &cases {
        for path in ["/api/v1/resources", "/metrics"] {
            let (status, body) = get(path, authorization.as_deref());
            assert_eq!(status, *expected, "{path} with {authorization:?}: {body}");
            if *expected == 401 {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["error"]["code"], "unauthenticated", "{body}");
            }
        }
    }
    assert_eq!(get("/healthz", None).0, 200);
    assert_eq!(get("/readyz", None).0, 200);
    // Each refusal is counted: three refused credentials on two paths.
    let (status, page) = get("/metrics", Some(&format!("Bearer {token}")));
    assert_eq!(status, 200);
    let refused = page
        .lines()
        .find(|l| {
            l.starts_with("infrawatch_aggregator_rest_errors_total{code=\"unauthenticated\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(refused, Some(6.0), "{page}");
}

/// A `[[rest.tokens]]` entry for `token`, by its hash.
fn token_entry(name: &str, role: &str, token: &str) -> String {
    let hash = TokenHash::new(token).unwrap();
    format!("[[rest.tokens]]\nname = {name:?}\nrole = {role:?}\nhash = \"{hash}\"\n")
}

/// The role in a certificate decides what it may call: an agent cannot query or
/// touch subscriptions, a reader or admin cannot report, a certificate whose
/// role URI is of another trust domain has no role; a reader sees and changes
/// only its own subscriptions, an admin every one. Each refusal names the role
/// and is counted; an honest agent beside keeps reporting.
#[tokio::test(flavor = "multi_thread")]
async fn roles_decide_what_a_certificate_may_call() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-honest", "agent-nosy"]).unwrap();
    let ca = pki.trusted.ensure_ca().unwrap();
    let elsewhere = ca
        .issue_client_in("elsewhere", "stranger", Role::Admin)
        .unwrap();
    std::fs::write(pki.trusted.cert("stranger"), &elsewhere.cert_pem).unwrap();
    std::fs::write(pki.trusted.key("stranger"), &elsewhere.key_pem).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let endpoint = agg.endpoint();
    try_report(&endpoint, &pki.client("agent-honest"), "host/honest")
        .await
        .unwrap();

    let query = |who: &'static str| {
        let endpoint = endpoint.clone();
        let files = pki.client(who);
        async move {
            let channel = infrawatch_e2e::channel(&endpoint, &files).await.unwrap();
            QueryServiceClient::new(channel)
                .get_summary(pb::GetSummaryRequest {})
                .await
        }
    };
    let events = |who: &'static str| {
        let endpoint = endpoint.clone();
        let files = pki.client(who);
        async move { EventServiceClient::new(infrawatch_e2e::channel(&endpoint, &files).await.unwrap()) }
    };

    // An agent may not query or read events.
    let denied = query("agent-nosy").await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("agent-nosy has the agent role, which may not query the model"),
        "{denied:?}"
    );
    let denied = events("agent-nosy")
        .await
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // Readers and admins may not report.
    for who in ["reader", "cli"] {
        let refused = try_report(&endpoint, &pki.client(who), &format!("host/{who}")).await;
        let err = refused.unwrap_err();
        assert!(
            err.contains("which may not report resources"),
            "{who}: {err}"
        );
    }

    // A role URI of another trust domain is no role here.
    let denied = query("stranger").await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("names no role of trust domain \"infrawatch\""),
        "{denied:?}"
    );

    // Readers query; a reader's subscriptions are its own.
    assert!(query("reader").await.is_ok());
    let mut reader = events("reader").await;
    let mut admin = events("cli").await;
    let create = |name: &str| pb::CreateSubscriptionRequest {
        name: name.into(),
        filter: None,
    };
    reader
        .create_subscription(create("readers-own"))
        .await
        .unwrap();
    admin.create_subscription(create("alerting")).await.unwrap();
    let names = |r: pb::ListSubscriptionsResponse| -> Vec<String> {
        r.subscriptions.into_iter().map(|s| s.name).collect()
    };
    let seen = reader
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(seen), vec!["readers-own"]);
    let denied = reader
        .ack_events(pb::AckEventsRequest {
            name: "alerting".into(),
            position: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("belongs to another client"),
        "{denied:?}"
    );
    let denied = reader
        .delete_subscription(pb::DeleteSubscriptionRequest {
            name: "alerting".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let denied = reader
        .watch_events(pb::WatchEventsRequest {
            subscription: "alerting".into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // The admin sees both and may delete the reader's.
    let seen = admin
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(seen), vec!["alerting", "readers-own"]);
    admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            name: "readers-own".into(),
        })
        .await
        .unwrap();

    // Counted by reason; the honest agent kept its data and still reports.
    let (_, page) = agg.get_text("/metrics");
    let refused = |reason: &str| {
        counter(
            &page,
            "infrawatch_aggregator_refused_total",
            &format!("reason=\"{reason}\""),
        )
    };
    assert_eq!(refused("role"), 5.0, "{page}");
    assert_eq!(refused("ownership"), 3.0, "{page}");
    try_report(&endpoint, &pki.client("agent-honest"), "host/honest")
        .await
        .unwrap();
    let (_, r) = agg.get("/api/v1/resources/host/honest");
    assert_eq!(r["source"], "agent-honest", "{r}");
}

/// Tokens carry roles too: a reader token keeps to its own subscriptions (403
/// on another's), an admin token made by `infrawatch token new` manages every
/// one; the owner is part of each subscription's JSON.
#[test]
fn tokens_carry_roles_and_readers_keep_to_their_own_subscriptions() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &[]).unwrap();
    let out = std::process::Command::new(binary("infrawatch"))
        .args(["token", "new", "--name", "ops", "--role", "admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let admin_token = printed
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string();
    let entry = printed
        .split_once("[[rest.tokens]]")
        .map(|(_, rest)| format!("[[rest.tokens]]{rest}"))
        .unwrap();
    assert!(
        !entry.contains(&admin_token),
        "the entry holds the token in clear"
    );
    let reader_token = "reader-token-0123456789abcdef";
    let agg = Aggregator::start_sqlite(
        dir.path(),
        &pki,
        &format!(
            "[rest]\n{}{entry}",
            token_entry("grafana", "reader", reader_token)
        ),
    )
    .unwrap();
    let call = |method: &str, path: &str, token: &str, body: Option<&str>| {
        let auth = format!("Authorization: Bearer {token}");
        let (status, body) =
            http_request_with(agg.rest, method, path, &[auth.as_str()], body).unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    let (status, mine) = call(
        "POST",
        "/api/v1/subscriptions",
        reader_token,
        Some(r#"{"name": "grafana-alerts"}"#),
    );
    assert_eq!(status, 201, "{mine}");
    assert_eq!(mine["owner"], "token:grafana");
    let (status, _) = call(
        "POST",
        "/api/v1/subscriptions",
        &admin_token,
        Some(r#"{"name": "slo"}"#),
    );
    assert_eq!(status, 201);
    let (_, listed) = call("GET", "/api/v1/subscriptions", reader_token, None);
    let listed: Vec<&str> = listed["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(listed, vec!["grafana-alerts"]);
    for (method, path, body) in [
        ("GET", "/api/v1/subscriptions/slo", None),
        ("DELETE", "/api/v1/subscriptions/slo", None),
        (
            "POST",
            "/api/v1/subscriptions/slo/ack",
            Some(r#"{"position": "0"}"#),
        ),
        ("GET", "/api/v1/events/stream?subscription=slo", None),
    ] {
        let (status, err) = call(method, path, reader_token, body);
        assert_eq!(status, 403, "{method} {path}: {err}");
        assert_eq!(err["error"]["code"], "permission_denied", "{err}");
    }
    let (status, _) = call(
        "DELETE",
        "/api/v1/subscriptions/grafana-alerts",
        &admin_token,
        None,
    );
    assert_eq!(status, 204);
}

/// One certificate speaks for one machine, pinned on its first stream, and a
/// machine is spoken for by one certificate; an agent reports its own host and
/// what hangs off it, nothing else, whatever the health or interval it claims.
/// An admin releases a binding. Every refusal names why and is counted; a real
/// agent streaming beside the attempts keeps its host, and its acknowledgement
/// p99 stays within the bound of the hostile scenario (2.5 s).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_speaks_only_for_its_own_machine() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(
        dir.path(),
        &["agent-a", "agent-b", "agent-c", "agent-honest"],
    )
    .unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let endpoint = agg.endpoint();
    // A real agent on this machine streams every 200 ms throughout.
    let honest = Agent::start(
        dir.path(),
        &pki,
        "agent-honest",
        std::slice::from_ref(&endpoint),
        200,
    )
    .unwrap();
    infrawatch_e2e::eventually(
        Duration::from_secs(20),
        "the honest agent acknowledged",
        || {
            infrawatch_e2e::http_get(honest.metrics, "/metrics").ok()?;
            ack_buckets(&honest)
                .last()
                .is_some_and(|(_, n)| *n > 0)
                .then_some(())
        },
    );
    let before = ack_buckets(&honest);
    let (a, b, c) = (
        pki.client("agent-a"),
        pki.client("agent-b"),
        pki.client("agent-c"),
    );
    try_report(&endpoint, &a, "host/a").await.unwrap();
    try_report(&endpoint, &b, "host/b").await.unwrap();

    // One certificate, another machine: refused.
    let err = try_report_as(&endpoint, &a, "b2", "host/b2")
        .await
        .unwrap_err();
    assert!(
        err.contains("certificate agent-a speaks for machine a, not b2"),
        "{err}"
    );
    // Another certificate for a's machine: refused, whatever it would say.
    let err = try_report_as(&endpoint, &c, "a", "host/a")
        .await
        .unwrap_err();
    assert!(
        err.contains("machine a is reported by certificate agent-a"),
        "{err}"
    );
    // b's own stream may not describe a's resources or squat new ids.
    for id in [
        "host/a",
        "probe/a/icmp/198.18.0.1",
        "host/never-seen",
        "service/x",
    ] {
        let err = try_report(&endpoint, &b, id).await.unwrap_err();
        assert!(
            err.contains(&format!("agent-b may not report {id}")),
            "{id}: {err}"
        );
    }
    // A never-stale claim does not exist either (interval 0 with a kind).
    let mut stream = RawStream::open(&endpoint, &b, 10).await.unwrap().unwrap();
    let mut forever = batch(
        11,
        "host/b",
        "system.cpu.utilization",
        0.5,
        infrawatch_common::time::now_unix_ms(),
    );
    forever.resources[0].interval_ms = 0;
    stream.send(forever).await.unwrap();
    let err = stream.next_ack().await.unwrap_err();
    assert!(
        err.message()
            .contains("interval_ms 0 must be 100 to 3600000"),
        "{err:?}"
    );

    let (_, host) = agg.get("/api/v1/resources/host/a");
    assert_eq!(host["source"], "agent-a", "{host}");
    let (_, page) = agg.get_text("/metrics");
    assert_eq!(
        counter(
            &page,
            "infrawatch_aggregator_refused_total",
            "reason=\"scope\""
        ),
        6.0,
        "{page}"
    );

    // The honest agent kept streaming, fast, and its host is its own.
    let acks = |buckets: &[(f64, u64)]| buckets.last().map_or(0, |b| b.1);
    let after = infrawatch_e2e::eventually(
        Duration::from_secs(20),
        "more acknowledgements of the honest agent",
        || {
            let now = ack_buckets(&honest);
            (acks(&now) >= acks(&before) + 3).then_some(now)
        },
    );
    let p99 = p99_between(&[before], &[after]);
    assert!(
        p99 <= HONEST_P99_BOUND_S,
        "honest acknowledgement p99 {p99} s"
    );
    let (_, hosts) = agg.get("/api/v1/resources?kind=host");
    let own: Vec<&serde_json::Value> = hosts["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["source"] == "agent-honest")
        .collect();
    // (Its health follows this machine's load, so it is not asserted.)
    assert_eq!(own.len(), 1, "{hosts}");

    // An admin releases a's binding: the machine may get a certificate of
    // another name, and a's certificate no longer speaks for it.
    let (status, body) = http_request_with(
        agg.rest,
        "DELETE",
        "/api/v1/agents/agent-a/machine",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(status, 204, "{body}");
    let (status, _) = http_request_with(
        agg.rest,
        "DELETE",
        "/api/v1/agents/agent-a/machine",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(status, 404);
    // c takes the machine over once host/a is no longer reported by a live
    // source: it is refused while a's host is fresh (ownership), bound though.
    let err = try_report_as(&endpoint, &c, "a", "host/a")
        .await
        .unwrap_err();
    assert!(
        err.contains("resource host/a is reported by agent-a"),
        "{err}"
    );
    let err = try_report(&endpoint, &a, "host/a").await.unwrap_err();
    assert!(
        err.contains("machine a is reported by certificate agent-c"),
        "{err}"
    );
}

/// Event streams are capped per client and in total: a reader's third gRPC
/// watch and any stream past the total are refused (`RESOURCE_EXHAUSTED`, 429
/// with the JSON error on REST) and counted; closing a stream frees its place.
#[tokio::test(flavor = "multi_thread")]
async fn event_streams_are_capped_per_client_and_in_total() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &[]).unwrap();
    let agg = Aggregator::start_sqlite(
        dir.path(),
        &pki,
        "[events]\nmax_streams_per_client = 2\nmax_streams = 3\n",
    )
    .unwrap();
    let endpoint = agg.endpoint();
    let watch = |who: &'static str| {
        let endpoint = endpoint.clone();
        let files = pki.client(who);
        async move {
            let channel = infrawatch_e2e::channel(&endpoint, &files).await.unwrap();
            EventServiceClient::new(channel)
                .watch_events(pb::WatchEventsRequest::default())
                .await
        }
    };
    let first = watch("reader").await.unwrap();
    let _second = watch("reader").await.unwrap();
    let err = watch("reader").await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("cert:reader already has 2 event streams open"),
        "{err:?}"
    );
    let _admin = watch("cli").await.unwrap();
    // The total is reached: a REST stream is refused with the JSON error.
    let (status, body) =
        http_request_with(agg.rest, "GET", "/api/v1/events/stream", &[], None).unwrap();
    assert_eq!(status, 429, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "resource_exhausted", "{body}");
    // Closing a stream frees its place.
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(s) = watch("reader").await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a closed stream's place was not freed");
    let (_, page) = agg.get_text("/metrics");
    assert!(
        counter(
            &page,
            "infrawatch_aggregator_refused_total",
            "reason=\"stream_cap\""
        ) >= 2.0,
        "{page}"
    );
}

/// A reader token restricted to one namespace sees nothing of another in any
/// endpoint: lists, single resources and their metrics, counts, event pages and
/// streams; what spans every namespace (agents, gaps, dead letters, the
/// aggregator's own metrics) is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_restricted_to_a_namespace_sees_nothing_of_another() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-k"]).unwrap();
    let token = "payments-token-0123456789";
    let admin = "admin-token-0123456789abcd";
    let config = format!(
        "[rest]\n{}namespaces = [\"payments\"]\n{}",
        token_entry("payments-team", "reader", token),
        token_entry("ops", "admin", admin)
    );
    let agg = Aggregator::start_sqlite(dir.path(), &pki, &config).unwrap();
    let now = infrawatch_common::time::now_unix_ms();
    let mut stream = RawStream::open(&agg.endpoint(), &pki.client("agent-k"), 0)
        .await
        .unwrap()
        .unwrap();
    let mut b = batch(1, "probe/k/pay", "probe.duration", 0.5, now);
    b.resources[0].kind = "tcp_probe".into();
    b.resources[0].labels = [("k8s.namespace.name".to_string(), "payments".to_string())].into();
    b.resources.push(pb::ResourceObservation {
        id: "probe/k/web".into(),
        kind: "tcp_probe".into(),
        interval_ms: 60_000,
        labels: [("k8s.namespace.name".to_string(), "web".to_string())].into(),
        ..Default::default()
    });
    stream.send(b).await.unwrap();
    stream.next_ack().await.unwrap();

    let call = |path: &str, who: &str| {
        let auth = format!("Authorization: Bearer {who}");
        let (status, body) =
            http_request_with(agg.rest, "GET", path, &[auth.as_str()], None).unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    let ids = |page: &serde_json::Value, key: &str, field: &str| -> Vec<String> {
        page[key]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.pointer(field)?.as_str().map(String::from))
            .collect()
    };
    let (_, all) = call("/api/v1/resources", admin);
    assert_eq!(
        ids(&all, "resources", "/id"),
        vec!["probe/k/pay", "probe/k/web"]
    );
    let (_, mine) = call("/api/v1/resources", token);
    assert_eq!(ids(&mine, "resources", "/id"), vec!["probe/k/pay"]);
    assert_eq!(call("/api/v1/resources/probe/k/pay", token).0, 200);
    assert_eq!(call("/api/v1/resources/probe/k/web", token).0, 404);
    assert_eq!(
        call(
            "/api/v1/resources/probe/k/web/metrics?name=probe.duration",
            token
        )
        .0,
        404
    );
    assert_eq!(
        call(
            "/api/v1/resources/probe/k/pay/metrics?name=probe.duration",
            token
        )
        .0,
        200
    );
    let (_, status) = call("/api/v1/status", token);
    assert_eq!(status["total_resources"], 1, "{status}");
    assert_eq!(status["connected_agents"], 0, "{status}");
    let (_, events) = call("/api/v1/events?after=0", admin);
    assert_eq!(
        ids(&events, "events", "/event/resourceId").len(),
        2,
        "{events}"
    );
    let (_, events) = call("/api/v1/events?after=0", token);
    assert_eq!(
        ids(&events, "events", "/event/resourceId"),
        vec!["probe/k/pay"],
        "{events}"
    );
    let streamed = infrawatch_e2e::events::read_sse_with(
        agg.rest,
        "/api/v1/events/stream?after=0",
        &[&format!("Authorization: Bearer {token}")],
        2,
        Duration::from_secs(2),
    )
    .unwrap();
    let streamed: Vec<&str> = streamed
        .iter()
        .filter_map(|(_, e)| e.pointer("/event/resourceId")?.as_str())
        .collect();
    assert_eq!(streamed, vec!["probe/k/pay"]);
    for path in [
        "/api/v1/agents",
        "/api/v1/gaps",
        "/api/v1/events/dead-letters",
        "/metrics",
    ] {
        let (status, body) = call(path, token);
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("restricted to namespaces [\"payments\"]"),
            "{path}: {body}"
        );
        assert_eq!(call(path, admin).0, 200, "{path}");
    }
}
