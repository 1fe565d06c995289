//! The host collector: CPU (total and per core), load, memory, swap, uptime and the
//! host's identity, read straight from procfs (cheaper than a general-purpose
//! library, and every path is relative to the configured host roots so the agent
//! can run in a container).
//!
//! It is the one collector that reads `/proc/stat` (costly for the kernel to
//! write: its `intr` line walks every interrupt), and reports all of it:
//! utilization (total, per core, and the steal and iowait shares), per-core time
//! by state (`system.cpu.time{cpu,state}`, seconds) and guest time
//! (`system.linux.cpu.guest_time{cpu,state}`), context switches, forks,
//! interrupts, softirqs by type, runnable and blocked tasks and the boot time.
//! Every field of `/proc/meminfo` goes out as `system.linux.meminfo{field}`
//! (bytes; `HugePages_*` counts as they are) next to the memory figures, and
//! the host's clock as `system.time`. The four files stay open between runs
//! ([`super::proc_file`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use infrawatch_common::resource::{self, kind, metric};
use infrawatch_common::time::now_unix_ms;

use super::proc_file::ProcFile;
use super::{CollectError, Collection, Collector, ObservedResource};
use crate::config::HostPaths;

/// Clock ticks per second of the CPU times in `/proc/stat` (`USER_HZ`: the
/// kernel converts to 100 per second for this interface on every architecture
/// the agent builds for).
pub const USER_HZ: f64 = 100.0;

/// The CPU states of a `/proc/stat` CPU line, in its order.
pub const CPU_STATES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// The guest states of a `/proc/stat` CPU line, after [`CPU_STATES`].
pub const CPU_GUEST_STATES: [&str; 2] = ["user", "nice"];

/// Cumulative CPU times of one CPU line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time doing anything but idle and iowait.
    pub busy: u64,
    /// Everything, including idle and iowait.
    pub total: u64,
    /// Each field: [`CPU_STATES`], then [`CPU_GUEST_STATES`] (0 where the
    /// kernel gives fewer).
    pub ticks: [u64; 10],
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

    /// Fraction of all time spent in field `i` (of [`CPU_STATES`]) between
    /// `earlier` and `self`, if any time passed.
    pub fn share_since(&self, earlier: &CpuTimes, i: usize) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let part = self.ticks.get(i)?.checked_sub(*earlier.ticks.get(i)?)?;
        (total > 0).then(|| (part as f64 / total as f64).clamp(0.0, 1.0))
    }
}

/// The counters of `/proc/stat` besides the CPU lines; `None` for a line the
/// kernel did not give.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatCounters {
    /// `ctxt`: context switches since boot.
    pub context_switches: Option<u64>,
    /// `processes`: forks since boot.
    pub forks: Option<u64>,
    /// The first figure of `intr`: interrupts serviced since boot.
    pub interrupts: Option<u64>,
    /// `procs_running`: runnable tasks.
    pub procs_running: Option<u64>,
    /// `procs_blocked`: tasks waiting for I/O.
    pub procs_blocked: Option<u64>,
    /// `btime`: boot time, Unix seconds.
    pub boot_time: Option<u64>,
    /// `softirq`: softirqs handled since boot, by [`SOFTIRQ_TYPES`].
    pub softirqs: Option<[u64; 10]>,
}

/// The softirq types of the `softirq` line of `/proc/stat`, in its order.
pub const SOFTIRQ_TYPES: [&str; 10] = [
    "hi", "timer", "net_tx", "net_rx", "block", "irq_poll", "tasklet", "sched", "hrtimer", "rcu",
];

/// The per-type counts of the `softirq` line (after the label and the total);
/// `None` unless all ten are there.
fn parse_softirqs<'a>(mut fields: impl Iterator<Item = &'a str>) -> Option<[u64; 10]> {
    fields.next()?;
    let mut counts = [0; 10];
    for slot in &mut counts {
        *slot = fields.next()?.parse().ok()?;
    }
    Some(counts)
}

/// What `/proc/stat` says: the total CPU line, one per core by core number,
/// and the other counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuStat {
    /// The aggregate `cpu` line.
    pub total: CpuTimes,
    /// `cpuN` lines.
    pub cores: BTreeMap<u32, CpuTimes>,
    /// The other lines.
    pub counters: StatCounters,
}

