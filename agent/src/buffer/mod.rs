//! The disk buffer: every closed batch is appended to a write-ahead log before it
//! is sent, and removed only when the aggregator acknowledged it as durable
//! (committed; a *received* acknowledgement does not free a batch here).
//!
//! The log is a directory of segment files (`<first seq>.wal`, 8 MiB by default)
//! of [records](record) with a checksum each. Appends go to the newest segment and
//! are made durable with `fdatasync` within `fsync_interval_ms` (250 ms by
//! default, by [`DiskBuffer::sync_periodic`]) unless an aggregator already holds
//! them (it acknowledged them as received on the current stream, or as durable);
//! a segment whose batches are all acknowledged is deleted. The newest (active)
//! segment stays until it reaches `segment_bytes`, except when the disk
//! refuses a write while all of it is acknowledged: then a
//! new segment takes its place, so a disk with less room than one segment does
//! not stay full of acknowledged data. After a crash [`DiskBuffer::open`] reads the
//! segments back, cuts a torn or corrupt tail, and the transport sends what was not
//! acknowledged, oldest first, while new batches keep being appended.
//!
//! The log is capped in bytes and in age. When a new batch would pass a cap, the
//! oldest segments are dropped. Whatever is lost (cap, age, a disk error, a corrupt
//! record, a batch the aggregator refused) becomes a [`DataGap`] (batches, samples,
//! time range, cause) that rides in the next batch to the aggregator, so the loss
//! is recorded there instead of being silent. Gaps carried by a batch that is
//! itself dropped are carried on again; consecutive losses of one cause merge into
//! one gap, and a batch carries at most [`MAX_GAPS_PER_BATCH`].
//!
//! The newest batches also stay in memory (up to `memory_bytes`), so sending them
//! reads nothing from disk; older ones are read back when their turn comes.

pub mod record;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use infrawatch_proto::v1::{Batch, DataGap};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use record::{HEADER_LEN, Header, encode_record};

/// Settings of the disk buffer (`[buffer]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Most bytes on disk; past this the oldest data is dropped (and reported).
    pub max_bytes: u64,
    /// Oldest data kept (ms); older unacknowledged batches are dropped (and reported).
    pub max_age_ms: u64,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
    /// Appended data is made durable at least this often (ms).
    pub fsync_interval_ms: u64,
    /// Newest batches also kept in memory, in bytes.
    pub memory_bytes: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_age_ms: 24 * 3600 * 1000,
            segment_bytes: 8 * 1024 * 1024,
            fsync_interval_ms: 250,
            memory_bytes: 4 * 1024 * 1024,
        }
    }
}

impl BufferConfig {
    /// Problems with the settings, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.segment_bytes < 64 * 1024 {
            p.push(("segment_bytes", "must be at least 65536".into()));
        }
        if self.max_bytes < 2 * self.segment_bytes {
            p.push((
                "max_bytes",
                format!(
                    "must be at least twice buffer.segment_bytes ({})",
                    self.segment_bytes
                ),
            ));
        }
        if self.max_age_ms < 60_000 {
            p.push(("max_age_ms", "must be at least 60000".into()));
        }
        if !(10..=10_000).contains(&self.fsync_interval_ms) {
            p.push(("fsync_interval_ms", "must be between 10 and 10000".into()));
        }
        p
    }
}

/// Errors of the disk buffer.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// A file or directory operation failed.
    #[error("disk buffer {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Most gaps attached to one batch: the aggregator refuses a batch with more than
/// 1,000, and such a batch would be refused again each time it carried them on.
pub const MAX_GAPS_PER_BATCH: usize = 500;

/// Totals of what was dropped, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Batches dropped (any cause).
    pub batches: u64,
    /// Samples in them.
    pub samples: u64,
    /// Batches the aggregator rejected as invalid (also counted above).
    pub rejected_batches: u64,
}

