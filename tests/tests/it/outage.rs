//! A database that cannot be written delays acknowledgements; nothing the agent
//! sent is lost or applied out of order once it can be written again.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use infrawatch_e2e::{Aggregator, Pki, RawStream, batch};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_database_delays_acknowledgements_but_loses_nothing() {
    super::init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["agent-lock"]).unwrap();
    let db = dir.path().join("iw.db");
    let agg =
        Aggregator::start(dir.path(), &pki, &format!("sqlite://{}", db.display()), "").unwrap();
    let files = pki.client("agent-lock");
    let now = infrawatch_common::time::now_unix_ms();
    let mut s = RawStream::open(&agg.endpoint(), &files, 0)
        .await
        .unwrap()
        .unwrap();
    s.send(batch(1, "host/lock", "system.cpu.utilization", 0.1, now))
        .await
        .unwrap();
    assert_eq!(s.next_ack().await.unwrap().seq, 1);

    // Another process holds the write lock for 8 s (longer than SQLite's 5 s busy
    // timeout, so the aggregator's writes fail and must be retried).
    let script = "import sqlite3,sys,time\n\
        c=sqlite3.connect(sys.argv[1], isolation_level=None)\n\
        c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(8)\nc.execute('COMMIT')\n";
    let mut locker = Command::new("python3")
        .args(["-c", script, &db.display().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let locked_at = Instant::now();

    for seq in 2..=6 {
        s.send(batch(
            seq,
            "host/lock",
            "system.cpu.utilization",
            0.1 * seq as f64,
            now + seq as i64,
        ))
        .await
        .unwrap();
    }
    for seq in 2..=6 {
        let ack = s.next_ack().await.unwrap();
        assert_eq!((ack.seq, ack.duplicate), (seq, false));
    }
    assert!(
        locked_at.elapsed() >= Duration::from_secs(7),
        "acknowledged while the database was locked"
    );
    assert!(locker.wait().unwrap().success());

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar(
        "SELECT SUM(sample_count) FROM metric_rollups WHERE resource_id = 'host/lock'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(stored, 6, "every batch stored exactly once");
    let cursor: i64 =
        sqlx::query_scalar("SELECT last_seq FROM agent_cursors WHERE agent_id = 'agent-lock/lock'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(cursor, 6);
}
