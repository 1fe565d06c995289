//! Collectors: each one observes one part of the host and reports resources and
//! samples. The scheduler runs every enabled collector on its own interval and
//! deadline, so a slow or failing collector never holds up the others.

pub mod agent;
pub mod disk;
pub mod dns;
pub mod filesystem;
pub mod fill_trend;
pub mod filter;
pub mod gpu;
pub mod host;
pub mod icmp;
pub mod kernel;
pub mod kubelet;
pub mod network;
pub mod pressure;
pub mod proc_file;
pub mod tcp;

use std::borrow::Cow;
use std::collections::BTreeMap;

use infrawatch_common::resource;

use crate::config::{AgentConfig, CollectorSchedule};

/// A resource as one collector sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedResource {
    /// Resource id, e.g. `host/<machine-id>`.
    pub id: String,
    /// Resource kind, e.g. `host`.
    pub kind: &'static str,
    /// Labels used for selection (bounded values only).
    pub labels: BTreeMap<String, String>,
    /// Descriptive attributes.
    pub attributes: BTreeMap<String, String>,
    /// Outgoing relations: (type, target id), e.g. ("runs_on", "host/...").
    pub relations: Vec<(String, String)>,
    /// How often this resource is observed, for stale detection.
    pub interval_ms: u32,
}

/// One value of one series at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Id of the resource the series belongs to.
    pub resource_id: String,
    /// Metric name (OpenTelemetry semantic conventions).
    pub metric: Cow<'static, str>,
    /// Series attributes, e.g. `("cpu", "0")`.
    pub attributes: Vec<(Cow<'static, str>, String)>,
    /// Unix epoch milliseconds.
    pub timestamp_ms: i64,
    /// The value.
    pub value: f64,
}

/// What one run of a collector produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Collection {
    /// Resources described.
    pub resources: Vec<ObservedResource>,
    /// Samples taken.
    pub samples: Vec<Sample>,
}

impl Collection {
    /// Describes part `name` of kind `part_kind` (a filesystem, disk or
    /// interface) of host `host_id`, `part_of` the host, and returns its id.
    pub fn part(
        &mut self,
        host_id: &str,
        part_kind: &'static str,
        name: &str,
        attributes: BTreeMap<String, String>,
        interval_ms: u32,
    ) -> String {
        let id = resource::part_id(host_id, part_kind, name);
        self.resources.push(ObservedResource {
            id: id.clone(),
            kind: part_kind,
            labels: BTreeMap::new(),
            attributes,
            relations: vec![(resource::PART_OF.into(), host_id.to_string())],
            interval_ms,
        });
        id
    }

