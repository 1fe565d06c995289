//! Runs the collectors on their intervals, with a deadline per run, and feeds
//! what they collect to the batcher. A slow, failing or stuck collector only
//! delays itself.
//!
//! Collectors that only read the local kernel ([`Collector::is_local`]: procfs,
//! sysfs, system calls) and share an interval run as one *group*: one task,
//! one timer wake-up per interval, every member run concurrently in that task,
//! and one merged collection sent on. A member that misses its deadline has
//! its run dropped (it is an async function: dropping it cancels it). Every
//! other collector (network probes, HTTP, drivers that may block) has a task
//! of its own, and a run that misses its deadline keeps going apart while the
//! collector's next runs are skipped until it ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::FutureExt;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::error::Elapsed;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;

use crate::collector::{CollectError, Collection, Collector, ScheduledCollector};
use crate::self_health::SelfHealth;

/// Starts one task per group of local collectors sharing an interval and one
/// per other collector; they stop when `shutdown` is cancelled.
pub fn spawn_collectors(
    collectors: Vec<ScheduledCollector>,
    out: mpsc::Sender<Collection>,
    health: SelfHealth,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let mut groups: BTreeMap<u64, Vec<ScheduledCollector>> = BTreeMap::new();
    for scheduled in collectors {
        if scheduled.collector.is_local() && !scheduled.collector.may_block() {
            groups
                .entry(scheduled.schedule.interval_ms)
                .or_default()
                .push(scheduled);
        } else {
            tasks.spawn(run_one(
                scheduled,
                out.clone(),
                health.clone(),
                shutdown.clone(),
            ));
        }
    }
    for (interval_ms, members) in groups {
        tasks.spawn(run_group(
            Duration::from_millis(interval_ms),
            members,
            out.clone(),
            health.clone(),
            shutdown.clone(),
        ));
    }
}

/// What a finished run hands back: the collector (for its next run), what it
/// collected, and how it went.
type RunOutput = (Box<dyn Collector>, Collection, Result<(), CollectError>);

/// How a run ended: `Err` when it missed its deadline.
type Outcome = Result<Result<(), CollectError>, Elapsed>;

fn panicked(name: &'static str) -> CollectError {
    CollectError::Parse {
        path: name.to_string(),
        reason: "the collector panicked".into(),
    }
}

/// Starts one run. Collectors that may block for long (`may_block`, e.g. NVML)
/// run on the blocking pool so a hang cannot hold an async worker; the others run
/// as a task (procfs and sysfs reads are short, and a thread hop per run would
/// cost more than the reads). A panic is caught and becomes a failed run, so the
/// collector survives it.
fn spawn_run(mut collector: Box<dyn Collector>) -> JoinHandle<RunOutput> {
    let name = collector.name();
    if collector.may_block() {
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut out = Collection::default();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handle.block_on(collector.collect(&mut out))
            }))
            .unwrap_or_else(|_| Err(panicked(name)));
            (collector, out, result)
        })
    } else {
        tokio::spawn(async move {
            let mut out = Collection::default();
            let result = std::panic::AssertUnwindSafe(collector.collect(&mut out))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(panicked(name)));
            (collector, out, result)
        })
    }
}

/// Records how a run went (self-health, metrics, log) and says whether its
/// collection is worth sending: a run that missed its deadline gives nothing,
/// a failed one keeps what it collected.
fn record_run(
    name: &'static str,
    started: Instant,
    started_ms: i64,
    deadline: Duration,
    outcome: &Outcome,
    collection: &Collection,
    health: &SelfHealth,
) -> bool {
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "missed its deadline of {} ms",
            deadline.as_millis()
        )),
    };
    health.record(name, started_ms, started.elapsed(), error);
    match outcome {
        Ok(Ok(())) => {
            tracing::debug!(collector = name, elapsed = ?started.elapsed(), samples = collection.samples.len(), "Collected.");
        }
        Ok(Err(e)) => {
            metrics::counter!("infrawatch_agent_collector_errors_total", "collector" => name, "error_type" => "failed").increment(1);
            tracing::warn!(
                collector = name,
                error = e as &dyn std::error::Error,
                "Collector failed; keeping what it collected."
            );
        }
        Err(_) => {
            metrics::counter!("infrawatch_agent_collector_errors_total", "collector" => name, "error_type" => "deadline").increment(1);
            tracing::warn!(
                collector = name,
                deadline_ms = deadline.as_millis() as u64,
                "Collector missed its deadline; run abandoned."
            );
            return false;
        }
    }
    metrics::counter!("infrawatch_agent_collector_samples_total", "collector" => name)
        .increment(collection.samples.len() as u64);
    true
}

