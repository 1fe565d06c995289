//! The load generator behind `infrawatch-loadgen`: many simulated agents, each
//! with its own client certificate and mTLS connection, streaming realistic
//! batches to one or more aggregators, and the figures that tell how the
//! aggregator copes.
//!
//! # Layout
//!
//! ```text
//! config   command line and its checks
//! certs    one client certificate per agent, cached in a directory
//! profile  the resources and series of one agent; batches encoded to wire bytes
//! agent    one agent: connect, Hello, a batch per interval, acks timed at
//!          both levels (received, durable)
//! changes  injected health changes and the observers that time them
//! stats    shared counters and latency histograms; snapshots and intervals
//! aggregator  the aggregator seen from outside: /proc and /metrics
//! report   stage results and the summary (text or JSON)
//! ```
//!
//! A run: issue missing certificates, connect every agent at a bounded rate
//! (Hello and one batch describing its resources, so the aggregator's memory per
//! connected agent can be read and no stage measures resource creation), then
//! stream through the stages (one interval each, measured after a settling
//! time), stopping after the first that fails, stop sending and wait (bounded by
//! --durable-wait-s) for the durable acknowledgements still due, and print the
//! summary, which says whether every batch sent was acknowledged durable.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod aggregator;
pub mod certs;
pub mod changes;
pub mod config;
pub mod histogram;
pub mod http;
pub mod profile;
pub mod report;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use self::agent::{AgentSpec, Fleet};
use self::changes::{AgentControl, ObserverSettings};
use self::config::Args;
use self::profile::AgentModel;
use self::report::{AggregatorView, Durability, StageResult, Summary, progress_line};
use self::stats::Stats;

/// Identities of every agent of `args`, and of the event watcher.
pub fn identities(args: &Args) -> Vec<String> {
    (0..args.agents)
        .map(|i| certs::identity(&args.identity_prefix, i))
        .chain([certs::watcher_identity(&args.identity_prefix)])
        .collect()
}

/// Raises this process's open-file limit to its hard limit (one socket per
/// agent); returns the new soft limit.
pub fn raise_open_files() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    Ok(hard)
}

/// The aggregator figures now: `/proc` of `pid`, and `/metrics` of every REST
/// address summed.
async fn aggregator_view(args: &Args) -> AggregatorView {
    let proc = args.aggregator_pid.and_then(aggregator::proc_figures);
    let mut metrics: Option<aggregator::Metrics> = None;
    for rest in &args.rest {
        if let Some(m) = aggregator::scrape(*rest).await {
            let merged = metrics.get_or_insert_with(Default::default);
            for (k, v) in m {
                *merged.entry(k).or_default() += v;
            }
        }
    }
    AggregatorView { proc, metrics }
}

fn own_cpu_seconds() -> Option<f64> {
    aggregator::proc_figures(std::process::id()).map(|p| p.cpu_seconds)
}

/// Sleeps `total`, printing a progress line every `every`.
async fn measure(stats: &Stats, label: &str, total: Duration, every: Duration) {
    let end = Instant::now() + total;
    let mut last = stats.snapshot();
    while Instant::now() < end {
        let step = every.min(end.saturating_duration_since(Instant::now()));
        tokio::time::sleep(step).await;
        let now = stats.snapshot();
        let secs = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        eprintln!("{}", progress_line(label, &now.since(&last), secs));
        last = now;
    }
}

