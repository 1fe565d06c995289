//! A host's parts end to end: a real filesystem (a small tmpfs this test
//! mounts) almost full is a filesystem resource of its own, UNHEALTHY with its
//! reason, and its host is DEGRADED naming it; remounted read-only, it says
//! so. An interface in a namespace of the test's own whose link goes down is
//! UNHEALTHY, and its host names it until the link is back. Need root (mount,
//! namespaces), as CI runs.

use std::process::Command;
use std::time::Duration;

use infrawatch_e2e::netns::{Netns, Tmpfs};
use infrawatch_e2e::{Agent, Aggregator, Pki, eventually, machine_id, reason_codes};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_filesystem_is_unhealthy_and_degrades_its_host_and_read_only_is_named() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("data");
    let _fs = Tmpfs::mount(&mountpoint, 4 << 20).unwrap();
    // 98 % full before the agent starts, so every sample of the window says so.
    let ok = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=1003", "status=none"])
        .arg(format!("of={}", mountpoint.join("fill").display()))
        .status()
        .unwrap()
        .success();
    assert!(ok, "fill the tmpfs");

    let pki = Pki::new(dir.path(), &["agent-p"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let _agent = Agent::start(dir.path(), &pki, "agent-p", &[agg.endpoint()], 500).unwrap();
    let host = format!("host/{}", machine_id());
    let part = format!(
        "{host}/filesystem/root{}",
        mountpoint.display().to_string().replace(' ', "%20")
    );

    let full = eventually(Duration::from_secs(20), "the filesystem UNHEALTHY", || {
        let (status, r) = agg.get(&format!("/api/v1/resources/{part}"));
        (status == 200 && r["health"] == "unhealthy").then_some(r)
    });
    assert_eq!(full["kind"], "filesystem");
    assert!(
        reason_codes(&full).contains(&"filesystem_almost_out_of_space".to_string()),
        "{full}"
    );
    assert_eq!(full["relations"][0]["type"], "part_of");
    assert_eq!(full["relations"][0]["to"], host);
    let host_state = eventually(Duration::from_secs(10), "the host naming its part", || {
        let (_, r) = agg.get(&format!("/api/v1/resources/{host}"));
        let named = r["reasons"].as_array()?.iter().any(|x| {
            x["code"] == "filesystem_almost_out_of_space"
                && x["message"].as_str().unwrap_or("").starts_with(&part)
        });
        named.then_some(r)
    });
    assert_ne!(host_state["health"], "healthy", "{host_state}");
    // The host lists its parts with their health.
    let listed = host_state["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == part.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["kind"], "filesystem", "{host_state}");
    assert_eq!(listed["health"], "unhealthy");

    // Remounted read-only while the agent watches: it was writable, so it is named.
    let ok = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mountpoint)
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount read-only");
    let mut last = Value::Null;
    let started = std::time::Instant::now();
    let ro = loop {
        let (_, r) = agg.get(&format!("/api/v1/resources/{part}"));
        if reason_codes(&r).contains(&"filesystem_read_only".to_string()) {
            break r;
        }
        last = r;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no read-only reason after 20 s; the part: {last}\nagent log:\n{}",
            _agent.process.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = last;
    assert_eq!(ro["attributes"]["filesystem.mode"], "ro");
    assert_eq!(ro["attributes"]["filesystem.turned_read_only"], "true");
    assert_eq!(ro["health"], "unhealthy");
}

/// The host's reasons whose message starts with `part`.
fn reasons_naming(host: &Value, part: &str) -> Vec<String> {
    host["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["message"].as_str().unwrap_or("").starts_with(part))
                .filter_map(|x| x["code"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interface_whose_link_goes_down_is_unhealthy_and_named_by_its_host() {
    super::init();
    let ns = Netns::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-n"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let to_aggregator = ns
        .proxy_to_root(
            infrawatch_e2e::netns::Side::Inner,
            [127, 0, 0, 1].into(),
            agg.grpc,
        )
        .unwrap();
    let _agent = ns
        .start_agent(
            dir.path(),
            &pki,
            "agent-n",
            &[to_aggregator.endpoint()],
            500,
            "",
        )
        .unwrap();
    let host = format!("host/{}", machine_id());
    let part = format!("{host}/interface/{}", infrawatch_e2e::netns::LINK_IF);
    let get = |id: &str| agg.get(&format!("/api/v1/resources/{id}")).1;

    let up = eventually(Duration::from_secs(20), "the link's part, up", || {
        let r = get(&part);
        (r["health"] == "healthy" && r["attributes"]["interface.oper_state"] == "up").then_some(r)
    });
    assert_eq!(up["kind"], "network_interface");
    assert_eq!(up["relations"][0]["type"], "part_of");

    // The cable pulled at the far end: set up, no carrier.
    ns.set_link(false).unwrap();
    let down = eventually(Duration::from_secs(20), "the interface UNHEALTHY", || {
        let r = get(&part);
        (r["health"] == "unhealthy").then_some(r)
    });
    assert_eq!(reason_codes(&down), vec!["interface_down"], "{down}");
    assert_eq!(down["attributes"]["interface.admin_state"], "up");
    let named = eventually(Duration::from_secs(10), "the host naming it", || {
        let r = get(&host);
        (reasons_naming(&r, &part) == vec!["interface_down"]).then_some(r)
    });
    assert_ne!(named["health"], "healthy", "{named}");

    // Back up: the interface recovers, and the host stops naming it.
    ns.set_link(true).unwrap();
    eventually(
        Duration::from_secs(20),
        "the interface HEALTHY again",
        || (get(&part)["health"] == "healthy").then_some(()),
    );
    eventually(
        Duration::from_secs(10),
        "the host no longer naming it",
        || reasons_naming(&get(&host), &part).is_empty().then_some(()),
    );
}

/// A filesystem at 70 % and filling at a steady rate: the agent's fitted time
/// to full (a series, `system.filesystem.predicted_full_in`) is plausible, and
/// the filesystem is DEGRADED with `filesystem_filling_up`. The agent fits over
/// one point a second here instead of one a minute over six hours.
#[tokio::test(flavor = "multi_thread")]
async fn a_filesystem_filling_at_a_steady_rate_gets_its_time_to_full() {
    super::init();
    const SIZE: u64 = 8 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("filling");
    let _fs = Tmpfs::mount(&mountpoint, SIZE).unwrap();
    std::fs::write(mountpoint.join("base"), vec![0u8; (SIZE * 7 / 10) as usize]).unwrap();
    let pki = Pki::new(dir.path(), &["agent-f"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let trend =
        "[collectors.filesystem_trend]\nwindow_ms = 60000\npoint_ms = 1000\nmin_span_ms = 5000\n";
    let _agent =
        Agent::start_with(dir.path(), &pki, "agent-f", &[agg.endpoint()], 500, trend).unwrap();
    let part = format!(
        "host/{}/filesystem/root{}",
        machine_id(),
        mountpoint.display()
    );
    // 64 KiB every 500 ms (128 KiB/s) for at most 15 s: about 2.4 MiB free
    // at the start, so full in about 19 s at the start and never full.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), mountpoint.join("growing"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(path).unwrap();
            for _ in 0..30 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                f.write_all(&[1u8; 64 << 10]).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let filling = eventually(Duration::from_secs(20), "filesystem_filling_up", || {
        let (_, r) = agg.get(&format!("/api/v1/resources/{part}"));
        reason_codes(&r)
            .contains(&"filesystem_filling_up".to_string())
            .then_some(r)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(filling["health"], "degraded", "30 % free: the 24 h warning");
    let predicted: Vec<f64> = filling["latest"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["metric"] == "system.filesystem.predicted_full_in")
        .filter_map(|l| l["value"].as_f64())
        .collect();
    assert_eq!(predicted.len(), 1, "{filling}");
    assert!(
        (3.0..=120.0).contains(&predicted[0]),
        "full in {} s at about 128 KiB/s with about 2 MiB free",
        predicted[0]
    );
    let message = filling["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "filesystem_filling_up")
        .and_then(|r| r["message"].as_str())
        .unwrap()
        .to_string();
    assert!(message.contains(" s at the current rate"), "{message}");
}
