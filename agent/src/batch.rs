//! Turns collections into compact wire batches: strings once per batch, samples as
//! three packed columns (series index, time offset, value).
//!
//! Everything is checked here against the aggregator's rules first, because the
//! aggregator refuses a whole batch for one bad item: a resource with an invalid id
//! is dropped with its samples, a label with an invalid key is dropped, label
//! values are cleaned (control characters removed, cut to the length limit), and a
//! sample with an invalid metric, attribute key or a non-finite value is dropped.
//! Every drop is counted (`infrawatch_agent_batch_items_dropped_total{reason}`)
//! and logged once per reason.

use std::collections::HashMap;

/// The builder's maps, looked up several times per sample: foldhash instead
/// of the default SipHash (the keys are the agent's own strings, not an
/// attacker's).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use infrawatch_common::resource::{
    MAX_LABELS_PER_RESOURCE, clean_label_value, sanitize_label_value, validate_label,
    validate_metric_name, validate_resource_id,
};
use infrawatch_proto::v1::{Batch, Relation, ResourceObservation, SampleColumns, SeriesDef};

use crate::collector::{Collection, ObservedResource};

/// Accumulates collections until the batch is closed.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    /// Resources described in every batch (the host), so that series of any
    /// collector always refer to a resource the aggregator can create.
    base: Vec<ObservedResource>,
    resources: Vec<ResourceObservation>,
    resource_index: FastMap<String, u32>,
    strings: Vec<String>,
    string_index: FastMap<String, u32>,
    series: Vec<SeriesDef>,
    /// Series by key: resource, metric, then attribute key and value strings.
    series_index: FastMap<Vec<u32>, u32>,
    /// Reused buffer for a sample's series key.
    key: Vec<u32>,
    columns: SampleColumns,
    timestamps: Vec<i64>,
    /// Drop reasons already logged (each is logged once, counted always).
    logged: std::collections::HashSet<&'static str>,
}

/// Cleans a label map: invalid keys dropped, values cleaned, at most the limit kept.
fn clean_labels(
    map: std::collections::BTreeMap<String, String>,
    budget: &mut usize,
    dropped: &mut Vec<(&'static str, String)>,
) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let v = sanitize_label_value(&v);
        if let Err(e) = validate_label(&k, &v) {
            dropped.push(("label", e));
            continue;
        }
        if *budget == 0 {
            dropped.push((
                "label",
                format!("label {k:?} over the limit of {MAX_LABELS_PER_RESOURCE}"),
            ));
            continue;
        }
        *budget -= 1;
        out.push((k, v));
    }
    out
}

impl BatchBuilder {
    /// A builder whose every batch describes `base`.
    pub fn new(base: Vec<ObservedResource>) -> Self {
        let mut b = Self::default();
        b.seed(base);
        b
    }

    fn seed(&mut self, base: Vec<ObservedResource>) {
        for r in &base {
            self.add_resource(r.clone());
        }
        self.base = base;
    }

    /// Samples added so far.
    pub fn sample_count(&self) -> usize {
        self.columns.values.len()
    }

    /// True when nothing but the base resources was added.
    pub fn is_empty(&self) -> bool {
        self.resources.len() <= self.base.len() && self.columns.values.is_empty()
    }

    fn dropped(&mut self, reason: &'static str, detail: &str) {
        metrics::counter!("infrawatch_agent_batch_items_dropped_total", "reason" => reason)
            .increment(1);
        if self.logged.insert(reason) {
            tracing::warn!(
                reason,
                detail,
                "Dropped an item the aggregator would refuse (logged once per reason)."
            );
        }
    }

