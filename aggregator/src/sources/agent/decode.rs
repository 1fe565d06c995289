//! Checks a wire batch and turns it into resources and per-series samples.
//!
//! Structural problems (bad ids, indexes out of range, columns of different length,
//! limits exceeded) reject the whole batch with a message naming what is wrong.
//! Individual samples that are not finite or whose time is implausible are dropped
//! and counted, so one bad reading does not cost the rest of the batch.

use std::collections::HashMap;

use infrawatch_common::resource::{
    MAX_INTERVAL_MS, MAX_LABELS_PER_RESOURCE, MIN_INTERVAL_MS, canonical_attributes,
    validate_label, validate_metric_name, validate_resource_id,
};
use infrawatch_proto::v1::{Batch, DataGap};

use crate::model::Relation;
use crate::samples::{SeriesKey, SeriesSamples};
use crate::sources::Observation;

/// Relation types the model knows.
pub const RELATION_TYPES: [&str; 7] = [
    "runs_on",
    "part_of",
    "member_of",
    "selects",
    "backed_by",
    "attached_to",
    "depends_on",
];

/// Limits on one batch, beyond the message size limit of the transport.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Resources per batch.
    pub max_resources: usize,
    /// Series per batch.
    pub max_series: usize,
    /// Samples per batch.
    pub max_samples: usize,
    /// How far in the future a sample may be.
    pub max_future_skew_ms: i64,
    /// How old a sample may be.
    pub max_sample_age_ms: i64,
}

impl Limits {
    /// The fixed structural limits, with the time bounds of `ingest`.
    pub fn for_ingest(ingest: &crate::config::IngestConfig) -> Self {
        Self {
            max_resources: 10_000,
            max_series: 200_000,
            max_samples: 1_000_000,
            max_future_skew_ms: ingest.max_future_skew_ms,
            max_sample_age_ms: ingest.max_sample_age_ms,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::for_ingest(&crate::config::IngestConfig::default())
    }
}

/// A checked batch.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBatch {
    /// Sequence number.
    pub seq: u64,
    /// Resources described.
    pub resources: Vec<Observation>,
    /// Samples by series.
    pub series: Vec<SeriesSamples>,
    /// Samples kept.
    pub sample_count: usize,
    /// Samples dropped because the value was NaN or infinite.
    pub dropped_non_finite: usize,
    /// Samples dropped because their time was too far in the future or past.
    pub dropped_out_of_range: usize,
    /// Data the agent reports lost.
    pub gaps: Vec<DataGap>,
}

/// Gaps per batch at most.
pub const MAX_GAPS: usize = 1000;

/// Earliest time lost data may be from: 2000-01-01T00:00:00Z.
const EARLIEST_GAP_MS: i64 = 946_684_800_000;

