//! Processes of their own on loopback (no root): the sidecar, whose resident
//! memory is then its own alone, and nghttpd (nghttp2's HTTP/2 server) as
//! an app that sends whatever flow control allows. Killed on drop.

use std::io::BufRead;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `mirrord-proxy run` in explicit mode, one thread, no token.
#[derive(Debug)]
pub struct SidecarProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Its log up to the line that says it listens.
    pub log: Vec<String>,
}

impl SidecarProcess {
    /// Starts the sidecar in front of `upstream`, with `extra` flags;
    /// `wrap` runs before it (a shell command line that ends in `exec`, such
    /// as putting it in a cgroup), or nothing.
    pub fn start_in(wrap: Option<&str>, upstream: SocketAddr, extra: &[&str]) -> SidecarProcess {
        let admin = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        let mut args = vec!["run", "--listen", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", "--insecure-no-token"];
        let (admin_text, upstream_text) = (admin.to_string(), upstream.to_string());
        args.extend(["--admin", &admin_text, "--upstream", &upstream_text, "--threads", "1"]);
        args.extend_from_slice(extra);
        let bin = crate::workspace_bin("mirrord-proxy");
        let mut command = match wrap {
            Some(script) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("{script} \"$0\" \"$@\""), bin.to_str().expect("utf-8 path")]).args(&args);
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.args(&args);
                c
            }
        };
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("mirrord-proxy");
        let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut log = Vec::new();
        let mut lines = stderr.lines().map_while(Result::ok);
        let listening = lines.by_ref().inspect(|l| log.push(l.clone())).find(|l| l.contains("addrs=["));
        // The rest of the log is read (and dropped) so the sidecar never
        // blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let Some(line) = listening else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the sidecar did not start:\n{}", log.join("\n"));
        };
        let addr = line.split("addrs=[").nth(1).and_then(|rest| rest.split(']').next()).expect("addrs");
        SidecarProcess { child, addr: addr.parse().expect("listen address"), admin, log }
    }

    pub fn start(upstream: SocketAddr, extra: &[&str]) -> SidecarProcess {
        SidecarProcess::start_in(None, upstream, extra)
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// The most resident memory it has had, bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("the sidecar runs");
        let kib = status.lines().find_map(|l| l.strip_prefix(field)).expect(field).trim().trim_end_matches(" kB");
        kib.trim().parse().expect("kB")
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    pub fn metrics(&self) -> String {
        crate::loopback::metrics_at(self.admin)
    }

    pub fn metric_value(&self, series: &str) -> i64 {
        crate::loopback::metric_in(&self.metrics(), series)
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nghttpd on a loopback port, serving a directory with one 4 MiB file,
/// `/big`.
#[derive(Debug)]
pub struct Nghttpd {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nghttpd {
    pub fn start() -> Nghttpd {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("big"), vec![0u8; 4 << 20]).expect("write /big");
        let port = crate::free_port();
        let child = Command::new("nghttpd")
            .args(["--no-tls", "-d"])
            .arg(dir.path())
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nghttpd (Debian: nghttp2-server; scripts/test.sh installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nghttpd does not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nghttpd { child, addr, _dir: dir }
    }
}

impl Drop for Nghttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
