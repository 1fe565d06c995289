//! `infrawatch certs`: a development CA, a server certificate and client
//! certificates, each with its role, in one directory (existing files are kept).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use infrawatch_common::certs::DevPki;
use infrawatch_common::role::Role;

/// Arguments of `infrawatch certs`.
#[derive(Debug, Args)]
pub(super) struct CertsArgs {
    /// Directory for the PEM files (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Extra names for the server certificate (besides localhost, 127.0.0.1, ::1).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Agents to issue certificates for (role `agent`: may only report); repeatable.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// Readers to issue certificates for (role `reader`: queries, events, own
    /// subscriptions); repeatable.
    #[arg(long = "reader")]
    readers: Vec<String>,
    /// Admins to issue certificates for (role `admin`: a reader that also manages
    /// others' subscriptions and agents' machine bindings); repeatable.
    #[arg(long = "admin")]
    admins: Vec<String>,
}

impl CertsArgs {
    fn clients(&self) -> impl Iterator<Item = (&String, Role)> {
        self.agents
            .iter()
            .map(|n| (n, Role::Agent))
            .chain(self.readers.iter().map(|n| (n, Role::Reader)))
            .chain(self.admins.iter().map(|n| (n, Role::Admin)))
    }
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
    for (client, role) in args.clients() {
        pki.ensure_client(&ca, client, role)
            .with_context(|| format!("{role} certificate for {client:?}"))?;
    }
    eprintln!("certificates in {}:", args.dir.display());
    eprintln!("  CA:     {}", pki.ca_cert().display());
    eprintln!(
        "  server: {} {}",
        pki.cert("server").display(),
        pki.key("server").display()
    );
    for (client, role) in args.clients() {
        eprintln!(
            "  {client} ({role}): {} {}",
            pki.cert(client).display(),
            pki.key(client).display()
        );
    }
    Ok(())
}
