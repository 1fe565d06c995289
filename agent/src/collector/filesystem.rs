//! Filesystems: each mount is a part of the host (`host/<id>/filesystem/root/...`,
//! kind `filesystem`) with its bytes and inodes used, free and total, and
//! whether it is mounted read-only; a mount first seen writable that is now
//! read-only (the kernel remounts a filesystem read-only after errors) says so
//! in its attributes. Each mount also gets its time to full at the trend of
//! its free space over the last six hours (`system.filesystem.predicted_full_in`,
//! seconds, while it fills; [`super::fill_trend`]). Mounts come from the host's mount table (`<proc>/1/mountinfo`,
//! else `<proc>/self/mountinfo`, kept open between runs) and are measured with
//! statvfs under the host root.
//! Pseudo filesystems and runtime-internal mount points are left out by default.
//! For network and FUSE filesystems each statvfs runs on the blocking pool with a
//! timeout and at most one call per mount outstanding, so a hung mount costs one
//! thread, not the collector. A mount the agent may not look at (EACCES) or that
//! vanished between reading the table and the call is skipped, not an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use infrawatch_common::resource::kind;
use infrawatch_common::time::now_unix_ms;

use super::fill_trend::{FillTrends, TrendConfig};
use super::filter::NameFilter;
use super::proc_file::ProcFile;
use super::{CollectError, Collection, Collector};

/// Filesystem types that hold no user data.
pub const PSEUDO_TYPES: [&str; 26] = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// Mount points left out unless the configuration says otherwise.
pub const DEFAULT_EXCLUDE: [&str; 15] = [
    "/dev",
    "/dev/*",
    "/proc",
    "/proc/*",
    "/sys",
    "/sys/*",
    "/run/credentials/*",
    "/run/user/*",
    "/run/netns/*",
    "/run/containerd/*",
    "/var/lib/docker/*",
    "/var/lib/containerd/*",
    "/var/lib/kubelet/*",
    "/var/lib/containers/*",
    "/snap/*",
];

/// Filesystem types whose statvfs can block for long (network, FUSE).
fn may_hang(fs_type: &str) -> bool {
    matches!(
        fs_type,
        "nfs"
            | "nfs4"
            | "cifs"
            | "smb3"
            | "smbfs"
            | "ceph"
            | "glusterfs"
            | "9p"
            | "afs"
            | "sshfs"
            | "davfs"
    ) || fs_type.starts_with("fuse")
}

