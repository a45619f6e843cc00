//! Sessions end to end in the pod simulation: the sidecar in a pod, the CLI
//! on the "laptop" (this namespace) reaching the tunnel through a relay that
//! enters the pod's network namespace, as kubelet's port-forward does; a
//! "remote" app in the pod and a "local" app on the laptop; curl and raw
//! sockets as clients. Needs root; skips outside CI otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use mirrord_tests::loopback::App;
use mirrord_tests::pod::{Pod, Side};
use mirrord_tests::relay::Relay;
use mirrord_tests::session::Cli;
use mirrord_tests::{root_or_skip, workspace_bin};

struct World {
    pod: Pod,
    local: App,
    relay: Relay,
}

/// A pod with the remote app on :80 and the sidecar; a local app; a relay.
fn world(test: &str, local_args: &[&str]) -> Option<World> {
    if !root_or_skip(test) {
        return None;
    }
    let mut pod = Pod::new();
    pod.start_app(&["--http", "0.0.0.0:80", "--tcp-echo", "0.0.0.0:9000", "--name", "remote"], pod.addr(80));
    pod.init(&["--ports", "80,9000"]);
    pod.start_sidecar(&["--ports", "80,9000"]);
    let local = App::start_with(workspace_bin("sample-app").to_str().unwrap(), local_args);
    let relay = Relay::start(&pod.pod_ns, mirrord_config::names::TUNNEL_PORT).unwrap();
    Some(World { pod, local, relay })
}

fn steal_config(filter: &str, local_port: u16) -> String {
    format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","ports":[80],"http_filter":{{"header_filter":"{filter}"}},"port_mapping":[[{local_port},80]]}}}}}}}}"#
    )
}

/// Reads one response with a Content-Length body from a keep-alive connection.
fn read_response_body(s: &mut std::net::TcpStream) -> String {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head");
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

fn metric(pod: &Pod, line: &str) -> bool {
    pod.metrics().lines().any(|l| l == line)
}

#[test]
fn header_filter_steals_matching_requests_also_on_an_open_keepalive_connection() {
    let Some(w) = world(
        "header_filter_steals_matching_requests_also_on_an_open_keepalive_connection",
        &["--http", "127.0.0.1:0", "--name", "local"],
    ) else {
        return;
    };
    let mut keepalive = w.pod.connect_from_node(w.pod.addr(80));
    keepalive.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ask = |user: &str| -> String {
        write!(keepalive, "GET /k HTTP/1.1\r\nHost: pod\r\nX-User: {user}\r\n\r\n").unwrap();
        let body = read_response_body(&mut keepalive);
        serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| v["app"].as_str().unwrap_or_default().to_owned())
            .unwrap_or(body)
    };
    assert_eq!(ask("alice"), "remote", "before the session");

    let mut cli = Cli::connect(w.relay.addr, "alice", &steal_config("x-user: alice", w.local.addr.port()));
    let plan = cli.wait_plan();
    assert_eq!(
        plan["ports"][0]["action"],
        format!("steal requests matching header \"x-user: alice\" (to local port {})", w.local.addr.port())
    );
    assert_eq!(ask("alice"), "local", "the open keep-alive connection's next matching request must be stolen");
    assert_eq!(ask("bob"), "remote");
    assert_eq!(w.pod.answered_by(&["X-User: alice"]), "local");
    assert_eq!(w.pod.answered_by(&[]), "remote");
    assert!(
        metric(&w.pod, "mirrord_proxy_intercepted_total{port=\"80\",mode=\"steal\",session=\"alice\"} 2"),
        "{}",
        w.pod.metrics()
    );

    // Ctrl-C: the traffic is the app's again before the CLI exits.
    cli.signal(libc::SIGINT);
    assert!(cli.wait_for(Duration::from_secs(5), |e| e["event"] == "closed" && e["acknowledged"] == true).is_some());
    assert_eq!(cli.child.wait().unwrap().code(), Some(0));
    assert_eq!(w.pod.answered_by(&["X-User: alice"]), "remote");
}

