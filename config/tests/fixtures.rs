//! Table tests over `fixtures/valid` and `fixtures/invalid`, the documented
//! examples in `docs/`, and the checked-in JSON schema.
//!
//! Each fixture `NAME.EXT` has a golden `NAME.EXT.expected` beside it: the
//! one-line summary for valid configs, the full error for invalid ones.
//! `UPDATE_GOLDEN=1 cargo test -p mirrord-config` rewrites them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use mirrord_config::{Config, Format, Vars};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| Format::from_path(p).is_ok())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "expected fixtures in {}, found {}", root.display(), files.len());
    files
}

/// Template variables that do not depend on the machine.
fn vars() -> Vars {
    Vars { key: None, generated_key: "k3y00".into(), git_branch: Some("main".into()) }
}

fn load(path: &Path) -> Result<Config, mirrord_config::Error> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = Path::new(path.file_name().unwrap());
    Config::parse(&text, Format::from_path(path).unwrap(), Some(name), &vars()).map(|l| l.config)
}

/// Compares against the golden file, or rewrites it under UPDATE_GOLDEN=1.
/// Returns a description of the mismatch, if any.
fn check_golden(fixture: &Path, actual: &str) -> Option<String> {
    let golden = PathBuf::from(format!("{}.expected", fixture.display()));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, format!("{actual}\n")).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    (expected.trim_end() != actual)
        .then(|| format!("{}:\n  expected: {}\n  actual:   {actual}", fixture.display(), expected.trim_end()))
}

#[test]
fn valid_fixtures_load_with_expected_summary() {
    let failures: Vec<String> = fixtures("valid")
        .iter()
        .filter_map(|f| match load(f) {
            Ok(config) => check_golden(f, &config.to_string()),
            Err(e) => Some(format!("{}: unexpected error: {e}", f.display())),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_fixtures_fail_with_expected_error() {
    let failures: Vec<String> = fixtures("invalid")
        .iter()
        .filter_map(|f| match load(f) {
            Ok(config) => Some(format!("{}: loaded but should not: {config}", f.display())),
            Err(e) => check_golden(f, &e.to_string()),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every JSON example in the user documentation loads exactly as printed.
#[test]
fn documented_examples_load() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut examples = 0;
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for block in text.split("```json\n").skip(1) {
            let json = block.split("```").next().unwrap();
            examples += 1;
            if let Err(e) = Config::parse(json, Format::Json, Some(&path), &vars()) {
                panic!("example in {} does not load: {e}\n{json}", path.display());
            }
        }
    }
    assert!(examples >= 4, "expected the documented examples, found {examples}");
}

#[test]
fn checked_in_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("mirrord.schema.json");
    let current = format!("{}\n", serde_json::to_string_pretty(&mirrord_config::schema()).unwrap());
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == current,
        "{} is stale: run `UPDATE_GOLDEN=1 cargo test -p mirrord-config` and commit it",
        path.display()
    );
}

#[test]
fn schema_describes_the_documented_keys() {
    let schema = serde_json::to_string(&mirrord_config::schema()).unwrap();
    for key in ["pause", "target", "incoming", "http_filter", "header_filter", "path_filter", "all_of", "port_mapping"]
    {
        assert!(schema.contains(&format!("\"{key}\"")), "schema lacks {key}");
    }
}

#[test]
fn sidecar_revalidation_rejects_what_the_cli_rejects() {
    let e =
        Config::from_json(r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"path_filter":"("}}}}}"#)
            .unwrap_err();
    let located = e.located().unwrap();
    assert_eq!(located.key, "feature.network.incoming.http_filter.path_filter");
    assert!(located.message.starts_with("invalid regex \"(\""), "{}", located.message);
}
