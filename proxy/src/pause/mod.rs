//! Pausing the app: SIGSTOP of every process of the app container(s) while
//! a session that asked for `pause` is connected, and SIGCONT on every way
//! that can end.
//!
//! Inside the sidecar: the last holder leaving (clean end, Ctrl-C, lost or
//! silent tunnel — all end in [`Hold`]'s drop), the lease running out, a
//! termination signal pending on the app (pod deletion), the sidecar's own
//! SIGTERM, a panic anywhere in it (the panic hook), and start-up (a previous
//! sidecar's leftovers). Outside it, for SIGKILL and OOM of the sidecar:
//! `mirrord-proxy guard` ([`guard`]) in its own container.

pub mod guard;
pub mod policy;
pub mod procs;
mod refused;
pub mod signal;

pub use policy::Resume;
pub use refused::Refused;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use mirrord_config::format_duration;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::proto::{self, session_event};
use crate::session::Session;
use policy::{Key, Policy, ProcessTable, Refusal, Report, Seen};
use procs::{Cache, Scope, ScopeError};
use signal::Pidfd;

/// How often the app is rescanned while paused (new processes, processes
/// someone else continued, pending termination, lease).
pub const TICK: Duration = Duration::from_millis(50);

/// The pause of one pod's app, shared by every session.
#[derive(Debug)]
pub struct Pause {
    scope: Scope,
    metrics: Arc<Metrics>,
    /// Read by the data path (probes are answered while paused).
    paused: AtomicBool,
    state: Mutex<State>,
    /// Why sessions cannot pause here at all, when they cannot.
    disabled: Option<String>,
    /// Told when a pause begins: the rescans run only while paused, and an
    /// idle sidecar is not woken for them.
    began: tokio::sync::Notify,
}

#[derive(Debug)]
struct State {
    policy: Policy<Procs>,
    /// The holders, to tell them when the pause ends under them.
    sessions: HashMap<u64, Weak<Session>>,
    /// Up to when the paused time has been counted.
    counted: Option<Instant>,
}

/// Set once a pause has been held, so the panic hook knows to act.
static EVER_HELD: AtomicBool = AtomicBool::new(false);
static HOOK_SCOPE: OnceLock<Scope> = OnceLock::new();

/// Held by a session that asked for pause; dropping it releases.
#[derive(Debug)]
pub struct Hold {
    pause: Arc<Pause>,
    seq: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.pause.release(self.seq);
    }
}

impl Pause {
    /// `disabled`: why pausing is not allowed on this pod (refused to sessions).
    pub fn new(scope: Scope, lease: Duration, metrics: Arc<Metrics>, disabled: Option<String>) -> Arc<Self> {
        let table = Procs { scope: scope.clone(), cache: Cache::default(), stopped: HashMap::new() };
        let state = State { policy: Policy::new(table, lease), sessions: HashMap::new(), counted: None };
        if disabled.is_none() {
            metrics.pause_lease.set(i64::try_from(lease.as_secs()).unwrap_or(i64::MAX));
        }
        Arc::new(Pause {
            scope,
            metrics,
            paused: AtomicBool::new(false),
            state: Mutex::new(state),
            disabled,
            began: tokio::sync::Notify::new(),
        })
    }

