//! Kernel tables and hardware health, read straight from procfs and sysfs; every
//! series belongs to the host resource:
//!
//! - connection tracking (`<proc>/sys/net/netfilter/nf_conntrack_{count,max}`):
//!   `system.network.conntrack.{count,limit}`;
//! - file handles (`<proc>/sys/fs/file-nr`):
//!   `system.linux.file_descriptors.{allocated,limit}`;
//! - sockets (`<proc>/net/sockstat{,6}`): `system.linux.sockets.used` and
//!   `system.linux.sockets.count{protocol,state}`;
//! - listen queue overflows and drops per second between runs (`TcpExt` of
//!   `<proc>/net/netstat`): `system.network.tcp.listen_{overflows,drops}.rate`;
//! - OOM kills since boot (`oom_kill` of `<proc>/vmstat`): `system.linux.oom_kills`;
//! - boot time (`btime` of `<proc>/stat`, Unix seconds): `system.boot_time`;
//! - temperatures (`<sys>/class/hwmon/hwmon*/temp*_{input,label,max,crit}`), in
//!   degrees Celsius: `system.hardware.temperature{chip,sensor}` and
//!   `system.hardware.temperature.limit{chip,sensor,kind}`;
//! - memory errors since boot (`<sys>/devices/system/edac/mc/mc*/{ce,ue}_count`):
//!   `system.memory.edac.errors{controller,type}`;
//! - software RAID (`<proc>/mdstat`): `system.md.disks{device,state}` and
//!   `system.md.degraded{device}`;
//! - bonding (`<proc>/net/bonding/*`): `system.network.bond.slaves{bond,state}`.
//!
//! What the kernel does not have (no conntrack module, no EDAC driver, no hwmon
//! chip, no md array, no bond) gives no series and no error. A file that is
//! there but cannot be read or parsed is an error of the run, after the other
//! sections have had their turn. Procfs network files are read from
//! `<proc>/1/net` when present (the host's namespace, for an agent in a pod with
//! the host's /proc), else `<proc>/net`, as the network collector does.
//!
//! The kernel clock's discipline comes from `adjtimex(2)` (no file has it), and
//! only when the procfs root is the agent's own `/proc`:
//! `system.clock.{synchronized,offset,max_error}`. Neither nix nor rustix wraps
//! the call, so [`read_clock`] holds this crate's one `unsafe` block.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Instant;

use infrawatch_common::time::now_unix_ms;

use super::{CollectError, Collection, Collector};

/// Kinds of temperature limits hwmon reports, as `(file suffix, kind)`.
const TEMPERATURE_LIMITS: [(&str, &str); 2] = [("max", "max"), ("crit", "crit")];

/// Socket states of sockstat that count sockets (`mem` and `memory` count pages
/// and bytes).
const SOCKET_STATES: [&str; 4] = ["inuse", "orphan", "tw", "alloc"];

/// The text of `path`; `None` when it is not there.
fn read_optional(path: &Path) -> Result<Option<String>, CollectError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(None),
        Err(source) => Err(CollectError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn parse_error(path: &Path, reason: impl Into<String>) -> CollectError {
    CollectError::Parse {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// One number alone in a file (`nf_conntrack_count`, `ce_count`, ...).
pub fn parse_number(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse().map_err(|_| format!("{t:?} is not a count"))
}

/// Allocated file handles and their limit, from `/proc/sys/fs/file-nr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHandles {
    /// Handles allocated (the first field).
    pub allocated: u64,
    /// The most the kernel will allocate (`fs.file-max`, the third field).
    pub limit: u64,
}

/// Parses `/proc/sys/fs/file-nr`: allocated, free (always 0 since 2.6), limit.
pub fn parse_file_nr(text: &str) -> Result<FileHandles, String> {
    let f: Vec<u64> = text
        .split_whitespace()
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    match f.as_slice() {
        [allocated, _, limit] => Ok(FileHandles {
            allocated: *allocated,
            limit: *limit,
        }),
        _ => Err(format!("{} fields, expected 3", f.len())),
    }
}

/// What `/proc/net/sockstat` and `sockstat6` say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sockstat {
    /// `sockets: used` (sockstat only).
    pub used: Option<u64>,
    /// `(protocol, state, count)`, protocol in lower case (`tcp`, `udp6`, ...),
    /// state one of [`SOCKET_STATES`].
    pub counts: Vec<(String, String, u64)>,
}

/// Parses sockstat or sockstat6 text. Fragment queues (`FRAG`) are not
/// sockets and are left out, as are memory figures.
pub fn parse_sockstat(text: &str) -> Sockstat {
    let mut out = Sockstat::default();
    for line in text.lines() {
        let Some((proto, rest)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let mut pairs = fields
            .chunks_exact(2)
            .filter_map(|kv| Some((kv[0], kv[1].parse::<u64>().ok()?)));
        if proto == "sockets" {
            out.used = pairs.find_map(|(k, v)| (k == "used").then_some(v));
            continue;
        }
        if proto.starts_with("FRAG") {
            continue;
        }
        let protocol = proto.to_ascii_lowercase();
        for (state, v) in pairs.filter(|(k, _)| SOCKET_STATES.contains(k)) {
            out.counts.push((protocol.clone(), state.to_string(), v));
        }
    }
    out
}

/// TCP listen queue counters of `/proc/net/netstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenCounters {
    /// `TcpExt: ListenOverflows`: connections dropped because the accept queue was full.
    pub overflows: u64,
    /// `TcpExt: ListenDrops`: all connections dropped at a listener.
    pub drops: u64,
}

/// Parses the listen counters out of `/proc/net/netstat`.
pub fn parse_listen_counters(text: &str) -> Result<ListenCounters, String> {
    let tables = super::network::parse_snmp(text);
    let tcp = tables.get("TcpExt").ok_or("no TcpExt table")?;
    let get = |key: &str| {
        tcp.get(key)
            .and_then(|v| u64::try_from(*v).ok())
            .ok_or_else(|| format!("TcpExt {key} missing"))
    };
    Ok(ListenCounters {
        overflows: get("ListenOverflows")?,
        drops: get("ListenDrops")?,
    })
}

/// The boot time in Unix seconds, from the `btime` line of `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// One md array of `/proc/mdstat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdArray {
    /// `md0`, ...
    pub device: String,
    /// `active` or `inactive`.
    pub state: String,
    /// Disks the array needs (the `n` of `[n/m]`; for RAID 0 and linear arrays,
    /// every member).
    pub required: u64,
    /// Disks in sync (the `m` of `[n/m]`).
    pub active: u64,
    /// Members marked `(F)`.
    pub failed: u64,
    /// Members marked `(S)`.
    pub spare: u64,
}

