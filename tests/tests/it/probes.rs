//! DNS and TCP probes against real servers on loopback: dnsmasq with its own
//! records (an existing name, a missing one), a server that answers SERVFAIL, one
//! that never answers, an open and a closed TCP port. Each outcome must reach the
//! aggregator as a probe resource with its own health reason.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use infrawatch_e2e::{Agent, Aggregator, Pki, Process, eventually, free_port, machine_id};
use serde_json::Value;

/// Answers every query with SERVFAIL until the socket is dropped.
fn servfail_server() -> (String, std::thread::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // QR: a response
            reply[3] = (reply[3] & 0xf0) | 2; // RCODE 2: SERVFAIL
            let _ = socket.send_to(&reply, peer);
        }
    });
    (addr, handle)
}

fn probe(agg: &Aggregator, kind: &str, attr: &str, value: &str) -> Option<Value> {
    let (_, page) = agg.get(&format!("/api/v1/resources?kind={kind}"));
    page["resources"]
        .as_array()?
        .iter()
        .find(|r| r["attributes"][attr] == value && r["attributes"].get(attr).is_some())
        .cloned()
}

fn reason(r: &Value) -> String {
    r["reasons"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_and_tcp_outcomes_become_distinct_health_reasons() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-p"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();

    let dns_port = free_port();
    let _dnsmasq = Process::spawn(
        Path::new("/usr/sbin/dnsmasq"),
        &[
            "--no-daemon",
            "--conf-file=/dev/null",
            &format!("--port={dns_port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local=/infrawatch.test/",
            "--address=/ok.infrawatch.test/10.1.2.3",
            "--address=/other.infrawatch.test/10.1.2.4",
        ],
        dir.path().join("dnsmasq.log"),
    )
    .unwrap();
    let dns = format!("127.0.0.1:{dns_port}");
    let (servfail, _responder) = servfail_server();
    // Bound but never read: queries to it are never answered.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let closed = format!("127.0.0.1:{}", free_port());

    let probes = format!(
        "[collectors.dns]\ninterval_ms = 1000\ndeadline_ms = 900\n\
         probes = [\n\
           {{ name = \"ok.infrawatch.test\", servers = [\"{dns}\"], expect = [\"10.1.2.3\"], timeout_ms = 500 }},\n\
           {{ name = \"missing.infrawatch.test\", servers = [\"{dns}\"], timeout_ms = 500 }},\n\
           {{ name = \"other.infrawatch.test\", servers = [\"{dns}\"], expect = [\"10.9.9.9\"], timeout_ms = 500 }},\n\
           {{ name = \"any.infrawatch.test\", servers = [\"{servfail}\"], timeout_ms = 500 }},\n\
           {{ name = \"ok.infrawatch.test\", servers = [\"{silent_addr}\"], timeout_ms = 500 }},\n\
         ]\n\
         [collectors.tcp]\ninterval_ms = 1000\ndeadline_ms = 900\n\
         probes = [ {{ address = \"{}\", timeout_ms = 500 }}, {{ address = \"{closed}\", timeout_ms = 500 }} ]\n",
        agg.grpc
    );
    let _agent = Agent::start_with(
        dir.path(),
        &pki,
        "agent-p",
        &[agg.endpoint()],
        1000,
        &probes,
    )
    .unwrap();

    let all_seen = || {
        let (_, page) = agg.get("/api/v1/resources?kind=dns_probe");
        (page["resources"].as_array().map(Vec::len) == Some(5)).then_some(())
    };
    eventually(Duration::from_secs(15), "five DNS probes", all_seen);

    let expectations = [
        ("ok.infrawatch.test", dns.as_str(), "ok", "healthy", ""),
        (
            "missing.infrawatch.test",
            dns.as_str(),
            "nxdomain",
            "unhealthy",
            "dns_nxdomain",
        ),
        (
            "other.infrawatch.test",
            dns.as_str(),
            "wrong_answer",
            "degraded",
            "dns_wrong_answer",
        ),
        (
            "any.infrawatch.test",
            servfail.as_str(),
            "servfail",
            "unhealthy",
            "dns_servfail",
        ),
        (
            "ok.infrawatch.test",
            silent_addr.as_str(),
            "timeout",
            "unhealthy",
            "dns_timeout",
        ),
    ];
    for (name, server, result, health, code) in expectations {
        let id = format!(
            "/api/v1/resources/probe/{}/dns/{name}/a/{server}",
            machine_id()
        );
        let r = eventually(
            Duration::from_secs(10),
            &format!("{name} via {server}"),
            || {
                let (status, r) = agg.get(&id);
                (status == 200 && r["attributes"]["dns.result"] == result).then_some(r)
            },
        );
        assert_eq!(r["health"], health, "{r}");
        assert_eq!(reason(&r), code, "{r}");
        assert_eq!(r["relations"][0]["type"], "runs_on");
    }
    let ok = eventually(Duration::from_secs(10), "the answered probe", || {
        probe(&agg, "dns_probe", "dns.answers", "10.1.2.3")
    });
    assert!(
        ok["latest"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["metric"] == "dns.lookup.duration")
    );

    let open = eventually(Duration::from_secs(10), "the open port", || {
        probe(&agg, "tcp_probe", "server.address", &agg.grpc.to_string())
            .filter(|r| r["attributes"]["tcp.result"] == "ok")
    });
    assert_eq!(open["health"], "healthy");
    let refused = eventually(Duration::from_secs(10), "the closed port", || {
        probe(&agg, "tcp_probe", "server.address", &closed)
    });
    assert_eq!(refused["health"], "unhealthy");
    assert_eq!(reason(&refused), "tcp_refused");
    drop(silent);
}
