//! Resource ids, kinds, health names, metric names and series attributes: the
//! vocabulary that agents, the aggregator and clients must agree on.

use infrawatch_proto::v1::Health;

/// Longest resource id accepted.
pub const MAX_RESOURCE_ID_LEN: usize = 512;
/// Longest label or attribute key.
pub const MAX_LABEL_KEY_LEN: usize = 128;
/// Longest label or attribute value.
pub const MAX_LABEL_VALUE_LEN: usize = 1024;
/// Most labels plus attributes on one resource.
pub const MAX_LABELS_PER_RESOURCE: usize = 128;
/// Shortest reporting interval a resource may announce, in ms.
pub const MIN_INTERVAL_MS: u32 = 100;
/// Longest reporting interval a resource may announce, in ms (one hour): a
/// resource whose reporter goes silent turns UNKNOWN after a few intervals, so
/// none may stay fresh for ever.
pub const MAX_INTERVAL_MS: u32 = 3_600_000;

/// Resource kinds known to this version.
pub mod kind {
    /// A machine running an agent: `host/<machine-id>`.
    pub const HOST: &str = "host";
    /// A pod's usage as its node's kubelet reports it:
    /// `host/<machine-id>/pod/<namespace>/<pod>`.
    pub const K8S_POD_USAGE: &str = "k8s_pod_usage";
    /// A PVC-backed volume's usage as the kubelet of the node mounting it reports
    /// it: `host/<machine-id>/volume/<namespace>/<claim>`.
    pub const K8S_VOLUME_USAGE: &str = "k8s_volume_usage";

    /// A mounted filesystem of a host: `host/<machine-id>/filesystem/<mount>`
    /// (see [`super::part_id`]).
    pub const FILESYSTEM: &str = "filesystem";
    /// A whole block device of a host: `host/<machine-id>/disk/<device>`.
    pub const DISK: &str = "disk";
    /// A network interface of a host: `host/<machine-id>/interface/<name>`.
    pub const NETWORK_INTERFACE: &str = "network_interface";

    /// The parts of a host: resources of their own (health, events), `part_of`
    /// the host, whose health the host's rolls up.
    pub const HOST_PARTS: [&str; 3] = [FILESYSTEM, DISK, NETWORK_INTERFACE];

    /// Kinds whose resources come and go with what they measure (a pod's usage
    /// ends with the pod, a filesystem with its mount): once such a resource has
    /// been silent for [`super::TRANSIENT_REMOVE_AFTER_INTERVALS`] intervals
    /// (ten minutes at least), the aggregator removes it, so an agent's
    /// footprint follows what its node runs now.
    pub const TRANSIENT: [&str; 5] = [
        K8S_POD_USAGE,
        K8S_VOLUME_USAGE,
        FILESYSTEM,
        DISK,
        NETWORK_INTERFACE,
    ];
}

/// Relation from a host's part to its host.
pub const PART_OF: &str = "part_of";

/// The id segment of each part kind: `filesystem`, `disk`, `interface`.
pub fn part_segment(part_kind: &str) -> &'static str {
    match part_kind {
        kind::FILESYSTEM => "filesystem",
        kind::DISK => "disk",
        _ => "interface",
    }
}

/// The id of part `name` of kind `part_kind` of host `host_id`:
/// `<host_id>/<segment>/<name>`. A filesystem's name is its mount point with
/// `/` written as `root` (`/` is `.../filesystem/root`, `/var/lib` is
/// `.../filesystem/root/var/lib`). Bytes outside printable ASCII, `%`, and a
/// `/` in another part's name are written `%XX`.
pub fn part_id(host_id: &str, part_kind: &str, name: &str) -> String {
    let mut id = format!("{host_id}/{}/", part_segment(part_kind));
    if part_kind == kind::FILESYSTEM {
        id.push_str("root");
        for segment in name.split('/').filter(|s| !s.is_empty()) {
            id.push('/');
            escape_into(&mut id, segment);
        }
    } else if name.is_empty() {
        id.push_str("%00");
    } else {
        escape_into(&mut id, name);
    }
    id
}

