//! The agent's local `/metrics` endpoint (Prometheus text format): a minimal HTTP
//! server on loopback by default, so node-local scrapers can watch the agent itself.
//! A bind failure is logged, never fatal.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `GET /metrics` on `addr` until `shutdown`.
pub async fn serve(addr: String, handle: PrometheusHandle, shutdown: CancellationToken) {
    let listener = match addr.parse::<SocketAddr>() {
        Ok(a) => match TcpListener::bind(a).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "Cannot serve local /metrics; continuing without it.");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(%addr, error = %e, "metrics_listen is not an address; local /metrics is off.");
            return;
        }
    };
    tracing::info!(%addr, "Serving local /metrics.");
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                // E.g. out of file descriptors: wait instead of spinning.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let Ok(Ok(Some(head))) =
                tokio::time::timeout(std::time::Duration::from_secs(5), read_head(&mut stream))
                    .await
            else {
                return;
            };
            let request = String::from_utf8_lossy(&head);
            let response = if request.starts_with("GET /metrics ") {
                let body = handle.render();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.write_all(response.as_bytes()),
            )
            .await;
        });
    }
}

/// Largest request head read.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Reads the request up to the blank line that ends its head (a request may arrive
/// in several pieces); `None` when the client closed first or sent too much.
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD_BYTES {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(head))
}
