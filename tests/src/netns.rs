//! Privileged fixtures of the end-to-end tests, each undone on drop, also when the
//! test panics. They need root (CI runs as root) and shell out to `ip`, `nft` and
//! `mount`, as an operator would.
//!
//! - [`Netns`]: two network namespaces of the test's own joined by a veth pair, one
//!   for the thing under test (an agent) and one for the far end of its link (a
//!   gateway the agent dials, or a ping target). The test can take the link down,
//!   load nftables tables in the namespaces (for loss), start an agent inside
//!   and reach services across with proxies ([`Netns::proxy_to_root`]).
//! - [`Tmpfs`]: a size-limited tmpfs mounted over a directory, for a disk that
//!   really fills up.
//!
//! # Test traffic never leaves the machine
//!
//! Both ends of every pair live in namespaces made by the test, and neither
//! namespace has a default route or any interface but loopback and its end of
//! the pair. The root namespace holds no address and no route of the test's
//! range (198.18.0.0/15, set aside for network tests by RFC 2544). So when a link
//! goes down, an address goes away or a namespace is deleted, a packet to a test
//! address has nowhere to go: the sender gets "network unreachable" or the packet
//! dies with the link. It cannot fall back to the machine's default route, as it
//! did when the near end sat in the root namespace (its connected route vanished
//! with the link, and the packets followed the default route out of the machine).
//!
//! This design was chosen over `blackhole` routes in the root namespace because
//! a route has to outlive everything that might send to the test range, and the
//! kernel keeps retransmitting on a closed TCP socket (FIN, RST) for minutes
//! after the fixture and even the test process are gone: a route removed with
//! the fixture is too early, and one left behind changes the machine. A namespace
//! takes its sockets with it. What crosses between the root namespace and a test
//! namespace goes through a userspace proxy whose sockets are created inside the
//! namespace ([`in_namespace`]), never through routing.
//!
//! Every pair runs under a [`LeakGuard`]: nftables counters that count, and drop,
//! any packet of the test's addresses in the root namespace and any packet leaving
//! a test namespace through something other than loopback and the pair. Dropping
//! the fixture prints the counts (straight to stderr, so they show in CI output)
//! and fails the test when one is not zero.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

use crate::proxy::TcpProxy;
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

/// Runs `args` inside namespace `ns`, or in the root namespace for `None`.
fn run_in(ns: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
    run_in_with_input(ns, args, None)
}

fn run_in_with_input(
    ns: Option<&str>,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
    match ns {
        Some(ns) => {
            let mut all = vec!["ip", "netns", "exec", ns];
            all.extend_from_slice(args);
            run_with_input(&all, input)
        }
        None => run_with_input(args, input),
    }
}

/// Runs `f` on a thread of its own that has joined network namespace `ns` (made
/// with `ip netns add`), and returns what it returns. Sockets `f` creates belong
/// to `ns` for their whole life, wherever they are used afterwards; the calling
/// thread stays where it is.
pub fn in_namespace<T: Send>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> anyhow::Result<T> {
    let path = Path::new("/run/netns").join(ns);
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<T> {
                let handle = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("joining network namespace {ns}"))?;
                Ok(f()?)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in namespace {ns} panicked"))?
    })
}

/// Loads nftables table `table` (`<family> <name>`) with `body` (its chains) in
/// namespace `ns` (`None`: the root one), replacing one of that name.
fn load_nft_table(ns: Option<&str>, table: &str, body: &str) -> anyhow::Result<()> {
    // "table" creates it if missing, so the delete cannot fail; the file is
    // applied as one transaction.
    let script = format!("table {table}\ndelete table {table}\ntable {table} {{\n{body}\n}}\n");
    run_in_with_input(ns, &["nft", "-f", "-"], Some(&script)).map(drop)
}

