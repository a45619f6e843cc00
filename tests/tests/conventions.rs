//! Conventions of the code base that a compiler does not check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The field a thiserror variant chains as its source, if any: `0` for a
/// tuple variant's `#[from]`/`#[source]`, the name of a `#[source]` field or
/// of a field called `source`.
fn source_field(variant: &str) -> Option<String> {
    if let Some(at) = variant.find("#[from]").or_else(|| variant.find("#[source]")) {
        let after = variant[at..].split_once(']').map_or("", |(_, rest)| rest).trim_start();
        return Some(match after.split_once(':') {
            Some((name, rest)) if !rest.starts_with(':') && name.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                name.to_owned()
            }
            _ => "0".to_owned(),
        });
    }
    let fields = variant.split_once('{')?.1;
    fields
        .split(',')
        .any(|f| f.trim_start().starts_with("source:") || f.trim_start().starts_with("pub source:"))
        .then(|| "source".to_owned())
}

/// An error that both prints its cause in its message and chains it as its
/// source shows the cause twice under `{:#}` (anyhow, the binaries' main).
#[test]
fn errors_print_their_cause_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["api", "cli", "config", "injector", "proxy", "tests"] {
        sources(&root.join(krate).join("src"), &mut files);
    }
    let mut checked = 0;
    let mut twice = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("#[error(") {
            let attr_end = text[at..].find(")]\n").map_or(text.len(), |e| at + e);
            let message = &text[at..attr_end];
            // The variant: up to the end of its line (or of its braces).
            let rest = &text[attr_end + 3..];
            let end = if rest.trim_start().split_once('\n').is_some_and(|(l, _)| l.ends_with('{')) {
                rest.find('}').map_or(rest.len(), |e| e + 1)
            } else {
                rest.find('\n').unwrap_or(rest.len())
            };
            let variant = &rest[..end];
            checked += 1;
            if let Some(field) = source_field(variant) {
                if message.contains(&format!("{{{field}}}")) || message.contains(&format!("{{{field}:")) {
                    twice.push(format!("{}: {}", file.strip_prefix(&root).unwrap().display(), variant.trim()));
                }
            }
        }
    }
    assert!(checked >= 20, "expected thiserror messages, found {checked}");
    assert!(twice.is_empty(), "these errors print their source and chain it too:\n{}", twice.join("\n"));
}

#[test]
fn the_check_finds_a_doubled_cause() {
    assert_eq!(source_field("    Read { file: PathBuf, source: std::io::Error },").as_deref(), Some("source"));
    assert_eq!(source_field("    Generate(#[from] rcgen::Error),").as_deref(), Some("0"));
    assert_eq!(source_field("    Io { path: PathBuf, #[source] cause: std::io::Error },").as_deref(), Some("cause"));
    assert_eq!(source_field("    Read { file: PathBuf, error: std::io::Error },"), None);
}

/// Every shell script passes shellcheck (scripts/kind-e2e.sh, the real-cluster
/// check, cannot run here: this is what is checked of it).
#[test]
fn scripts_pass_shellcheck() {
    if !std::process::Command::new("shellcheck").arg("--version").output().is_ok_and(|o| o.status.success()) {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "shellcheck is required under CI=true");
        eprintln!("SKIPPED: shellcheck is not installed (scripts/test.sh installs it)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.push(root.join(".ci/run"));
    assert!(scripts.iter().any(|p| p.ends_with("kind-e2e.sh")), "{scripts:?}");
    let out = std::process::Command::new("shellcheck").args(&scripts).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
