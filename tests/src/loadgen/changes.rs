//! Injected state changes and the observers that time them.
//!
//! Every `--change-every-ms` the injector asks one connected agent to report its
//! TCP probe refused in its next batch, and healthy again in the batch after (the
//! aggregator's probe rule, `aggregator/src/health.rs`, makes a refused probe
//! UNHEALTHY at once, whereas host thresholds are averaged over a minute). The
//! agent registers each change with the [`ChangeTracker`] when it takes the
//! sample, and the observers report when they see it:
//!
//! - gRPC `EventService.WatchEvents`, filtered to TCP probe transitions: the
//!   aggregator's in-process event bus, live;
//! - a JetStream ordered consumer on the NATS sink's subject for TCP probes;
//! - REST: `GET /api/v1/resources/<id>` every millisecond until the health shows
//!   (and the resource was observed at or after the change).
//!
//! The latency runs from the sample's timestamp in the agent to the observation,
//! measured on this process's monotonic clock. A change an observer has not seen
//! after [`MISSED_AFTER`] counts as missed for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infrawatch_proto::v1::event_service_client::EventServiceClient;
use infrawatch_proto::v1::{
    EventFilter, Health, InfrastructureStatusUpdatedEvent, WatchEventsRequest,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::{Observer, Stats};

/// A change not seen by an observer within this time counts as missed.
pub const MISSED_AFTER: Duration = Duration::from_secs(30);

/// How often the REST observer asks.
const REST_POLL: Duration = Duration::from_millis(1);

/// Change requests of one agent, set by the injector and read by the agent when
/// it builds a batch.
#[derive(Debug, Default)]
pub struct AgentControl {
    /// [`IDLE`], [`FAIL_NEXT`] or [`RECOVER_NEXT`].
    state: AtomicU8,
    /// True while the agent's stream is open.
    pub connected: AtomicBool,
}

const IDLE: u8 = 0;
const FAIL_NEXT: u8 = 1;
const RECOVER_NEXT: u8 = 2;

/// What the agent's next batch does to its TCP probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes.
    Steady,
    /// The probe fails in this batch.
    Fail,
    /// The probe recovers in this batch.
    Recover,
}

