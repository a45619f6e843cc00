//! The sidecar in a simulated pod, driven by clients nobody here wrote.
//! Needs root (network namespaces, iptables); skips outside CI otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::Output;
use std::time::{Duration, Instant};

use mirrord_tests::pod::{Pod, Side};
use mirrord_tests::{apps_dir, root_or_skip};

macro_rules! pod_or_skip {
    ($name:literal) => {{
        if !root_or_skip($name) {
            return;
        }
        Pod::new()
    }};
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl(pod: &Pod, args: &[&str]) -> String {
    let mut all = vec!["-sS", "-i", "--max-time", "10", "--noproxy", "*"];
    all.extend_from_slice(args);
    let out = pod.exec(Side::Node, "curl", &all);
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    text(&out)
}

/// A curl response with what legitimately differs between runs removed: the
/// Date header and the peer address the app saw (the sidecar connects from
/// the pod's own address, by design). The address is blanked in the body and
/// its length taken off Content-Length, since the node's and the pod's
/// addresses can differ in length ("10.213.7.9" and "10.213.7.10").
fn comparable(response: &str) -> (String, String) {
    let mut peer = String::new();
    let mut length = None;
    let mut lines = Vec::new();
    for line in response.lines() {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("date:") || lower.starts_with("x-peer-port:") {
            continue;
        }
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = Some((lines.len(), value.trim().parse::<usize>().unwrap()));
            lines.push(String::new());
        } else if line.starts_with('{') {
            let mut json: serde_json::Value = serde_json::from_str(line).unwrap();
            peer = json["peer_ip"].as_str().unwrap().to_owned();
            json["peer_ip"] = "".into();
            lines.push(json.to_string());
        } else {
            lines.push(line.to_owned());
        }
    }
    if let Some((at, n)) = length {
        lines[at] = format!("content-length: {}", n - peer.len());
    }
    (lines.join("\n"), peer)
}

fn python(pod: &Pod, side: Side, script: &str, args: &[&str]) -> Output {
    let path = apps_dir().join(script);
    let mut all = vec![path.to_str().unwrap()];
    all.extend_from_slice(args);
    pod.exec(side, "python3", &all)
}

fn metric_line(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|l| l == line)
}

#[test]
fn http1_and_h2c_are_transparent() {
    let mut pod = pod_or_skip!("http1_and_h2c_are_transparent");
    pod.start_app(&["--http", "0.0.0.0:80"], pod.addr(80));
    let url = format!("http://{}/echo/path?q=1", pod.pod_ip);
    let requests: [&[&str]; 2] = [
        &["-H", "X-Custom-Header: Value", "-d", "payload", &url],
        &["--http2-prior-knowledge", "-H", "x-custom-header: v2", &url],
    ];
    let direct: Vec<_> = requests.iter().map(|r| comparable(&curl(&pod, r))).collect();
    assert_eq!(direct[0].1, pod.node_ip.to_string());

    pod.init(&["--ports", "80"]);
    pod.start_sidecar(&[]);
    let proxied: Vec<_> = requests.iter().map(|r| comparable(&curl(&pod, r))).collect();
    for (d, p) in direct.iter().zip(&proxied) {
        assert_eq!(d.0, p.0, "the response through the sidecar differs from the direct one");
        assert_eq!(p.1, pod.pod_ip.to_string(), "the request did not pass through the sidecar");
    }
    assert!(direct[0].0.contains("X-Custom-Header: Value") || direct[0].0.contains("x-custom-header"));
    let m = pod.metrics();
    for line in [
        "mirrord_proxy_connections_total{port=\"80\",protocol=\"http1\"} 1",
        "mirrord_proxy_connections_total{port=\"80\",protocol=\"http2\"} 1",
        "mirrord_proxy_requests_total{port=\"80\",protocol=\"http1\",status=\"2xx\"} 1",
        "mirrord_proxy_requests_total{port=\"80\",protocol=\"http2\",status=\"2xx\"} 1",
    ] {
        assert!(metric_line(&m, line), "missing {line} in\n{m}");
    }
}

