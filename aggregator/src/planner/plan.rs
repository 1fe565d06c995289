//! Planning: what a report changes, computed against the model plus what the
//! same plan already holds. Pure: no I/O, no locks taken here, so sources use it
//! to tell whether a report changes anything before they queue it, and the
//! writer uses it again, authoritatively, for the transaction.

use std::collections::{BTreeSet, HashMap, HashSet};

use infrawatch_common::resource::{self, kind};
use infrawatch_proto::v1 as pb;

use super::{STALENESS_SOURCE, StateError, parts};
use crate::config::HealthConfig;
use crate::events::validate::{Bounds, validate};
use crate::events::{StoredEvent, build, metric as event_metric};
use crate::health;
use crate::model::{Health, Reason, ResourceRecord, changed_fields};
use crate::rules::{self, RuleSet};
use crate::samples::SampleStore;
use crate::sources::{Change, Observation, Report};
use crate::state::Model;
use crate::store::{Commit, DeadLetter, GapRow, HistoryEntry, StatePosition};

/// What planning reads: the model, the samples (for health rules), the rules,
/// and the time.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The model (under its read lock).
    pub model: &'a Model,
    /// Recent samples.
    pub samples: &'a SampleStore,
    /// Health rules.
    pub health: &'a HealthConfig,
    /// Health rules as data, by kind.
    pub rules: &'a RuleSet,
    /// Now (Unix ms).
    pub now_ms: i64,
}

impl Context<'_> {
    /// Start of the health evaluation window.
    fn window_start(&self) -> i64 {
        self.now_ms - i64::try_from(self.health.evaluation_window_ms).unwrap_or(i64::MAX)
    }
}

/// Changes planned for one transaction.
#[derive(Debug, Default)]
pub struct Plan {
    /// Latest planned record of every resource touched.
    records: HashMap<String, ResourceRecord>,
    /// Ids whose new version must be stored.
    changed: HashSet<String>,
    relations_changed: HashSet<String>,
    history: Vec<HistoryEntry>,
    /// Newest state position per source key: (seq, session epoch).
    state_cursors: HashMap<String, (u64, u64)>,
    /// Resources with fresh data: (id, observed at).
    seen: Vec<(String, i64)>,
    /// One event per new version, with the version it follows.
    events: Vec<(pb::InfrastructureStatusUpdatedEvent, u64)>,
    gaps: Vec<GapRow>,
    /// Ids deleted at their source, with their tombstone state.
    removed: HashMap<String, ResourceRecord>,
    /// Parts of hosts this plan holds a record of, by host.
    parts: HashMap<String, BTreeSet<String>>,
}

/// What goes into the model once the commit succeeded.
#[derive(Debug, Default)]
pub struct Applied {
    /// New records (changed or not; unchanged ones only refresh the model).
    pub records: HashMap<String, ResourceRecord>,
    /// Ids with a new version.
    pub changed: usize,
    /// Resources with fresh data: (id, observed at).
    pub seen: Vec<(String, i64)>,
    /// Resources deleted, at their tombstone version.
    pub removed: Vec<ResourceRecord>,
}

/// Checks that `source` may report every resource `report` observes: a resource
/// another source reports may be taken over only once it is UNKNOWN (its reporter
/// went silent, e.g. after its certificate was replaced). Sources call this
/// before they apply anything of a report.
pub fn check_owner(model: &Model, report: &Report) -> Result<(), StateError> {
    for change in &report.changes {
        if let Change::Observed(obs) = change {
            owner_ok(
                model.resources.get(&obs.id).map(|t| &t.record),
                &report.source,
                obs,
            )?;
        }
    }
    Ok(())
}

fn owner_ok(
    existing: Option<&ResourceRecord>,
    source: &str,
    obs: &Observation,
) -> Result<(), StateError> {
    match existing {
        Some(existing) if existing.source != source && existing.health != Health::Unknown => {
            Err(StateError::Forbidden(format!(
                "resource {} is reported by {}, not by {source} (two hosts with the same machine id?)",
                obs.id, existing.source
            )))
        }
        None if obs.kind.is_empty() => Err(StateError::Invalid(format!(
            "{} refers to unknown resource {} without a kind",
            source, obs.id
        ))),
        _ => Ok(()),
    }
}

