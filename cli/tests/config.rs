//! `mirrord-cli config …` as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrord-cli")).args(args).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn fixture(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tests/fixtures").join(path).display().to_string()
}

#[test]
fn check_valid_prints_the_summary_then_one_line_per_fact() {
    let file = fixture("valid/steal-header.yaml");
    let (code, out, _) = cli(&["config", "check", &file]);
    assert_eq!(code, 0);
    let first = out.lines().next().unwrap();
    assert!(first.contains("ok: steal HTTP requests matching header \"baggage: .*mirrord-session=alice\""), "{out}");
    assert!(out.contains("\n  target: deployment/api\n"), "{out}");
    assert!(out.contains("\n  every port: steal requests matching header"), "{out}");
}

#[test]
fn check_invalid_exits_2_with_position_and_key() {
    let file = fixture("invalid/unknown-key-typo.json");
    let (code, out, err) = cli(&["config", "check", &file]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("unknown-key-typo.json:6:27: feature.network.incoming.http_filter.heder_filter"), "{err}");
    assert!(err.contains("did you mean `header_filter`?"), "{err}");
}

#[test]
fn check_missing_file_and_unknown_extension() {
    let (code, _, err) = cli(&["config", "check", "/nonexistent/mirrord.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read config /nonexistent/mirrord.json"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("mirrord.ini");
    std::fs::write(&ini, "pause=true").unwrap();
    let (code, _, err) = cli(&["config", "check", ini.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("expected a file name ending in .json, .yaml, .yml or .toml"), "{err}");
}

#[test]
fn schema_matches_the_checked_in_file() {
    let (code, out, _) = cli(&["config", "schema"]);
    assert_eq!(code, 0);
    let checked_in =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/mirrord.schema.json")).unwrap();
    assert_eq!(out, checked_in);
}

#[test]
fn connect_reads_the_config_mirrords_variable_names() {
    let file = fixture("invalid/unknown-key-typo.json");
    let run = |env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mirrord-cli"));
        cmd.args(["connect", "--addr", "127.0.0.1:1", "--token", "t"]).env_remove("MIRRORD_CONFIG_FILE");
        if let Some(path) = env {
            cmd.env("MIRRORD_CONFIG_FILE", path);
        }
        let out = cmd.output().unwrap();
        (out.status.code().unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    // The file is read (and refused) before any connection is tried.
    let (code, err) = run(Some(&file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown-key-typo.json:6:27: feature.network.incoming.http_filter.heder_filter"), "{err}");
    // Without it, no config: the connection is what fails.
    let (code, err) = run(None);
    assert_ne!(code, 2, "{err}");
    assert!(err.contains("cannot reach the sidecar at 127.0.0.1:1"), "{err}");
}
