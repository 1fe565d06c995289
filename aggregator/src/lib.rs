//! The infrawatch aggregator: receives agent streams, keeps the model of resources
//! and their health, stores it, and answers queries.
//!
//! # Layout
//!
//! ```text
//! agent stream ─► server::ingest ─► ingest::decode ─► ingest::writer ─► store (one transaction)
//!                                                         │                 then
//!                                                         └──────────► state (in memory) ─► Ack
//! queries: server::query (gRPC) and server::rest (REST) ─► query ─► state, store (rollups)
//! ```
//!
//! - [`config`]: settings and validation.
//! - [`model`], [`series`], [`state`]: resources, recent samples and the shared model.
//! - [`health`]: threshold and staleness rules.
//! - [`ingest`]: batch checks and the single writer (group commit, effectively-once).
//! - [`store`]: PostgreSQL and SQLite through sqlx.
//! - [`query`], [`selector`]: the query operations.
//! - [`server`]: gRPC (mTLS) and REST front ends.
//! - [`cli`]: the `infrawatch` command (queries, `up`, certificates).
//! - [`telemetry`]: the aggregator's own metrics.

pub mod cli;
pub mod config;
pub mod health;
pub mod ingest;
pub mod model;
pub mod query;
pub mod selector;
pub mod series;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use infrawatch_common::tls::{TlsError, TlsMaterial};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AggregatorConfig;
use crate::ingest::decode::Limits;
use crate::ingest::writer::{Writer, WriterConfig};
use crate::server::ServeError;
use crate::state::{State, Tracked};
use crate::store::{Store, StoreError};

/// How long start-up waits for the database before giving up.
pub const DATABASE_WAIT: Duration = Duration::from_secs(30);

/// Why the aggregator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// TLS material could not be loaded.
    #[error("TLS set-up failed")]
    Tls(#[from] TlsError),
    /// The database could not be opened, migrated or read.
    #[error("storage failed")]
    Store(#[from] StoreError),
    /// A listener failed.
    #[error("server failed")]
    Serve(#[from] ServeError),
}

/// Runs the aggregator until `shutdown` is cancelled, then drains: streams are told
/// to reconnect elsewhere, batches already received are written and acknowledged,
/// and the database is closed.
pub async fn run(
    config: AggregatorConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AggregatorError> {
    let tls = TlsMaterial::load(&config.grpc.tls)?;
    let store = Store::open(&config.storage)?;
    migrate_when_ready(&store, &shutdown).await?;
    let state = Arc::new(State::new(config.ingest.hot_window_ms));
    restore(&store, &state).await?;

    let grpc_listener = server::bind(config.grpc.listen).await?;
    let rest_listener = server::bind(config.rest.listen).await?;
    tracing::info!(
        grpc = %grpc_listener.local_addr().map_err(|source| ServeError::Bind { addr: config.grpc.listen, source })?,
        rest = %rest_listener.local_addr().map_err(|source| ServeError::Bind { addr: config.rest.listen, source })?,
        storage = ?store.backend(),
        "Aggregator listening."
    );

    let (writer_tx, writer_rx) = mpsc::channel(config.ingest.queue_batches);
    let writer_stop = CancellationToken::new();
    let writer = Writer::new(
        state.clone(),
        store.clone(),
        WriterConfig {
            health: config.health.clone(),
            group_commit_batches: config.ingest.group_commit_batches,
            sweep_interval: Duration::from_secs(1),
        },
        writer_rx,
    );
    let writer_task = tokio::spawn(writer.run(writer_stop.clone()));

    let limits = Limits::for_ingest(&config.ingest);
    let servers_stop = CancellationToken::new();
    let ingest = server::ingest::IngestService::new(
        state.clone(),
        writer_tx,
        limits,
        config.ingest.per_stream_in_flight,
        servers_stop.clone(),
    );
    let query_api = server::query::QueryApi::new(state.clone(), store.clone());
    let rest_state = server::rest::RestState {
        state: state.clone(),
        store: store.clone(),
        metrics,
        tokens: Arc::new(config.rest.tokens.clone()),
    };
    let grpc_config = config.grpc.clone();
    let grpc = tokio::spawn({
        let stop = servers_stop.clone();
        async move {
            server::serve_grpc(grpc_listener, &grpc_config, &tls, ingest, query_api, stop).await
        }
    });
    let rest = tokio::spawn(server::serve_rest(
        rest_listener,
        rest_state,
        servers_stop.clone(),
    ));

    let mut grpc = grpc;
    let mut rest = rest;
    let early: Option<Result<(), ServeError>> = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut grpc => Some(flatten(r)),
        r = &mut rest => Some(flatten(r)),
    };
    tracing::info!("Draining: closing streams, writing what was received.");
    servers_stop.cancel();
    let mut result = early.unwrap_or(Ok(()));
    if !grpc.is_finished() {
        result = result.and(flatten(grpc.await));
    }
    if !rest.is_finished() {
        result = result.and(flatten(rest.await));
    }
    writer_stop.cancel();
    let _ = writer_task.await;
    store.close().await;
    tracing::info!("Aggregator stopped.");
    result.map_err(AggregatorError::from)
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
    let n = loaded.resources.len();
    for record in loaded.resources {
        model.resources.insert(
            record.id.clone(),
            Tracked {
                record,
                last_seen_ms: now,
            },
        );
    }
    model.cursors.extend(loaded.cursors);
    tracing::info!(
        resources = n,
        agents = model.cursors.len(),
        "State restored from the database."
    );
    Ok(())
}
