//! `infrawatch up` starts the aggregator and an agent, the CLI finds it by itself,
//! and an interrupt stops both cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use infrawatch_e2e::{binary, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn up_runs_everything_and_the_cli_queries_it() {
    let home = tempfile::tempdir().unwrap();
    let grpc = free_port().to_string();
    let rest = free_port().to_string();
    let mut up = Command::new(binary("infrawatch"))
        .args([
            "up",
            "--grpc-port",
            &grpc,
            "--rest-port",
            &rest,
            "--interval-ms",
            "1000",
        ])
        .env("INFRAWATCH_HOME", home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(90)) {
        let done = line.contains("Press Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    let banner = banner.join("\n");
    assert!(banner.contains("infrawatch is running"), "{banner}");
    assert!(
        banner.contains("infrawatch get host/"),
        "the host should be visible at start-up:\n{banner}"
    );
    assert!(
        banner.contains(&format!("http://127.0.0.1:{rest}")),
        "{banner}"
    );

    let cli = |args: &[&str]| {
        let out = Command::new(binary("infrawatch"))
            .args(args)
            .env("INFRAWATCH_HOME", home.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "infrawatch {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let status: serde_json::Value =
        serde_json::from_str(&cli(&["status", "--output", "json"])).unwrap();
    assert_eq!(status["by_kind"]["host"], 1);
    assert_eq!(status["connected_agents"], 1);
    let table = cli(&["resources"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("host/"), "{table}");
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_string();
    let one: serde_json::Value =
        serde_json::from_str(&cli(&["get", &format!("host/{machine_id}"), "-o", "json"])).unwrap();
    assert_eq!(one["kind"], "host");

    kill(
        Pid::from_raw(i32::try_from(up.id()).unwrap()),
        Signal::SIGINT,
    )
    .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = up.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "up did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "up exited with {status}");
    let agent_log = std::fs::read_to_string(home.path().join("logs/agent.log")).unwrap();
    let aggregator_log = std::fs::read_to_string(home.path().join("logs/aggregator.log")).unwrap();
    assert!(
        agent_log.contains("Agent stopped. unacknowledged_batches=0"),
        "the agent should stop with everything acknowledged:\n{agent_log}\n{aggregator_log}"
    );
    assert!(
        aggregator_log.contains("Aggregator stopped."),
        "{aggregator_log}"
    );
}
