//! The ingest path: decode and check batches ([`decode`]), then apply them through
//! the single [`writer`] task, which plans the state changes, commits them to the
//! database in one transaction per group of batches, updates the in-memory model and
//! only then acknowledges.

pub mod cardinality;
pub mod decode;
pub mod writer;

/// Why a batch was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The batch is invalid; resending it cannot help.
    #[error("{0}")]
    Invalid(String),
    /// The agent may not write this resource.
    #[error("{0}")]
    Forbidden(String),
    /// Storage failed; the batch can be resent.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The aggregator is shutting down.
    #[error("aggregator is shutting down; reconnect to another replica")]
    ShuttingDown,
}

impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        match &e {
            IngestError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            IngestError::Forbidden(_) => tonic::Status::permission_denied(e.to_string()),
            IngestError::Unavailable(_) | IngestError::ShuttingDown => {
                tonic::Status::unavailable(e.to_string())
            }
        }
    }
}
