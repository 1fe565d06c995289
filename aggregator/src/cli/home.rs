//! `$INFRAWATCH_HOME`: where `infrawatch up` keeps certificates, configuration,
//! data and logs, and the `instance.toml` that tells the CLI where it listens.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The home directory and its layout.
#[derive(Debug, Clone)]
pub struct Home {
    /// The directory.
    pub dir: PathBuf,
}

/// What a running `up` instance publishes for the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// gRPC endpoint, `https://host:port`.
    pub grpc_endpoint: String,
    /// REST base URL, `http://host:port`.
    pub rest_url: String,
    /// Name in the server certificate.
    pub server_name: String,
    /// CA certificate.
    pub ca: PathBuf,
    /// CLI client certificate.
    pub cert: PathBuf,
    /// CLI client key.
    pub key: PathBuf,
}

impl Home {
    /// `$INFRAWATCH_HOME`, else the per-user data directory (`~/.local/share/infrawatch`).
    pub fn resolve() -> anyhow::Result<Self> {
        if let Some(dir) = std::env::var_os("INFRAWATCH_HOME").filter(|d| !d.is_empty()) {
            return Ok(Self {
                dir: PathBuf::from(dir),
            });
        }
        let base = dirs::data_dir().context(
            "no per-user data directory (is HOME set?); set INFRAWATCH_HOME to a directory",
        )?;
        Ok(Self {
            dir: base.join("infrawatch"),
        })
    }

    /// Development certificates.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }
    /// The SQLite database and agent state.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    /// Logs of the processes `up` starts.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// Generated aggregator configuration.
    pub fn aggregator_config(&self) -> PathBuf {
        self.dir.join("aggregator.toml")
    }
    /// Generated agent configuration.
    pub fn agent_config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }
    fn instance_file(&self) -> PathBuf {
        self.dir.join("instance.toml")
    }

    /// Reads the instance file.
    pub fn instance(&self) -> anyhow::Result<Instance> {
        let path = self.instance_file();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no aggregator address given and no local instance at {}; run `infrawatch up` or pass --endpoint",
                path.display()
            )
        })?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid instance file", path.display()))
    }

    /// Writes the instance file.
    pub fn write_instance(&self, instance: &Instance) -> anyhow::Result<()> {
        write(&self.instance_file(), &toml::to_string(instance)?)
    }
}

/// Writes a file, creating its directory.
pub(super) fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}
