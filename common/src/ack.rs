//! Two-level acknowledgements seen from the sending side (the agent's transport
//! and the load generator's simulated agents).
//!
//! An aggregator answers batches with [`Ack`]s at two levels (see `AckLevel` in
//! `agent.proto`): `RECEIVED` (checked and applied to its memory; flow control
//! only) and `DURABLE` (committed; the batch may leave the disk buffer). It sends
//! `RECEIVED` acks only to agents that announce [`FEATURE_ACK_RECEIVED`] in
//! `Hello.features`; an older aggregator sends only `DURABLE` ones. Acks of one
//! level come in seq order and are cumulative: an ack for seq N covers every
//! batch up to N of this agent.
//!
//! [`AckWindow`] keeps the books of one stream, without I/O or clocks of its own:
//! which batches sent are not yet acknowledged at any level (the in-flight window
//! that bounds sending), which are received but not yet durable, and how long
//! each level took. A durable ack implies received, so a batch's first ack of
//! either level frees its window slot; this is also all that an aggregator
//! sending only durable acks produces.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use infrawatch_proto::v1::{Ack, AckLevel};

/// `Hello.features` value of an agent that understands `ACK_LEVEL_RECEIVED`
/// acknowledgements (two-level acks).
pub const FEATURE_ACK_RECEIVED: &str = "ack.received";

/// Every protocol feature an agent of this version announces in `Hello.features`.
pub const AGENT_FEATURES: &[&str] = &[FEATURE_ACK_RECEIVED];

/// [`AGENT_FEATURES`] as the `Hello.features` field wants them.
pub fn agent_features() -> Vec<String> {
    AGENT_FEATURES.iter().map(|f| (*f).to_string()).collect()
}

/// The level of `ack`, or `None` for a level this version does not know. Such an
/// ack must be ignored: taking it for durable (prost's default for an unknown
/// value) could free batches the aggregator has not stored.
pub fn ack_level(ack: &Ack) -> Option<AckLevel> {
    AckLevel::try_from(ack.level).ok()
}

/// The label value of `level` in metrics and reports: `received` or `durable`.
pub fn level_name(level: AckLevel) -> &'static str {
    match level {
        AckLevel::Received => "received",
        AckLevel::Durable => "durable",
    }
}

/// One batch newly covered by an ack, at one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covered {
    /// Its sequence number.
    pub seq: u64,
    /// From sending it to this ack.
    pub latency: Duration,
    /// Its samples, less those the aggregator refused (as far as known).
    pub samples: u64,
}

/// What one ack changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// This is the first ack, at any level, for batch `ack.seq`: its refused
    /// samples (`Ack.refused`) are new and should be counted. Later acks of the
    /// same batch are not.
    pub first: bool,
    /// Batches sent on this stream and acknowledged here for the first time at
    /// any level, oldest first: each frees one slot of the window.
    pub received: Vec<Covered>,
    /// Batches sent on this stream that became durable with this ack, oldest
    /// first.
    pub durable: Vec<Covered>,
    /// For a durable ack that moved the durable mark: everything up to this seq
    /// may be freed from the disk buffer.
    pub durable_up_to: Option<u64>,
}

impl AckOutcome {
    /// True when the ack acknowledged anything not acknowledged before.
    pub fn progressed(&self) -> bool {
        self.first || !self.received.is_empty() || self.durable_up_to.is_some()
    }
}

/// A batch sent on this stream and not yet durable.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    at: Instant,
    samples: u64,
    refused: u64,
}

/// The acknowledgement books of one stream (see the module documentation).
#[derive(Debug, Default)]
pub struct AckWindow {
    /// Batches sent on this stream and not yet durable, oldest first.
    sent: VecDeque<Sent>,
    /// How many of the newest entries of `sent` have no ack at any level.
    unacked: usize,
    /// Highest seq sent on this stream.
    newest_sent: u64,
    /// Highest seq acknowledged at any level (a durable ack counts as received).
    acked: u64,
    /// Highest seq acknowledged durable.
    durable: u64,
}

impl AckWindow {
    /// Books for a new stream: nothing sent, nothing acknowledged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that batch `seq` with `samples` samples was sent at `at`. Seqs must
    /// grow; a seq at or below one already sent on this stream is not recorded and
    /// false is returned.
    pub fn sent(&mut self, seq: u64, samples: u64, at: Instant) -> bool {
        if seq <= self.newest_sent {
            return false;
        }
        self.newest_sent = seq;
        self.sent.push_back(Sent {
            seq,
            at,
            samples,
            refused: 0,
        });
        self.unacked += 1;
        true
    }

    /// Batches sent and not yet acknowledged at any level: what the window of
    /// unacknowledged batches bounds.
    pub fn in_flight(&self) -> usize {
        self.unacked
    }

    /// Batches sent on this stream and not yet durable (received or not).
    pub fn not_durable(&self) -> usize {
        self.sent.len()
    }

    /// Batches received but not yet durable.
    pub fn received_not_durable(&self) -> usize {
        self.sent.len() - self.unacked
    }

