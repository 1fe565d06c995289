//! The gRPC stream to the aggregator: mTLS, `Hello` then batches in sequence order,
//! acknowledgements back, reconnect with exponential backoff and full jitter, and
//! fail-over across the configured endpoints. An aggregator that shuts down says so
//! (`Drain`) after acknowledging what it read; the agent then moves to the next
//! endpoint at once instead of backing off.
//!
//! Acknowledgements come at two levels (the agent announces
//! [`FEATURE_ACK_RECEIVED`](infrawatch_common::ack::FEATURE_ACK_RECEIVED)): a
//! *received* ack frees slots of the in-flight window (`max_in_flight_batches`
//! counts batches sent and not yet acknowledged at any level), and only a
//! *durable* ack frees batches from the [`DiskBuffer`]; an aggregator that sends
//! only durable acks drives both. [`AckWindow`] keeps these books per stream.
//! Every batch stays in the buffer until durably acknowledged, so a broken stream
//! only means resending from the oldest batch not durably acknowledged on the
//! next one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use infrawatch_common::ack::{self, AckWindow};
use infrawatch_common::tls_reload::ReloadingTls;
use infrawatch_proto::v1::agent_message::Body as AgentBody;
use infrawatch_proto::v1::agent_service_client::AgentServiceClient;
use infrawatch_proto::v1::aggregator_message::Body as AggregatorBody;
use infrawatch_proto::v1::{Ack, AckLevel, AgentMessage, Hello, RefusedSamples};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::buffer::DiskBuffer;
use crate::config::AggregatorConfig;

/// Largest message the agent accepts from the aggregator.
const MAX_INBOUND_MESSAGE_BYTES: usize = 1024 * 1024;

/// Histogram of the time from sending a batch to its acknowledgement, by label
/// `level`: `received` (the batch's first ack of either level, which frees its
/// window slot; with an aggregator that sends only durable acks, the durable
/// one) and `durable` (the ack that frees it from the disk buffer).
pub const ACK_LATENCY_METRIC: &str = "infrawatch_agent_export_ack_latency_seconds";

/// How one stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The endpoint could not be reached or the TLS handshake failed.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The aggregator refused the oldest pending batch as invalid; retrying it
    /// cannot succeed.
    #[error("aggregator rejected a batch")]
    Rejected(#[source] tonic::Status),
    /// The stream failed in a way that a retry may fix.
    #[error("stream failed")]
    Unavailable(#[source] tonic::Status),
    /// The aggregator closed the stream without an error.
    #[error("aggregator closed the stream")]
    Closed,
    /// The aggregator is shutting down and asked the agent to go elsewhere.
    #[error("aggregator is draining: {0}")]
    Drained(String),
}

impl StreamError {
    /// Classifies a status from the aggregator: invalid input is final, anything
    /// else is worth a retry.
    pub fn from_status(status: tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            // PermissionDenied (a resource reported by another agent) can change
            // when that agent goes silent, so it is retried with backoff, not dropped.
            Code::InvalidArgument | Code::OutOfRange => Self::Rejected(status),
            _ => Self::Unavailable(status),
        }
    }
}

