//! The pause policy: who holds the pause, when the app is stopped and when it
//! must be resumed, as a state machine over a [`ProcessTable`].
//!
//! Everything here is decided from events (a hold, a release, a tick with a
//! fresh scan of the app, a shutdown) and carried out through the table's
//! three effects (scan, stop one process, resume the app). The sidecar's
//! table is `/proc` and pidfds ([`super::procs`], [`super::signal`]); the
//! tests run thousands of randomized sequences against a simulated one.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::procs::ScopeError;

/// A process, named uniquely: (pid, start time).
pub type Key = (i32, u64);

/// One process of the app, as a scan saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub key: Key,
    /// In the stopped state (`T`).
    pub stopped: bool,
    /// A termination signal (pod deletion, rollout) waits on it.
    pub terminating: bool,
}

/// The effects the policy needs.
pub trait ProcessTable {
    /// The app's live processes.
    fn scan(&mut self) -> Result<Vec<Seen>, ScopeError>;
    /// SIGSTOP to one process (again, if it was stopped before and has been
    /// continued since). False when it is gone or may not be signalled.
    fn stop(&mut self, key: Key) -> bool;
    /// SIGCONT to every process this pause stopped and to every app process
    /// still stopped or about to stop; forgets what it stopped. Returns how
    /// many were continued.
    fn resume(&mut self) -> usize;
}

/// Why a pause ended (the app was resumed).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Resume {
    /// The last session holding it left.
    Released,
    /// It lasted as long as the lease allows; the holders stay connected.
    Lease,
    /// A termination signal waits on the app: it must be free to shut down.
    Terminating,
    /// The sidecar is shutting down.
    Shutdown,
}

impl Resume {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Resume::Released => "released",
            Resume::Lease => "lease",
            Resume::Terminating => "terminating",
            Resume::Shutdown => "shutdown",
        }
    }
}

/// Why a hold is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The pause ended this way while sessions still hold it (or, for a
    /// shutdown, for good).
    Ended(Resume),
    Scope(ScopeError),
    /// A scan found no process of the app.
    NothingVisible,
    /// It found some, and none of them could be stopped.
    CannotSignal {
        processes: usize,
    },
}

/// What a step did that the sessions, the logs and the metrics hear of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The first holder stopped the app.
    Paused { processes: usize },
    /// The app was resumed; `holders` are the sessions still holding the
    /// pause, to be told (none for [`Resume::Released`]).
    Resumed { why: Resume, processes: usize, holders: Vec<u64> },
}

/// The state of one pod's pause.
#[derive(Debug)]
pub struct Policy<T: ProcessTable> {
    table: T,
    lease: Duration,
    holders: Vec<u64>,
    /// Processes stopped for the current pause.
    stopped: HashSet<Key>,
    /// When the current pause began; `None` while the app runs.
    since: Option<Instant>,
    /// Set when the pause ended while sessions still hold it: no new hold
    /// until they have all left (a shutdown: never again).
    ended: Option<Resume>,
}

impl<T: ProcessTable> Policy<T> {
    pub fn new(table: T, lease: Duration) -> Self {
        Policy { table, lease, holders: Vec::new(), stopped: HashSet::new(), since: None, ended: None }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn paused_since(&self) -> Option<Instant> {
        self.since
    }

    /// How many processes the current pause has stopped.
    pub fn stopped(&self) -> usize {
        self.stopped.len()
    }

    pub fn table(&mut self) -> &mut T {
        &mut self.table
    }

    /// Session `seq` holds the pause; the first holder stops the app.
    pub fn hold(&mut self, seq: u64, now: Instant) -> Result<Option<Report>, Refusal> {
        if let Some(why) = self.ended {
            return Err(Refusal::Ended(why));
        }
        let mut report = None;
        if self.holders.is_empty() {
            let seen = self.table.scan().map_err(Refusal::Scope)?;
            if seen.is_empty() {
                return Err(Refusal::NothingVisible);
            }
            self.stop_round(&seen);
            if self.stopped.is_empty() {
                return Err(Refusal::CannotSignal { processes: seen.len() });
            }
            self.since = Some(now);
            report = Some(Report::Paused { processes: self.stopped.len() });
        }
        self.holders.push(seq);
        Ok(report)
    }

    /// Session `seq` no longer holds the pause; the last one out resumes.
    pub fn release(&mut self, seq: u64) -> Option<Report> {
        let before = self.holders.len();
        self.holders.retain(|&s| s != seq);
        if self.holders.is_empty() && before > 0 {
            let report = self.resume(Resume::Released);
            // A lease or a termination is over with its holders; a shutdown is not.
            if self.ended != Some(Resume::Shutdown) {
                self.ended = None;
            }
            return report;
        }
        None
    }

    /// Ends the pause while sessions still hold it.
    pub fn end(&mut self, why: Resume) -> Option<Report> {
        if self.since.is_none() {
            // Nothing paused (or it already ended): a shutdown still means
            // that no pause may start again.
            if why == Resume::Shutdown {
                self.ended = Some(why);
            }
            return None;
        }
        let report = self.resume(why);
        self.ended = Some(why);
        report
    }

    /// A rescan while paused: resumes when the app was asked to terminate or
    /// the lease is over; otherwise stops what runs (new processes, or ones
    /// someone else continued).
    pub fn tick(&mut self, now: Instant) -> Result<Option<Report>, ScopeError> {
        let Some(since) = self.since else { return Ok(None) };
        let seen = self.table.scan()?;
        if seen.iter().any(|p| p.terminating && self.stopped.contains(&p.key)) {
            return Ok(self.end(Resume::Terminating));
        }
        if now.saturating_duration_since(since) >= self.lease {
            return Ok(self.end(Resume::Lease));
        }
        self.stop_round(&seen);
        self.stopped.retain(|k| seen.iter().any(|p| p.key == *k));
        Ok(None)
    }

    /// SIGSTOP to every process of `seen` that is not stopped by this pause.
    fn stop_round(&mut self, seen: &[Seen]) {
        for p in seen {
            if p.stopped && self.stopped.contains(&p.key) {
                continue;
            }
            if self.table.stop(p.key) {
                self.stopped.insert(p.key);
            }
        }
    }

    fn resume(&mut self, why: Resume) -> Option<Report> {
        self.since?;
        self.since = None;
        self.stopped.clear();
        let processes = self.table.resume();
        let holders = if why == Resume::Released { Vec::new() } else { self.holders.clone() };
        Some(Report::Resumed { why, processes, holders })
    }
}

impl<T: ProcessTable> Drop for Policy<T> {
    fn drop(&mut self) {
        if self.since.is_some() {
            self.table.resume();
        }
    }
}

#[cfg(test)]
mod tests;
