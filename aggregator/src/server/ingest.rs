//! `AgentService.Report`: one bidirectional stream per agent.
//!
//! The agent's identity comes from its client certificate. Each stream has a reader
//! that checks batches and queues them for the writer, and a forwarder that sends
//! the acknowledgements back strictly in batch order, so an `Ack(seq)` always means
//! that batch and every one before it on this stream is durable. When a batch is
//! rejected, the acknowledgements of the batches before it are still delivered, then
//! the stream ends with the error. Samples the aggregator drops from an accepted
//! batch (not finite, implausible time, over the agent's series budget) are named
//! in that batch's acknowledgement. When the aggregator shuts down, a stream stops
//! reading, acknowledges what it already read, and ends with a `Drain` message
//! telling the agent to connect elsewhere at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use infrawatch_common::time::now_unix_ms;
use infrawatch_common::tls::identity_from_der;
use infrawatch_proto::v1::agent_message::Body as AgentBody;
use infrawatch_proto::v1::agent_service_server::AgentService;
use infrawatch_proto::v1::aggregator_message::Body as AggregatorBody;
use infrawatch_proto::v1::{Ack, AgentMessage, AggregatorMessage, Drain, Hello, RefusedSamples};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::ingest::IngestError;
use crate::ingest::cardinality::{Refusals, SeriesBudgets};
use crate::ingest::decode::{DecodedBatch, Limits, decode};
use crate::ingest::writer::{Work, WriteRequest};
use crate::state::State;
use crate::telemetry;

/// Time an agent has to send `Hello` after opening the stream.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent stream service.
#[derive(Clone)]
pub struct IngestService {
    state: Arc<State>,
    writer: mpsc::Sender<WriteRequest>,
    limits: Limits,
    budgets: Arc<SeriesBudgets>,
    per_stream_in_flight: usize,
    shutdown: CancellationToken,
}

impl IngestService {
    /// A service feeding `writer`; streams end when `shutdown` is cancelled.
    pub fn new(
        state: Arc<State>,
        writer: mpsc::Sender<WriteRequest>,
        limits: Limits,
        budgets: Arc<SeriesBudgets>,
        per_stream_in_flight: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            state,
            writer,
            limits,
            budgets,
            per_stream_in_flight: per_stream_in_flight.max(1),
            shutdown,
        }
    }
}

/// The identity in the client certificate of `request`.
pub fn peer_identity<T>(request: &Request<T>) -> Result<String, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    identity_from_der(leaf.as_ref())
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
}

/// An entry of the per-stream acknowledgement queue.
enum Pending {
    /// A batch handed to the writer.
    Written {
        reply: oneshot::Receiver<Result<Ack, IngestError>>,
        received: Instant,
        /// Samples left out of the batch, reported in its acknowledgement.
        refused: Vec<RefusedSamples>,
    },
    /// The stream ends here with this status.
    Fail(Status),
    /// The aggregator is shutting down: the stream ends here, cleanly, with a
    /// `Drain` message.
    Drain,
}

type Outbound = mpsc::Sender<Result<AggregatorMessage, Status>>;

