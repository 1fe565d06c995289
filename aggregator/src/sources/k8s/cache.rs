//! One cluster's objects as the watches last delivered them, with the indexes
//! the rules need (pods by node and by namespace, slices by service, quotas by
//! namespace), and which objects a change touches: a node's pods, a pod's
//! services, owners, budgets, claims and namespace, so that health that depends
//! on another object is evaluated again when that object changes.
//!
//! A relist (after `410 Gone` or a broken watch) is gathered apart and swapped
//! in whole when it is complete: objects missing from it were deleted while the
//! watch was down, and nothing is reported from a half-read list.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::objects::{EndpointSlice, Key, Kind, Object, Pod, Quota, Warning};

/// A cluster's objects.
#[derive(Debug, Default)]
pub struct Cache {
    objects: HashMap<Key, Object>,
    /// Pod names by node.
    pods_by_node: HashMap<String, BTreeSet<Key>>,
    /// Keys by kind and namespace (every namespaced kind).
    by_namespace: HashMap<(Kind, String), BTreeSet<Key>>,
    /// Keys by kind.
    by_kind: HashMap<Kind, HashSet<Key>>,
    /// Warning events by the object they are about.
    warnings: HashMap<Key, BTreeSet<Key>>,
    /// The pods each Service and PodDisruptionBudget selects, kept as pods and
    /// selectors change (a Service's health reads them at every change of one
    /// of its pods).
    selected: HashMap<Key, BTreeSet<Key>>,
    /// Relists in progress, by kind.
    relisting: HashMap<Kind, HashMap<Key, Object>>,
    /// Kinds whose first list completed.
    synced: HashSet<Kind>,
}

/// One delivery from a watch.
#[derive(Debug)]
pub enum Update {
    /// An object was created or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Key),
    /// A (re)list of `Kind` starts.
    ListStart(Kind),
    /// An object of the list in progress.
    Listed(Object),
    /// The list of `Kind` is complete.
    ListDone(Kind),
}

impl Cache {
    /// The object under `key`.
    pub fn get(&self, key: &Key) -> Option<&Object> {
        self.objects.get(key)
    }

