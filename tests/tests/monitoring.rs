//! The dashboards and alerts against a real Prometheus scraping a sidecar in
//! the pod simulation and a running injector: traffic passed through, stolen
//! and mirrored (to a stalled consumer, so copies drop), sessions closed and
//! lost, a pause released, a sidecar killed while paused, admissions of every
//! outcome, an injector stopped. Every dashboard query and every alert
//! expression is evaluated through Prometheus' HTTP API, and the values the
//! test knows exactly are checked.
//!
//! Prometheus scrapes through the shipped `scrape-configs.yaml` (its
//! relabelling as written), with static targets in place of
//! kubernetes_sd, which cannot run without an API server: each carries the
//! `__meta_kubernetes_*` labels discovery gives such a pod.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirrord_config::names::{ADMIN_PORT, TUNNEL_PORT};
use mirrord_tests::loopback::App;
use mirrord_tests::pidns::{Container, Processes};
use mirrord_tests::pod::{Pod, Side};
use mirrord_tests::relay::Relay;
use mirrord_tests::session::Cli;
use mirrord_tests::{free_port, http_get, netns, root_or_skip, workspace_bin};
use serde_json::Value;

const NAMESPACE: &str = "shop";
const WORKLOAD: &str = "api";
const POD: &str = "api-5d8f9c7b6-x2x7q";
/// A pod port that is not the sidecar's: the scrape config drops it.
const DROPPED_TARGET: &str = "10.9.9.9:8080";

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/monitoring")
}

/// A child process killed and reaped when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    addr: SocketAddr,
    _process: Running,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Prometheus scraping the sidecar and the injector through the shipped
    /// `scrape-configs.yaml`: its relabelling as written, each
    /// `kubernetes_sd_configs` replaced by static targets carrying the
    /// `__meta_kubernetes_*` labels that discovery gives such a pod (and a
    /// pod port the rules must drop).
    fn start(sidecar_admin: SocketAddr, injector_admin: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = monitoring().join("rules/mirrord.rules.yaml").canonicalize().unwrap();
        let shipped: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(monitoring().join("scrape-configs.yaml")).unwrap()).unwrap();
        let replica_set = POD.rsplit_once('-').unwrap().0;
        let mut jobs = shipped["scrape_configs"].as_sequence().unwrap().clone();
        for job in &mut jobs {
            let discovered = match job["job_name"].as_str().unwrap() {
                "mirrord-sidecars" => serde_json::json!([
                    {"targets": [sidecar_admin.to_string()],
                     "labels": {"__meta_kubernetes_namespace": NAMESPACE, "__meta_kubernetes_pod_name": POD,
                                "__meta_kubernetes_pod_container_port_name": "mirrord-admin",
                                "__meta_kubernetes_pod_controller_kind": "ReplicaSet",
                                "__meta_kubernetes_pod_controller_name": replica_set}},
                    {"targets": [DROPPED_TARGET],
                     "labels": {"__meta_kubernetes_namespace": NAMESPACE, "__meta_kubernetes_pod_name": POD,
                                "__meta_kubernetes_pod_container_port_name": "http"}}
                ]),
                "mirrord-injector" => serde_json::json!([
                    {"targets": [injector_admin.to_string()],
                     "labels": {"__meta_kubernetes_namespace": "mirrord",
                                "__meta_kubernetes_pod_name": "mirrord-injector-6c9f8d-abcde",
                                "__meta_kubernetes_service_name": "mirrord-injector",
                                "__meta_kubernetes_endpoint_port_name": "admin"}}
                ]),
                other => panic!("a scrape job the test does not know: {other}"),
            };
            let job = job.as_mapping_mut().unwrap();
            assert!(job.remove("kubernetes_sd_configs").is_some());
            job.insert("static_configs".into(), serde_yaml::to_value(discovered).unwrap());
        }
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": jobs,
        });
        let config = serde_yaml::to_string(&config).unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let process = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .args(["--log.level=warn", "--storage.tsdb.retention.time=1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/test.sh unpacks Debian's package under target/tools)");
        let prometheus = Prometheus { addr, _process: Running(process), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_get(addr, "/-/ready").is_ok_and(|(s, _)| s == 200) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// An instant query: its result vector (or an error naming the query).
    fn query_at(&self, expr: &str, time: Option<f64>) -> Result<Vec<Value>, String> {
        let mut path = format!("/api/v1/query?query={}", percent_encode(expr));
        if let Some(t) = time {
            path.push_str(&format!("&time={t:.3}"));
        }
        let (status, body) = http_get(self.addr, &path).map_err(|e| format!("{expr}: {e}"))?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{expr}: {e}: {body}"))?;
        if status != 200 || answer["status"] != "success" {
            return Err(format!("{expr}: {status} {body}"));
        }
        let result = &answer["data"]["result"];
        if answer["data"]["resultType"] == "scalar" {
            // [time, "value"]: one sample.
            return Ok(vec![serde_json::json!({"metric": {}, "value": result})]);
        }
        Ok(result.as_array().cloned().unwrap_or_default())
    }

    fn query(&self, expr: &str) -> Vec<Value> {
        self.query_at(expr, None).unwrap()
    }

    /// The single value of `expr` now, if it has exactly one sample.
    fn value(&self, expr: &str) -> Option<f64> {
        match self.query(expr).as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits until `expr` has a sample satisfying `ok`.
    fn wait_value(&self, expr: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.value(expr);
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{expr} = {v:?}, not what was expected within 20 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn now(&self) -> f64 {
        self.value("time()").unwrap()
    }
}

/// The queries of a dashboard with Grafana's variables filled in as a user
/// selecting this test's namespace, workload and pod would have them.
fn dashboard_queries(file: &str) -> Vec<String> {
    let board: Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring().join("dashboards").join(file)).unwrap()).unwrap();
    let mut queries: Vec<String> = board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    for var in board["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            // label_values(SELECTOR, LABEL) is Grafana's: the series must exist.
            let selector = q.strip_prefix("label_values(").and_then(|r| r.rsplit_once(',')).map(|(s, _)| s).unwrap();
            queries.push(selector.to_owned());
        }
    }
    queries
        .into_iter()
        .map(|q| {
            q.replace("$__rate_interval", "15s")
                .replace("$__range", "5m")
                .replace("$namespace", NAMESPACE)
                .replace("$workload", WORKLOAD)
                .replace("$pod", POD)
                .replace("$job", "mirrord-injector")
        })
        .collect()
}

