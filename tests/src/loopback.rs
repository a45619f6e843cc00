//! The sidecar in explicit mode on loopback, run in-process: no root needed.
//! For protocol edge cases that do not need a pod around them.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use clap::Parser;
use mirrord_proxy::run::{RunArgs, Running};

/// A sidecar running on its own thread and runtime until dropped.
#[derive(Debug)]
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The session tunnel.
    pub tunnel: SocketAddr,
    /// The token sessions must present (made for the run in explicit mode).
    pub token: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    run: RunArgs,
}

impl Sidecar {
    /// Starts `mirrord-proxy run --upstream UPSTREAM` with extra flags, on
    /// ports chosen by the kernel.
    pub fn start(upstream: SocketAddr, extra: &[&str]) -> Sidecar {
        let mut argv = vec!["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"];
        let upstream = upstream.to_string();
        argv.extend(["--upstream", &upstream]);
        argv.extend_from_slice(extra);
        let args = Flags::try_parse_from(argv).expect("valid flags").run;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let running = runtime.block_on(async { Running::bind(&args) }).expect("bind");
        let addr = running.inbound_addrs()[0];
        let admin = running.admin_addr().expect("admin address");
        let tunnel = running.tunnel_addr().expect("tunnel address");
        let token = running.session_token().map(str::to_owned);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(running.serve(async {
                let _ = rx.await;
            }))
        });
        Sidecar { addr, admin, tunnel, token, stop: Some(tx), thread: Some(thread) }
    }

    /// Begins the sidecar's shutdown (SIGTERM's part), without waiting for
    /// it: in-flight requests finish, then it exits.
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// `mirrord-cli connect --addr` to this sidecar's tunnel, with its token.
    pub fn connect(&self, name: &str, config: &str) -> crate::session::Cli {
        let tunnel = self.tunnel.to_string();
        let mut flags = vec!["--addr", &tunnel];
        if let Some(token) = &self.token {
            flags.extend(["--token", token]);
        }
        crate::session::Cli::connect_with(&flags, name, config, &[])
    }

    /// The admin server's `/metrics` text.
    pub fn metrics(&self) -> String {
        metrics_at(self.admin)
    }

    /// The value of the `/metrics` line that is `series` and a value.
    pub fn metric_value(&self, series: &str) -> i64 {
        metric_in(&self.metrics(), series)
    }
}

/// The `/metrics` text of the admin server at `admin`.
pub fn metrics_at(admin: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(admin).expect("admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// The value of the line of `metrics` that is `series` and a value.
pub fn metric_in(metrics: &str, series: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// Polls `f` until it is true; fails the test after 5 s.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "timed out waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `bytes` on one new connection and reads until the server closes
/// (10 s at most): the client's transcript.
pub fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The sample app on a loopback port chosen by the kernel, killed on drop.
#[derive(Debug)]
pub struct App {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in the order of the flags.
    pub addrs: Vec<SocketAddr>,
    child: Child,
}

impl App {
    /// Starts the sample app's HTTP server on 127.0.0.1:0.
    pub fn start(bin: &str) -> App {
        Self::start_with(bin, &["--http", "127.0.0.1:0"])
    }

    /// Starts the sample app with these flags (use port 0 in addresses).
    pub fn start_with(bin: &str, args: &[&str]) -> App {
        let mut child =
            Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("sample-app");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut addrs = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("sample-app output");
            if line == "ready" {
                break;
            }
            addrs.extend(line.rsplit(' ').next().and_then(|a| a.parse::<SocketAddr>().ok()));
        }
        App { addr: *addrs.first().expect("sample-app printed its address"), addrs, child }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
