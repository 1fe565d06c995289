//! `infrawatch up`: the local all-in-one.
//!
//! Under `$INFRAWATCH_HOME` it creates development certificates (first run only),
//! writes configurations for an aggregator on SQLite and an agent on this host,
//! starts both binaries (found next to this one), waits until the host is visible,
//! prints where to look, and on Ctrl-C or SIGTERM stops the agent, then the
//! aggregator, each with SIGTERM and a grace period.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use infrawatch_common::certs::DevPki;
use infrawatch_common::role::Role;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use super::home::{self, Home, Instance};
use super::{OutputFormat, QueryArgs, client};

/// Identity of the CLI's client certificate.
const CLI_IDENTITY: &str = "cli";

/// Arguments of `infrawatch up`.
#[derive(Debug, Args)]
pub(super) struct UpArgs {
    /// gRPC (mTLS) port on 127.0.0.1.
    #[arg(long, default_value_t = 7443)]
    grpc_port: u16,
    /// REST port on 127.0.0.1.
    #[arg(long, default_value_t = 7080)]
    rest_port: u16,
    /// Host collection interval in milliseconds.
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
}

/// Runs until interrupted.
pub(super) async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let home = Home::resolve()?;
    let bin_dir = std::env::current_exe()
        .context("cannot locate the infrawatch binary")?
        .parent()
        .map(Path::to_path_buf)
        .context("the infrawatch binary has no parent directory")?;
    let aggregator_bin = sibling(&bin_dir, "infrawatch-aggregator")?;
    let agent_bin = sibling(&bin_dir, "infrawatch-agent")?;

    let grpc = SocketAddr::from(([127, 0, 0, 1], args.grpc_port));
    let rest = SocketAddr::from(([127, 0, 0, 1], args.rest_port));
    for (name, addr) in [("--grpc-port", grpc), ("--rest-port", rest)] {
        if std::net::TcpListener::bind(addr).is_err() {
            bail!(
                "{addr} is in use (is another `infrawatch up` running?); choose another port with {name}"
            );
        }
    }

    let pki = DevPki::new(home.tls_dir());
    let ca = pki.ensure_ca().context("development CA")?;
    pki.ensure_server(&ca, &[]).context("server certificate")?;
    let agent_identity = format!("agent-{}", dns_label(&hostname()));
    pki.ensure_client(&ca, &agent_identity, Role::Agent)
        .context("agent certificate")?;
    // The local operator: queries, and manages every subscription.
    pki.ensure_client(&ca, CLI_IDENTITY, Role::Admin)
        .context("CLI certificate")?;

    home::write(
        &home.aggregator_config(),
        &aggregator_toml(&home, &pki, grpc, rest),
    )?;
    home::write(
        &home.agent_config(),
        &agent_toml(&home, &pki, &agent_identity, grpc, args.interval_ms),
    )?;
    let instance = Instance {
        grpc_endpoint: format!("https://{grpc}"),
        rest_url: format!("http://{rest}"),
        server_name: "localhost".into(),
        ca: pki.ca_cert(),
        cert: pki.cert(CLI_IDENTITY),
        key: pki.key(CLI_IDENTITY),
    };
    home.write_instance(&instance)?;
    std::fs::create_dir_all(home.log_dir())?;

    eprintln!(
        "Starting the aggregator (SQLite in {}) ...",
        home.data_dir().display()
    );
    let mut aggregator = spawn(
        &aggregator_bin,
        &home.aggregator_config(),
        &home.log_dir().join("aggregator.log"),
    )?;
    if let Err(e) = wait_ready(rest, &mut aggregator).await {
        stop(&mut aggregator, "aggregator").await;
        return Err(e.context(format!(
            "see {}",
            home.log_dir().join("aggregator.log").display()
        )));
    }
    eprintln!("Starting the agent ({agent_identity}) ...");
    let mut agent = spawn(
        &agent_bin,
        &home.agent_config(),
        &home.log_dir().join("agent.log"),
    )?;
    let host = wait_for_host(&mut agent).await;
    if let Ok(Some(status)) = agent.try_wait() {
        stop(&mut aggregator, "aggregator").await;
        bail!(
            "the agent exited during start-up ({status}); see {}",
            home.log_dir().join("agent.log").display()
        );
    }

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\ninfrawatch is running. Data, certificates and logs: {}",
        home.dir.display()
    )?;
    writeln!(out, "  gRPC (mTLS): {}", instance.grpc_endpoint)?;
    writeln!(out, "  REST:        {}/api/v1/status", instance.rest_url)?;
    writeln!(out, "  metrics:     {}/metrics", instance.rest_url)?;
    writeln!(out, "  logs:        {}", home.log_dir().display())?;
    writeln!(out, "\nTry, in another terminal:")?;
    writeln!(out, "  infrawatch status")?;
    writeln!(out, "  infrawatch resources")?;
    match &host {
        Some(id) => {
            writeln!(out, "  infrawatch get {id}")?;
            writeln!(
                out,
                "  infrawatch metrics {id} --name system.cpu.utilization"
            )?;
            writeln!(out, "  curl {}/api/v1/resources/{id}", instance.rest_url)?;
        }
        None => writeln!(
            out,
            "  (the host has not appeared yet; see {})",
            home.log_dir().join("agent.log").display()
        )?,
    }
    writeln!(out, "\nPress Ctrl-C to stop.")?;
    drop(out);

    let mut term = signal(SignalKind::terminate())?;
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        _ = term.recv() => ExitCode::SUCCESS,
        s = aggregator.wait() => {
            eprintln!("The aggregator exited ({}); see {}", describe(s), home.log_dir().join("aggregator.log").display());
            ExitCode::FAILURE
        }
        s = agent.wait() => {
            eprintln!("The agent exited ({}); see {}", describe(s), home.log_dir().join("agent.log").display());
            ExitCode::FAILURE
        }
    };
    eprintln!("Stopping ...");
    stop(&mut agent, "agent").await;
    stop(&mut aggregator, "aggregator").await;
    eprintln!("Stopped.");
    Ok(code)
}

