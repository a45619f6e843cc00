//! Bounded resources on loopback (no root): idle keep-alive clients hold no
//! app connection (10 ms after a response at most), app connections are reused across clients but never
//! once the app closed them or authenticated the connection, the
//! descriptor budget refuses clearly and recovers, and silent raw TCP
//! connections hold no pipes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirrord_tests::loopback::{eventually, App, Sidecar};

fn app() -> App {
    App::start(env!("CARGO_BIN_EXE_sample-app"))
}

/// A keep-alive client connection.
struct Client(BufReader<TcpStream>);

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client(BufReader::new(s))
    }

    /// One request and its response: (status, the app's `x-peer-port`, body).
    fn get(&mut self, path: &str) -> std::io::Result<(u16, u16, String)> {
        write!(self.0.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut line = String::new();
        if self.0.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
        }
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (mut length, mut peer) = (0, 0);
        loop {
            line.clear();
            self.0.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
                if name.eq_ignore_ascii_case("x-peer-port") {
                    peer = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body)?;
        Ok((status, peer, String::from_utf8_lossy(&body).into_owned()))
    }

    /// True once the server closed the connection (waits for it).
    fn closed(&mut self) -> bool {
        closed_by_peer(self.0.get_mut())
    }
}

fn errors(sidecar: &Sidecar, reason: &str) -> i64 {
    sidecar.metric_value(&format!("mirrord_proxy_errors_total{{reason=\"{reason}\"}}"))
}

/// Longer than the 10 ms a client keeps its app connection after a response
/// in case its next request follows at once.
fn settle() {
    std::thread::sleep(Duration::from_millis(40));
}

#[test]
fn idle_keep_alive_clients_hold_no_app_connection() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let mut clients: Vec<Client> = (0..100).map(|_| Client::connect(sidecar.addr)).collect();
    let mut ports = std::collections::BTreeSet::new();
    for c in &mut clients[..20] {
        let (status, peer, _) = c.get("/first").unwrap();
        assert_eq!(status, 200);
        ports.insert(peer);
        settle();
    }
    // One request at a time: each found the previous one's app connection idle.
    assert_eq!(ports.len(), 1, "app connections used: {ports:?}");
    for c in &mut clients[20..] {
        assert_eq!(c.get("/first").unwrap().0, 200);
    }
    // Once the pooled connection expires, only the clients' own sockets remain.
    eventually("the pool to empty", || sidecar.metric_value("mirrord_proxy_inbound_fds") == 100);
    for c in &mut clients {
        assert_eq!(c.get("/again").unwrap().0, 200, "an idle client is served again");
    }
    drop(clients);
    eventually("every descriptor back", || sidecar.metric_value("mirrord_proxy_inbound_fds") <= 1);
}

#[test]
fn a_401_keeps_the_client_on_its_app_connection() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let (mut a, mut b) = (Client::connect(sidecar.addr), Client::connect(sidecar.addr));
    // Without authentication, the next client reuses the idle app connection.
    let first = a.get("/").unwrap().1;
    settle();
    assert_eq!(b.get("/").unwrap().1, first);
    settle();
    // A 401 (NTLM, Negotiate: the connection is being authenticated) pins it.
    let (status, pinned, _) = a.get("/status/401").unwrap();
    assert_eq!(status, 401);
    for _ in 0..3 {
        settle();
        assert_ne!(b.get("/").unwrap().1, pinned, "another client got the pinned connection");
        settle();
        assert_eq!(a.get("/").unwrap().1, pinned, "the client left its authenticated connection");
    }
}

/// An HTTP/1.1 app that closes keep-alive connections idle for 100 ms.
const IMPATIENT_APP: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 0.1
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("x-peer-port", str(self.client_address[1]))
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn an_app_connection_the_app_closed_is_not_reused() {
    let mut child = Killed(Command::new("python3").args(["-c", IMPATIENT_APP]).stdout(Stdio::piped()).spawn().unwrap());
    let mut port = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let app: SocketAddr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();
    let sidecar = Sidecar::start(app, &[]);
    let (mut a, mut b) = (Client::connect(sidecar.addr), Client::connect(sidecar.addr));
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..5 {
        for c in [&mut a, &mut b] {
            let (status, peer, _) = c.get("/").unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(status, 200);
            seen.insert(peer);
            // Long enough for the app to close the idle connection.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert_eq!(seen.len(), 10, "a new app connection each time: {seen:?}");
}

/// A child process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_idle_client_is_closed_after_the_keep_alive_timeout() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &["--http-idle-timeout", "300ms"]);
    let mut c = Client::connect(sidecar.addr);
    assert_eq!(c.get("/").unwrap().0, 200);
    let start = Instant::now();
    assert!(c.closed());
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(250), "closed after {waited:?}");
    assert_eq!(errors(&sidecar, "http_idle_timeout"), 1);
}