    /// Samples (less those refused, as far as known) of the batches not yet
    /// durable.
    pub fn not_durable_samples(&self) -> u64 {
        self.sent
            .iter()
            .map(|s| s.samples.saturating_sub(s.refused))
            .sum()
    }

    /// When the oldest batch without any ack was sent.
    pub fn oldest_unacked_at(&self) -> Option<Instant> {
        self.sent.get(self.sent.len() - self.unacked).map(|s| s.at)
    }

    /// Highest seq sent on this stream (0 before the first).
    pub fn newest_sent(&self) -> u64 {
        self.newest_sent
    }

    /// Highest seq acknowledged at any level on this stream (0 before the first).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Highest seq acknowledged durable on this stream (0 before the first).
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Applies one ack of `level` for `seq` that arrived at `now`, with
    /// `refused_samples` samples of batch `seq` the aggregator did not store.
    /// Acks are cumulative, so one ack may cover many batches; an ack for what
    /// is already covered at its level (a duplicate, or an older one) changes
    /// nothing.
    pub fn on_ack(
        &mut self,
        level: AckLevel,
        seq: u64,
        refused_samples: u64,
        now: Instant,
    ) -> AckOutcome {
        let mut out = AckOutcome::default();
        if seq > self.acked {
            out.first = true;
            self.acked = seq;
            // The batches without any ack are the newest `unacked` ones.
            let mut i = self.sent.len() - self.unacked;
            while let Some(s) = self.sent.get_mut(i)
                && s.seq <= seq
            {
                if s.seq == seq {
                    s.refused = refused_samples;
                }
                out.received.push(covered(s, now));
                self.unacked -= 1;
                i += 1;
            }
        }
        if level == AckLevel::Durable && seq > self.durable {
            self.durable = seq;
            out.durable_up_to = Some(seq);
            // Everything up to `seq` is acknowledged at some level by now, so
            // this only removes entries outside the unacknowledged tail.
            while self.sent.front().is_some_and(|s| s.seq <= seq) {
                if let Some(s) = self.sent.pop_front() {
                    out.durable.push(covered(&s, now));
                }
            }
        }
        out
    }
}

