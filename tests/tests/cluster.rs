//! `mirrord-cli connect --target` against the Kubernetes API server
//! stand-in (`mirrord_tests::apiserver`): credentials from a kubeconfig,
//! the target resolved to its pods, one port-forward and one session per
//! pod, each port-forward entering that pod's network namespace in the pod
//! simulation as kubelet's does. Clients send to each pod's IP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mirrord_tests::apiserver::{self, ApiServer};
use mirrord_tests::loopback::App;
use mirrord_tests::pod::{Pod, Side};
use mirrord_tests::session::Cli;
use mirrord_tests::{root_or_skip, workspace_bin};
use serde_json::json;

const NS: &str = "shop";

/// The median time of 200 stolen GETs on one keep-alive connection, in ms.
fn stolen_latency(pod: &Pod) -> f64 {
    let url = format!("http://{}/who?n=[1-200]", pod.pod_ip);
    // The timings go to stderr, the bodies to stdout.
    let args = ["-s", "--noproxy", "*", "-w", "%{stderr}%{time_total}\\n", "-H", "X-User: alice", &url];
    let out = pod.exec(Side::Node, "curl", &args);
    let mut times: Vec<f64> =
        String::from_utf8_lossy(&out.stderr).lines().filter_map(|l| l.trim().parse::<f64>().ok()).collect();
    assert_eq!(times.len(), 200, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("\"local\"").count(), 200, "every one stolen");
    times.sort_by(f64::total_cmp);
    times[times.len() / 2] * 1000.0
}

fn steal_config(filter: &str, local_port: u16) -> String {
    format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","ports":[80],"http_filter":{{"header_filter":"{filter}"}},"port_mapping":[[{local_port},80]]}}}}}}}}"#
    )
}

struct Cluster {
    pods: Vec<Pod>,
    api: ApiServer,
    kubeconfig: tempfile::TempDir,
    local: App,
    /// The sidecars' token file.
    token: Token,
}

/// The namespace's session token: in the stand-in's Secret, and in a file
/// every sidecar of the test reads.
struct Token {
    dir: tempfile::TempDir,
}

impl Token {
    fn new(api: &ApiServer) -> Token {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "9c0ffee").unwrap();
        api.put(apiserver::token_secret(NS, "9c0ffee"));
        Token { dir }
    }

    fn file(&self) -> String {
        self.dir.path().join("token").display().to_string()
    }
}

impl Cluster {
    fn kubeconfig(&self) -> String {
        self.kubeconfig.path().join("kubeconfig").display().to_string()
    }

    fn connect(&self, target: &str, config: &str) -> Cli {
        let kubeconfig = self.kubeconfig();
        Cli::connect_with(&["--target", target, "--kubeconfig", &kubeconfig], "alice", config, &[])
    }
}

/// `replicas` injected pods of deployment/api (and service/api), plus
/// deployment/legacy whose one pod has no sidecar.
fn cluster(test: &str, replicas: usize) -> Option<Cluster> {
    if !root_or_skip(test) {
        return None;
    }
    let api = ApiServer::start();
    api.enforce(ApiServer::roles(&["mirrord-developer"]));
    let token = Token::new(&api);
    let labels = json!({"app": "api"});
    let mut pods = Vec::new();
    for i in 0..replicas {
        let mut pod = Pod::new();
        pod.start_app(&["--http", "0.0.0.0:80", "--name", "remote"], pod.addr(80));
        pod.init(&["--ports", "80"]);
        pod.start_sidecar(&["--ports", "80", "--token-file", &token.file()]);
        let name = format!("api-7d4b9c-{i}");
        api.put(apiserver::pod(NS, &name, &labels, &pod.pod_ip.to_string(), true, true));
        api.forward_into(NS, &name, &pod.pod_ns);
        pods.push(pod);
    }
    api.put(apiserver::workload("Deployment", NS, "api", &labels));
    api.put(apiserver::service(NS, "api", &labels));
    let legacy = json!({"app": "legacy"});
    api.put(apiserver::workload("Deployment", NS, "legacy", &legacy));
    api.put(apiserver::pod(NS, "legacy-5f6d-0", &legacy, "10.0.0.9", false, true));
    // Opted in, but created while the injector was away.
    let missed = json!({"app": "missed"});
    api.put(apiserver::workload("Deployment", NS, "missed", &missed));
    let opt_in = json!({"mirrord.dev/inject": "enabled"});
    api.put(apiserver::pod_with(NS, "missed-8c2d-0", &missed, "10.0.0.10", false, true, &opt_in));
    let kubeconfig = tempfile::tempdir().unwrap();
    api.kubeconfig(kubeconfig.path(), NS);
    let local =
        App::start_with(workspace_bin("sample-app").to_str().unwrap(), &["--http", "127.0.0.1:0", "--name", "local"]);
    Some(Cluster { pods, api, kubeconfig, local, token })
}

