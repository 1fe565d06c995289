//! Disk I/O from `/proc/diskstats`: each whole device is a part of the host
//! (`host/<id>/disk/<device>`, kind `disk`) with reads and writes per second,
//! bytes per second, average latency per operation, time busy and queue depth,
//! and every counter of the file as it stands ([`record_counters`]:
//! `system.disk.{operations,merged,operation_time}{direction}` with `direction`
//! `read`, `write`, `discard` or `flush`, `system.disk.io{direction}` and
//! `system.disk.discarded` in bytes, `system.disk.{io_time,weighted_io_time}`
//! in seconds). Partitions and virtual devices (loop, ram, zram, floppy,
//! optical) are left out by default; a device counts as whole when
//! `/sys/block/<name>/size` can be read. The files stay open between runs
//! ([`super::proc_file`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use infrawatch_common::resource::kind;
use infrawatch_common::time::now_unix_ms;

use super::filter::NameFilter;
use super::proc_file::{ProcFile, ProcFiles};
use super::{CollectError, Collection, Collector};

/// Devices left out unless the configuration says otherwise.
pub const DEFAULT_EXCLUDE: [&str; 6] = ["loop*", "ram*", "zram*", "fd*", "sr*", "nbd*"];

/// Sector size `/proc/diskstats` counts in, whatever the device's own.
const SECTOR_BYTES: u64 = 512;

/// Cumulative counters of one device (the time fields in ms, as the kernel
/// prints them: 32 bits wide, so they wrap after about 50 days). The discard
/// fields are 0 before Linux 4.18, the flush fields before 5.5.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Reads completed.
    pub reads: u64,
    /// Reads merged with an adjacent one before reaching the device.
    pub reads_merged: u64,
    /// Sectors read.
    pub read_sectors: u64,
    /// Milliseconds spent reading.
    pub read_ms: u64,
    /// Writes completed.
    pub writes: u64,
    /// Writes merged.
    pub writes_merged: u64,
    /// Sectors written.
    pub write_sectors: u64,
    /// Milliseconds spent writing.
    pub write_ms: u64,
    /// I/Os in progress now (a gauge).
    pub in_progress: u64,
    /// Milliseconds with I/O in progress.
    pub busy_ms: u64,
    /// Milliseconds spent on I/O weighted by the I/Os in progress.
    pub weighted_ms: u64,
    /// Discards completed.
    pub discards: u64,
    /// Discards merged.
    pub discards_merged: u64,
    /// Sectors discarded.
    pub discard_sectors: u64,
    /// Milliseconds spent discarding.
    pub discard_ms: u64,
    /// Flush requests completed.
    pub flushes: u64,
    /// Milliseconds spent flushing.
    pub flush_ms: u64,
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
            let Some(v) = f.get(k) else { return Ok(0) };
            v.parse()
                .map_err(|_| format!("line {}: field {} is {v:?}", i + 1, k + 1))
        };
        out.insert(
            f[2].to_string(),
            DiskCounters {
                reads: n(3)?,
                reads_merged: n(4)?,
                read_sectors: n(5)?,
                read_ms: n(6)?,
                writes: n(7)?,
                writes_merged: n(8)?,
                write_sectors: n(9)?,
                write_ms: n(10)?,
                in_progress: n(11)?,
                busy_ms: n(12)?,
                weighted_ms: n(13)?,
                discards: n(14)?,
                discards_merged: n(15)?,
                discard_sectors: n(16)?,
                discard_ms: n(17)?,
                flushes: n(18)?,
                flush_ms: n(19)?,
            },
        );
    }
    Ok(out)
}