impl Plan {
    /// True when the plan writes nothing.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.gaps.is_empty() && self.removed.is_empty()
    }

    /// New versions planned so far.
    pub fn version_count(&self) -> usize {
        self.history.len()
    }

    /// Resources the plan saw fresh data for: (id, observed at).
    pub fn seen(&self) -> &[(String, i64)] {
        &self.seen
    }

    fn record<'a>(&'a self, model: &'a Model, id: &str) -> Option<&'a ResourceRecord> {
        if self.removed.contains_key(id) {
            return None;
        }
        self.records
            .get(id)
            .or_else(|| model.resources.get(id).map(|t| &t.record))
    }

    /// The version a resource created under `id` follows: its tombstone's, if
    /// it was deleted before.
    fn base_version(&self, model: &Model, id: &str) -> u64 {
        self.removed
            .get(id)
            .map(|r| r.version)
            .or_else(|| model.tombstones.get(id).map(|t| t.version))
            .unwrap_or(0)
    }

    /// Plans `report` on top of what the plan holds. On error nothing of the
    /// report is planned.
    pub fn add(&mut self, ctx: &Context<'_>, report: &Report) -> Result<(), StateError> {
        for change in &report.changes {
            if let Change::Observed(obs) = change {
                owner_ok(self.record(ctx.model, &obs.id), &report.source, obs)?;
            }
        }
        let window_start = ctx.window_start();
        let mut hosts_of_parts: BTreeSet<&str> = BTreeSet::new();
        for change in &report.changes {
            let id = match change {
                Change::Observed(obs) => Some(&obs.id),
                Change::Stale { id, .. } | Change::Removed { id, .. } => Some(id),
                Change::DataGap { .. } => None,
            };
            if let Some(id) = id
                && let Some(host) = resource::host_of_part(id)
            {
                hosts_of_parts.insert(host);
                self.parts
                    .entry(host.to_string())
                    .or_default()
                    .insert(id.clone());
            }
            match change {
                Change::Observed(obs) => self.observed(ctx, &report.source, obs, window_start),
                Change::Stale {
                    id,
                    last_seen_ms,
                    reason,
                } => self.stale(ctx, id, *last_seen_ms, reason),
                Change::Removed { id, reason } => self.removed(ctx, &report.source, id, reason),
                Change::DataGap { row, gap } => {
                    self.gaps.push(row.clone());
                    if !row.host_id.is_empty() {
                        self.data_gap(ctx, &row.host_id, gap);
                    }
                }
            }
        }
        // A host's health rolls up its parts': judged again when one changed.
        for host in hosts_of_parts {
            self.roll_up(ctx, host, window_start);
        }
        if let Some(p) = &report.position {
            let at = self.state_cursors.entry(p.key.clone()).or_default();
            *at = (at.0.max(p.seq), p.epoch);
        }
        Ok(())
    }

    /// Judges host `host_id` again (its rules and its parts), if it is known.
    fn roll_up(&mut self, ctx: &Context<'_>, host_id: &str, window_start: i64) {
        let Some(host) = self.record(ctx.model, host_id) else {
            return;
        };
        if host.health == Health::Unknown && !host.reasons.is_empty() {
            // Stale or removed: its own staleness decides.
            return;
        }
        let (health, reasons) = self.evaluate(ctx, host, window_start);
        if health == host.health && same_codes(&reasons, &host.reasons) {
            return;
        }
        let mut next = host.clone();
        next.health = health;
        next.reasons = reasons;
        self.update(ctx, next, None);
    }

    /// Health of a resource that just reported: its probe verdict, the rules
    /// of its kind over the window's samples (a host's rolling up its parts),
    /// or healthy for kinds without rules.
    fn evaluate(
        &self,
        ctx: &Context<'_>,
        record: &ResourceRecord,
        window_start: i64,
    ) -> (Health, Vec<Reason>) {
        if let Some(verdict) = health::evaluate_probe(&record.kind, &record.attributes) {
            return verdict;
        }
        let (own, mut reasons) = self.evaluate_in_code(ctx, record, window_start);
        let found = rules::eval::evaluate(
            ctx.rules.of_kind(&record.kind),
            ctx.samples,
            &record.id,
            ctx.now_ms,
        );
        if found.is_empty() {
            return (own, reasons);
        }
        let mut health = own;
        for (h, reason) in found {
            health = health::worse(health, h);
            reasons.push(reason);
        }
        reasons.sort_by(|a, b| a.code.cmp(&b.code));
        (health, reasons)
    }

    /// Health by the rules written in code: a host's thresholds and its parts,
    /// a filesystem's and an interface's rules; healthy for other kinds.
    fn evaluate_in_code(
        &self,
        ctx: &Context<'_>,
        record: &ResourceRecord,
        window_start: i64,
    ) -> (Health, Vec<Reason>) {
        match record.kind.as_str() {
            kind::HOST => {
                let series: Vec<(&str, &str)> = health::HOST_RULES
                    .iter()
                    .map(|rule| (rule.metric, rule.attributes))
                    .collect();
                let figures: Vec<(health::HostRule, f64)> = health::HOST_RULES
                    .iter()
                    .zip(ctx.samples.window_stats(&record.id, &series, window_start))
                    .filter_map(|(rule, stats)| stats.mean().map(|m| (*rule, m)))
                    .collect();
                let (own, mut reasons) = health::evaluate_host(&figures, ctx.health);
                let parts = self.parts_of(ctx.model, &record.id);
                let (of_parts, more) =
                    health::parts::roll_up(parts.iter().map(|p| health::parts::PartHealth {
                        id: &p.id,
                        health: p.health,
                        reasons: &p.reasons,
                    }));
                reasons.extend(more);
                reasons.sort_by(|a, b| a.code.cmp(&b.code));
                (health::worse(own, of_parts), reasons)
            }
            kind::FILESYSTEM => health::parts::evaluate_filesystem(
                &parts::filesystem_figures(ctx.samples, record, window_start),
                &record.attributes,
                &ctx.health.filesystem,
            ),
            kind::NETWORK_INTERFACE => health::parts::evaluate_interface(
                &parts::interface_figures(ctx.samples, record, window_start),
                &record.attributes,
                &ctx.health.network_interface,
            ),
            _ => (Health::Healthy, Vec::new()),
        }
    }

    /// The parts of host `host_id` as this plan sees them.
    fn parts_of<'a>(&'a self, model: &'a Model, host_id: &str) -> Vec<&'a ResourceRecord> {
        let mut ids: BTreeSet<&str> = model.parts_of(host_id).map(|(id, _)| id).collect();
        if let Some(planned) = self.parts.get(host_id) {
            ids.extend(planned.iter().map(String::as_str));
        }
        ids.into_iter()
            .filter_map(|id| self.record(model, id))
            .collect()
    }

    fn observed(&mut self, ctx: &Context<'_>, source: &str, obs: &Observation, window_start: i64) {
        // The common case: a resource reported again as it was, its health
        // unchanged. Nothing to plan but the time it was seen (no clones).
        if let Some(existing) = self.record(ctx.model, &obs.id)
            && same_as_reported(existing, source, obs)
        {
            let unchanged = if let Some(verdict) = &obs.verdict {
                verdict.health == existing.health && same_codes(&verdict.reasons, &existing.reasons)
            } else if obs.observed_at_ms >= window_start || existing.version == 0 {
                let (health, reasons) = self.evaluate(ctx, existing, window_start);
                health == existing.health && same_codes(&reasons, &existing.reasons)
            } else {
                true
            };
            if unchanged {
                self.seen.push((obs.id.clone(), obs.observed_at_ms));
                return;
            }
        }
        let existing = self.record(ctx.model, &obs.id).cloned();
        let base_version = self.base_version(ctx.model, &obs.id);
        let mut next = existing.unwrap_or_else(|| ResourceRecord {
            id: obs.id.clone(),
            kind: obs.kind.clone(),
            labels: Default::default(),
            attributes: Default::default(),
            relations: Vec::new(),
            health: Health::Unknown,
            reasons: Vec::new(),
            observed_at_ms: obs.observed_at_ms,
            version: base_version,
            source: source.to_string(),
            interval_ms: 0,
        });
        let created = self.record(ctx.model, &obs.id).is_none();
        if !obs.kind.is_empty() {
            next.kind = obs.kind.clone();
            next.labels = obs.labels.clone();
            next.attributes = obs.attributes.clone();
            next.relations = obs.relations.clone();
            next.interval_ms = obs.interval_ms;
        }
        next.source = source.to_string();
        next.observed_at_ms = obs.observed_at_ms;
        // A replayed backlog holds only samples older than the window: they say
        // nothing about the present, so the health stays as it is.
        if let Some(verdict) = &obs.verdict {
            next.health = verdict.health;
            next.reasons = verdict.reasons.clone();
        } else if obs.observed_at_ms >= window_start || created {
            let (health, reasons) = self.evaluate(ctx, &next, window_start);
            next.health = health;
            next.reasons = reasons;
        }
        self.seen.push((next.id.clone(), obs.observed_at_ms));
        self.update(ctx, next, None);
    }

    /// Plans the deletion of `id` by its source (or by the staleness check): a
    /// last version, UNKNOWN with `reason`, that becomes its tombstone. Nothing
    /// if it is not in the model, or another source reports it. A source sends
    /// at most one change per resource in one report.
    fn removed(&mut self, ctx: &Context<'_>, source: &str, id: &str, reason: &Reason) {
        let Some(before) = self.record(ctx.model, id).cloned() else {
            return;
        };
        // The staleness check removes what went away with its reporter
        // (transient kinds, see `resource::TRANSIENT_KINDS`).
        let observer = (source == STALENESS_SOURCE).then_some(STALENESS_SOURCE);
        if before.source != source && observer.is_none() {
            return;
        }
        let mut next = before.clone();
        next.version += 1;
        next.health = Health::Unknown;
        next.reasons = vec![reason.clone()];
        next.observed_at_ms = ctx.now_ms;
        self.push_version(ctx, Some(&before), next, &["deleted"], None, observer);
        self.changed.remove(id);
        self.relations_changed.remove(id);
        if let Some(tombstone) = self.records.remove(id) {
            self.removed.insert(id.to_string(), tombstone);
        }
    }

    fn stale(&mut self, ctx: &Context<'_>, id: &str, last_seen_ms: i64, reason: &Reason) {
        let Some(current) = self.record(ctx.model, id) else {
            return;
        };
        // Data arrived after the check looked: not stale.
        let seen_since = ctx
            .model
            .resources
            .get(id)
            .is_some_and(|t| t.last_seen_ms() > last_seen_ms);
        if current.health == Health::Unknown || seen_since {
            return;
        }
        let mut next = current.clone();
        next.health = Health::Unknown;
        next.reasons = vec![reason.clone()];
        self.update(ctx, next, Some(STALENESS_SOURCE));
    }

    /// Stores `next` as the new state of its resource, bumping the version and
    /// writing history when a field that consumers care about changed. Events and
    /// history name `observer` as their source when it is not the resource's own
    /// (the staleness check).
    fn update(&mut self, ctx: &Context<'_>, mut next: ResourceRecord, observer: Option<&str>) {
        let before = self.record(ctx.model, &next.id).cloned();
        let changed = changed_fields(before.as_ref(), &next);
        if changed.is_empty() {
            self.records.insert(next.id.clone(), next);
            return;
        }
        next.version = match &before {
            Some(b) => b.version + 1,
            None => self.base_version(ctx.model, &next.id) + 1,
        };
        self.removed.remove(&next.id);
        if changed.contains(&"relations")
            || (changed.contains(&"created") && !next.relations.is_empty())
        {
            self.relations_changed.insert(next.id.clone());
        }
        self.push_version(ctx, before.as_ref(), next, &changed, None, observer);
    }

    /// Records that the agent on host `id` lost data: a new version of the host
    /// whose event carries the gap (`changed` = `data_gap`).
    fn data_gap(&mut self, ctx: &Context<'_>, id: &str, gap: &pb::DataGap) {
        let Some(before) = self.record(ctx.model, id).cloned() else {
            return;
        };
        let mut next = before.clone();
        next.version += 1;
        self.push_version(
            ctx,
            Some(&before),
            next,
            &["data_gap"],
            Some(gap.clone()),
            None,
        );
    }

    /// Plans `next` (already at its new version) with its event and history row.
    fn push_version(
        &mut self,
        ctx: &Context<'_>,
        before: Option<&ResourceRecord>,
        next: ResourceRecord,
        changed: &[&str],
        gap: Option<pb::DataGap>,
        observer: Option<&str>,
    ) {
        if self.changed.contains(&next.id) {
            self.amend(ctx, before, next, changed, gap, observer);
            return;
        }
        let previous_health = before.map_or(Health::Unknown, |b| b.health);
        let source = observer.unwrap_or(&next.source).to_string();
        let observed_at_ms = if observer.is_some() {
            ctx.now_ms
        } else {
            next.observed_at_ms
        };
        let mut event = build::event_for(&next, previous_health, changed, &source, ctx.now_ms);
        event.gap = gap;
        event.observed_at_unix_ms = observed_at_ms;
        // A resource created again after a deletion follows its tombstone.
        let previous_version = before.map_or(next.version.saturating_sub(1), |b| b.version);
        self.events.push((event, previous_version));
        self.history.push(HistoryEntry {
            resource_id: next.id.clone(),
            resource_version: next.version,
            previous_health,
            health: next.health,
            reasons: next.reasons.clone(),
            changed: changed.iter().map(|s| s.to_string()).collect(),
            observed_at_ms,
            recorded_at_ms: ctx.now_ms,
            source,
        });
        self.changed.insert(next.id.clone());
        self.records.insert(next.id.clone(), next);
    }

    /// Folds a second change of a resource in this plan into the version the
    /// plan already gives it (a commit moves a resource by one version: a host
    /// judged again for its parts after its own report, two reports of one
    /// agent in one group): the pending record, its history row and its event
    /// become the latest state, with the health before the plan and every
    /// field that changed.
    fn amend(
        &mut self,
        ctx: &Context<'_>,
        pending: Option<&ResourceRecord>,
        mut next: ResourceRecord,
        changed: &[&str],
        gap: Option<pb::DataGap>,
        observer: Option<&str>,
    ) {
        if let Some(p) = pending {
            next.version = p.version;
        }
        let source = observer.unwrap_or(&next.source).to_string();
        let observed_at_ms = if observer.is_some() {
            ctx.now_ms
        } else {
            next.observed_at_ms
        };
        let mut previous_health = Health::Unknown;
        let mut all_changed: Vec<String> = Vec::new();
        if let Some(h) = self
            .history
            .iter_mut()
            .rev()
            .find(|h| h.resource_id == next.id)
        {
            previous_health = h.previous_health;
            for c in changed {
                if !h.changed.iter().any(|x| x == c) {
                    h.changed.push((*c).to_string());
                }
            }
            h.health = next.health;
            h.reasons = next.reasons.clone();
            h.observed_at_ms = observed_at_ms;
            h.source = source.clone();
            all_changed = h.changed.clone();
        }
        if let Some((event, _)) = self
            .events
            .iter_mut()
            .rev()
            .find(|(e, _)| e.resource_id == next.id)
        {
            let names: Vec<&str> = all_changed.iter().map(String::as_str).collect();
            let kept_gap = event.gap.take();
            *event = build::event_for(&next, previous_health, &names, &source, ctx.now_ms);
            event.gap = match (kept_gap, gap) {
                (Some(a), Some(b)) => Some(merged_gap(a, b)),
                (a, b) => a.or(b),
            };
            event.observed_at_unix_ms = observed_at_ms;
        }
        if changed.contains(&"relations") {
            self.relations_changed.insert(next.id.clone());
        }
        self.records.insert(next.id.clone(), next);
    }

    /// The transaction for this plan: events that pass validation are staged
    /// (the sequencer gives them positions after commit), the others become dead
    /// letters.
    pub fn into_commit(self, bounds: Bounds) -> (Commit, Applied) {
        let mut events = Vec::with_capacity(self.events.len());
        let mut dead_letters = Vec::new();
        for (event, previous_version) in self.events {
            match validate(&event, previous_version, bounds) {
                Ok(()) => events.push(StoredEvent::new(0, event, None)),
                Err(invalid) => {
                    tracing::error!(
                        resource = %event.resource_id,
                        version = event.resource_version,
                        reason = %invalid,
                        "Event failed validation; kept as a dead letter."
                    );
                    metrics::counter!(event_metric::INVALID, "reason" => invalid.code).increment(1);
                    dead_letters.push(DeadLetter {
                        event,
                        reason: invalid.to_string(),
                        recorded_at_ms: bounds.now_ms,
                    });
                }
            }
        }
        let resources: Vec<ResourceRecord> = self
            .changed
            .iter()
            .filter_map(|id| self.records.get(id).cloned())
            .collect();
        let commit = Commit {
            resources,
            relations_changed: self.relations_changed.into_iter().collect(),
            history: self.history,
            state_cursors: self
                .state_cursors
                .into_iter()
                .map(|(key, (seq, epoch))| StatePosition { key, seq, epoch })
                .collect(),
            events,
            dead_letters,
            gaps: self.gaps,
            removed: self.removed.values().cloned().collect(),
            sequence: None,
        };
        let applied = Applied {
            records: self.records,
            changed: self.changed.len(),
            seen: self.seen,
            removed: self.removed.into_values().collect(),
        };
        (commit, applied)
    }
}

