//! The newest stored rollup of many series at once: what the agents streaming
//! to other replicas reported last, for figures summed over many resources
//! (`crate::kubernetes_usage`). A replica holds in memory only the samples of
//! the agents streaming to it; the others' are in `metric_rollups`, one row per
//! series and minute, flushed by whichever replica holds the agent.
//!
//! One statement per call, whatever the number of resources: the ids travel as
//! one parameter (an array on PostgreSQL, a JSON array read by `json_each` on
//! SQLite), so SQLite's limit on bound parameters never applies.

use std::time::Instant;

use sqlx::{QueryBuilder, Row};

use super::{Pool, Store, StoreError, observe};
use crate::samples::SeriesKey;

/// Which resources' series [`Store::latest_rollups`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolledUpResources<'a> {
    /// These resource ids.
    Ids(&'a [String]),
    /// Every resource whose id starts with this text (`host/<machine>/pod/`).
    Prefix(&'a str),
}

/// The newest stored minute of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestRollup {
    /// The series.
    pub key: SeriesKey,
    /// Start of its newest stored minute (Unix ms).
    pub bucket_start_ms: i64,
    /// The last value of that minute.
    pub value: f64,
    /// When that value was sampled (Unix ms, the agent's clock).
    pub sampled_at_ms: i64,
}

/// Every column but the filter, newest minute first within each series.
const SELECT_RANKED: &str = "SELECT resource_id, metric, attributes, bucket_start_ms, value_last, last_ts_ms \
    FROM (SELECT resource_id, metric, attributes, bucket_start_ms, value_last, last_ts_ms, \
    ROW_NUMBER() OVER (PARTITION BY resource_id, metric, attributes ORDER BY bucket_start_ms DESC) AS newest \
    FROM metric_rollups WHERE bucket_start_ms >= ";

/// After the filter: the newest row of each series, in key order.
const NEWEST_ONLY: &str = ") ranked WHERE newest = 1 ORDER BY resource_id, metric, attributes";

impl Store {
    /// The newest stored rollup, with a minute starting at or after
    /// `since_ms`, of every series of `resources` whose metric is one of
    /// `metrics` (any metric when empty); one statement, series in key order.
    pub async fn latest_rollups(
        &self,
        resources: RolledUpResources<'_>,
        metrics: &[&str],
        since_ms: i64,
    ) -> Result<Vec<LatestRollup>, StoreError> {
        if matches!(resources, RolledUpResources::Ids(ids) if ids.is_empty()) {
            return Ok(Vec::new());
        }
        let metrics: Vec<String> = metrics.iter().map(|m| m.to_string()).collect();
        let started = Instant::now();
        let result = match &self.pool {
            Pool::Postgres(pool) => {
                let mut qb: QueryBuilder<sqlx::Postgres> = QueryBuilder::new(SELECT_RANKED);
                qb.push_bind(since_ms);
                match resources {
                    RolledUpResources::Ids(ids) => {
                        qb.push(" AND resource_id = ANY(")
                            .push_bind(ids.to_vec())
                            .push(")");
                    }
                    RolledUpResources::Prefix(prefix) => {
                        // LIKE, not a range: a range of text is in the
                        // database's collation, which need not be byte order.
                        qb.push(" AND resource_id LIKE ")
                            .push_bind(like_prefix(prefix))
                            .push(" ESCAPE '\\'");
                    }
                }
                if !metrics.is_empty() {
                    qb.push(" AND metric = ANY(").push_bind(metrics).push(")");
                }
                qb.push(NEWEST_ONLY);
                qb.build()
                    .fetch_all(pool)
                    .await
                    .map_err(StoreError::from)
                    .and_then(|rows| rows.iter().map(read).collect())
            }
            Pool::Sqlite(pool) => {
                let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(SELECT_RANKED);
                qb.push_bind(since_ms);
                match resources {
                    RolledUpResources::Ids(ids) => {
                        qb.push(" AND resource_id IN (SELECT value FROM json_each(")
                            .push_bind(json_list(ids))
                            .push("))");
                    }
                    RolledUpResources::Prefix(prefix) => {
                        // A range of the primary key (SQLite compares text
                        // byte by byte; its LIKE ignores ASCII case).
                        qb.push(" AND resource_id >= ")
                            .push_bind(prefix.to_string());
                        if let Some(end) = prefix_end(prefix) {
                            qb.push(" AND resource_id < ").push_bind(end);
                        }
                    }
                }
                if !metrics.is_empty() {
                    qb.push(" AND metric IN (SELECT value FROM json_each(")
                        .push_bind(json_list(&metrics))
                        .push("))");
                }
                qb.push(NEWEST_ONLY);
                qb.build()
                    .fetch_all(pool)
                    .await
                    .map_err(StoreError::from)
                    .and_then(|rows| rows.iter().map(read).collect())
            }
        };
        observe("latest_rollups", started, result.is_ok());
        result
    }
}

/// One row of [`SELECT_RANKED`].
fn read<R>(row: &R) -> Result<LatestRollup, StoreError>
where
    R: Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let resource_id: String = row.try_get("resource_id")?;
    let metric: String = row.try_get("metric")?;
    let attributes: String = row.try_get("attributes")?;
    Ok(LatestRollup {
        key: SeriesKey::new(&resource_id, &metric, &attributes),
        bucket_start_ms: row.try_get("bucket_start_ms")?,
        value: row.try_get("value_last")?,
        sampled_at_ms: row.try_get("last_ts_ms")?,
    })
}

/// `items` as a JSON array of strings, for `json_each`.
fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    serde_json::Value::from(items.iter().map(AsRef::as_ref).collect::<Vec<&str>>()).to_string()
}

/// A LIKE pattern matching the ids that start with `prefix` (`\` escapes).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The smallest text greater than every text starting with `prefix`, in
/// byte order (UTF-8 keeps code point order): the prefix with its last
/// character raised by one, a last `char::MAX` dropped first. `None` when
/// there is no such text (empty, or only `char::MAX`).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_just_past_its_last_character() {
        assert_eq!(prefix_end("host/m1/pod/").as_deref(), Some("host/m1/pod0"));
        assert_eq!(
            prefix_end("a\u{d7ff}").as_deref(),
            Some("a\u{e000}"),
            "no surrogates"
        );
        assert_eq!(prefix_end("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("\u{10ffff}"), None);
    }

    #[test]
    fn like_patterns_escape_their_wildcards() {
        assert_eq!(like_prefix("host/m_1/"), "host/m\\_1/%");
        assert_eq!(like_prefix("100%\\"), "100\\%\\\\%");
    }

    #[test]
    fn ids_travel_as_one_json_array() {
        let ids = vec!["host/a/pod/ns/x".to_string(), "q\"uote".to_string()];
        assert_eq!(json_list(&ids), r#"["host/a/pod/ns/x","q\"uote"]"#);
    }
}