    /// Adds a collection; a resource seen again replaces its earlier description.
    pub fn add(&mut self, collection: Collection) {
        let mut refused: std::collections::HashSet<String> = std::collections::HashSet::new();
        for r in collection.resources {
            if let Err(e) = validate_resource_id(&r.id) {
                self.dropped("resource_id", &e);
                refused.insert(r.id);
                continue;
            }
            self.add_resource(r);
        }
        for s in collection.samples {
            if !refused.is_empty() && refused.contains(&s.resource_id) {
                continue;
            }
            if let Err(e) = validate_metric_name(&s.metric) {
                self.dropped("metric", &e);
                continue;
            }
            if !s.value.is_finite() {
                self.dropped("non_finite", &s.metric);
                continue;
            }
            if let Some(e) = s
                .attributes
                .iter()
                .find_map(|(k, v)| validate_label(k, &clean_label_value(v)).err())
            {
                self.dropped("attribute", &e);
                continue;
            }
            // Every id in the index was checked when it went in.
            let resource = match self.resource_index.get(s.resource_id.as_str()) {
                Some(i) => *i,
                None => {
                    if let Err(e) = validate_resource_id(&s.resource_id) {
                        self.dropped("resource_id", &e);
                        continue;
                    }
                    self.add_resource(ObservedResource {
                        id: s.resource_id,
                        kind: "",
                        labels: Default::default(),
                        attributes: Default::default(),
                        relations: Vec::new(),
                        interval_ms: 0,
                    })
                }
            };
            // The series key (resource, metric, attribute strings) is built in
            // a reused buffer; only a new series allocates one of its own.
            let mut key = std::mem::take(&mut self.key);
            key.clear();
            key.push(resource);
            key.push(self.intern(&s.metric));
            for (k, v) in &s.attributes {
                key.push(self.intern(k));
                key.push(self.intern(&clean_label_value(v)));
            }
            let series = match self.series_index.get(key.as_slice()) {
                Some(i) => *i,
                None => {
                    let i = self.series.len() as u32;
                    self.series.push(SeriesDef {
                        resource,
                        metric: key[1],
                        attributes: key[2..].to_vec(),
                    });
                    self.series_index.insert(key.clone(), i);
                    i
                }
            };
            self.key = key;
            self.columns.series.push(series);
            self.timestamps.push(s.timestamp_ms);
            self.columns.values.push(s.value);
        }
    }

    fn add_resource(&mut self, r: ObservedResource) -> u32 {
        let mut budget = MAX_LABELS_PER_RESOURCE;
        let mut dropped = Vec::new();
        let labels = clean_labels(r.labels, &mut budget, &mut dropped);
        let attributes = clean_labels(r.attributes, &mut budget, &mut dropped);
        for (reason, detail) in dropped {
            self.dropped(reason, &detail);
        }
        let obs = ResourceObservation {
            id: r.id.clone(),
            kind: r.kind.to_string(),
            labels: labels.into_iter().collect(),
            attributes: attributes.into_iter().collect(),
            relations: r
                .relations
                .into_iter()
                .filter(|(_, to)| validate_resource_id(to).is_ok())
                .map(|(relation_type, to_id)| Relation {
                    from_id: String::new(),
                    relation_type,
                    to_id,
                })
                .collect(),
            interval_ms: r.interval_ms,
        };
        match self.resource_index.get(&r.id) {
            Some(&i) => {
                self.resources[i as usize] = obs;
                i
            }
            None => {
                let i = self.resources.len() as u32;
                self.resources.push(obs);
                self.resource_index.insert(r.id, i);
                i
            }
        }
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(i) = self.string_index.get(s) {
            return *i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.to_string());
        self.string_index.insert(s.to_string(), i);
        i
    }

