//! Interned names: metric names and canonical attribute strings repeat across
//! series and agents (every host has `system.cpu.utilization`, `cpu="0"`), so
//! each is kept once and shared (`Arc<str>`), and so is each pair of them that
//! names a series within its resource ([`SeriesName`]): a held series points to
//! its name with one pointer. A name no series holds any more is forgotten by
//! [`forget_unused`], which the flusher calls after every flush.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, RwLock};

static NAMES: LazyLock<RwLock<HashSet<Arc<str>>>> = LazyLock::new(Default::default);

static SERIES_NAMES: LazyLock<RwLock<HashSet<Arc<SeriesName>>>> = LazyLock::new(Default::default);

/// A series' name within its resource: metric and canonical attributes, both
/// interned. Ordered as in [`super::SeriesKey`] (metric, then attributes).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesName {
    /// Metric name.
    pub metric: Arc<str>,
    /// Canonical attributes (`k="v",...`), "" for none.
    pub attributes: Arc<str>,
}

/// The shared series name of `metric` and `attributes`.
pub fn series_name(metric: &str, attributes: &str) -> Arc<SeriesName> {
    let wanted = SeriesName {
        metric: intern(metric),
        attributes: intern(attributes),
    };
    shared(&SERIES_NAMES, &wanted, |w| {
        Arc::new(SeriesName {
            metric: w.metric.clone(),
            attributes: w.attributes.clone(),
        })
    })
}

/// The shared copy of `name`.
pub fn intern(name: &str) -> Arc<str> {
    shared(&NAMES, name, |n: &str| Arc::from(n))
}

/// The copy of `wanted` in `table`, added (as `make` makes it) when missing.
/// Most calls find it under the read lock.
fn shared<T, Q>(
    table: &RwLock<HashSet<Arc<T>>>,
    wanted: &Q,
    make: impl FnOnce(&Q) -> Arc<T>,
) -> Arc<T>
where
    T: ?Sized + Hash + Eq,
    Q: ?Sized + Hash + Eq,
    Arc<T>: Borrow<Q>,
{
    if let Some(n) = table.read().unwrap_or_else(|p| p.into_inner()).get(wanted) {
        return n.clone();
    }
    let mut table = table.write().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = table.get(wanted) {
        return n.clone();
    }
    let n = make(wanted);
    table.insert(n.clone());
    n
}

/// The shared copy of `name` if some series holds it (nothing is added).
pub fn get(name: &str) -> Option<Arc<str>> {
    NAMES
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
}

/// Forgets names nothing else holds (series names first, which hold names);
/// returns how many names are kept.
pub fn forget_unused() -> usize {
    SERIES_NAMES
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|n| Arc::strong_count(n) > 1);
    let mut names = NAMES.write().unwrap_or_else(|p| p.into_inner());
    names.retain(|n| Arc::strong_count(n) > 1);
    names.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_and_forgotten_when_unused() {
        let a = intern("test.names.metric");
        let b = intern("test.names.metric");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        forget_unused();
        let c = intern("test.names.metric");
        assert_eq!(Arc::strong_count(&c), 2, "held by the table and by c only");
    }

    #[test]
    fn series_names_are_shared_and_hold_their_names() {
        let a = series_name("test.names.series", "k=\"v\"");
        let b = series_name("test.names.series", "k=\"v\"");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a.metric, &intern("test.names.series")));
        drop(b);
        forget_unused();
        // Still held by `a`: the series name and its metric stay.
        assert!(get("test.names.series").is_some());
        drop(a);
        forget_unused();
        assert!(get("test.names.series").is_none());
    }
}
