//! Kernel tables and hardware health, read straight from procfs and sysfs; every
//! series belongs to the host resource:
//!
//! - connection tracking (`<proc>/sys/net/netfilter/nf_conntrack_{count,max}`):
//!   `system.network.conntrack.{count,limit}`;
//! - file handles (`<proc>/sys/fs/file-nr`):
//!   `system.linux.file_descriptors.{allocated,limit}`;
//!   and its statistics summed over CPUs (`<proc>/net/stat/nf_conntrack`):
//!   `system.network.conntrack.stat{field}`;
//! - sockets (`<proc>/net/sockstat{,6}`, the one collector that reads them):
//!   `system.linux.sockets.used`, `system.linux.sockets.count{protocol,state}`,
//!   the TIME-WAIT connections `system.network.connections{protocol,state}`,
//!   and the rest of the files (socket memory in pages, fragment queues) as
//!   `system.linux.sockstat{protocol,field}`;
//! - entropy (`<proc>/sys/kernel/random/{entropy_avail,poolsize}`, bits):
//!   `system.linux.entropy.{available,pool_size}`;
//! - neighbour table entries per interface (`<proc>/net/arp`):
//!   `system.network.arp.entries{device}`;
//! - only where the collector that reports them from its own reading does not
//!   run: listen queue overflows and drops per second (`TcpExt` of
//!   `<proc>/net/netstat`, network collector):
//!   `system.network.tcp.listen_{overflows,drops}.rate`; OOM kills since boot
//!   (`oom_kill` of `<proc>/vmstat`, pressure collector): `system.linux.oom_kills`;
//!   boot time (`btime` of `<proc>/stat`, Unix seconds, host collector):
//!   `system.boot_time`;
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
//! `system.clock.{synchronized,offset,max_error}`, and every figure
//! node_exporter's timex collector gives, in its units, as
//! `system.linux.timex{field}` ([`Timex::fields`]). Neither nix nor rustix
//! wraps the call, so [`read_timex`] holds this crate's one `unsafe` block.
//!
//! Files read on every run stay open between runs ([`super::proc_file`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use infrawatch_common::time::now_unix_ms;

use super::proc_file::{ProcFile, ProcFiles};
use super::{CollectError, Collection, Collector};

/// Kinds of temperature limits hwmon reports, as `(file suffix, kind)`.
const TEMPERATURE_LIMITS: [(&str, &str); 2] = [("max", "max"), ("crit", "crit")];

/// Socket states of sockstat that count sockets (`mem` and `memory` count pages
/// and bytes).
const SOCKET_STATES: [&str; 4] = ["inuse", "orphan", "tw", "alloc"];

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

/// The sockstat figures [`Sockstat`] leaves out, as (protocol in lower case,
/// field, value): memory (`mem`, in pages, of TCP and UDP) and the fragment
/// queues (`frag` and `frag6`: `inuse` and `memory`, bytes).
pub fn sockstat_extras(text: &str) -> Vec<(String, &str, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((proto, rest)) = line.split_once(':') else {
            continue;
        };
        let fragments = proto.starts_with("FRAG");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for kv in fields.chunks_exact(2) {
            let (field, Ok(v)) = (kv[0], kv[1].parse::<u64>()) else {
                continue;
            };
            if fragments || field == "mem" {
                out.push((proto.to_ascii_lowercase(), field, v));
            }
        }
    }
    out
}

/// The columns of `/proc/net/stat/nf_conntrack` reported, as node_exporter
/// reports them.
pub const CONNTRACK_STATS: [&str; 8] = [
    "found",
    "invalid",
    "ignore",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "search_restart",
];