/// Appends `segment`, with bytes outside printable ASCII, `%` and `/` as `%XX`.
fn escape_into(out: &mut String, segment: &str) {
    for b in segment.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b'/' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The host a part belongs to (`host/<machine-id>`), if `id` is the id of a
/// part ([`part_id`]).
pub fn host_of_part(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("host/")?;
    let (machine, rest) = rest.split_once('/')?;
    let (segment, name) = rest.split_once('/')?;
    let is_part = [kind::FILESYSTEM, kind::DISK, kind::NETWORK_INTERFACE]
        .iter()
        .any(|k| part_segment(k) == segment);
    (is_part && !name.is_empty()).then(|| &id[..5 + machine.len()])
}

/// Silent intervals after which a resource of a transient kind is removed.
pub const TRANSIENT_REMOVE_AFTER_INTERVALS: i64 = 20;
/// ... but never sooner than this (ms).
pub const TRANSIENT_REMOVE_AFTER_MIN_MS: i64 = 600_000;

/// Metric names, following the OpenTelemetry semantic conventions.
pub mod metric {
    /// CPU time fraction in use, 0..1; attribute `cpu` for a core, none for the total.
    pub const CPU_UTILIZATION: &str = "system.cpu.utilization";
    /// Number of logical CPUs.
    pub const CPU_LOGICAL_COUNT: &str = "system.cpu.logical.count";
    /// One-minute load average.
    pub const CPU_LOAD_AVERAGE_1M: &str = "system.cpu.load_average.1m";
    /// Five-minute load average.
    pub const CPU_LOAD_AVERAGE_5M: &str = "system.cpu.load_average.5m";
    /// Fifteen-minute load average.
    pub const CPU_LOAD_AVERAGE_15M: &str = "system.cpu.load_average.15m";
    /// Memory in bytes by `state` (used, free, buffers, cached).
    pub const MEMORY_USAGE: &str = "system.memory.usage";
    /// Total physical memory in bytes.
    pub const MEMORY_LIMIT: &str = "system.memory.limit";
    /// Memory available for new work without swapping (MemAvailable), bytes.
    pub const MEMORY_AVAILABLE: &str = "system.linux.memory.available";
    /// Fraction of memory in use (total minus available), 0..1.
    pub const MEMORY_UTILIZATION: &str = "system.memory.utilization";
    /// Swap in bytes by `state` (used, free).
    pub const PAGING_USAGE: &str = "system.paging.usage";
    /// Fraction of swap in use, 0..1 (0 without swap).
    pub const PAGING_UTILIZATION: &str = "system.paging.utilization";
    /// Seconds since boot.
    pub const UPTIME: &str = "system.uptime";
    /// CPU time since boot in seconds by `cpu` (each core) and `state` (user,
    /// nice, system, idle, iowait, irq, softirq, steal); cumulative.
    pub const CPU_TIME: &str = "system.cpu.time";
    /// Time spent running guests' virtual CPUs since boot, in seconds, by `cpu`
    /// and `state` (user, nice); cumulative, and already counted in
    /// [`CPU_TIME`]'s user and nice.
    pub const CPU_GUEST_TIME: &str = "system.linux.cpu.guest_time";
    /// Context switches since boot; cumulative.
    pub const CONTEXT_SWITCHES: &str = "system.linux.context_switches";
    /// Interrupts serviced since boot; cumulative.
    pub const INTERRUPTS: &str = "system.linux.interrupts";
    /// Softirqs handled since boot by `type` (hi, timer, net_tx, net_rx, block,
    /// irq_poll, tasklet, sched, hrtimer, rcu); cumulative.
    pub const SOFTIRQS: &str = "system.linux.softirqs";
    /// Processes and threads created since boot (forks); cumulative.
    pub const PROCESSES_CREATED: &str = "system.processes.created";
    /// Tasks by `status`: `running` (runnable) and `blocked` (waiting for I/O).
    pub const PROCESSES_COUNT: &str = "system.processes.count";
    /// When the host booted, Unix seconds.
    pub const BOOT_TIME: &str = "system.boot_time";
    /// Every field of `/proc/meminfo` by `field` (its name there, e.g.
    /// `Active(anon)`), in bytes; the `HugePages_*` fields are page counts.
    pub const MEMINFO: &str = "system.linux.meminfo";
    /// The host's clock when sampled, Unix seconds.
    pub const TIME: &str = "system.time";

    // Kubelet Summary API figures, named as the OpenTelemetry kubeletstats
    // receiver names them.

    /// CPU in use by a pod, in cores.
    pub const K8S_POD_CPU_USAGE: &str = "k8s.pod.cpu.usage";
    /// A pod's memory working set, bytes.
    pub const K8S_POD_MEMORY_WORKING_SET: &str = "k8s.pod.memory.working_set";
    /// A pod's memory usage (page cache included), bytes.
    pub const K8S_POD_MEMORY_USAGE: &str = "k8s.pod.memory.usage";
    /// Bytes a pod received or sent since it started, by `direction`
    /// (`receive`, `transmit`); cumulative.
    pub const K8S_POD_NETWORK_IO: &str = "k8s.pod.network.io";
    /// A pod's ephemeral storage in use, bytes.
    pub const K8S_POD_FILESYSTEM_USAGE: &str = "k8s.pod.filesystem.usage";
    /// CPU in use by a container, in cores; attribute `k8s.container.name`.
    pub const K8S_CONTAINER_CPU_USAGE: &str = "k8s.container.cpu.usage";
    /// A container's memory working set, bytes; attribute `k8s.container.name`.
    pub const K8S_CONTAINER_MEMORY_WORKING_SET: &str = "k8s.container.memory.working_set";
    /// Bytes still available on a volume.
    pub const K8S_VOLUME_AVAILABLE: &str = "k8s.volume.available";
    /// A volume's size, bytes.
    pub const K8S_VOLUME_CAPACITY: &str = "k8s.volume.capacity";
    /// Free inodes of a volume.
    pub const K8S_VOLUME_INODES_FREE: &str = "k8s.volume.inodes.free";
    /// Inodes of a volume.
    pub const K8S_VOLUME_INODES: &str = "k8s.volume.inodes";
}

/// Lower-case name of a health value as used in REST, the CLI and the database.
pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Healthy => "healthy",
        Health::Degraded => "degraded",
        Health::Unhealthy => "unhealthy",
        Health::Unknown | Health::Unspecified => "unknown",
    }
}

