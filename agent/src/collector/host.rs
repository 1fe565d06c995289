//! The host collector: CPU (total and per core), load, memory, swap, uptime and the
//! host's identity, read straight from procfs (cheaper than a general-purpose
//! library, and every path is relative to the configured host roots so the agent
//! can run in a container).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infrawatch_common::resource::{self, kind, metric};
use infrawatch_common::time::now_unix_ms;

use super::{CollectError, Collection, Collector, ObservedResource};
use crate::config::HostPaths;

/// Cumulative CPU times of one CPU line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time doing anything but idle and iowait.
    pub busy: u64,
    /// Everything, including idle and iowait.
    pub total: u64,
}

impl CpuTimes {
    /// Fraction of time busy between `earlier` and `self`, if any time passed.
    pub fn utilization_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        if total == 0 {
            return None;
        }
        Some((busy as f64 / total as f64).clamp(0.0, 1.0))
    }
}

/// CPU times of `/proc/stat`: the total line and one per core, by core number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuStat {
    /// The aggregate `cpu` line.
    pub total: CpuTimes,
    /// `cpuN` lines.
    pub cores: BTreeMap<u32, CpuTimes>,
}

/// Parses `/proc/stat`.
pub fn parse_stat(text: &str) -> Result<CpuStat, String> {
    let mut stat = CpuStat::default();
    let mut saw_total = false;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(label) = fields.next() else { continue };
        let Some(rest) = label.strip_prefix("cpu") else {
            continue;
        };
        let values: Vec<u64> = fields
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("line {label}: {e}"))?;
        if values.len() < 4 {
            return Err(format!(
                "line {label} has {} fields, expected at least 4",
                values.len()
            ));
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time
        // is already counted in user and nice, so only the first eight are summed.
        let total: u64 = values.iter().take(8).sum();
        let idle = values[3] + values.get(4).copied().unwrap_or(0);
        let times = CpuTimes {
            busy: total.saturating_sub(idle),
            total,
        };
        if rest.is_empty() {
            stat.total = times;
            saw_total = true;
        } else {
            let n = rest.parse().map_err(|_| format!("bad cpu label {label}"))?;
            stat.cores.insert(n, times);
        }
    }
    if !saw_total {
        return Err("no aggregate cpu line".into());
    }
    Ok(stat)
}

/// Memory figures of `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// MemTotal.
    pub total: u64,
    /// MemFree.
    pub free: u64,
    /// MemAvailable.
    pub available: u64,
    /// Buffers.
    pub buffers: u64,
    /// Cached.
    pub cached: u64,
    /// SwapTotal.
    pub swap_total: u64,
    /// SwapFree.
    pub swap_free: u64,
}

/// Parses `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let mut m = MemInfo::default();
    let mut seen_total = false;
    let mut seen_available = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_ascii_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            _ => value,
        };
        match key {
            "MemTotal" => {
                m.total = bytes;
                seen_total = true;
            }
            "MemFree" => m.free = bytes,
            "MemAvailable" => {
                m.available = bytes;
                seen_available = true;
            }
            "Buffers" => m.buffers = bytes,
            "Cached" => m.cached = bytes,
            "SwapTotal" => m.swap_total = bytes,
            "SwapFree" => m.swap_free = bytes,
            _ => {}
        }
    }
    if !seen_total || !seen_available {
        return Err("MemTotal or MemAvailable missing".into());
    }
    Ok(m)
}

/// Parses the three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<[f64; 3], String> {
    let v: Vec<f64> = text
        .split_ascii_whitespace()
        .take(3)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e: std::num::ParseFloatError| e.to_string())?;
    match v.as_slice() {
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err("fewer than three load averages".into()),
    }
}

/// Parses the uptime in seconds from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Result<f64, String> {
    text.split_ascii_whitespace()
        .next()
        .ok_or_else(|| "empty".to_string())?
        .parse()
        .map_err(|e: std::num::ParseFloatError| e.to_string())
}

/// Fields of `/etc/os-release`.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// Who the host is; read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// Kernel hostname.
    pub hostname: String,
    /// `os-release` PRETTY_NAME (or NAME).
    pub os_description: String,
    /// `os-release` ID.
    pub os_name: String,
    /// `os-release` VERSION_ID.
    pub os_version: String,
    /// Kernel release.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
}

