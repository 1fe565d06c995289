//! The REST event endpoints: pages of events, a server-sent-event stream that
//! resumes from `Last-Event-ID`, dead letters, and durable subscriptions.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/api/v1/events?after=&limit=&<filter>` | events after a position (JSON page) |
//! | GET | `/api/v1/events/stream?after=&<filter>` or `?subscription=` | live SSE stream |
//! | GET | `/api/v1/events/dead-letters?limit=` | events that failed validation |
//! | GET, POST | `/api/v1/subscriptions` | list, create (`{"name", "filter"}`) |
//! | GET, DELETE | `/api/v1/subscriptions/{name}` | one subscription, delete it |
//! | POST | `/api/v1/subscriptions/{name}/ack` | `{"position": "N"}` moves its cursor |
//!
//! Filter parameters: `kinds`, `namespaces`, `transitions` (comma-separated) and
//! `selector` (a label selector).

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::events::log_status;
use super::rest::{Params, RestState, error, number, page_limit, reject_unknown};
use crate::auth::Principal;
use crate::events::filter::FilterSpec;
use crate::events::json::envelope_json;
use crate::events::subscriptions::SubscriptionError;
use crate::events::watch;
use crate::query::QueryError;

/// Largest page of events.
pub const MAX_PAGE: usize = 1000;

const FILTER_PARAMS: &[&str] = &["kinds", "namespaces", "transitions", "selector"];

fn bad_request(message: impl AsRef<str>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        message.as_ref(),
    )
}

fn status_response(s: tonic::Status) -> Response {
    let (code, name) = match s.code() {
        tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
        tonic::Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        tonic::Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        tonic::Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
        tonic::Code::OutOfRange => (StatusCode::GONE, "out_of_range"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    error(code, name, s.message())
}

impl IntoResponse for SubscriptionError {
    fn into_response(self) -> Response {
        status_response(self.into())
    }
}

/// Rejects parameters other than `extra` and the filter's.
fn check_params(params: &HashMap<String, String>, extra: &[&str]) -> Result<(), QueryError> {
    let known: Vec<&str> = extra.iter().chain(FILTER_PARAMS).copied().collect();
    reject_unknown(params, &known)
}

fn list(params: &HashMap<String, String>, name: &str) -> Vec<String> {
    params
        .get(name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn filter_from(params: &HashMap<String, String>) -> FilterSpec {
    FilterSpec {
        kinds: list(params, "kinds"),
        label_selector: params.get("selector").cloned().unwrap_or_default(),
        namespaces: list(params, "namespaces"),
        transitions: list(params, "transitions"),
    }
}

fn position(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, QueryError> {
    number(params, name, "an event position")
}

/// `GET /api/v1/events`: up to `limit` (default 100, at most 1000) events after
/// `after` (default 0: the oldest kept) that pass the filter.
pub async fn page(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Params(params): Params,
) -> Response {
    if let Err(r) = check_params(&params, &["after", "limit"]) {
        return r.into_response();
    }
    let after = match position(&params, "after") {
        Ok(a) => a.unwrap_or(0),
        Err(r) => return r.into_response(),
    };
    let limit = match page_limit(&params) {
        Ok(l) => l.unwrap_or(crate::query::DEFAULT_LIMIT as u32) as usize,
        Err(r) => return r.into_response(),
    };
    let filter = match filter_from(&params).compile() {
        Ok(f) => f.within(who.scope.clone()),
        Err(e) => return bad_request(e),
    };
    let log = &shared.events.log;
    // Starting from 0 means "the oldest kept".
    let mut cursor = if after == 0 {
        match shared.store.oldest_event_position().await {
            Ok(Some(oldest)) => oldest.saturating_sub(1),
            Ok(None) => log.head(),
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &e.to_string(),
                );
            }
        }
    } else {
        after
    };
    let mut out = Vec::new();
    // Read a bounded number of rounds so a filter that matches little still answers.
    for _ in 0..10 {
        let events = match log.read_after(cursor, MAX_PAGE).await {
            Ok(e) => e,
            Err(e) => return status_response(log_status(&e)),
        };
        if events.is_empty() {
            break;
        }
        for e in events {
            cursor = e.position;
            if filter.matches(&e.event) {
                out.push(envelope_json(&e));
                if out.len() == limit {
                    break;
                }
            }
        }
        if out.len() == limit {
            break;
        }
    }
    Json(json!({
        "events": out,
        "nextAfter": cursor.to_string(),
        "headPosition": log.head().to_string(),
    }))
    .into_response()
}

/// `GET /api/v1/events/stream`: server-sent events (`event: status`, `id:` the
/// position, `data:` the envelope as JSON). A reconnecting client sends
/// `Last-Event-ID` and continues after it.
pub async fn stream(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Params(params): Params,
) -> Response {
    if let Err(r) = check_params(&params, &["after", "subscription"]) {
        return r.into_response();
    }
    let mut after = match position(&params, "after") {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        match last.trim().parse::<u64>() {
            Ok(p) => after = Some(p),
            Err(_) => {
                return bad_request(format!("Last-Event-ID {last:?} is not an event position"));
            }
        }
    }
    let subscription = params.get("subscription").cloned().unwrap_or_default();
    let api = &shared.events;
    let ticket = match api.caps.admit(&who) {
        Ok(t) => t,
        Err(message) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "resource_exhausted",
                &message,
            );
        }
    };
    let (after, filter) = match api
        .resolve(&who, filter_from(&params), after, &subscription)
        .await
    {
        Ok(x) => x,
        Err(s) => return status_response(s),
    };
    if let Err(e) = api.log.read_after(after, 1).await {
        return status_response(log_status(&e));
    }
    let rx = watch::watch(api.log.clone(), after, filter, api.stop.clone());
    // The ticket lives as long as the stream: a closed connection frees the place.
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
        let _open = &ticket;
        Ok::<_, Infallible>(match item {
            Ok(e) => Event::default()
                .event("status")
                .id(e.position.to_string())
                .data(envelope_json(&e).to_string()),
            Err(e) => Event::default().event("error").data(e.to_string()),
        })
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /api/v1/events/dead-letters`.
pub async fn dead_letters(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Params(params): Params,
) -> Response {
    if let Err(message) = who.unrestricted("/api/v1/events/dead-letters") {
        return error(StatusCode::FORBIDDEN, "permission_denied", &message);
    }
    if let Some(k) = params.keys().find(|k| k.as_str() != "limit") {
        return bad_request(format!("unknown parameter {k:?}; expected limit"));
    }
    let limit = match page_limit(&params) {
        Ok(l) => l.unwrap_or(crate::query::DEFAULT_LIMIT as u32),
        Err(r) => return r.into_response(),
    };
    match shared.store.dead_letters(limit).await {
        Ok(letters) => Json(json!({
            "deadLetters": letters.iter().map(|d| json!({
                "reason": d.reason,
                "recordedAtUnixMs": d.recorded_at_ms.to_string(),
                "event": crate::events::json::event_json(&d.event),
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &e.to_string(),
        ),
    }
}

/// Body of `POST /api/v1/subscriptions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateBody {
    name: String,
    #[serde(default)]
    filter: FilterBody,
}

/// A filter in protobuf JSON names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct FilterBody {
    kinds: Vec<String>,
    label_selector: String,
    namespaces: Vec<String>,
    transitions: Vec<String>,
}

/// Body of `POST /api/v1/subscriptions/{name}/ack`; the position as a string
/// (protobuf JSON) or a number.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    position: Value,
}

