//! `mirrord-proxy guard`: resumes the app when the sidecar cannot.
//!
//! Runs in its own small container of the pod (a container's processes die
//! with its main process, so nothing inside the sidecar's container survives
//! a SIGKILL or an OOM kill of it). It holds a pidfd on the sidecar and wakes
//! the moment the sidecar exits, however it exits; then resumes every
//! stopped app process. Between wake-ups it enforces, on its own, what the
//! sidecar also enforces: the pause lease (set a little longer than the
//! sidecar's, so the sidecar normally ends it first and tells the sessions)
//! and a termination signal pending on a stopped app.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mirrord_config::{format_duration, parse_duration};
use tracing::{info, warn};

use super::procs::{self, Cache, ScopeArgs};
use super::resume_stopped;
use super::signal::Pidfd;

/// Flags of `mirrord-proxy guard`.
#[derive(Debug, Clone, clap::Args)]
pub struct GuardArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// The longest the app may stay stopped. Set it a little above the
    /// sidecar's --max-pause, so that the sidecar normally ends the pause
    /// first and tells the sessions; this is the backstop when it cannot.
    #[arg(long, value_name = "DURATION", default_value = "31m", value_parser = mirrord_config::parse_lease)]
    pub max_pause: Duration,
    /// How often the app's processes are checked while any of them is
    /// stopped, and a (re)started sidecar looked for while none runs. A
    /// sidecar that paused the app and died between two looks is caught at
    /// the next one.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// How often the app's processes are checked while the sidecar is alive
    /// and none of them is stopped: only the sidecar pauses the app, and its
    /// exit wakes the guard at once, so these looks only catch a pause by a
    /// sidecar that is alive but wedged. Its lease is then counted from the
    /// first look that saw it (the guard's lease is longer by a margin well
    /// above this).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub idle_interval: Duration,
}

/// Runs until killed.
pub fn run(args: &GuardArgs) -> ! {
    let scope = args.scope.scope();
    let mut cache = Cache::default();
    let mut sidecar: Option<(i32, Pidfd)> = None;
    let mut stopped_since: HashMap<(i32, u64), Instant> = HashMap::new();
    info!(max_pause = %format_duration(args.max_pause), "guard started");
    loop {
        if sidecar.is_none() {
            sidecar = find_sidecar();
            if let Some((pid, _)) = &sidecar {
                info!(pid, "watching the sidecar");
            }
        }
        match &sidecar {
            Some((pid, fd)) => {
                let look_in = if stopped_since.is_empty() { args.idle_interval } else { args.interval };
                if fd.wait_exit(look_in) {
                    let n = resume_stopped(&scope, &mut cache);
                    warn!(pid, resumed = n, "the sidecar exited; resumed the app's stopped processes");
                    sidecar = None;
                    stopped_since.clear();
                    continue;
                }
            }
            None => std::thread::sleep(args.interval),
        }
        let Ok(app) = scope.app_processes(&mut cache) else { continue };
        let now = Instant::now();
        stopped_since.retain(|key, _| app.iter().any(|p| p.stopped() && (p.pid, p.start) == *key));
        for p in app.iter().filter(|p| p.stopped()) {
            stopped_since.entry((p.pid, p.start)).or_insert(now);
        }
        if sidecar.is_none() && !stopped_since.is_empty() {
            // A sidecar started since the last look may have paused the app.
            sidecar = find_sidecar();
        }
        let reason = if sidecar.is_none() && !stopped_since.is_empty() {
            Some("no sidecar is running")
        } else if app.iter().any(|p| p.stopped() && procs::termination_pending(p.pid)) {
            Some("the app was asked to terminate")
        } else if stopped_since.values().any(|t| now.duration_since(*t) > args.max_pause) {
            Some("the pause outlasted its lease")
        } else {
            None
        };
        if let Some(reason) = reason {
            let n = resume_stopped(&scope, &mut cache);
            warn!(resumed = n, "{reason}: resumed the app's stopped processes");
            stopped_since.clear();
        }
    }
}

/// The sidecar (`mirrord-proxy run`) in the shared PID namespace.
fn find_sidecar() -> Option<(i32, Pidfd)> {
    procs::pids()
        .ok()?
        .filter(|&pid| procs::command(pid).is_some_and(|(program, sub)| program == "mirrord-proxy" && sub == "run"))
        .find_map(|pid| Pidfd::open_pid(pid).map(|fd| (pid, fd)))
}
