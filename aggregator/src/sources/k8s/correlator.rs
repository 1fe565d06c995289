//! One cluster's correlator: applies what the watches deliver to the cache,
//! finds every object whose observation may have changed (the object and its
//! dependents), and, a short batch later, evaluates their rules and submits one
//! report to the planner. Conditions that must hold for a while (the alerts'
//! `for:`) are re-evaluated when they mature. Nothing is reported before every
//! kind has been listed once, so a half-read cluster never shows a Service
//! without its pods.
//!
//! A new leader starts with an empty cache and lists everything: what it
//! reports again unchanged changes nothing (the planner compares), resources
//! of the cluster that no longer exist are removed, and reasons already in the
//! model keep counting as held, so taking over repeats and loses nothing.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use infrawatch_common::time::now_unix_ms;
use infrawatch_common::trend::slope;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cache::{Cache, Update};
use super::config::RuleConfig;
use super::objects::{Key, Kind, Object};
use super::objects::{Pvc, Warning};
use super::rules::{self, Finding, VolumeUsage};
use super::{ids, observe};
use crate::model::{Health, Reason};
use crate::planner::PlannerHandle;
use crate::samples::SeriesKey;
use crate::samples::series::ROLLUP_BUCKET_MS;
use crate::sources::{Change, Report, Verdict};
use crate::state::State;
use crate::store::{RolledUpResources, Store, WarningRow};
use crate::telemetry;
use infrawatch_common::resource::metric;

/// How long a failed report waits before it is sent again.
const RETRY: Duration = Duration::from_secs(1);

/// Objects evaluated into one report, at most: a new leader's first report
/// (the whole cluster) goes in parts, so no transaction holds the database
/// (and the leader lease with it) for long, and the memory a report needs
/// while it commits stays small.
const REPORT_MAX: usize = 2_000;

/// A volume's use read from the stored rollups counts when sampled at most
/// this long ago (ms).
const STORED_VOLUME_FRESH_MS: i64 = 5 * 60_000;

/// The trend of a volume's use read from the stored rollups is taken over
/// this many ms of one-minute buckets (the mixin's `predict_linear` looks 6 h
/// back).
const STORED_VOLUME_TREND_MS: i64 = 6 * 3_600_000;

/// The cluster as a whole (requests against allocatable over every pod and
/// node) is evaluated at most this often: it changes with every pod, and its
/// rules are about minutes, not milliseconds.
const CLUSTER_EVERY: Duration = Duration::from_secs(1);

/// A cluster's correlator.
pub struct Correlator {
    cluster: String,
    source: String,
    rules: RuleConfig,
    batch: Duration,
    cache: Cache,
    state: Arc<State>,
    planner: PlannerHandle,
    /// Objects to evaluate again at the next report.
    dirty: BTreeSet<Key>,
    /// When the cluster summary is due to be evaluated again.
    cluster_due: Option<Instant>,
    /// When it was last evaluated.
    cluster_evaluated: Option<Instant>,
    /// When bound claims are next evaluated against their volumes' use (they
    /// fill without any change in the Kubernetes API).
    volumes_due: Option<Instant>,
    /// How often that is.
    volumes_every: Duration,
    /// The use of volumes whose agent streams to another replica, read from
    /// the stored rollups before bound claims are judged (by volume resource).
    stored_volumes: HashMap<String, VolumeUsage>,
    /// When the oldest unreported change arrived.
    dirty_since: Option<Instant>,
    /// First sight of conditions the API gives no start time for.
    first_seen: HashMap<Key, Vec<(&'static str, i64)>>,
    /// Pending conditions mature at these times (Unix ms).
    wakes: BTreeSet<(i64, Key)>,
    /// Ready transitions per node (Unix ms), within the flapping window.
    ready_changes: HashMap<String, VecDeque<i64>>,
    /// Restart counts over the restart window of pods that restarted within
    /// it: (Unix ms, total).
    restarts: HashMap<Key, VecDeque<(i64, i32)>>,
    /// The first report after the initial sync also removes what went away.
    swept: bool,
    /// Where Warning events are kept for queries (none in unit tests).
    store: Option<Store>,
    /// Warning events to store, by namespace and name (`None`: delete).
    warnings: HashMap<(String, String), Option<WarningRow>>,
    /// The stored Warning events are replaced whole at the next write (a new
    /// leader's first complete list).
    warnings_replace: bool,
}

impl Correlator {
    /// A correlator for `cluster`.
    pub fn new(
        cluster: &str,
        rules: RuleConfig,
        batch: Duration,
        state: Arc<State>,
        planner: PlannerHandle,
    ) -> Self {
        Self {
            cluster: cluster.to_string(),
            source: ids::source(cluster),
            rules,
            batch,
            cache: Cache::default(),
            state,
            planner,
            dirty: BTreeSet::new(),
            cluster_due: None,
            cluster_evaluated: None,
            volumes_due: None,
            volumes_every: Duration::from_secs(30),
            stored_volumes: HashMap::new(),
            dirty_since: None,
            first_seen: HashMap::new(),
            wakes: BTreeSet::new(),
            ready_changes: HashMap::new(),
            restarts: HashMap::new(),
            swept: false,
            store: None,
            warnings: HashMap::new(),
            warnings_replace: true,
        }
    }

