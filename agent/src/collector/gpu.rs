//! GPUs through NVML (nvml-wrapper): per GPU, by UUID, core and memory utilization,
//! memory used and total, temperature, power draw and limit, SM and memory clocks,
//! fan, ECC error counts, PCIe throughput, throttle reasons, and GPU memory per
//! process. Each GPU is a resource `gpu/<machine-id>/<uuid>` (kind `gpu`, `attached_to`
//! the host); its throttle reasons are an attribute, so a GPU that starts throttling
//! is a change.
//!
//! NVML is loaded at run time. Without the NVIDIA driver the collector says once that
//! GPUs are not available and stays quiet; it never fails the agent. The NVML calls
//! sit behind [`GpuSource`], so the mapping is tested with recorded readings.

use std::collections::BTreeMap;

use infrawatch_common::time::now_unix_ms;

use super::{CollectError, Collection, Collector, ObservedResource};

/// What one GPU reported; a field is `None` when the GPU does not support it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    /// Stable GPU UUID, e.g. `GPU-5a3e...`.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// NVML index.
    pub index: u32,
    /// Share of time a kernel was running (0..1).
    pub utilization: Option<f64>,
    /// Share of time memory was read or written (0..1).
    pub memory_utilization: Option<f64>,
    /// Memory used, bytes.
    pub memory_used: Option<u64>,
    /// Memory total, bytes.
    pub memory_total: Option<u64>,
    /// Die temperature, °C.
    pub temperature_c: Option<f64>,
    /// Power draw, W.
    pub power_w: Option<f64>,
    /// Enforced power limit, W.
    pub power_limit_w: Option<f64>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<f64>,
    /// Memory clock, MHz.
    pub memory_clock_mhz: Option<f64>,
    /// Fan speed (0..1).
    pub fan: Option<f64>,
    /// Corrected ECC errors since the driver loaded.
    pub ecc_corrected: Option<u64>,
    /// Uncorrected ECC errors since the driver loaded.
    pub ecc_uncorrected: Option<u64>,
    /// PCIe transmit, bytes/s.
    pub pcie_tx: Option<f64>,
    /// PCIe receive, bytes/s.
    pub pcie_rx: Option<f64>,
    /// Active throttle reasons, snake_case, sorted (empty when not throttled;
    /// `None` when the GPU or driver cannot say, e.g. NotSupported).
    pub throttle_reasons: Option<Vec<String>>,
    /// (pid, GPU memory bytes) of compute processes.
    pub processes: Vec<(u32, u64)>,
}

/// Why GPU readings could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML (the driver) is not present: no GPUs to monitor.
    #[error("NVML is not available: {0}")]
    Unavailable(String),
    /// NVML is present but a call failed.
    #[error("NVML call failed: {0}")]
    Call(String),
}

/// Source of GPU readings: NVML in production, recorded values in tests.
pub trait GpuSource: Send {
    /// One reading per GPU.
    fn read(&mut self) -> Result<Vec<GpuReading>, GpuError>;
}

/// Readings from the NVIDIA driver.
pub struct NvmlSource {
    nvml: Option<nvml_wrapper::Nvml>,
}

impl NvmlSource {
    /// Loads NVML; without a driver this fails quickly (about 0.15 ms).
    pub fn open() -> Result<Self, GpuError> {
        nvml_wrapper::Nvml::init()
            .map(|n| Self { nvml: Some(n) })
            .map_err(|e| GpuError::Unavailable(e.to_string()))
    }
}