/// Parses a health name (`healthy`, `degraded`, `unhealthy`, `unknown`), any case.
pub fn parse_health(name: &str) -> Option<Health> {
    match name.to_ascii_lowercase().as_str() {
        "healthy" => Some(Health::Healthy),
        "degraded" => Some(Health::Degraded),
        "unhealthy" => Some(Health::Unhealthy),
        "unknown" => Some(Health::Unknown),
        _ => None,
    }
}

/// The id of the host resource for a machine id.
pub fn host_id(machine_id: &str) -> String {
    format!("host/{machine_id}")
}

/// First segments of the resources an agent reports about its own machine
/// `M`: `host/M` and what hangs off it (`host/M/listening`, ...), `agent/M`,
/// `gpu/M/...` and `probe/M/...`.
pub const AGENT_PREFIXES: [&str; 4] = ["host", "agent", "gpu", "probe"];

/// True when an agent on machine `machine_id` may report resource `id`: one of
/// [`AGENT_PREFIXES`] followed by its own machine id, nothing else.
pub fn agent_may_report(machine_id: &str, id: &str) -> bool {
    let mut segments = id.splitn(3, '/');
    match (segments.next(), segments.next()) {
        (Some(prefix), Some(machine)) => {
            !machine_id.is_empty() && machine == machine_id && AGENT_PREFIXES.contains(&prefix)
        }
        _ => false,
    }
}

/// Checks a resource id: non-empty, at most [`MAX_RESOURCE_ID_LEN`] bytes, segments
/// separated by `/` with no empty segment, and only printable ASCII without spaces.
pub fn validate_resource_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("resource id is empty".into());
    }
    if id.len() > MAX_RESOURCE_ID_LEN {
        return Err(format!(
            "resource id is {} bytes, the limit is {MAX_RESOURCE_ID_LEN}",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("resource id {id:?} contains {c:?}"));
    }
    if id.split('/').any(str::is_empty) {
        return Err(format!("resource id {id:?} has an empty segment"));
    }
    Ok(())
}

/// Checks a label or attribute key and value against the limits.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN {
        return Err(format!(
            "label key {key:?} must be 1 to {MAX_LABEL_KEY_LEN} bytes"
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(format!(
            "label key {key:?} may only hold letters, digits, '.', '_', '-' and '/'"
        ));
    }
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err(format!(
            "value of label {key:?} is {} bytes, the limit is {MAX_LABEL_VALUE_LEN}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "value of label {key:?} contains a control character"
        ));
    }
    Ok(())
}

/// A label value made acceptable: control characters removed and cut to
/// [`MAX_LABEL_VALUE_LEN`] bytes at a character boundary.
pub fn sanitize_label_value(value: &str) -> String {
    clean_label_value(value).into_owned()
}

/// [`sanitize_label_value`] without a copy when the value is already clean
/// (the usual case, on hot paths).
pub fn clean_label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_LABEL_VALUE_LEN && !value.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out: String = value.chars().filter(|c| !c.is_control()).collect();
    if out.len() > MAX_LABEL_VALUE_LEN {
        let mut cut = MAX_LABEL_VALUE_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    std::borrow::Cow::Owned(out)
}

