//! The on-disk record: a fixed header with its own checksum, then the batch.
//!
//! ```text
//! magic u32 "IWB1" | seq u64 | min_ts i64 | max_ts i64 | samples u32 |
//! payload_len u32 | payload_crc u32 | header_crc u32 | payload (protobuf Batch)
//! ```
//!
//! All integers little-endian; checksums are CRC-32 (IEEE). The header has its own
//! checksum so that a record whose payload was torn still says exactly which batch
//! and how many samples were lost.

use infrawatch_proto::v1::Batch;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 44;
const MAGIC: u32 = u32::from_le_bytes(*b"IWB1");
/// Largest payload accepted when reading (a bigger length is corruption).
pub const MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// What the header says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Batch sequence number.
    pub seq: u64,
    /// Oldest sample time (Unix ms); the batch time when it has no samples.
    pub min_ts: i64,
    /// Newest sample time (Unix ms).
    pub max_ts: i64,
    /// Samples in the batch.
    pub samples: u32,
    /// Payload length.
    pub payload_len: u32,
    /// CRC-32 of the payload.
    pub payload_crc: u32,
}

impl Header {
    /// The header of `batch` encoded as `payload`.
    pub fn for_batch(batch: &Batch, payload: &[u8]) -> Self {
        let (min_ts, max_ts, samples) = time_range(batch);
        Self {
            seq: batch.seq,
            min_ts,
            max_ts,
            samples: u32::try_from(samples).unwrap_or(u32::MAX),
            payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            payload_crc: crc32fast::hash(payload),
        }
    }

    /// The header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..12].copy_from_slice(&self.seq.to_le_bytes());
        b[12..20].copy_from_slice(&self.min_ts.to_le_bytes());
        b[20..28].copy_from_slice(&self.max_ts.to_le_bytes());
        b[28..32].copy_from_slice(&self.samples.to_le_bytes());
        b[32..36].copy_from_slice(&self.payload_len.to_le_bytes());
        b[36..40].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses header bytes; `None` when the magic, the checksum or the length is
    /// wrong (a torn or overwritten header).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        if u32_at(0) != MAGIC || u32_at(40) != crc32fast::hash(&b[0..40]) {
            return None;
        }
        let h = Self {
            seq: u64_at(4),
            min_ts: u64_at(12) as i64,
            max_ts: u64_at(20) as i64,
            samples: u32_at(28),
            payload_len: u32_at(32),
            payload_crc: u32_at(36),
        };
        (h.payload_len <= MAX_PAYLOAD).then_some(h)
    }
}

/// (oldest sample time, newest sample time, samples) of a batch.
pub fn time_range(batch: &Batch) -> (i64, i64, usize) {
    let base = batch.base_time_unix_ms;
    match &batch.samples {
        Some(s) if !s.time_offset_ms.is_empty() => {
            let min = s.time_offset_ms.iter().copied().min().unwrap_or(0);
            let max = s.time_offset_ms.iter().copied().max().unwrap_or(0);
            (
                base.saturating_add(min),
                base.saturating_add(max),
                s.values.len(),
            )
        }
        _ => (base, base, 0),
    }
}

/// A whole record: header then payload, in one buffer (one write).
pub fn encode_record(batch: &Batch) -> (Header, Vec<u8>) {
    let payload = prost::Message::encode_to_vec(batch);
    let header = Header::for_batch(batch, &payload);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&payload);
    (header, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrawatch_proto::v1::SampleColumns;

    fn batch() -> Batch {
        Batch {
            seq: 42,
            base_time_unix_ms: 1_000_000,
            samples: Some(SampleColumns {
                series: vec![0, 0, 0],
                time_offset_ms: vec![5, -3, 9],
                values: vec![1.0, 2.0, 3.0],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let (h, bytes) = encode_record(&batch());
        assert_eq!(h.seq, 42);
        assert_eq!((h.min_ts, h.max_ts, h.samples), (999_997, 1_000_009, 3));
        assert_eq!(Header::decode(&bytes), Some(h));
        for i in [0, 5, 30, 43] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(Header::decode(&bad), None, "flipped byte {i}");
        }
        assert_eq!(Header::decode(&bytes[..20]), None);
        assert_eq!(
            crc32fast::hash(&bytes[HEADER_LEN..]),
            h.payload_crc,
            "payload checksum"
        );
    }
}
