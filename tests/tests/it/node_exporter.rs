//! The kernel collector against Debian's `prometheus-node-exporter` on the same
//! machine at the same moment: file handle limit, conntrack limit and boot time
//! equal; allocated file handles, conntrack entries and sockets in use within a
//! tolerance (they move between the two readings). Skipped, saying so, where
//! the binary is not installed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use infrawatch_e2e::{
    Agent, Aggregator, Pki, Process, eventually, free_port, http_get, machine_id,
};
use serde_json::Value;

const NODE_EXPORTER: &str = "prometheus-node-exporter";

/// The node exporter's path, from `PATH`.
fn node_exporter() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(NODE_EXPORTER))
        .find(|p| p.is_file())
}

/// The value of the unlabelled sample `name` in Prometheus text.
fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The value of the agent's series `metric` without attributes on `resource`.
fn latest(resource: &Value, metric: &str) -> Option<f64> {
    resource["latest"].as_array()?.iter().find_map(|l| {
        (l["metric"] == metric && l["attributes"].as_str().unwrap_or("").is_empty())
            .then(|| l["value"].as_f64())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_figures_agree_with_node_exporter() {
    super::init();
    let Some(binary) = node_exporter() else {
        eprintln!("skipped: {NODE_EXPORTER} is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen_flag = format!("--web.listen-address={listen}");
    let _exporter = Process::spawn(
        &binary,
        &[
            listen_flag.as_str(),
            "--collector.disable-defaults",
            "--collector.filefd",
            "--collector.conntrack",
            "--collector.sockstat",
            "--collector.stat",
        ],
        dir.path().join("node-exporter.log"),
    )
    .unwrap();
    let pki = Pki::new(dir.path(), &["agent-n"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let agent = Agent::start(dir.path(), &pki, "agent-n", &[agg.endpoint()], 1000).unwrap();
    let host = format!("/api/v1/resources/host/{}", machine_id());
    eventually(
        Duration::from_secs(15),
        "the kernel collector's series",
        || {
            let (status, r) = agg.get(&host);
            (status == 200
                && latest(&r, "system.linux.file_descriptors.limit").is_some()
                && latest(&r, "system.boot_time").is_some())
            .then_some(())
        },
    );
    let scrape = || {
        eventually(Duration::from_secs(10), "node exporter's /metrics", || {
            http_get(listen, "/metrics")
                .ok()
                .filter(|(status, _)| *status == 200)
                .map(|(_, text)| text)
        })
    };

    // The agent's latest values and the exporter's, read one right after the other.
    let exported = scrape();
    let (_, r) = agg.get(&host);
    let node = |name: &str| {
        prometheus_value(&exported, name).unwrap_or_else(|| panic!("{name} in\n{exported}"))
    };
    let ours = |metric: &str| latest(&r, metric).unwrap_or_else(|| panic!("{metric} in {r}"));

    assert_eq!(
        ours("system.linux.file_descriptors.limit"),
        node("node_filefd_maximum")
    );
    let (a, b) = (
        ours("system.linux.file_descriptors.allocated"),
        node("node_filefd_allocated"),
    );
    assert!((a - b).abs() <= 2_000.0, "allocated handles {a} vs {b}");
    assert_eq!(ours("system.boot_time"), node("node_boot_time_seconds"));
    let (a, b) = (
        ours("system.linux.sockets.used"),
        node("node_sockstat_sockets_used"),
    );
    assert!((a - b).abs() <= 200.0, "sockets in use {a} vs {b}");
    match prometheus_value(&exported, "node_nf_conntrack_entries_limit") {
        Some(limit) => {
            assert_eq!(ours("system.network.conntrack.limit"), limit);
            let (a, b) = (
                ours("system.network.conntrack.count"),
                node("node_nf_conntrack_entries"),
            );
            assert!((a - b).abs() <= 2_000.0, "conntrack entries {a} vs {b}");
        }
        None => {
            eprintln!("no conntrack module: only its absence is compared");
            assert_eq!(latest(&r, "system.network.conntrack.limit"), None);
        }
    }

    // The agent counts what the collector produced, on its own /metrics.
    let (status, text) = http_get(agent.metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    let samples = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("infrawatch_agent_collector_samples_total{collector=\"kernel\"} ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("kernel samples counter in\n{text}"));
    assert!(samples > 0.0, "{samples}");
    let kernel_series = r["latest"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| {
                    let m = l["metric"].as_str().unwrap_or("");
                    [
                        "system.network.conntrack.",
                        "system.linux.file_descriptors.",
                        "system.linux.sockets.",
                        "system.network.tcp.listen_",
                        "system.linux.oom_kills",
                        "system.boot_time",
                        "system.hardware.",
                        "system.memory.edac.",
                        "system.md.",
                        "system.network.bond.",
                    ]
                    .iter()
                    .any(|p| m.starts_with(p))
                })
                .count()
        })
        .unwrap_or(0);
    eprintln!("kernel collector: {kernel_series} series on the host, {samples} samples so far");
}
