//! Interned names: metric names and canonical attribute strings repeat across
//! series and agents (every host has `system.cpu.utilization`, `cpu="0"`), so
//! each is kept once and shared (`Arc<str>`). A name no series holds any more is
//! forgotten by [`forget_unused`], which the flusher calls after every flush.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, RwLock};

static NAMES: LazyLock<RwLock<HashSet<Arc<str>>>> = LazyLock::new(Default::default);

/// The shared copy of `name`.
pub fn intern(name: &str) -> Arc<str> {
    if let Some(n) = NAMES.read().unwrap_or_else(|p| p.into_inner()).get(name) {
        return n.clone();
    }
    let mut names = NAMES.write().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.get(name) {
        return n.clone();
    }
    let n: Arc<str> = Arc::from(name);
    names.insert(n.clone());
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

/// Forgets names nothing else holds; returns how many are kept.
pub fn forget_unused() -> usize {
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
}