#[test]
fn grpc_unary_streaming_and_bidi_keep_status_and_trailers() {
    let mut pod = pod_or_skip!("grpc_unary_streaming_and_bidi_keep_status_and_trailers");
    let app = apps_dir().join("grpc_app.py");
    pod.spawn(Side::Pod, "grpc-app", "python3", &[app.to_str().unwrap(), "0.0.0.0:50051"]);
    mirrord_tests::netns::wait_listening(&pod.pod_ns, pod.addr(50051), Duration::from_secs(20)).unwrap();
    let target = pod.addr(50051).to_string();
    let direct = python(&pod, Side::Node, "grpc_client.py", &[&target]);
    assert!(direct.status.success(), "direct grpc: {}", String::from_utf8_lossy(&direct.stderr));

    pod.init(&["--ports", "50051"]);
    pod.start_sidecar(&[]);
    let proxied = python(&pod, Side::Node, "grpc_client.py", &[&target]);
    assert!(proxied.status.success(), "grpc via sidecar: {}", String::from_utf8_lossy(&proxied.stderr));
    assert_eq!(text(&direct), text(&proxied));
    let result: serde_json::Value = serde_json::from_str(&text(&proxied)).unwrap();
    assert_eq!(result["unary"]["response"], "echo:hello");
    assert_eq!(result["unary"]["trailers"][0][1], "unary-hello");
    assert_eq!(result["unary_fail"]["code"], "FAILED_PRECONDITION");
    assert_eq!(result["unary_fail"]["details"], "asked to fail");
    assert_eq!(result["server_stream"]["items"].as_array().unwrap().len(), 5);
    assert_eq!(result["server_stream"]["trailers"][0][1], "5");
    assert_eq!(result["bidi"]["trailers"][0][1], "3");
    assert!(metric_line(&pod.metrics(), "mirrord_proxy_connections_total{port=\"50051\",protocol=\"http2\"} 1"));
}

#[test]
fn websocket_upgrade_continues_as_raw_bytes() {
    let mut pod = pod_or_skip!("websocket_upgrade_continues_as_raw_bytes");
    let app = apps_dir().join("ws_app.py");
    pod.spawn(Side::Pod, "ws-app", "python3", &[app.to_str().unwrap(), "0.0.0.0:8080"]);
    mirrord_tests::netns::wait_listening(&pod.pod_ns, pod.addr(8080), Duration::from_secs(20)).unwrap();
    pod.init(&["--ports", "8080"]);
    pod.start_sidecar(&[]);
    let out = python(&pod, Side::Node, "ws_client.py", &[&format!("ws://{}/chat", pod.addr(8080))]);
    assert!(out.status.success(), "ws client: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text(&out).trim(), r#"[["str", 5, true], ["bytes", 8, true], ["str", 200000, true]]"#);
    let m = pod.metrics();
    assert!(metric_line(&m, "mirrord_proxy_requests_total{port=\"8080\",protocol=\"http1\",status=\"1xx\"} 1"), "{m}");
}

#[test]
fn raw_tcp_keeps_half_close_and_server_first_protocols_work() {
    let mut pod = pod_or_skip!("raw_tcp_keeps_half_close_and_server_first_protocols_work");
    pod.start_app(&["--tcp-echo", "0.0.0.0:9000", "--greeting", "0.0.0.0:2525"], pod.addr(9000));
    pod.init(&["--ports", "*"]);
    pod.start_sidecar(&["--detect-timeout", "200ms"]);

    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut s = pod.connect_from_node(pod.addr(9000));
    let writer = {
        let mut s = s.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || {
            s.write_all(&payload).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).unwrap();
    writer.join().unwrap();
    assert!(echoed == payload, "echo differs: {} bytes back of {}", echoed.len(), payload.len());

    let mut smtp = pod.connect_from_node(pod.addr(2525));
    smtp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 22];
    smtp.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 sample-app ready\r\n");
    smtp.write_all(b"EHLO test\r\n").unwrap();
    let mut reply = [0u8; 11];
    smtp.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"EHLO test\r\n");

    let m = pod.metrics();
    assert!(metric_line(&m, "mirrord_proxy_connections_total{port=\"9000\",protocol=\"tcp\"} 1"), "{m}");
    assert!(metric_line(&m, "mirrord_proxy_connections_total{port=\"2525\",protocol=\"tcp\"} 1"), "{m}");
}

