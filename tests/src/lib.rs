//! Harness for the end-to-end tests: starts the real `infrawatch-aggregator` and
//! `infrawatch-agent` binaries on loopback with generated certificates, talks to
//! them over REST and gRPC (mTLS), and cleans up on drop.
//!
//! The binaries are taken from the Cargo target directory of this test binary, so
//! build them first (`cargo build --workspace --bins`; the Makefile's `test`
//! target does).

// Test support: a missing binary or port is a broken test set-up, and a panic with
// the reason is the right report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use infrawatch_common::certs::DevPki;
use infrawatch_common::role::Role;
use infrawatch_common::tls::{TlsFiles, TlsMaterial};
use infrawatch_proto::v1::query_service_client::QueryServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

pub mod brokers;
pub mod events;
pub mod fake_kubelet;
pub mod kube_api;
pub mod loadgen;
pub mod netns;
pub mod postgres;
pub mod proxy;
pub mod rawgrpc;

/// Tests that run a fleet of agents or bound a latency take this for their whole
/// run, so that two of them never share the machine's cores: each is sized for the
/// whole machine.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Path of a workspace binary next to this test binary.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test-binary>, or target/<profile>/<tool> for the
    // benchmark binaries of this crate.
    let parent = exe.parent().expect("target profile directory");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("target profile directory")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A free loopback port for a server a test starts, free for TCP and UDP.
///
/// Two properties matter, because the port is released before the server binds
/// it. It is never handed out twice in one test process (the kernel's `bind(0)`
/// can return the same port to two calls in a row, and two servers of one test
/// then collide). And it lies below the kernel's ephemeral range, so no outgoing
/// connection of any process can take it as a source port in between.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (first, end) = test_port_range();
    let span = u32::from(end - first);
    // Processes start at different offsets, so that two test processes rarely
    // probe the same ports.
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + ((offset + n) % span) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{end}");
}

/// Ports for test servers: the 12,000 ports below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), or 20000..32768 when that cannot be read.
fn test_port_range() -> (u16, u16) {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low >= 13_024)
        .unwrap_or(32_768);
    (low - 12_000, low)
}

