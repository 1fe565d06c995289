//! Stage results and the run summary: computed from two snapshots (ours and the
//! aggregator's), printed as progress lines on stderr and as a summary, in text
//! or JSON, on stdout.
//!
//! `ack_latency` and `acked_*` are about a batch's first acknowledgement (level
//! received, or durable from an aggregator that sends only durable ones): what
//! flow control sees, and what `--max-ack-p99-ms` judges. `durable_ack_*` are
//! about the acknowledgement that the batch is committed; [`Durability`] says
//! whether every batch sent got one.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::aggregator::{Metrics, ProcFigures, delta, deltas_by_label, names};
use super::histogram::Histogram;
use super::stats::{Observer, Snapshot};

/// The aggregator's side of an instant: process figures and metrics, if known.
#[derive(Debug, Clone, Default)]
pub struct AggregatorView {
    /// CPU time and memory.
    pub proc: Option<ProcFigures>,
    /// Its `/metrics`, merged over every aggregator scraped.
    pub metrics: Option<Metrics>,
}

/// Percentiles of a latency histogram, in milliseconds.
pub fn latency_json(h: &Histogram) -> Value {
    json!({
        "count": h.count(),
        "p50_ms": h.quantile_ms(0.5),
        "p95_ms": h.quantile_ms(0.95),
        "p99_ms": h.quantile_ms(0.99),
        "p999_ms": h.quantile_ms(0.999),
        "max_ms": (h.count() > 0).then(|| h.max_us() as f64 / 1000.0),
    })
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// `p50/p99/p99.9 ms` of `h`.
pub fn latency_text(h: &Histogram) -> String {
    format!(
        "{}/{}/{} ms",
        fmt_ms(h.quantile_ms(0.5)),
        fmt_ms(h.quantile_ms(0.99)),
        fmt_ms(h.quantile_ms(0.999))
    )
}

/// `p50/p95/p99 ms` of `h`.
pub fn latency_text_p95(h: &Histogram) -> String {
    format!(
        "{}/{}/{} ms",
        fmt_ms(h.quantile_ms(0.5)),
        fmt_ms(h.quantile_ms(0.95)),
        fmt_ms(h.quantile_ms(0.99))
    )
}

/// One progress line for the interval `i` of `secs` seconds.
pub fn progress_line(label: &str, i: &Snapshot, secs: f64) -> String {
    let mut line = format!(
        "{label}: connected {} | acked {:.0} samples/s | ack p50/p99/p99.9 {} | durable {:.0} samples/s, p50/p95/p99 {} | errors {}",
        i.connected,
        i.samples_acked as f64 / secs,
        latency_text(&i.ack_latency),
        i.samples_durable as f64 / secs,
        latency_text_p95(&i.durable_latency),
        errors_text(i),
    );
    for o in Observer::ALL {
        let h = i.change(o);
        if h.count() > 0 || i.missed(o) > 0 {
            line.push_str(&format!(" | {} {}", o.name(), latency_text(h)));
            if i.missed(o) > 0 {
                line.push_str(&format!(" ({} missed)", i.missed(o)));
            }
        }
    }
    line
}

fn errors_text(i: &Snapshot) -> String {
    let mut parts: Vec<String> = i.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if i.samples_skipped > 0 {
        parts.push(format!("window_full={} samples", i.samples_skipped));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(",")
    }
}

/// Everything measured in one stage.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// Interval between batches of one agent.
    pub interval_ms: u64,
    /// Measured wall time.
    pub seconds: f64,
    /// Series per agent.
    pub series: usize,
    /// Our counters over the stage.
    pub interval: Snapshot,
    /// Aggregator figures at the start and the end.
    pub before: AggregatorView,
    /// See `before`.
    pub after: AggregatorView,
    /// Acknowledgement p99 above which a stage fails.
    pub max_ack_p99_ms: f64,
}

impl StageResult {
    /// Samples per second the schedule asks of the connected agents.
    pub fn offered(&self) -> f64 {
        self.interval.connected as f64 * self.series as f64 * 1000.0 / self.interval_ms as f64
    }

