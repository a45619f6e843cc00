//! What each fuzz target does with one input. The libFuzzer harnesses in
//! `fuzz/` call these; `tests/corpus.rs` replays every seed through them in
//! a plain `cargo test`. Each panics on a broken invariant (that is a
//! finding), never on bad input (that must be refused cleanly).

// A broken invariant panics on purpose: that is what the fuzzer reports.
#![allow(clippy::expect_used, clippy::panic)]

use std::time::Duration;

use mirrord_config::{Config, Format, Vars};
use mirrord_injector::mutate::{Settings, Skip};
use mirrord_injector::review::{self, Outcome};
use mirrord_proxy::h1::body::{Body, Chunked};
use mirrord_proxy::h1::head::{parse_request, Fields};
use serde_json::Value;

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory.
pub const TARGETS: [(&str, Target); 7] = [
    ("h1_request", h1_request),
    ("chunked", chunked),
    ("detect", detect),
    ("config", config),
    ("admission", admission),
    ("iptables", iptables),
    ("h1_pipeline", h1_pipeline),
];

/// An HTTP/1 request head, then the body its framing announces: the head
/// lies within the input and the body never takes more than it is given.
pub fn h1_request(data: &[u8]) {
    let mut fields = Fields::default();
    let Ok(Some(head)) = parse_request(data, &mut fields) else { return };
    assert!(head.len <= data.len(), "the head is longer than the input");
    let bytes = &data[..head.len];
    let _ = (fields.method(bytes), fields.target(bytes), fields.headers(bytes).count());
    let mut body = head.body.clone();
    if let Ok((used, _)) = body.advance(&data[head.len..]) {
        assert!(used <= data.len() - head.len, "the body took more than it was given");
    }
}

/// A chunked body fed whole and in two pieces: the same verdict, the same
/// content, the same end.
pub fn chunked(data: &[u8]) {
    let whole = decode(data, data.len());
    let split = decode(data, data.len() / 2);
    assert_eq!(whole, split, "the split changed how the body was read");
}

/// Content, bytes used and whether it ended; `None` for a framing error.
fn decode(data: &[u8], first: usize) -> Option<(Vec<u8>, usize, bool)> {
    let mut body = Body::Chunked(Chunked::default());
    let mut content = Vec::new();
    let (mut used, mut end) = (0, first.min(data.len()));
    loop {
        let (n, done) = body.advance_decoded(&data[used..end], &mut |c| content.extend_from_slice(c)).ok()?;
        assert!(n <= end - used);
        used += n;
        if done || end == data.len() {
            return Some((content, used, done));
        }
        end = data.len();
    }
}

/// Protocol detection over the input as a client's first bytes: always an
/// answer, and whatever it keeps is a prefix of the input.
pub fn detect(data: &[u8]) {
    use mirrord_proxy::detect::{detect, Detected};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let mut reader = data;
    let detected = runtime.block_on(detect(&mut reader, Duration::from_millis(50)));
    if let Ok(Detected::Http1(prefix) | Detected::Http2(prefix) | Detected::Tcp(prefix)) = detected {
        assert!(data.starts_with(&prefix), "detection kept bytes the client did not send");
    }
}

/// A config file in each of mirrord's formats: accepted or refused with an
/// error, and an accepted one's canonical JSON is accepted by the sidecar.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let vars = Vars { key: Some("fuzz".to_owned()), generated_key: "fuzz0".to_owned(), git_branch: None };
    for format in [Format::Json, Format::Yaml, Format::Toml] {
        if let Ok(loaded) = Config::parse(text, format, None, &vars) {
            if let Err(e) = Config::from_json(&loaded.json) {
                panic!("the sidecar refuses what the CLI accepted and sends: {e}\n{}", loaded.json);
            }
        }
    }
}

/// An AdmissionReview: answered or refused with an error; a patch, when
/// given, applies to the pod, and the patched pod is not injected again.
pub fn admission(data: &[u8]) {
    let settings = Settings { image: "mirrord-proxy:fuzz".to_owned(), native_sidecar: data.len().is_multiple_of(2) };
    let Ok((answer, outcome)) = review::answer(data, |_| true, &settings) else { return };
    if !matches!(outcome, Outcome::Injected) {
        return;
    }
    let patch = answer.pointer("/response/patch").and_then(Value::as_str).expect("an injection has a patch");
    let ops: Vec<Value> = serde_json::from_slice(&review::unbase64(patch).expect("base64")).expect("the patch is JSON");
    // serde skips the fields a review does not use without decoding their
    // escapes, so a lone surrogate there passes the review but not this.
    let Ok(request) = serde_json::from_slice::<Value>(data) else { return };
    let mut pod = request.pointer("/request/object").cloned().expect("a pod");
    mirrord_injector::patch::apply(&mut pod, &ops).expect("the patch applies to the pod it was made for");
    let mut again = request;
    again["request"]["object"] = pod;
    let body = serde_json::to_vec(&again).expect("serialisable");
    let (_, second) = review::answer(&body, |_| true, &settings).expect("the patched review is answered");
    assert!(matches!(second, Outcome::Skipped(Skip::AlreadyInjected)), "an injected pod was changed again: {second:?}");
}

