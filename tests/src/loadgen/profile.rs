//! What one simulated agent reports, and its batches encoded straight to wire
//! bytes.
//!
//! The mix mirrors the real agent's collectors (`agent/src/collector/*.rs`), with
//! their metric names and attributes: the host (CPU per core and total, memory,
//! swap, load, uptime), pressure and contention, the network stack, the agent's
//! self-health resource, an ICMP, a DNS and a TCP probe, then disks, filesystems,
//! network interfaces and pods added in turn until the series count is reached
//! (the real agent does not report pods; they are modelled with OpenTelemetry's
//! `k8s.pod.*` names, as resources under the host, `host/<machine>/pod/...`,
//! since an agent may report only its own machine's resources). With the default 120 series that is about what the real
//! agent sends for a small node (118 samples a second on the benchmark machine).
//! Every batch describes every resource, as the real agent's collectors do on
//! each run.
//!
//! A load generator must not compete with the aggregator for the CPU it is
//! measuring, so only the values change between batches: resources, strings,
//! series definitions, the series column and the time offsets are encoded once
//! per agent, and a batch is those bytes with the sequence number, timestamps and
//! values spliced in. Protobuf allows fields in any order, so the aggregator's
//! decoder reads the result like any other `Batch` (the unit tests check that).

use std::collections::HashMap;

use infrawatch_common::resource::{host_id, metric};
use infrawatch_proto::v1::{
    AgentMessage, Batch, Hello, HostIdentity, Relation, ResourceObservation, SeriesDef,
    agent_message::Body,
};
use prost::Message;

/// Version the simulated agents announce.
pub const AGENT_VERSION: &str = "loadgen";

/// Series per agent by default.
pub const DEFAULT_SERIES: usize = 120;

/// Logical CPUs of a simulated host.
const CPUS: usize = 2;

/// How a series' values move.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gen {
    /// Always the same value.
    Const(f64),
    /// Uniform in `[lo, hi)`.
    Uniform(f64, f64),
    /// Grows by `step` per batch (uptime, counters).
    Counter(f64),
}

/// One series: the resource it belongs to (index), metric, attributes, values,
/// and its time offset within the batch (collectors run a few ms apart).
#[derive(Debug, Clone)]
struct Spec {
    resource: usize,
    metric: String,
    attributes: Vec<(String, String)>,
    values: Gen,
    offset_ms: i64,
}

/// Resource indexes of the fixed resources.
const HOST: usize = 0;
const AGENT: usize = 1;
const ICMP: usize = 2;
const DNS: usize = 3;
const TCP: usize = 4;

/// A small xorshift generator: cheap values, reproducible per agent.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
}

