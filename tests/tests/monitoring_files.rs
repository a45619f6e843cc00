//! The monitoring manifests as files: rules that promtool accepts and whose
//! unit tests pass, one set of alerts in both shapes, runbooks for every
//! alert, dashboards that are what their generator writes, with stable uids
//! and a datasource variable; prometheus-operator objects that their
//! published CRDs (checked in under `tests/crd/`) accept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/monitoring")
}

fn yaml(path: &Path) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// promtool, or `None` (a skip, never under CI=true).
fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("promtool");
    }
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "promtool is required under CI=true");
    eprintln!("SKIPPED: promtool is not installed (scripts/test.sh installs Debian's prometheus package)");
    None
}

#[test]
fn rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let rules = monitoring().join("rules");
    for args in [&["check", "rules", "mirrord.rules.yaml"][..], &["test", "rules", "mirrord.rules.test.yaml"]] {
        let out = Command::new(promtool).args(args).current_dir(&rules).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// The alert names of a rules document (`groups:`).
fn alerts(groups: &serde_yaml::Value) -> Vec<serde_yaml::Value> {
    groups["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter().cloned())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

#[test]
fn every_alert_is_tested_and_has_a_runbook() {
    let rules = yaml(&monitoring().join("rules/mirrord.rules.yaml"));
    let operator = yaml(&monitoring().join("prometheusrule.yaml"));
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        operator["spec"], rules,
        "prometheusrule.yaml must carry exactly the groups of rules/mirrord.rules.yaml"
    );
    let tests = std::fs::read_to_string(monitoring().join("rules/mirrord.rules.test.yaml")).unwrap();
    let runbooks = std::fs::read_to_string(monitoring().join("../../docs/alerts.md")).unwrap();
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 8, "{}", alerts.len());
    for alert in &alerts {
        let name = alert["alert"].as_str().unwrap();
        let annotations = &alert["annotations"];
        for key in ["summary", "description", "runbook_url"] {
            assert!(annotations[key].as_str().is_some_and(|v| !v.is_empty()), "{name} has no {key}");
        }
        let description = annotations["description"].as_str().unwrap();
        assert!(description.contains("$labels.namespace") || name == "MirrordInjectorDown", "{name}: {description}");
        let url = annotations["runbook_url"].as_str().unwrap();
        let anchor = url.rsplit_once('#').map(|(_, a)| a).unwrap();
        assert_eq!(anchor, name.to_lowercase(), "{name}: {url}");
        assert!(runbooks.contains(&format!("\n## {name}\n")), "docs/alerts.md has no section for {name}");
        let firing_test = format!("alertname: {name}\n        exp_alerts:\n          - exp_labels:");
        assert!(tests.contains(&firing_test), "no promtool test where {name} fires");
        assert!(
            tests.contains(&format!("alertname: {name}\n        exp_alerts: []")) || alert.get("expr").is_some(),
            "{name}"
        );
        assert!(["critical", "warning", "info"].contains(&alert["labels"]["severity"].as_str().unwrap()), "{name}");
    }
}

#[test]
fn dashboards_are_what_the_generator_writes() {
    let out = tempfile::tempdir().unwrap();
    let dir = monitoring().join("dashboards");
    let status = Command::new("python3").arg(dir.join("generate.py")).arg(out.path()).status().unwrap();
    assert!(status.success());
    for file in ["mirrord-sessions.json", "mirrord-injector.json", "configmaps.yaml"] {
        let want = std::fs::read_to_string(out.path().join(file)).unwrap();
        let have = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            want == have,
            "{file} differs from generate.py's output: run python3 manifests/monitoring/dashboards/generate.py"
        );
    }
}

