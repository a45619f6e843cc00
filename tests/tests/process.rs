//! The sidecar as a process:
//! - its default worker thread count comes from its container's CPU limit: a
//!   real cgroup with a CPU quota (v2 `cpu.max`, or v1's CFS quota), the
//!   sidecar started inside it, and the count it reports and runs (root);
//! - it keeps serving when its log pipe goes away;
//! - its session tunnel runs on a thread of its own, at a lower priority.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirrord_tests::{root_or_skip, workspace_bin};

/// A cgroup of this test with a CPU quota, removed on drop (after the
/// processes in it are gone).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Under the CPU controller's hierarchy: v2 when it has the controller
    /// (and it can be enabled below the root), else v1.
    fn with_quota(cpus_times_100k: u64) -> Cgroup {
        let name = format!("mirrord-test-{}-threads-{cpus_times_100k}", std::process::id());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts: Vec<(String, String, String)> = mountinfo
            .lines()
            .filter_map(|l| {
                let (before, after) = l.split_once(" - ")?;
                let point = before.split(' ').nth(4)?.to_owned();
                let mut after = after.split(' ');
                let fstype = after.next()?.to_owned();
                Some((point, fstype, after.nth(1).unwrap_or_default().to_owned()))
            })
            .collect();
        for (point, fstype, _) in mounts.iter().filter(|(_, t, _)| t == "cgroup2") {
            let root = Path::new(point);
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "cpu") {
                continue;
            }
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            let dir = root.join(&name);
            std::fs::create_dir(&dir).unwrap();
            let cgroup = Cgroup { dir };
            if std::fs::write(cgroup.dir.join("cpu.max"), format!("{cpus_times_100k} 100000")).is_ok() {
                return cgroup;
            }
            eprintln!("{fstype} at {point}: cannot set cpu.max; trying v1");
        }
        let (point, _, _) = mounts
            .iter()
            .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|o| o == "cpu"))
            .expect("no cgroup hierarchy with the cpu controller (v2 cpu.max or v1 cpu) to test in");
        let cgroup = Cgroup { dir: Path::new(point).join(&name) };
        std::fs::create_dir(&cgroup.dir).unwrap();
        std::fs::write(cgroup.dir.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(cgroup.dir.join("cpu.cfs_quota_us"), cpus_times_100k.to_string()).unwrap();
        cgroup
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the sidecar in `cgroup` (or in the test's own) and returns its
/// log line about worker threads and the runtime's worker thread count.
fn threads_of_sidecar(cgroup: Option<&Cgroup>, extra: &[&str]) -> (String, usize) {
    let proxy = workspace_bin("mirrord-proxy");
    let join = cgroup.map_or(String::new(), |c| format!("echo $$ > '{}/cgroup.procs' && ", c.dir.display()));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{join}exec \"$0\" \"$@\""))
        .arg(&proxy)
        .args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"])
        .args(["--upstream", "127.0.0.1:9", "--insecure-no-token"])
        .args(extra)
        .env("MIRRORD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut sidecar = Sidecar(cmd.spawn().unwrap());
    // Kept open while the sidecar runs: it logs to it.
    let mut stderr = BufReader::new(sidecar.0.stderr.take().unwrap()).lines();
    let line = stderr.by_ref().map_while(Result::ok).find(|l| l.contains("worker threads")).unwrap_or_default();
    assert!(!line.is_empty(), "the sidecar said nothing about its worker threads");
    // Its workers are named so; with one thread the main thread runs
    // everything.
    let pid = sidecar.0.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let workers = loop {
        let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == "proxy-worker")
            .count();
        // Workers start one after another: wait for the count the log line
        // promises (none for one thread), or for the deadline.
        let promised = if line.contains("threads=1 ") {
            0
        } else {
            line.split("threads=").nth(1).and_then(|t| t.split(' ').next()?.parse().ok()).unwrap_or(usize::MAX)
        };
        if workers == promised || Instant::now() > deadline {
            break workers;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stderr);
    (line, workers)
}

fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[test]
fn the_cpu_limit_of_the_container_sets_the_worker_threads() {
    if !root_or_skip("the_cpu_limit_of_the_container_sets_the_worker_threads") {
        return;
    }
    // 1.5 CPUs: two threads (rounded up), within the CPUs there are.
    let cgroup = Cgroup::with_quota(150_000);
    let (line, workers) = threads_of_sidecar(Some(&cgroup), &[]);
    let want = 2.min(usable_cpus());
    assert!(line.contains(&format!("threads={want} ")), "{line}");
    assert!(line.contains("cpu_limit=1.5"), "{line}");
    assert!(line.contains(&cgroup.dir.display().to_string()), "{line}");
    assert_eq!(workers, if want > 1 { want } else { 0 }, "{line}");

    // Half a CPU: one thread, the runtime on the main thread.
    let small = Cgroup::with_quota(50_000);
    let (line, workers) = threads_of_sidecar(Some(&small), &[]);
    assert!(line.contains("threads=1 ") && line.contains("cpu_limit=0.5"), "{line}");
    assert_eq!(workers, 0);

    // --threads wins over the limit.
    let (line, _) = threads_of_sidecar(Some(&small), &["--threads", "2"]);
    assert!(line.contains("threads=2") && line.contains("--threads"), "{line}");
}

#[test]
fn the_sidecar_keeps_serving_when_its_log_pipe_is_gone() {
    let app = mirrord_tests::loopback::App::start(env!("CARGO_BIN_EXE_sample-app"));
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listen.local_addr().unwrap();
    drop(listen);
    let mut sidecar = Sidecar(
        Command::new(workspace_bin("mirrord-proxy"))
            .args(["run", "--listen", &addr.to_string(), "--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"])
            .args(["--upstream", &app.addr.to_string(), "--insecure-no-token"])
            .env("MIRRORD_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(sidecar.0.stderr.take().unwrap()).lines();
    assert!(stderr.by_ref().map_while(Result::ok).any(|l| l.contains("listening")), "the sidecar did not start");
    // The reading end closes: every log line from now on fails to write.
    drop(stderr);
    for _ in 0..20 {
        let (status, _) = mirrord_tests::http_get(addr, "/").expect("the sidecar answers");
        assert_eq!(status, 200);
    }
    assert!(sidecar.0.try_wait().unwrap().is_none(), "the sidecar exited");
}

/// The tunnel's work (copies, stolen traffic) never takes a turn of the data
/// path's thread, and yields the CPU to it: its own thread, nice +10.
#[test]
fn the_session_tunnel_runs_on_its_own_thread_below_the_data_path() {
    let mut sidecar = Sidecar(
        Command::new(workspace_bin("mirrord-proxy"))
            .args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"])
            .args(["--upstream", "127.0.0.1:9", "--insecure-no-token", "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(sidecar.0.stderr.take().unwrap()).lines();
    assert!(stderr.by_ref().map_while(Result::ok).any(|l| l.contains("session tunnel listening")), "no tunnel");
    let pid = sidecar.0.id();
    // (comm, nice) of every thread; nice is the 19th field of stat, counted
    // after the parenthesised name.
    let threads = || -> Vec<(String, i64)> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| {
                let dir = t.ok()?.path();
                let comm = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_owned();
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                let nice = stat.rsplit_once(") ")?.1.split(' ').nth(16)?.parse().ok()?;
                Some((comm, nice))
            })
            .collect()
    };
    let nice_of = |threads: &[(String, i64)], name: &str| threads.iter().find(|(comm, _)| comm == name).map(|t| t.1);
    let main = nice_of(&threads(), "mirrord-proxy").expect("the main thread");
    // (Nice values end at 19: a test run at nice 19 cannot see the step.)
    let want = Some((main + 10).min(19));
    // The thread lowers its own priority as it starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = threads();
    while nice_of(&seen, "proxy-tunnel") != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        seen = threads();
    }
    assert_eq!(nice_of(&seen, "proxy-tunnel"), want, "threads (name, nice): {seen:?}");
    drop(stderr);
}
