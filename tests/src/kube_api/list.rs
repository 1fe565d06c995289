//! Answers to list and single-object requests.
//!
//! A list is served from one snapshot: the newest state, or the exact version
//! asked for. Pages follow the store's order (namespace, then name); a
//! `continue` token names the snapshot's version and the last key served, so
//! later pages come from the same snapshot, until a compaction expires it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::query::{Filter, Params, Shape};
use super::shared::Shared;
use super::status;
use super::store::{ObjectKey, ResourceType};

/// An answer: HTTP status code and JSON body.
pub(crate) type Answer = (u16, Value);

/// The object `name` of `ty` (in `namespace` for a namespaced type).
pub(crate) fn get(
    shared: &Shared,
    ty: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    shape: Shape,
) -> Answer {
    let key = (namespace.unwrap_or_default().to_string(), name.to_string());
    match shared.store().get(&ty.key(), &key) {
        Some(object) => (200, shape.object(object)),
        None => (404, status::not_found(&ty.plural, name)),
    }
}

/// One page of the objects of `ty` that `filter` selects.
pub(crate) fn list(
    shared: &Shared,
    ty: &ResourceType,
    filter: &Filter,
    params: &Params,
    shape: Shape,
) -> Answer {
    match page(shared, ty, filter, params, shape) {
        Ok(answer) | Err(answer) => answer,
    }
}

fn page(
    shared: &Shared,
    ty: &ResourceType,
    filter: &Filter,
    params: &Params,
    shape: Shape,
) -> Result<Answer, Answer> {
    let cap = shared.page_limit();
    let limit = params.limit.filter(|&l| l > 0).map_or(cap, |l| l.min(cap));
    let store = shared.store();
    let current = store.current();
    let (at, after) = match &params.continue_token {
        Some(token) => {
            if params
                .resource_version
                .as_deref()
                .is_some_and(|v| !v.is_empty())
            {
                return Err(bad(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, after) = decode(token).ok_or_else(|| bad("invalid continue token"))?;
            if store.check(rv).is_err() {
                return Err((410, status::continue_expired()));
            }
            (rv, Some(after))
        }
        None => (version(params, current, &store)?, None),
    };
    let tkey = ty.key();
    let snapshot = if at == current {
        None
    } else {
        let objects = store
            .snapshot(&tkey, at)
            .map_err(|e| (410, status::expired(e.requested, e.oldest)))?;
        Some(objects)
    };
    let objects: Box<dyn Iterator<Item = (&ObjectKey, &Value)>> = match &snapshot {
        Some(s) => Box::new(s.iter()),
        None => Box::new(store.objects(&tkey)),
    };
    let mut selected = objects
        .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
        .filter(|(_, o)| filter.matches(o));
    let mut items = Vec::new();
    let mut last = None;
    for (key, object) in selected.by_ref().take(limit) {
        items.push(shape.object(object));
        last = Some(key.clone());
    }
    let remaining = selected.count();
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if let (Some(last), true) = (last, remaining > 0) {
        metadata["continue"] = Value::String(encode(at, &last));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let (api_version, kind) = shape.list_type_meta(ty);
    Ok((
        200,
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}),
    ))
}

/// The version a list without a `continue` token is served at.
fn version(params: &Params, current: u64, store: &super::store::Store) -> Result<u64, Answer> {
    let requested = params.version().map_err(|e| bad(&e))?;
    let exact = match params.resource_version_match.as_deref() {
        // Without a match rule, a version with a limit is an exact one.
        None | Some("") => params.limit.is_some(),
        Some("Exact") => true,
        Some("NotOlderThan") => false,
        Some(other) => return Err(bad(&format!("unsupported resourceVersionMatch {other:?}"))),
    };
    match requested {
        None => Ok(current),
        Some(v) if v > current => Err((
            504,
            status::failure(
                504,
                "Timeout",
                &format!("Too large resource version: {v}, current: {current}"),
            ),
        )),
        Some(v) if exact => {
            store
                .check(v)
                .map_err(|e| (410, status::expired(e.requested, e.oldest)))?;
            Ok(v)
        }
        Some(_) => Ok(current),
    }
}

fn bad(message: &str) -> Answer {
    (400, status::bad_request(message))
}

/// A continue token: the snapshot's version and the last key served.
fn encode(rv: u64, (namespace, name): &ObjectKey) -> String {
    let token = json!({"rv": rv, "namespace": namespace, "name": name});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode(token: &str) -> Option<(u64, ObjectKey)> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    let token: Value = serde_json::from_slice(&raw).ok()?;
    let field = |f: &str| token[f].as_str().map(str::to_string);
    Some((token["rv"].as_u64()?, (field("namespace")?, field("name")?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let key = ("ns".to_string(), "a".to_string());
        assert_eq!(decode(&encode(7, &key)), Some((7, key)));
        assert_eq!(decode("not base64!"), None);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("{}")), None);
    }
}