/// Builds the series catalogue of one agent in the order described in the module
/// documentation; returns the series and the number of pods used.
fn catalogue(count: usize) -> (Vec<Spec>, usize) {
    let mut out: Vec<Spec> = Vec::with_capacity(count + 16);
    let mut add = |resource: usize, m: &str, a: &[(&str, &str)], values: Gen, offset_ms: i64| {
        out.push(Spec {
            resource,
            metric: s(m),
            attributes: attrs(a),
            values,
            offset_ms,
        });
    };
    // host.rs: CPU, memory, swap, load, uptime.
    add(
        HOST,
        metric::CPU_LOGICAL_COUNT,
        &[],
        Gen::Const(CPUS as f64),
        0,
    );
    add(
        HOST,
        metric::CPU_UTILIZATION,
        &[],
        Gen::Uniform(0.05, 0.6),
        0,
    );
    for cpu in 0..CPUS {
        let cpu = cpu.to_string();
        add(
            HOST,
            metric::CPU_UTILIZATION,
            &[("cpu", cpu.as_str())],
            Gen::Uniform(0.0, 0.7),
            0,
        );
    }
    for (state, lo, hi) in [
        ("used", 1.5e9, 2.5e9),
        ("free", 2.0e8, 4.0e8),
        ("buffers", 5.0e7, 6.0e7),
        ("cached", 1.0e9, 1.2e9),
    ] {
        add(
            HOST,
            metric::MEMORY_USAGE,
            &[("state", state)],
            Gen::Uniform(lo, hi),
            0,
        );
    }
    add(HOST, metric::MEMORY_LIMIT, &[], Gen::Const(4.0e9), 0);
    add(
        HOST,
        metric::MEMORY_AVAILABLE,
        &[],
        Gen::Uniform(1.5e9, 2.0e9),
        0,
    );
    add(
        HOST,
        metric::MEMORY_UTILIZATION,
        &[],
        Gen::Uniform(0.4, 0.6),
        0,
    );
    add(
        HOST,
        metric::PAGING_USAGE,
        &[("state", "used")],
        Gen::Const(0.0),
        0,
    );
    add(
        HOST,
        metric::PAGING_USAGE,
        &[("state", "free")],
        Gen::Const(0.0),
        0,
    );
    add(HOST, metric::PAGING_UTILIZATION, &[], Gen::Const(0.0), 0);
    add(
        HOST,
        metric::CPU_LOAD_AVERAGE_1M,
        &[],
        Gen::Uniform(0.1, 1.5),
        0,
    );
    add(
        HOST,
        metric::CPU_LOAD_AVERAGE_5M,
        &[],
        Gen::Uniform(0.1, 1.2),
        0,
    );
    add(
        HOST,
        metric::CPU_LOAD_AVERAGE_15M,
        &[],
        Gen::Uniform(0.1, 1.0),
        0,
    );
    add(HOST, metric::UPTIME, &[], Gen::Counter(1.0), 0);
    // tcp.rs, icmp.rs, dns.rs: one probe each.
    add(
        TCP,
        "tcp.connect.duration",
        &[],
        Gen::Uniform(0.0002, 0.002),
        3,
    );
    add(TCP, "tcp.connect.success", &[], Gen::Const(1.0), 3);
    add(ICMP, "icmp.loss", &[], Gen::Const(0.0), 4);
    add(ICMP, "icmp.sent", &[], Gen::Const(5.0), 4);
    for stat in ["min", "avg", "max", "p99"] {
        add(
            ICMP,
            "icmp.rtt",
            &[("stat", stat)],
            Gen::Uniform(0.0003, 0.003),
            4,
        );
    }
    add(ICMP, "icmp.jitter", &[], Gen::Uniform(0.0, 0.0005), 4);
    add(
        DNS,
        "dns.lookup.duration",
        &[],
        Gen::Uniform(0.0005, 0.02),
        5,
    );
    add(DNS, "dns.lookup.answers", &[], Gen::Const(1.0), 5);
    add(DNS, "dns.lookup.success", &[], Gen::Const(1.0), 5);
    // pressure.rs: processes, PSI, steal and iowait, paging (all well below the
    // health thresholds, so hosts stay healthy unless a change is injected).
    for status in ["running", "blocked"] {
        add(
            HOST,
            "system.processes.count",
            &[("status", status)],
            Gen::Uniform(0.0, 4.0),
            1,
        );
    }
    for (resource, levels) in [
        ("cpu", &["some"][..]),
        ("memory", &["some", "full"][..]),
        ("io", &["some", "full"][..]),
    ] {
        for level in levels {
            for window in ["10s", "60s", "300s"] {
                add(
                    HOST,
                    "system.linux.pressure",
                    &[("level", level), ("resource", resource), ("window", window)],
                    Gen::Uniform(0.0, 0.05),
                    1,
                );
            }
        }
    }
    for state in ["steal", "iowait"] {
        add(
            HOST,
            metric::CPU_UTILIZATION,
            &[("state", state)],
            Gen::Uniform(0.0, 0.02),
            1,
        );
    }
    add(
        HOST,
        "system.paging.faults.rate",
        &[("type", "major")],
        Gen::Uniform(0.0, 2.0),
        1,
    );
    for direction in ["in", "out"] {
        add(
            HOST,
            "system.paging.operations.rate",
            &[("direction", direction)],
            Gen::Const(0.0),
            1,
        );
    }
    for (resource, level) in [
        ("cpu", "some"),
        ("memory", "some"),
        ("memory", "full"),
        ("io", "some"),
        ("io", "full"),
    ] {
        add(
            HOST,
            "system.linux.pressure.stall_time.rate",
            &[("level", level), ("resource", resource)],
            Gen::Uniform(0.0, 0.01),
            1,
        );
    }
    // network.rs: the TCP/UDP stack.
    add(
        HOST,
        "system.network.connections",
        &[("protocol", "tcp"), ("state", "established")],
        Gen::Uniform(10.0, 80.0),
        2,
    );
    add(
        HOST,
        "system.network.connections",
        &[("protocol", "tcp"), ("state", "time_wait")],
        Gen::Uniform(0.0, 40.0),
        2,
    );
    add(
        HOST,
        "system.network.tcp.retransmits.rate",
        &[],
        Gen::Uniform(0.0, 1.0),
        2,
    );
    for kind in ["sent", "established"] {
        add(
            HOST,
            "system.network.tcp.resets.rate",
            &[("kind", kind)],
            Gen::Uniform(0.0, 1.0),
            2,
        );
    }
    for kind in ["in", "receive_buffer"] {
        add(
            HOST,
            "system.network.udp.errors.rate",
            &[("kind", kind)],
            Gen::Const(0.0),
            2,
        );
    }
    // agent.rs: the agent's own health, per collector and for the process.
    for collector in ["host", "disk", "filesystem", "network", "pressure", "agent"] {
        let a = [("collector", collector)];
        add(
            AGENT,
            "infrawatch.agent.collector.duration",
            &a,
            Gen::Uniform(0.00002, 0.0002),
            6,
        );
        add(
            AGENT,
            "infrawatch.agent.collector.last_run",
            &a,
            Gen::Counter(1.0),
            6,
        );
        add(
            AGENT,
            "infrawatch.agent.collector.failures",
            &a,
            Gen::Const(0.0),
            6,
        );
    }
    add(AGENT, "process.cpu.time", &[], Gen::Counter(0.002), 6);
    add(
        AGENT,
        "process.memory.usage",
        &[],
        Gen::Uniform(9.0e6, 1.1e7),
        6,
    );
    add(
        AGENT,
        "process.cpu.utilization",
        &[],
        Gen::Uniform(0.001, 0.004),
        6,
    );
    for m in ["dropped_samples", "dropped_batches", "queued", "usage"] {
        add(
            AGENT,
            &format!("infrawatch.agent.buffer.{m}"),
            &[],
            Gen::Const(0.0),
            6,
        );
    }

    // Units added in turn until the count is reached.
    let mut pods = 0usize;
    let mut round = 0usize;
    while out.len() < count {
        let disk = format!("nvme{round}n1");
        let mut unit: Vec<Spec> = Vec::new();
        let mut push =
            |resource: usize, m: &str, a: Vec<(String, String)>, values: Gen, offset_ms: i64| {
                unit.push(Spec {
                    resource,
                    metric: s(m),
                    attributes: a,
                    values,
                    offset_ms,
                });
            };
        // disk.rs
        push(
            HOST,
            "system.disk.pending_operations",
            attrs(&[("device", disk.as_str())]),
            Gen::Uniform(0.0, 2.0),
            7,
        );
        for direction in ["read", "write"] {
            let a = attrs(&[("device", disk.as_str()), ("direction", direction)]);
            push(
                HOST,
                "system.disk.operations.rate",
                a.clone(),
                Gen::Uniform(0.0, 200.0),
                7,
            );
            push(
                HOST,
                "system.disk.io.rate",
                a.clone(),
                Gen::Uniform(0.0, 4.0e6),
                7,
            );
            push(
                HOST,
                "system.disk.operation_time.avg",
                a,
                Gen::Uniform(0.0001, 0.005),
                7,
            );
        }
        push(
            HOST,
            "system.disk.utilization",
            attrs(&[("device", disk.as_str())]),
            Gen::Uniform(0.0, 0.3),
            7,
        );
        // filesystem.rs
        let mountpoint = if round == 0 {
            s("/")
        } else {
            format!("/data{round}")
        };
        let device = format!("/dev/{disk}p1");
        let base = [
            ("device", device.as_str()),
            ("mountpoint", mountpoint.as_str()),
            ("type", "ext4"),
        ];
        for state in ["used", "free", "reserved"] {
            let mut a = attrs(&base);
            a.push((s("state"), s(state)));
            push(
                HOST,
                "system.filesystem.usage",
                a,
                Gen::Uniform(1.0e9, 2.0e10),
                8,
            );
        }
        push(
            HOST,
            "system.filesystem.limit",
            attrs(&base),
            Gen::Const(5.0e10),
            8,
        );
        push(
            HOST,
            "system.filesystem.utilization",
            attrs(&base),
            Gen::Uniform(0.2, 0.6),
            8,
        );
        for state in ["used", "free"] {
            let mut a = attrs(&base);
            a.push((s("state"), s(state)));
            push(
                HOST,
                "system.filesystem.inodes.usage",
                a,
                Gen::Uniform(1.0e5, 3.0e6),
                8,
            );
        }
        push(
            HOST,
            "system.filesystem.readonly",
            attrs(&base),
            Gen::Const(0.0),
            8,
        );
        // network.rs, per interface.
        let dev = format!("eth{round}");
        let d = attrs(&[("device", dev.as_str())]);
        push(
            HOST,
            "system.network.link.up",
            d.clone(),
            Gen::Const(1.0),
            2,
        );
        push(HOST, "system.network.mtu", d.clone(), Gen::Const(1500.0), 2);
        push(
            HOST,
            "system.network.link.speed",
            d.clone(),
            Gen::Const(1.0e10),
            2,
        );
        for m in ["io", "packets", "errors", "dropped"] {
            for direction in ["receive", "transmit"] {
                push(
                    HOST,
                    &format!("system.network.{m}.rate"),
                    attrs(&[("device", dev.as_str()), ("direction", direction)]),
                    Gen::Uniform(0.0, if m == "io" { 1.0e6 } else { 100.0 }),
                    2,
                );
            }
        }
        push(
            HOST,
            "system.network.utilization",
            d,
            Gen::Uniform(0.0, 0.1),
            2,
        );
        // A pod on this node (resource indexes after the fixed five).
        let pod = TCP + 1 + pods;
        pods += 1;
        push(
            pod,
            "k8s.pod.cpu.utilization",
            Vec::new(),
            Gen::Uniform(0.0, 0.5),
            9,
        );
        push(
            pod,
            "k8s.pod.memory.usage",
            Vec::new(),
            Gen::Uniform(5.0e7, 3.0e8),
            9,
        );
        for direction in ["receive", "transmit"] {
            push(
                pod,
                "k8s.pod.network.io",
                attrs(&[("direction", direction)]),
                Gen::Uniform(0.0, 1.0e5),
                9,
            );
        }
        out.extend(unit);
        round += 1;
    }
    out.truncate(count);
    let pods_used = out
        .iter()
        .map(|s| s.resource)
        .filter(|r| *r > TCP)
        .max()
        .map_or(0, |r| r - TCP);
    (out, pods_used)
}

