//! What the injector writes is what the data plane runs: a fixture pod is
//! mutated, and its init container, sidecar and pause guard are executed in
//! the pod simulation (shared PID namespace, one cgroup per container) with
//! exactly the args and env written in the mutated pod.
//! Needs root; skips outside CI otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use mirrord_injector::mutate::{self, Settings, GUARD_NAME, INIT_NAME, SIDECAR_NAME};
use mirrord_tests::pidns::{Container, Processes};
use mirrord_tests::pod::{Pod, Side};
use mirrord_tests::relay::Relay;
use mirrord_tests::session::Cli;
use mirrord_tests::{netns, root_or_skip, workspace_bin};
use serde_json::Value;

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// `env K=V … mirrord-proxy ARGS…`, the env resolved as the kubelet would
/// (downward API fields from the simulated pod).
fn command(c: &Value, pod: &Pod, name: &str) -> Vec<String> {
    let mut cmd = vec!["env".to_owned()];
    for e in c["env"].as_array().into_iter().flatten() {
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => name.to_owned(),
            Some("metadata.namespace") => "shop".to_owned(),
            Some("status.podIP") => pod.pod_ip.to_string(),
            Some(other) => panic!("unexpected downward API field {other}"),
            None => e["value"].as_str().unwrap().to_owned(),
        };
        cmd.push(format!("{}={value}", e["name"].as_str().unwrap()));
    }
    cmd.push(workspace_bin("mirrord-proxy").to_string_lossy().into_owned());
    cmd.extend(c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()));
    cmd
}

#[test]
fn mutated_fixture_runs_in_the_pod_simulation() {
    if !root_or_skip("mutated_fixture_runs_in_the_pod_simulation") {
        return;
    }
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../injector/tests/fixtures/pods/deployment-two-ports.json");
    let original: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let settings = Settings { image: "mirrord-proxy".to_owned(), native_sidecar: true };
    let mutated = mutate::pod(&original, false, &settings).injected(&original).expect("injected");

    // The pod shares its process namespace, as the mutated spec says; every
    // container carries kubelet's per-container mount naming it.
    assert_eq!(mutated["spec"]["shareProcessNamespace"], true);
    let pod = Pod::new();
    let mut procs = Processes::new(&pod.pod_ns);
    let app_name = mutated["spec"]["containers"][0]["name"].as_str().unwrap();
    let sample = workspace_bin("sample-app");
    let app = procs.spawn(
        app_name,
        true,
        &[],
        sample.to_str().unwrap(),
        &["--http", "0.0.0.0:8080", "--http", "0.0.0.0:9090", "--name", "api"],
    );
    netns::wait_listening(&pod.pod_ns, pod.addr(9090), Duration::from_secs(10)).unwrap();
    let init = command(container(&mutated, "initContainers", INIT_NAME), &pod, "api-x7k2p");
    let out = pod.exec(Side::Pod, &init[0], &init[1..].iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "init as injected: {}", String::from_utf8_lossy(&out.stderr));
    let sidecar_cmd = command(container(&mutated, "initContainers", SIDECAR_NAME), &pod, "api-x7k2p");
    let args: Vec<&str> = sidecar_cmd[1..].iter().map(String::as_str).collect();
    // The namespace's token Secret, mounted where the mutated spec says.
    let sidecar_spec = container(&mutated, "initContainers", SIDECAR_NAME);
    assert_eq!(sidecar_spec["volumeMounts"][0]["mountPath"], mirrord_config::names::TOKEN_DIR, "{sidecar_spec}");
    let mut secret = mirrord_tests::volume::SecretVolume::new();
    secret.write(&[(mirrord_config::names::TOKEN_KEY, "4f1d9a")]);
    let mounts = [(secret.path(), mirrord_config::names::TOKEN_DIR)];
    let sidecar = procs.spawn_mounted(SIDECAR_NAME, true, &[], &sidecar_cmd[0], &args, &mounts);
    pod.wait_ready(|| procs.log(SIDECAR_NAME));
    let guard_cmd = command(container(&mutated, "initContainers", GUARD_NAME), &pod, "api-x7k2p");
    let args: Vec<&str> = guard_cmd[1..].iter().map(String::as_str).collect();
    procs.spawn(GUARD_NAME, true, &[], &guard_cmd[0], &args);
    procs.wait_log(GUARD_NAME, "watching the sidecar", Duration::from_secs(10));
    for port in [8080, 9090] {
        let url = format!("http://{}/via-injected", pod.addr(port));
        let out = pod.exec(Side::Node, "curl", &["-sS", "--max-time", "10", &url]);
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(body["peer_ip"], pod.pod_ip.to_string(), "port {port} did not pass through the injected sidecar");
    }
    let metrics = pod.metrics();
    assert!(
        metrics.contains("mirrord_proxy_requests_total{port=\"8080\",protocol=\"http1\",status=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mirrord_proxy_requests_total{port=\"9090\",protocol=\"http1\",status=\"2xx\"} 1"),
        "{metrics}"
    );

    // Pause with the injected guard: the sidecar's SIGKILL resumes the app.
    let relay = Relay::start(&pod.pod_ns, mirrord_config::names::TUNNEL_PORT).unwrap();
    let config = r#"{"pause":true,"feature":{"network":{"incoming":"steal"}}}"#;
    let (code, err) = Cli::connect(relay.addr, "alice", config).finish();
    assert_eq!(code, Some(3), "without the token the session is refused: {err}");
    assert!(err.contains("does not match"), "{err}");
    let addr = relay.addr.to_string();
    let mut cli = Cli::connect_with(&["--addr", &addr], "alice", config, &[("MIRRORD_TOKEN", "4f1d9a")]);
    cli.wait_plan();
    cli.wait_for(Duration::from_secs(5), |e| e["event"] == "pause").expect("pause event");
    assert!(app.wait(Duration::from_secs(2), Container::all_stopped).is_some(), "{:?}", app.states());
    // SAFETY: kill(2) of the sidecar this test started.
    unsafe { libc::kill(sidecar.pids()[0] as i32, libc::SIGKILL) };
    assert!(app.wait(Duration::from_secs(1), Container::none_stopped).is_some(), "{:?}", app.states());
    drop(procs);
}
