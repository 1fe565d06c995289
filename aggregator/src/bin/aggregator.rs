//! `infrawatch-aggregator`: parse flags, load and validate the configuration, run
//! until SIGINT or SIGTERM, drain. Invalid configuration exits with 64 (EX_USAGE).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use infrawatch_aggregator::config::{AggregatorConfig, ENV_PREFIX};
use infrawatch_common::config::{ConfigErrors, ConfigSources, EX_USAGE, load};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: the ingest path allocates small
/// objects at a high rate, and glibc's malloc took about 40 % of the aggregator's
/// CPU under load (BENCHMARKS.md, profile of the sample path). Built without
/// transparent huge pages (`no_thp`, see Cargo.toml): with them it held about
/// 14 KiB more resident memory per connected agent.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The infrawatch aggregator.
///
/// Configuration precedence, lowest first: built-in defaults, the TOML file
/// (--config), INFRAWATCH_AGGREGATOR_* environment variables (`__` between nested
/// keys, e.g. INFRAWATCH_AGGREGATOR_STORAGE__URL), then --set key.path=value.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "INFRAWATCH_AGGREGATOR_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set storage.url=postgres://db/infrawatch (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the aggregator (the default).
    Run,
    /// Check the configuration and exit: 0 if valid, 64 if not.
    Validate,
}

fn main() -> ExitCode {
    infrawatch_aggregator::c_heap::limit_arenas();
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("infrawatch-aggregator: {e}");
            return ExitCode::from(EX_USAGE as u8);
        }
    };
    if matches!(cli.command, Some(Command::Validate)) {
        eprintln!("infrawatch-aggregator: configuration is valid");
        return ExitCode::SUCCESS;
    }
    infrawatch_common::install_crypto_provider();
    infrawatch_common::telemetry::init_tracing(config.log_format);
    let metrics = match infrawatch_aggregator::telemetry::install_recorder() {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("infrawatch-aggregator: metrics disabled: {e}");
            None
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("infrawatch-aggregator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(infrawatch_common::process::on_termination(move || {
            stop.cancel()
        }));
        match infrawatch_aggregator::run(config, metrics, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, "Aggregator failed.");
                eprintln!(
                    "infrawatch-aggregator: {}",
                    infrawatch_common::process::error_chain(&e)
                );
                ExitCode::FAILURE
            }
        }
    })
}

fn load_config(cli: &Cli) -> Result<AggregatorConfig, ConfigErrors> {
    let config: AggregatorConfig = load(ConfigSources {
        file: cli.config.as_deref(),
        env_prefix: ENV_PREFIX,
        overrides: &cli.overrides,
    })?;
    // Values first, then the files they name; every problem at once.
    infrawatch_common::config::all_of([config.validate(), config.preflight()])?;
    Ok(config)
}
