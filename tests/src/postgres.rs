//! A PostgreSQL server of the test's own, on a free loopback port with its data in
//! the test's directory, for scenarios that stop or crash the database (the
//! machine's server is never touched). Uses the installed server binaries
//! (`/usr/lib/postgresql/<version>/bin`); as root, they run as the `postgres` user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::free_port;

/// A test-owned PostgreSQL server.
pub struct PgInstance {
    /// Client port on 127.0.0.1.
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
    running: bool,
}

fn server_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries (/usr/lib/postgresql) are not installed")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no pg_ctl under /usr/lib/postgresql")
}

/// Runs a server binary, as `postgres` when this process is root.
fn run(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let root = nix::unistd::Uid::effective().is_root();
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{} {args:?} failed: {text}", bin.display());
    }
    Ok(text)
}

impl PgInstance {
    /// Initialises a cluster under `dir/pg` and starts it.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = server_bin()?;
        let data = dir.join("pg");
        std::fs::create_dir_all(&data)?;
        if nix::unistd::Uid::effective().is_root() {
            // The server runs as `postgres`: it must reach and own its directory.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            let user = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
            nix::unistd::chown(&data, Some(user.uid), Some(user.gid))?;
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        let data_s = data.display().to_string();
        run(
            &bin.join("initdb"),
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let mut pg = Self {
            port: free_port(),
            data,
            bin,
            running: false,
        };
        pg.resume()?;
        Ok(pg)
    }

    /// Connection URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) server again.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let data = self.data.display().to_string();
        let log = self.data.join("server.log").display().to_string();
        let options = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server: `fast` disconnects clients and shuts down cleanly;
    /// `immediate` is a crash (recovery runs at the next start).
    pub fn stop(&mut self, mode: &str) -> anyhow::Result<()> {
        let data = self.data.display().to_string();
        run(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", mode, "-w", "stop"],
        )?;
        self.running = false;
        Ok(())
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop("immediate");
        }
    }
}