/// Why data was lost.
pub mod cause {
    /// The byte cap was reached.
    pub const BUFFER_FULL: &str = "buffer_full";
    /// Data older than the age cap.
    pub const BUFFER_AGE: &str = "buffer_age";
    /// The disk refused a write (full, I/O error).
    pub const DISK_ERROR: &str = "disk_error";
    /// A record failed its checksum (torn write, damaged file).
    pub const CORRUPT: &str = "corrupt";
    /// The aggregator refused the batch as invalid.
    pub const REJECTED: &str = "rejected";
}

/// One unacknowledged batch.
#[derive(Debug)]
struct Entry {
    header: Header,
    /// Segment (its first seq) and offset of the record.
    segment: u64,
    offset: u64,
    /// Gaps this batch carries (re-queued if the batch is dropped).
    gaps: Vec<DataGap>,
    /// The batch, while it fits in the memory budget.
    batch: Option<Arc<Batch>>,
}

/// Longest time between two writes of the acknowledged position while batches
/// flow (see [`DiskBuffer::sync_periodic`]).
pub const ACKED_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// What a sync must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    /// Everything written so far made durable (a stopping agent).
    Everything,
    /// What the periodic flusher owes (see [`DiskBuffer::sync_periodic`]).
    Periodic,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    bytes: u64,
    last_seq: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// Append handle of the newest segment.
    active: Option<Arc<File>>,
    entries: VecDeque<Entry>,
    bytes: u64,
    memory: u64,
    /// Highest seq appended to the log.
    appended_through: u64,
    /// Highest seq known to be on disk (`fdatasync` done).
    synced_through: u64,
    /// Highest seq an aggregator said it received on the current stream (it
    /// holds those batches until it makes them durable).
    received: u64,
    acked: u64,
    acked_written: u64,
    /// When the acknowledged position was last written (None: not in this run).
    acked_written_at: Option<Instant>,
    /// Newest sample time (Unix ms) of the batches acknowledged durable in this
    /// run (0 before the first).
    durable_through_ms: i64,
    /// Losses not yet attached to a batch.
    gaps: Vec<DataGap>,
    dropped: Dropped,
}

/// The disk buffer of closed, unacknowledged batches, oldest first.
#[derive(Debug)]
pub struct DiskBuffer {
    inner: Mutex<Inner>,
    config: BufferConfig,
    /// Carries the newest seq appended, so the transport wakes without lost signals.
    newest: watch::Sender<u64>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<(), BufferError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn add_gap(gaps: &mut Vec<DataGap>, h: &Header, cause: &str, exact: bool) {
    // Consecutive losses of one cause merge into one gap.
    if let Some(g) = gaps.last_mut()
        && g.cause == cause
        && g.last_seq.checked_add(1) == Some(h.seq)
        && g.exact == exact
    {
        g.last_seq = h.seq;
        g.from_unix_ms = g.from_unix_ms.min(h.min_ts);
        g.to_unix_ms = g.to_unix_ms.max(h.max_ts);
        g.samples_lost += u64::from(h.samples);
        g.batches_lost += 1;
        return;
    }
    gaps.push(DataGap {
        first_seq: h.seq,
        last_seq: h.seq,
        from_unix_ms: h.min_ts,
        to_unix_ms: h.max_ts,
        samples_lost: u64::from(h.samples),
        batches_lost: 1,
        cause: cause.to_string(),
        exact,
    });
}

fn count_loss(cause: &'static str, batches: u64, samples: u64) {
    metrics::counter!("infrawatch_agent_buffer_dropped_batches_total", "cause" => cause)
        .increment(batches);
    metrics::counter!("infrawatch_agent_buffer_dropped_samples_total", "cause" => cause)
        .increment(samples);
}

impl Inner {
    fn lose(&mut self, e: &Entry, cause: &'static str, exact: bool) {
        // What the lost batch carried must still arrive. It goes first so that this
        // loss merges with a carried one it continues: a disk that refuses batch
        // after batch makes one gap, not one per batch (a batch with more than
        // 1,000 gaps would be refused by the aggregator).
        self.gaps.extend(e.gaps.iter().cloned());
        add_gap(&mut self.gaps, &e.header, cause, exact);
        self.dropped.batches += 1;
        self.dropped.samples += u64::from(e.header.samples);
        count_loss(cause, 1, u64::from(e.header.samples));
    }

