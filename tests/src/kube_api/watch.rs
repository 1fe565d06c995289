//! Watch streams: newline-delimited JSON events for every change after the
//! requested resourceVersion, fed from the store's history.
//!
//! Without a version (or "0") the stream starts with an `ADDED` event per
//! current object, as the API server's "most recent" watch does. Changes are
//! filtered by the request's selectors, an object entering or leaving the
//! selection arriving as `ADDED` or `DELETED`. With `allowWatchBookmarks`, a
//! `BOOKMARK` carrying the newest version follows every second of quiet and
//! comes right before the stream ends at its `timeoutSeconds` or at
//! [`super::FakeKube::close_watches`]. A version older than the last
//! compaction (requested, or reached by an open stream that the compaction
//! overtook) gets an `ERROR` event with a 410 `Expired` status, and the end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::query::{Filter, Shape};
use super::shared::Shared;
use super::status;
use super::store::{Change, ChangeKind, Expired, ResourceType};

/// How long a stream stays quiet before a bookmark.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// A watch to serve.
pub(crate) struct WatchRequest {
    pub(crate) ty: ResourceType,
    pub(crate) filter: Filter,
    pub(crate) shape: Shape,
    /// Events after this version; `None`: the current objects first.
    pub(crate) from: Option<u64>,
    /// Send the current objects first even though `from` is set.
    pub(crate) initial_events: bool,
    /// Mark the end of the initial events with a bookmark
    /// (`sendInitialEvents=true`).
    pub(crate) mark_initial_end: bool,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Option<Duration>,
}

/// Starts streaming `req`; the events arrive as lines on the receiver, which
/// ends with the stream.
pub(crate) fn start(shared: Arc<Shared>, req: WatchRequest) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        // An error only means the client went away.
        let _ = Stream { shared, req, tx }.run().await;
    });
    rx
}

/// The client closed the connection.
struct Gone;

struct Stream {
    shared: Arc<Shared>,
    req: WatchRequest,
    tx: mpsc::Sender<Bytes>,
}

impl Stream {
    async fn run(self) -> Result<(), Gone> {
        // Subscribed before the store is read, so no change goes unnoticed.
        let mut changes = self.shared.changes.subscribe();
        let mut closes = self.shared.closes.subscribe();
        let ty = self.req.ty.key();
        let start = {
            let store = self.shared.store();
            match self.req.from {
                Some(rv) => store.check(rv).map(|()| rv),
                None => Ok(store.current()),
            }
            .map(|from| {
                if self.req.from.is_some() && !self.req.initial_events {
                    return (from, Vec::new());
                }
                let initial: Vec<Value> = store
                    .objects(&ty)
                    .map(|(_, o)| o)
                    .filter(|o| self.req.filter.matches(o))
                    .cloned()
                    .collect();
                (store.current(), initial)
            })
        };
        let (mut cursor, initial) = match start {
            Ok(s) => s,
            Err(e) => return self.expired(e).await,
        };
        for object in &initial {
            self.event("ADDED", object).await?;
        }
        if self.req.mark_initial_end && self.req.bookmarks {
            self.bookmark(cursor, true).await?;
        }
        let deadline = self.req.timeout.map(|t| Instant::now() + t);
        let mut quiet = Instant::now() + BOOKMARK_INTERVAL;
        loop {
            match self.drain(cursor).await? {
                Drained::To(rv, sent) => {
                    cursor = rv;
                    if sent {
                        quiet = Instant::now() + BOOKMARK_INTERVAL;
                    }
                }
                Drained::Expired => return Ok(()),
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = closes.changed() => return self.finish(cursor).await,
                () = tokio::time::sleep_until(quiet), if self.req.bookmarks => {
                    self.bookmark(cursor, false).await?;
                    quiet = Instant::now() + BOOKMARK_INTERVAL;
                }
                () = sleep_until(deadline) => return self.finish(cursor).await,
                () = self.tx.closed() => return Err(Gone),
            }
        }
    }

    /// Sends the changes after `cursor`.
    async fn drain(&self, cursor: u64) -> Result<Drained, Gone> {
        let drained = self
            .shared
            .store()
            .changes_after(&self.req.ty.key(), cursor);
        let (changes, newest) = match drained {
            Ok(d) => d,
            Err(e) => {
                self.expired(e).await?;
                return Ok(Drained::Expired);
            }
        };
        let mut sent = false;
        for change in &changes {
            if let Some(kind) = self.event_kind(change) {
                self.event(kind, &change.object).await?;
                sent = true;
            }
        }
        Ok(Drained::To(newest.max(cursor), sent))
    }

    /// The event `change` is for this stream's selection, if any.
    fn event_kind(&self, change: &Change) -> Option<&'static str> {
        let now = self.req.filter.matches(&change.object);
        let before = change
            .previous
            .as_ref()
            .is_some_and(|p| self.req.filter.matches(p));
        match (change.kind, before, now) {
            (ChangeKind::Added, _, true) | (ChangeKind::Modified, false, true) => Some("ADDED"),
            (ChangeKind::Modified, true, true) => Some("MODIFIED"),
            (ChangeKind::Modified, true, false) | (ChangeKind::Deleted, true, _) => Some("DELETED"),
            _ => None,
        }
    }

    /// Ends the stream: the last changes, and a bookmark if allowed.
    async fn finish(&self, cursor: u64) -> Result<(), Gone> {
        if let Drained::To(rv, _) = self.drain(cursor).await?
            && self.req.bookmarks
        {
            self.bookmark(rv, false).await?;
        }
        Ok(())
    }

    async fn event(&self, kind: &str, object: &Value) -> Result<(), Gone> {
        self.send(json!({"type": kind, "object": self.req.shape.object(object)}))
            .await
    }

    async fn bookmark(&self, rv: u64, initial_end: bool) -> Result<(), Gone> {
        let (api_version, kind) = self.req.shape.type_meta(&self.req.ty);
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send(json!({
            "type": "BOOKMARK",
            "object": {"apiVersion": api_version, "kind": kind, "metadata": metadata},
        }))
        .await
    }

    async fn expired(&self, e: Expired) -> Result<(), Gone> {
        self.send(json!({"type": "ERROR", "object": status::expired(e.requested, e.oldest)}))
            .await
    }

    async fn send(&self, event: Value) -> Result<(), Gone> {
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        self.tx.send(Bytes::from(line)).await.map_err(|_| Gone)
    }
}

/// How far a drain got.
enum Drained {
    /// Up to this version; whether any event was sent.
    To(u64, bool),
    /// The stream's version was compacted away; the client has been told.
    Expired,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
