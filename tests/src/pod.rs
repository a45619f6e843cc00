//! A pod built from Linux primitives. Everything it creates (namespaces,
//! veth link, processes) is removed on drop, also when a test fails.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::{netns, workspace_bin};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Which side of the veth link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Inside the pod: the app, the init container, the sidecar.
    Pod,
    /// The node: where cluster traffic to the pod comes from.
    Node,
}

/// A simulated pod and the node it hangs off.
#[derive(Debug)]
pub struct Pod {
    pub pod_ns: String,
    pub node_ns: String,
    pub pod_ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    pub pod_ip6: Ipv6Addr,
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

impl Pod {
    /// Creates the namespaces and the veth link with IPv4 and IPv6 addresses.
    #[allow(clippy::new_without_default)] // creating namespaces is no default
    pub fn new() -> Pod {
        let idx = (std::process::id() as usize * 31 + NEXT.fetch_add(1, Ordering::Relaxed)) % 16000;
        let base = (idx * 4) as u32;
        let (a, b) = ((base >> 8) as u8, (base & 0xff) as u8);
        let pod = Pod {
            pod_ns: format!("mrd-pod-{idx}"),
            node_ns: format!("mrd-node-{idx}"),
            node_ip: Ipv4Addr::new(10, 213, a, b + 1),
            pod_ip: Ipv4Addr::new(10, 213, a, b + 2),
            pod_ip6: format!("fd6d:6972:0:{idx:x}::2").parse().expect("valid IPv6"),
            dir: tempfile::tempdir().expect("tempdir"),
            children: Vec::new(),
        };
        for ns in [&pod.pod_ns, &pod.node_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (veth_pod, veth_node) = (format!("vp{idx}"), format!("vn{idx}"));
        run(&[
            "ip",
            "-n",
            &pod.pod_ns,
            "link",
            "add",
            &veth_pod,
            "type",
            "veth",
            "peer",
            "name",
            &veth_node,
            "netns",
            &pod.node_ns,
        ]);
        for (ns, dev, v4, v6) in [
            (&pod.pod_ns, &veth_pod, pod.pod_ip, pod.pod_ip6.to_string()),
            (&pod.node_ns, &veth_node, pod.node_ip, format!("fd6d:6972:0:{idx:x}::1")),
        ] {
            run(&["ip", "-n", ns, "addr", "add", &format!("{v4}/30"), "dev", dev]);
            run(&["ip", "-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pod
    }

    fn ns(&self, side: Side) -> &str {
        match side {
            Side::Pod => &self.pod_ns,
            Side::Node => &self.node_ns,
        }
    }

    /// Runs a command to completion in a namespace.
    pub fn exec(&self, side: Side, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.ns(side), program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
    }

    /// Starts a long-running process in a namespace, logging to a file that
    /// is printed if the test fails. Returns its pid. It leads a process
    /// group of its own, which is killed whole on drop: whatever it forked
    /// (`unshare --fork`'s child, a shell's jobs) ends with it.
    pub fn spawn(&mut self, side: Side, name: &str, program: &str, args: &[&str]) -> u32 {
        let log = fs::File::create(self.log_path(name)).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns(side), program])
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        pid
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The log of a process started with [`Pod::spawn`].
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Waits for a spawned process to exit, at most `within`.
    pub fn wait_exit(&mut self, name: &str, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        let child = &mut self.children.iter_mut().find(|(n, _)| n == name)?.1;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `mirrord-proxy init` in the pod, as the init container does.
    pub fn init(&self, args: &[&str]) -> Output {
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        let out = self.exec(Side::Pod, workspace_bin("mirrord-proxy").to_str().expect("utf-8 path"), &all);
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Starts the sample app in the pod with its flags; waits until `ready` listens.
    pub fn start_app(&mut self, args: &[&str], ready: SocketAddr) {
        let bin = workspace_bin("sample-app");
        self.spawn(Side::Pod, "app", bin.to_str().expect("utf-8 path"), args);
        netns::wait_listening(&self.pod_ns, ready, Duration::from_secs(10)).expect("app listening");
    }

    /// Starts the sidecar in the pod (redirect mode) and waits for `/ready`.
    pub fn start_sidecar(&mut self, args: &[&str]) -> u32 {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        // Sessions in the simulation are about routing; the token has its
        // own tests (opt_in, cluster), which pass --token-file.
        if !args.contains(&"--token-file") {
            all.push("--insecure-no-token");
        }
        // As in a pod with a CPU limit above one: two worker threads, each
        // accepting and serving its share (one thread has the loopback
        // tests).
        if !args.contains(&"--threads") {
            all.extend(["--threads", "2"]);
        }
        let bin = workspace_bin("mirrord-proxy");
        let pid = self.spawn(Side::Pod, "sidecar", bin.to_str().expect("utf-8 path"), &all);
        self.wait_ready(|| self.log("sidecar"));
        pid
    }

    /// Waits until the sidecar's `/ready` answers 200; fails with `log()`
    /// (the sidecar's log) after 10 s.
    pub fn wait_ready(&self, log: impl Fn() -> String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.admin_get("/ready").map(|(s, _)| s) != Some(200) {
            assert!(std::time::Instant::now() < deadline, "sidecar not ready:\n{}", log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// GET on the sidecar's admin port from inside the pod: (status, body).
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], mirrord_config::names::ADMIN_PORT));
        let mut stream = netns::connect(&self.pod_ns, addr).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((status, body))
    }

    /// The sidecar's `/metrics` text.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").map(|(_, b)| b).unwrap_or_default()
    }

    /// The pod's nat table, without comments and counters: comparable across runs.
    pub fn nat_rules(&self, ipv6: bool) -> String {
        let save = if ipv6 { "ip6tables-save" } else { "iptables-save" };
        let out = self.exec(Side::Pod, save, &["-t", "nat"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| if l.starts_with(':') { l.split(' ').take(2).collect::<Vec<_>>().join(" ") } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A pod address and port, as a client on the node would dial it.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pod_ip), port)
    }

    /// Which app answered a GET /who sent from the node with `headers`:
    /// "remote", "local", … (or the raw output when it is not an answer).
    pub fn answered_by(&self, headers: &[&str]) -> String {
        let mut args = vec!["-sS", "--max-time", "10", "--noproxy", "*"];
        for h in headers {
            args.extend(["-H", h]);
        }
        let url = format!("http://{}/who", self.pod_ip);
        args.push(&url);
        let out = self.exec(Side::Node, "curl", &args);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| v["app"].as_str().unwrap_or_default().to_owned())
            .unwrap_or(body)
    }

    /// Connects from the node to the pod, like a client of the pod's Service.
    pub fn connect_from_node(&self, addr: SocketAddr) -> std::net::TcpStream {
        netns::connect(&self.node_ns, addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Sends a signal to a process started with [`Pod::spawn`].
    pub fn signal(&self, pid: u32, signal: libc::c_int) {
        // SAFETY: plain kill(2) on a pid this pod spawned.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            // SAFETY: kill(2) of the process group this pod's child leads.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "---- {name} log ----\n{}",
                    fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
                );
            }
        }
        for ns in [&self.pod_ns, &self.node_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