fn observation(
    id: &str,
    kind: &str,
    labels: &[(&str, &str)],
    attributes: &[(&str, &str)],
    runs_on: Option<&str>,
    interval_ms: u32,
) -> ResourceObservation {
    ResourceObservation {
        id: s(id),
        kind: s(kind),
        labels: labels.iter().map(|(k, v)| (s(k), s(v))).collect(),
        attributes: attributes.iter().map(|(k, v)| (s(k), s(v))).collect(),
        relations: runs_on
            .map(|to| Relation {
                from_id: String::new(),
                relation_type: s("runs_on"),
                to_id: s(to),
            })
            .into_iter()
            .collect(),
        interval_ms,
    }
}

/// One simulated agent: identity, resources, series and the pre-encoded parts of
/// its batches.
#[derive(Debug, Clone)]
pub struct AgentModel {
    /// Certificate identity.
    pub identity: String,
    /// Machine id announced in `Hello` (also the host resource's id).
    pub machine_id: String,
    /// The host resource.
    pub host_id: String,
    /// The TCP probe whose outcome a change injection flips.
    pub tcp_probe_id: String,
    /// Index of `tcp.connect.success` in `specs`, if that series is in the mix.
    tcp_success: Option<usize>,
    /// Samples per batch.
    pub series: usize,
    specs: Vec<Spec>,
    /// Fields 3 (resources) encoded, with the TCP probe succeeding and failing.
    resources_ok: Vec<u8>,
    resources_failing: Vec<u8>,
    /// Fields 4 and 5 (strings, series) encoded.
    dictionary: Vec<u8>,
    /// SampleColumns fields 1 and 2 (series indexes, time offsets) encoded.
    static_columns: Vec<u8>,
    /// Announced collection interval.
    interval_ms: u32,
}