    /// Objects of the cluster.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.objects.keys()
    }

    /// True once every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.synced.len() == Kind::ALL.len()
    }

    /// Pods scheduled on `node`.
    pub fn pods_on(&self, node: &str) -> impl Iterator<Item = &Pod> {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| match self.objects.get(k) {
                Some(Object::Pod(p)) => Some(&**p),
                _ => None,
            })
    }

    /// Objects of `kind` in `namespace`.
    pub fn in_namespace(&self, namespace: &str, kind: Kind) -> impl Iterator<Item = &Object> {
        self.by_namespace
            .get(&(kind, namespace.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|key| self.objects.get(key))
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.by_kind
            .get(&kind)
            .into_iter()
            .flatten()
            .filter_map(|k| self.objects.get(k))
    }

    /// The pods Service or PodDisruptionBudget `owner` selects (none for an
    /// empty selector), in key order.
    pub fn pods_selected(&self, owner: &Key) -> impl Iterator<Item = &Pod> {
        self.selected
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|k| match self.objects.get(k) {
                Some(Object::Pod(p)) => Some(&**p),
                _ => None,
            })
    }

    /// The selector of a Service or PodDisruptionBudget.
    fn selector_of(object: &Object) -> Option<&BTreeMap<String, String>> {
        match object {
            Object::Service(s) => Some(&s.selector),
            Object::Pdb(b) => Some(&b.selector),
            _ => None,
        }
    }

    /// Updates [`Cache::pods_selected`] after `key` was stored or removed.
    fn index_selection(&mut self, key: &Key) {
        match key.kind {
            Kind::Pod => {
                let labels = match self.objects.get(key) {
                    Some(Object::Pod(p)) => Some(p.meta.labels.clone()),
                    _ => None,
                };
                let owners: Vec<(Key, bool)> = [Kind::Service, Kind::Pdb]
                    .into_iter()
                    .flat_map(|kind| self.in_namespace(&key.namespace, kind))
                    .filter_map(|o| {
                        let selector = Self::selector_of(o)?;
                        let selects = labels.as_ref().is_some_and(|l| matches(selector, l));
                        Some((o.key(), selects))
                    })
                    .collect();
                for (owner, selects) in owners {
                    if selects {
                        self.selected.entry(owner).or_default().insert(key.clone());
                    } else if let Some(set) = self.selected.get_mut(&owner) {
                        set.remove(key);
                    }
                }
            }
            Kind::Service | Kind::Pdb => {
                let pods: BTreeSet<Key> = match self.objects.get(key).and_then(Self::selector_of) {
                    Some(selector) => self
                        .in_namespace(&key.namespace, Kind::Pod)
                        .filter(
                            |o| matches!(o, Object::Pod(p) if matches(selector, &p.meta.labels)),
                        )
                        .map(Object::key)
                        .collect(),
                    None => BTreeSet::new(),
                };
                if self.objects.contains_key(key) {
                    self.selected.insert(key.clone(), pods);
                } else {
                    self.selected.remove(key);
                }
            }
            _ => {}
        }
    }

    /// The EndpointSlices of a service.
    pub fn slices_of<'a>(
        &'a self,
        namespace: &str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> {
        self.in_namespace(namespace, Kind::EndpointSlice)
            .filter_map(|o| match o {
                Object::EndpointSlice(s) => Some(&**s),
                _ => None,
            })
            .filter(move |s| s.service == service)
    }

    /// The Warning events about `key`.
    pub fn warnings_about(&self, key: &Key) -> impl Iterator<Item = &Warning> {
        self.warnings
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| match self.objects.get(k) {
                Some(Object::Warning(w)) => Some(&**w),
                _ => None,
            })
    }

    /// The ResourceQuotas of a namespace.
    pub fn quotas_of(&self, namespace: &str) -> impl Iterator<Item = &Quota> {
        self.in_namespace(namespace, Kind::ResourceQuota)
            .filter_map(|o| match o {
                Object::Quota(q) => Some(&**q),
                _ => None,
            })
    }

    /// Applies `update`; returns the keys whose own object changed (created,
    /// changed or deleted). Their dependents are found by [`Cache::touched`].
    pub fn apply(&mut self, update: Update) -> Vec<(Key, Option<Object>)> {
        match update {
            Update::Apply(object) => self.put(object).into_iter().collect(),
            Update::Delete(key) => self.remove(&key).into_iter().collect(),
            Update::ListStart(kind) => {
                self.relisting.insert(kind, HashMap::new());
                Vec::new()
            }
            Update::Listed(object) => {
                let kind = object.kind();
                self.relisting
                    .entry(kind)
                    .or_default()
                    .insert(object.key(), object);
                Vec::new()
            }
            Update::ListDone(kind) => {
                let listed = self.relisting.remove(&kind).unwrap_or_default();
                self.synced.insert(kind);
                let gone: Vec<Key> = self
                    .by_kind
                    .get(&kind)
                    .into_iter()
                    .flatten()
                    .filter(|k| !listed.contains_key(k))
                    .cloned()
                    .collect();
                let mut changed: Vec<(Key, Option<Object>)> =
                    gone.iter().filter_map(|k| self.remove(k)).collect();
                for object in listed.into_values() {
                    changed.extend(self.put(object));
                }
                changed
            }
        }
    }

    /// Stores `object`; the old version if it differed (or `None` inside the
    /// pair for a new object), nothing when it is unchanged.
    fn put(&mut self, object: Object) -> Option<(Key, Option<Object>)> {
        let key = object.key();
        if self.objects.get(&key) == Some(&object) {
            return None;
        }
        if let Object::Pod(p) = &object {
            self.index_pod(&key, p, true);
        }
        if let Object::Warning(w) = &object
            && let Some(about) = &w.about
        {
            self.warnings
                .entry(about.clone())
                .or_default()
                .insert(key.clone());
        }
        if !key.namespace.is_empty() {
            self.by_namespace
                .entry((key.kind, key.namespace.clone()))
                .or_default()
                .insert(key.clone());
        }
        self.by_kind
            .entry(key.kind)
            .or_default()
            .insert(key.clone());
        let old = self.objects.insert(key.clone(), object);
        if let Some(Object::Pod(p)) = &old {
            let moved = match self.objects.get(&key) {
                Some(Object::Pod(now)) => now.node != p.node,
                _ => true,
            };
            if moved {
                self.index_pod(&key, p, false);
            }
        }
        if let Some(Object::Warning(w)) = &old {
            let same = matches!(self.objects.get(&key), Some(Object::Warning(now)) if now.about == w.about);
            if !same {
                self.unindex_warning(&key, w);
            }
        }
        self.index_selection(&key);
        Some((key, old))
    }

    fn remove(&mut self, key: &Key) -> Option<(Key, Option<Object>)> {
        let old = self.objects.remove(key)?;
        if let Object::Pod(p) = &old {
            self.index_pod(key, p, false);
        }
        if let Object::Warning(w) = &old {
            self.unindex_warning(key, w);
        }
        let by_ns = (key.kind, key.namespace.clone());
        if let Some(names) = self.by_namespace.get_mut(&by_ns) {
            names.remove(key);
            if names.is_empty() {
                self.by_namespace.remove(&by_ns);
            }
        }
        if let Some(keys) = self.by_kind.get_mut(&key.kind) {
            keys.remove(key);
        }
        self.index_selection(key);
        Some((key.clone(), Some(old)))
    }

    fn unindex_warning(&mut self, key: &Key, w: &Warning) {
        if let Some(about) = &w.about
            && let Some(set) = self.warnings.get_mut(about)
        {
            set.remove(key);
            if set.is_empty() {
                self.warnings.remove(about);
            }
        }
    }

    fn index_pod(&mut self, key: &Key, pod: &Pod, add: bool) {
        if pod.node.is_empty() {
            return;
        }
        if add {
            self.pods_by_node
                .entry(pod.node.clone())
                .or_default()
                .insert(key.clone());
        } else if let Some(set) = self.pods_by_node.get_mut(&pod.node) {
            set.remove(key);
            if set.is_empty() {
                self.pods_by_node.remove(&pod.node);
            }
        }
    }

    /// Every key whose observation may change because `key` changed from
    /// `old` to what the cache holds now: the object itself and the objects
    /// whose health or relations read it.
    pub fn touched(&self, key: &Key, old: Option<&Object>, out: &mut BTreeSet<Key>) {
        let now = self.objects.get(key);
        out.insert(key.clone());
        for object in [old, now].into_iter().flatten() {
            match object {
                Object::Node(n) => {
                    for pod in self.pods_on(&n.meta.name) {
                        let pk = Key::new(Kind::Pod, &pod.meta.namespace, &pod.meta.name);
                        if out.insert(pk.clone()) {
                            self.touched_by_pod(pod, out);
                        }
                    }
                }
                Object::Pod(p) => self.touched_by_pod(p, out),
                Object::EndpointSlice(s) => {
                    out.insert(Key::new(Kind::Service, &s.meta.namespace, &s.service));
                }
                Object::Quota(q) => {
                    out.insert(Key::new(Kind::Namespace, "", &q.meta.namespace));
                }
                Object::Workload(_, w) => {
                    if let Some((kind, name)) = &w.meta.owner
                        && let Some(kind) = Kind::from_api_kind(kind)
                    {
                        out.insert(Key::new(kind, &w.meta.namespace, name));
                    }
                    for hpa in self.in_namespace(&w.meta.namespace, Kind::Hpa) {
                        if let Object::Hpa(h) = hpa
                            && h.target.1 == w.meta.name
                        {
                            out.insert(hpa.key());
                        }
                    }
                }
                Object::Job(j) => {
                    if let Some((kind, name)) = &j.meta.owner
                        && kind == "CronJob"
                    {
                        out.insert(Key::new(Kind::CronJob, &j.meta.namespace, name));
                    }
                }
                Object::Pvc(c) if !c.volume.is_empty() => {
                    out.insert(Key::new(Kind::Pv, "", &c.volume));
                }
                Object::Pv(v) => {
                    if let Some((ns, name)) = &v.claim {
                        out.insert(Key::new(Kind::Pvc, ns, name));
                    }
                }
                Object::Warning(w) => {
                    if let Some(about) = &w.about {
                        out.insert(about.clone());
                    }
                }
                _ => {}
            }
        }
    }

    fn touched_by_pod(&self, p: &Pod, out: &mut BTreeSet<Key>) {
        let ns = &p.meta.namespace;
        for svc in self.in_namespace(ns, Kind::Service) {
            if let Object::Service(s) = svc
                && !s.selector.is_empty()
                && matches(&s.selector, &p.meta.labels)
            {
                out.insert(svc.key());
            }
        }
        for pdb in self.in_namespace(ns, Kind::Pdb) {
            if let Object::Pdb(b) = pdb
                && !b.selector.is_empty()
                && matches(&b.selector, &p.meta.labels)
            {
                out.insert(pdb.key());
            }
        }
        if let Some((kind, name)) = &p.meta.owner
            && let Some(kind) = Kind::from_api_kind(kind)
        {
            out.insert(Key::new(kind, ns, name));
        }
        for claim in &p.claims {
            out.insert(Key::new(Kind::Pvc, ns, claim));
        }
        if !p.node.is_empty() {
            out.insert(Key::new(Kind::Node, "", &p.node));
        }
    }
}