/// Runs a group of local collectors on one interval: every member concurrently
/// in this task, one collection sent per tick.
async fn run_group(
    every: Duration,
    mut members: Vec<ScheduledCollector>,
    out: mpsc::Sender<Collection>,
    health: SelfHealth,
    shutdown: CancellationToken,
) {
    let mut ticks = interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let runs = members.iter_mut().map(|m| run_member(m, &health));
        let mut merged = Collection::default();
        for collection in futures::future::join_all(runs).await.into_iter().flatten() {
            merged.resources.extend(collection.resources);
            merged.samples.extend(collection.samples);
        }
        if merged.resources.is_empty() && merged.samples.is_empty() {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = out.send(merged) => if sent.is_err() { return },
        }
    }
}

/// One run of a group member, inside the group's task: a panic is a failed
/// run, a missed deadline drops the run.
async fn run_member(member: &mut ScheduledCollector, health: &SelfHealth) -> Option<Collection> {
    let name = member.collector.name();
    let deadline = Duration::from_millis(member.schedule.deadline_ms);
    let started = Instant::now();
    let started_ms = infrawatch_common::time::now_unix_ms();
    let mut collection = Collection::default();
    let run =
        std::panic::AssertUnwindSafe(member.collector.collect(&mut collection)).catch_unwind();
    let outcome = timeout(deadline, run)
        .await
        .map(|r| r.unwrap_or_else(|_| Err(panicked(name))));
    record_run(
        name,
        started,
        started_ms,
        deadline,
        &outcome,
        &collection,
        health,
    )
    .then_some(collection)
}

