//! The agent's own health as a resource, `agent/<machine-id>` (kind `agent`,
//! `runs_on` the host): per collector its last run time, duration and failures; the
//! process's CPU and memory; batches dropped. The attribute
//! `agent.failing_collectors` names the collectors whose last run failed, which the
//! aggregator turns into a DEGRADED agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use infrawatch_common::time::now_unix_ms;

use super::{CollectError, Collection, Collector, ObservedResource};
use crate::buffer::DiskBuffer;
use crate::self_health::{SelfHealth, process_usage};

/// The self-health collector.
pub struct AgentCollector {
    host_id: String,
    resource_id: String,
    interval_ms: u32,
    name: String,
    health: SelfHealth,
    buffer: Arc<DiskBuffer>,
    proc_self: PathBuf,
    previous_cpu: Option<(f64, Instant)>,
}

impl AgentCollector {
    /// Reports on this agent, running on `host_id`.
    pub fn new(
        host_id: String,
        interval_ms: u32,
        name: String,
        health: SelfHealth,
        buffer: Arc<DiskBuffer>,
    ) -> Self {
        Self {
            resource_id: format!("agent/{}", host_id.trim_start_matches("host/")),
            host_id,
            interval_ms,
            name,
            health,
            buffer,
            proc_self: PathBuf::from("/proc/self"),
            previous_cpu: None,
        }
    }
}

#[async_trait::async_trait]
impl Collector for AgentCollector {
    fn name(&self) -> &'static str {
        "agent"
    }
    fn is_local(&self) -> bool {
        true
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let ts = now_unix_ms();
        let id = self.resource_id.clone();
        let statuses = self.health.snapshot();
        let failing: Vec<&str> = statuses
            .iter()
            .filter(|(_, s)| s.last_error.is_some())
            .map(|(n, _)| *n)
            .collect();
        let mut attributes = BTreeMap::new();
        attributes.insert("service.name".to_string(), "infrawatch-agent".to_string());
        attributes.insert(
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        attributes.insert("agent.name".to_string(), self.name.clone());
        attributes.insert("agent.failing_collectors".to_string(), failing.join(","));
        out.resources.push(ObservedResource {
            id: id.clone(),
            kind: "agent",
            labels: BTreeMap::new(),
            attributes,
            relations: vec![("runs_on".into(), self.host_id.clone())],
            interval_ms: self.interval_ms,
        });
        for (name, s) in &statuses {
            let attrs = [("collector", *name)];
            out.sample(
                &id,
                "infrawatch.agent.collector.duration",
                &attrs,
                ts,
                s.last_duration.as_secs_f64(),
            );
            out.sample(
                &id,
                "infrawatch.agent.collector.last_run",
                &attrs,
                ts,
                s.last_run_ms as f64 / 1000.0,
            );
            out.sample(
                &id,
                "infrawatch.agent.collector.failures",
                &attrs,
                ts,
                s.failures as f64,
            );
        }
        if let Some((cpu, rss)) = process_usage(&self.proc_self) {
            let now = Instant::now();
            out.sample(&id, "process.cpu.time", &[], ts, cpu);
            out.sample(&id, "process.memory.usage", &[], ts, rss as f64);
            metrics::gauge!("infrawatch_agent_process_cpu_seconds").set(cpu);
            metrics::gauge!("infrawatch_agent_process_resident_memory_bytes").set(rss as f64);
            if let Some((before, at)) = self.previous_cpu {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    out.sample(
                        &id,
                        "process.cpu.utilization",
                        &[],
                        ts,
                        (cpu - before).max(0.0) / secs,
                    );
                }
            }
            self.previous_cpu = Some((cpu, now));
        }
        let dropped = self.buffer.dropped();
        out.sample(
            &id,
            "infrawatch.agent.buffer.dropped_samples",
            &[],
            ts,
            dropped.samples as f64,
        );
        out.sample(
            &id,
            "infrawatch.agent.buffer.dropped_batches",
            &[],
            ts,
            dropped.batches as f64,
        );
        out.sample(
            &id,
            "infrawatch.agent.buffer.queued",
            &[],
            ts,
            self.buffer.len() as f64,
        );
        out.sample(
            &id,
            "infrawatch.agent.buffer.usage",
            &[],
            ts,
            self.buffer.bytes() as f64,
        );
        Ok(())
    }
}
