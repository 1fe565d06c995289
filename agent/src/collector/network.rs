//! Network interfaces and the TCP/UDP stack.
//!
//! - Per interface, a part of the host (`host/<id>/interface/<name>`, kind
//!   `network_interface`, whose attributes hold its administrative and
//!   operational state; inventory and state, speed, MTU, carrier changes and
//!   transmit queue length from sysfs, counters from `/proc/net/dev`): every
//!   counter of `/proc/net/dev` as it stands (bytes, packets, errors, drops,
//!   FIFO and frame errors, compressed, multicast, collisions, carrier errors),
//!   bytes, packets, errors and drops per second, link state, speed, MTU, and
//!   utilization of the link speed where the kernel knows it.
//! - The stack (`/proc/net/{snmp,netstat,snmp6}`, the one collector that reads
//!   them): retransmits and resets per second, established connections, UDP
//!   errors per second, listen queue overflows and drops per second
//!   (`system.network.tcp.listen_{overflows,drops}.rate`), and node_exporter's
//!   default subset of the three files as they stand,
//!   `system.linux.netstat{field="<Protocol>_<Field>"}` (e.g. `Tcp_ActiveOpens`,
//!   `TcpExt_ListenDrops`, `Ip6_InOctets`; see [`is_reported_netstat_field`]).
//!   TIME-WAIT connections come from `/proc/net/sockstat`, which the kernel
//!   collector reads when it runs ([`NetworkCollector::with_sockstat`]).
//! - Packet processing per CPU (`/proc/net/softnet_stat`):
//!   `system.linux.softnet{cpu, field}`, `field` one of `processed`,
//!   `dropped` (backlog full) and `times_squeezed` (budget or time ran out
//!   with work left); cumulative.
//! - Listening sockets (`/proc/net/{tcp,tcp6,udp,udp6}`): an inventory resource
//!   `host/<id>/listening` whose attributes list the listening ports, so a port that
//!   starts or stops listening is a change with its own resource version.
//!
//! Procfs network files are read from `<proc>/1/net` when present (the host's
//! namespace, for an agent in a pod with the host's /proc), else `<proc>/net`.
//! Files read on every run stay open ([`super::proc_file`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infrawatch_common::resource::{MAX_LABEL_VALUE_LEN, kind};
use infrawatch_common::time::now_unix_ms;

use super::filter::NameFilter;
use super::kernel::ListenCounters;
use super::proc_file::{ProcFile, ProcFiles};
use super::{CollectError, Collection, Collector, ObservedResource};

/// How often the listening-socket inventory is taken by default.
pub const LISTENING_INTERVAL_MS: u64 = 30_000;

/// Interfaces left out unless the configuration says otherwise.
pub const DEFAULT_EXCLUDE: [&str; 5] = ["lo", "veth*", "cali*", "lxc*", "cilium_*"];

/// Cumulative counters of one interface in `/proc/net/dev`, in its column
/// order: receive bytes, packets, errs, drop, fifo, frame, compressed,
/// multicast; transmit bytes, packets, errs, drop, fifo, colls, carrier,
/// compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetDevCounters {
    /// The eight receive columns.
    pub receive: [u64; 8],
    /// The eight transmit columns.
    pub transmit: [u64; 8],
}

/// The counters of `/proc/net/dev` reported per interface, as (metric,
/// receive column, transmit column); a counter the kernel keeps for one
/// direction only has `None` for the other.
const DEV_COUNTERS: [(&str, Option<usize>, Option<usize>); 10] = [
    ("system.network.io", Some(0), Some(0)),
    ("system.network.packets", Some(1), Some(1)),
    ("system.network.errors", Some(2), Some(2)),
    ("system.network.dropped", Some(3), Some(3)),
    ("system.network.fifo_errors", Some(4), Some(4)),
    ("system.network.frame_errors", Some(5), None),
    ("system.network.compressed", Some(6), Some(7)),
    ("system.network.multicast", Some(7), None),
    ("system.network.collisions", None, Some(5)),
    ("system.network.carrier_errors", None, Some(6)),
];

/// The counters whose rates are reported, as (rate metric, column in each
/// direction): bytes, packets, errors, drops.
const DEV_RATES: [(&str, usize); 4] = [
    ("system.network.io.rate", 0),
    ("system.network.packets.rate", 1),
    ("system.network.errors.rate", 2),
    ("system.network.dropped.rate", 3),
];

/// Parses `/proc/net/dev` into counters per interface.
pub fn parse_net_dev(text: &str) -> HashMap<String, NetDevCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let mut c = NetDevCounters::default();
            let mut fields = rest.split_whitespace();
            for slot in c.receive.iter_mut().chain(c.transmit.iter_mut()) {
                *slot = fields.next()?.parse().ok()?;
            }
            Some((name.trim().to_string(), c))
        })
        .collect()
}

/// Calls `f(protocol, field, value)` for each figure of a file of header and
/// value line pairs (`/proc/net/snmp`, `/proc/net/netstat`).
pub fn for_each_snmp_field<'a>(text: &'a str, mut f: impl FnMut(&'a str, &'a str, i64)) {
    let mut lines = text.lines();
    while let (Some(head), Some(values)) = (lines.next(), lines.next()) {
        let (Some((proto, names)), Some((_, nums))) =
            (head.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (k, v) in names.split_whitespace().zip(nums.split_whitespace()) {
            if let Ok(v) = v.parse() {
                f(proto, k, v);
            }
        }
    }
}

/// Calls `f(protocol, field, value)` for each line of `/proc/net/snmp6`
/// (`Ip6InOctets 128`: the protocol is the name up to its first `6`, as
/// node_exporter splits it).
pub fn for_each_snmp6_field<'a>(text: &'a str, mut f: impl FnMut(&'a str, &'a str, i64)) {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(Ok(v))) = (parts.next(), parts.next().map(str::parse)) else {
            continue;
        };
        if let Some(six) = name.find('6') {
            f(&name[..=six], &name[six + 1..], v);
        }
    }
}