    /// Drops the oldest segment (never the active one) with its entries.
    fn drop_oldest_segment(&mut self, cause: &'static str) -> bool {
        if self.segments.len() < 2 {
            return false;
        }
        let Some(seg) = self.segments.pop_front() else {
            return false;
        };
        while self.entries.front().is_some_and(|e| e.segment == seg.id) {
            if let Some(e) = self.entries.pop_front() {
                if e.batch.is_some() {
                    self.memory = self.memory.saturating_sub(u64::from(e.header.payload_len));
                }
                self.lose(&e, cause, true);
            }
        }
        self.bytes = self.bytes.saturating_sub(seg.bytes);
        if let Err(e) = std::fs::remove_file(&seg.path) {
            tracing::warn!(path = %seg.path.display(), error = %e, "Cannot delete a buffer segment.");
        }
        true
    }

    /// Drops unacknowledged batches older than `max_age_ms` (whole segments, and
    /// the oldest entries of the active one).
    fn enforce_age(&mut self, config: &BufferConfig, now_ms: i64) {
        let limit = now_ms.saturating_sub(i64::try_from(config.max_age_ms).unwrap_or(i64::MAX));
        loop {
            let Some(front) = self.entries.front() else {
                return;
            };
            if front.header.max_ts >= limit {
                return;
            }
            let seg = front.segment;
            let last_of_segment = self
                .entries
                .iter()
                .filter(|e| e.segment == seg)
                .map(|e| e.header.max_ts)
                .max()
                .unwrap_or(i64::MAX);
            if last_of_segment < limit && self.drop_oldest_segment(cause::BUFFER_AGE) {
                continue;
            }
            // Within the active segment: drop entries one by one; the bytes go when
            // the segment does.
            if let Some(e) = self.entries.pop_front() {
                if e.batch.is_some() {
                    self.memory = self.memory.saturating_sub(e.header.payload_len as u64);
                }
                self.lose(&e, cause::BUFFER_AGE, true);
            }
        }
    }

    /// Deletes the active segment when it holds no unacknowledged batch, so the
    /// next append starts a new one; false when it holds one or is empty.
    ///
    /// True when a batch appended since the last `fdatasync` is held nowhere
    /// else: neither received by an aggregator on the current stream nor
    /// durably acknowledged.
    fn needs_fdatasync(&self) -> bool {
        self.appended_through > self.synced_through.max(self.received).max(self.acked)
    }

    /// True when the acknowledged position should be written now.
    fn acked_write_due(&self, mode: SyncMode) -> bool {
        self.acked != self.acked_written
            && match mode {
                SyncMode::Everything => true,
                SyncMode::Periodic => self
                    .acked_written_at
                    .is_none_or(|at| at.elapsed() >= ACKED_WRITE_INTERVAL),
            }
    }

