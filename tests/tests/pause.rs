//! Pause end to end in the pod simulation with a shared PID namespace: the
//! app, the sidecar and the guard each in their own cgroup (container), PID
//! 1 a reaper; sessions from the real CLI through the port-forward relay.
//! Process states are read from /proc (`T` = stopped). Every way a session
//! can end must leave the app running; the measured resume latencies are
//! printed. Needs root; skips outside CI otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mirrord_config::names::TUNNEL_PORT;
use mirrord_tests::loopback::App;
use mirrord_tests::pidns::{Container, Processes};
use mirrord_tests::pod::{Pod, Side};
use mirrord_tests::relay::Relay;
use mirrord_tests::session::Cli;
use mirrord_tests::{netns, root_or_skip, workspace_bin};

/// The app: a server, plus a shell that forks a short-lived child every
/// 20 ms (so pausing races forks), plus a parent-and-child pair.
fn app_script() -> String {
    let app = workspace_bin("sample-app");
    format!(
        "'{}' --http 0.0.0.0:80 --name remote & sh -c 'sleep 1000 & sleep 1000; wait' & while :; do sleep 0.02 & wait $!; done",
        app.display()
    )
}

struct World {
    // Dropped first: the processes die with PID 1, then the namespaces go.
    procs: Processes,
    pod: Pod,
    app: Container,
    sidecar: Container,
    local: App,
    relay: Relay,
}

fn proxy() -> String {
    workspace_bin("mirrord-proxy").to_str().unwrap().to_owned()
}

/// A pod with the app, the iptables rules, the sidecar (with `sidecar_args`)
/// and, if `guard`, the guard; a local app; the relay.
fn world(test: &str, guard: bool, sidecar_args: &[&str], sidecar_env: &[(&str, &str)]) -> Option<World> {
    if !root_or_skip(test) {
        return None;
    }
    let pod = Pod::new();
    let mut procs = Processes::new(&pod.pod_ns);
    let app = procs.spawn("app", false, &[], "sh", &["-c", &app_script()]);
    netns::wait_listening(&pod.pod_ns, pod.addr(80), Duration::from_secs(10)).expect("app listening");
    pod.init(&["--ports", "80"]);
    let sidecar = start_sidecar(&mut procs, &pod, sidecar_args, sidecar_env);
    if guard {
        start_guard(&mut procs, &[]);
    }
    let local =
        App::start_with(workspace_bin("sample-app").to_str().unwrap(), &["--http", "127.0.0.1:0", "--name", "local"]);
    let relay = Relay::start(&pod.pod_ns, TUNNEL_PORT).unwrap();
    Some(World { procs, pod, app, sidecar, local, relay })
}

fn start_sidecar(procs: &mut Processes, pod: &Pod, args: &[&str], env: &[(&str, &str)]) -> Container {
    let mut all = vec!["run", "--ports", "80", "--grace-period", "2s", "--insecure-no-token"];
    all.extend_from_slice(args);
    let sidecar = procs.spawn("sidecar", false, env, &proxy(), &all);
    pod.wait_ready(|| procs.log("sidecar"));
    sidecar
}

fn start_guard(procs: &mut Processes, args: &[&str]) -> Container {
    // Looks at the app every 50 ms while any of its processes is stopped,
    // every 200 ms while none is (2 s by default): a wedged sidecar's pause
    // and lease are seen soon.
    let mut all = vec!["guard", "--interval", "50ms", "--idle-interval", "200ms"];
    all.extend_from_slice(args);
    let guard = procs.spawn("guard", false, &[], &proxy(), &all);
    procs.wait_log("guard", "watching the sidecar", Duration::from_secs(10));
    guard
}

fn pause_config(mode: &str, local_port: u16) -> String {
    format!(
        r#"{{"pause":true,"feature":{{"network":{{"incoming":{{"mode":"{mode}","ports":[80],"port_mapping":[[{local_port},80]]}}}}}}}}"#
    )
}

