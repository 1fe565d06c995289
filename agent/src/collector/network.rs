//! Network interfaces and the TCP/UDP stack.
//!
//! - Per interface, a part of the host (`host/<id>/interface/<name>`, kind
//!   `network_interface`, whose attributes hold its administrative and
//!   operational state; inventory from pnet, counters from `/proc/net/dev`,
//!   state, speed and MTU from sysfs): bytes, packets, errors and drops per
//!   second, link state, speed, MTU, and utilization of the link speed where
//!   the kernel knows it.
//! - The stack (`/proc/net/snmp`, `/proc/net/sockstat`): retransmits and resets per
//!   second, established and time-wait connections, UDP errors per second.
//! - Listening sockets (`/proc/net/{tcp,tcp6,udp,udp6}`): an inventory resource
//!   `host/<id>/listening` whose attributes list the listening ports, so a port that
//!   starts or stops listening is a change with its own resource version.
//!
//! Procfs network files are read from `<proc>/1/net` when present (the host's
//! namespace, for an agent in a pod with the host's /proc), else `<proc>/net`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use infrawatch_common::resource::{MAX_LABEL_VALUE_LEN, kind};
use infrawatch_common::time::now_unix_ms;

use super::filter::NameFilter;
use super::{CollectError, Collection, Collector, ObservedResource};

/// How often the listening-socket inventory is taken by default.
pub const LISTENING_INTERVAL_MS: u64 = 30_000;

/// Interfaces left out unless the configuration says otherwise.
pub const DEFAULT_EXCLUDE: [&str; 5] = ["lo", "veth*", "cali*", "lxc*", "cilium_*"];

/// Parses `/proc/net/dev` into counters per interface, in the order rx/tx bytes,
/// rx/tx packets, rx/tx errors, rx/tx drops.
pub fn parse_net_dev(text: &str) -> HashMap<String, [u64; 8]> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            if v.len() < 16 {
                return None;
            }
            let (rx, tx) = (&v[..8], &v[8..]);
            Some((
                name.trim().to_string(),
                [rx[0], tx[0], rx[1], tx[1], rx[2], tx[2], rx[3], tx[3]],
            ))
        })
        .collect()
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
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [head, values] = pair else { continue };
        let (Some((proto, names)), Some((_, nums))) =
            (head.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        let table = out.entry(proto.to_string()).or_default();
        for (k, v) in names.split_whitespace().zip(nums.split_whitespace()) {
            if let Ok(v) = v.parse() {
                table.insert(k.to_string(), v);
            }
        }
    }
    out
}

