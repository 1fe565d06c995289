//! Contention and pressure: CPU steal and iowait shares, pressure stall information
//! (`/proc/pressure/{cpu,memory,io}`) where the kernel has it, major page faults and
//! swap-in/out per second, and the run queue (runnable and blocked tasks).
//!
//! The aggregator turns these into `DEGRADED`/`UNHEALTHY` host reasons with its
//! configurable contention thresholds.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use infrawatch_common::time::now_unix_ms;

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

/// Named counters of `/proc/vmstat`.
pub fn parse_vmstat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
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

struct Previous {
    at: Instant,
    stat: StatContention,
    vmstat: HashMap<String, u64>,
    psi_totals: HashMap<(&'static str, String), u64>,
}

/// The contention collector.
pub struct PressureCollector {
    host_id: String,
    proc_root: PathBuf,
    previous: Option<Previous>,
    psi_missing_logged: bool,
}

impl PressureCollector {
    /// Reports series on `host_id`.
    pub fn new(host_id: String, proc_root: PathBuf) -> Self {
        Self {
            host_id,
            proc_root,
            previous: None,
            psi_missing_logged: false,
        }
    }

    fn read(&self, name: &str) -> Result<String, CollectError> {
        let path = self.proc_root.join(name);
        std::fs::read_to_string(&path).map_err(|source| CollectError::Read {
            path: path.display().to_string(),
            source,
        })
    }
}

#[async_trait::async_trait]
impl Collector for PressureCollector {
    fn name(&self) -> &'static str {
        "pressure"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let now = Instant::now();
        let ts = now_unix_ms();
        let id = self.host_id.clone();
        let stat =
            parse_stat_contention(&self.read("stat")?).map_err(|reason| CollectError::Parse {
                path: "stat".into(),
                reason,
            })?;
        out.sample(
            &id,
            "system.processes.count",
            &[("status", "running")],
            ts,
            stat.running as f64,
        );
        out.sample(
            &id,
            "system.processes.count",
            &[("status", "blocked")],
            ts,
            stat.blocked as f64,
        );
        let vmstat = parse_vmstat(&self.read("vmstat")?);

        let mut psi_totals = HashMap::new();
        for resource in PSI_RESOURCES {
            let text = match self.read(&format!("pressure/{resource}")) {
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
            let lines = parse_psi(&text).map_err(|reason| CollectError::Parse {
                path: format!("pressure/{resource}"),
                reason,
            })?;
            for (level, line) in lines {
                for (window, v) in ["10s", "60s", "300s"].into_iter().zip(line.avg) {
                    let attrs = [
                        ("resource", resource),
                        ("level", level.as_str()),
                        ("window", window),
                    ];
                    out.sample(&id, "system.linux.pressure", &attrs, ts, v);
                }
                psi_totals.insert((resource, level), line.total_us);
            }
        }

        if let Some(prev) = &self.previous {
            let secs = now.duration_since(prev.at).as_secs_f64();
            let ticks = stat.total.saturating_sub(prev.stat.total);
            if ticks > 0 {
                let share = |a: u64, b: u64| a.saturating_sub(b) as f64 / ticks as f64;
                out.sample(
                    &id,
                    "system.cpu.utilization",
                    &[("state", "steal")],
                    ts,
                    share(stat.steal, prev.stat.steal),
                );
                out.sample(
                    &id,
                    "system.cpu.utilization",
                    &[("state", "iowait")],
                    ts,
                    share(stat.iowait, prev.stat.iowait),
                );
            }
            if secs > 0.0 {
                let rate = |key: &str| -> Option<f64> {
                    Some(vmstat.get(key)?.checked_sub(*prev.vmstat.get(key)?)? as f64 / secs)
                };
                if let Some(v) = rate("pgmajfault") {
                    out.sample(
                        &id,
                        "system.paging.faults.rate",
                        &[("type", "major")],
                        ts,
                        v,
                    );
                }
                for (key, direction) in [("pswpin", "in"), ("pswpout", "out")] {
                    if let Some(v) = rate(key) {
                        out.sample(
                            &id,
                            "system.paging.operations.rate",
                            &[("direction", direction)],
                            ts,
                            v,
                        );
                    }
                }
                for ((resource, level), total) in &psi_totals {
                    if let Some(before) = prev.psi_totals.get(&(*resource, level.clone())) {
                        let stalled = total.saturating_sub(*before) as f64 / 1e6 / secs;
                        let attrs = [("resource", *resource), ("level", level.as_str())];
                        out.sample(
                            &id,
                            "system.linux.pressure.stall_time.rate",
                            &attrs,
                            ts,
                            stalled,
                        );
                    }
                }
            }
        }
        self.previous = Some(Previous {
            at: now,
            stat,
            vmstat,
            psi_totals,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
