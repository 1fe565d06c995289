//! Runs work only while this replica leads: each task starts when the lease is
//! taken and is cancelled (and awaited) when it is lost, then starts again at
//! the next term with the new lease.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::LeaseHold;

/// Runs `task(lease, stop)` for every term this replica leads, until `stop`.
pub async fn while_leader<F, Fut>(
    mut leader: watch::Receiver<Option<LeaseHold>>,
    stop: CancellationToken,
    name: &'static str,
    task: F,
) where
    F: Fn(LeaseHold, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let lease = leader.borrow_and_update().clone();
        let Some(lease) = lease else {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
        };
        let term = stop.child_token();
        let running = tokio::spawn(task(lease, term.clone()));
        tracing::debug!(task = name, "Leader task started.");
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = leader.changed() => {}
        }
        term.cancel();
        let _ = running.await;
        tracing::debug!(task = name, "Leader task stopped.");
        if stop.is_cancelled() {
            return;
        }
    }
}
