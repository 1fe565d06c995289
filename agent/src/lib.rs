//! The infrawatch agent: observes a host and streams what it sees to an aggregator.
//!
//! # Layout
//!
//! ```text
//! collectors ──► scheduler ──► batcher (seq) ──► disk buffer (WAL) ──► transport (mTLS gRPC)
//!  collector/    scheduler.rs   batch.rs, seq.rs    buffer/             transport.rs
//! ```
//!
//! - [`config`]: the agent's settings and their validation.
//! - [`collector`]: the `Collector` trait and one module per collector.
//! - [`scheduler`]: one task per collector, with interval and deadline.
//! - [`batch`] and [`seq`]: compact batches with a sequence number that survives restarts.
//! - [`buffer`]: the write-ahead log of batches waiting for a durable acknowledgement.
//! - [`transport`]: the stream to the aggregator with reconnect and fail-over, and
//!   its window of batches in flight (freed by received acknowledgements).

pub mod batch;
pub mod buffer;
pub mod collector;
pub mod config;
pub mod local_metrics;
pub mod scheduler;
pub mod self_health;
pub mod seq;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::tls::TlsError;
use infrawatch_common::tls_reload::ReloadingTls;
use infrawatch_proto::v1::{Hello, HostIdentity as WireHostIdentity};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::BatchBuilder;
use crate::buffer::{BufferError, DiskBuffer};
use crate::collector::{CollectError, Collection, host::HostIdentity};
use crate::config::AgentConfig;
use crate::self_health::SelfHealth;
use crate::seq::{SeqAllocator, SeqError};
use crate::transport::Transport;

