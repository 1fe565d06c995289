//! Cost of checking and decoding a wire batch in the aggregator.
//! `cargo bench -p infrawatch-aggregator`.

// Benchmark set-up: a failure is a broken benchmark, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infrawatch_aggregator::sources::agent::decode::{Limits, decode};
use infrawatch_proto::v1::{Batch, ResourceObservation, SampleColumns, SeriesDef};

/// A batch of `hosts` hosts × `series` series × `points` samples.
fn batch(hosts: u32, series: u32, points: u32, now: i64) -> Batch {
    let mut b = Batch {
        seq: 1,
        base_time_unix_ms: now,
        strings: vec!["system.cpu.utilization".into(), "cpu".into()],
        ..Default::default()
    };
    for s in 0..series {
        b.strings.push(s.to_string());
    }
    let mut cols = SampleColumns::default();
    for h in 0..hosts {
        b.resources.push(ResourceObservation {
            id: format!("host/bench-{h}"),
            kind: "host".into(),
            interval_ms: 1000,
            ..Default::default()
        });
        for s in 0..series {
            let idx = b.series.len() as u32;
            b.series.push(SeriesDef {
                resource: h,
                metric: 0,
                attributes: vec![1, 2 + s],
            });
            for p in 0..points {
                cols.series.push(idx);
                cols.time_offset_ms.push(i64::from(p) * 1000);
                cols.values.push(0.5);
            }
        }
    }
    b.samples = Some(cols);
    b
}

fn decoding(c: &mut Criterion) {
    let now = infrawatch_common::time::now_unix_ms();
    let b = batch(10, 100, 10, now);
    let n = b.samples.as_ref().map_or(0, |s| s.values.len()) as u64;
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(n));
    group.bench_function(format!("{n} samples"), |bench| {
        bench.iter(|| black_box(decode(b.clone(), now, &Limits::default())))
    });
    group.finish();
}

criterion_group!(benches, decoding);
criterion_main!(benches);
