//! State shared by the test's handle and every connection of one fake API
//! server: the store, the signals that wake and end watches, the bearer token,
//! the page size cap, request counters and injected failures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::store::Store;

/// Page size cap of lists until a test sets another.
pub(crate) const DEFAULT_PAGE_LIMIT: usize = 500;

/// Everything a request handler needs.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The token requests must carry (`Authorization: Bearer <token>`).
    pub(crate) token: String,
    /// The newest resourceVersion, sent after every change (and compaction)
    /// to wake the watches.
    pub(crate) changes: watch::Sender<u64>,
    /// Bumped to end every open watch.
    pub(crate) closes: watch::Sender<u64>,
    page_limit: AtomicUsize,
    requests: Mutex<HashMap<(String, String), u64>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Shared {
    /// Empty state requiring `token`.
    pub(crate) fn new(store: Store, token: String) -> Self {
        let rv = store.current();
        Self {
            store: Mutex::new(store),
            token,
            changes: watch::Sender::new(rv),
            closes: watch::Sender::new(0),
            page_limit: AtomicUsize::new(DEFAULT_PAGE_LIMIT),
            requests: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The store, locked. Handlers hold it only while they copy what they
    /// answer with, never across an await.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Runs `change` on the store and wakes the watches.
    pub(crate) fn change<T>(&self, change: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.store();
        let out = change(&mut store);
        // Sent while the store is still locked, so that the versions the
        // watches see only ever go up.
        self.changes.send_replace(store.current());
        out
    }

    /// The page size cap.
    pub(crate) fn page_limit(&self) -> usize {
        self.page_limit.load(Ordering::Relaxed)
    }

    /// Sets the page size cap (at least 1).
    pub(crate) fn set_page_limit(&self, n: usize) {
        self.page_limit.store(n.max(1), Ordering::Relaxed);
    }

    /// Counts a request.
    pub(crate) fn count(&self, plural: &str, verb: &str) {
        *lock(&self.requests)
            .entry((plural.to_string(), verb.to_string()))
            .or_default() += 1;
    }

    /// Requests counted for `plural` and `verb`.
    pub(crate) fn requests(&self, plural: &str, verb: &str) -> u64 {
        lock(&self.requests)
            .get(&(plural.to_string(), verb.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Makes the next `n` requests for `plural` fail.
    pub(crate) fn fail_next(&self, plural: &str, n: u32) {
        lock(&self.failures).insert(plural.to_string(), n);
    }

    /// True (and one failure used up) if this request for `plural` must fail.
    pub(crate) fn take_failure(&self, plural: &str) -> bool {
        let mut failures = lock(&self.failures);
        match failures.get_mut(plural) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Locks `m`, also after a panic elsewhere left it poisoned (the data stays
/// consistent: every critical section is a plain update).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