    /// Keeps the cluster's Warning events in `store` for queries.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Judges bound claims against their volumes' use every `every`.
    pub fn volumes_every(mut self, every: Duration) -> Self {
        self.volumes_every = every;
        self
    }

    /// Runs until `stop` or until the watches end. Updates keep being taken
    /// while a report commits; one report is in flight at a time, and the
    /// next goes as soon as it returns if its batch is due, so what changes
    /// during a commit waits for that commit at most, not for it and a batch.
    pub async fn run(mut self, mut updates: mpsc::Receiver<Update>, stop: CancellationToken) {
        let mut in_flight: Option<InFlight> = None;
        let mut retry_at: Option<Instant> = None;
        loop {
            let deadline = match (&in_flight, retry_at) {
                (Some(_), _) => None,
                (None, retry) => self.next_deadline().map(|d| retry.map_or(d, |r| d.max(r))),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                update = updates.recv() => {
                    let Some(update) = update else { return };
                    self.take(update);
                    // Take what else is queued before looking at the clock.
                    while let Ok(update) = updates.try_recv() {
                        self.take(update);
                    }
                }
                answer = answered(&mut in_flight) => {
                    let Some(sent) = in_flight.take() else { continue };
                    retry_at = None;
                    if let Err(e) = self.settle(sent.outgoing, answer) {
                        tracing::warn!(cluster = %self.cluster, error = %e, "Kubernetes report not committed; sending it again.");
                        retry_at = Some(Instant::now() + RETRY);
                    }
                }
                _ = sleep_until(deadline) => {
                    self.read_stored_volumes().await;
                    let mut outgoing = self.prepare();
                    let answer = self.send(&mut outgoing);
                    in_flight = Some(InFlight { outgoing, answer });
                }
            }
        }
    }

