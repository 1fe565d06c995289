//! ICMP probes across a network namespace the test builds itself (veth pair): the
//! measured RTT matches a delay injected by a responder in the namespace, the
//! measured loss matches nftables dropping a share of the requests, and a link
//! taken down gives 100 % loss and an UNHEALTHY target. Needs root (CI runs as
//! root); skipped with a note otherwise.

use std::process::{Command, Stdio};
use std::time::Duration;

use infrawatch_e2e::{Agent, Aggregator, Pki, eventually};
use serde_json::Value;

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace `ns` with address `.2`, joined to the host's `.1` by a veth pair.
struct Netns {
    name: String,
    host_if: String,
    peer: String,
}

impl Netns {
    fn create() -> Self {
        let id = std::process::id() % 10_000;
        let subnet = 100 + (std::process::id() % 150);
        let ns = Self {
            name: format!("iwtest{id}"),
            host_if: format!("iwh{id}"),
            peer: format!("10.213.{subnet}.2"),
        };
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &ns.host_if])
            .output();
        let inner = format!("iwn{id}");
        run(&["ip", "netns", "add", &ns.name]);
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ]);
        run(&["ip", "link", "set", &inner, "netns", &ns.name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{subnet}.1/24"),
            "dev",
            &ns.host_if,
        ]);
        run(&["ip", "link", "set", &ns.host_if, "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.peer),
            "dev",
            &inner,
        ]);
        ns.exec(&["ip", "link", "set", &inner, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }
}

/// Kills the responder however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
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
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: network namespaces need root (CI runs this as root)");
        return;
    }
    super::init();
    let ns = Netns::create();
    let responder = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/icmp_responder.py");
    let mut delayer = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", responder, "0.05"])
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
    let probes = format!(
        "[collectors.icmp]\ninterval_ms = 1000\ndeadline_ms = 950\n\
         probes = [ {{ target = \"{}\", count = 20, spacing_ms = 20, timeout_ms = 400 }} ]\n",
        ns.peer
    );
    let _agent = Agent::start_with(
        dir.path(),
        &pki,
        "agent-i",
        &[agg.endpoint()],
        1000,
        &probes,
    )
    .unwrap();
    let machine = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let id = format!("probe/{machine}/icmp/{}", ns.peer);

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
    ns.exec(&["nft", "add", "table", "inet", "iwloss"]);
    ns.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "iwloss",
        "input",
        "{ type filter hook input priority 0 ; }",
    ]);
    ns.exec(&[
        "nft", "add", "rule", "inet", "iwloss", "input", "ip", "protocol", "icmp", "numgen",
        "random", "mod", "100", "<", "25", "drop",
    ]);
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
    ns.exec(&["nft", "delete", "table", "inet", "iwloss"]);

    // The link goes down: no reply at all, the target is UNHEALTHY.
    run(&["ip", "link", "set", &ns.host_if, "down"]);
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