/// Appends `v` as a protobuf varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Wire type 0 (varint) and 2 (length-delimited) tags.
fn tag(field: u32, wire: u32) -> u64 {
    u64::from((field << 3) | wire)
}

impl AgentModel {
    /// Agent number `index` with certificate identity `identity`, reporting
    /// `series` series; resources announce `interval_ms` for stale detection.
    pub fn new(index: usize, identity: &str, series: usize, interval_ms: u32) -> Self {
        let machine_id = format!("lg{index:06}");
        let host = host_id(&machine_id);
        let (specs, pods) = catalogue(series);
        let tcp_probe_id = format!("probe/{machine_id}/tcp/10.0.0.1:443");
        let hostname = format!("loadgen-node-{index}");
        let mut resources = vec![
            observation(
                &host,
                "host",
                &[("host.name", hostname.as_str())],
                &[
                    ("host.id", machine_id.as_str()),
                    ("host.name", hostname.as_str()),
                    ("host.arch", "x86_64"),
                    ("os.type", "linux"),
                    ("os.name", "debian"),
                    ("os.version", "12"),
                    ("os.description", "Debian GNU/Linux 12 (bookworm)"),
                    ("os.kernel.version", "6.1.0-loadgen"),
                ],
                None,
                interval_ms,
            ),
            observation(
                &format!("agent/{machine_id}"),
                "agent",
                &[],
                &[
                    ("service.name", "infrawatch-agent"),
                    ("service.version", AGENT_VERSION),
                    ("agent.name", identity),
                    ("agent.failing_collectors", ""),
                ],
                Some(&host),
                interval_ms,
            ),
            observation(
                &format!("probe/{machine_id}/icmp/10.0.0.1"),
                "icmp_probe",
                &[],
                &[("network.peer.address", "10.0.0.1"), ("icmp.result", "ok")],
                Some(&host),
                interval_ms,
            ),
            observation(
                &format!("probe/{machine_id}/dns/example.internal/a"),
                "dns_probe",
                &[],
                &[
                    ("dns.question.name", "example.internal"),
                    ("dns.question.type", "A"),
                    ("dns.servers", "system"),
                    ("dns.result", "ok"),
                    ("dns.answers", "10.0.0.53"),
                ],
                Some(&host),
                interval_ms,
            ),
            observation(
                &tcp_probe_id,
                "tcp_probe",
                &[],
                &[("server.address", "10.0.0.1:443"), ("tcp.result", "ok")],
                Some(&host),
                interval_ms,
            ),
        ];
        for p in 0..pods {
            let pod = format!("{machine_id}-web-{p}");
            resources.push(observation(
                // Under the host: an agent reports only its own machine's
                // resources (pods themselves come from the Kubernetes source).
                &format!("host/{machine_id}/pod/default/{pod}"),
                "k8s_pod",
                &[
                    ("k8s.namespace.name", "default"),
                    ("k8s.node.name", hostname.as_str()),
                ],
                &[("k8s.pod.name", pod.as_str())],
                Some(&host),
                interval_ms,
            ));
        }
        let encode_resources = |resources: Vec<ResourceObservation>| {
            Batch {
                resources,
                ..Default::default()
            }
            .encode_to_vec()
        };
        let resources_ok = encode_resources(resources.clone());
        let mut failing = resources;
        failing[TCP]
            .attributes
            .insert(s("tcp.result"), s("refused"));
        let resources_failing = encode_resources(failing);

        // String table and series definitions, each string once.
        let mut strings: Vec<String> = Vec::new();
        let mut index_of: HashMap<String, u32> = HashMap::new();
        let mut intern = |v: &str| -> u32 {
            if let Some(i) = index_of.get(v) {
                return *i;
            }
            let i = strings.len() as u32;
            strings.push(v.to_string());
            index_of.insert(v.to_string(), i);
            i
        };
        let series_defs: Vec<SeriesDef> = specs
            .iter()
            .map(|sp| SeriesDef {
                resource: sp.resource as u32,
                metric: intern(&sp.metric),
                attributes: sp
                    .attributes
                    .iter()
                    .flat_map(|(k, v)| [intern(k), intern(v)])
                    .collect(),
            })
            .collect();
        let dictionary = Batch {
            strings,
            series: series_defs,
            ..Default::default()
        }
        .encode_to_vec();

        // SampleColumns: series i at index i, time offsets per collector.
        let mut static_columns = Vec::new();
        let mut packed = Vec::new();
        for i in 0..specs.len() {
            put_varint(&mut packed, i as u64);
        }
        put_varint(&mut static_columns, tag(1, 2));
        put_varint(&mut static_columns, packed.len() as u64);
        static_columns.extend_from_slice(&packed);
        packed.clear();
        for sp in &specs {
            // sint64: zig-zag.
            put_varint(
                &mut packed,
                ((sp.offset_ms << 1) ^ (sp.offset_ms >> 63)) as u64,
            );
        }
        put_varint(&mut static_columns, tag(2, 2));
        put_varint(&mut static_columns, packed.len() as u64);
        static_columns.extend_from_slice(&packed);

        let tcp_success = specs
            .iter()
            .position(|sp| sp.resource == TCP && sp.metric == "tcp.connect.success");
        Self {
            identity: identity.to_string(),
            machine_id,
            host_id: host,
            tcp_probe_id,
            tcp_success,
            series: specs.len(),
            specs,
            resources_ok,
            resources_failing,
            dictionary,
            static_columns,
            interval_ms,
        }
    }