#[test]
fn the_descriptor_budget_refuses_clearly_and_recovers() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &["--fd-budget", "4"]);
    let mut idle: Vec<Client> = (0..3).map(|_| Client::connect(sidecar.addr)).collect();
    for c in &mut idle {
        assert_eq!(c.get("/").unwrap().0, 200);
        settle();
    }
    eventually("three client sockets only", || sidecar.metric_value("mirrord_proxy_inbound_fds") == 3);
    // The fourth client is accepted, but its request finds no descriptor for the app.
    let mut fourth = Client::connect(sidecar.addr);
    let (status, _, body) = fourth.get("/").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("budget of 4 file descriptors"), "{body}");
    // A fifth connection is refused outright: reset, nothing served.
    eventually("the 503 connection closed", || sidecar.metric_value("mirrord_proxy_inbound_fds") == 3);
    let _held = Client::connect(sidecar.addr);
    eventually("four held", || sidecar.metric_value("mirrord_proxy_inbound_fds") == 4);
    let mut fifth = Client::connect(sidecar.addr);
    assert!(fifth.get("/").is_err(), "over the budget");
    assert_eq!(errors(&sidecar, "fd_budget"), 2);
    assert_eq!(sidecar.metric_value("mirrord_proxy_fd_budget"), 4);
    // Descriptors given back are usable again.
    drop(idle);
    eventually("the idle clients gone", || sidecar.metric_value("mirrord_proxy_inbound_fds") == 1);
    assert_eq!(Client::connect(sidecar.addr).get("/").unwrap().0, 200);
}

#[test]
fn silent_tcp_connections_hold_no_pipes() {
    let app = App::start_with(env!("CARGO_BIN_EXE_sample-app"), &["--tcp-echo", "127.0.0.1:0"]);
    let opaque = app.addr.port().to_string();
    let sidecar = Sidecar::start(app.addr, &["--opaque-ports", &opaque]);
    let mut conns: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(sidecar.addr).unwrap()).collect();
    eventually("two sockets per connection", || sidecar.metric_value("mirrord_proxy_inbound_fds") == 20);
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut echo = [0u8; 4];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping");
    }
    // Each direction made its pipe (two descriptors) when bytes came.
    assert_eq!(sidecar.metric_value("mirrord_proxy_inbound_fds"), 60);
    // And gives it back after a second without any.
    eventually("the pipes given back", || sidecar.metric_value("mirrord_proxy_inbound_fds") == 20);
    for c in &mut conns {
        c.write_all(b"pong").unwrap();
        let mut echo = [0u8; 4];
        c.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"pong", "the connection works after its pipes went");
    }
}

#[test]
fn silent_admin_connections_cannot_hold_the_admin_port() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let max = mirrord_proxy::admin::MAX_ADMIN_CONNECTIONS;
    let silent: Vec<TcpStream> = (0..max).map(|_| TcpStream::connect(sidecar.admin).unwrap()).collect();
    // One more is closed at once.
    let mut extra = TcpStream::connect(sidecar.admin).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(closed_by_peer(&mut extra), "over the cap");
    // The silent ones are closed once they have sent no head for 5 s, and
    // the admin port answers again.
    let start = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(closed_by_peer(&mut s));
    }
    assert!(start.elapsed() < Duration::from_secs(8), "held for {:?}", start.elapsed());
    assert!(sidecar.metrics().contains("mirrord_proxy_fd_budget"));
}

/// The peer closed (or reset) the connection; a read timeout is not that.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    match s.read(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// Time from connect to the server's first byte through `sidecar`.
fn greeting_after(sidecar: &Sidecar) -> Duration {
    let start = std::time::Instant::now();
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).unwrap();
    start.elapsed()
}

#[test]
fn a_server_first_protocol_waits_for_detection_only_where_the_port_is_not_opaque() {
    let app = App::start_with(env!("CARGO_BIN_EXE_sample-app"), &["--greeting", "127.0.0.1:0"]);
    let detect = ["--detect-timeout", "2s"];
    // Detected: the client says nothing, so the greeting comes after the
    // detection timeout.
    let waits = Sidecar::start(app.addr, &detect);
    assert!(greeting_after(&waits) >= Duration::from_secs(2));
    // Opaque by name, or all ports: at once.
    let port = app.addr.port().to_string();
    for opaque in [port.as_str(), "*"] {
        let sidecar = Sidecar::start(app.addr, &[&detect[..], &["--opaque-ports", opaque]].concat());
        assert!(greeting_after(&sidecar) < Duration::from_secs(1), "--opaque-ports {opaque}");
    }
}

#[test]
fn a_client_that_resets_a_raw_tcp_connection_frees_its_app_connection() {
    let app = App::start_with(env!("CARGO_BIN_EXE_sample-app"), &["--greeting", "127.0.0.1:0"]);
    let sidecar = Sidecar::start(app.addr, &["--opaque-ports", "*"]);
    for _ in 0..5 {
        let mut s = TcpStream::connect(sidecar.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).unwrap();
        // The rest of the greeting is unread: closing resets the connection.
        std::thread::sleep(Duration::from_millis(50));
    }
    // The app waits for the client, which is gone: only the reset ends it.
    eventually("every app connection closed", || sidecar.metric_value("mirrord_proxy_inbound_fds") == 0);
}
