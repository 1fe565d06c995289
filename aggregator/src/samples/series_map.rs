//! A source's series, grouped by resource, each group sorted by series name.
//!
//! An agent has about a hundred series on a few resources and adds new ones
//! rarely (at its first batch, then now and then), while every batch looks
//! each of its series up. Sorted vectors answer a lookup with a binary search
//! like a B-tree and hold each entry once in one allocation (a `BTreeMap` keeps
//! half-full nodes, about 60 % more memory per agent). The resource id is held
//! once per resource, and a series holds only a pointer to its interned
//! [`SeriesName`]: 8 bytes per series instead of a 48-byte [`SeriesKey`]. New
//! series of a batch are added together (appended, then one sort of the nearly
//! sorted vector), so a batch that brings thousands of them costs
//! `O(n log n)`, not a move of the whole vector per series.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use super::SeriesKey;
use super::names::{self, SeriesName};
use super::series::SeriesState;

/// The series of one resource, sorted by name, names unique.
#[derive(Debug)]
struct ResourceSeries {
    id: Arc<str>,
    series: Vec<(Arc<SeriesName>, SeriesState)>,
}

impl ResourceSeries {
    fn position(&self, key: &SeriesKey) -> Result<usize, usize> {
        self.series
            .binary_search_by(|(name, _)| compare_name(name, key))
    }
}

/// The key of the series `name` of resource `id`.
fn key_of(id: &Arc<str>, name: &SeriesName) -> SeriesKey {
    SeriesKey {
        resource_id: id.clone(),
        metric: name.metric.clone(),
        attributes: name.attributes.clone(),
    }
}

/// `name` against the name part of `key`, in [`SeriesKey`]'s order.
fn compare_name(name: &SeriesName, key: &SeriesKey) -> Ordering {
    (&*name.metric, &*name.attributes).cmp(&(&*key.metric, &*key.attributes))
}

/// Series of one source, by key.
#[derive(Debug, Default)]
pub struct SeriesMap {
    /// Sorted by resource id, ids unique, none without series.
    resources: Vec<ResourceSeries>,
}

impl SeriesMap {
    /// Number of series.
    pub fn len(&self) -> usize {
        self.resources.iter().map(|r| r.series.len()).sum()
    }

