//! The Apache Pulsar sink (the `pulsar` crate over rustls): one producer on
//! `persistent://<tenant>/<namespace>/<topic>`, message key = resource id (a
//! Key_Shared subscription then keeps each resource's events in order), event
//! time = `observed_at`, protobuf payload with the `PROTOBUF_NATIVE` schema
//! registered, batching and compression. Token authentication and TLS with a
//! custom CA are supported; Pulsar has no client-certificate authentication in
//! this client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use futures::FutureExt;
use pulsar::compression::{
    Compression, CompressionLz4, CompressionSnappy, CompressionZlib, CompressionZstd,
};
use pulsar::message::proto::{Schema, schema};
use pulsar::producer::{Message, ProducerOptions};
use pulsar::{
    Authentication, ConnectionRetryOptions, OperationRetryOptions, Producer, Pulsar, TokioExecutor,
};
use serde::{Deserialize, Serialize};

use super::{Ack, Sink, SinkError};
use crate::events::StoredEvent;

const NAME: &str = "pulsar";

/// Fully qualified protobuf name of the event, as registered in the schema.
pub const EVENT_MESSAGE: &str = "infrawatch.v1.InfrastructureStatusUpdatedEvent";

/// Settings of the Pulsar sink (`[events.pulsar]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PulsarConfig {
    /// Broker URL: `pulsar://host:6650` or, with TLS, `pulsar+ssl://host:6651`.
    pub url: String,
    /// Tenant.
    pub tenant: String,
    /// Namespace within the tenant.
    pub namespace: String,
    /// Topic name within the namespace.
    pub topic: String,
    /// Producer name; stable across restarts so the broker can deduplicate when
    /// deduplication is enabled on the namespace. Empty: chosen by the broker.
    pub producer_name: String,
    /// JWT for token authentication.
    pub token: Option<String>,
    /// File holding the JWT (read at connect time, so a rotated token is picked up).
    pub token_file: Option<PathBuf>,
    /// CA bundle that signs the broker's certificate (PEM).
    pub ca: Option<PathBuf>,
    /// Check that the broker's certificate names its host.
    pub tls_hostname_verification: bool,
    /// Messages per batch (1 = no batching).
    pub batch_size: u32,
    /// Longest a message waits for its batch to fill (ms).
    pub batch_timeout_ms: u64,
    /// `none`, `lz4`, `zstd`, `zlib` or `snappy`.
    pub compression: String,
    /// Register the protobuf schema with the topic.
    pub register_schema: bool,
    /// Messages awaiting the broker's receipt at once (the client answers
    /// `SlowDown` above about 50).
    pub max_in_flight: usize,
    /// Connection and operation timeout (ms).
    pub timeout_ms: u64,
}

impl Default for PulsarConfig {
    fn default() -> Self {
        Self {
            url: "pulsar://127.0.0.1:6650".into(),
            tenant: "public".into(),
            namespace: "default".into(),
            topic: "infrawatch-status".into(),
            producer_name: String::new(),
            token: None,
            token_file: None,
            ca: None,
            tls_hostname_verification: true,
            batch_size: 100,
            batch_timeout_ms: 5,
            compression: "lz4".into(),
            register_schema: true,
            max_in_flight: 50,
            timeout_ms: 5_000,
        }
    }
}

impl PulsarConfig {
    /// The full topic name.
    pub fn topic_name(&self) -> String {
        format!(
            "persistent://{}/{}/{}",
            self.tenant, self.namespace, self.topic
        )
    }

    /// Files the sink reads at start (token, TLS), as (field, path).
    pub fn files(&self) -> Vec<(&'static str, &std::path::Path)> {
        [("token_file", &self.token_file), ("ca", &self.ca)]
            .into_iter()
            .filter_map(|(field, path)| Some((field, path.as_deref()?)))
            .collect()
    }

    /// Problems with the settings, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(self.url.starts_with("pulsar://") || self.url.starts_with("pulsar+ssl://")) {
            p.push((
                "url",
                format!("{:?} must start with pulsar:// or pulsar+ssl://", self.url),
            ));
        }
        for (field, v) in [
            ("tenant", &self.tenant),
            ("namespace", &self.namespace),
            ("topic", &self.topic),
        ] {
            if v.is_empty() || v.contains('/') || v.chars().any(char::is_whitespace) {
                p.push((
                    field,
                    format!("{v:?} must be non-empty without '/' or spaces"),
                ));
            }
        }
        if self.token.is_some() && self.token_file.is_some() {
            p.push(("token", "give token or token_file, not both".into()));
        }
        if self.compression().is_none() {
            p.push((
                "compression",
                format!(
                    "{:?} is not one of none, lz4, zstd, zlib, snappy",
                    self.compression
                ),
            ));
        }
        if self.batch_size == 0 {
            p.push(("batch_size", "must be at least 1".into()));
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            p.push(("max_in_flight", "must be between 1 and 1000".into()));
        }
        if self.timeout_ms < 100 {
            p.push(("timeout_ms", "must be at least 100".into()));
        }
        p
    }

    fn compression(&self) -> Option<Compression> {
        Some(match self.compression.as_str() {
            "none" => Compression::None,
            "lz4" => Compression::Lz4(CompressionLz4::default()),
            "zstd" => Compression::Zstd(CompressionZstd::default()),
            "zlib" => Compression::Zlib(CompressionZlib::default()),
            "snappy" => Compression::Snappy(CompressionSnappy {}),
            _ => return None,
        })
    }
}