fn describe(s: std::io::Result<std::process::ExitStatus>) -> String {
    match s {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

fn sibling(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "cannot find {name} next to infrawatch in {}; build all binaries (cargo build --workspace --bins)",
            dir.display()
        )
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A DNS label for certificate names: lowercase letters, digits and '-'.
fn dns_label(s: &str) -> String {
    let label: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(50)
        .collect();
    let label = label.trim_matches('-').to_string();
    if label.is_empty() {
        "local".into()
    } else {
        label
    }
}

fn quote(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

fn aggregator_toml(home: &Home, pki: &DevPki, grpc: SocketAddr, rest: SocketAddr) -> String {
    let db = home.data_dir().join("infrawatch.db");
    format!(
        "# Generated by `infrawatch up` on every start; edit flags, not this file.\n\
         [grpc]\nlisten = \"{grpc}\"\n\n[grpc.tls]\nca = {}\ncert = {}\nkey = {}\n\n\
         [rest]\nlisten = \"{rest}\"\n\n[storage]\nurl = {}\n",
        quote(&pki.ca_cert()),
        quote(&pki.cert("server")),
        quote(&pki.key("server")),
        toml::Value::String(format!("sqlite://{}", db.display())),
    )
}

fn agent_toml(
    home: &Home,
    pki: &DevPki,
    identity: &str,
    grpc: SocketAddr,
    interval_ms: u64,
) -> String {
    format!(
        "# Generated by `infrawatch up` on every start; edit flags, not this file.\n\
         state_dir = {}\n\n[aggregator]\nendpoints = [\"https://{grpc}\"]\nserver_name = \"localhost\"\n\n\
         [aggregator.tls]\nca = {}\ncert = {}\nkey = {}\n\n\
         [collectors.host]\nenabled = true\ninterval_ms = {interval_ms}\ndeadline_ms = {}\n",
        quote(&home.data_dir().join("agent")),
        quote(&pki.ca_cert()),
        quote(&pki.cert(identity)),
        quote(&pki.key(identity)),
        interval_ms.div_ceil(2).max(1),
    )
}

fn spawn(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = file.try_clone()?;
    Command::new(bin)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        // Own process group: a Ctrl-C in the terminal reaches only `up`, which then
        // stops the agent before the aggregator so the last batches are acknowledged.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// Waits until the aggregator answers `/readyz`, or fails if it exits.
async fn wait_ready(rest: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    for _ in 0..600 {
        if let Some(status) = child.try_wait()? {
            bail!("the aggregator exited during start-up ({status})");
        }
        if http_status(rest, "/readyz").is_ok_and(|s| s == 200) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the aggregator did not become ready within 60 s")
}

/// Status code of a plain HTTP GET on loopback.
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// Waits up to 30 s for a host resource to appear; returns its id.
async fn wait_for_host(agent: &mut Child) -> Option<String> {
    let query = QueryArgs {
        endpoint: None,
        ca: None,
        cert: None,
        key: None,
        server_name: "localhost".into(),
        output: OutputFormat::Table,
    };
    for _ in 0..60 {
        if agent.try_wait().ok().flatten().is_some() {
            return None;
        }
        if let Ok(mut c) = client::connect(&query).await
            && let Ok(list) = c
                .resources("host".into(), None, String::new(), Some(1))
                .await
            && let Some(r) = list.into_iter().next()
        {
            return Some(r.id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// SIGTERM, then SIGKILL after 15 s.
async fn stop(child: &mut Child, name: &str) {
    if let Some(pid) = child.id()
        && let Ok(pid) = i32::try_from(pid)
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            eprintln!("The {name} did not stop within 15 s; killing it.");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert_eq!(dns_label("Web_01.example"), "web-01-example");
        assert_eq!(dns_label("--"), "local");
    }
}