impl MdArray {
    /// True when fewer disks are in sync than the array needs.
    pub fn degraded(&self) -> bool {
        self.active < self.required
    }
}

/// The `[n/m]` of an mdstat status line.
fn disks_in_sync(line: &str) -> Option<(u64, u64)> {
    line.split_whitespace().find_map(|token| {
        let (n, m) = token
            .strip_prefix('[')?
            .strip_suffix(']')?
            .split_once('/')?;
        Some((n.parse().ok()?, m.parse().ok()?))
    })
}

/// Parses `/proc/mdstat`.
pub fn parse_mdstat(text: &str) -> Vec<MdArray> {
    let mut arrays: Vec<MdArray> = Vec::new();
    // Whether the newest array got its `[n/m]` yet.
    let mut counted = true;
    for line in text.lines() {
        if let Some((device, rest)) = line.split_once(" : ")
            && !line.starts_with(char::is_whitespace)
            && device.starts_with("md")
        {
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or_default().to_string();
            // Members look like `sda1[0]`, with `(F)`, `(S)`, ... after a failed
            // or spare one; the level and `(auto-read-only)` do not.
            let members: Vec<&str> = fields
                .filter(|f| !f.starts_with('(') && f.contains('['))
                .collect();
            let failed = members.iter().filter(|m| m.ends_with("(F)")).count() as u64;
            let spare = members.iter().filter(|m| m.ends_with("(S)")).count() as u64;
            let working = (members.len() as u64).saturating_sub(failed + spare);
            let active = if state == "active" { working } else { 0 };
            arrays.push(MdArray {
                device: device.trim().to_string(),
                state,
                required: active,
                active,
                failed,
                spare,
            });
            counted = false;
            continue;
        }
        if line.trim().is_empty() {
            counted = true;
            continue;
        }
        if !counted
            && let (Some((required, active)), Some(array)) =
                (disks_in_sync(line), arrays.last_mut())
        {
            array.required = required;
            array.active = active;
            counted = true;
        }
    }
    arrays
}

/// Slaves of a bond that are up and down, from `/proc/net/bonding/<bond>`.
pub fn parse_bond(text: &str) -> (u64, u64) {
    let (mut up, mut down) = (0, 0);
    let mut in_slave = false;
    for line in text.lines() {
        if line.starts_with("Slave Interface:") {
            in_slave = true;
        } else if in_slave && let Some(status) = line.strip_prefix("MII Status:") {
            if status.trim() == "up" {
                up += 1;
            } else {
                down += 1;
            }
            in_slave = false;
        }
    }
    (up, down)
}

/// One temperature sensor of an hwmon chip, in degrees Celsius.
#[derive(Debug, Clone, PartialEq)]
pub struct Temperature {
    /// The chip's `name`, made unique with its directory when two chips share it.
    pub chip: String,
    /// The sensor's label, else `tempN`.
    pub sensor: String,
    /// The reading.
    pub celsius: f64,
    /// Limits by kind (`max`, `crit`).
    pub limits: Vec<(&'static str, f64)>,
}

/// A millidegree file as degrees; `None` when it is absent, unreadable (a
/// sensor that is switched off answers EIO or ENODATA) or not a number.
fn millidegrees(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim().parse::<i64>().ok()? as f64 / 1000.0)
}

