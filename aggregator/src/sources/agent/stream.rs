//! `AgentService.Report`: one bidirectional stream per agent.
//!
//! The agent's identity comes from its client certificate. After `Hello` the
//! stream opens (or takes over) the agent's ledger at the cursor stored in the
//! database, then reads batches one at a time: each is checked, its samples go to
//! the ledger, and its state changes (if the planner finds any) are committed
//! before the next is read. A second task sends the acknowledgements:
//!
//! - to agents that announce `ack.received`: a *received* ack per batch, in batch
//!   order, as soon as the batch is applied, and a cumulative *durable* ack when a
//!   flush made the agent's batches durable;
//! - to other agents: one ack per batch, sent only once it is durable (the
//!   promise such agents expect of every ack).
//!
//! When a batch is rejected, the acknowledgements of the batches before it are
//! still delivered, then the stream ends with the error. Samples the aggregator
//! drops from an accepted batch (not finite, implausible time, over the agent's
//! series budget) are named in that batch's first acknowledgement. When the
//! aggregator shuts down, a stream stops reading, waits (briefly) for a flush to
//! make what it applied durable, acknowledges, and ends with a `Drain` message
//! telling the agent to connect elsewhere at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use infrawatch_common::ack::FEATURE_ACK_RECEIVED;
use infrawatch_common::resource::{agent_may_report, kind};
use infrawatch_common::time::now_unix_ms;
use infrawatch_proto::v1::agent_message::Body as AgentBody;
use infrawatch_proto::v1::agent_service_server::AgentService;
use infrawatch_proto::v1::aggregator_message::Body as AggregatorBody;
use infrawatch_proto::v1::{
    Ack, AckLevel, AgentMessage, AggregatorMessage, Drain, Hello, RefusedSamples,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::budgets::{Refusals, SeriesBudgets};
use super::decode::{DecodedBatch, Limits, decode};
use super::footprint::Footprint;
use super::gap_budget::GapBudget;
use crate::auth::{Refusal, refused};
use crate::config::{HealthConfig, MachineBinding};
use crate::planner::plan::{Context, Plan, check_owner};
use crate::planner::{PlannerHandle, StateError};
use crate::samples::ledger::{Begun, Ledger};
use crate::sources::k8s::pod_identity::{PodIdentities, PodIdentityError};
use crate::sources::{Change, Position, Report};
use crate::state::State;
use crate::store::{Binding, GapRow, Store};
use crate::telemetry;

/// Time an agent has to send `Hello` after opening the stream.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a draining stream waits for a flush to make its batches durable
/// before it tells the agent to go (what is not durable then, the agent sends
/// again elsewhere).
pub const DRAIN_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// What the agent streams need.
#[derive(Clone)]
pub struct AgentSource {
    state: Arc<State>,
    store: Store,
    /// This replica, as it owns agent sessions in the database.
    replica_id: Arc<str>,
    planner: PlannerHandle,
    health: Arc<HealthConfig>,
    limits: Limits,
    budgets: Arc<SeriesBudgets>,
    gap_budget: Arc<GapBudget>,
    settings: StreamSettings,
    /// Verifies agents whose certificates name a Kubernetes pod.
    pod_identities: Option<Arc<PodIdentities>>,
    shutdown: CancellationToken,
}

/// Tuning of the agent streams.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Batches of one stream applied and not yet acknowledged, at most.
    pub per_stream_in_flight: usize,
    /// A stream stops reading while its agent's samples have waited this long
    /// for a flush (the database is down or slow).
    pub max_unflushed: Duration,
    /// How certificate identities are tied to machines.
    pub machine_binding: MachineBinding,
    /// Resources and relations one agent may have.
    pub footprint: Footprint,
    /// Data gaps one agent identity may have stored per hour.
    pub max_gaps_per_hour: usize,
}

