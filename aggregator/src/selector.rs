//! Label selectors as in Kubernetes' equality-based form: `k=v`, `k==v`, `k!=v`,
//! `k` (present) and `!k` (absent), comma-separated, all of which must hold.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Label equals the value.
    Equals(String, String),
    /// Label is absent or differs from the value.
    NotEquals(String, String),
    /// Label is present.
    Exists(String),
    /// Label is absent.
    NotExists(String),
}

/// A parsed selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

/// Longest selector text accepted.
pub const MAX_SELECTOR_LEN: usize = 4096;

impl Selector {
    /// Parses selector text; the error says which part is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(format!(
                "label selector is longer than {MAX_SELECTOR_LEN} bytes"
            ));
        }
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(key(k, part)?, value(v))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(key(k, part)?, value(v))
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(key(k, part)?)
            } else {
                Requirement::Exists(key(part, part)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_lookup(|k| labels.get(k).map(String::as_str))
    }

    /// True when every requirement holds for the labels `get` looks up.
    pub fn matches_lookup<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    /// True when it has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn key(k: &str, part: &str) -> Result<String, String> {
    let k = k.trim();
    let valid = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if valid {
        Ok(k.to_string())
    } else {
        Err(format!(
            "invalid label selector term {part:?}: bad key {k:?}"
        ))
    }
}

fn value(v: &str) -> String {
    v.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches() {
        let l = labels(&[("env", "prod"), ("host.name", "n1")]);
        assert!(Selector::parse("").unwrap().matches(&l));
        assert!(Selector::parse("env=prod").unwrap().matches(&l));
        assert!(Selector::parse("env==prod, host.name").unwrap().matches(&l));
        assert!(!Selector::parse("env!=prod").unwrap().matches(&l));
        assert!(Selector::parse("!zone").unwrap().matches(&l));
        assert!(!Selector::parse("zone").unwrap().matches(&l));
        assert!(!Selector::parse("env=dev").unwrap().matches(&l));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(Selector::parse("=x").is_err());
        assert!(Selector::parse("a b=c").is_err());
        assert!(Selector::parse("!").is_err());
    }
}
