//! The storage suite: the same tests against PostgreSQL (the machine's server, a
//! fresh database per test) and SQLite (a fresh file per test).
//!
//! PostgreSQL is reached through `INFRAWATCH_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), which must allow CREATE DATABASE.

use std::collections::BTreeMap;

use infrawatch_aggregator::config::StorageConfig;
use infrawatch_aggregator::events::StoredEvent;
use infrawatch_aggregator::model::{Health, Reason, Relation, ResourceRecord};
use infrawatch_aggregator::samples::ledger::Cursor;
use infrawatch_aggregator::samples::{SeriesKey, Stats};
use infrawatch_aggregator::store::{
    Commit, CursorKind, DeadLetter, FlushSource, HistoryEntry, LeaseHold, RolledUpResources,
    RollupDelta, SessionOwner, StatePosition, Store, StoreError,
};
use infrawatch_proto::v1 as pb;
use sqlx::Connection;

/// A database that exists for one test.
struct TestDb {
    store: Store,
    /// PostgreSQL database name, dropped by [`drop_postgres`].
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

fn admin_url() -> String {
    std::env::var("INFRAWATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn postgres(test: &str) -> TestDb {
    let name = format!("iw_it_{}_{}_{}", test, std::process::id(), rand_suffix());
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    let store = Store::open(&StorageConfig {
        url: format!("{base}/{name}"),
        ..StorageConfig::default()
    })
    .unwrap();
    store.migrate().await.unwrap();
    TestDb {
        store,
        pg_name: Some(name),
        _dir: None,
    }
}

async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StorageConfig {
        url: format!("sqlite://{}", dir.path().join("nested/test.db").display()),
        ..StorageConfig::default()
    })
    .unwrap();
    store.migrate().await.unwrap();
    TestDb {
        store,
        pg_name: None,
        _dir: Some(dir),
    }
}

