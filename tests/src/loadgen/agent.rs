//! One simulated agent: its own mTLS connection and `AgentService.Report` stream,
//! a batch every interval, acknowledgements timed from send to `Ack`, at both
//! levels (received and durable).
//!
//! It behaves like the real agent's transport (`agent/src/transport.rs`): Hello
//! first with the highest sequence assigned so far and the features it
//! understands (two-level acks), batches in sequence order, a bounded window of
//! batches not yet acknowledged at any level (a received ack frees window slots,
//! as does a durable one from an aggregator that sends only those; the same
//! [`AckWindow`] books as the agent), reconnection with backoff. Unlike the real
//! agent it does not buffer and resend: a batch due while the window is full is
//! skipped and counted, so the offered load stays what the schedule says and a
//! slow aggregator shows as skipped samples rather than as a growing queue; the
//! batches a broken stream leaves without a durable ack are counted as
//! abandoned.
//!
//! Batches go out as pre-encoded bytes through [`RawCodec`], a tonic codec that
//! writes them as they are (see [`super::profile`]); acknowledgements are decoded
//! with prost as usual.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use infrawatch_common::ack::{AckWindow, ack_level};
use infrawatch_proto::v1::aggregator_message::Body as AggregatorBody;
use infrawatch_proto::v1::{AggregatorMessage, Health};
use prost::Message;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::certs::ClientPem;
use super::changes::{AgentControl, ChangeTracker, Step};
use super::profile::{AgentModel, Rng};
use super::stats::Stats;

/// The agent stream's method path.
const REPORT: &str = "/infrawatch.v1.AgentService/Report";

/// Writes pre-encoded `AgentMessage` bytes; decodes `AggregatorMessage`s.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// Encoder half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

