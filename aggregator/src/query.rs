//! The query operations behind both the gRPC `QueryService` and the REST API:
//! fleet summary, filtered and paginated listing, one resource, and metric ranges
//! (recent samples from memory, older ones from the stored rollups).

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use infrawatch_common::resource::health_name;
use infrawatch_common::time::now_unix_ms;
use infrawatch_proto::v1 as pb;

use crate::auth::scope::Scope;
use crate::model::Health;
use crate::samples::series::ROLLUP_BUCKET_MS;
use crate::samples::{Point, SampleStore, SeriesKey, Stats};
use crate::selector::Selector;
use crate::state::{Model, State};
use crate::store::Store;

/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;
/// Most points one metric query returns.
pub const MAX_POINTS: i64 = 11_000;
/// Points an automatic step aims for.
pub const AUTO_POINTS: i64 = 300;
/// Default range of a metric query.
pub const DEFAULT_RANGE_MS: i64 = 3600 * 1000;
/// Latest time a query may name: the end of year 9999, in Unix ms. Bounding times
/// keeps every range computation far from integer overflow.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Why a query could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A parameter is wrong; the text names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// The resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The database could not answer.
    #[error("{0}")]
    Unavailable(String),
}

impl QueryError {
    /// Stable code for JSON errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::NotFound(_) => "not_found",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl From<QueryError> for tonic::Status {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            QueryError::NotFound(m) => tonic::Status::not_found(m),
            QueryError::Unavailable(m) => tonic::Status::unavailable(m),
        }
    }
}

/// Counts of resources by kind and health, of those within `scope` (all when
/// `None`; a restricted caller is told of no agents, which span every scope).
pub fn summary(state: &State, scope: Option<&Scope>) -> pb::FleetSummary {
    let model = state.read();
    let mut total = 0;
    let mut by_kind: HashMap<String, u64> = HashMap::new();
    let mut by_health: HashMap<String, u64> = ["healthy", "degraded", "unhealthy", "unknown"]
        .into_iter()
        .map(|h| (h.to_string(), 0))
        .collect();
    for t in model.resources.values() {
        if scope.is_some_and(|s| !s.admits_record(&t.record)) {
            continue;
        }
        total += 1;
        *by_kind.entry(t.record.kind.clone()).or_default() += 1;
        *by_health
            .entry(health_name(t.record.health).to_string())
            .or_default() += 1;
    }
    pb::FleetSummary {
        total_resources: total,
        by_kind,
        by_health,
        connected_agents: if scope.is_some() {
            0
        } else {
            state.connected_agents()
        },
    }
}

/// A checked listing request.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Exact kind.
    pub kind: Option<String>,
    /// Health filter.
    pub health: Option<Health>,
    /// Label selector.
    pub selector: Selector,
    /// Page size.
    pub limit: usize,
    /// Resume after this id.
    pub after: Option<String>,
    /// Only resources within this (the caller's restriction).
    pub scope: Option<Arc<Scope>>,
}

