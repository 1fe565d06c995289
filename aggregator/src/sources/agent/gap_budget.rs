//! How many data gaps one agent identity may have stored per hour: an agent
//! that loses data reports a gap per lost range, a handful an hour at worst;
//! one that reports thousands is broken or hostile, and each gap costs a row
//! and an event. Kept per identity in this process (a fixed one-hour window),
//! so no reconnect resets it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The window the budget counts in.
const WINDOW_MS: i64 = 3_600_000;

/// Gaps per identity and hour.
#[derive(Debug)]
pub struct GapBudget {
    per_hour: usize,
    used: Mutex<HashMap<String, (i64, usize)>>,
}

impl GapBudget {
    /// At most `per_hour` gaps per identity in each hour.
    pub fn new(per_hour: usize) -> Self {
        Self {
            per_hour,
            used: Mutex::new(HashMap::new()),
        }
    }

    /// How many of `wanted` new gaps `identity` may still have stored in the
    /// hour of `now_ms`; takes them from the budget.
    pub fn take(&self, identity: &str, wanted: usize, now_ms: i64) -> usize {
        if wanted == 0 {
            return 0;
        }
        let window = now_ms - now_ms.rem_euclid(WINDOW_MS);
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget identities of earlier windows now and then (bounded memory).
        if used.len() > 10_000 {
            used.retain(|_, (w, _)| *w == window);
        }
        let entry = used.entry(identity.to_string()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        let granted = wanted.min(self.per_hour.saturating_sub(entry.1));
        entry.1 += granted;
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_per_identity_and_hour() {
        let budget = GapBudget::new(5);
        let hour = 1_800_000_000_000 - 1_800_000_000_000 % WINDOW_MS;
        assert_eq!(budget.take("a", 3, hour), 3);
        assert_eq!(budget.take("a", 3, hour + 10), 2);
        assert_eq!(budget.take("a", 1, hour + 20), 0);
        assert_eq!(
            budget.take("b", 4, hour + 20),
            4,
            "another identity has its own"
        );
        assert_eq!(
            budget.take("a", 4, hour + WINDOW_MS),
            4,
            "the next hour starts over"
        );
        assert_eq!(budget.take("a", 0, hour + WINDOW_MS), 0);
    }
}
