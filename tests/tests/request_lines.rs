//! One `GET /x` in the byte shapes a lenient server may still accept: each
//! one either reaches the session's path filter as a request, or is refused
//! by the sidecar; none is passed to the app unchecked as raw TCP (where a
//! filter would not see it). Real sidecar (explicit mode, loopback, no
//! root), real CLI session stealing `path_filter: ^/x`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mirrord_tests::loopback::{exchange, App, Sidecar};

#[test]
fn every_shape_of_a_request_is_filtered_or_refused_never_passed_unchecked() {
    let bin = env!("CARGO_BIN_EXE_sample-app");
    let remote = App::start_with(bin, &["--http", "127.0.0.1:0", "--name", "remote"]);
    let local = App::start_with(bin, &["--http", "127.0.0.1:0", "--name", "local"]);
    let sidecar = Sidecar::start(remote.addr, &[]);
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","http_filter":{{"path_filter":"^/x"}},"port_mapping":[[{},{}]]}}}}}}}}"#,
        local.addr.port(),
        remote.addr.port()
    );
    let mut cli = sidecar.connect("filter", &config);
    cli.wait_plan();
    let close = "Host: a\r\nConnection: close\r\n\r\n";
    let stolen = [
        format!("GET /x HTTP/1.1\r\n{close}"),
        format!("\r\nGET /x HTTP/1.1\r\n{close}"),
        format!("\r\n\r\n\nGET /x HTTP/1.1\r\n{close}"),
        format!("GET /x HTTP/1.1\n{}", close.replace("\r\n", "\n")),
    ];
    for shape in &stolen {
        let out = exchange(sidecar.addr, shape.as_bytes());
        assert!(out.starts_with("HTTP/1.1 200") && out.contains("\"app\":\"local\""), "{shape:?} -> {out}");
    }
    let long = format!("GET /x{} HTTP/1.1\r\n{close}", "a".repeat(70 * 1024));
    let refused = [
        (format!("GET /x HTTP/1.1 \r\n{close}"), "400"),
        (format!("GET  /x HTTP/1.1\r\n{close}"), "400"),
        (format!("GET /x  HTTP/1.1\r\n{close}"), "400"),
        (format!("GET /x http/1.1\r\n{close}"), "400"),
        (format!("GET /x HTTP/1.2\r\n{close}"), "505"),
        (format!("GET /x HTTP/2.0\r\n{close}"), "505"),
        (long, "414"),
    ];
    for (shape, status) in &refused {
        let out = exchange(sidecar.addr, shape.as_bytes());
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")) && out.contains("mirrord-proxy: request refused"),
            "{:?} -> {out}",
            &shape[..shape.len().min(40)]
        );
    }
    assert!(sidecar.metrics().contains("reason=\"http_version_not_supported\""), "refusals are counted by reason");
}
