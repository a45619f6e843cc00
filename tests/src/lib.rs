//! End-to-end test support for mirrord: the pod simulation.
//!
//! No Kubernetes API server runs on a test machine, but everything a pod is
//! can be built from Linux primitives (as root): a network namespace with a
//! veth link to a "node" namespace, the init container's iptables rules
//! written by the real `mirrord-proxy init`, the real sidecar, and real apps.
//! Clients that nobody on this project wrote (curl, grpcio, websockets) run
//! in the node namespace, so their traffic enters the pod the way a
//! Service's traffic does.

// Test support: a failed set-up step must fail the test loudly, so panicking
// on errors is the intended behaviour here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod apiserver;
pub mod injector;
pub mod loopback;
pub mod netns;
pub mod pidns;
pub mod pod;
pub mod relay;
pub mod session;
pub mod standalone;
pub mod volume;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// A port nothing listens on right now (for programs that cannot report the
/// port they bound).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// GET on a loopback HTTP server: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// Whether root-only tests can run. Outside CI they skip with a message; under
/// `CI=true` a missing privilege is a failure, never a silent skip.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root (network namespaces, iptables) and CI=true: run the suite as root");
    }
    // Straight to stderr, not eprintln!, which the test harness captures.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root for network namespaces and iptables (runs in CI as root)"
    );
    false
}

/// A binary of this workspace, built by `cargo build --workspace` into the
/// same target directory as the running test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// Directory of the Python sample apps and clients.
pub fn apps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("apps")
}
