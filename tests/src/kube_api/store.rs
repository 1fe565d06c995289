//! The versioned object store behind the fake API server.
//!
//! Objects are kept as JSON per resource type, sorted by namespace and name.
//! Every change takes the next value of one global `resourceVersion` counter
//! (like etcd's revision) and is recorded in a history that lasts until the next
//! compaction. Watches are fed from that history, and older snapshots (the
//! version a `continue` token pins, or an exact-version list) are rebuilt from
//! it by undoing the newer changes.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Map, Value, json};

/// A resource type the server serves, derived from a k8s-openapi type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourceType {
    /// API group; empty for the core group.
    pub(crate) group: String,
    /// API version within the group (`v1`).
    pub(crate) version: String,
    /// The plural path segment (`pods`).
    pub(crate) plural: String,
    /// The kind (`Pod`).
    pub(crate) kind: String,
    /// Whether objects live in namespaces.
    pub(crate) namespaced: bool,
}

impl ResourceType {
    /// The type of `K`.
    pub(crate) fn of<K: k8s_openapi::Resource>() -> Self {
        // `ResourceScope` carries no value to ask, only a type to name.
        let scope = std::any::type_name::<K::Scope>();
        Self {
            group: K::GROUP.to_string(),
            version: K::VERSION.to_string(),
            plural: K::URL_PATH_SEGMENT.to_string(),
            kind: K::KIND.to_string(),
            namespaced: scope.ends_with("NamespaceResourceScope"),
        }
    }

    /// The `apiVersion` of its objects (`v1`, `apps/v1`).
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Its key in the store.
    pub(crate) fn key(&self) -> TypeKey {
        TypeKey {
            group: self.group.clone(),
            version: self.version.clone(),
            plural: self.plural.clone(),
        }
    }
}

/// Identifies a resource type: group, version and plural.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TypeKey {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) plural: String,
}

/// Identifies an object within its type: (namespace, name), the namespace empty
/// for cluster-scoped objects. Its order is the order of list results.
pub(crate) type ObjectKey = (String, String);

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One recorded change.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The resourceVersion it took.
    pub(crate) rv: u64,
    pub(crate) ty: TypeKey,
    pub(crate) kind: ChangeKind,
    /// The object after the change; for a deletion, its last state at the
    /// deletion's resourceVersion.
    pub(crate) object: Value,
    /// The object before the change (none for an addition).
    pub(crate) previous: Option<Value>,
}

/// A version older than the last compaction was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    /// The version asked for.
    pub(crate) requested: u64,
    /// The oldest version still served.
    pub(crate) oldest: u64,
}

/// The objects and their history.
#[derive(Debug)]
pub(crate) struct Store {
    /// The newest resourceVersion handed out.
    rv: u64,
    /// Versions below this one are expired.
    compacted: u64,
    types: BTreeMap<TypeKey, ResourceType>,
    objects: HashMap<TypeKey, BTreeMap<ObjectKey, Value>>,
    /// Every change with a version above `compacted`, oldest first.
    history: Vec<Change>,
    uids: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store at resourceVersion 1.
    pub(crate) fn new() -> Self {
        Self {
            rv: 1,
            compacted: 1,
            types: BTreeMap::new(),
            objects: HashMap::new(),
            history: Vec::new(),
            uids: 0,
        }
    }

    /// Serves `ty` from now on (a no-op if it is served already).
    pub(crate) fn register(&mut self, ty: ResourceType) {
        self.types.entry(ty.key()).or_insert(ty);
    }

