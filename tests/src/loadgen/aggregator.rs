//! Figures of the aggregator under test, read from outside: CPU time and resident
//! memory from `/proc/<pid>` (when its process id is given), and its own counters
//! from `/metrics` (when its REST address is given). Taken at the edges of each
//! stage, they give the aggregator's cores in use, its memory per agent, the rows
//! it wrote and the share of the writer's time spent committing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// CPU time and resident memory of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcFigures {
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// The highest resident set size so far (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map_or(100.0, |t| t as f64)
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` if the process is gone.
pub fn proc_figures(pid: u32) -> Option<ProcFigures> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcFigures {
        cpu_seconds: cpu_ticks(&stat)? as f64 / ticks_per_second(),
        rss_bytes: status_kib(&status, "VmRSS:")? * 1024,
        peak_rss_bytes: status_kib(&status, "VmHWM:")? * 1024,
    })
}

/// utime + stime from a `stat` line (the command name may hold spaces and
/// parentheses, so fields are counted after the last `)`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the line, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Every sample line of a Prometheus text page, keyed by name and labels as
/// written (`name{a="b"}`).
pub type Metrics = BTreeMap<String, f64>;

/// Parses a Prometheus text page.
pub fn parse_metrics(text: &str) -> Metrics {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Scrapes `/metrics` at `rest`; `None` on any failure (the figures are then
/// left out of the report).
pub async fn scrape(rest: SocketAddr) -> Option<Metrics> {
    match super::http::get(rest, "/metrics", Duration::from_secs(10)).await {
        Ok((200, body)) => Some(parse_metrics(&body)),
        _ => None,
    }
}

/// Names of the aggregator's metrics the report uses (see
/// `aggregator/src/telemetry.rs`).
pub mod names {
    /// Samples applied.
    pub const SAMPLES: &str = "infrawatch_aggregator_ingest_samples_total";
    /// Seconds in database commits (histogram sum, operation commit).
    pub const COMMIT_SECONDS: &str =
        "infrawatch_aggregator_store_duration_seconds_sum{operation=\"commit\"}";
    /// Commits (histogram count, operation commit).
    pub const COMMITS: &str =
        "infrawatch_aggregator_store_duration_seconds_count{operation=\"commit\"}";
    /// Seconds the writer spent on groups of batches and on staleness sweeps
    /// (`{work="batches"}`, `{work="sweep"}`).
    pub const GROUP_SECONDS_PREFIX: &str =
        "infrawatch_aggregator_ingest_group_duration_seconds_sum{work=\"";
    /// Resources the staleness sweep marked UNKNOWN.
    pub const MARKED_STALE: &str = "infrawatch_aggregator_resources_marked_stale_total";
    /// Rows written per table: `infrawatch_aggregator_store_rows_total{table="..."}`.
    pub const ROWS_PREFIX: &str = "infrawatch_aggregator_store_rows_total{table=\"";
}

/// `after - before` of every counter in `after` whose key starts with `prefix`,
/// keyed by the label value after the prefix.
pub fn deltas_by_label(after: &Metrics, before: &Metrics, prefix: &str) -> BTreeMap<String, f64> {
    after
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| {
            let label = k[prefix.len()..].trim_end_matches("\"}").to_string();
            (label, v - before.get(k).copied().unwrap_or(0.0))
        })
        .collect()
}

/// `after - before` of one metric; `None` if `after` lacks it.
pub fn delta(after: &Metrics, before: &Metrics, key: &str) -> Option<f64> {
    after
        .get(key)
        .map(|a| a - before.get(key).copied().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_and_memory_of_this_process() {
        let stat = "4242 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 200 300";
        assert_eq!(cpu_ticks(stat), Some(300));
        let status = "Name:\tx\nVmHWM:\t   4096 kB\nVmRSS:\t   2048 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(status_kib(status, "VmHWM:"), Some(4096));
        let me = proc_figures(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(me.peak_rss_bytes >= me.rss_bytes);
    }

    #[test]
    fn metric_pages_subtract() {
        let before = parse_metrics(
            "# TYPE x counter\ninfrawatch_aggregator_store_rows_total{table=\"rollups\"} 10\n",
        );
        let after = parse_metrics(
            "infrawatch_aggregator_store_rows_total{table=\"rollups\"} 25\n\
             infrawatch_aggregator_store_rows_total{table=\"history\"} 3\n\
             infrawatch_aggregator_ingest_samples_total 7\n",
        );
        let rows = deltas_by_label(&after, &before, names::ROWS_PREFIX);
        assert_eq!(rows.get("rollups"), Some(&15.0));
        assert_eq!(rows.get("history"), Some(&3.0));
        assert_eq!(rows.len(), 2);
        assert_eq!(delta(&after, &before, names::SAMPLES), Some(7.0));
        assert_eq!(delta(&after, &before, "missing"), None);
    }
}
