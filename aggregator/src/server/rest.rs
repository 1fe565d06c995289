//! The REST API (axum): the query operations under `/api/v1/`, `/healthz`,
//! `/readyz` and `/metrics`. Errors are JSON: `{"error": {"code", "message"}}`.
//!
//! Resource ids contain `/`; they may be sent as they are
//! (`/api/v1/resources/host/abc`) or percent-encoded (`host%2Fabc`). A path ending
//! in `/metrics` with a `name` parameter is a metric query of the resource before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use infrawatch_common::resource::{health_name, parse_health};
use infrawatch_common::time::now_unix_ms;
use infrawatch_proto::v1 as pb;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use super::rest_events;
use crate::auth::tokens::TokenSet;
use crate::auth::{Principal, Refusal, refused};
use crate::model::Health;
use crate::query::{self, ListParams, MetricParams, QueryError};
use crate::state::State;
use crate::store::Store;

/// What the REST handlers share.
#[derive(Clone)]
pub struct RestState {
    /// The model.
    pub state: Arc<State>,
    /// The database, for readiness and older metric ranges.
    pub store: Store,
    /// Renders `/metrics`; `None` when no recorder is installed (tests).
    pub metrics: Option<PrometheusHandle>,
    /// Accepted bearer tokens; none means no authentication (loopback only), and
    /// every caller is the local operator.
    pub tokens: Arc<TokenSet>,
    /// Event streams and subscriptions.
    pub events: super::events::EventApi,
    /// Progress of each event publisher.
    pub sinks: Arc<Vec<Arc<crate::events::publisher::SinkStatus>>>,
    /// Readiness fails when a publisher lags more than this (ms); 0 never.
    pub max_ready_lag_ms: u64,
}

/// The router.
pub fn router(shared: RestState) -> Router {
    let protected = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/gaps", get(gaps))
        .route("/api/v1/kubernetes/events", get(kubernetes_events))
        .route("/api/v1/kubernetes/usage", get(kubernetes_usage))
        .route("/api/v1/agents", get(agents))
        .route(
            "/api/v1/agents/{identity}/machine",
            axum::routing::delete(release_machine),
        )
        .route("/api/v1/resources", get(list_resources))
        .route("/api/v1/resources/{*path}", get(resource_or_metrics))
        .route("/api/v1/events", get(rest_events::page))
        .route("/api/v1/events/stream", get(rest_events::stream))
        .route(
            "/api/v1/events/dead-letters",
            get(rest_events::dead_letters),
        )
        .route(
            "/api/v1/subscriptions",
            get(rest_events::list_subscriptions).post(rest_events::create_subscription),
        )
        .route(
            "/api/v1/subscriptions/{name}",
            get(rest_events::get_subscription).delete(rest_events::delete_subscription),
        )
        .route(
            "/api/v1/subscriptions/{name}/ack",
            post(rest_events::ack_subscription),
        )
        .route("/metrics", get(prometheus))
        .route_layer(middleware::from_fn_with_state(shared.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not supported here",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(
            super::http::MAX_BODY_BYTES,
        ))
        .with_state(shared)
}

/// A JSON error response, counted by its code.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    metrics::counter!(crate::telemetry::REST_ERRORS, "code" => code.to_string()).increment(1);
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = match self {
            QueryError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            QueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        error(status, self.code(), &self.to_string())
    }
}

/// Puts the caller's [`Principal`] on the request, or answers 401.
async fn authenticate(
    AxumState(shared): AxumState<RestState>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    if shared.tokens.is_empty() {
        request.extensions_mut().insert(Principal::local_operator());
        return next.run(request).await;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or_default();
    match shared.tokens.principal(presented) {
        Some(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        None => error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        ),
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110, 11.1), and spaces may separate it from the token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
        .filter(|t| !t.is_empty())
}

async fn ready(AxumState(shared): AxumState<RestState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), shared.store.ping()).await {
        Ok(Ok(())) => {
            let sinks: Vec<Value> = shared.sinks.iter().map(|s| s.to_json()).collect();
            let limit = shared.max_ready_lag_ms;
            let lagging = shared.sinks.iter().find(|s| {
                limit > 0
                    && u64::try_from(s.lag_ms.load(std::sync::atomic::Ordering::Relaxed))
                        .unwrap_or(0)
                        > limit
            });
            let body = json!({"status": if lagging.is_some() { "lagging" } else { "ready" }, "event_sinks": sinks});
            let code = if lagging.is_some() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            (code, Json(body)).into_response()
        }
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("database: {e}"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "database did not answer within 2s",
        ),
    }
}