/// The iptables script for a plan made of the input's first bytes, against
/// a current nat table made of the rest: it only ever touches the
/// sidecar's chain (plus one jump from PREROUTING, once), the sidecar's own
/// ports return before any redirect, and a second run adds no second jump.
pub fn iptables(data: &[u8]) {
    use std::collections::BTreeSet;

    use mirrord_proxy::iptables::{render, Plan, CHAIN};
    use mirrord_proxy::ports::PortList;

    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (plan_bytes, table) = data.split_at(split);
    let ports: Vec<u16> = plan_bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
    let (redirected, skipped) = ports.split_at(ports.len() / 2);
    let plan = Plan {
        ports: if redirected.first().is_some_and(|p| p % 7 == 0) {
            PortList::All
        } else {
            PortList::Some(redirected.iter().copied().collect())
        },
        skip_ports: skipped.iter().copied().collect::<BTreeSet<u16>>(),
        ..Plan::default()
    };
    let current = String::from_utf8_lossy(table);
    let script = render(&plan, &current);
    assert!(script.starts_with("*nat\n") && script.ends_with("COMMIT\n"), "{script}");
    let jump = format!("-A PREROUTING -p tcp -j {CHAIN}");
    let mut redirecting = false;
    for line in script.lines() {
        let ours = line == "*nat"
            || line == "COMMIT"
            || line == format!(":{CHAIN} - [0:0]")
            || line == format!("-F {CHAIN}")
            || line.starts_with(&format!("-A {CHAIN} "))
            || line == jump;
        assert!(ours, "a line outside the sidecar's chain: {line}");
        if line.contains("-j REDIRECT") {
            redirecting = true;
            let matched = line.split(" -j ").next().unwrap_or_default();
            for own in mirrord_config::names::PROXY_PORTS {
                let own = own.to_string();
                assert!(!matched.split([' ', ',']).any(|w| w == own), "redirects the sidecar's {own}: {line}");
            }
        }
        assert!(!(redirecting && line.contains("-j RETURN")), "a RETURN after a REDIRECT: {script}");
    }
    let again = render(&plan, &format!("{current}\n{script}"));
    assert!(!again.contains(&jump), "a second jump from PREROUTING:\n{again}");
}

/// A client's bytes through the real HTTP/1 pumps (`h1::serve`, loopback
/// sockets) to an app that records what it gets and answers nothing (it
/// closes a connection quiet for 50 ms): the
/// sidecar never hangs, and what reaches the app is the client's bytes,
/// in order, unchanged (a contiguous run of them: empty lines before the
/// first request are skipped, and a refused request stops the rest).
pub fn h1_pipeline(data: &[u8]) {
    use std::sync::{Arc, Mutex};

    use mirrord_proxy::budget::Budget;
    use mirrord_proxy::h1::{serve, Conn};
    use mirrord_proxy::inbound::{Destination, Inbound};
    use mirrord_proxy::limits::Limits;
    use mirrord_proxy::metrics::Metrics;
    use mirrord_proxy::pause::Pause;
    use mirrord_proxy::ports::PortList;
    use mirrord_proxy::session::Sessions;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let received = runtime.block_on(async {
        let app = TcpListener::bind("127.0.0.1:0").await.expect("an app port");
        let front = TcpListener::bind("127.0.0.1:0").await.expect("a sidecar port");
        let (dst, front_addr) = (app.local_addr().expect("bound"), front.local_addr().expect("bound"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = app.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    // Closes a connection quiet for 50 ms, as an app with a
                    // short timeout would (an upgrade waits for its answer).
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), conn.read(&mut buf)).await {
                        if n == 0 {
                            break;
                        }
                        record.lock().expect("not poisoned").extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        let metrics = Arc::new(Metrics::default());
        let (_trigger, shutdown) = mirrord_proxy::shutdown::channel();
        let second = Duration::from_secs(1);
        let inbound = Inbound {
            destination: Destination::Fixed(dst),
            opaque_ports: PortList::default(),
            sessions: Arc::new(Sessions::new(PortList::All)),
            own_ports: std::collections::BTreeSet::new(),
            limits: Limits {
                detect_timeout: second,
                header_read_timeout: second,
                max_head: 64 * 1024,
                body_read_timeout: second,
                tcp_idle_timeout: None,
                http_idle_timeout: Some(second),
            },
            pause: Pause::disabled("no pause here", metrics.clone()),
            pool: Arc::default(),
            budget: Budget::new(1024, metrics.inbound_fds.clone()),
            pressure: Arc::new(mirrord_proxy::pressure::Pressure::off()),
            metrics,
        };
        let conn = Conn { dst, shutdown, inbound: Arc::new(inbound) };
        let sidecar = tokio::spawn(async move {
            let (client, _) = front.accept().await.expect("the client");
            serve(client, bytes::Bytes::new(), conn).await;
        });
        let mut client = TcpStream::connect(front_addr).await.expect("connected");
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = client.read_to_end(&mut sink).await;
            let _ = sidecar.await;
        })
        .await;
        assert!(ended.is_ok(), "the sidecar did not end the connection within 5 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let got = received.lock().expect("not poisoned").clone();
        got
    });
    let contiguous = received.is_empty() || data.windows(received.len()).any(|w| w == received.as_slice());
    assert!(
        contiguous,
        "the app got bytes the client did not send in that order: {:?}",
        String::from_utf8_lossy(&received)
    );
}