    /// True when no series is held.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    fn resource_position(&self, resource_id: &str) -> Result<usize, usize> {
        self.resources
            .binary_search_by(|r| (*r.id).cmp(resource_id))
    }

    /// The series of `key`.
    pub fn get(&self, key: &SeriesKey) -> Option<&SeriesState> {
        let r = &self.resources[self.resource_position(&key.resource_id).ok()?];
        r.position(key).ok().map(|i| &r.series[i].1)
    }

    fn get_mut(&mut self, key: &SeriesKey) -> Option<&mut SeriesState> {
        let at = self.resource_position(&key.resource_id).ok()?;
        let r = &mut self.resources[at];
        let i = r.position(key).ok()?;
        Some(&mut r.series[i].1)
    }

    /// Every series with its key, in key order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (SeriesKey, &mut SeriesState)> {
        self.resources.iter_mut().flat_map(|r| {
            let id = &r.id;
            r.series
                .iter_mut()
                .map(move |(name, state)| (key_of(id, name), state))
        })
    }

    /// Every series.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut SeriesState> {
        self.resources
            .iter_mut()
            .flat_map(|r| r.series.iter_mut().map(|(_, s)| s))
    }

    /// Keeps the series for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut SeriesState) -> bool) {
        for r in &mut self.resources {
            r.series.retain_mut(|(_, s)| keep(s));
            if r.series.capacity() > 2 * r.series.len() + 16 {
                r.series.shrink_to_fit();
            }
        }
        self.resources.retain(|r| !r.series.is_empty());
    }

    /// The series of `resource_id`, in key order.
    pub fn of_resource<'a>(
        &'a self,
        resource_id: &str,
    ) -> impl Iterator<Item = (SeriesKey, &'a SeriesState)> {
        let r = self
            .resource_position(resource_id)
            .ok()
            .map(|at| &self.resources[at]);
        r.into_iter().flat_map(|r| {
            r.series
                .iter()
                .map(move |(name, s)| (key_of(&r.id, name), s))
        })
    }

    /// Applies `apply` to the series of each of the `count` keys `key_at(0..)`,
    /// in that order for any one key, adding the keys not held yet; returns the
    /// indexes of the series that were added (the first of each key).
    pub fn apply_each<'k>(
        &mut self,
        count: usize,
        key_at: impl Fn(usize) -> &'k SeriesKey,
        mut apply: impl FnMut(usize, &mut SeriesState),
    ) -> Vec<usize> {
        let mut missing = Vec::new();
        for i in 0..count {
            match self.get_mut(key_at(i)) {
                Some(state) => apply(i, state),
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            return Vec::new();
        }
        let mut added_at = Vec::new();
        let mut added: HashSet<&SeriesKey> = HashSet::new();
        let mut touched: Vec<Arc<str>> = Vec::new();
        for &i in &missing {
            let key = key_at(i);
            if !added.insert(key) {
                continue;
            }
            added_at.push(i);
            let at = match self.resource_position(&key.resource_id) {
                Ok(at) => at,
                Err(at) => {
                    self.resources.insert(
                        at,
                        ResourceSeries {
                            id: key.resource_id.clone(),
                            series: Vec::new(),
                        },
                    );
                    at
                }
            };
            let r = &mut self.resources[at];
            r.series.push((
                names::series_name(&key.metric, &key.attributes),
                SeriesState::default(),
            ));
            if touched.last() != Some(&r.id) {
                touched.push(r.id.clone());
            }
        }
        touched.sort();
        touched.dedup();
        for id in touched {
            if let Ok(at) = self.resource_position(&id) {
                let series = &mut self.resources[at].series;
                // Stable and run-aware: the held part is one sorted run.
                series.sort_by(|(a, _), (b, _)| a.cmp(b));
                series.shrink_to_fit();
            }
        }
        for i in missing {
            if let Some(state) = self.get_mut(key_at(i)) {
                apply(i, state);
            }
        }
        added_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(resource: &str, metric: &str) -> SeriesKey {
        SeriesKey::new(resource, metric, "")
    }

    fn count(map: &SeriesMap, k: &SeriesKey) -> u64 {
        map.get(k).map_or(0, |s| s.stats_since(i64::MIN).count)
    }

    fn apply_all(map: &mut SeriesMap, keys: &[SeriesKey], ts: i64) -> Vec<usize> {
        map.apply_each(keys.len(), |i| &keys[i], |_, s| s.add(ts, 1.0, 0))
    }

    #[test]
    fn new_series_are_added_once_and_kept_sorted() {
        let mut map = SeriesMap::default();
        let batch = [key("b", "m"), key("a", "m"), key("b", "m"), key("a", "n")];
        let added = apply_all(&mut map, &batch, 1);
        assert_eq!(added, vec![0, 1, 3], "the repeated key is added once");
        assert_eq!(map.len(), 3);
        assert_eq!(count(&map, &key("b", "m")), 2);
        let order: Vec<_> = map.iter_mut().map(|(k, _)| k).collect();
        assert_eq!(order, vec![key("a", "m"), key("a", "n"), key("b", "m")]);

        let added = apply_all(&mut map, &[key("a", "n"), key("a", "a")], 2);
        assert_eq!(added, vec![1]);
        assert_eq!(map.len(), 4);
        assert_eq!(count(&map, &key("a", "n")), 2);
        let of_a: Vec<_> = map
            .of_resource("a")
            .map(|(k, _)| k.metric.to_string())
            .collect();
        assert_eq!(of_a, vec!["a", "m", "n"]);
        assert_eq!(map.of_resource("c").count(), 0);
    }

    #[test]
    fn a_new_series_seen_twice_in_a_batch_gets_both_samples_in_order() {
        let mut map = SeriesMap::default();
        let k = key("r", "m");
        let keys = [k.clone(), key("r", "a"), k.clone()];
        let mut order = Vec::new();
        map.apply_each(
            keys.len(),
            |i| &keys[i],
            |i, s| {
                order.push(i);
                s.add(i as i64 + 1, 1.0, 0);
            },
        );
        assert_eq!(count(&map, &k), 2);
        let (first, second) = (
            order.iter().position(|&i| i == 0),
            order.iter().position(|&i| i == 2),
        );
        assert!(first < second, "{order:?}");
    }

    #[test]
    fn series_of_every_resource_share_one_name() {
        let mut map = SeriesMap::default();
        apply_all(
            &mut map,
            &[
                key("host/1", "shared.metric"),
                key("host/2", "shared.metric"),
            ],
            1,
        );
        let names: Vec<_> = map
            .resources
            .iter()
            .map(|r| r.series[0].0.clone())
            .collect();
        assert!(Arc::ptr_eq(&names[0], &names[1]));
    }

    #[test]
    fn retain_forgets_series_and_lookups_still_work() {
        let mut map = SeriesMap::default();
        let keys: Vec<_> = (0..100)
            .map(|i| key(if i % 2 == 0 { "r" } else { "s" }, &format!("m{i:03}")))
            .rev()
            .collect();
        apply_all(&mut map, &keys, 1);
        assert_eq!(map.len(), 100);
        let mut n = 0;
        map.retain(|_| {
            n += 1;
            n % 10 == 0
        });
        assert_eq!(map.len(), 10);
        let kept: Vec<_> = map.iter_mut().map(|(k, _)| k).collect();
        for k in &kept {
            assert_eq!(count(&map, k), 1);
        }
        assert!(map.get(&key("r", "m001")).is_none());
        map.retain(|_| false);
        assert!(map.is_empty());
        assert!(
            map.resources.is_empty(),
            "resources without series are dropped"
        );
    }
}
