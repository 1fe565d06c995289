//! Certificate rotation under load: the aggregator's certificate is replaced on
//! disk while an agent streams (no stream error, new connections see the new
//! certificate, no restart); then the whole PKI moves to a new CA: clients of the
//! old CA are refused on their next connection, and the running agent, whose
//! files were rotated too, reconnects with its new certificate without a restart.

use std::path::Path;
use std::time::Duration;

use infrawatch_common::certs::{DevCa, DevPki};
use infrawatch_common::tls::TlsFiles;
use infrawatch_e2e::{Agent, Aggregator, Pki, RawStream, batch, eventually};

/// The certificate the server presents to a new connection (DER).
async fn served_certificate(addr: std::net::SocketAddr, files: &TlsFiles) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    let config = infrawatch_e2e::rawgrpc::client_config(files).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn first_der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn write(path: &Path, pem: &str) {
    // Replace atomically, as certificate managers do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pem).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn stream_errors(agent: &Agent) -> usize {
    agent
        .process
        .log_text()
        .matches("Stream to aggregator ended")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_without_restarts() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-rot", "old-client"]).unwrap();
    let mut agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let mut agent = Agent::start(dir.path(), &pki, "agent-rot", &[agg.endpoint()], 200).unwrap();
    let host = format!(
        "/api/v1/resources/host/{}",
        std::fs::read_to_string("/etc/machine-id").unwrap().trim()
    );
    let version = |agg: &Aggregator| agg.get(&host).1["observed_at_unix_ms"].as_i64();
    eventually(Duration::from_secs(15), "the agent streaming", || {
        version(&agg)
    });
    let pid = agent.process.pid();

    // 1. A new server certificate from the same CA, written while the agent streams.
    let ca = DevCa::from_pem(
        std::fs::read_to_string(pki.trusted.ca_cert()).unwrap(),
        std::fs::read_to_string(pki.trusted.ca_key()).unwrap(),
    )
    .unwrap();
    let renewed = ca.issue_server(&[]).unwrap();
    write(&pki.trusted.key("server"), &renewed.key_pem);
    write(&pki.trusted.cert("server"), &renewed.cert_pem);
    let client = pki.client("old-client");
    eventually(
        Duration::from_secs(10),
        "the renewed certificate served",
        || {
            let served = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(served_certificate(agg.grpc, &client))
            });
            (served == first_der(&renewed.cert_pem)).then_some(())
        },
    );
    let before = version(&agg).unwrap();
    eventually(Duration::from_secs(10), "data still flowing", || {
        (version(&agg)? > before + 1000).then_some(())
    });
    assert_eq!(
        stream_errors(&agent),
        0,
        "the established stream was not disturbed"
    );

    // 2. A new CA for everything: the aggregator's and the agent's files are
    // replaced; a restart of the aggregator makes the agent reconnect.
    let new_pki = DevPki::new(dir.path().join("new-ca"));
    let new_ca = new_pki.ensure_ca().unwrap();
    let server = new_ca.issue_server(&[]).unwrap();
    let agent_cert = new_ca
        .issue_client("agent-rot", infrawatch_common::role::Role::Agent)
        .unwrap();
    write(&pki.trusted.ca_cert(), new_ca.cert_pem());
    write(&pki.trusted.key("agent-rot"), &agent_cert.key_pem);
    write(&pki.trusted.cert("agent-rot"), &agent_cert.cert_pem);
    write(&pki.trusted.key("server"), &server.key_pem);
    write(&pki.trusted.cert("server"), &server.cert_pem);
    agg = agg.restart(dir.path()).unwrap();
    let after_switch = infrawatch_common::time::now_unix_ms();
    eventually(
        Duration::from_secs(20),
        "the agent back with its new certificate",
        || (version(&agg)? > after_switch).then_some(()),
    );
    assert_eq!(agent.process.pid(), pid, "the agent was not restarted");
    assert!(agent.process.is_running());

    // A client of the old CA is refused on its next connection.
    let old = pki.client("old-client");
    let refused = match RawStream::open(&agg.endpoint(), &old, 0).await {
        Err(_) | Ok(Err(_)) => true,
        Ok(Ok(mut s)) => {
            let now = infrawatch_common::time::now_unix_ms();
            s.send(batch(1, "host/old", "system.cpu.utilization", 0.1, now))
                .await
                .is_err()
                || s.next_ack().await.is_err()
        }
    };
    assert!(refused, "a certificate of the replaced CA must be refused");
    // The server logs the refusal after telling the client, so it may come a
    // moment later.
    eventually(Duration::from_secs(5), "the refusal logged", || {
        agg.process
            .log_text()
            .contains("TLS handshake refused")
            .then_some(())
    });
    assert!(agent.process.stop().unwrap().success());
    eprintln!(
        "RELIABILITY certificate-rotation: stream_errors_during_renewal=0 agent_restarts=0 old_ca_client_refused=true"
    );
}
