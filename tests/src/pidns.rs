//! A pod's shared process namespace (`shareProcessNamespace: true`): PID 1
//! is a reaper, as the sandbox's pause process is; each container is a
//! process tree in its own cgroup, inside the pod's network and PID
//! namespaces. A container can also be "named" the way kubelet names it to
//! its processes: a bind mount of `…/pods/<uid>/containers/<name>/<id>`.
//! Killing PID 1 ends every process of the namespace (the kernel does).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::workspace_bin;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The process namespace and the containers in it.
#[derive(Debug)]
pub struct Processes {
    sandbox: Child,
    /// Host pid of the namespace's PID 1.
    pub pid1: u32,
    cgroups: PathBuf,
    pod_ns: String,
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

/// One container: its cgroup.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub cgroup: PathBuf,
}

impl Container {
    /// Host pids of its processes.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.cgroup.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// `(pid, state)` of its live processes.
    pub fn states(&self) -> Vec<(u32, char)> {
        self.pids().into_iter().filter_map(|p| state(p).map(|s| (p, s))).filter(|(_, s)| *s != 'Z').collect()
    }

    /// Whether it has processes and every one is stopped.
    pub fn all_stopped(&self) -> bool {
        let states = self.states();
        !states.is_empty() && states.iter().all(|(_, s)| *s == 'T')
    }

    /// Whether none of its processes is stopped.
    pub fn none_stopped(&self) -> bool {
        self.states().iter().all(|(_, s)| *s != 'T')
    }

    /// Polls `cond` every 200 µs; how long it took, `None` past `within`.
    pub fn wait(&self, within: Duration, cond: impl Fn(&Container) -> bool) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if cond(self) {
                return Some(start.elapsed());
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A process's state letter from the host's /proc.
pub fn state(pid: u32) -> Option<char> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..].split_ascii_whitespace().next()?.chars().next()
}

/// The mount point of a cgroup hierarchy processes can be moved in: the
/// unified (v2) one when there is one, else the v1 `pids` controller.
fn cgroup_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    let find = |pred: &dyn Fn(&[&str]) -> bool| {
        mounts.lines().map(|l| l.split(' ').collect::<Vec<_>>()).find(|f| f.len() > 3 && pred(f)).map(|f| f[1].into())
    };
    find(&|f| f[2] == "cgroup2")
        .or_else(|| find(&|f| f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids")))
        .expect("no cgroup hierarchy to put containers in")
}

impl Processes {
    /// PID 1 of a new PID namespace, in the pod's network namespace.
    pub fn new(pod_ns: &str) -> Processes {
        let cgroups =
            cgroup_root().join(format!("mirrord-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&cgroups).expect("create the pod's cgroup");
        let sandbox = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{pod_ns}"))
            .args(["--", "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(workspace_bin("pod-sandbox"))
            .stdin(Stdio::null())
            // unshare complains when PID 1 is killed at the end.
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        // unshare forks PID 1 and waits for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid1 = loop {
            let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", sandbox.id())).unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse().ok()) {
                if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "pod-sandbox") {
                    break pid;
                }
            }
            assert!(Instant::now() < deadline, "PID 1 of the pod did not start");
            std::thread::sleep(Duration::from_millis(5));
        };
        let dir = tempfile::tempdir().expect("tempdir");
        Processes { sandbox, pid1, cgroups, pod_ns: pod_ns.to_owned(), dir, children: Vec::new() }
    }

    /// Starts `program` as (or in) container `name`, in its own cgroup. With
    /// `named`, its processes carry kubelet's per-container mount.
    pub fn spawn(&mut self, name: &str, named: bool, env: &[(&str, &str)], program: &str, args: &[&str]) -> Container {
        self.spawn_mounted(name, named, env, program, args, &[])
    }

    /// [`Processes::spawn`] with volumes: each `(source, target)` is bind
    /// mounted at `target` in the container's own mount namespace. Targets
    /// live under `/run` (`/var/run`), which the container sees as its own
    /// tmpfs, so nothing is made on the machine.
    pub fn spawn_mounted(
        &mut self,
        name: &str,
        named: bool,
        env: &[(&str, &str)],
        program: &str,
        args: &[&str],
        mounts: &[(&Path, &str)],
    ) -> Container {
        let cgroup = self.cgroups.join(name);
        fs::create_dir_all(&cgroup).expect("container cgroup");
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path(name)).expect("log file");
        let mut script = String::from("echo 0 > \"$CG/cgroup.procs\" || exit 97; ");
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.pid1.to_string()).args(["--pid", "--mount"]);
        cmd.arg(format!("--net=/run/netns/{}", self.pod_ns)).arg("--");
        if named {
            let id = format!("{:08x}", NEXT.fetch_add(1, Ordering::Relaxed));
            let source = self.dir.path().join(format!("pods/5f1c-0d2e/containers/{name}/{id}"));
            fs::create_dir_all(source.parent().expect("parent")).expect("kubelet dir");
            fs::write(&source, "").expect("termination log");
            let target = self.dir.path().join(format!("termination-log-{id}"));
            fs::write(&target, "").expect("mount point");
            script.push_str(&format!("mount --bind '{}' '{}' || exit 98; ", source.display(), target.display()));
        }
        if !mounts.is_empty() {
            script.push_str("mount -t tmpfs pod-run /run || exit 96; ");
            for (source, target) in mounts {
                assert!(
                    target.starts_with("/run/") || target.starts_with("/var/run/"),
                    "volume target {target} not under /run"
                );
                script.push_str(&format!(
                    "mkdir -p '{target}' && mount --bind '{}' '{target}' || exit 95; ",
                    source.display()
                ));
            }
        }
        if named || !mounts.is_empty() {
            cmd.args(["unshare", "--mount", "--propagation", "private"]);
        }
        // Like a container's main process, a child of the namespace's PID 1
        // once started (nsenter's own process would otherwise stay its
        // parent, and stop itself whenever its child is stopped).
        script.push_str("exec setsid -f \"$@\"");
        cmd.args(["sh", "-c", &script, "sh", program]).args(args).env("CG", &cgroup);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("fd")).stderr(log).spawn().expect("nsenter");
        self.children.push((name.to_owned(), child));
        let container = Container { name: name.to_owned(), cgroup };
        container.wait(Duration::from_secs(5), |c| !c.pids().is_empty()).expect("the container's process started");
        container
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Waits until the log of container `name` contains `text`; fails with
    /// the log after `within`.
    pub fn wait_log(&self, name: &str, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log(name).contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in the log of {name}:\n{}", self.log(name));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the namespace's PID 1: the kernel then kills
        // every other process of the namespace.
        unsafe { libc::kill(self.pid1 as libc::pid_t, libc::SIGKILL) };
        let _ = self.sandbox.wait();
        let mut children = std::mem::take(&mut self.children);
        for (name, child) in &mut children {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("---- {name} log ----\n{}", self.log(name));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut dirs: Vec<PathBuf> = fs::read_dir(&self.cgroups)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        dirs.push(self.cgroups.clone());
        for dir in dirs {
            while fs::remove_dir(&dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