/// The alert expressions of the shipped rules, by name.
fn alert_expressions() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(monitoring().join("rules/mirrord.rules.yaml")).unwrap()).unwrap();
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| (r["alert"].as_str().unwrap().to_owned(), r["expr"].as_str().unwrap().to_owned()))
        .collect()
}

fn app_script() -> String {
    format!("'{}' --http 0.0.0.0:80 --name remote & sleep 1000 & wait", workspace_bin("sample-app").display())
}

fn start_sidecar(procs: &mut Processes, pod: &Pod) -> Container {
    let sidecar = procs.spawn(
        "sidecar",
        false,
        &[],
        workspace_bin("mirrord-proxy").to_str().unwrap(),
        &["run", "--ports", "80", "--grace-period", "1s", "--max-pause", "10m", "--insecure-no-token"],
    );
    pod.wait_ready(|| procs.log("sidecar"));
    sidecar
}

/// `n` GETs of /who from the node on one keep-alive connection: how many the
/// local app answered.
fn requests(pod: &Pod, n: usize, headers: &[&str]) -> usize {
    requests_with(pod, n, headers, &[])
}

/// [`requests`] with more curl arguments (a body: POSTs).
fn requests_with(pod: &Pod, n: usize, headers: &[&str], more: &[&str]) -> usize {
    let url = format!("http://{}/who?n=[1-{n}]", pod.pod_ip);
    let mut args = vec!["-sS", "--max-time", "60", "--noproxy", "*"];
    args.extend_from_slice(more);
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let out = pod.exec(Side::Node, "curl", &args);
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let bodies: Vec<Value> =
        serde_json::Deserializer::from_str(&text).into_iter::<Value>().map(Result::unwrap).collect();
    assert_eq!(bodies.len(), n, "{text}");
    bodies.iter().filter(|b| b["app"] == "local").count()
}

fn session_config(mode: &str, filter: &str, local_port: u16, pause: bool) -> String {
    format!(
        r#"{{"pause":{pause},"feature":{{"network":{{"incoming":{{"mode":"{mode}","ports":[80],"http_filter":{{"header_filter":"{filter}"}},"port_mapping":[[{local_port},80]]}}}}}}}}"#
    )
}

