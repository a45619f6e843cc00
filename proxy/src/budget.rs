//! The inbound side's file-descriptor budget.
//!
//! Every client connection, app connection and splice pipe takes file
//! descriptors from one budget, set below the process's open-files limit.
//! The rest of the limit is kept for what must work when the budget is
//! spent: the admin port (kubelet's probes of the sidecar, metrics), the
//! session tunnel, and the files a pause reads. A connection that finds
//! the budget spent is refused at once and counted, instead of the sidecar
//! failing in ways nobody can see (accept loops spinning on EMFILE, health
//! checks timing out).

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

/// File descriptors kept out of the budget: a sixteenth of the limit, at
/// least 64 and at most 4096.
pub fn reserve(limit: u64) -> u64 {
    (limit / 16).clamp(64, 4096)
}

/// The budget for an open-files limit.
pub fn for_limit(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(reserve(limit))).unwrap_or(usize::MAX).max(1)
}

/// How many descriptors the inbound side may hold, and how many it holds.
#[derive(Debug)]
pub struct Budget {
    limit: i64,
    /// Exported as `mirrord_proxy_inbound_fds`.
    used: Gauge,
    /// Told when descriptors are taken while none were held: what has
    /// nothing to do while the sidecar holds no connection (the sweep of
    /// idle app connections) sleeps until then.
    held: tokio::sync::Notify,
}

impl Budget {
    pub fn new(limit: usize, used: Gauge) -> Arc<Self> {
        Arc::new(Budget { limit: i64::try_from(limit).unwrap_or(i64::MAX), used, held: tokio::sync::Notify::new() })
    }

    /// Takes `n` descriptors, or none if that would exceed the budget.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<Fds> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let before = self.used.inc_by(n);
        if before.saturating_add(n) > self.limit {
            self.used.dec_by(n);
            return None;
        }
        if before == 0 {
            self.held.notify_waiters();
        }
        Some(Fds { budget: self.clone(), n })
    }

    /// Resolves when descriptors are held: at once if some are, else when
    /// the next are taken.
    pub async fn until_held(&self) {
        crate::wait::until(&self.held, || self.used() > 0).await;
    }

    pub fn limit(&self) -> usize {
        usize::try_from(self.limit).unwrap_or(usize::MAX)
    }

    pub fn used(&self) -> usize {
        usize::try_from(self.used.get()).unwrap_or(0)
    }
}

/// Descriptors taken from the budget, given back when dropped.
#[derive(Debug)]
pub struct Fds {
    budget: Arc<Budget>,
    n: i64,
}

impl Drop for Fds {
    fn drop(&mut self) {
        self.budget.used.dec_by(self.n);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back_on_drop() {
        let budget = Budget::new(5, Gauge::default());
        let a = budget.take(2).expect("2 of 5");
        let b = budget.take(3).expect("5 of 5");
        assert!(budget.take(1).is_none(), "over the budget");
        assert_eq!(budget.used(), 5);
        drop(a);
        assert_eq!(budget.used(), 3);
        assert!(budget.take(3).is_none());
        let c = budget.take(2).expect("the 2 given back");
        drop((b, c));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn until_held_waits_for_the_first_descriptors_taken() {
        let budget = Budget::new(5, Gauge::default());
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.until_held().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "nothing is held yet");
        let fds = budget.take(1).unwrap();
        let within = std::time::Duration::from_secs(5);
        tokio::time::timeout(within, waiting).await.expect("woken by the first take").unwrap();
        tokio::time::timeout(within, budget.until_held()).await.expect("at once while held");
        drop(fds);
    }

    #[test]
    fn the_reserve_is_a_sixteenth_within_bounds() {
        assert_eq!(reserve(1024), 64);
        assert_eq!(for_limit(1024), 960);
        assert_eq!(reserve(20_000), 1250);
        assert_eq!(reserve(1 << 20), 4096);
        assert_eq!(for_limit(10), 1, "never zero");
    }
}
