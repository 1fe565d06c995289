//! Applying a committed plan: the model takes the new records, resources seen
//! note the time, and the committed events go to the event log (publishers and
//! live streams).

use std::time::Instant;

use super::plan::Applied;
use crate::events::log::EventLog;
use crate::events::metric as event_metric;
use crate::state::{State, Tracked};
use crate::store::Commit;
use crate::telemetry;

/// Puts `applied` into the model at `now_ms`.
pub fn apply(state: &State, applied: Applied, now_ms: i64) {
    let mut model = state.write();
    for (id, record) in applied.records {
        let observed = record.observed_at_ms;
        match model.resources.get_mut(&id) {
            Some(t) => {
                let last_seen = t.last_seen_ms();
                let observed = t.observed_at_ms().max(observed);
                *t = Tracked::new(record, last_seen);
                t.seen(last_seen, observed);
            }
            None => {
                model.resources.insert(id, Tracked::new(record, now_ms));
            }
        }
    }
    for (id, observed_at) in &applied.seen {
        if let Some(t) = model.resources.get(id) {
            t.seen(now_ms, *observed_at);
        }
    }
    metrics::counter!(telemetry::STATE_CHANGES).increment(applied.changed as u64);
    metrics::gauge!(telemetry::RESOURCES).set(model.resources.len() as f64);
}

/// Hands the committed events of `commit` to the log.
pub fn publish(events: &EventLog, commit: &mut Commit) {
    let committed_at = Instant::now();
    let list = std::mem::take(&mut commit.events);
    metrics::counter!(event_metric::EMITTED).increment(list.len() as u64);
    events.append(list.into_iter().map(|mut e| {
        e.committed_at = Some(committed_at);
        e
    }));
}

/// Counts the rows a committed transaction wrote, by table.
pub fn count_rows(commit: &Commit) {
    for (table, rows) in [
        ("resources", commit.resources.len()),
        ("history", commit.history.len()),
        ("cursors", commit.state_cursors.len()),
        ("events", commit.events.len() + commit.dead_letters.len()),
        ("gaps", commit.gaps.len()),
    ] {
        if rows > 0 {
            metrics::counter!(telemetry::STORE_ROWS, "table" => table).increment(rows as u64);
        }
    }
}
