//! Memory pressure: the sidecar sheds load before its memory limit instead
//! of being killed at it. An OOM-killed sidecar takes the whole pod's
//! traffic with it (the redirect stays, nothing listens) until it restarts,
//! and clients that hold memory on purpose (request heads sent slowly,
//! HTTP/2 streams whose answers they never read) could otherwise do that
//! from outside, a few hundred connections at a time.
//!
//! From five eighths of the limit on ([`Pressure::admit`]), what would
//! take more memory is refused (the rest is for what every open connection
//! holds whatever it sends, about 4 KiB each up to the descriptor budget,
//! and for the kernel's socket buffers):
//! - an HTTP/1 request head that outgrows its buffer gets 503, and a new
//!   head is read into 1 KiB instead of 8;
//! - HTTP/2 connections, the client's and the app's, read only a ration
//!   shared by all ([`Gated`]); a new stream is refused (`REFUSED_STREAM`:
//!   the client may retry it); a stream takes no more of a body, and is
//!   reset after a second of that or of its peer's flow control holding it
//!   back; a client that has read nothing for a second has its connection
//!   closed.
//!
//! Each counts `mirrord_proxy_errors_total{reason="memory_pressure"}`.
//! Requests that take no more memory than they hold go on.
//!
//! The limit is the container's (the lowest cgroup memory limit over the
//! process's cgroups, its usage as the cgroup counts it: what the kernel
//! compares with the limit), or `--memory-limit` (against the process's
//! resident memory).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

mod gated;
mod limit;
pub use gated::Gated;
pub use limit::{parse_bytes, MemoryLimit, Usage};

/// How often the memory in use is read at most, while something asks.
const READ_EVERY_MS: u64 = 10;
/// Bytes admitted since the last reading after which it is read again at
/// once: memory taken faster than the readings come is counted as it is
/// taken.
const READ_AFTER: u64 = 1 << 20;

/// What gated connections may read in all, per [`RATION_MS`], while memory
/// is near the limit: some 1.3 MB/s, which control frames and answer heads
/// need, not bulk data.
const RATION: u64 = 64 * 1024;
const RATION_MS: u64 = 50;

/// How often free memory is given back at most while at the mark.
const TRIM_EVERY_MS: u64 = 100;

/// Whether the sidecar is near its memory limit. Asked only where more
/// memory is about to be taken; nothing reads the usage while nobody asks.
#[derive(Debug)]
pub struct Pressure {
    /// Five eighths of the limit; `u64::MAX` without one.
    mark: u64,
    usage: Usage,
    /// The last reading, and when it was made (ms since `epoch`).
    last: AtomicU64,
    read_at: AtomicU64,
    /// When free memory was last given back (ms since `epoch`; `MAX`: never).
    trimmed_at: AtomicU64,
    /// Bytes admitted since the last reading ([`Pressure::admit`]).
    admitted: AtomicU64,
    /// What is left of the ration of the period ([`Pressure::ration`]).
    ration_left: AtomicU64,
    ration_period: AtomicU64,
    /// [`READ_EVERY_MS`], but in tests.
    read_every_ms: u64,
    epoch: Instant,
    /// `mirrord_proxy_errors_total{reason="memory_pressure"}`.
    shed: Counter,
}

impl Pressure {
    /// No limit: never under pressure.
    pub fn off() -> Pressure {
        Pressure::with_mark(u64::MAX, Usage::Resident, Counter::default())
    }

    /// Under pressure from five eighths of `limit` on; what is shed
    /// counts in `shed`.
    pub fn new(limit: &MemoryLimit, shed: Counter) -> Pressure {
        Pressure::with_mark(limit.bytes / 8 * 5, limit.usage.clone(), shed)
    }

    fn with_mark(mark: u64, usage: Usage, shed: Counter) -> Pressure {
        let first = if mark == u64::MAX { 0 } else { usage.read().unwrap_or(0) };
        let (last, read_at, admitted) = (AtomicU64::new(first), AtomicU64::new(0), AtomicU64::new(0));
        // Never yet.
        let trimmed_at = AtomicU64::new(u64::MAX);
        let read_every_ms = READ_EVERY_MS;
        let (ration_left, ration_period) = (AtomicU64::new(RATION), AtomicU64::new(0));
        let epoch = Instant::now();
        Pressure {
            mark,
            usage,
            last,
            read_at,
            trimmed_at,
            admitted,
            ration_left,
            ration_period,
            read_every_ms,
            epoch,
            shed,
        }
    }

    /// Under the sidecar's limit: `--memory-limit` (`flag`; `0` for none),
    /// else the container's. Logs which, and warns when memory is already
    /// above the mark.
    pub fn configured(flag: Option<u64>, shed: Counter) -> Pressure {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let pressure = match flag {
            Some(0) => Pressure::off(),
            Some(bytes) => Pressure::new(&MemoryLimit { bytes, usage: Usage::Resident }, shed),
            None => match MemoryLimit::of_this_process() {
                Some((limit, cgroup)) => {
                    info!(limit_mib = mib(limit.bytes), cgroup = %cgroup.display(), "memory limit from the cgroup");
                    Pressure::new(&limit, shed)
                }
                None => Pressure::off(),
            },
        };
        match pressure.mark() {
            Some(mark) if pressure.high() => warn!(
                from_mib = mib(mark),
                "the sidecar already uses more memory than where it sheds load: every request head over 1 KiB \
                 and every HTTP/2 stream will be refused until it uses less (raise the memory limit)"
            ),
            Some(mark) => info!(from_mib = mib(mark), "shedding load under memory pressure"),
            None => info!("no memory limit: no load is shed for memory"),
        }
        pressure
    }