/// True for the figures of `/proc/net/{snmp,netstat,snmp6}` node_exporter's
/// netstat collector keeps by default, as `<protocol>_<field>`:
/// `^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$`.
pub fn is_reported_netstat_field(proto: &str, field: &str) -> bool {
    let errors = ["InErrors", "InErrs"].iter().any(|e| {
        field
            .strip_suffix(e)
            .is_some_and(|p| p.is_empty() || p.ends_with('_'))
    });
    errors
        || match proto {
            "Ip" => field == "Forwarding",
            "Ip6" | "IpExt" => matches!(field, "InOctets" | "OutOctets"),
            "Icmp" | "Icmp6" => matches!(field, "InMsgs" | "OutMsgs"),
            "TcpExt" => {
                field.starts_with("Listen")
                    || field.starts_with("Syncookies")
                    || matches!(
                        field,
                        "TCPSynRetrans" | "TCPTimeouts" | "TCPOFOQueue" | "TCPRcvQDrop"
                    )
            }
            "Tcp" => matches!(
                field,
                "ActiveOpens"
                    | "InSegs"
                    | "OutSegs"
                    | "OutRsts"
                    | "PassiveOpens"
                    | "RetransSegs"
                    | "CurrEstab"
            ),
            "Udp" | "Udp6" => matches!(
                field,
                "InDatagrams" | "OutDatagrams" | "NoPorts" | "RcvbufErrors" | "SndbufErrors"
            ),
            _ => false,
        }
}

/// One CPU's line of `/proc/net/softnet_stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftnetLine {
    /// The CPU (the 13th column where the kernel gives it, else the line's
    /// position: offline CPUs have no line).
    pub cpu: u32,
    /// Packets processed.
    pub processed: u64,
    /// Packets dropped because the backlog was full.
    pub dropped: u64,
    /// Times the receive loop ran out of budget or time with work left.
    pub times_squeezed: u64,
}

/// Parses `/proc/net/softnet_stat` (hexadecimal columns).
pub fn parse_softnet(text: &str) -> Result<Vec<SoftnetLine>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        let hex = |k: usize| -> Result<u64, String> {
            let v = f
                .get(k)
                .ok_or_else(|| format!("line {}: {} columns", i + 1, f.len()))?;
            u64::from_str_radix(v, 16).map_err(|_| format!("line {}: {v:?}", i + 1))
        };
        let cpu = match f.get(12) {
            Some(_) => u32::try_from(hex(12)?).map_err(|e| e.to_string())?,
            None => u32::try_from(i).map_err(|e| e.to_string())?,
        };
        out.push(SoftnetLine {
            cpu,
            processed: hex(0)?,
            dropped: hex(1)?,
            times_squeezed: hex(2)?,
        });
    }
    Ok(out)
}

/// Cumulative TCP/UDP counters of interest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackCounters {
    /// Tcp RetransSegs.
    pub retransmits: u64,
    /// Tcp OutRsts.
    pub resets_sent: u64,
    /// Tcp EstabResets.
    pub established_resets: u64,
    /// Tcp CurrEstab (a gauge).
    pub established: u64,
    /// Udp InErrors.
    pub udp_in_errors: u64,
    /// Udp RcvbufErrors.
    pub udp_rcvbuf_errors: u64,
}

/// Parses the header/value line pairs of `/proc/net/snmp`.
pub fn parse_snmp(text: &str) -> HashMap<String, HashMap<String, i64>> {
    let mut out: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for_each_snmp_field(text, |proto, k, v| {
        out.entry(proto.to_string())
            .or_default()
            .insert(k.to_string(), v);
    });
    out
}

/// The `/proc/net/snmp` figures behind [`StackCounters`], as (protocol, field).
const STACK_FIELDS: [(&str, &str); 6] = [
    ("Tcp", "RetransSegs"),
    ("Tcp", "OutRsts"),
    ("Tcp", "EstabResets"),
    ("Tcp", "CurrEstab"),
    ("Udp", "InErrors"),
    ("Udp", "RcvbufErrors"),
];

impl StackCounters {
    /// The counter for entry `i` of [`STACK_FIELDS`].
    fn slot(&mut self, i: usize) -> Option<&mut u64> {
        Some(match i {
            0 => &mut self.retransmits,
            1 => &mut self.resets_sent,
            2 => &mut self.established_resets,
            3 => &mut self.established,
            4 => &mut self.udp_in_errors,
            5 => &mut self.udp_rcvbuf_errors,
            _ => return None,
        })
    }
}

/// Extracts [`StackCounters`] from parsed snmp tables.
pub fn stack_counters(
    snmp: &HashMap<String, HashMap<String, i64>>,
) -> Result<StackCounters, String> {
    let mut c = StackCounters::default();
    for (i, (proto, key)) in STACK_FIELDS.iter().enumerate() {
        let v = snmp
            .get(*proto)
            .and_then(|t| t.get(*key))
            .ok_or_else(|| format!("{proto} {key} missing"))?;
        if let Some(slot) = c.slot(i) {
            *slot = u64::try_from(*v).unwrap_or(0);
        }
    }
    Ok(c)
}

