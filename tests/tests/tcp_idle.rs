//! Raw TCP connections that carry no data for `--tcp-idle-timeout` are
//! closed; one that keeps talking is not. Real sidecar (explicit mode,
//! loopback, opaque port), the sample app's TCP echo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mirrord_tests::loopback::{App, Sidecar};

#[test]
fn idle_raw_tcp_connections_are_closed_busy_ones_are_not() {
    let app = App::start_with(env!("CARGO_BIN_EXE_sample-app"), &["--tcp-echo", "127.0.0.1:0"]);
    let port = app.addr.port().to_string();
    let sidecar = Sidecar::start(app.addr, &["--opaque-ports", &port, "--tcp-idle-timeout", "400ms"]);

    let mut busy = TcpStream::connect(sidecar.addr).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut idle = TcpStream::connect(sidecar.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(b"hi\n").unwrap();
    let mut echo = [0u8; 3];
    idle.read_exact(&mut echo).unwrap();
    let started = Instant::now();
    // Busy: a line every 100 ms for 1.2 s, each echoed.
    while started.elapsed() < Duration::from_millis(1200) {
        busy.write_all(b"x\n").unwrap();
        let mut line = [0u8; 2];
        busy.read_exact(&mut line).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // Idle: closed by the sidecar meanwhile.
    let mut rest = Vec::new();
    let closed = matches!(idle.read_to_end(&mut rest), Ok(0) | Err(_));
    assert!(closed && started.elapsed() < Duration::from_secs(4), "the idle connection is still open");
    assert!(sidecar.metrics().contains("mirrord_proxy_errors_total{reason=\"tcp_idle_timeout\"} 1"));
}
