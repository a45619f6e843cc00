//! The install manifests: valid for every Kubernetes minor from 1.29 on, and
//! the webhook configured so that mirrord can never block a deploy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifests() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files = Vec::new();
    for dir in ["install", "example"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") && path.file_name().unwrap() != "kustomization.yaml" {
                files.push(path);
            }
        }
    }
    // The dashboards' ConfigMaps (the monitoring component's other objects
    // are prometheus-operator kinds, checked in tests/tests/monitoring_files.rs).
    files.push(root.join("monitoring/dashboards/configmaps.yaml"));
    files.push(root.join("rbac/developer.yaml"));
    files.sort();
    assert!(files.len() >= 9, "expected the install and example manifests, found {files:?}");
    files
}

#[test]
fn manifests_validate_against_the_official_schemas() {
    let available = Command::new("kubernetes-validate").arg("--version").output().is_ok_and(|o| o.status.success());
    if !available {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "kubernetes-validate is required under CI=true");
        eprintln!("SKIPPED manifest validation: kubernetes-validate is not installed (scripts/test.sh installs it)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate.py");
    let out = Command::new("python3").arg(script).args(manifests()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn webhook_never_blocks_and_skips_system_namespaces() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/install/webhook.yaml");
    let config: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let hook = &config["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert!(hook["timeoutSeconds"].as_u64().unwrap() <= 5);
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["admissionReviewVersions"][0], "v1");
    let excluded: Vec<&str> = hook["namespaceSelector"]["matchExpressions"][0]["values"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for ns in ["kube-system", "kube-public", "kube-node-lease", "mirrord"] {
        assert!(excluded.contains(&ns), "{ns} must be excluded");
    }
}