/// Extracts [`StackCounters`] from parsed snmp tables.
pub fn stack_counters(
    snmp: &HashMap<String, HashMap<String, i64>>,
) -> Result<StackCounters, String> {
    let get = |proto: &str, key: &str| -> Result<u64, String> {
        snmp.get(proto)
            .and_then(|t| t.get(key))
            .map(|v| u64::try_from(*v).unwrap_or(0))
            .ok_or_else(|| format!("{proto} {key} missing"))
    };
    Ok(StackCounters {
        retransmits: get("Tcp", "RetransSegs")?,
        resets_sent: get("Tcp", "OutRsts")?,
        established_resets: get("Tcp", "EstabResets")?,
        established: get("Tcp", "CurrEstab")?,
        udp_in_errors: get("Udp", "InErrors")?,
        udp_rcvbuf_errors: get("Udp", "RcvbufErrors")?,
    })
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

/// The network collector.
pub struct NetworkCollector {
    host_id: String,
    proc_root: PathBuf,
    sys_root: PathBuf,
    filter: NameFilter,
    interval_ms: u32,
    previous: Option<(HashMap<String, [u64; 8]>, StackCounters, Instant)>,
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
            host_id,
            proc_root,
            sys_root,
            filter,
            interval_ms,
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

    /// Interface names: pnet's inventory in our own namespace, sysfs under another root.
    fn interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = if self.sys_root == std::path::Path::new("/sys") {
            pnet_datalink::interfaces()
                .into_iter()
                .map(|i| i.name)
                .collect()
        } else {
            std::fs::read_dir(self.sys_root.join("class/net"))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        names.retain(|n| self.filter.allows(n));
        names.sort();
        names
    }

    fn read_sys(&self, iface: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.sys_root.join("class/net").join(iface).join(file))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn collect_interfaces(
        &self,
        now: Instant,
        ts: i64,
        out: &mut Collection,
    ) -> HashMap<String, [u64; 8]> {
        let mut current = HashMap::new();
        // One read of <proc>/net/dev gives every interface's counters (eight sysfs
        // files per interface cost about ten times more).
        let dev_table = self
            .net_file("dev")
            .map(|t| parse_net_dev(&t))
            .unwrap_or_default();
        for name in self.interfaces() {
            let (counters, complete) = match dev_table.get(&name) {
                Some(c) => (*c, true),
                None => ([0u64; 8], false),
            };
            let dev = [("device", name.as_str())];
            let oper = self
                .read_sys(&name, "operstate")
                .unwrap_or_else(|| "unknown".into());
            // IFF_UP: the administrator's choice; an interface set down is not
            // a failure.
            let admin_up = self
                .read_sys(&name, "flags")
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .is_some_and(|f| f & 0x1 != 0);
            let up = oper == "up" || oper == "unknown";
            let attributes = BTreeMap::from([
                ("interface.name".to_string(), name.clone()),
                (
                    "interface.admin_state".to_string(),
                    if admin_up { "up" } else { "down" }.to_string(),
                ),
                ("interface.oper_state".to_string(), oper),
            ]);
            let id = &out.part(
                &self.host_id,
                kind::NETWORK_INTERFACE,
                &name,
                attributes,
                self.interval_ms,
            );
            out.sample(
                id,
                "system.network.link.up",
                &dev,
                ts,
                if up { 1.0 } else { 0.0 },
            );
            if let Some(mtu) = self
                .read_sys(&name, "mtu")
                .and_then(|v| v.parse::<f64>().ok())
            {
                out.sample(id, "system.network.mtu", &dev, ts, mtu);
            }
            // speed is in Mb/s; -1 or an error when unknown (virtual links, link down).
            let speed_bits = self
                .read_sys(&name, "speed")
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|s| *s > 0)
                .map(|mbit| mbit as f64 * 1e6);
            if let Some(bits) = speed_bits {
                out.sample(id, "system.network.link.speed", &dev, ts, bits);
            }
            if !complete {
                continue;
            }
            if let Some((prev, _, taken)) = &self.previous
                && let Some(p) = prev.get(&name)
            {
                let secs = now.duration_since(*taken).as_secs_f64();
                let rate = |i: usize| counters[i].checked_sub(p[i]).map(|d| d as f64 / secs);
                if secs > 0.0 {
                    let pairs = [
                        ("system.network.io.rate", 0),
                        ("system.network.packets.rate", 2),
                        ("system.network.errors.rate", 4),
                        ("system.network.dropped.rate", 6),
                    ];
                    for (metric, i) in pairs {
                        for (direction, k) in [("receive", i), ("transmit", i + 1)] {
                            if let Some(r) = rate(k) {
                                out.sample(
                                    id,
                                    metric,
                                    &[("device", name.as_str()), ("direction", direction)],
                                    ts,
                                    r,
                                );
                            }
                        }
                    }
                    if let (Some(bits), Some(rx), Some(tx)) = (speed_bits, rate(0), rate(1)) {
                        let u = (rx.max(tx) * 8.0 / bits).clamp(0.0, 1.0);
                        out.sample(id, "system.network.utilization", &dev, ts, u);
                    }
                }
            }
            current.insert(name, counters);
        }
        current
    }

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

#[async_trait::async_trait]
impl Collector for NetworkCollector {
    fn name(&self) -> &'static str {
        "network"
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let now = Instant::now();
        let ts = now_unix_ms();
        let id = self.host_id.clone();
        let interfaces = self.collect_interfaces(now, ts, out);
        let snmp_text = self.net_file("snmp")?;
        let stack =
            stack_counters(&parse_snmp(&snmp_text)).map_err(|reason| CollectError::Parse {
                path: "net/snmp".into(),
                reason,
            })?;
        out.sample(
            &id,
            "system.network.connections",
            &[("protocol", "tcp"), ("state", "established")],
            ts,
            stack.established as f64,
        );
        if let Some(tw) = self
            .net_file("sockstat")
            .ok()
            .as_deref()
            .and_then(parse_time_wait)
        {
            out.sample(
                &id,
                "system.network.connections",
                &[("protocol", "tcp"), ("state", "time_wait")],
                ts,
                tw as f64,
            );
        }
        if let Some((_, prev, taken)) = &self.previous {
            let secs = now.duration_since(*taken).as_secs_f64();
            let r = |a: u64, b: u64| a.checked_sub(b).map(|d| d as f64 / secs);
            if secs > 0.0 {
                for (metric, attrs, value) in [
                    (
                        "system.network.tcp.retransmits.rate",
                        vec![],
                        r(stack.retransmits, prev.retransmits),
                    ),
                    (
                        "system.network.tcp.resets.rate",
                        vec![("kind", "sent")],
                        r(stack.resets_sent, prev.resets_sent),
                    ),
                    (
                        "system.network.tcp.resets.rate",
                        vec![("kind", "established")],
                        r(stack.established_resets, prev.established_resets),
                    ),
                    (
                        "system.network.udp.errors.rate",
                        vec![("kind", "in")],
                        r(stack.udp_in_errors, prev.udp_in_errors),
                    ),
                    (
                        "system.network.udp.errors.rate",
                        vec![("kind", "receive_buffer")],
                        r(stack.udp_rcvbuf_errors, prev.udp_rcvbuf_errors),
                    ),
                ] {
                    if let Some(v) = value {
                        out.sample(&id, metric, &attrs, ts, v);
                    }
                }
            }
        }
        self.previous = Some((interfaces, stack, now));
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets\n  eth0: 100 2 0 1 0 0 0 0 300 4 5 6 0 0 0 0\n";
        assert_eq!(parse_net_dev(text)["eth0"], [100, 300, 2, 4, 0, 5, 1, 6]);
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
