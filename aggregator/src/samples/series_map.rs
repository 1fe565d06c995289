//! A source's series, sorted by key in one vector.
//!
//! An agent has about a hundred series and adds new ones rarely (at its first
//! batch, then now and then), while every batch looks each of its series up. A
//! sorted vector answers a lookup with a binary search like a B-tree, and holds
//! each entry once in one allocation: a `BTreeMap` of the same entries keeps
//! half-full nodes, about 60 % more memory per agent. New series of a batch are
//! added together (appended, then one sort of the nearly sorted vector), so a
//! batch that brings thousands of them costs `O(n log n)`, not a move of the
//! whole vector per series.

use std::collections::HashMap;

use super::SeriesKey;
use super::series::SeriesState;

/// Series of one source, by key.
#[derive(Debug, Default)]
pub struct SeriesMap {
    /// Sorted by key, keys unique.
    entries: Vec<(SeriesKey, SeriesState)>,
}

impl SeriesMap {
    /// Number of series.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no series is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &SeriesKey) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The series of `key`.
    pub fn get(&self, key: &SeriesKey) -> Option<&SeriesState> {
        self.position(key).ok().map(|i| &self.entries[i].1)
    }

    /// Every series with its key, in key order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&SeriesKey, &mut SeriesState)> {
        self.entries.iter_mut().map(|(k, s)| (&*k, s))
    }

    /// Every series.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut SeriesState> {
        self.entries.iter_mut().map(|(_, s)| s)
    }

    /// Keeps the series for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&SeriesKey, &mut SeriesState) -> bool) {
        self.entries.retain_mut(|(k, s)| keep(k, s));
        if self.entries.capacity() > 2 * self.entries.len() + 16 {
            self.entries.shrink_to_fit();
        }
    }

    /// The series of `resource_id`, in key order.
    pub fn of_resource<'a>(
        &'a self,
        resource_id: &'a str,
    ) -> impl Iterator<Item = (&'a SeriesKey, &'a SeriesState)> {
        let start = self
            .entries
            .partition_point(|(k, _)| &*k.resource_id < resource_id);
        self.entries[start..]
            .iter()
            .take_while(move |(k, _)| &*k.resource_id == resource_id)
            .map(|(k, s)| (k, s))
    }

    /// Applies `apply` to the series of each key in `keys`, in that order,
    /// adding the keys not held yet (as `new_key` makes them); returns the
    /// indexes in `keys` of the series that were added.
    pub fn apply_each<'k>(
        &mut self,
        keys: impl Iterator<Item = &'k SeriesKey>,
        new_key: impl Fn(&SeriesKey) -> SeriesKey,
        mut apply: impl FnMut(usize, &mut SeriesState),
    ) -> Vec<usize> {
        let held = self.entries.len();
        let mut added: HashMap<SeriesKey, usize> = HashMap::new();
        let mut added_at = Vec::new();
        for (i, key) in keys.enumerate() {
            let at = match self.entries[..held].binary_search_by(|(k, _)| k.cmp(key)) {
                Ok(at) => at,
                Err(_) => match added.get(key) {
                    Some(&at) => at,
                    None => {
                        let at = self.entries.len();
                        self.entries.push((new_key(key), SeriesState::default()));
                        added.insert(key.clone(), at);
                        added_at.push(i);
                        at
                    }
                },
            };
            apply(i, &mut self.entries[at].1);
        }
        if !added.is_empty() {
            // Stable and run-aware: the held part is one sorted run.
            self.entries.sort_by(|(a, _), (b, _)| a.cmp(b));
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

    #[test]
    fn new_series_are_added_once_and_kept_sorted() {
        let mut map = SeriesMap::default();
        let batch = [key("b", "m"), key("a", "m"), key("b", "m"), key("a", "n")];
        let added = map.apply_each(batch.iter(), SeriesKey::clone, |_, s| s.add(1, 1.0, 0));
        assert_eq!(added, vec![0, 1, 3], "the repeated key is added once");
        assert_eq!(map.len(), 3);
        assert_eq!(count(&map, &key("b", "m")), 2);
        let order: Vec<_> = map.iter_mut().map(|(k, _)| k.clone()).collect();
        assert_eq!(order, vec![key("a", "m"), key("a", "n"), key("b", "m")]);

        let added = map.apply_each(
            [key("a", "n"), key("a", "a")].iter(),
            SeriesKey::clone,
            |_, s| s.add(2, 1.0, 0),
        );
        assert_eq!(added, vec![1]);
        assert_eq!(count(&map, &key("a", "n")), 2);
        let of_a: Vec<_> = map
            .of_resource("a")
            .map(|(k, _)| k.metric.to_string())
            .collect();
        assert_eq!(of_a, vec!["a", "m", "n"]);
        assert_eq!(map.of_resource("c").count(), 0);
    }

    #[test]
    fn retain_forgets_series_and_lookups_still_work() {
        let mut map = SeriesMap::default();
        let keys: Vec<_> = (0..100).map(|i| key("r", &format!("m{i:03}"))).collect();
        map.apply_each(keys.iter().rev(), SeriesKey::clone, |_, s| s.add(1, 1.0, 0));
        map.retain(|k, _| k.metric.ends_with('0'));
        assert_eq!(map.len(), 10);
        assert_eq!(count(&map, &key("r", "m050")), 1);
        assert!(map.get(&key("r", "m051")).is_none());
    }
}
