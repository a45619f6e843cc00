//! Randomized sequences of sessions, app processes and faults against the
//! policy over a simulated process table, each step checked against an
//! independent model of what must hold.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::*;

const LEASE: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(50);

/// One simulated process.
#[derive(Debug, Clone, Default)]
struct P {
    stopped: bool,
    /// A SIGSTOP waits for the end of an uninterruptible sleep.
    stop_pending: bool,
    /// In uninterruptible sleep: a stop takes effect only when it ends.
    busy: bool,
    /// A termination signal waits on it.
    term: bool,
    /// May not be signalled by the sidecar (another user, no CAP_KILL).
    protected: bool,
}

#[derive(Debug, Default)]
struct World {
    procs: BTreeMap<Key, P>,
    next_pid: i32,
    /// `/proc` cannot be read.
    unreadable: bool,
    /// What the sidecar stopped since its last resume (continued by someone
    /// else or not).
    stopped_by_pause: BTreeSet<Key>,
}

impl World {
    fn spawn(&mut self, protected: bool) {
        self.next_pid += 1;
        let key = (self.next_pid, 1000 + self.next_pid as u64);
        self.procs.insert(key, P { protected, ..P::default() });
    }

    /// Stopped, or about to stop.
    fn any_held(&self) -> bool {
        self.procs.values().any(|p| p.stopped || p.stop_pending)
    }

    /// Every process the sidecar may signal is stopped or about to.
    fn all_held(&self) -> bool {
        self.procs.values().all(|p| p.protected || p.stopped || p.stop_pending)
    }

    fn signallable(&self) -> usize {
        self.procs.values().filter(|p| !p.protected).count()
    }

    fn continue_all(&mut self) -> usize {
        let mut n = 0;
        for p in self.procs.values_mut() {
            if p.stopped || p.stop_pending {
                n += 1;
            }
            p.stopped = false;
            p.stop_pending = false;
        }
        n
    }
}

#[derive(Debug, Clone, Default)]
struct Sim(Rc<RefCell<World>>);

impl ProcessTable for Sim {
    fn scan(&mut self) -> Result<Vec<Seen>, ScopeError> {
        let w = self.0.borrow();
        if w.unreadable {
            return Err(ScopeError::Proc("simulated".into()));
        }
        Ok(w.procs.iter().map(|(&key, p)| Seen { key, stopped: p.stopped, terminating: p.term }).collect())
    }

    fn stop(&mut self, key: Key) -> bool {
        let mut w = self.0.borrow_mut();
        let Some(p) = w.procs.get_mut(&key) else { return false };
        if p.protected {
            return false;
        }
        if p.busy {
            p.stop_pending = true;
        } else {
            p.stopped = true;
        }
        w.stopped_by_pause.insert(key);
        true
    }

    fn resume(&mut self) -> usize {
        let mut w = self.0.borrow_mut();
        w.stopped_by_pause.clear();
        w.continue_all()
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }
}

/// What the model expects, kept apart from the policy's own state.
#[derive(Debug, Default)]
struct Model {
    holders: BTreeSet<u64>,
    paused_at: Option<Instant>,
    /// The pause ended under its holders; holds are refused until they leave.
    ended: Option<Resume>,
}

#[derive(Debug, Default)]
struct Counts {
    ops: [usize; 13],
    holds: usize,
    refused: usize,
    resumed: BTreeMap<&'static str, usize>,
}

const OPS: [&str; 13] = [
    "hold",
    "release",
    "tick",
    "fork",
    "exit",
    "foreign SIGCONT",
    "I/O ends",
    "I/O starts",
    "termination signal",
    "time passes",
    "/proc unreadable",
    "sidecar shutdown",
    "sidecar killed",
];