/// Every query of a dashboard (panel targets and variable queries).
fn dashboard_queries(board: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    out.extend(
        board["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["definition"].as_str().map(str::to_owned)),
    );
    out
}

#[test]
fn dashboards_have_stable_uids_a_datasource_variable_and_no_cluster_names() {
    let dir = monitoring().join("dashboards");
    let text = std::fs::read_to_string(dir.join("configmaps.yaml")).unwrap();
    let configmaps: Vec<serde_yaml::Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).unwrap())
        .filter(|d| !d.is_null())
        .collect();
    for (file, uid) in [("mirrord-sessions.json", "mirrord-sessions"), ("mirrord-injector.json", "mirrord-injector")] {
        let board = json(&dir.join(file));
        assert_eq!(board["uid"], uid);
        let vars = board["templating"]["list"].as_array().unwrap();
        assert!(vars.iter().any(|v| v["type"] == "datasource" && v["name"] == "datasource"), "{file}");
        for panel in board["panels"].as_array().unwrap() {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{file}: {}", panel["title"]);
            assert!(!panel["targets"].as_array().unwrap().is_empty(), "{file}: {}", panel["title"]);
        }
        let text = board.to_string();
        for forbidden in ["cluster=", "cluster\\\"", "localhost", "127.0.0.1"] {
            assert!(!text.contains(forbidden), "{file} names {forbidden}");
        }
        assert!(!dashboard_queries(&board).is_empty());
        let packaged = configmaps
            .iter()
            .find_map(|c| c["data"][file].as_str())
            .unwrap_or_else(|| panic!("no ConfigMap carries {file}"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(packaged).unwrap(), board);
    }
    for c in &configmaps {
        assert_eq!(c["metadata"]["labels"]["grafana_dashboard"], "1");
    }
}

#[test]
fn the_component_lists_every_manifest() {
    let kustomization = yaml(&monitoring().join("kustomization.yaml"));
    assert_eq!(kustomization["kind"], "Component");
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let path = monitoring().join(resource.as_str().unwrap());
        assert!(path.exists(), "{}", path.display());
    }
    let pod_monitor = yaml(&monitoring().join("podmonitor.yaml"));
    assert_eq!(pod_monitor["spec"]["podMetricsEndpoints"][0]["port"], mirrord_config::names::ADMIN_PORT_NAME);
    let service = yaml(&monitoring().join("../install/service.yaml"));
    let port = yaml(&monitoring().join("servicemonitor.yaml"))["spec"]["endpoints"][0]["port"].clone();
    assert!(
        service["spec"]["ports"].as_sequence().unwrap().iter().any(|p| p["name"] == port),
        "the injector Service has no port {port:?} for the ServiceMonitor"
    );
    let scrape = std::fs::read_to_string(monitoring().join("scrape-configs.yaml")).unwrap();
    assert!(scrape.contains(&format!("regex: {}\n", mirrord_config::names::ADMIN_PORT_NAME)));
}

/// `python3 tests/crd/validate.py` on `files`: (success, output). `None`
/// when its modules (jsonschema, PyYAML: the test venv's) are missing (a
/// skip, never under CI=true).
fn validate_crd_objects(files: &[PathBuf]) -> Option<(bool, String)> {
    let have = Command::new("python3").args(["-c", "import jsonschema, yaml"]).output();
    if !have.is_ok_and(|o| o.status.success()) {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "jsonschema and PyYAML are required under CI=true");
        eprintln!("SKIPPED: python3 lacks jsonschema or PyYAML (scripts/test.sh installs them in its venv)");
        return None;
    }
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("crd");
    let out = Command::new("python3")
        .arg(crd.join("validate.py"))
        .arg(crd.join("prometheus-operator"))
        .args(files)
        .output()
        .unwrap();
    Some((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}

#[test]
fn operator_objects_validate_against_the_published_crds() {
    let files: Vec<PathBuf> = ["podmonitor.yaml", "servicemonitor.yaml", "prometheusrule.yaml"]
        .iter()
        .map(|f| monitoring().join(f))
        .collect();
    let Some((ok, text)) = validate_crd_objects(&files) else { return };
    assert!(ok, "{text}");
    // The check can fail: a misspelt field, a duration the CRD's pattern
    // refuses, a field where the schema has none.
    let dir = tempfile::tempdir().unwrap();
    let podmonitor = std::fs::read_to_string(&files[0]).unwrap().replace("podMetricsEndpoints", "podMetricEndpoints");
    let rules = std::fs::read_to_string(&files[2])
        .unwrap()
        .replacen("      for: 1m", "      for: a minute", 1)
        .replacen("      labels:\n", "      severity: critical\n      labels:\n", 1);
    let bad = [dir.path().join("podmonitor.yaml"), dir.path().join("prometheusrule.yaml")];
    std::fs::write(&bad[0], podmonitor).unwrap();
    std::fs::write(&bad[1], rules).unwrap();
    let (ok, text) = validate_crd_objects(&bad).unwrap();
    assert!(!ok, "{text}");
    for expected in [
        "PodMonitor mirrord-sidecars: .spec.podMetricEndpoints: unknown field",
        "PrometheusRule mirrord: .spec.groups[0].rules[0].for: 'a minute' does not match",
        "PrometheusRule mirrord: .spec.groups[0].rules[0].severity: unknown field",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}
