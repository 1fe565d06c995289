//! The infrawatch aggregator: receives agent streams, keeps the model of resources
//! and their health, stores it, and answers queries.
//!
//! # Layout
//!
//! ```text
//! agent stream (sources::agent) ─► decode, budgets
//!   ├─ samples ─► samples::ledger (memory: hot window, open rollups) ─► received Ack
//!   │             samples::flush, every interval: rollups + agent cursors, one transaction ─► durable Ack
//!   └─ resources, health, gaps ─► Report ─► planner (plan, one transaction with the outbox)
//!                                              ├─► state (in memory)
//!                                              └─► events::log ─► publishers, WatchEvents
//! sources::staleness ─► Report ─► planner (the same path)
//! queries: server::query (gRPC) and server::rest (REST) ─► query ─► state, samples, store (rollups)
//! ```
//!
//! - [`auth`]: who a client is (certificate or token) and what its role allows.
//! - [`config`]: settings and validation.
//! - [`cluster`]: replicas on one database: heartbeats, the leader lease, and
//!   the work that runs only on the leader.
//! - [`model`], [`state`]: resources and the shared model.
//! - [`samples`]: the sample path: ledgers, hot window, rollups, flush.
//! - [`sources`]: what reports resources: agents, the staleness check.
//! - [`planner`]: the state path every source feeds: plan, commit, apply.
//! - [`health`]: threshold and staleness rules.
//! - [`events`]: status events: outbox, validation, publishers (NATS, Pulsar),
//!   live streams and durable subscriptions.
//! - [`store`]: PostgreSQL and SQLite through sqlx.
//! - [`query`], [`selector`]: the query operations.
//! - [`kubernetes_usage`]: pods' use against their requests, summed per
//!   namespace, workload or node.
//! - [`server`]: gRPC (mTLS) and REST front ends.
//! - [`cli`]: the `infrawatch` command (queries, `up`, certificates).
//! - [`telemetry`]: the aggregator's own metrics.

pub mod auth;
pub mod availability;
pub mod c_heap;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod events;
pub mod health;
pub mod kubernetes_usage;
pub mod model;
pub mod planner;
pub mod query;
pub mod rules;
pub mod samples;
pub mod selector;
pub mod server;
pub mod sources;
pub mod state;
pub mod store;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use infrawatch_common::tls::TlsError;
use infrawatch_common::tls_reload::ReloadingTls;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::AggregatorConfig;
use crate::events::log::EventLog;
use crate::events::publisher::{Publisher, SinkStatus};
use crate::events::sink::Sink;
use crate::events::sink::nats::NatsSink;
use crate::events::sink::pulsar::PulsarSink;
use crate::events::subscriptions::Subscriptions;
use crate::planner::PlannerHandle;
use crate::planner::writer::{Writer, WriterConfig};
use crate::samples::flush::Flusher;
use crate::server::ServeError;
use crate::sources::agent::budgets::{SeriesBudgets, SeriesLimits};
use crate::sources::agent::decode::Limits;
use crate::sources::agent::stream::{AgentSource, StreamSettings};
use crate::sources::staleness::Staleness;
use crate::state::{State, Tracked};
use crate::store::{LeaseHold, Store, StoreError};

/// Runs `work`, CPU-bound and long (a flush preparing hundreds of thousands of
/// rows), telling a multi-threaded runtime to move the other tasks off this
/// thread meanwhile, so that streams are not held up behind it.
pub fn cpu_bound<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// How long start-up waits for the database before giving up.
pub const DATABASE_WAIT: Duration = Duration::from_secs(30);

/// How long shutdown waits for publishers to send the last events.
pub const PUBLISH_DRAIN: Duration = Duration::from_secs(2);

