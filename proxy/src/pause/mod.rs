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
pub mod procs;
mod refused;
pub mod signal;

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
use procs::{Cache, Process, Scope};
use signal::Pidfd;

/// How often the app is rescanned while paused (new processes, pending
/// termination, lease).
pub const TICK: Duration = Duration::from_millis(50);

/// How long pausing may keep retrying before it reports what it has: a
/// process in uninterruptible sleep stops only when its I/O completes.
const SETTLE: Duration = Duration::from_millis(200);

/// Why a pause ended while sessions still hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Lease,
    Terminating,
    Shutdown,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::Lease => "lease",
            Ended::Terminating => "terminating",
            Ended::Shutdown => "shutdown",
        }
    }
}

/// The pause of one pod's app, shared by every session.
#[derive(Debug)]
pub struct Pause {
    scope: Scope,
    lease: Duration,
    metrics: Arc<Metrics>,
    /// Read by the data path (probes are answered while paused).
    paused: AtomicBool,
    state: Mutex<State>,
    /// Why sessions cannot pause here at all, when they cannot.
    disabled: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    holders: Vec<(u64, Weak<Session>)>,
    /// Processes this sidecar stopped, by (pid, start time).
    stopped: HashMap<(i32, u64), Pidfd>,
    since: Option<Instant>,
    last_tick: Option<Instant>,
    ended: Option<Ended>,
    cache: Cache,
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
        Arc::new(Pause { scope, lease, metrics, paused: AtomicBool::new(false), state: Mutex::default(), disabled })
    }

    /// A pause that refuses every session, saying `why`.
    pub fn disabled(why: &str, metrics: Arc<Metrics>) -> Arc<Self> {
        Pause::new(Scope::default(), Duration::ZERO, metrics, Some(why.to_owned()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut state = self.state();
        let n = resume_stopped(&self.scope, &mut state.cache);
        if n > 0 {
            warn!(processes = n, "resumed app processes left stopped by a previous sidecar");
            self.metrics.pause_resumed("startup");
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
        match state.ended {
            Some(Ended::Terminating) => return Err(Refused::Terminating),
            Some(Ended::Shutdown) => return Err(Refused::ShuttingDown),
            Some(Ended::Lease) => return Err(Refused::Lease(self.lease)),
            None => {}
        }
        let first = state.holders.is_empty();
        if first {
            let n = self.stop(&mut state).map_err(Refused::Scope)?;
            if n == 0 {
                resume_all(&self.scope, &mut state);
                return Err(self.nothing_to_pause());
            }
            EVER_HELD.store(true, Ordering::Relaxed);
            self.mark(&mut state, Some(n));
            info!(processes = n, lease = %format_duration(self.lease), "app paused");
        }
        state.holders.push((session.seq, Arc::downgrade(session)));
        let n = state.stopped.len();
        let message = format!(
            "app paused: {n} process{} stopped; kubelet's HTTP probes not taken by a session are answered by the sidecar meanwhile; the pause ends when the last session holding it leaves, or after {} at most",
            if n == 1 { "" } else { "es" },
            format_duration(self.lease)
        );
        drop(state);
        notify(session, true, n, message);
        Ok(Hold { pause: self.clone(), seq: session.seq })
    }

    fn nothing_to_pause(&self) -> Refused {
        let which = if self.scope.app_containers.is_empty() {
            "the app".to_owned()
        } else {
            format!("container(s) {}", self.scope.app_containers.join(", "))
        };
        Refused::NothingVisible { which }
    }

    fn release(&self, seq: u64) {
        let mut state = self.state();
        state.holders.retain(|(s, _)| *s != seq);
        if !state.holders.is_empty() {
            return;
        }
        if state.ended.is_none() && state.since.is_some() {
            self.account(&mut state);
            let n = resume_all(&self.scope, &mut state);
            self.metrics.pause_resumed("released");
            info!(processes = n, "app resumed: no session holds the pause any more");
        }
        self.clear(&mut state);
    }

    fn clear(&self, state: &mut State) {
        // A lease or a termination is over with its holders; a shutdown is not.
        if state.ended != Some(Ended::Shutdown) {
            state.ended = None;
        }
        self.mark(state, None);
    }

    /// Records the app as paused with `n` processes stopped, or running:
    /// for the rescans, the data path (probes) and the metrics.
    fn mark(&self, state: &mut State, stopped: Option<usize>) {
        state.since = stopped.map(|_| Instant::now());
        state.last_tick = state.since;
        self.paused.store(stopped.is_some(), Ordering::Relaxed);
        self.metrics.paused.set(i64::from(stopped.is_some()));
        self.metrics.paused_processes.set(stopped.map_or(0, |n| n as i64));
    }

    /// Ends the pause while sessions still hold it: resumes the app, tells them.
    pub fn end(&self, why: Ended) {
        let mut state = self.state();
        self.end_locked(&mut state, why);
    }

    fn end_locked(&self, state: &mut State, why: Ended) {
        if state.ended.is_some() {
            return;
        }
        if state.since.is_none() {
            // Nothing paused: only remember that no pause may start.
            if why == Ended::Shutdown {
                state.ended = Some(why);
            }
            return;
        }
        self.account(state);
        let n = resume_all(&self.scope, state);
        state.ended = Some(why);
        self.mark(state, None);
        self.metrics.pause_resumed(why.label());
        let message = match why {
            Ended::Lease => format!("app resumed: the pause reached its lease of {}", format_duration(self.lease)),
            Ended::Terminating => {
                "app resumed: it was asked to terminate (pod deletion or rollout) and must be free to shut down"
                    .to_owned()
            }
            Ended::Shutdown => "app resumed: the sidecar is shutting down".to_owned(),
        };
        warn!(processes = n, "{message}");
        for (_, holder) in &state.holders {
            if let Some(session) = holder.upgrade() {
                notify(&session, false, 0, message.clone());
            }
        }
    }

    /// Rescans while paused: stops new processes of the app, resumes it if
    /// it was asked to terminate or the lease is over.
    pub fn tick(&self) {
        #[cfg(debug_assertions)]
        if self.is_paused() && std::env::var("MIRRORD_FAILPOINT").is_ok_and(|f| f == "panic-while-paused") {
            panic!("failpoint panic-while-paused");
        }
        let mut state = self.state();
        let Some(since) = state.since else { return };
        self.account(&mut state);
        if state.stopped.keys().any(|&(pid, _)| procs::termination_pending(pid)) {
            self.end_locked(&mut state, Ended::Terminating);
            return;
        }
        if since.elapsed() >= self.lease {
            self.end_locked(&mut state, Ended::Lease);
            return;
        }
        match self.stop_round(&mut state) {
            Ok(procs) => {
                state.stopped.retain(|key, _| procs.iter().any(|p| (p.pid, p.start) == *key));
                self.metrics.paused_processes.set(state.stopped.len() as i64);
            }
            Err(e) => warn!("cannot rescan the app's processes: {e}"),
        }
    }

    fn account(&self, state: &mut State) {
        let now = Instant::now();
        if let Some(last) = state.last_tick.replace(now) {
            self.metrics.paused_seconds.inc_by(now.duration_since(last).as_secs_f64());
        }
    }

    /// Stops every app process, rescanning until a scan finds nothing new
    /// and every one stopped (a stopped parent's children keep running, and
    /// a fork may race the scan). Returns how many are stopped.
    fn stop(&self, state: &mut State) -> Result<usize, procs::ScopeError> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let procs = self.stop_round(state)?;
            let settled = procs.iter().all(|p| p.stopped() && state.stopped.contains_key(&(p.pid, p.start)));
            if settled || Instant::now() >= deadline {
                if !settled {
                    let running = procs.iter().filter(|p| !p.stopped()).count();
                    warn!(running, "some app processes have not stopped yet; rescanning while paused");
                }
                return Ok(state.stopped.len());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// One scan: SIGSTOP to every app process not yet stopped.
    fn stop_round(&self, state: &mut State) -> Result<Vec<Process>, procs::ScopeError> {
        let procs = self.scope.app_processes(&mut state.cache)?;
        for p in &procs {
            let key = (p.pid, p.start);
            if p.stopped() && state.stopped.contains_key(&key) {
                continue;
            }
            if let Some(fd) = state.stopped.get(&key) {
                // Signalled before but not stopped (yet, or continued by someone).
                fd.signal(libc::SIGSTOP);
            } else if let Some(fd) = Pidfd::open(p.pid, p.start) {
                if fd.signal(libc::SIGSTOP) {
                    state.stopped.insert(key, fd);
                } else {
                    warn!(pid = p.pid, "cannot stop app process: {}", std::io::Error::last_os_error());
                }
            }
        }
        Ok(procs)
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if state.since.is_some() && state.ended.is_none() {
            resume_all(&self.scope, state);
        }
    }
}

/// SIGCONT to what this sidecar stopped, then to any app process still stopped.
fn resume_all(scope: &Scope, state: &mut State) -> usize {
    let mut n = 0;
    for (_, fd) in state.stopped.drain() {
        n += usize::from(fd.signal(libc::SIGCONT));
    }
    n + resume_stopped(scope, &mut state.cache)
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
                eprintln!("mirrord-proxy: panic: resumed {n} app process(es) before anything else");
            }
        }
        previous(info);
    }));
}