#[test]
fn a_header_steal_on_a_deployment_takes_matching_requests_on_every_replica() {
    let Some(c) = cluster("a_header_steal_on_a_deployment_takes_matching_requests_on_every_replica", 3) else {
        return;
    };
    let started = std::time::Instant::now();
    let mut cli = c.connect("deployment/api", &steal_config("x-user: alice", c.local.addr.port()));
    let plan = cli.wait_plan();
    eprintln!("connect to plan on 3 pods: {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    assert_eq!(plan["ports"][0]["port"], 80, "{plan}");
    assert_eq!(plan["on"], "3 pods of deployment/api", "{plan}");
    for pod in &c.pods {
        assert_eq!(pod.answered_by(&["X-User: alice"]), "local", "pod {}", pod.pod_ip);
        assert_eq!(pod.answered_by(&["X-User: bob"]), "remote", "pod {}", pod.pod_ip);
        assert_eq!(pod.answered_by(&[]), "remote");
    }
    let delivered = cli.wait_for(Duration::from_secs(5), |e| e["event"] == "delivered").expect("delivered event");
    assert!(delivered["pod"].as_str().is_some_and(|p| p.starts_with("api-7d4b9c-")), "{delivered}");
    let through_api = stolen_latency(&c.pods[0]);
    cli.signal(libc::SIGINT);
    let (code, err) = cli.finish();
    assert_eq!(code, Some(0), "{err}");
    // The same requests through a port-forward made by hand (--addr).
    let relay = mirrord_tests::relay::Relay::start(&c.pods[0].pod_ns, mirrord_config::names::TUNNEL_PORT).unwrap();
    let addr = relay.addr.to_string();
    let mut direct = Cli::connect_with(
        &["--addr", &addr, "--token", "9c0ffee"],
        "alice",
        &steal_config("x-user: alice", c.local.addr.port()),
        &[],
    );
    direct.wait_plan();
    let through_addr = stolen_latency(&c.pods[0]);
    direct.signal(libc::SIGINT);
    direct.finish();
    eprintln!(
        "stolen request, median of 200: {through_api:.3} ms over the API server's port-forward, {through_addr:.3} ms with --addr (x{:.2})",
        through_api / through_addr
    );
    for pod in &c.pods {
        assert_eq!(pod.answered_by(&["X-User: alice"]), "remote", "traffic is the app's again");
    }
    // Only reads and port-forwards: nothing was written to the cluster.
    let requests = c.api.requests();
    assert!(requests.iter().all(|r| r.starts_with("GET ")), "{requests:?}");
    assert_eq!(requests.iter().filter(|r| r.ends_with("/portforward")).count(), 3, "{requests:?}");
    covered_by_the_developer_role(&c.api);
}

/// Every request the CLI made is one the developer role of
/// `manifests/rbac/developer.yaml` grants (the stand-in enforces it).
fn covered_by_the_developer_role(api: &ApiServer) {
    assert!(api.authorized().len() >= 4);
    assert_eq!(api.forbidden(), Vec::<String>::new(), "requests outside the developer role");
}

#[test]
fn a_service_and_a_single_pod_are_targets_too() {
    let Some(c) = cluster("a_service_and_a_single_pod_are_targets_too", 2) else { return };
    for (target, expect_local) in [("service/api", [true, true]), ("pod/api-7d4b9c-1", [false, true])] {
        let mut cli = c.connect(target, &steal_config("x-user: alice", c.local.addr.port()));
        cli.wait_plan();
        for (pod, local) in c.pods.iter().zip(expect_local) {
            let want = if local { "local" } else { "remote" };
            assert_eq!(pod.answered_by(&["X-User: alice"]), want, "{target}, pod {}", pod.pod_ip);
        }
        cli.signal(libc::SIGINT);
        let (code, err) = cli.finish();
        assert_eq!(code, Some(0), "{target}: {err}");
    }
}

/// Runs `connect` to its end: (exit code, standard error).
fn refused(c: &Cluster, flags: &[&str]) -> (Option<i32>, String) {
    let kubeconfig = c.kubeconfig();
    let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
    all.extend_from_slice(flags);
    let mut cli = Cli::connect_with(&all, "alice", "{}", &[]);
    cli.finish()
}

#[test]
fn targets_that_cannot_be_used_say_why_and_what_to_do() {
    let Some(c) = cluster("targets_that_cannot_be_used_say_why_and_what_to_do", 1) else { return };
    let (code, err) = refused(&c, &["--target", "deployment/legacy"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("none of its 1 pod(s) has the mirrord sidecar (legacy-5f6d-0)"), "{err}");
    assert!(
        err.contains(
            "neither their pod template nor their namespace opts in: run `mirrord-cli inject deployment/legacy`"
        ),
        "{err}"
    );
    let (code, err) = refused(&c, &["--target", "deployment/missed"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("they carry the opt-in annotation, so the injector did not act"), "{err}");
    let (code, err) = refused(&c, &["--target", "deployment/apj"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("deployment \"apj\" not found in namespace shop; did you mean \"api\"?"), "{err}");
    let (code, err) = refused(&c, &["--target", "deployment/api", "--context", "prod"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("no context \"prod\" in the kubeconfig: expected one of sim"), "{err}");
    covered_by_the_developer_role(&c.api);
    let (code, err) = refused(&c, &["--target", "job/nightly"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("job targets are not supported"), "{err}");
    let (code, err) = refused(&c, &["--target", "deployment/api", "-n", "elsewhere"]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("not found in namespace elsewhere"), "{err}");
    // RBAC: a role without port-forward, then one without reading deployments.
    c.api.deny("create", "pods/portforward");
    let (code, err) = refused(&c, &["--target", "deployment/api"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("the Kubernetes API refused create on pods/api-7d4b9c-0/portforward in namespace shop"),
        "{err}"
    );
    assert!(err.contains("manifests/rbac/developer.yaml"), "{err}");
    c.api.deny("get", "deployments");
    let (code, err) = refused(&c, &["--target", "deployment/api"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("refused get on deployments/api in namespace shop"), "{err}");
    assert!(err.contains("cannot get resource \"deployments\" in API group \"apps\""), "{err}");
}

#[test]
fn pods_that_come_and_go_get_and_lose_their_sessions() {
    let Some(mut c) = cluster("pods_that_come_and_go_get_and_lose_their_sessions", 2) else { return };
    let mut cli = c.connect("deployment/api", &steal_config("x-user: alice", c.local.addr.port()));
    cli.wait_plan();
    for pod in &c.pods {
        assert_eq!(pod.answered_by(&["X-User: alice"]), "local");
    }
    // Requests keep going to the surviving pod throughout.
    let survivor = c.pods.remove(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut sent, mut wrong) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < 20 {
                let who = survivor.answered_by(&["X-User: alice"]);
                sent += 1;
                if who != "local" {
                    wrong.push(who);
                }
            }
            (survivor, sent, wrong)
        })
    };
    // A rollout deletes the other pod: terminating first, then gone.
    let leaving = "api-7d4b9c-1";
    let mut terminating =
        apiserver::pod(NS, leaving, &json!({"app": "api"}), &c.pods[0].pod_ip.to_string(), true, true);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-11-30T12:00:00Z");
    c.api.put(terminating);
    let left = cli.wait_for(Duration::from_secs(5), |e| e["event"] == "left" && e["pod"] == leaving);
    assert!(left.is_some(), "the deleted pod's session ends quietly");
    drop(c.pods.remove(0));
    c.api.delete("Pod", NS, leaving);
    // A new pod becomes ready: it gets a session within 2 s.
    let mut pod = Pod::new();
    pod.start_app(&["--http", "0.0.0.0:80", "--name", "remote"], pod.addr(80));
    pod.init(&["--ports", "80"]);
    pod.start_sidecar(&["--ports", "80", "--token-file", &c.token.file()]);
    let joining = "api-7d4b9c-2";
    c.api.forward_into(NS, joining, &pod.pod_ns);
    let ready_at = std::time::Instant::now();
    c.api.put(apiserver::pod(NS, joining, &json!({"app": "api"}), &pod.pod_ip.to_string(), true, true));
    let joined = cli.wait_for(Duration::from_secs(2), |e| e["event"] == "joined" && e["pod"] == joining);
    assert!(joined.is_some(), "no session on the new pod within 2 s");
    eprintln!("new pod ready to session open: {:.0} ms", ready_at.elapsed().as_secs_f64() * 1000.0);
    assert_eq!(pod.answered_by(&["X-User: alice"]), "local");
    assert_eq!(pod.answered_by(&[]), "remote");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (survivor, sent, wrong) = client.join().unwrap();
    assert!(
        sent > 3 && wrong.is_empty(),
        "{} of {sent} requests to the surviving pod went wrong: {wrong:?}",
        wrong.len()
    );
    cli.signal(libc::SIGINT);
    let (code, err) = cli.finish();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(survivor.answered_by(&["X-User: alice"]), "remote");
    assert_eq!(pod.answered_by(&["X-User: alice"]), "remote");
    assert!(c.api.authorized().iter().any(|(_, r, v)| r == "pods" && v == "watch"));
    covered_by_the_developer_role(&c.api);
}

#[test]
fn connect_runs_the_local_app_and_ends_with_it() {
    let Some(c) = cluster("connect_runs_the_local_app_and_ends_with_it", 1) else { return };
    let kubeconfig = c.kubeconfig();
    // The command's exit code is connect's.
    let mut cli = Cli::connect_with(
        &["--target", "deployment/api", "--kubeconfig", &kubeconfig, "--", "sh", "-c", "sleep 0.5; exit 7"],
        "alice",
        &steal_config("x-user: alice", 1),
        &[],
    );
    cli.wait_plan();
    let (code, err) = cli.finish();
    assert_eq!(code, Some(7), "{err}");
    assert_eq!(c.pods[0].answered_by(&["X-User: alice"]), "remote", "the session ended with the app");
    // The app it starts gets the traffic; when it ends, so do the sessions.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let script = format!(
        "'{}' --http 127.0.0.1:{port} --name started & echo $! > '{}'; wait $!; exit 5",
        workspace_bin("sample-app").display(),
        pid_file.display()
    );
    let mut cli = Cli::connect_with(
        &["--target", "deployment/api", "--kubeconfig", &kubeconfig, "--", "sh", "-c", &script],
        "alice",
        &steal_config("x-user: alice", port),
        &[],
    );
    cli.wait_plan();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.pods[0].answered_by(&["X-User: alice"]) != "started" {
        assert!(std::time::Instant::now() < deadline, "the started app never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) of the app this test's command started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (code, err) = cli.finish();
    assert_eq!(code, Some(5), "{err}");
    assert_eq!(c.pods[0].answered_by(&["X-User: alice"]), "remote");
}

/// A pod whose app can be paused: a shared PID namespace with the app, the
/// sidecar and the guard, as the injector sets it up.
struct PausablePod {
    // Dropped first: the processes die with their PID 1, then the namespaces go.
    _procs: mirrord_tests::pidns::Processes,
    _pod: Pod,
    app: mirrord_tests::pidns::Container,
    sidecar: mirrord_tests::pidns::Container,
}

fn pausable_pods(api: &ApiServer, token: &Token, replicas: usize) -> Vec<PausablePod> {
    let proxy = workspace_bin("mirrord-proxy").to_str().unwrap().to_owned();
    let app_script =
        format!("'{}' --http 0.0.0.0:80 --name remote & sleep 1000 & wait", workspace_bin("sample-app").display());
    (0..replicas)
        .map(|i| {
            let pod = Pod::new();
            let mut procs = mirrord_tests::pidns::Processes::new(&pod.pod_ns);
            let app = procs.spawn("app", false, &[], "sh", &["-c", &app_script]);
            mirrord_tests::netns::wait_listening(&pod.pod_ns, pod.addr(80), Duration::from_secs(10)).unwrap();
            pod.init(&["--ports", "80"]);
            let args = ["run", "--ports", "80", "--grace-period", "1s", "--token-file", &token.file()];
            let sidecar = procs.spawn("sidecar", false, &[], &proxy, &args);
            pod.wait_ready(|| procs.log("sidecar"));
            procs.spawn("guard", false, &[], &proxy, &["guard", "--interval", "50ms"]);
            procs.wait_log("guard", "watching the sidecar", Duration::from_secs(10));
            let name = format!("worker-6f7c-{i}");
            api.put(apiserver::pod(NS, &name, &json!({"app": "worker"}), &pod.pod_ip.to_string(), true, true));
            api.forward_into(NS, &name, &pod.pod_ns);
            PausablePod { _procs: procs, _pod: pod, app, sidecar }
        })
        .collect()
}

#[test]
fn pause_stops_every_replica_and_every_end_resumes_them_all() {
    if !root_or_skip("pause_stops_every_replica_and_every_end_resumes_them_all") {
        return;
    }
    let api = ApiServer::start();
    let token = Token::new(&api);
    let pods = pausable_pods(&api, &token, 3);
    api.put(apiserver::workload("Deployment", NS, "worker", &json!({"app": "worker"})));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path(), NS).display().to_string();
    let config = r#"{"pause": true, "feature": {"network": {"incoming": "off"}}}"#;
    let flags = ["--target", "deployment/worker", "--kubeconfig", kubeconfig.as_str()];
    let all = |state: fn(&mirrord_tests::pidns::Container) -> bool| {
        pods.iter().all(|p| p.app.wait(Duration::from_secs(5), state).is_some())
    };
    let stopped = mirrord_tests::pidns::Container::all_stopped;
    let running = mirrord_tests::pidns::Container::none_stopped;
    for end in ["Ctrl-C", "CLI SIGKILL"] {
        let mut cli = Cli::connect_with(&flags, "alice", config, &[]);
        cli.wait_plan();
        for _ in 0..3 {
            let paused = cli.wait_for(Duration::from_secs(5), |e| e["event"] == "pause" && e["paused"] == true);
            assert!(paused.is_some_and(|e| e["pod"].is_string()), "a pause event per pod");
        }
        assert!(all(stopped), "every replica's app is stopped once each pod reported its pause");
        match end {
            "Ctrl-C" => {
                cli.signal(libc::SIGINT);
                assert_eq!(cli.finish().0, Some(0));
            }
            _ => {
                cli.signal(libc::SIGKILL);
                let _ = cli.finish();
            }
        }
        assert!(all(running), "{end}: every replica resumed");
    }
    // One pod's sidecar dies: its guard resumes that app; the others stay
    // paused for the session, which goes on.
    let mut cli = Cli::connect_with(&flags, "alice", config, &[]);
    cli.wait_plan();
    assert!(all(stopped));
    // SAFETY: kill(2) of a sidecar this test started.
    unsafe { libc::kill(pods[0].sidecar.pids()[0] as i32, libc::SIGKILL) };
    assert!(pods[0].app.wait(Duration::from_secs(2), running).is_some(), "the guard resumed the app");
    std::thread::sleep(Duration::from_millis(300));
    assert!(pods[1..].iter().all(|p| p.app.all_stopped()), "the other replicas stay paused");
    cli.signal(libc::SIGINT);
    assert_eq!(cli.finish().0, Some(0));
    assert!(all(running));
}

#[test]
fn a_mirror_on_a_statefulset_copies_from_every_replica() {
    let Some(c) = cluster("a_mirror_on_a_statefulset_copies_from_every_replica", 3) else { return };
    c.api.put(apiserver::workload("StatefulSet", NS, "api-db", &json!({"app": "api"})));
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"mirror","ports":[80],"port_mapping":[[{},80]]}}}}}}}}"#,
        c.local.addr.port()
    );
    let mut cli = c.connect("statefulset/api-db", &config);
    cli.wait_plan();
    for pod in &c.pods {
        assert_eq!(pod.answered_by(&[]), "remote", "the pod answers a mirrored request");
    }
    let mut copied_from = std::collections::BTreeSet::new();
    while copied_from.len() < 3 {
        let Some(event) = cli.wait_for(Duration::from_secs(5), |e| e["event"] == "delivered" && e["mode"] == "mirror")
        else {
            panic!("copies came from {copied_from:?} only");
        };
        copied_from.insert(event["pod"].as_str().unwrap().to_owned());
    }
    cli.signal(libc::SIGINT);
    assert_eq!(cli.finish().0, Some(0));
}