    /// The active segment is otherwise only left when it reaches `segment_bytes`:
    /// on a disk with less room than that, its acknowledged records would keep the
    /// disk full, and every later batch lost, for good.
    fn release_acknowledged_active(&mut self) -> bool {
        let Some(seg) = self.segments.back() else {
            return false;
        };
        if seg.bytes == 0 || self.entries.iter().any(|e| e.segment == seg.id) {
            return false;
        }
        let Some(seg) = self.segments.pop_back() else {
            return false;
        };
        self.active = None;
        self.synced_through = self.appended_through;
        self.bytes = self.bytes.saturating_sub(seg.bytes);
        if let Err(e) = std::fs::remove_file(&seg.path) {
            tracing::warn!(path = %seg.path.display(), error = %e, "Cannot delete a buffer segment.");
        }
        true
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), BufferError> {
        if let Some(active) = self.active.take() {
            active.sync_data().map_err(io(&self.dir))?;
            self.synced_through = self.appended_through;
        }
        let path = segment_path(&self.dir, first_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.active = Some(Arc::new(file));
        self.segments.push_back(Segment {
            id: first_seq,
            path,
            bytes: 0,
            last_seq: 0,
        });
        Ok(())
    }
}

impl DiskBuffer {
    /// Opens the buffer in `dir`, reading back what an earlier run left.
    pub fn open(dir: &Path, config: BufferConfig) -> Result<Arc<Self>, BufferError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let acked = read_acked(dir);
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            active: None,
            entries: VecDeque::new(),
            bytes: 0,
            memory: 0,
            appended_through: 0,
            synced_through: 0,
            received: 0,
            acked,
            acked_written: acked,
            acked_written_at: None,
            durable_through_ms: 0,
            gaps: Vec::new(),
            dropped: Dropped::default(),
        };
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".wal")?.parse::<u64>().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut last_good: Option<Header> = None;
        for id in ids {
            recover_segment(&mut inner, id, &mut last_good)?;
        }
        let newest = inner.entries.back().map_or(0, |e| e.header.seq);
        let replay = inner.entries.len();
        if replay > 0 || !inner.gaps.is_empty() {
            tracing::info!(
                batches = replay,
                bytes = inner.bytes,
                gaps = inner.gaps.len(),
                "Disk buffer holds unacknowledged batches from an earlier run; sending them first."
            );
        }
        let buffer = Arc::new(Self {
            inner: Mutex::new(inner),
            config,
            newest: watch::channel(newest).0,
        });
        buffer.report();
        Ok(buffer)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation leaves the structures consistent between statements that
        // can panic, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a batch (after attaching the losses not yet reported), dropping the
    /// oldest data first if the caps require it. A batch the disk refuses is lost
    /// and reported as a gap in the next one; the agent keeps running.
    pub fn push(&self, mut batch: Batch) {
        let now = infrawatch_common::time::now_unix_ms();
        let seq = batch.seq;
        {
            let mut inner = self.lock();
            inner.enforce_age(&self.config, now);
            // Room for this record: drop whole old segments while over the cap.
            let estimate = HEADER_LEN as u64 + prost::Message::encoded_len(&batch) as u64 + 1024;
            while inner.bytes + estimate > self.config.max_bytes
                && inner.drop_oldest_segment(cause::BUFFER_FULL)
            {}
            // The oldest losses first; the rest ride in the next batches.
            let n = inner.gaps.len().min(MAX_GAPS_PER_BATCH);
            batch.gaps.extend(inner.gaps.drain(..n));
            let (header, bytes) = encode_record(&batch);
            let carried = batch.gaps.clone();
            if let Err(e) = self.append(&mut inner, &header, &bytes) {
                tracing::error!(error = %e, seq, "Cannot write to the disk buffer; this batch is lost and reported as a gap.");
                let entry = Entry {
                    header,
                    segment: 0,
                    offset: 0,
                    gaps: carried,
                    batch: None,
                };
                inner.lose(&entry, cause::DISK_ERROR, true);
            } else {
                let cached =
                    inner.memory + u64::from(header.payload_len) <= self.config.memory_bytes;
                let segment = inner.segments.back().map_or(0, |s| s.id);
                let offset = inner
                    .segments
                    .back()
                    .map_or(0, |s| s.bytes - bytes.len() as u64);
                if cached {
                    inner.memory += u64::from(header.payload_len);
                }
                inner.entries.push_back(Entry {
                    header,
                    segment,
                    offset,
                    gaps: carried,
                    batch: cached.then(|| Arc::new(batch)),
                });
                // Keep the memory budget for the newest batches.
                let mut i = 0;
                while inner.memory > self.config.memory_bytes && i + 1 < inner.entries.len() {
                    if let Some(b) = inner.entries[i].batch.take() {
                        let len = u64::from(inner.entries[i].header.payload_len);
                        drop(b);
                        inner.memory = inner.memory.saturating_sub(len);
                    }
                    i += 1;
                }
            }
        }
        self.report();
        self.newest.send_replace(seq);
    }