/// The `PROTOBUF_NATIVE` schema of the event: the file descriptor set, base64, and
/// the root message.
pub fn event_schema() -> Schema {
    let data = serde_json::json!({
        "fileDescriptorSet": base64::engine::general_purpose::STANDARD.encode(infrawatch_proto::FILE_DESCRIPTOR_SET),
        "rootMessageTypeName": EVENT_MESSAGE,
        "rootFileDescriptorName": "infrawatch/v1/events.proto",
    });
    Schema {
        name: EVENT_MESSAGE.into(),
        schema_data: data.to_string().into_bytes(),
        r#type: schema::Type::ProtobufNative as i32,
        properties: Vec::new(),
    }
}

/// The sink.
pub struct PulsarSink {
    config: PulsarConfig,
    producer: Option<(Pulsar<TokioExecutor>, Producer<TokioExecutor>)>,
}

impl PulsarSink {
    /// A sink that connects on first use.
    pub fn new(config: PulsarConfig) -> Self {
        Self {
            config,
            producer: None,
        }
    }

    async fn connect(&self) -> Result<(Pulsar<TokioExecutor>, Producer<TokioExecutor>), SinkError> {
        let c = &self.config;
        let timeout = Duration::from_millis(c.timeout_ms);
        let mut builder = Pulsar::builder(c.url.clone(), TokioExecutor)
            .with_connection_retry_options(ConnectionRetryOptions {
                min_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                max_retries: 2,
                connection_timeout: timeout,
                ..Default::default()
            })
            .with_operation_retry_options(OperationRetryOptions {
                operation_timeout: timeout,
                retry_delay: Duration::from_millis(200),
                max_retries: Some(2),
            })
            .with_tls_hostname_verification_enabled(c.tls_hostname_verification);
        let token = match (&c.token, &c.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| SinkError {
                        sink: NAME,
                        message: format!("cannot read token_file {}: {e}", path.display()),
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(token) = token {
            builder = builder.with_auth(Authentication {
                name: "token".into(),
                data: token.into_bytes(),
            });
        }
        if let Some(ca) = &c.ca {
            builder = builder
                .with_certificate_chain_file(ca)
                .map_err(|e| SinkError {
                    sink: NAME,
                    message: format!("cannot read ca {}: {e}", ca.display()),
                })?;
        }
        let client = builder
            .build()
            .await
            .map_err(|e| SinkError::new(NAME, &e))?;
        let options = ProducerOptions {
            schema: c.register_schema.then(event_schema),
            batch_size: (c.batch_size > 1).then_some(c.batch_size),
            batch_timeout: (c.batch_size > 1).then(|| Duration::from_millis(c.batch_timeout_ms)),
            compression: c.compression(),
            ..Default::default()
        };
        let mut producer = client
            .producer()
            .with_topic(c.topic_name())
            .with_options(options);
        if !c.producer_name.is_empty() {
            producer = producer.with_name(c.producer_name.clone());
        }
        let producer = producer
            .build()
            .await
            .map_err(|e| SinkError::new(NAME, &e))?;
        tracing::info!(url = %c.url, topic = %c.topic_name(), "Connected to Pulsar.");
        Ok((client, producer))
    }
}

#[async_trait::async_trait]
impl Sink for PulsarSink {
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
        if self.producer.is_none() {
            self.producer = Some(self.connect().await?);
        }
        let Some((_, producer)) = &mut self.producer else {
            return Err(SinkError {
                sink: NAME,
                message: "not connected".into(),
            });
        };
        let e = &event.event;
        let message = Message {
            payload: event.payload.to_vec(),
            properties: HashMap::from([
                ("event_id".to_string(), e.event_id.clone()),
                (
                    "resource_version".to_string(),
                    e.resource_version.to_string(),
                ),
                ("position".to_string(), event.position.to_string()),
            ]),
            partition_key: Some(e.resource_id.clone()),
            event_time: u64::try_from(e.observed_at_unix_ms).ok(),
            ..Default::default()
        };
        let receipt = producer
            .send_non_blocking(message)
            .await
            .map_err(|e| SinkError::new(NAME, &e))?;
        Ok(async move {
            receipt
                .await
                .map(|_| ())
                .map_err(|e| SinkError::new(NAME, &e))
        }
        .boxed())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.config.batch_size <= 1 {
            return Ok(());
        }
        match &mut self.producer {
            Some((_, producer)) => producer
                .send_batch()
                .await
                .map_err(|e| SinkError::new(NAME, &e)),
            None => Ok(()),
        }
    }

    async fn reset(&mut self) {
        if let Some((_, mut producer)) = self.producer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), producer.close()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_the_event_and_carries_its_descriptors() {
        let s = event_schema();
        assert_eq!(s.r#type, schema::Type::ProtobufNative as i32);
        let data: serde_json::Value = serde_json::from_slice(&s.schema_data).unwrap();
        assert_eq!(data["rootMessageTypeName"], EVENT_MESSAGE);
        let fds = base64::engine::general_purpose::STANDARD
            .decode(data["fileDescriptorSet"].as_str().unwrap())
            .unwrap();
        assert_eq!(fds, infrawatch_proto::FILE_DESCRIPTOR_SET);
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(PulsarConfig::default().problems().is_empty());
        let bad = PulsarConfig {
            url: "http://x".into(),
            topic: "a/b".into(),
            compression: "brotli".into(),
            ..Default::default()
        };
        let fields: Vec<_> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, vec!["url", "topic", "compression"]);
    }
}
