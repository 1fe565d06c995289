//! The hot sample path alone, in samples per second per core: a realistic agent
//! batch (one host and five other resources, 120 series of the agent's kinds)
//! checked, budgeted and applied to the agent's ledger in memory, with the
//! state check that finds nothing changed (the common case). No database: what
//! the flush costs is measured by the system benchmark.
//! `cargo bench -p infrawatch-aggregator --bench sample_path`.

// Benchmark set-up: a failure is a broken benchmark, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infrawatch_aggregator::config::{HealthConfig, IngestConfig};
use infrawatch_aggregator::planner::plan::{Context, Plan, check_owner};
use infrawatch_aggregator::samples::ledger::{Begun, Cursor};
use infrawatch_aggregator::sources::agent::budgets::{SeriesBudgets, SeriesLimits};
use infrawatch_aggregator::sources::agent::decode::{Limits, decode};
use infrawatch_aggregator::sources::{Change, Report};
use infrawatch_aggregator::state::State;
use infrawatch_proto::v1::{Batch, ResourceObservation, SampleColumns, SeriesDef};

/// One series of an agent: (resource index, metric, attribute pairs).
type SeriesSpec = (u32, &'static str, Vec<(&'static str, String)>);

/// Series of one agent.
fn agent_series() -> Vec<SeriesSpec> {
    let mut s = Vec::new();
    for cpu in 0..8 {
        for state in ["user", "system", "idle", "iowait", "steal"] {
            s.push((
                0,
                "system.cpu.utilization",
                vec![("cpu", cpu.to_string()), ("state", state.to_string())],
            ));
        }
    }
    for m in [
        "system.memory.usage",
        "system.memory.utilization",
        "system.paging.usage",
        "system.uptime",
        "system.cpu.load_average.1m",
    ] {
        s.push((0, m, vec![]));
    }
    for dev in ["sda", "sdb", "nvme0n1"] {
        for (m, dir) in [
            ("system.disk.io", "read"),
            ("system.disk.io", "write"),
            ("system.disk.operations", "read"),
            ("system.disk.operations", "write"),
        ] {
            s.push((
                0,
                m,
                vec![("device", dev.to_string()), ("direction", dir.to_string())],
            ));
        }
    }
    for mount in ["/", "/var", "/home", "/boot"] {
        for state in ["used", "free"] {
            s.push((
                0,
                "system.filesystem.usage",
                vec![
                    ("mountpoint", mount.to_string()),
                    ("state", state.to_string()),
                ],
            ));
        }
    }
    for nic in ["eth0", "eth1"] {
        for (m, dir) in [
            ("system.network.io", "receive"),
            ("system.network.io", "transmit"),
            ("system.network.packets", "receive"),
            ("system.network.packets", "transmit"),
        ] {
            s.push((
                0,
                m,
                vec![("device", nic.to_string()), ("direction", dir.to_string())],
            ));
        }
    }
    for r in 1..6 {
        for m in [
            "probe.duration",
            "probe.success",
            "probe.rtt.avg",
            "probe.rtt.max",
        ] {
            s.push((r, m, vec![]));
        }
    }
    while s.len() < 120 {
        let i = s.len();
        s.push((
            0,
            "system.linux.pressure",
            vec![("resource", format!("r{i}")), ("window", "10s".into())],
        ));
    }
    s
}

