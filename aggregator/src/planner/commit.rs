//! Commit policy of the state path: a transaction is retried with backoff while
//! the failure is of the kind that passes (connection lost, database restarting,
//! serialization failure). While it retries nothing else is written, so sources
//! wait and agents keep their batches: a database outage delays data but loses
//! none. A commit whose reply was lost but that did commit is harmless to send
//! again: every version it writes must follow the stored one, so the second
//! attempt fails with a conflict, the writer reads the resources again, and the
//! new plan finds nothing left to change.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::events::StoredEvent;
use crate::store::{Commit, Store, StoreError};

/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Writes `commit`, retrying retryable failures until they pass or `stop` is
/// cancelled (`retry` false: one attempt, for work that is simply done again
/// later, such as the staleness check). Returns the events that got their
/// positions in the transaction ([`Commit::sequence`]).
pub async fn commit_with_retries(
    store: &Store,
    commit: &Commit,
    stop: &CancellationToken,
    retry: bool,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        match store.commit(commit).await {
            Ok(sequenced) => {
                if attempts > 0 {
                    tracing::info!(attempts, "Database write succeeded after retries.");
                }
                return Ok(sequenced);
            }
            Err(e) if retry && e.is_retryable() && !stop.is_cancelled() => {
                if attempts == 0 {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "Database write failed; retrying while sources wait."
                    );
                }
                attempts += 1;
                tokio::select! {
                    _ = stop.cancelled() => return Err(e),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}