/// This machine's id (`/etc/machine-id`): agents under test report `host/<it>`.
pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The reason codes of a resource as REST shows it.
pub fn reason_codes(resource: &serde_json::Value) -> Vec<String> {
    resource["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["code"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Certificates for a test: a CA with a server certificate, agent certificates,
/// an admin certificate `cli` and a reader certificate `reader`, and a second,
/// unrelated CA for negative tests.
pub struct Pki {
    /// The trusted PKI.
    pub trusted: DevPki,
    /// An unrelated CA with its own client certificate `intruder`.
    pub foreign: DevPki,
}

impl Pki {
    /// Creates both PKIs under `dir` with the given agent identities.
    pub fn new(dir: &Path, clients: &[&str]) -> anyhow::Result<Self> {
        let trusted = DevPki::new(dir.join("trusted"));
        let ca = trusted.ensure_ca()?;
        trusted.ensure_server(&ca, &[])?;
        for c in clients {
            trusted.ensure_client(&ca, c, Role::Agent)?;
        }
        trusted.ensure_client(&ca, "cli", Role::Admin)?;
        trusted.ensure_client(&ca, "reader", Role::Reader)?;
        let foreign = DevPki::new(dir.join("foreign"));
        let fca = foreign.ensure_ca()?;
        foreign.ensure_client(&fca, "intruder", Role::Admin)?;
        Ok(Self { trusted, foreign })
    }

    /// TLS files of client `name` of the trusted CA.
    pub fn client(&self, name: &str) -> TlsFiles {
        self.trusted.tls_files(name)
    }

    /// The aggregator's certificate and key, with the CA of its clients.
    pub fn server(&self) -> TlsFiles {
        self.trusted.tls_files("server")
    }

    /// A client certificate from the foreign CA, trusting the real server CA.
    pub fn intruder(&self) -> TlsFiles {
        TlsFiles {
            ca: self.trusted.ca_cert(),
            cert: self.foreign.cert("intruder"),
            key: self.foreign.key("intruder"),
        }
    }
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A running child process, stopped on drop.
pub struct Process {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Process {
    /// Starts `bin` with `args`, its output going to `log`.
    pub fn spawn(bin: &Path, args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("RUST_LOG", "info")
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child, log })
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        self.wait(Duration::from_secs(20))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, s: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), s);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                self.kill();
                bail!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// How often aggregators under test flush samples (so batches become durable,
/// and agents' buffers drain, within a fraction of a second).
pub const TEST_FLUSH_INTERVAL_MS: u64 = 200;

/// An aggregator under test.
pub struct Aggregator {
    /// The process.
    pub process: Process,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// REST address.
    pub rest: SocketAddr,
    /// Its configuration file.
    pub config: PathBuf,
}

impl Aggregator {
    /// Writes a configuration under `dir` and starts the aggregator on free ports.
    /// `extra` is TOML appended to the file; `[grpc]`, `[rest]` and `[ingest]`
    /// sections in it are merged into the ones the harness writes.
    pub fn start(dir: &Path, pki: &Pki, storage_url: &str, extra: &str) -> anyhow::Result<Self> {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let rest = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join(format!("aggregator-{}.toml", grpc.port()));
        let (grpc_extra, extra) = split_section(extra, "[grpc]");
        let (rest_extra, extra) = split_section(&extra, "[rest]");
        let (mut ingest_extra, extra) = split_section(&extra, "[ingest]");
        let (mut rules_extra, extra) = split_section(&extra, "[rules]");
        // Tests wait for durable acknowledgements: flush often unless told otherwise.
        if !ingest_extra.contains("flush_interval_ms") {
            ingest_extra.push_str(&format!("flush_interval_ms = {TEST_FLUSH_INTERVAL_MS}\n"));
        }
        // How long ago the machine booted is not a test's business (a fresh CI
        // machine runs its tests in the reboot rule's first ten minutes).
        if !rules_extra.contains("disabled") {
            rules_extra.push_str("disabled = [\"host_rebooted\"]\n");
        }
        std::fs::write(
            &config,
            format!(
                "[grpc]\nlisten = \"{grpc}\"\n{grpc_extra}[grpc.tls]\nca = {}\ncert = {}\nkey = {}\n\
                 [rest]\nlisten = \"{rest}\"\n{rest_extra}[storage]\nurl = {:?}\n[ingest]\n{ingest_extra}\
                 [rules]\n{rules_extra}{extra}\n",
                toml_path(&pki.trusted.ca_cert()),
                toml_path(&pki.trusted.cert("server")),
                toml_path(&pki.trusted.key("server")),
                storage_url,
            ),
        )?;
        Self::start_with_config(dir, config, grpc, rest)
    }

    /// Starts an aggregator on a SQLite database `dir/iw.db`.
    pub fn start_sqlite(dir: &Path, pki: &Pki, extra: &str) -> anyhow::Result<Self> {
        let url = format!("sqlite://{}", dir.join("iw.db").display());
        Self::start(dir, pki, &url, extra)
    }

    /// Starts again with the same configuration (same ports and database).
    pub fn restart(self, dir: &Path) -> anyhow::Result<Self> {
        let Self {
            mut process,
            grpc,
            rest,
            config,
        } = self;
        process.stop()?;
        Self::start_with_config(dir, config, grpc, rest)
    }

    fn start_with_config(
        dir: &Path,
        config: PathBuf,
        grpc: SocketAddr,
        rest: SocketAddr,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("aggregator-{}-{}.log", grpc.port(), unique()));
        let process = Process::spawn(
            &binary("infrawatch-aggregator"),
            &["--config", &config.display().to_string()],
            log,
        )?;
        let mut a = Self {
            process,
            grpc,
            rest,
            config,
        };
        let start = Instant::now();
        while !http_get(a.rest, "/readyz").is_ok_and(|r| r.0 == 200) {
            if !a.process.is_running() || start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "aggregator did not become ready; log:\n{}",
                    a.process.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(a)
    }

    /// The gRPC endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// GET on the REST API, parsed as JSON.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_get(self.rest, path).unwrap_or((0, String::new()));
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// GET returning the raw body.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        http_get(self.rest, path).unwrap_or((0, String::new()))
    }
}

/// Splits the body of section `header` (up to the next header) out of `toml`:
/// (that body, the rest).
fn split_section(toml: &str, header: &str) -> (String, String) {
    let (mut body, mut rest) = (String::new(), String::new());
    let mut inside = false;
    for line in toml.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == header;
            if inside {
                continue;
            }
        }
        let target = if inside { &mut body } else { &mut rest };
        target.push_str(line);
        target.push('\n');
    }
    (body, rest)
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// An agent under test.
pub struct Agent {
    /// The process.
    pub process: Process,
    /// Its local `/metrics` address (in the root namespace).
    pub metrics: SocketAddr,
    /// For an agent in a network namespace: the proxy that makes its `/metrics`
    /// reachable at [`Agent::metrics`].
    pub(crate) _metrics_proxy: Option<proxy::TcpProxy>,
}

impl Agent {
    /// True once every batch the agent collected before `since_ms` (Unix ms) is
    /// durably acknowledged: the newest durable batch holds a sample taken at
    /// `since_ms` or later, and acknowledgements are cumulative. (An empty
    /// buffer is a poor sign of "caught up" when batches come about as often as
    /// the aggregator flushes: it may never be seen empty.)
    pub fn acknowledged_before(&self, since_ms: i64) -> bool {
        let Ok((200, text)) = http_get(self.metrics, "/metrics") else {
            return false;
        };
        text.lines()
            .find_map(|l| {
                l.strip_prefix("infrawatch_agent_buffer_durable_through_timestamp_seconds ")?
                    .parse::<f64>()
                    .ok()
            })
            .is_some_and(|s| (s * 1000.0).round() as i64 >= since_ms)
    }