/// Checks a metric name: 1 to 255 letters, digits, '.', '_' or '-'.
pub fn validate_metric_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "metric name {name:?} must be 1 to 255 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// Canonical text of series attributes: `k="v"` pairs sorted by key, joined by `,`.
/// Quotes and backslashes in values are escaped; an empty set gives "".
pub fn canonical_attributes<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
    pairs.sort_unstable();
    let mut out = String::new();
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn part_ids_are_valid_and_name_their_host() {
        let h = "host/m1";
        assert_eq!(part_id(h, kind::FILESYSTEM, "/"), "host/m1/filesystem/root");
        assert_eq!(
            part_id(h, kind::FILESYSTEM, "/var/lib/my disk"),
            "host/m1/filesystem/root/var/lib/my%20disk"
        );
        assert_eq!(
            part_id(h, kind::FILESYSTEM, "/root"),
            "host/m1/filesystem/root/root"
        );
        assert_eq!(part_id(h, kind::DISK, "nvme0n1"), "host/m1/disk/nvme0n1");
        assert_eq!(
            part_id(h, kind::NETWORK_INTERFACE, "a/b%"),
            "host/m1/interface/a%2Fb%25"
        );
        for name in ["/", "//x//y", "/\u{e9}\t", ""] {
            let id = part_id(h, kind::FILESYSTEM, name);
            assert!(validate_resource_id(&id).is_ok(), "{id}");
            assert_eq!(host_of_part(&id), Some(h));
            assert!(agent_may_report("m1", &id));
        }
        assert!(validate_resource_id(&part_id(h, kind::DISK, "")).is_ok());
        assert_eq!(host_of_part("gpu/m1/0"), None);
        assert_eq!(host_of_part("host/m1"), None);
        assert_eq!(host_of_part("host/m1/listening"), None);
        assert_eq!(host_of_part("host/m1/pod/ns/p"), None);
    }

    use super::*;

    #[test]
    fn an_agent_reports_its_own_machine_and_what_hangs_off_it() {
        for own in [
            "host/m1",
            "host/m1/listening",
            "host/m1/pod/default/web-0",
            "host/m1/volume/default/data-web-0",
            "agent/m1",
            "gpu/m1/GPU-0",
            "probe/m1/icmp/198.18.0.2",
            "probe/m1/dns/example.org/a/127.0.0.1:53",
        ] {
            assert!(agent_may_report("m1", own), "{own}");
        }
        for other in [
            "host/m2",
            "host/m2/listening",
            "agent/m2",
            "gpu/m2/GPU-0",
            "probe/m12/icmp/x",
            "service/m1/api",
            "k8s/m1/pod/x",
            "host",
            "",
        ] {
            assert!(!agent_may_report("m1", other), "{other}");
        }
        assert!(!agent_may_report("", "host/"));
    }

    #[test]
    fn ids() {
        assert!(validate_resource_id("host/3d1219c7").is_ok());
        assert!(validate_resource_id("k8s/prod/pod/default/web-1").is_ok());
        assert!(validate_resource_id("").is_err());
        assert!(validate_resource_id("host//x").is_err());
        assert!(validate_resource_id("host/a b").is_err());
        assert!(validate_resource_id(&"a".repeat(513)).is_err());
    }

    #[test]
    fn attributes_are_sorted_and_escaped() {
        assert_eq!(canonical_attributes([]), "");
        assert_eq!(
            canonical_attributes([("state", "used"), ("cpu", "0")]),
            "cpu=\"0\",state=\"used\""
        );
        assert_eq!(canonical_attributes([("k", "a\"b")]), "k=\"a\\\"b\"");
    }

    #[test]
    fn health_names_round_trip() {
        for h in [
            Health::Healthy,
            Health::Degraded,
            Health::Unhealthy,
            Health::Unknown,
        ] {
            assert_eq!(parse_health(health_name(h)), Some(h));
        }
        assert_eq!(parse_health("sick"), None);
    }

    #[test]
    fn sanitized_values_fit_and_never_split_a_character() {
        let long = "é".repeat(600);
        let v = sanitize_label_value(&long);
        assert!(v.len() <= MAX_LABEL_VALUE_LEN && validate_label("k", &v).is_ok());
        assert_eq!(sanitize_label_value("a\tb\nc"), "abc");
        assert!(
            matches!(
                clean_label_value("eth0"),
                std::borrow::Cow::Borrowed("eth0")
            ),
            "a clean value is not copied"
        );
        assert!(validate_metric_name("system.cpu.utilization").is_ok());
        assert!(validate_metric_name("bad name").is_err());
    }

    #[test]
    fn labels() {
        assert!(validate_label("host.name", "x").is_ok());
        assert!(validate_label("", "x").is_err());
        assert!(validate_label("bad key", "x").is_err());
        assert!(validate_label("k", &"v".repeat(2000)).is_err());
    }
}
