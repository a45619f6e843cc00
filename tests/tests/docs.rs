//! ARCHITECTURE.md's code map names files and folders: each one exists.
//! A name is looked up from the repository root and from each crate's
//! source folder (the map names `h1/request.rs` under `proxy/src/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn every_path_in_the_code_map_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let start = text.find("## Code map").expect("a code map section");
    let map = &text[start..text[start..].find("\n## Invariants").map_or(text.len(), |e| start + e)];
    let bases =
        ["", "proxy/src", "cli/src", "config/src", "injector/src", "tests/src", "proxy/src/h1", "manifests/monitoring"];
    let mut named = 0;
    let mut missing = Vec::new();
    for token in map.split('`').skip(1).step_by(2) {
        let is_path = (token.contains('/') || [".rs", ".py", ".md", ".txt"].iter().any(|e| token.ends_with(e)))
            && !token.starts_with('/')
            && !token.contains(' ');
        if !is_path {
            continue;
        }
        named += 1;
        if !bases.iter().any(|b| root.join(b).join(token).exists()) {
            missing.push(token.to_owned());
        }
    }
    assert!(named >= 20, "expected the code map to name files, found {named}");
    assert!(missing.is_empty(), "ARCHITECTURE.md names paths that do not exist: {missing:?}");
}
