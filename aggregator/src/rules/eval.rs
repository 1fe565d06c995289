//! Judging one resource by the rules of its kind, from the samples this
//! replica keeps. A condition holds for `for_ms` when it holds at every check
//! from `for_ms` ago to now (one check per [`check_step`]), each over the
//! window ending then; a check without data fails, so a rule fires only once
//! the samples reach back far enough. Nothing is remembered between
//! evaluations: a replica that takes an agent over judges it from the same
//! samples.

use infrawatch_common::trend::slope;

use super::spec::{ConditionSpec, Function, Rule};
use crate::model::{Health, Reason};
use crate::samples::{Point, SampleStore, SeriesKey};

/// Samples are read raw (a point per sample).
const RAW: i64 = 1;

/// Checks of a `for` duration are at least this far apart.
const MIN_CHECK_STEP_MS: i64 = 5_000;

/// The step between the checks of a `for` duration: at most 30 checks.
pub fn check_step(for_ms: u64) -> i64 {
    (i64::try_from(for_ms / 30).unwrap_or(i64::MAX)).max(MIN_CHECK_STEP_MS)
}

/// The findings of `rules` (those of the resource's kind) on resource `id`.
pub fn evaluate(
    rules: &[Rule],
    samples: &SampleStore,
    id: &str,
    now_ms: i64,
) -> Vec<(Health, Reason)> {
    if rules.is_empty() {
        return Vec::new();
    }
    let keys: Vec<SeriesKey> = samples
        .latest_of(id)
        .into_iter()
        .map(|(key, _, _)| key)
        .collect();
    rules
        .iter()
        .filter_map(|rule| judge(rule, samples, &keys, id, now_ms))
        .collect()
}

/// The series of a condition that fired, and its value now.
struct Fired<'a> {
    key: &'a SeriesKey,
    value: f64,
}

fn judge(
    rule: &Rule,
    samples: &SampleStore,
    keys: &[SeriesKey],
    id: &str,
    now_ms: i64,
) -> Option<(Health, Reason)> {
    let mut first: Option<Fired<'_>> = None;
    for (i, condition) in rule.spec.when.iter().enumerate() {
        let fired = holds(condition, rule.spec.for_ms, samples, keys, now_ms)?;
        if i == 0 {
            first = Some(fired);
        }
    }
    let fired = first?;
    let c = &rule.spec.when[0];
    Some((
        rule.health,
        Reason {
            code: rule.spec.code.clone(),
            message: render(&rule.spec.message, fired.value, c.threshold, id, fired.key),
            metric: c.metric.clone(),
            observed: fired.value,
            threshold: c.threshold,
        },
    ))
}

/// The worst of the condition's series that held it for `for_ms`, if any.
fn holds<'a>(
    c: &ConditionSpec,
    for_ms: u64,
    samples: &SampleStore,
    keys: &'a [SeriesKey],
    now_ms: i64,
) -> Option<Fired<'a>> {
    let for_ms = i64::try_from(for_ms).unwrap_or(i64::MAX);
    let over = i64::try_from(c.over_ms).unwrap_or(i64::MAX);
    let step = check_step(u64::try_from(for_ms).unwrap_or(0));
    let from = now_ms.saturating_sub(for_ms).saturating_sub(over);
    let mut worst: Option<Fired<'a>> = None;
    for key in keys
        .iter()
        .filter(|k| &*k.metric == c.metric.as_str() && has_all(&k.attributes, &c.attributes))
    {
        let divisor = match &c.divide_by {
            Some(d) => {
                let own = parse_attributes(&key.attributes);
                // The keys of the divisor's own filter (the `kind` of a
                // limit, say) need not be among the first series'.
                let pair = keys.iter().find(|k| {
                    &*k.metric == d.metric.as_str()
                        && has_all(&k.attributes, &d.attributes)
                        && parse_attributes(&k.attributes)
                            .iter()
                            .filter(|(name, _)| !d.attributes.contains_key(name))
                            .all(|kv| own.contains(kv))
                });
                // A series without a divisor (a sensor without that limit)
                // is not judged; the others still are.
                let Some(pair) = pair else { continue };
                Some(samples.range(pair, from, now_ms, RAW))
            }
            None => None,
        };
        let points = samples.range(key, from, now_ms, RAW);
        let value_at = |t: i64| -> Option<f64> {
            let a = take(c, window(&points, t, over), t)?;
            match &divisor {
                Some(d) => {
                    let b = take(c, window(d, t, over), t)?;
                    (b != 0.0).then(|| a / b)
                }
                None => Some(a),
            }
        };
        let now_value = value_at(now_ms);
        let held = (0..)
            .map(|k| now_ms - k * step)
            .take_while(|t| *t >= now_ms - for_ms)
            .all(|t| value_at(t).is_some_and(|v| c.op.holds(v, c.threshold)));
        if let (true, Some(value)) = (held, now_value)
            && worst.as_ref().is_none_or(|w| c.op.worse(value, w.value))
        {
            worst = Some(Fired { key, value });
        }
    }
    worst
}

