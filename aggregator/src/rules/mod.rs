//! Health rules as data: rules over the series of a resource kind, written in
//! TOML ([`spec`]). The built-in ones ship in `builtin.toml`; operators add
//! theirs in rule files (`[rules] paths`, files or directories of `*.toml`),
//! checked when the aggregator starts (it exits 64 naming each bad rule) and
//! read again when a file changes ([`reload`]): a bad edit keeps the rules
//! loaded before, and the log and `/metrics` say why. The planner judges each
//! resource that reports by the rules of its kind ([`eval`]), beside the rules
//! written in code (`crate::health`).

pub mod eval;
pub mod reload;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use spec::{Rule, RuleError};

/// The built-in rules, in the same form as rule files.
pub const BUILTIN: &str = include_str!("builtin.toml");

/// Where the built-in rules come from, in errors.
const BUILTIN_ORIGIN: &str = "built-in";

/// The `[rules]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Rule files, or directories whose `*.toml` files are rule files.
    pub paths: Vec<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval_ms: u64,
    /// Codes of rules left out, built-in or not (e.g. `host_rebooted`).
    pub disabled: Vec<String>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            reload_interval_ms: 5_000,
            disabled: Vec::new(),
        }
    }
}

/// Rules by resource kind.
#[derive(Debug, Default)]
pub struct RuleSet {
    by_kind: HashMap<String, Vec<Rule>>,
    count: usize,
}

