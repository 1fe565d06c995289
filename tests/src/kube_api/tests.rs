//! Tests of the fake API server through the real `kube` client and
//! `kube-runtime` watchers, from a kubeconfig the server wrote.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;

use super::FakeKube;
use super::store::ResourceType;

/// How long any one expected thing may take.
const WAIT: Duration = Duration::from_secs(10);

async fn client(fake: &FakeKube) -> anyhow::Result<kube::Client> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&path, "fake")?;
    Ok(kube::Client::try_from(config(&path).await?)?)
}

async fn config(kubeconfig: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    Ok(kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?)
}

fn pod(namespace: &str, name: &str, app: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some([("app".to_string(), app.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-1".into()),
            containers: vec![Container {
                name: "main".into(),
                image: Some("registry.invalid/app:1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn keys(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| key(&p.metadata)).collect()
}

/// The pods the server holds: key → resourceVersion.
fn server_pods(fake: &FakeKube) -> BTreeMap<String, String> {
    let ty = ResourceType::of::<Pod>().key();
    fake.shared
        .store()
        .objects(&ty)
        .map(|((ns, name), o)| {
            let rv = o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            (format!("{ns}/{name}"), rv.to_string())
        })
        .collect()
}

/// The HTTP code of a failed API call.
fn code_of<T>(result: Result<T, kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

/// The next item of `stream`, within [`WAIT`].
async fn next<S: Stream + Unpin>(stream: &mut S) -> anyhow::Result<Option<S::Item>> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .context("nothing arrived in time")
}

/// What a watcher's events add up to, as a consumer of them keeps it.
#[derive(Default)]
struct Mirror {
    objects: BTreeMap<String, String>,
    buffer: BTreeMap<String, String>,
    log: Vec<String>,
}

impl Mirror {
    fn record(&mut self, event: Result<Event<Pod>, watcher::Error>) {
        let entry = |p: &Pod| {
            let rv = p.metadata.resource_version.clone().unwrap_or_default();
            (key(&p.metadata), rv)
        };
        let line = match event {
            Ok(Event::Init) => {
                self.buffer.clear();
                "Init".to_string()
            }
            Ok(Event::InitApply(p)) => {
                let (k, rv) = entry(&p);
                self.buffer.insert(k.clone(), rv);
                format!("InitApply {k}")
            }
            Ok(Event::InitDone) => {
                self.objects = std::mem::take(&mut self.buffer);
                "InitDone".to_string()
            }
            Ok(Event::Apply(p)) => {
                let (k, rv) = entry(&p);
                self.objects.insert(k.clone(), rv);
                format!("Apply {k}")
            }
            Ok(Event::Delete(p)) => {
                let (k, _) = entry(&p);
                self.objects.remove(&k);
                format!("Delete {k}")
            }
            Err(watcher::Error::WatchError(s)) => format!("Error {}", s.code),
            Err(e) => format!("Error {e}"),
        };
        self.log.push(line);
    }

    fn saw(&self, line: &str) -> bool {
        self.log.iter().any(|l| l == line)
    }
}

/// Feeds `mirror` from `events` until `done` holds.
async fn pump<S>(
    events: &mut S,
    mirror: &mut Mirror,
    what: &str,
    mut done: impl FnMut(&Mirror) -> bool,
) -> anyhow::Result<()>
where
    S: Stream<Item = Result<Event<Pod>, watcher::Error>> + Unpin,
{
    let deadline = Instant::now() + WAIT;
    while !done(mirror) {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}; events: {:?}", mirror.log);
        }
        // Short slices, so that a condition met without an event (a request
        // count) is noticed while the watcher keeps being driven.
        match tokio::time::timeout(Duration::from_millis(100), events.next()).await {
            Ok(Some(event)) => mirror.record(event),
            Ok(None) => bail!(
                "the watcher ended waiting for {what}; events: {:?}",
                mirror.log
            ),
            Err(_) => {}
        }
    }
    Ok(())
}

#[tokio::test]
async fn lists_page_through_one_snapshot() -> anyhow::Result<()> {
    let fake = FakeKube::start().await?;
    let client = client(&fake).await?;
    for (ns, name) in [
        ("b", "p1"),
        ("a", "p2"),
        ("a", "p1"),
        ("b", "p0"),
        ("c", "p9"),
    ] {
        fake.apply(pod(ns, name, "web"));
    }
    fake.set_page_limit(2);
    let pods: Api<Pod> = Api::all(client.clone());
    let first = pods.list(&ListParams::default().limit(2)).await?;
    let pinned = first.metadata.resource_version.clone();
    assert_eq!(pinned, Some(fake.resource_version().to_string()));
    // Changes after the first page do not show in the later ones.
    fake.apply(pod("a", "p0", "web"));
    assert!(fake.delete::<Pod>(Some("c"), "p9"));
    assert!(!fake.delete::<Pod>(Some("c"), "p9"));
    let mut names = keys(&first.items);
    let mut token = first.metadata.continue_.clone();
    let mut pages = 1;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = pods
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await?;
        assert_eq!(page.metadata.resource_version, pinned);
        assert!(page.items.len() <= 2);
        names.extend(keys(&page.items));
        token = page.metadata.continue_;
        pages += 1;
    }
    assert_eq!(names, ["a/p1", "a/p2", "b/p0", "b/p1", "c/p9"]);
    assert_eq!(pages, 3);
    assert_eq!(fake.requests("pods", "list"), 3);

    // The cap applies without a limit too; a fresh list sees the changes.
    let capped = pods.list(&ListParams::default()).await?;
    assert_eq!(capped.items.len(), 2);
    fake.set_page_limit(500);
    let all = pods.list(&ListParams::default()).await?;
    assert_eq!(keys(&all.items), ["a/p0", "a/p1", "a/p2", "b/p0", "b/p1"]);
    assert_eq!(all.metadata.continue_.filter(|c| !c.is_empty()), None);
    let in_a: Api<Pod> = Api::namespaced(client.clone(), "a");
    assert_eq!(in_a.list(&ListParams::default()).await?.items.len(), 3);
    fake.apply(pod("a", "p1", "db"));
    let web = pods.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(keys(&web.items), ["a/p0", "a/p2", "b/p0", "b/p1"]);
    let named = pods
        .list(&ListParams::default().fields("metadata.name=p1,spec.nodeName=node-1"))
        .await?;
    assert_eq!(keys(&named.items), ["a/p1", "b/p1"]);
    assert_eq!(
        code_of(
            pods.list(&ListParams::default().fields("status.phase=Running"))
                .await
        ),
        Some(400)
    );

    // A token from before a compaction is expired.
    fake.set_page_limit(2);
    let first = pods.list(&ListParams::default()).await?;
    let token = first.metadata.continue_.context("a continue token")?;
    fake.compact();
    let after = pods
        .list(&ListParams::default().continue_token(&token))
        .await;
    assert_eq!(code_of(after), Some(410));
    assert_eq!(
        code_of(
            pods.list(&ListParams::default().continue_token("garbage"))
                .await
        ),
        Some(400)
    );
    Ok(())
}

#[tokio::test]
async fn serves_objects_of_every_common_kind() -> anyhow::Result<()> {
    use k8s_openapi::api::{apps, autoscaling, batch, core, discovery, events, policy};

    async fn lists<K>(client: &kube::Client) -> anyhow::Result<()>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let list = Api::<K>::all(client.clone())
            .list(&ListParams::default())
            .await
            .with_context(|| format!("listing {}", K::plural(&())))?;
        assert!(list.items.is_empty());
        Ok(())
    }

    let fake = FakeKube::start().await?;
    let client = client(&fake).await?;
    lists::<core::v1::Node>(&client).await?;
    lists::<core::v1::Service>(&client).await?;
    lists::<core::v1::PersistentVolume>(&client).await?;
    lists::<core::v1::PersistentVolumeClaim>(&client).await?;
    lists::<core::v1::ResourceQuota>(&client).await?;
    lists::<discovery::v1::EndpointSlice>(&client).await?;
    lists::<events::v1::Event>(&client).await?;
    lists::<apps::v1::ReplicaSet>(&client).await?;
    lists::<apps::v1::StatefulSet>(&client).await?;
    lists::<apps::v1::DaemonSet>(&client).await?;
    lists::<batch::v1::Job>(&client).await?;
    lists::<batch::v1::CronJob>(&client).await?;
    lists::<autoscaling::v2::HorizontalPodAutoscaler>(&client).await?;
    lists::<policy::v1::PodDisruptionBudget>(&client).await?;
    // A type nobody registered is not served.
    let secrets = Api::<core::v1::Secret>::all(client.clone());
    assert_eq!(
        code_of(secrets.list(&ListParams::default()).await),
        Some(404)
    );
    fake.register::<core::v1::Secret>();
    assert!(secrets.list(&ListParams::default()).await?.items.is_empty());

    fake.apply(Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut deployment = Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    fake.apply(deployment.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let shop = namespaces.get("shop").await?;
    assert!(shop.metadata.uid.is_some() && shop.metadata.creation_timestamp.is_some());
    assert_eq!(shop.metadata.namespace, None);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let web = deployments.get("web").await?;
    assert_eq!(web.metadata.generation, Some(1));
    // A spec change bumps the generation and keeps the uid.
    deployment.spec = Some(k8s_openapi::api::apps::v1::DeploymentSpec {
        replicas: Some(3),
        ..Default::default()
    });
    let rv = fake.apply(deployment);
    let web2 = deployments.get("web").await?;
    assert_eq!(web2.metadata.generation, Some(2));
    assert_eq!(web2.metadata.uid, web.metadata.uid);
    assert_eq!(web2.metadata.resource_version, Some(rv.to_string()));
    let stored: Deployment = fake.get(Some("shop"), "web").context("stored")?;
    assert_eq!(stored.metadata.uid, web.metadata.uid);
    assert_eq!(code_of(deployments.get("nope").await), Some(404));
    assert_eq!(fake.requests("deployments", "get"), 3);
    assert_eq!(client.apiserver_version().await?.minor, "35");
    Ok(())
}

#[tokio::test]
async fn watcher_follows_changes_and_relists_after_compaction() -> anyhow::Result<()> {
    let fake = FakeKube::start().await?;
    fake.apply(pod("a", "p1", "web"));
    let client = client(&fake).await?;
    let mut events = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default()).boxed();
    let mut m = Mirror::default();
    pump(&mut events, &mut m, "the initial list", |m| {
        m.saw("InitDone")
    })
    .await?;
    assert_eq!(m.log, ["Init", "InitApply a/p1", "InitDone"]);

    fake.apply(pod("a", "p2", "web"));
    pump(&mut events, &mut m, "p2", |m| m.saw("Apply a/p2")).await?;
    let rv = fake.apply(pod("a", "p1", "db"));
    pump(&mut events, &mut m, "p1 modified", |m| {
        m.objects.get("a/p1") == Some(&rv.to_string())
    })
    .await?;
    fake.delete::<Pod>(Some("a"), "p2");
    pump(&mut events, &mut m, "p2 deleted", |m| m.saw("Delete a/p2")).await?;
    assert_eq!(m.objects, server_pods(&fake));

    // Compaction: the open watch gets 410 and the watcher lists again,
    // catching up with what changed meanwhile.
    m.log.clear();
    fake.compact();
    fake.close_watches();
    fake.apply(pod("b", "p3", "web"));
    pump(&mut events, &mut m, "the relist", |m| {
        m.saw("InitDone") && m.objects.contains_key("b/p3")
    })
    .await?;
    assert_eq!(
        m.log.first().map(String::as_str),
        Some("Error 410"),
        "{:?}",
        m.log
    );
    assert!(m.saw("Init"), "{:?}", m.log);
    assert_eq!(m.objects, server_pods(&fake));

    // A watch ended cleanly resumes from its version, without a list.
    m.log.clear();
    let lists = fake.requests("pods", "list");
    let watches = fake.requests("pods", "watch");
    fake.close_watches();
    fake.apply(pod("b", "p4", "web"));
    pump(&mut events, &mut m, "a new watch and p4", |m| {
        m.saw("Apply b/p4") && fake.requests("pods", "watch") > watches
    })
    .await?;
    assert!(!m.saw("Init"), "{:?}", m.log);
    assert_eq!(fake.requests("pods", "list"), lists);
    assert_eq!(m.objects, server_pods(&fake));
    Ok(())
}

#[tokio::test]
async fn watches_send_bookmarks_and_end_at_their_timeout() -> anyhow::Result<()> {
    let fake = FakeKube::start().await?;
    let client = client(&fake).await?;
    let pods: Api<Pod> = Api::all(client);
    let listed = pods.list(&ListParams::default()).await?;
    let rv = listed.metadata.resource_version.context("a list version")?;
    // A change of another kind moves the global version on.
    let newest = fake.apply(node("n1"));
    let started = Instant::now();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(2), &rv)
        .await?
        .boxed();
    let mut bookmarks = Vec::new();
    while let Some(event) = next(&mut stream).await? {
        match event? {
            WatchEvent::Bookmark(b) => bookmarks.push(b.metadata.resource_version.parse::<u64>()?),
            other => bail!("unexpected {other:?}"),
        }
    }
    // One after a second of quiet, one as the stream ends at its timeout.
    assert!(bookmarks.len() >= 2, "{bookmarks:?}");
    assert!(bookmarks.iter().all(|&b| b == newest), "{bookmarks:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Without bookmarks, a quiet watch sends nothing and still ends.
    let quiet = WatchParams::default().timeout(1).disable_bookmarks();
    let mut stream = pods.watch(&quiet, &rv).await?.boxed();
    if let Some(event) = next(&mut stream).await? {
        bail!("unexpected {:?}", event?);
    }
    Ok(())
}

#[tokio::test]
async fn watches_filter_start_from_now_and_expire() -> anyhow::Result<()> {
    let fake = FakeKube::start().await?;
    fake.apply(pod("a", "p1", "web"));
    let client = client(&fake).await?;
    let pods: Api<Pod> = Api::all(client);
    let rv = fake.resource_version().to_string();
    let selected = WatchParams::default().labels("app=web").disable_bookmarks();
    let mut web = pods.watch(&selected, &rv).await?.boxed();
    fake.apply(pod("a", "p2", "db"));
    fake.apply(pod("a", "p2", "web"));
    fake.apply(pod("a", "p2", "db"));
    fake.delete::<Pod>(Some("a"), "p1");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = next(&mut web).await?.context("the watch ended")??;
        seen.push(match event {
            WatchEvent::Added(p) => format!("ADDED {}", key(&p.metadata)),
            WatchEvent::Modified(p) => format!("MODIFIED {}", key(&p.metadata)),
            WatchEvent::Deleted(p) => format!("DELETED {}", key(&p.metadata)),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["ADDED a/p2", "DELETED a/p2", "DELETED a/p1"]);

    // Version "0": the current objects first.
    let mut now = pods.watch(&selected, "0").await?.boxed();
    fake.apply(pod("a", "p3", "web"));
    let added = loop {
        if let WatchEvent::Added(p) = next(&mut now).await?.context("the watch ended")?? {
            break key(&p.metadata);
        }
    };
    assert_eq!(added, "a/p3");

    // A compaction ends the open watches with 410, and older versions are
    // refused from then on.
    fake.compact();
    for stream in [&mut web, &mut now] {
        let mut last = None;
        while let Some(event) = next(stream).await? {
            last = Some(event?);
        }
        match last {
            Some(WatchEvent::Error(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
            other => bail!("expected a 410 error last, got {other:?}"),
        }
    }
    let mut old = pods.watch(&WatchParams::default(), &rv).await?.boxed();
    match next(&mut old).await?.context("the watch ended")?? {
        WatchEvent::Error(s) => assert_eq!(s.code, 410),
        other => bail!("expected a 410 error, got {other:?}"),
    }
    assert!(next(&mut old).await?.is_none());
    let exact = ListParams::default()
        .at(&rv)
        .matching(kube::api::VersionMatch::Exact);
    assert_eq!(code_of(pods.list(&exact).await), Some(410));
    Ok(())
}

#[tokio::test]
async fn streaming_lists_and_metadata_watchers() -> anyhow::Result<()> {
    let fake = FakeKube::start().await?;
    fake.apply(pod("a", "p1", "web"));
    fake.apply(pod("a", "p2", "web"));
    let client = client(&fake).await?;
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher::watcher(Api::<Pod>::all(client.clone()), config).boxed();
    let mut m = Mirror::default();
    pump(&mut events, &mut m, "the streamed list", |m| {
        m.saw("InitDone")
    })
    .await?;
    assert_eq!(
        m.log,
        ["Init", "InitApply a/p1", "InitApply a/p2", "InitDone"]
    );
    fake.apply(pod("a", "p3", "web"));
    pump(&mut events, &mut m, "p3", |m| m.saw("Apply a/p3")).await?;

    // Metadata-only requests (`as=PartialObjectMetadata`).
    let api = Api::<kube::core::PartialObjectMeta<Pod>>::all(client);
    let mut meta = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut names = Vec::new();
    loop {
        match next(&mut meta).await?.context("the watcher ended")?? {
            Event::InitApply(p) => names.push(key(&p.metadata)),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["a/p1", "a/p2", "a/p3"]);
    fake.delete::<Pod>(Some("a"), "p1");
    match next(&mut meta).await?.context("the watcher ended")?? {
        Event::Delete(p) => assert_eq!(key(&p.metadata), "a/p1"),
        other => bail!("expected the deletion, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn refuses_other_tokens_and_fails_on_demand() -> anyhow::Result<()> {
    let fake = FakeKube::start().await?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good");
    fake.write_kubeconfig(&good, "fake")?;
    let wrong = dir.path().join("wrong");
    let text = std::fs::read_to_string(&good)?;
    assert!(text.contains(fake.token()));
    std::fs::write(&wrong, text.replace(fake.token(), "not-the-token"))?;
    let client = kube::Client::try_from(config(&wrong).await?)?;
    let pods: Api<Pod> = Api::all(client);
    assert_eq!(code_of(pods.list(&ListParams::default()).await), Some(401));
    let mut anonymous = config(&good).await?;
    anonymous.auth_info = Default::default();
    let pods: Api<Pod> = Api::all(kube::Client::try_from(anonymous)?);
    assert_eq!(code_of(pods.list(&ListParams::default()).await), Some(401));
    assert_eq!(fake.requests("pods", "list"), 0);

    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config(&good).await?)?, "a");
    fake.fail_next("pods", 2);
    assert_eq!(code_of(pods.list(&ListParams::default()).await), Some(500));
    assert_eq!(code_of(pods.get_opt("x").await), Some(500));
    assert!(pods.get_opt("x").await?.is_none());
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    assert_eq!(fake.requests("pods", "list"), 2);
    assert_eq!(fake.requests("pods", "get"), 2);
    Ok(())
}