/// Reads the temperature sensors under `<sys>/class/hwmon`.
pub fn read_hwmon(sys_root: &Path) -> Vec<Temperature> {
    let Ok(entries) = std::fs::read_dir(sys_root.join("class/hwmon")) else {
        return Vec::new();
    };
    let mut chips: Vec<(String, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let dir = e.file_name().to_string_lossy().into_owned();
            dir.starts_with("hwmon").then(|| {
                let path = e.path();
                // Older drivers keep `name` and the sensors in `device`.
                let name = ["name", "device/name"]
                    .iter()
                    .find_map(|f| std::fs::read_to_string(path.join(f)).ok())
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| dir.clone());
                (name, path)
            })
        })
        .collect();
    chips.sort_by(|a, b| a.1.cmp(&b.1));
    let mut name_count: HashMap<String, usize> = HashMap::new();
    for (name, _) in &chips {
        *name_count.entry(name.clone()).or_default() += 1;
    }
    let mut out = Vec::new();
    for (name, path) in chips {
        let chip = if name_count.get(&name).copied().unwrap_or(0) > 1 {
            let dir = path.file_name().map(|d| d.to_string_lossy().into_owned());
            format!("{name}_{}", dir.unwrap_or_default())
        } else {
            name
        };
        let sensor_dir = if path.join("name").exists() || !path.join("device/name").exists() {
            path
        } else {
            path.join("device")
        };
        let Ok(files) = std::fs::read_dir(&sensor_dir) else {
            continue;
        };
        let mut inputs: Vec<(u32, String)> = files
            .filter_map(|f| {
                let file = f.ok()?.file_name().to_string_lossy().into_owned();
                let n = file.strip_prefix("temp")?.strip_suffix("_input")?;
                Some((n.parse().ok()?, format!("temp{n}")))
            })
            .collect();
        inputs.sort();
        let mut sensors_seen = HashSet::new();
        for (_, base) in inputs {
            let Some(celsius) = millidegrees(&sensor_dir.join(format!("{base}_input"))) else {
                continue;
            };
            let label = std::fs::read_to_string(sensor_dir.join(format!("{base}_label")))
                .map(|l| l.trim().to_string())
                .ok()
                .filter(|l| !l.is_empty());
            // Two sensors with one label would be one series: the second keeps
            // its file name.
            let sensor = match label {
                Some(l) if sensors_seen.insert(l.clone()) => l,
                _ => base.clone(),
            };
            let limits = TEMPERATURE_LIMITS
                .iter()
                .filter_map(|(suffix, kind)| {
                    let v = millidegrees(&sensor_dir.join(format!("{base}_{suffix}")))?;
                    Some((*kind, v))
                })
                .collect();
            out.push(Temperature {
                chip: chip.clone(),
                sensor,
                celsius,
                limits,
            });
        }
    }
    out
}

/// Corrected and uncorrected error counts of one EDAC memory controller.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdacCounts {
    /// `mc0`, ...
    pub controller: String,
    /// `ce_count`, when readable.
    pub corrected: Option<u64>,
    /// `ue_count`, when readable.
    pub uncorrected: Option<u64>,
}

/// Reads the memory controllers under `<sys>/devices/system/edac/mc`.
pub fn read_edac(sys_root: &Path) -> Vec<EdacCounts> {
    let Ok(entries) = std::fs::read_dir(sys_root.join("devices/system/edac/mc")) else {
        return Vec::new();
    };
    let count =
        |path: PathBuf| -> Option<u64> { parse_number(&std::fs::read_to_string(path).ok()?).ok() };
    let mut out: Vec<EdacCounts> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let controller = e.file_name().to_string_lossy().into_owned();
            let n = controller.strip_prefix("mc")?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let dir = e.path();
            Some(EdacCounts {
                corrected: count(dir.join("ce_count")),
                uncorrected: count(dir.join("ue_count")),
                controller,
            })
        })
        .collect();
    out.sort();
    out
}

/// `STA_UNSYNC` of `timex.status`: the clock is not synchronised.
pub const STA_UNSYNC: i32 = 0x0040;
/// `STA_NANO` of `timex.status`: `offset` is in nanoseconds, not microseconds.
pub const STA_NANO: i32 = 0x2000;
/// The `TIME_ERROR` return of `adjtimex(2)`: the clock is not synchronised.
pub const TIME_ERROR: i32 = 5;

/// The kernel clock's discipline as `adjtimex(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockReading {
    /// The clock is synchronised (`STA_UNSYNC` clear, and the call did not return
    /// `TIME_ERROR`).
    pub synchronized: bool,
    /// The offset still being slewed away, in seconds.
    pub offset_seconds: f64,
    /// The kernel's bound on the clock's error, in seconds.
    pub max_error_seconds: f64,
}

impl ClockReading {
    /// From what `adjtimex(2)` returned and the `status`, `offset` and
    /// `maxerror` (microseconds) fields of its `timex`.
    pub fn from_timex(returned: i32, status: i32, offset: i64, maxerror: i64) -> Self {
        let offset_unit = if status & STA_NANO != 0 { 1e9 } else { 1e6 };
        Self {
            synchronized: status & STA_UNSYNC == 0 && returned != TIME_ERROR,
            offset_seconds: offset as f64 / offset_unit,
            max_error_seconds: maxerror as f64 / 1e6,
        }
    }

    /// Adds the reading's series on `id`.
    pub fn record(&self, out: &mut Collection, id: &str, ts: i64) {
        let synchronized = if self.synchronized { 1.0 } else { 0.0 };
        out.sample(id, "system.clock.synchronized", &[], ts, synchronized);
        out.sample(id, "system.clock.offset", &[], ts, self.offset_seconds);
        out.sample(
            id,
            "system.clock.max_error",
            &[],
            ts,
            self.max_error_seconds,
        );
    }
}

