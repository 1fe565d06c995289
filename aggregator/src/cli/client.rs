//! The CLI's gRPC client of `QueryService`, over mTLS.

use anyhow::Context;
use infrawatch_common::resource::parse_health;
use infrawatch_common::time::now_unix_ms;
use infrawatch_common::tls::{TlsFiles, TlsMaterial};
use infrawatch_proto::v1 as pb;
use infrawatch_proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::QueryArgs;
use super::home::Home;

/// A connected query client.
pub(super) struct Client {
    inner: QueryServiceClient<Channel>,
    endpoint: String,
}

/// Connects using the flags, or the local `up` instance when no endpoint is given.
pub(super) async fn connect(q: &QueryArgs) -> anyhow::Result<Client> {
    let (endpoint, server_name, files) = match &q.endpoint {
        Some(e) => {
            let (Some(ca), Some(cert), Some(key)) = (&q.ca, &q.cert, &q.key) else {
                anyhow::bail!(
                    "--endpoint needs --ca, --cert and --key (the aggregator requires a client certificate)"
                );
            };
            (
                e.clone(),
                q.server_name.clone(),
                TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                },
            )
        }
        None => {
            let i = Home::resolve()?.instance()?;
            (
                i.grpc_endpoint,
                i.server_name,
                TlsFiles {
                    ca: i.ca,
                    cert: i.cert,
                    key: i.key,
                },
            )
        }
    };
    let tls = TlsMaterial::load(&files)?;
    let channel = Endpoint::from_shared(endpoint.clone())
        .with_context(|| format!("{endpoint:?} is not a valid endpoint URL"))?
        .tls_config(tls.client_config(&server_name))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("cannot reach the aggregator at {endpoint}"))?;
    Ok(Client {
        inner: QueryServiceClient::new(channel),
        endpoint,
    })
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", e.message(), e.code())
}

impl Client {
    /// Fleet summary.
    pub(super) async fn summary(&mut self) -> anyhow::Result<pb::FleetSummary> {
        let r = self
            .inner
            .get_summary(pb::GetSummaryRequest {})
            .await
            .map_err(status);
        r.map(tonic::Response::into_inner)
            .with_context(|| format!("summary from {}", self.endpoint))
    }

    /// Every matching resource (all pages unless `limit` is given).
    pub(super) async fn resources(
        &mut self,
        kind: String,
        health: Option<&str>,
        label_selector: String,
        limit: Option<u32>,
    ) -> anyhow::Result<Vec<pb::Resource>> {
        let health = match health {
            None => pb::Health::Unspecified,
            Some(h) => parse_health(h).with_context(|| {
                format!("--health {h:?} is not one of healthy, degraded, unhealthy, unknown")
            })?,
        };
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .inner
                .list_resources(pb::ListResourcesRequest {
                    kind: kind.clone(),
                    health: health as i32,
                    label_selector: label_selector.clone(),
                    limit: limit.unwrap_or(500),
                    cursor: cursor.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.extend(page.resources);
            if limit.is_some() || page.next_cursor.is_empty() {
                return Ok(out);
            }
            cursor = page.next_cursor;
        }
    }

    /// One resource.
    pub(super) async fn get(&mut self, id: &str) -> anyhow::Result<pb::Resource> {
        let r = self
            .inner
            .get_resource(pb::GetResourceRequest { id: id.to_string() })
            .await
            .map_err(status)?;
        Ok(r.into_inner())
    }

    /// A metric over the last `since_secs`.
    pub(super) async fn metric(
        &mut self,
        id: &str,
        name: &str,
        attributes: &str,
        since_secs: i64,
        step_secs: i64,
    ) -> anyhow::Result<pb::QueryMetricResponse> {
        let now = now_unix_ms();
        let r = self
            .inner
            .query_metric(pb::QueryMetricRequest {
                resource_id: id.to_string(),
                metric: name.to_string(),
                attributes: attributes.to_string(),
                from_unix_ms: now - since_secs.clamp(1, 10 * 365 * 86_400) * 1000,
                to_unix_ms: now,
                step_ms: step_secs.clamp(0, 365 * 86_400) * 1000,
            })
            .await
            .map_err(status)?;
        Ok(r.into_inner())
    }

    /// The availability of `id` over the last `window_ms`.
    pub(super) async fn availability(
        &mut self,
        id: &str,
        window_ms: i64,
    ) -> anyhow::Result<pb::Availability> {
        let now = now_unix_ms();
        let r = self
            .inner
            .get_availability(pb::GetAvailabilityRequest {
                resource_id: id.to_string(),
                from_unix_ms: now - window_ms,
                to_unix_ms: now,
            })
            .await
            .map_err(status)?;
        Ok(r.into_inner())
    }
}
