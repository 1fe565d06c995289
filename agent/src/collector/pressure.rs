//! Contention and pressure: CPU steal and iowait shares, pressure stall information
//! (`/proc/pressure/{cpu,memory,io}`) where the kernel has it, major page faults and
//! swap-in/out per second, and the run queue (runnable and blocked tasks).
//!
//! The steal and iowait shares and the run queue come from `/proc/stat`, which
//! this collector reads only when the host collector (which reports them from
//! its own reading) does not run ([`PressureCollector::with_stat`]). It is the
//! one collector that reads `/proc/vmstat`: besides the paging rates it reports
//! OOM kills (`system.linux.oom_kills`) and node_exporter's default subset of
//! the file (`oom_kill`, `pgpg*`, `pswp*`, `pg*fault*`) as
//! `system.linux.vmstat{field}`, and the PSI totals as
//! `system.linux.pressure.stall_time{resource,level}` (seconds, cumulative).
//!
//! The aggregator turns these into `DEGRADED`/`UNHEALTHY` host reasons with its
//! configurable contention thresholds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use infrawatch_common::time::now_unix_ms;

use super::proc_file::ProcFile;
use super::{CollectError, Collection, Collector};

/// Resources PSI reports on.
pub const PSI_RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// One line of a PSI file: the three averages (fractions) and the total stall time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiLine {
    /// avg10, avg60, avg300 as fractions of time.
    pub avg: [f64; 3],
    /// Total stall time in microseconds.
    pub total_us: u64,
}

/// Parses a PSI file into its `some` and `full` lines.
pub fn parse_psi(text: &str) -> Result<HashMap<String, PsiLine>, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(level) = f.next() else { continue };
        let mut avg = [0.0; 3];
        let mut total_us = None;
        for kv in f {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("bad field {kv:?}"))?;
            let slot = match k {
                "avg10" => 0,
                "avg60" => 1,
                "avg300" => 2,
                "total" => {
                    total_us = Some(v.parse().map_err(|_| format!("bad total {v:?}"))?);
                    continue;
                }
                _ => continue,
            };
            avg[slot] = v.parse::<f64>().map_err(|_| format!("bad {k} {v:?}"))? / 100.0;
        }
        let total_us = total_us.ok_or_else(|| format!("{level} line without total"))?;
        out.insert(level.to_string(), PsiLine { avg, total_us });
    }
    if out.is_empty() {
        return Err("empty".into());
    }
    Ok(out)
}

/// Every `name value` pair of `/proc/vmstat`.
pub fn vmstat_fields(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ')?;
        Some((k, v.trim().parse().ok()?))
    })
}

/// Named counters of `/proc/vmstat`.
pub fn parse_vmstat(text: &str) -> HashMap<String, u64> {
    vmstat_fields(text)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// True for the `/proc/vmstat` fields node_exporter keeps by default
/// (`^(oom_kill|pgpg|pswp|pg.*fault).*`): OOM kills, paging in and out, swapping
/// in and out, and page faults.
pub fn is_reported_vmstat_field(name: &str) -> bool {
    name.starts_with("oom_kill")
        || name.starts_with("pgpg")
        || name.starts_with("pswp")
        || name
            .strip_prefix("pg")
            .is_some_and(|rest| rest.contains("fault"))
}

/// The `/proc/vmstat` counters behind the paging rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingCounters {
    /// `pgmajfault`: major page faults.
    pub major_faults: Option<u64>,
    /// `pswpin`: pages swapped in.
    pub swapped_in: Option<u64>,
    /// `pswpout`: pages swapped out.
    pub swapped_out: Option<u64>,
}

/// From `/proc/stat`: total, steal and iowait ticks of the aggregate CPU line, and
/// runnable and blocked tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatContention {
    /// All ticks (first eight fields).
    pub total: u64,
    /// Steal ticks.
    pub steal: u64,
    /// Iowait ticks.
    pub iowait: u64,
    /// procs_running.
    pub running: u64,
    /// procs_blocked.
    pub blocked: u64,
}

