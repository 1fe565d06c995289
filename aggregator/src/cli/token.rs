//! `infrawatch token`: REST bearer tokens and the hashes the aggregator's
//! configuration holds instead of them.

use std::io::Read;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use infrawatch_common::role::Role;

use crate::auth::tokens::{self, TokenHash};

/// Arguments of `infrawatch token`.
#[derive(Debug, Args)]
pub(super) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a random 256-bit token; prints the token (give it to its holder) and
    /// the `[[rest.tokens]]` entry for the aggregator's configuration.
    New {
        /// Who holds it (1-64 letters, digits, '-', '_', '.'), e.g. grafana.
        #[arg(long)]
        name: String,
        /// reader (queries, events, own subscriptions) or admin.
        #[arg(long, default_value = "reader", value_parser = parse_role)]
        role: Role,
        /// Restrict a reader to resources (and events) of this namespace; repeatable.
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        /// Restrict a reader to resources (and events) of this cluster; repeatable.
        #[arg(long = "cluster")]
        clusters: Vec<String>,
    },
    /// Hash a token read from standard input (one line) for `rest.tokens`.
    Hash,
}

fn parse_role(text: &str) -> Result<Role, String> {
    match Role::parse(text) {
        Some(Role::Agent) => {
            Err("an agent token could do nothing on REST; use reader or admin".into())
        }
        Some(role) => Ok(role),
        None => Err(format!("unknown role {text:?}: use reader or admin")),
    }
}

/// Runs `infrawatch token`.
pub(super) fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::New {
            name,
            role,
            namespaces,
            clusters,
        } => {
            if !tokens::valid_name(&name) {
                bail!("--name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'");
            }
            if role == Role::Admin && !(namespaces.is_empty() && clusters.is_empty()) {
                bail!("--namespace and --cluster restrict readers only (an admin sees everything)");
            }
            let token = tokens::generate().map_err(|_| anyhow::anyhow!("no system randomness"))?;
            let hash =
                TokenHash::new(&token).map_err(|_| anyhow::anyhow!("no system randomness"))?;
            println!("token: {token}");
            println!();
            println!("# aggregator configuration (the token itself is not stored):");
            println!("[[rest.tokens]]");
            println!("name = {name:?}");
            println!("role = \"{role}\"");
            if !clusters.is_empty() {
                println!("clusters = {clusters:?}");
            }
            if !namespaces.is_empty() {
                println!("namespaces = {namespaces:?}");
            }
            println!("hash = \"{hash}\"");
            Ok(())
        }
        TokenCommand::Hash => {
            let mut input = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut input)
                .context("reading the token from standard input")?;
            let token = input.trim_end_matches(['\n', '\r']);
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("a token must be at least 16 visible ASCII characters (no spaces)");
            }
            let hash =
                TokenHash::new(token).map_err(|_| anyhow::anyhow!("no system randomness"))?;
            println!("{hash}");
            Ok(())
        }
    }
}