/// Checks the gaps batch `seq` reports at `now_ms`. A gap describes batches
/// the agent lost before this one (its buffer carries losses forward to the
/// next batch it writes), so its sequence range lies below `seq`, its counts fit
/// that range (no more batches than the range holds, no more samples than those
/// batches could), its times lie between 2000 and now, and no two gaps of a
/// batch cover the same batch. An inexact gap (a damaged record of unknown size)
/// may leave its start unknown: sequence and time 0.
fn check_gaps(
    gaps: Vec<DataGap>,
    seq: u64,
    now_ms: i64,
    limits: &Limits,
) -> Result<Vec<DataGap>, String> {
    if gaps.len() > MAX_GAPS {
        return Err(format!("{} gaps, the limit is {MAX_GAPS}", gaps.len()));
    }
    let latest_ms = now_ms.saturating_add(limits.max_future_skew_ms);
    let mut ranges = Vec::with_capacity(gaps.len());
    for (i, g) in gaps.iter().enumerate() {
        let cause_ok = !g.cause.is_empty()
            && g.cause.len() <= 64
            && g.cause.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if !cause_ok {
            return Err(format!(
                "gap {i}: cause {:?} must be 1-64 characters of a-z and '_'",
                g.cause
            ));
        }
        let unknown_start = !g.exact && g.first_seq == 0;
        if g.first_seq > g.last_seq || g.last_seq >= seq || (g.first_seq == 0 && !unknown_start) {
            return Err(format!(
                "gap {i}: seq {}..{} must be a range of earlier batches than this one ({seq})",
                g.first_seq, g.last_seq
            ));
        }
        let from_ok = g.from_unix_ms >= EARLIEST_GAP_MS || (!g.exact && g.from_unix_ms == 0);
        if g.from_unix_ms > g.to_unix_ms || !from_ok || g.to_unix_ms > latest_ms {
            return Err(format!(
                "gap {i}: time {}..{} must run forwards between 2000 and now",
                g.from_unix_ms, g.to_unix_ms
            ));
        }
        let span = g.last_seq - g.first_seq + 1;
        if g.batches_lost == 0 || g.batches_lost > span {
            return Err(format!(
                "gap {i}: batches_lost {} must be between 1 and {span} (seq {}..{})",
                g.batches_lost, g.first_seq, g.last_seq
            ));
        }
        let most_samples = g.batches_lost.saturating_mul(limits.max_samples as u64);
        if g.samples_lost > most_samples {
            return Err(format!(
                "gap {i}: samples_lost {} is more than {} batches can hold ({most_samples})",
                g.samples_lost, g.batches_lost
            ));
        }
        ranges.push((g.first_seq, g.last_seq, i));
    }
    ranges.sort_unstable();
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 <= w[0].1) {
        return Err(format!(
            "gaps {} and {} both cover seq {}",
            w[0].2.min(w[1].2),
            w[0].2.max(w[1].2),
            w[1].0
        ));
    }
    Ok(gaps)
}

/// Why a batch was rejected; the text is sent to the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid batch {seq}: {problem}")]
pub struct DecodeError {
    /// The batch.
    pub seq: u64,
    /// What is wrong.
    pub problem: String,
}

