//! `infrawatch certs`: a development CA, a server certificate and client
//! certificates in one directory (existing files are kept).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use infrawatch_common::certs::DevPki;

/// Arguments of `infrawatch certs`.
#[derive(Debug, Args)]
pub(super) struct CertsArgs {
    /// Directory for the PEM files (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Extra names for the server certificate (besides localhost, 127.0.0.1, ::1).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Client identities to issue certificates for (e.g. agent-node-1, cli); repeatable.
    #[arg(long = "client")]
    clients: Vec<String>,
}

/// Creates the CA (if missing), the server certificate and one certificate per client.
pub(super) fn run(args: CertsArgs) -> anyhow::Result<()> {
    let pki = DevPki::new(&args.dir);
    if !args.server_names.is_empty() && pki.cert("server").is_file() {
        eprintln!(
            "note: {} exists and is kept; delete it (and server-key.pem) to issue one with the new names",
            pki.cert("server").display()
        );
    }
    let ca = pki.ensure_ca().context("development CA")?;
    pki.ensure_server(&ca, &args.server_names)
        .context("server certificate")?;
    for client in &args.clients {
        pki.ensure_client(&ca, client)
            .with_context(|| format!("client certificate for {client:?}"))?;
    }
    eprintln!("certificates in {}:", args.dir.display());
    eprintln!("  CA:     {}", pki.ca_cert().display());
    eprintln!(
        "  server: {} {}",
        pki.cert("server").display(),
        pki.key("server").display()
    );
    for client in &args.clients {
        eprintln!(
            "  {client}: {} {}",
            pki.cert(client).display(),
            pki.key(client).display()
        );
    }
    Ok(())
}