async fn prometheus(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
) -> Response {
    if let Err(message) = who.unrestricted("/metrics") {
        return error(StatusCode::FORBIDDEN, "permission_denied", &message);
    }
    match &shared.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled",
        ),
    }
}

async fn status(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
) -> Json<Value> {
    let s = query::summary(&shared.state, who.scope.as_deref());
    Json(json!({
        "total_resources": s.total_resources,
        "by_kind": s.by_kind,
        "by_health": s.by_health,
        "connected_agents": s.connected_agents,
    }))
}

/// Query parameters, each at most once: a repeated parameter is a 400 with the
/// JSON error, not "the last one wins" (axum's `Query` into a map keeps the last
/// silently, and answers a malformed query in plain text).
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = QueryError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, QueryError> {
        let query = parts.uri.query().unwrap_or_default();
        let mut params = HashMap::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if params
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                return Err(QueryError::InvalidArgument(format!(
                    "parameter {name:?} is given more than once"
                )));
            }
        }
        Ok(Self(params))
    }
}

/// `limit`, one rule on every endpoint: absent (or empty) is `None`, the
/// endpoint's default; otherwise a whole number from 1 to [`query::MAX_LIMIT`].
pub(super) fn page_limit(params: &HashMap<String, String>) -> Result<Option<u32>, QueryError> {
    let what = "a whole number between 1 and 1000";
    match number::<u32>(params, "limit", what)? {
        Some(l) if !(1..=query::MAX_LIMIT).contains(&(l as usize)) => Err(
            QueryError::InvalidArgument(format!("limit={l} is not {what}")),
        ),
        l => Ok(l),
    }
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> &'a str {
    params.get(name).map(String::as_str).unwrap_or_default()
}

pub(super) fn number<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
    what: &str,
) -> Result<Option<T>, QueryError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| QueryError::InvalidArgument(format!("{name}={v:?} is not {what}"))),
    }
}

