//! Memory given back: idle app connections closed as they expire, and
//! glibc's allocator told to keep freed memory for reuse, then to return it
//! all at once after many connections have closed.

use std::sync::Arc;

use crate::inbound::Inbound;
use crate::shutdown;

/// Closes idle app connections as they expire and, with `give_back` (one
/// thread does it for the process), gives memory back to the system once
/// many connections have closed. It sleeps while no connection is held.
pub(crate) async fn sweep(inbound: Arc<Inbound>, mut shutdown: shutdown::Shutdown, give_back: bool) {
    let mut tick = tokio::time::interval(crate::pool::MAX_IDLE / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The most descriptors held since memory was last given back.
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.signalled() => return,
        }
        inbound.pool.sweep();
        let used = inbound.budget.used();
        peak = usize::max(peak, used);
        if give_back && peak - used >= RELEASE_AFTER && used < peak / 2 {
            release_free_memory();
            peak = used;
        }
        if used == 0 {
            // No connection, so no idle app connection and nothing more to
            // give back until one comes: an idle sidecar is not woken.
            tokio::select! {
                () = inbound.budget.until_held() => tick.reset(),
                () = shutdown.signalled() => return,
            }
        }
    }
}

/// Connections closed (in descriptors) before freed memory is given back.
const RELEASE_AFTER: usize = 1024;

/// How glibc's allocator gives memory back: never on its own (by default it
/// trims the heap whenever 128 KiB are free at its top, and connections that
/// free and take their buffers between requests then fault the same pages
/// in again and again), but all at once after many connections closed
/// (`release_free_memory`).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a threshold of the allocator.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// glibc keeps freed memory for reuse; after a burst of connections (10,000
/// idle clients) that would hold their peak RSS for good. `malloc_trim`
/// returns the free pages of every arena.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pool::{AppConn, MAX_IDLE};
    use std::time::Duration;

    /// With no connection the sweep sleeps; the first connection wakes it,
    /// and the idle app connections it then leaves are still closed as they
    /// expire.
    #[tokio::test]
    async fn a_sweep_asleep_while_nothing_is_held_wakes_with_the_first_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = listener.local_addr().unwrap();
        let inbound = Arc::new(Inbound::for_tests(dst, crate::ports::PortList::default()));
        let (_trigger, shutdown) = shutdown::channel();
        let sweeping = tokio::spawn(sweep(inbound.clone(), shutdown, true));
        // Its first tick finds nothing held: it sleeps.
        tokio::time::sleep(MAX_IDLE).await;
        let conn = AppConn::connect(dst, &inbound.budget).await.unwrap();
        let _server = listener.accept().await.unwrap();
        inbound.pool.put(dst, conn);
        assert_eq!(inbound.pool.len(), 1);
        let deadline = tokio::time::Instant::now() + MAX_IDLE * 5;
        while !inbound.pool.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the idle app connection was never swept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(inbound.budget.used(), 0, "its descriptor went back");
        sweeping.abort();
    }
}