/// Gathers [`StackCounters`] from a walk over `/proc/net/snmp`.
#[derive(Debug, Default)]
struct StackWalk {
    counters: StackCounters,
    found: [bool; 6],
}

impl StackWalk {
    /// Takes `proto` `field` if it is one of [`STACK_FIELDS`].
    fn observe(&mut self, proto: &str, field: &str, v: i64) {
        let Some(i) = STACK_FIELDS.iter().position(|f| *f == (proto, field)) else {
            return;
        };
        if let (Some(slot), Some(found)) = (self.counters.slot(i), self.found.get_mut(i)) {
            *slot = u64::try_from(v).unwrap_or(0);
            *found = true;
        }
    }

    /// The counters, or which is missing.
    fn finish(self) -> Result<StackCounters, String> {
        match self.found.iter().position(|f| !f) {
            Some(i) => {
                let (proto, key) = STACK_FIELDS.get(i).copied().unwrap_or_default();
                Err(format!("{proto} {key} missing"))
            }
            None => Ok(self.counters),
        }
    }
}

/// TIME-WAIT sockets from `/proc/net/sockstat`.
pub fn parse_time_wait(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    f.windows(2)
        .find(|w| w[0] == "tw")
        .and_then(|w| w[1].parse().ok())
}

/// Listening ports in a `/proc/net/{tcp,udp}[6]` table: TCP sockets in state LISTEN
/// (0A), UDP sockets bound with no peer (state 07). Callers drop UDP ports in the
/// ephemeral range, which are clients, not services.
pub fn parse_listening(text: &str, udp: bool) -> BTreeSet<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            let state = f.get(3)?;
            let listening = if udp {
                *state == "07" && f.get(2)?.ends_with(":0000")
            } else {
                *state == "0A"
            };
            if !listening {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

/// The comma-separated port list, cut to fit an attribute value.
fn port_list(ports: &BTreeSet<u16>) -> (String, bool) {
    let mut s = String::new();
    for p in ports {
        let next = if s.is_empty() {
            p.to_string()
        } else {
            format!(",{p}")
        };
        if s.len() + next.len() > MAX_LABEL_VALUE_LEN {
            return (s, true);
        }
        s.push_str(&next);
    }
    (s, false)
}

/// The previous run's counters, for rates.
struct Previous {
    at: Instant,
    interfaces: HashMap<String, NetDevCounters>,
    stack: Option<StackCounters>,
    listen: Option<ListenCounters>,
}

/// The procfs network files read on every run, each from the host's namespace
/// when it can be (see [`ProcFile::net`]).
struct NetFiles {
    /// `dev`: counters per interface.
    dev: ProcFile,
    /// `snmp`: IP, ICMP, TCP and UDP counters.
    snmp: ProcFile,
    /// `netstat`: extended TCP and IP counters.
    netstat: ProcFile,
    /// `snmp6`: IPv6 counters (absent when IPv6 is off).
    snmp6: ProcFile,
    /// `softnet_stat`: packet processing per CPU.
    softnet: ProcFile,
    /// `sockstat`, for the TIME-WAIT sockets, when no other collector reports
    /// from it.
    sockstat: Option<ProcFile>,
}

impl NetFiles {
    /// The files under procfs root `proc_root`, opened on their first read.
    fn new(proc_root: &Path) -> Self {
        let net = |name: &str| ProcFile::net(proc_root, name);
        Self {
            dev: net("dev"),
            snmp: net("snmp"),
            netstat: net("netstat"),
            snmp6: net("snmp6"),
            softnet: net("softnet_stat"),
            sockstat: Some(net("sockstat")),
        }
    }
}

/// The network collector: also the one collector that reads
/// `/proc/net/{snmp,netstat,snmp6}` (node_exporter's netstat subset as
/// `system.linux.netstat{field}`, and the listen queue rates).
pub struct NetworkCollector {
    host_id: String,
    proc_root: PathBuf,
    sys_root: PathBuf,
    filter: NameFilter,
    interval_ms: u32,
    files: NetFiles,
    /// Each interface's sysfs attributes.
    sys_files: ProcFiles,
    previous: Option<Previous>,
    /// How often the listening-socket inventory is taken: reading
    /// `/proc/net/tcp{,6}` walks the kernel's whole socket hash table (about 2 ms
    /// each here), far more than everything else this collector does.
    listening_every: Duration,
    listening_taken: Option<(Instant, ObservedResource)>,
}

impl NetworkCollector {
    /// Reports series on `host_id` and the listening-socket inventory.
    pub fn new(
        host_id: String,
        proc_root: PathBuf,
        sys_root: PathBuf,
        filter: NameFilter,
        interval_ms: u32,
    ) -> Self {
        Self {
            files: NetFiles::new(&proc_root),
            host_id,
            proc_root,
            sys_root,
            filter,
            interval_ms,
            sys_files: ProcFiles::default(),
            previous: None,
            listening_every: Duration::from_millis(LISTENING_INTERVAL_MS),
            listening_taken: None,
        }
    }

    /// Takes the listening-socket inventory every `every` instead of the default.
    pub fn with_listening_interval(mut self, every: Duration) -> Self {
        self.listening_every = every;
        self
    }

    /// Whether to read `/proc/net/sockstat` for the TIME-WAIT connections: not
    /// when the kernel collector runs, which reports them from its own reading.
    pub fn with_sockstat(mut self, read: bool) -> Self {
        if !read {
            self.files.sockstat = None;
        }
        self
    }

    /// A network table read once (the listening sockets), from the host's
    /// namespace when it can be.
    fn net_file(&self, name: &str) -> Result<String, CollectError> {
        let host = self.proc_root.join("1/net").join(name);
        std::fs::read_to_string(&host).or_else(|_| {
            let own = self.proc_root.join("net").join(name);
            std::fs::read_to_string(&own).map_err(|source| CollectError::Read {
                path: own.display().to_string(),
                source,
            })
        })
    }

    /// Interface names, from `<sys>/class/net` (the interfaces of the network
    /// namespace the sysfs was mounted in: the agent's own under `/sys`). A
    /// directory listing costs four system calls, where pnet's inventory
    /// (`getifaddrs` over netlink, then an ioctl socket per interface) cost
    /// about fifteen. Interfaces are links (or directories); files such as
    /// `bonding_masters` are not interfaces.
    fn interfaces(&self) -> Vec<String> {
        let is_interface =
            |e: &std::fs::DirEntry| e.file_type().is_ok_and(|t| t.is_symlink() || t.is_dir());
        let mut names: Vec<String> = std::fs::read_dir(self.sys_root.join("class/net"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(is_interface)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.retain(|n| self.filter.allows(n));
        names.sort();
        names
    }

    /// Sysfs attribute `file` of interface `iface`, trimmed; `None` when it
    /// cannot be read.
    fn read_sys(&mut self, iface: &str, file: &str) -> Option<String> {
        let path = self.sys_root.join("class/net").join(iface).join(file);
        self.sys_files
            .get(&path)
            .read_ok()
            .map(|s| s.trim().to_string())
    }

    /// Describes interface `name` as a part of the host and reports its link
    /// state, MTU and speed; returns the part's id and the speed in bits/s.
    fn describe_interface(
        &mut self,
        name: &str,
        ts: i64,
        out: &mut Collection,
    ) -> (String, Option<f64>) {
        let dev = [("device", name)];
        let oper = self
            .read_sys(name, "operstate")
            .unwrap_or_else(|| "unknown".into());
        // IFF_UP: the administrator's choice; an interface set down is not
        // a failure.
        let admin_up = self
            .read_sys(name, "flags")
            .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .is_some_and(|f| f & 0x1 != 0);
        let up = oper == "up" || oper == "unknown";
        let attributes = BTreeMap::from([
            ("interface.name".to_string(), name.to_string()),
            (
                "interface.admin_state".to_string(),
                if admin_up { "up" } else { "down" }.to_string(),
            ),
            ("interface.oper_state".to_string(), oper),
        ]);
        let id = out.part(
            &self.host_id,
            kind::NETWORK_INTERFACE,
            name,
            attributes,
            self.interval_ms,
        );
        out.sample(
            &id,
            "system.network.link.up",
            &dev,
            ts,
            if up { 1.0 } else { 0.0 },
        );
        if let Some(mtu) = self
            .read_sys(name, "mtu")
            .and_then(|v| v.parse::<f64>().ok())
        {
            out.sample(&id, "system.network.mtu", &dev, ts, mtu);
        }
        // speed is in Mb/s; -1 or an error when unknown (virtual links, link down).
        let speed_bits = self
            .read_sys(name, "speed")
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|s| *s > 0)
            .map(|mbit| mbit as f64 * 1e6);
        if let Some(bits) = speed_bits {
            out.sample(&id, "system.network.link.speed", &dev, ts, bits);
        }
        for (file, metric, state) in [
            (
                "carrier_up_count",
                "system.network.carrier.changes",
                Some("up"),
            ),
            (
                "carrier_down_count",
                "system.network.carrier.changes",
                Some("down"),
            ),
            ("tx_queue_len", "system.network.transmit_queue.length", None),
        ] {
            let Some(v) = self
                .read_sys(name, file)
                .and_then(|v| v.parse::<f64>().ok())
            else {
                continue;
            };
            match state {
                Some(state) => out.sample(&id, metric, &[dev[0], ("state", state)], ts, v),
                None => out.sample(&id, metric, &dev, ts, v),
            }
        }
        (id, speed_bits)
    }

    /// Describes and reports each interface; returns the counters for the next
    /// run's rates.
    fn collect_interfaces(
        &mut self,
        now: Instant,
        ts: i64,
        out: &mut Collection,
    ) -> HashMap<String, NetDevCounters> {
        let mut current = HashMap::new();
        // One read of <proc>/net/dev gives every interface's counters (eight sysfs
        // files per interface cost about ten times more).
        let dev_table = self.files.dev.read().map(parse_net_dev).unwrap_or_default();
        for name in self.interfaces() {
            let (id, speed_bits) = self.describe_interface(&name, ts, out);
            let Some(counters) = dev_table.get(&name) else {
                continue;
            };
            record_dev_counters(&id, &name, counters, ts, out);
            if let Some(prev) = &self.previous
                && let Some(p) = prev.interfaces.get(&name)
            {
                let secs = now.duration_since(prev.at).as_secs_f64();
                record_dev_rates(&id, &name, counters, p, secs, speed_bits, ts, out);
            }
            current.insert(name, *counters);
        }
        self.sys_files.sweep();
        current
    }

    /// Reports node_exporter's subset of `/proc/net/{snmp,netstat,snmp6}` and
    /// returns the TCP/UDP and listen queue counters behind the rates.
    fn collect_stack(
        &mut self,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<(StackCounters, Option<ListenCounters>), CollectError> {
        let mut report = |proto: &str, field: &str, v: i64| {
            if is_reported_netstat_field(proto, field) {
                let name = format!("{proto}_{field}");
                out.sample(
                    id,
                    "system.linux.netstat",
                    &[("field", &name)],
                    ts,
                    v as f64,
                );
            }
        };
        let mut stack = StackWalk::default();
        for_each_snmp_field(self.files.snmp.read()?, |proto, field, v| {
            stack.observe(proto, field, v);
            report(proto, field, v);
        });
        let mut listen = (None, None);
        if let Some(text) = self.files.netstat.read_optional()? {
            for_each_snmp_field(text, |proto, field, v| {
                match (proto, field) {
                    ("TcpExt", "ListenOverflows") => listen.0 = u64::try_from(v).ok(),
                    ("TcpExt", "ListenDrops") => listen.1 = u64::try_from(v).ok(),
                    _ => {}
                }
                report(proto, field, v);
            });
        }
        if let Some(text) = self.files.snmp6.read_optional()? {
            for_each_snmp6_field(text, &mut report);
        }
        let listen = match listen {
            (Some(overflows), Some(drops)) => Some(ListenCounters { overflows, drops }),
            _ => None,
        };
        let stack = stack
            .finish()
            .map_err(|reason| self.files.snmp.parse_error(reason))?;
        Ok((stack, listen))
    }

    /// Reports the established and TIME-WAIT TCP connections.
    fn collect_connections(
        &mut self,
        stack: Option<&StackCounters>,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) {
        if let Some(stack) = stack {
            out.sample(
                id,
                "system.network.connections",
                &[("protocol", "tcp"), ("state", "established")],
                ts,
                stack.established as f64,
            );
        }
        let tw = self
            .files
            .sockstat
            .as_mut()
            .and_then(ProcFile::read_ok)
            .and_then(parse_time_wait);
        if let Some(tw) = tw {
            out.sample(
                id,
                "system.network.connections",
                &[("protocol", "tcp"), ("state", "time_wait")],
                ts,
                tw as f64,
            );
        }
    }

    /// Reports packets processed, dropped and squeezed per CPU.
    fn collect_softnet(
        &mut self,
        id: &str,
        ts: i64,
        out: &mut Collection,
    ) -> Result<(), CollectError> {
        let Some(text) = self.files.softnet.read_optional()? else {
            return Ok(());
        };
        let lines = parse_softnet(text).map_err(|r| self.files.softnet.parse_error(r))?;
        for l in lines {
            let cpu = l.cpu.to_string();
            for (field, v) in [
                ("processed", l.processed),
                ("dropped", l.dropped),
                ("times_squeezed", l.times_squeezed),
            ] {
                let attrs = [("cpu", cpu.as_str()), ("field", field)];
                out.sample(id, "system.linux.softnet", &attrs, ts, v as f64);
            }
        }
        Ok(())
    }

    /// The listening-socket inventory.
    fn listening(&self) -> Result<ObservedResource, CollectError> {
        let mut tcp = BTreeSet::new();
        let mut udp = BTreeSet::new();
        for (file, is_udp) in [
            ("tcp", false),
            ("tcp6", false),
            ("udp", true),
            ("udp6", true),
        ] {
            match self.net_file(file) {
                Ok(text) => {
                    let ports = parse_listening(&text, is_udp);
                    if is_udp {
                        udp.extend(ports)
                    } else {
                        tcp.extend(ports)
                    }
                }
                // IPv6 may be disabled; IPv4 tables must exist.
                Err(e) if !file.ends_with('6') => return Err(e),
                Err(_) => {}
            }
        }
        let mut attributes = BTreeMap::new();
        for (proto, ports) in [("tcp", &tcp), ("udp", &udp)] {
            let (list, truncated) = port_list(ports);
            attributes.insert(format!("net.listening.{proto}"), list);
            if truncated {
                attributes.insert(format!("net.listening.{proto}.truncated"), "true".into());
            }
        }
        Ok(ObservedResource {
            id: format!("{}/listening", self.host_id),
            kind: "listening_ports",
            labels: BTreeMap::new(),
            attributes,
            relations: vec![("runs_on".into(), self.host_id.clone())],
            interval_ms: self.interval_ms,
        })
    }
}

/// Adds interface `name`'s cumulative counters of `/proc/net/dev` on its part `id`.
fn record_dev_counters(id: &str, name: &str, c: &NetDevCounters, ts: i64, out: &mut Collection) {
    for (metric, rx, tx) in DEV_COUNTERS {
        for (direction, column, values) in
            [("receive", rx, &c.receive), ("transmit", tx, &c.transmit)]
        {
            if let Some(v) = column.and_then(|i| values.get(i)) {
                let attrs = [("device", name), ("direction", direction)];
                out.sample(id, metric, &attrs, ts, *v as f64);
            }
        }
    }
}

/// Adds interface `name`'s rates over the `secs` since `p`, and its utilization
/// of a link of `speed_bits` per second.
#[allow(clippy::too_many_arguments)]
fn record_dev_rates(
    id: &str,
    name: &str,
    c: &NetDevCounters,
    p: &NetDevCounters,
    secs: f64,
    speed_bits: Option<f64>,
    ts: i64,
    out: &mut Collection,
) {
    if secs <= 0.0 {
        return;
    }
    let rate = |now: &[u64; 8], before: &[u64; 8], i: usize| {
        now[i].checked_sub(before[i]).map(|d| d as f64 / secs)
    };
    for (metric, i) in DEV_RATES {
        for (direction, now, before) in [
            ("receive", &c.receive, &p.receive),
            ("transmit", &c.transmit, &p.transmit),
        ] {
            if let Some(r) = rate(now, before, i) {
                let attrs = [("device", name), ("direction", direction)];
                out.sample(id, metric, &attrs, ts, r);
            }
        }
    }
    if let (Some(bits), Some(rx), Some(tx)) = (
        speed_bits,
        rate(&c.receive, &p.receive, 0),
        rate(&c.transmit, &p.transmit, 0),
    ) {
        let u = (rx.max(tx) * 8.0 / bits).clamp(0.0, 1.0);
        out.sample(id, "system.network.utilization", &[("device", name)], ts, u);
    }
}

/// Adds the TCP/UDP and listen queue rates over the `secs` since `prev`.
fn record_stack_rates(
    stack: Option<&StackCounters>,
    listen: Option<&ListenCounters>,
    prev: &Previous,
    secs: f64,
    id: &str,
    ts: i64,
    out: &mut Collection,
) {
    if secs <= 0.0 {
        return;
    }
    let r = |a: u64, b: u64| a.checked_sub(b).map(|d| d as f64 / secs);
    // (metric, the `kind` attribute if any, rate)
    let mut series: Vec<(&'static str, Option<&'static str>, Option<f64>)> = Vec::new();
    if let (Some(s), Some(p)) = (stack, &prev.stack) {
        series.extend([
            (
                "system.network.tcp.retransmits.rate",
                None,
                r(s.retransmits, p.retransmits),
            ),
            (
                "system.network.tcp.resets.rate",
                Some("sent"),
                r(s.resets_sent, p.resets_sent),
            ),
            (
                "system.network.tcp.resets.rate",
                Some("established"),
                r(s.established_resets, p.established_resets),
            ),
            (
                "system.network.udp.errors.rate",
                Some("in"),
                r(s.udp_in_errors, p.udp_in_errors),
            ),
            (
                "system.network.udp.errors.rate",
                Some("receive_buffer"),
                r(s.udp_rcvbuf_errors, p.udp_rcvbuf_errors),
            ),
        ]);
    }
    if let (Some(l), Some(p)) = (listen, &prev.listen) {
        series.extend([
            (
                "system.network.tcp.listen_overflows.rate",
                None,
                r(l.overflows, p.overflows),
            ),
            (
                "system.network.tcp.listen_drops.rate",
                None,
                r(l.drops, p.drops),
            ),
        ]);
    }
    for (metric, kind, value) in series {
        match (kind, value) {
            (Some(kind), Some(v)) => out.sample(id, metric, &[("kind", kind)], ts, v),
            (None, Some(v)) => out.sample(id, metric, &[], ts, v),
            (_, None) => {}
        }
    }
}

#[async_trait::async_trait]
impl Collector for NetworkCollector {
    fn name(&self) -> &'static str {
        "network"
    }
    fn is_local(&self) -> bool {
        true
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let now = Instant::now();
        let ts = now_unix_ms();
        let id = self.host_id.clone();
        let interfaces = self.collect_interfaces(now, ts, out);
        // Each section has its turn; the first failure is the run's error.
        let (stack, listen, stack_result) = match self.collect_stack(&id, ts, out) {
            Ok((stack, listen)) => (Some(stack), listen, Ok(())),
            Err(e) => (None, None, Err(e)),
        };
        self.collect_connections(stack.as_ref(), &id, ts, out);
        if let Some(prev) = &self.previous {
            let secs = now.duration_since(prev.at).as_secs_f64();
            record_stack_rates(stack.as_ref(), listen.as_ref(), prev, secs, &id, ts, out);
        }
        let softnet = self.collect_softnet(&id, ts, out);
        self.previous = Some(Previous {
            at: now,
            interfaces,
            stack,
            listen,
        });
        // The inventory is described in every batch (so the resource never looks
        // stale) but re-read only every `listening_every`.
        let due = self
            .listening_taken
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= self.listening_every);
        if due {
            self.listening_taken = Some((now, self.listening()?));
        }
        if let Some((_, inventory)) = &self.listening_taken {
            out.resources.push(inventory.clone());
        }
        stack_result.and(softnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::test_support::{value, write};

    #[test]
    fn snmp_and_sockstat() {
        let snmp = "Tcp: RtoAlgorithm RetransSegs OutRsts EstabResets CurrEstab\nTcp: 1 18 1705 1070 2\n\
                    Udp: InDatagrams InErrors RcvbufErrors\nUdp: 51 3 1\n";
        let c = stack_counters(&parse_snmp(snmp)).unwrap();
        assert_eq!(c.retransmits, 18);
        assert_eq!(c.established, 2);
        assert_eq!(c.udp_rcvbuf_errors, 1);
        assert!(stack_counters(&parse_snmp("Tcp: A\nTcp: 1\n")).is_err());
        assert_eq!(
            parse_time_wait("sockets: used 30\nTCP: inuse 11 orphan 0 tw 2 alloc 14 mem 243\n"),
            Some(2)
        );
    }

    #[test]
    fn listening_tables() {
        let tcp = "  sl  local_address rem_address   st\n\
                   0: 0100007F:0CEA 00000000:0000 0A 0\n\
                   1: 0100007F:075B 0100007F:A000 01 0\n";
        assert_eq!(
            parse_listening(tcp, false).into_iter().collect::<Vec<_>>(),
            vec![0x0CEA]
        );
        let udp = "  sl  local_address rem_address   st\n\
                   0: 00000000:0035 00000000:0000 07 0\n\
                   1: 00000000:1234 0100007F:0035 01 0\n";
        assert_eq!(
            parse_listening(udp, true).into_iter().collect::<Vec<_>>(),
            vec![53]
        );
        let many: BTreeSet<u16> = (1..=1000).collect();
        let (list, truncated) = port_list(&many);
        assert!(truncated && list.len() <= MAX_LABEL_VALUE_LEN);
    }

    /// `/proc/net/dev` of a VM.
    const REAL_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 22881721   14461    0    0    0     0          0         0 22881721   14461    0    0    0     0       0          0
  ifb0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  ifb1:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 256812741    7319    0    0    0     0          0         0   410524    4234    0    0    0     0       0          0
";

    /// `/proc/net/snmp` of the same VM.
    const REAL_SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 21770 0 0 0 0 0 21770 18677 0 0 0 0 0 0 0 0 0 18677
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutRateLimitGlobal OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs OutRedirects OutEchos OutEchoReps OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps
Icmp: 1 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
IcmpMsg: InType3
IcmpMsg: 1
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 518 474 21 27 4 21718 18634 0 0 54 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 51 0 0 52 0 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
";

    /// `/proc/net/netstat` of the same VM, its `TcpExt` columns cut to a few
    /// and `MPTcpExt` left out.
    const REAL_NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts TW DelayedACKs ListenOverflows ListenDrops TCPPureAcks TCPTimeouts TCPOFOQueue TCPSynRetrans TCPOrigDataSent TCPDelivered TCPRcvQDrop
TcpExt: 0 0 0 0 475 10 0 0 4134 2 0 0 8423 8896 0
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts InECT0Pkts InCEPkts ReasmOverlaps
IpExt: 0 0 0 0 0 0 279591616 23231917 0 0 0 0 0 21770 0 0 0 0
";

    /// `/proc/net/snmp6` of the same VM, cut short.
    const REAL_SNMP6: &str = "\
Ip6InReceives                   \t1
Ip6InOctets                     \t128
Ip6OutOctets                    \t880
Icmp6InMsgs                     \t1
Icmp6InErrors                   \t1
Icmp6OutMsgs                    \t9
Icmp6InType1                    \t1
Udp6InDatagrams                 \t0
Udp6NoPorts                     \t0
Udp6InErrors                    \t0
Udp6OutDatagrams                \t0
Udp6RcvbufErrors                \t0
Udp6SndbufErrors                \t0
Udp6InCsumErrors                \t0
UdpLite6InErrors                \t0
";

    /// `/proc/net/softnet_stat` of the same two-CPU VM.
    const REAL_SOFTNET: &str = "\
00001e6f 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
000036a5 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000
";

    #[test]
    fn net_dev() {
        let t = parse_net_dev(REAL_DEV);
        assert_eq!(t.len(), 4);
        assert_eq!(
            t["eth0"],
            NetDevCounters {
                receive: [256_812_741, 7319, 0, 0, 0, 0, 0, 0],
                transmit: [410_524, 4234, 0, 0, 0, 0, 0, 0],
            }
        );
        let text = "a\nb\n  eth1: 100 2 0 1 0 0 0 0 300 4 5 6 0 0 0 0\n  bad: 1 2\n";
        let t = parse_net_dev(text);
        assert_eq!(t["eth1"].transmit[..4], [300, 4, 5, 6]);
        assert!(!t.contains_key("bad"));
    }

    /// node_exporter's netstat subset of the recorded files, as `proto_field`.
    fn reported(snmp: &str, netstat: &str, snmp6: &str) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        let mut keep = |p: &str, f: &str, v: i64| {
            if is_reported_netstat_field(p, f) {
                out.push((format!("{p}_{f}"), v));
            }
        };
        for_each_snmp_field(snmp, &mut keep);
        for_each_snmp_field(netstat, &mut keep);
        for_each_snmp6_field(snmp6, &mut keep);
        out
    }

    #[test]
    fn netstat_subset_of_real_files() {
        let kept = reported(REAL_SNMP, REAL_NETSTAT, REAL_SNMP6);
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(kept.len(), 19 + 11 + 12, "{names:?}");
        for name in [
            "Ip_Forwarding",
            "Icmp_InErrors",
            "Tcp_ActiveOpens",
            "Tcp_CurrEstab",
            "Tcp_InErrs",
            "Udp_SndbufErrors",
            "UdpLite_InErrors",
            "TcpExt_ListenDrops",
            "TcpExt_SyncookiesFailed",
            "TcpExt_TCPOFOQueue",
            "IpExt_OutOctets",
            "Ip6_InOctets",
            "Icmp6_InErrors",
            "Udp6_NoPorts",
            "UdpLite6_InErrors",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        for name in [
            "Ip_DefaultTTL",
            "Tcp_MaxConn",
            "IcmpMsg_InType3",
            "TcpExt_TW",
            "IpExt_InCsumErrors",
            "Ip6_InReceives",
            "Icmp6_InType1",
            "Udp6_InCsumErrors",
        ] {
            assert!(!names.contains(&name), "{name} in {names:?}");
        }
        assert!(kept.contains(&("Tcp_ActiveOpens".into(), 518)));
        assert!(kept.contains(&("IpExt_InOctets".into(), 279_591_616)));
        assert!(kept.contains(&("Icmp6_OutMsgs".into(), 9)));
        let c = stack_counters(&parse_snmp(REAL_SNMP)).unwrap();
        assert_eq!(
            (c.resets_sent, c.established_resets, c.established),
            (54, 27, 4)
        );
    }

    #[test]
    fn softnet_per_cpu() {
        let lines = parse_softnet(REAL_SOFTNET).unwrap();
        assert_eq!(
            lines,
            vec![
                SoftnetLine {
                    cpu: 0,
                    processed: 0x1e6f,
                    dropped: 0,
                    times_squeezed: 0
                },
                SoftnetLine {
                    cpu: 1,
                    processed: 0x36a5,
                    dropped: 0,
                    times_squeezed: 0
                },
            ]
        );
        // Older kernels have no CPU column: the line's position is the CPU.
        let old =
            parse_softnet("0000000a 00000001 00000002\n0000000b 00000000 00000000\n").unwrap();
        assert_eq!((old[1].cpu, old[1].processed, old[0].dropped), (1, 11, 1));
        assert!(parse_softnet("zz 0 0\n").is_err());
        assert!(parse_softnet("00000001\n").is_err());
    }

    #[tokio::test]
    async fn collects_from_fake_proc_and_sys_trees() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        write(&proc, "net/dev", REAL_DEV);
        write(&proc, "net/snmp", REAL_SNMP);
        write(&proc, "net/netstat", REAL_NETSTAT);
        write(&proc, "net/snmp6", REAL_SNMP6);
        write(&proc, "net/softnet_stat", REAL_SOFTNET);
        write(
            &proc,
            "net/sockstat",
            "TCP: inuse 17 orphan 0 tw 49 alloc 20 mem 0\n",
        );
        write(&proc, "net/tcp", "  sl  local_address rem_address   st\n");
        write(&proc, "net/udp", "  sl  local_address rem_address   st\n");
        for (file, text) in [
            ("operstate", "up\n"),
            ("flags", "0x1003\n"),
            ("mtu", "1400\n"),
            ("speed", "1000\n"),
            ("carrier_up_count", "3\n"),
            ("carrier_down_count", "2\n"),
            ("tx_queue_len", "1000\n"),
        ] {
            write(&sys, &format!("class/net/eth0/{file}"), text);
        }
        write(&sys, "class/net/lo/operstate", "unknown\n");
        let exclude = [String::from("lo")];
        let filter = NameFilter::new(&[], &exclude);
        let mut c = NetworkCollector::new("host/a".into(), proc.clone(), sys, filter, 1000);
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        let v = |m: &str, a: &[(&str, &str)]| value(&out, m, a);
        let eth0 = "host/a/interface/eth0";
        let rx = [("device", "eth0"), ("direction", "receive")];
        let tx = [("device", "eth0"), ("direction", "transmit")];
        assert_eq!(v("system.network.io", &rx), Some(256_812_741.0));
        assert_eq!(v("system.network.packets", &tx), Some(4234.0));
        assert_eq!(v("system.network.collisions", &tx), Some(0.0));
        assert_eq!(v("system.network.collisions", &rx), None);
        let counters = out.samples.iter().filter(|s| {
            s.resource_id == eth0
                && !s.metric.ends_with(".rate")
                && s.attributes.iter().any(|(k, _)| k == "direction")
        });
        assert_eq!(counters.count(), 16, "every column of /proc/net/dev");
        assert!(out.samples.iter().all(|s| !s.resource_id.ends_with("/lo")));
        assert_eq!(v("system.network.mtu", &[("device", "eth0")]), Some(1400.0));
        assert_eq!(
            v("system.network.link.speed", &[("device", "eth0")]),
            Some(1e9)
        );
        let down = [("device", "eth0"), ("state", "down")];
        assert_eq!(v("system.network.carrier.changes", &down), Some(2.0));
        let queue = [("device", "eth0")];
        assert_eq!(
            v("system.network.transmit_queue.length", &queue),
            Some(1000.0)
        );
        let netstat = out
            .samples
            .iter()
            .filter(|s| s.metric == "system.linux.netstat");
        assert_eq!(netstat.count(), 42);
        assert_eq!(
            v("system.linux.netstat", &[("field", "Tcp_PassiveOpens")]),
            Some(474.0)
        );
        assert_eq!(
            v("system.linux.netstat", &[("field", "Ip6_OutOctets")]),
            Some(880.0)
        );
        let cpu1 = [("cpu", "1"), ("field", "processed")];
        assert_eq!(v("system.linux.softnet", &cpu1), Some(f64::from(0x36a5)));
        let tw = [("protocol", "tcp"), ("state", "time_wait")];
        assert_eq!(v("system.network.connections", &tw), Some(49.0));
        assert_eq!(v("system.network.tcp.listen_drops.rate", &[]), None);

        // The second run has rates; without sockstat no TIME-WAIT count.
        let mut c = c.with_sockstat(false);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let netstat = REAL_NETSTAT.replace("475 10 0 0 4134", "475 10 5 8 4134");
        write(&proc, "net/netstat", &netstat);
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        let drops = value(&out, "system.network.tcp.listen_drops.rate", &[]).unwrap();
        let overflows = value(&out, "system.network.tcp.listen_overflows.rate", &[]).unwrap();
        assert!(drops > overflows && overflows > 0.0, "{drops} {overflows}");
        assert!(value(&out, "system.network.io.rate", &rx).is_some());
        assert_eq!(value(&out, "system.network.connections", &tw), None);
    }

    #[tokio::test]
    async fn a_new_listener_shows_up_in_the_inventory() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut c = NetworkCollector::new(
            "host/a".into(),
            "/proc".into(),
            "/sys".into(),
            NameFilter::default(),
            1000,
        );
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        let inventory = out
            .resources
            .iter()
            .find(|r| r.kind == "listening_ports")
            .unwrap();
        let ports: Vec<&str> = inventory.attributes["net.listening.tcp"]
            .split(',')
            .collect();
        assert!(
            ports.contains(&port.to_string().as_str()),
            "{ports:?} lacks {port}"
        );
        assert_eq!(
            inventory.relations,
            vec![("runs_on".to_string(), "host/a".to_string())]
        );
    }
}
