//! Hand-made gRPC over HTTP/2 and TLS, for the hostile-client tests: requests that
//! no well-behaved client library would send (compressed with an encoding the
//! server never offered, bodies of garbage), and a decompression bomb to put in
//! them.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use infrawatch_common::tls::TlsFiles;
use rustls::pki_types::ServerName;

/// A rustls client configuration presenting the certificate in `files` and
/// offering HTTP/2.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::fs::read(&files.ca)?.as_slice()) {
        roots.add(c?)?;
    }
    let chain = rustls_pemfile::certs(&mut std::fs::read(&files.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(&files.key)?.as_slice())?
        .context("no private key")?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What the server answered to one raw call.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The `grpc-status`, from the headers or the trailers.
    pub status: Option<i32>,
    /// The `grpc-message`.
    pub message: String,
}

/// Calls `path` (e.g. `/infrawatch.v1.AgentService/Report`) on `addr` once, over a
/// new mTLS connection, with `headers` added and `body` as the whole request body,
/// and returns the gRPC status the server answered with.
pub async fn call(
    addr: SocketAddr,
    files: &TlsFiles,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<RawAnswer> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(client_config(files)?)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut client, connection) = h2::client::handshake(tls).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (response, mut send) = client.send_request(request.body(())?, false)?;
    // The server may answer (and reset the stream) before it read the whole body:
    // a refused send is then expected, and the answer says why.
    let _ = send.send_data(body, true);
    let response = response.await?;
    let (parts, mut body) = response.into_parts();
    let mut status = header_i32(&parts.headers, "grpc-status");
    let mut message = header_string(&parts.headers, "grpc-message");
    if status.is_none() {
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        if let Some(trailers) = body.trailers().await? {
            status = header_i32(&trailers, "grpc-status");
            message = header_string(&trailers, "grpc-message");
        }
    }
    driver.abort();
    Ok(RawAnswer { status, message })
}

fn header_i32(headers: &http::HeaderMap, name: &str) -> Option<i32> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

fn header_string(headers: &http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// One gRPC length-prefixed message: the compressed flag, the length, the bytes.
pub fn frame(compressed: bool, payload: &[u8]) -> anyhow::Result<Bytes> {
    let len = u32::try_from(payload.len()).context("message over 4 GiB")?;
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(u8::from(compressed));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(Bytes::from(out))
}

/// A gzip stream that inflates to `members` MiB of zeros: `members` gzip members
/// (RFC 1952 allows any number, one after another) of one compressed MiB each,
/// about 1 KiB apiece. 1,024 members are a 1 MiB message that inflates to 1 GiB.
pub fn gzip_bomb(members: usize) -> anyhow::Result<Vec<u8>> {
    let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    one.write_all(&vec![0u8; 1024 * 1024])?;
    let one = one.finish()?;
    Ok(one.repeat(members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bomb_is_small_and_inflates_a_thousandfold() -> anyhow::Result<()> {
        use std::io::Read;
        let bomb = gzip_bomb(16)?;
        assert!(bomb.len() < 16 * 2048, "{} bytes", bomb.len());
        let mut inflated = Vec::new();
        flate2::read::MultiGzDecoder::new(bomb.as_slice()).read_to_end(&mut inflated)?;
        assert_eq!(inflated.len(), 16 * 1024 * 1024);
        assert!(inflated.iter().all(|b| *b == 0));
        Ok(())
    }

    #[test]
    fn a_frame_carries_its_flag_and_length() -> anyhow::Result<()> {
        let f = frame(true, b"abc")?;
        assert_eq!(&f[..], &[1, 0, 0, 0, 3, b'a', b'b', b'c']);
        Ok(())
    }
}
