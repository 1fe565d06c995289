//! Brokers that events are published to. A sink sends one event at a time and
//! hands back a future for the broker's acknowledgement; the
//! [publisher](super::publisher) decides what is in flight, so ordering and
//! retries are the same for every broker.

pub mod nats;
pub mod pulsar;

use futures::future::BoxFuture;

use super::StoredEvent;

/// A publish that failed; the event stays in the outbox and is sent again.
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// Which sink.
    pub sink: &'static str,
    /// What went wrong, with the broker's words.
    pub message: String,
}

impl SinkError {
    /// An error of `sink` described by `e` and its sources.
    pub fn new(sink: &'static str, e: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            sink,
            message: infrawatch_common::process::error_chain(e),
        }
    }
}

/// Resolves when the broker has acknowledged (stored) the event.
pub type Ack = BoxFuture<'static, Result<(), SinkError>>;

/// A broker connection that events are published to.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Short name, used in metrics and as the cursor name (`sink:<name>`).
    fn name(&self) -> &'static str;

    /// Most events waiting for an acknowledgement at once.
    fn max_in_flight(&self) -> usize;

    /// Longest a send or an acknowledgement may take before it counts as failed
    /// (the publisher enforces it, whatever the client library does).
    fn timeout(&self) -> std::time::Duration;

    /// Starts publishing `event`, connecting first if needed. The message key is the
    /// resource id.
    async fn send(&mut self, event: &StoredEvent) -> Result<Ack, SinkError>;

    /// Pushes out anything the client holds back for batching, so that pending
    /// acknowledgements can arrive. Called before the publisher waits for one.
    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Forgets the connection after a failure, so the next send reconnects.
    async fn reset(&mut self);
}
