//! What a list or watch request asks for: its query parameters, which objects
//! it selects (namespace, label and field selectors), and the shape it wants
//! them in (whole objects, or only their metadata).

use std::time::Duration;

use serde_json::{Value, json};

use super::selector::{FieldSelector, LabelSelector};
use super::store::ResourceType;

/// The query parameters the server understands; others are ignored.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pub(crate) watch: bool,
    pub(crate) resource_version: Option<String>,
    pub(crate) resource_version_match: Option<String>,
    pub(crate) limit: Option<usize>,
    pub(crate) continue_token: Option<String>,
    pub(crate) label_selector: String,
    pub(crate) field_selector: String,
    pub(crate) timeout: Option<Duration>,
    pub(crate) bookmarks: bool,
    pub(crate) send_initial_events: Option<bool>,
}

impl Params {
    /// Parses a URL query (without `?`).
    pub(crate) fn parse(query: &str) -> Result<Self, String> {
        let mut p = Self::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "watch" => p.watch = boolean(&k, &v)?,
                "resourceVersion" => p.resource_version = Some(v.into_owned()),
                "resourceVersionMatch" => p.resource_version_match = Some(v.into_owned()),
                "limit" => p.limit = Some(number(&k, &v)?),
                "continue" => p.continue_token = Some(v.into_owned()).filter(|t| !t.is_empty()),
                "labelSelector" => p.label_selector = v.into_owned(),
                "fieldSelector" => p.field_selector = v.into_owned(),
                "timeoutSeconds" => {
                    p.timeout = Some(Duration::from_secs(number(&k, &v)?)).filter(|t| !t.is_zero())
                }
                "allowWatchBookmarks" => p.bookmarks = boolean(&k, &v)?,
                "sendInitialEvents" => p.send_initial_events = Some(boolean(&k, &v)?),
                _ => {}
            }
        }
        Ok(p)
    }

    /// The `resourceVersion` as a number; `None` when unset, empty or "0"
    /// (meaning "any": the newest state).
    pub(crate) fn version(&self) -> Result<Option<u64>, String> {
        match self.resource_version.as_deref() {
            None | Some("" | "0") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("invalid resourceVersion {v:?}")),
        }
    }
}

fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(format!("invalid value {value:?} for {key}")),
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?} for {key}"))
}

/// Which objects a request selects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Only this namespace (none: all).
    pub(crate) namespace: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Filter {
    /// The filter of a request for objects of `ty` in `namespace`.
    pub(crate) fn new(
        ty: &ResourceType,
        namespace: Option<&str>,
        params: &Params,
    ) -> Result<Self, String> {
        Ok(Self {
            namespace: namespace.map(str::to_string),
            labels: LabelSelector::parse(&params.label_selector)?,
            fields: FieldSelector::parse(&params.field_selector, &ty.kind)?,
        })
    }

    /// Whether `object` is selected.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

/// The form objects are answered in, chosen by the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Whole objects.
    Full,
    /// `PartialObjectMetadata`: only `metadata` (a metadata-only watcher).
    Metadata,
}

const META_API_VERSION: &str = "meta.k8s.io/v1";

impl Shape {
    /// The shape an `Accept` header asks for.
    pub(crate) fn from_accept(accept: &str) -> Self {
        if accept.contains("as=PartialObjectMetadata") {
            Self::Metadata
        } else {
            Self::Full
        }
    }

    /// `object` in this shape.
    pub(crate) fn object(self, object: &Value) -> Value {
        match self {
            Self::Full => object.clone(),
            Self::Metadata => json!({
                "apiVersion": META_API_VERSION,
                "kind": "PartialObjectMetadata",
                "metadata": object["metadata"],
            }),
        }
    }

    /// `apiVersion` and `kind` of one object of `ty` in this shape.
    pub(crate) fn type_meta(self, ty: &ResourceType) -> (String, String) {
        match self {
            Self::Full => (ty.api_version(), ty.kind.clone()),
            Self::Metadata => (META_API_VERSION.into(), "PartialObjectMetadata".into()),
        }
    }

    /// `apiVersion` and `kind` of a list of `ty` in this shape.
    pub(crate) fn list_type_meta(self, ty: &ResourceType) -> (String, String) {
        let (api_version, kind) = self.type_meta(ty);
        (api_version, format!("{kind}List"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let p = Params::parse(
            "watch=1&resourceVersion=12&allowWatchBookmarks=true&timeoutSeconds=290\
             &labelSelector=app%3Dweb&limit=5&continue=abc",
        )
        .unwrap();
        assert!(p.watch && p.bookmarks);
        assert_eq!(p.version().unwrap(), Some(12));
        assert_eq!(p.timeout, Some(Duration::from_secs(290)));
        assert_eq!(p.label_selector, "app=web");
        assert_eq!(
            (p.limit, p.continue_token.as_deref()),
            (Some(5), Some("abc"))
        );
        assert_eq!(
            Params::parse("resourceVersion=0").unwrap().version(),
            Ok(None)
        );
        assert!(Params::parse("limit=x").is_err());
        assert!(Params::parse("watch=maybe").is_err());
        assert!(
            Params::parse("resourceVersion=x")
                .unwrap()
                .version()
                .is_err()
        );
    }
}