/// Asks the kernel for its clock discipline: `adjtimex(2)` with no mode bits
/// set, a read that changes nothing.
#[allow(unsafe_code)]
pub fn read_clock() -> std::io::Result<ClockReading> {
    // SAFETY: `timex` holds only integers (and a `timeval` of integers), for
    // which all zeroes is a valid value; with `modes` 0 the call only reads.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `&mut t` is a valid, exclusive pointer to a `timex` this function
    // owns for the call's duration; the kernel writes nothing else.
    let returned = unsafe { libc::adjtimex(&mut t) };
    if returned < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // `c_long`: 64 bits here, 32 on 32-bit targets; widening never loses.
    Ok(ClockReading::from_timex(
        returned,
        t.status,
        t.offset as i64,
        t.maxerror as i64,
    ))
}

/// The kernel collector.
pub struct KernelCollector {
    host_id: String,
    proc_root: PathBuf,
    sys_root: PathBuf,
    /// Whether to read the clock: `adjtimex(2)` is no file under the roots, so
    /// only an agent reading its own `/proc` reports it (not one pointed at
    /// fixtures or another tree).
    read_clock: bool,
    /// The listen counters of the previous run, for rates.
    previous_listen: Option<(Instant, ListenCounters)>,
}

impl KernelCollector {
    /// Reports series on `host_id` from the procfs at `proc_root` and the sysfs
    /// at `sys_root`.
    pub fn new(host_id: String, proc_root: PathBuf, sys_root: PathBuf) -> Self {
        Self {
            read_clock: proc_root == Path::new("/proc"),
            host_id,
            proc_root,
            sys_root,
            previous_listen: None,
        }
    }

    /// A network file of the host's namespace when it can be read, else of ours;
    /// `None` when neither is there.
    fn net_file(&self, name: &str) -> Result<Option<(PathBuf, String)>, CollectError> {
        let host = self.proc_root.join("1/net").join(name);
        if let Ok(text) = std::fs::read_to_string(&host) {
            return Ok(Some((host, text)));
        }
        let own = self.proc_root.join("net").join(name);
        Ok(read_optional(&own)?.map(|text| (own, text)))
    }

    fn conntrack(&self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let dir = self.proc_root.join("sys/net/netfilter");
        for (file, metric) in [
            ("nf_conntrack_count", "system.network.conntrack.count"),
            ("nf_conntrack_max", "system.network.conntrack.limit"),
        ] {
            let path = dir.join(file);
            if let Some(text) = read_optional(&path)? {
                let v = parse_number(&text).map_err(|r| parse_error(&path, r))?;
                out.sample(id, metric, &[], ts, v as f64);
            }
        }
        Ok(())
    }

    fn file_handles(&self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let path = self.proc_root.join("sys/fs/file-nr");
        let Some(text) = read_optional(&path)? else {
            return Ok(());
        };
        let f = parse_file_nr(&text).map_err(|r| parse_error(&path, r))?;
        out.sample(
            id,
            "system.linux.file_descriptors.allocated",
            &[],
            ts,
            f.allocated as f64,
        );
        out.sample(
            id,
            "system.linux.file_descriptors.limit",
            &[],
            ts,
            f.limit as f64,
        );
        Ok(())
    }

    fn sockets(&self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        for name in ["sockstat", "sockstat6"] {
            let Some((_, text)) = self.net_file(name)? else {
                continue;
            };
            let s = parse_sockstat(&text);
            if let Some(used) = s.used {
                out.sample(id, "system.linux.sockets.used", &[], ts, used as f64);
            }
            for (protocol, state, v) in &s.counts {
                out.sample(
                    id,
                    "system.linux.sockets.count",
                    &[("protocol", protocol.as_str()), ("state", state.as_str())],
                    ts,
                    *v as f64,
                );
            }
        }
        Ok(())
    }

    fn listen_queues(
        &mut self,
        now: Instant,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        let Some((path, text)) = self.net_file("netstat")? else {
            return Ok(());
        };
        let counters = parse_listen_counters(&text).map_err(|r| parse_error(&path, r))?;
        if let Some((at, prev)) = self.previous_listen {
            let secs = now.duration_since(at).as_secs_f64();
            let rate = |a: u64, b: u64| a.checked_sub(b).map(|d| d as f64 / secs);
            if secs > 0.0 {
                for (metric, value) in [
                    (
                        "system.network.tcp.listen_overflows.rate",
                        rate(counters.overflows, prev.overflows),
                    ),
                    (
                        "system.network.tcp.listen_drops.rate",
                        rate(counters.drops, prev.drops),
                    ),
                ] {
                    if let Some(v) = value {
                        out.sample(id, metric, &[], ts, v);
                    }
                }
            }
        }
        self.previous_listen = Some((now, counters));
        Ok(())
    }

    fn oom_kills_and_boot_time(
        &self,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        // Kernels before 4.13 have no oom_kill counter: no series.
        if let Some(text) = read_optional(&self.proc_root.join("vmstat"))?
            && let Some(kills) = super::pressure::parse_vmstat(&text).get("oom_kill")
        {
            out.sample(id, "system.linux.oom_kills", &[], ts, *kills as f64);
        }
        let path = self.proc_root.join("stat");
        if let Some(text) = read_optional(&path)? {
            let btime = parse_btime(&text).ok_or_else(|| parse_error(&path, "no btime line"))?;
            out.sample(id, "system.boot_time", &[], ts, btime as f64);
        }
        Ok(())
    }