/// Parses what [`StatContention`] needs from `/proc/stat`.
pub fn parse_stat_contention(text: &str) -> Result<StatContention, String> {
    let mut s = StatContention::default();
    let mut saw_cpu = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("cpu line: {e}"))?;
                if v.len() < 8 {
                    return Err("cpu line has fewer than 8 fields".into());
                }
                s.total = v.iter().take(8).sum();
                s.iowait = v[4];
                s.steal = v[7];
                saw_cpu = true;
            }
            Some("procs_running") => s.running = f.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("procs_blocked") => s.blocked = f.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    if !saw_cpu {
        return Err("no aggregate cpu line".into());
    }
    Ok(s)
}

/// The previous run's counters, for rates.
struct Previous {
    at: Instant,
    stat: Option<StatContention>,
    paging: PagingCounters,
    psi_totals: HashMap<(&'static str, String), u64>,
}

/// The contention collector: also the one collector that reads `/proc/vmstat`
/// (its OOM kills and node_exporter's subset of it as well).
pub struct PressureCollector {
    host_id: String,
    /// `<proc>/stat`, read only when no other collector reports from it.
    stat: Option<ProcFile>,
    /// `<proc>/vmstat`.
    vmstat: ProcFile,
    /// `<proc>/pressure/{cpu,memory,io}`, in [`PSI_RESOURCES`] order.
    psi: [ProcFile; 3],
    previous: Option<Previous>,
    psi_missing_logged: bool,
}

impl PressureCollector {
    /// Reports series on `host_id`.
    pub fn new(host_id: String, proc_root: PathBuf) -> Self {
        let psi = PSI_RESOURCES.map(|r| ProcFile::new(proc_root.join("pressure").join(r)));
        Self {
            host_id,
            stat: Some(ProcFile::new(proc_root.join("stat"))),
            vmstat: ProcFile::new(proc_root.join("vmstat")),
            psi,
            previous: None,
            psi_missing_logged: false,
        }
    }

    /// Whether to read `/proc/stat` for the steal and iowait shares and the
    /// runnable and blocked tasks: not when the host collector runs, which
    /// reports them from its own reading.
    pub fn with_stat(mut self, read: bool) -> Self {
        if !read {
            self.stat = None;
        }
        self
    }