/// Parses one CPU line's figures (after its label).
fn parse_cpu_times<'a>(
    label: &str,
    fields: impl Iterator<Item = &'a str>,
) -> Result<CpuTimes, String> {
    let mut times = CpuTimes::default();
    let mut n = 0;
    for field in fields {
        let v: u64 = field.parse().map_err(|e| format!("line {label}: {e}"))?;
        if let Some(slot) = times.ticks.get_mut(n) {
            *slot = v;
        }
        n += 1;
    }
    if n < 4 {
        return Err(format!("line {label} has {n} fields, expected at least 4"));
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time
    // is already counted in user and nice, so only the first eight are summed.
    let t = &times.ticks;
    times.total = t[..8].iter().sum();
    times.busy = times.total.saturating_sub(t[3] + t[4]);
    Ok(times)
}

/// The first number after the label of a `/proc/stat` line.
fn first_number<'a>(mut fields: impl Iterator<Item = &'a str>) -> Option<u64> {
    fields.next()?.parse().ok()
}

/// Parses `/proc/stat`.
pub fn parse_stat(text: &str) -> Result<CpuStat, String> {
    let mut stat = CpuStat::default();
    let mut saw_total = false;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(label) = fields.next() else { continue };
        let c = &mut stat.counters;
        match label {
            "cpu" => {
                stat.total = parse_cpu_times(label, fields)?;
                saw_total = true;
            }
            "ctxt" => c.context_switches = first_number(fields),
            "processes" => c.forks = first_number(fields),
            "intr" => c.interrupts = first_number(fields),
            "procs_running" => c.procs_running = first_number(fields),
            "procs_blocked" => c.procs_blocked = first_number(fields),
            "btime" => c.boot_time = first_number(fields),
            "softirq" => c.softirqs = parse_softirqs(fields),
            _ => {
                let Some(n) = label.strip_prefix("cpu") else {
                    continue;
                };
                let n = n.parse().map_err(|_| format!("bad cpu label {label}"))?;
                stat.cores.insert(n, parse_cpu_times(label, fields)?);
            }
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

/// Every field of `/proc/meminfo` with its value, in bytes where the kernel
/// gives kB (the `HugePages_*` counts have no unit and are given as they are).
pub fn meminfo_fields(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let (key, rest) = line.split_once(':')?;
        let mut parts = rest.split_ascii_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            _ => value,
        };
        Some((key, bytes))
    })
}