impl AgentSource {
    /// The agent streams of an aggregator; they end when `shutdown` is cancelled.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: Arc<State>,
        store: Store,
        replica_id: &str,
        planner: PlannerHandle,
        health: HealthConfig,
        limits: Limits,
        budgets: Arc<SeriesBudgets>,
        settings: StreamSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            state,
            store,
            replica_id: Arc::from(replica_id),
            planner,
            health: Arc::new(health),
            limits,
            budgets,
            gap_budget: Arc::new(GapBudget::new(settings.max_gaps_per_hour)),
            settings: StreamSettings {
                per_stream_in_flight: settings.per_stream_in_flight.max(1),
                ..settings
            },
            pod_identities: None,
            shutdown,
        }
    }

    /// Verifies agents whose certificate identity names a Kubernetes pod
    /// (`k8s/<cluster>/<namespace>/<pod>`) against that cluster's API.
    pub fn with_pod_identities(mut self, pods: Arc<PodIdentities>) -> Self {
        self.pod_identities = Some(pods);
        self
    }
}

/// An entry of the per-stream acknowledgement queue, in batch order.
enum Pending {
    /// A batch applied (or recognised as a replay).
    Received {
        seq: u64,
        duplicate: bool,
        received: Instant,
        /// Samples left out of the batch, reported in its first acknowledgement.
        refused: Vec<RefusedSamples>,
    },
    /// The stream ends here with this status.
    Fail(Status),
    /// The stream ends here, cleanly, once what was applied is durable (or the
    /// wait is over): with a `Drain` message when the aggregator is shutting
    /// down (`drain`), without when the agent closed its side (it is stopping).
    Finish { drain: bool },
}

type Outbound = mpsc::Sender<Result<AggregatorMessage, Status>>;

