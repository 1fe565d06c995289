//! Runs every collector on its own interval in its own task, with a deadline per
//! run, and feeds what they collect to the batcher. A slow, failing or stuck
//! collector only delays itself.

use std::time::Duration;

use futures::FutureExt;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;

use crate::collector::{Collection, ScheduledCollector};
use crate::self_health::SelfHealth;

/// Starts one task per collector; they stop when `shutdown` is cancelled.
pub fn spawn_collectors(
    collectors: Vec<ScheduledCollector>,
    out: mpsc::Sender<Collection>,
    health: SelfHealth,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    for scheduled in collectors {
        tasks.spawn(run_one(
            scheduled,
            out.clone(),
            health.clone(),
            shutdown.clone(),
        ));
    }
}

async fn run_one(
    mut scheduled: ScheduledCollector,
    out: mpsc::Sender<Collection>,
    health: SelfHealth,
    shutdown: CancellationToken,
) {
    let name = scheduled.collector.name();
    let deadline = Duration::from_millis(scheduled.schedule.deadline_ms);
    let mut ticks = interval(Duration::from_millis(scheduled.schedule.interval_ms));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut collection = Collection::default();
        let started = std::time::Instant::now();
        let started_ms = infrawatch_common::time::now_unix_ms();
        // A panic in a collector is a failed run, not the end of its task.
        let run = std::panic::AssertUnwindSafe(scheduled.collector.collect(&mut collection))
            .catch_unwind();
        let result = match timeout(deadline, run).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Ok(Err(crate::collector::CollectError::Parse {
                path: name.to_string(),
                reason: "the collector panicked".into(),
            })),
            Err(e) => Err(e),
        };
        let error = match &result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "missed its deadline of {} ms",
                deadline.as_millis()
            )),
        };
        health.record(name, started_ms, started.elapsed(), error);
        match result {
            Ok(Ok(())) => {
                tracing::debug!(collector = name, elapsed = ?started.elapsed(), samples = collection.samples.len(), "Collected.");
            }
            Ok(Err(e)) => {
                metrics::counter!("infrawatch_agent_collector_errors_total", "collector" => name, "error_type" => "failed").increment(1);
                tracing::warn!(
                    collector = name,
                    error = &e as &dyn std::error::Error,
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
                continue;
            }
        }
        metrics::counter!("infrawatch_agent_collector_samples_total", "collector" => name)
            .increment(collection.samples.len() as u64);
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
    use crate::collector::{CollectError, Collector};
    use crate::config::CollectorSchedule;

    struct Stuck;
    #[async_trait::async_trait]
    impl Collector for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }
        async fn collect(&mut self, _out: &mut Collection) -> Result<(), CollectError> {
            std::future::pending::<()>().await;
            Ok(())
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

    #[tokio::test(start_paused = true)]
    async fn a_stuck_collector_does_not_block_another() {
        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let schedule = CollectorSchedule {
            enabled: true,
            interval_ms: 1000,
            deadline_ms: 500,
        };
        spawn_collectors(
            vec![
                ScheduledCollector {
                    collector: Box::new(Stuck),
                    schedule,
                },
                ScheduledCollector {
                    collector: Box::new(Counter(0)),
                    schedule,
                },
            ],
            tx,
            SelfHealth::default(),
            shutdown.clone(),
            &mut tasks,
        );
        for expected in 1..=3 {
            let c = rx.recv().await.unwrap();
            assert_eq!(c.samples[0].value, f64::from(expected));
        }
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
