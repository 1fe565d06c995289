//! The figures the rules of a host's parts read ([`crate::health::parts`]),
//! taken from the samples this replica keeps: a filesystem's free shares and
//! the trend of its free space, an interface's errors and drops per packet.

use infrawatch_common::resource::canonical_attributes;

use crate::config::FilesystemRules;
use crate::health::parts::{FilesystemFigures, InterfaceFigures};
use crate::health::trend::{slope, time_to_zero_ms};
use crate::model::ResourceRecord;
use crate::samples::{SampleStore, SeriesKey};

/// Steps of the free-space trend: one point per step of the samples kept.
const TREND_STEP_MS: i64 = 10_000;

/// Figures of filesystem `record` since `window_start`; the trend over every
/// sample kept, read only when the free share is below the filling-up level.
pub fn filesystem_figures(
    samples: &SampleStore,
    record: &ResourceRecord,
    window_start: i64,
    now_ms: i64,
    rules: &FilesystemRules,
) -> FilesystemFigures {
    let attribute = |key: &str| record.attributes.get(key).map_or("", String::as_str);
    let base = [
        ("device", attribute("filesystem.device")),
        ("mountpoint", attribute("filesystem.mountpoint")),
        ("type", attribute("filesystem.type")),
    ];
    let with_state =
        |state: &'static str| canonical_attributes(base.iter().copied().chain([("state", state)]));
    let free = with_state("free");
    let whole = canonical_attributes(base);
    let inodes_free = with_state("free");
    let inodes_used = with_state("used");
    let stats = samples.window_stats(
        &record.id,
        &[
            ("system.filesystem.usage", &free),
            ("system.filesystem.limit", &whole),
            ("system.filesystem.inodes.usage", &inodes_free),
            ("system.filesystem.inodes.usage", &inodes_used),
        ],
        window_start,
    );
    let means: Vec<Option<f64>> = stats.iter().map(|s| s.mean()).collect();
    let share = |part: Option<f64>, whole: Option<f64>| match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => Some((p / w).clamp(0.0, 1.0)),
        _ => None,
    };
    let space_free = share(means[0], means[1]);
    let inodes_free = share(means[2], means[2].zip(means[3]).map(|(f, u)| f + u));
    let full_in_ms = match (space_free, means[0]) {
        (Some(share), Some(free_bytes)) if share < rules.filling_free_below_degraded => {
            let key = SeriesKey::new(&record.id, "system.filesystem.usage", &free);
            let points: Vec<(f64, f64)> = samples
                .range(&key, samples.retention_start(now_ms), now_ms, TREND_STEP_MS)
                .into_iter()
                .filter_map(|p| Some((p.timestamp_ms as f64, p.stats.mean()?)))
                .collect();
            let span = match (points.first(), points.last()) {
                (Some(a), Some(b)) => b.0 - a.0,
                _ => 0.0,
            };
            if span >= rules.trend_min_span_ms as f64 {
                slope(&points).and_then(|s| time_to_zero_ms(free_bytes, s))
            } else {
                None
            }
        }
        _ => None,
    };
    FilesystemFigures {
        space_free,
        inodes_free,
        full_in_ms,
    }
}

/// Figures of interface `record` since `window_start`.
pub fn interface_figures(
    samples: &SampleStore,
    record: &ResourceRecord,
    window_start: i64,
) -> InterfaceFigures {
    let name = record
        .attributes
        .get("interface.name")
        .map_or("", String::as_str);
    let attrs: Vec<String> = ["receive", "transmit"]
        .into_iter()
        .map(|d| canonical_attributes([("device", name), ("direction", d)]))
        .collect();
    let mut series: Vec<(&str, &str)> = Vec::with_capacity(6);
    for metric in [
        "system.network.packets.rate",
        "system.network.errors.rate",
        "system.network.dropped.rate",
    ] {
        for a in &attrs {
            series.push((metric, a));
        }
    }
    let means: Vec<Option<f64>> = samples
        .window_stats(&record.id, &series, window_start)
        .iter()
        .map(|s| s.mean())
        .collect();
    // Errors and drops per packet; a drop or error counts as a packet too
    // (a link that drops everything still has a ratio).
    let ratio = |bad: Option<f64>, packets: Option<f64>| {
        let bad = bad?;
        let all = packets.unwrap_or(0.0) + bad;
        (all > 0.0).then(|| bad / all)
    };
    InterfaceFigures {
        error_ratio: [ratio(means[2], means[0]), ratio(means[3], means[1])],
        drop_ratio: [ratio(means[4], means[0]), ratio(means[5], means[1])],
    }
}
