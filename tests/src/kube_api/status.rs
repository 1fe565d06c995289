//! `Status` objects: the body of every error response and of a watch's
//! `ERROR` event, as the API server writes them.

use serde_json::{Value, json};

/// A failure `Status` with HTTP `code`, machine-readable `reason` and `message`.
pub(crate) fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// 410 for a resourceVersion older than the last compaction.
pub(crate) fn expired(requested: u64, oldest: u64) -> Value {
    failure(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({oldest})"),
    )
}

/// 410 for a `continue` token whose snapshot has been compacted away.
pub(crate) fn continue_expired() -> Value {
    failure(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. \
         You can start a new list without the continue parameter.",
    )
}

/// 404 for object `name` of `plural`.
pub(crate) fn not_found(plural: &str, name: &str) -> Value {
    let mut s = failure(404, "NotFound", &format!("{plural} {name:?} not found"));
    s["details"] = json!({"name": name, "kind": plural});
    s
}

/// 400 with `message`.
pub(crate) fn bad_request(message: &str) -> Value {
    failure(400, "BadRequest", message)
}