/// Parses `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let mut m = MemInfo::default();
    let mut seen_total = false;
    let mut seen_available = false;
    for (key, bytes) in meminfo_fields(text) {
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

/// Reports the host resource and its CPU, load, memory, swap, uptime and clock
/// series, and everything else `/proc/stat` says (the one collector that reads
/// it, as the kernel walks every interrupt to write it): per-core CPU time,
/// steal and iowait shares, context switches, forks, interrupts, runnable and
/// blocked tasks and the boot time.
pub struct HostCollector {
    identity: HostIdentity,
    node_name: String,
    interval_ms: u32,
    /// `<proc>/stat`.
    stat: ProcFile,
    /// `<proc>/meminfo`.
    meminfo: ProcFile,
    /// `<proc>/loadavg`.
    loadavg: ProcFile,
    /// `<proc>/uptime`.
    uptime: ProcFile,
    /// The previous `/proc/stat` reading and when it was taken.
    previous_cpu: Option<(CpuStat, Instant)>,
}

/// Shortest time between two `/proc/stat` readings for a utilization: the kernel
/// counts in ticks of 10 ms, so a shorter span gives a meaningless figure.
const MIN_CPU_SPAN: Duration = Duration::from_millis(200);

/// The CPU states whose share of all CPU time is reported next to the
/// utilization, as indexes of [`CPU_STATES`]: steal and iowait.
const SHARED_STATES: [usize; 2] = [7, 4];

impl HostCollector {
    /// Reads the host identity and a first CPU reading, so the first collection
    /// already has a CPU utilization.
    pub fn new(paths: &HostPaths, interval_ms: u32, node_name: &str) -> Result<Self, CollectError> {
        let identity = HostIdentity::read(paths)?;
        let mut collector = Self {
            identity,
            node_name: node_name.to_string(),
            interval_ms,
            stat: ProcFile::new(paths.proc.join("stat")),
            meminfo: ProcFile::new(paths.proc.join("meminfo")),
            loadavg: ProcFile::new(paths.proc.join("loadavg")),
            uptime: ProcFile::new(paths.proc.join("uptime")),
            previous_cpu: None,
        };
        collector.previous_cpu = collector.read_stat().ok().map(|s| (s, Instant::now()));
        Ok(collector)
    }

    /// Reads and parses `/proc/stat`.
    fn read_stat(&mut self) -> Result<CpuStat, CollectError> {
        let text = self.stat.read()?;
        parse_stat(text).map_err(|reason| self.stat.parse_error(reason))
    }

    /// Reports everything `/proc/stat` says; the utilization once the previous
    /// reading is old enough.
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
        record_cpu_times(&stat, id, now, out);
        record_stat_counters(&stat.counters, id, now, out);
        let now_instant = Instant::now();
        if let Some((prev, taken)) = &self.previous_cpu {
            if now_instant.duration_since(*taken) < MIN_CPU_SPAN {
                // Too soon for a meaningful figure; keep the older baseline.
                return Ok(());
            }
            record_utilization(&stat, prev, id, now, out);
        }
        self.previous_cpu = Some((stat, now_instant));
        Ok(())
    }

    /// Reports memory and swap, and every field of `/proc/meminfo`.
    fn collect_memory(
        &mut self,
        id: &str,
        now: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        let text = self.meminfo.read()?;
        for (field, value) in meminfo_fields(text) {
            out.sample(id, metric::MEMINFO, &[("field", field)], now, value as f64);
        }
        let m = parse_meminfo(text).map_err(|reason| self.meminfo.parse_error(reason))?;
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

    /// Reports the load averages and the uptime.
    fn collect_load_and_uptime(
        &mut self,
        id: &str,
        now: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        let text = self.loadavg.read()?;
        let load = parse_loadavg(text).map_err(|reason| self.loadavg.parse_error(reason))?;
        out.sample(id, metric::CPU_LOAD_AVERAGE_1M, &[], now, load[0]);
        out.sample(id, metric::CPU_LOAD_AVERAGE_5M, &[], now, load[1]);
        out.sample(id, metric::CPU_LOAD_AVERAGE_15M, &[], now, load[2]);
        let text = self.uptime.read()?;
        let up = parse_uptime(text).map_err(|reason| self.uptime.parse_error(reason))?;
        out.sample(id, metric::UPTIME, &[], now, up);
        Ok(())
    }
}

/// Adds each core's time per state and guest time, in seconds.
fn record_cpu_times(stat: &CpuStat, id: &str, now: i64, out: &mut Collection) {
    for (n, times) in &stat.cores {
        let cpu = n.to_string();
        let (states, guest) = times.ticks.split_at(CPU_STATES.len());
        for (state, ticks) in CPU_STATES.iter().zip(states) {
            let attrs = [("cpu", cpu.as_str()), ("state", *state)];
            out.sample(id, metric::CPU_TIME, &attrs, now, *ticks as f64 / USER_HZ);
        }
        for (state, ticks) in CPU_GUEST_STATES.iter().zip(guest) {
            let attrs = [("cpu", cpu.as_str()), ("state", *state)];
            out.sample(
                id,
                metric::CPU_GUEST_TIME,
                &attrs,
                now,
                *ticks as f64 / USER_HZ,
            );
        }
    }
}

/// Adds the counters of the lines after the CPU lines.
fn record_stat_counters(c: &StatCounters, id: &str, now: i64, out: &mut Collection) {
    for (name, value) in [
        (metric::CONTEXT_SWITCHES, c.context_switches),
        (metric::PROCESSES_CREATED, c.forks),
        (metric::INTERRUPTS, c.interrupts),
        (metric::BOOT_TIME, c.boot_time),
    ] {
        if let Some(v) = value {
            out.sample(id, name, &[], now, v as f64);
        }
    }
    for (status, value) in [("running", c.procs_running), ("blocked", c.procs_blocked)] {
        if let Some(v) = value {
            let attrs = [("status", status)];
            out.sample(id, metric::PROCESSES_COUNT, &attrs, now, v as f64);
        }
    }
    for (kind, v) in SOFTIRQ_TYPES.iter().zip(c.softirqs.iter().flatten()) {
        out.sample(id, metric::SOFTIRQS, &[("type", *kind)], now, *v as f64);
    }
}

/// Adds the utilization (total and per core) and the steal and iowait shares
/// of all CPU time since `prev`.
fn record_utilization(stat: &CpuStat, prev: &CpuStat, id: &str, now: i64, out: &mut Collection) {
    if let Some(u) = stat.total.utilization_since(&prev.total) {
        out.sample(id, metric::CPU_UTILIZATION, &[], now, u);
    }
    for i in SHARED_STATES {
        if let Some(share) = stat.total.share_since(&prev.total, i) {
            let attrs = [("state", CPU_STATES[i])];
            out.sample(id, metric::CPU_UTILIZATION, &attrs, now, share);
        }
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

#[async_trait::async_trait]
impl Collector for HostCollector {
    fn name(&self) -> &'static str {
        "host"
    }
    fn is_local(&self) -> bool {
        true
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let resource = self.identity.resource(self.interval_ms, &self.node_name);
        let id = resource.id.clone();
        out.resources.push(resource);
        let now = now_unix_ms();
        out.sample(&id, metric::TIME, &[], now, now as f64 / 1000.0);
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
    use crate::collector::test_support::value;

    const STAT: &str = "cpu  100 0 100 700 100 0 0 0 0 0\n\
                        cpu0 50 0 50 350 50 0 0 0 0 0\n\
                        cpu1 50 0 50 350 50 0 0 0 0 0\n\
                        intr 1 2 3\n";

    /// `/proc/stat` of a two-core VM (the `intr` line cut short).
    const REAL_STAT: &str = "\
cpu  136239 0 12294 132859 987 0 153 25 0 0
cpu0 67283 0 5752 67858 262 0 27 12 0 0
cpu1 68956 0 6541 65000 725 0 125 13 0 0
intr 1113456 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 12 0 0 0 0 283 176 0 35 1 102346 0
ctxt 1969559
btime 1796471229
processes 30478
procs_running 1
procs_blocked 0
softirq 435494 0 67991 4 17190 102345 0 311 96953 0 150700
";

    /// `/proc/meminfo` of the same VM, cut short.
    const REAL_MEMINFO: &str = "\
MemTotal:       24683664 kB
MemFree:        22460536 kB
MemAvailable:   24031144 kB
Buffers:            4560 kB
Cached:          1740076 kB
SwapCached:            0 kB
Active:           683856 kB
Inactive:        1222420 kB
Active(anon):      25332 kB
Inactive(anon):   206412 kB
SwapTotal:             0 kB
SwapFree:              0 kB
HugePages_Total:       0
HugePages_Free:        0
HugePages_Rsvd:        0
HugePages_Surp:        0
Hugepagesize:       2048 kB
DirectMap1G:    25165824 kB
";

    #[test]
    fn stat_busy_excludes_idle_and_iowait() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!((s.total.busy, s.total.total), (200, 1000));
        assert_eq!(s.cores.len(), 2);
        let later = CpuTimes {
            busy: 300,
            total: 1200,
            ..CpuTimes::default()
        };
        assert_eq!(later.utilization_since(&s.total), Some(0.5));
        assert_eq!(s.total.utilization_since(&s.total), None);
        assert!(parse_stat("intr 1\n").is_err());
        assert!(parse_stat("cpu x y z w\n").is_err());
        assert!(parse_stat("cpu 1 2 3\n").is_err());
    }

    #[test]
    fn real_stat_gives_every_figure() {
        let s = parse_stat(REAL_STAT).unwrap();
        assert_eq!(
            s.cores[&1].ticks,
            [68956, 0, 6541, 65000, 725, 0, 125, 13, 0, 0]
        );
        assert_eq!(s.total.total, 136239 + 12294 + 132859 + 987 + 153 + 25);
        assert_eq!(
            s.counters,
            StatCounters {
                context_switches: Some(1_969_559),
                forks: Some(30_478),
                interrupts: Some(1_113_456),
                procs_running: Some(1),
                procs_blocked: Some(0),
                boot_time: Some(1_796_471_229),
                softirqs: Some([0, 67991, 4, 17190, 102_345, 0, 311, 96953, 0, 150_700]),
            }
        );
        let mut later = s.total;
        later.ticks[7] += 10;
        later.ticks[0] += 90;
        later.total += 100;
        assert_eq!(later.share_since(&s.total, 7), Some(0.1));
        assert_eq!(later.share_since(&s.total, 4), Some(0.0));
        assert_eq!(s.total.share_since(&s.total, 7), None);
        let short = parse_stat("cpu  1 2 3 4\n").unwrap();
        assert_eq!(short.counters, StatCounters::default());
    }

    #[test]
    fn real_meminfo_every_field() {
        let fields: Vec<(&str, u64)> = meminfo_fields(REAL_MEMINFO).collect();
        assert_eq!(fields.len(), 18);
        assert_eq!(fields[0], ("MemTotal", 24_683_664 * 1024));
        assert!(fields.contains(&("Active(anon)", 25_332 * 1024)));
        assert!(fields.contains(&("HugePages_Total", 0)));
        assert!(fields.contains(&("Hugepagesize", 2048 * 1024)));
        let m = parse_meminfo(REAL_MEMINFO).unwrap();
        assert_eq!(m.available, 24_031_144 * 1024);
        assert_eq!(m.cached, 1_740_076 * 1024);
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

    #[tokio::test]
    async fn collects_from_a_fake_host_tree() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fake_host(dir.path());
        let mut c = HostCollector::new(&paths, 1000, "").unwrap();
        tokio::time::sleep(MIN_CPU_SPAN).await;
        std::fs::write(
            paths.proc.join("stat"),
            "cpu  200 0 100 800 100 0 0 0 0 0\ncpu0 150 0 50 350 50 0 0 0 0 0\n\
             cpu1 50 0 50 450 50 0 0 0 0 0\nintr 1000 3 4\nctxt 77\nbtime 1764920000\n\
             processes 12\nprocs_running 3\nprocs_blocked 1\nsoftirq 10 1 2 3 4 0 0 0 0 0 0\n",
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
        // Everything else /proc/stat and /proc/meminfo say.
        assert_eq!(
            value(&out, metric::CPU_TIME, &[("cpu", "0"), ("state", "user")]),
            Some(1.5)
        );
        assert_eq!(
            value(&out, metric::CPU_TIME, &[("cpu", "1"), ("state", "idle")]),
            Some(4.5)
        );
        assert_eq!(
            value(
                &out,
                metric::CPU_GUEST_TIME,
                &[("cpu", "1"), ("state", "nice")]
            ),
            Some(0.0)
        );
        let times = out.samples.iter().filter(|s| s.metric == metric::CPU_TIME);
        assert_eq!(times.count(), 16, "eight states of two cores");
        assert_eq!(value(&out, metric::CONTEXT_SWITCHES, &[]), Some(77.0));
        assert_eq!(value(&out, metric::PROCESSES_CREATED, &[]), Some(12.0));
        assert_eq!(value(&out, metric::INTERRUPTS, &[]), Some(1000.0));
        assert_eq!(
            value(&out, metric::PROCESSES_COUNT, &[("status", "running")]),
            Some(3.0)
        );
        assert_eq!(
            value(&out, metric::PROCESSES_COUNT, &[("status", "blocked")]),
            Some(1.0)
        );
        assert_eq!(value(&out, metric::BOOT_TIME, &[]), Some(1_764_920_000.0));
        assert_eq!(
            value(&out, metric::SOFTIRQS, &[("type", "net_rx")]),
            Some(4.0)
        );
        assert_eq!(
            value(&out, metric::CPU_UTILIZATION, &[("state", "steal")]),
            Some(0.0)
        );
        assert_eq!(
            value(&out, metric::CPU_UTILIZATION, &[("state", "iowait")]),
            Some(0.0)
        );
        assert_eq!(
            value(&out, metric::MEMINFO, &[("field", "SwapFree")]),
            Some(51_200.0)
        );
        let meminfo = out.samples.iter().filter(|s| s.metric == metric::MEMINFO);
        assert_eq!(meminfo.count(), 5);
        assert!(value(&out, metric::TIME, &[]).is_some_and(|t| t > 1.7e9));
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
