//! A request whose body the client cuts short (closes mid-body, or breaks
//! its chunked framing) must never reach the developer's app as a complete
//! request, whether stolen or mirrored: the local request is aborted. Real
//! sidecar (explicit mode, loopback), real CLI; the local "app" records the
//! exact bytes the CLI sends it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use mirrord_tests::loopback::{App, Sidecar};

/// Accepts one connection and returns everything it received until the
/// peer closed or went quiet for two seconds.
fn recorder() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(got);
    });
    (addr, rx)
}

fn run(mode: &str, cut: &[u8]) -> String {
    let remote = App::start_with(env!("CARGO_BIN_EXE_sample-app"), &["--http", "127.0.0.1:0", "--name", "remote"]);
    let sidecar = Sidecar::start(remote.addr, &[]);
    let (local, received) = recorder();
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"{mode}","port_mapping":[[{},{}]]}}}}}}}}"#,
        local.port(),
        remote.addr.port()
    );
    let mut cli = sidecar.connect("cut", &config);
    cli.wait_plan();
    let mut client = TcpStream::connect(sidecar.addr).unwrap();
    client.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    client.write_all(cut).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let got = received.recv_timeout(Duration::from_secs(10)).expect("the local app was reached");
    assert!(sidecar.metrics().contains("reason=\"request_body_incomplete\""), "counted");
    String::from_utf8_lossy(&got).into_owned()
}

fn complete(received: &str) -> bool {
    received.contains("hello") && received.ends_with("0\r\n\r\n")
}

#[test]
fn a_request_cut_mid_body_is_aborted_not_completed_stolen_or_mirrored() {
    for mode in ["steal", "mirror"] {
        for cut in [&b""[..], b"5\nworld\r\n"] {
            let received = run(mode, cut);
            assert!(received.starts_with("POST /upload HTTP/1.1"), "{mode}: {received:?}");
            assert!(!complete(&received), "{mode}: the local app got a complete request: {received:?}");
        }
    }
}
