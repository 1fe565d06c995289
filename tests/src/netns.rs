//! Privileged fixtures of the end-to-end tests, each undone on drop, also when the
//! test panics. They need root (CI runs as root) and shell out to `ip`, `nft` and
//! `mount`, as an operator would.
//!
//! - [`Netns`]: a network namespace of the test's own, joined to the root
//!   namespace by a veth pair on a private /30 of its own (chosen from the process
//!   id and a counter, skipping any subnet already configured on the machine). The
//!   test can take the link down, load nftables tables inside the namespace (they
//!   are deleted with it) and start an agent inside it (`ip netns exec`). Traffic
//!   only ever goes between the two ends of the pair.
//! - [`Tmpfs`]: a size-limited tmpfs mounted over a directory, for a disk that
//!   really fills up.
//!
//! The ICMP test (`tests/it/icmp.rs`) keeps its own older copy of the namespace
//! set-up.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

use crate::{Agent, Pki, Process, binary, free_port, unique};

/// True when this process may create namespaces, veth pairs and mounts.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `args` (program first); fails with its stderr when it exits non-zero.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    run_with_input(args, None).map(drop)
}

/// Runs `args` with `input` on stdin, if any; returns its stdout.
fn run_with_input(args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let (program, rest) = args.split_first().context("an empty command")?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {args:?}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Namespaces made by this process so far (names and subnets stay unique when
/// tests run in parallel).
static CREATED: AtomicU32 = AtomicU32::new(0);

/// The /30 blocks of 10.214.0.0/16 this module chooses from.
const BLOCKS: u32 = 1 << 14;

/// A network namespace joined to the root namespace by a veth pair:
/// `host_addr` on `host_if` in the root namespace, `inner_addr` on `inner_if`
/// inside. Deleted on drop, with the pair and every table loaded with
/// [`Netns::nft_table`].
pub struct Netns {
    /// The namespace (`ip netns exec <name> ...`).
    pub name: String,
    /// The root-namespace end of the pair.
    pub host_if: String,
    /// The end inside the namespace.
    pub inner_if: String,
    /// Address of `host_if` (the namespace reaches the root namespace here).
    pub host_addr: Ipv4Addr,
    /// Address of `inner_if`.
    pub inner_addr: Ipv4Addr,
    /// nftables tables loaded inside (`<family> <name>`), deleted on drop before
    /// the namespace itself (which would take them along anyway).
    tables: Mutex<Vec<String>>,
}

impl Netns {
    /// Creates the namespace and the pair, both ends up, loopback up inside.
    pub fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes: "iwv" + 7 digits + 1.
        let id = format!("{:05}{:02}", pid % 100_000, n % 100);
        let (host_addr, inner_addr) = free_block(pid, n)?;
        let ns = Self {
            name: format!("iwnet{id}"),
            host_if: format!("iwv{id}h"),
            inner_if: format!("iwv{id}n"),
            host_addr,
            inner_addr,
            tables: Mutex::new(Vec::new()),
        };
        // Leftovers of an earlier process with the same id, if any.
        ns.remove();
        // From here on a failure drops `ns`, which removes what was made.
        run(&["ip", "netns", "add", &ns.name])?;
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_if,
        ])?;
        run(&["ip", "link", "set", &ns.inner_if, "netns", &ns.name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &ns.host_if,
        ])?;
        run(&["ip", "link", "set", &ns.host_if, "up"])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{inner_addr}/30"),
            "dev",
            &ns.inner_if,
        ])?;
        ns.exec(&["ip", "link", "set", &ns.inner_if, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Takes the root-namespace end of the pair down (`ip link set ... down`) or
    /// brings it back up.
    pub fn set_link(&self, up: bool) -> anyhow::Result<()> {
        run(&[
            "ip",
            "link",
            "set",
            &self.host_if,
            if up { "up" } else { "down" },
        ])
    }

    /// Loads nftables table `table` (`<family> <name>`, e.g. `inet iwloss`) with
    /// `body` (its chains) inside the namespace, replacing one of that name.
    pub fn nft_table(&self, table: &str, body: &str) -> anyhow::Result<()> {
        // "table" creates it if missing, so the delete cannot fail; the file is
        // applied as one transaction.
        let script = format!("table {table}\ndelete table {table}\ntable {table} {{\n{body}\n}}\n");
        run_with_input(
            &["ip", "netns", "exec", &self.name, "nft", "-f", "-"],
            Some(&script),
        )?;
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if !tables.iter().any(|t| t == table) {
            tables.push(table.to_string());
        }
        Ok(())
    }

    /// Packets counted by the `counter` statements of `table` so far.
    pub fn nft_counted_packets(&self, table: &str) -> anyhow::Result<u64> {
        let mut args = vec!["ip", "netns", "exec", &self.name, "nft", "list", "table"];
        args.extend(table.split_whitespace());
        let listing = run_with_input(&args, None)?;
        // "... counter packets 12 bytes 3456 drop"
        Ok(listing
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// Deletes a table loaded with [`Netns::nft_table`].
    pub fn delete_nft_table(&self, table: &str) -> anyhow::Result<()> {
        let mut args = vec!["nft", "delete", "table"];
        args.extend(table.split_whitespace());
        self.exec(&args)?;
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t| t != table);
        Ok(())
    }

    /// Drops `percent` % of the packets between the two ends, each way, at random
    /// (nftables `numgen random`, table `inet iwloss` inside the namespace; this
    /// kernel has no netem). [`Netns::lost_packets`] counts what it dropped,
    /// [`Netns::clear_loss`] ends it.
    pub fn random_loss(&self, percent: u32) -> anyhow::Result<()> {
        let host = self.host_addr;
        self.nft_table(
            "inet iwloss",
            &format!(
                "chain out {{ type filter hook output priority 0; policy accept; \
                 ip daddr {host} numgen random mod 100 < {percent} counter drop; }}\n\
                 chain in {{ type filter hook input priority 0; policy accept; \
                 ip saddr {host} numgen random mod 100 < {percent} counter drop; }}"
            ),
        )
    }

    /// Packets [`Netns::random_loss`] dropped so far, both ways.
    pub fn lost_packets(&self) -> anyhow::Result<u64> {
        self.nft_counted_packets("inet iwloss")
    }

    /// Ends [`Netns::random_loss`].
    pub fn clear_loss(&self) -> anyhow::Result<()> {
        self.delete_nft_table("inet iwloss")
    }

    /// Starts an agent inside the namespace (`ip netns exec`), configured as
    /// [`Agent::start_with`] does, with its `/metrics` on the namespace's address
    /// so the test reaches it over the pair (not while the link is down).
    pub fn start_agent(
        &self,
        dir: &Path,
        pki: &Pki,
        name: &str,
        endpoints: &[String],
        interval_ms: u64,
        extra: &str,
    ) -> anyhow::Result<Agent> {
        let metrics = SocketAddr::new(IpAddr::V4(self.inner_addr), free_port());
        let config = Agent::write_config(dir, pki, name, endpoints, interval_ms, extra, metrics)?;
        let log = dir.join(format!("agent-{name}-{}.log", unique()));
        let agent = binary("infrawatch-agent");
        // `ip netns exec` execs the program, so the process (and its signals) is
        // the agent's own.
        let process = Process::spawn(
            Path::new("ip"),
            &[
                "netns",
                "exec",
                &self.name,
                &agent.display().to_string(),
                "--config",
                &config.display().to_string(),
            ],
            log,
        )?;
        Ok(Agent { process, metrics })
    }

    fn remove(&self) {
        // Best effort: either may already be gone. Deleting the host end deletes
        // its peer too.
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let tables = std::mem::take(&mut *self.tables.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tables {
            let mut args = vec!["nft", "delete", "table"];
            args.extend(t.split_whitespace());
            let _ = self.exec(&args);
        }
        self.remove();
    }
}

/// The first /30 of 10.214.0.0/16 at or after the one derived from `pid` and `n`
/// whose addresses nothing on the machine uses: (`.1`, `.2`) of it.
fn free_block(pid: u32, n: u32) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("listing addresses")?;
    let in_use = String::from_utf8_lossy(&out.stdout).to_string();
    let first = (pid % (BLOCKS / 4)) * 4 + n % 4;
    for i in 0..BLOCKS {
        let block = (first + i) % BLOCKS;
        let base = u32::from(Ipv4Addr::new(10, 214, 0, 0)) + block * 4;
        let taken = (0..4).any(|k| in_use.contains(&format!("inet {}/", Ipv4Addr::from(base + k))));
        if !taken {
            return Ok((Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)));
        }
    }
    bail!("no free /30 left in 10.214.0.0/16")
}

/// A tmpfs of a fixed size mounted over a directory; unmounted on drop (lazily if
/// something still holds it).
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel) over `path`,
    /// creating the directory if needed.
    pub fn mount(path: &Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let target = path.display().to_string();
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={bytes},mode=0700"),
            "tmpfs",
            &target,
        ])?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Bytes still free for an unprivileged writer (`statvfs`).
    pub fn available(&self) -> anyhow::Result<u64> {
        let s = nix::sys::statvfs::statvfs(&self.path)?;
        Ok(s.blocks_available() * s.fragment_size())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = self.path.display().to_string();
        if run(&["umount", &target]).is_err() {
            let _ = run(&["umount", "--lazy", &target]);
        }
    }
}