/// Packets counted by the `counter` statements of `table` in namespace `ns` so
/// far.
fn nft_counted_packets(ns: Option<&str>, table: &str) -> anyhow::Result<u64> {
    let mut args = vec!["nft", "list", "table"];
    args.extend(table.split_whitespace());
    let listing = run_in(ns, &args)?;
    // "... counter packets 12 bytes 3456 drop"
    Ok(listing
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

fn delete_nft_table(ns: Option<&str>, table: &str) -> anyhow::Result<()> {
    let mut args = vec!["nft", "delete", "table"];
    args.extend(table.split_whitespace());
    run_in(ns, &args).map(drop)
}

/// Pairs made by this process so far (names and address blocks stay unique when
/// tests run in parallel).
static CREATED: AtomicU32 = AtomicU32::new(0);

/// The test range, 198.18.0.0/15 (RFC 2544: set aside for testing network
/// devices, never routed on the Internet), cut into /30 blocks, one per pair.
const RANGE_START: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const BLOCKS: u32 = 1 << 15;

/// Name of the pair's interface, the same in both namespaces.
pub const LINK_IF: &str = "iwlink";

/// Which namespace of a [`Netns`] pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Where the thing under test runs.
    Inner,
    /// The far end of its link.
    Peer,
}

/// Two network namespaces joined by a veth pair ([`LINK_IF`] in each):
/// `inner_addr` in namespace `name`, where the test puts what it tests, and
/// `peer_addr` in namespace `peer`, the far end of the link. Neither has a default
/// route (see the module doc). Deleted on drop, with every nftables table loaded
/// in them, after the [`LeakGuard`] has been read.
pub struct Netns {
    /// The inner namespace (`ip netns exec <name> ...`).
    pub name: String,
    /// The peer namespace.
    pub peer: String,
    /// Address of the inner end.
    pub inner_addr: Ipv4Addr,
    /// Address of the peer end.
    pub peer_addr: Ipv4Addr,
    /// nftables tables loaded with [`Netns::nft_table`] (`<family> <name>`).
    tables: Mutex<Vec<(Side, String)>>,
    /// Counts what would leave; `None` only while the pair is being built.
    guard: Option<LeakGuard>,
}

impl Netns {
    /// Creates both namespaces and the pair, both ends up, loopback up in both,
    /// and installs the leak guard.
    pub fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:05}{:02}", pid % 100_000, n % 100);
        let (block, peer_addr, inner_addr) = free_block(pid, n)?;
        let mut ns = Self {
            name: format!("iw{id}a"),
            peer: format!("iw{id}p"),
            inner_addr,
            peer_addr,
            tables: Mutex::new(Vec::new()),
            guard: None,
        };
        // Leftovers of an earlier process with the same id, if any.
        ns.remove();
        // From here on a failure drops `ns`, which removes what was made.
        run(&["ip", "netns", "add", &ns.name])?;
        run(&["ip", "netns", "add", &ns.peer])?;
        // Both ends are created inside their namespaces: no moment in the root
        // namespace.
        run(&[
            "ip", "link", "add", LINK_IF, "netns", &ns.name, "type", "veth", "peer", "name",
            LINK_IF, "netns", &ns.peer,
        ])?;
        for (side, addr) in [(Side::Inner, inner_addr), (Side::Peer, peer_addr)] {
            ns.exec_in(
                side,
                &["ip", "addr", "add", &format!("{addr}/30"), "dev", LINK_IF],
            )?;
            ns.exec_in(side, &["ip", "link", "set", LINK_IF, "up"])?;
            ns.exec_in(side, &["ip", "link", "set", "lo", "up"])?;
        }
        ns.guard = Some(LeakGuard::install(&id, &block, [&ns.name, &ns.peer])?);
        Ok(ns)
    }

    /// The name of namespace `side`.
    pub fn namespace(&self, side: Side) -> &str {
        match side {
            Side::Inner => &self.name,
            Side::Peer => &self.peer,
        }
    }

    /// Runs `args` inside the inner namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        self.exec_in(Side::Inner, args)
    }

    /// Runs `args` inside namespace `side`.
    pub fn exec_in(&self, side: Side, args: &[&str]) -> anyhow::Result<()> {
        run_in(Some(self.namespace(side)), args).map(drop)
    }

    /// Takes the peer's end of the pair down, as a cable pulled at the switch
    /// (the inner end loses its carrier), or brings it back up.
    pub fn set_link(&self, up: bool) -> anyhow::Result<()> {
        self.exec_in(
            Side::Peer,
            &["ip", "link", "set", LINK_IF, if up { "up" } else { "down" }],
        )
    }

    /// Loads nftables table `table` (`<family> <name>`, e.g. `inet iwloss`) with
    /// `body` (its chains) inside namespace `side`, replacing one of that name.
    pub fn nft_table(&self, side: Side, table: &str, body: &str) -> anyhow::Result<()> {
        load_nft_table(Some(self.namespace(side)), table, body)?;
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let entry = (side, table.to_string());
        if !tables.contains(&entry) {
            tables.push(entry);
        }
        Ok(())
    }

    /// Packets counted by the `counter` statements of table `table` in namespace
    /// `side` so far.
    pub fn nft_counted_packets(&self, side: Side, table: &str) -> anyhow::Result<u64> {
        nft_counted_packets(Some(self.namespace(side)), table)
    }

    /// Deletes a table loaded with [`Netns::nft_table`].
    pub fn delete_nft_table(&self, side: Side, table: &str) -> anyhow::Result<()> {
        delete_nft_table(Some(self.namespace(side)), table)?;
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, t)| (*s, t.as_str()) != (side, table));
        Ok(())
    }

    /// Drops `percent` % of the packets between the two ends, each way, at random
    /// (nftables `numgen random`, table `inet iwloss` inside the inner namespace;
    /// this kernel has no netem). [`Netns::lost_packets`] counts what it dropped,
    /// [`Netns::clear_loss`] ends it.
    pub fn random_loss(&self, percent: u32) -> anyhow::Result<()> {
        let peer = self.peer_addr;
        self.nft_table(
            Side::Inner,
            "inet iwloss",
            &format!(
                "chain out {{ type filter hook output priority 0; policy accept; \
                 ip daddr {peer} numgen random mod 100 < {percent} counter drop; }}\n\
                 chain in {{ type filter hook input priority 0; policy accept; \
                 ip saddr {peer} numgen random mod 100 < {percent} counter drop; }}"
            ),
        )
    }

    /// Packets [`Netns::random_loss`] dropped so far, both ways.
    pub fn lost_packets(&self) -> anyhow::Result<u64> {
        self.nft_counted_packets(Side::Inner, "inet iwloss")
    }

    /// Ends [`Netns::random_loss`].
    pub fn clear_loss(&self) -> anyhow::Result<()> {
        self.delete_nft_table(Side::Inner, "inet iwloss")
    }

    /// A proxy listening inside namespace `side` on `ip` (a free port), forwarding
    /// to `target` in the root namespace: how something in a namespace reaches a
    /// service of the test (an aggregator on loopback) without a route.
    pub fn proxy_to_root(
        &self,
        side: Side,
        ip: IpAddr,
        target: SocketAddr,
    ) -> anyhow::Result<TcpProxy> {
        TcpProxy::start_in(
            Some(self.namespace(side)),
            SocketAddr::new(ip, 0),
            None,
            target,
        )
    }

    /// Starts an agent inside the inner namespace (`ip netns exec`), configured
    /// as [`Agent::start_with`] does. Its `/metrics` listens on the namespace's
    /// loopback; [`Agent::metrics`] is a root-namespace proxy to it, which answers
    /// whatever the link does.
    pub fn start_agent(
        &self,
        dir: &Path,
        pki: &Pki,
        name: &str,
        endpoints: &[String],
        interval_ms: u64,
        extra: &str,
    ) -> anyhow::Result<Agent> {
        // The namespace has ports of its own: any number is free there.
        let inside = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = Agent::write_config(dir, pki, name, endpoints, interval_ms, extra, inside)?;
        let metrics = TcpProxy::start_in(
            None,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(&self.name),
            inside,
        )?;
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
        Ok(Agent {
            process,
            metrics: metrics.addr,
            _metrics_proxy: Some(metrics),
        })
    }

    fn remove(&self) {
        // Best effort: either may already be gone; the pair goes with them.
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "netns", "del", &self.peer]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Read before anything is deleted: the namespaces' counters go with them.
        let leaks = self.guard.as_ref().map(LeakGuard::read);
        let tables = std::mem::take(&mut *self.tables.lock().unwrap_or_else(|p| p.into_inner()));
        for (side, t) in tables {
            let _ = delete_nft_table(Some(self.namespace(side)), &t);
        }
        self.remove();
        if let (Some(guard), Some(leaks)) = (self.guard.take(), leaks) {
            guard.remove();
            guard.report(leaks);
        }
    }
}