    /// Samples acknowledged per second (first ack, either level).
    pub fn acked(&self) -> f64 {
        self.interval.samples_acked as f64 / self.seconds
    }

    /// Samples acknowledged durable per second.
    pub fn durable(&self) -> f64 {
        self.interval.samples_durable as f64 / self.seconds
    }

    /// Cores the aggregator used, if its process was given.
    pub fn aggregator_cores(&self) -> Option<f64> {
        let (a, b) = (self.after.proc?, self.before.proc?);
        Some((a.cpu_seconds - b.cpu_seconds) / self.seconds)
    }

    fn metric_delta(&self, key: &str) -> Option<f64> {
        delta(
            self.after.metrics.as_ref()?,
            self.before.metrics.as_ref()?,
            key,
        )
    }

    /// Why the stage failed, if it did: errors, skipped samples, latency, or
    /// fewer samples acknowledged than sent.
    pub fn failure(&self) -> Option<String> {
        let i = &self.interval;
        // Failing observers are reported but say nothing about ingest.
        if i.errors.keys().any(|k| !k.starts_with("watch_")) {
            return Some(format!("errors: {}", errors_text(i)));
        }
        if i.samples_skipped > 0 {
            return Some(format!(
                "{} samples skipped (window full)",
                i.samples_skipped
            ));
        }
        match i.ack_latency.quantile_ms(0.99) {
            Some(p99) if p99 > self.max_ack_p99_ms => {
                return Some(format!(
                    "ack p99 {p99:.0} ms above {:.0} ms",
                    self.max_ack_p99_ms
                ));
            }
            None => return Some("nothing acknowledged".into()),
            _ => {}
        }
        // Against what was sent, not the schedule: which agents fall due within
        // a short stage varies with their phases.
        let sent = i.samples_sent as f64 / self.seconds;
        if self.acked() < 0.97 * sent {
            return Some(format!(
                "acknowledged {:.0} of {:.0} samples/s sent",
                self.acked(),
                sent
            ));
        }
        None
    }

    /// The stage as JSON.
    pub fn json(&self) -> Value {
        let i = &self.interval;
        let mut changes = serde_json::Map::new();
        for o in Observer::ALL {
            let mut v = latency_json(i.change(o));
            v["missed"] = json!(i.missed(o));
            changes.insert(o.name().into(), v);
        }
        let cores = self.aggregator_cores();
        let applied = self.metric_delta(names::SAMPLES).map(|s| s / self.seconds);
        let commit = self.metric_delta(names::COMMIT_SECONDS);
        let writer: Option<BTreeMap<String, f64>> =
            match (&self.after.metrics, &self.before.metrics) {
                (Some(a), Some(b)) => Some(deltas_by_label(a, b, names::GROUP_SECONDS_PREFIX)),
                _ => None,
            };
        let group = writer.as_ref().map(|w| w.values().sum::<f64>());
        let rows: Option<BTreeMap<String, f64>> = match (&self.after.metrics, &self.before.metrics)
        {
            (Some(a), Some(b)) => Some(
                deltas_by_label(a, b, names::ROWS_PREFIX)
                    .into_iter()
                    .map(|(k, v)| (k, v / self.seconds))
                    .collect(),
            ),
            _ => None,
        };
        json!({
            "interval_ms": self.interval_ms,
            "seconds": self.seconds,
            "agents_connected": i.connected,
            "offered_samples_per_s": self.offered(),
            "sent_samples_per_s": i.samples_sent as f64 / self.seconds,
            "acked_samples_per_s": self.acked(),
            "skipped_samples": i.samples_skipped,
            "errors": i.errors,
            "reconnections": i.connections,
            "bytes_per_sample": i.bytes_per_sample(),
            "ack_latency": latency_json(&i.ack_latency),
            "durable_acked_samples_per_s": self.durable(),
            "durable_ack_latency": latency_json(&i.durable_latency),
            "changes_injected": i.changes,
            "change_to_observer": changes,
            "aggregator": {
                "cores": cores,
                "rss_bytes": self.after.proc.map(|p| p.rss_bytes),
                "applied_samples_per_s": applied,
                "samples_per_core_s": cores.filter(|c| *c > 0.0).map(|c| self.acked() / c),
                "db_commit_seconds": commit,
                "writer_busy_seconds": group,
                "writer_seconds_by_work": writer,
                "resources_marked_stale": self.metric_delta(names::MARKED_STALE),
                "db_share_of_writer": commit.zip(group).filter(|(_, g)| *g > 0.0).map(|(c, g)| c / g),
                "commits_per_s": self.metric_delta(names::COMMITS).map(|c| c / self.seconds),
                "rows_per_s": rows,
            },
            "passed": self.failure().is_none(),
            "failure": self.failure(),
        })
    }
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Settings, as JSON.
    pub settings: Value,
    /// Seconds until every agent was connected (or the wait ended).
    pub connect_seconds: f64,
    /// Agents connected when streaming started.
    pub connected: u64,
    /// Errors while connecting.
    pub connect_errors: BTreeMap<String, u64>,
    /// Aggregator before any agent connected, with all connected, and at the end.
    pub aggregator_idle: Option<ProcFigures>,
    /// See `aggregator_idle`.
    pub aggregator_connected: Option<ProcFigures>,
    /// See `aggregator_idle`.
    pub aggregator_end: Option<ProcFigures>,
    /// Stages run.
    pub stages: Vec<StageResult>,
    /// The whole streaming phase.
    pub total: Option<Snapshot>,
    /// Durable acknowledgements over the whole run, after the wait for the last.
    pub durability: Option<Durability>,
    /// Cores this load generator used while streaming.
    pub loadgen_cores: Option<f64>,
}