/// Reconnect delays: exponential with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, never exceeds `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniform in [0, min(max, initial * 2^attempt)].
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// After a stream that made progress.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Keeps a stream to some aggregator open until `shutdown`, sending every pending batch.
pub struct Transport {
    config: AggregatorConfig,
    tls: Arc<ReloadingTls>,
    hello: Hello,
    pending: Arc<DiskBuffer>,
    connected: Arc<AtomicBool>,
    /// When refused samples were last logged.
    refusals_logged: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Transport {
    /// A transport that announces itself with `hello`.
    pub fn new(
        config: AggregatorConfig,
        tls: Arc<ReloadingTls>,
        hello: Hello,
        pending: Arc<DiskBuffer>,
    ) -> Self {
        Self {
            config,
            tls,
            hello,
            pending,
            connected: Arc::new(AtomicBool::new(false)),
            refusals_logged: std::sync::Mutex::new(None),
        }
    }

    /// True while a stream to an aggregator is open.
    pub fn connected(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Runs until `shutdown` is cancelled. Once `finishing` is cancelled (the
    /// agent is stopping and collects nothing more), a stream that has sent every
    /// pending batch closes its sending side: the aggregator then makes what it
    /// received durable at once and ends the stream, and the transport returns.
    pub async fn run(self, shutdown: CancellationToken, finishing: CancellationToken) {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.backoff_initial_ms),
            Duration::from_millis(self.config.backoff_max_ms),
        );
        let endpoints = self.config.endpoints.clone();
        let mut index = 0usize;
        loop {
            let endpoint = &endpoints[index % endpoints.len()];
            let mut progress = StreamProgress::default();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.stream_once(endpoint, &mut progress, &shutdown, &finishing) => r,
            };
            // What this stream's aggregator received is no longer held there.
            self.pending.stream_ended();
            if shutdown.is_cancelled() {
                return;
            }
            if progress.progressed {
                backoff.reset();
            }
            match result {
                Ok(()) => return,
                Err(StreamError::Drained(reason)) => {
                    metrics::counter!("infrawatch_agent_export_drained_total").increment(1);
                    tracing::info!(
                        endpoint,
                        reason,
                        "Aggregator is shutting down; moving to the next endpoint."
                    );
                    index = index.wrapping_add(1);
                    // A short random pause spreads a drained fleet over the other
                    // replicas and keeps a misbehaving server from causing a hot loop.
                    let pause = Duration::from_millis(rand::rng().random_range(0..=DRAIN_PAUSE_MS));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
                Err(StreamError::Rejected(status)) => {
                    // The aggregator checks batches in order and acknowledged (at
                    // some level) every batch before the one it refused.
                    let seq = self.pending.reject_after(progress.acked);
                    metrics::counter!("infrawatch_agent_export_rejected_batches_total")
                        .increment(1);
                    tracing::error!(endpoint, seq, code = ?status.code(), message = status.message(), "Aggregator rejected a batch; it is dropped.");
                    continue;
                }
                Err(e) => {
                    metrics::counter!("infrawatch_agent_export_errors_total").increment(1);
                    tracing::warn!(
                        endpoint,
                        error = &e as &dyn std::error::Error,
                        "Stream to aggregator ended; reconnecting."
                    );
                }
            }
            index = index.wrapping_add(1);
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn connect(&self, endpoint: &str) -> Result<Channel, StreamError> {
        let err = |source| StreamError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        Endpoint::from_shared(endpoint.to_string())
            .map_err(err)?
            // Read the files again if they changed: rotated certificates are used
            // from the next connection on.
            .tls_config(self.tls.current().0.client_config(&self.config.server_name))
            .map_err(err)?
            .connect_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(err)
    }

    /// One stream: Hello, then every pending batch in order while reading acks.
    async fn stream_once(
        &self,
        endpoint: &str,
        progress: &mut StreamProgress,
        shutdown: &CancellationToken,
        finishing: &CancellationToken,
    ) -> Result<(), StreamError> {
        let channel = self.connect(endpoint).await?;
        let mut client =
            AgentServiceClient::new(channel).max_decoding_message_size(MAX_INBOUND_MESSAGE_BYTES);
        let window = self.config.max_in_flight_batches;
        let (tx, rx) = mpsc::channel::<AgentMessage>(window + 1);
        // Every batch sent on any stream so far has a seq at or below the newest
        // queued one, so that is what the aggregator must compare with.
        let mut hello = self.hello.clone();
        hello.last_seq = hello.last_seq.max(*self.pending.subscribe().borrow());
        let hello = AgentMessage {
            body: Some(AgentBody::Hello(hello)),
        };
        // The channel is empty and has room, so this cannot fail.
        let _ = tx.try_send(hello);
        let mut inbound = client
            .report(ReceiverStream::new(rx))
            .await
            .map_err(StreamError::from_status)?
            .into_inner();
        tracing::info!(endpoint, "Connected to aggregator.");
        self.connected.store(true, Ordering::Relaxed);
        let _connected = ConnectedFlag(self.connected.clone());
        let mut newest = self.pending.subscribe();
        // A new stream starts over at the oldest batch not durably acknowledged:
        // `next_after(0)` is the oldest in the buffer.
        let mut last_sent = 0u64;
        let mut books = AckWindow::new();
        // Dropped to close the sending side when the agent is finishing.
        let mut tx = Some(tx);
        loop {
            while let Some(sender) = tx.as_ref()
                && books.in_flight() < window
            {
                let Some(batch) = self.pending.next_after(last_sent) else {
                    break;
                };
                last_sent = batch.seq;
                let samples = batch.samples.as_ref().map_or(0, |s| s.values.len() as u64);
                let mut wire = (*batch).clone();
                wire.sent_at_unix_ms = infrawatch_common::time::now_unix_ms();
                let msg = AgentMessage {
                    body: Some(AgentBody::Batch(wire)),
                };
                if sender.send(msg).await.is_err() {
                    break;
                }
                books.sent(last_sent, samples, std::time::Instant::now());
            }
            if tx.is_some()
                && finishing.is_cancelled()
                && self.pending.next_after(last_sent).is_none()
            {
                tracing::debug!("Every batch sent; closing the stream's sending side.");
                tx = None;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = finishing.cancelled(), if tx.is_some() => {}
                changed = newest.changed() => if changed.is_err() { return Ok(()) },
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => match m.body {
                        Some(AggregatorBody::Ack(a)) => {
                            self.on_ack(&mut books, &a);
                            progress.acked = books.acked();
                            progress.progressed |= books.acked() > 0;
                        }
                        Some(AggregatorBody::Config(cfg)) => {
                            tracing::info!(interval_ms = cfg.collection_interval_ms, "Aggregator sent configuration; applying it needs a restart in this version.");
                        }
                        Some(AggregatorBody::Drain(drain)) => return Err(StreamError::Drained(drain.reason)),
                        None => {}
                    },
                    Ok(None) if tx.is_none() => return Ok(()),
                    Ok(None) => return Err(StreamError::Closed),
                    Err(status) => return Err(StreamError::from_status(status)),
                },
            }
        }
    }

    /// Applies one ack: window slots, latency, refused samples, and for a
    /// durable ack the disk buffer.
    fn on_ack(&self, books: &mut AckWindow, a: &Ack) {
        let Some(level) = ack::ack_level(a) else {
            tracing::warn!(
                seq = a.seq,
                level = a.level,
                "Ignored an acknowledgement of an unknown level."
            );
            return;
        };
        let outcome = books.on_ack(
            level,
            a.seq,
            refused_total(&a.refused),
            std::time::Instant::now(),
        );
        // Refused samples come with the first ack of a batch, of either level.
        if outcome.first {
            self.note_refused(&a.refused);
        }
        let received = ack::level_name(AckLevel::Received);
        for c in &outcome.received {
            metrics::histogram!(ACK_LATENCY_METRIC, "level" => received)
                .record(c.latency.as_secs_f64());
        }
        metrics::counter!("infrawatch_agent_export_received_batches_total")
            .increment(outcome.received.len() as u64);
        let durable = ack::level_name(AckLevel::Durable);
        for c in &outcome.durable {
            metrics::histogram!(ACK_LATENCY_METRIC, "level" => durable)
                .record(c.latency.as_secs_f64());
        }
        metrics::counter!("infrawatch_agent_export_acked_batches_total")
            .increment(outcome.durable.len() as u64);
        if let Some(seq) = outcome.received.iter().map(|c| c.seq).max() {
            self.pending.received(seq);
        }
        if let Some(seq) = outcome.durable_up_to {
            self.pending.ack(seq);
        }
    }
}

/// Sum of the samples an ack says were refused.
fn refused_total(refused: &[RefusedSamples]) -> u64 {
    refused
        .iter()
        .fold(0u64, |n, r| n.saturating_add(r.samples))
}

/// What one stream achieved, for the caller after it ended.
#[derive(Debug, Default, Clone, Copy)]
struct StreamProgress {
    /// Some batch was acknowledged: the backoff starts over.
    progressed: bool,
    /// Highest seq acknowledged at any level on the stream (0 if none): a batch
    /// the aggregator refuses comes after it.
    acked: u64,
}

impl Transport {
    /// Counts samples the aggregator refused from acknowledged batches, and logs
    /// them at most once per [`REFUSALS_LOG_EVERY`].
    fn note_refused(&self, refused: &[RefusedSamples]) {
        if refused.is_empty() {
            return;
        }
        for r in refused {
            metrics::counter!("infrawatch_agent_samples_refused_total", "reason" => r.reason.clone())
                .increment(r.samples);
        }
        let mut logged = self
            .refusals_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.is_some_and(|at| at.elapsed() < REFUSALS_LOG_EVERY) {
            return;
        }
        *logged = Some(std::time::Instant::now());
        for r in refused {
            tracing::warn!(
                reason = %r.reason,
                samples = r.samples,
                detail = %r.detail,
                "The aggregator stored a batch without some of its samples (counted in infrawatch_agent_samples_refused_total)."
            );
        }
    }
}

/// Refused samples are logged at most this often (and always counted).
const REFUSALS_LOG_EVERY: Duration = Duration::from_secs(60);

/// Longest pause before moving to the next endpoint after a drain, in ms.
const DRAIN_PAUSE_MS: u64 = 250;

/// Clears the connected flag when the stream ends, however it ends.
struct ConnectedFlag(Arc<AtomicBool>);

impl Drop for ConnectedFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..50 {
            assert!(b.next_delay() <= Duration::from_millis(1000));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn invalid_input_is_final_other_errors_retry() {
        assert!(matches!(
            StreamError::from_status(tonic::Status::invalid_argument("x")),
            StreamError::Rejected(_)
        ));
        assert!(matches!(
            StreamError::from_status(tonic::Status::unavailable("x")),
            StreamError::Unavailable(_)
        ));
        assert!(matches!(
            StreamError::from_status(tonic::Status::permission_denied("x")),
            StreamError::Unavailable(_)
        ));
    }
}