impl AgentControl {
    /// Asks for a failure in the next batch; false if a change is under way.
    pub fn request(&self) -> bool {
        self.state
            .compare_exchange(IDLE, FAIL_NEXT, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Called once per batch: what this batch does, advancing the state.
    pub fn next_step(&self) -> Step {
        match self.state.load(Ordering::Acquire) {
            FAIL_NEXT => {
                self.state.store(RECOVER_NEXT, Ordering::Release);
                Step::Fail
            }
            RECOVER_NEXT => {
                self.state.store(IDLE, Ordering::Release);
                Step::Recover
            }
            _ => Step::Steady,
        }
    }
}

/// A change waiting to be seen.
#[derive(Debug)]
struct Pending {
    at: Instant,
    ts_ms: i64,
    seen: [bool; 3],
}

/// A change the REST observer must find.
#[derive(Debug)]
struct RestCheck {
    resource_id: String,
    health: Health,
    endpoint: usize,
    ts_ms: i64,
    at: Instant,
}

/// Changes under way, by resource and new health.
#[derive(Debug)]
pub struct ChangeTracker {
    pending: Mutex<HashMap<(String, i32), Pending>>,
    enabled: [bool; 3],
    stats: Arc<Stats>,
    rest: Option<mpsc::UnboundedSender<RestCheck>>,
}

impl ChangeTracker {
    /// A tracker for the observers in `enabled`, counting into `stats`; returns
    /// the receiver the REST observer must be given when it is enabled.
    fn new(
        stats: Arc<Stats>,
        enabled: &[Observer],
    ) -> (Self, Option<mpsc::UnboundedReceiver<RestCheck>>) {
        let (rest, rx) = if enabled.contains(&Observer::Rest) {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        (
            Self {
                pending: Mutex::new(HashMap::new()),
                enabled: Observer::ALL.map(|o| enabled.contains(&o)),
                stats,
                rest,
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when some observer is on.
    pub fn is_active(&self) -> bool {
        self.enabled.iter().any(|e| *e)
    }

    /// An agent took the sample that makes `resource_id` `health` at `at` (wall
    /// clock `ts_ms`), sent to endpoint number `endpoint`.
    pub fn register(
        &self,
        resource_id: &str,
        health: Health,
        endpoint: usize,
        at: Instant,
        ts_ms: i64,
    ) {
        self.lock().insert(
            (resource_id.to_string(), health as i32),
            Pending {
                at,
                ts_ms,
                seen: [false; 3],
            },
        );
        if let Some(rest) = &self.rest {
            let _ = rest.send(RestCheck {
                resource_id: resource_id.to_string(),
                health,
                endpoint,
                ts_ms,
                at,
            });
        }
    }

    /// `observer` saw `resource_id` become `health`, observed at `observed_at_ms`.
    pub fn observe(&self, observer: Observer, resource_id: &str, health: i32, observed_at_ms: i64) {
        let now = Instant::now();
        let mut pending = self.lock();
        let key = (resource_id.to_string(), health);
        let Some(p) = pending.get_mut(&key) else {
            return;
        };
        // An older report of the same health (e.g. the probe's creation) is not it.
        if observed_at_ms < p.ts_ms || p.seen[observer as usize] {
            return;
        }
        p.seen[observer as usize] = true;
        self.stats.change_seen(observer, now.duration_since(p.at));
        if Observer::ALL
            .iter()
            .all(|o| !self.enabled[*o as usize] || p.seen[*o as usize])
        {
            pending.remove(&key);
        }
    }

    /// Drops changes older than [`MISSED_AFTER`], counting them missed for every
    /// enabled observer that did not see them.
    pub fn expire(&self) {
        let mut pending = self.lock();
        pending.retain(|_, p| {
            if p.at.elapsed() < MISSED_AFTER {
                return true;
            }
            for o in Observer::ALL {
                if self.enabled[o as usize] && !p.seen[o as usize] {
                    self.stats.change_missed(o);
                }
            }
            false
        });
    }
}

/// Where the observers connect.
#[derive(Debug, Clone)]
pub struct ObserverSettings {
    /// gRPC endpoints to watch (empty: no gRPC observer).
    pub grpc: Vec<String>,
    /// TLS of the watching client.
    pub tls: tonic::transport::ClientTlsConfig,
    /// NATS URL, stream and subject (None: no NATS observer).
    pub nats: Option<(String, String, String)>,
    /// REST address per endpoint (empty: no REST observer).
    pub rest: Vec<SocketAddr>,
}

/// Starts the tracker and its observers; they run until `stop`.
pub fn start(
    settings: ObserverSettings,
    stats: Arc<Stats>,
    stop: &CancellationToken,
) -> Arc<ChangeTracker> {
    let mut enabled = Vec::new();
    if !settings.grpc.is_empty() {
        enabled.push(Observer::Grpc);
    }
    if settings.nats.is_some() {
        enabled.push(Observer::Nats);
    }
    if !settings.rest.is_empty() {
        enabled.push(Observer::Rest);
    }
    let (tracker, rest_rx) = ChangeTracker::new(stats.clone(), &enabled);
    let tracker = Arc::new(tracker);
    for endpoint in &settings.grpc {
        tokio::spawn(watch_grpc(
            endpoint.clone(),
            settings.tls.clone(),
            tracker.clone(),
            stats.clone(),
            stop.clone(),
        ));
    }
    if let Some((url, stream, subject)) = settings.nats {
        tokio::spawn(watch_nats(
            url,
            stream,
            subject,
            tracker.clone(),
            stats.clone(),
            stop.clone(),
        ));
    }
    if let Some(rx) = rest_rx {
        tokio::spawn(poll_rest(rx, settings.rest, tracker.clone(), stop.clone()));
    }
    let t = tracker.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => t.expire(),
            }
        }
    });
    tracker
}

/// Sleeps `d` unless `stop` comes first; false when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

fn tcp_probe_filter() -> EventFilter {
    EventFilter {
        kinds: vec!["tcp_probe".into()],
        transitions: vec!["became_unhealthy".into(), "became_healthy".into()],
        ..Default::default()
    }
}

fn observe_event(
    tracker: &ChangeTracker,
    observer: Observer,
    e: &InfrastructureStatusUpdatedEvent,
) {
    tracker.observe(observer, &e.resource_id, e.health, e.observed_at_unix_ms);
}

async fn watch_grpc(
    endpoint: String,
    tls: tonic::transport::ClientTlsConfig,
    tracker: Arc<ChangeTracker>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        let result: anyhow::Result<()> = async {
            let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
                .tls_config(tls.clone())?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await?;
            let mut stream = EventServiceClient::new(channel)
                .watch_events(WatchEventsRequest {
                    filter: Some(tcp_probe_filter()),
                    after_position: None,
                    subscription: String::new(),
                })
                .await?
                .into_inner();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    m = stream.message() => match m? {
                        Some(envelope) => {
                            if let Some(e) = &envelope.event {
                                observe_event(&tracker, Observer::Grpc, e);
                            }
                        }
                        None => anyhow::bail!("the event stream ended"),
                    },
                }
            }
        }
        .await;
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = result {
            stats.error("watch_grpc");
            tracing::warn!(error = %e, endpoint, "Event watch failed; reconnecting.");
        }
        if !pause(&stop, Duration::from_millis(500)).await {
            return;
        }
    }
}

