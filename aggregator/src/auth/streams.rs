//! Caps on open event streams (gRPC `WatchEvents` and REST server-sent events):
//! per client (certificate identity or token) and in total, so one client
//! cannot hold every slot or every event-log reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Principal, Refusal, refused};

/// The caps and the streams open now.
#[derive(Debug)]
pub struct StreamCaps {
    per_client: usize,
    total: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<String, usize>,
}

/// One open stream; closing it (dropping the ticket) frees its place.
#[derive(Debug)]
pub struct StreamTicket {
    caps: Arc<StreamCaps>,
    client: String,
}

impl StreamCaps {
    /// At most `per_client` streams per client and `total` in all.
    pub fn new(per_client: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_client: per_client.max(1),
            total: total.max(1),
            open: Mutex::new(Open::default()),
        })
    }

    /// A place for a stream of `who`, or why not (counted as `stream_cap`).
    pub fn admit(self: &Arc<Self>, who: &Principal) -> Result<StreamTicket, String> {
        let client = who.owner_key();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.by_client.get(&client).copied().unwrap_or(0);
        let refusal = if mine >= self.per_client {
            Some(format!(
                "{client} already has {mine} event streams open, the most one client may (events.max_streams_per_client = {})",
                self.per_client
            ))
        } else if open.total >= self.total {
            Some(format!(
                "the aggregator already serves {} event streams, its most (events.max_streams = {})",
                open.total, self.total
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            drop(open);
            refused(Refusal::StreamCap, &client, &message);
            return Err(message);
        }
        open.total += 1;
        *open.by_client.entry(client.clone()).or_default() += 1;
        Ok(StreamTicket {
            caps: self.clone(),
            client,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        let mut open = self
            .caps
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Credential;
    use infrawatch_common::role::Role;

    fn reader(name: &str) -> Principal {
        Principal {
            name: name.into(),
            role: Role::Reader,
            credential: Credential::Token,
            scope: None,
        }
    }

    #[test]
    fn caps_hold_per_client_and_in_total_and_closing_frees_a_place() {
        let caps = StreamCaps::new(2, 3);
        let a1 = caps.admit(&reader("a")).unwrap();
        let _a2 = caps.admit(&reader("a")).unwrap();
        let err = caps.admit(&reader("a")).unwrap_err();
        assert!(err.contains("max_streams_per_client = 2"), "{err}");
        let _b1 = caps.admit(&reader("b")).unwrap();
        let err = caps.admit(&reader("c")).unwrap_err();
        assert!(err.contains("max_streams = 3"), "{err}");
        drop(a1);
        assert_eq!(caps.open(), 2);
        assert!(caps.admit(&reader("c")).is_ok());
    }
}
