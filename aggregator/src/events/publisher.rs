//! Drains the outbox into one sink.
//!
//! The publisher reads events after its cursor (from memory when they are recent),
//! sends them in position order with up to `max_in_flight` awaiting the broker's
//! acknowledgement, and moves its stored cursor over the acknowledged prefix. Two
//! rules keep each resource's events in `resource_version` order through failures
//! and reconnects:
//!
//! 1. At most one event per resource is unacknowledged at any time: the next event
//!    of the same resource is sent only after the previous one was acknowledged.
//! 2. After a failure, sending restarts at the first unacknowledged event; events
//!    already acknowledged beyond it are skipped, not sent again.
//!
//! A send failure never loses an event: it stays in the outbox and is retried with
//! backoff (100 ms doubling to 5 s) until the broker takes it.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use tokio_util::sync::CancellationToken;

use super::StoredEvent;
use super::log::{EventLog, LogError};
use super::metric;
use super::sink::{Ack, Sink, SinkError};
use crate::store::{CursorKind, Store};

/// Events read per round.
const READ_BATCH: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What one round of sending achieved.
#[derive(Debug)]
pub struct Round {
    /// Per event of the round: acknowledged by the broker (or skipped as already
    /// acknowledged).
    pub acked: Vec<bool>,
    /// The first failure, if any.
    pub error: Option<SinkError>,
}

