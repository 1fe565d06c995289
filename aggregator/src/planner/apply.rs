//! Applying a committed plan: the model takes the new records and resources seen
//! note the time. Also: records another replica wrote, read back, refresh the
//! model the same way.

use super::plan::Applied;
use crate::state::{State, Tracked};
use crate::store::{Commit, Fetched, Tombstone};
use crate::telemetry;

/// Puts `applied` into the model at `now_ms`.
pub fn apply(state: &State, applied: Applied, now_ms: i64) {
    let mut model = state.write();
    for record in applied.removed {
        model.resources.remove(&record.id);
        model.tombstones.insert(
            record.id,
            Tombstone {
                version: record.version,
                deleted_at_ms: now_ms,
            },
        );
    }
    for (id, record) in applied.records {
        model.tombstones.remove(&id);
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

/// Puts records read back from the database (written by another replica) into
/// the model, keeping when each was last seen here; resources deleted there
/// leave the model.
pub fn refresh(state: &State, fetched: Fetched) {
    let now = infrawatch_common::time::now_unix_ms();
    let mut model = state.write();
    for (id, tombstone) in fetched.tombstones {
        let newer = model
            .resources
            .get(&id)
            .is_none_or(|t| t.record.version < tombstone.version);
        if newer {
            model.resources.remove(&id);
            model.tombstones.insert(id, tombstone);
        }
    }
    for record in fetched.records {
        if let Some(t) = model.tombstones.get(&record.id) {
            if t.version >= record.version {
                continue;
            }
            model.tombstones.remove(&record.id);
        }
        match model.resources.get_mut(&record.id) {
            Some(t) if t.record.version >= record.version => {}
            Some(t) => {
                let (seen, observed) = (t.last_seen_ms(), t.observed_at_ms());
                *t = Tracked::new(record, seen);
                t.seen(seen, observed);
            }
            None => {
                model
                    .resources
                    .insert(record.id.clone(), Tracked::new(record, now));
            }
        }
    }
    metrics::gauge!(telemetry::RESOURCES).set(model.resources.len() as f64);
}

/// Counts the rows a committed transaction wrote, by table.
pub fn count_rows(commit: &Commit) {
    for (table, rows) in [
        ("resources", commit.resources.len()),
        ("history", commit.history.len()),
        ("cursors", commit.state_cursors.len()),
        ("events", commit.events.len() + commit.dead_letters.len()),
        ("gaps", commit.gaps.len()),
        ("tombstones", commit.removed.len()),
    ] {
        if rows > 0 {
            metrics::counter!(telemetry::STORE_ROWS, "table" => table).increment(rows as u64);
        }
    }
}
