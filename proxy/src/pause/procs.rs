//! The app's processes, as the pod's shared PID namespace shows them.
//!
//! Every container of a pod with `shareProcessNamespace: true` sees every
//! other container's processes in `/proc`. Which container a process belongs
//! to is told by its cgroup (one per container). A cgroup is "the app" unless
//! it is PID 1's (the sandbox's pause process), the reader's own, or that of
//! another mirrord container (the guard, or the sidecar seen from the guard).
//! On Kubernetes each container also has its own bind mount of
//! `/var/lib/kubelet/pods/<uid>/containers/<name>/…` (the termination log),
//! which names the container; when names are found, only the named app
//! containers count.
//!
//! Everything read here (`stat`, `status`, `cgroup`, `cmdline`, `mountinfo`)
//! is world-readable, so the sidecar needs no ptrace rights, only CAP_KILL
//! (or the app's uid) to signal.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;

use mirrord_config::names::{ENV_APP_CONTAINERS, INJECTED_CONTAINERS};

/// Signals a pod deletion (or `kubectl delete`, or a rolling update) sends to
/// ask a container to stop: pending on a stopped process, they mean "resume now".
pub const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// One process, as read from `/proc/<pid>`.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: i32,
    /// `R`, `S`, `D`, `T` (stopped), `t` (traced), `Z`, …
    pub state: char,
    /// Start time in clock ticks since boot: with the pid, names the process
    /// uniquely (a pid can be reused, the pair cannot).
    pub start: u64,
    pub cgroup: Arc<str>,
}

impl Process {
    pub fn stopped(&self) -> bool {
        self.state == 'T'
    }
}

/// `(state, start time)` from `/proc/<pid>/stat`, `None` once it is gone.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name is in parentheses and may itself contain ") ".
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 of stat; the state is field 3.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Signals pending on the process (thread-directed and shared), as a mask
/// with bit `n - 1` for signal `n`.
pub fn pending_signals(pid: i32) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    parse_pending(&text)
}

fn parse_pending(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| l.strip_prefix("SigPnd:").or_else(|| l.strip_prefix("ShdPnd:")))
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .fold(0, |acc, m| acc | m)
}

/// Whether a stop signal was sent but not yet acted on (the process still
/// shows as running): it will stop unless SIGCONT comes first.
pub fn stop_pending(pid: i32) -> bool {
    pending_signals(pid) & (1u64 << (libc::SIGSTOP - 1)) != 0
}

/// Whether one of [`TERMINATION_SIGNALS`] waits on the process.
pub fn termination_pending(pid: i32) -> bool {
    let mask = pending_signals(pid);
    TERMINATION_SIGNALS.iter().any(|&s| mask & (1u64 << (s - 1)) != 0)
}

fn cgroup(pid: &str) -> Option<Arc<str>> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().map(Arc::from)
}

/// The Kubernetes container name of a process, from its mounts.
fn container_name(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    text.lines().find_map(container_in_mount)
}

/// The container name in one mountinfo line whose root (field 4) is a
/// kubelet per-container path: `…/pods/<uid>/containers/<name>/<id>`.
fn container_in_mount(line: &str) -> Option<String> {
    let root = line.split(' ').nth(3)?;
    let (_, after) = root.split_once("/pods/")?;
    let (_uid, after) = after.split_once("/containers/")?;
    let (name, _) = after.split_once('/')?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// The program's file name and its first argument.
pub fn command(pid: i32) -> Option<(String, String)> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|&b| b == 0);
    let program = args.next()?;
    let base = program.rsplit(|&b| b == b'/').next().unwrap_or_default();
    let first = args.next().unwrap_or_default();
    Some((String::from_utf8_lossy(base).into_owned(), String::from_utf8_lossy(first).into_owned()))
}

/// Whether a process is a mirrord-proxy (`run` or `guard`).
fn is_mirrord(pid: i32) -> bool {
    command(pid).is_some_and(|(program, sub)| program == "mirrord-proxy" && (sub == "run" || sub == "guard"))
}

/// Which processes are the app's.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Container names that are the app; empty: every container not mirrord's.
    pub app_containers: Vec<String>,
}

/// `--app-containers`, shared by `run` and `guard`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ScopeArgs {
    /// Containers that are the app, for pause (comma-separated); empty: every
    /// container of the pod that is not mirrord's.
    #[arg(long, env = ENV_APP_CONTAINERS, value_delimiter = ',', value_name = "NAMES")]
    pub app_containers: Vec<String>,
}

impl ScopeArgs {
    pub fn scope(&self) -> Scope {
        Scope { app_containers: self.app_containers.iter().filter(|s| !s.is_empty()).cloned().collect() }
    }
}

/// What is known of a cgroup (a container): its name does not change while
/// the container lives, so it is looked up once.
#[derive(Debug, Clone)]
struct Group {
    name: Option<String>,
}

