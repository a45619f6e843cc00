//! Stolen responses to clients that read nothing: each holds back only its
//! own exchange. The tunnel carries every exchange of a session over one
//! HTTP/2 connection, whose flow-control window is shared; a stolen answer
//! the pod's client does not take must not fill it for the others. Real
//! sidecar (explicit mode, loopback), real CLI; the local app is written
//! here and answers `/big` with 64 MiB. The same the other way: a stolen
//! request body the developer's app does not read holds back only its own
//! exchange. And a developer's tool that stops reading the CLI's output
//! holds back no stolen request either.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mirrord_tests::loopback::{App, Sidecar};
use mirrord_tests::session::Cli;

const BIG: usize = 64 << 20;

/// The developer's app: HTTP/1.1, one thread per connection; `/big`
/// answers 64 MiB of zeros, `POST /sink` nothing (its body is never read),
/// anything else `local`.
fn local_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || {
                // The head and the body are two writes.
                s.set_nodelay(true).unwrap();
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut s = s;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let big = line.starts_with("GET /big ");
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                    }
                    if line.starts_with("POST /sink ") {
                        // Reads none of the body, answers nothing.
                        std::thread::sleep(Duration::from_secs(60));
                        return;
                    }
                    let body = if big { vec![0u8; BIG] } else { b"local".to_vec() };
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    if s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends a GET and reads its whole answer; the body's text.
fn get(addr: SocketAddr, path: &str, within: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) => panic!("no whole answer to {path} within {within:?}: {e}; got {:?}", String::from_utf8_lossy(&out)),
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or(text)
}

/// The sidecar in front of the sample app, and a session that steals
/// everything on its port for [`local_app`].
fn steal_all() -> (Sidecar, App, Cli) {
    let remote = App::start_with(env!("CARGO_BIN_EXE_sample-app"), &["--http", "127.0.0.1:0", "--name", "remote"]);
    let sidecar = Sidecar::start(remote.addr, &[]);
    let local = local_app();
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","port_mapping":[[{},{}]]}}}}}}}}"#,
        local.port(),
        remote.addr.port()
    );
    let mut cli = sidecar.connect("slow-readers", &config);
    cli.wait_plan();
    assert_eq!(get(sidecar.addr, "/", Duration::from_secs(10)), "local");
    (sidecar, remote, cli)
}

/// Five stolen requests on new connections are answered, each within 5 s.
fn others_are_answered(sidecar: &Sidecar) {
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(get(sidecar.addr, "/", Duration::from_secs(5)), "local");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_stolen_answer_nobody_reads_holds_back_only_its_own_exchange() {
    let (sidecar, _remote, _cli) = steal_all();

    // Clients that ask for the big answer and read none of it.
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(sidecar.addr).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        stuck.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));

    // Everyone else's stolen requests are answered meanwhile.
    others_are_answered(&sidecar);

    // And a stuck client that starts reading gets its whole answer.
    let mut s = stuck.pop().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let mut body = vec![0u8; BIG];
    s.read_exact(&mut body).expect("the whole stolen answer");
    drop(stuck);
}

#[test]
fn a_stolen_request_body_the_local_app_does_not_read_holds_back_only_its_own_exchange() {
    let (sidecar, _remote, _cli) = steal_all();
    // Clients that upload 16 MiB each to a handler that reads none of it;
    // their writes block once every buffer on the way is full.
    let addr = sidecar.addr;
    let uploads: Vec<_> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let keep = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let body = vec![0u8; 16 << 20];
                let head = format!("POST /sink HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body));
            });
            keep
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    others_are_answered(&sidecar);
    for s in &uploads {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
}

/// Sends `n` GETs of `/` one after another on one keep-alive connection;
/// each answer must come within 5 s.
fn keep_alive_gets(addr: SocketAddr, n: usize) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut s = s;
    for i in 0..n {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => {}
                other => panic!("no answer to request {i} within 5 s: {other:?}"),
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        assert_eq!(body, b"local", "request {i}");
    }
}

#[test]
fn a_developer_output_nobody_reads_holds_back_no_stolen_request() {
    let (sidecar, _remote, cli) = steal_all();
    // The CLI's JSON events (one per delivered request) go to a pipe that
    // is no longer read: 4,000 of them are several times what the pipe
    // holds.
    cli.stop_reading();
    let addr = sidecar.addr;
    let clients: Vec<_> = (0..4).map(|_| std::thread::spawn(move || keep_alive_gets(addr, 1000))).collect();
    for c in clients {
        c.join().unwrap();
    }
    // Read again, the output says how many events were left out, and goes
    // on.
    cli.resume_reading();
    let lost = cli.wait_for(Duration::from_secs(10), |e| e["event"] == "events_lost");
    let lost = lost.unwrap_or_else(|| panic!("no events_lost event; read:\n{}", cli.skipped()));
    assert!(lost["count"].as_u64().unwrap() > 0, "{lost}");
    keep_alive_gets(addr, 1);
    assert!(
        cli.wait_for(Duration::from_secs(10), |e| e["event"] == "delivered").is_some(),
        "no event after the lost ones"
    );
}
