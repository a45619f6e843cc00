//! Pod fixtures as the API server sends them (`fixtures/pods`, made by
//! `fixtures/generate.py`): each one's outcome — JSON patch, skip reason or
//! error — against a golden file in `fixtures/patches`; every mutated pod
//! checked against the official schemas with kubernetes-validate.
//! `UPDATE_GOLDEN=1` rewrites the goldens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mirrord_injector::mutate::{self, Mutation, Settings, Skip};
use mirrord_injector::patch;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn settings() -> Settings {
    Settings { image: "ghcr.io/metalbear-co/mirrord-proxy:0.1.0".to_owned(), native_sidecar: true }
}

fn fixtures() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir().join("pods"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 40, "expected at least 40 pod fixtures, found {}", out.len());
    out
}

#[test]
fn fixtures_match_golden_patches_and_validate() {
    let mutated_dir = tempfile::tempdir().unwrap();
    let mut mismatches = Vec::new();
    let mut mutated_files = Vec::new();
    for (name, pod) in fixtures() {
        let namespace_opted_in = name.starts_with("ns-optin");
        let outcome = match mutate::pod(&pod, namespace_opted_in, &settings()) {
            Mutation::Inject(ops) => {
                let mut mutated = pod.clone();
                patch::apply(&mut mutated, &ops).unwrap();
                assert_eq!(
                    mutate::pod(&mutated, namespace_opted_in, &settings()),
                    Mutation::Skip(Skip::AlreadyInjected),
                    "{name}: second invocation"
                );
                // As stored: the API server names generateName pods after admission.
                let mut stored = mutated.clone();
                if stored.pointer("/metadata/name").is_none() {
                    let base = stored["metadata"]["generateName"].as_str().unwrap_or("pod-").to_owned();
                    stored["metadata"]["name"] = json!(format!("{base}x7k2p"));
                }
                let file = mutated_dir.path().join(format!("{name}.json"));
                std::fs::write(&file, serde_json::to_string_pretty(&stored).unwrap()).unwrap();
                mutated_files.push(file);
                json!({ "patch": ops })
            }
            Mutation::Skip(skip) => json!({ "skip": skip.reason() }),
            Mutation::Invalid(e) => json!({ "error": e.to_string() }),
        };
        let text = format!("{}\n", serde_json::to_string_pretty(&outcome).unwrap());
        let golden = dir().join("patches").join(format!("{name}.json"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &text).unwrap();
        } else if std::fs::read_to_string(&golden).unwrap_or_default() != text {
            mismatches.push(name);
        }
    }
    assert!(mismatches.is_empty(), "outcomes differ from their goldens (UPDATE_GOLDEN=1 to accept): {mismatches:?}");
    assert!(mutated_files.len() >= 25, "most fixtures should be injected, got {}", mutated_files.len());
    validate(&mutated_files);
}

/// The webhook reads only part of a pod (`mutate::read`): its answer for
/// each fixture, in both sidecar modes, is the outcome and the patch that
/// the mutation gives for the whole pod.
#[test]
fn the_webhook_answers_as_the_whole_pods_mutation() {
    use mirrord_injector::review::{self, Outcome};
    for native_sidecar in [true, false] {
        let settings = Settings { native_sidecar, ..settings() };
        for (name, pod) in fixtures() {
            let opted_in = name.starts_with("ns-optin");
            let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                              "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                          "operation": "CREATE", "object": pod}});
            let (answer, outcome) = review::answer(body.to_string().as_bytes(), |_| opted_in, &settings).unwrap();
            let patch = answer["response"]["patch"].as_str().map(|p| review::unbase64(p).unwrap());
            match (mutate::pod(&pod, opted_in, &settings), outcome) {
                (Mutation::Inject(ops), Outcome::Injected) => {
                    assert_eq!(serde_json::from_slice::<Value>(&patch.unwrap()).unwrap(), json!(ops), "{name}");
                }
                (Mutation::Skip(a), Outcome::Skipped(b)) => assert_eq!(a, b, "{name}"),
                (Mutation::Invalid(a), Outcome::Invalid(b)) => assert_eq!(a, b, "{name}"),
                (whole, read) => panic!("{name}: the whole pod gives {whole:?}, the webhook {read:?}"),
            }
        }
    }
}

/// kubernetes-validate, every minor from 1.29 on. Installed by the test
/// command; required under CI.
fn validate(files: &[PathBuf]) {
    let available = Command::new("kubernetes-validate").arg("--version").output().is_ok_and(|o| o.status.success());
    if !available {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "kubernetes-validate is required under CI=true");
        eprintln!("SKIPPED schema validation: kubernetes-validate is not installed (scripts/test.sh installs it)");
        return;
    }
    let out = Command::new("python3").arg(dir().join("../validate.py")).args(files).output().unwrap();
    assert!(
        out.status.success(),
        "schema validation failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
