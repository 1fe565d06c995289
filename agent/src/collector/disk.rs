//! Disk I/O from `/proc/diskstats`: each whole device is a part of the host
//! (`host/<id>/disk/<device>`, kind `disk`) with reads and writes per second,
//! bytes per second, average latency per operation, time busy and queue depth.
//! Partitions and virtual devices (loop, ram, zram, floppy, optical) are left out
//! by default; a device counts as whole when `/sys/block/<name>` exists.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use infrawatch_common::resource::kind;
use infrawatch_common::time::now_unix_ms;

use super::filter::NameFilter;
use super::{CollectError, Collection, Collector};

/// Devices left out unless the configuration says otherwise.
pub const DEFAULT_EXCLUDE: [&str; 6] = ["loop*", "ram*", "zram*", "fd*", "sr*", "nbd*"];

/// Sector size `/proc/diskstats` counts in, whatever the device's own.
const SECTOR_BYTES: u64 = 512;

/// Cumulative counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Reads completed.
    pub reads: u64,
    /// Sectors read.
    pub read_sectors: u64,
    /// Milliseconds spent reading.
    pub read_ms: u64,
    /// Writes completed.
    pub writes: u64,
    /// Sectors written.
    pub write_sectors: u64,
    /// Milliseconds spent writing.
    pub write_ms: u64,
    /// I/Os in progress now (a gauge).
    pub in_progress: u64,
    /// Milliseconds with I/O in progress.
    pub busy_ms: u64,
}

/// Parses `/proc/diskstats` into counters by device name.
pub fn parse_diskstats(text: &str) -> Result<HashMap<String, DiskCounters>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 14 {
            return Err(format!(
                "line {}: {} fields, expected at least 14",
                i + 1,
                f.len()
            ));
        }
        let n = |k: usize| -> Result<u64, String> {
            f[k].parse()
                .map_err(|_| format!("line {}: field {} is {:?}", i + 1, k + 1, f[k]))
        };
        out.insert(
            f[2].to_string(),
            DiskCounters {
                reads: n(3)?,
                read_sectors: n(5)?,
                read_ms: n(6)?,
                writes: n(7)?,
                write_sectors: n(9)?,
                write_ms: n(10)?,
                in_progress: n(11)?,
                busy_ms: n(12)?,
            },
        );
    }
    Ok(out)
}

/// Rates of one device between two readings `secs` apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskRates {
    /// Reads per second.
    pub reads_per_sec: f64,
    /// Writes per second.
    pub writes_per_sec: f64,
    /// Bytes read per second.
    pub read_bytes_per_sec: f64,
    /// Bytes written per second.
    pub write_bytes_per_sec: f64,
    /// Average seconds per read (0 without reads).
    pub read_latency_secs: f64,
    /// Average seconds per write (0 without writes).
    pub write_latency_secs: f64,
    /// Fraction of the time with I/O in progress.
    pub utilization: f64,
}

impl DiskCounters {
    /// Rates since `earlier`; `None` if a counter went backwards (device reset).
    pub fn rates_since(&self, earlier: &DiskCounters, secs: f64) -> Option<DiskRates> {
        if secs <= 0.0 {
            return None;
        }
        let d = |a: u64, b: u64| a.checked_sub(b).map(|v| v as f64);
        // The kernel prints the time fields as 32-bit: they wrap at 2^32 ms.
        let ms = |a: u64, b: u64| f64::from((a as u32).wrapping_sub(b as u32));
        let reads = d(self.reads, earlier.reads)?;
        let writes = d(self.writes, earlier.writes)?;
        let read_ms = ms(self.read_ms, earlier.read_ms);
        let write_ms = ms(self.write_ms, earlier.write_ms);
        let per_op = |ms: f64, ops: f64| if ops > 0.0 { ms / ops / 1000.0 } else { 0.0 };
        Some(DiskRates {
            reads_per_sec: reads / secs,
            writes_per_sec: writes / secs,
            read_bytes_per_sec: d(self.read_sectors, earlier.read_sectors)? * SECTOR_BYTES as f64
                / secs,
            write_bytes_per_sec: d(self.write_sectors, earlier.write_sectors)?
                * SECTOR_BYTES as f64
                / secs,
            read_latency_secs: per_op(read_ms, reads),
            write_latency_secs: per_op(write_ms, writes),
            utilization: (ms(self.busy_ms, earlier.busy_ms) / 1000.0 / secs).clamp(0.0, 1.0),
        })
    }
}

/// The disk collector.
pub struct DiskCollector {
    host_id: String,
    proc_root: PathBuf,
    sys_root: PathBuf,
    filter: NameFilter,
    interval_ms: u32,
    previous: Option<(HashMap<String, DiskCounters>, Instant)>,
}