/// How long a stopping agent waits for a connected aggregator to acknowledge what
/// it holds as durable (the rest, received or not, stays in the disk buffer and is
/// sent again at the next start).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// TLS material could not be loaded.
    #[error("TLS set-up failed")]
    Tls(#[from] TlsError),
    /// The state directory could not be created.
    #[error("cannot create state directory {path}")]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sequence number could not be read or persisted.
    #[error("sequence number")]
    Seq(#[from] SeqError),
    /// A collector could not start.
    #[error("collector set-up failed")]
    Collector(#[from] CollectError),
    /// The disk buffer could not be opened.
    #[error("disk buffer failed")]
    Buffer(#[from] BufferError),
}

/// Runs the agent until `shutdown` is cancelled, then flushes and waits up to
/// [`SHUTDOWN_GRACE`] for the last acknowledgements.
pub async fn run(
    config: AgentConfig,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let tls = Arc::new(ReloadingTls::load(&config.aggregator.tls)?);
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let mut seq = SeqAllocator::open(&config.state_dir.join("seq"), seq::DEFAULT_BLOCK)?;
    let identity = HostIdentity::read(&config.host)?;
    let host_resource = identity.resource(
        u32::try_from(config.collectors.host.interval_ms).unwrap_or(u32::MAX),
        &config.node_name,
    );
    let mut collectors = collector::build_collectors(&config, &host_resource.id)?;
    let pending = DiskBuffer::open(&config.state_dir.join("buffer"), config.buffer.clone())?;
    let flusher = tokio::spawn(flush_buffer(
        pending.clone(),
        Duration::from_millis(config.buffer.fsync_interval_ms),
        shutdown.clone(),
    ));
    let health = SelfHealth::default();
    if config.collectors.agent.enabled {
        collectors.push(collector::ScheduledCollector {
            collector: Box::new(collector::agent::AgentCollector::new(
                host_resource.id.clone(),
                u32::try_from(config.collectors.agent.interval_ms).unwrap_or(u32::MAX),
                config.name.clone(),
                health.clone(),
                pending.clone(),
            )),
            schedule: config.collectors.agent,
        });
    }
    let name = if config.name.is_empty() {
        identity.hostname.clone()
    } else {
        config.name.clone()
    };
    let hello = Hello {
        agent_name: name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        host: Some(WireHostIdentity {
            machine_id: identity.machine_id.clone(),
            hostname: identity.hostname.clone(),
            os_type: "linux".into(),
            os_version: identity.os_version.clone(),
            kernel_version: identity.kernel_version.clone(),
            arch: identity.arch.clone(),
        }),
        capabilities: collectors
            .iter()
            .map(|c| c.collector.name().to_string())
            .collect(),
        collection_interval_ms: u32::try_from(config.collectors.host.interval_ms)
            .unwrap_or(u32::MAX),
        last_seq: seq.last(),
        // Two-level acknowledgements: see `transport` and `infrawatch_common::ack`.
        features: infrawatch_common::ack::agent_features(),
    };
    tracing::info!(
        agent = %name,
        identity = tls.current().0.own_identity().unwrap_or_default(),
        endpoints = ?config.aggregator.endpoints,
        collectors = ?hello.capabilities,
        "Agent starting."
    );

    if let (Some(handle), false) = (metrics, config.metrics_listen.is_empty()) {
        tokio::spawn(local_metrics::serve(
            config.metrics_listen.clone(),
            handle,
            shutdown.clone(),
        ));
    }
    let (collected_tx, collected_rx) = mpsc::channel::<Collection>(64);
    let mut collector_tasks = JoinSet::new();
    scheduler::spawn_collectors(
        collectors,
        collected_tx,
        health,
        shutdown.clone(),
        &mut collector_tasks,
    );

    let transport_stop = CancellationToken::new();
    let transport = Transport::new(config.aggregator.clone(), tls, hello, pending.clone());
    let connected = transport.connected();
    let finishing = CancellationToken::new();
    let transport_task = tokio::spawn(transport.run(transport_stop.clone(), finishing.clone()));

    // Ends once shutdown has stopped every collector and their last output is queued.
    let builder = BatchBuilder::new(vec![host_resource]);
    let batcher = run_batcher(builder, collected_rx, &mut seq, &pending, &config).await;
    if let Err(e) = &batcher {
        // Without a batcher nothing collected can be kept: stop everything and
        // exit with the error, so the service manager restarts the agent.
        tracing::error!(
            error = e as &dyn std::error::Error,
            "Cannot queue batches; stopping."
        );
        shutdown.cancel();
    }

    // Shutdown: give the transport a moment to deliver what is queued, if it can;
    // whatever is left stays in the disk buffer for the next start.
    while collector_tasks.join_next().await.is_some() {}
    finishing.cancel();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while !pending.is_empty()
        && connected.load(std::sync::atomic::Ordering::Relaxed)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    transport_stop.cancel();
    let _ = transport_task.await;
    let _ = flusher.await;
    // What is still unacknowledged stays on disk for the next start.
    let synced = tokio::task::spawn_blocking({
        let pending = pending.clone();
        move || pending.sync()
    })
    .await;
    if let Ok(Err(e)) = synced {
        tracing::error!(
            error = &e as &dyn std::error::Error,
            "Cannot sync the disk buffer."
        );
    }
    let dropped = pending.dropped();
    tracing::info!(
        unacknowledged_batches = pending.len(),
        dropped_batches = dropped.batches,
        dropped_samples = dropped.samples,
        rejected_batches = dropped.rejected_batches,
        "Agent stopped."
    );
    batcher
}

/// Closes batches and queues them. A batch closes `flush_interval_ms` after
/// its first collection, when it is full, or, sooner, when a collection
/// arrives and the batch has been open at least half a flush interval: with
/// collectors on the flush interval, each arrival then closes the batch of the
/// interval before, and no timer wakes the agent for it. Runs until every
/// collector has stopped (their senders are gone), so nothing they collected
/// before shutdown is lost, then queues the last batch.
async fn run_batcher(
    mut builder: BatchBuilder,
    mut collected: mpsc::Receiver<Collection>,
    seq: &mut SeqAllocator,
    pending: &Arc<DiskBuffer>,
    config: &AgentConfig,
) -> Result<(), AgentError> {
    let flush_every = Duration::from_millis(config.batch.flush_interval_ms);
    let deadline = tokio::time::sleep(flush_every);
    tokio::pin!(deadline);
    // When the open batch got its first collection.
    let mut opened: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut deadline, if opened.is_some() => {
                opened = None;
                if !builder.is_empty() {
                    queue(&mut builder, seq, pending)?;
                }
            }
            c = collected.recv() => {
                let Some(c) = c else {
                    if !builder.is_empty() {
                        queue(&mut builder, seq, pending)?;
                    }
                    return Ok(());
                };
                if opened.is_some_and(|at| at.elapsed() >= flush_every / 2) {
                    opened = None;
                    if !builder.is_empty() {
                        queue(&mut builder, seq, pending)?;
                    }
                }
                builder.add(c);
                if builder.sample_count() >= config.batch.max_samples {
                    opened = None;
                    queue(&mut builder, seq, pending)?;
                } else if opened.is_none() && !builder.is_empty() {
                    let now = tokio::time::Instant::now();
                    opened = Some(now);
                    deadline.as_mut().reset(now + flush_every);
                }
            }
        }
    }
}

fn queue(
    builder: &mut BatchBuilder,
    seq: &mut SeqAllocator,
    pending: &DiskBuffer,
) -> Result<(), AgentError> {
    let batch = builder.finish(seq.next_seq()?);
    let samples = batch.samples.as_ref().map_or(0, |s| s.values.len());
    pending.push(batch);
    tracing::debug!(samples, "Batch queued.");
    Ok(())
}

/// Syncs the disk buffer `every` after appends, until `shutdown` (see
/// [`DiskBuffer::sync_periodic`]); the final sync comes after.
/// It sleeps while nothing is appended, so an idle agent has no timer here.
async fn flush_buffer(buffer: Arc<DiskBuffer>, every: Duration, shutdown: CancellationToken) {
    let mut appended = buffer.subscribe();
    let mut failing = false;
    loop {
        // A failed sync is retried after `every` without waiting for an append.
        if !failing {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = appended.changed() => if changed.is_err() { return },
            }
        }
        // The sync comes `every` after the append: by then an aggregator has
        // usually received the batch, and it needs no `fdatasync`; appends in
        // between share the sync.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !failing && !buffer.sync_due() {
            continue;
        }
        let b = buffer.clone();
        let synced = if failing {
            tokio::task::spawn_blocking(move || b.sync()).await
        } else {
            tokio::task::spawn_blocking(move || b.sync_periodic()).await
        };
        match synced {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) => {
                if !failing {
                    tracing::error!(
                        error = &e as &dyn std::error::Error,
                        "Cannot sync the disk buffer; retrying."
                    );
                }
                failing = true;
            }
            Err(_) => return,
        }
    }
}