/// The first /30 of the test range at or after the one derived from `pid` and
/// `n` whose addresses nothing in the root namespace uses: (the block, its `.1`,
/// its `.2`).
fn free_block(pid: u32, n: u32) -> anyhow::Result<(String, Ipv4Addr, Ipv4Addr)> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("listing addresses")?;
    let in_use = String::from_utf8_lossy(&out.stdout).to_string();
    let first = (pid % (BLOCKS / 4)) * 4 + n % 4;
    for i in 0..BLOCKS {
        let block = (first + i) % BLOCKS;
        let base = u32::from(RANGE_START) + block * 4;
        let taken = (0..4).any(|k| in_use.contains(&format!("inet {}/", Ipv4Addr::from(base + k))));
        if !taken {
            return Ok((
                format!("{}/30", Ipv4Addr::from(base)),
                Ipv4Addr::from(base + 1),
                Ipv4Addr::from(base + 2),
            ));
        }
    }
    bail!("no free /30 left in {RANGE_START}/15")
}

/// nftables counters that catch a test packet on its way out of the machine,
/// and drop it.
///
/// - In the root namespace, table `inet iwguard<id>`: every packet to or from the
///   pair's /30, at the postrouting hook, which sees what the machine sends
///   (after the output hook's routing decision) and what it forwards. The root
///   namespace has no address or route of the test range, so any such packet
///   would follow the default route off the machine.
/// - In each namespace of the pair, table `inet iwguard`: every packet leaving
///   through anything but loopback and the pair.
///
/// The test fails (when the fixture is dropped) if any count is not zero.
struct LeakGuard {
    /// The pair's addresses, `a.b.c.d/30`.
    block: String,
    /// The root-namespace table, `inet iwguard<id>`.
    root_table: String,
    /// The pair's namespaces, each with [`NS_GUARD_TABLE`].
    namespaces: [String; 2],
}

