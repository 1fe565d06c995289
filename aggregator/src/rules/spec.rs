//! The rule file format and its checks. A file holds `[[rule]]` tables; each
//! rule names a resource kind, the health and reason it gives, how long its
//! conditions must hold (`for_ms`), and its conditions (`[[rule.when]]`): a
//! function over a window of one series of the resource, optionally divided by
//! another series, compared with a threshold.
//!
//! ```toml
//! [[rule]]
//! code = "host_load_per_core_high"
//! kind = "host"
//! health = "degraded"
//! for_ms = 600000
//! message = "load per core {value} above {threshold} for 10 min"
//! [[rule.when]]
//! metric = "system.cpu.load_average.5m"
//! function = "last"
//! over_ms = 60000
//! divide_by = { metric = "system.cpu.logical.count" }
//! op = ">"
//! threshold = 2.0
//! ```

use std::collections::BTreeMap;

use infrawatch_common::resource::validate_metric_name;
use serde::Deserialize;

use crate::model::Health;

/// A rule file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Its rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The reason code it gives: lower-case letters, digits and `_`.
    pub code: String,
    /// The resource kind it judges (`host`, `filesystem`, `disk`, ...).
    pub kind: String,
    /// `degraded` or `unhealthy`.
    pub health: String,
    /// How long every condition must have held (0: at once).
    #[serde(default)]
    pub for_ms: u64,
    /// The reason's message; `{value}`, `{value_percent}`, `{threshold}`,
    /// `{threshold_percent}`, `{resource}` and `{attr.KEY}` (an attribute of
    /// the series that matched) are filled in.
    pub message: String,
    /// The conditions, all of which must hold.
    pub when: Vec<ConditionSpec>,
}

/// One condition as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// The series' metric.
    pub metric: String,
    /// Attributes the series must have (others may be present).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// What is taken over the window.
    pub function: Function,
    /// The window, ending at each moment the rule is checked.
    pub over_ms: u64,
    /// For `predict`: how far ahead the value is predicted.
    #[serde(default)]
    pub predict_ms: u64,
    /// A series to divide by (the same function over the same window); of its
    /// series, the one whose attributes the first series all has.
    #[serde(default)]
    pub divide_by: Option<SeriesSpec>,
    /// `>`, `>=`, `<` or `<=`.
    pub op: Op,
    /// The threshold.
    pub threshold: f64,
}

/// A series to divide by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSpec {
    /// Its metric.
    pub metric: String,
    /// Attributes it must have.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// What a condition takes over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// The mean.
    Avg,
    /// The smallest value.
    Min,
    /// The largest value.
    Max,
    /// The newest value.
    Last,
    /// Change per second from the oldest to the newest value.
    Rate,
    /// The value `predict_ms` ahead on the least-squares line through the
    /// window.
    Predict,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Op {
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    /// True when `value` passes the comparison with `threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
        }
    }

    /// True when `a` is further past the threshold than `b`.
    pub fn worse(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt | Op::Ge => a > b,
            Op::Lt | Op::Le => a < b,
        }
    }
}

/// A rule that passed its checks.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it was written (a file, or `built-in`).
    pub origin: String,
    /// The rule as written.
    pub spec: RuleSpec,
    /// Its health.
    pub health: Health,
}

/// What is wrong with a rule, named by where it is and its code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: rule {rule}: {problem}")]
pub struct RuleError {
    /// The file (or `built-in`).
    pub origin: String,
    /// The rule's code (or its position when the code is the problem).
    pub rule: String,
    /// What is wrong.
    pub problem: String,
}

/// Placeholders a message may use besides `{attr.KEY}`.
const PLACEHOLDERS: [&str; 5] = [
    "value",
    "value_percent",
    "threshold",
    "threshold_percent",
    "resource",
];