    /// Where shedding starts, in bytes; `None` without a limit.
    pub fn mark(&self) -> Option<u64> {
        (self.mark != u64::MAX).then_some(self.mark)
    }

    /// Whether the memory in use is at or above the mark.
    pub fn high(&self) -> bool {
        !self.admit(0)
    }

    /// Whether `bytes` more may be taken: the last reading (read again
    /// when older than 10 ms, or after 1 MiB was admitted since), with
    /// what was admitted since, stays below the mark. What is admitted is
    /// counted until the next reading, which sees it in use.
    pub fn admit(&self, bytes: u64) -> bool {
        if self.mark == u64::MAX {
            return true;
        }
        let admitted = self.admitted.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let at = self.read_at.load(Ordering::Relaxed);
        // One caller reads; the others use the last reading meanwhile.
        if (admitted >= READ_AFTER || now.saturating_sub(at) >= self.read_every_ms)
            && self.read_at.compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.read(bytes, now);
        }
        self.last.load(Ordering::Relaxed).saturating_add(self.admitted.load(Ordering::Relaxed)) < self.mark
    }

    /// Reads the memory in use; at the mark, first gives the allocator's
    /// free memory back (at most every 100 ms), which it would otherwise
    /// keep after the load that took it has gone: the mark is then not
    /// reached by memory nothing uses.
    fn read(&self, admitting: u64, now: u64) {
        let Some(mut used) = self.usage.read() else { return };
        let trimmed = self.trimmed_at.load(Ordering::Relaxed);
        if used.saturating_add(admitting) >= self.mark
            && (trimmed == u64::MAX || now.saturating_sub(trimmed) >= TRIM_EVERY_MS)
            && self.trimmed_at.compare_exchange(trimmed, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            crate::memory::release_free_memory();
            used = self.usage.read().unwrap_or(used);
        }
        // What this call admits is not in use yet.
        self.last.store(used, Ordering::Relaxed);
        self.admitted.store(admitting, Ordering::Relaxed);
    }

    /// How many of `want` bytes a gated connection may read now while memory
    /// is near the limit: a ration of [`RATION`] every [`RATION_MS`], shared
    /// by every gated connection, first come first served.
    pub fn ration(&self, want: usize) -> usize {
        let period = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) / RATION_MS;
        if self.ration_period.swap(period, Ordering::Relaxed) != period {
            self.ration_left.store(RATION, Ordering::Relaxed);
        }
        let want = u64::try_from(want).unwrap_or(u64::MAX);
        let left =
            self.ration_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| Some(left.saturating_sub(want)));
        usize::try_from(left.unwrap_or(0).min(want)).unwrap_or(0)
    }

    /// Counts a request or stream refused or reset for memory.
    pub fn shed(&self) {
        self.shed.inc();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cgroup::fixture::tree;

    #[test]
    fn the_mark_is_five_eighths_of_the_limit_against_the_usage_read() {
        let dir = tree(&[("memory.current", "1000\n")]);
        let file = dir.path().join("memory.current");
        let pressure =
            Pressure::new(&MemoryLimit { bytes: 4800, usage: Usage::Cgroup(file.clone()) }, Counter::default());
        assert_eq!(pressure.mark(), Some(3000));
        assert!(!pressure.high());
        std::fs::write(&file, "3000\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2 * READ_EVERY_MS));
        assert!(pressure.high());
        assert!(!Pressure::off().high());
        assert_eq!(Pressure::off().mark(), None);
        // The process's own resident memory is far above one byte.
        assert!(Pressure::new(&MemoryLimit { bytes: 1, usage: Usage::Resident }, Counter::default()).high());
    }

    /// Under pressure gated connections share one ration per period: what
    /// one takes, the others do not get, and the next period brings more.
    #[test]
    fn the_ration_is_shared_and_renewed_each_period() {
        let pressure = Pressure::off();
        // Taken within one period (retried if the test straddles two).
        for _ in 0..3 {
            let period = pressure.epoch.elapsed().as_millis();
            let first = pressure.ration(48 * 1024);
            let second = pressure.ration(48 * 1024);
            let third = pressure.ration(1);
            if pressure.epoch.elapsed().as_millis() / u128::from(RATION_MS) == period / u128::from(RATION_MS) {
                assert_eq!((first, second, third), (48 * 1024, 16 * 1024, 0));
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(RATION_MS + 5));
        assert_eq!(pressure.ration(1 << 20), RATION as usize, "a new period's ration, no more");
    }

    /// Memory taken faster than the readings come: what was admitted since
    /// the last reading counts against the mark until the next one, which
    /// comes after 1 MiB admitted (readings by time are left out here).
    #[test]
    fn what_is_admitted_counts_until_it_is_read_in_use() {
        let dir = tree(&[("memory.current", "1000\n")]);
        let file = dir.path().join("memory.current");
        let limit = MemoryLimit { bytes: 4 << 20, usage: Usage::Cgroup(file.clone()) };
        let pressure = Pressure { read_every_ms: u64::MAX, ..Pressure::new(&limit, Counter::default()) };
        assert_eq!(pressure.mark(), Some(2_621_440));
        assert!(pressure.admit(600_000));
        // The 600 kB are in use now.
        std::fs::write(&file, "2000000\n").unwrap();
        assert!(pressure.admit(600_000), "read again (1.2 MB admitted): 2 MB in use and 600 kB more");
        assert!(pressure.admit(20_000));
        assert!(!pressure.admit(10_000), "not read again: 2 MB in use and 630 kB admitted reach the mark");
        // Read again after 1 MiB admitted: 2 MB in use and 700 kB more.
        assert!(!pressure.admit(700_000));
        assert!(pressure.high());
        assert!(Pressure::off().admit(u64::MAX));
    }
}