    /// When the next report is due: a batch after the oldest unreported
    /// change, or when the next pending condition matures.
    fn next_deadline(&self) -> Option<Instant> {
        if !self.cache.synced() {
            return None;
        }
        let batch = self.dirty_since.map(|t| t + self.batch);
        let wake = self.wakes.first().map(|(at, _)| {
            let wait = (*at - now_unix_ms()).max(0);
            Instant::now() + Duration::from_millis(u64::try_from(wait).unwrap_or(0))
        });
        [batch, wake, self.cluster_due, self.volumes_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Applies one update to the cache and marks what it touches.
    pub fn take(&mut self, update: Update) {
        let now = now_unix_ms();
        for (key, old) in self.cache.apply(update) {
            if key.kind == Kind::Event {
                let row = match self.cache.get(&key) {
                    Some(Object::Warning(w)) => self.warning_row(w),
                    _ => None,
                };
                self.warnings
                    .insert((key.namespace.clone(), key.name.clone()), row);
            }
            self.note_history(&key, old.as_ref(), now);
            if matches!(key.kind, Kind::Node | Kind::Pod) && self.cluster_due.is_none() {
                let earliest = self.cluster_evaluated.map(|t| t + CLUSTER_EVERY);
                self.cluster_due =
                    Some(earliest.map_or_else(Instant::now, |t| t.max(Instant::now())));
            }
            self.cache.touched(&key, old.as_ref(), &mut self.dirty);
        }
        if !self.dirty.is_empty() || !self.warnings.is_empty() {
            self.dirty_since.get_or_insert_with(Instant::now);
        }
        metrics::gauge!(telemetry::K8S_OBJECTS, "cluster" => self.cluster.clone())
            .set(self.cache.len() as f64);
    }

    fn warning_row(&self, w: &Warning) -> Option<WarningRow> {
        Some(WarningRow {
            cluster: self.cluster.clone(),
            namespace: w.meta.namespace.clone(),
            name: w.meta.name.clone(),
            resource_id: ids::of(&self.cluster, w.about.as_ref()?),
            reason: w.reason.clone(),
            note: w.note.clone(),
            count: w.count,
            last_seen_ms: w.last_ms,
        })
    }

    /// The Warning events to store: those that changed, or all of them,
    /// replacing what is stored, after a new leader's first list. `None`
    /// when there is nothing to write or nowhere to keep them.
    fn take_warnings(&mut self) -> Option<WarningWrite> {
        self.store.as_ref()?;
        if self.warnings.is_empty() && !self.warnings_replace {
            return None;
        }
        let taken = std::mem::take(&mut self.warnings);
        let replace = std::mem::take(&mut self.warnings_replace);
        let (upserts, deletes) = if replace {
            let all = self
                .cache
                .all(Kind::Event)
                .filter_map(|o| match o {
                    Object::Warning(w) => self.warning_row(w),
                    _ => None,
                })
                .collect();
            (all, Vec::new())
        } else {
            let mut upserts = Vec::new();
            let mut deletes = Vec::new();
            for ((ns, name), row) in &taken {
                match row {
                    Some(r) => upserts.push(r.clone()),
                    None => deletes.push((ns.clone(), name.clone())),
                }
            }
            (upserts, deletes)
        };
        Some(WarningWrite {
            upserts,
            deletes,
            replace,
            taken,
        })
    }

    /// Keeps the node readiness transitions and pod restart counts the rules
    /// count over a window.
    fn note_history(&mut self, key: &Key, old: Option<&Object>, now: i64) {
        match (old, self.cache.get(key)) {
            (Some(Object::Node(before)), Some(Object::Node(after)))
                if before.ready.status != after.ready.status =>
            {
                self.ready_changes
                    .entry(key.name.clone())
                    .or_default()
                    .push_back(now);
            }
            (before, Some(Object::Pod(p))) => {
                // Only pods that restart get a history: the count before
                // the first restart seen is where it starts.
                let total = p.restarts();
                let before = match before {
                    Some(Object::Pod(b)) => b.restarts(),
                    _ => total,
                };
                if let Some(history) = self.restarts.get_mut(key) {
                    if history.back().is_none_or(|(_, t)| *t != total) {
                        history.push_back((now, total));
                    }
                } else if before != total {
                    self.restarts
                        .insert(key.clone(), VecDeque::from([(now, before), (now, total)]));
                }
            }
            (_, None) if key.kind == Kind::Node => {
                self.ready_changes.remove(&key.name);
            }
            (_, None) if key.kind == Kind::Pod => {
                self.restarts.remove(key);
            }
            _ => {}
        }
    }

    /// Evaluates what is dirty or due, submits it and waits for its commit.
    pub async fn report(&mut self) -> Result<(), crate::planner::StateError> {
        self.read_stored_volumes().await;
        let mut outgoing = self.prepare();
        let answer = self.send(&mut outgoing).await;
        self.settle(outgoing, answer)
    }

    /// When bound claims are due to be judged: reads the use of the volumes
    /// this replica has no samples of (their agents stream to another
    /// replica) from the stored rollups. A failed read keeps what was read
    /// before.
    async fn read_stored_volumes(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        if self.volumes_due.is_some_and(|t| t > Instant::now()) {
            return;
        }
        let volumes: Vec<String> = self
            .cache
            .all(Kind::Pvc)
            .filter_map(|o| match o {
                Object::Pvc(c) if c.phase == "Bound" => volume_resource(&self.cache, c),
                _ => None,
            })
            .filter(|id| self.state.samples.latest_of(id).is_empty())
            .collect();
        let now = now_unix_ms();
        let window_start = now - STORED_VOLUME_TREND_MS;
        let trend_below = self.rules.volume_free_warning;
        match stored_volume_usage(store, &volumes, window_start, trend_below, now).await {
            Ok(read) => self.stored_volumes = read,
            Err(e) => tracing::warn!(
                cluster = %self.cluster,
                error = &e as &dyn std::error::Error,
                "Cannot read volume use from the stored rollups; judging claims with what was read before."
            ),
        }
    }

    /// What is dirty or due, evaluated: at most [`REPORT_MAX`] objects (the
    /// rest stay dirty and are due at once), the cluster summary when due,
    /// and the Warning events to store.
    fn prepare(&mut self) -> Outgoing {
        let now = now_unix_ms();
        self.prune_history(now);
        if self.volumes_due.is_none_or(|t| t <= Instant::now()) {
            let bound: Vec<Key> = self
                .cache
                .all(Kind::Pvc)
                .filter(|o| matches!(o, Object::Pvc(c) if c.phase == "Bound"))
                .map(Object::key)
                .collect();
            self.dirty.extend(bound);
            self.volumes_due = Some(Instant::now() + self.volumes_every);
        }
        while let Some((at, _)) = self.wakes.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.wakes.pop_first() {
                self.dirty.insert(key);
            }
        }
        let mut keys = BTreeSet::new();
        while keys.len() < REPORT_MAX {
            let Some(key) = self.dirty.pop_first() else {
                break;
            };
            keys.insert(key);
        }
        let mut changes = Vec::with_capacity(keys.len() + 1);
        if !self.swept {
            changes.extend(self.removed_while_away());
        }
        for key in &keys {
            // The cluster itself is evaluated below.
            if !key.kind.is_resource() || *key == cluster_key() {
                continue;
            }
            match self.cache.get(key).map(|object| self.findings(object, now)) {
                Some(findings) => {
                    let verdict = self.resolve(key, &ids::of(&self.cluster, key), findings, now);
                    if let Some(object) = self.cache.get(key) {
                        changes.push(Change::Observed(observe::observation(
                            &self.cache,
                            &self.cluster,
                            object,
                            verdict,
                            now,
                        )));
                    }
                }
                None => {
                    self.first_seen.remove(key);
                    changes.push(Change::Removed {
                        id: ids::of(&self.cluster, key),
                        reason: deleted(&self.cluster),
                    });
                }
            }
        }
        let cluster_due = !self.swept || self.cluster_due.is_some_and(|t| t <= Instant::now());
        if cluster_due {
            let (findings, figures) = rules::cluster(&self.cache);
            let verdict = self.resolve(&cluster_key(), &ids::cluster(&self.cluster), findings, now);
            changes.push(Change::Observed(observe::cluster_observation(
                &self.cluster,
                &figures,
                verdict,
                now,
            )));
        }
        // What is left of the batch is due at once; otherwise the clock
        // starts again with the next change.
        let since = if self.dirty.is_empty() {
            self.dirty_since.take()
        } else {
            Some(*self.dirty_since.get_or_insert_with(Instant::now))
        };
        Outgoing {
            reported: !changes.is_empty(),
            report: (!changes.is_empty()).then(|| Report {
                source: self.source.clone(),
                changes,
                position: None,
            }),
            warnings: self.take_warnings(),
            keys,
            since,
            cluster_due,
        }
    }

    /// Stores `outgoing`'s Warning events, then submits its report (both
    /// move into the future); resolves when both are done.
    fn send(&self, outgoing: &mut Outgoing) -> BoxFuture<Answer> {
        let store = self.store.clone();
        let planner = self.planner.clone();
        let cluster = self.cluster.clone();
        let warnings = outgoing.warnings.as_mut().map(|w| {
            (
                std::mem::take(&mut w.upserts),
                std::mem::take(&mut w.deletes),
                w.replace,
            )
        });
        let report = outgoing.report.take();
        Box::pin(async move {
            let stored = match (store, warnings) {
                (Some(store), Some((upserts, deletes, replace))) => Some(
                    store
                        .write_warnings(&cluster, &upserts, &deletes, replace)
                        .await,
                ),
                _ => None,
            };
            let committed = match report {
                Some(report) => Some(planner.submit(report).await),
                None => None,
            };
            Answer { stored, committed }
        })
    }

    /// Books what came of a report: on success the batch is done; on failure
    /// its objects are dirty again and its Warning events kept for the next.
    fn settle(
        &mut self,
        outgoing: Outgoing,
        answer: Answer,
    ) -> Result<(), crate::planner::StateError> {
        if let (Some(Err(e)), Some(w)) = (answer.stored, outgoing.warnings) {
            tracing::warn!(
                cluster = %self.cluster,
                error = &e as &dyn std::error::Error,
                "Kubernetes Warning events not stored; trying again with the next report."
            );
            self.warnings_replace |= w.replace;
            for (key, row) in w.taken {
                self.warnings.entry(key).or_insert(row);
            }
        }
        match answer.committed {
            None | Some(Ok(_)) => {
                if outgoing.reported {
                    self.swept = true;
                }
                if outgoing.cluster_due && outgoing.reported {
                    self.cluster_due = None;
                    self.cluster_evaluated = Some(Instant::now());
                }
                if let Some(since) = outgoing.since {
                    metrics::histogram!(telemetry::K8S_CHANGE_TO_COMMIT, "cluster" => self.cluster.clone())
                        .record(since.elapsed().as_secs_f64());
                }
                Ok(())
            }
            Some(Err(e)) => {
                self.dirty.extend(outgoing.keys);
                self.dirty_since = outgoing
                    .since
                    .or(self.dirty_since)
                    .or_else(|| Some(Instant::now()));
                Err(e)
            }
        }
    }

    /// Resources of this cluster in the model that the cache no longer has
    /// (deleted while no replica watched).
    fn removed_while_away(&self) -> Vec<Change> {
        let known: std::collections::HashSet<String> = self
            .cache
            .keys()
            .filter(|k| k.kind.is_resource())
            .map(|k| ids::of(&self.cluster, k))
            .chain(std::iter::once(ids::cluster(&self.cluster)))
            .collect();
        let model = self.state.read();
        model
            .resources
            .values()
            .filter(|t| t.record.source == self.source && !known.contains(&t.record.id))
            .map(|t| Change::Removed {
                id: t.record.id.clone(),
                reason: deleted(&self.cluster),
            })
            .collect()
    }

    /// What the rules find for `object` now.
    fn findings(&self, object: &Object, now: i64) -> Vec<Finding> {
        let ready_changes = &self.ready_changes;
        let restarts = &self.restarts;
        let flaps = |node: &str| {
            ready_changes
                .get(node)
                .map_or(0, |v| u32::try_from(v.len()).unwrap_or(u32::MAX))
        };
        let pod_restarts = |k: &Key| {
            restarts
                .get(k)
                .and_then(|h| Some(h.back()?.1 - h.front()?.1))
                .unwrap_or(0)
        };
        let volume_usage =
            |c: &Pvc| volume_usage(&self.cache, &self.state, &self.stored_volumes, c, now);
        let ctx = rules::Context {
            cache: &self.cache,
            cluster: &self.cluster,
            rules: &self.rules,
            now_ms: now,
            node_flaps: &flaps,
            pod_restarts: &pod_restarts,
            volume_usage: &volume_usage,
        };
        rules::evaluate(&ctx, object)
    }

    /// The verdict from `findings`: those that held long enough count; the
    /// others are due again when they mature. A reason the stored resource
    /// already has counts as held (it matured before, maybe on another leader).
    fn resolve(&mut self, key: &Key, id: &str, findings: Vec<Finding>, now: i64) -> Verdict {
        let stored: Vec<String> = {
            let model = self.state.read();
            model
                .resources
                .get(id)
                .map(|t| t.record.reasons.iter().map(|r| r.code.clone()).collect())
                .unwrap_or_default()
        };
        let mut health = Health::Healthy;
        let mut reasons: Vec<Reason> = Vec::new();
        let mut pending = Vec::new();
        let present: Vec<&'static str> = findings.iter().map(|f| f.code).collect();
        for f in findings {
            let hold = i64::try_from(f.hold_ms).unwrap_or(i64::MAX);
            let since = match f.since_ms {
                Some(s) => s,
                None if hold == 0 => now,
                None => {
                    let seen = self.first_seen.entry(key.clone()).or_default();
                    match seen.iter().find(|(c, _)| *c == f.code) {
                        Some((_, at)) => *at,
                        None => {
                            seen.push((f.code, now));
                            now
                        }
                    }
                }
            };
            let held = hold == 0
                || stored.iter().any(|c| c == f.code)
                || now.saturating_sub(since) >= hold;
            if !held {
                pending.push(since.saturating_add(hold));
                continue;
            }
            if reasons.iter().any(|r| r.code == f.code) {
                continue;
            }
            health = crate::health::worse(health, f.health);
            reasons.push(Reason {
                code: f.code.to_string(),
                message: f.message,
                metric: String::new(),
                observed: f.observed,
                threshold: f.threshold,
            });
        }
        // Forget the first sight of conditions that are gone.
        if let Some(seen) = self.first_seen.get_mut(key) {
            seen.retain(|(code, _)| present.contains(code));
            if seen.is_empty() {
                self.first_seen.remove(key);
            }
        }
        for at in pending {
            self.wakes.insert((at, key.clone()));
        }
        reasons.sort_by(|a, b| a.code.cmp(&b.code));
        Verdict { health, reasons }
    }

    fn prune_history(&mut self, now: i64) {
        let flap_window = i64::try_from(self.rules.node_flapping_window_ms).unwrap_or(i64::MAX);
        for v in self.ready_changes.values_mut() {
            while v.front().is_some_and(|t| now - t > flap_window) {
                v.pop_front();
            }
        }
        self.ready_changes.retain(|_, v| !v.is_empty());
        let restart_window = i64::try_from(self.rules.restart_window_ms).unwrap_or(i64::MAX);
        // The newest count from before the window stays as the baseline the
        // window's restarts are counted from.
        for v in self.restarts.values_mut() {
            while v.get(1).is_some_and(|(t, _)| now - t > restart_window) {
                v.pop_front();
            }
        }
        // One entry left: no restart within the window.
        self.restarts.retain(|_, v| v.len() > 1);
    }
}

/// The key the cluster itself goes by in the correlator's bookkeeping (first
/// sight of its conditions); no object has an empty name.
fn cluster_key() -> Key {
    Key::new(Kind::Namespace, "", "")
}

fn deleted(cluster: &str) -> Reason {
    Reason {
        code: "deleted".into(),
        message: format!("deleted from the Kubernetes API of cluster {cluster}"),
        metric: String::new(),
        observed: 0.0,
        threshold: 0.0,
    }
}

/// Where the agent of the node that mounts claim `c` reports its volume's
/// use from the kubelet: `host/<machine>/volume/<namespace>/<claim>`.
fn volume_resource(cache: &Cache, c: &Pvc) -> Option<String> {
    let machine = cache
        .in_namespace(&c.meta.namespace, Kind::Pod)
        .find_map(|o| match o {
            Object::Pod(p) if p.is_active() && p.claims.contains(&c.meta.name) => {
                observe::machine_of(cache, &p.node)
            }
            _ => None,
        })?;
    Some(format!(
        "host/{machine}/volume/{}/{}",
        c.meta.namespace, c.meta.name
    ))
}

/// The use of claim `c`'s volume ([`volume_resource`]): the newest available
/// bytes and capacity, and the trend of the available bytes (a least-squares
/// slope) over the samples this replica keeps in memory; where it has none
/// (the agent streams to another replica), what `stored` read from the
/// rollups.
fn volume_usage(
    cache: &Cache,
    state: &State,
    stored: &HashMap<String, VolumeUsage>,
    c: &Pvc,
    now: i64,
) -> Option<VolumeUsage> {
    let id = volume_resource(cache, c)?;
    let latest = state.samples.latest_of(&id);
    if latest.is_empty() {
        return stored.get(&id).cloned();
    }
    let value = |metric: &str| {
        latest
            .iter()
            .filter(|(k, _, _)| k.metric.as_ref() == metric)
            .max_by_key(|(_, ts, _)| *ts)
            .map(|(_, _, v)| *v)
    };
    let available = value(metric::K8S_VOLUME_AVAILABLE)?;
    let capacity = value(metric::K8S_VOLUME_CAPACITY)?;
    let key = SeriesKey::new(&id, metric::K8S_VOLUME_AVAILABLE, "");
    let points: Vec<(f64, f64)> = state
        .samples
        .range(&key, state.samples.retention_start(now), now, 60_000)
        .into_iter()
        .filter_map(|p| Some((p.timestamp_ms as f64, p.stats.mean()?)))
        .collect();
    Some(VolumeUsage {
        available,
        capacity,
        trend_per_ms: slope(&points),
    })
}

/// The use of `volumes` (volume resource ids) from the stored rollups: the
/// newest value of the last [`STORED_VOLUME_FRESH_MS`], and, for a volume
/// whose free share is below `trend_below`, the trend over the minutes since
/// `window_start`.
async fn stored_volume_usage(
    store: &Store,
    volumes: &[String],
    window_start: i64,
    trend_below: f64,
    now: i64,
) -> Result<HashMap<String, VolumeUsage>, crate::store::StoreError> {
    let latest = store
        .latest_rollups(
            RolledUpResources::Ids(volumes),
            &[metric::K8S_VOLUME_AVAILABLE, metric::K8S_VOLUME_CAPACITY],
            // A minute that started earlier may hold a fresh last sample.
            now - STORED_VOLUME_FRESH_MS - ROLLUP_BUCKET_MS,
        )
        .await?;
    let mut newest: HashMap<&str, (Option<f64>, Option<f64>)> = HashMap::new();
    for r in &latest {
        if now - r.sampled_at_ms > STORED_VOLUME_FRESH_MS {
            continue;
        }
        let entry = newest.entry(&*r.key.resource_id).or_default();
        match r.key.metric.as_ref() {
            metric::K8S_VOLUME_AVAILABLE => entry.0 = Some(r.value),
            metric::K8S_VOLUME_CAPACITY => entry.1 = Some(r.value),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    for (id, values) in newest {
        let (Some(available), Some(capacity)) = values else {
            continue;
        };
        // Only a volume below the warning level has a trend that matters
        // (one query each).
        let trend_per_ms = if capacity > 0.0 && available / capacity < trend_below {
            let key = SeriesKey::new(id, metric::K8S_VOLUME_AVAILABLE, "");
            let points: Vec<(f64, f64)> = store
                .rollups(&key, window_start, now)
                .await?
                .into_iter()
                .filter_map(|r| Some((r.bucket_start_ms as f64, r.stats.mean()?)))
                .collect();
            slope(&points)
        } else {
            None
        };
        out.insert(
            id.to_string(),
            VolumeUsage {
                available,
                capacity,
                trend_per_ms,
            },
        );
    }
    Ok(out)
}

/// A report on its way to the planner.
struct InFlight {
    outgoing: Outgoing,
    answer: BoxFuture<Answer>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// One report and what it stands for.
struct Outgoing {
    /// The changes, if there are any (until sent).
    report: Option<Report>,
    /// Whether there were changes.
    reported: bool,
    /// Warning events to store first.
    warnings: Option<WarningWrite>,
    /// The objects it evaluated (dirty again if it fails).
    keys: BTreeSet<Key>,
    /// When its oldest change arrived.
    since: Option<Instant>,
    /// Whether it carries the cluster summary.
    cluster_due: bool,
}

/// Warning events to write.
struct WarningWrite {
    upserts: Vec<WarningRow>,
    deletes: Vec<(String, String)>,
    replace: bool,
    /// The changes they came from, kept again if the write fails.
    taken: HashMap<(String, String), Option<WarningRow>>,
}

/// What came back: the Warning events' write and the report's commit
/// (`None` where there was none).
struct Answer {
    stored: Option<Result<(), crate::store::StoreError>>,
    committed: Option<Result<crate::planner::Outcome, crate::planner::StateError>>,
}

/// Resolves with the answer of the report in flight; never without one.
async fn answered(in_flight: &mut Option<InFlight>) -> Answer {
    match in_flight {
        Some(sent) => (&mut sent.answer).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::planner::{Outcome, Submission};
    use crate::sources::k8s::objects::{
        Condition, ContainerState, Meta, Node, Pod, Service, Status, Workload,
    };

    fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> Meta {
        Meta {
            name: name.into(),
            namespace: ns.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            generation: 1,
            ..Meta::default()
        }
    }

    fn node(name: &str, ready: Status) -> Object {
        Object::Node(Box::new(Node {
            meta: meta("", name, &[]),
            ready: Condition {
                status: ready,
                since_ms: Some(0),
                ..Condition::default()
            },
            ..Node::default()
        }))
    }

    fn pod(name: &str, node: &str, waiting: Option<&str>) -> Object {
        Object::Pod(Box::new(Pod {
            meta: Meta {
                owner: Some(("ReplicaSet".into(), "web-1".into())),
                ..meta("shop", name, &[("app", "web")])
            },
            node: node.into(),
            phase: "Running".into(),
            ready: Condition {
                status: if waiting.is_some() {
                    Status::False
                } else {
                    Status::True
                },
                since_ms: Some(0),
                ..Condition::default()
            },
            containers: vec![ContainerState {
                name: "web".into(),
                waiting: waiting.map(|w| (w.to_string(), String::new())),
                ..ContainerState::default()
            }],
            ..Pod::default()
        }))
    }

    fn service() -> Object {
        Object::Service(Box::new(Service {
            meta: meta("shop", "web", &[]),
            selector: BTreeMap::from([("app".to_string(), "web".to_string())]),
            service_type: "ClusterIP".into(),
            ..Service::default()
        }))
    }

    /// A correlator whose planner accepts everything and keeps the reports.
    fn correlator(rules: RuleConfig) -> (Correlator, mpsc::Receiver<Submission>) {
        let (tx, rx) = mpsc::channel(16);
        let c = Correlator::new(
            "test",
            rules,
            Duration::from_millis(1),
            Arc::new(State::new(60_000)),
            PlannerHandle::new(tx),
        );
        (c, rx)
    }

    fn synced(c: &mut Correlator, objects: Vec<Object>) {
        for kind in Kind::ALL {
            c.take(Update::ListStart(kind));
            for o in objects.iter().filter(|o| o.kind() == kind) {
                c.take(Update::Listed(o.clone()));
            }
            c.take(Update::ListDone(kind));
        }
    }

    /// Runs one report of `c`, answering its submission; the report.
    async fn submitted(c: &mut Correlator, rx: &mut mpsc::Receiver<Submission>) -> Report {
        let answer = async {
            let Submission { report, reply } = rx.recv().await.unwrap();
            let _ = reply.send(Ok(Outcome::default()));
            report
        };
        let (sent, report) = tokio::join!(c.report(), answer);
        sent.unwrap();
        report
    }

    async fn report(
        c: &mut Correlator,
        rx: &mut mpsc::Receiver<Submission>,
    ) -> BTreeMap<String, crate::sources::Observation> {
        submitted(c, rx)
            .await
            .changes
            .into_iter()
            .filter_map(|ch| match ch {
                Change::Observed(o) => Some((o.id.clone(), o)),
                _ => None,
            })
            .collect()
    }

    fn codes(o: &crate::sources::Observation) -> Vec<String> {
        o.verdict
            .as_ref()
            .unwrap()
            .reasons
            .iter()
            .map(|r| r.code.clone())
            .collect()
    }

    fn instant() -> RuleConfig {
        RuleConfig {
            node_not_ready_for_ms: 0,
            pod_not_ready_for_ms: 0,
            container_waiting_for_ms: 0,
            workload_mismatch_for_ms: 0,
            ..RuleConfig::default()
        }
    }

    #[tokio::test]
    async fn a_node_going_not_ready_reaches_its_pods_and_their_service() {
        let (mut c, rx) = correlator(instant());
        let mut rx = rx;
        synced(
            &mut c,
            vec![
                node("n1", Status::True),
                node("n2", Status::True),
                pod("web-a", "n1", None),
                pod("web-b", "n2", None),
                service(),
            ],
        );
        let first = report(&mut c, &mut rx).await;
        assert!(
            first
                .values()
                .all(|o| o.verdict.as_ref().unwrap().health == Health::Healthy),
            "{first:#?}"
        );
        assert!(
            first["k8s/test/service/shop/web"]
                .relations
                .iter()
                .any(|r| r.relation_type == "selects" && r.to_id == "k8s/test/pod/shop/web-a")
        );
        assert!(
            first["k8s/test/pod/shop/web-a"]
                .relations
                .iter()
                .any(|r| r.relation_type == "runs_on" && r.to_id == "k8s/test/node/n1")
        );

        c.take(Update::Apply(node("n1", Status::False)));
        let second = report(&mut c, &mut rx).await;
        assert_eq!(codes(&second["k8s/test/node/n1"]), vec!["node_not_ready"]);
        assert_eq!(
            second["k8s/test/node/n1"].verdict.as_ref().unwrap().health,
            Health::Unhealthy
        );
        let pod = &second["k8s/test/pod/shop/web-a"];
        assert_eq!(codes(pod), vec!["node_not_ready"]);
        assert!(
            pod.verdict.as_ref().unwrap().reasons[0]
                .message
                .contains("k8s/test/node/n1")
        );
        let svc = &second["k8s/test/service/shop/web"];
        assert_eq!(svc.verdict.as_ref().unwrap().health, Health::Degraded);
        assert!(codes(svc).contains(&"node_not_ready".to_string()));
        assert!(
            !second.contains_key("k8s/test/pod/shop/web-b"),
            "untouched pods are not evaluated again"
        );
    }

    #[tokio::test]
    async fn a_crash_looping_pod_is_unhealthy_only_after_the_hold() {
        let rules = RuleConfig {
            container_waiting_for_ms: 3_600_000,
            ..instant()
        };
        let (mut c, mut rx) = correlator(rules);
        synced(
            &mut c,
            vec![
                node("n1", Status::True),
                pod("web-a", "n1", Some("CrashLoopBackOff")),
                service(),
            ],
        );
        let first = report(&mut c, &mut rx).await;
        let pod = &first["k8s/test/pod/shop/web-a"];
        assert!(
            !codes(pod).contains(&"crash_loop_back_off".to_string()),
            "pending for an hour: {:?}",
            codes(pod)
        );
        assert_eq!(c.wakes.len(), 1, "it is due again when the hold ends");
        assert_eq!(
            codes(&first["k8s/test/service/shop/web"]),
            vec!["no_ready_endpoints"]
        );
    }

    #[tokio::test]
    async fn a_volume_whose_agent_streams_elsewhere_is_judged_from_the_stored_rollups() {
        use crate::samples::Stats;
        use crate::store::{FlushSource, RollupDelta};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::config::StorageConfig {
            url: format!("sqlite://{}", dir.path().join("state.db").display()),
            ..crate::config::StorageConfig::default()
        })
        .unwrap();
        store.migrate().await.unwrap();
        let (c, mut rx) = correlator(instant());
        let mut c = c.with_store(store.clone());
        let Object::Node(mut n1) = node("n1", Status::True) else {
            unreachable!()
        };
        n1.machine_id = "m1".into();
        let Object::Pod(mut db) = pod("db-0", "n1", None) else {
            unreachable!()
        };
        db.claims = vec!["data".into()];
        let claim = Object::Pvc(Box::new(Pvc {
            meta: meta("shop", "data", &[]),
            phase: "Bound".into(),
            ..Pvc::default()
        }));
        synced(&mut c, vec![Object::Node(n1), Object::Pod(db), claim]);
        // Another replica serves the node's agent: its samples are only in
        // the stored rollups. 10 of 100 bytes free, 2 bytes fewer a minute.
        let now = now_unix_ms();
        let minute = |m: i64| now - now.rem_euclid(60_000) - m * 60_000;
        let id = "host/m1/volume/shop/data";
        let delta = |metric: &str, bucket: i64, value: f64| {
            let mut stats = Stats::default();
            stats.add(value);
            RollupDelta {
                key: SeriesKey::new(id, metric, ""),
                bucket_start_ms: bucket,
                stats,
                last: (bucket + 30_000, value),
            }
        };
        let epoch = store
            .open_session("agent-m1", "replica-2")
            .await
            .unwrap()
            .epoch;
        let rollups = vec![
            delta(metric::K8S_VOLUME_AVAILABLE, minute(3), 16.0),
            delta(metric::K8S_VOLUME_AVAILABLE, minute(2), 14.0),
            delta(metric::K8S_VOLUME_AVAILABLE, minute(1), 12.0),
            delta(metric::K8S_VOLUME_CAPACITY, minute(1), 100.0),
        ];
        store
            .flush(&[FlushSource {
                key: "agent-m1".into(),
                epoch,
                seq: 1,
                rollups,
            }])
            .await
            .unwrap();
        let first = report(&mut c, &mut rx).await;
        let claim = &first["k8s/test/pvc/shop/data"];
        assert_eq!(codes(claim), vec!["volume_filling_up"], "{claim:#?}");
        assert!(
            claim.verdict.as_ref().unwrap().reasons[0]
                .message
                .contains("full in"),
            "{:?}",
            claim.verdict
        );
    }

    #[tokio::test]
    async fn a_large_first_report_goes_in_parts() {
        let (mut c, mut rx) = correlator(instant());
        let pods: Vec<Object> = (0..REPORT_MAX + 10)
            .map(|i| pod(&format!("web-{i}"), "n1", None))
            .collect();
        synced(&mut c, [vec![node("n1", Status::True)], pods].concat());
        let first = submitted(&mut c, &mut rx).await;
        assert!(
            first.changes.len() <= REPORT_MAX + 1,
            "{}",
            first.changes.len()
        );
        assert!(
            c.next_deadline().is_some_and(|d| d <= Instant::now()),
            "the rest is due at once"
        );
        let second = submitted(&mut c, &mut rx).await;
        let observed = |r: &Report| {
            r.changes
                .iter()
                .filter(|ch| matches!(ch, Change::Observed(_)))
                .count()
        };
        assert_eq!(
            observed(&first) + observed(&second),
            REPORT_MAX + 10 + 2,
            "every pod, the node and the cluster, once"
        );
        assert!(c.dirty.is_empty());
    }

    #[tokio::test]
    async fn only_pods_that_restart_keep_a_restart_history() {
        let (mut c, mut rx) = correlator(instant());
        synced(
            &mut c,
            vec![
                node("n1", Status::True),
                pod("web-a", "n1", None),
                pod("web-b", "n1", None),
            ],
        );
        report(&mut c, &mut rx).await;
        assert!(c.restarts.is_empty(), "no pod restarted");
        let Some(Object::Pod(mut restarted)) =
            c.cache.get(&Key::new(Kind::Pod, "shop", "web-a")).cloned()
        else {
            panic!("web-a is cached");
        };
        restarted.containers[0].restarts = 3;
        c.take(Update::Apply(Object::Pod(restarted)));
        let pod = Key::new(Kind::Pod, "shop", "web-a");
        let history: Vec<i32> = c.restarts[&pod].iter().map(|(_, n)| *n).collect();
        assert_eq!(history, vec![0, 3], "counted from the count before");
        c.prune_history(now_unix_ms() + i64::try_from(c.rules.restart_window_ms).unwrap() + 1);
        assert!(c.restarts.is_empty(), "no restart within the window");
    }

    #[tokio::test]
    async fn a_deployment_below_desired_is_degraded_and_deletions_are_reported() {
        let (mut c, mut rx) = correlator(instant());
        let deployment = Object::Workload(
            Kind::Deployment,
            Box::new(Workload {
                meta: meta("shop", "web", &[]),
                desired: 3,
                ready: 2,
                available: 2,
                updated: 3,
                observed_generation: 1,
                ..Workload::default()
            }),
        );
        synced(&mut c, vec![node("n1", Status::True), deployment]);
        let first = report(&mut c, &mut rx).await;
        let d = &first["k8s/test/deployment/shop/web"];
        assert_eq!(codes(d), vec!["replicas_unavailable"]);
        assert_eq!(d.verdict.as_ref().unwrap().health, Health::Degraded);

        c.take(Update::Delete(Key::new(Kind::Deployment, "shop", "web")));
        let report = submitted(&mut c, &mut rx).await;
        assert!(report.changes.iter().any(
            |ch| matches!(ch, Change::Removed { id, .. } if id == "k8s/test/deployment/shop/web")
        ));
    }
}