    fn hardware(&self, id: &str, ts: i64, out: &mut Collection) {
        for t in read_hwmon(&self.sys_root) {
            let attrs = [("chip", t.chip.as_str()), ("sensor", t.sensor.as_str())];
            out.sample(id, "system.hardware.temperature", &attrs, ts, t.celsius);
            for (kind, v) in &t.limits {
                out.sample(
                    id,
                    "system.hardware.temperature.limit",
                    &[attrs[0], attrs[1], ("kind", *kind)],
                    ts,
                    *v,
                );
            }
        }
        for mc in read_edac(&self.sys_root) {
            for (kind, v) in [("corrected", mc.corrected), ("uncorrected", mc.uncorrected)] {
                if let Some(v) = v {
                    out.sample(
                        id,
                        "system.memory.edac.errors",
                        &[("controller", mc.controller.as_str()), ("type", kind)],
                        ts,
                        v as f64,
                    );
                }
            }
        }
    }

    fn md_arrays(&self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let Some(text) = read_optional(&self.proc_root.join("mdstat"))? else {
            return Ok(());
        };
        for md in parse_mdstat(&text) {
            let device = md.device.as_str();
            for (state, v) in [
                ("active", md.active),
                ("failed", md.failed),
                ("spare", md.spare),
            ] {
                out.sample(
                    id,
                    "system.md.disks",
                    &[("device", device), ("state", state)],
                    ts,
                    v as f64,
                );
            }
            let degraded = if md.degraded() { 1.0 } else { 0.0 };
            out.sample(
                id,
                "system.md.degraded",
                &[("device", device)],
                ts,
                degraded,
            );
        }
        Ok(())
    }