    /// Writes one record to the active segment, starting a new one when it is full.
    fn append(&self, inner: &mut Inner, header: &Header, bytes: &[u8]) -> Result<(), BufferError> {
        let full = inner.segments.back().is_none_or(|s| {
            s.bytes > 0 && s.bytes + bytes.len() as u64 > self.config.segment_bytes
        });
        if full || inner.active.is_none() {
            inner.start_segment(header.seq)?;
        }
        let (Some(active), Some(seg)) = (inner.active.clone(), inner.segments.back()) else {
            return Err(BufferError::Io {
                path: inner.dir.clone(),
                source: std::io::Error::other("no active segment"),
            });
        };
        let path = seg.path.clone();
        let before = seg.bytes;
        if let Err(e) = (&*active).write_all(bytes) {
            // Cut whatever part of the record reached the file.
            let _ = active.set_len(before);
            // The disk may be full of this segment's acknowledged records: free
            // them and try once more in a new segment (which is empty, so this
            // does not repeat).
            if inner.release_acknowledged_active() {
                tracing::warn!(error = %e, seq = header.seq, "Disk buffer write failed; starting a new segment in place of the acknowledged one.");
                return self.append(inner, header, bytes);
            }
            return Err(BufferError::Io { path, source: e });
        }
        if let Some(seg) = inner.segments.back_mut() {
            seg.bytes += bytes.len() as u64;
            seg.last_seq = header.seq;
        }
        inner.bytes += bytes.len() as u64;
        inner.appended_through = inner.appended_through.max(header.seq);
        Ok(())
    }

    /// Makes appended data durable (`fdatasync`) and writes the acknowledged
    /// position, whatever is due: what a stopping agent calls last. Blocking:
    /// run it off the async workers.
    pub fn sync(&self) -> Result<(), BufferError> {
        self.sync_as(SyncMode::Everything)
    }

    /// The periodic sync (every `fsync_interval_ms`): an `fdatasync` only when
    /// some batch appended since the last one is held nowhere else, i.e. an
    /// aggregator has neither received it on the current stream (see
    /// [`received`](Self::received)) nor made it durable; and the acknowledged
    /// position written at most
    /// every [`ACKED_WRITE_INTERVAL`] (a restart with an older position only
    /// sends some acknowledged batches again, and the aggregator drops replays
    /// by their seq). Blocking: run it off the async workers, after
    /// [`sync_due`](Self::sync_due) says there is something to do.
    pub fn sync_periodic(&self) -> Result<(), BufferError> {
        self.sync_as(SyncMode::Periodic)
    }

    /// True when [`sync_periodic`](Self::sync_periodic) has work: lets the
    /// caller skip the hop to a blocking thread when it has none.
    pub fn sync_due(&self) -> bool {
        let inner = self.lock();
        inner.needs_fdatasync() || inner.acked_write_due(SyncMode::Periodic)
    }