/// The points of the window `(t - over, t]`.
fn window(points: &[Point], t: i64, over: i64) -> &[Point] {
    let start = points.partition_point(|p| p.timestamp_ms <= t - over);
    let end = points.partition_point(|p| p.timestamp_ms <= t);
    &points[start..end.max(start)]
}

/// The condition's function over `w` (ending at `t`).
fn take(c: &ConditionSpec, w: &[Point], t: i64) -> Option<f64> {
    let means = || {
        w.iter()
            .filter_map(|p| Some((p.timestamp_ms, p.stats.mean()?)))
    };
    match c.function {
        Function::Avg => {
            let (sum, count) = w.iter().fold((0.0, 0u64), |(s, n), p| {
                (s + p.stats.sum, n + p.stats.count)
            });
            (count > 0).then(|| sum / count as f64)
        }
        Function::Min => w
            .iter()
            .filter(|p| p.stats.count > 0)
            .map(|p| p.stats.min)
            .reduce(f64::min),
        Function::Max => w
            .iter()
            .filter(|p| p.stats.count > 0)
            .map(|p| p.stats.max)
            .reduce(f64::max),
        Function::Last => means().next_back().map(|(_, v)| v),
        Function::Rate => {
            let (t0, v0) = means().next()?;
            let (t1, v1) = means().next_back()?;
            (t1 > t0).then(|| (v1 - v0) / ((t1 - t0) as f64 / 1000.0))
        }
        Function::Predict => {
            let points: Vec<(f64, f64)> = means().map(|(x, y)| (x as f64, y)).collect();
            let s = slope(&points)?;
            let n = points.len() as f64;
            let (mx, my) = points
                .iter()
                .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
            let ahead = t as f64 + c.predict_ms as f64;
            Some(my + s * (ahead - mx))
        }
    }
}

/// True when canonical attributes `canonical` include every pair of `wanted`.
fn has_all(canonical: &str, wanted: &std::collections::BTreeMap<String, String>) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let have = parse_attributes(canonical);
    wanted
        .iter()
        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

/// The pairs of canonical attributes (`k="v",...`, values with `\"` and `\\`
/// escaped).
pub fn parse_attributes(canonical: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = canonical;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = None;
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '"' => {
                    end = Some(eq + 2 + i + 1);
                    break;
                }
                other => value.push(other),
            }
        }
        out.push((key, value));
        match end {
            Some(e) => rest = &rest[e..],
            None => break,
        }
    }
    out
}

