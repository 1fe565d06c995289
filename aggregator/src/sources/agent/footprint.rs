//! Resource and relation budgets of one agent: how many resources its machine
//! may have in the model, and how many relations they may carry, counted
//! against the model (not against anything the agent says), so no stream,
//! reconnect or second certificate resets them.
//!
//! The resources of machine `M` are the ids under the agent prefixes
//! (`host/M`, `agent/M`, `gpu/M/...`, `probe/M/...`); the model is ordered by
//! id, so counting them is a range scan of that machine's own entries.

use infrawatch_common::resource::AGENT_PREFIXES;

use crate::sources::Observation;
use crate::state::Model;

/// The budgets (`ingest.max_resources_per_agent`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Resources one machine may have.
    pub max_resources: usize,
    /// Relations one resource may carry.
    pub max_relations_per_resource: usize,
    /// Relations all of one machine's resources may carry together.
    pub max_relations: usize,
}

impl Footprint {
    /// The budgets of `ingest`.
    pub fn for_ingest(ingest: &crate::config::IngestConfig) -> Self {
        Self {
            max_resources: ingest.max_resources_per_agent,
            max_relations_per_resource: ingest.max_relations_per_resource,
            max_relations: ingest.max_relations_per_agent,
        }
    }
}

/// What a machine holds in the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    resources: usize,
    relations: usize,
}

impl Footprint {
    /// Checks that machine `machine_id`, with the batch's `resources` applied,
    /// stays within the budgets; the error names the budget and the numbers.
    pub fn check(
        &self,
        model: &Model,
        machine_id: &str,
        resources: &[Observation],
    ) -> Result<(), String> {
        for r in resources {
            if r.relations.len() > self.max_relations_per_resource {
                return Err(format!(
                    "{} has {} relations, the most one resource may have is {} (ingest.max_relations_per_resource)",
                    r.id,
                    r.relations.len(),
                    self.max_relations_per_resource
                ));
            }
        }
        // Most batches describe nothing new and change no relations.
        let grows = resources.iter().any(|r| match model.resources.get(&r.id) {
            None => true,
            Some(t) => !r.kind.is_empty() && r.relations.len() > t.record.relations.len(),
        });
        if !grows {
            return Ok(());
        }
        let mut held = held(model, machine_id);
        for r in resources {
            match model.resources.get(&r.id) {
                None => {
                    held.resources += 1;
                    held.relations += r.relations.len();
                }
                Some(t) if !r.kind.is_empty() => {
                    held.relations = held.relations - t.record.relations.len() + r.relations.len();
                }
                Some(_) => {}
            }
        }
        if held.resources > self.max_resources {
            return Err(format!(
                "machine {machine_id} would have {} resources, the most one agent may report is {} (ingest.max_resources_per_agent)",
                held.resources, self.max_resources
            ));
        }
        if held.relations > self.max_relations {
            return Err(format!(
                "machine {machine_id} would have {} relations, the most one agent may report is {} (ingest.max_relations_per_agent)",
                held.relations, self.max_relations
            ));
        }
        Ok(())
    }
}

/// The resources and relations of machine `machine_id` in the model.
fn held(model: &Model, machine_id: &str) -> Held {
    let mut held = Held::default();
    for prefix in AGENT_PREFIXES {
        let own = format!("{prefix}/{machine_id}");
        let children = format!("{own}/");
        for (id, t) in model.resources.range(own.clone()..) {
            if id != &own && !id.starts_with(&children) {
                // Ids between `own` and `own/` (e.g. `host/m1-b`) sort before
                // the children only when their next character is below '/'.
                if id.as_str() > children.as_str() {
                    break;
                }
                continue;
            }
            held.resources += 1;
            held.relations += t.record.relations.len();
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Health, Relation, ResourceRecord};
    use crate::state::Tracked;

    fn observation(id: &str, relations: usize) -> Observation {
        Observation {
            verdict: None,
            id: id.into(),
            kind: "probe".into(),
            labels: Default::default(),
            attributes: Default::default(),
            relations: (0..relations)
                .map(|i| Relation {
                    relation_type: "depends_on".into(),
                    to_id: format!("service/x-{i}"),
                })
                .collect(),
            interval_ms: 1000,
            observed_at_ms: 0,
        }
    }

    fn model_with(ids: &[(&str, usize)]) -> Model {
        let mut model = Model {
            resources: Default::default(),
            tombstones: Default::default(),
        };
        for (id, relations) in ids {
            let o = observation(id, *relations);
            let record = ResourceRecord {
                id: id.to_string(),
                kind: o.kind,
                labels: Default::default(),
                attributes: Default::default(),
                relations: o.relations,
                health: Health::Healthy,
                reasons: Vec::new(),
                observed_at_ms: 0,
                version: 1,
                source: "agent-m1".into(),
                interval_ms: 1000,
            };
            model
                .resources
                .insert(id.to_string(), Tracked::new(record, 0));
        }
        model
    }

    #[test]
    fn a_machine_is_counted_by_its_own_ids_only() {
        let model = model_with(&[
            ("host/m1", 1),
            ("host/m1!", 0),
            ("host/m1-b", 5),
            ("host/m1/listening", 0),
            ("probe/m1/icmp/a", 2),
            ("probe/m10/icmp/a", 7),
            ("gpu/m1/0", 0),
        ]);
        assert_eq!(
            held(&model, "m1"),
            Held {
                resources: 4,
                relations: 3
            }
        );
    }

    #[test]
    fn budgets_refuse_growth_past_them_and_name_the_setting() {
        let budget = Footprint {
            max_resources: 3,
            max_relations_per_resource: 4,
            max_relations: 6,
        };
        let model = model_with(&[("host/m1", 2), ("probe/m1/a", 2)]);
        // Known resources, unchanged: nothing to count.
        assert!(
            budget
                .check(&model, "m1", &[observation("host/m1", 2)])
                .is_ok()
        );
        assert!(
            budget
                .check(&model, "m1", &[observation("probe/m1/b", 2)])
                .is_ok()
        );
        let err = budget
            .check(
                &model,
                "m1",
                &[observation("probe/m1/b", 0), observation("probe/m1/c", 0)],
            )
            .unwrap_err();
        assert!(
            err.contains("4 resources") && err.contains("max_resources_per_agent"),
            "{err}"
        );
        let err = budget
            .check(&model, "m1", &[observation("host/m1", 5)])
            .unwrap_err();
        assert!(err.contains("max_relations_per_resource"), "{err}");
        let err = budget
            .check(
                &model,
                "m1",
                &[observation("host/m1", 4), observation("probe/m1/b", 1)],
            )
            .unwrap_err();
        assert!(
            err.contains("7 relations") && err.contains("max_relations_per_agent"),
            "{err}"
        );
    }
}