impl DiskCollector {
    /// Reports the whole devices `filter` allows as parts of `host_id`, every
    /// `interval_ms`.
    pub fn new(
        host_id: String,
        proc_root: PathBuf,
        sys_root: PathBuf,
        filter: NameFilter,
        interval_ms: u32,
    ) -> Self {
        Self {
            host_id,
            proc_root,
            sys_root,
            filter,
            interval_ms,
            previous: None,
        }
    }

    /// Device `name`'s attributes: its name, size and whether it rotates.
    fn attributes(&self, name: &str) -> BTreeMap<String, String> {
        let read = |file: &str| {
            std::fs::read_to_string(self.sys_root.join("block").join(name).join(file))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let mut a = BTreeMap::from([("disk.device".to_string(), name.to_string())]);
        if let Some(sectors) = read("size").and_then(|s| s.parse::<u64>().ok()) {
            a.insert(
                "disk.size_bytes".into(),
                sectors.saturating_mul(SECTOR_BYTES).to_string(),
            );
        }
        if let Some(r) = read("queue/rotational") {
            a.insert("disk.rotational".into(), (r == "1").to_string());
        }
        a
    }

    fn is_whole_device(&self, name: &str) -> bool {
        self.sys_root.join("block").join(name).exists()
    }
}

#[async_trait::async_trait]
impl Collector for DiskCollector {
    fn name(&self) -> &'static str {
        "disk"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let path = self.proc_root.join("diskstats");
        let text = std::fs::read_to_string(&path).map_err(|source| CollectError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let now = Instant::now();
        let ts = now_unix_ms();
        let current: HashMap<String, DiskCounters> = parse_diskstats(&text)
            .map_err(|reason| CollectError::Parse {
                path: path.display().to_string(),
                reason,
            })?
            .into_iter()
            .filter(|(name, _)| self.filter.allows(name) && self.is_whole_device(name))
            .collect();
        for (name, c) in &current {
            let dev = name.as_str();
            let id = &out.part(
                &self.host_id,
                kind::DISK,
                dev,
                self.attributes(dev),
                self.interval_ms,
            );
            out.sample(
                id,
                "system.disk.pending_operations",
                &[("device", dev)],
                ts,
                c.in_progress as f64,
            );
            let Some((prev, taken)) = &self.previous else {
                continue;
            };
            let Some(p) = prev.get(name) else { continue };
            let Some(r) = c.rates_since(p, now.duration_since(*taken).as_secs_f64()) else {
                continue;
            };
            for (direction, ops, bytes, latency) in [
                (
                    "read",
                    r.reads_per_sec,
                    r.read_bytes_per_sec,
                    r.read_latency_secs,
                ),
                (
                    "write",
                    r.writes_per_sec,
                    r.write_bytes_per_sec,
                    r.write_latency_secs,
                ),
            ] {
                let attrs = [("device", dev), ("direction", direction)];
                out.sample(id, "system.disk.operations.rate", &attrs, ts, ops);
                out.sample(id, "system.disk.io.rate", &attrs, ts, bytes);
                out.sample(id, "system.disk.operation_time.avg", &attrs, ts, latency);
            }
            out.sample(
                id,
                "system.disk.utilization",
                &[("device", dev)],
                ts,
                r.utilization,
            );
        }
        self.previous = Some((current, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
        254       0 vda 100 0 800 50 200 0 1600 400 2 300 450 0 0 0 0 0 0\n \
        254       1 vda1 10 0 80 5 20 0 160 40 0 30 45\n";

    #[test]
    fn parses_and_derives_rates() {
        let s = parse_diskstats(STATS).unwrap();
        assert_eq!(s.len(), 3);
        let before = s["vda"];
        assert_eq!(before.in_progress, 2);
        let after = DiskCounters {
            reads: 110,
            read_sectors: 880,
            read_ms: 70,
            writes: 220,
            write_sectors: 2000,
            write_ms: 500,
            in_progress: 0,
            busy_ms: 800,
        };
        let r = after.rates_since(&before, 2.0).unwrap();
        assert_eq!(r.reads_per_sec, 5.0);
        assert_eq!(r.read_bytes_per_sec, 80.0 * 512.0 / 2.0);
        assert_eq!(r.read_latency_secs, 0.002);
        assert_eq!(r.write_latency_secs, 0.005);
        assert_eq!(r.utilization, 0.25);
        assert!(
            before.rates_since(&after, 1.0).is_none(),
            "counters going back are a reset"
        );
        let near_wrap = DiskCounters {
            read_ms: u64::from(u32::MAX) - 9,
            reads: 1,
            ..before
        };
        let wrapped = DiskCounters {
            read_ms: 10,
            reads: 2,
            ..before
        };
        assert_eq!(
            wrapped
                .rates_since(&near_wrap, 1.0)
                .unwrap()
                .read_latency_secs,
            0.02
        );
        assert!(parse_diskstats("1 2 sda 1\n").is_err());
    }
}