/// Drops a test database (a failed test leaves its database for inspection).
async fn drop_postgres(name: Option<String>) {
    if let Some(name) = name {
        let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn record(id: &str, version: u64, health: Health) -> ResourceRecord {
    ResourceRecord {
        id: id.into(),
        kind: "host".into(),
        labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        attributes: BTreeMap::from([("host.name".to_string(), "n1 \"quoted\"".to_string())]),
        relations: vec![Relation {
            relation_type: "member_of".into(),
            to_id: "cluster/c1".into(),
        }],
        health,
        reasons: if health == Health::Healthy {
            vec![]
        } else {
            vec![Reason {
                code: "cpu_high".into(),
                message: "cpu 93%".into(),
                metric: "system.cpu.utilization".into(),
                observed: 0.93,
                threshold: 0.9,
            }]
        },
        observed_at_ms: 1_700_000_000_000,
        version,
        source: "agent-a".into(),
        interval_ms: 1000,
    }
}

fn history(r: &ResourceRecord, previous: Health) -> HistoryEntry {
    HistoryEntry {
        resource_id: r.id.clone(),
        resource_version: r.version,
        previous_health: previous,
        health: r.health,
        reasons: r.reasons.clone(),
        changed: vec!["health".into()],
        observed_at_ms: r.observed_at_ms,
        recorded_at_ms: r.observed_at_ms + 5,
        source: r.source.clone(),
    }
}

fn delta(bucket: i64, values: &[f64], last_ts: i64) -> RollupDelta {
    let mut stats = Stats::default();
    for v in values {
        stats.add(*v);
    }
    RollupDelta {
        key: SeriesKey {
            resource_id: "host/a".into(),
            metric: "system.cpu.utilization".into(),
            attributes: "cpu=\"0\"".into(),
        },
        bucket_start_ms: bucket,
        stats,
        last: (last_ts, *values.last().unwrap()),
    }
}

fn at(key: &str, seq: u64, epoch: u64) -> StatePosition {
    StatePosition {
        key: key.into(),
        seq,
        epoch,
    }
}

fn source(key: &str, epoch: u64, seq: u64, rollups: Vec<RollupDelta>) -> FlushSource {
    FlushSource {
        key: key.into(),
        epoch,
        seq,
        rollups,
    }
}

async fn state_round_trips(db: TestDb) {
    let s = &db.store;
    let session = s.open_session("agent-a", "replica-1").await.unwrap();
    assert_eq!((session.previous_epoch, session.epoch), (0, 1));
    let v1 = record("host/a", 1, Health::Healthy);
    s.commit(&Commit {
        resources: vec![v1.clone()],
        relations_changed: vec!["host/a".into()],
        history: vec![history(&v1, Health::Unknown)],
        state_cursors: vec![at("agent-a", 7, 1)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let v2 = record("host/a", 2, Health::Degraded);
    s.commit(&Commit {
        resources: vec![v2.clone()],
        relations_changed: vec![],
        history: vec![history(&v2, Health::Healthy)],
        state_cursors: vec![at("agent-a", 9, 1)],
        ..Commit::default()
    })
    .await
    .unwrap();

    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.records, vec![v2.clone()]);
    assert_eq!(
        s.load_resources(&["host/a".to_string(), "host/none".to_string()])
            .await
            .unwrap()
            .records,
        vec![v2.clone()]
    );
    assert_eq!(
        s.cursor("agent-a").await.unwrap(),
        Cursor {
            durable_seq: 0,
            state_seq: 9
        },
        "state commits move the state position only"
    );
    let h = s.history("host/a", 10).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].resource_version, 2);
    assert_eq!(h[0].previous_health, Health::Healthy);
    assert_eq!(h[0].reasons, v2.reasons);
    assert_eq!(h[1].health, Health::Healthy);
}

/// A version must follow the stored one: a writer that planned against an older
/// version (another replica wrote meanwhile) is refused, and nothing of its
/// transaction stays.
async fn versions_follow_the_stored_one(db: TestDb) {
    let s = &db.store;
    s.commit(&Commit {
        resources: vec![record("host/a", 1, Health::Healthy)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let err = s
        .commit(&Commit {
            resources: vec![
                record("host/new", 1, Health::Healthy),
                record("host/a", 1, Health::Degraded),
            ],
            ..Commit::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(ids) if ids == &vec!["host/a".to_string()]),
        "{err:?}"
    );
    let loaded = s.load().await.unwrap();
    let kept: Vec<(&str, u64, Health)> = loaded
        .records
        .iter()
        .map(|r| (r.id.as_str(), r.version, r.health))
        .collect();
    assert_eq!(
        kept,
        vec![("host/a", 1, Health::Healthy)],
        "host/new is not there"
    );
    // A version that skips one is refused too.
    assert!(matches!(
        s.commit(&Commit {
            resources: vec![record("host/a", 3, Health::Healthy)],
            ..Commit::default()
        })
        .await,
        Err(StoreError::Conflict(_))
    ));
}

async fn a_deleted_resource_leaves_a_tombstone(db: TestDb) {
    let s = &db.store;
    let v1 = record("pod/a", 1, Health::Healthy);
    s.commit(&Commit {
        resources: vec![v1.clone()],
        relations_changed: vec!["pod/a".into()],
        history: vec![history(&v1, Health::Unknown)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let gone = record("pod/a", 2, Health::Unknown);
    s.commit(&Commit {
        removed: vec![gone.clone()],
        history: vec![history(&gone, Health::Healthy)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let loaded = s.load().await.unwrap();
    assert!(loaded.records.is_empty(), "{:?}", loaded.records);
    assert_eq!(loaded.tombstones.len(), 1);
    assert_eq!(loaded.tombstones[0].0, "pod/a");
    assert_eq!(loaded.tombstones[0].1.version, 2);
    let fetched = s.load_resources(&["pod/a".to_string()]).await.unwrap();
    assert!(fetched.records.is_empty());
    assert_eq!(fetched.tombstones.len(), 1);
    // A deletion that does not follow the stored version is a conflict.
    let err = s
        .commit(&Commit {
            removed: vec![record("pod/a", 2, Health::Unknown)],
            ..Commit::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // Created again: it continues from the tombstone and is live again.
    let v3 = record("pod/a", 3, Health::Healthy);
    s.commit(&Commit {
        resources: vec![v3.clone()],
        relations_changed: vec!["pod/a".into()],
        history: vec![history(&v3, Health::Unknown)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.records, vec![v3]);
    assert!(loaded.tombstones.is_empty());
    let history = s.history("pod/a", 10).await.unwrap();
    assert_eq!(history.len(), 3, "the deleted version's history stays");
}

/// A rollup of `resource_id` (one minute, one sample).
fn rollup_of(resource_id: &str) -> RollupDelta {
    let mut d = delta(60_000, &[0.5], 61_000);
    d.key.resource_id = resource_id.into();
    d
}

/// Commits `id` at version 1 with its history, then deletes it (version 2).
async fn create_and_delete(s: &Store, id: &str) {
    let v1 = record(id, 1, Health::Healthy);
    s.commit(&Commit {
        resources: vec![v1.clone()],
        relations_changed: vec![id.into()],
        history: vec![history(&v1, Health::Unknown)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let gone = record(id, 2, Health::Unknown);
    s.commit(&Commit {
        removed: vec![gone.clone()],
        history: vec![history(&gone, Health::Healthy)],
        ..Commit::default()
    })
    .await
    .unwrap();
}

/// When each stored tombstone was deleted, by id.
async fn deletion_times(s: &Store) -> BTreeMap<String, i64> {
    s.load()
        .await
        .unwrap()
        .tombstones
        .into_iter()
        .map(|(id, t)| (id, t.deleted_at_ms))
        .collect()
}

async fn old_tombstones_are_pruned_with_their_rows(db: TestDb) {
    let s = &db.store;
    let epoch = s.open_session("agent-t", "replica-1").await.unwrap().epoch;
    let rollups = ["pod/old", "pod/new", "host/live"].map(rollup_of);
    s.flush(&[source("agent-t", epoch, 1, rollups.to_vec())])
        .await
        .unwrap();
    create_and_delete(s, "pod/old").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    create_and_delete(s, "pod/new").await;
    let live = record("host/live", 1, Health::Healthy);
    s.commit(&Commit {
        resources: vec![live.clone()],
        relations_changed: vec!["host/live".into()],
        history: vec![history(&live, Health::Unknown)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let deleted = deletion_times(s).await;
    let cutoff = deleted["pod/old"] + 1;
    assert!(deleted["pod/new"] >= cutoff, "{deleted:?}");

    assert_eq!(
        s.prune_tombstones(cutoff - 1).await.unwrap(),
        0,
        "a deletion at the cutoff is not before it"
    );
    assert_eq!(s.prune_tombstones(cutoff).await.unwrap(), 1);
    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.records, vec![live]);
    assert_eq!(
        loaded
            .tombstones
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        vec!["pod/new"]
    );
    assert!(s.history("pod/old", 10).await.unwrap().is_empty());
    assert_eq!(s.history("pod/new", 10).await.unwrap().len(), 2);
    assert_eq!(s.history("host/live", 10).await.unwrap().len(), 1);
    let stored = |i: usize| s.rollups(&rollups[i].key, 0, 200_000);
    assert!(stored(0).await.unwrap().is_empty(), "pod/old's rollups go");
    assert_eq!(stored(1).await.unwrap().len(), 1);
    assert_eq!(stored(2).await.unwrap().len(), 1);
    assert_eq!(s.prune_tombstones(cutoff).await.unwrap(), 0);

    // Created again, it starts over at version 1, and its history is written
    // (the old rows would have taken its versions).
    let again = record("pod/old", 1, Health::Healthy);
    s.commit(&Commit {
        resources: vec![again.clone()],
        history: vec![history(&again, Health::Unknown)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let h = s.history("pod/old", 10).await.unwrap();
    assert_eq!(h, vec![history(&again, Health::Unknown)]);
}

async fn a_prune_beyond_one_batch_takes_every_tombstone(db: TestDb) {
    let s = &db.store;
    let records: Vec<ResourceRecord> = (0..1005)
        .map(|i| record(&format!("pod/{i:04}"), 1, Health::Healthy))
        .collect();
    s.commit(&Commit {
        resources: records.clone(),
        ..Commit::default()
    })
    .await
    .unwrap();
    s.commit(&Commit {
        removed: records
            .iter()
            .map(|r| record(&r.id, 2, Health::Unknown))
            .collect(),
        ..Commit::default()
    })
    .await
    .unwrap();
    let cutoff = infrawatch_common::time::now_unix_ms() + 1;
    assert_eq!(s.prune_tombstones(cutoff).await.unwrap(), 1005);
    assert!(s.load().await.unwrap().tombstones.is_empty());
}

async fn warnings_are_replaced_filtered_and_deleted(db: TestDb) {
    use infrawatch_aggregator::store::{WarningFilter, WarningRow};
    let s = &db.store;
    let row = |ns: &str, name: &str, reason: &str, at: i64| WarningRow {
        cluster: "c".into(),
        namespace: ns.into(),
        name: name.into(),
        resource_id: format!("k8s/c/pod/{ns}/{name}"),
        reason: reason.into(),
        note: "n".into(),
        count: 1,
        last_seen_ms: at,
    };
    let all = |limit| WarningFilter {
        limit,
        ..WarningFilter::default()
    };
    s.write_warnings(
        "c",
        &[row("a", "x", "BackOff", 1), row("b", "y", "FailedMount", 2)],
        &[],
        false,
    )
    .await
    .unwrap();
    let got = s.warnings(&all(10)).await.unwrap();
    assert_eq!(
        got.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        vec!["y", "x"],
        "newest first"
    );
    let only_a = WarningFilter {
        namespaces: vec!["a".into()],
        ..all(10)
    };
    assert_eq!(s.warnings(&only_a).await.unwrap().len(), 1);
    let backoff = WarningFilter {
        reason: Some("BackOff".into()),
        ..all(10)
    };
    assert_eq!(s.warnings(&backoff).await.unwrap()[0].name, "x");
    assert_eq!(s.warnings(&all(1)).await.unwrap().len(), 1);
    // Updated in place, deleted, then replaced whole.
    s.write_warnings(
        "c",
        &[row("a", "x", "BackOff", 5)],
        &[("b".into(), "y".into())],
        false,
    )
    .await
    .unwrap();
    let got = s.warnings(&all(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].last_seen_ms, 5);
    s.write_warnings("c", &[row("z", "new", "Evicted", 9)], &[], true)
        .await
        .unwrap();
    let got = s.warnings(&all(10)).await.unwrap();
    assert_eq!(
        got.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        vec!["new"]
    );
}

async fn cursors_never_move_back(db: TestDb) {
    let s = &db.store;
    let epoch = s.open_session("agent-b", "replica-1").await.unwrap().epoch;
    for seq in [5, 3, 8, 2] {
        let fenced = s
            .flush(&[source("agent-b", epoch, seq, vec![])])
            .await
            .unwrap();
        assert!(fenced.is_empty());
    }
    let at_seq = |durable_seq, state_seq| Cursor {
        durable_seq,
        state_seq,
    };
    assert_eq!(s.cursor("agent-b").await.unwrap(), at_seq(8, 8));
    // A state commit moves the state position, forward only.
    for seq in [10, 9] {
        s.commit(&Commit {
            state_cursors: vec![at("agent-b", seq, epoch)],
            ..Commit::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(s.cursor("agent-b").await.unwrap(), at_seq(8, 10));
    // Only an explicit reset (an agent whose sequence restarted) moves them back,
    // and flushes count from there.
    s.reset_cursor("agent-b", 0, epoch).await.unwrap();
    s.flush(&[source("agent-b", epoch, 1, vec![])])
        .await
        .unwrap();
    assert_eq!(s.cursor("agent-b").await.unwrap(), at_seq(1, 1));
    assert_eq!(s.cursor("nobody").await.unwrap(), at_seq(0, 0));
}

/// A flush that committed although its reply was lost is sent again as it was
/// (the same unit: cursor and rollups): it adds nothing the second time, and a
/// newer unit in the same flush is written.
async fn a_flush_sent_twice_adds_once(db: TestDb) {
    let s = &db.store;
    let epoch = s.open_session("agent-t", "replica-1").await.unwrap().epoch;
    let unit = source(
        "agent-t",
        epoch,
        5,
        vec![delta(60_000, &[1.0, 2.0], 60_100)],
    );
    s.flush(std::slice::from_ref(&unit)).await.unwrap();
    let newer = source("agent-t", epoch, 7, vec![delta(60_000, &[4.0], 60_200)]);
    assert!(s.flush(&[unit, newer]).await.unwrap().is_empty());
    let key = delta(0, &[0.0], 0).key;
    let rows = s.rollups(&key, 0, 200_000).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].stats.count, rows[0].stats.sum), (3, 7.0));
    assert_eq!(s.cursor("agent-t").await.unwrap().durable_seq, 7);
}

/// A replica whose session of an agent was taken over writes nothing more for
/// it: not its samples, not its cursor, not its state position.
async fn a_taken_over_session_is_fenced(db: TestDb) {
    let s = &db.store;
    let old = s.open_session("agent-c", "replica-1").await.unwrap();
    s.flush(&[source("agent-c", old.epoch, 4, vec![])])
        .await
        .unwrap();
    let new = s.open_session("agent-c", "replica-2").await.unwrap();
    assert_eq!(new.previous_epoch, old.epoch);
    assert_eq!(new.cursor.durable_seq, 4);
    // Replica 1 flushes late: its source is fenced, the other one is written.
    let other = s.open_session("agent-d", "replica-1").await.unwrap();
    let fenced = s
        .flush(&[
            source("agent-c", old.epoch, 9, vec![delta(60_000, &[1.0], 60_000)]),
            source("agent-d", other.epoch, 2, vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(fenced, vec!["agent-c".to_string()]);
    assert_eq!(s.cursor("agent-c").await.unwrap().durable_seq, 4);
    assert_eq!(s.cursor("agent-d").await.unwrap().durable_seq, 2);
    let key = delta(0, &[0.0], 0).key;
    assert!(s.rollups(&key, 0, 200_000).await.unwrap().is_empty());
    assert!(matches!(
        s.commit(&Commit {
            resources: vec![record("host/c", 1, Health::Healthy)],
            state_cursors: vec![at("agent-c", 9, old.epoch)],
            ..Commit::default()
        })
        .await,
        Err(StoreError::SessionFenced { key }) if key == "agent-c"
    ));
    assert!(s.load().await.unwrap().records.is_empty());
    assert!(matches!(
        s.reset_cursor("agent-c", 0, old.epoch).await,
        Err(StoreError::SessionFenced { .. })
    ));
}

async fn rollups_accumulate(db: TestDb) {
    let s = &db.store;
    let epoch = s.open_session("agent-r", "replica-1").await.unwrap().epoch;
    s.flush(&[source(
        "agent-r",
        epoch,
        3,
        vec![
            delta(60_000, &[0.5], 61_000),
            delta(120_000, &[0.3], 121_000),
            // Two rows of one minute in one flush (two ledgers held the series)
            // are merged, not refused.
            delta(60_000, &[0.1], 60_200),
        ],
    )])
    .await
    .unwrap();
    // A later flush adds to the first bucket, with an older "last" that must not win.
    s.flush(&[source(
        "agent-r",
        epoch,
        4,
        vec![delta(60_000, &[0.9], 60_500)],
    )])
    .await
    .unwrap();
    let key = delta(0, &[0.0], 0).key;
    let rows = s.rollups(&key, 0, 200_000).await.unwrap();
    assert_eq!(rows.len(), 2);
    let first = &rows[0];
    assert_eq!(first.bucket_start_ms, 60_000);
    assert_eq!(first.stats.count, 3);
    assert!((first.stats.sum - 1.5).abs() < 1e-9);
    assert_eq!(first.stats.min, 0.1);
    assert_eq!(first.stats.max, 0.9);
    assert_eq!(
        first.last, 0.5,
        "the newest sample (61 s) wins over older ones, merged or written later"
    );
    assert_eq!(s.rollups(&key, 100_000, 200_000).await.unwrap().len(), 1);
}

/// One rollup minute of `resource_id`'s `metric{attributes}` with last value
/// `last` sampled at `last_ts`.
fn minute(
    resource_id: &str,
    metric: &str,
    attributes: &str,
    bucket: i64,
    last: f64,
    last_ts: i64,
) -> RollupDelta {
    let mut stats = Stats::default();
    stats.add(last);
    RollupDelta {
        key: SeriesKey::new(resource_id, metric, attributes),
        bucket_start_ms: bucket,
        stats,
        last: (last_ts, last),
    }
}

async fn the_newest_rollup_of_many_series_comes_in_one_query(db: TestDb) {
    let s = &db.store;
    let epoch = s.open_session("agent-l", "replica-1").await.unwrap().epoch;
    let (cpu, mem, net) = (
        "k8s.pod.cpu.usage",
        "k8s.pod.memory.working_set",
        "k8s.pod.network.io",
    );
    s.flush(&[source(
        "agent-l",
        epoch,
        1,
        vec![
            minute("host/m1/pod/shop/a", cpu, "", 60_000, 0.1, 61_000),
            minute("host/m1/pod/shop/a", cpu, "", 120_000, 0.2, 125_000),
            minute("host/m1/pod/shop/a", mem, "", 60_000, 500.0, 61_000),
            minute(
                "host/m1/pod/shop/a",
                net,
                "direction=\"receive\"",
                120_000,
                7.0,
                121_000,
            ),
            minute(
                "host/m1/pod/shop/a",
                net,
                "direction=\"transmit\"",
                120_000,
                9.0,
                121_000,
            ),
            minute("host/m1/pod/shop/b", cpu, "", 60_000, 0.3, 62_000),
            minute(
                "host/m1/volume/shop/data",
                "k8s.volume.available",
                "",
                120_000,
                1.0,
                121_000,
            ),
            minute("host/m10/pod/shop/c", cpu, "", 120_000, 0.4, 121_000),
            minute("host/M1/pod/shop/d", cpu, "", 120_000, 0.5, 121_000),
            minute("host/m_/pod/shop/e", cpu, "", 120_000, 0.6, 121_000),
            minute("host/mx/pod/shop/f", cpu, "", 120_000, 0.7, 121_000),
        ],
    )])
    .await
    .unwrap();
    let brief = |rows: Vec<infrawatch_aggregator::store::LatestRollup>| -> Vec<String> {
        rows.iter()
            .map(|r| {
                format!(
                    "{} {}{{{}}} {}@{} ({})",
                    r.key.resource_id,
                    r.key.metric,
                    r.key.attributes,
                    r.value,
                    r.sampled_at_ms,
                    r.bucket_start_ms
                )
            })
            .collect()
    };
    // Ids, among tens of thousands: one parameter, whatever SQLite's limit.
    let mut ids: Vec<String> = (0..40_000)
        .map(|i| format!("host/none/pod/x/{i}"))
        .collect();
    ids.push("host/m1/pod/shop/a".into());
    ids.push("host/m1/pod/shop/b".into());
    let pods = RolledUpResources::Ids(&ids);
    assert_eq!(
        brief(s.latest_rollups(pods, &[cpu, mem, net], 0).await.unwrap()),
        vec![
            "host/m1/pod/shop/a k8s.pod.cpu.usage{} 0.2@125000 (120000)",
            "host/m1/pod/shop/a k8s.pod.memory.working_set{} 500@61000 (60000)",
            "host/m1/pod/shop/a k8s.pod.network.io{direction=\"receive\"} 7@121000 (120000)",
            "host/m1/pod/shop/a k8s.pod.network.io{direction=\"transmit\"} 9@121000 (120000)",
            "host/m1/pod/shop/b k8s.pod.cpu.usage{} 0.3@62000 (60000)",
        ],
        "the newest minute of every series, in key order"
    );
    assert_eq!(
        brief(s.latest_rollups(pods, &[cpu], 100_000).await.unwrap()),
        vec!["host/m1/pod/shop/a k8s.pod.cpu.usage{} 0.2@125000 (120000)"],
        "only that metric, only minutes from `since` on"
    );
    assert!(
        s.latest_rollups(RolledUpResources::Ids(&[]), &[], 0)
            .await
            .unwrap()
            .is_empty()
    );
    // A prefix: exact, case and all, its wildcards taken literally.
    assert_eq!(
        brief(
            s.latest_rollups(RolledUpResources::Prefix("host/m1/pod/"), &[cpu], 0)
                .await
                .unwrap()
        ),
        vec![
            "host/m1/pod/shop/a k8s.pod.cpu.usage{} 0.2@125000 (120000)",
            "host/m1/pod/shop/b k8s.pod.cpu.usage{} 0.3@62000 (60000)",
        ]
    );
    assert_eq!(
        brief(
            s.latest_rollups(RolledUpResources::Prefix("host/m_/"), &[], 0)
                .await
                .unwrap()
        ),
        vec!["host/m_/pod/shop/e k8s.pod.cpu.usage{} 0.6@121000 (120000)"]
    );
    assert_eq!(
        s.latest_rollups(RolledUpResources::Prefix("host/m1/"), &[], 0)
            .await
            .unwrap()
            .len(),
        6,
        "every metric when none is named"
    );
}

async fn closed_database_is_a_retryable_failure(db: TestDb) {
    let s = &db.store;
    s.close().await;
    let err = s
        .commit(&Commit {
            resources: vec![record("host/z", 1, Health::Healthy)],
            state_cursors: vec![at("agent-z", 1, 1)],
            ..Commit::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.is_retryable(),
        "a closed pool is a retryable failure: {err:?}"
    );
}

fn event(position: u64, resource: &str, version: u64) -> StoredEvent {
    StoredEvent::new(
        position,
        pb::InfrastructureStatusUpdatedEvent {
            event_id: format!("0190b1c2-0000-7000-8000-{position:012}"),
            resource_id: resource.into(),
            resource_kind: "host".into(),
            resource_version: version,
            health: Health::Healthy as i32,
            previous_health: Health::Unknown as i32,
            changed: vec!["created".into()],
            ..Default::default()
        },
        None,
    )
}

/// Events are staged with the state and get positions from the leader's
/// sequencer, in commit order; the head survives pruning; cursors only move
/// forward; dead letters keep the event and the reason.
async fn outbox_round_trips(db: TestDb) {
    let s = &db.store;
    assert_eq!(s.event_head().await.unwrap(), 0);
    let bad = event(0, "host/x", 9).event;
    s.commit(&Commit {
        resources: vec![record("host/a", 1, Health::Healthy)],
        events: vec![event(0, "host/a", 1), event(0, "host/b", 1)],
        dead_letters: vec![DeadLetter {
            event: bad.clone(),
            reason: "resource_version: 9 does not follow 0".into(),
            recorded_at_ms: 5,
        }],
        ..Commit::default()
    })
    .await
    .unwrap();
    s.commit(&Commit {
        events: vec![event(0, "host/a", 2)],
        ..Commit::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.event_head().await.unwrap(),
        0,
        "staged, not yet sequenced"
    );
    assert!(s.events_after(0, 10).await.unwrap().is_empty());
    // Only the lease holder sequences.
    let epoch = s
        .take_lease("leader", "replica-1", 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.take_lease("leader", "replica-2", 10_000).await.unwrap(),
        None
    );
    let lost = LeaseHold {
        name: "leader".into(),
        holder: "replica-2".into(),
        epoch,
    };
    assert!(matches!(
        s.sequence_events(&lost, 10).await,
        Err(StoreError::LeaseLost(_))
    ));
    let hold = LeaseHold {
        name: "leader".into(),
        holder: "replica-1".into(),
        epoch,
    };
    let positions = |round: Vec<StoredEvent>| -> Vec<(u64, String)> {
        round
            .into_iter()
            .map(|e| (e.position, e.event.resource_id))
            .collect()
    };
    let round = s.sequence_events(&hold, 2).await.unwrap();
    assert_eq!(
        positions(round),
        vec![(1, "host/a".to_string()), (2, "host/b".to_string())],
        "in commit order, with the events"
    );
    let round = s.sequence_events(&hold, 10).await.unwrap();
    assert_eq!(positions(round), vec![(3, "host/a".to_string())]);
    assert!(s.sequence_events(&hold, 10).await.unwrap().is_empty());
    assert_eq!(s.event_head().await.unwrap(), 3);
    let read = s.events_after(1, 10).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(read[0].event.resource_id, "host/b");
    assert_eq!(read[1].event, event(0, "host/a", 2).event);
    assert_eq!(s.events_after(0, 1).await.unwrap().len(), 1);
    // Given up, the lease goes to the next replica with a higher epoch.
    s.release_lease("leader", "replica-1").await.unwrap();
    let next = s.take_lease("leader", "replica-2", 10_000).await.unwrap();
    assert_eq!(next, Some(epoch + 1));
    assert!(matches!(
        s.sequence_events(&hold, 10).await,
        Err(StoreError::LeaseLost(_))
    ));

    assert!(
        s.create_cursor("sink:nats", CursorKind::Sink, "{}", 1, "")
            .await
            .unwrap()
    );
    assert!(
        !s.create_cursor("sink:nats", CursorKind::Sink, "{}", 0, "")
            .await
            .unwrap()
    );
    let moved = s.advance_cursor("sink:nats", 3).await.unwrap().unwrap();
    assert_eq!(moved.position, 3);
    let kept = s.advance_cursor("sink:nats", 2).await.unwrap().unwrap();
    assert_eq!(kept.position, 3, "a cursor never moves back");
    assert!(s.advance_cursor("nobody", 2).await.unwrap().is_none());
    assert!(
        !s.delete_cursor("sink:nats", CursorKind::Subscription)
            .await
            .unwrap()
    );

    assert_eq!(s.prune_events(2, i64::MAX).await.unwrap(), 2);
    assert_eq!(s.oldest_event_position().await.unwrap(), Some(3));
    assert_eq!(s.prune_events(3, i64::MAX).await.unwrap(), 1);
    assert_eq!(s.oldest_event_position().await.unwrap(), None);
    assert_eq!(
        s.event_head().await.unwrap(),
        3,
        "the head survives pruning"
    );

    let letters = s.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event, bad);
    assert!(letters[0].reason.contains("does not follow"));
}

/// A commit made under the held leader lease gives its events positions in
/// its own transaction, after what other commits staged; under a lost lease it
/// leaves them staged for the next leader.
async fn the_leaders_commit_sequences_its_events(db: TestDb) {
    let s = &db.store;
    let epoch = s
        .take_lease("leader", "replica-1", 10_000)
        .await
        .unwrap()
        .unwrap();
    let hold = LeaseHold {
        name: "leader".into(),
        holder: "replica-1".into(),
        epoch,
    };
    let lost = LeaseHold {
        epoch: epoch + 1,
        ..hold.clone()
    };
    // Staged by another replica's commit.
    s.commit(&Commit {
        events: vec![event(0, "host/a", 1)],
        ..Commit::default()
    })
    .await
    .unwrap();
    let under_lost = s
        .commit(&Commit {
            events: vec![event(0, "host/b", 1)],
            sequence: Some(lost),
            ..Commit::default()
        })
        .await
        .unwrap();
    assert!(under_lost.is_empty(), "a lost lease sequences nothing");
    assert_eq!(s.event_head().await.unwrap(), 0);
    let sequenced = s
        .commit(&Commit {
            events: vec![event(0, "host/c", 1)],
            sequence: Some(hold.clone()),
            ..Commit::default()
        })
        .await
        .unwrap();
    let positions: Vec<(u64, String)> = sequenced
        .iter()
        .map(|e| (e.position, e.event.resource_id.clone()))
        .collect();
    assert_eq!(
        positions,
        vec![
            (1, "host/a".to_string()),
            (2, "host/b".to_string()),
            (3, "host/c".to_string())
        ],
        "what was staged first comes first"
    );
    assert_eq!(sequenced[2].event, event(0, "host/c", 1).event);
    assert!(s.sequence_events(&hold, 10).await.unwrap().is_empty());
    assert_eq!(s.event_head().await.unwrap(), 3);
    let stored: Vec<String> = s
        .events_after(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.resource_id)
        .collect();
    assert_eq!(stored, vec!["host/a", "host/b", "host/c"]);
}

/// The leader's commits positioning their own events, the sequencer's rounds
/// and other replicas' commits staging events, all at once: every event gets
/// exactly one position, the positions run 1..=n without a gap, and no
/// transaction fails (on PostgreSQL both take the head row's lock before they
/// touch the staged events, so they cannot deadlock or hand out a position
/// twice).
async fn positions_are_given_once_under_concurrent_commits(db: TestDb) {
    const EACH: usize = 60;
    let s = &db.store;
    let epoch = s
        .take_lease("leader", "replica-1", 60_000)
        .await
        .unwrap()
        .unwrap();
    let hold = LeaseHold {
        name: "leader".into(),
        holder: "replica-1".into(),
        epoch,
    };
    let hold = &hold;
    let committer = move |who: &'static str, sequence: bool| async move {
        let mut positioned = Vec::new();
        for i in 0..EACH {
            let got = s
                .commit(&Commit {
                    events: vec![event(0, &format!("host/{who}-{i}"), 1)],
                    sequence: sequence.then(|| hold.clone()),
                    ..Commit::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{who}'s commit {i} failed: {e:?}"));
            positioned.extend(got);
        }
        positioned
    };
    let sequencer = async move {
        let mut positioned = Vec::new();
        for _ in 0..EACH {
            positioned.extend(s.sequence_events(hold, 7).await.unwrap());
            tokio::task::yield_now().await;
        }
        positioned
    };
    let (leader, _, _, rounds) = tokio::join!(
        committer("leader", true),
        committer("follower-1", false),
        committer("follower-2", false),
        sequencer
    );
    let mut positioned = leader;
    positioned.extend(rounds);
    loop {
        let round = s.sequence_events(hold, 100).await.unwrap();
        if round.is_empty() {
            break;
        }
        positioned.extend(round);
    }
    positioned.sort_by_key(|e| e.position);
    let positions: Vec<u64> = positioned.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=3 * EACH as u64).collect::<Vec<_>>());
    let ids: std::collections::BTreeSet<&str> = positioned
        .iter()
        .map(|e| e.event.resource_id.as_str())
        .collect();
    assert_eq!(ids.len(), 3 * EACH, "each event once");
    assert_eq!(s.event_head().await.unwrap(), 3 * EACH as u64);
    let stored = s.events_after(0, 1_000).await.unwrap();
    assert_eq!(stored.len(), 3 * EACH);
    assert!(
        stored
            .iter()
            .zip(&positioned)
            .all(|(a, b)| a.position == b.position && a.event == b.event),
        "the outbox holds what was handed out"
    );
}

/// Heartbeats say which replicas are alive; a stopped one is not.
async fn replicas_are_alive_while_they_beat(db: TestDb) {
    let s = &db.store;
    s.heartbeat("replica-1", 10_000).await.unwrap();
    s.heartbeat("replica-2", 10_000).await.unwrap();
    s.retire("replica-2").await.unwrap();
    assert_eq!(
        s.live_replicas().await.unwrap(),
        vec!["replica-1".to_string()]
    );
    s.open_session("agent-x", "replica-1").await.unwrap();
    assert_eq!(
        s.session_owners().await.unwrap(),
        vec![SessionOwner {
            key: "agent-x".into(),
            owner: "replica-1".into(),
            epoch: 1
        }]
    );
}

/// A commit writes (and so locks) its rows in id order, whatever the order of
/// its plan: replicas committing the same resources at once wait for one
/// another instead of deadlocking (PostgreSQL would fail one of the commits
/// after its deadlock timeout, and the agent's stream with it).
async fn commits_lock_rows_in_one_order(db: TestDb) {
    let s = &db.store;
    let ids: Vec<String> = (0..20).map(|i| format!("host/lock-{i:02}")).collect();
    s.commit(&Commit {
        resources: ids
            .iter()
            .map(|id| record(id, 1, Health::Healthy))
            .collect(),
        ..Commit::default()
    })
    .await
    .unwrap();
    // Every row conflicts: the ids come back in the order they were written.
    let err = s
        .commit(&Commit {
            resources: ids
                .iter()
                .rev()
                .map(|id| record(id, 1, Health::Degraded))
                .collect(),
            ..Commit::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(got) if got == &ids),
        "{err:?}"
    );
    if s.backend() != infrawatch_aggregator::config::Backend::Postgres {
        return;
    }
    // Two writers (two pooled connections, as two replicas), one planning the
    // resources in ascending order, the other in descending order: conflicts,
    // never a deadlock.
    let ids = &ids;
    let writer = move |descending: bool| async move {
        let mut conflicts = 0;
        for _ in 0..30 {
            let stored: BTreeMap<String, u64> = s
                .load()
                .await
                .unwrap()
                .records
                .into_iter()
                .map(|r| (r.id, r.version))
                .collect();
            let mut resources: Vec<ResourceRecord> = ids
                .iter()
                .map(|id| record(id, stored[id] + 1, Health::Healthy))
                .collect();
            if descending {
                resources.reverse();
            }
            match s
                .commit(&Commit {
                    resources,
                    ..Commit::default()
                })
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => conflicts += 1,
                Err(e) => panic!("a commit failed: {e:?}"),
            }
        }
        conflicts
    };
    let (up, down) = tokio::join!(writer(false), writer(true));
    let versions: Vec<u64> = s
        .load()
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions.len(), ids.len());
    assert!(
        versions.iter().all(|v| *v == versions[0]),
        "every commit wrote all of its rows or none: {versions:?}"
    );
    assert_eq!(
        versions[0],
        1 + 60 - up - down,
        "one version per commit that went through"
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::postgres(stringify!($name)).await;
                    let name = db.pg_name.clone();
                    super::$name(db).await;
                    super::drop_postgres(name).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
    };
}

suite!(
    state_round_trips,
    a_deleted_resource_leaves_a_tombstone,
    old_tombstones_are_pruned_with_their_rows,
    a_prune_beyond_one_batch_takes_every_tombstone,
    warnings_are_replaced_filtered_and_deleted,
    versions_follow_the_stored_one,
    cursors_never_move_back,
    a_taken_over_session_is_fenced,
    a_flush_sent_twice_adds_once,
    rollups_accumulate,
    the_newest_rollup_of_many_series_comes_in_one_query,
    closed_database_is_a_retryable_failure,
    outbox_round_trips,
    the_leaders_commit_sequences_its_events,
    positions_are_given_once_under_concurrent_commits,
    replicas_are_alive_while_they_beat,
    commits_lock_rows_in_one_order,
);
