//! The figures the rules of a host's parts read ([`crate::health::parts`]),
//! taken from the samples this replica keeps: a filesystem's free shares and
//! its time to full, an interface's errors and drops per packet.

use infrawatch_common::resource::canonical_attributes;

use crate::health::parts::{FilesystemFigures, InterfaceFigures};
use crate::model::ResourceRecord;
use crate::samples::SampleStore;

/// Figures of filesystem `record` since `window_start`: its free shares, and
/// the time to full its agent fits over the last six hours
/// (`system.filesystem.predicted_full_in`, reported while it fills).
pub fn filesystem_figures(
    samples: &SampleStore,
    record: &ResourceRecord,
    window_start: i64,
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
    let used = with_state("used");
    let whole = canonical_attributes(base);
    let stats = samples.window_stats(
        &record.id,
        &[
            ("system.filesystem.usage", &free),
            ("system.filesystem.limit", &whole),
            ("system.filesystem.inodes.usage", &free),
            ("system.filesystem.inodes.usage", &used),
            ("system.filesystem.predicted_full_in", &whole),
        ],
        window_start,
    );
    let means: Vec<Option<f64>> = stats.iter().map(|s| s.mean()).collect();
    let share = |part: Option<f64>, whole: Option<f64>| match (part, whole) {
        (Some(p), Some(w)) if w > 0.0 => Some((p / w).clamp(0.0, 1.0)),
        _ => None,
    };
    FilesystemFigures {
        space_free: share(means[0], means[1]),
        inodes_free: share(means[2], means[2].zip(means[3]).map(|(f, u)| f + u)),
        full_in_ms: means[4].map(|seconds| seconds * 1000.0),
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