#[test]
fn two_sessions_with_different_filters_each_get_only_their_own() {
    let Some(w) = world(
        "two_sessions_with_different_filters_each_get_only_their_own",
        &["--http", "127.0.0.1:0", "--name", "alice-laptop", "--http", "127.0.0.1:0"],
    ) else {
        return;
    };
    let bob_app = App::start_with(
        workspace_bin("sample-app").to_str().unwrap(),
        &["--http", "127.0.0.1:0", "--name", "bob-laptop"],
    );
    let mut alice =
        Cli::connect(w.relay.addr, "alice", &steal_config("baggage: .*mirrord-session=alice", w.local.addr.port()));
    alice.wait_plan();
    let mut bob =
        Cli::connect(w.relay.addr, "bob", &steal_config("baggage: .*mirrord-session=bob", bob_app.addr.port()));
    bob.wait_plan();
    for _ in 0..3 {
        assert_eq!(w.pod.answered_by(&["baggage: k=v,mirrord-session=alice"]), "alice-laptop");
        assert_eq!(w.pod.answered_by(&["baggage: mirrord-session=bob"]), "bob-laptop");
        assert_eq!(w.pod.answered_by(&[]), "remote");
    }
}

#[test]
fn second_unfiltered_steal_of_a_port_is_refused() {
    let Some(w) = world("second_unfiltered_steal_of_a_port_is_refused", &["--http", "127.0.0.1:0"]) else { return };
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","port_mapping":[[{},80]]}}}}}}}}"#,
        w.local.addr.port()
    );
    let mut first = Cli::connect(w.relay.addr, "first", &config);
    first.wait_plan();
    let mut second = Cli::connect(w.relay.addr, "second", &config);
    let (code, err) = second.finish();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("port 80 is already stolen whole by session \"first\""), "{err}");
}

#[test]
fn a_session_beyond_the_sidecars_limit_is_refused_until_one_ends() {
    if !root_or_skip("a_session_beyond_the_sidecars_limit_is_refused_until_one_ends") {
        return;
    }
    let mut pod = Pod::new();
    pod.start_app(&["--http", "0.0.0.0:80", "--name", "remote"], pod.addr(80));
    pod.init(&["--ports", "80"]);
    pod.start_sidecar(&["--ports", "80", "--max-sessions", "1"]);
    let local = App::start_with(workspace_bin("sample-app").to_str().unwrap(), &["--http", "127.0.0.1:0"]);
    let relay = Relay::start(&pod.pod_ns, mirrord_config::names::TUNNEL_PORT).unwrap();
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"mirror","port_mapping":[[{},80]]}}}}}}}}"#,
        local.addr.port()
    );
    let mut first = Cli::connect(relay.addr, "first", &config);
    first.wait_plan();
    let mut second = Cli::connect(relay.addr, "second", &config);
    // Fails here, rather than waiting for an exit that never comes, if it is admitted.
    assert!(
        second.wait_for(Duration::from_secs(10), |e| e["event"] == "plan").is_none(),
        "a second session got a plan"
    );
    let (code, err) = second.finish();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("serves as many sessions as it may (--max-sessions 1)"), "{err}");
    assert!(metric(&pod, r#"mirrord_proxy_session_ends_total{reason="refused_limit"} 1"#));
    first.signal(libc::SIGINT);
    let (code, err) = first.finish();
    assert_eq!(code, Some(0), "{err}");
    let mut third = Cli::connect(relay.addr, "third", &config);
    third.wait_plan();
}

#[test]
fn mirror_copies_reach_the_local_app_while_the_remote_answers() {
    let Some(w) = world(
        "mirror_copies_reach_the_local_app_while_the_remote_answers",
        &["--http", "127.0.0.1:0", "--name", "local"],
    ) else {
        return;
    };
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"mirror","port_mapping":[[{},80]]}}}}}}}}"#,
        w.local.addr.port()
    );
    let mut cli = Cli::connect(w.relay.addr, "mirror", &config);
    cli.wait_plan();
    assert_eq!(w.pod.answered_by(&["X-Copy: 1"]), "remote");
    let copy = cli.wait_for(Duration::from_secs(5), |e| e["event"] == "delivered" && e["mode"] == "mirror");
    assert_eq!(copy.expect("the local app got the copy")["status"], 200);
    assert!(metric(&w.pod, "mirrord_proxy_intercepted_total{port=\"80\",mode=\"mirror\",session=\"mirror\"} 1"));
}

