//! Checks a wire batch and turns it into resources and per-series samples.
//!
//! Structural problems (bad ids, indexes out of range, columns of different length,
//! limits exceeded) reject the whole batch with a message naming what is wrong.
//! Individual samples that are not finite or whose time is implausible are dropped
//! and counted, so one bad reading does not cost the rest of the batch.

use std::collections::HashMap;

use infrawatch_common::resource::{
    MAX_LABELS_PER_RESOURCE, canonical_attributes, validate_label, validate_metric_name,
    validate_resource_id,
};
use infrawatch_proto::v1::{Batch, DataGap};

use crate::model::Relation;
use crate::samples::{SeriesKey, SeriesSamples};
use crate::sources::Observation;

/// Relation types the model knows.
pub const RELATION_TYPES: [&str; 6] = [
    "runs_on",
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

/// Checks the gaps a batch reports.
fn check_gaps(gaps: Vec<DataGap>) -> Result<Vec<DataGap>, String> {
    if gaps.len() > MAX_GAPS {
        return Err(format!("{} gaps, the limit is {MAX_GAPS}", gaps.len()));
    }
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
        if g.first_seq > g.last_seq || g.from_unix_ms > g.to_unix_ms {
            return Err(format!(
                "gap {i}: seq {}..{} or time {}..{} runs backwards",
                g.first_seq, g.last_seq, g.from_unix_ms, g.to_unix_ms
            ));
        }
        if g.batches_lost == 0 {
            return Err(format!("gap {i}: batches_lost is 0"));
        }
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
    let gaps = check_gaps(std::mem::take(&mut batch.gaps)).map_err(fail)?;
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
    fn gaps_are_checked() {
        let gap = DataGap {
            first_seq: 3,
            last_seq: 5,
            from_unix_ms: 10,
            to_unix_ms: 20,
            samples_lost: 30,
            batches_lost: 3,
            cause: "buffer_full".into(),
            exact: true,
        };
        let mut b = batch();
        b.gaps.push(gap.clone());
        assert_eq!(
            decode(b, 1_000_000, &Limits::default()).unwrap().gaps,
            vec![gap.clone()]
        );
        for spoil in [
            (|g: &mut DataGap| g.cause = "Buffer Full".into()) as fn(&mut DataGap),
            |g| g.last_seq = 1,
            |g| g.to_unix_ms = 0,
            |g| g.batches_lost = 0,
        ] {
            let mut bad = gap.clone();
            spoil(&mut bad);
            let mut b = batch();
            b.gaps.push(bad);
            let err = decode(b, 1_000_000, &Limits::default()).unwrap_err();
            assert!(err.problem.starts_with("gap 0"), "{err}");
        }
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
