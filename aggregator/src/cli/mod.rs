//! The `infrawatch` command for people: `up` runs the local all-in-one, `status`,
//! `resources`, `get` and `metrics` query an aggregator over gRPC with mTLS, and
//! `certs` creates development certificates, `token` makes REST bearer tokens.
//!
//! Without `--endpoint`, queries go to the instance that `infrawatch up` started
//! under `$INFRAWATCH_HOME`, found through the `instance.toml` it writes there.

mod certs;
mod client;
mod home;
mod output;
mod token;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use home::{Home, Instance};

/// infrawatch: infrastructure monitoring for Kubernetes, cloud, network and edge.
#[derive(Debug, Parser)]
#[command(name = "infrawatch", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an aggregator (SQLite) and an agent on this host, over mTLS with
    /// development certificates; Ctrl-C stops both.
    Up(up::UpArgs),
    /// Fleet summary: resources by kind and health, connected agents.
    Status(QueryArgs),
    /// List resources.
    Resources {
        #[command(flatten)]
        query: QueryArgs,
        /// Only this kind, e.g. host.
        #[arg(long)]
        kind: Option<String>,
        /// Only this health: healthy, degraded, unhealthy or unknown.
        #[arg(long)]
        health: Option<String>,
        /// Label selector, e.g. 'host.name=web-1,!maintenance'.
        #[arg(long, short = 'l')]
        label: Option<String>,
        /// At most this many (1-1000); all pages are fetched when omitted.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one resource with its latest values.
    Get {
        #[command(flatten)]
        query: QueryArgs,
        /// Resource id, e.g. host/3d1219c7c4c5404aaa1f6d2a48adfda4.
        id: String,
    },
    /// Show a metric of one resource over time.
    Metrics {
        #[command(flatten)]
        query: QueryArgs,
        /// Resource id.
        id: String,
        /// Metric name, e.g. system.cpu.utilization.
        #[arg(long)]
        name: String,
        /// Series attributes, e.g. 'cpu="0"'.
        #[arg(long, default_value = "")]
        attributes: String,
        /// How far back, in seconds.
        #[arg(long, default_value_t = 600)]
        since_secs: i64,
        /// Step in seconds (0 = automatic).
        #[arg(long, default_value_t = 0)]
        step_secs: i64,
    },
    /// How long one resource spent in each health over a window (its SLA).
    Availability {
        #[command(flatten)]
        query: QueryArgs,
        /// Resource id.
        id: String,
        /// The window, ending now: days (30d), hours (6h) or milliseconds.
        #[arg(long, default_value = "1d")]
        window: String,
    },
    /// Create development certificates (a CA, a server certificate, client certificates).
    Certs(certs::CertsArgs),
    /// Make REST bearer tokens and their hashes.
    Token(token::TokenArgs),
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// Readable tables.
    Table,
    /// JSON, for scripts.
    Json,
}

/// Where the aggregator is and how to authenticate.
#[derive(Debug, Clone, Args)]
struct QueryArgs {
    /// Aggregator gRPC endpoint, e.g. https://aggregator:7443 (default: the local `up` instance).
    #[arg(long, env = "INFRAWATCH_ENDPOINT")]
    endpoint: Option<String>,
    /// CA certificate that signs the aggregator's certificate.
    #[arg(long, env = "INFRAWATCH_CA", requires = "endpoint")]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, env = "INFRAWATCH_CERT", requires = "endpoint")]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, env = "INFRAWATCH_KEY", requires = "endpoint")]
    key: Option<PathBuf>,
    /// Name in the aggregator's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    output: OutputFormat,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    infrawatch_common::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("infrawatch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): not an error of ours.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("infrawatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Certs(args) => certs::run(args).map(|()| ExitCode::SUCCESS),
        Command::Token(args) => token::run(args).map(|()| ExitCode::SUCCESS),
        Command::Status(q) => {
            let mut c = client::connect(&q).await?;
            let s = c.summary().await?;
            output::summary(&s, q.output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resources {
            query,
            kind,
            health,
            label,
            limit,
        } => {
            let mut c = client::connect(&query).await?;
            let list = c
                .resources(
                    kind.unwrap_or_default(),
                    health.as_deref(),
                    label.unwrap_or_default(),
                    limit,
                )
                .await?;
            output::resources(&list, query.output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { query, id } => {
            let mut c = client::connect(&query).await?;
            let r = c.get(&id).await?;
            output::resource(&r, query.output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics {
            query,
            id,
            name,
            attributes,
            since_secs,
            step_secs,
        } => {
            let mut c = client::connect(&query).await?;
            let r = c
                .metric(&id, &name, &attributes, since_secs, step_secs)
                .await?;
            output::metric(&r, query.output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Availability { query, id, window } => {
            let window_ms = crate::availability::parse_window(&window).ok_or_else(|| {
                anyhow::anyhow!("--window {window:?} is not days (30d), hours (6h) or milliseconds")
            })?;
            let mut c = client::connect(&query).await?;
            let a = c.availability(&id, window_ms).await?;
            output::availability(&a, query.output)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
