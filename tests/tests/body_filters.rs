//! mirrord's JSON body filters through the real sidecar (explicit mode on
//! loopback, no root) and the real CLI: HTTP/1 with a length or chunked,
//! h2c, pipelined requests, and a body over the cap, which is not read
//! ahead (the filter does not match) but reaches the app whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use mirrord_tests::loopback::{App, Sidecar};
use mirrord_tests::session::Cli;

struct World {
    _remote: App,
    local: App,
    sidecar: Sidecar,
    _cli: Cli,
}

fn world(http_filter: &str) -> World {
    let bin = env!("CARGO_BIN_EXE_sample-app");
    let remote = App::start_with(bin, &["--http", "127.0.0.1:0", "--name", "remote"]);
    let local = App::start_with(bin, &["--http", "127.0.0.1:0", "--name", "local"]);
    let sidecar = Sidecar::start(remote.addr, &[]);
    let port = remote.addr.port();
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","http_filter":{http_filter},"port_mapping":[[{},{port}]]}}}}}}}}"#,
        local.addr.port()
    );
    let mut cli = sidecar.connect("body", &config);
    cli.wait_plan();
    World { _remote: remote, local, sidecar, _cli: cli }
}

/// Which app answered, and the body it saw.
fn post(addr: SocketAddr, extra: &[&str], body: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "POST", "-H", "content-type: application/json"])
        .args(extra)
        .args(["--data-binary", body, &format!("http://{addr}/orders")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (echo["app"].as_str().unwrap().to_owned(), echo["body"].as_str().unwrap().to_owned())
}

const ALICE: &str = r#"{"user":{"id":"alice"},"items":[1,2]}"#;
const BOB: &str = r#"{"user":{"id":"bob"},"items":[1,2]}"#;

#[test]
fn json_body_filter_steals_matching_bodies_over_http1_and_h2c() {
    let w = world(r#"{"body_filter":{"body":"json","query":"$.user.id","matches":"^alice$"}}"#);
    let addr = w.sidecar.addr;
    assert_eq!(post(addr, &[], ALICE), ("local".into(), ALICE.into()));
    assert_eq!(post(addr, &[], BOB), ("remote".into(), BOB.into()));
    let chunked = ["-H", "transfer-encoding: chunked"];
    assert_eq!(post(addr, &chunked, ALICE), ("local".into(), ALICE.into()));
    assert_eq!(post(addr, &chunked, BOB), ("remote".into(), BOB.into()));
    let h2c = ["--http2-prior-knowledge"];
    assert_eq!(post(addr, &h2c, ALICE), ("local".into(), ALICE.into()));
    assert_eq!(post(addr, &h2c, BOB), ("remote".into(), BOB.into()));
    assert!(w.local.addr.port() > 0);
}

#[test]
fn a_body_over_the_cap_is_not_read_ahead_and_reaches_the_app_whole() {
    let w = world(r#"{"body_filter":{"body":"json","query":"$.user.id","matches":"^alice$"}}"#);
    let big = format!(r#"{{"user":{{"id":"alice"}},"pad":"{}"}}"#, "x".repeat(70 * 1024));
    let (app, body) = post(w.sidecar.addr, &[], &big);
    assert_eq!((app.as_str(), body.len()), ("remote", big.len()));
    let (app, body) = post(w.sidecar.addr, &["--http2-prior-knowledge"], &big);
    assert_eq!((app.as_str(), body.len()), ("remote", big.len()));
}

#[test]
fn pipelined_requests_are_each_routed_by_their_own_body() {
    let w = world(
        r#"{"all_of":[{"path":"^/orders"},{"body":"json","query":"$.items[?(typeof(@) == 'number')]","matches":"^2$"}]}"#,
    );
    let request =
        |body: &str| format!("POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let strings = r#"{"items":["2"]}"#;
    let numbers = r#"{"items":[1,2]}"#;
    let all = format!("{}{}{}", request(strings), request(numbers), request(strings))
        + "GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut s = TcpStream::connect(w.sidecar.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(all.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let apps: Vec<&str> =
        out.match_indices("\"app\":\"").map(|(i, _)| &out[i + 7..]).map(|r| &r[..r.find('"').unwrap()]).collect();
    assert_eq!(apps, ["remote", "local", "remote", "remote"], "{out}");
}