/// Sends `events` in order through `sink` under the two ordering rules, skipping
/// positions in `already_acked`.
pub async fn send_round(
    sink: &mut dyn Sink,
    events: &[Arc<StoredEvent>],
    already_acked: &BTreeSet<u64>,
) -> Round {
    let max = sink.max_in_flight().max(1);
    let mut acked = vec![false; events.len()];
    let mut error: Option<SinkError> = None;
    let mut in_flight: VecDeque<(usize, Ack)> = VecDeque::new();
    let mut busy: HashSet<&str> = HashSet::new();

    async fn settle_front<'a>(
        sink: &mut dyn Sink,
        in_flight: &mut VecDeque<(usize, Ack)>,
        busy: &mut HashSet<&'a str>,
        events: &'a [Arc<StoredEvent>],
        acked: &mut [bool],
        error: &mut Option<SinkError>,
    ) {
        let limit = sink.timeout();
        let name = sink.name();
        match tokio::time::timeout(limit, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error.get_or_insert(e);
            }
            Err(_) => {
                error.get_or_insert(timed_out(name, "flushing", limit));
            }
        }
        if let Some((i, ack)) = in_flight.pop_front() {
            match ack_outcome(tokio::time::timeout(limit, ack).await, name, limit) {
                Ok(()) => acked[i] = true,
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
            busy.remove(events[i].event.resource_id.as_str());
        }
    }

    for (i, e) in events.iter().enumerate() {
        if already_acked.contains(&e.position) {
            acked[i] = true;
            continue;
        }
        let resource = e.event.resource_id.as_str();
        while error.is_none()
            && !in_flight.is_empty()
            && (busy.contains(resource) || in_flight.len() >= max)
        {
            settle_front(
                sink,
                &mut in_flight,
                &mut busy,
                events,
                &mut acked,
                &mut error,
            )
            .await;
        }
        if error.is_some() {
            break;
        }
        let limit = sink.timeout();
        match tokio::time::timeout(limit, sink.send(e)).await {
            Ok(Ok(ack)) => {
                busy.insert(resource);
                in_flight.push_back((i, ack));
            }
            Ok(Err(err)) => {
                error = Some(err);
                break;
            }
            Err(_) => {
                error = Some(timed_out(sink.name(), "sending", limit));
                break;
            }
        }
    }
    while error.is_none() && !in_flight.is_empty() {
        settle_front(
            sink,
            &mut in_flight,
            &mut busy,
            events,
            &mut acked,
            &mut error,
        )
        .await;
    }
    // After a failure the rest usually fails too (a lost connection): wait for all
    // of them at once, so the round ends within one timeout instead of one per
    // event, and keep whichever the broker did acknowledge.
    if !in_flight.is_empty() {
        let limit = sink.timeout();
        let name = sink.name();
        let settled = futures::future::join_all(
            in_flight
                .drain(..)
                .map(|(i, ack)| async move { (i, tokio::time::timeout(limit, ack).await) }),
        )
        .await;
        for (i, result) in settled {
            match ack_outcome(result, name, limit) {
                Ok(()) => acked[i] = true,
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
    }
    Round { acked, error }
}

/// How far a publisher is, for readiness and status pages.
#[derive(Debug, Default)]
pub struct SinkStatus {
    /// Sink name.
    pub name: &'static str,
    /// Events committed but not acknowledged by the broker.
    pub lag_events: AtomicU64,
    /// Age of the oldest of them (ms).
    pub lag_ms: AtomicI64,
    /// The last failure, cleared when publishing succeeds again.
    pub last_error: Mutex<Option<String>>,
    /// True while this replica publishes to the sink (it leads); the lag of a
    /// standby replica means nothing.
    pub active: std::sync::atomic::AtomicBool,
}

impl SinkStatus {
    /// The status as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sink": self.name,
            "active": self.active.load(Ordering::Relaxed),
            "lag_events": self.lag_events.load(Ordering::Relaxed),
            "lag_seconds": self.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            "last_error": self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// An acknowledgement awaited for at most `limit`: a timeout is a failure too.
fn ack_outcome(
    result: Result<Result<(), SinkError>, tokio::time::error::Elapsed>,
    sink: &'static str,
    limit: Duration,
) -> Result<(), SinkError> {
    result.unwrap_or_else(|_| Err(timed_out(sink, "waiting for the acknowledgement", limit)))
}

fn timed_out(sink: &'static str, what: &str, limit: Duration) -> SinkError {
    SinkError {
        sink,
        message: format!("no answer within {limit:?} while {what}"),
    }
}

/// Publishes every event to one sink, forever.
pub struct Publisher {
    sink: Box<dyn Sink>,
    log: Arc<EventLog>,
    store: Store,
    status: Arc<SinkStatus>,
}

impl Publisher {
    /// A publisher feeding `sink` from `log`, keeping its cursor in `store`
    /// and its progress in `status`.
    pub fn new(
        sink: Box<dyn Sink>,
        log: Arc<EventLog>,
        store: Store,
        status: Arc<SinkStatus>,
    ) -> Self {
        Self {
            sink,
            log,
            store,
            status,
        }
    }

    /// Its progress, updated as it runs.
    pub fn status(&self) -> Arc<SinkStatus> {
        self.status.clone()
    }

    /// The cursor's name in the database.
    pub fn cursor_name(&self) -> String {
        format!("sink:{}", self.sink.name())
    }

    /// Runs until `stop` is cancelled; the status says it is active meanwhile.
    pub async fn run(self, stop: CancellationToken) {
        let status = self.status.clone();
        status.active.store(true, Ordering::Relaxed);
        self.publish(stop).await;
        status.active.store(false, Ordering::Relaxed);
        status.lag_events.store(0, Ordering::Relaxed);
        status.lag_ms.store(0, Ordering::Relaxed);
    }

    async fn publish(mut self, stop: CancellationToken) {
        let name = self.sink.name();
        let cursor_name = self.cursor_name();
        let mut backoff = MIN_BACKOFF;
        // A sink configured for the first time starts at the newest event.
        let mut cursor = loop {
            let head = self.log.head();
            let created = self
                .store
                .create_cursor(&cursor_name, CursorKind::Sink, "{}", head, "")
                .await;
            let row = match created {
                Ok(_) => self.store.cursor_row(&cursor_name).await,
                Err(e) => Err(e),
            };
            match row {
                Ok(Some(row)) => break row.position,
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    sink = name,
                    error = &e as &dyn std::error::Error,
                    "Cannot read the publisher cursor; retrying."
                ),
            }
            if sleep_or_stop(&stop, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        tracing::info!(
            sink = name,
            position = cursor,
            head = self.log.head(),
            "Publisher started."
        );
        let mut head_rx = self.log.subscribe();
        let mut already_acked: BTreeSet<u64> = BTreeSet::new();
        let mut failing = false;
        backoff = MIN_BACKOFF;
        loop {
            if stop.is_cancelled() {
                break;
            }
            head_rx.borrow_and_update();
            let events = match self.log.read_after(cursor, READ_BATCH).await {
                Ok(events) => events,
                Err(LogError::Pruned { oldest, .. }) => {
                    // Only possible if the outbox was pruned by hand past this sink.
                    tracing::error!(
                        sink = name,
                        position = cursor,
                        oldest,
                        "Events for this sink were deleted from the outbox; continuing after the gap."
                    );
                    cursor = oldest.saturating_sub(1);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(
                        sink = name,
                        error = &e as &dyn std::error::Error,
                        "Cannot read the outbox; retrying."
                    );
                    if sleep_or_stop(&stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            self.report_lag(cursor, events.first().map(|e| &**e));
            if events.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = head_rx.changed() => {}
                }
                continue;
            }
            let round = send_round(self.sink.as_mut(), &events, &already_acked).await;
            let mut advanced = cursor;
            let mut prefix = true;
            let mut published = 0u64;
            for (e, ok) in events.iter().zip(&round.acked) {
                if !*ok {
                    prefix = false;
                    continue;
                }
                if !already_acked.contains(&e.position) {
                    published += 1;
                    if let Some(at) = e.committed_at {
                        metrics::histogram!(metric::PUBLISH_LATENCY, "sink" => name)
                            .record(at.elapsed().as_secs_f64());
                    }
                }
                if prefix {
                    advanced = e.position;
                    already_acked.remove(&e.position);
                } else {
                    already_acked.insert(e.position);
                }
            }
            metrics::counter!(metric::PUBLISHED, "sink" => name).increment(published);
            if advanced > cursor {
                cursor = advanced;
                // If this write fails the cursor is written with the next round; a
                // crash before then re-sends a few events, which consumers drop by
                // (resource_id, resource_version) and NATS by message id.
                if let Err(e) = self.store.advance_cursor(&cursor_name, cursor).await {
                    tracing::warn!(
                        sink = name,
                        error = &e as &dyn std::error::Error,
                        "Cannot store the publisher cursor."
                    );
                }
            }
            match round.error {
                None => {
                    self.status.set_error(None);
                    if failing {
                        tracing::info!(sink = name, position = cursor, "Publishing recovered.");
                        failing = false;
                    }
                    backoff = MIN_BACKOFF;
                }
                Some(e) => {
                    metrics::counter!(metric::PUBLISH_ERRORS, "sink" => name).increment(1);
                    self.status.set_error(Some(e.to_string()));
                    if !failing {
                        tracing::warn!(sink = name, position = cursor, error = %e, "Publishing failed; events stay in the outbox and are retried.");
                        failing = true;
                    }
                    self.sink.reset().await;
                    self.report_lag(
                        cursor,
                        events.iter().find(|e| e.position > cursor).map(|e| &**e),
                    );
                    if sleep_or_stop(&stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.sink.reset().await;
        tracing::info!(sink = name, position = cursor, "Publisher stopped.");
    }

    fn report_lag(&self, cursor: u64, oldest_unpublished: Option<&StoredEvent>) {
        let name = self.sink.name();
        let lag = self.log.head().saturating_sub(cursor);
        let age_ms = oldest_unpublished
            .map(|e| (now_unix_ms() - e.event.emitted_at_unix_ms).max(0))
            .unwrap_or(0);
        self.status.lag_events.store(lag, Ordering::Relaxed);
        self.status.lag_ms.store(age_ms, Ordering::Relaxed);
        metrics::gauge!(metric::LAG_EVENTS, "sink" => name).set(lag as f64);
        metrics::gauge!(metric::LAG_SECONDS, "sink" => name).set(age_ms as f64 / 1000.0);
    }
}

/// Sleeps for `d`; true if `stop` was cancelled meanwhile.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use infrawatch_proto::v1 as pb;

    /// A sink that records the order of sends and fails chosen ones.
    struct Recording {
        sent: Arc<Mutex<Vec<(u64, String)>>>,
        fail: HashSet<u64>,
        in_flight: Arc<Mutex<HashSet<String>>>,
        violations: Arc<Mutex<usize>>,
    }

    #[async_trait::async_trait]
    impl Sink for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn max_in_flight(&self) -> usize {
            8
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(5)
        }
        async fn send(&mut self, e: &StoredEvent) -> Result<Ack, SinkError> {
            let id = e.event.resource_id.clone();
            if !self.in_flight.lock().unwrap().insert(id.clone()) {
                *self.violations.lock().unwrap() += 1;
            }
            self.sent.lock().unwrap().push((e.position, id.clone()));
            let fail = self.fail.contains(&e.position);
            let in_flight = self.in_flight.clone();
            Ok(async move {
                tokio::task::yield_now().await;
                in_flight.lock().unwrap().remove(&id);
                if fail {
                    Err(SinkError {
                        sink: "recording",
                        message: "refused".into(),
                    })
                } else {
                    Ok(())
                }
            }
            .boxed())
        }
        async fn reset(&mut self) {}
    }

    fn events(resources: &[&str]) -> Vec<Arc<StoredEvent>> {
        resources
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Arc::new(StoredEvent::new(
                    i as u64 + 1,
                    pb::InfrastructureStatusUpdatedEvent {
                        resource_id: r.to_string(),
                        ..Default::default()
                    },
                    None,
                ))
            })
            .collect()
    }

    #[tokio::test]
    async fn one_event_per_resource_in_flight_and_failures_stop_the_round() {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(0));
        let mut sink = Recording {
            sent: sent.clone(),
            fail: HashSet::from([3]),
            in_flight: Default::default(),
            violations: violations.clone(),
        };
        let evs = events(&["a", "b", "c", "a", "b", "a", "d"]);
        let round = send_round(&mut sink, &evs, &BTreeSet::new()).await;
        assert_eq!(*violations.lock().unwrap(), 0);
        assert!(round.error.is_some());
        // Event 3 failed: nothing after the failure is sent once it is seen.
        assert!(round.acked[0] && round.acked[1] && !round.acked[2]);
        let order: Vec<u64> = sent.lock().unwrap().iter().map(|(p, _)| *p).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");

        // The retry skips what was acknowledged and sends the rest in order.
        let already: BTreeSet<u64> = evs
            .iter()
            .zip(&round.acked)
            .filter(|(_, ok)| **ok)
            .map(|(e, _)| e.position)
            .collect();
        sink.fail.clear();
        sent.lock().unwrap().clear();
        let retry = send_round(&mut sink, &evs, &already).await;
        assert!(retry.error.is_none());
        assert!(retry.acked.iter().all(|a| *a));
        let resent: Vec<u64> = sent.lock().unwrap().iter().map(|(p, _)| *p).collect();
        assert!(resent.iter().all(|p| !already.contains(p)), "{resent:?}");
        assert!(resent.contains(&3));
        assert_eq!(*violations.lock().unwrap(), 0);
    }

    /// A sink whose connection died: sends are taken, acknowledgements never come.
    struct Silent;

    #[async_trait::async_trait]
    impl Sink for Silent {
        fn name(&self) -> &'static str {
            "silent"
        }
        fn max_in_flight(&self) -> usize {
            64
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(5)
        }
        async fn send(&mut self, _e: &StoredEvent) -> Result<Ack, SinkError> {
            Ok(futures::future::pending().boxed())
        }
        async fn reset(&mut self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_connection_costs_one_timeout_not_one_per_event() {
        let names: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let evs = events(&refs);
        let started = tokio::time::Instant::now();
        let round = send_round(&mut Silent, &evs, &BTreeSet::new()).await;
        assert!(round.error.is_some());
        assert!(round.acked.iter().all(|a| !a));
        assert!(
            started.elapsed() <= Duration::from_secs(11),
            "{:?}",
            started.elapsed()
        );
    }
}