impl ListParams {
    /// Checks raw parameters; `health` is a name (`healthy`, ...).
    pub fn parse(
        kind: &str,
        health: Option<Health>,
        selector: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<Self, QueryError> {
        let limit = match limit {
            0 => DEFAULT_LIMIT,
            n if n as usize > MAX_LIMIT => {
                return Err(QueryError::InvalidArgument(format!(
                    "limit {n} is above the maximum of {MAX_LIMIT}"
                )));
            }
            n => n as usize,
        };
        let selector = Selector::parse(selector).map_err(QueryError::InvalidArgument)?;
        Ok(Self {
            kind: (!kind.is_empty()).then(|| kind.to_string()),
            health,
            selector,
            limit,
            after: decode_cursor(cursor)?,
            scope: None,
        })
    }
}

fn decode_cursor(cursor: &str) -> Result<Option<String>, QueryError> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let bad = || QueryError::InvalidArgument("cursor is not one this server issued".into());
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

fn encode_cursor(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// The wire form of a resource with its latest values.
pub fn resource_view(model: &Model, samples: &SampleStore, id: &str) -> Option<pb::Resource> {
    let tracked = model.resources.get(id)?;
    let latest = samples
        .latest_of(id)
        .into_iter()
        .map(|(k, ts, v)| pb::LatestValue {
            metric: k.metric.to_string(),
            attributes: k.attributes.to_string(),
            value: v,
            timestamp_unix_ms: ts,
        })
        .collect();
    let mut view = tracked.record.to_proto(latest);
    view.observed_at_unix_ms = tracked.observed_at_ms();
    if tracked.record.kind == infrawatch_common::resource::kind::HOST {
        view.parts = parts_of(model, id);
    }
    Some(view)
}

/// The parts of host `host_id`, by id.
fn parts_of(model: &Model, host_id: &str) -> Vec<pb::Part> {
    model
        .parts_of(host_id)
        .map(|(id, t)| pb::Part {
            id: id.to_string(),
            kind: t.record.kind.clone(),
            health: t.record.health as i32,
            reasons: t
                .record
                .reasons
                .iter()
                .map(crate::model::reason_to_proto)
                .collect(),
        })
        .collect()
}

/// One page of resources ordered by id, and the cursor of the next page.
pub fn list(state: &State, p: &ListParams) -> (Vec<pb::Resource>, Option<String>) {
    let model = state.read();
    let start = match &p.after {
        Some(id) => Bound::Excluded(id.clone()),
        None => Bound::Unbounded,
    };
    let mut page = Vec::with_capacity(p.limit.min(64));
    let mut more = false;
    for (id, t) in model.resources.range((start, Bound::Unbounded)) {
        let r = &t.record;
        let wanted = p.kind.as_deref().is_none_or(|k| r.kind == k)
            && p.health.is_none_or(|h| r.health == h)
            && p.selector.matches(&r.labels)
            && p.scope.as_ref().is_none_or(|s| s.admits_record(r));
        if !wanted {
            continue;
        }
        if page.len() == p.limit {
            more = true;
            break;
        }
        if let Some(v) = resource_view(&model, &state.samples, id) {
            page.push(v);
        }
    }
    let next = more
        .then(|| page.last().map(|r| encode_cursor(&r.id)))
        .flatten();
    (page, next)
}

/// One resource, if within `scope` (outside it, it is not found).
pub fn get(state: &State, id: &str, scope: Option<&Scope>) -> Result<pb::Resource, QueryError> {
    let model = state.read();
    let visible = model
        .resources
        .get(id)
        .is_some_and(|t| scope.is_none_or(|s| s.admits_record(&t.record)));
    visible
        .then(|| resource_view(&model, &state.samples, id))
        .flatten()
        .ok_or_else(|| QueryError::NotFound(format!("resource {id:?} not found")))
}

/// A checked metric query.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricParams {
    /// The series.
    pub key: SeriesKey,
    /// Range start (Unix ms).
    pub from_ms: i64,
    /// Range end (Unix ms).
    pub to_ms: i64,
    /// Step (ms).
    pub step_ms: i64,
}

impl MetricParams {
    /// Checks raw parameters; zeros mean defaults (last hour, ~300 points).
    pub fn parse(
        resource_id: &str,
        metric: &str,
        attributes: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
        now_ms: i64,
    ) -> Result<Self, QueryError> {
        if metric.is_empty() {
            return Err(QueryError::InvalidArgument(
                "name (the metric) is required".into(),
            ));
        }
        for (name, v) in [("from", from_ms), ("to", to_ms), ("step", step_ms)] {
            if !(0..=MAX_TIME_MS).contains(&v) {
                return Err(QueryError::InvalidArgument(format!(
                    "{name} ({v}) must be between 0 and {MAX_TIME_MS} milliseconds"
                )));
            }
        }
        let to = if to_ms == 0 { now_ms } else { to_ms };
        let from = if from_ms == 0 {
            (to - DEFAULT_RANGE_MS).max(0)
        } else {
            from_ms
        };
        if from > to {
            return Err(QueryError::InvalidArgument(format!(
                "from ({from}) is after to ({to})"
            )));
        }
        let span = to - from;
        let step = if step_ms == 0 {
            (span / AUTO_POINTS).max(1000)
        } else {
            step_ms
        };
        if span / step > MAX_POINTS {
            return Err(QueryError::InvalidArgument(format!(
                "range/step gives {} points, the maximum is {MAX_POINTS}; use a larger step",
                span / step
            )));
        }
        Ok(Self {
            // Not interned: a query's names need not stay.
            key: SeriesKey {
                resource_id: resource_id.into(),
                metric: metric.into(),
                attributes: attributes.into(),
            },
            from_ms: from,
            to_ms: to,
            step_ms: step,
        })
    }
}

/// Samples of one series: from memory when the range is recent, else rollups.
pub async fn metric(
    state: &State,
    store: &Store,
    p: &MetricParams,
    scope: Option<&Scope>,
) -> Result<pb::QueryMetricResponse, QueryError> {
    {
        let model = state.read();
        let visible = model
            .resources
            .get(&*p.key.resource_id)
            .is_some_and(|t| scope.is_none_or(|s| s.admits_record(&t.record)));
        if !visible {
            return Err(QueryError::NotFound(format!(
                "resource {:?} not found",
                p.key.resource_id
            )));
        }
    }
    // Memory answers only when it holds the whole range: not older than its
    // window, and not from before this process started (after a restart the
    // older samples exist only as rollups).
    let horizon = state.samples.horizon(now_unix_ms());
    if p.from_ms >= horizon {
        let points = state.samples.range(&p.key, p.from_ms, p.to_ms, p.step_ms);
        return Ok(response(p, p.step_ms, points, "memory"));
    }
    // Rollups have one-minute resolution: round the step up to whole minutes.
    let step = (p.step_ms + ROLLUP_BUCKET_MS - 1) / ROLLUP_BUCKET_MS * ROLLUP_BUCKET_MS;
    let from_bucket = p.from_ms - p.from_ms.rem_euclid(ROLLUP_BUCKET_MS);
    let stored = store
        .rollups(&p.key, from_bucket, p.to_ms)
        .await
        .map_err(|e| QueryError::Unavailable(format!("database: {e}")))?;
    // Minutes not flushed yet are only in memory: they join the stored ones.
    let mut buckets: Vec<(i64, Stats)> = stored
        .into_iter()
        .map(|r| (r.bucket_start_ms, r.stats))
        .chain(
            state
                .samples
                .open_rollups(&p.key, from_bucket, p.to_ms)
                .into_iter()
                .map(|r| (r.bucket_start_ms, r.stats)),
        )
        .collect();
    buckets.sort_by_key(|(b, _)| *b);
    let mut points: Vec<Point> = Vec::new();
    for (start, stats) in buckets {
        let bucket = from_bucket + (start - from_bucket) / step * step;
        match points.last_mut() {
            Some(p) if p.timestamp_ms == bucket => merge(&mut p.stats, &stats),
            _ => points.push(Point {
                timestamp_ms: bucket,
                stats,
            }),
        }
    }
    Ok(response(p, step, points, "rollup"))
}

fn merge(into: &mut Stats, other: &Stats) {
    into.count += other.count;
    into.sum += other.sum;
    into.min = into.min.min(other.min);
    into.max = into.max.max(other.max);
}

fn response(
    p: &MetricParams,
    step: i64,
    points: Vec<Point>,
    source: &str,
) -> pb::QueryMetricResponse {
    pb::QueryMetricResponse {
        resource_id: p.key.resource_id.to_string(),
        metric: p.key.metric.to_string(),
        attributes: p.key.attributes.to_string(),
        step_ms: step,
        points: points
            .into_iter()
            .map(|pt| pb::MetricPoint {
                timestamp_unix_ms: pt.timestamp_ms,
                avg: pt.stats.mean().unwrap_or(0.0),
                min: pt.stats.min,
                max: pt.stats.max,
                count: pt.stats.count,
            })
            .collect(),
        source: source.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResourceRecord;
    use crate::state::Tracked;

    fn state_with(ids: &[(&str, &str, Health)]) -> State {
        let state = State::new(900_000);
        {
            let mut m = state.write();
            for (id, kind, health) in ids {
                m.resources.insert(
                    id.to_string(),
                    Tracked::new(
                        ResourceRecord {
                            id: id.to_string(),
                            kind: kind.to_string(),
                            labels: [("env".to_string(), "prod".to_string())].into(),
                            attributes: Default::default(),
                            relations: vec![],
                            health: *health,
                            reasons: vec![],
                            observed_at_ms: 0,
                            version: 1,
                            source: "a".into(),
                            interval_ms: 0,
                        },
                        0,
                    ),
                );
            }
        }
        state
    }

    #[test]
    fn pagination_visits_every_match_once() {
        let ids: Vec<String> = (0..25).map(|i| format!("host/{i:02}")).collect();
        let entries: Vec<(&str, &str, Health)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    id.as_str(),
                    "host",
                    if i % 5 == 0 {
                        Health::Degraded
                    } else {
                        Health::Healthy
                    },
                )
            })
            .collect();
        let state = state_with(&entries);
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let p =
                ListParams::parse("host", Some(Health::Healthy), "env=prod", 7, &cursor).unwrap();
            let (page, next) = list(&state, &p);
            seen.extend(page.into_iter().map(|r| r.id));
            match next {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(seen.len(), 20);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen);
    }

    #[test]
    fn bad_parameters_are_named() {
        assert!(
            matches!(ListParams::parse("", None, "", 5000, ""), Err(QueryError::InvalidArgument(m)) if m.contains("limit"))
        );
        assert!(
            matches!(ListParams::parse("", None, "", 0, "%%%"), Err(QueryError::InvalidArgument(m)) if m.contains("cursor"))
        );
        assert!(MetricParams::parse("host/a", "", "", 0, 0, 0, 1_000_000).is_err());
        assert!(MetricParams::parse("host/a", "m", "", 10, 5, 0, 1_000_000).is_err());
        assert!(MetricParams::parse("host/a", "m", "", 0, 100_000_000, 1, 1_000_000).is_err());
        for (f, t, s) in [
            (i64::MIN, i64::MAX, 0),
            (0, -i64::MAX, 0),
            (0, 0, i64::MAX),
            (1, 2, -5),
        ] {
            assert!(
                MetricParams::parse("host/a", "m", "", f, t, s, 1_000_000).is_err(),
                "{f} {t} {s}"
            );
        }
        let p = MetricParams::parse("host/a", "m", "", 0, 0, 0, 10_000_000).unwrap();
        assert_eq!(p.to_ms - p.from_ms, DEFAULT_RANGE_MS);
        assert_eq!(p.step_ms, DEFAULT_RANGE_MS / AUTO_POINTS);
    }

    #[test]
    fn get_unknown_is_not_found() {
        let state = state_with(&[("host/a", "host", Health::Healthy)]);
        assert!(get(&state, "host/a", None).is_ok());
        assert!(matches!(
            get(&state, "host/b", None),
            Err(QueryError::NotFound(_))
        ));
        let s = summary(&state, None);
        assert_eq!(s.total_resources, 1);
        assert_eq!(s.by_health["healthy"], 1);
        assert_eq!(s.by_health["unhealthy"], 0);
    }
}