#[tonic::async_trait]
impl AgentService for IngestService {
    type ReportStream = ReceiverStream<Result<AggregatorMessage, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let identity = peer_identity(&request)?;
        let remote = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.per_stream_in_flight + 2);
        let this = self.clone();
        tokio::spawn(async move {
            let _connected = this.state.agent_connected();
            tracing::info!(agent = %identity, ?remote, "Agent stream opened.");
            let reason = this.serve_stream(&identity, inbound, tx).await;
            tracing::info!(agent = %identity, ?remote, reason, "Agent stream closed.");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl IngestService {
    /// Reads the stream until it ends; returns why it ended, for the log.
    async fn serve_stream(
        &self,
        identity: &str,
        mut inbound: Streaming<AgentMessage>,
        tx: Outbound,
    ) -> &'static str {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                body: Some(AgentBody::Hello(h)),
            }))) => h,
            Ok(Ok(None)) => return "closed before hello",
            Ok(Err(status)) => {
                let _ = tx.send(Err(status)).await;
                return "error before hello";
            }
            Ok(Ok(Some(_))) => {
                let _ = tx
                    .send(Err(Status::invalid_argument(
                        "the first message must be Hello",
                    )))
                    .await;
                return "no hello";
            }
            Err(_) => {
                let _ = tx
                    .send(Err(Status::deadline_exceeded("no Hello within 10 seconds")))
                    .await;
                return "hello timeout";
            }
        };
        log_hello(identity, &hello);
        let cursor_key = match cursor_key(identity, &hello) {
            Ok(k) => k,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return "bad hello";
            }
        };
        if let Err(e) = self.announce(identity, &cursor_key, hello.last_seq).await {
            let _ = tx.send(Err(e.into())).await;
            return "hello not recorded";
        }
        self.state.agent_stream(
            &cursor_key,
            identity,
            &hello.agent_name,
            &hello.agent_version,
            true,
        );

        let (order_tx, order_rx) = mpsc::channel::<Pending>(self.per_stream_in_flight);
        let forwarder = tokio::spawn(forward_acks(order_rx, tx));
        let reason = loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    let _ = order_tx.send(Pending::Drain).await;
                    break "aggregator shutting down";
                }
                m = inbound.message() => m,
            };
            match message {
                Ok(Some(AgentMessage {
                    body: Some(AgentBody::Batch(batch)),
                })) => {
                    let received = Instant::now();
                    let now = now_unix_ms();
                    if let Some(skew) =
                        self.state
                            .agent_batch(&cursor_key, batch.seq, batch.sent_at_unix_ms, now)
                    {
                        tracing::warn!(
                            agent = %cursor_key,
                            skew_ms = skew,
                            "Agent clock skew changed past {} s (ordering follows sequence numbers; sample times are the agent's).",
                            crate::state::CLOCK_SKEW_WARNING_MS / 1000
                        );
                    }
                    let mut decoded = match decode(batch, now, &self.limits) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(agent = identity, error = %e, "Rejected a batch.");
                            metrics::counter!(telemetry::BATCHES, "result" => "rejected")
                                .increment(1);
                            let _ = order_tx
                                .send(Pending::Fail(Status::invalid_argument(e.to_string())))
                                .await;
                            break "invalid batch";
                        }
                    };
                    let over_budget = self.budgets.admit(&cursor_key, &mut decoded, now);
                    let refused = refusals(&decoded, &over_budget, &self.limits);
                    for r in &refused {
                        metrics::counter!(telemetry::SAMPLES_DROPPED, "reason" => r.reason.clone())
                            .increment(r.samples);
                    }
                    if over_budget != Refusals::default() {
                        tracing::debug!(agent = %cursor_key, ?over_budget, "Refused samples of new series over the agent's budget.");
                    }
                    let (reply_tx, reply_rx) = oneshot::channel();
                    let request = WriteRequest {
                        agent: identity.to_string(),
                        cursor_key: cursor_key.clone(),
                        work: Work::Batch(decoded),
                        reply: reply_tx,
                        unapplied: Some(self.state.batch_received(now)),
                    };
                    // Waits while the writer is busy: backpressure reaches the agent.
                    if self.writer.send(request).await.is_err() {
                        let _ = order_tx
                            .send(Pending::Fail(IngestError::ShuttingDown.into()))
                            .await;
                        break "writer stopped";
                    }
                    if order_tx
                        .send(Pending::Written {
                            reply: reply_rx,
                            received,
                            refused,
                        })
                        .await
                        .is_err()
                    {
                        break "agent went away";
                    }
                }
                Ok(Some(AgentMessage {
                    body: Some(AgentBody::Hello(_)),
                })) => {
                    let _ = order_tx
                        .send(Pending::Fail(Status::invalid_argument(
                            "Hello may only be sent once per stream",
                        )))
                        .await;
                    break "second hello";
                }
                Ok(Some(AgentMessage { body: None })) => {
                    let _ = order_tx
                        .send(Pending::Fail(Status::invalid_argument("empty message")))
                        .await;
                    break "empty message";
                }
                Ok(None) => break "agent closed the stream",
                Err(status) => {
                    tracing::warn!(agent = identity, code = ?status.code(), message = status.message(), "Agent stream failed.");
                    let _ = order_tx.send(Pending::Fail(status)).await;
                    break "transport error";
                }
            }
        };
        drop(order_tx);
        let _ = forwarder.await;
        self.state
            .agent_stream(&cursor_key, identity, "", "", false);
        reason
    }
}