impl HostIdentity {
    /// Reads the identity of the host under `paths`.
    pub fn read(paths: &HostPaths) -> Result<Self, CollectError> {
        let machine_id = [
            paths.root.join("etc/machine-id"),
            paths.root.join("var/lib/dbus/machine-id"),
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && resource::validate_resource_id(s).is_ok())
        .ok_or_else(|| CollectError::Parse {
            path: paths.root.join("etc/machine-id").display().to_string(),
            reason: "no usable machine id (also tried var/lib/dbus/machine-id)".into(),
        })?;
        // procfs answers with the reader's own UTS namespace, so an agent in a
        // container reads the node's name from its root filesystem instead.
        let node_hostname = (paths.root != Path::new("/"))
            .then(|| std::fs::read_to_string(paths.root.join("etc/hostname")).ok())
            .flatten()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let hostname = match node_hostname {
            Some(h) => h,
            None => read_trimmed(&paths.proc.join("sys/kernel/hostname"))?,
        };
        let kernel_version = read_trimmed(&paths.proc.join("sys/kernel/osrelease"))?;
        let os = ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|p| std::fs::read_to_string(paths.root.join(p)).ok())
            .map(|t| parse_os_release(&t))
            .unwrap_or_default();
        let get = |k: &str| os.get(k).cloned().unwrap_or_default();
        let os_description = os
            .get("PRETTY_NAME")
            .or_else(|| os.get("NAME"))
            .cloned()
            .unwrap_or_else(|| "Linux".into());
        Ok(Self {
            machine_id,
            hostname,
            os_description,
            os_name: get("ID"),
            os_version: get("VERSION_ID"),
            kernel_version,
            arch: std::env::consts::ARCH.to_string(),
        })
    }

    /// The host resource this identity describes, labelled with the Kubernetes
    /// node name when there is one.
    pub fn resource(&self, interval_ms: u32, node_name: &str) -> ObservedResource {
        let mut attributes = BTreeMap::new();
        attributes.insert("host.id".into(), self.machine_id.clone());
        attributes.insert("host.name".into(), self.hostname.clone());
        attributes.insert("host.arch".into(), self.arch.clone());
        attributes.insert("os.type".into(), "linux".into());
        attributes.insert("os.name".into(), self.os_name.clone());
        attributes.insert("os.version".into(), self.os_version.clone());
        attributes.insert("os.description".into(), self.os_description.clone());
        attributes.insert("os.kernel.version".into(), self.kernel_version.clone());
        let mut labels = BTreeMap::new();
        labels.insert("host.name".into(), self.hostname.clone());
        if !node_name.is_empty() {
            labels.insert("k8s.node.name".into(), node_name.to_string());
        }
        ObservedResource {
            id: resource::host_id(&self.machine_id),
            kind: kind::HOST,
            labels,
            attributes,
            relations: Vec::new(),
            interval_ms,
        }
    }
}

fn read_trimmed(path: &Path) -> Result<String, CollectError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CollectError::Read {
            path: path.display().to_string(),
            source,
        })
}

/// Reports the host resource and its CPU, load, memory, swap and uptime series.
pub struct HostCollector {
    identity: HostIdentity,
    node_name: String,
    proc_root: PathBuf,
    interval_ms: u32,
    /// The previous `/proc/stat` reading and when it was taken.
    previous_cpu: Option<(CpuStat, Instant)>,
}

/// Shortest time between two `/proc/stat` readings for a utilization: the kernel
/// counts in ticks of 10 ms, so a shorter span gives a meaningless figure.
const MIN_CPU_SPAN: Duration = Duration::from_millis(200);

impl HostCollector {
    /// Reads the host identity and a first CPU reading, so the first collection
    /// already has a CPU utilization.
    pub fn new(paths: &HostPaths, interval_ms: u32, node_name: &str) -> Result<Self, CollectError> {
        let identity = HostIdentity::read(paths)?;
        let mut collector = Self {
            identity,
            node_name: node_name.to_string(),
            proc_root: paths.proc.clone(),
            interval_ms,
            previous_cpu: None,
        };
        collector.previous_cpu = collector.read_stat().ok().map(|s| (s, Instant::now()));
        Ok(collector)
    }

    fn read(&self, name: &str) -> Result<(String, String), CollectError> {
        let path = self.proc_root.join(name);
        let shown = path.display().to_string();
        std::fs::read_to_string(&path)
            .map(|text| (text, shown.clone()))
            .map_err(|source| CollectError::Read {
                path: shown,
                source,
            })
    }

    fn read_stat(&self) -> Result<CpuStat, CollectError> {
        let (text, path) = self.read("stat")?;
        parse_stat(&text).map_err(|reason| CollectError::Parse { path, reason })
    }

