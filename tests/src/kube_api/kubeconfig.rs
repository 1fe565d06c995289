//! The kubeconfig that points a client at the fake API server: one cluster,
//! user and context, the CA embedded and the bearer token inline.

use std::path::Path;

use base64::Engine;

/// Writes a kubeconfig for the server at `server` (an `https://` URL) trusting
/// `ca_pem` and sending `token`, its one cluster, user and context named
/// `context` and current.
pub(crate) fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
    context: &str,
) -> anyhow::Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    // JSON strings are valid YAML double-quoted scalars.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let (server, ca, token, name) = (q(server), q(&ca), q(token), q(context));
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {name}
  user:
    token: {token}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
current-context: {name}
"
    );
    std::fs::write(path, text)?;
    Ok(())
}