#[tonic::async_trait]
impl AgentService for AgentSource {
    type ReportStream = ReceiverStream<Result<AggregatorMessage, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        // The role gate in front of the service read the certificate.
        let identity = crate::auth::grpc::caller(&request)?.name.clone();
        let remote = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.settings.per_stream_in_flight + 2);
        let this = self.clone();
        let span = tracing::info_span!("agent_stream", agent = %identity, remote = ?remote);
        tokio::spawn(
            async move {
                let _connected = this.state.agent_connected();
                tracing::info!("Agent stream opened.");
                let reason = this.serve_stream(&identity, inbound, tx).await;
                tracing::info!(reason, "Agent stream closed.");
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A stream after `Hello`: who it is and where it writes.
struct Session {
    identity: String,
    key: String,
    /// The session's epoch: its state changes are written only while it holds.
    epoch: u64,
    ledger: Arc<Ledger>,
    /// Cancelled when another stream of the same agent takes over.
    superseded: CancellationToken,
    /// The last batch covered by a data gap this agent reported: a gap at or
    /// below it was reported before and is neither stored nor published again.
    gaps_through: AtomicU64,
}

impl AgentSource {
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
        let key = match cursor_key(identity, &hello) {
            Ok(k) => k,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return "bad hello";
            }
        };
        // Boxed, like the session below: once per stream.
        if let Err(status) = Box::pin(self.bind_machine(identity, machine_of_key(&key))).await {
            let _ = tx.send(Err(status)).await;
            return "machine refused";
        }
        // Boxed: it runs once per stream, and inline its state would make every
        // stream's task larger for the stream's whole life.
        let session = match Box::pin(self.open_session(identity, &key, hello.last_seq)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "Agent session not opened (its cursor is in the database); the agent will try again."
                );
                let _ = tx.send(Err(e.into())).await;
                return "session not opened";
            }
        };
        let two_level = hello.features.iter().any(|f| f == FEATURE_ACK_RECEIVED);
        self.state.agent_stream(
            &key,
            identity,
            &hello.agent_name,
            &hello.agent_version,
            true,
        );

        let (order_tx, order_rx) = mpsc::channel::<Pending>(self.settings.per_stream_in_flight);
        let forwarder = tokio::spawn(forward_acks(
            order_rx,
            session.ledger.subscribe_durable(),
            two_level,
            tx,
        ));
        let reason = self.read_batches(&session, &mut inbound, &order_tx).await;
        drop(order_tx);
        let _ = forwarder.await;
        self.state.agent_stream(&key, identity, "", "", false);
        reason
    }

    /// Pins `identity` to `machine_id` on its first stream, and refuses a
    /// stream for another machine than the pinned one, or for a machine
    /// another identity speaks for.
    async fn bind_machine(&self, identity: &str, machine_id: &str) -> Result<(), Status> {
        let pod_agent = PodIdentities::applies(identity);
        if pod_agent {
            let checked = match &self.pod_identities {
                Some(pods) => pods.check(identity, machine_id).await,
                None => Err(PodIdentityError::Refused(format!(
                    "certificate {identity} names a Kubernetes pod, and no cluster is configured to verify it (kubernetes.clusters)"
                ))),
            };
            match checked {
                Ok(()) => {}
                Err(PodIdentityError::Refused(message)) => {
                    refused(Refusal::Scope, identity, &message);
                    return Err(Status::permission_denied(message));
                }
                Err(PodIdentityError::Unavailable(message)) => {
                    tracing::warn!(%identity, %message, "Agent pod not verified; the agent will try again.");
                    return Err(Status::unavailable(message));
                }
            }
        }
        // A verified pod speaks for its node; pods come and go with new
        // names, so the machine is not pinned to one of them.
        let exclusive = self.settings.machine_binding == MachineBinding::Exclusive && !pod_agent;
        let binding = self
            .store
            .bind_machine(identity, machine_id, exclusive)
            .await
            .map_err(|e| {
                tracing::warn!(
                    error = %e,
                    "Agent session not opened (its machine binding is in the database); the agent will try again."
                );
                Status::unavailable(format!("machine binding: {e}"))
            })?;
        let message = match binding {
            Binding::Bound => return Ok(()),
            Binding::IdentityElsewhere { machine_id: bound } => format!(
                "certificate {identity} speaks for machine {bound}, not {machine_id}; one certificate reports for one machine (an admin releases the binding: DELETE /api/v1/agents/{identity}/machine)"
            ),
            Binding::MachineTaken { identity: other } => format!(
                "machine {machine_id} is reported by certificate {other}; another certificate may not speak for it (an admin releases the binding: DELETE /api/v1/agents/{other}/machine)"
            ),
        };
        refused(Refusal::Scope, identity, &message);
        Err(Status::permission_denied(message))
    }

    /// Opens (or takes over) the agent's ledger at its stored cursor. An agent
    /// whose sequence restarted below what was applied (it lost its state
    /// directory) gets its cursor set back, or its new batches would be taken for
    /// replays and dropped.
    async fn open_session(
        &self,
        identity: &str,
        key: &str,
        last_seq: u64,
    ) -> Result<Session, StateError> {
        let unavailable = |e: crate::store::StoreError| StateError::Unavailable(e.to_string());
        let samples = &self.state.samples;
        // No flush may store a cursor of this agent from before the new epoch
        // while the session opens (see `SampleStore::flush_gate`).
        let _gate = samples.flush_gate().await;
        let opened = self
            .store
            .open_session(key, &self.replica_id)
            .await
            .map_err(unavailable)?;
        let ledger = samples.open_ledger(key, opened.cursor, opened.previous_epoch, opened.epoch);
        let superseded = ledger.take_over();
        let mut gaps_through = opened.gaps_through;
        let (applied, _, _) = ledger.positions();
        if last_seq < applied {
            tracing::warn!(
                agent = %key,
                agent_last_seq = last_seq,
                applied_seq = applied,
                "Agent sequence restarted below the applied one (state directory lost?); accepting its new batches."
            );
            self.store
                .reset_cursor(key, last_seq, opened.epoch)
                .await
                .map_err(unavailable)?;
            ledger.reset(last_seq);
            // Its gaps start over with its sequence.
            gaps_through = 0;
        }
        Ok(Session {
            identity: identity.to_string(),
            key: key.to_string(),
            epoch: opened.epoch,
            ledger,
            superseded,
            gaps_through: AtomicU64::new(gaps_through),
        })
    }

    /// Reads and applies batches until the stream ends; returns why.
    async fn read_batches(
        &self,
        session: &Session,
        inbound: &mut Streaming<AgentMessage>,
        order: &mpsc::Sender<Pending>,
    ) -> &'static str {
        loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    self.state.samples.request_flush();
                    let _ = order.send(Pending::Finish { drain: true }).await;
                    return "aggregator shutting down";
                }
                _ = session.superseded.cancelled() => {
                    let _ = order.send(Pending::Fail(Status::aborted(
                        "another stream of this agent took over",
                    ))).await;
                    return "superseded";
                }
                m = inbound.message() => m,
            };
            let batch = match message {
                Ok(Some(AgentMessage {
                    body: Some(AgentBody::Batch(batch)),
                })) => batch,
                Ok(Some(AgentMessage {
                    body: Some(AgentBody::Hello(_)),
                })) => {
                    let _ = order
                        .send(Pending::Fail(Status::invalid_argument(
                            "Hello may only be sent once per stream",
                        )))
                        .await;
                    return "second hello";
                }
                Ok(Some(AgentMessage { body: None })) => {
                    let _ = order
                        .send(Pending::Fail(Status::invalid_argument("empty message")))
                        .await;
                    return "empty message";
                }
                Ok(None) => {
                    // A stopping agent closes its side once everything is sent,
                    // and waits for it to become durable.
                    self.state.samples.request_flush();
                    let _ = order.send(Pending::Finish { drain: false }).await;
                    return "agent closed the stream";
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "Agent stream failed.");
                    let _ = order.send(Pending::Fail(status)).await;
                    return "transport error";
                }
            };
            let received = Instant::now();
            let now = now_unix_ms();
            if let Some(skew) =
                self.state
                    .agent_batch(&session.key, batch.seq, batch.sent_at_unix_ms, now)
            {
                tracing::warn!(
                    skew_ms = skew,
                    "Agent clock skew changed past {} s (ordering follows sequence numbers; sample times are the agent's).",
                    crate::state::CLOCK_SKEW_WARNING_MS / 1000
                );
            }
            let mut decoded = match decode(batch, now, &self.limits) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "Rejected a batch.");
                    metrics::counter!(telemetry::BATCHES, "result" => "rejected").increment(1);
                    let _ = order
                        .send(Pending::Fail(Status::invalid_argument(e.to_string())))
                        .await;
                    return "invalid batch";
                }
            };
            let over_budget = self.budgets.admit(&session.key, &mut decoded, now);
            let refused = refusals(&decoded, &over_budget, &self.limits);
            for r in &refused {
                metrics::counter!(telemetry::SAMPLES_DROPPED, "reason" => r.reason.clone())
                    .increment(r.samples);
            }
            if over_budget != Refusals::default() {
                tracing::debug!(
                    ?over_budget,
                    "Refused samples of new series over the agent's budget."
                );
            }
            if !self.wait_for_flush(session).await {
                self.state.samples.request_flush();
                let _ = order.send(Pending::Finish { drain: true }).await;
                return "aggregator shutting down";
            }
            let seq = decoded.seq;
            let applied = {
                let _unapplied = self.state.batch_received(now);
                // Boxed: the apply future (the database commit of state
                // changes among it) lives only while a batch is applied, and
                // inline it would size every idle stream's task for it.
                Box::pin(self.apply(session, decoded, now)).await
            };
            let duplicate = match applied {
                Ok(duplicate) => duplicate,
                Err(e) => {
                    let label = match e {
                        StateError::Invalid(_) | StateError::Forbidden(_) => "rejected",
                        StateError::Fenced(_) => "fenced",
                        _ => "failed",
                    };
                    metrics::counter!(telemetry::BATCHES, "result" => label).increment(1);
                    tracing::warn!(seq, error = %e, "Batch not applied.");
                    let _ = order.send(Pending::Fail(e.into())).await;
                    return "batch not applied";
                }
            };
            let label = if duplicate { "duplicate" } else { "applied" };
            metrics::counter!(telemetry::BATCHES, "result" => label).increment(1);
            let pending = Pending::Received {
                seq,
                duplicate,
                received,
                refused,
            };
            if order.send(pending).await.is_err() {
                return "agent went away";
            }
        }
    }

    /// Waits while the agent's samples have waited too long for a flush (the
    /// database is down): reading on would only grow memory, and the agent keeps
    /// the batches meanwhile. False when the aggregator shuts down meanwhile.
    async fn wait_for_flush(&self, session: &Session) -> bool {
        if session.ledger.since_flush() <= self.settings.max_unflushed {
            return true;
        }
        metrics::counter!(telemetry::FLUSH_WAITS).increment(1);
        tracing::warn!(
            waited = ?session.ledger.since_flush(),
            "Samples wait for the database; reading from this agent pauses."
        );
        while session.ledger.since_flush() > self.settings.max_unflushed {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = session.superseded.cancelled() => return true,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        true
    }

    /// Applies one checked batch: samples to the ledger, state changes through
    /// the planner. `Ok(true)` for a replay.
    async fn apply(
        &self,
        session: &Session,
        batch: DecodedBatch,
        now: i64,
    ) -> Result<bool, StateError> {
        let seq = batch.seq;
        let samples = &self.state.samples;
        let sample_count = batch.sample_count;
        // Nothing of a batch the agent may not send is applied.
        check_scope(session, &batch)?;
        if let Err(message) = self.settings.footprint.check(
            &self.state.read(),
            machine_of_key(&session.key),
            &batch.resources,
        ) {
            refused(Refusal::Budget, &session.identity, &message);
            return Err(StateError::Invalid(message));
        }
        let mut batch = batch;
        let gaps_through = drop_repeated_gaps(session, &mut batch);
        let granted = self
            .gap_budget
            .take(&session.identity, batch.gaps.len(), now);
        if granted < batch.gaps.len() {
            let over = batch.gaps.len() - granted;
            batch.gaps.truncate(granted);
            refused(
                Refusal::Budget,
                &session.identity,
                &format!(
                    "{over} data gaps left out: the most one agent may report per hour is {} (ingest.max_gaps_per_hour)",
                    self.settings.max_gaps_per_hour
                ),
            );
        }
        let report = report_of(session, &batch, now);
        check_owner(&self.state.read(), &report)?;
        let (begun, new_resources) =
            session
                .ledger
                .begin(seq, &batch.series, samples.retention_start(now));
        samples.index(&session.ledger, new_resources);
        let state_due = match begun {
            Begun::Replay => return Ok(true),
            Begun::Applied { state_due } => state_due,
        };
        let result = if state_due {
            self.apply_state(report, now).await
        } else {
            self.note_seen(&report, now);
            Ok(())
        };
        session.ledger.finish(seq, result.is_ok());
        result?;
        session.gaps_through.store(gaps_through, Ordering::Relaxed);
        metrics::counter!(telemetry::SAMPLES).increment(sample_count as u64);
        Ok(false)
    }

    /// Plans `report` against the model; only a report that changes something
    /// goes to the planner's writer (and is waited for).
    async fn apply_state(&self, report: Report, now: i64) -> Result<(), StateError> {
        let needs_commit = {
            let model = self.state.read();
            let rules = self.state.rules.current();
            let ctx = Context {
                model: &model,
                samples: &self.state.samples,
                health: &self.health,
                rules: &rules,
                now_ms: now,
            };
            let mut plan = Plan::default();
            plan.add(&ctx, &report)?;
            if plan.is_empty() {
                for (id, observed) in plan.seen() {
                    if let Some(t) = model.resources.get(id) {
                        t.seen(now, *observed);
                    }
                }
            }
            !plan.is_empty()
        };
        if needs_commit {
            // Boxed: rare, and inline its state would make every stream's task
            // larger for the stream's whole life.
            Box::pin(self.planner.submit(report)).await?;
        }
        Ok(())
    }

    /// Notes that the resources of a replayed batch were seen.
    fn note_seen(&self, report: &Report, now: i64) {
        let model = self.state.read();
        for change in &report.changes {
            if let Change::Observed(obs) = change
                && let Some(t) = model.resources.get(&obs.id)
            {
                t.seen(now, obs.observed_at_ms);
            }
        }
    }
}