/// Decoder half of [`RawCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AckDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = AggregatorMessage;
    type Encoder = RawEncoder;
    type Decoder = AckDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> AckDecoder {
        AckDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for AckDecoder {
    type Item = AggregatorMessage;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<AggregatorMessage>, tonic::Status> {
        AggregatorMessage::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable answer: {e}")))
    }
}

/// Settings and shared state of every agent of a run.
#[derive(Debug)]
pub struct Fleet {
    /// Counters.
    pub stats: Arc<Stats>,
    /// Changes under way (when change injection is on).
    pub tracker: Option<Arc<ChangeTracker>>,
    /// Current interval between batches (ms); stages change it, and every agent
    /// then starts over at a random phase of the new interval.
    pub interval_ms: watch::Receiver<u64>,
    /// Batches flow while this is true; before, agents connect, say Hello and
    /// send one batch.
    pub streaming: watch::Receiver<bool>,
    /// Ends every agent.
    pub stop: CancellationToken,
    /// Connection set-ups at once.
    pub connect_permits: Semaphore,
    /// The CA certificate (PEM).
    pub ca_pem: Vec<u8>,
    /// Name the aggregator's certificate is checked against.
    pub server_name: String,
    /// Batches per agent not yet acknowledged at any level, at most.
    pub max_in_flight: usize,
    /// A batch without any ack this long ends the stream.
    pub ack_timeout: Duration,
}

/// One agent's fixed parts.
#[derive(Debug)]
pub struct AgentSpec {
    /// Number of the agent.
    pub index: usize,
    /// What it reports.
    pub model: AgentModel,
    /// Its certificate.
    pub pem: ClientPem,
    /// Its aggregator and that aggregator's number.
    pub endpoint: (usize, String),
    /// When it first connects (staggered).
    pub start_at: Instant,
    /// Change requests.
    pub control: Arc<AgentControl>,
}

/// Why a stream ended (a short, bounded vocabulary: it is a report key).
type Kind = String;

fn status_kind(prefix: &str, s: &tonic::Status) -> Kind {
    let code = format!("{:?}", s.code()).to_ascii_lowercase();
    format!("{prefix}_{code}")
}

/// Counts the agent as connected while alive.
struct Connected<'a>(&'a Fleet, &'a AgentControl);

impl<'a> Connected<'a> {
    fn new(fleet: &'a Fleet, control: &'a AgentControl) -> Self {
        fleet.stats.connected.fetch_add(1, Ordering::Relaxed);
        fleet.stats.connections.fetch_add(1, Ordering::Relaxed);
        control.connected.store(true, Ordering::Relaxed);
        Self(fleet, control)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.stats.connected.fetch_sub(1, Ordering::Relaxed);
        self.1.connected.store(false, Ordering::Relaxed);
    }
}

/// Where one agent stands between streams.
struct Progress {
    seq: u64,
    rng: Rng,
    counters: Vec<f64>,
    buf: Vec<u8>,
}

/// Runs agent `spec` until `fleet.stop`.
pub async fn run(spec: AgentSpec, fleet: Arc<Fleet>) {
    let mut progress = Progress {
        seq: 0,
        rng: Rng::new(spec.index as u64 + 1),
        counters: Vec::new(),
        buf: Vec::new(),
    };
    let mut delay = Duration::from_millis(200);
    tokio::select! {
        _ = fleet.stop.cancelled() => return,
        _ = tokio::time::sleep_until(spec.start_at) => {}
    }
    loop {
        let opened = {
            let _permit = tokio::select! {
                _ = fleet.stop.cancelled() => return,
                p = fleet.connect_permits.acquire() => p,
            };
            tokio::select! {
                _ = fleet.stop.cancelled() => return,
                r = open(&spec, &fleet, progress.seq) => r,
            }
        };
        let ended = match opened {
            Ok((tx, inbound)) => {
                delay = Duration::from_millis(200);
                let _connected = Connected::new(&fleet, &spec.control);
                let mut books = AckWindow::new();
                let ended = stream(&spec, &fleet, &mut progress, &mut books, tx, inbound).await;
                // Nothing is sent again: what this stream did not see durable is
                // not known to be stored.
                fleet
                    .stats
                    .abandoned(books.not_durable() as u64, books.not_durable_samples());
                ended
            }
            Err(kind) => Err(kind),
        };
        match ended {
            Ok(()) => return,
            Err(kind) => fleet.stats.error(kind),
        }
        // Jittered backoff, so that a restarted aggregator is not hit by every
        // agent in the same millisecond.
        let jitter = 0.5 + progress.rng.unit();
        tokio::select! {
            _ = fleet.stop.cancelled() => return,
            _ = tokio::time::sleep(delay.mul_f64(jitter)) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

type Inbound = tonic::Streaming<AggregatorMessage>;

/// Connects (TCP, TLS handshake, HTTP/2) and opens the stream with Hello.
async fn open(
    spec: &AgentSpec,
    fleet: &Fleet,
    last_seq: u64,
) -> Result<(mpsc::Sender<Bytes>, Inbound), Kind> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&fleet.ca_pem))
        .identity(Identity::from_pem(&spec.pem.cert, &spec.pem.key))
        .domain_name(fleet.server_name.clone());
    let channel = Endpoint::from_shared(spec.endpoint.1.clone())
        .map_err(|_| Kind::from("bad_endpoint"))?
        .tls_config(tls)
        .map_err(|_| Kind::from("tls_config"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| {
            if format!("{e:?}").contains("imed out") {
                Kind::from("connect_timeout")
            } else {
                Kind::from("connect")
            }
        })?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|_| Kind::from("connect"))?;
    let (tx, rx) = mpsc::channel::<Bytes>(fleet.max_in_flight + 2);
    // The channel is new and has room.
    let _ = tx.try_send(Bytes::from(spec.model.hello(last_seq)));
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(REPORT),
            RawCodec,
        )
        .await
        .map_err(|s| status_kind("open", &s))?;
    Ok((tx, response.into_inner()))
}