#[test]
fn app_bound_to_pod_ip_is_reached_and_other_ports_are_untouched() {
    let mut pod = pod_or_skip!("app_bound_to_pod_ip_is_reached_and_other_ports_are_untouched");
    let (on80, on81) = (pod.addr(80).to_string(), pod.addr(8081).to_string());
    pod.start_app(&["--http", &on80, "--http", &on81], pod.addr(8081));
    pod.init(&["--ports", "80"]);
    pod.start_sidecar(&[]);
    let (_, peer) = comparable(&curl(&pod, &[&format!("http://{on80}/")]));
    assert_eq!(peer, pod.pod_ip.to_string(), "port 80 should pass through the sidecar");
    let (_, peer) = comparable(&curl(&pod, &[&format!("http://{on81}/")]));
    assert_eq!(peer, pod.node_ip.to_string(), "port 8081 is not redirected and must reach the app directly");
    let m = pod.metrics();
    assert!(!m.contains("port=\"8081\""), "{m}");
    assert!(metric_line(&m, "mirrord_proxy_requests_total{port=\"80\",protocol=\"http1\",status=\"2xx\"} 1"), "{m}");
}

#[test]
fn init_twice_yields_identical_rules_for_ipv4_and_ipv6() {
    let pod = pod_or_skip!("init_twice_yields_identical_rules_for_ipv4_and_ipv6");
    pod.init(&["--ports", "80,8080", "--skip-ports", "22"]);
    let (v4, v6) = (pod.nat_rules(false), pod.nat_rules(true));
    pod.init(&["--ports", "80,8080", "--skip-ports", "22"]);
    assert_eq!(v4, pod.nat_rules(false));
    assert_eq!(v6, pod.nat_rules(true));
    for rules in [&v4, &v6] {
        assert_eq!(rules.matches("-A PREROUTING -p tcp -j MIRRORD_INBOUND").count(), 1, "{rules}");
        assert!(rules.contains("--dports 80,8080 -j REDIRECT --to-ports 18006"), "{rules}");
        assert!(rules.contains("--dports 22,18006,18010,18090 -j RETURN"), "{rules}");
    }
    let dry = pod.init(&["--ports", "80", "--dry-run"]);
    assert!(text(&dry).contains("-A MIRRORD_INBOUND -p tcp --dport 80 -j REDIRECT --to-ports 18006"));
    assert_eq!(v4, pod.nat_rules(false), "--dry-run changed the rules");
}

#[test]
fn ipv6_connections_are_redirected_and_proxied() {
    let mut pod = pod_or_skip!("ipv6_connections_are_redirected_and_proxied");
    let app6 = format!("[{}]:80", pod.pod_ip6);
    pod.start_app(&["--http", &app6], app6.parse().unwrap());
    pod.init(&["--ports", "80"]);
    pod.start_sidecar(&[]);
    let (_, peer) = comparable(&curl(&pod, &["-g", &format!("http://{app6}/v6")]));
    assert_eq!(peer, pod.pod_ip6.to_string(), "IPv6 request did not pass through the sidecar");
}