fn covered(s: &Sent, now: Instant) -> Covered {
    Covered {
        seq: s.seq,
        latency: now.saturating_duration_since(s.at),
        samples: s.samples.saturating_sub(s.refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: AckLevel = AckLevel::Received;
    const D: AckLevel = AckLevel::Durable;

    /// A window with batches `seqs` sent at `t0`, 10 samples each.
    fn window(t0: Instant, seqs: impl IntoIterator<Item = u64>) -> AckWindow {
        let mut w = AckWindow::new();
        for s in seqs {
            assert!(w.sent(s, 10, t0));
        }
        w
    }

    fn seqs(c: &[Covered]) -> Vec<u64> {
        c.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn a_cumulative_ack_frees_every_batch_it_covers() {
        let t0 = Instant::now();
        let mut w = window(t0, 1..=5);
        assert_eq!(w.in_flight(), 5);
        let out = w.on_ack(R, 3, 0, t0 + Duration::from_millis(7));
        assert!(out.first && out.progressed());
        assert_eq!(seqs(&out.received), vec![1, 2, 3]);
        assert!(out.durable.is_empty());
        assert_eq!(out.durable_up_to, None);
        assert_eq!(out.received[0].latency, Duration::from_millis(7));
        assert_eq!(w.in_flight(), 2);
        assert_eq!(w.received_not_durable(), 3);
        assert_eq!(w.not_durable(), 5);
        assert_eq!(w.not_durable_samples(), 50);
        // Durable later, also cumulative.
        let out = w.on_ack(D, 4, 0, t0 + Duration::from_millis(50));
        assert_eq!(seqs(&out.received), vec![4]);
        assert_eq!(seqs(&out.durable), vec![1, 2, 3, 4]);
        assert_eq!(out.durable_up_to, Some(4));
        assert_eq!(out.durable[0].latency, Duration::from_millis(50));
        assert_eq!((w.in_flight(), w.not_durable()), (1, 1));
        assert_eq!((w.acked(), w.durable()), (4, 4));
    }

    #[test]
    fn received_runs_ahead_of_durable() {
        let t0 = Instant::now();
        let mut w = window(t0, 1..=4);
        for s in 1..=4 {
            let out = w.on_ack(R, s, 0, t0);
            assert_eq!(seqs(&out.received), vec![s]);
        }
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.oldest_unacked_at(), None);
        // More can be sent while nothing is durable.
        assert!(w.sent(5, 10, t0));
        assert_eq!((w.in_flight(), w.not_durable()), (1, 5));
        let out = w.on_ack(D, 2, 0, t0);
        assert!(!out.first && out.received.is_empty());
        assert_eq!(seqs(&out.durable), vec![1, 2]);
        let out = w.on_ack(D, 4, 0, t0);
        assert_eq!(seqs(&out.durable), vec![3, 4]);
        assert_eq!((w.in_flight(), w.not_durable()), (1, 1));
    }

    #[test]
    fn a_durable_ack_ahead_of_received_frees_the_window_too() {
        let t0 = Instant::now();
        let mut w = window(t0, 1..=6);
        w.on_ack(R, 1, 0, t0);
        // The durable ack for 4 arrives before the received acks for 2 to 4.
        let out = w.on_ack(D, 4, 3, t0);
        assert!(out.first);
        assert_eq!(seqs(&out.received), vec![2, 3, 4]);
        assert_eq!(seqs(&out.durable), vec![1, 2, 3, 4]);
        assert_eq!(out.durable[3].samples, 7, "refused samples of batch 4");
        assert_eq!(w.in_flight(), 2);
        // The late received acks change nothing and carry nothing new.
        for s in 2..=4 {
            let out = w.on_ack(R, s, 3, t0);
            assert!(!out.first && !out.progressed(), "{s}: {out:?}");
        }
        // A received ack past the durable mark goes on as usual.
        let out = w.on_ack(R, 6, 0, t0);
        assert_eq!(seqs(&out.received), vec![5, 6]);
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.received_not_durable(), 2);
    }

    #[test]
    fn a_duplicate_ack_changes_nothing() {
        let t0 = Instant::now();
        let mut w = window(t0, 1..=3);
        assert_eq!(seqs(&w.on_ack(R, 2, 0, t0).received), vec![1, 2]);
        let again = w.on_ack(R, 2, 0, t0);
        assert_eq!(again, AckOutcome::default());
        assert_eq!(w.on_ack(R, 1, 0, t0), AckOutcome::default());
        assert_eq!(seqs(&w.on_ack(D, 2, 0, t0).durable), vec![1, 2]);
        assert_eq!(w.on_ack(D, 2, 0, t0), AckOutcome::default());
        assert_eq!(w.on_ack(D, 1, 0, t0), AckOutcome::default());
        assert_eq!((w.in_flight(), w.not_durable()), (1, 1));
    }

    #[test]
    fn an_aggregator_sending_only_durable_acks_drives_both_levels() {
        let t0 = Instant::now();
        let mut w = window(t0, 1..=3);
        let out = w.on_ack(D, 1, 0, t0 + Duration::from_millis(4));
        assert!(out.first);
        assert_eq!(seqs(&out.received), vec![1]);
        assert_eq!(seqs(&out.durable), vec![1]);
        assert_eq!(out.received[0].latency, out.durable[0].latency);
        assert_eq!(out.durable_up_to, Some(1));
        let out = w.on_ack(D, 3, 0, t0);
        assert_eq!(seqs(&out.received), vec![2, 3]);
        assert_eq!(seqs(&out.durable), vec![2, 3]);
        assert_eq!((w.in_flight(), w.not_durable()), (0, 0));
    }

    #[test]
    fn refused_samples_belong_to_the_acknowledged_batch_once() {
        let t0 = Instant::now();
        let mut w = window(t0, 1..=3);
        let out = w.on_ack(R, 2, 4, t0);
        assert_eq!(out.received[0].samples, 10);
        assert_eq!(out.received[1].samples, 6);
        assert_eq!(w.not_durable_samples(), 26);
        // A durable ack of the same batch is not its first, even if it repeats
        // the refusals; the count stays.
        let out = w.on_ack(D, 2, 4, t0);
        assert!(!out.first);
        let samples: Vec<u64> = out.durable.iter().map(|c| c.samples).collect();
        assert_eq!(samples, vec![10, 6]);
        let out = w.on_ack(D, 3, 0, t0);
        assert!(out.first);
        assert_eq!(out.durable[0].samples, 10);
        assert_eq!(w.not_durable_samples(), 0);
    }

    #[test]
    fn acks_beyond_what_was_sent_move_the_marks_only() {
        let t0 = Instant::now();
        let mut w = window(t0, [5, 6]);
        // A durable ack for batches sent on an earlier stream.
        let out = w.on_ack(D, 4, 0, t0);
        assert_eq!(out.durable_up_to, Some(4));
        assert!(out.received.is_empty() && out.durable.is_empty());
        assert_eq!(w.in_flight(), 2);
        assert!(!w.sent(6, 10, t0), "seqs must grow");
        let out = w.on_ack(R, 9, 0, t0);
        assert_eq!(seqs(&out.received), vec![5, 6]);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn the_oldest_unacknowledged_batch_is_known() {
        let t0 = Instant::now();
        let mut w = AckWindow::new();
        assert_eq!(w.oldest_unacked_at(), None);
        w.sent(1, 1, t0);
        w.sent(2, 1, t0 + Duration::from_secs(1));
        assert_eq!(w.oldest_unacked_at(), Some(t0));
        w.on_ack(R, 1, 0, t0);
        assert_eq!(w.oldest_unacked_at(), Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn unknown_levels_are_not_taken_for_durable() {
        let ack = |level| Ack {
            seq: 1,
            level,
            ..Ack::default()
        };
        assert_eq!(ack_level(&ack(0)), Some(AckLevel::Durable));
        assert_eq!(ack_level(&ack(1)), Some(AckLevel::Received));
        assert_eq!(ack_level(&ack(7)), None);
        assert_eq!(agent_features(), vec!["ack.received".to_string()]);
    }
}
