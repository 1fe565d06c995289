//! The agent's collectors against what /proc, /sys and statvfs say, and a generated
//! disk load showing up in the disk figures. Filesystems, disks and interfaces
//! are parts of the host: resources of their own, `part_of` it.

use std::time::Duration;

use infrawatch_e2e::{Agent, Aggregator, Pki, eventually, machine_id};
use serde_json::Value;

fn latest_where(resource: &Value, metric: &str, attr: &str) -> Vec<f64> {
    resource["latest"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| {
                    l["metric"] == metric && l["attributes"].as_str().unwrap_or("").contains(attr)
                })
                .filter_map(|l| l["value"].as_f64())
                .collect()
        })
        .unwrap_or_default()
}

/// The whole block device holding `path`, as /proc/diskstats names it (None for
/// filesystems without one, such as tmpfs or overlay).
fn whole_device_of(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let link = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    // A partition's sysfs directory sits inside its whole device's.
    let whole = if link.join("partition").exists() {
        link.parent()?.to_path_buf()
    } else {
        link
    };
    let name = whole.file_name()?.to_string_lossy().into_owned();
    std::path::Path::new("/sys/block")
        .join(&name)
        .exists()
        .then_some(name)
}

fn sectors_written(dev: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/diskstats").unwrap();
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&dev))
        .and_then(|f| f.get(9).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn collectors_agree_with_the_kernel_and_see_a_disk_load() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-c"]).unwrap();
    let agg = Aggregator::start_sqlite(dir.path(), &pki, "").unwrap();
    let _agent = Agent::start(dir.path(), &pki, "agent-c", &[agg.endpoint()], 1000).unwrap();
    let host = format!("/api/v1/resources/host/{}", machine_id());

    // Rates need two readings: wait for network and disk rates.
    let r = eventually(
        Duration::from_secs(10),
        "rates from every collector",
        || {
            let (status, r) = agg.get(&host);
            let ready = status == 200
                && !latest_where(&r, "system.network.connections", "").is_empty()
                && !latest_where(&r, "system.cpu.utilization", "state=\"steal\"").is_empty();
            ready.then_some(r)
        },
    );

    // Filesystem: the root mount is a part of the host, its size equals statvfs.
    let (status, root) = agg.get(&format!("{host}/filesystem/root"));
    assert_eq!(status, 200, "{root}");
    assert_eq!(root["kind"], "filesystem");
    assert_eq!(root["attributes"]["filesystem.mountpoint"], "/");
    assert_eq!(root["relations"][0]["type"], "part_of");
    assert_eq!(root["relations"][0]["to"], format!("host/{}", machine_id()));
    let st = nix::sys::statvfs::statvfs("/").unwrap();
    let limit = latest_where(&root, "system.filesystem.limit", "mountpoint=\"/\"");
    assert_eq!(limit, vec![(st.blocks() * st.fragment_size()) as f64]);
    let free_now = (st.blocks_available() * st.fragment_size()) as f64;
    let free = latest_where(
        &root,
        "system.filesystem.usage",
        "mountpoint=\"/\",state=\"free\"",
    );
    assert!(
        (free[0] - free_now).abs() < 2e9,
        "free {free:?} vs statvfs {free_now}"
    );
    let (status, _) = agg.get(&format!("{host}/filesystem/root/proc"));
    assert_eq!(status, 404, "pseudo filesystems are left out");

    // Network: every interface in /sys (but lo) has a link state matching operstate.
    for entry in std::fs::read_dir("/sys/class/net").unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Ok(state) = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate")) else {
            continue;
        };
        let (_, part) = agg.get(&format!("{host}/interface/{name}"));
        let up = latest_where(
            &part,
            "system.network.link.up",
            &format!("device=\"{name}\""),
        );
        if name == "lo" {
            assert!(up.is_empty(), "lo is excluded by default");
            continue;
        }
        // Interfaces other tests create and remove meanwhile, and pod-style veths
        // (excluded by default), are not this check's business.
        if name.starts_with("iw")
            || name.starts_with("veth")
            || up.is_empty() && !std::path::Path::new(&format!("/sys/class/net/{name}")).exists()
        {
            continue;
        }
        let expected = if matches!(state.trim(), "up" | "unknown") {
            1.0
        } else {
            0.0
        };
        assert_eq!(up, vec![expected], "{name} operstate {}", state.trim());
        assert_eq!(part["kind"], "network_interface");
        assert_eq!(part["attributes"]["interface.oper_state"], state.trim());
        let mtu: f64 = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            latest_where(&part, "system.network.mtu", &format!("device=\"{name}\"")),
            vec![mtu]
        );
    }
    assert!(!latest_where(&r, "system.network.connections", "state=\"established\"").is_empty());

    // The listening inventory lists the aggregator's own gRPC port.
    let (_, inventory) = agg.get(&format!("{host}/listening"));
    assert_eq!(inventory["kind"], "listening_ports");
    let tcp = inventory["attributes"]["net.listening.tcp"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        tcp.split(',').any(|p| p == agg.grpc.port().to_string()),
        "{tcp}"
    );
    assert_eq!(inventory["relations"][0]["type"], "runs_on");

    // The agent's own health: a resource of its own, and the local /metrics.
    let (_, me) = agg.get(&format!("/api/v1/resources/agent/{}", machine_id()));
    assert_eq!(me["kind"], "agent", "{me}");
    assert_eq!(me["health"], "healthy", "no collector failing: {me}");
    let rss = latest_where(&me, "process.memory.usage", "");
    assert!(rss[0] > 1e6 && rss[0] < 256e6, "agent RSS {rss:?}");
    assert!(
        !latest_where(
            &me,
            "infrawatch.agent.collector.duration",
            "collector=\"disk\""
        )
        .is_empty()
    );
    let (status, text) = infrawatch_e2e::http_get(_agent.metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("infrawatch_agent_collector_duration_seconds{collector=\"host\"}"),
        "{text}"
    );
    assert!(
        text.contains("infrawatch_agent_process_resident_memory_bytes"),
        "{text}"
    );

    // Pressure: PSI where the kernel has it.
    if std::path::Path::new("/proc/pressure/io").exists() {
        assert!(!latest_where(&r, "system.linux.pressure", "resource=\"io\"").is_empty());
    }

    // Disk: 256 MiB written with O_DIRECT must show in its device's write rate. The
    // file goes to Cargo's target tmp dir (on the project's disk, not a tmpfs).
    let load_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(dev) = whole_device_of(load_dir.path()) else {
        eprintln!(
            "skipped the disk load: {} is on no block device",
            load_dir.path().display()
        );
        return;
    };
    let before = sectors_written(&dev);
    let from = infrawatch_common::time::now_unix_ms();
    let target = load_dir.path().join("load.bin");
    let dd = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", target.display()),
            "bs=1M",
            "count=256",
            "oflag=direct",
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(dd.success());
    let written = (sectors_written(&dev) - before) * 512;
    assert!(
        written >= 256 << 20,
        "/proc/diskstats saw {written} bytes on {dev}"
    );
    let series = format!(
        "{host}/disk/{dev}/metrics?name=system.disk.io.rate&attributes=device%3D%22{dev}%22%2Cdirection%3D%22write%22&step=1000&from={from}"
    );
    let peak = eventually(
        Duration::from_secs(10),
        "the write burst in the disk figures",
        || {
            let (_, m) = agg.get(&series);
            let peak = m["points"]
                .as_array()?
                .iter()
                .filter_map(|p| p["max"].as_f64())
                .fold(0.0, f64::max);
            (peak > 8.0 * 1024.0 * 1024.0).then_some(peak)
        },
    );
    eprintln!(
        "peak write rate on {dev}: {:.1} MiB/s",
        peak / 1024.0 / 1024.0
    );
}
