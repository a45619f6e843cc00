//! `mirrord-cli demo` runs the real sidecar and session on loopback and
//! exits by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn demo_mirrors_then_steals_by_header_then_gives_back() {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrord-cli")).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let section =
        |n: &str| text.split(n).nth(1).unwrap_or_default().split("\n\n").next().unwrap_or_default().to_owned();
    let steal = section("3. Steal session");
    assert!(steal.contains("GET /orders/1 (x-user: demo)   -> your local app answered GET /orders/1"), "{text}");
    assert!(steal.contains("GET /orders/0                  -> the pod's app answered GET /orders/0"), "{text}");
    assert!(section("2. Mirror session").contains("your local app received 4 copies"), "{text}");
    assert!(!section("4. Session closed").contains("your local app answered"), "{text}");
    assert!(text.contains("done: the pod's app answered 14 requests, your local app 6."), "{text}");
}
