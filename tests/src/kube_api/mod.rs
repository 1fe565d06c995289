//! A fake Kubernetes API server for the end-to-end tests: the real `kube`
//! client (and so the aggregator's Kubernetes source) lists and watches it over
//! HTTPS, with the API server's semantics, while the test sets the cluster's
//! state directly.
//!
//! It owns a versioned object store (one global resourceVersion, a change
//! history until [`FakeKube::compact`]), list paging with `limit` and
//! `continue` over a pinned snapshot, label and field selectors, watch streams
//! with bookmarks, timeouts and 410 `Expired` errors, bearer-token
//! authentication, request counting and injected failures. Resource types come
//! from the k8s-openapi definitions; the common ones are served from the start
//! and others once [`FakeKube::register`]ed or applied.
//!
//! The server listens on 127.0.0.1 only, and runs on a small runtime of its
//! own, so it keeps answering while a test body blocks the runtime it runs on.

mod http;
mod kubeconfig;
mod list;
mod query;
mod selector;
mod shared;
mod status;
mod store;
pub(crate) mod tls;
mod watch;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_rustls::TlsAcceptor;

use self::shared::Shared;
use self::store::{ResourceType, Store};

/// A running fake API server; it stops serving when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca_pem: String,
    /// Runs the listener, the connections and the watches; `None` only while
    /// dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeKube {
    /// Starts serving on 127.0.0.1:<free port> over HTTPS (its own CA),
    /// requiring `Authorization: Bearer <token>` (401 otherwise).
    pub async fn start() -> anyhow::Result<FakeKube> {
        let tls = tls::generate()?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-kube")
            .enable_all()
            .build()
            .context("starting the fake API server's runtime")?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let mut store = Store::new();
        for ty in default_types() {
            store.register(ty);
        }
        let shared = Arc::new(Shared::new(store, new_token()));
        runtime.spawn(http::serve(
            listener,
            TlsAcceptor::from(tls.config),
            shared.clone(),
        ));
        Ok(Self {
            addr,
            shared,
            ca_pem: tls.ca_pem,
            runtime: Some(runtime),
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer token requests must carry.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The PEM certificate of the CA that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes a kubeconfig (CA data embedded, bearer token) with one
    /// cluster/user/context named `context`, current-context set.
    pub fn write_kubeconfig(&self, path: &Path, context: &str) -> anyhow::Result<()> {
        kubeconfig::write(path, &self.url(), &self.ca_pem, self.token(), context)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Serves resource type `K` (the common types are served from the start,
    /// and a type is served once an object of it is applied).
    pub fn register<K: k8s_openapi::Resource>(&self) {
        self.shared.store().register(ResourceType::of::<K>());
    }

    /// Creates or replaces an object (matched by kind, namespace, name; a
    /// namespaced object without a namespace goes to `default`), and emits
    /// ADDED or MODIFIED to watchers. Returns its new resourceVersion.
    ///
    /// The store sets `metadata.resourceVersion` from one global counter.
    /// On creation it keeps the caller's `uid`, `creationTimestamp` and
    /// `generation` when set (a fresh uid, now and 1 otherwise); on
    /// replacement it keeps the stored `uid` and `creationTimestamp` and bumps
    /// `generation` when anything but `metadata` and `status` changed.
    ///
    /// Panics, as a broken test set-up, on an object without a name.
    pub fn apply<K>(&self, obj: K) -> u64
    where
        K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize,
    {
        let value = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(e) => panic!("cannot serialize a {}: {e}", K::KIND),
        };
        match self
            .shared
            .change(|store| store.apply(ResourceType::of::<K>(), value))
        {
            Ok(rv) => rv,
            Err(e) => panic!("cannot apply: {e}"),
        }
    }

    /// Deletes an object (a namespaced one in `namespace`, `default` if
    /// none); emits DELETED with the object at a new resourceVersion. Returns
    /// false if absent.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: Option<&str>, name: &str) -> bool {
        let ty = ResourceType::of::<K>();
        let key = (object_namespace(&ty, namespace), name.to_string());
        self.shared
            .change(|store| store.delete(&ty.key(), &key))
            .is_some()
    }

    /// The stored object, if there is one (and it deserializes as `K`).
    pub fn get<K: DeserializeOwned + k8s_openapi::Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let ty = ResourceType::of::<K>();
        let key = (object_namespace(&ty, namespace), name.to_string());
        let value = self.shared.store().get(&ty.key(), &key).cloned()?;
        serde_json::from_value(value).ok()
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().current()
    }

    /// Forgets the event history up to now: a watch or a `continue` token
    /// from an older resourceVersion gets 410 Gone (an `ERROR` event with an
    /// `Expired` status on a watch, HTTP 410 on a list). Every version handed
    /// out before is older (the counter moves on by one), so every open watch
    /// ends with that `ERROR` event and its client relists.
    pub fn compact(&self) {
        self.shared.change(Store::compact);
    }

    /// Page size cap for lists (lists honour `limit` and `continue`; default
    /// cap 500).
    pub fn set_page_limit(&self, n: usize) {
        self.shared.set_page_limit(n);
    }

    /// Counts of requests served so far, per (kind plural,
    /// "list"|"watch"|"get"): every authenticated request for a served type,
    /// the ones failed by [`FakeKube::fail_next`] included.
    pub fn requests(&self, plural: &str, verb: &str) -> u64 {
        self.shared.requests(plural, verb)
    }

    /// Makes the next `n` requests for `plural` (any verb) fail with 500 and
    /// an `InternalError` status (to test back-off); replaces an earlier
    /// count.
    pub fn fail_next(&self, plural: &str, n: u32) {
        self.shared.fail_next(plural, n);
    }

    /// Ends every open watch stream cleanly (as an API server does at its
    /// timeout): pending events, a bookmark where allowed, then the end.
    pub fn close_watches(&self) {
        self.shared.closes.send_modify(|g| *g += 1);
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        // A test drops the server inside its own async runtime, where a
        // blocking shutdown is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The store's namespace of an object of `ty` named with `namespace`.
fn object_namespace(ty: &ResourceType, namespace: Option<&str>) -> String {
    if ty.namespaced {
        namespace.unwrap_or("default").to_string()
    } else {
        String::new()
    }
}

/// The types served from the start.
fn default_types() -> Vec<ResourceType> {
    use k8s_openapi::api::{apps, autoscaling, batch, core, discovery, events, policy};
    vec![
        ResourceType::of::<core::v1::Node>(),
        ResourceType::of::<core::v1::Pod>(),
        ResourceType::of::<core::v1::Service>(),
        ResourceType::of::<core::v1::Namespace>(),
        ResourceType::of::<core::v1::PersistentVolume>(),
        ResourceType::of::<core::v1::PersistentVolumeClaim>(),
        ResourceType::of::<core::v1::ResourceQuota>(),
        ResourceType::of::<core::v1::ConfigMap>(),
        ResourceType::of::<discovery::v1::EndpointSlice>(),
        ResourceType::of::<events::v1::Event>(),
        ResourceType::of::<apps::v1::Deployment>(),
        ResourceType::of::<apps::v1::ReplicaSet>(),
        ResourceType::of::<apps::v1::StatefulSet>(),
        ResourceType::of::<apps::v1::DaemonSet>(),
        ResourceType::of::<batch::v1::Job>(),
        ResourceType::of::<batch::v1::CronJob>(),
        ResourceType::of::<autoscaling::v2::HorizontalPodAutoscaler>(),
        ResourceType::of::<policy::v1::PodDisruptionBudget>(),
    ]
}

/// A token unique to this server.
fn new_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("fake-kube-{:x}-{nanos:x}", std::process::id())
}