    /// Starts an agent with identity `name` streaming to `endpoints`, every
    /// collector running every `interval_ms`, keeping state in `dir/<name>-state`.
    pub fn start(
        dir: &Path,
        pki: &Pki,
        name: &str,
        endpoints: &[String],
        interval_ms: u64,
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, pki, name, endpoints, interval_ms, "")
    }

    /// Like [`Agent::start`], with more TOML appended to the configuration.
    pub fn start_with(
        dir: &Path,
        pki: &Pki,
        name: &str,
        endpoints: &[String],
        interval_ms: u64,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = Self::write_config(dir, pki, name, endpoints, interval_ms, extra, metrics)?;
        let log = dir.join(format!("agent-{name}-{}.log", unique()));
        let process = Process::spawn(
            &binary("infrawatch-agent"),
            &["--config", &config.display().to_string()],
            log,
        )?;
        Ok(Self {
            process,
            metrics,
            _metrics_proxy: None,
        })
    }

    /// Writes the configuration [`Agent::start_with`] starts the agent with, its
    /// `/metrics` on `metrics`, and returns its path (also used by
    /// [`netns::Netns::start_agent`]).
    pub(crate) fn write_config(
        dir: &Path,
        pki: &Pki,
        name: &str,
        endpoints: &[String],
        interval_ms: u64,
        extra: &str,
        metrics: SocketAddr,
    ) -> anyhow::Result<PathBuf> {
        let config = dir.join(format!("agent-{name}.toml"));
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        let schedules: String = [
            "host",
            "disk",
            "filesystem",
            "network",
            "pressure",
            "kernel",
            "agent",
        ]
        .iter()
        .map(|c| {
            format!(
                "[collectors.{c}]\ninterval_ms = {interval_ms}\ndeadline_ms = {}\n",
                interval_ms / 2
            )
        })
        .collect();
        std::fs::write(
            &config,
            format!(
                "state_dir = {}\nmetrics_listen = \"{metrics}\"\n[aggregator]\nendpoints = [{}]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n\
                 [aggregator.tls]\nca = {}\ncert = {}\nkey = {}\n\
                 [batch]\nflush_interval_ms = 200\n{schedules}{extra}\n",
                toml_path(&dir.join(format!("{name}-state"))),
                endpoints.join(", "),
                toml_path(&pki.trusted.ca_cert()),
                toml_path(&pki.trusted.cert(name)),
                toml_path(&pki.trusted.key(name)),
            ),
        )?;
        Ok(config)
    }
}

/// Minimal HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None)
}

/// Sends one HTTP/1.1 request with an optional JSON body; returns status and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    http_request_with(addr, method, path, &[], json_body)
}