    /// The `Hello` that opens a stream, encoded as an `AgentMessage`.
    pub fn hello(&self, last_seq: u64) -> Vec<u8> {
        AgentMessage {
            body: Some(Body::Hello(Hello {
                agent_name: self.identity.clone(),
                agent_version: AGENT_VERSION.into(),
                host: Some(HostIdentity {
                    machine_id: self.machine_id.clone(),
                    hostname: self.machine_id.clone(),
                    os_type: "linux".into(),
                    os_version: "12".into(),
                    kernel_version: "6.1.0-loadgen".into(),
                    arch: "x86_64".into(),
                }),
                capabilities: [
                    "host",
                    "disk",
                    "filesystem",
                    "network",
                    "pressure",
                    "agent",
                    "tcp",
                    "icmp",
                    "dns",
                ]
                .into_iter()
                .map(String::from)
                .collect(),
                collection_interval_ms: self.interval_ms,
                last_seq,
                features: infrawatch_common::ack::agent_features(),
            })),
        }
        .encode_to_vec()
    }

    /// Encodes batch `seq` taken at `ts_ms` and sent at `sent_at_ms` as an
    /// `AgentMessage` into `out` (cleared first); `failing` reports the TCP probe
    /// refused. `counters` holds the state of counter series between batches.
    /// Returns the length of the encoded `Batch` (without the message framing).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_batch(
        &self,
        seq: u64,
        ts_ms: i64,
        sent_at_ms: i64,
        failing: bool,
        rng: &mut Rng,
        counters: &mut Vec<f64>,
        out: &mut Vec<u8>,
    ) -> usize {
        out.clear();
        let resources = if failing {
            &self.resources_failing
        } else {
            &self.resources_ok
        };
        let n = self.specs.len();
        let values_len = 8 * n;
        let columns_len = self.static_columns.len()
            + varint_len(tag(3, 2))
            + varint_len(values_len as u64)
            + values_len;
        let body_len = varint_len(tag(1, 0))
            + varint_len(seq)
            + varint_len(tag(2, 0))
            + varint_len(ts_ms as u64)
            + resources.len()
            + self.dictionary.len()
            + varint_len(tag(6, 2))
            + varint_len(columns_len as u64)
            + columns_len
            + varint_len(tag(8, 0))
            + varint_len(sent_at_ms as u64);
        out.reserve(body_len + 8);
        // AgentMessage.batch (field 2).
        put_varint(out, tag(2, 2));
        put_varint(out, body_len as u64);
        put_varint(out, tag(1, 0));
        put_varint(out, seq);
        put_varint(out, tag(2, 0));
        put_varint(out, ts_ms as u64);
        out.extend_from_slice(resources);
        out.extend_from_slice(&self.dictionary);
        put_varint(out, tag(6, 2));
        put_varint(out, columns_len as u64);
        out.extend_from_slice(&self.static_columns);
        put_varint(out, tag(3, 2));
        put_varint(out, values_len as u64);
        counters.resize(n, 0.0);
        for (i, sp) in self.specs.iter().enumerate() {
            let v = if failing && Some(i) == self.tcp_success {
                0.0
            } else {
                match sp.values {
                    Gen::Const(c) => c,
                    Gen::Uniform(lo, hi) => lo + (hi - lo) * rng.unit(),
                    Gen::Counter(step) => {
                        counters[i] += step;
                        counters[i]
                    }
                }
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_varint(out, tag(8, 0));
        put_varint(out, sent_at_ms as u64);
        body_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrawatch_aggregator::sources::agent::decode::{Limits, decode};

    fn batch_of(bytes: &[u8]) -> Batch {
        match AgentMessage::decode(bytes).unwrap().body {
            Some(Body::Batch(b)) => b,
            other => panic!("not a batch: {other:?}"),
        }
    }

    #[test]
    fn batches_are_what_the_aggregator_accepts() {
        for series in [1, 10, DEFAULT_SERIES, 400] {
            let m = AgentModel::new(7, "loadgen-00007", series, 1000);
            assert_eq!(m.series, series);
            let (mut rng, mut counters, mut out) = (Rng::new(7), Vec::new(), Vec::new());
            let now = infrawatch_common::time::now_unix_ms();
            m.encode_batch(42, now, now + 3, false, &mut rng, &mut counters, &mut out);
            let b = batch_of(&out);
            assert_eq!(
                (b.seq, b.base_time_unix_ms, b.sent_at_unix_ms),
                (42, now, now + 3)
            );
            let d = decode(b.clone(), now, &Limits::default()).unwrap();
            assert_eq!(d.sample_count, series, "every sample kept");
            assert_eq!(d.dropped_non_finite + d.dropped_out_of_range, 0);
            assert!(
                d.resources
                    .iter()
                    .any(|r| r.id == m.host_id && r.kind == "host")
            );
            // The hand-made bytes are exactly what prost makes of the same batch.
            let again = AgentMessage {
                body: Some(Body::Batch(b)),
            };
            assert_eq!(again.encoded_len(), out.len());
        }
    }

    #[test]
    fn the_default_mix_mirrors_the_agent() {
        let m = AgentModel::new(1, "loadgen-00001", DEFAULT_SERIES, 1000);
        let (mut rng, mut counters, mut out) = (Rng::new(1), Vec::new(), Vec::new());
        m.encode_batch(1, 1_000, 1_000, false, &mut rng, &mut counters, &mut out);
        let d = decode(batch_of(&out), 1_000, &Limits::default()).unwrap();
        // Everything is the agent's own machine's, as the aggregator requires.
        for r in &d.resources {
            assert!(
                infrawatch_common::resource::agent_may_report("lg000001", &r.id),
                "{} is not the agent's to report",
                r.id
            );
        }
        let kinds: std::collections::BTreeSet<&str> =
            d.resources.iter().map(|r| r.kind.as_str()).collect();
        for k in [
            "host",
            "agent",
            "icmp_probe",
            "dns_probe",
            "tcp_probe",
            "k8s_pod",
        ] {
            assert!(kinds.contains(k), "{k} missing from {kinds:?}");
        }
        let metrics: std::collections::BTreeSet<&str> =
            d.series.iter().map(|s| &*s.key.metric).collect();
        for name in [
            metric::CPU_UTILIZATION,
            metric::MEMORY_UTILIZATION,
            metric::CPU_LOAD_AVERAGE_1M,
            metric::UPTIME,
            "system.disk.io.rate",
            "system.filesystem.usage",
            "system.network.io.rate",
            "system.linux.pressure",
        ] {
            assert!(metrics.contains(name), "{name} missing");
        }
        // Every series is distinct.
        assert_eq!(d.series.len(), DEFAULT_SERIES);
        // About 10 bytes a sample plus the per-batch dictionary.
        let per_sample = out.len() as f64 / DEFAULT_SERIES as f64;
        assert!(
            (10.0..80.0).contains(&per_sample),
            "{per_sample} bytes/sample"
        );
    }

    #[test]
    fn a_failing_probe_is_reported_refused() {
        let m = AgentModel::new(3, "loadgen-00003", DEFAULT_SERIES, 1000);
        let (mut rng, mut counters, mut out) = (Rng::new(3), Vec::new(), Vec::new());
        m.encode_batch(5, 2_000, 2_000, true, &mut rng, &mut counters, &mut out);
        let d = decode(batch_of(&out), 2_000, &Limits::default()).unwrap();
        let probe = d.resources.iter().find(|r| r.id == m.tcp_probe_id).unwrap();
        assert_eq!(probe.attributes["tcp.result"], "refused");
        let verdict =
            infrawatch_aggregator::health::evaluate_probe(&probe.kind, &probe.attributes).unwrap();
        assert_eq!(verdict.0, infrawatch_aggregator::model::Health::Unhealthy);
        let success = d
            .series
            .iter()
            .find(|s| {
                *s.key.resource_id == *m.tcp_probe_id && &*s.key.metric == "tcp.connect.success"
            })
            .unwrap();
        assert_eq!(success.points[0].1, 0.0);
    }

    #[test]
    fn counters_grow_and_varints_have_the_right_length() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
        let m = AgentModel::new(2, "loadgen-00002", DEFAULT_SERIES, 1000);
        let (mut rng, mut counters, mut out) = (Rng::new(2), Vec::new(), Vec::new());
        m.encode_batch(1, 1_000, 1_000, false, &mut rng, &mut counters, &mut out);
        m.encode_batch(2, 2_000, 2_000, false, &mut rng, &mut counters, &mut out);
        let d = decode(batch_of(&out), 2_000, &Limits::default()).unwrap();
        let uptime = d
            .series
            .iter()
            .find(|s| &*s.key.metric == metric::UPTIME)
            .unwrap();
        assert_eq!(uptime.points[0].1, 2.0);
    }
}
