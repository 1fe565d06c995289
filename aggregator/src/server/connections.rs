//! Open gRPC connections per client identity and source address, and the limit on
//! them. An agent needs one connection; a client that opens many more (a loop that
//! never closes, a hostile script) has its extra connections closed right after the
//! TLS handshake, without touching anyone else's. The count is per identity *and*
//! address because agents deployed from one shared certificate (a Kubernetes Secret
//! mounted on every node) present the same identity from different nodes.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::telemetry::WarnEvery;

/// Refusals are logged at most this often (they are all counted).
pub const WARN_EVERY_MS: i64 = 10_000;

/// Connections open per (identity, address).
#[derive(Debug)]
pub struct ConnectionLimiter {
    per_identity: usize,
    open: Mutex<HashMap<(String, IpAddr), usize>>,
    /// A flood of refusals logs once in a while.
    warn: WarnEvery,
}

impl ConnectionLimiter {
    /// A limiter allowing `per_identity` connections per identity and address.
    pub fn new(per_identity: usize) -> Arc<Self> {
        Arc::new(Self {
            per_identity: per_identity.max(1),
            open: Mutex::new(HashMap::new()),
            warn: WarnEvery::new(WARN_EVERY_MS),
        })
    }

    /// Counts a new connection of `identity` from `ip`, or returns `None` when that
    /// would exceed the limit.
    pub fn admit(self: &Arc<Self>, identity: &str, ip: IpAddr) -> Option<ConnectionTicket> {
        let key = (identity.to_string(), ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.per_identity {
            return None;
        }
        *count += 1;
        Some(ConnectionTicket {
            limiter: self.clone(),
            key,
        })
    }

    /// True at most once per [`WARN_EVERY_MS`]: whether to log this refusal.
    pub fn should_warn(&self, now_ms: i64) -> bool {
        self.warn.should_warn(now_ms)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.per_identity
    }

    /// Connections open for `identity` from `ip`.
    pub fn open(&self, identity: &str, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&(identity.to_string(), ip)).copied().unwrap_or(0)
    }
}

/// One counted connection; dropping it (the connection closed) frees its place.
#[derive(Debug)]
pub struct ConnectionTicket {
    limiter: Arc<ConnectionLimiter>,
    key: (String, IpAddr),
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A connection that holds its ticket for as long as it is open.
pub struct Counted<S> {
    inner: S,
    _ticket: ConnectionTicket,
}

impl<S> Counted<S> {
    /// Wraps `inner`, keeping `ticket` until it is dropped.
    pub fn new(inner: S, ticket: ConnectionTicket) -> Self {
        Self {
            inner,
            _ticket: ticket,
        }
    }
}

impl<S: Connected> Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_per_identity_and_address_and_closing_frees_a_place() {
        let limiter = ConnectionLimiter::new(2);
        let here: IpAddr = [10, 0, 0, 1].into();
        let there: IpAddr = [10, 0, 0, 2].into();
        let a = limiter.admit("agent", here);
        let b = limiter.admit("agent", here);
        assert!(a.is_some() && b.is_some());
        assert!(limiter.admit("agent", here).is_none());
        // The same identity from another node, and another identity, are separate.
        assert!(limiter.admit("agent", there).is_some());
        let other = limiter.admit("other", here);
        assert!(other.is_some());
        drop(a);
        assert_eq!(limiter.open("agent", here), 1);
        assert!(limiter.admit("agent", here).is_some());
        drop(b);
        drop(other);
        assert_eq!(limiter.open("other", here), 0);
    }
}