    fn collect_cpu(
        &mut self,
        id: &str,
        now: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        let stat = self.read_stat()?;
        out.sample(
            id,
            metric::CPU_LOGICAL_COUNT,
            &[],
            now,
            stat.cores.len() as f64,
        );
        let now_instant = Instant::now();
        if let Some((prev, taken)) = &self.previous_cpu {
            if now_instant.duration_since(*taken) < MIN_CPU_SPAN {
                // Too soon for a meaningful figure; keep the older baseline.
                return Ok(());
            }
            if let Some(u) = stat.total.utilization_since(&prev.total) {
                out.sample(id, metric::CPU_UTILIZATION, &[], now, u);
            }
            for (n, times) in &stat.cores {
                if let Some(u) = prev.cores.get(n).and_then(|p| times.utilization_since(p)) {
                    out.sample(
                        id,
                        metric::CPU_UTILIZATION,
                        &[("cpu", &n.to_string())],
                        now,
                        u,
                    );
                }
            }
        }
        self.previous_cpu = Some((stat, now_instant));
        Ok(())
    }

    fn collect_memory(&self, id: &str, now: i64, out: &mut Collection) -> Result<(), CollectError> {
        let (text, path) = self.read("meminfo")?;
        let m = parse_meminfo(&text).map_err(|reason| CollectError::Parse { path, reason })?;
        let used = m.total.saturating_sub(m.free + m.buffers + m.cached);
        for (state, v) in [
            ("used", used),
            ("free", m.free),
            ("buffers", m.buffers),
            ("cached", m.cached),
        ] {
            out.sample(id, metric::MEMORY_USAGE, &[("state", state)], now, v as f64);
        }
        out.sample(id, metric::MEMORY_LIMIT, &[], now, m.total as f64);
        out.sample(id, metric::MEMORY_AVAILABLE, &[], now, m.available as f64);
        if m.total > 0 {
            let u = m.total.saturating_sub(m.available) as f64 / m.total as f64;
            out.sample(id, metric::MEMORY_UTILIZATION, &[], now, u);
        }
        let swap_used = m.swap_total.saturating_sub(m.swap_free);
        out.sample(
            id,
            metric::PAGING_USAGE,
            &[("state", "used")],
            now,
            swap_used as f64,
        );
        out.sample(
            id,
            metric::PAGING_USAGE,
            &[("state", "free")],
            now,
            m.swap_free as f64,
        );
        let swap_u = if m.swap_total > 0 {
            swap_used as f64 / m.swap_total as f64
        } else {
            0.0
        };
        out.sample(id, metric::PAGING_UTILIZATION, &[], now, swap_u);
        Ok(())
    }