/// The guard's table inside each namespace of a pair.
const NS_GUARD_TABLE: &str = "inet iwguard";

/// What a [`LeakGuard`] counted: packets of the test's addresses in the root
/// namespace, and packets that left a test namespace other than by its link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Leaks {
    root: u64,
    namespaces: u64,
}

impl LeakGuard {
    fn install(id: &str, block: &str, namespaces: [&str; 2]) -> anyhow::Result<Self> {
        let guard = Self {
            block: block.to_string(),
            root_table: format!("inet iwguard{id}"),
            namespaces: namespaces.map(str::to_string),
        };
        load_nft_table(
            None,
            &guard.root_table,
            &format!(
                "chain leak {{ type filter hook postrouting priority 0; policy accept; \
                 ip daddr {block} counter drop; ip saddr {block} counter drop; }}"
            ),
        )?;
        for ns in &guard.namespaces {
            // The namespace is new: nothing but the pair and loopback, no default
            // route. Checked, so that a change to the fixture cannot quietly give
            // it one.
            let routes = run_in(Some(ns), &["ip", "-4", "route", "show", "default"])?;
            if !routes.trim().is_empty() {
                bail!("namespace {ns} has a default route: {routes}");
            }
            load_nft_table(
                Some(ns),
                NS_GUARD_TABLE,
                &format!(
                    "chain leak {{ type filter hook postrouting priority 0; policy accept; \
                     oifname != {{ \"lo\", \"{LINK_IF}\" }} counter drop; }}"
                ),
            )?;
        }
        Ok(guard)
    }

    /// The counts so far.
    fn read(&self) -> anyhow::Result<Leaks> {
        let mut leaks = Leaks {
            root: nft_counted_packets(None, &self.root_table)?,
            namespaces: 0,
        };
        for ns in &self.namespaces {
            leaks.namespaces += nft_counted_packets(Some(ns), NS_GUARD_TABLE)?;
        }
        Ok(leaks)
    }

    fn remove(&self) {
        let _ = delete_nft_table(None, &self.root_table);
    }

    /// Prints the counts to the test's output (past the test harness's capture,
    /// so they show for passing tests too), and fails the test if anything
    /// leaked or the counters could not be read.
    fn report(&self, leaks: anyhow::Result<Leaks>) {
        let [inner, peer] = &self.namespaces;
        let line = match &leaks {
            Ok(l) => format!(
                "leak guard {} ({inner}, {peer}): {} packets of the test's addresses in the root \
                 namespace, {} leaving a test namespace other than by its link\n",
                self.block, l.root, l.namespaces
            ),
            Err(e) => format!(
                "leak guard {}: the counters could not be read: {e:#}\n",
                self.block
            ),
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
        if std::thread::panicking() {
            return;
        }
        match leaks {
            Ok(l) if l == Leaks::default() => {}
            Ok(l) => panic!(
                "test packets would have left the machine (the guard dropped them): {} in the root \
                 namespace, {} through an interface other than the test's link",
                l.root, l.namespaces
            ),
            Err(e) => panic!("the leak guard's counters could not be read: {e:#}"),
        }
    }
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