    /// The served type at `group`/`version`/`plural`.
    pub(crate) fn resource_type(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&ResourceType> {
        self.types.get(&TypeKey {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
        })
    }

    /// The newest resourceVersion.
    pub(crate) fn current(&self) -> u64 {
        self.rv
    }

    /// Fails with [`Expired`] when `rv` is older than the last compaction.
    pub(crate) fn check(&self, rv: u64) -> Result<(), Expired> {
        if rv < self.compacted {
            Err(Expired {
                requested: rv,
                oldest: self.compacted,
            })
        } else {
            Ok(())
        }
    }

    /// The current object `key` of `ty`.
    pub(crate) fn get(&self, ty: &TypeKey, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(ty)?.get(key)
    }

    /// The current objects of `ty`, in list order.
    pub(crate) fn objects(&self, ty: &TypeKey) -> impl Iterator<Item = (&ObjectKey, &Value)> {
        self.objects.get(ty).into_iter().flatten()
    }

    /// Creates or replaces `object` (a serialized object of `ty` with
    /// `metadata.name`; a namespaced one without a namespace goes to
    /// `default`), and returns its new resourceVersion.
    ///
    /// On creation the caller's `uid`, `creationTimestamp` and `generation`
    /// are kept when set (generated, now and 1 otherwise); on replacement the
    /// stored `uid` and `creationTimestamp` are kept, and `generation` goes up
    /// by one when anything but `metadata` and `status` changed.
    pub(crate) fn apply(&mut self, ty: ResourceType, mut object: Value) -> Result<u64, String> {
        let Some(fields) = object.as_object_mut() else {
            return Err(format!("a {} must serialize to a JSON object", ty.kind));
        };
        fields.insert("apiVersion".into(), Value::String(ty.api_version()));
        fields.insert("kind".into(), Value::String(ty.kind.clone()));
        let meta = fields
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(meta) = meta.as_object_mut() else {
            return Err(format!("{}: metadata is not an object", ty.kind));
        };
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return Err(format!("a {} needs metadata.name", ty.kind)),
        };
        let namespace = if ty.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let key = (namespace, name);
        let tkey = ty.key();
        let previous = self.get(&tkey, &key).cloned();
        let rv = self.rv + 1;
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        match &previous {
            Some(old) => {
                let old_meta = &old["metadata"];
                for field in ["uid", "creationTimestamp"] {
                    match old_meta.get(field) {
                        Some(v) => meta.insert(field.into(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                let generation = old_meta
                    .get("generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let bump = i64::from(spec_of(old) != spec_of(&object));
                let Some(meta) = object["metadata"].as_object_mut() else {
                    return Err(format!("{}: metadata is not an object", ty.kind));
                };
                meta.insert("generation".into(), json!(generation + bump));
            }
            None => {
                if !meta.get("uid").is_some_and(Value::is_string) {
                    self.uids += 1;
                    meta.insert("uid".into(), Value::String(new_uid(self.uids)));
                }
                if !meta.get("creationTimestamp").is_some_and(Value::is_string)
                    && let Some(now) = now()
                {
                    meta.insert("creationTimestamp".into(), now);
                }
                if !meta.get("generation").is_some_and(Value::is_i64) {
                    meta.insert("generation".into(), json!(1));
                }
            }
        }
        self.rv = rv;
        self.register(ty);
        self.objects
            .entry(tkey.clone())
            .or_default()
            .insert(key, object.clone());
        self.history.push(Change {
            rv,
            ty: tkey,
            kind: if previous.is_some() {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            },
            object,
            previous,
        });
        Ok(rv)
    }

    /// Deletes object `key` of `ty`; returns the deletion's resourceVersion,
    /// or `None` if there was no such object.
    pub(crate) fn delete(&mut self, ty: &TypeKey, key: &ObjectKey) -> Option<u64> {
        let previous = self.objects.get_mut(ty)?.remove(key)?;
        self.rv += 1;
        let mut object = previous.clone();
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        }
        self.history.push(Change {
            rv: self.rv,
            ty: ty.clone(),
            kind: ChangeKind::Deleted,
            object,
            previous: Some(previous),
        });
        Some(self.rv)
    }

    /// Forgets every version handed out so far: the history is dropped and the
    /// counter moves on by one, so that every version a client has seen is now
    /// expired while a list made afterwards is not. Returns the new oldest
    /// version.
    pub(crate) fn compact(&mut self) -> u64 {
        self.rv += 1;
        self.compacted = self.rv;
        self.history.clear();
        self.compacted
    }

    /// The changes of `ty` after version `after`, and the version they reach
    /// (the newest one).
    pub(crate) fn changes_after(
        &self,
        ty: &TypeKey,
        after: u64,
    ) -> Result<(Vec<Change>, u64), Expired> {
        self.check(after)?;
        let start = self.history.partition_point(|c| c.rv <= after);
        let changes = self.history[start..]
            .iter()
            .filter(|c| &c.ty == ty)
            .cloned()
            .collect();
        Ok((changes, self.rv))
    }

    /// The objects of `ty` as they were at version `at`.
    pub(crate) fn snapshot(
        &self,
        ty: &TypeKey,
        at: u64,
    ) -> Result<BTreeMap<ObjectKey, Value>, Expired> {
        self.check(at)?;
        let mut objects = self.objects.get(ty).cloned().unwrap_or_default();
        let start = self.history.partition_point(|c| c.rv <= at);
        for change in self.history[start..].iter().rev() {
            if &change.ty != ty {
                continue;
            }
            let key = key_of(&change.object);
            match &change.previous {
                Some(previous) => objects.insert(key, previous.clone()),
                None => objects.remove(&key),
            };
        }
        Ok(objects)
    }
}

/// The store key of a serialized object.
pub(crate) fn key_of(object: &Value) -> ObjectKey {
    let meta = &object["metadata"];
    let field = |f: &str| meta[f].as_str().unwrap_or_default().to_string();
    (field("namespace"), field("name"))
}

/// Everything but `metadata` and `status`: what `generation` tracks.
fn spec_of(object: &Value) -> Map<String, Value> {
    let mut fields = object.as_object().cloned().unwrap_or_default();
    fields.remove("metadata");
    fields.remove("status");
    fields
}

/// A fresh UUID-shaped uid, unique within the process.
fn new_uid(n: u64) -> String {
    let salt = u64::from(std::process::id());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        salt & 0xffff_ffff,
        (n >> 48) & 0xffff,
        (n >> 36) & 0xfff,
        (n >> 24) & 0xfff,
        n & 0xff_ffff_ffff
    )
}

/// The current time as a Kubernetes timestamp.
fn now() -> Option<Value> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let ts = k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).ok()?).ok()?;
    serde_json::to_value(Time(ts)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};

