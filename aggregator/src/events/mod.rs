//! `InfrastructureStatusUpdatedEvent`s: how they are built from state changes,
//! checked, kept and delivered.
//!
//! ```text
//! any replica's planner: state change ─► build ─► validate ─┬─► staged event ┐ one transaction with
//!                                                           └─► dead letter  ┘ the state change itself
//! leader: sequencer ─► staged events get positions in the outbox (after commit)
//! every replica: tail ─► EventLog (recent events in memory, head position, model refresh)
//! leader: EventLog / outbox ─► publisher (one per sink: NATS JetStream, Pulsar) ─► broker
//! every replica: EventLog ─► WatchEvents streams, SSE, durable subscriptions
//! ```
//!
//! Every event gets a *position*: one more than the previous event's, across the
//! whole database, assigned by the leader's sequencer after the event's
//! transaction committed, so positions become visible in order and a consumer
//! never sees a gap that is filled later. Positions are the cursor of every
//! consumer (sinks, subscriptions, live streams), so resuming after a position
//! yields exactly the events that came later, in order, with no gaps or repeats,
//! on whichever replica.
//!
//! - [`build`]: events from history entries.
//! - [`validate`]: the checks an event must pass before it is published.
//! - [`json`]: the protobuf JSON mapping for people and webhooks.
//! - [`filter`]: which events a stream or subscription carries.
//! - [`log`]: recent events in memory and the reader that falls back to the outbox.
//! - [`sequencer`]: the leader's task that gives staged events their positions.
//! - [`tail`]: every replica's task that follows the outbox into its event log
//!   and refreshes its model with other replicas' changes.
//! - [`publisher`]: drains the outbox into one sink, in order, with retries.
//! - [`sink`]: the NATS JetStream and Pulsar sinks.
//! - [`retention`]: deletes delivered events from the outbox.
//! - [`subscriptions`]: named durable subscriptions and their cursors.
//! - [`watch`]: filtered live streams for clients.

pub mod build;
pub mod filter;
pub mod json;
pub mod log;
pub mod publisher;
pub mod retention;
pub mod sequencer;
pub mod sink;
pub mod subscriptions;
pub mod tail;
pub mod validate;
pub mod watch;

use std::time::Instant;

use bytes::Bytes;
use infrawatch_proto::v1 as pb;

/// An event with its position, as kept in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Position in the event sequence (1, 2, 3, ... without gaps).
    pub position: u64,
    /// The event.
    pub event: pb::InfrastructureStatusUpdatedEvent,
    /// Its protobuf encoding, as published.
    pub payload: Bytes,
    /// When this process committed it; `None` for events read back from the
    /// database. Publish latency is measured from here.
    pub committed_at: Option<Instant>,
}

impl StoredEvent {
    /// An event from its encoding, which it keeps as its payload.
    pub fn decode(
        position: u64,
        payload: Bytes,
        committed_at: Option<Instant>,
    ) -> Result<Self, prost::DecodeError> {
        let event = <pb::InfrastructureStatusUpdatedEvent as prost::Message>::decode(&*payload)?;
        Ok(Self {
            position,
            event,
            payload,
            committed_at,
        })
    }

    /// Wraps an event, encoding it once.
    pub fn new(
        position: u64,
        event: pb::InfrastructureStatusUpdatedEvent,
        committed_at: Option<Instant>,
    ) -> Self {
        let payload = Bytes::from(prost::Message::encode_to_vec(&event));
        Self {
            position,
            event,
            payload,
            committed_at,
        }
    }
}

/// Names of the event metrics.
pub mod metric {
    /// Counter: events written to the outbox.
    pub const EMITTED: &str = "infrawatch_aggregator_events_emitted_total";
    /// Counter by `reason`: events that failed validation (kept as dead letters).
    pub const INVALID: &str = "infrawatch_aggregator_events_invalid_total";
    /// Counter by `sink`: events the broker acknowledged.
    pub const PUBLISHED: &str = "infrawatch_aggregator_events_published_total";
    /// Counter by `sink`: failed publish attempts.
    pub const PUBLISH_ERRORS: &str = "infrawatch_aggregator_events_publish_errors_total";
    /// Gauge by `sink`: events committed but not yet acknowledged by the broker.
    pub const LAG_EVENTS: &str = "infrawatch_aggregator_events_lag_events";
    /// Gauge by `sink`: age of the oldest event not yet acknowledged by the broker.
    pub const LAG_SECONDS: &str = "infrawatch_aggregator_events_lag_seconds";
    /// Histogram by `sink`: seconds from the commit of a change to the broker's ack.
    pub const PUBLISH_LATENCY: &str = "infrawatch_aggregator_events_publish_latency_seconds";
    /// Gauge: open WatchEvents / SSE streams.
    pub const WATCHERS: &str = "infrawatch_aggregator_events_watchers";
    /// Gauge: position of the newest event.
    pub const HEAD: &str = "infrawatch_aggregator_events_head_position";
}