/// True when both lists name the same reason codes in the same order.
/// Two gaps of one report as one event's gap: the range covering both, the
/// losses summed, exact only if both were and they touch.
fn merged_gap(a: pb::DataGap, b: pb::DataGap) -> pb::DataGap {
    let touch =
        a.last_seq.saturating_add(1) >= b.first_seq && b.last_seq.saturating_add(1) >= a.first_seq;
    pb::DataGap {
        first_seq: a.first_seq.min(b.first_seq),
        last_seq: a.last_seq.max(b.last_seq),
        from_unix_ms: a.from_unix_ms.min(b.from_unix_ms),
        to_unix_ms: a.to_unix_ms.max(b.to_unix_ms),
        samples_lost: a.samples_lost.saturating_add(b.samples_lost),
        batches_lost: a.batches_lost.saturating_add(b.batches_lost),
        exact: a.exact && b.exact && touch,
        cause: if a.cause == b.cause {
            a.cause
        } else {
            format!("{},{}", a.cause, b.cause)
        },
    }
}

fn same_codes(a: &[Reason], b: &[Reason]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.code == y.code)
}

/// True when `obs` from `source` describes `existing` as it is stored (kind,
/// labels, attributes, relations, interval and source).
fn same_as_reported(existing: &ResourceRecord, source: &str, obs: &Observation) -> bool {
    existing.source == source
        && (obs.kind.is_empty()
            || (existing.kind == obs.kind
                && existing.labels == obs.labels
                && existing.attributes == obs.attributes
                && existing.relations == obs.relations
                && existing.interval_ms == obs.interval_ms))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Relation;
    use crate::samples::ledger::Cursor;
    use crate::samples::{SeriesKey, SeriesSamples};
    use crate::sources::Position;
    use crate::state::Tracked;

    /// A time events accept (after 2000).
    const NOW: i64 = 1_800_000_000_000;

    fn host(id: &str, observed_at_ms: i64) -> Observation {
        Observation {
            verdict: None,
            id: id.into(),
            kind: kind::HOST.into(),
            labels: BTreeMap::new(),
            attributes: BTreeMap::from([("host.name".to_string(), "a".to_string())]),
            relations: Vec::new(),
            interval_ms: 1000,
            observed_at_ms,
        }
    }

    fn report(source: &str, seq: u64, changes: Vec<Change>) -> Report {
        Report {
            source: source.into(),
            changes,
            position: Some(Position {
                key: source.into(),
                seq,
                epoch: 1,
            }),
        }
    }

    fn model_with(records: Vec<ResourceRecord>) -> Model {
        Model {
            tombstones: Default::default(),
            resources: records
                .into_iter()
                .map(|r| (r.id.clone(), Tracked::new(r, 0)))
                .collect(),
        }
    }

    fn planned(model: &Model, samples: &SampleStore, r: &Report) -> (Commit, Applied) {
        let health = HealthConfig::default();
        let ctx = Context {
            model,
            samples,
            health: &health,
            rules: &RuleSet::default(),
            now_ms: NOW,
        };
        let mut plan = Plan::default();
        plan.add(&ctx, r).unwrap();
        plan.into_commit(Bounds {
            now_ms: NOW,
            max_future_skew_ms: 300_000,
        })
    }

    #[test]
    fn a_new_resource_is_created_with_an_event_and_the_source_position() {
        let samples = SampleStore::new(60_000);
        let model = model_with(Vec::new());
        let r = report(
            "agent-a",
            7,
            vec![Change::Observed(host("host/x", NOW - 1_000))],
        );
        let (commit, applied) = planned(&model, &samples, &r);
        assert_eq!(commit.resources.len(), 1);
        assert_eq!(commit.resources[0].version, 1);
        assert_eq!(commit.resources[0].health, Health::Healthy);
        assert_eq!(commit.events.len(), 1);
        assert_eq!(commit.history[0].changed, vec!["created".to_string()]);
        assert_eq!(
            commit.state_cursors,
            vec![StatePosition {
                key: "agent-a".into(),
                seq: 7,
                epoch: 1
            }]
        );
        assert_eq!(applied.changed, 1);
    }

    fn created_record() -> ResourceRecord {
        let samples = SampleStore::new(60_000);
        planned(
            &model_with(Vec::new()),
            &samples,
            &report("k8s/a", 1, vec![Change::Observed(host("pod/x", NOW))]),
        )
        .0
        .resources
        .remove(0)
    }

    fn deleted() -> Reason {
        Reason {
            code: "deleted".into(),
            message: "gone".into(),
            metric: String::new(),
            observed: 0.0,
            threshold: 0.0,
        }
    }

    #[test]
    fn a_removed_resource_becomes_a_tombstone_and_comes_back_after_it() {
        let samples = SampleStore::new(60_000);
        let created = planned(
            &model_with(Vec::new()),
            &samples,
            &report("k8s/a", 1, vec![Change::Observed(host("pod/x", NOW))]),
        )
        .0;
        let mut model = model_with(created.resources);
        let (commit, applied) = planned(
            &model,
            &samples,
            &report(
                "k8s/a",
                2,
                vec![Change::Removed {
                    id: "pod/x".into(),
                    reason: deleted(),
                }],
            ),
        );
        assert!(commit.resources.is_empty());
        assert_eq!(commit.removed.len(), 1);
        assert_eq!(commit.removed[0].version, 2);
        assert_eq!(commit.removed[0].health, Health::Unknown);
        assert_eq!(commit.history[0].changed, vec!["deleted".to_string()]);
        assert_eq!(commit.events.len(), 1, "{:?}", commit.dead_letters);
        assert_eq!(applied.removed.len(), 1);
        model.resources.remove("pod/x");
        model.tombstones.insert(
            "pod/x".into(),
            crate::store::Tombstone {
                version: 2,
                deleted_at_ms: NOW,
            },
        );
        // Another source cannot delete it, and a deleted one is not deleted twice.
        let other = planned(
            &model,
            &samples,
            &report(
                "k8s/b",
                1,
                vec![Change::Removed {
                    id: "pod/x".into(),
                    reason: deleted(),
                }],
            ),
        )
        .0;
        assert!(other.removed.is_empty() && other.events.is_empty());
        // The staleness check may remove it (transient kinds gone silent).
        let model_again = model_with(vec![created_record()]);
        let swept = planned(
            &model_again,
            &samples,
            &report(
                STALENESS_SOURCE,
                1,
                vec![Change::Removed {
                    id: "pod/x".into(),
                    reason: deleted(),
                }],
            ),
        )
        .0;
        assert_eq!(swept.removed.len(), 1);
        assert_eq!(swept.history[0].source, STALENESS_SOURCE);
        let (again, _) = planned(
            &model,
            &samples,
            &report("k8s/a", 3, vec![Change::Observed(host("pod/x", NOW))]),
        );
        assert_eq!(
            again.resources[0].version, 3,
            "continues from the tombstone"
        );
        assert_eq!(again.history[0].changed, vec!["created".to_string()]);
        assert_eq!(again.events.len(), 1, "{:?}", again.dead_letters);
    }

    #[test]
    fn a_source_verdict_replaces_the_rules_of_the_kind() {
        let samples = SampleStore::new(60_000);
        let mut obs = host("pod/x", NOW);
        obs.kind = "k8s_pod".into();
        obs.verdict = Some(crate::sources::Verdict {
            health: Health::Unhealthy,
            reasons: vec![deleted()],
        });
        let (commit, _) = planned(
            &model_with(Vec::new()),
            &samples,
            &report("k8s/a", 1, vec![Change::Observed(obs.clone())]),
        );
        assert_eq!(commit.resources[0].health, Health::Unhealthy);
        let model = model_with(commit.resources);
        let (same, _) = planned(
            &model,
            &samples,
            &report("k8s/a", 2, vec![Change::Observed(obs.clone())]),
        );
        assert!(
            same.resources.is_empty(),
            "the same verdict changes nothing"
        );
        obs.verdict = None;
        let (healed, _) = planned(
            &model,
            &samples,
            &report("k8s/a", 3, vec![Change::Observed(obs)]),
        );
        assert_eq!(healed.resources[0].health, Health::Healthy);
        assert_eq!(healed.history[0].changed, vec!["health", "reasons"]);
    }

    #[test]
    fn an_unchanged_observation_plans_nothing_to_store() {
        let samples = SampleStore::new(60_000);
        let model = model_with(Vec::new());
        let r = report(
            "agent-a",
            1,
            vec![Change::Observed(host("host/x", NOW - 1_000))],
        );
        let (commit, _) = planned(&model, &samples, &r);
        let model = model_with(commit.resources);
        let health = HealthConfig::default();
        let ctx = Context {
            model: &model,
            samples: &samples,
            health: &health,
            rules: &RuleSet::default(),
            now_ms: NOW,
        };
        let mut plan = Plan::default();
        plan.add(
            &ctx,
            &report(
                "agent-a",
                2,
                vec![Change::Observed(host("host/x", NOW - 500))],
            ),
        )
        .unwrap();
        assert!(plan.is_empty());
        assert_eq!(plan.seen(), &[("host/x".to_string(), NOW - 500)]);
    }

    #[test]
    fn host_rules_read_the_window_from_the_sample_store() {
        let samples = SampleStore::new(600_000);
        let ledger = samples.open_ledger("agent-a", Cursor::default(), 0, 1);
        let key = SeriesKey::new(
            "host/x",
            infrawatch_common::resource::metric::CPU_UTILIZATION,
            "",
        );
        let (_, new) = ledger.begin(
            1,
            &[SeriesSamples {
                key,
                points: vec![(NOW - 1_000, 0.99)],
            }],
            0,
        );
        samples.index(&ledger, new);
        let model = model_with(Vec::new());
        let r = report(
            "agent-a",
            1,
            vec![Change::Observed(host("host/x", NOW - 1_000))],
        );
        let (commit, _) = planned(&model, &samples, &r);
        assert_eq!(commit.resources[0].health, Health::Unhealthy);
        assert_eq!(commit.resources[0].reasons[0].code, "cpu_critical");
    }

    /// A filesystem reported with 2 % free in the same report as its host:
    /// the filesystem is UNHEALTHY, its host DEGRADED naming it; once it has
    /// room again the host is HEALTHY again.
    #[test]
    fn a_host_rolls_up_the_health_of_its_parts() {
        let samples = SampleStore::new(600_000);
        let ledger = samples.open_ledger("agent-a", Cursor::default(), 0, 1);
        let fs_id = "host/x/filesystem/root";
        let base = "device=\"/dev/vda\",mountpoint=\"/\",type=\"ext4\"";
        let fill = |seq: u64, free: f64| {
            let (_, new) = ledger.begin(
                seq,
                &[
                    SeriesSamples {
                        key: SeriesKey::new(
                            fs_id,
                            "system.filesystem.usage",
                            "device=\"/dev/vda\",mountpoint=\"/\",state=\"free\",type=\"ext4\"",
                        ),
                        points: vec![(NOW - 1_000 * (3 - seq as i64), free)],
                    },
                    SeriesSamples {
                        key: SeriesKey::new(fs_id, "system.filesystem.limit", base),
                        points: vec![(NOW - 1_000 * (3 - seq as i64), 100.0)],
                    },
                ],
                0,
            );
            samples.index(&ledger, new);
        };
        let filesystem = Observation {
            verdict: None,
            id: fs_id.into(),
            kind: kind::FILESYSTEM.into(),
            labels: BTreeMap::new(),
            attributes: BTreeMap::from([
                ("filesystem.device".to_string(), "/dev/vda".to_string()),
                ("filesystem.mountpoint".to_string(), "/".to_string()),
                ("filesystem.type".to_string(), "ext4".to_string()),
            ]),
            relations: vec![Relation {
                relation_type: "part_of".into(),
                to_id: "host/x".into(),
            }],
            interval_ms: 1000,
            observed_at_ms: NOW - 1_000,
        };
        fill(1, 2.0);
        let r = report(
            "agent-a",
            1,
            vec![
                Change::Observed(host("host/x", NOW - 1_000)),
                Change::Observed(filesystem.clone()),
            ],
        );
        let (commit, applied) = planned(&model_with(Vec::new()), &samples, &r);
        let fs = commit.resources.iter().find(|r| r.id == fs_id).unwrap();
        assert_eq!(fs.health, Health::Unhealthy);
        assert_eq!(fs.reasons[0].code, "filesystem_almost_out_of_space");
        let host = &applied.records["host/x"];
        assert_eq!(host.health, Health::Degraded);
        // Created and judged again for its part: one version, one history
        // row, one event (a commit moves a resource by one version).
        assert_eq!(host.version, 1);
        let rows: Vec<&HistoryEntry> = commit
            .history
            .iter()
            .filter(|h| h.resource_id == "host/x")
            .collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].health, Health::Degraded);
        assert_eq!(rows[0].changed, vec!["created", "health", "reasons"]);
        let events: Vec<_> = commit
            .events
            .iter()
            .filter(|e| e.event.resource_id == "host/x")
            .collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.resource_version, 1);
        assert_eq!(events[0].event.health, Health::Degraded as i32);
        assert_eq!(host.reasons[0].code, "filesystem_almost_out_of_space");
        assert!(
            host.reasons[0]
                .message
                .starts_with("host/x/filesystem/root: / has 2.0%"),
            "{}",
            host.reasons[0].message
        );
        // Room again (the window now averages 2 % and 98 %): both recover,
        // the host without reporting itself.
        let model = model_with(applied.records.into_values().collect());
        fill(2, 98.0);
        let r = report("agent-a", 2, vec![Change::Observed(filesystem)]);
        let (_, applied) = planned(&model, &samples, &r);
        assert_eq!(applied.records[fs_id].health, Health::Healthy);
        assert_eq!(applied.records["host/x"].health, Health::Healthy);
        assert!(applied.records["host/x"].reasons.is_empty());
    }

    /// Two reports of one group change the same resource twice: the commit
    /// moves it by one version, whose event and history row say where it
    /// ended and where it started.
    #[test]
    fn two_changes_of_a_resource_in_one_plan_make_one_version() {
        let samples = SampleStore::new(60_000);
        let (commit, applied) = planned(
            &model_with(Vec::new()),
            &samples,
            &report(
                "agent-a",
                1,
                vec![Change::Observed(host("host/x", NOW - 1_000))],
            ),
        );
        let model = model_with(applied.records.into_values().collect());
        let judged = |health: Health, code: &str| {
            let mut o = host("host/x", NOW - 500);
            o.verdict = Some(crate::sources::Verdict {
                health,
                reasons: vec![Reason {
                    code: code.into(),
                    message: code.into(),
                    metric: String::new(),
                    observed: 0.0,
                    threshold: 0.0,
                }],
            });
            o
        };
        let health = HealthConfig::default();
        let ctx = Context {
            model: &model,
            samples: &samples,
            health: &health,
            rules: &RuleSet::default(),
            now_ms: NOW,
        };
        let mut plan = Plan::default();
        plan.add(
            &ctx,
            &report(
                "agent-a",
                2,
                vec![Change::Observed(judged(Health::Degraded, "a"))],
            ),
        )
        .unwrap();
        plan.add(
            &ctx,
            &report(
                "agent-a",
                3,
                vec![Change::Observed(judged(Health::Unhealthy, "b"))],
            ),
        )
        .unwrap();
        let (second, _) = plan.into_commit(Bounds {
            now_ms: NOW,
            max_future_skew_ms: 300_000,
        });
        let before = commit.resources[0].version;
        assert_eq!(second.resources.len(), 1);
        assert_eq!(second.resources[0].version, before + 1);
        assert_eq!(second.resources[0].health, Health::Unhealthy);
        assert_eq!(second.history.len(), 1);
        assert_eq!(
            second.history[0].previous_health,
            commit.resources[0].health
        );
        assert_eq!(second.history[0].health, Health::Unhealthy);
        assert_eq!(second.events.len(), 1);
        assert_eq!(second.events[0].event.resource_version, before + 1);
        assert_eq!(second.events[0].event.reasons[0].code, "b");
    }

    #[test]
    fn another_sources_resource_is_forbidden_until_it_is_unknown() {
        let samples = SampleStore::new(60_000);
        let (commit, _) = planned(
            &model_with(Vec::new()),
            &samples,
            &report(
                "agent-a",
                1,
                vec![Change::Observed(host("host/x", NOW - 1_000))],
            ),
        );
        let mut model = model_with(commit.resources.clone());
        let intruder = report(
            "agent-b",
            1,
            vec![Change::Observed(host("host/x", NOW - 1_000))],
        );
        assert!(matches!(
            check_owner(&model, &intruder),
            Err(StateError::Forbidden(_))
        ));
        let mut unknown = commit.resources[0].clone();
        unknown.health = Health::Unknown;
        model = model_with(vec![unknown]);
        assert!(check_owner(&model, &intruder).is_ok());
    }

    #[test]
    fn staleness_marks_unknown_unless_data_arrived_since() {
        let samples = SampleStore::new(60_000);
        let (commit, _) = planned(
            &model_with(Vec::new()),
            &samples,
            &report(
                "agent-a",
                1,
                vec![Change::Observed(host("host/x", NOW - 1_000))],
            ),
        );
        let model = model_with(commit.resources);
        let stale = Report {
            source: STALENESS_SOURCE.into(),
            changes: vec![Change::Stale {
                id: "host/x".into(),
                last_seen_ms: 0,
                reason: Reason {
                    code: "stale".into(),
                    message: "no data".into(),
                    metric: String::new(),
                    observed: 10.0,
                    threshold: 3.0,
                },
            }],
            position: None,
        };
        let (commit, _) = planned(&model, &samples, &stale);
        assert_eq!(commit.resources[0].health, Health::Unknown);
        assert_eq!(commit.resources[0].source, "agent-a", "the owner stays");
        assert_eq!(commit.history[0].source, STALENESS_SOURCE);
        model.resources["host/x"].seen(5, 5);
        let (commit, _) = planned(&model, &samples, &stale);
        assert!(commit.resources.is_empty(), "seen after the check looked");
    }
}
