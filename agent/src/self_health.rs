//! The agent's view of itself: per collector, the last run's time, duration and
//! error, run and failure counts; the process's CPU time and memory. The scheduler
//! records runs here; the `agent` collector reports them in the stream (resource
//! `agent/<machine-id>`) and they are exported on the local `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What is known of one collector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectorStatus {
    /// When the last run started (Unix ms).
    pub last_run_ms: i64,
    /// How long it took.
    pub last_duration: Duration,
    /// Its error, if it failed.
    pub last_error: Option<String>,
    /// Runs so far.
    pub runs: u64,
    /// Failed runs so far (errors and missed deadlines).
    pub failures: u64,
}

/// Shared record of collector runs.
#[derive(Debug, Clone, Default)]
pub struct SelfHealth(Arc<Mutex<BTreeMap<&'static str, CollectorStatus>>>);

impl SelfHealth {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, CollectorStatus>> {
        // Each update replaces one entry's fields; a panic cannot leave it half-done.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one run of `collector`.
    pub fn record(
        &self,
        collector: &'static str,
        started_ms: i64,
        duration: Duration,
        error: Option<String>,
    ) {
        metrics::gauge!("infrawatch_agent_collector_duration_seconds", "collector" => collector)
            .set(duration.as_secs_f64());
        metrics::gauge!("infrawatch_agent_collector_last_run_timestamp_seconds", "collector" => collector)
            .set(started_ms as f64 / 1000.0);
        let mut map = self.lock();
        let s = map.entry(collector).or_default();
        s.last_run_ms = started_ms;
        s.last_duration = duration;
        s.runs += 1;
        if error.is_some() {
            s.failures += 1;
        }
        s.last_error = error;
    }

    /// A copy of every collector's status.
    pub fn snapshot(&self) -> Vec<(&'static str, CollectorStatus)> {
        self.lock().iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}

/// CPU seconds (user + system) and resident memory in bytes of this process.
pub fn process_usage(proc_self: &std::path::Path) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(proc_self.join("stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    let cpu = ticks as f64 / 100.0;
    let status = std::fs::read_to_string(proc_self.join("status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, rss_kb * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_runs_and_failures() {
        let h = SelfHealth::default();
        h.record("disk", 1_000, Duration::from_millis(2), None);
        h.record("disk", 2_000, Duration::from_millis(3), Some("boom".into()));
        let snap = h.snapshot();
        assert_eq!(snap[0].0, "disk");
        assert_eq!((snap[0].1.runs, snap[0].1.failures), (2, 1));
        assert_eq!(snap[0].1.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn own_process_usage() {
        let (cpu, rss) = process_usage(std::path::Path::new("/proc/self")).unwrap();
        assert!(cpu >= 0.0);
        assert!(rss > 1024 * 1024, "rss {rss}");
    }
}