#[test]
fn unfiltered_steal_takes_whole_tcp_connections() {
    let Some(w) = world("unfiltered_steal_takes_whole_tcp_connections", &["--greeting", "127.0.0.1:0"]) else { return };
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","ports":[9000],"port_mapping":[[{},9000]]}}}}}}}}"#,
        w.local.addr.port()
    );
    let mut cli = Cli::connect(w.relay.addr, "tcp", &config);
    cli.wait_plan();
    let mut s = w.pod.connect_from_node(w.pod.addr(9000));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello\r\n").unwrap();
    let mut got = [0u8; 29];
    s.read_exact(&mut got).unwrap();
    // The local app greets first, then echoes: the remote one only echoes.
    assert_eq!(&got, b"220 sample-app ready\r\nhello\r\n");
}

#[test]
fn killed_cli_gives_the_traffic_back_at_once() {
    let Some(w) = world("killed_cli_gives_the_traffic_back_at_once", &["--http", "127.0.0.1:0", "--name", "local"])
    else {
        return;
    };
    let mut cli = Cli::connect(w.relay.addr, "doomed", &steal_config("x-user: alice", w.local.addr.port()));
    cli.wait_plan();
    assert_eq!(w.pod.answered_by(&["X-User: alice"]), "local");
    // A request in flight at the local app when the CLI dies.
    let pod_ip = w.pod.pod_ip;
    let node = w.pod.node_ns.clone();
    let in_flight = std::thread::spawn(move || {
        let url = format!("http://{pod_ip}/slow/3000");
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &node,
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "X-User: alice",
                &url,
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    cli.signal(libc::SIGKILL);
    let mut answered = None;
    while killed.elapsed() < Duration::from_secs(5) {
        if w.pod.answered_by(&["X-User: alice"]) == "remote" {
            answered = Some(killed.elapsed());
            break;
        }
    }
    let took = answered.expect("the app never got its traffic back");
    eprintln!("traffic back to the app {took:?} after SIGKILL of the CLI");
    assert!(took < Duration::from_millis(250), "took {took:?}");
    let status = String::from_utf8_lossy(&in_flight.join().unwrap().stdout).into_owned();
    assert_eq!(status, "502", "the in-flight stolen request must fail fast with 502");
}

#[test]
fn stopped_cli_ends_its_session_within_the_keepalive_bound() {
    let Some(w) =
        world("stopped_cli_ends_its_session_within_the_keepalive_bound", &["--http", "127.0.0.1:0", "--name", "local"])
    else {
        return;
    };
    let mut cli = Cli::connect(w.relay.addr, "sleepy", &steal_config("x-user: alice", w.local.addr.port()));
    cli.wait_plan();
    assert!(metric(&w.pod, "mirrord_proxy_sessions 1"));
    let stopped = Instant::now();
    cli.signal(libc::SIGSTOP);
    while !metric(&w.pod, "mirrord_proxy_sessions 0") {
        assert!(stopped.elapsed() < Duration::from_secs(10), "session still open after 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = stopped.elapsed();
    eprintln!("silent CLI detected after {took:?}");
    cli.signal(libc::SIGCONT);
    assert!(took < Duration::from_millis(3500), "took {took:?}");
    assert_eq!(w.pod.answered_by(&["X-User: alice"]), "remote");
}

/// Starts a Python app in this namespace (the laptop); returns it and the
/// port it printed.
fn local_python(script: &str, args: &[&str]) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .arg(mirrord_tests::apps_dir().join(script))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port =
        line.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{script}: {line}"));
    (child, port)
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pod whose app is a Python script ("remote") on `port`, the same script
/// on the laptop ("local", on a free port), and a relay.
fn python_world(test: &str, script: &str, port: u16) -> Option<(Pod, Kill, u16, Relay)> {
    if !root_or_skip(test) {
        return None;
    }
    let mut pod = Pod::new();
    let app = mirrord_tests::apps_dir().join(script);
    let listen = format!("0.0.0.0:{port}");
    pod.spawn(Side::Pod, "python-app", "python3", &[app.to_str().unwrap(), &listen, "remote"]);
    mirrord_tests::netns::wait_listening(&pod.pod_ns, pod.addr(port), Duration::from_secs(20)).unwrap();
    pod.init(&["--ports", &port.to_string()]);
    pod.start_sidecar(&["--ports", &port.to_string()]);
    let (local, local_port) = local_python(script, &["127.0.0.1:0", "local"]);
    let relay = Relay::start(&pod.pod_ns, mirrord_config::names::TUNNEL_PORT).unwrap();
    Some((pod, Kill(local), local_port, relay))
}

#[test]
fn grpc_unary_streaming_and_bidi_are_stolen_by_metadata() {
    let Some((pod, _local, local_port, relay)) =
        python_world("grpc_unary_streaming_and_bidi_are_stolen_by_metadata", "grpc_app.py", 50051)
    else {
        return;
    };
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","http_filter":{{"header_filter":"x-user: alice","ports":[50051]}},"port_mapping":[[{local_port},50051]]}}}}}}}}"#
    );
    let mut cli = Cli::connect(relay.addr, "alice", &config);
    cli.wait_plan();
    let client = mirrord_tests::apps_dir().join("grpc_client.py");
    let run = |meta: &[&str]| -> serde_json::Value {
        let target = pod.addr(50051).to_string();
        let mut args = vec![client.to_str().unwrap(), &target];
        args.extend_from_slice(meta);
        let out = pod.exec(Side::Node, "python3", &args);
        assert!(out.status.success(), "grpc client: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let stolen = run(&["x-user=alice"]);
    assert_eq!(stolen["unary"]["response"], "local|echo:hello");
    assert_eq!(stolen["unary"]["trailers"][0][1], "unary-hello");
    assert_eq!(stolen["unary_fail"]["code"], "FAILED_PRECONDITION");
    assert_eq!(stolen["unary_fail"]["details"], "asked to fail");
    assert_eq!(stolen["server_stream"]["items"][4], "local|item-4");
    assert_eq!(stolen["server_stream"]["trailers"][0][1], "5");
    assert_eq!(stolen["bidi"]["items"][1], "local|bidi...(70011)");
    assert_eq!(stolen["bidi"]["trailers"][0][1], "3");
    let untouched = run(&[]);
    assert_eq!(untouched["unary"]["response"], "remote|echo:hello");
}

#[test]
fn matched_websocket_upgrade_hands_the_connection_to_the_session() {
    let Some((pod, _local, local_port, relay)) =
        python_world("matched_websocket_upgrade_hands_the_connection_to_the_session", "ws_app.py", 8080)
    else {
        return;
    };
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","http_filter":{{"path_filter":"^/chat/alice","ports":[8080]}},"port_mapping":[[{local_port},8080]]}}}}}}}}"#
    );
    let mut cli = Cli::connect(relay.addr, "alice", &config);
    cli.wait_plan();
    let client = mirrord_tests::apps_dir().join("ws_client.py");
    let run = |path: &str, prefix: &str| {
        let url = format!("ws://{}{path}", pod.addr(8080));
        let out = pod.exec(Side::Node, "python3", &[client.to_str().unwrap(), &url, prefix]);
        assert!(out.status.success(), "ws client: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run("/chat/alice", "local"), r#"[["str", 11, true], ["bytes", 8, true], ["str", 200006, true]]"#);
    assert_eq!(run("/chat/bob", "remote"), r#"[["str", 12, true], ["bytes", 8, true], ["str", 200007, true]]"#);
}

#[test]
fn local_app_down_gives_a_502_that_names_mirrord_and_the_session_goes_on() {
    let Some(w) = world(
        "local_app_down_gives_a_502_that_names_mirrord_and_the_session_goes_on",
        &["--http", "127.0.0.1:0", "--name", "local"],
    ) else {
        return;
    };
    // A port nothing listens on: bind, note, close.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cli = Cli::connect(w.relay.addr, "alice", &steal_config("x-user: alice", closed_port));
    cli.wait_plan();
    let url = format!("http://{}/down", w.pod.pod_ip);
    let out = w.pod.exec(Side::Node, "curl", &["-sS", "-i", "--max-time", "10", "-H", "X-User: alice", &url]);
    let response = String::from_utf8_lossy(&out.stdout);
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    assert!(response.contains("mirrord-cli: cannot reach the local app at 127.0.0.1:"), "{response}");
    assert!(cli.wait_for(Duration::from_secs(5), |e| e["event"] == "error").is_some());
    assert!(cli.child.try_wait().unwrap().is_none(), "the CLI must keep running");
    assert_eq!(w.pod.answered_by(&[]), "remote");
}

/// The filters of the documented examples (docs/steal.md), with a
/// port_mapping added so the local app can listen on a free port.
#[test]
fn documented_header_and_path_filters_steal_http1_and_h2c() {
    let Some(w) =
        world("documented_header_and_path_filters_steal_http1_and_h2c", &["--http", "127.0.0.1:0", "--name", "local"])
    else {
        return;
    };
    let port = w.local.addr.port();
    let header = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","ports":[80],"http_filter":{{"header_filter":"X-My-Header: my-header-value","ports":[80,8080]}},"port_mapping":[[{port},80]]}}}}}}}}"#
    );
    let mut cli = Cli::connect(w.relay.addr, "docs-header", &header);
    cli.wait_plan();
    let who = |args: &[&str]| -> String {
        let url = format!("http://{}/my/path/1", w.pod.pod_ip);
        let mut all = vec!["-sS", "--max-time", "10"];
        all.extend_from_slice(args);
        all.push(&url);
        let out = w.pod.exec(Side::Node, "curl", &all);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|v| v["app"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(who(&["-H", "X-My-Header: my-header-value"]), "local");
    assert_eq!(who(&["--http2-prior-knowledge", "-H", "x-my-header: MY-HEADER-VALUE"]), "local");
    assert_eq!(who(&["--http2-prior-knowledge"]), "remote");
    drop(cli);
    while !metric(&w.pod, "mirrord_proxy_sessions 0") {
        std::thread::sleep(Duration::from_millis(10));
    }
    let path = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","ports":[80],"http_filter":{{"path_filter":"my/path","ports":[80,8080]}},"port_mapping":[[{port},80]]}}}}}}}}"#
    );
    let mut cli = Cli::connect(w.relay.addr, "docs-path", &path);
    cli.wait_plan();
    assert_eq!(who(&[]), "local");
    let out = w.pod.exec(Side::Node, "curl", &["-sS", "--max-time", "10", &format!("http://{}/other", w.pod.pod_ip)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"app\":\"remote\""));
}

/// The local app answers the copy while the connection is still open: its
/// answer goes nowhere (the remote app answers the client), and the copy
/// still ends cleanly and counts as delivered.
#[test]
fn mirrored_tcp_connections_copy_the_clients_bytes() {
    let Some(w) = world("mirrored_tcp_connections_copy_the_clients_bytes", &["--tcp-echo", "127.0.0.1:0"]) else {
        return;
    };
    let config = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"mirror","ports":[9000],"port_mapping":[[{},9000]]}}}}}}}}"#,
        w.local.addr.port()
    );
    let mut cli = Cli::connect(w.relay.addr, "tcp-mirror", &config);
    cli.wait_plan();
    let mut s = w.pod.connect_from_node(w.pod.addr(9000));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"copy me\n").unwrap();
    // Long enough for the local app's echo of the copy to come back first.
    std::thread::sleep(Duration::from_millis(300));
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut echoed = String::new();
    s.read_to_string(&mut echoed).unwrap();
    assert_eq!(echoed, "copy me\n", "the remote app answers as always");
    let copied = "mirrord_proxy_intercepted_total{port=\"9000\",mode=\"mirror\",session=\"tcp-mirror\"} 1";
    assert!(metric(&w.pod, copied), "the sidecar made a copy; its metrics:\n{}", w.pod.metrics());
    let delivered = cli.wait_for(Duration::from_secs(5), |e| e["event"] == "delivered" && e["mode"] == "mirror");
    assert!(delivered.is_some(), "the copy reached the local app; mirrord-cli's other events:\n{}", cli.skipped());
}