/// Waits up to `limit` until every batch sent is acknowledged durable or was left
/// by a stream that ended (nothing more can come for it), printing progress every
/// `every`; returns the seconds waited.
async fn wait_durable(stats: &Stats, limit: Duration, every: Duration) -> f64 {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let awaiting = stats.snapshot().awaiting_durable();
        if awaiting == 0 || started.elapsed() >= limit {
            return started.elapsed().as_secs_f64();
        }
        if last_print.elapsed() >= every {
            eprintln!(
                "waiting for durable acknowledgements: {awaiting} batches after {:.0} s (at most {} s)",
                started.elapsed().as_secs_f64(),
                limit.as_secs()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks one connected agent after another for a change, every `every`.
async fn inject(controls: Vec<Arc<AgentControl>>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let n = controls.len();
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for _ in 0..n {
            let c = &controls[next % n];
            next = next.wrapping_add(1);
            if c.connected.load(Ordering::Relaxed) && c.request() {
                break;
            }
        }
    }
}

/// Runs the load described by `args` and returns its summary.
pub async fn run(args: Args) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let ids = identities(&args);
    let dir = args.pki_dir.clone();
    let issued = tokio::task::spawn_blocking({
        let ids = ids.clone();
        move || certs::ensure(&dir, &ids)
    })
    .await??;
    eprintln!(
        "certificates: {issued} issued, {} reused, in {:.1} s ({})",
        ids.len() - issued,
        started.elapsed().as_secs_f64(),
        args.pki_dir.display()
    );
    let ca_pem = certs::ca(&args.pki_dir)?;
    let dir = args.pki_dir.clone();
    let pems = tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|id| certs::load(&dir, id))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;

    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let (go, streaming) = watch::channel(false);
    let stages = args.stages();
    let (interval_tx, interval_rx) =
        watch::channel(stages.first().copied().unwrap_or(args.interval_ms));
    // Resources announce the longest interval, so no stage makes them stale and
    // changing the interval changes no resource.
    let announced = stages.iter().copied().max().unwrap_or(args.interval_ms);
    let announced = u32::try_from(announced).unwrap_or(u32::MAX);

    let tracker = if args.change_every_ms > 0 {
        let watcher = certs::watcher_identity(&args.identity_prefix);
        let pem = pems
            .iter()
            .zip(identities(&args))
            .find(|(_, id)| *id == watcher)
            .map(|(p, _)| p.clone())
            .context("the watcher's certificate")?;
        let settings = ObserverSettings {
            grpc: if args.no_grpc_watch {
                Vec::new()
            } else {
                args.endpoints.clone()
            },
            tls: ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca_pem))
                .identity(Identity::from_pem(&pem.cert, &pem.key))
                .domain_name(args.server_name.clone()),
            nats: args.nats_url.as_ref().map(|u| {
                (
                    u.clone(),
                    args.nats_stream.clone(),
                    format!("{}.tcp_probe", args.nats_subject_prefix),
                )
            }),
            rest: args.rest.clone(),
        };
        let t = changes::start(settings, stats.clone(), &stop);
        t.is_active().then_some(t)
    } else {
        None
    };

    let fleet = Arc::new(Fleet {
        stats: stats.clone(),
        tracker,
        interval_ms: interval_rx,
        streaming,
        stop: stop.clone(),
        connect_permits: Semaphore::new(args.connect_concurrency),
        ca_pem,
        server_name: args.server_name.clone(),
        max_in_flight: args.max_in_flight,
        ack_timeout: Duration::from_secs(args.ack_timeout_s),
    });

    let idle = aggregator_view(&args).await;
    let t0 = tokio::time::Instant::now();
    let mut controls = Vec::with_capacity(args.agents);
    let mut tasks = Vec::with_capacity(args.agents);
    for (index, pem) in pems.into_iter().take(args.agents).enumerate() {
        let control = Arc::new(AgentControl::default());
        controls.push(control.clone());
        let e = index % args.endpoints.len().max(1);
        let endpoint = args.endpoints.get(e).cloned().unwrap_or_default();
        let identity = certs::identity(&args.identity_prefix, index);
        let spec = AgentSpec {
            index,
            model: AgentModel::new(index, &identity, args.series, announced),
            pem,
            endpoint: (e, endpoint),
            start_at: t0 + Duration::from_secs_f64(index as f64 / args.connect_rate as f64),
            control,
        };
        tasks.push(tokio::spawn(agent::run(spec, fleet.clone())));
    }

    // Connect every agent: Hello, and its first batch acknowledged (the resources
    // it reports exist before anything is measured).
    let connect_started = Instant::now();
    let deadline = connect_started + Duration::from_secs(args.connect_timeout_s);
    let mut last_print = Instant::now();
    loop {
        let connected = stats.connected.load(Ordering::Relaxed);
        let described = stats.batches_acked.load(Ordering::Relaxed);
        if (connected >= args.agents as u64 && described >= args.agents as u64)
            || Instant::now() >= deadline
        {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(args.report_s) {
            let s = stats.snapshot();
            eprintln!(
                "connecting: {connected}/{} connected, {described} first batches acknowledged after {:.0} s, errors {:?}",
                args.agents,
                connect_started.elapsed().as_secs_f64(),
                s.errors
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let connected_snapshot = stats.snapshot();
    eprintln!(
        "connected {}/{} agents (first batch acknowledged) in {connect_seconds:.1} s",
        connected_snapshot.connected, args.agents
    );
    // Let the aggregator settle before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected_view = aggregator_view(&args).await;

    // Stream.
    let _ = go.send(true);
    let stream_start = stats.snapshot();
    let own_cpu_start = own_cpu_seconds();
    let stream_started = Instant::now();
    if fleet.tracker.is_some() {
        tokio::spawn(inject(
            controls.clone(),
            Duration::from_millis(args.change_every_ms),
            stop.clone(),
        ));
    }
    let mut results = Vec::new();
    let report_every = Duration::from_secs(args.report_s);
    for (n, interval_ms) in stages.iter().copied().enumerate() {
        interval_tx.send_if_modified(|v| std::mem::replace(v, interval_ms) != interval_ms);
        let label = format!("stage {} ({interval_ms} ms)", n + 1);
        measure(
            &stats,
            &format!("{label} settling"),
            Duration::from_secs(args.settle_s),
            report_every,
        )
        .await;
        let before_view = aggregator_view(&args).await;
        let before = stats.snapshot();
        measure(
            &stats,
            &label,
            Duration::from_secs(args.stage_seconds()),
            report_every,
        )
        .await;
        let after = stats.snapshot();
        let after_view = aggregator_view(&args).await;
        let result = StageResult {
            interval_ms,
            seconds: after.at.duration_since(before.at).as_secs_f64(),
            series: args.series,
            interval: after.since(&before),
            before: before_view,
            after: after_view,
            max_ack_p99_ms: args.max_ack_p99_ms as f64,
        };
        let failure = result.failure();
        eprintln!(
            "{label}: {:.0} of {:.0} samples/s acknowledged, ack p50/p99/p99.9 {}, durable p50/p95/p99 {}: {}",
            result.acked(),
            result.offered(),
            report::latency_text(&result.interval.ack_latency),
            report::latency_text_p95(&result.interval.durable_latency),
            failure.clone().unwrap_or_else(|| "passed".into())
        );
        results.push(result);
        if failure.is_some() && !args.no_stop_on_failure {
            break;
        }
    }
    let total = stats.snapshot().since(&stream_start);
    let loadgen_cores = own_cpu_start
        .zip(own_cpu_seconds())
        .map(|(a, b)| (b - a) / stream_started.elapsed().as_secs_f64());
    // Stop sending, and give the aggregator time to commit what it received.
    let _ = go.send(false);
    let waited = wait_durable(
        &stats,
        Duration::from_secs(args.durable_wait_s),
        report_every,
    )
    .await;
    let durability = Durability::new(
        &stats.snapshot(),
        &stream_start,
        waited,
        args.durable_wait_s,
    );
    eprintln!("{}", durability.text());
    let end_view = aggregator_view(&args).await;
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    Ok(Summary {
        settings: json!({
            "agents": args.agents,
            "endpoints": args.endpoints,
            "series_per_agent": args.series,
            "stage_intervals_ms": stages,
            "stage_seconds": args.stage_seconds(),
            "settle_seconds": args.settle_s,
            "change_every_ms": args.change_every_ms,
            "max_in_flight": args.max_in_flight,
            "durable_wait_seconds": args.durable_wait_s,
            "workers": args.workers,
        }),
        connect_seconds,
        connected: connected_snapshot.connected,
        connect_errors: connected_snapshot.errors,
        aggregator_idle: idle.proc,
        aggregator_connected: connected_view.proc,
        aggregator_end: end_view.proc,
        stages: results,
        total: Some(total),
        durability: Some(durability),
        loadgen_cores,
    })
}
