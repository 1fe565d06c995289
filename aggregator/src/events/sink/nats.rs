//! The NATS JetStream sink: one stream (created if missing) with subjects
//! `<prefix>.<resource kind>`, the event id as `Nats-Msg-Id` so the server drops
//! re-sent events within the stream's duplicate window, and the resource id in
//! the `Infrawatch-Resource-Id` header.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use super::{Ack, Sink, SinkError};
use crate::events::StoredEvent;

const NAME: &str = "nats";

/// Settings of the NATS JetStream sink (`[events.nats]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs, comma-separated, e.g. `nats://nats-1:4222,nats://nats-2:4222`;
    /// `tls://` requires TLS.
    pub url: String,
    /// JetStream stream name.
    pub stream: String,
    /// Subject prefix; events go to `<prefix>.<kind>`.
    pub subject_prefix: String,
    /// Window in which the server drops a re-sent event id (ms).
    pub duplicate_window_ms: u64,
    /// How long the stream keeps events (ms; 0 = forever).
    pub max_age_ms: u64,
    /// Events awaiting the server's acknowledgement at once.
    pub max_in_flight: usize,
    /// How long to wait for an acknowledgement or a connection (ms).
    pub timeout_ms: u64,
    /// Token authentication.
    pub token: Option<String>,
    /// User and password authentication.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// CA bundle to verify the server with (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    pub cert: Option<PathBuf>,
    /// Key of `cert` (PEM).
    pub key: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "INFRAWATCH_STATUS".into(),
            subject_prefix: "infrawatch.status".into(),
            duplicate_window_ms: 10 * 60 * 1000,
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_in_flight: 256,
            timeout_ms: 5_000,
            token: None,
            user: None,
            password: None,
            ca: None,
            cert: None,
            key: None,
        }
    }
}

impl NatsConfig {
    /// Problems with the settings, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.url.trim().is_empty() {
            p.push(("url", "must name at least one server".into()));
        }
        for server in self.url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Err(e) = server.parse::<async_nats::ServerAddr>() {
                p.push((
                    "url",
                    format!("{server:?} is not a NATS server address ({e}); e.g. nats://host:4222"),
                ));
            }
        }
        if self.stream.is_empty()
            || self
                .stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
        {
            p.push((
                "stream",
                format!(
                    "{:?} must be non-empty without spaces, '.', '*' or '>'",
                    self.stream
                ),
            ));
        }
        if self.subject_prefix.is_empty()
            || self.subject_prefix.split('.').any(|t| {
                t.is_empty()
                    || t.chars()
                        .any(|c| c.is_whitespace() || matches!(c, '*' | '>'))
            })
        {
            p.push((
                "subject_prefix",
                format!("{:?} is not a valid subject prefix", self.subject_prefix),
            ));
        }
        if self.max_in_flight == 0 {
            p.push(("max_in_flight", "must be at least 1".into()));
        }
        if self.timeout_ms < 100 {
            p.push(("timeout_ms", "must be at least 100".into()));
        }
        if self.cert.is_some() != self.key.is_some() {
            p.push(("cert", "cert and key must be given together".into()));
        }
        if self.password.is_some() && self.user.is_none() {
            p.push(("password", "needs user".into()));
        }
        p
    }

    /// Files the sink reads at start (TLS), as (field, path).
    pub fn files(&self) -> Vec<(&'static str, &std::path::Path)> {
        [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)]
            .into_iter()
            .filter_map(|(field, path)| Some((field, path.as_deref()?)))
            .collect()
    }

    /// The subject of events about resources of `kind`: characters NATS reserves
    /// in subjects (`.`, `*`, `>`, whitespace) become `_`.
    pub fn subject(&self, kind: &str) -> String {
        let token: String = kind
            .chars()
            .map(|c| {
                if c.is_whitespace() || matches!(c, '.' | '*' | '>') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let token = if token.is_empty() { "_".into() } else { token };
        format!("{}.{token}", self.subject_prefix)
    }
}

/// The sink.
pub struct NatsSink {
    config: NatsConfig,
    js: Option<jetstream::Context>,
}

impl NatsSink {
    /// A sink that connects on first use.
    pub fn new(config: NatsConfig) -> Self {
        Self { config, js: None }
    }

    async fn connect(&self) -> Result<jetstream::Context, SinkError> {
        let c = &self.config;
        let timeout = Duration::from_millis(c.timeout_ms);
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .name("infrawatch-aggregator");
        if let Some(token) = &c.token {
            options = options.token(token.clone());
        }
        if let Some(user) = &c.user {
            options =
                options.user_and_password(user.clone(), c.password.clone().unwrap_or_default());
        }
        if let Some(ca) = &c.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let servers: Vec<&str> = c
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let addrs: Vec<async_nats::ServerAddr> = servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|e| SinkError::new(NAME, &e))?;
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| SinkError::new(NAME, &e))?;
        let js = jetstream::new(client);
        let config = stream::Config {
            name: c.stream.clone(),
            subjects: vec![format!("{}.>", c.subject_prefix)],
            duplicate_window: Duration::from_millis(c.duplicate_window_ms),
            max_age: Duration::from_millis(c.max_age_ms),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| SinkError::new(NAME, &e))?;
        tracing::info!(url = %c.url, stream = %c.stream, "Connected to NATS JetStream.");
        Ok(js)
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn max_in_flight(&self) -> usize {
        self.config.max_in_flight
    }

    fn timeout(&self) -> Duration {
        // The client's own timeout, plus a margin for it to report first.
        Duration::from_millis(self.config.timeout_ms) + Duration::from_secs(1)
    }

    async fn send(&mut self, event: &StoredEvent) -> Result<Ack, SinkError> {
        if self.js.is_none() {
            self.js = Some(self.connect().await?);
        }
        let Some(js) = &self.js else {
            return Err(SinkError {
                sink: NAME,
                message: "not connected".into(),
            });
        };
        let publish = PublishMessage::build()
            .payload(event.payload.clone())
            .message_id(event.event.event_id.as_str())
            .header("Infrawatch-Resource-Id", event.event.resource_id.as_str())
            .header("Infrawatch-Position", event.position.to_string().as_str());
        let ack = js
            .send_publish(self.config.subject(&event.event.resource_kind), publish)
            .await
            .map_err(|e| SinkError::new(NAME, &e))?;
        Ok(async move { ack.await.map(|_| ()).map_err(|e| SinkError::new(NAME, &e)) }.boxed())
    }

    async fn reset(&mut self) {
        if let Some(js) = self.js.take() {
            // Dropping the last handle closes the connection; draining first lets
            // it flush, but never holds the publisher up for long.
            let client = js.client();
            let _ = tokio::time::timeout(Duration::from_secs(1), client.drain()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_sanitised_and_bad_settings_named() {
        let c = NatsConfig::default();
        assert_eq!(c.subject("host"), "infrawatch.status.host");
        assert_eq!(c.subject("k8s.pod*"), "infrawatch.status.k8s_pod_");
        assert!(c.problems().is_empty());
        let bad = NatsConfig {
            stream: "a.b".into(),
            subject_prefix: "x.>".into(),
            cert: Some("c.pem".into()),
            ..NatsConfig::default()
        };
        let fields: Vec<_> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, vec!["stream", "subject_prefix", "cert"]);
    }
}