fn run_sequence(rng: &mut Rng, counts: &mut Counts) -> Result<(), String> {
    let sim = Sim::default();
    let w = &sim.0;
    for _ in 0..rng.below(4) {
        w.borrow_mut().spawn(rng.below(20) == 0);
    }
    let mut policy = Policy::new(sim.clone(), LEASE);
    let mut model = Model::default();
    let mut now = Instant::now();
    let mut seq = 0;
    let steps = 1 + rng.below(60);
    for step in 0..steps {
        let op = match rng.below(100) {
            0..=17 => 0,
            18..=31 => 1,
            32..=61 => 2,
            62..=67 => 3,
            68..=71 => 4,
            72..=76 => 5,
            77..=80 => 6,
            81..=84 => 7,
            85..=87 => 8,
            88..=93 => 9,
            94..=95 => 10,
            96..=97 => 11,
            _ => 12,
        };
        counts.ops[op] += 1;
        macro_rules! fail {
            ($($what:tt)*) => {
                return Err(format!("step {step} ({}): {}; world {:?}; model {model:?}", OPS[op], format!($($what)*), w.borrow()))
            };
        }
        match op {
            0 => {
                seq += 1;
                let first = model.holders.is_empty();
                let (visible, signallable, unreadable) = {
                    let w = w.borrow();
                    (w.procs.len(), w.signallable(), w.unreadable)
                };
                let result = policy.hold(seq, now);
                let expected = match (model.ended, first) {
                    (Some(why), _) => Err(Refusal::Ended(why)),
                    (None, false) => Ok(None),
                    (None, true) if unreadable => Err(Refusal::Scope(ScopeError::Proc("simulated".into()))),
                    (None, true) if visible == 0 => Err(Refusal::NothingVisible),
                    (None, true) if signallable == 0 => Err(Refusal::CannotSignal { processes: visible }),
                    (None, true) => Ok(Some(Report::Paused { processes: signallable })),
                };
                if result != expected {
                    fail!("hold gave {result:?}, expected {expected:?}");
                }
                match result {
                    Ok(_) => {
                        counts.holds += 1;
                        if first {
                            model.paused_at = Some(now);
                        }
                        model.holders.insert(seq);
                    }
                    Err(_) => counts.refused += 1,
                }
            }
            1 => {
                let holders: Vec<u64> = model.holders.iter().copied().collect();
                let Some(s) = rng.pick(&holders) else { continue };
                model.holders.remove(&s);
                let report = policy.release(s);
                if model.holders.is_empty() {
                    let paused = model.paused_at.take().is_some();
                    match (&report, paused) {
                        (Some(Report::Resumed { why: Resume::Released, holders, .. }), true) if holders.is_empty() => {
                            count_resume(counts, Resume::Released)
                        }
                        (None, false) => {}
                        _ => fail!("last release gave {report:?}"),
                    }
                    if model.ended != Some(Resume::Shutdown) {
                        model.ended = None;
                    }
                } else if report.is_some() {
                    fail!("a release with holders left gave {report:?}");
                }
            }
            2 => {
                now += TICK;
                let term_on_stopped = {
                    let w = w.borrow();
                    w.procs.iter().any(|(k, p)| p.term && w.stopped_by_pause.contains(k))
                };
                let unreadable = w.borrow().unreadable;
                let report = policy.tick(now);
                match (model.paused_at, unreadable) {
                    (None, _) => {
                        if !matches!(report, Ok(None)) {
                            fail!("a tick while running gave {report:?}");
                        }
                    }
                    (Some(_), true) => {
                        if report.is_ok() {
                            fail!("a tick over an unreadable /proc gave {report:?}");
                        }
                    }
                    (Some(since), false) => {
                        let why = if term_on_stopped {
                            Some(Resume::Terminating)
                        } else if now - since >= LEASE {
                            Some(Resume::Lease)
                        } else {
                            None
                        };
                        match (why, report) {
                            (None, Ok(None)) => {
                                if !w.borrow().all_held() {
                                    fail!("after a tick while paused, some process runs");
                                }
                            }
                            (Some(why), Ok(Some(Report::Resumed { why: got, holders, .. })))
                                if got == why && holders == model.holders.iter().copied().collect::<Vec<_>>() =>
                            {
                                count_resume(counts, why);
                                model.paused_at = None;
                                model.ended = Some(why);
                            }
                            (why, got) => fail!("tick: expected resume {why:?}, got {got:?}"),
                        }
                    }
                }
            }
            3 => w.borrow_mut().spawn(rng.below(30) == 0),
            4 => {
                let keys: Vec<Key> = w.borrow().procs.keys().copied().collect();
                if let Some(k) = rng.pick(&keys) {
                    w.borrow_mut().procs.remove(&k);
                }
            }
            5 => {
                w.borrow_mut().continue_all();
            }
            6 => {
                for p in w.borrow_mut().procs.values_mut() {
                    p.busy = false;
                    if std::mem::take(&mut p.stop_pending) {
                        p.stopped = true;
                    }
                }
            }
            7 => {
                let keys: Vec<Key> = w.borrow().procs.keys().copied().collect();
                if let Some(k) = rng.pick(&keys) {
                    w.borrow_mut().procs.get_mut(&k).unwrap().busy = true;
                }
            }
            8 => {
                let keys: Vec<Key> = w.borrow().procs.keys().copied().collect();
                if let Some(k) = rng.pick(&keys) {
                    w.borrow_mut().procs.get_mut(&k).unwrap().term = true;
                }
            }
            9 => now += if rng.below(4) == 0 { LEASE } else { Duration::from_millis(rng.below(20_000)) },
            10 => {
                let mut w = w.borrow_mut();
                w.unreadable = !w.unreadable;
            }
            11 => {
                // SIGTERM to the sidecar: the pause ends for good, then its
                // sessions go, then the process; the container restarts.
                let report = policy.end(Resume::Shutdown);
                match (report, model.paused_at.take()) {
                    (None, None) => {}
                    (Some(Report::Resumed { why: Resume::Shutdown, holders, .. }), Some(_))
                        if holders == model.holders.iter().copied().collect::<Vec<_>>() =>
                    {
                        count_resume(counts, Resume::Shutdown)
                    }
                    (report, _) => fail!("shutdown gave {report:?}"),
                }
                if w.borrow().any_held() {
                    fail!("the app is still stopped after the shutdown resumed it");
                }
                if policy.hold(u64::MAX, now) != Err(Refusal::Ended(Resume::Shutdown)) {
                    fail!("a hold during the shutdown was not refused");
                }
                for s in std::mem::take(&mut model.holders) {
                    if let Some(report) = policy.release(s) {
                        fail!("a release after the shutdown gave {report:?}");
                    }
                }
                drop(policy);
                policy = restart(&sim);
                model = Model::default();
            }
            _ => {
                // SIGKILL or OOM of the sidecar: nothing of it runs; the guard
                // resumes every stopped process; the container restarts.
                std::mem::forget(policy);
                w.borrow_mut().continue_all();
                w.borrow_mut().stopped_by_pause.clear();
                policy = restart(&sim);
                model = Model::default();
            }
        }
        if model.holders.is_empty() && w.borrow().any_held() {
            fail!("no session holds the pause and a process is stopped");
        }
        if model.paused_at.is_none() && w.borrow().any_held() {
            fail!("the pause is over and a process is stopped");
        }
        if policy.paused_since() != model.paused_at {
            fail!("policy paused since {:?}", policy.paused_since());
        }
    }
    // Every session leaves: nothing stays stopped.
    for s in std::mem::take(&mut model.holders) {
        policy.release(s);
    }
    if w.borrow().any_held() {
        return Err(format!("the last session left and the app is still stopped: {:?}", w.borrow()));
    }
    Ok(())
}