async fn run_one(
    scheduled: ScheduledCollector,
    out: mpsc::Sender<Collection>,
    health: SelfHealth,
    shutdown: CancellationToken,
) {
    let name = scheduled.collector.name();
    let deadline = Duration::from_millis(scheduled.schedule.deadline_ms);
    let mut ticks = interval(Duration::from_millis(scheduled.schedule.interval_ms));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The collector lives here between runs, or in `overdue` while a run that
    // missed its deadline is still going; it is never run twice at once.
    let mut idle: Option<Box<dyn Collector>> = Some(scheduled.collector);
    let mut overdue: Option<JoinHandle<RunOutput>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let started_ms = infrawatch_common::time::now_unix_ms();
        if let Some(run) = overdue.take() {
            if !run.is_finished() {
                overdue = Some(run);
                health.record(
                    name,
                    started_ms,
                    Duration::ZERO,
                    Some("an earlier run is still going".into()),
                );
                metrics::counter!("infrawatch_agent_collector_errors_total", "collector" => name, "error_type" => "still_running").increment(1);
                continue;
            }
            // Its late output is stale: only the collector is taken back.
            match run.await {
                Ok((collector, _, _)) => idle = Some(collector),
                Err(e) => {
                    tracing::error!(collector = name, error = %e, "Collector lost; it will not run again.");
                    return;
                }
            }
        }
        let Some(collector) = idle.take() else { return };
        let mut run = spawn_run(collector);
        let (collection, outcome) = match timeout(deadline, &mut run).await {
            Ok(Ok((collector, collection, result))) => {
                idle = Some(collector);
                (collection, Ok(result))
            }
            Ok(Err(e)) => {
                tracing::error!(collector = name, error = %e, "Collector lost; it will not run again.");
                health.record(
                    name,
                    started_ms,
                    started.elapsed(),
                    Some(format!("lost: {e}")),
                );
                return;
            }
            Err(elapsed) => {
                overdue = Some(run);
                (Collection::default(), Err(elapsed))
            }
        };
        if !record_run(
            name,
            started,
            started_ms,
            deadline,
            &outcome,
            &collection,
            &health,
        ) {
            continue;
        }
        if collection.resources.is_empty() && collection.samples.is_empty() {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = out.send(collection) => if sent.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CollectorSchedule;

    /// Blocks its thread, as a read of a hung procfs or NFS file would.
    struct Stuck;
    #[async_trait::async_trait]
    impl Collector for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }
        fn may_block(&self) -> bool {
            true
        }
        async fn collect(&mut self, _out: &mut Collection) -> Result<(), CollectError> {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        }
    }

    struct Panics;
    #[async_trait::async_trait]
    impl Collector for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        async fn collect(&mut self, _out: &mut Collection) -> Result<(), CollectError> {
            panic!("collector bug");
        }
    }

    struct Counter(u32);
    #[async_trait::async_trait]
    impl Collector for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
            self.0 += 1;
            out.sample("host/x", "test.count", &[], 0, f64::from(self.0));
            Ok(())
        }
    }

    /// With a single async worker, a collector blocked in a system call (one that
    /// says it may block) and one that panics must not stop another collector.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn blocked_or_panicking_collectors_do_not_stop_another() {
        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let schedule = CollectorSchedule {
            enabled: true,
            interval_ms: 100,
            deadline_ms: 50,
        };
        let health = SelfHealth::default();
        spawn_collectors(
            vec![
                ScheduledCollector {
                    collector: Box::new(Stuck),
                    schedule,
                },
                ScheduledCollector {
                    collector: Box::new(Panics),
                    schedule,
                },
                ScheduledCollector {
                    collector: Box::new(Counter(0)),
                    schedule,
                },
            ],
            tx,
            health.clone(),
            shutdown.clone(),
            &mut tasks,
        );
        for expected in 1..=5 {
            let c = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(c.samples[0].value, f64::from(expected));
        }
        let status: std::collections::HashMap<_, _> = health.snapshot().into_iter().collect();
        assert!(
            status["panics"].failures >= 2,
            "a panic is a failed run and the collector runs again"
        );
        assert!(status["stuck"].last_error.is_some());
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }

    /// A local collector: counts its runs, or panics, or awaits past its deadline.
    struct Local {
        name: &'static str,
        behaviour: &'static str,
        runs: u32,
    }
    #[async_trait::async_trait]
    impl Collector for Local {
        fn name(&self) -> &'static str {
            self.name
        }
        fn is_local(&self) -> bool {
            true
        }
        async fn collect(&mut self, out: &mut Collection) -> Result<(), CollectError> {
            self.runs += 1;
            match self.behaviour {
                "panic" => panic!("collector bug"),
                "slow" => tokio::time::sleep(Duration::from_secs(5)).await,
                _ => {}
            }
            out.sample("host/x", self.name, &[], 0, f64::from(self.runs));
            Ok(())
        }
    }

    /// Local collectors sharing an interval arrive as one collection per tick;
    /// one that panics or misses its deadline costs only its own samples.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn local_collectors_sharing_an_interval_run_as_one_group() {
        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let schedule = CollectorSchedule {
            enabled: true,
            interval_ms: 1_000,
            deadline_ms: 200,
        };
        let local = |name, behaviour| ScheduledCollector {
            collector: Box::new(Local {
                name,
                behaviour,
                runs: 0,
            }),
            schedule,
        };
        let health = SelfHealth::default();
        spawn_collectors(
            vec![
                local("one", ""),
                local("two", ""),
                local("panics", "panic"),
                local("slow", "slow"),
            ],
            tx,
            health.clone(),
            shutdown.clone(),
            &mut tasks,
        );
        for tick in 1..=3 {
            let c = rx.recv().await.unwrap();
            let mut got: Vec<(&str, f64)> = c
                .samples
                .iter()
                .map(|s| (s.metric.as_ref(), s.value))
                .collect();
            got.sort_by(|a, b| a.0.cmp(b.0));
            assert_eq!(
                got,
                vec![("one", f64::from(tick)), ("two", f64::from(tick))]
            );
        }
        let status: std::collections::HashMap<_, _> = health.snapshot().into_iter().collect();
        assert_eq!(status["one"].failures, 0);
        assert!(status["panics"].failures >= 3);
        assert!(
            status["slow"]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("deadline")),
            "{:?}",
            status["slow"]
        );
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