/// Longest time one statvfs may take.
const STAT_TIMEOUT: Duration = Duration::from_secs(1);

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mountpoint: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Source device.
    pub device: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Parses `/proc/<pid>/mountinfo`, decoding `\040`-style escapes in paths.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let mountpoint = unescape(l.get(4)?);
            let options = l.get(5)?;
            // Read-only per mount, or for the whole filesystem (superblock options,
            // e.g. after errors=remount-ro).
            let super_options = r.get(2).copied().unwrap_or_default();
            let read_only = options
                .split(',')
                .chain(super_options.split(','))
                .any(|o| o == "ro");
            Some(Mount {
                mountpoint,
                fs_type: r.first()?.to_string(),
                device: unescape(r.get(1)?),
                read_only,
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            // Three octal digits: at most 0o777, of which mountinfo only uses bytes.
            let v = d.iter().fold(0u16, |acc, c| acc * 8 + u16::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Space and inode figures of one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Total bytes.
    pub total: u64,
    /// Bytes free for unprivileged users.
    pub available: u64,
    /// Bytes free including the reserved part.
    pub free: u64,
    /// Total inodes.
    pub inodes: u64,
    /// Free inodes.
    pub inodes_free: u64,
}

/// Why a statvfs gave no figures.
#[derive(Debug)]
enum StatError {
    /// Not a problem: the mount went away or is not ours to look at.
    Skip,
    /// A real failure.
    Failed(String),
}

fn statvfs(path: &Path) -> Result<Usage, StatError> {
    use nix::errno::Errno;
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| match e {
        Errno::EACCES | Errno::ENOENT | Errno::ENOTDIR | Errno::EPERM => StatError::Skip,
        other => StatError::Failed(other.to_string()),
    })?;
    let frag = s.fragment_size();
    Ok(Usage {
        total: s.blocks().saturating_mul(frag),
        available: s.blocks_available().saturating_mul(frag),
        free: s.blocks_free().saturating_mul(frag),
        inodes: s.files(),
        inodes_free: s.files_free(),
    })
}

/// The filesystem collector.
pub struct FilesystemCollector {
    host_id: String,
    host_root: PathBuf,
    filter: NameFilter,
    interval_ms: u32,
    /// statvfs calls in the blocking pool not yet collected, by mount point:
    /// one waited for now, or one still running after its timeout.
    hung: HashMap<String, tokio::task::JoinHandle<Result<Usage, StatError>>>,
    /// Mount points seen mounted writable since the agent started.
    seen_writable: HashSet<String>,
    /// Free space over the last hours, for the time to full.
    trends: FillTrends,
    /// The mount table, kept open.
    mount_table: ProcFile,
}

/// The mount table to read: under the host's own root the agent's (it sees
/// what it can stat); in a container (another root) pid 1's, else its own.
fn mount_table(proc_root: &Path, host_root: &Path) -> ProcFile {
    let own = proc_root.join("self/mountinfo");
    if host_root == Path::new("/") {
        ProcFile::new(own)
    } else {
        ProcFile::first_of(vec![proc_root.join("1/mountinfo"), own])
    }
}

impl FilesystemCollector {
    /// Reports the mount points `filter` allows as parts of `host_id`, every
    /// `interval_ms`.
    pub fn new(
        host_id: String,
        proc_root: PathBuf,
        host_root: PathBuf,
        filter: NameFilter,
        interval_ms: u32,
    ) -> Self {
        Self::with_trend(
            host_id,
            proc_root,
            host_root,
            filter,
            interval_ms,
            Default::default(),
        )
    }

    /// Like [`FilesystemCollector::new`], fitting the time to full as `trend` says.
    pub fn with_trend(
        host_id: String,
        proc_root: PathBuf,
        host_root: PathBuf,
        filter: NameFilter,
        interval_ms: u32,
        trend: TrendConfig,
    ) -> Self {
        Self {
            mount_table: mount_table(&proc_root, &host_root),
            host_id,
            host_root,
            filter,
            interval_ms,
            hung: HashMap::new(),
            seen_writable: HashSet::new(),
            trends: FillTrends::new(trend),
        }
    }

    /// The attributes of mount `m`; remembers it if it is writable.
    fn attributes(&mut self, m: &Mount) -> BTreeMap<String, String> {
        if !m.read_only {
            self.seen_writable.insert(m.mountpoint.clone());
        }
        let turned = m.read_only && self.seen_writable.contains(&m.mountpoint);
        BTreeMap::from([
            ("filesystem.mountpoint".into(), m.mountpoint.clone()),
            ("filesystem.device".into(), m.device.clone()),
            ("filesystem.type".into(), m.fs_type.clone()),
            (
                "filesystem.mode".into(),
                if m.read_only { "ro" } else { "rw" }.into(),
            ),
            ("filesystem.turned_read_only".into(), turned.to_string()),
        ])
    }

    async fn stat_in_pool(&mut self, mountpoint: &str, path: PathBuf) -> Result<Usage, StatError> {
        use std::collections::hash_map::Entry;
        // The call stays in `hung` while it is awaited, so a run dropped here
        // (the scheduler drops a run past its deadline) leaves it recorded
        // instead of starting another one on the same mount next time.
        let handle = match self.hung.entry(mountpoint.to_string()) {
            Entry::Occupied(e) if !e.get().is_finished() => {
                return Err(StatError::Failed(
                    "an earlier statvfs is still hanging".into(),
                ));
            }
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(tokio::task::spawn_blocking(move || statvfs(&path))),
        };
        match tokio::time::timeout(STAT_TIMEOUT, handle).await {
            Ok(joined) => {
                self.hung.remove(mountpoint);
                joined.unwrap_or_else(|_| Err(StatError::Failed("statvfs task failed".into())))
            }
            Err(_) => Err(StatError::Failed(format!(
                "statvfs did not answer within {STAT_TIMEOUT:?}"
            ))),
        }
    }

    /// The mounts to report, from the mount table kept open.
    fn mounts(&mut self) -> Result<Vec<Mount>, CollectError> {
        let mounts = parse_mountinfo(self.mount_table.read()?);
        if mounts.is_empty() {
            return Err(self.mount_table.parse_error("no mounts"));
        }
        let mut seen = std::collections::HashSet::new();
        Ok(mounts
            .into_iter()
            .filter(|m| {
                !PSEUDO_TYPES.contains(&m.fs_type.as_str()) && self.filter.allows(&m.mountpoint)
            })
            // A later mount on the same point hides the earlier one.
            .rev()
            .filter(|m| seen.insert(m.mountpoint.clone()))
            .collect())
    }
}

#[async_trait::async_trait]
impl Collector for FilesystemCollector {
    fn name(&self) -> &'static str {
        "filesystem"
    }
    /// Local mounts are read inline; a network or FUSE mount's statvfs waits
    /// at most `STAT_TIMEOUT`, once per hung mount, and a run dropped while it
    /// waits leaves the call recorded: safe to run in a group.
    fn is_local(&self) -> bool {
        true
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let ts = now_unix_ms();
        let mut failed: Option<CollectError> = None;
        let mounts = self.mounts()?;
        let present: HashSet<String> = mounts.iter().map(|m| m.mountpoint.clone()).collect();
        for m in mounts {
            let path = self.host_root.join(m.mountpoint.trim_start_matches('/'));
            // Local filesystems answer statvfs at once; only those that can hang
            // (network and FUSE mounts) go to the blocking pool, with a timeout, and
            // at most one call per mount is ever outstanding: a hung mount holds one
            // thread, however many runs it stays hung.
            let stat = if may_hang(&m.fs_type) {
                self.stat_in_pool(&m.mountpoint, path).await
            } else {
                statvfs(&path)
            };
            let usage = match stat {
                Ok(u) => u,
                Err(StatError::Skip) => continue,
                Err(StatError::Failed(reason)) => {
                    failed = Some(CollectError::Parse {
                        path: m.mountpoint.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let attributes = self.attributes(&m);
            let id = &out.part(
                &self.host_id,
                kind::FILESYSTEM,
                &m.mountpoint,
                attributes,
                self.interval_ms,
            );
            let base = [
                ("device", m.device.as_str()),
                ("mountpoint", m.mountpoint.as_str()),
                ("type", m.fs_type.as_str()),
            ];
            let used = usage.total.saturating_sub(usage.free);
            let reserved = usage.free.saturating_sub(usage.available);
            for (state, v) in [
                ("used", used),
                ("free", usage.available),
                ("reserved", reserved),
            ] {
                let attrs = [base[0], base[1], base[2], ("state", state)];
                out.sample(id, "system.filesystem.usage", &attrs, ts, v as f64);
            }
            out.sample(id, "system.filesystem.limit", &base, ts, usage.total as f64);
            // Like df: the share of the space usable by ordinary users that is used.
            let usable = used + usage.available;
            if usable > 0 {
                out.sample(
                    id,
                    "system.filesystem.utilization",
                    &base,
                    ts,
                    used as f64 / usable as f64,
                );
            }
            let inodes_used = usage.inodes.saturating_sub(usage.inodes_free);
            for (state, v) in [("used", inodes_used), ("free", usage.inodes_free)] {
                let attrs = [base[0], base[1], base[2], ("state", state)];
                out.sample(id, "system.filesystem.inodes.usage", &attrs, ts, v as f64);
            }
            out.sample(
                id,
                "system.filesystem.readonly",
                &base,
                ts,
                if m.read_only { 1.0 } else { 0.0 },
            );
            if let Some(seconds) = self
                .trends
                .observe(&m.mountpoint, ts, usage.available as f64)
            {
                out.sample(
                    id,
                    "system.filesystem.predicted_full_in",
                    &base,
                    ts,
                    seconds,
                );
            }
        }
        self.trends
            .retain(&present.iter().map(String::as_str).collect());
        failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
        27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
        28 27 0:25 / /mnt/my\\040disk ro,nosuid - ext4 /dev/vdb ro\n\
        30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw\n";

    #[test]
    fn mountinfo() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].mountpoint, "/");
        assert_eq!(m[1].device, "/dev/vda");
        assert!(!m[1].read_only);
        assert_eq!(m[2].mountpoint, "/mnt/my disk");
        assert_eq!(
            unescape("/mnt/é\\\\x\\04"),
            "/mnt/é\\\\x\\04",
            "no panic on odd escapes"
        );
        assert!(m[2].read_only);
    }

    #[tokio::test]
    async fn root_filesystem_matches_statvfs() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(proc.join("self/mountinfo"), MOUNTINFO).unwrap();
        let exclude: Vec<String> = DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect();
        let mut c = FilesystemCollector::new(
            "host/a".into(),
            proc,
            "/".into(),
            NameFilter::new(&[], &exclude),
            1_000,
        );
        let mut out = Collection::default();
        // /mnt/my disk does not exist here: a mount that vanished is skipped.
        c.collect(&mut out).await.unwrap();
        let mounts: std::collections::BTreeSet<&str> = out
            .samples
            .iter()
            .filter_map(|s| {
                s.attributes
                    .iter()
                    .find(|(k, _)| k == "mountpoint")
                    .map(|(_, v)| v.as_str())
            })
            .collect();
        assert_eq!(
            mounts.into_iter().collect::<Vec<_>>(),
            vec!["/"],
            "proc and /dev/* are left out"
        );
        let limit = out
            .samples
            .iter()
            .find(|s| s.metric == "system.filesystem.limit")
            .unwrap()
            .value;
        let st = nix::sys::statvfs::statvfs("/").unwrap();
        assert_eq!(limit, (st.blocks() * st.fragment_size()) as f64);
    }
}
