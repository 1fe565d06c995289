//! Helpers for the event tests: batches that change resources, consumers of the
//! published events, and the checks every delivery must pass (per resource: each
//! version once, in order, none missing).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use infrawatch_proto::v1::{Batch, ResourceObservation};

/// Resource ids `probe/<machine>/service/<prefix>-<i>` for `i` in `0..n`:
/// probes of the agent on `machine`, which only that agent may report.
pub fn resource_ids(machine: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("probe/{machine}/service/{prefix}-{i}"))
        .collect()
}

/// A batch that changes every resource in `ids`: the attribute `generation`
/// becomes `generation`, so each resource gets a new version (and one event).
pub fn change_batch(seq: u64, ids: &[String], generation: u64) -> Batch {
    Batch {
        seq,
        base_time_unix_ms: infrawatch_common::time::now_unix_ms(),
        resources: ids
            .iter()
            .map(|id| ResourceObservation {
                id: id.clone(),
                kind: "service".into(),
                // The longest interval: no resource turns stale during a test.
                interval_ms: infrawatch_common::resource::MAX_INTERVAL_MS,
                attributes: [("generation".to_string(), generation.to_string())].into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// What a consumer received, checked per resource.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Events received in total (duplicates included).
    pub received: usize,
    /// Events received again (same resource and version).
    pub duplicates: usize,
    /// Per resource, the versions in the order they arrived (duplicates dropped).
    pub versions: BTreeMap<String, Vec<u64>>,
}

impl Delivery {
    /// Checks a stream of (resource id, version) in arrival order.
    pub fn check(items: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut d = Self::default();
        let mut seen: HashMap<String, std::collections::HashSet<u64>> = HashMap::new();
        for (id, v) in items {
            d.received += 1;
            if !seen.entry(id.clone()).or_default().insert(v) {
                d.duplicates += 1;
                continue;
            }
            d.versions.entry(id).or_default().push(v);
        }
        d
    }

    /// Panics unless every resource in `ids` got exactly versions `1..=versions`,
    /// in order.
    pub fn assert_complete(&self, ids: &[String], versions: u64) {
        let expected: Vec<u64> = (1..=versions).collect();
        for id in ids {
            let got = self.versions.get(id).cloned().unwrap_or_default();
            assert_eq!(
                got, expected,
                "{id}: versions must arrive once each, in order, without gaps"
            );
        }
        assert_eq!(
            self.versions.len(),
            ids.len(),
            "events for unexpected resources: {:?}",
            self.versions
                .keys()
                .filter(|k| !ids.contains(k))
                .collect::<Vec<_>>()
        );
    }
}

/// Reads every message of a JetStream stream, by sequence, once it holds
/// `expected` messages (waiting up to `timeout`); returns (resource, version) in
/// stream order, from the payloads, after checking that `Nats-Msg-Id` is the event
/// id. More messages than expected is an error too.
pub async fn read_jetstream(
    url: &str,
    stream: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, u64)>> {
    read_jetstream_with(
        async_nats::ConnectOptions::new(),
        url,
        stream,
        expected,
        timeout,
    )
    .await
}

/// [`read_jetstream`] with connection options (TLS, credentials).
pub async fn read_jetstream_with(
    options: async_nats::ConnectOptions,
    url: &str,
    stream: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, u64)>> {
    use prost::Message;
    let client = options.connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + timeout;
    // The stream appears when the publisher first connects, and fills as it sends.
    let (handle, state) = loop {
        let last = match js.get_stream(stream).await {
            Ok(s) => {
                let info = s.get_info().await?;
                if info.state.messages as usize >= expected {
                    // Nothing beyond what was expected may arrive either.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let info = s.get_info().await?;
                    break (s, info.state);
                }
                format!("{} of {expected} messages", info.state.messages)
            }
            Err(e) => format!("no stream: {e}"),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "stream {stream}: {last} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    anyhow::ensure!(
        state.messages as usize == expected,
        "stream {stream} holds {} messages, expected {expected}",
        state.messages
    );
    let mut out = Vec::with_capacity(expected);
    for seq in state.first_sequence..=state.last_sequence {
        let m = handle.get_raw_message(seq).await?;
        let e = infrawatch_proto::v1::InfrastructureStatusUpdatedEvent::decode(m.payload.as_ref())?;
        let id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string());
        anyhow::ensure!(
            id.as_deref() == Some(e.event_id.as_str()),
            "Nats-Msg-Id {id:?} is not the event id {}",
            e.event_id
        );
        out.push((e.resource_id, e.resource_version));
    }
    Ok(out)
}

/// Server-sent events of a REST stream: (id, data) pairs of `status` events, until
/// `n` arrived or `timeout` passed.
pub fn read_sse(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<u64>,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(u64, serde_json::Value)>> {
    let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}"));
    let headers: Vec<&str> = resume.iter().map(String::as_str).collect();
    read_sse_with(addr, path, &headers, n, timeout)
}

/// [`read_sse`] with extra request `headers` (`Name: value`).
pub fn read_sse_with(
    addr: SocketAddr,
    path: &str,
    headers: &[&str],
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(u64, serde_json::Value)>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut reader = BufReader::new(s);
    let mut out = Vec::new();
    let (mut id, mut data, mut kind) = (None, String::new(), String::new());
    let deadline = Instant::now() + timeout;
    let mut line = String::new();
    while out.len() < n && Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        // Chunked transfer encoding puts size lines between the events; they never
        // start with a field name, so they are skipped below.
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = l.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if let Some(v) = l.strip_prefix("event:") {
            kind = v.trim().to_string();
        } else if l.is_empty() && !data.is_empty() {
            anyhow::ensure!(kind == "status", "stream sent {kind}: {data}");
            let position = id
                .take()
                .ok_or_else(|| anyhow::anyhow!("event without id"))?;
            out.push((position, serde_json::from_str(&data)?));
            data.clear();
        }
    }
    Ok(out)
}
