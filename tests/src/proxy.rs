//! A TCP proxy the tests put between an agent and an aggregator to take the
//! network away and give it back (the aggregator keeps running), or to add delay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy on a fixed loopback port.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    target: SocketAddr,
    /// Bumped on every cut; connections end when it changes.
    generation: watch::Sender<u64>,
    delay_ms: Arc<AtomicU64>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    /// Forwards a new loopback port to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target).await
    }

    /// Forwards `listen` (port 0: a free one) to `target`; for a proxy on the
    /// root-namespace end of a test's veth pair.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let mut p = Self {
            addr,
            target,
            generation: watch::channel(0).0,
            delay_ms: Arc::new(AtomicU64::new(0)),
            accept: None,
        };
        p.accept = Some(p.spawn_accept(listener));
        Ok(p)
    }

    /// `https://` URL of the proxy.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Delays every chunk of data in both directions by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Closes every connection and refuses new ones (the port is closed).
    pub fn cut(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again on the same port.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        if self.accept.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.accept = Some(self.spawn_accept(listener));
        }
        Ok(())
    }

    fn spawn_accept(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let target = self.target;
        let generation = self.generation.subscribe();
        let delay = self.delay_ms.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (r, w) in [(cr, sw), (sr, cw)] {
                    let mut generation = generation.clone();
                    let delay = delay.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = generation.changed() => {}
                            _ = pipe(r, w, delay) => {}
                        }
                    });
                }
            }
        })
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn pipe(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let d = delay.load(Ordering::Relaxed);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}