/// The state part of a batch, as a report of source `identity`.
fn report_of(session: &Session, batch: &DecodedBatch, now: i64) -> Report {
    let mut changes: Vec<Change> = batch
        .resources
        .iter()
        .cloned()
        .map(Change::Observed)
        .collect();
    if !batch.gaps.is_empty() {
        let host = batch
            .resources
            .iter()
            .find(|o| o.kind == kind::HOST)
            .map(|o| o.id.clone())
            .unwrap_or_default();
        for g in &batch.gaps {
            tracing::warn!(
                first_seq = g.first_seq,
                last_seq = g.last_seq,
                samples = g.samples_lost,
                cause = %g.cause,
                "Agent reports lost data."
            );
            metrics::counter!(telemetry::GAP_SAMPLES, "cause" => g.cause.clone())
                .increment(g.samples_lost);
            changes.push(Change::DataGap {
                row: GapRow {
                    agent_id: session.key.clone(),
                    host_id: host.clone(),
                    first_seq: g.first_seq,
                    last_seq: g.last_seq,
                    from_ms: g.from_unix_ms,
                    to_ms: g.to_unix_ms,
                    samples_lost: g.samples_lost,
                    batches_lost: g.batches_lost,
                    cause: g.cause.clone(),
                    exact: g.exact,
                    recorded_at_ms: now,
                },
                gap: g.clone(),
            });
        }
    }
    Report {
        source: session.identity.clone(),
        changes,
        position: Some(Position {
            key: session.key.clone(),
            seq: batch.seq,
            epoch: session.epoch,
        }),
    }
}

