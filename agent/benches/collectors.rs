//! Cost of one collection per collector on this machine, and of turning a second's
//! worth of samples into an encoded batch. `cargo bench -p infrawatch-agent`.

// Benchmark set-up: a failure is a broken benchmark, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use infrawatch_agent::batch::BatchBuilder;
use infrawatch_agent::collector::filter::NameFilter;
use infrawatch_agent::collector::{
    Collection, Collector, disk, filesystem, host, network, pressure,
};
use infrawatch_agent::config::HostPaths;
use prost::Message;

fn collectors(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let paths = HostPaths::default();
    let id = || "host/bench".to_string();
    let excl = |list: &[&str]| {
        NameFilter::new(&[], &list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    let mut all: Vec<Box<dyn Collector>> = vec![
        Box::new(host::HostCollector::new(&paths, 1000, "").unwrap()),
        Box::new(disk::DiskCollector::new(
            id(),
            paths.proc.clone(),
            paths.sys.clone(),
            excl(&disk::DEFAULT_EXCLUDE),
            1000,
        )),
        Box::new(filesystem::FilesystemCollector::new(
            id(),
            paths.proc.clone(),
            paths.root.clone(),
            excl(&filesystem::DEFAULT_EXCLUDE),
            1000,
        )),
        Box::new(network::NetworkCollector::new(
            id(),
            paths.proc.clone(),
            paths.sys.clone(),
            excl(&network::DEFAULT_EXCLUDE),
            1000,
        )),
        Box::new(pressure::PressureCollector::new(id(), paths.proc.clone())),
    ];
    let mut one_second = Collection::default();
    for collector in &mut all {
        let name = collector.name();
        c.bench_function(&format!("collect/{name}"), |b| {
            b.iter(|| {
                let mut out = Collection::default();
                let _ = rt.block_on(collector.collect(&mut out));
                black_box(out)
            })
        });
        let _ = rt.block_on(collector.collect(&mut one_second));
    }
    let samples = one_second.samples.len();
    c.bench_function(&format!("batch/build+encode {samples} samples"), |b| {
        b.iter(|| {
            let mut builder = BatchBuilder::default();
            builder.add(one_second.clone());
            black_box(builder.finish(1).encode_to_vec())
        })
    });
    let mut builder = BatchBuilder::default();
    builder.add(one_second.clone());
    let bytes = builder.finish(1).encoded_len();
    eprintln!(
        "one second of this host: {samples} samples, {bytes} bytes encoded, {:.1} bytes/sample",
        bytes as f64 / samples as f64
    );
}

criterion_group!(benches, collectors);
criterion_main!(benches);