/// Parses and checks the rules of `text` from `origin`; every problem at once.
/// A window plus its `for` duration must fit in `memory_ms` (the samples
/// kept in memory).
pub fn parse(origin: &str, text: &str, memory_ms: u64) -> Result<Vec<Rule>, Vec<RuleError>> {
    let file: RuleFile = toml::from_str(text).map_err(|e| {
        vec![RuleError {
            origin: origin.to_string(),
            rule: "(file)".into(),
            problem: e.message().to_string(),
        }]
    })?;
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (i, spec) in file.rules.into_iter().enumerate() {
        match check(origin, i, spec, memory_ms) {
            Ok(rule) => rules.push(rule),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

fn check(
    origin: &str,
    index: usize,
    spec: RuleSpec,
    memory_ms: u64,
) -> Result<Rule, Vec<RuleError>> {
    let code_ok = !spec.code.is_empty()
        && spec.code.len() <= 64
        && spec.code.starts_with(|c: char| c.is_ascii_lowercase())
        && spec
            .code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let name = if code_ok {
        format!("{:?}", spec.code)
    } else {
        format!("#{}", index + 1)
    };
    let mut problems: Vec<String> = Vec::new();
    if !code_ok {
        problems.push(format!(
            "code {:?} must be 1 to 64 lower-case letters, digits and '_', starting with a letter",
            spec.code
        ));
    }
    if spec.kind.is_empty() {
        problems.push("kind is empty".into());
    }
    let health = match spec.health.as_str() {
        "degraded" => Some(Health::Degraded),
        "unhealthy" => Some(Health::Unhealthy),
        other => {
            problems.push(format!(
                "health {other:?} must be \"degraded\" or \"unhealthy\""
            ));
            None
        }
    };
    if spec.when.is_empty() {
        problems.push("has no condition ([[rule.when]])".into());
    }
    for (i, c) in spec.when.iter().enumerate() {
        let at = format!("when[{i}]");
        for metric in std::iter::once(&c.metric).chain(c.divide_by.as_ref().map(|d| &d.metric)) {
            if let Err(e) = validate_metric_name(metric) {
                problems.push(format!("{at}: {e}"));
            }
        }
        if c.over_ms < 1_000 {
            problems.push(format!("{at}: over_ms must be at least 1000"));
        }
        match (c.function, c.predict_ms) {
            (Function::Predict, 0) => {
                problems.push(format!("{at}: predict needs predict_ms above 0"));
            }
            (Function::Predict, _) | (_, 0) => {}
            (_, _) => problems.push(format!("{at}: predict_ms is only for function \"predict\"")),
        }
        if !c.threshold.is_finite() {
            problems.push(format!("{at}: threshold must be a finite number"));
        }
        let needs = c.over_ms.saturating_add(spec.for_ms);
        if needs > memory_ms {
            problems.push(format!(
                "{at}: over_ms + for_ms is {} s, more than the {} s of samples kept in memory \
                 (ingest.hot_window_ms)",
                needs / 1000,
                memory_ms / 1000
            ));
        }
    }
    for placeholder in placeholders(&spec.message) {
        if !PLACEHOLDERS.contains(&placeholder) && !placeholder.starts_with("attr.") {
            problems.push(format!(
                "message uses {{{placeholder}}}; known are {{value}}, {{value_percent}}, \
                 {{threshold}}, {{threshold_percent}}, {{resource}} and {{attr.KEY}}"
            ));
        }
    }
    match (health, problems.is_empty()) {
        (Some(health), true) => Ok(Rule {
            origin: origin.to_string(),
            spec,
            health,
        }),
        _ => Err(problems
            .into_iter()
            .map(|problem| RuleError {
                origin: origin.to_string(),
                rule: name.clone(),
                problem,
            })
            .collect()),
    }
}

/// The `{...}` names in `message`.
pub fn placeholders(message: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        out.push(&after[..end]);
        rest = &after[end + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[rule]]
code = "host_load_per_core_high"
kind = "host"
health = "degraded"
for_ms = 600000
message = "load per core {value} above {threshold}"
[[rule.when]]
metric = "system.cpu.load_average.5m"
function = "last"
over_ms = 60000
divide_by = { metric = "system.cpu.logical.count" }
op = ">"
threshold = 2.0
"#;

    #[test]
    fn a_good_rule_parses() {
        let rules = parse("rules.toml", GOOD, 900_000).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].health, Health::Degraded);
        assert_eq!(rules[0].spec.when[0].op, Op::Gt);
        assert_eq!(
            rules[0].spec.when[0].divide_by.as_ref().unwrap().metric,
            "system.cpu.logical.count"
        );
    }

    #[test]
    fn every_problem_is_named_with_its_rule() {
        let bad = r#"
[[rule]]
code = "Bad Code"
kind = ""
health = "sick"
message = "{nope}"
[[rule.when]]
metric = "m"
function = "avg"
over_ms = 10
predict_ms = 5
op = ">"
threshold = 1.0

[[rule]]
code = "too_long"
kind = "host"
health = "unhealthy"
for_ms = 900000
message = "x"
[[rule.when]]
metric = "m"
function = "predict"
over_ms = 60000
op = "<"
threshold = 0.0
"#;
        let errors = parse("mine.toml", bad, 900_000).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has("mine.toml: rule #1: code \"Bad Code\""), "{text:#?}");
        assert!(has("rule #1: kind is empty"), "{text:#?}");
        assert!(has("rule #1: health \"sick\""), "{text:#?}");
        assert!(has("rule #1: message uses {nope}"), "{text:#?}");
        assert!(
            has("rule #1: when[0]: over_ms must be at least 1000"),
            "{text:#?}"
        );
        assert!(has("rule #1: when[0]: predict_ms is only for"), "{text:#?}");
        assert!(
            has("rule \"too_long\": when[0]: predict needs predict_ms"),
            "{text:#?}"
        );
        assert!(
            has("rule \"too_long\": when[0]: over_ms + for_ms is 960 s, more than the 900 s"),
            "{text:#?}"
        );
    }

    #[test]
    fn a_file_that_is_not_toml_or_has_unknown_keys_is_refused() {
        let e = parse("x.toml", "[[rule]]\ncode = 1\n", 900_000).unwrap_err();
        assert_eq!(e[0].rule, "(file)");
        let e = parse(
            "x.toml",
            &GOOD.replace("op = \">\"", "op = \">\"\nopp = 1"),
            900_000,
        )
        .unwrap_err();
        assert!(e[0].problem.contains("opp"), "{e:?}");
        let e = parse("x.toml", &GOOD.replace("\"last\"", "\"median\""), 900_000).unwrap_err();
        assert!(e[0].problem.contains("median"), "{e:?}");
    }

    #[test]
    fn placeholders_are_found() {
        assert_eq!(
            placeholders("a {value} b {attr.device} {"),
            vec!["value", "attr.device"]
        );
    }
}
