//! `infrawatch-loadgen`: simulates many agents, each with its own client
//! certificate, streaming to one or more aggregators, and reports acknowledged
//! samples per second, acknowledgement latency (received and durable, and
//! whether every batch sent was acknowledged durable), errors, bytes per sample
//! and change-to-event latency (see `infrawatch_e2e::loadgen` and `--help`).
//!
//! Progress goes to stderr; the summary to stdout (JSON with `--json`). Exits 64
//! on bad arguments, 1 when the run could not be made.

use std::process::ExitCode;

use clap::Parser;
use infrawatch_e2e::loadgen::{self, config::Args};

fn main() -> ExitCode {
    let args = Args::parse();
    let problems = args.problems();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("infrawatch-loadgen: {p}");
        }
        return ExitCode::from(64);
    }
    infrawatch_common::install_crypto_provider();
    infrawatch_common::telemetry::init_tracing(infrawatch_common::telemetry::LogFormat::Text);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infrawatch-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.certs_only {
        let started = std::time::Instant::now();
        let ids = loadgen::identities(&args);
        let issued = loadgen::certs::ensure(&args.pki_dir, &ids)?;
        eprintln!(
            "certificates: {issued} issued, {} reused, in {:.1} s ({})",
            ids.len() - issued,
            started.elapsed().as_secs_f64(),
            args.pki_dir.display()
        );
        return Ok(());
    }
    let limit = loadgen::raise_open_files()?;
    if limit < args.agents as u64 + 256 {
        eprintln!(
            "infrawatch-loadgen: warning: at most {limit} open files, fewer than {} agents need",
            args.agents + 256
        );
    }
    let json = args.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()?;
    let summary = runtime.block_on(loadgen::run(args))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary.json())?);
    } else {
        print!("{}", summary.text());
    }
    // Connections still closing must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}
