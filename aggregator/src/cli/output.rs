//! How the CLI prints: aligned tables for people, JSON (the same shape as the REST
//! API) for scripts.

use std::io::Write;

use infrawatch_common::resource::health_name;
use infrawatch_common::time::now_unix_ms;
use infrawatch_proto::v1 as pb;
use pb::Health;
use serde_json::json;

use super::OutputFormat;
use crate::server::rest::{availability_json, metric_json, resource_json};

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

fn health(r: &pb::Resource) -> &'static str {
    health_name(pb::Health::try_from(r.health).unwrap_or(pb::Health::Unknown))
}

fn age(ms: i64) -> String {
    let secs = (now_unix_ms() - ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Prints rows with columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> std::io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut w = out();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                writeln!(w, "{cell}")?;
            } else {
                write!(w, "{cell:<width$}  ", width = widths[i])?;
            }
        }
    }
    Ok(())
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    writeln!(out(), "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// `infrawatch status`.
pub(super) fn summary(s: &pb::FleetSummary, format: OutputFormat) -> anyhow::Result<()> {
    let mut kinds: Vec<_> = s.by_kind.iter().collect();
    kinds.sort();
    if format == OutputFormat::Json {
        return print_json(&json!({
            "total_resources": s.total_resources,
            "by_kind": s.by_kind,
            "by_health": s.by_health,
            "connected_agents": s.connected_agents,
        }));
    }
    let h = |k: &str| s.by_health.get(k).copied().unwrap_or(0).to_string();
    let mut rows = vec![
        vec!["RESOURCES".into(), s.total_resources.to_string()],
        vec!["CONNECTED AGENTS".into(), s.connected_agents.to_string()],
        vec!["HEALTHY".into(), h("healthy")],
        vec!["DEGRADED".into(), h("degraded")],
        vec!["UNHEALTHY".into(), h("unhealthy")],
        vec!["UNKNOWN".into(), h("unknown")],
    ];
    for (kind, n) in kinds {
        rows.push(vec![format!("KIND {kind}"), n.to_string()]);
    }
    table(&rows)?;
    Ok(())
}

/// `infrawatch resources`.
pub(super) fn resources(list: &[pb::Resource], format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return print_json(&json!(list.iter().map(resource_json).collect::<Vec<_>>()));
    }
    let mut rows = vec![vec![
        "ID".to_string(),
        "KIND".into(),
        "HEALTH".into(),
        "SEEN".into(),
        "VERSION".into(),
        "REASONS".into(),
    ]];
    for r in list {
        let reasons: Vec<&str> = r.reasons.iter().map(|x| x.code.as_str()).collect();
        rows.push(vec![
            r.id.clone(),
            r.kind.clone(),
            health(r).to_uppercase(),
            format!("{} ago", age(r.observed_at_unix_ms)),
            r.resource_version.to_string(),
            reasons.join(","),
        ]);
    }
    table(&rows)?;
    if list.is_empty() {
        writeln!(out(), "(no resources)")?;
    }
    Ok(())
}

/// `infrawatch get`.
pub(super) fn resource(r: &pb::Resource, format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return print_json(&resource_json(r));
    }
    let mut rows = vec![
        vec!["ID".to_string(), r.id.clone()],
        vec!["KIND".into(), r.kind.clone()],
        vec!["HEALTH".into(), health(r).to_uppercase()],
        vec![
            "OBSERVED".into(),
            format!("{} ago", age(r.observed_at_unix_ms)),
        ],
        vec!["VERSION".into(), r.resource_version.to_string()],
        vec!["SOURCE".into(), r.source.clone()],
    ];
    for reason in &r.reasons {
        rows.push(vec![
            "REASON".into(),
            format!("{}: {}", reason.code, reason.message),
        ]);
    }
    let mut sorted: Vec<_> = r.attributes.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        rows.push(vec![k.clone(), v.clone()]);
    }
    table(&rows)?;
    writeln!(out())?;
    if !r.parts.is_empty() {
        let mut parts = vec![vec![
            "PART".to_string(),
            "KIND".into(),
            "HEALTH".into(),
            "REASONS".into(),
        ]];
        for p in &r.parts {
            let health = Health::try_from(p.health).unwrap_or(Health::Unknown);
            let codes: Vec<&str> = p.reasons.iter().map(|x| x.code.as_str()).collect();
            parts.push(vec![
                p.id.clone(),
                p.kind.clone(),
                health_name(health).to_uppercase(),
                codes.join(","),
            ]);
        }
        table(&parts)?;
        writeln!(out())?;
    }
    let mut latest = vec![vec![
        "METRIC".to_string(),
        "ATTRIBUTES".into(),
        "VALUE".into(),
    ]];
    for l in &r.latest {
        latest.push(vec![
            l.metric.clone(),
            l.attributes.clone(),
            format_value(&l.metric, l.value),
        ]);
    }
    table(&latest)?;
    Ok(())
}

fn format_value(metric: &str, v: f64) -> String {
    if metric.ends_with(".utilization") {
        format!("{:.1}%", v * 100.0)
    } else if metric.contains("memory") || metric.contains("paging") {
        format!("{:.1} MiB", v / 1024.0 / 1024.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `infrawatch metrics`.
pub(super) fn availability(a: &pb::Availability, format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return print_json(&availability_json(a));
    }
    let existing = a.healthy_ms + a.degraded_ms + a.unhealthy_ms + a.unknown_ms;
    let share = |ms: i64| {
        if existing > 0 {
            format!("{:.3}%", ms as f64 * 100.0 / existing as f64)
        } else {
            "-".to_string()
        }
    };
    let hours = |ms: i64| format!("{:.2} h", ms as f64 / 3_600_000.0);
    let mut rows = vec![vec!["HEALTH".to_string(), "TIME".into(), "SHARE".into()]];
    for (name, ms) in [
        ("HEALTHY", a.healthy_ms),
        ("DEGRADED", a.degraded_ms),
        ("UNHEALTHY", a.unhealthy_ms),
        ("UNKNOWN", a.unknown_ms),
    ] {
        rows.push(vec![name.to_string(), hours(ms), share(ms)]);
    }
    writeln!(
        out(),
        "{} over {:.1} days: {} healthy{}",
        a.resource_id,
        (a.to_unix_ms - a.from_unix_ms) as f64 / 86_400_000.0,
        share(a.healthy_ms),
        if a.complete {
            ""
        } else {
            " (history too long: its oldest part only)"
        }
    )?;
    table(&rows)?;
    Ok(())
}

pub(super) fn metric(r: &pb::QueryMetricResponse, format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return print_json(&metric_json(r));
    }
    let mut rows = vec![vec![
        "AGE".to_string(),
        "AVG".into(),
        "MIN".into(),
        "MAX".into(),
        "SAMPLES".into(),
    ]];
    for p in &r.points {
        rows.push(vec![
            age(p.timestamp_unix_ms),
            format_value(&r.metric, p.avg),
            format_value(&r.metric, p.min),
            format_value(&r.metric, p.max),
            p.count.to_string(),
        ]);
    }
    table(&rows)?;
    if r.points.is_empty() {
        writeln!(out(), "(no samples in range; source: {})", r.source)?;
    }
    Ok(())
}