/// Leaves out of `batch` the data gaps the agent reported before (at or below
/// the last batch an earlier gap covered): they are neither stored nor
/// published again, and are counted. Returns the last batch the gaps cover
/// with this batch's, for the session to keep once the batch is applied.
fn drop_repeated_gaps(session: &Session, batch: &mut DecodedBatch) -> u64 {
    let mut through = session.gaps_through.load(Ordering::Relaxed);
    if batch.gaps.is_empty() {
        return through;
    }
    let before = batch.gaps.len();
    batch.gaps.retain(|g| {
        let new = g.last_seq > through;
        through = through.max(g.last_seq);
        new
    });
    let repeated = before - batch.gaps.len();
    if repeated > 0 {
        metrics::counter!(telemetry::GAPS_REPEATED).increment(repeated as u64);
        tracing::debug!(
            repeated,
            through,
            "Data gaps reported before were left out."
        );
    }
    through
}

/// Refuses a batch that describes a resource outside the agent's machine
/// ([`agent_may_report`]): its host and what hangs off it, itself, its GPUs
/// and probes.
fn check_scope(session: &Session, batch: &DecodedBatch) -> Result<(), StateError> {
    let machine_id = machine_of_key(&session.key);
    match batch
        .resources
        .iter()
        .find(|r| !agent_may_report(machine_id, &r.id))
    {
        None => Ok(()),
        Some(r) => {
            let message = format!(
                "{} may not report {}: an agent reports its own machine ({machine_id}) and what hangs off it (host/{machine_id}[/...], agent/{machine_id}, gpu/{machine_id}/..., probe/{machine_id}/...)",
                session.identity, r.id
            );
            refused(Refusal::Scope, &session.identity, &message);
            Err(StateError::Forbidden(message))
        }
    }
}