/// True when every pair of `selector` is in `labels` (an empty selector
/// matches nothing here: a Service without one has hand-made endpoints).
pub fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::k8s::objects::{Meta, Node, Service};

    fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> Meta {
        Meta {
            name: name.into(),
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Meta::default()
        }
    }

    fn pod(name: &str, node: &str) -> Object {
        Object::Pod(Box::new(Pod {
            meta: meta("shop", name, &[("app", "web")]),
            node: node.into(),
            phase: "Running".into(),
            ..Pod::default()
        }))
    }

    #[test]
    fn a_node_change_touches_its_pods_and_their_services() {
        let mut c = Cache::default();
        c.apply(Update::Apply(Object::Node(Box::new(Node {
            meta: meta("", "n1", &[]),
            ..Node::default()
        }))));
        c.apply(Update::Apply(pod("web-1", "n1")));
        c.apply(Update::Apply(pod("web-2", "n2")));
        c.apply(Update::Apply(Object::Service(Box::new(Service {
            meta: meta("shop", "web", &[]),
            selector: [("app".to_string(), "web".to_string())].into(),
            ..Service::default()
        }))));
        let key = Key::new(Kind::Node, "", "n1");
        let mut out = BTreeSet::new();
        c.touched(&key, None, &mut out);
        assert!(out.contains(&Key::new(Kind::Pod, "shop", "web-1")));
        assert!(!out.contains(&Key::new(Kind::Pod, "shop", "web-2")));
        assert!(out.contains(&Key::new(Kind::Service, "shop", "web")));
    }

    #[test]
    fn selections_follow_pods_and_selectors() {
        let mut c = Cache::default();
        let web = Key::new(Kind::Service, "shop", "web");
        let service = |app: &str| {
            Object::Service(Box::new(Service {
                meta: meta("shop", "web", &[]),
                selector: [("app".to_string(), app.to_string())].into(),
                ..Service::default()
            }))
        };
        c.apply(Update::Apply(pod("web-1", "n1")));
        c.apply(Update::Apply(service("web")));
        c.apply(Update::Apply(pod("web-2", "n1")));
        let names = |c: &Cache| -> Vec<String> {
            c.pods_selected(&web).map(|p| p.meta.name.clone()).collect()
        };
        assert_eq!(
            names(&c),
            vec!["web-1", "web-2"],
            "pods before and after the Service"
        );
        let Some(Object::Pod(mut relabelled)) =
            c.get(&Key::new(Kind::Pod, "shop", "web-2")).cloned()
        else {
            panic!("web-2 is cached");
        };
        relabelled.meta.labels = [("app".to_string(), "db".to_string())].into();
        c.apply(Update::Apply(Object::Pod(relabelled)));
        assert_eq!(
            names(&c),
            vec!["web-1"],
            "a pod whose labels no longer match leaves"
        );
        c.apply(Update::Delete(Key::new(Kind::Pod, "shop", "web-1")));
        assert!(names(&c).is_empty(), "a deleted pod leaves");
        c.apply(Update::Apply(service("db")));
        assert_eq!(names(&c), vec!["web-2"], "a new selector selects again");
        c.apply(Update::Delete(web.clone()));
        assert!(names(&c).is_empty());
    }

    #[test]
    fn a_relist_reports_only_what_changed_and_what_went_away() {
        let mut c = Cache::default();
        c.apply(Update::ListStart(Kind::Pod));
        c.apply(Update::Listed(pod("a", "n1")));
        c.apply(Update::Listed(pod("b", "n1")));
        assert!(c.is_empty(), "nothing is used from a half-read list");
        assert_eq!(c.apply(Update::ListDone(Kind::Pod)).len(), 2);
        c.apply(Update::ListStart(Kind::Pod));
        c.apply(Update::Listed(pod("a", "n1")));
        c.apply(Update::Listed(pod("c", "n2")));
        let changed: Vec<Key> = c
            .apply(Update::ListDone(Kind::Pod))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(changed.contains(&Key::new(Kind::Pod, "shop", "b")));
        assert!(changed.contains(&Key::new(Kind::Pod, "shop", "c")));
        assert_eq!(c.pods_on("n1").count(), 1);
        assert_eq!(c.pods_on("n2").count(), 1);
    }
}