/// Adds device `dev`'s cumulative counters on its part `id`: operations,
/// merged operations and time per direction (`read`, `write`, `discard`,
/// `flush`), bytes read and written, bytes discarded, time busy and weighted
/// time busy.
pub fn record_counters(id: &str, dev: &str, c: &DiskCounters, ts: i64, out: &mut Collection) {
    let secs = |ms: u64| ms as f64 / 1000.0;
    let bytes = |sectors: u64| sectors.saturating_mul(SECTOR_BYTES) as f64;
    let per_direction: [(&'static str, &str, f64); 14] = [
        ("system.disk.operations", "read", c.reads as f64),
        ("system.disk.operations", "write", c.writes as f64),
        ("system.disk.operations", "discard", c.discards as f64),
        ("system.disk.operations", "flush", c.flushes as f64),
        ("system.disk.merged", "read", c.reads_merged as f64),
        ("system.disk.merged", "write", c.writes_merged as f64),
        ("system.disk.merged", "discard", c.discards_merged as f64),
        ("system.disk.operation_time", "read", secs(c.read_ms)),
        ("system.disk.operation_time", "write", secs(c.write_ms)),
        ("system.disk.operation_time", "discard", secs(c.discard_ms)),
        ("system.disk.operation_time", "flush", secs(c.flush_ms)),
        ("system.disk.io", "read", bytes(c.read_sectors)),
        ("system.disk.io", "write", bytes(c.write_sectors)),
        ("system.disk.discarded", "discard", bytes(c.discard_sectors)),
    ];
    for (metric, direction, v) in per_direction {
        out.sample(
            id,
            metric,
            &[("device", dev), ("direction", direction)],
            ts,
            v,
        );
    }
    let dev_only = [("device", dev)];
    out.sample(id, "system.disk.io_time", &dev_only, ts, secs(c.busy_ms));
    out.sample(
        id,
        "system.disk.weighted_io_time",
        &dev_only,
        ts,
        secs(c.weighted_ms),
    );
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
    sys_root: PathBuf,
    filter: NameFilter,
    interval_ms: u32,
    /// `<proc>/diskstats`.
    diskstats: ProcFile,
    /// Each device's sysfs attributes.
    sys_files: ProcFiles,
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
            diskstats: ProcFile::new(proc_root.join("diskstats")),
            sys_root,
            filter,
            interval_ms,
            sys_files: ProcFiles::default(),
            previous: None,
        }
    }

    /// Sysfs attribute `file` of device `name`, trimmed; `None` when it cannot
    /// be read.
    fn read_sys(&mut self, name: &str, file: &str) -> Option<String> {
        let path = self.sys_root.join("block").join(name).join(file);
        self.sys_files
            .get(&path)
            .read_ok()
            .map(|s| s.trim().to_string())
    }

    /// Device `name`'s attributes (its name, size and whether it rotates), or
    /// `None` when it is no whole device (`/sys/block/<name>` has no size: a
    /// partition, or a device gone).
    fn attributes(&mut self, name: &str) -> Option<BTreeMap<String, String>> {
        let size = self.read_sys(name, "size")?;
        let mut a = BTreeMap::from([("disk.device".to_string(), name.to_string())]);
        if let Ok(sectors) = size.parse::<u64>() {
            a.insert(
                "disk.size_bytes".into(),
                sectors.saturating_mul(SECTOR_BYTES).to_string(),
            );
        }
        if let Some(r) = self.read_sys(name, "queue/rotational") {
            a.insert("disk.rotational".into(), (r == "1").to_string());
        }
        Some(a)
    }
}