    /// Adds a sample.
    pub fn sample(
        &mut self,
        resource_id: &str,
        metric: &'static str,
        attributes: &[(&'static str, &str)],
        timestamp_ms: i64,
        value: f64,
    ) {
        self.samples.push(Sample {
            resource_id: resource_id.to_string(),
            metric: Cow::Borrowed(metric),
            attributes: attributes
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), (*v).to_string()))
                .collect(),
            timestamp_ms,
            value,
        });
    }
}

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A source file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A source file did not have the expected format.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A remote source (an HTTP endpoint) could not be reached, refused the
    /// request or did not answer in time.
    #[error("{url}: {reason}")]
    Remote {
        /// The endpoint.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// One probe of the host.
///
/// Contract: `collect` is never called concurrently on one instance. On partial
/// failure it keeps what it pushed into `out` and returns the error; the scheduler
/// counts the error and still sends what was collected.
#[async_trait::async_trait]
pub trait Collector: Send {
    /// Stable snake_case name: the config key and the `collector` label.
    fn name(&self) -> &'static str;
    /// Observes once.
    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError>;
    /// True when a run may block its thread for long (calls into a driver library,
    /// say): the scheduler then runs it on the blocking pool.
    fn may_block(&self) -> bool {
        false
    }
    /// True when a run only reads the local kernel (procfs, sysfs, system
    /// calls) and never waits on anything else: local collectors sharing an
    /// interval run together, on one wake-up (see the scheduler).
    fn is_local(&self) -> bool {
        false
    }
}

/// A collector with its schedule.
pub struct ScheduledCollector {
    /// The collector.
    pub collector: Box<dyn Collector>,
    /// When it runs.
    pub schedule: CollectorSchedule,
}

fn interval(s: &CollectorSchedule) -> u32 {
    u32::try_from(s.interval_ms).unwrap_or(u32::MAX)
}

/// Builds the enabled collectors; `host_id` is the host resource their series
/// belong to.
pub fn build_collectors(
    cfg: &AgentConfig,
    host_id: &str,
) -> Result<Vec<ScheduledCollector>, CollectError> {
    let c = &cfg.collectors;
    let paths = &cfg.host;
    let id = host_id.to_string();
    let mut out = Vec::new();
    let mut add = |schedule: CollectorSchedule, collector: Box<dyn Collector>| {
        if schedule.enabled {
            out.push(ScheduledCollector {
                collector,
                schedule,
            });
        }
    };
    if c.host.enabled {
        add(
            c.host,
            Box::new(host::HostCollector::new(
                paths,
                interval(&c.host),
                &cfg.node_name,
            )?),
        );
    }
    add(
        c.disk.schedule(),
        Box::new(disk::DiskCollector::new(
            id.clone(),
            paths.proc.clone(),
            paths.sys.clone(),
            c.disk.filter(),
            interval(&c.disk.schedule()),
        )),
    );
    add(
        c.filesystem.schedule(),
        Box::new(filesystem::FilesystemCollector::with_trend(
            id.clone(),
            paths.proc.clone(),
            paths.root.clone(),
            c.filesystem.filter(),
            interval(&c.filesystem.schedule()),
            c.filesystem_trend,
        )),
    );
    // Files more than one collector has figures from are read by one of them
    // when it runs (the kernel generates some at a cost: /proc/stat walks every
    // interrupt): /proc/stat by host, /proc/vmstat by pressure, /proc/net/netstat
    // by network, /proc/net/sockstat by kernel. The others read them only when
    // that one is off.
    let network_on = c.network.schedule().enabled;
    add(
        c.network.schedule(),
        Box::new(
            network::NetworkCollector::new(
                id.clone(),
                paths.proc.clone(),
                paths.sys.clone(),
                c.network.filter(),
                interval(&c.network.schedule()),
            )
            .with_listening_interval(std::time::Duration::from_millis(c.listening_interval_ms))
            .with_sockstat(!c.kernel.enabled),
        ),
    );
    add(
        c.pressure,
        Box::new(
            pressure::PressureCollector::new(id.clone(), paths.proc.clone())
                .with_stat(!c.host.enabled),
        ),
    );
    add(
        c.kernel,
        Box::new(
            kernel::KernelCollector::new(id.clone(), paths.proc.clone(), paths.sys.clone())
                .with_stat(!c.host.enabled)
                .with_vmstat(!c.pressure.enabled)
                .with_netstat(!network_on),
        ),
    );
    if c.dns.schedule().enabled {
        // A DNS set-up problem (e.g. an unreadable resolv.conf) costs the DNS
        // probes, not the agent.
        match dns::DnsCollector::new(id.clone(), interval(&c.dns.schedule()), &c.dns.probes) {
            Ok(d) => add(c.dns.schedule(), Box::new(d)),
            Err(e) => tracing::error!(
                error = &e as &dyn std::error::Error,
                "DNS probes cannot run."
            ),
        }
    }
    add(
        c.tcp.schedule(),
        Box::new(tcp::TcpCollector::new(
            id.clone(),
            interval(&c.tcp.schedule()),
            &c.tcp.probes,
        )),
    );
    add(
        c.icmp.schedule(),
        Box::new(icmp::IcmpCollector::new(
            id.clone(),
            interval(&c.icmp.schedule()),
            &c.icmp.probes,
        )),
    );
    add(
        c.kubelet.schedule(),
        Box::new(kubelet::KubeletCollector::new(
            id.clone(),
            interval(&c.kubelet.schedule()),
            &c.kubelet,
        )),
    );
    add(
        c.gpu,
        Box::new(gpu::GpuCollector::new(id, interval(&c.gpu), None)),
    );
    Ok(out)
}

/// Helpers for the collectors' tests: fake proc and sys trees, and reading a
/// sample back.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use super::Collection;

    /// Writes `text` at `rel` under `root`, creating its directories.
    pub(crate) fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// The value of the sample of `metric` whose attributes are exactly
    /// `attrs`, in any order.
    pub(crate) fn value(out: &Collection, metric: &str, attrs: &[(&str, &str)]) -> Option<f64> {
        out.samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.attributes.len() == attrs.len()
                    && attrs
                        .iter()
                        .all(|(k, v)| s.attributes.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use super::*;

    /// The collectors that read this machine's procfs and sysfs, as the agent
    /// builds them with its defaults.
    fn local_collectors() -> Vec<ScheduledCollector> {
        let local = [
            "host",
            "disk",
            "filesystem",
            "network",
            "pressure",
            "kernel",
        ];
        let mut all = build_collectors(&AgentConfig::default(), "host/test").unwrap();
        all.retain(|c| local.contains(&c.collector.name()));
        assert_eq!(all.len(), local.len());
        all
    }

    /// A series: resource, metric and attributes.
    fn series(s: &Sample) -> String {
        let attrs: Vec<String> = s
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{} {} {}", s.resource_id, s.metric, attrs.join(","))
    }

    /// Runs every local collector twice (rates need two readings) against this
    /// machine and counts the series of the second run, per collector and for
    /// the host and its parts (`cargo test ... series_on_this_machine --
    /// --nocapture` prints them). Each series comes from one collector only:
    /// files more than one could read are read by one.
    #[tokio::test]
    async fn series_on_this_machine() {
        let ids = ["/etc/machine-id", "/var/lib/dbus/machine-id"];
        if !ids.iter().any(|p| std::path::Path::new(p).exists()) {
            eprintln!("skipped: the host collector needs a machine id");
            return;
        }
        let mut collectors = local_collectors();
        for c in &mut collectors {
            let _ = c.collector.collect(&mut Collection::default()).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut owner: BTreeMap<String, &'static str> = BTreeMap::new();
        let mut per_collector = BTreeMap::new();
        for c in &mut collectors {
            let mut out = Collection::default();
            let name = c.collector.name();
            // A file this machine lacks fails its part only; the rest counts.
            if let Err(e) = c.collector.collect(&mut out).await {
                eprintln!("{name}: {e}");
            }
            per_collector.insert(name, out.samples.len());
            for s in &out.samples {
                if let Some(other) = owner.insert(series(s), name) {
                    panic!("{} from {other} and {name}", series(s));
                }
            }
        }
        let parts = owner
            .keys()
            .filter(|k| {
                k.split(' ')
                    .next()
                    .and_then(resource::host_of_part)
                    .is_some()
            })
            .count();
        let host = owner.len() - parts;
        let metrics: BTreeSet<&str> = owner.keys().filter_map(|k| k.split(' ').nth(1)).collect();
        eprintln!("samples per collector: {per_collector:?}");
        eprintln!(
            "series: {} ({host} on the host, {parts} on its parts), {} metric names",
            owner.len(),
            metrics.len()
        );
        assert!(host > 100, "{host}");
    }
}