    fn collect_load_and_uptime(
        &self,
        id: &str,
        now: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        let (text, path) = self.read("loadavg")?;
        let load = parse_loadavg(&text).map_err(|reason| CollectError::Parse { path, reason })?;
        out.sample(id, metric::CPU_LOAD_AVERAGE_1M, &[], now, load[0]);
        out.sample(id, metric::CPU_LOAD_AVERAGE_5M, &[], now, load[1]);
        out.sample(id, metric::CPU_LOAD_AVERAGE_15M, &[], now, load[2]);
        let (text, path) = self.read("uptime")?;
        let up = parse_uptime(&text).map_err(|reason| CollectError::Parse { path, reason })?;
        out.sample(id, metric::UPTIME, &[], now, up);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Collector for HostCollector {
    fn name(&self) -> &'static str {
        "host"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let resource = self.identity.resource(self.interval_ms, &self.node_name);
        let id = resource.id.clone();
        out.resources.push(resource);
        let now = now_unix_ms();
        // Each part is independent: a failure in one keeps the others' samples.
        let cpu = self.collect_cpu(&id, now, out);
        let memory = self.collect_memory(&id, now, out);
        let load = self.collect_load_and_uptime(&id, now, out);
        cpu.and(memory).and(load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 0 100 700 100 0 0 0 0 0\n\
                        cpu0 50 0 50 350 50 0 0 0 0 0\n\
                        cpu1 50 0 50 350 50 0 0 0 0 0\n\
                        intr 1 2 3\n";

    #[test]
    fn stat_busy_excludes_idle_and_iowait() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s.total,
            CpuTimes {
                busy: 200,
                total: 1000
            }
        );
        assert_eq!(s.cores.len(), 2);
        let later = CpuTimes {
            busy: 300,
            total: 1200,
        };
        assert_eq!(later.utilization_since(&s.total), Some(0.5));
        assert_eq!(s.total.utilization_since(&s.total), None);
        assert!(parse_stat("intr 1\n").is_err());
        assert!(parse_stat("cpu x y z w\n").is_err());
    }

    #[test]
    fn meminfo_in_bytes() {
        let m = parse_meminfo(
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\nBuffers: 10 kB\n\
             Cached: 200 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
        )
        .unwrap();
        assert_eq!(m.total, 1_024_000);
        assert_eq!(m.available, 409_600);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
    }

    #[test]
    fn loadavg_uptime_os_release() {
        assert_eq!(
            parse_loadavg("0.50 0.25 0.10 1/100 42\n").unwrap(),
            [0.5, 0.25, 0.1]
        );
        assert!(parse_loadavg("0.5\n").is_err());
        assert_eq!(parse_uptime("123.45 67.8\n").unwrap(), 123.45);
        let os = parse_os_release("NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n");
        assert_eq!(os["VERSION_ID"], "12");
        assert_eq!(os["ID"], "debian");
    }

    fn fake_host(dir: &Path) -> HostPaths {
        let proc = dir.join("proc");
        std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/machine-id"), "abc123\n").unwrap();
        std::fs::write(dir.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
        std::fs::write(proc.join("sys/kernel/hostname"), "pod-abc\n").unwrap();
        std::fs::write(dir.join("etc/hostname"), "node-1\n").unwrap();
        std::fs::write(proc.join("sys/kernel/osrelease"), "6.1.0\n").unwrap();
        std::fs::write(proc.join("stat"), STAT).unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\nSwapTotal: 100 kB\nSwapFree: 50 kB\n",
        )
        .unwrap();
        std::fs::write(proc.join("loadavg"), "1.0 2.0 3.0 1/1 1\n").unwrap();
        std::fs::write(proc.join("uptime"), "99.0 1.0\n").unwrap();
        HostPaths {
            proc,
            sys: dir.join("sys"),
            root: dir.to_path_buf(),
        }
    }

    fn value(c: &Collection, metric: &str, attrs: &[(&str, &str)]) -> Option<f64> {
        c.samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.attributes.len() == attrs.len()
                    && s.attributes
                        .iter()
                        .zip(attrs)
                        .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
            })
            .map(|s| s.value)
    }

    #[tokio::test]
    async fn collects_from_a_fake_host_tree() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fake_host(dir.path());
        let mut c = HostCollector::new(&paths, 1000, "").unwrap();
        tokio::time::sleep(MIN_CPU_SPAN).await;
        std::fs::write(
            paths.proc.join("stat"),
            "cpu  200 0 100 800 100 0 0 0 0 0\ncpu0 150 0 50 350 50 0 0 0 0 0\ncpu1 50 0 50 450 50 0 0 0 0 0\n",
        )
        .unwrap();
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        assert_eq!(out.resources[0].id, "host/abc123");
        assert_eq!(out.resources[0].attributes["host.name"], "node-1");
        assert_eq!(out.resources[0].attributes["os.version"], "12");
        assert_eq!(value(&out, metric::CPU_UTILIZATION, &[]), Some(0.5));
        assert_eq!(
            value(&out, metric::CPU_UTILIZATION, &[("cpu", "0")]),
            Some(1.0)
        );
        assert_eq!(
            value(&out, metric::CPU_UTILIZATION, &[("cpu", "1")]),
            Some(0.0)
        );
        assert_eq!(value(&out, metric::MEMORY_UTILIZATION, &[]), Some(0.75));
        assert_eq!(value(&out, metric::PAGING_UTILIZATION, &[]), Some(0.5));
        assert_eq!(value(&out, metric::CPU_LOAD_AVERAGE_15M, &[]), Some(3.0));
        assert_eq!(value(&out, metric::UPTIME, &[]), Some(99.0));
    }

    #[tokio::test]
    async fn a_broken_file_keeps_the_other_samples() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fake_host(dir.path());
        let mut c = HostCollector::new(&paths, 1000, "").unwrap();
        std::fs::write(paths.proc.join("meminfo"), "garbage").unwrap();
        let mut out = Collection::default();
        let err = c.collect(&mut out).await.unwrap_err();
        assert!(err.to_string().contains("meminfo"), "{err}");
        assert_eq!(value(&out, metric::UPTIME, &[]), Some(99.0));
        assert_eq!(out.resources.len(), 1);
    }
}