/// POSTs an AdmissionReview to the injector with curl: the HTTP status.
fn admit(injector: SocketAddr, ca: &Path, body: &str) -> u16 {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*", "--cacert"])
        .arg(ca)
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", file.path().display()))
        .arg(format!("https://localhost:{}/mutate", injector.port()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn review(annotations: Value, env_vars: usize) -> String {
    let env: Vec<Value> =
        (0..env_vars).map(|i| serde_json::json!({"name": format!("VAR_{i}"), "value": "x".repeat(40)})).collect();
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "e2e", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
                    "namespace": NAMESPACE,
                    "object": {"metadata": {"generateName": "api-", "annotations": annotations},
                               "spec": {"containers": [{"name": "api", "image": "api:1", "env": env,
                                                        "ports": [{"containerPort": 8080}]}]}}}
    })
    .to_string()
}

#[test]
fn dashboards_and_alerts_against_a_real_prometheus() {
    if !root_or_skip("dashboards_and_alerts_against_a_real_prometheus") {
        return;
    }
    let pod = Pod::new();
    let mut procs = Processes::new(&pod.pod_ns);
    let app = procs.spawn("app", false, &[], "sh", &["-c", &app_script()]);
    netns::wait_listening(&pod.pod_ns, pod.addr(80), Duration::from_secs(10)).expect("app listening");
    pod.init(&["--ports", "80"]);
    let mut sidecar = start_sidecar(&mut procs, &pod);
    procs.spawn(
        "guard",
        false,
        &[],
        workspace_bin("mirrord-proxy").to_str().unwrap(),
        &["guard", "--interval", "50ms", "--max-pause", "11m"],
    );
    procs.wait_log("guard", "watching the sidecar", Duration::from_secs(10));
    let tunnel = Relay::start(&pod.pod_ns, TUNNEL_PORT).unwrap();
    let admin = Relay::start(&pod.pod_ns, ADMIN_PORT).unwrap();
    let local =
        App::start_with(workspace_bin("sample-app").to_str().unwrap(), &["--http", "127.0.0.1:0", "--name", "local"]);
    // A consumer that accepts copies and never reads them.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_port = stalled.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in stalled.incoming().flatten() {
            held.push(conn);
        }
    });
    let certs = tempfile::tempdir().unwrap();
    // A certificate that expires in 3 days.
    let injector = mirrord_tests::injector::Injector::start(certs.path(), 3);
    let (injector_addr, injector_admin, ca) = (injector.listen, injector.admin, injector.cert.clone());
    let prom = Prometheus::start(admin.addr, injector_admin);
    prom.wait_value(r#"up{job="mirrord-sidecars"}"#, |v| v == 1.0);
    prom.wait_value(r#"up{job="mirrord-injector"}"#, |v| v == 1.0);
    // The labels come from the shipped relabelling; the app's port is dropped.
    let up = prom.query_at(r#"up{job="mirrord-sidecars"}"#, None).unwrap();
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["metric"]["namespace"], NAMESPACE);
    assert_eq!(up[0]["metric"]["pod"], POD);
    assert_eq!(up[0]["metric"]["workload"], WORKLOAD);
    let up = prom.query_at(r#"up{job="mirrord-injector"}"#, None).unwrap();
    assert_eq!(up[0]["metric"]["namespace"], "mirrord", "{up:?}");
    let (_, targets) = http_get(prom.addr, "/api/v1/targets?state=dropped").unwrap();
    assert!(targets.contains(DROPPED_TARGET), "{targets}");

    // Passthrough, then a steal session that takes exactly the matching requests.
    assert_eq!(requests(&pod, 20, &[]), 0);
    let mut alice =
        Cli::connect(tunnel.addr, "alice", &session_config("steal", "x-user: alice", local.addr.port(), false));
    alice.wait_plan();
    const STOLEN: usize = 7;
    assert_eq!(requests(&pod, STOLEN, &["x-user: alice"]), STOLEN);
    assert_eq!(requests(&pod, 5, &["x-user: bob"]), 0);
    // A mirror session: copies of requests without a body travel whole.
    let mut bob = Cli::connect(tunnel.addr, "bob", &session_config("mirror", "x-copy: 1", stalled_port, false));
    bob.wait_plan();
    const MIRRORED: usize = 30;
    assert_eq!(requests(&pod, MIRRORED, &["x-copy: 1"]), 0, "mirrored requests are answered by the app");
    let mirrored = r#"sum(mirrord_proxy_request_duration_seconds_count{route="mirrored"})"#;
    assert_eq!(prom.wait_value(mirrored, |v| v >= MIRRORED as f64), MIRRORED as f64);
    let passthrough = r#"sum(mirrord_proxy_request_duration_seconds_count{route="passthrough"})"#;
    assert_eq!(prom.wait_value(passthrough, |v| v >= 25.0), 25.0);
    // Then its machine stops taking anything (a laptop put to sleep): copies
    // with a body wait for an exchange that is never attached, and beyond
    // the sidecar's bound they drop; the app answers every request.
    bob.signal(libc::SIGSTOP);
    let posts = requests_with(&pod, 3000, &["x-copy: 1"], &["--data-binary", "copy me"]);
    assert_eq!(posts, 0, "mirrored requests are answered by the app");
    let stolen = r#"sum(mirrord_proxy_intercepted_total{mode="steal",session="alice"})"#;
    assert_eq!(prom.wait_value(stolen, |v| v >= STOLEN as f64), STOLEN as f64);
    let stolen_timed = r#"sum(mirrord_proxy_request_duration_seconds_count{route="stolen"})"#;
    assert_eq!(prom.wait_value(stolen_timed, |v| v >= STOLEN as f64), STOLEN as f64);
    // Each POST was copied or its copy dropped, never both, never neither.
    let dropped_bob = r#"sum(mirrord_proxy_mirror_dropped_total{session="bob"})"#;
    let accounted = format!("{dropped_bob} + {mirrored}");
    prom.wait_value(&accounted, |v| v == (3000 + MIRRORED) as f64);
    let dropped = prom.value(dropped_bob).unwrap();
    assert!(dropped > 0.0, "no copy dropped for the stopped session");
    assert_eq!(prom.value(r#"sum(mirrord_proxy_request_duration_seconds_count)"#), Some(3062.0));
    assert_eq!(prom.value(passthrough), Some(25.0 + dropped));
    prom.wait_value("mirrord_proxy_sessions", |v| v == 2.0);
    alice.signal(libc::SIGINT);
    alice.finish();
    bob.signal(libc::SIGKILL);
    let _ = bob.finish();
    prom.wait_value(r#"mirrord_proxy_session_ends_total{reason="closed"}"#, |v| v == 1.0);
    prom.wait_value(r#"mirrord_proxy_session_ends_total{reason="lost"}"#, |v| v == 1.0);

    // A pause, held and released.
    let mut carol =
        Cli::connect(tunnel.addr, "carol", &session_config("steal", "x-user: carol", local.addr.port(), true));
    carol.wait_plan();
    carol.wait_for(Duration::from_secs(5), |e| e["event"] == "pause").expect("paused");
    prom.wait_value("mirrord_proxy_paused", |v| v == 1.0);
    assert_eq!(prom.value("mirrord_proxy_pause_lease_seconds"), Some(600.0));
    assert!(prom.value("mirrord_proxy_paused_processes").unwrap() >= 2.0);
    carol.signal(libc::SIGINT);
    carol.finish();
    prom.wait_value(r#"mirrord_proxy_pause_resumes_total{reason="released"}"#, |v| v == 1.0);
    prom.wait_value("mirrord_proxy_paused", |v| v == 0.0);

    // Admissions of every outcome; large pods take longer than 5 ms.
    assert_eq!(admit(injector_addr, &ca, &review(serde_json::json!({"mirrord.dev/inject": "enabled"}), 0)), 200);
    assert_eq!(admit(injector_addr, &ca, &review(serde_json::json!({}), 0)), 200);
    assert_eq!(admit(injector_addr, &ca, &review(serde_json::json!({"mirrord.dev/inject": "yes"}), 0)), 200);
    assert_eq!(admit(injector_addr, &ca, "{not json"), 400);
    for _ in 0..3 {
        let big = review(serde_json::json!({"mirrord.dev/inject": "enabled"}), 30_000);
        assert_eq!(admit(injector_addr, &ca, &big), 200);
    }
    prom.wait_value(r#"mirrord_injector_admissions_total{result="injected",reason=""}"#, |v| v == 4.0);
    assert_eq!(prom.value(r#"mirrord_injector_admissions_total{result="skipped",reason="not_opted_in"}"#), Some(1.0));
    assert_eq!(
        prom.value(r#"mirrord_injector_admissions_total{result="invalid",reason="mirrord.dev/inject"}"#),
        Some(1.0)
    );
    assert_eq!(prom.value(r#"mirrord_injector_admissions_total{result="error",reason="bad_review"}"#), Some(1.0));
    std::thread::sleep(Duration::from_secs(3));

    // Every panel of both dashboards has data for this pod.
    let mut empty = Vec::new();
    for file in ["mirrord-sessions.json", "mirrord-injector.json"] {
        for q in dashboard_queries(file) {
            if prom.query_at(&q, None).unwrap_or_else(|e| panic!("{file}: {e}")).is_empty() {
                empty.push(format!("{file}: {q}"));
            }
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data:\n{}", empty.join("\n"));
    let before_kill = prom.now();

    // The sidecar dies while a session holds the app paused: the guard
    // resumes it, the container restarts.
    let mut dave = Cli::connect(tunnel.addr, "dave", &session_config("steal", "x-user: dave", local.addr.port(), true));
    dave.wait_plan();
    dave.wait_for(Duration::from_secs(5), |e| e["event"] == "pause").expect("paused");
    prom.wait_value("mirrord_proxy_paused", |v| v == 1.0);
    // SAFETY: kill(2) of the sidecar this test started.
    unsafe { libc::kill(sidecar.pids()[0] as i32, libc::SIGKILL) };
    sidecar.wait(Duration::from_secs(5), |c| c.pids().is_empty()).expect("sidecar gone");
    app.wait(Duration::from_secs(2), Container::none_stopped).expect("the guard resumed the app");
    let _ = dave.finish();
    sidecar = start_sidecar(&mut procs, &pod);
    let restarted = prom.wait_value("changes(mirrord_proxy_start_time_seconds[10m])", |v| v >= 1.0);
    assert!(restarted >= 1.0);

    // The app goes away: every connection fails to reach it.
    for pid in app.pids() {
        // SAFETY: kill(2) of the app this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    app.wait(Duration::from_secs(5), |c| c.pids().is_empty()).expect("app gone");
    for _ in 0..10 {
        pod.exec(Side::Node, "curl", &["-sS", "--max-time", "5", "--noproxy", "*", &format!("http://{}/", pod.pod_ip)]);
    }
    prom.wait_value(r#"sum(mirrord_proxy_errors_total{reason="upstream_connect"})"#, |v| v >= 10.0);
    drop(injector);
    prom.wait_value(r#"up{job="mirrord-injector"}"#, |v| v == 0.0);
    std::thread::sleep(Duration::from_secs(2));

    // Every alert expression: each that this run brought about has data; the
    // one it cannot (a sidecar alive that failed to end a pause) has its inputs.
    let after = prom.now();
    for (name, expr) in alert_expressions() {
        let at = match name.as_str() {
            // Drops, admission errors and slowness are in the 5-minute windows
            // either way; the certificate is current throughout.
            "MirrordMirrorCopiesDropped"
            | "MirrordAdmissionErrors"
            | "MirrordAdmissionSlow"
            | "MirrordCertificateExpiring" => before_kill,
            _ => after,
        };
        let result = prom.query_at(&expr, Some(at)).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "MirrordAppPausedPastLease" {
            assert!(result.is_empty(), "{name} fired: {result:?}");
            for input in [
                "mirrord_proxy_paused",
                "mirrord_proxy_pause_started_timestamp_seconds",
                "mirrord_proxy_pause_lease_seconds",
            ] {
                assert!(!prom.query(input).is_empty(), "{name}: no {input}");
            }
            continue;
        }
        assert!(!result.is_empty(), "{name} did not fire on what this test did: {expr}");
        let labels = &result[0]["metric"];
        if name != "MirrordInjectorDown" {
            assert!(labels["namespace"].is_string() && labels["pod"].is_string(), "{name}: {labels}");
        }
    }

    // The picture of the sessions dashboard, from this run's data.
    let started = prom.value("min(min_over_time(mirrord_proxy_start_time_seconds[10m]))").unwrap_or(after - 60.0) - 5.0;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mirrord-sessions.png");
    let status = Command::new("python3")
        .arg(monitoring().join("dashboards/render.py"))
        .arg(format!("http://{}", prom.addr))
        .args([format!("{started:.0}"), format!("{after:.0}")])
        .arg(&out)
        .args([NAMESPACE, WORKLOAD, POD])
        .status()
        .unwrap();
    assert!(status.success(), "render.py failed");
    let png = std::fs::read(&out).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
    eprintln!("dashboard picture: {}", out.display());
    drop(sidecar);
    drop(procs);
}