/// `message` with its placeholders filled in.
fn render(message: &str, value: f64, threshold: f64, id: &str, key: &SeriesKey) -> String {
    let attributes = parse_attributes(&key.attributes);
    let mut out = String::with_capacity(message.len() + 16);
    let mut rest = message;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &after[..end];
        match name {
            "value" => out.push_str(&number(value)),
            "value_percent" => out.push_str(&format!("{:.1}%", value * 100.0)),
            "threshold" => out.push_str(&number(threshold)),
            "threshold_percent" => out.push_str(&format!("{:.1}%", threshold * 100.0)),
            "resource" => out.push_str(id),
            _ => {
                let key = name.strip_prefix("attr.").unwrap_or(name);
                let v = attributes
                    .iter()
                    .find(|(k, _)| k == key)
                    .map_or("", |(_, v)| v.as_str());
                out.push_str(v);
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A number as people read it: up to three decimals, without trailing zeros.
fn number(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::spec::parse;
    use crate::samples::SeriesSamples;
    use crate::samples::ledger::Cursor;

    const NOW: i64 = 1_800_000_000_000;

    /// One series: metric, attributes, points (ms before NOW, value).
    type Series<'a> = (&'a str, &'a str, Vec<(i64, f64)>);

    /// A store holding `series`.
    fn store(series: &[Series<'_>]) -> SampleStore {
        let samples = SampleStore::new(900_000);
        let ledger = samples.open_ledger("a", Cursor::default(), 0, 1);
        let batch: Vec<SeriesSamples> = series
            .iter()
            .map(|(metric, attrs, points)| SeriesSamples {
                key: SeriesKey::new("host/x", metric, attrs),
                points: points.iter().map(|(ago, v)| (NOW - ago, *v)).collect(),
            })
            .collect();
        let (_, new) = ledger.begin(1, &batch, 0);
        samples.index(&ledger, new);
        samples
    }

    fn rules(text: &str) -> Vec<Rule> {
        parse("test", text, 900_000).unwrap()
    }

    const LOAD: &str = r#"
[[rule]]
code = "host_load_per_core_high"
kind = "host"
health = "degraded"
for_ms = 60000
message = "load per core {value} above {threshold}"
[[rule.when]]
metric = "system.cpu.load_average.5m"
function = "last"
over_ms = 10000
divide_by = { metric = "system.cpu.logical.count" }
op = ">"
threshold = 2.0
"#;

    fn every_5s(span_s: i64, v: impl Fn(i64) -> f64) -> Vec<(i64, f64)> {
        (0..=span_s / 5)
            .map(|i| (i * 5_000, v(i * 5_000)))
            .collect()
    }

    #[test]
    fn a_ratio_that_holds_for_its_duration_fires() {
        let s = store(&[
            ("system.cpu.load_average.5m", "", every_5s(90, |_| 9.0)),
            ("system.cpu.logical.count", "", every_5s(90, |_| 4.0)),
        ]);
        let found = evaluate(&rules(LOAD), &s, "host/x", NOW);
        assert_eq!(found.len(), 1);
        let (health, reason) = &found[0];
        assert_eq!(*health, Health::Degraded);
        assert_eq!(reason.code, "host_load_per_core_high");
        assert_eq!(reason.message, "load per core 2.25 above 2");
        assert_eq!(reason.observed, 2.25);
    }

    #[test]
    fn a_condition_not_held_long_enough_or_without_data_does_not_fire() {
        // High only for the last 30 s of the 60 s it must hold.
        let s = store(&[
            (
                "system.cpu.load_average.5m",
                "",
                every_5s(90, |ago| if ago <= 30_000 { 9.0 } else { 1.0 }),
            ),
            ("system.cpu.logical.count", "", every_5s(90, |_| 4.0)),
        ]);
        assert!(evaluate(&rules(LOAD), &s, "host/x", NOW).is_empty());
        // High throughout, but the samples reach back 30 s only.
        let s = store(&[
            ("system.cpu.load_average.5m", "", every_5s(30, |_| 9.0)),
            ("system.cpu.logical.count", "", every_5s(30, |_| 4.0)),
        ]);
        assert!(evaluate(&rules(LOAD), &s, "host/x", NOW).is_empty());
        // No divisor: nothing to say.
        let s = store(&[("system.cpu.load_average.5m", "", every_5s(90, |_| 9.0))]);
        assert!(evaluate(&rules(LOAD), &s, "host/x", NOW).is_empty());
    }

    #[test]
    fn the_worst_matching_series_is_named_and_attributes_pair_the_divisor() {
        let text = r#"
[[rule]]
code = "almost_full"
kind = "host"
health = "unhealthy"
message = "{attr.mountpoint} has {value_percent} free"
[[rule.when]]
metric = "fs.free"
function = "avg"
over_ms = 10000
divide_by = { metric = "fs.size" }
op = "<"
threshold = 0.05
"#;
        let s = store(&[
            ("fs.free", "mountpoint=\"/\"", every_5s(10, |_| 4.0)),
            ("fs.size", "mountpoint=\"/\"", every_5s(10, |_| 100.0)),
            ("fs.free", "mountpoint=\"/data\"", every_5s(10, |_| 1.0)),
            ("fs.size", "mountpoint=\"/data\"", every_5s(10, |_| 100.0)),
            ("fs.free", "mountpoint=\"/ok\"", every_5s(10, |_| 50.0)),
            ("fs.size", "mountpoint=\"/ok\"", every_5s(10, |_| 100.0)),
        ]);
        let found = evaluate(&rules(text), &s, "host/x", NOW);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.message, "/data has 1.0% free");
    }

    #[test]
    fn a_divisor_filtered_on_its_own_attribute_pairs_and_a_series_without_one_is_skipped() {
        let text = r#"
[[rule]]
code = "too_hot"
kind = "host"
health = "unhealthy"
message = "{attr.chip} {attr.sensor} at {value_percent} of its critical temperature"
[[rule.when]]
metric = "temp"
function = "last"
over_ms = 10000
divide_by = { metric = "temp.limit", attributes = { kind = "crit" } }
op = ">="
threshold = 1.0
"#;
        // "a" has no critical limit (only a maximum): it is skipped, and "b",
        // at its critical limit, still fires; "c" is below its own.
        let s = store(&[
            ("temp", "chip=\"x\",sensor=\"a\"", every_5s(10, |_| 99.0)),
            (
                "temp.limit",
                "chip=\"x\",kind=\"max\",sensor=\"a\"",
                every_5s(10, |_| 80.0),
            ),
            ("temp", "chip=\"x\",sensor=\"b\"", every_5s(10, |_| 105.0)),
            (
                "temp.limit",
                "chip=\"x\",kind=\"max\",sensor=\"b\"",
                every_5s(10, |_| 90.0),
            ),
            (
                "temp.limit",
                "chip=\"x\",kind=\"crit\",sensor=\"b\"",
                every_5s(10, |_| 100.0),
            ),
            ("temp", "chip=\"x\",sensor=\"c\"", every_5s(10, |_| 50.0)),
            (
                "temp.limit",
                "chip=\"x\",kind=\"crit\",sensor=\"c\"",
                every_5s(10, |_| 100.0),
            ),
        ]);
        let found = evaluate(&rules(text), &s, "host/x", NOW);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].1.message,
            "x b at 105.0% of its critical temperature"
        );
        // Another sensor's limit is never taken.
        let s = store(&[
            ("temp", "chip=\"x\",sensor=\"a\"", every_5s(10, |_| 99.0)),
            (
                "temp.limit",
                "chip=\"x\",kind=\"crit\",sensor=\"b\"",
                every_5s(10, |_| 90.0),
            ),
        ]);
        assert!(evaluate(&rules(text), &s, "host/x", NOW).is_empty());
    }

    #[test]
    fn functions_over_a_window() {
        let c = |function: &str, extra: &str| {
            let text = format!(
                "[[rule]]\ncode = \"x\"\nkind = \"host\"\nhealth = \"degraded\"\nmessage = \"{{value}}\"\n\
                 [[rule.when]]\nmetric = \"m\"\nfunction = \"{function}\"\nover_ms = 60000\n{extra}op = \">=\"\nthreshold = -1e9\n"
            );
            rules(&text)
        };
        // Falling from 60 to 0 over the last minute, 1 per second.
        let s = store(&[("m", "", every_5s(60, |ago| ago as f64 / 1000.0))]);
        let value = |r: Vec<Rule>| evaluate(&r, &s, "host/x", NOW)[0].1.observed;
        assert_eq!(value(c("last", "")), 0.0);
        assert_eq!(value(c("min", "")), 0.0);
        // The window is (now - 60 s, now]: the sample 60 s ago is outside.
        assert_eq!(value(c("max", "")), 55.0);
        assert_eq!(value(c("avg", "")), 27.5);
        assert_eq!(value(c("rate", "")), -1.0);
        let predicted = value(c("predict", "predict_ms = 30000\n"));
        assert!((predicted - -30.0).abs() < 1e-6, "{predicted}");
    }

    #[test]
    fn canonical_attributes_parse_with_escapes() {
        assert_eq!(
            parse_attributes(r#"a="1",b="x\"y\\z",c="""#),
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "x\"y\\z".to_string()),
                ("c".to_string(), String::new())
            ]
        );
        assert!(parse_attributes("").is_empty());
    }
}