/// Checks `batch` against `limits` at time `now_ms`.
pub fn decode(mut batch: Batch, now_ms: i64, limits: &Limits) -> Result<DecodedBatch, DecodeError> {
    let seq = batch.seq;
    let fail = |problem: String| DecodeError { seq, problem };
    let gaps = check_gaps(std::mem::take(&mut batch.gaps), seq, now_ms, limits).map_err(fail)?;
    if seq == 0 {
        return Err(fail("seq must be at least 1".into()));
    }
    if batch.resources.len() > limits.max_resources {
        return Err(fail(format!(
            "{} resources, the limit is {}",
            batch.resources.len(),
            limits.max_resources
        )));
    }
    if batch.series.len() > limits.max_series {
        return Err(fail(format!(
            "{} series, the limit is {}",
            batch.series.len(),
            limits.max_series
        )));
    }
    let mut resources = Vec::with_capacity(batch.resources.len());
    let mut seen = HashMap::new();
    for (i, r) in batch.resources.into_iter().enumerate() {
        validate_resource_id(&r.id).map_err(|e| fail(format!("resources[{i}]: {e}")))?;
        if seen.insert(r.id.clone(), i).is_some() {
            return Err(fail(format!("resources[{i}]: {} appears twice", r.id)));
        }
        if r.labels.len() + r.attributes.len() > MAX_LABELS_PER_RESOURCE {
            return Err(fail(format!(
                "resources[{i}] ({}): more than {MAX_LABELS_PER_RESOURCE} labels and attributes",
                r.id
            )));
        }
        for (k, v) in r.labels.iter().chain(r.attributes.iter()) {
            validate_label(k, v).map_err(|e| fail(format!("resources[{i}] ({}): {e}", r.id)))?;
        }
        if r.kind.len() > 64
            || !r
                .kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(fail(format!(
                "resources[{i}] ({}): kind {:?} must be snake_case, at most 64 bytes",
                r.id, r.kind
            )));
        }
        // A resource that is described (has a kind) says how often it reports;
        // a reference by id alone (no kind, interval 0) only carries samples.
        if !r.kind.is_empty() && !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&r.interval_ms) {
            return Err(fail(format!(
                "resources[{i}] ({}): interval_ms {} must be {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS} (how often it is reported; it decides when it turns stale)",
                r.id, r.interval_ms
            )));
        }
        let mut relations = Vec::with_capacity(r.relations.len());
        for rel in r.relations {
            if !rel.from_id.is_empty() && rel.from_id != r.id {
                return Err(fail(format!(
                    "resources[{i}] ({}): relation from {} must start at the resource itself",
                    r.id, rel.from_id
                )));
            }
            if !RELATION_TYPES.contains(&rel.relation_type.as_str()) {
                return Err(fail(format!(
                    "resources[{i}] ({}): relation type {:?} is not one of {}",
                    r.id,
                    rel.relation_type,
                    RELATION_TYPES.join(", ")
                )));
            }
            validate_resource_id(&rel.to_id)
                .map_err(|e| fail(format!("resources[{i}] ({}): relation target: {e}", r.id)))?;
            relations.push(Relation {
                relation_type: rel.relation_type,
                to_id: rel.to_id,
            });
        }
        relations.sort();
        relations.dedup();
        resources.push(Observation {
            verdict: None,
            id: r.id,
            kind: r.kind,
            labels: r.labels.into_iter().collect(),
            attributes: r.attributes.into_iter().collect(),
            relations,
            interval_ms: r.interval_ms,
            // Set below from the newest sample of the resource, if any.
            observed_at_ms: now_ms,
        });
    }

    let strings = &batch.strings;
    // `what` names the reference only when it is wrong (no text per series and
    // batch otherwise).
    let string = |idx: u32, what: &dyn Fn() -> String| -> Result<&str, DecodeError> {
        strings
            .get(idx as usize)
            .map(String::as_str)
            .ok_or_else(|| {
                fail(format!(
                    "{} refers to string {idx}, the table has {}",
                    what(),
                    strings.len()
                ))
            })
    };
    // One shared id per resource for all its series.
    let resource_ids: Vec<std::sync::Arc<str>> = resources
        .iter()
        .map(|r: &Observation| std::sync::Arc::from(r.id.as_str()))
        .collect();
    // One copy per metric name in the batch. Names are interned (shared with
    // every agent) only when the ledger adds a new series, so a batch of known
    // series takes no global lock.
    let mut metrics: Vec<Option<std::sync::Arc<str>>> = vec![None; strings.len()];
    let mut series = Vec::with_capacity(batch.series.len());
    for (i, s) in batch.series.iter().enumerate() {
        let resource_id = resource_ids.get(s.resource as usize).ok_or_else(|| {
            fail(format!(
                "series[{i}] refers to resource {}, the batch has {}",
                s.resource,
                resources.len()
            ))
        })?;
        let metric = match metrics.get(s.metric as usize) {
            Some(Some(m)) => m.clone(),
            _ => {
                let name = string(s.metric, &|| format!("series[{i}] metric"))?;
                validate_metric_name(name).map_err(|e| fail(format!("series[{i}]: {e}")))?;
                let m: std::sync::Arc<str> = std::sync::Arc::from(name);
                metrics[s.metric as usize] = Some(m.clone());
                m
            }
        };
        if s.attributes.len() % 2 != 0 {
            return Err(fail(format!(
                "series[{i}]: attributes must be key/value pairs"
            )));
        }
        let mut pairs = Vec::with_capacity(s.attributes.len() / 2);
        for kv in s.attributes.chunks_exact(2) {
            let k = string(kv[0], &|| format!("series[{i}] attribute key"))?;
            let v = string(kv[1], &|| format!("series[{i}] attribute value"))?;
            validate_label(k, v).map_err(|e| fail(format!("series[{i}]: {e}")))?;
            pairs.push((k, v));
        }
        if pairs.len() > 32 {
            return Err(fail(format!("series[{i}]: more than 32 attributes")));
        }
        series.push(SeriesSamples {
            key: SeriesKey {
                resource_id: resource_id.clone(),
                metric,
                attributes: std::sync::Arc::from(canonical_attributes(pairs)),
            },
            points: Vec::new(),
        });
    }

    let cols = batch.samples.unwrap_or_default();
    let n = cols.values.len();
    if cols.series.len() != n || cols.time_offset_ms.len() != n {
        return Err(fail(format!(
            "sample columns differ in length (series {}, time_offset_ms {}, values {})",
            cols.series.len(),
            cols.time_offset_ms.len(),
            n
        )));
    }
    if n > limits.max_samples {
        return Err(fail(format!(
            "{n} samples, the limit is {}",
            limits.max_samples
        )));
    }
    // Each series' sample list allocated once, at its size (indexes out of
    // range are refused below).
    let mut counts = vec![0usize; series.len()];
    for &idx in &cols.series {
        if let Some(c) = counts.get_mut(idx as usize) {
            *c += 1;
        }
    }
    for (s, n) in series.iter_mut().zip(counts) {
        s.points.reserve_exact(n);
    }
    let earliest = now_ms.saturating_sub(limits.max_sample_age_ms);
    let latest = now_ms.saturating_add(limits.max_future_skew_ms);
    let mut decoded = DecodedBatch {
        seq,
        resources,
        series: Vec::new(),
        sample_count: 0,
        dropped_non_finite: 0,
        dropped_out_of_range: 0,
        gaps,
    };
    for j in 0..n {
        let idx = cols.series[j] as usize;
        let Some(target) = series.get_mut(idx) else {
            return Err(fail(format!(
                "sample {j} refers to series {idx}, the batch has {}",
                batch.series.len()
            )));
        };
        let value = cols.values[j];
        let ts = batch
            .base_time_unix_ms
            .saturating_add(cols.time_offset_ms[j]);
        if !value.is_finite() {
            decoded.dropped_non_finite += 1;
        } else if ts < earliest || ts > latest {
            decoded.dropped_out_of_range += 1;
        } else {
            target.points.push((ts, value));
            decoded.sample_count += 1;
        }
    }
    decoded.series = series
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
    // A resource was observed when its newest sample was taken.
    let mut newest: HashMap<&str, i64> = HashMap::new();
    for s in &decoded.series {
        if let Some(ts) = s.points.iter().map(|p| p.0).max() {
            let e = newest.entry(&*s.key.resource_id).or_insert(ts);
            *e = (*e).max(ts);
        }
    }
    for r in &mut decoded.resources {
        if let Some(&ts) = newest.get(r.id.as_str()) {
            r.observed_at_ms = ts;
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use infrawatch_proto::v1::{ResourceObservation, SampleColumns, SeriesDef};

    fn batch() -> Batch {
        Batch {
            seq: 1,
            base_time_unix_ms: 1_000_000,
            resources: vec![ResourceObservation {
                id: "host/a".into(),
                kind: "host".into(),
                interval_ms: 1000,
                ..Default::default()
            }],
            strings: vec!["system.cpu.utilization".into(), "cpu".into(), "0".into()],
            series: vec![
                SeriesDef {
                    resource: 0,
                    metric: 0,
                    attributes: vec![],
                },
                SeriesDef {
                    resource: 0,
                    metric: 0,
                    attributes: vec![1, 2],
                },
            ],
            samples: Some(SampleColumns {
                series: vec![0, 1, 1],
                time_offset_ms: vec![0, 0, 1000],
                values: vec![0.5, 0.25, f64::NAN],
            }),
            gaps: Vec::new(),
            sent_at_unix_ms: 0,
        }
    }

    #[test]
    fn a_described_resource_reports_within_the_interval_bounds() {
        let now = 1_000_000;
        let with = |kind: &str, interval_ms: u32| {
            let mut b = batch();
            b.resources[0].kind = kind.into();
            b.resources[0].interval_ms = interval_ms;
            decode(b, now, &Limits::default())
        };
        for bad in [0, MIN_INTERVAL_MS - 1, MAX_INTERVAL_MS + 1, u32::MAX] {
            let err = with("host", bad).unwrap_err().to_string();
            assert!(err.contains("interval_ms"), "{bad}: {err}");
        }
        assert!(with("host", MIN_INTERVAL_MS).is_ok());
        assert!(with("host", MAX_INTERVAL_MS).is_ok());
        // A reference by id alone carries samples and no interval.
        assert!(with("", 0).is_ok());
    }

    #[test]
    fn gaps_are_checked() {
        let now = 1_800_000_000_000;
        let gap = DataGap {
            first_seq: 3,
            last_seq: 5,
            from_unix_ms: now - 60_000,
            to_unix_ms: now - 30_000,
            samples_lost: 30,
            batches_lost: 3,
            cause: "buffer_full".into(),
            exact: true,
        };
        let with = |gaps: Vec<DataGap>| {
            let mut b = batch();
            b.seq = 9;
            b.base_time_unix_ms = now;
            b.gaps = gaps;
            decode(b, now, &Limits::default())
        };
        assert_eq!(with(vec![gap.clone()]).unwrap().gaps, vec![gap.clone()]);
        // A damaged record of unknown size at the start of the buffer.
        let unknown = DataGap {
            first_seq: 0,
            last_seq: 0,
            from_unix_ms: 0,
            samples_lost: 0,
            batches_lost: 1,
            exact: false,
            cause: "corrupt".into(),
            ..gap.clone()
        };
        assert!(with(vec![unknown.clone()]).is_ok());
        for (spoil, says) in [
            (
                (|g: &mut DataGap| g.cause = "Buffer Full".into()) as fn(&mut DataGap),
                "cause",
            ),
            (|g| g.last_seq = 1, "seq 3..1"),
            (|g| g.last_seq = 9, "earlier batches than this one (9)"),
            (|g| g.first_seq = 0, "seq 0..5"),
            (|g| g.to_unix_ms = 0, "time"),
            (|g| g.from_unix_ms = i64::MIN, "time"),
            (|g| g.to_unix_ms = i64::MAX, "time"),
            (|g| g.batches_lost = 0, "batches_lost 0"),
            (|g| g.batches_lost = 4, "between 1 and 3"),
            (|g| g.samples_lost = u64::MAX, "samples_lost"),
        ] {
            let mut bad = gap.clone();
            spoil(&mut bad);
            let err = with(vec![bad]).unwrap_err();
            assert!(err.problem.starts_with("gap 0"), "{err}");
            assert!(err.problem.contains(says), "{err} should say {says}");
        }
        // The same batches reported twice in one batch.
        let overlapping = DataGap {
            first_seq: 5,
            last_seq: 6,
            batches_lost: 2,
            ..gap.clone()
        };
        let err = with(vec![gap.clone(), overlapping]).unwrap_err();
        assert!(
            err.problem.contains("gaps 0 and 1 both cover seq 5"),
            "{err}"
        );
        let err = with(vec![gap.clone(), gap]).unwrap_err();
        assert!(err.problem.contains("both cover"), "{err}");
    }

    #[test]
    fn decodes_and_drops_non_finite() {
        let d = decode(batch(), 1_000_000, &Limits::default()).unwrap();
        assert_eq!(d.sample_count, 2);
        assert_eq!(d.dropped_non_finite, 1);
        assert_eq!(&*d.series[1].key.attributes, "cpu=\"0\"");
        assert_eq!(d.series[1].points, vec![(1_000_000, 0.25)]);
    }

    #[test]
    fn structural_problems_name_the_part() {
        let mut b = batch();
        b.series[0].metric = 99;
        let e = decode(b, 1_000_000, &Limits::default()).unwrap_err();
        assert!(e.problem.contains("series[0] metric"), "{e}");

        let mut b = batch();
        b.samples.as_mut().unwrap().values.pop();
        assert!(
            decode(b, 1_000_000, &Limits::default())
                .unwrap_err()
                .problem
                .contains("differ in length")
        );

        let mut b = batch();
        b.resources[0].id = "bad id".into();
        assert!(
            decode(b, 1_000_000, &Limits::default())
                .unwrap_err()
                .problem
                .contains("resources[0]")
        );

        let mut b = batch();
        b.seq = 0;
        assert!(decode(b, 1_000_000, &Limits::default()).is_err());
    }

    #[test]
    fn samples_from_the_far_future_are_dropped() {
        let d = decode(batch(), 1_000_000 - 11 * 60 * 1000, &Limits::default()).unwrap();
        assert_eq!(d.sample_count, 0);
        assert_eq!(d.dropped_out_of_range, 2);
    }

    mod fuzz {
        //! Property tests: any batch, however malformed, is either decoded into
        //! something consistent or refused with a message; nothing panics. Raw bytes
        //! go through the protobuf decoder first, as they do on the wire.

        use super::*;
        use proptest::prelude::*;

        fn any_string() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z./_-]{0,12}",
                ".{0,40}",
                Just("host/a".to_string()),
                Just("system.cpu.utilization".to_string()),
            ]
        }

        fn any_batch() -> impl Strategy<Value = Batch> {
            (
                any::<u64>(),
                any::<i64>(),
                prop::collection::vec((any_string(), any_string()), 0..4),
                prop::collection::vec(any_string(), 0..6),
                prop::collection::vec(
                    (0u32..8, 0u32..8, prop::collection::vec(0u32..8, 0..4)),
                    0..6,
                ),
                prop::collection::vec((0u32..8, any::<i64>(), any::<f64>()), 0..20),
                prop::collection::vec(
                    (
                        any::<u64>(),
                        any::<u64>(),
                        any::<i64>(),
                        any::<i64>(),
                        any::<u64>(),
                        any_string(),
                    ),
                    0..3,
                ),
            )
                .prop_map(|(seq, base, resources, strings, series, samples, gaps)| {
                    Batch {
                        seq,
                        base_time_unix_ms: base,
                        resources: resources
                            .into_iter()
                            .map(|(id, kind)| ResourceObservation {
                                id,
                                kind,
                                ..Default::default()
                            })
                            .collect(),
                        strings,
                        series: series
                            .into_iter()
                            .map(|(resource, metric, attributes)| SeriesDef {
                                resource,
                                metric,
                                attributes,
                            })
                            .collect(),
                        samples: Some(SampleColumns {
                            series: samples.iter().map(|s| s.0).collect(),
                            time_offset_ms: samples.iter().map(|s| s.1).collect(),
                            values: samples.iter().map(|s| s.2).collect(),
                        }),
                        gaps: gaps
                            .into_iter()
                            .map(|(a, b, from, to, lost, cause)| DataGap {
                                first_seq: a,
                                last_seq: b,
                                from_unix_ms: from,
                                to_unix_ms: to,
                                samples_lost: lost,
                                batches_lost: lost % 3,
                                cause,
                                exact: true,
                            })
                            .collect(),
                        sent_at_unix_ms: base,
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_batch_is_decoded_consistently_or_refused(batch in any_batch(), now in any::<i64>()) {
                let input_samples = batch.samples.as_ref().map_or(0, |s| s.values.len());
                if let Ok(d) = decode(batch, now, &Limits::default()) {
                    let kept: usize = d.series.iter().map(|s| s.points.len()).sum();
                    prop_assert_eq!(kept, d.sample_count);
                    prop_assert_eq!(
                        d.sample_count + d.dropped_non_finite + d.dropped_out_of_range,
                        input_samples
                    );
                    prop_assert!(d.series.iter().flat_map(|s| &s.points).all(|(_, v)| v.is_finite()));
                }
            }

            #[test]
            fn any_bytes_are_decoded_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(batch) = <Batch as prost::Message>::decode(bytes.as_slice()) {
                    let _ = decode(batch, 1_790_000_000_000, &Limits::default());
                }
            }
        }
    }
}
