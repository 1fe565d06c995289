//! The REST listener: its own accept loop around the axum router, so that each
//! connection has a deadline for its request head (a client that trickles
//! headers is closed, not kept), request line and header sizes are answered
//! with the JSON error, and shutdown waits for open requests a little while.
//!
//! Limits: a request head must arrive within `rest.header_read_timeout_ms`
//! (default [`HEADER_READ_TIMEOUT_MS`]; the same bound closes a keep-alive
//! connection idle that long, quietly); a URI
//! longer than [`MAX_URI_BYTES`] is answered 414, headers larger than
//! [`MAX_HEADER_BYTES`] together 431, a body over [`MAX_BODY_BYTES`] 413, all
//! with `{"error": {...}}`. Heads past hyper's own buffer ([`READ_BUFFER_BYTES`])
//! get hyper's bare 431.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::rest::error;
use crate::auth::{Refusal, refused};

/// How long a client has to send a request's head (request line and headers),
/// by default.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Longest request URI (path and query).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request headers, names and values together.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest request body (the JSON bodies of subscription requests).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// hyper's read buffer per connection: heads beyond it are refused by hyper.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// How long shutdown waits for open requests (live streams end at once).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown`; a connection that has not
/// sent a request head within `header_read_timeout` is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn(check_sizes));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(READ_BUFFER_BYTES);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "Cannot accept a REST connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // Requests served on this connection: a keep-alive connection that
        // idles past the deadline after serving some is closed quietly; one
        // that never sent a whole head is refused and counted.
        let served = Arc::new(AtomicU64::new(0));
        let inner = TowerToHyperService::new(router.clone());
        let counting = served.clone();
        let service = hyper::service::service_fn(move |request| {
            counting.fetch_add(1, Ordering::Relaxed);
            hyper::service::Service::call(&inner, request)
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                let timed_out = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout);
                if timed_out && served.load(Ordering::Relaxed) > 0 {
                    tracing::debug!(%peer, "Idle REST connection closed.");
                } else if timed_out {
                    refused(
                        Refusal::HeaderTimeout,
                        &peer.to_string(),
                        "no request head in time (rest.header_read_timeout_ms); connection closed",
                    );
                } else {
                    tracing::debug!(%peer, error = %e, "REST connection ended with an error.");
                }
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::info!("REST requests still open at shutdown were cut off.");
        }
    }
    Ok(())
}

/// Answers oversized URIs (414), headers (431) and declared bodies (413) with
/// the JSON error before any handler runs.
async fn check_sizes(request: Request, next: Next) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return error(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            &format!("the request URI is {uri} bytes, the most accepted is {MAX_URI_BYTES}"),
        );
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            &format!(
                "the request headers are {headers} bytes, the most accepted is {MAX_HEADER_BYTES}"
            ),
        );
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return body_too_large();
    }
    next.run(request).await
}

/// The 413 answer.
pub fn body_too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}