async fn watch_nats(
    url: String,
    stream: String,
    subject: String,
    tracker: Arc<ChangeTracker>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use prost::Message;
    loop {
        let result: anyhow::Result<()> = async {
            let client = async_nats::connect(&url).await?;
            let js = async_nats::jetstream::new(client);
            // The aggregator creates the stream when its sink starts.
            let s = loop {
                match js.get_stream(&stream).await {
                    Ok(s) => break s,
                    Err(_) if pause(&stop, Duration::from_millis(500)).await => {}
                    Err(e) => return Err(e.into()),
                }
            };
            let consumer = s
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::New,
                    filter_subject: subject.clone(),
                    ..Default::default()
                })
                .await?;
            let mut messages = consumer.messages().await?;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    m = messages.next() => match m {
                        Some(Ok(m)) => {
                            let e = InfrastructureStatusUpdatedEvent::decode(m.payload.as_ref())?;
                            observe_event(&tracker, Observer::Nats, &e);
                        }
                        Some(Err(e)) => return Err(e.into()),
                        None => anyhow::bail!("the JetStream consumer ended"),
                    },
                }
            }
        }
        .await;
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = result {
            stats.error("watch_nats");
            tracing::warn!(error = %e, "JetStream consumer failed; starting another.");
        }
        if !pause(&stop, Duration::from_millis(500)).await {
            return;
        }
    }
}

async fn poll_rest(
    mut checks: mpsc::UnboundedReceiver<RestCheck>,
    rest: Vec<SocketAddr>,
    tracker: Arc<ChangeTracker>,
    stop: CancellationToken,
) {
    loop {
        let check = tokio::select! {
            _ = stop.cancelled() => return,
            c = checks.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        let Some(addr) = rest.get(check.endpoint % rest.len().max(1)).copied() else {
            continue;
        };
        let tracker = tracker.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let path = format!("/api/v1/resources/{}", check.resource_id);
            let want = infrawatch_common::resource::health_name(check.health);
            while check.at.elapsed() < MISSED_AFTER && !stop.is_cancelled() {
                if let Ok((200, body)) = super::http::get(addr, &path, Duration::from_secs(5)).await
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                {
                    let observed = v["observed_at_unix_ms"].as_i64().unwrap_or(0);
                    if v["health"].as_str() == Some(want) && observed >= check.ts_ms {
                        tracker.observe(
                            Observer::Rest,
                            &check.resource_id,
                            check.health as i32,
                            observed,
                        );
                        return;
                    }
                }
                tokio::time::sleep(REST_POLL).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_timed_once_per_observer_and_missed_when_unseen() {
        let stats = Arc::new(Stats::default());
        let (t, _) = ChangeTracker::new(stats.clone(), &[Observer::Grpc, Observer::Nats]);
        let at = Instant::now() - Duration::from_millis(5);
        t.register("probe/a", Health::Unhealthy, 0, at, 1_000);
        // The probe's creation event (observed before the change) does not count.
        t.observe(Observer::Grpc, "probe/a", Health::Unhealthy as i32, 999);
        t.observe(Observer::Grpc, "probe/a", Health::Healthy as i32, 1_000);
        assert_eq!(stats.snapshot().change(Observer::Grpc).count(), 0);
        t.observe(Observer::Grpc, "probe/a", Health::Unhealthy as i32, 1_000);
        t.observe(Observer::Grpc, "probe/a", Health::Unhealthy as i32, 1_000);
        let s = stats.snapshot();
        assert_eq!(s.change(Observer::Grpc).count(), 1);
        assert!(s.change(Observer::Grpc).quantile_ms(0.5).unwrap() >= 5.0);
        // Seen by both: forgotten. Seen by one, then expired: missed by the other.
        t.observe(Observer::Nats, "probe/a", Health::Unhealthy as i32, 1_001);
        assert!(t.lock().is_empty());
        t.register(
            "probe/b",
            Health::Healthy,
            0,
            Instant::now() - MISSED_AFTER,
            2_000,
        );
        t.observe(Observer::Nats, "probe/b", Health::Healthy as i32, 2_000);
        t.expire();
        let s = stats.snapshot();
        assert_eq!((s.missed(Observer::Grpc), s.missed(Observer::Nats)), (1, 0));
    }

    #[test]
    fn one_change_at_a_time_per_agent() {
        let c = AgentControl::default();
        assert_eq!(c.next_step(), Step::Steady);
        assert!(c.request());
        assert!(!c.request(), "a change is under way");
        assert_eq!(c.next_step(), Step::Fail);
        assert!(!c.request());
        assert_eq!(c.next_step(), Step::Recover);
        assert_eq!(c.next_step(), Step::Steady);
        assert!(c.request());
    }
}
