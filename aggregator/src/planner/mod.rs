//! The state path: one planner for every source. A [`Report`] from any source
//! (agents, the staleness check, later Kubernetes and cloud) is planned against
//! the model ([`plan`]: versions, health, history rows, events), committed in one
//! transaction with the outbox and the source's position ([`commit`]), applied to
//! the in-memory model and handed to the event log ([`apply`]). The [`writer`]
//! task does this for groups of reports, one group at a time, so no two changes
//! of a resource race for its version.
//!
//! Sources check a report against the model first ([`plan::Plan`] is cheap and
//! pure): most agent batches change nothing, and only reports that do reach the
//! writer.

pub mod apply;
pub mod commit;
pub mod parts;
pub mod plan;
pub mod writer;

use tokio::sync::{mpsc, oneshot};

use crate::sources::Report;

/// Source recorded for changes the aggregator makes itself.
pub const STALENESS_SOURCE: &str = "aggregator/staleness";

/// Why a report was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The report is invalid; sending it again cannot help.
    #[error("{0}")]
    Invalid(String),
    /// The source may not write this resource.
    #[error("{0}")]
    Forbidden(String),
    /// Storage failed; the report can be sent again.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Another stream (here or on another replica) took over the source with
    /// this key; this stream may not write for it any more.
    #[error("another stream took over agent {0}; this one ends")]
    Fenced(String),
    /// The aggregator is shutting down.
    #[error("aggregator is shutting down; reconnect to another replica")]
    ShuttingDown,
}

impl From<StateError> for tonic::Status {
    fn from(e: StateError) -> Self {
        match &e {
            StateError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            StateError::Forbidden(_) => tonic::Status::permission_denied(e.to_string()),
            StateError::Unavailable(_) | StateError::ShuttingDown => {
                tonic::Status::unavailable(e.to_string())
            }
            StateError::Fenced(_) => tonic::Status::aborted(e.to_string()),
        }
    }
}

/// What a committed report changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// New resource versions.
    pub changes: usize,
}

/// A report waiting for the writer.
#[derive(Debug)]
pub struct Submission {
    /// The report.
    pub report: Report,
    /// Receives the outcome once committed and applied, or why not.
    pub reply: oneshot::Sender<Result<Outcome, StateError>>,
}

/// Where sources submit reports (a bounded queue: a slow database slows the
/// sources instead of growing memory).
#[derive(Debug, Clone)]
pub struct PlannerHandle {
    queue: mpsc::Sender<Submission>,
}

impl PlannerHandle {
    /// A handle feeding `queue`.
    pub fn new(queue: mpsc::Sender<Submission>) -> Self {
        Self { queue }
    }

    /// Submits `report` and waits until it is committed and applied.
    pub async fn submit(&self, report: Report) -> Result<Outcome, StateError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Submission { report, reply })
            .await
            .map_err(|_| StateError::ShuttingDown)?;
        answer.await.map_err(|_| StateError::ShuttingDown)?
    }
}