/// The JSON body of a request: 413 past the body limit, 400 when it is not
/// the JSON expected.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<T, Box<Response>> {
    let body = body.map_err(|e| {
        Box::new(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            super::http::body_too_large()
        } else {
            bad_request(format!("request body: {}", e.body_text()))
        })
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(QueryError::InvalidArgument(format!("request body: {e}")).into_response())
    })
}

/// `GET /api/v1/subscriptions`.
pub async fn list_subscriptions(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
) -> Response {
    let api = &shared.events;
    match api.subscriptions.list(&api.log, &who).await {
        Ok(subs) => Json(json!({
            "subscriptions": subs.iter().map(|s| s.to_json()).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/v1/subscriptions`.
pub async fn create_subscription(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body: CreateBody = match json_body(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let filter = FilterSpec {
        kinds: body.filter.kinds,
        label_selector: body.filter.label_selector,
        namespaces: body.filter.namespaces,
        transitions: body.filter.transitions,
    };
    let api = &shared.events;
    match api
        .subscriptions
        .create(&api.log, &who, &body.name, filter)
        .await
    {
        Ok(s) => (StatusCode::CREATED, Json(s.to_json())).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/subscriptions/{name}`.
pub async fn get_subscription(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    let api = &shared.events;
    match api.subscriptions.get(&api.log, &who, &name).await {
        Ok(s) => Json(s.to_json()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/v1/subscriptions/{name}`.
pub async fn delete_subscription(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    let api = &shared.events;
    match api.subscriptions.delete(&api.log, &who, &name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /api/v1/subscriptions/{name}/ack`.
pub async fn ack_subscription(
    AxumState(shared): AxumState<RestState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body: AckBody = match json_body(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let position = match &body.position {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    let Some(position) = position else {
        return bad_request(format!(
            "position {} is not an event position",
            body.position
        ));
    };
    let api = &shared.events;
    match api.subscriptions.ack(&api.log, &who, &name, position).await {
        Ok(s) => Json(s.to_json()).into_response(),
        Err(e) => e.into_response(),
    }
}