impl Summary {
    /// The best stage that passed: most samples acknowledged per second.
    pub fn best(&self) -> Option<&StageResult> {
        self.stages
            .iter()
            .filter(|s| s.failure().is_none())
            .max_by(|a, b| a.acked().total_cmp(&b.acked()))
    }

    /// Aggregator memory per connected agent: (connected − idle) / agents.
    pub fn rss_per_agent(&self) -> Option<f64> {
        let (c, i) = (self.aggregator_connected?, self.aggregator_idle?);
        (self.connected > 0)
            .then(|| (c.rss_bytes as f64 - i.rss_bytes as f64) / self.connected as f64)
    }

    /// The summary as JSON.
    pub fn json(&self) -> Value {
        let best = self.best().map(|s| {
            let cores = s.aggregator_cores();
            json!({
                "interval_ms": s.interval_ms,
                "acked_samples_per_s": s.acked(),
                "aggregator_cores": cores,
                "samples_per_core_s": cores.filter(|c| *c > 0.0).map(|c| s.acked() / c),
            })
        });
        json!({
            "settings": self.settings,
            "connect": {
                "seconds": self.connect_seconds,
                "connected": self.connected,
                "errors": self.connect_errors,
            },
            "aggregator_rss": {
                "idle_bytes": self.aggregator_idle.map(|p| p.rss_bytes),
                "connected_bytes": self.aggregator_connected.map(|p| p.rss_bytes),
                "end_bytes": self.aggregator_end.map(|p| p.rss_bytes),
                "peak_bytes": self.aggregator_end.map(|p| p.peak_rss_bytes),
                "per_connected_agent_bytes": self.rss_per_agent(),
            },
            "bytes_per_sample": self.total.as_ref().and_then(Snapshot::bytes_per_sample),
            "loadgen_cores": self.loadgen_cores,
            "stages": self.stages.iter().map(StageResult::json).collect::<Vec<_>>(),
            "best_passing_stage": best,
            "durable": self.durability.as_ref().map(Durability::json),
        })
    }