/// One batch of the agent: `points` samples per series.
fn agent_batch(seq: u64, base_ms: i64, points: u32) -> Batch {
    let mut b = Batch {
        seq,
        base_time_unix_ms: base_ms,
        ..Default::default()
    };
    b.resources.push(ResourceObservation {
        id: "host/0123456789abcdef0123456789abcdef".into(),
        kind: "host".into(),
        interval_ms: 1000,
        attributes: [("host.name".to_string(), "bench".to_string())].into(),
        ..Default::default()
    });
    for r in 1..6 {
        b.resources.push(ResourceObservation {
            id: format!("probe/0123456789abcdef0123456789abcdef/tcp/10.0.0.{r}:443"),
            kind: "tcp_probe".into(),
            interval_ms: 1000,
            attributes: [("tcp.result".to_string(), "ok".to_string())].into(),
            ..Default::default()
        });
    }
    let mut strings: Vec<String> = Vec::new();
    let mut intern = |s: &str| -> u32 {
        match strings.iter().position(|x| x == s) {
            Some(i) => i as u32,
            None => {
                strings.push(s.to_string());
                (strings.len() - 1) as u32
            }
        }
    };
    let mut cols = SampleColumns::default();
    for (idx, (resource, metric, attrs)) in agent_series().into_iter().enumerate() {
        let metric = intern(metric);
        let mut pairs = Vec::new();
        for (k, v) in &attrs {
            pairs.push(intern(k));
            pairs.push(intern(v));
        }
        b.series.push(SeriesDef {
            resource,
            metric,
            attributes: pairs,
        });
        for p in 0..points {
            cols.series.push(idx as u32);
            cols.time_offset_ms.push(i64::from(p) * 1000);
            cols.values.push(0.25 + f64::from(p) * 0.001);
        }
    }
    b.strings = strings;
    b.samples = Some(cols);
    b
}

fn hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("sample_path");
    for points in [1u32, 10] {
        let state = State::new(15 * 60 * 1000);
        let budgets = SeriesBudgets::new(SeriesLimits::for_ingest(&IngestConfig::default()));
        let health = HealthConfig::default();
        // The built-in rule files, as a running aggregator judges hosts.
        let rules = infrawatch_aggregator::rules::load(&Default::default(), 900_000)
            .expect("the built-in rules load");
        let limits = Limits::default();
        let ledger = state
            .samples
            .open_ledger("agent-bench/m", Cursor::default(), 0, 1);
        let now0 = infrawatch_common::time::now_unix_ms();
        // The resources exist already (a running agent), so the state check finds
        // nothing to change, as for almost every batch.
        {
            let decoded = decode(agent_batch(1, now0, 1), now0, &limits).unwrap();
            let report = Report {
                source: "agent-bench".into(),
                changes: decoded
                    .resources
                    .iter()
                    .cloned()
                    .map(Change::Observed)
                    .collect(),
                position: None,
            };
            let model = state.read();
            let ctx = Context {
                model: &model,
                samples: &state.samples,
                health: &health,
                rules: &rules,
                now_ms: now0,
            };
            let mut plan = Plan::default();
            plan.add(&ctx, &report).unwrap();
            let (commit, applied) =
                plan.into_commit(infrawatch_aggregator::events::validate::Bounds {
                    now_ms: now0,
                    max_future_skew_ms: 600_000,
                });
            drop(model);
            drop(commit);
            infrawatch_aggregator::planner::apply::apply(&state, applied, now0);
        }
        let template = agent_batch(0, now0, points);
        let samples = template.samples.as_ref().map_or(0, |s| s.values.len()) as u64;
        let mut seq = 1u64;
        group.throughput(Throughput::Elements(samples));
        group.bench_function(
            format!("batch of {samples} samples ({points} per series)"),
            |bench| {
                bench.iter(|| {
                    seq += 1;
                    let now = infrawatch_common::time::now_unix_ms();
                    let mut wire = template.clone();
                    wire.seq = seq;
                    wire.base_time_unix_ms = now - i64::from(points) * 1000;
                    let mut decoded = decode(wire, now, &limits).unwrap();
                    let refused = budgets.admit("agent-bench/m", &mut decoded, now);
                    let report = Report {
                        source: "agent-bench".into(),
                        changes: decoded
                            .resources
                            .iter()
                            .cloned()
                            .map(Change::Observed)
                            .collect(),
                        position: None,
                    };
                    check_owner(&state.read(), &report).unwrap();
                    let (begun, new) = ledger.begin(
                        decoded.seq,
                        &decoded.series,
                        state.samples.retention_start(now),
                    );
                    state.samples.index(&ledger, new);
                    assert!(matches!(begun, Begun::Applied { .. }));
                    let model = state.read();
                    let ctx = Context {
                        model: &model,
                        samples: &state.samples,
                        health: &health,
                        rules: &rules,
                        now_ms: now,
                    };
                    let mut plan = Plan::default();
                    plan.add(&ctx, &report).unwrap();
                    black_box((plan.is_empty(), refused));
                    drop(model);
                    ledger.finish(decoded.seq, true);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