/// A sidecar (re)starting: resumes what a previous one left stopped.
fn restart(sim: &Sim) -> Policy<Sim> {
    let mut policy = Policy::new(sim.clone(), LEASE);
    policy.table().resume();
    policy
}

fn count_resume(counts: &mut Counts, why: Resume) {
    *counts.resumed.entry(why.label()).or_default() += 1;
}

#[test]
fn randomized_sequences_keep_the_pause_promises() {
    let seed = std::env::var("MIRRORD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let sequences = 10_000;
    let mut rng = Rng(seed);
    let mut counts = Counts::default();
    for n in 0..sequences {
        if let Err(e) = run_sequence(&mut rng, &mut counts) {
            panic!("sequence {n} (MIRRORD_TEST_SEED={seed}): {e}");
        }
    }
    let ops: Vec<String> = OPS.iter().zip(counts.ops).map(|(name, n)| format!("{n} {name}")).collect();
    eprintln!(
        "{sequences} sequences (MIRRORD_TEST_SEED={seed}): {}; {} holds, {} refused; resumed {:?}",
        ops.join(", "),
        counts.holds,
        counts.refused,
        counts.resumed
    );
    // Every path was taken.
    assert!(counts.ops.iter().all(|&n| n > 100), "{:?}", counts.ops);
    for why in ["released", "lease", "terminating", "shutdown"] {
        assert!(counts.resumed.get(why).copied().unwrap_or(0) > 10, "few resumes by {why}: {:?}", counts.resumed);
    }
    assert!(counts.refused > 100 && counts.holds > 1000);
}
