use super::*;
use infrawatch_proto::v1::SampleColumns;

fn batch(seq: u64, samples: usize) -> Batch {
    let now = infrawatch_common::time::now_unix_ms();
    Batch {
        seq,
        base_time_unix_ms: now,
        strings: vec!["x".repeat(200)],
        samples: Some(SampleColumns {
            series: vec![0; samples],
            time_offset_ms: (0..samples as i64).collect(),
            values: vec![1.5; samples],
        }),
        ..Default::default()
    }
}

fn small() -> BufferConfig {
    BufferConfig {
        max_bytes: 256 * 1024,
        max_age_ms: 3_600_000,
        segment_bytes: 64 * 1024,
        fsync_interval_ms: 250,
        memory_bytes: 8 * 1024,
    }
}

fn seqs(buf: &DiskBuffer) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = 0;
    while let Some(b) = buf.next_after(after) {
        out.push(b.seq);
        after = b.seq;
    }
    out
}

#[test]
fn batches_survive_a_restart_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    for seq in 1..=50 {
        buf.push(batch(seq, 20));
    }
    buf.ack(10);
    buf.sync().unwrap();
    assert_eq!(seqs(&buf), (11..=50).collect::<Vec<_>>());
    drop(buf);

    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert_eq!(
        seqs(&buf),
        (11..=50).collect::<Vec<_>>(),
        "replayed oldest first"
    );
    let b = buf.next_after(20).unwrap();
    assert_eq!(
        b.samples.as_ref().unwrap().values.len(),
        20,
        "read back intact"
    );
    buf.push(batch(51, 20));
    assert_eq!(
        seqs(&buf).last(),
        Some(&51),
        "new batches follow the replay"
    );
    buf.ack(51);
    assert!(buf.is_empty());
    assert_eq!(buf.dropped(), Dropped::default());
}

#[test]
fn acknowledged_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    for seq in 1..=600 {
        buf.push(batch(seq, 20));
    }
    let files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count()
    };
    assert!(files() > 2, "several segments");
    buf.ack(600);
    assert_eq!(files(), 1, "only the active segment stays");
    assert!(buf.bytes() <= small().segment_bytes);
}

#[test]
fn the_cap_holds_and_the_loss_is_reported_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    for seq in 1..=2000 {
        buf.push(batch(seq, 20));
        assert!(buf.bytes() <= small().max_bytes, "cap exceeded at {seq}");
    }
    let d = buf.dropped();
    assert!(d.batches > 0);
    assert_eq!(d.samples, d.batches * 20);
    let kept = seqs(&buf);
    assert_eq!(
        kept.len() as u64 + d.batches,
        2000,
        "every batch kept or counted"
    );
    // The gaps ride in the kept batches; together they name every lost batch once.
    let mut lost: Vec<u64> = Vec::new();
    let mut samples = 0;
    let mut after = 0;
    while let Some(b) = buf.next_after(after) {
        for g in &b.gaps {
            assert_eq!(g.cause, cause::BUFFER_FULL);
            assert!(g.exact);
            lost.extend(g.first_seq..=g.last_seq);
            samples += g.samples_lost;
        }
        after = b.seq;
    }
    lost.extend(
        buf.pending_gaps()
            .iter()
            .flat_map(|g| g.first_seq..=g.last_seq),
    );
    samples += buf
        .pending_gaps()
        .iter()
        .map(|g| g.samples_lost)
        .sum::<u64>();
    lost.sort_unstable();
    let expected: Vec<u64> = (1..=2000).filter(|s| !kept.contains(s)).collect();
    assert_eq!(lost, expected);
    assert_eq!(samples, d.samples);
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    for seq in 1..=5 {
        buf.push(batch(seq, 10));
    }
    buf.sync().unwrap();
    drop(buf);
    // A crash in the middle of writing batch 5's payload.
    let seg = segment_path(dir.path(), 1);
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 30).unwrap();

    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert_eq!(seqs(&buf), vec![1, 2, 3, 4]);
    let gaps = buf.pending_gaps();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].first_seq, gaps[0].samples_lost, gaps[0].exact),
        (5, 10, true)
    );
    assert_eq!(gaps[0].cause, cause::CORRUPT);
    // New batches append after the cut and carry the gap.
    buf.push(batch(6, 10));
    assert_eq!(seqs(&buf), vec![1, 2, 3, 4, 6]);
    assert_eq!(buf.next_after(5).unwrap().gaps.len(), 1);
    drop(buf);
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert_eq!(
        seqs(&buf),
        vec![1, 2, 3, 4, 6],
        "the log is clean after the cut"
    );
}