impl IngestService {
    /// Tells the writer a stream opened: it resets the cursor of an agent whose
    /// sequence restarted and lifts holds left by failed writes.
    async fn announce(
        &self,
        identity: &str,
        cursor_key: &str,
        last_seq: u64,
    ) -> Result<(), IngestError> {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            agent: identity.to_string(),
            cursor_key: cursor_key.to_string(),
            work: Work::Hello { last_seq },
            reply,
            unapplied: None,
        };
        self.writer
            .send(request)
            .await
            .map_err(|_| IngestError::ShuttingDown)?;
        answer
            .await
            .map_err(|_| IngestError::ShuttingDown)?
            .map(|_| ())
    }
}

/// The key of an agent's sequence: its certificate identity and the machine id it
/// announces, so that agents sharing one certificate keep separate sequences.
fn cursor_key(identity: &str, hello: &Hello) -> Result<String, Status> {
    let machine_id = hello
        .host
        .as_ref()
        .map(|h| h.machine_id.as_str())
        .unwrap_or_default();
    if machine_id.is_empty() {
        return Ok(identity.to_string());
    }
    let valid = machine_id.len() <= 128
        && machine_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(Status::invalid_argument(format!(
            "hello: machine id {machine_id:?} must be at most 128 letters, digits, '-' or '_'"
        )));
    }
    Ok(format!("{identity}/{machine_id}"))
}

fn log_hello(identity: &str, hello: &Hello) {
    let host = hello.host.clone().unwrap_or_default();
    tracing::info!(
        agent = identity,
        name = %hello.agent_name,
        version = %hello.agent_version,
        machine_id = %host.machine_id,
        hostname = %host.hostname,
        last_seq = hello.last_seq,
        interval_ms = hello.collection_interval_ms,
        "Agent said hello."
    );
}

/// What an accepted batch lost, by reason, for its acknowledgement.
fn refusals(batch: &DecodedBatch, budget: &Refusals, limits: &Limits) -> Vec<RefusedSamples> {
    let mut out = Vec::new();
    let mut add = |reason: &str, samples: usize, detail: String| {
        if samples > 0 {
            out.push(RefusedSamples {
                reason: reason.to_string(),
                samples: samples as u64,
                detail,
            });
        }
    };
    add(
        "non_finite",
        batch.dropped_non_finite,
        "values that are NaN or infinite".into(),
    );
    add(
        "timestamp_out_of_range",
        batch.dropped_out_of_range,
        format!(
            "sample times more than {} s ahead of the aggregator's clock or older than {} s (ingest.max_future_skew_ms, ingest.max_sample_age_ms)",
            limits.max_future_skew_ms / 1000,
            limits.max_sample_age_ms / 1000
        ),
    );
    add(
        "active_series_limit",
        budget.samples_over_active,
        format!(
            "{} new series over this agent's limit of active series (ingest.max_active_series_per_agent)",
            budget.series_over_active
        ),
    );
    add(
        "new_series_rate",
        budget.samples_over_rate,
        format!(
            "{} new series over this agent's allowance of new series per minute (ingest.max_new_series_per_minute)",
            budget.series_over_rate
        ),
    );
    out
}

/// Sends acknowledgements in batch order; stops at the first failure.
async fn forward_acks(mut order: mpsc::Receiver<Pending>, tx: Outbound) {
    while let Some(pending) = order.recv().await {
        match pending {
            Pending::Written {
                reply,
                received,
                refused,
            } => {
                let result = match reply.await {
                    Ok(r) => r,
                    Err(_) => Err(IngestError::ShuttingDown),
                };
                match result {
                    Ok(mut ack) => {
                        ack.refused = refused;
                        metrics::histogram!(telemetry::INGEST_TO_ACK)
                            .record(received.elapsed().as_secs_f64());
                        let msg = AggregatorMessage {
                            body: Some(AggregatorBody::Ack(ack)),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            Pending::Fail(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
            Pending::Drain => {
                let msg = AggregatorMessage {
                    body: Some(AggregatorBody::Drain(Drain {
                        reason: "aggregator shutting down; every batch read on this stream was acknowledged, connect to another replica".into(),
                    })),
                };
                let _ = tx.send(Ok(msg)).await;
                return;
            }
        }
    }
}