fn raw_exchange(pod: &Pod, addr: SocketAddr, request: &[u8]) -> String {
    let mut s = pod.connect_from_node(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn malformed_requests_are_refused_without_reaching_the_app() {
    let mut pod = pod_or_skip!("malformed_requests_are_refused_without_reaching_the_app");
    pod.start_app(&["--http", "0.0.0.0:80"], pod.addr(80));
    pod.init(&["--ports", "80"]);
    pod.start_sidecar(&[]);
    let url = format!("http://{}/", pod.pod_ip);
    let mut keepalive = pod.connect_from_node(pod.addr(80));
    let get = b"GET /keep HTTP/1.1\r\nHost: pod\r\n\r\n";
    let huge = format!("GET / HTTP/1.1\r\nHost: pod\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
    let cases: [(&[u8], &str); 5] = [
        (b"POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", "400 Bad Request"),
        (
            b"POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "400 Bad Request",
        ),
        (b"POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 1x\r\n\r\nx", "400 Bad Request"),
        (b"GET / HTTP/1.1\r\nHost: p\r\nBad Header Line\r\n\r\n", "400 Bad Request"),
        (huge.as_bytes(), "431 Request Header Fields Too Large"),
    ];
    keepalive.write_all(get).unwrap();
    for (request, status) in cases {
        let response = raw_exchange(&pod, pod.addr(80), request);
        assert!(response.starts_with(&format!("HTTP/1.1 {status}")), "{response}");
        assert!(response.contains("mirrord-proxy"), "{response}");
    }
    // The keep-alive connection opened before the bad requests still works.
    keepalive.write_all(get).unwrap();
    keepalive.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("HTTP/1.1 200").count() < 2 {
        let n = keepalive.read(&mut buf).unwrap();
        assert!(n > 0, "keep-alive connection closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(curl(&pod, &[&url]).starts_with("HTTP/1.1 200"));
    let m = pod.metrics();
    // Only the three good requests reached the app.
    assert!(metric_line(&m, "mirrord_proxy_requests_total{port=\"80\",protocol=\"http1\",status=\"2xx\"} 3"), "{m}");
    for reason in [
        "duplicate_content_length",
        "content_length_with_transfer_encoding",
        "invalid_content_length",
        "malformed_request",
        "header_too_large",
    ] {
        assert!(metric_line(&m, &format!("mirrord_proxy_errors_total{{reason=\"{reason}\"}} 1")), "{reason} in\n{m}");
    }
}

#[test]
fn unreachable_app_gets_a_502_that_names_mirrord() {
    let mut pod = pod_or_skip!("unreachable_app_gets_a_502_that_names_mirrord");
    pod.init(&["--ports", "80"]);
    pod.start_sidecar(&[]);
    let response = curl(&pod, &[&format!("http://{}/", pod.pod_ip)]);
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    assert!(response.contains("mirrord-proxy: cannot connect to the app at"), "{response}");
    assert!(metric_line(&pod.metrics(), "mirrord_proxy_errors_total{reason=\"upstream_connect\"} 1"));
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut pod = pod_or_skip!("sigterm_finishes_in_flight_requests_then_exits_zero");
    pod.start_app(&["--http", "0.0.0.0:80"], pod.addr(80));
    pod.init(&["--ports", "80"]);
    let sidecar = pod.start_sidecar(&["--grace-period", "10s"]);
    let slow = format!("http://{}/slow/1500", pod.pod_ip);
    let (ns, h1_url, h2_url) = (pod.node_ns.clone(), slow.clone(), slow);
    let spawn_curl = |ns: String, args: Vec<String>| {
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
                .args(args)
                .output()
                .unwrap()
        })
    };
    let h1 = spawn_curl(ns.clone(), vec![h1_url]);
    let h2 = spawn_curl(ns, vec!["--http2-prior-knowledge".into(), h2_url]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(pod.metrics().contains("open_connections{port=\"80\",protocol=\"http1\"} 1")
        && pod.metrics().contains("open_connections{port=\"80\",protocol=\"http2\"} 1"))
    {
        assert!(Instant::now() < deadline, "requests never reached the sidecar");
        std::thread::sleep(Duration::from_millis(10));
    }
    pod.signal(sidecar, libc::SIGTERM);
    assert_eq!(text(&h1.join().unwrap()), "200 1.1");
    assert_eq!(text(&h2.join().unwrap()), "200 2");
    let status = pod.wait_exit("sidecar", Duration::from_secs(10)).expect("sidecar exited");
    assert!(status.success(), "sidecar exit: {status}\n{}", pod.log("sidecar"));
    assert!(pod.log("sidecar").contains("drained"), "{}", pod.log("sidecar"));
}

#[test]
fn connections_to_the_sidecars_own_ports_are_refused_or_untouched() {
    let mut pod = pod_or_skip!("connections_to_the_sidecars_own_ports_are_refused_or_untouched");
    pod.init(&["--ports", "*"]);
    pod.start_sidecar(&[]);
    // 18006 is RETURNed by the rules, so this reaches the listener directly:
    // its original destination is the sidecar itself, which would loop.
    let mut direct = pod.connect_from_node(pod.addr(18006));
    direct.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = direct.write_all(b"GET / HTTP/1.1\r\nHost: loop\r\n\r\n");
    let mut buf = [0u8; 64];
    assert_eq!(direct.read(&mut buf).unwrap_or(0), 0, "a looping connection must be closed");
    // The admin port is not redirected: reachable from the node as is.
    let admin = curl(&pod, &[&format!("http://{}/ready", pod.addr(18090))]);
    assert!(admin.starts_with("HTTP/1.1 200"), "{admin}");
    let m = pod.metrics();
    assert!(metric_line(&m, "mirrord_proxy_errors_total{reason=\"loop_refused\"} 1"), "{m}");
    assert!(!m.contains("port=\"18090\""), "{m}");
}