    fn sync_as(&self, mode: SyncMode) -> Result<(), BufferError> {
        let (file, through, acked, dir) = {
            let inner = self.lock();
            let needed = match mode {
                SyncMode::Everything => inner.appended_through > inner.synced_through,
                SyncMode::Periodic => inner.needs_fdatasync(),
            };
            let file = needed.then(|| inner.active.clone()).flatten();
            let acked = inner.acked_write_due(mode).then_some(inner.acked);
            (file, inner.appended_through, acked, inner.dir.clone())
        };
        if let Some(f) = file {
            let started = Instant::now();
            f.sync_data().map_err(io(&dir))?;
            {
                let mut inner = self.lock();
                inner.synced_through = inner.synced_through.max(through);
            }
            metrics::histogram!("infrawatch_agent_buffer_fsync_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        if let Some(acked) = acked {
            write_acked(&dir, acked)?;
            let mut inner = self.lock();
            inner.acked_written = acked;
            inner.acked_written_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Records that the aggregator of the current stream received every batch
    /// up to `seq` (it holds them until it makes them durable): their
    /// `fdatasync` is skipped. A crash of this host then loses nothing unless
    /// that aggregator also fails before making them durable; the batches stay
    /// here, in the page cache, until their durable acknowledgement.
    pub fn received(&self, seq: u64) {
        let mut inner = self.lock();
        inner.received = inner.received.max(seq);
    }

    /// The stream ended: what its aggregator received may be lost with it, so
    /// batches not durably acknowledged are synced again at the next sync.
    pub fn stream_ended(&self) {
        let mut inner = self.lock();
        inner.received = 0;
        if inner.appended_through > inner.acked {
            inner.synced_through = inner.synced_through.min(inner.acked);
        }
    }

    /// Removes every batch up to and including `seq`, deleting segments that hold
    /// nothing unacknowledged.
    pub fn ack(&self, seq: u64) {
        {
            let mut inner = self.lock();
            while inner.entries.front().is_some_and(|e| e.header.seq <= seq) {
                if let Some(e) = inner.entries.pop_front() {
                    inner.durable_through_ms = inner.durable_through_ms.max(e.header.max_ts);
                    if e.batch.is_some() {
                        inner.memory = inner.memory.saturating_sub(u64::from(e.header.payload_len));
                    }
                }
            }
            inner.acked = inner.acked.max(seq);
            while inner.segments.len() > 1
                && inner.segments.front().is_some_and(|s| s.last_seq <= seq)
            {
                if let Some(seg) = inner.segments.pop_front() {
                    inner.bytes = inner.bytes.saturating_sub(seg.bytes);
                    if let Err(e) = std::fs::remove_file(&seg.path) {
                        tracing::warn!(path = %seg.path.display(), error = %e, "Cannot delete a buffer segment.");
                    }
                }
            }
        }
        self.report();
    }

    /// The oldest batch with a seq above `seq`, read back from disk if it is no
    /// longer in memory. A record that fails its checksum now is dropped and
    /// reported, and the next one is tried.
    pub fn next_after(&self, seq: u64) -> Option<Arc<Batch>> {
        let mut inner = self.lock();
        loop {
            let i = inner.entries.iter().position(|e| e.header.seq > seq)?;
            let e = &inner.entries[i];
            if let Some(b) = &e.batch {
                return Some(b.clone());
            }
            match read_record(&inner.dir, e) {
                Ok(b) => return Some(Arc::new(b)),
                Err(why) => {
                    tracing::error!(seq = e.header.seq, error = %why, "Buffered batch unreadable; dropped and reported as a gap.");
                    if let Some(e) = inner.entries.remove(i) {
                        inner.lose(&e, cause::CORRUPT, true);
                    }
                }
            }
        }
    }

    /// Drops the oldest batch with a seq above `after` because the aggregator
    /// refused it; returns its seq. `after` is the highest seq the aggregator
    /// acknowledged on the stream at any level: batches received but not yet
    /// durable stay. The loss travels as a gap with the next batch.
    ///
    /// When older batches remain, the refused record stays in its segment until
    /// a later batch is durably acknowledged; a restart before that sends it
    /// once more (and it is refused and reported again).
    pub fn reject_after(&self, after: u64) -> Option<u64> {
        let mut inner = self.lock();
        let i = inner.entries.iter().position(|e| e.header.seq > after)?;
        let e = inner.entries.remove(i)?;
        if e.batch.is_some() {
            inner.memory = inner.memory.saturating_sub(u64::from(e.header.payload_len));
        }
        inner.dropped.rejected_batches += 1;
        inner.lose(&e, cause::REJECTED, true);
        if i == 0 {
            // Nothing older waits: the acknowledged mark may pass it.
            inner.acked = inner.acked.max(e.header.seq);
        }
        drop(inner);
        self.report();
        Some(e.header.seq)
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.lock().dropped
    }

    /// Losses not yet attached to a batch.
    pub fn pending_gaps(&self) -> Vec<DataGap> {
        self.lock().gaps.clone()
    }

    /// A receiver that changes whenever a batch is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    fn report(&self) {
        let inner = self.lock();
        metrics::gauge!("infrawatch_agent_buffer_bytes").set(inner.bytes as f64);
        metrics::gauge!("infrawatch_agent_buffer_batches").set(inner.entries.len() as f64);
        // Acknowledgements are cumulative: every batch closed before the newest
        // durable one is durable too, so `time() - x` is how far behind the
        // aggregator's durable copy is.
        metrics::gauge!("infrawatch_agent_buffer_durable_through_timestamp_seconds")
            .set(inner.durable_through_ms as f64 / 1000.0);
        metrics::gauge!("infrawatch_agent_buffer_memory_bytes").set(inner.memory as f64);
    }
}

/// Reads segment `id` into `inner`, cutting it at the first bad record.
fn recover_segment(
    inner: &mut Inner,
    id: u64,
    last_good: &mut Option<Header>,
) -> Result<(), BufferError> {
    let path = segment_path(&inner.dir, id);
    let data = std::fs::read(&path).map_err(io(&path))?;
    let mut offset = 0usize;
    let mut last_seq = 0;
    while offset < data.len() {
        let Some(h) = Header::decode(&data[offset..]) else {
            // A torn or damaged header: nothing after it in this segment can be
            // trusted. Its size is unknown, so the gap is marked inexact.
            let from = last_good.map_or(0, |g| g.max_ts);
            tracing::error!(path = %path.display(), offset, "Damaged record header in the disk buffer; cutting the segment there.");
            inner.gaps.push(DataGap {
                first_seq: last_good.map_or(0, |g| g.seq + 1),
                last_seq: last_good.map_or(0, |g| g.seq + 1),
                from_unix_ms: from,
                to_unix_ms: infrawatch_common::time::now_unix_ms().max(from),
                samples_lost: 0,
                batches_lost: 1,
                cause: cause::CORRUPT.to_string(),
                exact: false,
            });
            count_loss(cause::CORRUPT, 1, 0);
            inner.dropped.batches += 1;
            break;
        };
        let start = offset + HEADER_LEN;
        let end = start + h.payload_len as usize;
        let payload = data.get(start..end);
        let batch = payload
            .filter(|p| crc32fast::hash(p) == h.payload_crc)
            .and_then(|p| <Batch as prost::Message>::decode(p).ok());
        let Some(batch) = batch else {
            tracing::error!(path = %path.display(), seq = h.seq, "Torn or damaged batch in the disk buffer; cutting the segment there.");
            add_gap(&mut inner.gaps, &h, cause::CORRUPT, true);
            count_loss(cause::CORRUPT, 1, u64::from(h.samples));
            inner.dropped.batches += 1;
            inner.dropped.samples += u64::from(h.samples);
            break;
        };
        if h.seq > inner.acked {
            inner.entries.push_back(Entry {
                header: h,
                segment: id,
                offset: offset as u64,
                gaps: batch.gaps.clone(),
                batch: None,
            });
        }
        *last_good = Some(h);
        last_seq = h.seq;
        offset = end;
    }
    if offset < data.len() {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        f.set_len(offset as u64).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
    }
    if offset == 0 {
        std::fs::remove_file(&path).map_err(io(&path))?;
        return Ok(());
    }
    inner.bytes += offset as u64;
    inner.segments.push_back(Segment {
        id,
        path: path.clone(),
        bytes: offset as u64,
        last_seq,
    });
    // Appends continue in the newest segment.
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    inner.active = Some(Arc::new(file));
    Ok(())
}

fn read_record(dir: &Path, e: &Entry) -> Result<Batch, String> {
    let path = segment_path(dir, e.segment);
    let f = File::open(&path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut buf = vec![0u8; e.header.payload_len as usize];
    f.read_exact_at(&mut buf, e.offset + HEADER_LEN as u64)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if crc32fast::hash(&buf) != e.header.payload_crc {
        return Err("checksum mismatch".into());
    }
    <Batch as prost::Message>::decode(buf.as_slice()).map_err(|err| err.to_string())
}

fn read_acked(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("acked"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_acked(dir: &Path, seq: u64) -> Result<(), BufferError> {
    let tmp = dir.join("acked.tmp");
    std::fs::write(&tmp, seq.to_string()).map_err(io(&tmp))?;
    let path = dir.join("acked");
    match std::fs::rename(&tmp, &path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BufferError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests;
