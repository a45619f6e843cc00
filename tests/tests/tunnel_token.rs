//! No sidecar runs an unauthenticated tunnel by accident (loopback, no
//! root): in explicit mode without `--token-file` it makes a token of its
//! own, in redirect mode it refuses to start, and only
//! `--insecure-no-token` accepts sessions without one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mirrord_tests::loopback::{App, Sidecar};
use mirrord_tests::session::Cli;

const CONFIG: &str = r#"{"feature":{"network":{"incoming":{"mode":"mirror"}}}}"#;

fn app() -> App {
    App::start(env!("CARGO_BIN_EXE_sample-app"))
}

#[test]
fn explicit_mode_makes_a_token_and_refuses_sessions_without_it() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let token = sidecar.token.clone().expect("a token made for the run");
    assert_eq!(token.len(), 64, "256 random bits in hex: {token}");
    let (code, err) = Cli::connect(sidecar.tunnel, "no-token", CONFIG).finish();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("a token of its own") && err.contains("--token"), "{err}");
    let mut cli = sidecar.connect("with-token", CONFIG);
    cli.wait_plan();
}

#[test]
fn insecure_no_token_is_explicit() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &["--insecure-no-token"]);
    assert!(sidecar.token.is_none());
    let mut cli = Cli::connect(sidecar.tunnel, "open", CONFIG);
    cli.wait_plan();
}

#[test]
fn redirect_mode_without_a_token_refuses_to_start() {
    let out = std::process::Command::new(mirrord_tests::workspace_bin("mirrord-proxy"))
        .args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--token-file") && err.contains("--insecure-no-token"), "{err}");
}
