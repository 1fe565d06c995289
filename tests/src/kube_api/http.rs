//! The HTTPS side of the fake API server: accepting TLS connections, checking
//! the bearer token, routing API paths to resource types, counting requests,
//! injecting failures, and answering with JSON or a watch stream.
//!
//! Paths: `/api/v1/<plural>[/<name>]`, `/api/v1/namespaces/<ns>/<plural>[/<name>]`
//! and the same under `/apis/<group>/<version>/`, plus `/version`. Only `GET`
//! is served; anything else gets a `Status` with the API server's code.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::list;
use super::query::{Filter, Params, Shape};
use super::shared::Shared;
use super::status;
use super::store::ResourceType;
use super::watch::{self, WatchRequest};

/// Serves the API on `listener` until the runtime running it stops.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    super::tls::serve(listener, acceptor, move |req| handle(&shared, req)).await;
}

/// A response body: one JSON document, or the lines of a watch.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

/// The request's path, split into what it names.
#[derive(Debug, PartialEq, Eq)]
struct Route<'a> {
    group: &'a str,
    version: &'a str,
    plural: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, plural, name) = match rest {
            [plural] => (None, *plural, None),
            [plural, name] => (None, *plural, Some(*name)),
            ["namespaces", ns, plural] => (Some(*ns), *plural, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            _ => return None,
        };
        let nonempty = |s: &str| !s.is_empty();
        let valid = nonempty(version)
            && nonempty(plural)
            && namespace.is_none_or(nonempty)
            && name.is_none_or(nonempty);
        valid.then_some(Self {
            group,
            version,
            plural,
            namespace,
            name,
        })
    }
}

/// Answers one request.
fn handle(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Body> {
    let expected = format!("Bearer {}", shared.token);
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        return json_response(401, &status::failure(401, "Unauthorized", "Unauthorized"));
    }
    if req.method() != Method::GET {
        return json_response(
            405,
            &status::failure(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ),
        );
    }
    let path = req.uri().path();
    if path == "/version" {
        return json_response(200, &version());
    }
    let Some(route) = Route::parse(path) else {
        return not_found();
    };
    let ty = shared
        .store()
        .resource_type(route.group, route.version, route.plural)
        .cloned();
    let Some(ty) = ty else {
        return not_found();
    };
    // A cluster-scoped type has no namespaced path, and a namespaced object
    // is only reached through its namespace.
    if (route.namespace.is_some() && !ty.namespaced)
        || (route.namespace.is_none() && ty.namespaced && route.name.is_some())
    {
        return not_found();
    }
    let params = match Params::parse(req.uri().query().unwrap_or_default()) {
        Ok(p) => p,
        Err(e) => return json_response(400, &status::bad_request(&e)),
    };
    let verb = match (params.watch, route.name) {
        (true, _) => "watch",
        (false, Some(_)) => "get",
        (false, None) => "list",
    };
    shared.count(&ty.plural, verb);
    if shared.take_failure(&ty.plural) {
        return json_response(
            500,
            &status::failure(
                500,
                "InternalError",
                "an injected failure of the fake API server",
            ),
        );
    }
    let shape = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map_or(Shape::Full, Shape::from_accept);
    let filter = match Filter::new(&ty, route.namespace, &params) {
        Ok(f) => f,
        Err(e) => return json_response(400, &status::bad_request(&e)),
    };
    match (verb, route.name) {
        ("get", Some(name)) => {
            let (code, body) = list::get(shared, &ty, route.namespace, name, shape);
            json_response(code, &body)
        }
        ("watch", name) => watch_response(shared, ty, filter, name, &params, shape),
        _ => {
            let (code, body) = list::list(shared, &ty, &filter, &params, shape);
            json_response(code, &body)
        }
    }
}

/// Starts a watch (of one object when the path names it).
fn watch_response(
    shared: &Arc<Shared>,
    ty: ResourceType,
    mut filter: Filter,
    name: Option<&str>,
    params: &Params,
    shape: Shape,
) -> Response<Body> {
    let from = match params.version() {
        Ok(v) => v,
        Err(e) => return json_response(400, &status::bad_request(&e)),
    };
    if let Some(name) = name {
        filter.fields = std::mem::take(&mut filter.fields).with_name(name);
    }
    let initial = params.send_initial_events;
    let req = WatchRequest {
        ty,
        filter,
        shape,
        // sendInitialEvents=false with no version: from now, without the
        // current objects.
        from: match (from, initial) {
            (None, Some(false)) => Some(shared.store().current()),
            (from, _) => from,
        },
        initial_events: initial == Some(true),
        mark_initial_end: initial == Some(true),
        bookmarks: params.bookmarks,
        timeout: params.timeout,
    };
    let rx = watch::start(shared.clone(), req);
    let mut response = Response::new(Body::Stream(rx));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn not_found() -> Response<Body> {
    json_response(
        404,
        &status::failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    )
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "gitVersion": "v1.35.0-fake",
        "platform": "linux/amd64",
    })
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::Full(Some(Bytes::from(bytes))));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = Route::parse("/api/v1/namespaces/ns/pods/p").unwrap();
        assert_eq!(
            r,
            Route {
                group: "",
                version: "v1",
                plural: "pods",
                namespace: Some("ns"),
                name: Some("p"),
            }
        );
        let r = Route::parse("/api/v1/namespaces").unwrap();
        assert_eq!((r.plural, r.name), ("namespaces", None));
        let r = Route::parse("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!((r.plural, r.name), ("namespaces", Some("kube-system")));
        let r = Route::parse("/apis/apps/v1/deployments").unwrap();
        assert_eq!(
            (r.group, r.plural, r.namespace),
            ("apps", "deployments", None)
        );
        assert!(Route::parse("/apis/apps/v1/namespaces/ns/deployments/d/status").is_none());
        assert!(Route::parse("/healthz").is_none());
        assert!(Route::parse("/api/v1/").is_none());
    }
}
