//! Rule files end to end: a rule of the operator's fires on the real agent's
//! host, is replaced when its file changes, survives a broken edit (the rules
//! in force stay, the failure is counted), and a bad rule stops `validate`
//! with exit code 64 naming the file and the rule.

use std::process::Command;
use std::time::Duration;

use infrawatch_e2e::{Agent, Aggregator, Pki, binary, eventually, machine_id, reason_codes};

/// A host rule `code` on `metric`: `op threshold` over 2 s, at once.
fn rule(code: &str, metric: &str, op: &str, threshold: f64) -> String {
    format!(
        "[[rule]]\ncode = \"{code}\"\nkind = \"host\"\nhealth = \"degraded\"\n\
         message = \"{{value}} {op} {{threshold}} on {{resource}}\"\n\
         [[rule.when]]\nmetric = \"{metric}\"\nfunction = \"last\"\nover_ms = 2000\n\
         op = \"{op}\"\nthreshold = {threshold:?}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_file_is_loaded_fires_and_is_reloaded_and_a_broken_edit_keeps_the_rules() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules.d");
    std::fs::create_dir(&rules_dir).unwrap();
    let file = rules_dir.join("mine.toml");
    // Every host has some memory in use.
    std::fs::write(
        &file,
        rule("test_memory_in_use", "system.memory.utilization", ">", 0.0),
    )
    .unwrap();
    let pki = Pki::new(dir.path(), &["agent-r"]).unwrap();
    let extra = format!(
        "[rules]\npaths = [{:?}]\nreload_interval_ms = 200\n",
        rules_dir.display().to_string()
    );
    let agg = Aggregator::start_sqlite(dir.path(), &pki, &extra).unwrap();
    let _agent = Agent::start(dir.path(), &pki, "agent-r", &[agg.endpoint()], 500).unwrap();
    let host = format!("/api/v1/resources/host/{}", machine_id());

    let fired = eventually(Duration::from_secs(15), "the rule's reason", || {
        let (_, r) = agg.get(&host);
        reason_codes(&r)
            .contains(&"test_memory_in_use".to_string())
            .then_some(r)
    });
    let reason = fired["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["code"] == "test_memory_in_use")
        .unwrap()
        .clone();
    assert!(
        reason["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!("> 0 on host/{}", machine_id())),
        "{reason}"
    );
    assert_eq!(reason["metric"], "system.memory.utilization");
    assert_ne!(fired["health"], "healthy");

    // The file changes: the old rule goes, the new one fires.
    std::fs::write(
        &file,
        rule("test_uptime_positive", "system.uptime", ">", 0.0),
    )
    .unwrap();
    eventually(Duration::from_secs(15), "the reloaded rule", || {
        let (_, r) = agg.get(&host);
        let c = reason_codes(&r);
        (c.contains(&"test_uptime_positive".to_string())
            && !c.contains(&"test_memory_in_use".to_string()))
        .then_some(())
    });

    // A broken edit: counted, and the rules in force stay.
    std::fs::write(&file, "[[rule]]\ncode = \"half written\"\n").unwrap();
    eventually(Duration::from_secs(10), "the failed reload counted", || {
        let (_, text) = agg.get_text("/metrics");
        text.lines()
            .any(|l| {
                l.starts_with("infrawatch_aggregator_rules_reload_failures_total ")
                    && !l.ends_with(" 0")
            })
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let (_, r) = agg.get(&host);
    assert!(
        reason_codes(&r).contains(&"test_uptime_positive".to_string()),
        "{r}"
    );
}

#[test]
fn a_bad_rule_file_stops_validate_with_64_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        rule("fine_rule", "system.uptime", ">", 0.0).replace("over_ms = 2000", "over_ms = 3600000"),
    )
    .unwrap();
    let config = dir.path().join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nurl = \"sqlite://{}\"\n[rules]\npaths = [{:?}]\n",
            dir.path().join("iw.db").display(),
            file.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(binary("infrawatch-aggregator"))
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: rule \"fine_rule\": when[0]: over_ms + for_ms is 3600 s",
            file.display()
        )),
        "{stderr}"
    );
}