impl GpuSource for NvmlSource {
    fn read(&mut self) -> Result<Vec<GpuReading>, GpuError> {
        use nvml_wrapper::bitmasks::device::ThrottleReasons;
        use nvml_wrapper::enum_wrappers::device::{
            Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
        };
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let Some(nvml) = &self.nvml else {
            return Err(GpuError::Unavailable("not initialised".into()));
        };
        let count = nvml
            .device_count()
            .map_err(|e| GpuError::Call(e.to_string()))?;
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            // A GPU that fails (fallen off the bus) must not hide the others.
            let Ok(d) = nvml.device_by_index(i) else {
                continue;
            };
            let Ok(uuid) = d.uuid() else { continue };
            let util = d.utilization_rates().ok();
            let mem = d.memory_info().ok();
            // A failed call is "unknown", not "not throttled".
            let throttle = d.current_throttle_reasons().ok();
            let named = [
                (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
                (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
                (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
                (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
                (
                    ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
                    "hw_power_brake_slowdown",
                ),
                (ThrottleReasons::SYNC_BOOST, "sync_boost"),
                (
                    ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
                    "applications_clocks_setting",
                ),
                (
                    ThrottleReasons::DISPLAY_CLOCK_SETTING,
                    "display_clock_setting",
                ),
            ];
            let throttle_reasons = throttle.map(|t| {
                let mut r: Vec<String> = named
                    .iter()
                    .filter(|(flag, _)| t.contains(*flag))
                    .map(|(_, n)| n.to_string())
                    .collect();
                r.sort();
                r
            });
            out.push(GpuReading {
                name: d.name().unwrap_or_default(),
                index: d.index().unwrap_or(i),
                utilization: util.as_ref().map(|u| f64::from(u.gpu) / 100.0),
                memory_utilization: util.as_ref().map(|u| f64::from(u.memory) / 100.0),
                memory_used: mem.as_ref().map(|m| m.used),
                memory_total: mem.as_ref().map(|m| m.total),
                temperature_c: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
                power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                power_limit_w: d
                    .enforced_power_limit()
                    .ok()
                    .map(|mw| f64::from(mw) / 1000.0),
                sm_clock_mhz: d.clock_info(Clock::SM).ok().map(f64::from),
                memory_clock_mhz: d.clock_info(Clock::Memory).ok().map(f64::from),
                fan: d.fan_speed(0).ok().map(|p| f64::from(p) / 100.0),
                ecc_corrected: d
                    .total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                    .ok(),
                ecc_uncorrected: d
                    .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                    .ok(),
                // NVML reports KB/s over a 20 ms window.
                pcie_tx: d
                    .pcie_throughput(PcieUtilCounter::Send)
                    .ok()
                    .map(|kb| f64::from(kb) * 1024.0),
                pcie_rx: d
                    .pcie_throughput(PcieUtilCounter::Receive)
                    .ok()
                    .map(|kb| f64::from(kb) * 1024.0),
                throttle_reasons,
                processes: d
                    .running_compute_processes()
                    .map(|ps| {
                        ps.into_iter()
                            .filter_map(|p| match p.used_gpu_memory {
                                UsedGpuMemory::Used(bytes) => Some((p.pid, bytes)),
                                UsedGpuMemory::Unavailable => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                uuid,
            });
        }
        Ok(out)
    }
}

/// The GPU collector.
pub struct GpuCollector {
    host_id: String,
    machine: String,
    interval_ms: u32,
    source: Option<Box<dyn GpuSource>>,
    told_unavailable: bool,
    /// Runs since NVML last failed to load: it is tried again every
    /// [`NVML_RETRY_RUNS`] runs, for a driver installed after the agent started.
    runs_without_nvml: u32,
}

/// Runs between two attempts to load NVML.
pub const NVML_RETRY_RUNS: u32 = 60;

impl GpuCollector {
    /// Reads from `source`, or from NVML when `None` (loaded on first use).
    pub fn new(host_id: String, interval_ms: u32, source: Option<Box<dyn GpuSource>>) -> Self {
        Self {
            machine: host_id.trim_start_matches("host/").to_string(),
            host_id,
            interval_ms,
            source,
            told_unavailable: false,
            runs_without_nvml: 0,
        }
    }

    fn map(&self, readings: Vec<GpuReading>, out: &mut Collection) {
        let ts = now_unix_ms();
        for g in readings {
            let id = format!("gpu/{}/{}", self.machine, g.uuid);
            let mut attributes = BTreeMap::new();
            attributes.insert("gpu.uuid".to_string(), g.uuid.clone());
            attributes.insert("gpu.name".to_string(), g.name.clone());
            attributes.insert("gpu.index".to_string(), g.index.to_string());
            if let Some(reasons) = &g.throttle_reasons {
                attributes.insert(
                    "gpu.throttle_reasons".to_string(),
                    if reasons.is_empty() {
                        "none".into()
                    } else {
                        reasons.join(",")
                    },
                );
            }
            out.resources.push(ObservedResource {
                id: id.clone(),
                kind: "gpu",
                labels: BTreeMap::new(),
                attributes,
                relations: vec![("attached_to".into(), self.host_id.clone())],
                interval_ms: self.interval_ms,
            });
            let mut put = |metric: &'static str, attrs: &[(&'static str, &str)], v: Option<f64>| {
                if let Some(v) = v {
                    out.sample(&id, metric, attrs, ts, v);
                }
            };
            put("gpu.utilization", &[], g.utilization);
            put("gpu.memory.utilization", &[], g.memory_utilization);
            put("gpu.memory.usage", &[], g.memory_used.map(|v| v as f64));
            put("gpu.memory.limit", &[], g.memory_total.map(|v| v as f64));
            put("gpu.temperature", &[], g.temperature_c);
            put("gpu.power.usage", &[], g.power_w);
            put("gpu.power.limit", &[], g.power_limit_w);
            put(
                "gpu.clock.frequency",
                &[("clock", "sm")],
                g.sm_clock_mhz.map(|m| m * 1e6),
            );
            put(
                "gpu.clock.frequency",
                &[("clock", "memory")],
                g.memory_clock_mhz.map(|m| m * 1e6),
            );
            put("gpu.fan.speed", &[], g.fan);
            put(
                "gpu.ecc.errors",
                &[("type", "corrected")],
                g.ecc_corrected.map(|v| v as f64),
            );
            put(
                "gpu.ecc.errors",
                &[("type", "uncorrected")],
                g.ecc_uncorrected.map(|v| v as f64),
            );
            put("gpu.pcie.io.rate", &[("direction", "transmit")], g.pcie_tx);
            put("gpu.pcie.io.rate", &[("direction", "receive")], g.pcie_rx);
            put(
                "gpu.throttled",
                &[],
                g.throttle_reasons
                    .as_ref()
                    .map(|r| if r.is_empty() { 0.0 } else { 1.0 }),
            );
            for (pid, bytes) in &g.processes {
                let pid = pid.to_string();
                out.sample(
                    &id,
                    "gpu.process.memory.usage",
                    &[("process.pid", pid.as_str())],
                    ts,
                    *bytes as f64,
                );
            }
        }
    }
}

#[async_trait::async_trait]
impl Collector for GpuCollector {
    fn name(&self) -> &'static str {
        "gpu"
    }

    /// NVML calls can take seconds (no persistence mode) and sample for 20 ms.
    fn may_block(&self) -> bool {
        true
    }

    async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
        let retry_due = self.runs_without_nvml.is_multiple_of(NVML_RETRY_RUNS);
        if self.source.is_none() {
            self.runs_without_nvml = self.runs_without_nvml.wrapping_add(1);
        }
        if self.source.is_none() && retry_due {
            match NvmlSource::open() {
                Ok(s) => self.source = Some(Box::new(s)),
                Err(e) => {
                    if !self.told_unavailable {
                        tracing::info!(error = %e, "GPUs are not available on this host; the GPU collector stays quiet.");
                        self.told_unavailable = true;
                    }
                }
            }
        }
        let Some(source) = self.source.as_mut() else {
            return Ok(());
        };
        match source.read() {
            Ok(readings) => {
                self.map(readings, out);
                Ok(())
            }
            Err(GpuError::Unavailable(reason)) => {
                if !self.told_unavailable {
                    tracing::info!(
                        reason,
                        "GPUs are not available on this host; the GPU collector stays quiet."
                    );
                    self.told_unavailable = true;
                }
                Ok(())
            }
            Err(GpuError::Call(reason)) => Err(CollectError::Parse {
                path: "nvml".into(),
                reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values recorded from an NVIDIA H100 80GB HBM3 under load.
    fn recorded() -> GpuReading {
        GpuReading {
            uuid: "GPU-5a3e2c1f-8b7d-4e6a-9c0b-1d2e3f405162".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            index: 0,
            utilization: Some(0.97),
            memory_utilization: Some(0.61),
            memory_used: Some(74_000_000_000),
            memory_total: Some(85_520_809_984),
            temperature_c: Some(67.0),
            power_w: Some(612.4),
            power_limit_w: Some(700.0),
            sm_clock_mhz: Some(1980.0),
            memory_clock_mhz: Some(2619.0),
            fan: None,
            ecc_corrected: Some(0),
            ecc_uncorrected: Some(0),
            pcie_tx: Some(1_048_576.0),
            pcie_rx: Some(2_097_152.0),
            throttle_reasons: Some(vec!["sw_power_cap".into()]),
            processes: vec![(4242, 73_000_000_000)],
        }
    }

    struct Recorded(Result<Vec<GpuReading>, ()>);
    impl GpuSource for Recorded {
        fn read(&mut self) -> Result<Vec<GpuReading>, GpuError> {
            self.0
                .clone()
                .map_err(|_| GpuError::Unavailable("no driver".into()))
        }
    }

    fn value(c: &Collection, metric: &str, attr: Option<(&str, &str)>) -> Option<f64> {
        c.samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && attr.is_none_or(|(k, v)| s.attributes.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }

    #[tokio::test]
    async fn maps_a_recorded_gpu() {
        let mut c = GpuCollector::new(
            "host/m1".into(),
            1000,
            Some(Box::new(Recorded(Ok(vec![recorded()])))),
        );
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        let r = &out.resources[0];
        assert_eq!(r.id, "gpu/m1/GPU-5a3e2c1f-8b7d-4e6a-9c0b-1d2e3f405162");
        assert_eq!(r.kind, "gpu");
        assert_eq!(r.attributes["gpu.throttle_reasons"], "sw_power_cap");
        assert_eq!(
            r.relations,
            vec![("attached_to".to_string(), "host/m1".to_string())]
        );
        assert_eq!(value(&out, "gpu.utilization", None), Some(0.97));
        assert_eq!(value(&out, "gpu.power.usage", None), Some(612.4));
        assert_eq!(
            value(&out, "gpu.clock.frequency", Some(("clock", "sm"))),
            Some(1.98e9)
        );
        assert_eq!(
            value(
                &out,
                "gpu.process.memory.usage",
                Some(("process.pid", "4242"))
            ),
            Some(73e9)
        );
        assert_eq!(
            value(&out, "gpu.fan.speed", None),
            None,
            "unsupported fields are left out"
        );
        assert_eq!(value(&out, "gpu.throttled", None), Some(1.0));
    }

    #[tokio::test]
    async fn unknown_throttle_state_is_left_out_not_reported_as_unthrottled() {
        let reading = GpuReading {
            throttle_reasons: None,
            ..recorded()
        };
        let mut c = GpuCollector::new(
            "host/m1".into(),
            1000,
            Some(Box::new(Recorded(Ok(vec![reading])))),
        );
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        assert!(
            !out.resources[0]
                .attributes
                .contains_key("gpu.throttle_reasons")
        );
        assert_eq!(value(&out, "gpu.throttled", None), None);
        assert_eq!(value(&out, "gpu.utilization", None), Some(0.97));
    }

    #[tokio::test]
    async fn no_driver_is_quiet_and_not_an_error() {
        let mut c = GpuCollector::new("host/m1".into(), 1000, Some(Box::new(Recorded(Err(())))));
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        c.collect(&mut out).await.unwrap();
        assert!(out.resources.is_empty() && out.samples.is_empty());
    }

    #[tokio::test]
    async fn real_nvml_on_a_machine_without_a_driver() {
        // On this kind of machine there is no NVIDIA driver: NVML fails to load and
        // the collector must stay quiet. On a GPU machine it reports every GPU.
        let mut c = GpuCollector::new("host/m1".into(), 1000, None);
        let mut out = Collection::default();
        c.collect(&mut out).await.unwrap();
        if NvmlSource::open().is_err() {
            assert!(out.resources.is_empty());
        } else {
            assert!(out.resources.iter().all(|r| r.kind == "gpu"));
        }
    }
}