/// Streams until stopped (`Ok`) or until the stream fails (`Err` with its kind).
async fn stream(
    spec: &AgentSpec,
    fleet: &Fleet,
    progress: &mut Progress,
    books: &mut AckWindow,
    tx: mpsc::Sender<Bytes>,
    mut inbound: Inbound,
) -> Result<(), Kind> {
    let mut streaming = fleet.streaming.clone();
    let mut intervals = fleet.interval_ms.clone();
    // The first batch goes out at once, as the real agent sends what it has when
    // it connects: it describes the agent's resources to the aggregator.
    send(spec, fleet, progress, &tx, books, Instant::now())?;
    let mut interval = Duration::from_millis((*intervals.borrow_and_update()).max(1));
    // Then a random phase of the interval, so batches spread over it.
    let mut next = Instant::now() + interval.mul_f64(progress.rng.unit());
    let tick = tokio::time::sleep_until(next);
    tokio::pin!(tick);
    loop {
        let go = *streaming.borrow();
        tokio::select! {
            biased;
            _ = fleet.stop.cancelled() => return Ok(()),
            m = inbound.message() => match m {
                Ok(Some(AggregatorMessage { body: Some(AggregatorBody::Ack(ack)) })) => {
                    let Some(level) = ack_level(&ack) else {
                        fleet.stats.error("ack_unknown_level");
                        continue;
                    };
                    let refused = ack.refused.iter().fold(0u64, |n, r| n.saturating_add(r.samples));
                    let outcome = books.on_ack(level, ack.seq, refused, std::time::Instant::now());
                    // Samples of the acknowledged batch the aggregator did not store
                    // (cardinality limits and the like) are errors, not throughput;
                    // they come with the batch's first ack.
                    if outcome.first {
                        for r in &ack.refused {
                            fleet.stats.error_n(format!("refused_{}", r.reason), r.samples);
                        }
                    }
                    for c in &outcome.received {
                        fleet.stats.ack(c.latency, c.samples);
                    }
                    for c in &outcome.durable {
                        fleet.stats.durable(c.latency, c.samples);
                    }
                }
                Ok(Some(AggregatorMessage { body: Some(AggregatorBody::Drain(_)) })) => {
                    return Err("drained".into());
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("stream_closed".into()),
                Err(s) => return Err(status_kind("stream", &s)),
            },
            changed = streaming.changed(), if !go => {
                if changed.is_err() {
                    return Ok(());
                }
                next = Instant::now() + interval.mul_f64(progress.rng.unit());
                tick.as_mut().reset(next);
            }
            changed = intervals.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                interval = Duration::from_millis((*intervals.borrow_and_update()).max(1));
                next = Instant::now() + interval.mul_f64(progress.rng.unit());
                tick.as_mut().reset(next);
            }
            _ = &mut tick, if go => {
                let now = Instant::now();
                // The next tick; ticks missed while this task waited are skipped.
                next += interval;
                if next <= now {
                    next = now + interval;
                }
                tick.as_mut().reset(next);
                if let Some(sent) = books.oldest_unacked_at()
                    && now.into_std().saturating_duration_since(sent) > fleet.ack_timeout
                {
                    return Err("ack_timeout".into());
                }
                if books.in_flight() >= fleet.max_in_flight {
                    fleet
                        .stats
                        .samples_skipped
                        .fetch_add(spec.model.series as u64, Ordering::Relaxed);
                    continue;
                }
                send(spec, fleet, progress, &tx, books, now)?;
            }
        }
    }
}

/// Builds and queues the next batch.
fn send(
    spec: &AgentSpec,
    fleet: &Fleet,
    progress: &mut Progress,
    tx: &mpsc::Sender<Bytes>,
    books: &mut AckWindow,
    now: Instant,
) -> Result<(), Kind> {
    progress.seq += 1;
    let seq = progress.seq;
    let ts = infrawatch_common::time::now_unix_ms();
    let step = match &fleet.tracker {
        Some(_) => spec.control.next_step(),
        None => Step::Steady,
    };
    let batch_len = spec.model.encode_batch(
        seq,
        ts,
        ts,
        step == Step::Fail,
        &mut progress.rng,
        &mut progress.counters,
        &mut progress.buf,
    );
    if let (Some(tracker), Some(health)) = (
        &fleet.tracker,
        match step {
            Step::Fail => Some(Health::Unhealthy),
            Step::Recover => Some(Health::Healthy),
            Step::Steady => None,
        },
    ) {
        // The TCP probe's samples are taken 3 ms into the batch (see the profile).
        tracker.register(
            &spec.model.tcp_probe_id,
            health,
            spec.endpoint.0,
            now.into_std(),
            ts,
        );
        fleet.stats.changes.fetch_add(1, Ordering::Relaxed);
    }
    match tx.try_send(Bytes::copy_from_slice(&progress.buf)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            // The connection cannot take more (HTTP/2 flow control): as good as a
            // full window.
            fleet
                .stats
                .samples_skipped
                .fetch_add(spec.model.series as u64, Ordering::Relaxed);
            return Ok(());
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return Err("stream_closed".into()),
    }
    let samples = spec.model.series;
    books.sent(seq, samples as u64, now.into_std());
    let stats = &fleet.stats;
    stats.batches_sent.fetch_add(1, Ordering::Relaxed);
    stats
        .samples_sent
        .fetch_add(samples as u64, Ordering::Relaxed);
    stats
        .batch_bytes_sent
        .fetch_add(batch_len as u64, Ordering::Relaxed);
    Ok(())
}
