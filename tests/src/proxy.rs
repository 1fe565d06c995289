//! A TCP proxy the tests put between an agent and an aggregator to take the
//! network away and give it back (the aggregator keeps running), or to add delay.
//!
//! Either end may sit in a network namespace of a test's own
//! ([`crate::netns::Netns`]): the listening socket is created inside one namespace
//! and the outgoing ones inside another (or both in the root namespace), so a
//! proxy is also how a test reaches into a namespace that has no route to the
//! root namespace at all.
//!
//! Each proxy runs on a small runtime of its own, so traffic keeps flowing while
//! a test body blocks the runtime it runs on (`eventually`, `thread::sleep`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::netns::in_namespace;

/// A running proxy.
pub struct TcpProxy {
    /// Where clients connect (inside `listen_ns` when that is set).
    pub addr: SocketAddr,
    /// The namespace the listening socket belongs to (`None`: the root one).
    listen_ns: Option<String>,
    /// Where connections go, and from which namespace they are made.
    target: Target,
    /// Bumped on every cut; connections end when it changes.
    generation: watch::Sender<u64>,
    delay_ms: Arc<AtomicU64>,
    /// Runs the accept loop and the pipes; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

/// The far end of a proxy: an address, reached from a namespace of its own or
/// from the root namespace.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    ns: Option<String>,
}

impl Target {
    async fn connect(&self) -> anyhow::Result<TcpStream> {
        let ipv4 = self.addr.is_ipv4();
        let new_socket = move || {
            if ipv4 {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
        };
        let socket = match &self.ns {
            Some(ns) => in_namespace(ns, new_socket)?,
            None => new_socket()?,
        };
        Ok(socket.connect(self.addr).await?)
    }
}

impl TcpProxy {
    /// Forwards a new loopback port to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<Self> {
        Self::start_in(None, SocketAddr::from(([127, 0, 0, 1], 0)), None, target)
    }

    /// Forwards `listen` (port 0: a free one), bound inside namespace
    /// `listen_ns`, to `target`, connecting from inside namespace `target_ns`
    /// (`None`: the root namespace, for either).
    pub fn start_in(
        listen_ns: Option<&str>,
        listen: SocketAddr,
        target_ns: Option<&str>,
        target: SocketAddr,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tcp-proxy")
            .enable_all()
            .build()
            .context("starting the proxy's runtime")?;
        let mut p = Self {
            addr: listen,
            listen_ns: listen_ns.map(str::to_string),
            target: Target {
                addr: target,
                ns: target_ns.map(str::to_string),
            },
            generation: watch::channel(0).0,
            delay_ms: Arc::new(AtomicU64::new(0)),
            runtime: Some(runtime),
            accept: None,
        };
        let listener = p.bind(listen)?;
        p.addr = listener.local_addr()?;
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
    pub fn restore(&mut self) -> anyhow::Result<()> {
        if self.accept.is_none() {
            let listener = self.bind(self.addr)?;
            self.accept = Some(self.spawn_accept(listener));
        }
        Ok(())
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives until the proxy is dropped")
    }

    /// A listening socket on `addr` inside the proxy's namespace.
    fn bind(&self, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
        let bind = move || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        match &self.listen_ns {
            Some(ns) => in_namespace(ns, bind),
            None => Ok(bind()?),
        }
        .with_context(|| format!("listening on {addr}"))
    }

    fn spawn_accept(&self, listener: std::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let target = self.target.clone();
        let generation = self.generation.subscribe();
        let delay = self.delay_ms.clone();
        self.runtime().spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = target.connect().await else {
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
        // A test drops its proxy inside its own async runtime, where a blocking
        // shutdown is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
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