#[test]
fn a_damaged_header_is_cut_and_reported_as_inexact() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    for seq in 1..=3 {
        buf.push(batch(seq, 10));
    }
    buf.sync().unwrap();
    drop(buf);
    let seg = segment_path(dir.path(), 1);
    let mut data = std::fs::read(&seg).unwrap();
    let second = data.len() / 3;
    data[second + 2] ^= 0xff;
    std::fs::write(&seg, &data).unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert_eq!(seqs(&buf), vec![1]);
    let gaps = buf.pending_gaps();
    assert_eq!(gaps.len(), 1);
    assert!(!gaps[0].exact);
    assert_eq!(gaps[0].first_seq, 2);
}

#[test]
fn rejected_batches_become_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    buf.push(batch(1, 7));
    buf.push(batch(2, 7));
    assert_eq!(buf.reject_after(0), Some(1));
    buf.push(batch(3, 7));
    let b = buf.next_after(2).unwrap();
    assert_eq!(b.gaps.len(), 1);
    assert_eq!(b.gaps[0].cause, cause::REJECTED);
    assert_eq!((b.gaps[0].first_seq, b.gaps[0].samples_lost), (1, 7));
    assert_eq!(buf.dropped().rejected_batches, 1);
}

#[test]
fn a_refused_batch_after_received_ones_leaves_them_pending() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    for seq in 1..=4 {
        buf.push(batch(seq, 3));
    }
    // 1 and 2 were received (not durable) when 3 was refused.
    assert_eq!(buf.reject_after(2), Some(3));
    assert_eq!(seqs(&buf), vec![1, 2, 4]);
    assert_eq!(buf.pending_gaps()[0].first_seq, 3);
    buf.sync().unwrap();
    drop(buf);
    // Until a later batch is durable, a restart sends the refused one again.
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert_eq!(seqs(&buf), vec![1, 2, 3, 4]);
    buf.ack(4);
    buf.sync().unwrap();
    drop(buf);
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert!(buf.is_empty());
}

#[test]
fn old_data_is_dropped_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    let mut old = batch(1, 5);
    old.base_time_unix_ms -= 2 * 3_600_000;
    buf.push(old);
    buf.push(batch(2, 5));
    assert_eq!(seqs(&buf), vec![2]);
    let b = buf.next_after(1).unwrap();
    assert_eq!(b.gaps[0].cause, cause::BUFFER_AGE);
}

#[test]
fn settings_are_checked() {
    assert!(BufferConfig::default().problems().is_empty());
    let bad = BufferConfig {
        max_bytes: 1000,
        fsync_interval_ms: 0,
        ..BufferConfig::default()
    };
    let fields: Vec<_> = bad.problems().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, vec!["max_bytes", "fsync_interval_ms"]);
}

/// From now on every write to the active segment fails, as on a full disk.
fn refuse_writes(buf: &DiskBuffer) {
    let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
    buf.lock().active = Some(Arc::new(full));
}

#[test]
fn a_disk_that_keeps_refusing_writes_makes_one_gap() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    buf.push(batch(1, 10));
    refuse_writes(&buf);
    // More failed batches than the aggregator accepts gaps in one batch (1,000).
    for seq in 2..=1500 {
        buf.push(batch(seq, 10));
    }
    assert_eq!(seqs(&buf), vec![1]);
    assert_eq!(
        buf.dropped(),
        Dropped {
            batches: 1499,
            samples: 14_990,
            rejected_batches: 0
        }
    );
    let gaps = buf.pending_gaps();
    assert_eq!(gaps.len(), 1, "one gap, not one per batch");
    let g = &gaps[0];
    assert_eq!(
        (g.first_seq, g.last_seq, g.batches_lost, g.samples_lost),
        (2, 1500, 1499, 14_990)
    );
    assert_eq!((g.cause.as_str(), g.exact), (cause::DISK_ERROR, true));
}