    /// Closes the batch with sequence number `seq`, leaving the builder empty.
    pub fn finish(&mut self, seq: u64) -> Batch {
        let mut this = std::mem::take(self);
        self.seed(this.base.clone());
        let base = this
            .timestamps
            .iter()
            .copied()
            .min()
            .unwrap_or_else(infrawatch_common::time::now_unix_ms);
        this.columns.time_offset_ms = this.timestamps.iter().map(|t| t - base).collect();
        Batch {
            seq,
            base_time_unix_ms: base,
            resources: this.resources,
            strings: this.strings,
            series: this.series,
            samples: Some(this.columns),
            gaps: Vec::new(),
            sent_at_unix_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn collection(ts: i64) -> Collection {
        let mut c = Collection::default();
        c.resources.push(ObservedResource {
            id: "host/a".into(),
            kind: "host",
            labels: Default::default(),
            attributes: Default::default(),
            relations: Vec::new(),
            interval_ms: 1000,
        });
        for cpu in 0..4 {
            c.sample(
                "host/a",
                "system.cpu.utilization",
                &[("cpu", &cpu.to_string())],
                ts,
                0.25,
            );
        }
        c
    }

    #[test]
    fn strings_and_series_appear_once() {
        let mut b = BatchBuilder::default();
        b.add(collection(1_000));
        b.add(collection(2_000));
        let batch = b.finish(7);
        assert_eq!(batch.seq, 7);
        assert_eq!(batch.resources.len(), 1);
        assert_eq!(batch.series.len(), 4);
        // metric, "cpu" and the four core numbers
        assert_eq!(batch.strings.len(), 6);
        let cols = batch.samples.unwrap();
        assert_eq!(cols.values.len(), 8);
        assert_eq!(batch.base_time_unix_ms, 1_000);
        assert_eq!(cols.time_offset_ms[4], 1_000);
        assert!(b.is_empty());
    }

    #[test]
    fn base_resources_are_in_every_batch_but_do_not_make_one() {
        let host = collection(0).resources.remove(0);
        let mut b = BatchBuilder::new(vec![host]);
        assert!(b.is_empty());
        let mut c = Collection::default();
        c.sample(
            "host/a",
            "system.disk.io.rate",
            &[("device", "vda")],
            5,
            1.0,
        );
        b.add(c);
        assert!(!b.is_empty());
        let first = b.finish(1);
        assert_eq!(first.resources[0].kind, "host");
        assert!(b.is_empty());
        let mut c = Collection::default();
        c.sample("host/a", "system.uptime", &[], 6, 1.0);
        b.add(c);
        assert_eq!(
            b.finish(2).resources[0].kind,
            "host",
            "the next batch describes the host again"
        );
    }

    #[test]
    fn items_the_aggregator_would_refuse_are_dropped_or_cleaned() {
        let mut c = Collection::default();
        c.resources.push(ObservedResource {
            id: "probe/m/dns//a".into(),
            kind: "dns_probe",
            labels: Default::default(),
            attributes: Default::default(),
            relations: Vec::new(),
            interval_ms: 1000,
        });
        c.sample("probe/m/dns//a", "dns.lookup.duration", &[], 1, 0.1);
        let mut ok = collection(1).resources.remove(0);
        ok.attributes
            .insert("txt".into(), format!("a\u{7}b{}", "é".repeat(600)));
        ok.attributes.insert("bad key".into(), "x".into());
        c.resources.push(ok);
        c.sample("host/a", "bad metric", &[], 1, 1.0);
        c.sample("host/a", "system.uptime", &[], 1, f64::NAN);
        c.sample("host/a", "system.uptime", &[], 1, 5.0);
        let mut b = BatchBuilder::default();
        b.add(c);
        let batch = b.finish(1);
        assert_eq!(
            batch.resources.len(),
            1,
            "the invalid probe is dropped with its sample"
        );
        let txt = &batch.resources[0].attributes["txt"];
        assert!(txt.starts_with("abé") && txt.len() <= 1024);
        assert!(!batch.resources[0].attributes.contains_key("bad key"));
        assert_eq!(batch.samples.unwrap().values, vec![5.0]);
    }

    #[test]
    fn a_sample_costs_few_bytes_on_the_wire() {
        let mut b = BatchBuilder::default();
        for i in 0..10 {
            b.add(collection(1_000 + i * 1000));
        }
        let n = b.sample_count();
        let bytes = b.finish(1).encoded_len();
        // 3 packed columns: ~1 byte series, ~2-3 bytes offset, 8 bytes value.
        assert!(bytes / n < 16, "{} bytes per sample", bytes / n);
    }
}
