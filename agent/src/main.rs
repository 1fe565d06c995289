//! `infrawatch-agent`: parse flags, load and validate the configuration, run the
//! agent until SIGINT or SIGTERM. Invalid configuration exits with 64 (EX_USAGE).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use infrawatch_agent::config::{AgentConfig, ENV_PREFIX};
use infrawatch_common::config::{ConfigSources, EX_USAGE, load};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: collectors and the batcher
/// allocate many small strings each second, and glibc's malloc and free took
/// about 14 % of the agent's CPU (BENCHMARKS.md, whole agent against
/// node_exporter).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The infrawatch node agent.
///
/// Configuration precedence, lowest first: built-in defaults, the TOML file
/// (--config), INFRAWATCH_AGENT_* environment variables (`__` between nested keys,
/// e.g. INFRAWATCH_AGENT_AGGREGATOR__SERVER_NAME), then --set key.path=value.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "INFRAWATCH_AGENT_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set collectors.host.interval_ms=1000 (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Check the configuration and exit: 0 if valid, 64 if not.
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("infrawatch-agent: {e}");
            return ExitCode::from(EX_USAGE as u8);
        }
    };
    if matches!(cli.command, Some(Command::Validate)) {
        eprintln!("infrawatch-agent: configuration is valid");
        return ExitCode::SUCCESS;
    }
    infrawatch_common::install_crypto_provider();
    infrawatch_common::telemetry::init_tracing(config.log_format);
    let metrics = match install_metrics() {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("infrawatch-agent: local metrics disabled: {e}");
            None
        }
    };
    // One thread runs every task: collectors, batcher and stream are short bursts
    // once a second, and a single thread saves the cross-thread wake-ups (futex,
    // context switches) that cost more than the work. Collectors that may block
    // (NVML) and disk syncs still go to the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("infrawatch-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(infrawatch_common::process::on_termination(move || {
            stop.cancel()
        }));
        match infrawatch_agent::run(config, metrics, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, "Agent failed.");
                eprintln!(
                    "infrawatch-agent: {}",
                    infrawatch_common::process::error_chain(&e)
                );
                ExitCode::FAILURE
            }
        }
    });
    // A collector stuck in a system call holds a blocking thread; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

fn load_config(cli: &Cli) -> Result<AgentConfig, infrawatch_common::config::ConfigErrors> {
    let mut config: AgentConfig = load(ConfigSources {
        file: cli.config.as_deref(),
        env_prefix: ENV_PREFIX,
        overrides: &cli.overrides,
    })?;
    config.apply_container_env(|k| std::env::var(k).ok());
    // Values first, then the files they name; every problem at once.
    infrawatch_common::config::all_of([config.validate(), config.preflight()])?;
    Ok(config)
}

/// Buckets of the acknowledgement latency histogram, in seconds (a histogram, not
/// a summary, so that it aggregates across agents and over any window). Durable
/// acks wait for the aggregator's flush, up to a minute.
const ACK_LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the recorder that the local `/metrics` renders.
fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                infrawatch_agent::transport::ACK_LATENCY_METRIC.into(),
            ),
            ACK_LATENCY_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}
