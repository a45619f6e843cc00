//! `mirrord-cli inject | uninject | status | token rotate` against the API
//! server stand-in, which rolls a changed pod template out by admitting each
//! new pod through the real injector's webhook (HTTPS, AdmissionReview, as
//! an API server calls a MutatingWebhookConfiguration), and enforces the
//! ClusterRoles of `manifests/rbac/developer.yaml`: a call outside them is
//! answered 403 and fails the command. The pod the rollout made then runs in
//! the pod simulation exactly as admitted (init container, sidecar with the
//! token Secret's volume), and `connect` and `status` reach it through the
//! stand-in's port-forward.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mirrord_config::names::{ANNOTATION_INJECT, ANNOTATION_PORTS, TOKEN_DIR, TOKEN_KEY, TOKEN_SECRET};
use mirrord_tests::apiserver::{ApiServer, Webhook};
use mirrord_tests::injector::Injector;
use mirrord_tests::loopback::App;
use mirrord_tests::pidns::Processes;
use mirrord_tests::pod::{Pod, Side};
use mirrord_tests::session::Cli;
use mirrord_tests::volume::SecretVolume;
use mirrord_tests::{root_or_skip, workspace_bin};
use serde_json::{json, Value};

const NS: &str = "shop";

/// Runs `mirrord-cli ARGS --kubeconfig K`: (exit code, stdout, stderr).
fn cli(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(workspace_bin("mirrord-cli"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("MIRRORD_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// deployment/api with one container listening on 80, in namespace shop.
fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": NS, "uid": "uid-deploy-api", "generation": 1,
                     "annotations": {"team": "shop"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
                 "template": {"metadata": {"labels": {"app": "api"}, "annotations": {"prometheus.io/scrape": "true"}},
                              "spec": {"containers": [{"name": "app", "image": "api:1",
                                                       "ports": [{"containerPort": 80}]}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    })
}

fn stand_in() -> (ApiServer, tempfile::TempDir, std::path::PathBuf) {
    let api = ApiServer::start();
    api.enforce(ApiServer::roles(&["mirrord-developer", "mirrord-opt-in"]));
    api.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    api.put(deployment());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), NS);
    (api, dir, kubeconfig)
}

/// A container of the pod by name, from `initContainers` or `containers`.
fn container<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(|a| a.as_str().unwrap().to_owned()).collect()
}

/// The Secret's token, as the stand-in stores it.
fn token(api: &ApiServer) -> String {
    let secret = api.get("Secret", NS, TOKEN_SECRET).expect("the token Secret");
    let bytes = mirrord_injector::review::unbase64(secret["data"][TOKEN_KEY].as_str().unwrap()).unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn dry_run_prints_the_patch() {
    let (api, _dir, kubeconfig) = stand_in();
    let (code, out, err) = cli(
        &kubeconfig,
        &["inject", "deploy/api", "--ports", "80, 8080", "--pause", "--max-sessions", "16", "--dry-run"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out_un, err) = cli(&kubeconfig, &["uninject", "deployment/api", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let (code, out_ns, err) = cli(&kubeconfig, &["inject", "-n", "shop", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let text = format!("$ mirrord-cli inject deploy/api --ports '80, 8080' --pause --max-sessions 16 --dry-run\n{out}\n$ mirrord-cli uninject deployment/api --dry-run\n{out_un}\n$ mirrord-cli inject -n shop --dry-run\n{out_ns}");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/golden/inject-dry-run.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(&golden).unwrap(), "UPDATE_GOLDEN=1 rewrites {}", golden.display());
    assert!(api.requests().is_empty(), "a dry run calls nothing: {:?}", api.requests());
}

#[test]
fn bad_targets_and_flags_say_what_was_expected() {
    let (api, _dir, kubeconfig) = stand_in();
    for (args, code, says) in [
        (&["inject", "daemonset/agent"][..], 2, "DaemonSets are not opted in"),
        (&["inject", "job/nightly"], 2, "a Job's pod template cannot be changed"),
        (&["inject", "pod/api-1"], 2, "opt in the workload that owns it"),
        (&["inject"], 2, "give a TARGET"),
        (&["inject", "deploy/api", "--ports", "80,http"], 2, "invalid port list \"80,http\""),
        (&["inject", "deploy/api", "--max-pause", "soon"], 2, "soon"),
        (&["inject", "deploy/api", "--max-sessions", "0"], 2, "expected a number of sessions from 1 to 4096"),
        (&["inject", "-n", "shop", "--ports", "80"], 2, "the namespace opt-in takes no settings"),
        (&["inject", "deploy/apj"], 4, "deployment \"apj\" not found in namespace shop; did you mean \"api\"?"),
        (&["connect", "--target", "deployment/api"], 4, "has no running pod in namespace shop"),
    ] {
        let (got, _, err) = cli(&kubeconfig, args);
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(api.forbidden().is_empty(), "{:?}", api.forbidden());
}

#[test]
fn a_rollout_the_webhook_cannot_admit_fails_with_the_reason() {
    let (api, _dir, kubeconfig) = stand_in();
    // No injector listens there: the API server cannot call the webhook.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    api.admit_with(Webhook { url: format!("https://localhost:{port}/mutate"), ca_file: ca });
    let (code, out, err) = cli(&kubeconfig, &["inject", "deploy/api", "--wait", "--timeout", "20s"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("the rollout is stuck"), "{err}");
    assert!(err.contains("failed calling webhook \"inject.mirrord.dev\""), "{err}");
    assert!(err.contains("event: FailedCreate"), "{err}");
    assert!(api.forbidden().is_empty(), "{:?}", api.forbidden());
}

/// A simulated pod whose container `app` (the sample app, "remote") listens on 80.
fn with_app() -> (Pod, Processes) {
    let pod = Pod::new();
    let mut procs = Processes::new(&pod.pod_ns);
    let sample = workspace_bin("sample-app");
    procs.spawn("app", true, &[], sample.to_str().unwrap(), &["--http", "0.0.0.0:80", "--name", "remote"]);
    mirrord_tests::netns::wait_listening(&pod.pod_ns, pod.addr(80), Duration::from_secs(10)).unwrap();
    (pod, procs)
}

/// Starts the pod the stand-in made, as admitted: app, init container,
/// sidecar with the token Secret's volume.
fn run_admitted(pod_json: &Value, token: &mut SecretVolume) -> (Pod, Processes) {
    let (pod, mut procs) = with_app();
    let init = container(pod_json, "mirrord-init").expect("the init container");
    let args = strings(&init["args"]);
    let out = pod.exec(
        Side::Pod,
        workspace_bin("mirrord-proxy").to_str().unwrap(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "init as admitted: {}", String::from_utf8_lossy(&out.stderr));
    let sidecar = container(pod_json, "mirrord-proxy").expect("the sidecar");
    let mount = &sidecar["volumeMounts"][0];
    assert_eq!(mount["mountPath"], TOKEN_DIR);
    let volume = pod_json["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["secret"]["secretName"], TOKEN_SECRET);
    assert_eq!(volume["secret"]["optional"], true);
    let args = strings(&sidecar["args"]);
    let mounts = [(token.path(), TOKEN_DIR)];
    // The env the spec sets by value (the downward API ones are for logs).
    let env: Vec<(String, String)> = sidecar["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    procs.spawn_mounted(
        "mirrord-proxy",
        true,
        &env,
        workspace_bin("mirrord-proxy").to_str().unwrap(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &mounts,
    );
    pod.wait_ready(|| procs.log("mirrord-proxy"));
    (pod, procs)
}

#[test]
fn inject_connect_status_rotate_uninject() {
    if !root_or_skip("inject_connect_status_rotate_uninject") {
        return;
    }
    let (api, _dir, kubeconfig) = stand_in();
    let certs = tempfile::tempdir().unwrap();
    let injector = Injector::start(certs.path(), 30);
    api.admit_with(Webhook { url: injector.url(), ca_file: injector.cert.clone() });

    // inject: the template's annotations, the token Secret, a rollout
    // through the webhook.
    let (code, out, err) = cli(&kubeconfig, &["inject", "deployment/api", "--ports", "80", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("deployment/api: mirrord.dev/inject=enabled, mirrord.dev/ports=80 (its pods roll out)"),
        "{out}"
    );
    assert!(out.contains("created the session token (Secret mirrord-session-token) in namespace shop"), "{out}");
    assert!(out.contains("deployment/api: rolled out, 1 pod(s) with the sidecar"), "{out}");
    let deployment = api.get("Deployment", NS, "api").unwrap();
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations[ANNOTATION_INJECT], "enabled");
    assert_eq!(annotations[ANNOTATION_PORTS], "80");
    assert_eq!(annotations["prometheus.io/scrape"], "true", "nothing else touched");
    assert_eq!(deployment["metadata"]["annotations"]["team"], "shop");
    assert!(deployment["metadata"]["managedFields"].as_array().unwrap().iter().any(|m| m["manager"] == "mirrord-cli"));
    let secret_token = token(&api);
    assert_eq!(secret_token.len(), 64, "256 bits in hex: {secret_token}");

    // Again with the same flags: nothing changes, not even a PATCH.
    let patches = |api: &ApiServer| api.requests().iter().filter(|r| r.starts_with("PATCH ")).count();
    let before = patches(&api);
    let (code, out, err) = cli(&kubeconfig, &["inject", "deployment/api", "--ports", "80"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deployment/api is already opted in with these settings: nothing changed"), "{out}");
    assert_eq!(patches(&api), before);
    assert!(!out.contains("created the session token"), "{out}");

    // The admitted pod runs in the pod simulation.
    let pods = api.list("Pod", NS);
    assert_eq!(pods.len(), 1, "{pods:?}");
    let admitted = pods[0].clone();
    let name = admitted["metadata"]["name"].as_str().unwrap().to_owned();
    let mut volume = SecretVolume::new();
    volume.write(&[(TOKEN_KEY, &secret_token)]);
    let (pod, _procs) = run_admitted(&admitted, &mut volume);
    api.forward_into(NS, &name, &pod.pod_ns);
    let local =
        App::start_with(workspace_bin("sample-app").to_str().unwrap(), &["--http", "127.0.0.1:0", "--name", "local"]);
    let steal = format!(
        r#"{{"pause":true,"feature":{{"network":{{"incoming":{{"mode":"steal","ports":[80],"http_filter":{{"header_filter":"x-user: alice"}},"port_mapping":[[{},80]]}}}}}}}}"#,
        local.addr.port()
    );
    let kubeconfig_s = kubeconfig.display().to_string();
    let mut alice =
        Cli::connect_with(&["--target", "deployment/api", "--kubeconfig", &kubeconfig_s], "alice", &steal, &[]);
    alice.wait_plan();
    // (The app is paused: only alice's requests are answered now.)
    assert_eq!(pod.answered_by(&["X-User: alice"]), "local");
    let mirror = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"mirror","ports":[80],"port_mapping":[[{},80]]}}}}}}}}"#,
        local.addr.port()
    );
    let mut bob =
        Cli::connect_with(&["--target", "deployment/api", "--kubeconfig", &kubeconfig_s], "bob", &mirror, &[]);
    bob.wait_plan();

    // status: the pod, its two sessions, the pause.
    let (code, out, err) = cli(&kubeconfig, &["status", "deployment/api", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let line = &doc["pods"][0];
    assert_eq!(line["pod"], name.as_str(), "{doc}");
    assert_eq!(line["injected"], true);
    assert_eq!(line["sidecar_version"], env!("CARGO_PKG_VERSION"));
    let sessions = line["status"]["sessions"].as_array().unwrap();
    let names: Vec<&str> = sessions.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"], "{doc}");
    assert_eq!(sessions[0]["stolen"], 1, "{doc}");
    assert_eq!(line["status"]["pause"]["paused"], true, "{doc}");
    assert_eq!(line["status"]["pause"]["holders"], json!(["alice"]), "{doc}");
    assert!(!out.contains(&secret_token), "the token never shows");
    let (code, table, err) = cli(&kubeconfig, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.starts_with("POD ") && table.contains(&name) && table.contains("alice: ") && table.contains("bob: "),
        "{table}"
    );

    // A pod target, and a Service that does not exist.
    let (code, out, err) = cli(&kubeconfig, &["status", &format!("pod/{name}")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&name), "{out}");
    let (code, _, err) = cli(&kubeconfig, &["status", "service/api"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("service \"api\" not found in namespace shop"), "{err}");
    let (code, _, err) = cli(&kubeconfig, &["uninject", "deploy/apj"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("did you mean \"api\"?"), "{err}");

    // Rotation: the kubelet updates the volume; the open session stays,
    // the old token is refused, the new one opens sessions.
    let (code, out, err) = cli(&kubeconfig, &["token", "rotate", "-n", NS]);
    assert_eq!(code, 0, "{out}{err}");
    let rotated = token(&api);
    assert_ne!(rotated, secret_token);
    volume.write(&[(TOKEN_KEY, &rotated)]);
    assert_eq!(pod.answered_by(&["X-User: alice"]), "local", "the open session stays open");
    let relay = mirrord_tests::relay::Relay::start(&pod.pod_ns, mirrord_config::names::TUNNEL_PORT).unwrap();
    let addr = relay.addr.to_string();
    let (code, err) = Cli::connect_with(&["--addr", &addr], "eve", "{}", &[("MIRRORD_TOKEN", &secret_token)]).finish();
    assert_eq!(code, Some(3), "the old token is refused: {err}");
    assert!(err.contains("does not match"), "{err}");
    bob.signal(libc::SIGINT);
    assert_eq!(bob.finish().0, Some(0));
    let mut carol =
        Cli::connect_with(&["--target", "deployment/api", "--kubeconfig", &kubeconfig_s], "carol", &mirror, &[]);
    carol.wait_plan();
    carol.signal(libc::SIGINT);
    assert_eq!(carol.finish().0, Some(0));
    alice.signal(libc::SIGINT);
    assert_eq!(alice.finish().0, Some(0));

    // Without the Secret, connect stops before any port-forward.
    api.delete("Secret", NS, TOKEN_SECRET);
    let forwards = api.requests().iter().filter(|r| r.ends_with("/portforward")).count();
    let (code, err) =
        Cli::connect_with(&["--target", "deployment/api", "--kubeconfig", &kubeconfig_s], "dave", &mirror, &[])
            .finish();
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("namespace shop has no session token (Secret mirrord-session-token does not exist)"), "{err}");
    assert!(err.contains("mirrord-cli token rotate -n shop"), "{err}");
    assert_eq!(api.requests().iter().filter(|r| r.ends_with("/portforward")).count(), forwards);
    // And a sidecar whose volume is empty refuses, saying how to fix it.
    let (code, _, err) = cli(&kubeconfig, &["token", "rotate", "-n", NS]);
    assert_eq!(code, 0, "{err}");
    let mut empty = SecretVolume::new();
    let (bare, _bare_procs) = run_admitted(&admitted, &mut empty);
    let relay = mirrord_tests::relay::Relay::start(&bare.pod_ns, mirrord_config::names::TUNNEL_PORT).unwrap();
    let addr = relay.addr.to_string();
    let (code, err) = Cli::connect_with(&["--addr", &addr], "eve", "{}", &[("MIRRORD_TOKEN", "x")]).finish();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("this pod has no session token yet") && err.contains("mirrord-cli inject"), "{err}");

    // uninject: exactly the annotations inject wrote go; the next pod is plain.
    let (code, out, err) = cli(&kubeconfig, &["uninject", "deployment/api", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rolled out, 1 pod(s) without the sidecar"), "{out}");
    let deployment = api.get("Deployment", NS, "api").unwrap();
    let annotations = deployment["spec"]["template"]["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations.keys().collect::<Vec<_>>(), ["prometheus.io/scrape"], "{annotations:?}");
    let pods = api.list("Pod", NS);
    assert_eq!(pods.len(), 1);
    let plain = &pods[0];
    assert!(plain["spec"]["initContainers"].as_array().is_none_or(Vec::is_empty), "{plain}");
    assert_eq!(plain["spec"]["containers"].as_array().unwrap().len(), 1, "{plain}");
    assert!(plain["spec"]["volumes"].is_null(), "{plain}");
    // Run as specified (the app alone): no redirect rule in the pod.
    let (next, _procs) = with_app();
    assert!(!next.nat_rules(false).contains("REDIRECT"), "{}", next.nat_rules(false));
    assert_eq!(next.answered_by(&["X-User: alice"]), "remote");

    // inject --namespace / uninject --namespace: the namespace's annotation.
    let (code, out, err) = cli(&kubeconfig, &["inject", "-n", NS]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(api.get("Namespace", "", NS).unwrap()["metadata"]["annotations"][ANNOTATION_INJECT], "enabled");
    let (code, out, err) = cli(&kubeconfig, &["uninject", "-n", NS]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(api.get("Namespace", "", NS).unwrap()["metadata"]["annotations"][ANNOTATION_INJECT].is_null());

    // The injector gone: the next rollout is stuck, and --wait says why.
    drop(injector);
    let (code, out, err) = cli(&kubeconfig, &["inject", "deployment/api", "--wait", "--timeout", "20s"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("event: FailedCreate: Internal error occurred: failed calling webhook"), "{err}");

    // The roles: nothing was refused (complete), and every rule was used (minimal).
    assert!(api.forbidden().is_empty(), "calls outside the roles: {:?}", api.forbidden());
    let made = api.authorized();
    for rule in ApiServer::roles(&["mirrord-developer", "mirrord-opt-in"]) {
        for verb in &rule.verbs {
            let used = made.iter().any(|(g, r, v)| rule.groups.contains(g) && rule.resources.contains(r) && v == verb);
            assert!(
                used,
                "no command used {verb} on {:?}: the role grants more than mirrord-cli needs",
                rule.resources
            );
        }
    }
}