/// The machine id of a cursor key (`<identity>/<machine id>`).
fn machine_of_key(key: &str) -> &str {
    key.rsplit_once('/').map(|(_, m)| m).unwrap_or_default()
}

/// The key of an agent's sequence: its certificate identity and the machine id
/// it announces (which [`AgentSource::bind_machine`] pins to the identity).
fn cursor_key(identity: &str, hello: &Hello) -> Result<String, Status> {
    let machine_id = hello
        .host
        .as_ref()
        .map(|h| h.machine_id.as_str())
        .unwrap_or_default();
    if machine_id.is_empty() {
        return Err(Status::invalid_argument(
            "hello: host.machine_id is required (the machine the agent reports for)",
        ));
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
        features = ?hello.features,
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

/// A batch received on this stream and not yet acknowledged durable.
struct Undurable {
    seq: u64,
    received: Instant,
    /// Refusals still to report (agents without received acks get them with the
    /// durable ack).
    refused: Vec<RefusedSamples>,
    duplicate: bool,
}

/// Sends acknowledgements: received ones in batch order (to agents that
/// understand them), durable ones as flushes make batches durable; stops at the
/// first failure.
async fn forward_acks(
    mut order: mpsc::Receiver<Pending>,
    mut durable: watch::Receiver<u64>,
    two_level: bool,
    tx: Outbound,
) {
    let mut waiting: VecDeque<Undurable> = VecDeque::new();
    let mut durable_sent = 0u64;
    loop {
        tokio::select! {
            pending = order.recv() => match pending {
                None => return,
                Some(Pending::Received { seq, duplicate, received, refused }) => {
                    let mut entry = Undurable { seq, received, refused, duplicate };
                    if two_level {
                        let ack = Ack {
                            seq,
                            duplicate,
                            refused: std::mem::take(&mut entry.refused),
                            level: AckLevel::Received as i32,
                        };
                        metrics::histogram!(telemetry::INGEST_TO_ACK, "level" => "received")
                            .record(received.elapsed().as_secs_f64());
                        if send_ack(&tx, ack).await.is_err() {
                            return;
                        }
                    }
                    waiting.push_back(entry);
                    let now_durable = *durable.borrow();
                    if send_durable(&tx, &mut waiting, now_durable, two_level, &mut durable_sent).await.is_err() {
                        return;
                    }
                }
                Some(Pending::Fail(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                Some(Pending::Finish { drain }) => {
                    let last = waiting.back().map_or(0, |w| w.seq);
                    let deadline = tokio::time::Instant::now() + DRAIN_FLUSH_WAIT;
                    while *durable.borrow() < last {
                        if tokio::time::timeout_at(deadline, durable.changed()).await.is_err() {
                            break;
                        }
                    }
                    let now_durable = *durable.borrow();
                    let _ = send_durable(&tx, &mut waiting, now_durable, two_level, &mut durable_sent).await;
                    if !drain {
                        return;
                    }
                    let msg = AggregatorMessage {
                        body: Some(AggregatorBody::Drain(Drain {
                            reason: "aggregator shutting down; every batch read on this stream was acknowledged, connect to another replica".into(),
                        })),
                    };
                    let _ = tx.send(Ok(msg)).await;
                    return;
                }
            },
            changed = durable.changed() => {
                if changed.is_err() {
                    return;
                }
                let now_durable = *durable.borrow();
                if send_durable(&tx, &mut waiting, now_durable, two_level, &mut durable_sent).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Acknowledges what became durable: one cumulative ack to agents with received
/// acks, one ack per batch to the others.
async fn send_durable(
    tx: &Outbound,
    waiting: &mut VecDeque<Undurable>,
    durable: u64,
    two_level: bool,
    sent: &mut u64,
) -> Result<(), ()> {
    let mut newest = None;
    while waiting.front().is_some_and(|w| w.seq <= durable) {
        let Some(w) = waiting.pop_front() else { break };
        metrics::histogram!(telemetry::INGEST_TO_ACK, "level" => "durable")
            .record(w.received.elapsed().as_secs_f64());
        if !two_level {
            let ack = Ack {
                seq: w.seq,
                duplicate: w.duplicate,
                refused: w.refused,
                level: AckLevel::Durable as i32,
            };
            send_ack(tx, ack).await?;
            *sent = w.seq;
        }
        newest = Some(w.seq);
    }
    if two_level && let Some(seq) = newest.filter(|s| *s > *sent) {
        let ack = Ack {
            seq,
            level: AckLevel::Durable as i32,
            ..Ack::default()
        };
        send_ack(tx, ack).await?;
        *sent = seq;
    }
    Ok(())
}

async fn send_ack(tx: &Outbound, ack: Ack) -> Result<(), ()> {
    let msg = AggregatorMessage {
        body: Some(AggregatorBody::Ack(ack)),
    };
    tx.send(Ok(msg)).await.map_err(|_| ())
}