impl RuleSet {
    /// The rules of `kind`.
    pub fn of_kind(&self, kind: &str) -> &[Rule] {
        self.by_kind.get(kind).map_or(&[], Vec::as_slice)
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True without rules.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn from_rules(rules: Vec<Rule>) -> Result<Self, Vec<RuleError>> {
        let mut set = RuleSet::default();
        let mut errors = Vec::new();
        for rule in rules {
            let same = set
                .of_kind(&rule.spec.kind)
                .iter()
                .find(|r| r.spec.code == rule.spec.code);
            if let Some(first) = same {
                errors.push(RuleError {
                    origin: rule.origin.clone(),
                    rule: format!("{:?}", rule.spec.code),
                    problem: format!(
                        "kind {:?} already has a rule with this code (in {})",
                        rule.spec.kind, first.origin
                    ),
                });
                continue;
            }
            set.count += 1;
            set.by_kind
                .entry(rule.spec.kind.clone())
                .or_default()
                .push(rule);
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }
}

/// The rule files `paths` name, in order: files as given, and the `*.toml`
/// files of directories by name.
pub fn rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<RuleError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let problem = |problem: String| RuleError {
            origin: path.display().to_string(),
            rule: "(file)".into(),
            problem,
        };
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut inside: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                        .collect();
                    inside.sort();
                    files.extend(inside);
                }
                Err(e) => errors.push(problem(format!("cannot list the directory: {e}"))),
            },
            Ok(_) => files.push(path.clone()),
            Err(e) => errors.push(problem(format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

/// Loads the built-in rules and those of the configured paths, but the
/// disabled ones, checking each against `memory_ms` of samples kept in
/// memory; every problem at once.
pub fn load(config: &RulesConfig, memory_ms: u64) -> Result<RuleSet, Vec<RuleError>> {
    let paths = &config.paths;
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    match spec::parse(BUILTIN_ORIGIN, BUILTIN, u64::MAX) {
        // A shorter memory shortens the built-in `for` durations to fit.
        Ok(r) => rules.extend(r.into_iter().map(|mut rule| {
            let over = rule.spec.when.iter().map(|c| c.over_ms).max().unwrap_or(0);
            rule.spec.for_ms = rule.spec.for_ms.min(memory_ms.saturating_sub(over));
            rule
        })),
        Err(e) => errors.extend(e),
    }
    match rule_files(paths) {
        Ok(files) => {
            for file in files {
                match read(&file)
                    .and_then(|text| spec::parse(&file.display().to_string(), &text, memory_ms))
                {
                    Ok(r) => rules.extend(r),
                    Err(e) => errors.extend(e),
                }
            }
        }
        Err(e) => errors.extend(e),
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    rules.retain(|r| !config.disabled.contains(&r.spec.code));
    RuleSet::from_rules(rules)
}

fn read(file: &Path) -> Result<String, Vec<RuleError>> {
    std::fs::read_to_string(file).map_err(|e| {
        vec![RuleError {
            origin: file.display().to_string(),
            rule: "(file)".into(),
            problem: format!("cannot read: {e}"),
        }]
    })
}

/// The rules in force, shared by the planner and the reload task.
#[derive(Debug, Default)]
pub struct Rules(RwLock<Arc<RuleSet>>);

impl Rules {
    /// Rules `set` in force.
    pub fn new(set: RuleSet) -> Self {
        Self(RwLock::new(Arc::new(set)))
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `set` in force.
    pub fn replace(&self, set: RuleSet) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::Health;
    use crate::samples::ledger::Cursor;
    use crate::samples::{SampleStore, SeriesKey, SeriesSamples};

    #[test]
    fn the_built_in_rules_load_and_fit_a_short_memory() {
        let set = load(&RulesConfig::default(), 900_000).unwrap();
        assert!(!set.of_kind("host").is_empty());
        let short = load(&RulesConfig::default(), 120_000).unwrap();
        assert!(
            short
                .of_kind("host")
                .iter()
                .all(|r| r.spec.for_ms <= 60_000)
        );
    }

    const NOW: i64 = 1_800_000_000_000;

    /// What the built-in rules find on `id` of `kind` given `series` (metric,
    /// attributes, value) sampled every 5 s for the last 15 minutes.
    fn built_in_findings(id: &str, kind: &str, series: &[(&str, &str, f64)]) -> Vec<String> {
        let steady: Vec<(&str, &str, f64, f64)> =
            series.iter().map(|(m, a, v)| (*m, *a, *v, 0.0)).collect();
        built_in_findings_rising(id, kind, &steady)
    }

    /// [`built_in_findings`] with series (metric, attributes, first value,
    /// increase per sample) that may rise, as counters do.
    fn built_in_findings_rising(
        id: &str,
        kind: &str,
        series: &[(&str, &str, f64, f64)],
    ) -> Vec<String> {
        let set = load(&RulesConfig::default(), 900_000).unwrap();
        let samples = SampleStore::new(900_000);
        let ledger = samples.open_ledger("a", Cursor::default(), 0, 1);
        let batch: Vec<SeriesSamples> = series
            .iter()
            .map(|(metric, attributes, v, step)| SeriesSamples {
                key: SeriesKey::new(id, metric, attributes),
                points: (0..180)
                    .map(|i| (NOW - 895_000 + i * 5_000, v + step * i as f64))
                    .collect(),
            })
            .collect();
        let (_, new) = ledger.begin(1, &batch, 0);
        samples.index(&ledger, new);
        eval::evaluate(set.of_kind(kind), &samples, id, NOW)
            .into_iter()
            .map(|(h, r)| {
                assert!(matches!(h, Health::Degraded | Health::Unhealthy));
                r.code
            })
            .collect()
    }

    #[test]
    fn each_built_in_rule_fires_on_its_input_and_not_on_a_quiet_host() {
        let quiet = built_in_findings(
            "host/x",
            "host",
            &[
                ("system.cpu.load_average.1m", "", 1.0),
                ("system.cpu.logical.count", "", 4.0),
                ("system.paging.faults.rate", "type=\"major\"", 3.0),
                ("system.uptime", "", 86_400.0),
            ],
        );
        assert!(quiet.is_empty(), "{quiet:?}");
        let busy = built_in_findings(
            "host/x",
            "host",
            &[
                ("system.cpu.load_average.1m", "", 9.0),
                ("system.cpu.logical.count", "", 4.0),
                ("system.paging.faults.rate", "type=\"major\"", 900.0),
                ("system.uptime", "", 120.0),
            ],
        );
        assert_eq!(
            busy,
            vec![
                "host_load_per_core_high",
                "host_major_page_faults_high",
                "host_rebooted"
            ]
        );
        let disk = built_in_findings(
            "host/x/disk/vda",
            "disk",
            &[("system.disk.pending_operations", "device=\"vda\"", 40.0)],
        );
        assert_eq!(disk, vec!["disk_io_saturated"]);
    }

    /// The kernel collector's series on a quiet host, with `changes` put in
    /// place of those of the same metric and attributes.
    fn kernel_series<'a>(
        changes: &[(&'a str, &'a str, f64, f64)],
    ) -> Vec<(&'a str, &'a str, f64, f64)> {
        let quiet = [
            ("system.network.conntrack.count", "", 1_200.0, 0.0),
            ("system.network.conntrack.limit", "", 262_144.0, 0.0),
            ("system.linux.file_descriptors.allocated", "", 5_000.0, 0.0),
            ("system.linux.file_descriptors.limit", "", 1_000_000.0, 0.0),
            ("system.clock.synchronized", "", 1.0, 0.0),
            ("system.clock.max_error", "", 0.01, 0.0),
            ("system.clock.offset", "", 0.001, 0.0),
            ("system.md.degraded", "device=\"md0\"", 0.0, 0.0),
            (
                "system.md.disks",
                "device=\"md0\",state=\"active\"",
                2.0,
                0.0,
            ),
            (
                "system.md.disks",
                "device=\"md0\",state=\"failed\"",
                0.0,
                0.0,
            ),
            ("system.linux.oom_kills", "", 3.0, 0.0),
            ("system.network.tcp.listen_overflows.rate", "", 0.0, 0.0),
            (
                "system.memory.edac.errors",
                "controller=\"mc0\",type=\"corrected\"",
                7.0,
                0.0,
            ),
            (
                "system.memory.edac.errors",
                "controller=\"mc0\",type=\"uncorrected\"",
                0.0,
                0.0,
            ),
            (
                "system.hardware.temperature",
                "chip=\"coretemp\",sensor=\"Core 0\"",
                45.0,
                0.0,
            ),
            (
                "system.hardware.temperature.limit",
                "chip=\"coretemp\",kind=\"max\",sensor=\"Core 0\"",
                80.0,
                0.0,
            ),
            (
                "system.hardware.temperature.limit",
                "chip=\"coretemp\",kind=\"crit\",sensor=\"Core 0\"",
                100.0,
                0.0,
            ),
            // A sensor with a maximum but no critical limit.
            (
                "system.hardware.temperature",
                "chip=\"nvme\",sensor=\"Composite\"",
                40.0,
                0.0,
            ),
            (
                "system.hardware.temperature.limit",
                "chip=\"nvme\",kind=\"max\",sensor=\"Composite\"",
                70.0,
                0.0,
            ),
            (
                "system.network.bond.slaves",
                "bond=\"bond0\",state=\"up\"",
                2.0,
                0.0,
            ),
            (
                "system.network.bond.slaves",
                "bond=\"bond0\",state=\"down\"",
                0.0,
                0.0,
            ),
        ];
        quiet
            .into_iter()
            .map(|q| {
                changes
                    .iter()
                    .find(|c| c.0 == q.0 && c.1 == q.1)
                    .copied()
                    .unwrap_or(q)
            })
            .collect()
    }

    #[test]
    fn each_kernel_rule_fires_on_its_input_and_not_on_a_quiet_host() {
        let quiet = built_in_findings_rising("host/x", "host", &kernel_series(&[]));
        assert!(quiet.is_empty(), "{quiet:?}");

        let bad = kernel_series(&[
            ("system.network.conntrack.count", "", 250_000.0, 0.0),
            (
                "system.linux.file_descriptors.allocated",
                "",
                950_000.0,
                0.0,
            ),
            ("system.clock.synchronized", "", 0.0, 0.0),
            ("system.clock.max_error", "", 16.0, 0.0),
            ("system.clock.offset", "", 0.2, 0.0),
            ("system.md.degraded", "device=\"md0\"", 1.0, 0.0),
            (
                "system.md.disks",
                "device=\"md0\",state=\"failed\"",
                1.0,
                0.0,
            ),
            // One OOM kill a minute: a counter rising by 1 every 12 samples.
            ("system.linux.oom_kills", "", 3.0, 1.0 / 12.0),
            ("system.network.tcp.listen_overflows.rate", "", 0.5, 0.0),
            (
                "system.memory.edac.errors",
                "controller=\"mc0\",type=\"corrected\"",
                7.0,
                1.0,
            ),
            (
                "system.memory.edac.errors",
                "controller=\"mc0\",type=\"uncorrected\"",
                0.0,
                1.0,
            ),
            (
                "system.hardware.temperature",
                "chip=\"coretemp\",sensor=\"Core 0\"",
                101.0,
                0.0,
            ),
            (
                "system.network.bond.slaves",
                "bond=\"bond0\",state=\"down\"",
                1.0,
                0.0,
            ),
        ]);
        assert_eq!(
            built_in_findings_rising("host/x", "host", &bad),
            vec![
                "host_conntrack_almost_full",
                "host_file_descriptors_high",
                "host_file_descriptors_critical",
                "host_clock_not_synchronized",
                "host_clock_skew",
                "host_raid_degraded",
                "host_raid_disk_failed",
                "host_oom_kill",
                "host_tcp_listen_overflows",
                "host_memory_corrected_errors",
                "host_memory_uncorrected_errors",
                "host_temperature_critical",
                "host_temperature_high",
                "host_bond_degraded",
            ]
        );

        // The milder and the other-direction cases.
        let some = kernel_series(&[
            (
                "system.linux.file_descriptors.allocated",
                "",
                800_000.0,
                0.0,
            ),
            ("system.clock.offset", "", -0.2, 0.0),
            // Unsynchronised but still within the kernel's error bound.
            ("system.clock.synchronized", "", 0.0, 0.0),
            ("system.clock.max_error", "", 2.0, 0.0),
            (
                "system.hardware.temperature",
                "chip=\"nvme\",sensor=\"Composite\"",
                75.0,
                0.0,
            ),
        ]);
        assert_eq!(
            built_in_findings_rising("host/x", "host", &some),
            vec![
                "host_file_descriptors_high",
                "host_clock_skew_behind",
                "host_temperature_high",
            ]
        );
        // A clock whose offset is being corrected is not skewed.
        let shrinking = kernel_series(&[("system.clock.offset", "", 0.2, -0.0001)]);
        assert!(built_in_findings_rising("host/x", "host", &shrinking).is_empty());
    }

    #[test]
    fn files_and_directories_load_and_a_repeated_code_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |code: &str| {
            format!(
                "[[rule]]\ncode = \"{code}\"\nkind = \"disk\"\nhealth = \"degraded\"\nmessage = \"x\"\n\
                 [[rule.when]]\nmetric = \"system.disk.utilization\"\nfunction = \"avg\"\nover_ms = 60000\nop = \">\"\nthreshold = 0.9\n"
            )
        };
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a.toml"), rule("disk_a")).unwrap();
        std::fs::write(dir.path().join("d/ignored.txt"), "not a rule file").unwrap();
        std::fs::write(dir.path().join("b.toml"), rule("disk_b")).unwrap();
        let config = RulesConfig {
            paths: vec![dir.path().join("d"), dir.path().join("b.toml")],
            ..RulesConfig::default()
        };
        let set = load(&config, 900_000).unwrap();
        let codes: Vec<&str> = set
            .of_kind("disk")
            .iter()
            .map(|r| r.spec.code.as_str())
            .collect();
        assert!(codes.ends_with(&["disk_a", "disk_b"]), "{codes:?}");

        std::fs::write(dir.path().join("b.toml"), rule("disk_a")).unwrap();
        let e = load(&config, 900_000).unwrap_err();
        let first = dir.path().join("d/a.toml");
        let expected = format!(
            "b.toml: rule \"disk_a\": kind \"disk\" already has a rule with this code (in {})",
            first.display()
        );
        assert!(e[0].to_string().ends_with(&expected), "{e:?}");
        let missing = RulesConfig {
            paths: vec![dir.path().join("missing.toml")],
            ..RulesConfig::default()
        };
        let e = load(&missing, 900_000).unwrap_err();
        assert!(e[0].problem.starts_with("cannot read"), "{e:?}");
        let fewer = RulesConfig {
            disabled: vec!["host_rebooted".into(), "disk_a".into()],
            ..config
        };
        std::fs::write(dir.path().join("b.toml"), rule("disk_b")).unwrap();
        let set = load(&fewer, 900_000).unwrap();
        assert!(
            set.of_kind("host")
                .iter()
                .all(|r| r.spec.code != "host_rebooted")
        );
        assert!(set.of_kind("disk").iter().all(|r| r.spec.code != "disk_a"));
    }
}