    /// The summary as text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        out.push_str(&format!(
            "connected {} agents in {:.1} s (errors while connecting: {})\n",
            self.connected,
            self.connect_seconds,
            if self.connect_errors.is_empty() {
                "none".to_string()
            } else {
                format!("{:?}", self.connect_errors)
            }
        ));
        if let (Some(i), Some(c)) = (self.aggregator_idle, self.aggregator_connected) {
            out.push_str(&format!(
                "aggregator RSS: idle {:.0} MiB, all connected {:.0} MiB ({:.1} KiB per agent)",
                mib(i.rss_bytes),
                mib(c.rss_bytes),
                self.rss_per_agent().unwrap_or(0.0) / 1024.0
            ));
            if let Some(e) = self.aggregator_end {
                out.push_str(&format!(
                    ", at the end {:.0} MiB, peak {:.0} MiB",
                    mib(e.rss_bytes),
                    mib(e.peak_rss_bytes)
                ));
            }
            out.push('\n');
        }
        if let Some(b) = self.total.as_ref().and_then(Snapshot::bytes_per_sample) {
            out.push_str(&format!(
                "bytes per sample on the wire (encoded Batch): {b:.1}\n"
            ));
        }
        if let Some(c) = self.loadgen_cores {
            out.push_str(&format!("load generator used {c:.2} cores\n"));
        }
        out.push_str(
            "interval  offered/s   acked/s  agg cores  samples/core/s  ack p50/p99/p99.9         durable p50/p95/p99       grpc watch p50/p99/p99.9  result\n",
        );
        for s in &self.stages {
            let cores = s.aggregator_cores();
            out.push_str(&format!(
                "{:>6} ms {:>10.0} {:>9.0} {:>10} {:>15} {:<25} {:<25} {:<25} {}\n",
                s.interval_ms,
                s.offered(),
                s.acked(),
                cores.map_or("-".into(), |c| format!("{c:.2}")),
                cores
                    .filter(|c| *c > 0.0)
                    .map_or("-".into(), |c| format!("{:.0}", s.acked() / c)),
                latency_text(&s.interval.ack_latency),
                latency_text_p95(&s.interval.durable_latency),
                latency_text(s.interval.change(Observer::Grpc)),
                s.failure().unwrap_or_else(|| "passed".into()),
            ));
        }
        match self.best() {
            Some(b) => out.push_str(&format!(
                "highest sustained: {:.0} samples/s (interval {} ms)\n",
                b.acked(),
                b.interval_ms
            )),
            None => out.push_str("no stage passed\n"),
        }
        if let Some(d) = &self.durability {
            out.push_str(&d.text());
            out.push('\n');
        }
        out
    }
}

/// Durable acknowledgements over the whole run: whether every batch sent got
/// one, and how long they took next to the first acknowledgements.
#[derive(Debug, Clone, Default)]
pub struct Durability {
    /// Batches sent in the whole run (connecting included).
    pub batches_sent: u64,
    /// Samples in them.
    pub samples_sent: u64,
    /// Batches acknowledged durable.
    pub batches_durable: u64,
    /// Samples in them, less those refused.
    pub samples_durable: u64,
    /// Batches left without a durable ack by a stream that ended (not resent).
    pub batches_abandoned: u64,
    /// Samples in them.
    pub samples_abandoned: u64,
    /// Send to first ack, from the start of streaming to the end of the wait.
    pub ack_latency: Histogram,
    /// Send to durable ack, over the same time.
    pub durable_latency: Histogram,
    /// Seconds waited after the last stage for the last durable acks.
    pub waited_seconds: f64,
    /// The most that was allowed (`--durable-wait-s`).
    pub wait_limit_seconds: u64,
}

impl Durability {
    /// From the snapshot `end` taken after the wait; latencies since
    /// `stream_start`.
    pub fn new(end: &Snapshot, stream_start: &Snapshot, waited: f64, limit: u64) -> Self {
        let streamed = end.since(stream_start);
        Self {
            batches_sent: end.batches_sent,
            samples_sent: end.samples_sent,
            batches_durable: end.batches_durable,
            samples_durable: end.samples_durable,
            batches_abandoned: end.batches_abandoned,
            samples_abandoned: end.samples_abandoned,
            ack_latency: streamed.ack_latency,
            durable_latency: streamed.durable_latency,
            waited_seconds: waited,
            wait_limit_seconds: limit,
        }
    }

