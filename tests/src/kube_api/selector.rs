//! Label and field selectors of list and watch requests, parsed as the API
//! server parses them and matched against serialized objects.
//!
//! Label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)` and
//! `a notin (x,y)`, joined by commas. Field selectors: `metadata.name`,
//! `metadata.namespace` and, for pods, `spec.nodeName`, each with `=`, `==` or
//! `!=`. Anything else is refused (a 400 for the request).

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses `text` (URL-decoded).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(term)?);
        }
        Ok(Self(requirements))
    }

    /// Whether an object with `labels` (its `metadata.labels`) matches.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let label = |k: &str| object["metadata"]["labels"][k].as_str();
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        })
    }
}

/// Splits at commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in label selector {text:?}"))?;
            }
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in label selector {text:?}"));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(key_of(key)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(key_of(k)?, value_of(v)?));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(key_of(k)?, value_of(v)?));
    }
    if let Some(open) = term.find('(') {
        let mut words = term[..open].split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("invalid label selector term {term:?}"));
        };
        let Some(list) = term[open + 1..].trim_end().strip_suffix(')') else {
            return Err(format!("invalid label selector term {term:?}"));
        };
        let values = list
            .split(',')
            .map(value_of)
            .collect::<Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok(Requirement::In(key_of(key)?, values)),
            "notin" => Ok(Requirement::NotIn(key_of(key)?, values)),
            _ => Err(format!("unknown label selector operator {op:?}")),
        };
    }
    Ok(Requirement::Exists(key_of(term)?))
}

fn key_of(text: &str) -> Result<String, String> {
    let key = text.trim();
    let valid = !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn value_of(text: &str) -> Result<String, String> {
    let value = text.trim();
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

/// A field a field selector may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    NodeName,
}

/// A parsed field selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(Field, bool, String)>);

impl FieldSelector {
    /// Parses `text` (URL-decoded) for objects of `kind`.
    pub(crate) fn parse(text: &str, kind: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let field = match field.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                "spec.nodeName" if kind == "Pod" => Field::NodeName,
                other => {
                    return Err(format!(
                        "field label not supported: {other:?} (for kind {kind})"
                    ));
                }
            };
            terms.push((field, equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    /// Adds `metadata.name=<name>`.
    pub(crate) fn with_name(mut self, name: &str) -> Self {
        self.0.push((Field::Name, true, name.to_string()));
        self
    }

    /// Whether `object` matches.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field {
                Field::Name => &object["metadata"]["name"],
                Field::Namespace => &object["metadata"]["namespace"],
                Field::NodeName => &object["spec"]["nodeName"],
            };
            (actual.as_str().unwrap_or_default() == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selectors() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier!=back"));
        assert!(m("app,!missing"));
        assert!(!m("app=db"));
        assert!(!m("!app"));
        assert!(m("missing!=x"));
        assert!(m("tier in (front, back),app notin (db)"));
        assert!(!m("tier notin (front)"));
        for bad in ["a=(", "app in front", "a b", "=x", "app=we b"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s, "Pod").unwrap().matches(&o);
        assert!(m("metadata.name=a,metadata.namespace==ns"));
        assert!(m("spec.nodeName=n1"));
        assert!(!m("spec.nodeName!=n1"));
        assert!(!m("metadata.name=b"));
        assert!(FieldSelector::parse("status.phase=Running", "Pod").is_err());
        assert!(FieldSelector::parse("spec.nodeName=n1", "Service").is_err());
        assert!(FieldSelector::parse("metadata.name", "Pod").is_err());
    }
}