    fn pod(name: &str, image: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"},
               "spec": {"containers": [{"name": "c", "image": image}]}})
    }

    #[test]
    fn types_follow_the_openapi_definitions() {
        let p = ResourceType::of::<Pod>();
        assert_eq!((p.plural.as_str(), p.namespaced), ("pods", true));
        assert_eq!(p.api_version(), "v1");
        let n = ResourceType::of::<Namespace>();
        assert!(!n.namespaced);
        let d = ResourceType::of::<k8s_openapi::api::apps::v1::Deployment>();
        assert_eq!(d.api_version(), "apps/v1");
    }

    #[test]
    fn versions_uids_and_generations() {
        let mut s = Store::new();
        let ty = ResourceType::of::<Pod>();
        let rv1 = s.apply(ty.clone(), pod("a", "x")).unwrap();
        let first = s
            .get(&ty.key(), &("ns".into(), "a".into()))
            .unwrap()
            .clone();
        assert_eq!(first["metadata"]["generation"], 1);
        assert_eq!(first["kind"], "Pod");
        // A status-only change keeps the generation; a spec change bumps it.
        let mut status = pod("a", "x");
        status["status"] = json!({"phase": "Running"});
        s.apply(ty.clone(), status).unwrap();
        let rv3 = s.apply(ty.clone(), pod("a", "y")).unwrap();
        let now = s.get(&ty.key(), &("ns".into(), "a".into())).unwrap();
        assert_eq!(now["metadata"]["generation"], 2);
        assert_eq!(now["metadata"]["uid"], first["metadata"]["uid"]);
        assert_eq!(now["metadata"]["resourceVersion"], rv3.to_string());
        assert!(rv3 > rv1);
        assert!(s.apply(ty, json!({"metadata": {}})).is_err());
    }

    #[test]
    fn snapshots_undo_newer_changes_until_compaction() {
        let mut s = Store::new();
        let ty = ResourceType::of::<Pod>();
        let k = ty.key();
        let at = s.apply(ty.clone(), pod("a", "x")).unwrap();
        s.apply(ty.clone(), pod("b", "x")).unwrap();
        s.apply(ty.clone(), pod("a", "y")).unwrap();
        s.delete(&k, &("ns".into(), "a".into())).unwrap();
        let then = s.snapshot(&k, at).unwrap();
        assert_eq!(then.len(), 1);
        assert_eq!(
            then[&("ns".into(), "a".into())]["spec"]["containers"][0]["image"],
            "x"
        );
        let (changes, newest) = s.changes_after(&k, at).unwrap();
        let kinds: Vec<_> = changes.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ChangeKind::Added, ChangeKind::Modified, ChangeKind::Deleted]
        );
        assert_eq!(newest, s.current());
        let oldest = s.compact();
        assert!(s.snapshot(&k, newest).is_err());
        assert!(s.changes_after(&k, newest).is_err());
        assert_eq!(s.snapshot(&k, oldest).unwrap().len(), 1);
    }
}