/// [`http_request`] with extra header lines (`Name: value`).
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    json_body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    match json_body {
        Some(body) => write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?,
        None => write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
        )?,
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a `Transfer-Encoding: chunked` response, joined.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A gRPC channel to `endpoint` with the client certificate in `files`.
pub async fn channel(endpoint: &str, files: &TlsFiles) -> anyhow::Result<Channel> {
    let tls = TlsMaterial::load(files)?;
    Ok(Endpoint::from_shared(endpoint.to_string())?
        .tls_config(tls.client_config("localhost"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// A query client authenticated as `cli`.
pub async fn query_client(
    endpoint: &str,
    pki: &Pki,
) -> anyhow::Result<QueryServiceClient<Channel>> {
    Ok(QueryServiceClient::new(
        channel(endpoint, &pki.client("cli")).await?,
    ))
}

/// The machine a test agent's certificate reports for: its identity without
/// the `agent-` prefix (`agent-x` → `x`).
pub fn machine_of(files: &TlsFiles) -> anyhow::Result<String> {
    let pem = std::fs::read(&files.cert)?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} holds no certificate", files.cert.display()))??;
    let name = infrawatch_common::tls::identity_from_der(der.as_ref())?;
    Ok(name.strip_prefix("agent-").unwrap_or(&name).to_string())
}

/// A hand-driven agent stream, for sending exactly the batches a test needs.
pub struct RawStream {
    tx: tokio::sync::mpsc::Sender<infrawatch_proto::v1::AgentMessage>,
    inbound: tonic::Streaming<infrawatch_proto::v1::AggregatorMessage>,
}

impl RawStream {
    /// Opens a stream with the client certificate in `files` and sends `Hello`
    /// saying that the highest sequence assigned so far is `last_seq`, for the
    /// machine [`machine_of`] names after the certificate (`agent-x` reports
    /// for machine `x`: `host/x`, `probe/x/...`).
    pub async fn open(
        endpoint: &str,
        files: &TlsFiles,
        last_seq: u64,
    ) -> anyhow::Result<Result<Self, tonic::Status>> {
        let machine = machine_of(files)?;
        Self::open_as(endpoint, files, last_seq, Some(&machine)).await
    }

    /// Like [`RawStream::open`], announcing `machine_id` in `Hello` (none: a
    /// Hello without one, which the aggregator refuses).
    pub async fn open_as(
        endpoint: &str,
        files: &TlsFiles,
        last_seq: u64,
        machine_id: Option<&str>,
    ) -> anyhow::Result<Result<Self, tonic::Status>> {
        use infrawatch_proto::v1::agent_message::Body;
        use infrawatch_proto::v1::agent_service_client::AgentServiceClient;
        let channel = channel(endpoint, files).await?;
        let mut client =
            AgentServiceClient::new(channel).max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(infrawatch_proto::v1::AgentMessage {
            body: Some(Body::Hello(infrawatch_proto::v1::Hello {
                agent_name: "raw".into(),
                last_seq,
                host: machine_id.map(|m| infrawatch_proto::v1::HostIdentity {
                    machine_id: m.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        })
        .await?;
        Ok(client
            .report(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| Self {
                tx,
                inbound: r.into_inner(),
            }))
    }

    /// Sends a batch.
    pub async fn send(&self, batch: infrawatch_proto::v1::Batch) -> anyhow::Result<()> {
        use infrawatch_proto::v1::agent_message::Body;
        self.tx
            .send(infrawatch_proto::v1::AgentMessage {
                body: Some(Body::Batch(batch)),
            })
            .await
            .map_err(|_| anyhow::anyhow!("stream closed"))
    }

    /// The next message of the aggregator (an ack, a `Drain`), `Ok(None)` when
    /// the stream ended, or the status that ended it. Waits as long as it takes:
    /// callers bound it with their own timeout.
    pub async fn next_message(
        &mut self,
    ) -> Result<Option<infrawatch_proto::v1::AggregatorMessage>, tonic::Status> {
        self.inbound.message().await
    }

    /// The next acknowledgement, or the status that ended the stream.
    pub async fn next_ack(&mut self) -> Result<infrawatch_proto::v1::Ack, tonic::Status> {
        use infrawatch_proto::v1::aggregator_message::Body;
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.inbound.message()).await {
                Err(_) => return Err(tonic::Status::deadline_exceeded("no answer within 20 s")),
                Ok(Ok(Some(m))) => {
                    if let Some(Body::Ack(a)) = m.body {
                        return Ok(a);
                    }
                }
                Ok(Ok(None)) => return Err(tonic::Status::cancelled("stream ended")),
                Ok(Err(s)) => return Err(s),
            }
        }
    }
}

/// A batch describing host `resource_id` with one sample of `metric`.
pub fn batch(
    seq: u64,
    resource_id: &str,
    metric: &str,
    value: f64,
    ts_ms: i64,
) -> infrawatch_proto::v1::Batch {
    use infrawatch_proto::v1::{Batch, ResourceObservation, SampleColumns, SeriesDef};
    Batch {
        seq,
        base_time_unix_ms: ts_ms,
        resources: vec![ResourceObservation {
            id: resource_id.into(),
            kind: "host".into(),
            interval_ms: 60_000,
            ..Default::default()
        }],
        strings: vec![metric.into()],
        series: vec![SeriesDef {
            resource: 0,
            metric: 0,
            attributes: vec![],
        }],
        samples: Some(SampleColumns {
            series: vec![0],
            time_offset_ms: vec![0],
            values: vec![value],
        }),
        gaps: Vec::new(),
        sent_at_unix_ms: 0,
    }
}

/// A fresh PostgreSQL database for one test, dropped on [`TestDatabase::drop_now`].
pub struct TestDatabase {
    /// Connection URL of the new database.
    pub url: String,
    name: String,
    admin: String,
}

impl TestDatabase {
    /// Creates `iw_e2e_<tag>_<pid>_<nanos>` through `INFRAWATCH_TEST_POSTGRES_URL`
    /// (default `postgres://postgres@127.0.0.1:5432/postgres`).
    pub async fn create(tag: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let admin = std::env::var("INFRAWATCH_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!(
            "iw_e2e_{tag}_{}_{}",
            std::process::id(),
            unique() % 1_000_000_000
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .with_context(|| format!("PostgreSQL at {admin} is required"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .context("admin URL has no database")?;
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
            admin,
        })
    }

    /// Drops the database.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let (first, end) = test_port_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        assert!(ports.iter().all(|p| (first..end).contains(p)));
    }
}