#[test]
fn acknowledged_records_do_not_keep_a_full_disk_full() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    for seq in 1..=5 {
        buf.push(batch(seq, 10));
    }
    buf.ack(5);
    // The disk is full, of the active segment's acknowledged records: that
    // segment is deleted and the batch goes to a new one, nothing lost.
    refuse_writes(&buf);
    buf.push(batch(6, 10));
    assert_eq!(seqs(&buf), vec![6]);
    assert_eq!(buf.dropped(), Dropped::default());
    assert!(!segment_path(dir.path(), 1).exists());
    assert!(segment_path(dir.path(), 6).exists());

    // A segment with an unacknowledged batch stays: the new batch is lost, and
    // reported.
    refuse_writes(&buf);
    buf.push(batch(7, 10));
    assert_eq!(seqs(&buf), vec![6]);
    assert_eq!(buf.dropped().batches, 1);
    let gaps = buf.pending_gaps();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].first_seq, gaps[0].cause.as_str()),
        (7, cause::DISK_ERROR)
    );
    drop(buf);
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert_eq!(seqs(&buf), vec![6], "the log is clean");
    assert!(buf.pending_gaps().is_empty());
}

#[test]
fn a_batch_carries_at_most_max_gaps_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    buf.lock().gaps = (0..1200)
        .map(|i| DataGap {
            first_seq: 2 * i + 1,
            last_seq: 2 * i + 1,
            batches_lost: 1,
            cause: cause::CORRUPT.into(),
            exact: true,
            ..Default::default()
        })
        .collect();
    for seq in 5000..=5002 {
        buf.push(batch(seq, 1));
    }
    let carried: Vec<Vec<u64>> = [4999, 5000, 5001]
        .iter()
        .map(|after| {
            let b = buf.next_after(*after).unwrap();
            b.gaps.iter().map(|g| g.first_seq).collect()
        })
        .collect();
    assert_eq!(
        carried.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![MAX_GAPS_PER_BATCH, MAX_GAPS_PER_BATCH, 200]
    );
    let all: Vec<u64> = carried.concat();
    assert_eq!(
        all,
        (0..1200).map(|i| 2 * i + 1).collect::<Vec<_>>(),
        "oldest first, each once"
    );
    assert!(buf.pending_gaps().is_empty());
}

/// The periodic sync skips the `fdatasync` of batches an aggregator holds
/// (durably acknowledged, or received on the current stream) and writes the acknowledged position at most every
/// `ACKED_WRITE_INTERVAL`; the final sync writes whatever is left.
#[test]
fn periodic_sync_does_only_what_durability_needs() {
    let dir = tempfile::tempdir().unwrap();
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert!(!buf.sync_due(), "nothing appended, nothing to do");

    buf.push(batch(1, 5));
    assert!(
        buf.sync_due(),
        "an unacknowledged batch must reach the disk"
    );
    buf.sync_periodic().unwrap();
    assert!(!buf.sync_due());

    buf.push(batch(2, 5));
    buf.ack(2);
    assert!(!buf.lock().needs_fdatasync(), "acknowledged: no fdatasync");
    assert!(buf.sync_due(), "the first acknowledged position is written");
    buf.sync_periodic().unwrap();
    assert_eq!(read_acked(dir.path()), 2);

    buf.push(batch(3, 5));
    buf.ack(3);
    assert!(
        !buf.sync_due(),
        "acknowledged batch and a position written less than {ACKED_WRITE_INTERVAL:?} ago"
    );
    buf.push(batch(4, 5));
    assert!(buf.sync_due(), "batch 4 is not acknowledged");
    buf.sync_periodic().unwrap();
    assert_eq!(
        read_acked(dir.path()),
        2,
        "the position waits for its interval"
    );

    buf.push(batch(5, 5));
    buf.received(5);
    assert!(
        !buf.sync_due(),
        "an aggregator holds batch 5 until it makes it durable"
    );
    buf.stream_ended();
    assert!(
        buf.sync_due(),
        "its stream ended: batch 5 is synced after all"
    );
    buf.sync_periodic().unwrap();
    assert!(!buf.sync_due());

    buf.sync().unwrap();
    assert_eq!(read_acked(dir.path()), 3, "the final sync writes it");
    drop(buf);
    let buf = DiskBuffer::open(dir.path(), small()).unwrap();
    assert_eq!(seqs(&buf), vec![4, 5]);
}