/// Why the aggregator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// TLS material could not be loaded.
    #[error("TLS set-up failed")]
    Tls(#[from] TlsError),
    /// A configured token hash does not parse (validation reports it first).
    #[error("{0}")]
    Tokens(String),
    /// A rule file does not load (validation reports it first).
    #[error("rules: {0}")]
    Rules(String),
    /// The database could not be opened, migrated or read.
    #[error("storage failed")]
    Store(#[from] StoreError),
    /// A listener failed.
    #[error("server failed")]
    Serve(#[from] ServeError),
}

/// Runs the aggregator until `shutdown` is cancelled, then drains: streams are told
/// to reconnect elsewhere, batches already received are made durable and
/// acknowledged, the leader lease is given up, and the database is closed.
pub async fn run(
    config: AggregatorConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AggregatorError> {
    let tls = Arc::new(ReloadingTls::load(&config.grpc.tls)?);
    tls.current().0.rustls_server_config()?;
    let tokens =
        auth::tokens::TokenSet::new(&config.rest.tokens).map_err(AggregatorError::Tokens)?;
    let store = Store::open(&config.storage)?;
    migrate_when_ready(&store, &shutdown).await?;
    let replica_id = config.cluster.resolved_replica_id();
    let state = Arc::new(State::new(config.ingest.hot_window_ms));
    let rule_set = rules::load(&config.rules, config.ingest.hot_window_ms).map_err(|errors| {
        AggregatorError::Rules(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    metrics::gauge!(telemetry::RULES_LOADED).set(rule_set.len() as f64);
    state.rules.replace(rule_set);
    // The head is read before the state: an event positioned in between is
    // read again by the tail, which reloads its resource if the restored
    // version is older. Read the other way round, a resource another replica
    // changed in between would keep its old version here until it changed
    // again.
    let head = store.event_head().await?;
    restore(&store, &state).await?;
    let event_log = Arc::new(EventLog::new(
        store.clone(),
        head,
        config.events.memory_events,
    ));

    let grpc_listener = server::bind(config.grpc.listen).await?;
    let rest_listener = server::bind(config.rest.listen).await?;
    tracing::info!(
        grpc = %grpc_listener.local_addr().map_err(|source| ServeError::Bind { addr: config.grpc.listen, source })?,
        rest = %rest_listener.local_addr().map_err(|source| ServeError::Bind { addr: config.rest.listen, source })?,
        storage = ?store.backend(),
        replica = %replica_id,
        "Aggregator listening."
    );

    // Cluster: heartbeat and leader lease; leader-only work runs under it.
    let poll = Duration::from_millis(config.cluster.poll_interval_ms);
    let (leader_tx, leader_rx) = watch::channel(None);
    let lease_stop = CancellationToken::new();
    let lease_task = tokio::spawn(cluster::lease::run(
        store.clone(),
        replica_id.clone(),
        Duration::from_millis(config.cluster.lease_ttl_ms),
        leader_tx,
        lease_stop.clone(),
    ));
    let background_stop = CancellationToken::new();
    let mut background = Vec::new();
    background.push(tokio::spawn(events::tail::run(
        store.clone(),
        event_log.clone(),
        state.clone(),
        poll,
        background_stop.clone(),
    )));
    if !config.rules.paths.is_empty() {
        background.push(tokio::spawn(rules::reload::run(
            state.rules.clone(),
            config.rules.clone(),
            config.ingest.hot_window_ms,
            background_stop.clone(),
        )));
    }
    background.push(tokio::spawn(events::retention::forget_tombstones(
        state.clone(),
        config.events.max_retention_ms,
        Duration::from_secs(60),
        background_stop.clone(),
    )));
    let sink_status: Vec<Arc<SinkStatus>> = build_sinks(&config.events)
        .iter()
        .map(|sink| {
            Arc::new(SinkStatus {
                name: sink.name(),
                ..Default::default()
            })
        })
        .collect();
    background.push(tokio::spawn(cluster::leader::while_leader(
        leader_rx.clone(),
        background_stop.clone(),
        "events",
        leader_work(
            config.events.clone(),
            store.clone(),
            state.clone(),
            event_log.clone(),
            sink_status.clone(),
            poll,
        ),
    )));

    let (planner_tx, planner_rx) = mpsc::channel(config.ingest.queue_batches);
    let planner = PlannerHandle::new(planner_tx);
    let writer_stop = CancellationToken::new();
    let writer = Writer::new(
        state.clone(),
        store.clone(),
        WriterConfig {
            health: config.health.clone(),
            group_commit_reports: config.ingest.group_commit_batches,
            max_future_skew_ms: config.ingest.max_future_skew_ms,
        },
        planner_rx,
        event_log.clone(),
    );
    let writer_task = tokio::spawn(writer.run(writer_stop.clone()));
    let flusher_stop = CancellationToken::new();
    let flusher_task = tokio::spawn(
        Flusher::new(
            state.samples.clone(),
            store.clone(),
            Duration::from_millis(config.ingest.flush_interval_ms),
        )
        .run(flusher_stop.clone()),
    );
    let staleness_stop = CancellationToken::new();
    let staleness_task = tokio::spawn(
        Staleness::new(
            state.clone(),
            planner.clone(),
            config.health.stale_after_missed_intervals,
            store.clone(),
            &replica_id,
            leader_rx.clone(),
        )
        .run(staleness_stop.clone()),
    );

    // Kubernetes watches run on the leader only; they stop before the writer.
    let k8s_stop = CancellationToken::new();
    let k8s_task = tokio::spawn(cluster::leader::while_leader(
        leader_rx.clone(),
        k8s_stop.clone(),
        "kubernetes",
        {
            let config = config.kubernetes.clone();
            let state = state.clone();
            let planner = planner.clone();
            let store = store.clone();
            move |_lease, term| {
                sources::k8s::run(
                    config.clone(),
                    state.clone(),
                    planner.clone(),
                    store.clone(),
                    term,
                )
            }
        },
    ));

    let limits = Limits::for_ingest(&config.ingest);
    let servers_stop = CancellationToken::new();
    let event_api = server::events::EventApi::new(
        event_log.clone(),
        Subscriptions::new(store.clone()),
        auth::streams::StreamCaps::new(
            config.events.max_streams_per_client,
            config.events.max_streams,
        ),
        servers_stop.clone(),
    );
    let ingest = AgentSource::new(
        state.clone(),
        store.clone(),
        &replica_id,
        planner,
        config.health.clone(),
        limits,
        Arc::new(SeriesBudgets::new(SeriesLimits::for_ingest(&config.ingest))),
        StreamSettings {
            per_stream_in_flight: config.ingest.per_stream_in_flight,
            max_unflushed: Duration::from_millis(config.ingest.max_unflushed_ms),
            machine_binding: config.grpc.machine_binding,
            footprint: sources::agent::footprint::Footprint::for_ingest(&config.ingest),
            max_gaps_per_hour: config.ingest.max_gaps_per_hour,
        },
        servers_stop.clone(),
    );
    let ingest = if config.kubernetes.clusters.is_empty() {
        ingest
    } else {
        ingest.with_pod_identities(Arc::new(
            sources::k8s::pod_identity::PodIdentities::new(&config.kubernetes).await,
        ))
    };
    let query_api = server::query::QueryApi::new(state.clone(), store.clone());
    let rest_state = server::rest::RestState {
        state: state.clone(),
        store: store.clone(),
        metrics,
        tokens: Arc::new(tokens),
        events: event_api.clone(),
        sinks: Arc::new(sink_status.clone()),
        max_ready_lag_ms: config.events.max_ready_lag_ms,
    };
    let grpc_config = config.grpc.clone();
    let grpc = tokio::spawn({
        let stop = servers_stop.clone();
        async move {
            server::serve_grpc(
                grpc_listener,
                &grpc_config,
                tls,
                ingest,
                query_api,
                event_api,
                stop,
            )
            .await
        }
    });
    let rest = tokio::spawn(server::serve_rest(
        rest_listener,
        rest_state,
        Duration::from_millis(config.rest.header_read_timeout_ms),
        servers_stop.clone(),
    ));

    let mut grpc = grpc;
    let mut rest = rest;
    let early: Option<Result<(), ServeError>> = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut grpc => Some(flatten(r)),
        r = &mut rest => Some(flatten(r)),
    };
    tracing::info!("Draining: closing streams, making what was received durable.");
    servers_stop.cancel();
    let mut result = early.unwrap_or(Ok(()));
    if !grpc.is_finished() {
        result = result.and(flatten(grpc.await));
    }
    if !rest.is_finished() {
        result = result.and(flatten(rest.await));
    }
    staleness_stop.cancel();
    let _ = staleness_task.await;
    k8s_stop.cancel();
    let _ = k8s_task.await;
    writer_stop.cancel();
    let _ = writer_task.await;
    // Streams made their batches durable while they drained where they could;
    // the flusher writes what is left, once more, then stops.
    flusher_stop.cancel();
    let _ = flusher_task.await;
    // Give the sequencer and publishers a moment to send what the last writes
    // emitted; whatever is left stays in the outbox for the next leader.
    let drain_until = tokio::time::Instant::now() + PUBLISH_DRAIN;
    while tokio::time::Instant::now() < drain_until
        && sink_status.iter().any(|s| {
            s.active.load(std::sync::atomic::Ordering::Relaxed)
                && s.lag_events.load(std::sync::atomic::Ordering::Relaxed) > 0
        })
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    background_stop.cancel();
    for task in background {
        let _ = task.await;
    }
    lease_stop.cancel();
    let _ = lease_task.await;
    store.close().await;
    tracing::info!("Aggregator stopped.");
    result.map_err(AggregatorError::from)
}

/// The leader's event work for one term: the sequencer, one publisher per
/// configured sink, and outbox retention.
fn leader_work(
    config: config::EventsConfig,
    store: Store,
    state: Arc<State>,
    log: Arc<EventLog>,
    statuses: Vec<Arc<SinkStatus>>,
    poll: Duration,
) -> impl Fn(
    LeaseHold,
    CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    move |lease, stop| {
        let (config, store, state, log, statuses) = (
            config.clone(),
            store.clone(),
            state.clone(),
            log.clone(),
            statuses.clone(),
        );
        Box::pin(async move {
            let mut tasks = tokio::task::JoinSet::new();
            tasks.spawn(events::sequencer::run(
                store.clone(),
                log.clone(),
                state,
                lease,
                poll,
                stop.clone(),
            ));
            let mut sinks = Vec::new();
            for (sink, status) in build_sinks(&config).into_iter().zip(statuses) {
                let publisher = Publisher::new(sink, log.clone(), store.clone(), status);
                sinks.push(publisher.cursor_name());
                tasks.spawn(publisher.run(stop.clone()));
            }
            let retention = events::retention::Retention {
                min_ms: config.retention_ms,
                max_ms: config.max_retention_ms,
                sinks,
            };
            tasks.spawn(events::retention::run(
                store,
                retention,
                log,
                Duration::from_secs(60),
                stop,
            ));
            while tasks.join_next().await.is_some() {}
        })
    }
}

/// One sink per configured broker.
fn build_sinks(config: &config::EventsConfig) -> Vec<Box<dyn Sink>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(nats) = &config.nats {
        sinks.push(Box::new(NatsSink::new(nats.clone())));
    }
    if let Some(pulsar) = &config.pulsar {
        sinks.push(Box::new(PulsarSink::new(pulsar.clone())));
    }
    sinks
}

fn flatten(r: Result<Result<(), ServeError>, tokio::task::JoinError>) -> Result<(), ServeError> {
    match r {
        Ok(inner) => inner,
        Err(e) => Err(ServeError::Rest(std::io::Error::other(e.to_string()))),
    }
}

/// Applies migrations, retrying while the database is unreachable.
async fn migrate_when_ready(store: &Store, shutdown: &CancellationToken) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + DATABASE_WAIT;
    let mut delay = Duration::from_millis(200);
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && !shutdown.is_cancelled()
                    && is_unreachable(&e) =>
            {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "Database not reachable yet; retrying."
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_unreachable(e: &StoreError) -> bool {
    match e {
        StoreError::Migrate(sqlx::migrate::MigrateError::Execute(inner)) => {
            matches!(inner, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
        }
        other => other.is_retryable(),
    }
}

/// Loads the stored model; every resource counts as just seen, so a restart gives
/// agents their stale-detection grace period before anything turns UNKNOWN.
async fn restore(store: &Store, state: &State) -> Result<(), StoreError> {
    let loaded = store.load().await?;
    let now = now_unix_ms();
    let mut model = state.write();
    let n = loaded.records.len();
    for record in loaded.records {
        model
            .resources
            .insert(record.id.clone(), Tracked::new(record, now));
    }
    model.tombstones.extend(loaded.tombstones);
    tracing::info!(resources = n, "State restored from the database.");
    Ok(())
}
