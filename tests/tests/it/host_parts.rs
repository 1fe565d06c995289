//! A host's parts end to end: a real filesystem (a small tmpfs this test
//! mounts) almost full is a filesystem resource of its own, UNHEALTHY with its
//! reason, and its host is DEGRADED naming it; remounted read-only, it says
//! so. Needs root (mount), as CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use infrawatch_e2e::{Agent, Aggregator, Pki, eventually};
use serde_json::Value;

/// A tmpfs mounted for the test, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {} (the test needs root)", at.display());
        Self(at.to_path_buf())
    }

    fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {} {options}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string()
}

fn codes(r: &Value) -> Vec<String> {
    r["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["code"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_filesystem_is_unhealthy_and_degrades_its_host_and_read_only_is_named() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("data");
    let fs = Tmpfs::mount(&mountpoint, "4m");
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
        codes(&full).contains(&"filesystem_almost_out_of_space".to_string()),
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

    // Remounted read-only while the agent watches: it was writable, so it is named.
    fs.remount("ro");
    let ro = eventually(Duration::from_secs(20), "the read-only reason", || {
        let (_, r) = agg.get(&format!("/api/v1/resources/{part}"));
        codes(&r)
            .contains(&"filesystem_read_only".to_string())
            .then_some(r)
    });
    assert_eq!(ro["attributes"]["filesystem.mode"], "ro");
    assert_eq!(ro["attributes"]["filesystem.turned_read_only"], "true");
    assert_eq!(ro["health"], "unhealthy");
}
