//! ICMP probes across a link between two network namespaces of the test's own
//! ([`Netns`]): an agent in one pings the other. The measured RTT matches a delay
//! injected by a responder in the peer namespace, the measured loss matches
//! nftables dropping a share of the requests, and a link taken down gives 100 %
//! loss and an UNHEALTHY target (with no route anywhere else: nothing answers from
//! off the machine). Needs root (CI runs as root); skipped with a note otherwise.

use std::process::{Command, Stdio};
use std::time::Duration;

use infrawatch_e2e::netns::{Netns, Side, is_root};
use infrawatch_e2e::{Aggregator, Pki, eventually};
use serde_json::Value;

/// Kills the responder however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mean of a series' point averages (weighted by samples) since `from`, and how
/// many samples that covers.
fn mean_since(agg: &Aggregator, id: &str, metric: &str, attributes: &str, from: i64) -> (f64, u64) {
    let attrs = attributes.replace('"', "%22").replace('=', "%3D");
    let (_, m) = agg.get(&format!(
        "/api/v1/resources/{id}/metrics?name={metric}&attributes={attrs}&from={from}&step=1000"
    ));
    let points = m["points"].as_array().cloned().unwrap_or_default();
    let count: u64 = points.iter().filter_map(|p| p["count"].as_u64()).sum();
    let sum: f64 = points
        .iter()
        .filter_map(|p| Some(p["avg"].as_f64()? * p["count"].as_u64()? as f64))
        .sum();
    (
        if count > 0 {
            sum / count as f64
        } else {
            f64::NAN
        },
        count,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rtt_loss_and_link_down_match_what_the_namespace_does() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root (CI runs this as root)");
        return;
    }
    super::init();
    // Declared first, so it is dropped last: the leak guard counts until every
    // process of the test is gone.
    let ns = Netns::create().unwrap();
    // The kernel's echo replies are off in the peer namespace: the only replies
    // come from the responder, after its delay.
    ns.exec_in(
        Side::Peer,
        &["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1"],
    )
    .unwrap();
    let responder = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/icmp_responder.py");
    let mut delayer = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns.peer, "python3", responder, "0.05"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(delayer.0.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-i"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    // The agent pings from the inner namespace and reaches the aggregator through
    // a proxy on that namespace's loopback, which the link going down leaves alone.
    let to_aggregator = ns
        .proxy_to_root(Side::Inner, [127, 0, 0, 1].into(), agg.grpc)
        .unwrap();
    let target = ns.peer_addr;
    let probes = format!(
        "[collectors.icmp]\ninterval_ms = 1000\ndeadline_ms = 950\n\
         probes = [ {{ target = \"{target}\", count = 20, spacing_ms = 20, timeout_ms = 400 }} ]\n"
    );
    let _agent = ns
        .start_agent(
            dir.path(),
            &pki,
            "agent-i",
            &[to_aggregator.endpoint()],
            1000,
            &probes,
        )
        .unwrap();
    let machine = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let id = format!("probe/{machine}/icmp/{target}");

    // 50 ms injected: the measured average must be 50 ms, within +40/-5 ms.
    let start = infrawatch_common::time::now_unix_ms();
    let rtt = eventually(Duration::from_secs(15), "three intervals of RTTs", || {
        let (avg, n) = mean_since(&agg, &id, "icmp.rtt", "stat=\"avg\"", start);
        (n >= 3).then_some(avg)
    });
    eprintln!("measured RTT {:.1} ms for an injected 50 ms", rtt * 1000.0);
    assert!(
        (0.045..=0.090).contains(&rtt),
        "measured RTT {rtt} s for an injected 50 ms"
    );
    let (_, r) = agg.get(&format!("/api/v1/resources/{id}"));
    assert_eq!(r["kind"], "icmp_probe");
    assert_eq!(r["health"], "healthy", "{r}");

    // 25 % of echo requests dropped in the namespace: over 100+ pings the measured
    // loss must be 25 % within ±13 points (three standard deviations).
    ns.nft_table(
        Side::Peer,
        "inet iwloss",
        "chain input { type filter hook input priority 0; policy accept; \
         ip protocol icmp numgen random mod 100 < 25 drop; }",
    )
    .unwrap();
    let lossy_from = infrawatch_common::time::now_unix_ms() + 1_500;
    let (loss, _) = eventually(Duration::from_secs(20), "six intervals with loss", || {
        let (loss, n) = mean_since(&agg, &id, "icmp.loss", "", lossy_from);
        (n >= 6).then_some((loss, n))
    });
    eprintln!("measured loss {:.1} % for 25 % dropped", loss * 100.0);
    assert!(
        (0.12..=0.38).contains(&loss),
        "measured loss {loss} for 25 % dropped"
    );
    ns.delete_nft_table(Side::Peer, "inet iwloss").unwrap();

    // The link goes down: no reply at all, the target is UNHEALTHY.
    ns.set_link(false).unwrap();
    let down: Value = eventually(Duration::from_secs(15), "an unreachable target", || {
        let (_, r) = agg.get(&format!("/api/v1/resources/{id}"));
        (r["attributes"]["icmp.result"] == "unreachable").then_some(r)
    });
    assert_eq!(down["health"], "unhealthy");
    assert_eq!(down["reasons"][0]["code"], "icmp_unreachable");
    let last_loss = down["latest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["metric"] == "icmp.loss")
        .unwrap()["value"]
        .as_f64();
    assert_eq!(last_loss, Some(1.0));
}
