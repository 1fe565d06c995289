//! Runs the agent's real GPU collector (NVML through `NvmlSource`, the production
//! path) twice about a second apart and prints every resource and sample it
//! produced, then the raw answer of each NVML call the source makes, so a missing
//! metric can be traced to the call that failed (NotSupported, say).
//!
//! `cargo run -p infrawatch-agent --example gpu_probe [-- RUNS [GAP_MS]]`
//!
//! Exit status: 0 when GPUs were reported, 2 when NVML cannot be loaded (no
//! NVIDIA driver), 3 when NVML loads but reports no GPU, 4 when a collection
//! failed or a GPU that NVML lists is missing from the output.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use infrawatch_agent::collector::gpu::{GpuCollector, GpuSource, NvmlSource};
use infrawatch_agent::collector::{Collection, Collector};

const HOST_ID: &str = "host/gpu-probe";
const INTERVAL_MS: u32 = 1000;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn print_collection(run: u64, c: &Collection, took: Duration) {
    println!(
        "== run {run}: {} resource(s), {} sample(s), collect took {:.1} ms",
        c.resources.len(),
        c.samples.len(),
        took.as_secs_f64() * 1e3
    );
    for r in &c.resources {
        println!(
            "resource id={} kind={} interval_ms={}",
            r.id, r.kind, r.interval_ms
        );
        for (k, v) in &r.labels {
            println!("  label {k}={v}");
        }
        for (k, v) in &r.attributes {
            println!("  attribute {k}={v}");
        }
        for (t, target) in &r.relations {
            println!("  relation {t} -> {target}");
        }
        for s in c.samples.iter().filter(|s| s.resource_id == r.id) {
            let attrs: Vec<String> = s
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "  sample {:<26} {{{}}} = {} (ts {})",
                s.metric,
                attrs.join(","),
                s.value,
                s.timestamp_ms
            );
        }
    }
    for s in c
        .samples
        .iter()
        .filter(|s| !c.resources.iter().any(|r| r.id == s.resource_id))
    {
        println!(
            "  ORPHAN sample {} on {} = {}",
            s.metric, s.resource_id, s.value
        );
    }
}

/// What each NVML call that `NvmlSource::read` makes answers, errors included.
/// Diagnostics only: the collector's output above is what the agent sends.
fn raw_nvml() {
    use nvml_wrapper::Nvml;
    use nvml_wrapper::enum_wrappers::device::{
        Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
    };
    println!("== raw NVML answers (diagnostics)");
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            println!("Nvml::init: {e:?}");
            return;
        }
    };
    println!("driver version: {:?}", nvml.sys_driver_version());
    println!("NVML version:   {:?}", nvml.sys_nvml_version());
    println!("CUDA version:   {:?}", nvml.sys_cuda_driver_version());
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            println!("device_count: {e:?}");
            return;
        }
    };
    for i in 0..count {
        println!("-- device {i}");
        let d = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(e) => {
                println!("  device_by_index: {e:?}");
                continue;
            }
        };
        println!("  name: {:?}", d.name());
        println!("  uuid: {:?}", d.uuid());
        println!("  index: {:?}", d.index());
        println!("  utilization_rates: {:?}", d.utilization_rates());
        println!("  memory_info: {:?}", d.memory_info());
        println!(
            "  temperature(Gpu): {:?}",
            d.temperature(TemperatureSensor::Gpu)
        );
        println!("  power_usage (mW): {:?}", d.power_usage());
        println!(
            "  enforced_power_limit (mW): {:?}",
            d.enforced_power_limit()
        );
        println!("  clock_info(SM) MHz: {:?}", d.clock_info(Clock::SM));
        println!(
            "  clock_info(Memory) MHz: {:?}",
            d.clock_info(Clock::Memory)
        );
        println!("  num_fans: {:?}", d.num_fans());
        println!("  fan_speed(0): {:?}", d.fan_speed(0));
        println!("  is_ecc_enabled: {:?}", d.is_ecc_enabled());
        println!(
            "  total_ecc_errors(Corrected, Volatile): {:?}",
            d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
        );
        println!(
            "  total_ecc_errors(Uncorrected, Volatile): {:?}",
            d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
        );
        println!(
            "  pcie_throughput(Send) KB/s: {:?}",
            d.pcie_throughput(PcieUtilCounter::Send)
        );
        println!(
            "  pcie_throughput(Receive) KB/s: {:?}",
            d.pcie_throughput(PcieUtilCounter::Receive)
        );
        println!(
            "  current_throttle_reasons_strict: {:?}",
            d.current_throttle_reasons_strict()
        );
        println!(
            "  running_compute_processes: {:?}",
            d.running_compute_processes()
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let runs = arg(1, 2).max(1);
    let gap = Duration::from_millis(arg(2, 1000));

    // The collector itself never fails without a driver (it stays quiet), so ask
    // NVML first to tell "no driver" from "no GPU".
    let mut probe = match NvmlSource::open() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gpu_probe: no NVML/NVIDIA driver on this host: {e}");
            return ExitCode::from(2);
        }
    };
    let listed = match probe.read() {
        Ok(r) => r.len(),
        Err(e) => {
            eprintln!("gpu_probe: NVML loaded but listing the GPUs failed: {e}");
            return ExitCode::from(4);
        }
    };
    drop(probe);
    println!("NVML loaded; NvmlSource::read lists {listed} GPU(s)");
    if listed == 0 {
        eprintln!("gpu_probe: NVML loaded but reports no GPU");
        return ExitCode::from(3);
    }

    // As the agent builds it (collector::build_collectors): no source given, so it
    // loads NVML itself on its first run.
    let mut collector = GpuCollector::new(HOST_ID.to_string(), INTERVAL_MS, None);
    let mut failed = false;
    for run in 1..=runs {
        if run > 1 {
            tokio::time::sleep(gap).await;
        }
        let mut out = Collection::default();
        let started = Instant::now();
        let result = collector.collect(&mut out).await;
        print_collection(run, &out, started.elapsed());
        if let Err(e) = result {
            println!("  ERROR collect: {e}");
            failed = true;
        }
        if out.resources.len() != listed {
            println!(
                "  ERROR {} resource(s) reported, NVML lists {listed} GPU(s)",
                out.resources.len()
            );
            failed = true;
        }
    }
    raw_nvml();
    if failed {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    }
}