/// A parameter the endpoint does not know is an error, not silently ignored.
pub(super) fn reject_unknown(
    params: &HashMap<String, String>,
    known: &[&str],
) -> Result<(), QueryError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(QueryError::InvalidArgument(format!(
            "unknown parameter {unknown:?}; expected one of {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

async fn list_resources(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Params(params): Params,
) -> Result<Json<Value>, QueryError> {
    reject_unknown(&params, &["kind", "health", "label", "limit", "cursor"])?;
    let health = match param(&params, "health") {
        "" => None,
        h => Some(parse_health(h).ok_or_else(|| {
            QueryError::InvalidArgument(format!(
                "health={h:?} is not one of healthy, degraded, unhealthy, unknown"
            ))
        })?),
    };
    // 0: the list's own default page.
    let limit = page_limit(&params)?.unwrap_or(0);
    let p = ListParams {
        scope: who.scope.clone(),
        ..ListParams::parse(
            param(&params, "kind"),
            health,
            param(&params, "label"),
            limit,
            param(&params, "cursor"),
        )?
    };
    let (page, next) = query::list(&shared.state, &p);
    Ok(Json(json!({
        "resources": page.iter().map(resource_json).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// `GET /api/v1/agents`: every agent seen since this aggregator started, with
/// its open streams, last batch and clock skew.
async fn agents(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
) -> Response {
    if let Err(message) = who.unrestricted("/api/v1/agents") {
        return error(StatusCode::FORBIDDEN, "permission_denied", &message);
    }
    Json(json!({
        "agents": shared.state.agents().into_iter().map(|(key, a)| json!({
            "agent": key,
            "identity": a.identity,
            "name": a.name,
            "version": a.version,
            "streams": a.streams,
            "lastBatchUnixMs": a.last_batch_ms.to_string(),
            "lastSeq": a.last_seq.to_string(),
            "clockSkewMs": a.clock_skew_ms.map(|s| s.to_string()),
        })).collect::<Vec<_>>()
    }))
    .into_response()
}

/// `DELETE /api/v1/agents/{identity}/machine` (admins): releases the machine an
/// agent certificate identity is pinned to, so that the machine can be
/// reported by a certificate of another name, or the identity by another
/// machine. 204, or 404 when the identity has no binding.
async fn release_machine(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Path(identity): Path<String>,
) -> Response {
    if !who.is_admin() {
        let message = format!(
            "{} has the {} role; releasing a machine binding needs the admin role",
            who.name, who.role
        );
        refused(Refusal::Role, &who.name, &message);
        return error(StatusCode::FORBIDDEN, "permission_denied", &message);
    }
    match shared.store.release_machine(&identity).await {
        Ok(true) => {
            tracing::info!(identity, by = who.name, "Agent machine binding released.");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("agent identity {identity:?} is bound to no machine"),
        ),
        Err(e) => QueryError::Unavailable(e.to_string()).into_response(),
    }
}

/// `GET /api/v1/gaps?agent=&from=&to=&limit=`: data agents reported lost, newest
/// first; `agent` is an agent identity or a host resource id.
async fn gaps(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Params(params): Params,
) -> Result<Json<Value>, Response> {
    who.unrestricted("/api/v1/gaps")
        .map_err(|m| error(StatusCode::FORBIDDEN, "permission_denied", &m))?;
    gaps_page(&shared, &params)
        .await
        .map_err(IntoResponse::into_response)
}

async fn gaps_page(
    shared: &RestState,
    params: &HashMap<String, String>,
) -> Result<Json<Value>, QueryError> {
    reject_unknown(params, &["agent", "from", "to", "limit"])?;
    let from = number::<i64>(params, "from", "a time in Unix ms")?.unwrap_or(0);
    let to = number::<i64>(params, "to", "a time in Unix ms")?.unwrap_or(i64::MAX);
    let limit = page_limit(params)?.unwrap_or(query::DEFAULT_LIMIT as u32);
    let rows = shared
        .store
        .gaps(param(params, "agent"), from, to, limit)
        .await
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    Ok(Json(json!({
        "gaps": rows.iter().map(|g| json!({
            "agent": g.agent_id,
            "hostId": g.host_id,
            "firstSeq": g.first_seq.to_string(),
            "lastSeq": g.last_seq.to_string(),
            "fromUnixMs": g.from_ms.to_string(),
            "toUnixMs": g.to_ms.to_string(),
            "samplesLost": g.samples_lost.to_string(),
            "batchesLost": g.batches_lost.to_string(),
            "cause": g.cause,
            "exact": g.exact,
            "recordedAtUnixMs": g.recorded_at_ms.to_string(),
        })).collect::<Vec<_>>()
    })))
}

/// `GET /api/v1/kubernetes/events`: the Warning events of the watched
/// clusters, newest first, by `cluster`, `namespace`, `resource` (an id),
/// `reason` and `since` (Unix ms); a restricted token sees its clusters and
/// namespaces only.
async fn kubernetes_events(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Params(params): Params,
) -> Result<Json<Value>, QueryError> {
    reject_unknown(
        &params,
        &[
            "cluster",
            "namespace",
            "resource",
            "reason",
            "since",
            "limit",
        ],
    )?;
    let given = |name: &str| Some(param(&params, name).to_string()).filter(|v| !v.is_empty());
    let mut filter = crate::store::WarningFilter {
        cluster: given("cluster"),
        resource_id: given("resource"),
        reason: given("reason"),
        since_ms: number::<i64>(&params, "since", "a time in Unix ms")?,
        limit: page_limit(&params)?.unwrap_or(query::DEFAULT_LIMIT as u32),
        ..Default::default()
    };
    let asked: Vec<String> = given("namespace").into_iter().collect();
    match who.scope.as_deref() {
        Some(scope) => {
            // The asked namespace must lie inside the scope; no namespace
            // asked: all of the scope's.
            filter.namespaces = match (asked.is_empty(), scope.namespaces.is_empty()) {
                (true, _) => scope.namespaces.clone(),
                (false, true) => asked,
                (false, false) => asked
                    .into_iter()
                    .filter(|n| scope.namespaces.contains(n))
                    .collect(),
            };
            if filter.namespaces.is_empty() && !scope.namespaces.is_empty() {
                return Ok(Json(json!({ "events": [] })));
            }
            filter.clusters = scope.clusters.clone();
        }
        None => filter.namespaces = asked,
    }
    let rows = shared
        .store
        .warnings(&filter)
        .await
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    Ok(Json(json!({
        "events": rows.iter().map(|w| json!({
            "cluster": w.cluster,
            "namespace": w.namespace,
            "name": w.name,
            "resourceId": w.resource_id,
            "reason": w.reason,
            "note": w.note,
            "count": w.count,
            "lastSeenUnixMs": w.last_seen_ms.to_string(),
        })).collect::<Vec<_>>()
    })))
}

/// `GET /api/v1/kubernetes/usage?cluster=&by=namespace|workload|node&namespace=`:
/// the active pods' use against their requests and limits, summed per group
/// (`crate::kubernetes_usage`); a restricted token sums its clusters and
/// namespaces only.
async fn kubernetes_usage(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Params(params): Params,
) -> Result<Json<Value>, QueryError> {
    use crate::kubernetes_usage::{self as usage, GroupBy, UsageError, UsageQuery};
    reject_unknown(&params, &["cluster", "by", "namespace"])?;
    let cluster = match param(&params, "cluster") {
        "" => {
            return Err(QueryError::InvalidArgument(
                "parameter \"cluster\" is required: the name of a watched cluster".into(),
            ));
        }
        c => c,
    };
    let names = GroupBy::ALL.map(GroupBy::name).join(", ");
    let by = match param(&params, "by") {
        "" => {
            return Err(QueryError::InvalidArgument(format!(
                "parameter \"by\" is required: one of {names}"
            )));
        }
        b => GroupBy::parse(b).ok_or_else(|| {
            QueryError::InvalidArgument(format!("by={b:?} is not one of {names}"))
        })?,
    };
    let query = UsageQuery {
        cluster,
        by,
        namespace: Some(param(&params, "namespace")).filter(|n| !n.is_empty()),
    };
    let answer = usage::usage(
        &shared.state,
        &shared.store,
        &query,
        who.scope.as_deref(),
        now_unix_ms(),
    )
    .await
    .map_err(|e| match e {
        UsageError::UnknownCluster(_) => QueryError::NotFound(e.to_string()),
        UsageError::Store(ref source) => {
            tracing::warn!(
                error = source as &dyn std::error::Error,
                "Kubernetes usage: stored rollups unreadable."
            );
            QueryError::Unavailable(format!("{e}: {source}"))
        }
    })?;
    // CPU use is `usageCores`; memory use is the working set (what the
    // kubelet evicts and the kernel OOM-kills by), `workingSetBytes`.
    let compared = |c: &usage::Compared, used: &str, unit: &str| {
        json!({
            used: c.usage,
            format!("request{unit}"): c.request,
            format!("limit{unit}"): c.limit,
            "usageOfRequest": c.usage_of_request(),
        })
    };
    let groups: Vec<Value> = answer
        .groups
        .iter()
        .map(|g| {
            let mut group = json!({
                "name": g.name,
                "pods": g.pods,
                "podsWithUsage": g.pods_with_usage,
                "cpu": compared(&g.cpu, "usageCores", "Cores"),
                "memory": compared(&g.memory, "workingSetBytes", "Bytes"),
                "network": {
                    "receiveBytesTotal": g.receive_bytes,
                    "transmitBytesTotal": g.transmit_bytes,
                },
                "ephemeralStorageBytes": g.ephemeral_storage_bytes,
            });
            if let Some(namespace) = &g.namespace {
                group["namespace"] = json!(namespace);
            }
            if let Some(kind) = g.kind {
                group["kind"] = json!(kind);
            }
            group
        })
        .collect();
    Ok(Json(json!({
        "cluster": cluster,
        "by": by.name(),
        "groups": groups,
        "asOfUnixMs": answer.as_of_ms.to_string(),
    })))
}

async fn resource_or_metrics(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    path: Result<Path<String>, PathRejection>,
    Params(params): Params,
) -> Result<Json<Value>, QueryError> {
    let Path(path) = path.map_err(|e| QueryError::InvalidArgument(format!("resource id: {e}")))?;
    // `<id>/metrics` is a metric query when it has a name, or when `<id>` exists and
    // `<id>/metrics` itself is no resource (then the missing name is the error).
    if let Some(id) = path.strip_suffix("/availability") {
        let is_availability_query = {
            let model = shared.state.read();
            model.resources.contains_key(id) && !model.resources.contains_key(&path)
        };
        if is_availability_query {
            return availability_of(&shared, &who, id, &params).await;
        }
    }
    if let Some(id) = path.strip_suffix("/metrics") {
        let is_metrics_query = params.contains_key("name") || {
            let model = shared.state.read();
            model.resources.contains_key(id) && !model.resources.contains_key(&path)
        };
        if is_metrics_query {
            return metrics_of(&shared, &who, id, &params).await;
        }
    }
    Ok(Json(resource_json(&query::get(
        &shared.state,
        &path,
        who.scope.as_deref(),
    )?)))
}

/// `<id>/availability?from=&to=` or `?window=1d|7d|30d|<ms>` (ending now).
async fn availability_of(
    shared: &RestState,
    who: &Principal,
    id: &str,
    params: &HashMap<String, String>,
) -> Result<Json<Value>, QueryError> {
    reject_unknown(params, &["from", "to", "window"])?;
    let ms = "a time in Unix milliseconds";
    let now = now_unix_ms();
    let to = number::<i64>(params, "to", ms)?.unwrap_or(0);
    let from = match params.get("window") {
        Some(w) => {
            if params.contains_key("from") {
                return Err(QueryError::InvalidArgument(
                    "give either from or window, not both".into(),
                ));
            }
            let span = crate::availability::parse_window(w).ok_or_else(|| {
                QueryError::InvalidArgument(format!(
                    "window {w:?} is not a number of days (1d, 30d) or milliseconds"
                ))
            })?;
            (if to == 0 { now } else { to }) - span
        }
        None => number::<i64>(params, "from", ms)?.unwrap_or(0),
    };
    let (from, to) = crate::availability::window(from, to, now);
    let a = crate::availability::of_resource(
        &shared.state,
        &shared.store,
        id,
        from,
        to,
        who.scope.as_deref(),
    )
    .await?;
    Ok(Json(availability_json(&a)))
}

/// The JSON form of an availability.
pub fn availability_json(a: &pb::Availability) -> Value {
    json!({
        "resource_id": a.resource_id,
        "from_unix_ms": a.from_unix_ms,
        "to_unix_ms": a.to_unix_ms,
        "healthy_ms": a.healthy_ms,
        "degraded_ms": a.degraded_ms,
        "unhealthy_ms": a.unhealthy_ms,
        "unknown_ms": a.unknown_ms,
        "healthy_share": a.healthy_share,
        "complete": a.complete,
    })
}

async fn metrics_of(
    shared: &RestState,
    who: &Principal,
    id: &str,
    params: &HashMap<String, String>,
) -> Result<Json<Value>, QueryError> {
    reject_unknown(params, &["name", "attributes", "from", "to", "step"])?;
    let ms = "a time in Unix milliseconds";
    let p = MetricParams::parse(
        id,
        param(params, "name"),
        param(params, "attributes"),
        number(params, "from", ms)?.unwrap_or(0),
        number(params, "to", ms)?.unwrap_or(0),
        number(params, "step", "a whole number of milliseconds")?.unwrap_or(0),
        now_unix_ms(),
    )?;
    let r = query::metric(&shared.state, &shared.store, &p, who.scope.as_deref()).await?;
    Ok(Json(metric_json(&r)))
}

/// The JSON form of a metric range.
pub fn metric_json(r: &pb::QueryMetricResponse) -> Value {
    json!({
        "resource_id": r.resource_id,
        "metric": r.metric,
        "attributes": r.attributes,
        "step_ms": r.step_ms,
        "source": r.source,
        "points": r.points.iter().map(|p| json!({
            "timestamp_unix_ms": p.timestamp_unix_ms,
            "avg": p.avg, "min": p.min, "max": p.max, "count": p.count,
        })).collect::<Vec<_>>(),
    })
}

/// The JSON form of a resource, with health names as text.
pub fn resource_json(r: &pb::Resource) -> Value {
    let health = Health::try_from(r.health).unwrap_or(Health::Unknown);
    let labels: std::collections::BTreeMap<_, _> = r.labels.iter().collect();
    let attributes: std::collections::BTreeMap<_, _> = r.attributes.iter().collect();
    json!({
        "id": r.id,
        "kind": r.kind,
        "health": health_name(health),
        "reasons": r.reasons.iter().map(|x| json!({
            "code": x.code, "message": x.message, "metric": x.metric,
            "observed": x.observed, "threshold": x.threshold,
        })).collect::<Vec<_>>(),
        "labels": labels,
        "attributes": attributes,
        "relations": r.relations.iter().map(|x| json!({
            "type": x.relation_type, "to": x.to_id,
        })).collect::<Vec<_>>(),
        "observed_at_unix_ms": r.observed_at_unix_ms,
        "resource_version": r.resource_version,
        "source": r.source,
        "latest": r.latest.iter().map(|x| json!({
            "metric": x.metric, "attributes": x.attributes,
            "value": x.value, "timestamp_unix_ms": x.timestamp_unix_ms,
        })).collect::<Vec<_>>(),
        "parts": r.parts.iter().map(|p| json!({
            "id": p.id,
            "kind": p.kind,
            "health": health_name(Health::try_from(p.health).unwrap_or(Health::Unknown)),
            "reasons": p.reasons.iter().map(|x| json!({
                "code": x.code, "message": x.message,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