impl World {
    /// A session that asked for pause, once the sidecar says the app is paused.
    fn paused_session(&self, name: &str) -> Cli {
        let mut cli = Cli::connect(self.relay.addr, name, &pause_config("steal", self.local.addr.port()));
        cli.wait_plan();
        let event = cli.wait_for(Duration::from_secs(10), |e| e["event"] == "pause");
        let event = event.unwrap_or_else(|| panic!("no pause event: {}", cli.finish().1));
        assert_eq!(event["paused"], true, "{event}");
        cli
    }

    fn assert_paused(&self) {
        let took = self.app.wait(Duration::from_secs(2), Container::all_stopped);
        assert!(took.is_some(), "app not paused: {:?}", self.app.states());
    }

    /// How long until no app process is stopped, from now.
    fn resumed_within(&self, within: Duration) -> Duration {
        self.app
            .wait(within, Container::none_stopped)
            .unwrap_or_else(|| panic!("app still stopped after {within:?}: {:?}", self.app.states()))
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let text = self.pod.metrics();
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
    }

    fn who(&self, user_agent: &str) -> String {
        let url = format!("http://{}/who", self.pod.pod_ip);
        let out = self.pod.exec(Side::Node, "curl", &["-sS", "--max-time", "2", "-A", user_agent, &url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn report(what: &str, took: Duration) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "resume latency, {what}: {:.1} ms", took.as_secs_f64() * 1e3);
}

#[test]
fn pause_is_held_by_sessions_and_released_by_the_last_one() {
    let Some(w) = world("pause_is_held_by_sessions_and_released_by_the_last_one", false, &[], &[]) else { return };
    assert!(w.app.states().len() >= 4, "app tree: {:?}", w.app.states());
    let mut alice = w.paused_session("alice");
    w.assert_paused();
    assert_eq!(w.metric("mirrord_proxy_paused "), Some(1.0));
    // Stopped for good: still stopped a few rescans later, forks included.
    std::thread::sleep(Duration::from_millis(300));
    assert!(w.app.all_stopped(), "{:?}", w.app.states());
    // Stolen traffic reaches the local app while the remote one is paused.
    assert!(w.who("curl").contains("local"));

    // A second holder: alice leaving does not resume.
    let bob_config = r#"{"pause":true,"feature":{"network":{"incoming":{"mode":"mirror","ports":[80]}}}}"#;
    let mut bob = Cli::connect(w.relay.addr, "bob", bob_config);
    let plan = bob.wait_plan();
    assert!(plan["warnings"].to_string().contains("pause is on but incoming traffic is not stolen"), "{plan}");
    bob.wait_for(Duration::from_secs(5), |e| e["event"] == "pause").expect("bob told of the pause");
    let start = Instant::now();
    alice.signal(libc::SIGINT);
    assert_eq!(alice.finish().0, Some(0));
    std::thread::sleep(Duration::from_millis(200));
    assert!(w.app.all_stopped(), "bob still holds the pause: {:?}", w.app.states());
    let _ = start;

    // bob leaves with Ctrl-C: the app runs again.
    let start = Instant::now();
    bob.signal(libc::SIGINT);
    let took = w.resumed_within(Duration::from_secs(2));
    report("Ctrl-C of the last holder", start.elapsed().max(took));
    assert_eq!(bob.finish().0, Some(0));
    assert_eq!(w.metric("mirrord_proxy_paused "), Some(0.0));
    assert!(w.metric("mirrord_proxy_paused_seconds_total ").unwrap() > 0.3);
    assert!(w.who("curl").contains("remote"), "the app answers again");
    assert!(w.sidecar.states().iter().all(|(_, s)| *s != 'T'), "the sidecar itself is never stopped");
}

#[test]
fn sigkill_of_the_cli_resumes_the_app() {
    let Some(w) = world("sigkill_of_the_cli_resumes_the_app", false, &[], &[]) else { return };
    let mut cli = w.paused_session("alice");
    w.assert_paused();
    let start = Instant::now();
    cli.signal(libc::SIGKILL);
    w.resumed_within(Duration::from_secs(2));
    let took = start.elapsed();
    report("CLI SIGKILL", took);
    assert!(took < Duration::from_millis(100), "resumed after {took:?}");
    let _ = cli.finish();
}

#[test]
fn silent_tunnel_resumes_within_the_keepalive_bound() {
    let Some(w) = world("silent_tunnel_resumes_within_the_keepalive_bound", false, &[], &[]) else { return };
    let cli = w.paused_session("alice");
    w.assert_paused();
    let start = Instant::now();
    cli.signal(libc::SIGSTOP);
    w.resumed_within(Duration::from_secs(6));
    let took = start.elapsed();
    report("CLI SIGSTOP (silent tunnel)", took);
    assert!(took < Duration::from_millis(3500), "resumed after {took:?}");
    cli.signal(libc::SIGCONT);
}

#[test]
fn sidecar_sigterm_resumes_the_app_before_it_exits() {
    let Some(mut w) = world("sidecar_sigterm_resumes_the_app_before_it_exits", false, &[], &[]) else { return };
    let _cli = w.paused_session("alice");
    w.assert_paused();
    let sidecar = w.sidecar.pids()[0];
    let start = Instant::now();
    // SAFETY: kill(2) of the sidecar this test started.
    unsafe { libc::kill(sidecar as i32, libc::SIGTERM) };
    let took = w.resumed_within(Duration::from_secs(2));
    report("sidecar SIGTERM", start.elapsed());
    // The sidecar is still draining (or just gone) when the app runs again.
    let exited = w.sidecar.wait(Duration::from_secs(5), |c| c.pids().is_empty());
    assert!(exited.is_some(), "sidecar did not exit");
    assert!(took <= start.elapsed(), "resumed first");
    assert!(w.procs.log("sidecar").contains("app resumed: the sidecar is shutting down"), "{}", w.procs.log("sidecar"));
    let _ = &mut w;
}

#[test]
fn sidecar_panic_resumes_the_app_before_it_exits() {
    let env = [("MIRRORD_FAILPOINT", "panic-while-paused")];
    let Some(w) = world("sidecar_panic_resumes_the_app_before_it_exits", false, &[], &env) else { return };
    let mut cli = Cli::connect(w.relay.addr, "alice", &pause_config("steal", w.local.addr.port()));
    cli.wait_plan();
    // The first rescan after pausing panics: the sidecar dies; no guard runs.
    let exited = w.sidecar.wait(Duration::from_secs(5), |c| c.pids().is_empty());
    assert!(exited.is_some(), "sidecar did not die:\n{}", w.procs.log("sidecar"));
    assert!(w.app.none_stopped(), "app left stopped: {:?}", w.app.states());
    let log = w.procs.log("sidecar");
    assert!(log.contains("panic: resumed"), "{log}");
    assert!(log.find("panic: resumed").unwrap() < log.find("failpoint panic-while-paused").unwrap(), "{log}");
}

#[test]
fn sidecar_sigkill_guard_resumes_and_a_restarted_sidecar_cleans_up() {
    let Some(mut w) = world("sidecar_sigkill_guard_resumes_and_a_restarted_sidecar_cleans_up", false, &[], &[]) else {
        return;
    };
    let guard = start_guard(&mut w.procs, &[]);
    let _cli = w.paused_session("alice");
    w.assert_paused();
    let start = Instant::now();
    // SAFETY: kill(2) of the sidecar this test started.
    unsafe { libc::kill(w.sidecar.pids()[0] as i32, libc::SIGKILL) };
    w.resumed_within(Duration::from_secs(2));
    let took = start.elapsed();
    report("sidecar SIGKILL (guard)", took);
    assert!(took < Duration::from_millis(50), "resumed after {took:?}");
    w.procs.wait_log("guard", "the sidecar exited; resumed", Duration::from_secs(2));

    // Without a guard, a killed sidecar leaves the app stopped: the next
    // sidecar resumes it at start-up (a container restart).
    for pid in guard.pids() {
        // SAFETY: kill(2) of the guard this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    w.sidecar.wait(Duration::from_secs(2), |c| c.pids().is_empty()).unwrap();
    w.sidecar = start_sidecar(&mut w.procs, &w.pod, &[], &[]);
    let _cli = w.paused_session("bob");
    w.assert_paused();
    // SAFETY: as above.
    unsafe { libc::kill(w.sidecar.pids()[0] as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(w.app.all_stopped(), "nothing resumes without the guard: {:?}", w.app.states());
    let start = Instant::now();
    w.sidecar = start_sidecar(&mut w.procs, &w.pod, &[], &[]);
    w.resumed_within(Duration::from_secs(1));
    report("sidecar restart", start.elapsed());
    assert!(w.procs.log("sidecar").contains("resumed app processes left stopped by a previous sidecar"));
}

#[test]
fn lease_ends_the_pause_and_tells_the_session() {
    let Some(w) = world("lease_ends_the_pause_and_tells_the_session", false, &["--max-pause", "1s"], &[]) else {
        return;
    };
    let cli = w.paused_session("alice");
    w.assert_paused();
    let start = Instant::now();
    let event = cli.wait_for(Duration::from_secs(5), |e| e["event"] == "pause" && e["paused"] == false).unwrap();
    assert_eq!(event["message"], "app resumed: the pause reached its lease of 1s");
    w.resumed_within(Duration::from_secs(1));
    assert!(start.elapsed() < Duration::from_millis(1500));
    // It stays resumed, while the session goes on.
    std::thread::sleep(Duration::from_millis(300));
    assert!(w.app.none_stopped());
    assert!(w.who("curl").contains("local"), "the session still steals");
}

#[test]
fn guard_enforces_the_lease_when_the_sidecar_is_wedged() {
    let Some(mut w) = world("guard_enforces_the_lease_when_the_sidecar_is_wedged", false, &[], &[]) else { return };
    start_guard(&mut w.procs, &["--max-pause", "1s"]);
    let cli = w.paused_session("alice");
    w.assert_paused();
    let sidecar = w.sidecar.pids()[0];
    // A wedged sidecar: alive (its pidfd says nothing) but doing nothing.
    // SAFETY: kill(2) of the sidecar this test started.
    unsafe { libc::kill(sidecar as i32, libc::SIGSTOP) };
    let took = w.resumed_within(Duration::from_secs(3));
    assert!(took > Duration::from_millis(500), "not before the lease: {took:?}");
    w.procs.wait_log("guard", "the pause outlasted its lease", Duration::from_secs(2));
    // SAFETY: as above.
    unsafe { libc::kill(sidecar as i32, libc::SIGCONT) };
    drop(cli);
}

#[test]
fn termination_pending_on_the_app_resumes_it_at_once() {
    let Some(w) = world("termination_pending_on_the_app_resumes_it_at_once", false, &[], &[]) else { return };
    let cli = w.paused_session("alice");
    w.assert_paused();
    // What pod deletion does: SIGTERM to the container's main process,
    // which stays pending while it is stopped.
    let main = *w.app.pids().iter().min().unwrap();
    let start = Instant::now();
    // SAFETY: kill(2) of the app this test started.
    unsafe { libc::kill(main as i32, libc::SIGTERM) };
    let took = w.app.wait(Duration::from_secs(2), |c| !c.pids().contains(&main));
    let took = took.unwrap_or_else(|| panic!("the app's main process never got its SIGTERM: {:?}", w.app.states()));
    report("SIGTERM pending on the app", took);
    assert!(took < Duration::from_millis(200), "{took:?}");
    let event = cli.wait_for(Duration::from_secs(2), |e| e["event"] == "pause" && e["paused"] == false).unwrap();
    assert!(event["message"].as_str().unwrap().contains("asked to terminate"), "{event}");
    assert!(w.app.none_stopped());
    let _ = start;
}

#[test]
fn probes_are_answered_while_the_app_is_paused() {
    let Some(w) = world("probes_are_answered_while_the_app_is_paused", false, &[], &[]) else { return };
    // Mirror + pause: nothing takes the requests, the app is paused.
    let mut cli = Cli::connect(w.relay.addr, "alice", &pause_config("mirror", w.local.addr.port()));
    cli.wait_plan();
    cli.wait_for(Duration::from_secs(5), |e| e["event"] == "pause").unwrap();
    w.assert_paused();
    let probe = w.who("kube-probe/1.31");
    assert_eq!(probe, "the app is paused by mirrord; its sidecar answers the probes\n");
    // Anything else waits on the paused app.
    assert_eq!(w.who("curl"), "");
    cli.signal(libc::SIGINT);
    w.resumed_within(Duration::from_secs(2));
    assert!(w.who("kube-probe/1.31").contains("remote"), "the app answers its probes again");
}

#[test]
fn pause_is_refused_when_the_app_is_not_visible() {
    if !root_or_skip("pause_is_refused_when_the_app_is_not_visible") {
        return;
    }
    // No shared process namespace: the sidecar sees only itself.
    let mut pod = Pod::new();
    pod.start_app(&["--http", "0.0.0.0:80", "--name", "remote"], pod.addr(80));
    pod.init(&["--ports", "80"]);
    let bin = proxy();
    pod.spawn(
        Side::Pod,
        "sidecar",
        "unshare",
        &["--pid", "--fork", "--kill-child", "--mount-proc", &bin, "run", "--ports", "80", "--insecure-no-token"],
    );
    pod.wait_ready(|| pod.log("sidecar"));
    let local =
        App::start_with(workspace_bin("sample-app").to_str().unwrap(), &["--http", "127.0.0.1:0", "--name", "local"]);
    let relay = Relay::start(&pod.pod_ns, TUNNEL_PORT).unwrap();
    let mut cli = Cli::connect(relay.addr, "alice", &pause_config("steal", local.addr.port()));
    let (code, err) = cli.finish();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("pause refused: no process of the app is visible to the sidecar"), "{err}");
    assert!(pod.metrics().contains("mirrord_proxy_sessions 0"));
}

/// A small deterministic generator; the seed is printed so a failure can be replayed
/// with `MIRRORD_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Ends a session with Ctrl-C (waiting for the CLI to exit) or SIGKILL.
fn end(mut cli: Cli, rng: &mut Rng) {
    if rng.below(2) == 0 {
        cli.signal(libc::SIGINT);
        let _ = cli.finish();
    } else {
        cli.signal(libc::SIGKILL);
    }
}

/// End to end, with real processes, signals, sessions and sidecar kills; the
/// policy itself is run through thousands of sequences without root in
/// `proxy/src/pause/policy/tests.rs`.
#[test]
fn randomized_sequences_never_leave_the_app_stopped() {
    let Some(mut w) = world("randomized_sequences_never_leave_the_app_stopped", true, &[], &[]) else { return };
    let seed = std::env::var("MIRRORD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("MIRRORD_TEST_SEED={seed}");
    let mut rng = Rng(seed);
    let mut names = 0u32;
    let mut counts = [0u32; 5];
    for sequence in 0..40 {
        let mut sessions: Vec<Cli> = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let op = match rng.below(10) {
                0..=4 if sessions.len() < 3 => 0,
                0..=6 if !sessions.is_empty() => 1,
                7 => 2,
                8 => 3,
                _ => 4,
            };
            counts[op] += 1;
            match op {
                0 => {
                    names += 1;
                    let config = format!(
                        r#"{{"pause":true,"feature":{{"network":{{"incoming":{{"mode":"steal","ports":[80],"http_filter":{{"header_filter":"x-user: u{names}"}},"port_mapping":[[{},80]]}}}}}}}}"#,
                        w.local.addr.port()
                    );
                    let mut cli = Cli::connect(w.relay.addr, &format!("u{names}"), &config);
                    cli.wait_plan();
                    cli.wait_for(Duration::from_secs(5), |e| e["event"] == "pause").expect("pause event");
                    sessions.push(cli);
                }
                1 => {
                    let cli = sessions.remove(rng.below(sessions.len() as u64) as usize);
                    end(cli, &mut rng);
                }
                2 => {
                    // Someone else continues the app: the pause stops it again.
                    for pid in w.app.pids() {
                        // SAFETY: kill(2) of the app this test started.
                        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
                    }
                }
                3 => {
                    // The sidecar is killed: the guard resumes; its sessions are gone;
                    // the container restarts.
                    // SAFETY: kill(2) of the sidecar this test started.
                    unsafe { libc::kill(w.sidecar.pids()[0] as i32, libc::SIGKILL) };
                    w.sidecar.wait(Duration::from_secs(2), |c| c.pids().is_empty()).expect("sidecar gone");
                    w.resumed_within(Duration::from_millis(500));
                    sessions.clear();
                    w.sidecar = start_sidecar(&mut w.procs, &w.pod, &[], &[]);
                }
                _ => std::thread::sleep(Duration::from_millis(rng.below(60))),
            }
            let ok = if sessions.is_empty() {
                w.app.wait(Duration::from_secs(1), Container::none_stopped)
            } else {
                w.app.wait(Duration::from_secs(1), Container::all_stopped)
            };
            assert!(
                ok.is_some(),
                "sequence {sequence} (seed {seed}), {} sessions, after op {op}: {:?}",
                sessions.len(),
                w.app.states()
            );
        }
        for cli in sessions.drain(..) {
            end(cli, &mut rng);
        }
        let ok = w.app.wait(Duration::from_secs(1), Container::none_stopped);
        assert!(ok.is_some(), "sequence {sequence} (seed {seed}) left the app stopped: {:?}", w.app.states());
    }
    eprintln!(
        "operations: {} opens, {} ends, {} foreign SIGCONTs, {} sidecar kills, {} waits",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    );
    assert!(w.app.none_stopped());
}

#[test]
fn only_the_named_app_containers_are_paused() {
    if !root_or_skip("only_the_named_app_containers_are_paused") {
        return;
    }
    // Every container named as kubelet names them: the app, another
    // sidecar of the pod (a service mesh proxy), and mirrord's own.
    let pod = Pod::new();
    let mut procs = Processes::new(&pod.pod_ns);
    let app = procs.spawn("app", true, &[], "sh", &["-c", &app_script()]);
    let mesh = procs.spawn("istio-proxy", true, &[], "sh", &["-c", "sleep 1000 & sleep 1000"]);
    netns::wait_listening(&pod.pod_ns, pod.addr(80), Duration::from_secs(10)).expect("app listening");
    pod.init(&["--ports", "80"]);
    let env = [(mirrord_config::names::ENV_APP_CONTAINERS, "app")];
    let sidecar = procs.spawn("mirrord-proxy", true, &env, &proxy(), &["run", "--ports", "80", "--insecure-no-token"]);
    pod.wait_ready(|| procs.log("mirrord-proxy"));
    let local =
        App::start_with(workspace_bin("sample-app").to_str().unwrap(), &["--http", "127.0.0.1:0", "--name", "local"]);
    let relay = Relay::start(&pod.pod_ns, TUNNEL_PORT).unwrap();
    let mut cli = Cli::connect(relay.addr, "alice", &pause_config("steal", local.addr.port()));
    cli.wait_plan();
    let event = cli.wait_for(Duration::from_secs(5), |e| e["event"] == "pause").unwrap();
    assert!(app.wait(Duration::from_secs(2), Container::all_stopped).is_some(), "{:?}", app.states());
    let stopped = event["processes"].as_u64().unwrap();
    assert!(stopped >= 4, "{event}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(mesh.none_stopped() && sidecar.none_stopped(), "{:?} {:?}", mesh.states(), sidecar.states());
    cli.signal(libc::SIGINT);
    assert!(app.wait(Duration::from_secs(2), Container::none_stopped).is_some());
    drop(procs);
}