/// Adds device `dev`'s rates since `p`, `secs` earlier, on its part `id`.
fn record_rates(
    id: &str,
    dev: &str,
    c: &DiskCounters,
    p: &DiskCounters,
    secs: f64,
    ts: i64,
    out: &mut Collection,
) {
    let Some(r) = c.rates_since(p, secs) else {
        return;
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

#[async_trait::async_trait]
impl Collector for DiskCollector {
    fn name(&self) -> &'static str {
        "disk"
    }
    fn is_local(&self) -> bool {
        true
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let text = self.diskstats.read()?;
        let now = Instant::now();
        let ts = now_unix_ms();
        let mut current =
            parse_diskstats(text).map_err(|reason| self.diskstats.parse_error(reason))?;
        current.retain(|name, _| self.filter.allows(name));
        let mut whole = HashMap::with_capacity(current.len());
        for (name, c) in current {
            let dev = name.as_str();
            let Some(attributes) = self.attributes(dev) else {
                continue;
            };
            let id = &out.part(&self.host_id, kind::DISK, dev, attributes, self.interval_ms);
            out.sample(
                id,
                "system.disk.pending_operations",
                &[("device", dev)],
                ts,
                c.in_progress as f64,
            );
            record_counters(id, dev, &c, ts, out);
            if let Some((prev, taken)) = &self.previous
                && let Some(p) = prev.get(&name)
            {
                let secs = now.duration_since(*taken).as_secs_f64();
                record_rates(id, dev, &c, p, secs, ts, out);
            }
            whole.insert(name, c);
        }
        self.sys_files.sweep();
        self.previous = Some((whole, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
        254       0 vda 100 0 800 50 200 0 1600 400 2 300 450 0 0 0 0 0 0\n \
        254       1 vda1 10 0 80 5 20 0 160 40 0 30 45\n";

    /// `/proc/diskstats` of a VM (20 fields per line: Linux 5.5 or later).
    const REAL_STATS: &str = "\
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   7       7 loop7 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 101827 11316 10188394 87036 39151 59790 10407328 61790 0 17572 150987 14468 181 1364400 1630 7154 530
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
";

    #[test]
    fn real_diskstats_every_counter() {
        let s = parse_diskstats(REAL_STATS).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            s["vda"],
            DiskCounters {
                reads: 101_827,
                reads_merged: 11_316,
                read_sectors: 10_188_394,
                read_ms: 87_036,
                writes: 39_151,
                writes_merged: 59_790,
                write_sectors: 10_407_328,
                write_ms: 61_790,
                in_progress: 0,
                busy_ms: 17_572,
                weighted_ms: 150_987,
                discards: 14_468,
                discards_merged: 181,
                discard_sectors: 1_364_400,
                discard_ms: 1_630,
                flushes: 7_154,
                flush_ms: 530,
            }
        );
        let mut out = Collection::default();
        record_counters("host/a/disk/vda", "vda", &s["vda"], 1, &mut out);
        assert_eq!(out.samples.len(), 16);
        let get = |m: &str, d: &str| {
            out.samples
                .iter()
                .find(|x| x.metric == m && x.attributes.iter().any(|(_, v)| v == d))
                .map(|x| x.value)
        };
        assert_eq!(get("system.disk.io", "write"), Some(10_407_328.0 * 512.0));
        assert_eq!(get("system.disk.operation_time", "flush"), Some(0.53));
        assert_eq!(get("system.disk.merged", "discard"), Some(181.0));
        assert_eq!(get("system.disk.weighted_io_time", "vda"), Some(150.987));
    }

    #[tokio::test]
    async fn collects_whole_devices_from_fake_trees() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::write(
            proc.join("diskstats"),
            REAL_STATS.to_string() + " 254 1 vda1 10 0 80 5 20 0 160 40 0 30 45\n",
        )
        .unwrap();
        for (dev, size) in [("vda", "41943040\n"), ("zram0", "0\n")] {
            std::fs::create_dir_all(sys.join("block").join(dev).join("queue")).unwrap();
            std::fs::write(sys.join("block").join(dev).join("size"), size).unwrap();
        }
        std::fs::write(sys.join("block/vda/queue/rotational"), "0\n").unwrap();
        let exclude: Vec<String> = DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect();
        let filter = NameFilter::new(&[], &exclude);
        let mut c = DiskCollector::new("host/a".into(), proc.clone(), sys, filter, 1000);
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        assert_eq!(
            out.resources.len(),
            1,
            "vda1 is a partition, zram0 left out"
        );
        assert_eq!(
            out.resources[0].attributes["disk.size_bytes"],
            "21474836480"
        );
        assert!(
            out.samples
                .iter()
                .all(|s| s.resource_id == "host/a/disk/vda")
        );
        let ops = out.samples.iter().find(|s| {
            s.metric == "system.disk.operations" && s.attributes.iter().any(|(_, v)| v == "read")
        });
        assert_eq!(ops.map(|s| s.value), Some(101_827.0));
        assert_eq!(out.samples.len(), 1 + 16);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        assert!(
            out.samples
                .iter()
                .any(|s| s.metric == "system.disk.operations.rate")
        );
    }

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
            ..DiskCounters::default()
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