    /// Every batch sent was acknowledged durable.
    pub fn all_durable(&self) -> bool {
        self.batches_durable >= self.batches_sent
    }

    /// Batches still without a durable ack when the wait ended (their streams
    /// are open).
    pub fn still_awaited(&self) -> u64 {
        self.batches_sent
            .saturating_sub(self.batches_durable)
            .saturating_sub(self.batches_abandoned)
    }

    /// As JSON.
    pub fn json(&self) -> Value {
        json!({
            "all_batches_durable": self.all_durable(),
            "batches_sent": self.batches_sent,
            "batches_durable": self.batches_durable,
            "batches_abandoned": self.batches_abandoned,
            "batches_still_awaited": self.still_awaited(),
            "samples_sent": self.samples_sent,
            "samples_durable": self.samples_durable,
            "samples_abandoned": self.samples_abandoned,
            "waited_seconds": self.waited_seconds,
            "wait_limit_seconds": self.wait_limit_seconds,
            "ack_latency": latency_json(&self.ack_latency),
            "durable_ack_latency": latency_json(&self.durable_latency),
        })
    }

    /// Two lines: the latencies, and the verdict.
    pub fn text(&self) -> String {
        let latency = format!(
            "acknowledgement latency while streaming, p50/p95/p99: first (received) {}, durable {}",
            latency_text_p95(&self.ack_latency),
            latency_text_p95(&self.durable_latency),
        );
        let verdict = if self.all_durable() {
            format!(
                "durable: every batch sent was acknowledged durable ({} batches, {} samples stored of {} sent; waited {:.1} s)",
                self.batches_sent, self.samples_durable, self.samples_sent, self.waited_seconds
            )
        } else {
            format!(
                "durable: NOT every batch sent was acknowledged durable: {} of {} batches missing ({} left by streams that ended, {} samples; {} still unacknowledged after waiting {:.1} s of at most {} s)",
                self.batches_sent.saturating_sub(self.batches_durable),
                self.batches_sent,
                self.batches_abandoned,
                self.samples_abandoned,
                self.still_awaited(),
                self.waited_seconds,
                self.wait_limit_seconds
            )
        };
        format!("{latency}\n{verdict}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::stats::Stats;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn the_verdict_says_whether_every_batch_sent_is_durable() {
        let stats = Stats::default();
        let start = stats.snapshot();
        stats.batches_sent.fetch_add(3, Ordering::Relaxed);
        stats.samples_sent.fetch_add(30, Ordering::Relaxed);
        for _ in 0..3 {
            stats.ack(Duration::from_millis(2), 10);
        }
        stats.durable(Duration::from_millis(800), 10);
        stats.durable(Duration::from_millis(900), 10);
        let d = Durability::new(&stats.snapshot(), &start, 75.0, 75);
        assert!(!d.all_durable());
        assert_eq!(d.still_awaited(), 1);
        assert!(d.text().contains("NOT every batch"), "{}", d.text());
        assert_eq!(d.json()["durable_ack_latency"]["count"], 2);
        assert_eq!(d.json()["ack_latency"]["count"], 3);
        stats.durable(Duration::from_millis(950), 10);
        let d = Durability::new(&stats.snapshot(), &start, 1.5, 75);
        assert!(d.all_durable());
        assert_eq!(d.json()["all_batches_durable"], true);
        assert!(
            d.text()
                .contains("every batch sent was acknowledged durable")
        );
        assert!(d.json()["durable_ack_latency"]["p95_ms"].as_f64().unwrap() >= 800.0);
    }

    #[test]
    fn abandoned_batches_are_not_durable() {
        let stats = Stats::default();
        let start = stats.snapshot();
        stats.batches_sent.fetch_add(2, Ordering::Relaxed);
        stats.durable(Duration::from_millis(5), 10);
        stats.abandoned(1, 10);
        let d = Durability::new(&stats.snapshot(), &start, 0.1, 75);
        assert!(!d.all_durable());
        assert_eq!((d.still_awaited(), d.batches_abandoned), (0, 1));
    }
}
