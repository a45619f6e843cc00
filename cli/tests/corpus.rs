//! `mirrord-cli config check` over real configs (`config/tests/corpus`, with
//! their sources in its INDEX.md): each one's exit code, report and warnings
//! against a golden beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use mirrord_cli::commands::config::check;
use mirrord_config::Vars;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "expected" && e != "md"))
        .collect();
    files.sort();
    files
}

fn run(file: &Path) -> String {
    let vars = Vars { key: None, generated_key: "k3y00".into(), git_branch: Some("main".into()) };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = check(file, &vars, &mut out, &mut err);
    // The goldens name the file alone, wherever the checkout is.
    let dir = format!("{}/", file.parent().unwrap().display());
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        code.code(),
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap()
    )
    .replace(&dir, "")
}

#[test]
fn every_real_config_gets_its_golden_report() {
    let files = corpus();
    assert!(files.len() >= 40, "expected at least 40 real configs, found {}", files.len());
    let index = std::fs::read_to_string(files[0].parent().unwrap().join("INDEX.md")).unwrap();
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(index.contains(&format!("`{name}`")), "{name} has no source in INDEX.md");
        let actual = run(file);
        let golden = PathBuf::from(format!("{}.expected", file.display()));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != actual {
            failures.push(format!("{name}:\n--- expected\n{expected}--- actual\n{actual}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), files.len(), failures.join("\n"));
}

/// The class of config that used to steal every non-HTTP port whole: a
/// header filter without `ports`. No port is stolen unfiltered.
#[test]
fn no_filtered_config_steals_a_port_whole() {
    for file in corpus() {
        let report = run(&file);
        if report.contains("requests matching") && !report.contains("\"ports\"") {
            let text = std::fs::read_to_string(&file).unwrap();
            if !text.contains("\"ports\"") && !text.contains("port_mapping") {
                assert!(!report.contains("all traffic"), "{}:\n{report}", file.display());
            }
        }
    }
}