/// Sums the per-CPU lines of `/proc/net/stat/nf_conntrack` (hexadecimal, under
/// a header naming the columns) for the columns of [`CONNTRACK_STATS`] the
/// kernel has.
pub fn parse_conntrack_stats(text: &str) -> Result<Vec<(&'static str, u64)>, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty")?.split_whitespace().collect();
    let columns: Vec<(&'static str, usize)> = CONNTRACK_STATS
        .iter()
        .filter_map(|name| Some((*name, header.iter().position(|h| h == name)?)))
        .collect();
    let mut sums = vec![0u64; columns.len()];
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        for ((_, i), sum) in columns.iter().zip(&mut sums) {
            let v = f.get(*i).ok_or_else(|| format!("{} columns", f.len()))?;
            let v = u64::from_str_radix(v, 16).map_err(|_| format!("{v:?} is not hexadecimal"))?;
            *sum = sum.saturating_add(v);
        }
    }
    Ok(columns.into_iter().map(|(n, _)| n).zip(sums).collect())
}

/// Neighbour table entries per interface, from `/proc/net/arp`.
pub fn parse_arp(text: &str) -> BTreeMap<&str, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        if let Some(device) = line.split_whitespace().nth(5) {
            *out.entry(device).or_default() += 1;
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
fn millidegrees(files: &mut ProcFiles, path: &Path) -> Option<f64> {
    let text = files.get(path).read_ok()?;
    Some(text.trim().parse::<i64>().ok()? as f64 / 1000.0)
}

/// A file's text, trimmed, when it can be read and is not empty.
fn read_trimmed(files: &mut ProcFiles, path: &Path) -> Option<String> {
    let text = files.get(path).read_ok()?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Reads the temperature sensors under `<sys>/class/hwmon`; `files` keeps the
/// sensor files open between calls.
pub fn read_hwmon(sys_root: &Path, files: &mut ProcFiles) -> Vec<Temperature> {
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
                    .find_map(|f| read_trimmed(files, &path.join(f)))
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
        let Ok(entries) = std::fs::read_dir(&sensor_dir) else {
            continue;
        };
        let mut inputs: Vec<(u32, String)> = entries
            .filter_map(|f| {
                let file = f.ok()?.file_name().to_string_lossy().into_owned();
                let n = file.strip_prefix("temp")?.strip_suffix("_input")?;
                Some((n.parse().ok()?, format!("temp{n}")))
            })
            .collect();
        inputs.sort();
        let mut sensors_seen = HashSet::new();
        for (_, base) in inputs {
            let Some(celsius) = millidegrees(files, &sensor_dir.join(format!("{base}_input")))
            else {
                continue;
            };
            let label = read_trimmed(files, &sensor_dir.join(format!("{base}_label")));
            // Two sensors with one label would be one series: the second keeps
            // its file name.
            let sensor = match label {
                Some(l) if sensors_seen.insert(l.clone()) => l,
                _ => base.clone(),
            };
            let limits = TEMPERATURE_LIMITS
                .iter()
                .filter_map(|(suffix, kind)| {
                    let v = millidegrees(files, &sensor_dir.join(format!("{base}_{suffix}")))?;
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

/// Reads the memory controllers under `<sys>/devices/system/edac/mc`; `files`
/// keeps the count files open between calls.
pub fn read_edac(sys_root: &Path, files: &mut ProcFiles) -> Vec<EdacCounts> {
    let Ok(entries) = std::fs::read_dir(sys_root.join("devices/system/edac/mc")) else {
        return Vec::new();
    };
    let mut count =
        |path: PathBuf| -> Option<u64> { parse_number(files.get(&path).read_ok()?).ok() };
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

/// `ppm` with a 16-bit binary fraction, as `timex.freq`, `ppsfreq` and
/// `stabil` count: this many units make a ratio of 1.
const PPM16: f64 = 1e6 * 65536.0;

/// What `adjtimex(2)` returned and the fields of its `timex`, widened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timex {
    /// The call's return: the clock state (`TIME_OK`, ..., `TIME_ERROR`).
    pub returned: i32,
    /// `status`: `STA_*` bits.
    pub status: i32,
    /// `offset`: µs, or ns with `STA_NANO`.
    pub offset: i64,
    /// `freq`: frequency offset, ppm with a 16-bit fraction.
    pub freq: i64,
    /// `maxerror`: µs.
    pub maxerror: i64,
    /// `esterror`: µs.
    pub esterror: i64,
    /// `constant`: PLL time constant.
    pub constant: i64,
    /// `tick`: µs between clock ticks.
    pub tick: i64,
    /// `ppsfreq`: PPS frequency, ppm with a 16-bit fraction.
    pub ppsfreq: i64,
    /// `jitter`: PPS jitter, µs or ns with `STA_NANO`.
    pub jitter: i64,
    /// `shift`: PPS interval duration, log2 seconds.
    pub shift: i32,
    /// `stabil`: PPS stability, ppm with a 16-bit fraction.
    pub stabil: i64,
    /// `jitcnt`: PPS jitter limit exceeded.
    pub jitcnt: i64,
    /// `calcnt`: PPS calibration intervals.
    pub calcnt: i64,
    /// `errcnt`: PPS calibration errors.
    pub errcnt: i64,
    /// `stbcnt`: PPS stability limit exceeded.
    pub stbcnt: i64,
    /// `tai`: TAI offset, seconds.
    pub tai: i32,
}

impl Timex {
    /// The clock discipline the existing `system.clock.*` series report.
    pub fn clock(&self) -> ClockReading {
        ClockReading::from_timex(self.returned, self.status, self.offset, self.maxerror)
    }

    /// Every figure node_exporter's timex collector reports, by its name
    /// without the `node_timex_` prefix, in its units (seconds, hertz, ratios).
    pub fn fields(&self) -> [(&'static str, f64); 17] {
        let sub_second = if self.status & STA_NANO != 0 {
            1e9
        } else {
            1e6
        };
        let synchronized = if self.returned == TIME_ERROR {
            0.0
        } else {
            1.0
        };
        [
            ("offset_seconds", self.offset as f64 / sub_second),
            ("frequency_adjustment_ratio", 1.0 + self.freq as f64 / PPM16),
            ("maxerror_seconds", self.maxerror as f64 / 1e6),
            ("estimated_error_seconds", self.esterror as f64 / 1e6),
            ("status", f64::from(self.status)),
            ("loop_time_constant", self.constant as f64),
            ("tick_seconds", self.tick as f64 / 1e6),
            ("pps_frequency_hertz", self.ppsfreq as f64 / PPM16),
            ("pps_jitter_seconds", self.jitter as f64 / sub_second),
            ("pps_shift_seconds", f64::from(self.shift)),
            ("pps_stability_hertz", self.stabil as f64 / PPM16),
            ("pps_jitter_total", self.jitcnt as f64),
            ("pps_calibration_total", self.calcnt as f64),
            ("pps_error_total", self.errcnt as f64),
            ("pps_stability_exceeded_total", self.stbcnt as f64),
            ("tai_offset_seconds", f64::from(self.tai)),
            ("sync_status", synchronized),
        ]
    }

    /// Adds the clock series and every timex figure on `id`.
    pub fn record(&self, out: &mut Collection, id: &str, ts: i64) {
        self.clock().record(out, id, ts);
        for (field, v) in self.fields() {
            out.sample(id, "system.linux.timex", &[("field", field)], ts, v);
        }
    }
}

/// Asks the kernel for its clock discipline: `adjtimex(2)` with no mode bits
/// set, a read that changes nothing.
#[allow(unsafe_code)]
pub fn read_timex() -> std::io::Result<Timex> {
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
    Ok(Timex {
        returned,
        status: t.status,
        offset: t.offset as i64,
        freq: t.freq as i64,
        maxerror: t.maxerror as i64,
        esterror: t.esterror as i64,
        constant: t.constant as i64,
        tick: t.tick as i64,
        ppsfreq: t.ppsfreq as i64,
        jitter: t.jitter as i64,
        shift: t.shift,
        stabil: t.stabil as i64,
        jitcnt: t.jitcnt as i64,
        calcnt: t.calcnt as i64,
        errcnt: t.errcnt as i64,
        stbcnt: t.stbcnt as i64,
        tai: t.tai,
    })
}

/// The files the kernel collector reads on every run.
struct KernelFiles {
    /// `<proc>/sys/net/netfilter/nf_conntrack_count`.
    conntrack_count: ProcFile,
    /// `<proc>/sys/net/netfilter/nf_conntrack_max`.
    conntrack_max: ProcFile,
    /// `<proc>/net/stat/nf_conntrack`.
    conntrack_stats: ProcFile,
    /// `<proc>/sys/fs/file-nr`.
    file_nr: ProcFile,
    /// `<proc>/net/sockstat` (host's namespace when it can be).
    sockstat: ProcFile,
    /// `<proc>/net/sockstat6`.
    sockstat6: ProcFile,
    /// `<proc>/net/arp`.
    arp: ProcFile,
    /// `<proc>/sys/kernel/random/entropy_avail`.
    entropy_avail: ProcFile,
    /// `<proc>/sys/kernel/random/poolsize`.
    entropy_pool: ProcFile,
    /// `<proc>/mdstat`.
    mdstat: ProcFile,
    /// `<proc>/net/netstat`, read only when the network collector does not run.
    netstat: Option<ProcFile>,
    /// `<proc>/vmstat`, read only when the pressure collector does not run.
    vmstat: Option<ProcFile>,
    /// `<proc>/stat`, read only when the host collector does not run.
    stat: Option<ProcFile>,
    /// Sensor, memory controller and bond files, by path.
    others: ProcFiles,
}

impl KernelFiles {
    /// The files under procfs root `proc`, opened on their first read.
    fn new(proc: &Path) -> Self {
        let file = |rel: &str| ProcFile::new(proc.join(rel));
        let net = |name: &str| ProcFile::net(proc, name);
        Self {
            conntrack_count: file("sys/net/netfilter/nf_conntrack_count"),
            conntrack_max: file("sys/net/netfilter/nf_conntrack_max"),
            conntrack_stats: net("stat/nf_conntrack"),
            file_nr: file("sys/fs/file-nr"),
            sockstat: net("sockstat"),
            sockstat6: net("sockstat6"),
            arp: net("arp"),
            entropy_avail: file("sys/kernel/random/entropy_avail"),
            entropy_pool: file("sys/kernel/random/poolsize"),
            mdstat: file("mdstat"),
            netstat: Some(net("netstat")),
            vmstat: Some(file("vmstat")),
            stat: Some(file("stat")),
            others: ProcFiles::default(),
        }
    }
}

/// The kernel collector.
pub struct KernelCollector {
    host_id: String,
    proc_root: PathBuf,
    sys_root: PathBuf,
    files: KernelFiles,
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
            files: KernelFiles::new(&proc_root),
            host_id,
            proc_root,
            sys_root,
            previous_listen: None,
        }
    }

    /// Whether to read `/proc/stat` for the boot time: not when the host
    /// collector runs, which reports it from its own reading.
    pub fn with_stat(mut self, read: bool) -> Self {
        if !read {
            self.files.stat = None;
        }
        self
    }

    /// Whether to read `/proc/vmstat` for the OOM kills: not when the pressure
    /// collector runs, which reports them from its own reading.
    pub fn with_vmstat(mut self, read: bool) -> Self {
        if !read {
            self.files.vmstat = None;
        }
        self
    }

    /// Whether to read `/proc/net/netstat` for the listen queue rates: not when
    /// the network collector runs, which reports them from its own reading.
    pub fn with_netstat(mut self, read: bool) -> Self {
        if !read {
            self.files.netstat = None;
        }
        self
    }

    /// Connection tracking entries, their limit and statistics.
    fn conntrack(&mut self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let f = &mut self.files;
        for (file, metric) in [
            (&mut f.conntrack_count, "system.network.conntrack.count"),
            (&mut f.conntrack_max, "system.network.conntrack.limit"),
        ] {
            if let Some(text) = file.read_optional()? {
                let v = parse_number(text).map_err(|r| file.parse_error(r))?;
                out.sample(id, metric, &[], ts, v as f64);
            }
        }
        let file = &mut f.conntrack_stats;
        if let Some(text) = file.read_optional()? {
            let stats = parse_conntrack_stats(text).map_err(|r| file.parse_error(r))?;
            for (field, v) in stats {
                let attrs = [("field", field)];
                out.sample(id, "system.network.conntrack.stat", &attrs, ts, v as f64);
            }
        }
        Ok(())
    }

    /// File handles allocated and their limit.
    fn file_handles(
        &mut self,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        let file = &mut self.files.file_nr;
        let Some(text) = file.read_optional()? else {
            return Ok(());
        };
        let f = parse_file_nr(text).map_err(|r| file.parse_error(r))?;
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

    /// Sockets per protocol and state, their memory and fragment queues, and
    /// the TIME-WAIT connections (the one collector that reads sockstat).
    fn sockets(&mut self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let f = &mut self.files;
        for file in [&mut f.sockstat, &mut f.sockstat6] {
            let Some(text) = file.read_optional()? else {
                continue;
            };
            let s = parse_sockstat(text);
            if let Some(used) = s.used {
                out.sample(id, "system.linux.sockets.used", &[], ts, used as f64);
            }
            for (protocol, state, v) in &s.counts {
                let attrs = [("protocol", protocol.as_str()), ("state", state.as_str())];
                out.sample(id, "system.linux.sockets.count", &attrs, ts, *v as f64);
                if protocol == "tcp" && state == "tw" {
                    let attrs = [("protocol", "tcp"), ("state", "time_wait")];
                    out.sample(id, "system.network.connections", &attrs, ts, *v as f64);
                }
            }
            for (protocol, field, v) in sockstat_extras(text) {
                let attrs = [("protocol", protocol.as_str()), ("field", field)];
                out.sample(id, "system.linux.sockstat", &attrs, ts, v as f64);
            }
        }
        Ok(())
    }

    /// Listen queue overflow and drop rates, when this collector reads netstat.
    fn listen_queues(
        &mut self,
        now: Instant,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        let Some(file) = &mut self.files.netstat else {
            return Ok(());
        };
        let Some(text) = file.read_optional()? else {
            return Ok(());
        };
        let counters = parse_listen_counters(text).map_err(|r| file.parse_error(r))?;
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

    /// OOM kills and the boot time, when this collector reads vmstat and stat.
    fn oom_kills_and_boot_time(
        &mut self,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        // Kernels before 4.13 have no oom_kill counter: no series.
        if let Some(file) = &mut self.files.vmstat
            && let Some(text) = file.read_optional()?
            && let Some((_, kills)) =
                super::pressure::vmstat_fields(text).find(|(k, _)| *k == "oom_kill")
        {
            out.sample(id, "system.linux.oom_kills", &[], ts, kills as f64);
        }
        if let Some(file) = &mut self.files.stat
            && let Some(text) = file.read_optional()?
        {
            let btime = parse_btime(text).ok_or_else(|| file.parse_error("no btime line"))?;
            out.sample(id, "system.boot_time", &[], ts, btime as f64);
        }
        Ok(())
    }

    /// Entropy available and the pool's size, in bits.
    fn entropy(&mut self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let f = &mut self.files;
        for (file, metric) in [
            (&mut f.entropy_avail, "system.linux.entropy.available"),
            (&mut f.entropy_pool, "system.linux.entropy.pool_size"),
        ] {
            if let Some(text) = file.read_optional()? {
                let v = parse_number(text).map_err(|r| file.parse_error(r))?;
                out.sample(id, metric, &[], ts, v as f64);
            }
        }
        Ok(())
    }

    /// Neighbour table entries per interface.
    fn arp(&mut self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let Some(text) = self.files.arp.read_optional()? else {
            return Ok(());
        };
        for (device, n) in parse_arp(text) {
            let attrs = [("device", device)];
            out.sample(id, "system.network.arp.entries", &attrs, ts, n as f64);
        }
        Ok(())
    }

    /// Temperatures and memory errors.
    fn hardware(&mut self, id: &str, ts: i64, out: &mut Collection) {
        let files = &mut self.files.others;
        for t in read_hwmon(&self.sys_root, files) {
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
        for mc in read_edac(&self.sys_root, files) {
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

    /// Software RAID arrays.
    fn md_arrays(&mut self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        let Some(text) = self.files.mdstat.read_optional()? else {
            return Ok(());
        };
        for md in parse_mdstat(text) {
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

    /// Bonds' slaves up and down.
    fn bonds(&mut self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
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
            let Some(text) = self.files.others.get(&path).read_optional()? else {
                continue;
            };
            let (up, down) = parse_bond(text);
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

    /// The clock's discipline and every timex figure, when this agent reads
    /// its own kernel.
    fn clock(&self, id: &str, ts: i64, out: &mut Collection) -> Result<(), CollectError> {
        if !self.read_clock {
            return Ok(());
        }
        let timex = read_timex().map_err(|source| CollectError::Read {
            path: "adjtimex(2)".into(),
            source,
        })?;
        timex.record(out, id, ts);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Collector for KernelCollector {
    fn name(&self) -> &'static str {
        "kernel"
    }
    fn is_local(&self) -> bool {
        true
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let now = Instant::now();
        let ts = now_unix_ms();
        let id = self.host_id.clone();
        self.hardware(&id, ts, out);
        // Each section has its turn; the first failure is the run's error.
        let results = [
            self.clock(&id, ts, out),
            self.conntrack(&id, ts, out),
            self.file_handles(&id, ts, out),
            self.sockets(&id, ts, out),
            self.listen_queues(now, &id, ts, out),
            self.oom_kills_and_boot_time(&id, ts, out),
            self.entropy(&id, ts, out),
            self.arp(&id, ts, out),
            self.md_arrays(&id, ts, out),
            self.bonds(&id, ts, out),
        ];
        self.files.others.sweep();
        results.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::test_support::{value, write};

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

    /// `/proc/net/sockstat` of a VM (memory figures made non-zero).
    const REAL_SOCKSTAT: &str = "\
sockets: used 36
TCP: inuse 17 orphan 0 tw 49 alloc 20 mem 3
UDP: inuse 0 mem 1
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
";

    /// `/proc/net/arp` of a VM, with two entries added.
    const REAL_ARP: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0
192.0.2.7        0x1         0x2         02:fc:00:00:00:07     *        eth0
198.51.100.1     0x1         0x2         02:fc:00:00:01:01     *        eth1
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

    /// `/proc/net/stat/nf_conntrack` of a VM (two CPUs), some counts made
    /// non-zero.
    const REAL_CONNTRACK_STATS: &str = "\
entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000000  00000000 00000010 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000002 00000000 00000000  00000000 00000000 00000000 00000000
00000000  00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000a 00000000 00000000  00000000 00000000 00000000 00000003
";

    #[test]
    fn conntrack_stats_summed_over_cpus() {
        let stats = parse_conntrack_stats(REAL_CONNTRACK_STATS).unwrap();
        assert_eq!(
            stats,
            vec![
                ("found", 17),
                ("invalid", 1),
                ("ignore", 0),
                ("insert", 0),
                ("insert_failed", 0),
                ("drop", 12),
                ("early_drop", 0),
                ("search_restart", 3),
            ]
        );
        let old =
            parse_conntrack_stats("entries found drop\n00000001 00000002 00000003\n").unwrap();
        assert_eq!(old, vec![("found", 2), ("drop", 3)]);
        assert!(parse_conntrack_stats("").is_err());
        assert!(parse_conntrack_stats("found\nxyz\n").is_err());
    }

    #[test]
    fn timex_fields_in_node_exporters_units() {
        // What adjtimex(2) gives on an unsynchronised VM.
        let unsynced = Timex {
            returned: TIME_ERROR,
            status: STA_UNSYNC,
            maxerror: 16_000_000,
            esterror: 16_000_000,
            constant: 2,
            tick: 10_000,
            ..Timex::default()
        };
        let f: BTreeMap<&str, f64> = unsynced.fields().into_iter().collect();
        assert_eq!(f.len(), 17);
        assert_eq!(f["sync_status"], 0.0);
        assert_eq!(f["status"], 64.0);
        assert_eq!(f["maxerror_seconds"], 16.0);
        assert_eq!(f["estimated_error_seconds"], 16.0);
        assert_eq!(f["tick_seconds"], 0.01);
        assert_eq!(f["loop_time_constant"], 2.0);
        assert_eq!(f["frequency_adjustment_ratio"], 1.0);
        let synced = Timex {
            returned: 0,
            status: 0x2001,
            offset: -250_000,
            freq: -655_360,
            ppsfreq: 65_536,
            jitter: 1_000,
            tai: 37,
            ..Timex::default()
        };
        let f: BTreeMap<&str, f64> = synced.fields().into_iter().collect();
        assert_eq!(f["sync_status"], 1.0);
        assert_eq!(f["offset_seconds"], -0.00025);
        assert!((f["frequency_adjustment_ratio"] - 0.99999).abs() < 1e-12);
        assert_eq!(f["pps_frequency_hertz"], 1e-6);
        assert_eq!(f["pps_jitter_seconds"], 1e-6);
        assert_eq!(f["tai_offset_seconds"], 37.0);
        assert_eq!(
            synced.clock(),
            ClockReading::from_timex(0, 0x2001, -250_000, 0)
        );
        let mut out = Collection::default();
        synced.record(&mut out, "host/a", 1);
        assert_eq!(out.samples.len(), 3 + 17);
    }

    #[test]
    fn sockstat_extras_and_arp_of_real_files() {
        let extras = sockstat_extras(REAL_SOCKSTAT);
        let seen: Vec<(&str, &str, u64)> = extras
            .iter()
            .map(|(p, f, v)| (p.as_str(), *f, *v))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("tcp", "mem", 3),
                ("udp", "mem", 1),
                ("frag", "inuse", 0),
                ("frag", "memory", 0),
            ]
        );
        let six = sockstat_extras(SOCKSTAT6);
        assert_eq!(six.len(), 2, "{six:?}");
        let arp = parse_arp(REAL_ARP);
        assert_eq!(
            arp.into_iter().collect::<Vec<_>>(),
            vec![("eth0", 2), ("eth1", 1)]
        );
        assert!(parse_arp("IP address HW type Flags HW address Mask Device\n").is_empty());
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
        let mut files = ProcFiles::default();
        let t = read_hwmon(dir.path(), &mut files);
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
        // Read again through the kept handles: a new reading shows.
        write(dir.path(), "class/hwmon/hwmon0/temp1_input", "46000\n");
        let again = read_hwmon(dir.path(), &mut files);
        assert_eq!(again[0].celsius, 46.0);
        assert_eq!(again.len(), t.len());
        assert!(read_hwmon(&dir.path().join("missing"), &mut files).is_empty());
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
        let mc = read_edac(dir.path(), &mut ProcFiles::default());
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
        assert!(read_edac(&dir.path().join("missing"), &mut ProcFiles::default()).is_empty());
    }

    #[tokio::test]
    async fn collects_every_section_from_fixture_trees() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        write(&proc, "sys/net/netfilter/nf_conntrack_count", "1200\n");
        write(&proc, "sys/net/netfilter/nf_conntrack_max", "262144\n");
        write(&proc, "net/stat/nf_conntrack", REAL_CONNTRACK_STATS);
        write(&proc, "sys/fs/file-nr", "4128\t0\t1048576\n");
        write(&proc, "net/sockstat", SOCKSTAT);
        write(&proc, "net/sockstat6", SOCKSTAT6);
        write(&proc, "net/netstat", NETSTAT);
        write(&proc, "vmstat", "nr_free_pages 100\noom_kill 2\n");
        write(&proc, "stat", "cpu  1 2 3 4 5 6 7 8\nbtime 1764920000\n");
        write(&proc, "mdstat", MDSTAT);
        write(&proc, "net/bonding/bond0", BOND);
        write(&proc, "net/arp", REAL_ARP);
        write(&proc, "sys/kernel/random/entropy_avail", "256\n");
        write(&proc, "sys/kernel/random/poolsize", "256\n");
        hwmon_tree(&sys);
        edac_tree(&sys);
        let mut c = KernelCollector::new("host/a".into(), proc.clone(), sys.clone());
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        assert!(out.samples.iter().all(|s| s.resource_id == "host/a"));
        assert!(out.resources.is_empty());
        let v = |m: &str, a: &[(&str, &str)]| value(&out, m, a);
        assert_eq!(v("system.network.conntrack.count", &[]), Some(1200.0));
        assert_eq!(v("system.network.conntrack.limit", &[]), Some(262_144.0));
        let drop = [("field", "drop")];
        assert_eq!(v("system.network.conntrack.stat", &drop), Some(12.0));
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
        let tcp_mem = [("protocol", "tcp"), ("field", "mem")];
        assert_eq!(v("system.linux.sockstat", &tcp_mem), Some(243.0));
        let frag6 = [("protocol", "frag6"), ("field", "memory")];
        assert_eq!(v("system.linux.sockstat", &frag6), Some(0.0));
        let tw = [("protocol", "tcp"), ("state", "time_wait")];
        assert_eq!(v("system.network.connections", &tw), Some(2.0));
        assert_eq!(v("system.linux.entropy.available", &[]), Some(256.0));
        assert_eq!(v("system.linux.entropy.pool_size", &[]), Some(256.0));
        let eth0 = [("device", "eth0")];
        assert_eq!(v("system.network.arp.entries", &eth0), Some(2.0));

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

        // Where the host, pressure and network collectors run, this one leaves
        // their files to them.
        let mut c = KernelCollector::new("host/a".into(), proc.clone(), sys)
            .with_stat(false)
            .with_vmstat(false)
            .with_netstat(false);
        for _ in 0..2 {
            let mut out = Collection::default();
            c.collect(&mut out).await.unwrap();
            for metric in [
                "system.boot_time",
                "system.linux.oom_kills",
                "system.network.tcp.listen_drops.rate",
            ] {
                assert!(out.samples.iter().all(|s| s.metric != metric), "{metric}");
            }
        }
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
        let timex = out
            .samples
            .iter()
            .filter(|s| s.metric == "system.linux.timex");
        assert_eq!(timex.count(), 17);
        let tick = value(&out, "system.linux.timex", &[("field", "tick_seconds")]).unwrap();
        assert!(tick > 0.0 && tick < 1.0, "{tick}");
        let synchronized = value(&out, "system.clock.synchronized", &[]).unwrap();
        assert!(synchronized == 0.0 || synchronized == 1.0, "{synchronized}");
        assert!(value(&out, "system.clock.max_error", &[]).unwrap() >= 0.0);
    }
}