    /// A pause that refuses every session, saying `why`.
    pub fn disabled(why: &str, metrics: Arc<Metrics>) -> Arc<Self> {
        Pause::new(Scope::default(), Duration::ZERO, metrics, Some(why.to_owned()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `/status` says of the pause.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        if let Some(why) = &self.disabled {
            return json!({"available": false, "why": why, "paused": false});
        }
        let state = self.state();
        let lease = state.policy.lease();
        let Some(since) = state.policy.paused_since() else {
            return json!({"available": true, "paused": false, "lease_seconds": lease.as_secs()});
        };
        let paused_for = since.elapsed();
        let mut holders: Vec<String> =
            state.sessions.values().filter_map(Weak::upgrade).map(|s| s.name.clone()).collect();
        holders.sort();
        json!({
            "available": true, "paused": true,
            "paused_seconds": paused_for.as_secs(),
            "lease_left_seconds": lease.saturating_sub(paused_for).as_secs(),
            "processes": state.policy.stopped(),
            "holders": holders,
        })
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// At start-up: resumes app processes a previous sidecar left stopped
    /// (it was killed before it could, and no guard did).
    pub fn resume_leftovers(&self) -> usize {
        if self.disabled.is_some() {
            return 0;
        }
        let n = self.state().policy.table().resume();
        if n > 0 {
            warn!(processes = n, "resumed app processes left stopped by a previous sidecar");
            self.metrics.pause_resumed(crate::metrics::Resumed::Startup);
        }
        n
    }

    /// Adds a holder; the first one pauses the app. Refused with a reason
    /// when the app cannot be paused.
    pub fn hold(self: &Arc<Self>, session: &Arc<Session>) -> Result<Hold, Refused> {
        if let Some(why) = &self.disabled {
            return Err(Refused::Disabled(why.clone()));
        }
        let mut state = self.state();
        let report = state.policy.hold(session.seq, Instant::now()).map_err(|r| self.refused(&state, r))?;
        state.sessions.insert(session.seq, Arc::downgrade(session));
        self.apply(&mut state, report);
        let n = state.policy.stopped();
        let message = format!(
            "app paused: {n} process{} stopped; kubelet's HTTP probes not taken by a session are answered by the sidecar meanwhile; the pause ends when the last session holding it leaves, or after {} at most",
            if n == 1 { "" } else { "es" },
            format_duration(state.policy.lease())
        );
        drop(state);
        notify(session, true, n, message);
        Ok(Hold { pause: self.clone(), seq: session.seq })
    }

    fn refused(&self, state: &State, refusal: Refusal) -> Refused {
        match refusal {
            Refusal::Ended(Resume::Terminating) => Refused::Terminating,
            Refusal::Ended(Resume::Shutdown) => Refused::ShuttingDown,
            Refusal::Ended(Resume::Lease | Resume::Released) => Refused::Lease(state.policy.lease()),
            Refusal::Scope(e) => Refused::Scope(e),
            Refusal::CannotSignal { processes } => Refused::CannotSignal { processes },
            Refusal::NothingVisible => {
                let which = if self.scope.app_containers.is_empty() {
                    "the app".to_owned()
                } else {
                    format!("container(s) {}", self.scope.app_containers.join(", "))
                };
                Refused::NothingVisible { which }
            }
        }
    }

    fn release(&self, seq: u64) {
        let mut state = self.state();
        state.sessions.remove(&seq);
        let report = state.policy.release(seq);
        self.apply(&mut state, report);
    }

    /// Ends the pause while sessions still hold it: resumes the app, tells them.
    pub fn end(&self, why: Resume) {
        let mut state = self.state();
        let report = state.policy.end(why);
        self.apply(&mut state, report);
    }

    /// Resolves when the app is paused: at once if it is, else when a pause
    /// begins.
    pub async fn paused(&self) {
        crate::wait::until(&self.began, || self.state().policy.paused_since().is_some()).await;
    }

    /// Rescans while paused: stops new processes of the app, resumes it if
    /// it was asked to terminate or the lease is over. Whether the app is
    /// still paused after it.
    pub fn tick(&self) -> bool {
        #[cfg(debug_assertions)]
        if self.is_paused() && std::env::var("MIRRORD_FAILPOINT").is_ok_and(|f| f == "panic-while-paused") {
            panic!("failpoint panic-while-paused");
        }
        let mut state = self.state();
        if state.policy.paused_since().is_none() {
            return false;
        }
        self.count_paused_time(&mut state);
        match state.policy.tick(Instant::now()) {
            Ok(Some(report)) => self.apply(&mut state, Some(report)),
            Ok(None) => {
                self.metrics.paused_processes.set(state.policy.stopped() as i64);
            }
            Err(e) => warn!("cannot rescan the app's processes: {e}"),
        }
        state.policy.paused_since().is_some()
    }

    fn count_paused_time(&self, state: &mut State) {
        let now = Instant::now();
        if let Some(last) = state.counted.replace(now) {
            self.metrics.paused_seconds.inc_by(now.duration_since(last).as_secs_f64());
        }
    }

    /// Logs, counts and tells what a step of the policy did.
    fn apply(&self, state: &mut State, report: Option<Report>) {
        match report {
            None => {}
            Some(Report::Paused { processes }) => {
                EVER_HELD.store(true, Ordering::Relaxed);
                state.counted = Some(Instant::now());
                self.mark(Some(processes));
                self.began.notify_waiters();
                info!(processes, lease = %format_duration(state.policy.lease()), "app paused");
            }
            Some(Report::Resumed { why, processes, holders }) => {
                self.count_paused_time(state);
                state.counted = None;
                self.mark(None);
                self.metrics.pause_resumed(crate::metrics::Resumed::Pause(why));
                let message = match why {
                    Resume::Released => {
                        info!(processes, "app resumed: no session holds the pause any more");
                        return;
                    }
                    Resume::Lease => {
                        format!("app resumed: the pause reached its lease of {}", format_duration(state.policy.lease()))
                    }
                    Resume::Terminating => {
                        "app resumed: it was asked to terminate (pod deletion or rollout) and must be free to shut down"
                            .to_owned()
                    }
                    Resume::Shutdown => "app resumed: the sidecar is shutting down".to_owned(),
                };
                warn!(processes, "{message}");
                for seq in holders {
                    if let Some(session) = state.sessions.get(&seq).and_then(Weak::upgrade) {
                        notify(&session, false, 0, message.clone());
                    }
                }
            }
        }
    }

    /// Records the app as paused with `n` processes stopped, or running:
    /// for the data path (probes) and the metrics.
    fn mark(&self, stopped: Option<usize>) {
        self.paused.store(stopped.is_some(), Ordering::Relaxed);
        self.metrics.paused.set(i64::from(stopped.is_some()));
        self.metrics.pause_started.set(stopped.map_or(0, |_| crate::metrics::unix_now()));
        self.metrics.paused_processes.set(stopped.map_or(0, |n| n as i64));
    }
}

/// The app's processes in `/proc`, signalled through pidfds.
#[derive(Debug)]
struct Procs {
    scope: Scope,
    cache: Cache,
    /// Processes stopped by this pause, each through a pidfd that names
    /// exactly the process that was scanned.
    stopped: HashMap<Key, Pidfd>,
}

impl ProcessTable for Procs {
    fn scan(&mut self) -> Result<Vec<Seen>, ScopeError> {
        let procs = self.scope.app_processes(&mut self.cache)?;
        self.stopped.retain(|key, _| procs.iter().any(|p| (p.pid, p.start) == *key));
        Ok(procs
            .iter()
            .map(|p| {
                let key = (p.pid, p.start);
                let terminating = self.stopped.contains_key(&key) && procs::termination_pending(p.pid);
                Seen { key, stopped: p.stopped(), terminating }
            })
            .collect())
    }

    fn stop(&mut self, key: Key) -> bool {
        if let Some(fd) = self.stopped.get(&key) {
            return fd.signal(libc::SIGSTOP);
        }
        let Some(fd) = Pidfd::open(key.0, key.1) else { return false };
        if !fd.signal(libc::SIGSTOP) {
            warn!(pid = key.0, "cannot stop app process: {}", std::io::Error::last_os_error());
            return false;
        }
        self.stopped.insert(key, fd);
        true
    }

    fn resume(&mut self) -> usize {
        let mut n = 0;
        for (_, fd) in self.stopped.drain() {
            n += usize::from(fd.signal(libc::SIGCONT));
        }
        n + resume_stopped(&self.scope, &mut self.cache)
    }
}

/// SIGCONT to every stopped app process, and to every one a stop signal is
/// still on its way to (sent just before its sender died: SIGCONT discards
/// it). Returns how many.
pub fn resume_stopped(scope: &Scope, cache: &mut Cache) -> usize {
    let Ok(procs) = scope.app_processes(cache) else { return 0 };
    procs
        .iter()
        .filter(|p| p.stopped() || procs::stop_pending(p.pid))
        .filter_map(|p| Pidfd::open(p.pid, p.start))
        .filter(|fd| fd.signal(libc::SIGCONT))
        .count()
}

fn notify(session: &Session, paused: bool, processes: usize, message: String) {
    let state = proto::PauseState { paused, processes: u32::try_from(processes).unwrap_or(u32::MAX), message };
    session.notify(session_event::Kind::Pause(state));
}

/// A panic anywhere in the sidecar resumes the app first: if the panic ends
/// the process, nothing else would; if it does not (a connection task), the
/// next tick stops the app again while sessions still hold the pause.
pub fn install_panic_hook(scope: Scope) {
    let _ = HOOK_SCOPE.set(scope);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if EVER_HELD.load(Ordering::Relaxed) {
            if let Some(scope) = HOOK_SCOPE.get() {
                let n = resume_stopped(scope, &mut Cache::default());
                // Not eprintln!: it panics when stderr is gone.
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!("mirrord-proxy: panic: resumed {n} app process(es) before anything else\n"),
                );
            }
        }
        previous(info);
    }));
}
