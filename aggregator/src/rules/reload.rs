//! Reads the rule files again when they change: every interval, the files the
//! configured paths name and their sizes and modification times are compared
//! with the last look; on a change they are loaded and checked, and only rules
//! that all pass replace the ones in force. A failed reload is logged (each
//! problem, naming its file and rule) and counted, and the rules loaded before
//! stay.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Rules, RulesConfig, load, rule_files};
use crate::telemetry;

/// What the files looked like: (path, size, modified) of each.
type Look = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn look(paths: &[PathBuf]) -> Look {
    let files = rule_files(paths).unwrap_or_default();
    let mut out: Look = files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let modified = meta.and_then(|m| m.modified().ok());
            (f, size, modified)
        })
        .collect();
    // A directory's own time changes when files come and go.
    for p in paths {
        if p.is_dir() {
            let modified = std::fs::metadata(p).ok().and_then(|m| m.modified().ok());
            out.push((p.clone(), 0, modified));
        }
    }
    out
}

/// Watches the configured paths every `reload_interval_ms` until `stop`,
/// replacing the rules in `rules` when the files change and load; `memory_ms`
/// as for [`load`].
pub async fn run(rules: Arc<Rules>, config: RulesConfig, memory_ms: u64, stop: CancellationToken) {
    let paths = &config.paths;
    let every = Duration::from_millis(config.reload_interval_ms);
    // Nothing seen yet: the first look loads again, so a change between the
    // start-up load and this task's first look is not missed.
    let mut last: Look = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = look(paths);
        if now == last {
            continue;
        }
        last = now;
        match load(&config, memory_ms) {
            Ok(set) => {
                tracing::info!(rules = set.len(), "Rule files changed; rules reloaded.");
                metrics::gauge!(telemetry::RULES_LOADED).set(set.len() as f64);
                rules.replace(set);
            }
            Err(errors) => {
                metrics::counter!(telemetry::RULES_RELOAD_FAILURES).increment(1);
                for e in &errors {
                    tracing::error!(
                        file = %e.origin,
                        rule = %e.rule,
                        problem = %e.problem,
                        "A rule file does not load; the rules loaded before stay in force."
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "[[rule]]\ncode = \"CODE\"\nkind = \"disk\"\nhealth = \"degraded\"\nmessage = \"x\"\n\
        [[rule.when]]\nmetric = \"system.disk.utilization\"\nfunction = \"avg\"\nover_ms = 60000\nop = \">\"\nthreshold = 0.9\n";

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mine.toml");
        std::fs::write(&file, RULE.replace("CODE", "disk_one")).unwrap();
        let config = RulesConfig {
            paths: vec![dir.path().to_path_buf()],
            reload_interval_ms: 20,
            ..RulesConfig::default()
        };
        let rules = Arc::new(Rules::new(load(&config, 900_000).unwrap()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(rules.clone(), config, 900_000, stop.clone()));
        let has = |code: &str| {
            rules
                .current()
                .of_kind("disk")
                .iter()
                .any(|r| r.spec.code == code)
        };
        assert!(has("disk_one"));
        std::fs::write(&file, RULE.replace("CODE", "disk_two_longer")).unwrap();
        until("the new rule", || has("disk_two_longer")).await;
        assert!(!has("disk_one"));
        std::fs::write(&file, "[[rule]]\ncode = \"broken\"\n").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(has("disk_two_longer"), "a broken file keeps the rules");
        stop.cancel();
        task.await.unwrap();
    }
}
