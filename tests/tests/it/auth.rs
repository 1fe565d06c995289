//! Agents must present a certificate signed by the configured CA; anything else is
//! refused at the TLS layer and nothing of it is stored.

use std::time::Duration;

use infrawatch_common::tls::TlsFiles;
use infrawatch_e2e::{Aggregator, Pki, RawStream, batch, http_request_with};
use sqlx::Connection;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Opens a stream and sends one batch; Ok only if the batch was acknowledged.
async fn try_report(endpoint: &str, files: &TlsFiles, id: &str) -> Result<(), String> {
    let mut stream = match RawStream::open(endpoint, files, 0).await {
        Err(e) => return Err(format!("connect: {e:#}")),
        Ok(Err(status)) => return Err(format!("report: {status}")),
        Ok(Ok(s)) => s,
    };
    let now = infrawatch_common::time::now_unix_ms();
    stream
        .send(batch(1, id, "system.cpu.utilization", 0.5, now))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .next_ack()
        .await
        .map(|_| ())
        .map_err(|s| format!("ack: {s}"))
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
/// need none.
#[test]
fn rest_needs_a_known_bearer_token_in_any_case_of_the_scheme() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &[]).unwrap();
    let token = "e2e-token-0123456789abcdef";
    let agg =
        Aggregator::start_sqlite(dir.path(), &pki, &format!("[rest]\ntokens = [{token:?}]\n"))
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
