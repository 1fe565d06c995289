//! A minimal asynchronous HTTP/1.1 GET on loopback, for the REST polls and the
//! `/metrics` scrapes (one connection per request; chunked bodies understood).
//! The harness's [`crate::http_get`] does the same with blocking sockets, which
//! would hold a worker thread of the load generator's small runtime.

use std::net::SocketAddr;
use std::time::Duration;

use crate::dechunk;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, writing or reading failed.
    #[error("request failed")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not HTTP.
    #[error("not an HTTP response")]
    Malformed,
}

/// GET `path` from `addr`: status and body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    tokio::time::timeout(timeout, get_inner(addr, path))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn get_inner(addr: SocketAddr, path: &str) -> Result<(u16, String), HttpError> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::with_capacity(4096);
    s.read_to_end(&mut raw).await?;
    parse(&raw)
}

/// Status and body of a complete response.
fn parse(raw: &[u8]) -> Result<(u16, String), HttpError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(HttpError::Malformed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(HttpError::Malformed)?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse(plain).unwrap(), (200, "ok".into()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap(), (404, "abcde".into()));
        assert!(parse(b"garbage").is_err());
    }
}