    /// Reports the runnable and blocked tasks from `/proc/stat`, when this
    /// collector reads it, and returns the CPU figures for the shares.
    fn stat(
        &mut self,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<Option<StatContention>, CollectError> {
        let Some(file) = &mut self.stat else {
            return Ok(None);
        };
        let stat = parse_stat_contention(file.read()?).map_err(|r| file.parse_error(r))?;
        for (status, v) in [("running", stat.running), ("blocked", stat.blocked)] {
            let attrs = [("status", status)];
            out.sample(id, "system.processes.count", &attrs, ts, v as f64);
        }
        Ok(Some(stat))
    }

    /// Reports the OOM kills and node_exporter's subset of `/proc/vmstat` and
    /// returns the counters behind the paging rates.
    fn vmstat(
        &mut self,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<PagingCounters, CollectError> {
        let mut paging = PagingCounters::default();
        for (field, v) in vmstat_fields(self.vmstat.read()?) {
            match field {
                "pgmajfault" => paging.major_faults = Some(v),
                "pswpin" => paging.swapped_in = Some(v),
                "pswpout" => paging.swapped_out = Some(v),
                // Kernels before 4.13 have no oom_kill counter: no series.
                "oom_kill" => out.sample(id, "system.linux.oom_kills", &[], ts, v as f64),
                _ => {}
            }
            if is_reported_vmstat_field(field) {
                out.sample(id, "system.linux.vmstat", &[("field", field)], ts, v as f64);
            }
        }
        Ok(paging)
    }

    /// Reports the pressure stall averages and total stall times, and returns
    /// the totals for the rates.
    fn psi(
        &mut self,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<HashMap<(&'static str, String), u64>, CollectError> {
        let mut totals = HashMap::new();
        for (resource, file) in PSI_RESOURCES.into_iter().zip(&mut self.psi) {
            let text = match file.read() {
                Ok(t) => t,
                Err(e) => {
                    if !self.psi_missing_logged {
                        tracing::info!(
                            error = &e as &dyn std::error::Error,
                            "Pressure stall information is not available on this kernel."
                        );
                        self.psi_missing_logged = true;
                    }
                    continue;
                }
            };
            let lines = parse_psi(text).map_err(|reason| file.parse_error(reason))?;
            for (level, line) in lines {
                for (window, v) in ["10s", "60s", "300s"].into_iter().zip(line.avg) {
                    let attrs = [
                        ("resource", resource),
                        ("level", level.as_str()),
                        ("window", window),
                    ];
                    out.sample(id, "system.linux.pressure", &attrs, ts, v);
                }
                let attrs = [("resource", resource), ("level", level.as_str())];
                let stalled = line.total_us as f64 / 1e6;
                out.sample(id, "system.linux.pressure.stall_time", &attrs, ts, stalled);
                totals.insert((resource, level), line.total_us);
            }
        }
        Ok(totals)
    }
}

/// Adds the steal and iowait shares of CPU time between two `/proc/stat`
/// readings.
fn record_cpu_shares(
    stat: &StatContention,
    prev: &StatContention,
    id: &str,
    ts: i64,
    out: &mut Collection,
) {
    let ticks = stat.total.saturating_sub(prev.total);
    if ticks == 0 {
        return;
    }
    let share = |a: u64, b: u64| a.saturating_sub(b) as f64 / ticks as f64;
    for (state, v) in [
        ("steal", share(stat.steal, prev.steal)),
        ("iowait", share(stat.iowait, prev.iowait)),
    ] {
        out.sample(id, "system.cpu.utilization", &[("state", state)], ts, v);
    }
}

/// Adds the paging and pressure stall rates over the `secs` since `prev`.
fn record_rates(
    prev: &Previous,
    paging: &PagingCounters,
    psi_totals: &HashMap<(&'static str, String), u64>,
    secs: f64,
    id: &str,
    ts: i64,
    out: &mut Collection,
) {
    let rate = |now: Option<u64>, before: Option<u64>| -> Option<f64> {
        Some(now?.checked_sub(before?)? as f64 / secs)
    };
    let p = &prev.paging;
    if let Some(v) = rate(paging.major_faults, p.major_faults) {
        let attrs = [("type", "major")];
        out.sample(id, "system.paging.faults.rate", &attrs, ts, v);
    }
    for (direction, now, before) in [
        ("in", paging.swapped_in, p.swapped_in),
        ("out", paging.swapped_out, p.swapped_out),
    ] {
        if let Some(v) = rate(now, before) {
            let attrs = [("direction", direction)];
            out.sample(id, "system.paging.operations.rate", &attrs, ts, v);
        }
    }
    for ((resource, level), total) in psi_totals {
        if let Some(before) = prev.psi_totals.get(&(*resource, level.clone())) {
            let stalled = total.saturating_sub(*before) as f64 / 1e6 / secs;
            let attrs = [("resource", *resource), ("level", level.as_str())];
            out.sample(
                id,
                "system.linux.pressure.stall_time.rate",
                &attrs,
                ts,
                stalled,
            );
        }
    }
}

#[async_trait::async_trait]
impl Collector for PressureCollector {
    fn name(&self) -> &'static str {
        "pressure"
    }
    fn is_local(&self) -> bool {
        true
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let now = Instant::now();
        let ts = now_unix_ms();
        let id = self.host_id.clone();
        let stat = self.stat(&id, ts, out)?;
        let paging = self.vmstat(&id, ts, out)?;
        let psi_totals = self.psi(&id, ts, out)?;
        if let Some(prev) = &self.previous {
            if let (Some(stat), Some(before)) = (&stat, &prev.stat) {
                record_cpu_shares(stat, before, &id, ts, out);
            }
            let secs = now.duration_since(prev.at).as_secs_f64();
            if secs > 0.0 {
                record_rates(prev, &paging, &psi_totals, secs, &id, ts, out);
            }
        }
        self.previous = Some(Previous {
            at: now,
            stat,
            paging,
            psi_totals,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::test_support::{value, write};

    /// Part of `/proc/vmstat` of a VM, around the fields node_exporter keeps.
    const REAL_VMSTAT: &str = "\
nr_free_pages 1400537
workingset_refault_file 951995
pgdemote_proactive 0
nr_memmap_boot_pages 98304
pgpgin 5094197
pgpgout 5203644
pswpin 0
pswpout 0
pgalloc_normal 35421252
pgfree 36830727
pgfault 37219912
pgmajfault 5505
pglazyfreed 0
pgreuse 1257021
oom_kill 0
";

    /// `/proc/pressure/io` of the same VM.
    const REAL_PSI_IO: &str = "\
some avg10=0.00 avg60=0.30 avg300=0.27 total=7637655
full avg10=0.00 avg60=0.21 avg300=0.20 total=6403418
";

    #[test]
    fn real_vmstat_gives_node_exporters_subset() {
        let kept: Vec<(&str, u64)> = vmstat_fields(REAL_VMSTAT)
            .filter(|(k, _)| is_reported_vmstat_field(k))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("pgpgin", 5_094_197),
                ("pgpgout", 5_203_644),
                ("pswpin", 0),
                ("pswpout", 0),
                ("pgfault", 37_219_912),
                ("pgmajfault", 5505),
                ("oom_kill", 0),
            ]
        );
        let p = parse_psi(REAL_PSI_IO).unwrap();
        assert_eq!(p["full"].total_us, 6_403_418);
        assert_eq!(p["some"].avg, [0.0, 0.003, 0.0027]);
    }

    #[tokio::test]
    async fn collects_from_a_fake_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().to_path_buf();
        write(&proc, "vmstat", REAL_VMSTAT);
        write(&proc, "pressure/io", REAL_PSI_IO);
        write(
            &proc,
            "stat",
            "cpu  10 0 10 70 5 0 0 5 0 0\nprocs_running 3\n",
        );
        let mut c = PressureCollector::new("host/a".into(), proc.clone());
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        let v = |m: &str, a: &[(&str, &str)]| value(&out, m, a);
        assert_eq!(
            v("system.linux.vmstat", &[("field", "pgfault")]),
            Some(37_219_912.0)
        );
        assert_eq!(
            v("system.linux.vmstat", &[("field", "pgalloc_normal")]),
            None
        );
        let vmstat = out
            .samples
            .iter()
            .filter(|s| s.metric == "system.linux.vmstat");
        assert_eq!(vmstat.count(), 7);
        assert_eq!(v("system.linux.oom_kills", &[]), Some(0.0));
        let full = [("resource", "io"), ("level", "full")];
        assert_eq!(v("system.linux.pressure.stall_time", &full), Some(6.403418));
        assert_eq!(
            v("system.processes.count", &[("status", "running")]),
            Some(3.0)
        );

        // With the host collector reporting from /proc/stat, it is not read.
        let mut c = PressureCollector::new("host/a".into(), proc.clone()).with_stat(false);
        std::fs::remove_file(proc.join("stat")).unwrap();
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        write(
            &proc,
            "vmstat",
            &REAL_VMSTAT.replace("pgmajfault 5505", "pgmajfault 6505"),
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        c.collect(&mut out).await.unwrap();
        assert!(
            out.samples
                .iter()
                .all(|s| s.metric != "system.processes.count")
        );
        assert!(
            out.samples
                .iter()
                .all(|s| s.metric != "system.cpu.utilization")
        );
        let faults = value(&out, "system.paging.faults.rate", &[("type", "major")]).unwrap();
        assert!(faults > 0.0, "{faults}");
    }

    #[test]
    fn psi() {
        let p = parse_psi("some avg10=1.50 avg60=0.25 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!(p["some"].avg, [0.015, 0.0025, 0.0]);
        assert_eq!(p["full"].total_us, 5);
        assert!(parse_psi("some avg10=x total=1\n").is_err());
        assert!(parse_psi("").is_err());
    }

    #[test]
    fn stat_and_vmstat() {
        let s = parse_stat_contention(
            "cpu  10 0 10 70 5 0 0 5 0 0\ncpu0 1 1 1 1\nprocs_running 3\nprocs_blocked 1\n",
        )
        .unwrap();
        assert_eq!(
            (s.total, s.iowait, s.steal, s.running, s.blocked),
            (100, 5, 5, 3, 1)
        );
        let v = parse_vmstat("pgmajfault 42\npswpin 7\n");
        assert_eq!(v["pgmajfault"], 42);
    }

    #[tokio::test]
    async fn collects_on_this_machine() {
        let mut c = PressureCollector::new("host/a".into(), "/proc".into());
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        c.collect(&mut out).await.unwrap();
        let has = |m: &str| out.samples.iter().any(|s| s.metric == m);
        assert!(has("system.processes.count"));
        assert!(has("system.paging.faults.rate"));
        if std::path::Path::new("/proc/pressure/cpu").exists() {
            assert!(has("system.linux.pressure"));
            assert!(has("system.linux.pressure.stall_time.rate"));
        }
    }
}