/// Per-cgroup lookups, kept between scans.
#[derive(Debug, Default)]
pub struct Cache {
    groups: HashMap<Arc<str>, Group>,
}

/// Why the app's processes cannot be known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "this process sees the node's processes (hostPID): pausing by process namespace would stop far more than the app"
    )]
    HostPidNamespace,
    #[error("cannot read /proc: {0}")]
    Proc(String),
}

impl Scope {
    /// The app's live processes (zombies excluded).
    pub fn app_processes(&self, cache: &mut Cache) -> Result<Vec<Process>, ScopeError> {
        let all = all_processes()?;
        if all.iter().any(|p| p.pid == 2 && comm(2).as_deref() == Some("kthreadd")) {
            return Err(ScopeError::HostPidNamespace);
        }
        let own = cgroup("self");
        let sandbox = all.iter().find(|p| p.pid == 1).map(|p| p.cgroup.clone());
        let mut mirrord = std::collections::HashSet::new();
        for p in &all {
            if is_mirrord(p.pid) {
                mirrord.insert(p.cgroup.clone());
            }
            if !cache.groups.contains_key(&p.cgroup) {
                cache.groups.insert(p.cgroup.clone(), Group { name: container_name(p.pid) });
            }
        }
        cache.groups.retain(|k, _| all.iter().any(|p| &p.cgroup == k));
        let names_known = cache.groups.values().any(|g| g.name.is_some());
        let is_app = |p: &Process| {
            if p.pid == 1 || Some(&p.cgroup) == own.as_ref() || Some(&p.cgroup) == sandbox.as_ref() {
                return false;
            }
            let Some(group) = cache.groups.get(&p.cgroup) else { return false };
            if mirrord.contains(&p.cgroup) {
                return false;
            }
            match (&group.name, names_known) {
                (Some(name), _) if INJECTED_CONTAINERS.contains(&name.as_str()) => false,
                (Some(name), _) => self.app_containers.is_empty() || self.app_containers.contains(name),
                // On Kubernetes every container is named; an unnamed one is not an app container.
                (None, true) => false,
                (None, false) => true,
            }
        };
        Ok(all.iter().filter(|p| is_app(p)).cloned().collect())
    }
}

fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

/// The pids `/proc` lists.
pub fn pids() -> std::io::Result<impl Iterator<Item = i32>> {
    Ok(fs::read_dir("/proc")?.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())))
}

/// Every live process of the namespace.
fn all_processes() -> Result<Vec<Process>, ScopeError> {
    let mut out = Vec::new();
    for pid in pids().map_err(|e| ScopeError::Proc(e.to_string()))? {
        // A process may exit between the listing and these reads: skip it.
        let Some(cgroup) = cgroup(&pid.to_string()) else { continue };
        let Some((state, start)) = stat(pid) else { continue };
        if matches!(state, 'Z' | 'X' | 'x') {
            continue;
        }
        out.push(Process { pid, state, start, cgroup });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_names() {
        let line = "4242 (my) app (x)) T 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('T', 987654)));
        assert_eq!(parse_stat("1 (init"), None);
    }

    #[test]
    fn pending_masks_combine_thread_and_shared() {
        let status = "Name:\tapp\nSigQ:\t1/100\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000004000\nSigBlk:\t0\n";
        assert_eq!(parse_pending(status), 1 << (libc::SIGTERM - 1));
        assert_eq!(parse_pending("SigPnd:\tzz\n"), 0);
    }

    #[test]
    fn container_names_from_kubelet_mounts() {
        let own_fs = "1204 1180 259:1 /var/lib/kubelet/pods/5f1c-9a/containers/app/3b8e1f2a /dev/termination-log rw,relatime - ext4 /dev/root rw";
        assert_eq!(container_in_mount(own_fs).as_deref(), Some("app"));
        let separate_fs =
            "88 70 8:3 /pods/5f1c-9a/containers/istio-proxy/0a1b /dev/termination-log rw - xfs /dev/sdb rw";
        assert_eq!(container_in_mount(separate_fs).as_deref(), Some("istio-proxy"));
        let hosts = "90 70 8:3 /pods/5f1c-9a/etc-hosts /etc/hosts rw - xfs /dev/sdb rw";
        assert_eq!(container_in_mount(hosts), None);
        assert_eq!(container_in_mount("22 27 0:21 / /proc rw - proc proc rw"), None);
    }

    #[test]
    fn own_process_is_never_the_app() {
        let procs = Scope::default().app_processes(&mut Cache::default());
        // On a machine whose PID 2 is kthreadd this refuses; elsewhere the
        // test process itself is excluded by its own cgroup.
        match procs {
            Err(ScopeError::HostPidNamespace) => {}
            Ok(procs) => assert!(procs.iter().all(|p| p.pid != std::process::id() as i32)),
            Err(e) => panic!("{e}"),
        }
    }
}