    fn bonds(&self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let host = self.proc_root.join("1/net/bonding");
        let dir = if host.is_dir() {
            host
        } else {
            self.proc_root.join("net/bonding")
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut bonds: BTreeMap<String, PathBuf> = BTreeMap::new();
        for e in entries.flatten() {
            bonds.insert(e.file_name().to_string_lossy().into_owned(), e.path());
        }
        for (bond, path) in bonds {
            // A bond removed since the directory was listed is no error.
            let Some(text) = read_optional(&path)? else {
                continue;
            };
            let (up, down) = parse_bond(&text);
            for (state, v) in [("up", up), ("down", down)] {
                out.sample(
                    id,
                    "system.network.bond.slaves",
                    &[("bond", bond.as_str()), ("state", state)],
                    ts,
                    v as f64,
                );
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Collector for KernelCollector {
    fn name(&self) -> &'static str {
        "kernel"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let now = Instant::now();
        let ts = now_unix_ms();
        let id = self.host_id.clone();
        self.hardware(&id, ts, out);
        let clock = if self.read_clock {
            read_clock()
                .map(|reading| reading.record(out, &id, ts))
                .map_err(|source| CollectError::Read {
                    path: "adjtimex(2)".into(),
                    source,
                })
        } else {
            Ok(())
        };
        // Each section has its turn; the first failure is the run's error.
        let results = [
            clock,
            self.conntrack(&id, ts, out),
            self.file_handles(&id, ts, out),
            self.sockets(&id, ts, out),
            self.listen_queues(now, &id, ts, out),
            self.oom_kills_and_boot_time(&id, ts, out),
            self.md_arrays(&id, ts, out),
            self.bonds(&id, ts, out),
        ];
        results.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MDSTAT: &str = "\
Personalities : [raid1] [raid6] [raid5] [raid4] [raid0]
md1 : active raid1 sdb1[1](F) sda1[0]
      1046528 blocks super 1.2 [2/1] [U_]
      bitmap: 1/1 pages [4KB], 65536KB chunk

md0 : active raid5 sde1[4](S) sdd1[3] sdc1[1] sdb2[0]
      2093056 blocks super 1.2 level 5, 512k chunk, algorithm 2 [3/3] [UUU]

md2 : active (auto-read-only) raid0 sdg1[1] sdf1[0]
      4186112 blocks super 1.2 512k chunks

md3 : inactive sdh1[1](S) sdi1[0](S)
      2093056 blocks super 1.2

unused devices: <none>
";

    const SOCKSTAT: &str = "\
sockets: used 294
TCP: inuse 11 orphan 1 tw 2 alloc 14 mem 243
UDP: inuse 5 mem 2
UDPLITE: inuse 0
RAW: inuse 1
FRAG: inuse 0 memory 0
";

    const SOCKSTAT6: &str = "\
TCP6: inuse 4
UDP6: inuse 3
UDPLITE6: inuse 0
RAW6: inuse 0
FRAG6: inuse 0 memory 0
";

    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPTimeouts
TcpExt: 0 0 7 9 12
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
";

    const BOND: &str = "\
Ethernet Channel Bonding Driver: v5.15.0

Bonding Mode: fault-tolerance (active-backup)
Primary Slave: None
Currently Active Slave: eth0
MII Status: up
MII Polling Interval (ms): 100

Slave Interface: eth0
MII Status: up
Speed: 1000 Mbps
Link Failure Count: 0

Slave Interface: eth1
MII Status: down
Speed: Unknown
Link Failure Count: 3

Slave Interface: eth2
MII Status: going back
Link Failure Count: 1
";

    #[test]
    fn mdstat_with_a_degraded_array_a_failed_disk_and_a_spare() {
        let arrays = parse_mdstat(MDSTAT);
        let devices: Vec<&str> = arrays.iter().map(|a| a.device.as_str()).collect();
        assert_eq!(devices, vec!["md1", "md0", "md2", "md3"]);
        let md1 = &arrays[0];
        assert_eq!(
            (md1.required, md1.active, md1.failed, md1.spare),
            (2, 1, 1, 0)
        );
        assert!(md1.degraded());
        let md0 = &arrays[1];
        assert_eq!(
            (md0.required, md0.active, md0.failed, md0.spare),
            (3, 3, 0, 1)
        );
        assert!(!md0.degraded());
        // RAID 0 has no [n/m]: every member is needed and in use.
        let md2 = &arrays[2];
        assert_eq!(
            (md2.required, md2.active, md2.state.as_str()),
            (2, 2, "active")
        );
        assert!(!md2.degraded());
        let md3 = &arrays[3];
        assert_eq!(
            (md3.active, md3.spare, md3.state.as_str()),
            (0, 2, "inactive")
        );
        assert!(!md3.degraded());
        assert!(parse_mdstat("Personalities : \nunused devices: <none>\n").is_empty());
    }

    #[test]
    fn sockstat_and_sockstat6() {
        let s = parse_sockstat(SOCKSTAT);
        assert_eq!(s.used, Some(294));
        let has = |s: &Sockstat, p: &str, st: &str| {
            s.counts
                .iter()
                .find(|(pp, ss, _)| pp == p && ss == st)
                .map(|c| c.2)
        };
        assert_eq!(has(&s, "tcp", "inuse"), Some(11));
        assert_eq!(has(&s, "tcp", "orphan"), Some(1));
        assert_eq!(has(&s, "tcp", "tw"), Some(2));
        assert_eq!(has(&s, "tcp", "alloc"), Some(14));
        assert_eq!(has(&s, "udp", "inuse"), Some(5));
        assert_eq!(has(&s, "raw", "inuse"), Some(1));
        assert_eq!(has(&s, "tcp", "mem"), None, "pages are not sockets");
        assert!(s.counts.iter().all(|(p, _, _)| p != "frag"));
        let s6 = parse_sockstat(SOCKSTAT6);
        assert_eq!(s6.used, None);
        assert_eq!(has(&s6, "tcp6", "inuse"), Some(4));
        assert_eq!(has(&s6, "udp6", "inuse"), Some(3));
    }

    #[test]
    fn netstat_vmstat_stat_and_file_nr() {
        let c = parse_listen_counters(NETSTAT).unwrap();
        assert_eq!((c.overflows, c.drops), (7, 9));
        assert!(parse_listen_counters("IpExt: A\nIpExt: 1\n").is_err());
        assert!(parse_listen_counters("TcpExt: ListenDrops\nTcpExt: 1\n").is_err());
        let vm = super::super::pressure::parse_vmstat("pgmajfault 42\noom_kill 3\n");
        assert_eq!(vm.get("oom_kill"), Some(&3));
        assert_eq!(
            parse_btime("cpu  1 2 3\nctxt 99\nbtime 1764920000\nprocesses 5\n"),
            Some(1_764_920_000)
        );
        assert_eq!(parse_btime("cpu 1 2\n"), None);
        assert_eq!(
            parse_file_nr("4128\t0\t9223372036854775807\n").unwrap(),
            FileHandles {
                allocated: 4128,
                limit: 9_223_372_036_854_775_807
            }
        );
        assert!(parse_file_nr("1 2\n").is_err());
        assert!(parse_file_nr("a b c\n").is_err());
        assert_eq!(parse_number(" 262144\n"), Ok(262_144));
        assert!(parse_number("").is_err());
    }

    #[test]
    fn bonding_slaves_up_and_down() {
        assert_eq!(parse_bond(BOND), (1, 2));
        assert_eq!(
            parse_bond("Bonding Mode: load balancing (round-robin)\n"),
            (0, 0)
        );
    }

    #[test]
    fn clock_from_timex() {
        let synced = ClockReading::from_timex(0, 0x2001 /* PLL, NANO */, 1_500_000, 250_000);
        assert!(synced.synchronized);
        assert!((synced.offset_seconds - 0.0015).abs() < 1e-12);
        assert!((synced.max_error_seconds - 0.25).abs() < 1e-12);
        let micro = ClockReading::from_timex(0, 0x0001, -70_000, 16_000_000);
        assert!((micro.offset_seconds - -0.07).abs() < 1e-12);
        assert!(micro.synchronized);
        assert!(!ClockReading::from_timex(0, STA_UNSYNC, 0, 0).synchronized);
        assert!(!ClockReading::from_timex(TIME_ERROR, 0, 0, 0).synchronized);
        let mut out = Collection::default();
        ClockReading::from_timex(TIME_ERROR, STA_UNSYNC, 0, 16_000_000)
            .record(&mut out, "host/a", 1);
        let values: Vec<(&str, f64)> = out.samples.iter().map(|s| (&*s.metric, s.value)).collect();
        assert_eq!(
            values,
            vec![
                ("system.clock.synchronized", 0.0),
                ("system.clock.offset", 0.0),
                ("system.clock.max_error", 16.0)
            ]
        );
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A hwmon tree: two chips named alike, labels, limits, a sensor that reads
    /// EIO-like garbage, and a chip without a name file.
    fn hwmon_tree(sys: &Path) {
        write(sys, "class/hwmon/hwmon0/name", "coretemp\n");
        write(sys, "class/hwmon/hwmon0/temp1_input", "45000\n");
        write(sys, "class/hwmon/hwmon0/temp1_label", "Package id 0\n");
        write(sys, "class/hwmon/hwmon0/temp1_max", "80000\n");
        write(sys, "class/hwmon/hwmon0/temp1_crit", "100000\n");
        write(sys, "class/hwmon/hwmon0/temp2_input", "47500\n");
        write(sys, "class/hwmon/hwmon0/temp2_label", "Core 0\n");
        write(sys, "class/hwmon/hwmon1/name", "coretemp\n");
        write(sys, "class/hwmon/hwmon1/temp1_input", "51000\n");
        write(sys, "class/hwmon/hwmon2/name", "nvme\n");
        write(sys, "class/hwmon/hwmon2/temp1_input", "-5000\n");
        write(sys, "class/hwmon/hwmon2/temp1_crit", "84850\n");
        write(sys, "class/hwmon/hwmon2/temp2_input", "\n");
        write(sys, "class/hwmon/hwmon3/temp1_input", "30000\n");
    }

    #[test]
    fn hwmon_tree_in_a_tempdir() {
        let dir = tempfile::tempdir().unwrap();
        hwmon_tree(dir.path());
        let t = read_hwmon(dir.path());
        let seen: Vec<(&str, &str, f64)> = t
            .iter()
            .map(|t| (t.chip.as_str(), t.sensor.as_str(), t.celsius))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("coretemp_hwmon0", "Package id 0", 45.0),
                ("coretemp_hwmon0", "Core 0", 47.5),
                ("coretemp_hwmon1", "temp1", 51.0),
                ("nvme", "temp1", -5.0),
                ("hwmon3", "temp1", 30.0),
            ]
        );
        assert_eq!(t[0].limits, vec![("max", 80.0), ("crit", 100.0)]);
        assert!(t[1].limits.is_empty());
        assert_eq!(t[3].limits, vec![("crit", 84.85)]);
        assert!(read_hwmon(&dir.path().join("missing")).is_empty());
    }

    fn edac_tree(sys: &Path) {
        write(sys, "devices/system/edac/mc/mc0/ce_count", "3\n");
        write(sys, "devices/system/edac/mc/mc0/ue_count", "0\n");
        write(sys, "devices/system/edac/mc/mc1/ce_count", "0\n");
        write(sys, "devices/system/edac/mc/mc1/ue_count", "1\n");
        write(sys, "devices/system/edac/mc/power/control", "auto\n");
    }

    #[test]
    fn edac_tree_in_a_tempdir() {
        let dir = tempfile::tempdir().unwrap();
        edac_tree(dir.path());
        let mc = read_edac(dir.path());
        assert_eq!(
            mc,
            vec![
                EdacCounts {
                    controller: "mc0".into(),
                    corrected: Some(3),
                    uncorrected: Some(0)
                },
                EdacCounts {
                    controller: "mc1".into(),
                    corrected: Some(0),
                    uncorrected: Some(1)
                },
            ]
        );
        assert!(read_edac(&dir.path().join("missing")).is_empty());
    }

    fn value(out: &Collection, metric: &str, attrs: &[(&str, &str)]) -> Option<f64> {
        out.samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.attributes.len() == attrs.len()
                    && attrs
                        .iter()
                        .all(|(k, v)| s.attributes.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }

    #[tokio::test]
    async fn collects_every_section_from_fixture_trees() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        write(&proc, "sys/net/netfilter/nf_conntrack_count", "1200\n");
        write(&proc, "sys/net/netfilter/nf_conntrack_max", "262144\n");
        write(&proc, "sys/fs/file-nr", "4128\t0\t1048576\n");
        write(&proc, "net/sockstat", SOCKSTAT);
        write(&proc, "net/sockstat6", SOCKSTAT6);
        write(&proc, "net/netstat", NETSTAT);
        write(&proc, "vmstat", "nr_free_pages 100\noom_kill 2\n");
        write(&proc, "stat", "cpu  1 2 3 4 5 6 7 8\nbtime 1764920000\n");
        write(&proc, "mdstat", MDSTAT);
        write(&proc, "net/bonding/bond0", BOND);
        hwmon_tree(&sys);
        edac_tree(&sys);
        let mut c = KernelCollector::new("host/a".into(), proc.clone(), sys);
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        assert!(out.samples.iter().all(|s| s.resource_id == "host/a"));
        assert!(out.resources.is_empty());
        let v = |m: &str, a: &[(&str, &str)]| value(&out, m, a);
        assert_eq!(v("system.network.conntrack.count", &[]), Some(1200.0));
        assert_eq!(v("system.network.conntrack.limit", &[]), Some(262_144.0));
        assert_eq!(
            v("system.linux.file_descriptors.allocated", &[]),
            Some(4128.0)
        );
        assert_eq!(
            v("system.linux.file_descriptors.limit", &[]),
            Some(1_048_576.0)
        );
        assert_eq!(v("system.linux.sockets.used", &[]), Some(294.0));
        let tcp6 = [("protocol", "tcp6"), ("state", "inuse")];
        assert_eq!(v("system.linux.sockets.count", &tcp6), Some(4.0));
        let tw = [("protocol", "tcp"), ("state", "tw")];
        assert_eq!(v("system.linux.sockets.count", &tw), Some(2.0));
        assert_eq!(v("system.linux.oom_kills", &[]), Some(2.0));
        assert_eq!(v("system.boot_time", &[]), Some(1_764_920_000.0));
        let pkg = [("chip", "coretemp_hwmon0"), ("sensor", "Package id 0")];
        assert_eq!(v("system.hardware.temperature", &pkg), Some(45.0));
        let crit = [pkg[0], pkg[1], ("kind", "crit")];
        assert_eq!(v("system.hardware.temperature.limit", &crit), Some(100.0));
        let mc1 = [("controller", "mc1"), ("type", "uncorrected")];
        assert_eq!(v("system.memory.edac.errors", &mc1), Some(1.0));
        let md1_active = [("device", "md1"), ("state", "active")];
        assert_eq!(v("system.md.disks", &md1_active), Some(1.0));
        let md1_failed = [("device", "md1"), ("state", "failed")];
        assert_eq!(v("system.md.disks", &md1_failed), Some(1.0));
        assert_eq!(v("system.md.degraded", &[("device", "md1")]), Some(1.0));
        assert_eq!(v("system.md.degraded", &[("device", "md0")]), Some(0.0));
        let down = [("bond", "bond0"), ("state", "down")];
        assert_eq!(v("system.network.bond.slaves", &down), Some(2.0));
        let up = [("bond", "bond0"), ("state", "up")];
        assert_eq!(v("system.network.bond.slaves", &up), Some(1.0));
        assert_eq!(v("system.network.tcp.listen_overflows.rate", &[]), None);

        // The second run has rates.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        write(
            &proc,
            "net/netstat",
            &NETSTAT.replace("0 0 7 9 12", "0 0 17 29 12"),
        );
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        let overflows = value(&out, "system.network.tcp.listen_overflows.rate", &[]).unwrap();
        let drops = value(&out, "system.network.tcp.listen_drops.rate", &[]).unwrap();
        assert!(overflows > 0.0 && drops > overflows, "{overflows} {drops}");
    }

    #[tokio::test]
    async fn missing_sources_give_no_series_and_no_error_but_bad_ones_do() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        std::fs::create_dir_all(&proc).unwrap();
        let mut c = KernelCollector::new("host/a".into(), proc.clone(), sys);
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        assert!(out.samples.is_empty(), "{:?}", out.samples);

        // A broken file is the run's error; the other sections still report.
        write(&proc, "sys/fs/file-nr", "garbage\n");
        write(&proc, "vmstat", "oom_kill 1\n");
        let mut out = Collection::default();
        let err = c.collect(&mut out).await.unwrap_err();
        assert!(err.to_string().contains("file-nr"), "{err}");
        assert_eq!(value(&out, "system.linux.oom_kills", &[]), Some(1.0));
    }

    #[tokio::test]
    async fn agrees_with_this_machine() {
        let mut c = KernelCollector::new("host/a".into(), "/proc".into(), "/sys".into());
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        let text = std::fs::read_to_string("/proc/sys/fs/file-nr").unwrap();
        let f: Vec<f64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(
            value(&out, "system.linux.file_descriptors.limit", &[]),
            Some(f[2])
        );
        let allocated = value(&out, "system.linux.file_descriptors.allocated", &[]).unwrap();
        assert!(
            (allocated - f[0]).abs() < 10_000.0,
            "{allocated} vs {}",
            f[0]
        );
        let max = std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_max");
        match std::fs::read_to_string(max) {
            Ok(text) => {
                let limit: f64 = text.trim().parse().unwrap();
                assert_eq!(
                    value(&out, "system.network.conntrack.limit", &[]),
                    Some(limit)
                );
                let now: f64 = std::fs::read_to_string(max.with_file_name("nf_conntrack_count"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let count = value(&out, "system.network.conntrack.count", &[]).unwrap();
                assert!((count - now).abs() < 10_000.0, "{count} vs {now}");
            }
            Err(_) => assert_eq!(value(&out, "system.network.conntrack.limit", &[]), None),
        }
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        assert_eq!(
            value(&out, "system.boot_time", &[]),
            parse_btime(&stat).map(|b| b as f64)
        );
        assert!(value(&out, "system.linux.sockets.used", &[]).is_some());
        let synchronized = value(&out, "system.clock.synchronized", &[]).unwrap();
        assert!(synchronized == 0.0 || synchronized == 1.0, "{synchronized}");
        assert!(value(&out, "system.clock.max_error", &[]).unwrap() >= 0.0);
    }
}
