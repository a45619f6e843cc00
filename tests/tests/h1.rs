//! HTTP/1 edge cases through the sidecar in explicit mode on loopback (no
//! root): every transcript through the sidecar must equal the transcript of
//! the same bytes sent straight to the app.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrord_tests::loopback::{App, Sidecar};

fn app() -> App {
    App::start(env!("CARGO_BIN_EXE_sample-app"))
}

/// Sends `request` in one write, then a FIN (the requests end the
/// connection without a `Connection: close`, which the sidecar answers
/// itself), reads until the server closes.
fn transcript(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    // The only thing allowed to differ: the app's Date header and the peer
    // port it reports. Neither is touched by the sidecar; they vary per run.
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:") && !l.to_ascii_lowercase().starts_with("x-peer-port:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn metric(sidecar: &Sidecar, line: &str) -> bool {
    sidecar.metrics().lines().any(|l| l == line)
}

#[test]
fn pipelined_requests_with_head_and_chunked_bodies_are_byte_identical() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let request = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: Yes\r\n\r\n\
HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /e HTTP/1.1\r\nHost: x\r\n\r\n";
    let direct = transcript(app.addr, request);
    let proxied = transcript(sidecar.addr, request);
    assert_eq!(direct.matches("HTTP/1.1 200 OK").count(), 5, "{direct}");
    assert_eq!(direct, proxied);
    assert!(proxied.contains("\"body\":\"abcdefg\""), "{proxied}");
    let line =
        format!("mirrord_proxy_requests_total{{port=\"{}\",protocol=\"http1\",status=\"2xx\"}} 5", app.addr.port());
    assert!(metric(&sidecar, &line), "{}", sidecar.metrics());
}

#[test]
fn declined_upgrade_keeps_the_connection_http() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
GET /after HTTP/1.1\r\nHost: x\r\n\r\n";
    let direct = transcript(app.addr, request);
    assert_eq!(direct.matches("HTTP/1.1 200 OK").count(), 2, "{direct}");
    assert_eq!(direct, transcript(sidecar.addr, request));
}

#[test]
fn expect_100_continue_reaches_the_client() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let body = "x".repeat(100_000);
    let start = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--expect100-timeout", "30", "-H", "Expect: 100-continue"])
        .args(["--data-binary", &body, &format!("http://{}/upload", sidecar.addr)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&body));
    // Without the 100 passing through, curl waits out its 30 s timeout.
    assert!(start.elapsed() < Duration::from_secs(15), "100 Continue was held back");
}

/// An app on a loopback port that, for each of its first `connections`,
/// reads one request head, writes `response` and closes.
fn answer_then_close(connections: usize, response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let mut s = stream.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            s.write_all(response).unwrap();
        }
    });
    addr
}

#[test]
fn close_delimited_response_is_forwarded_whole() {
    // An HTTP/1.0 app that ends its body by closing the connection.
    let addr =
        answer_then_close(2, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until the connection closes");
    let sidecar = Sidecar::start(addr, &[]);
    let request = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    let direct = transcript(addr, request);
    assert!(direct.ends_with("body until the connection closes"), "{direct}");
    assert_eq!(direct, transcript(sidecar.addr, request));
}

#[test]
fn broken_chunked_body_ends_the_connection() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let out = transcript(
        sidecar.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    );
    assert!(!out.contains("200 OK"), "{out}");
    assert!(metric(&sidecar, "mirrord_proxy_errors_total{reason=\"invalid_chunked_body\"} 1"));
}

#[test]
fn slow_request_head_gets_408() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &["--header-read-timeout", "300ms"]);
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout"), "{out}");
    assert!(out.contains("mirrord-proxy"), "{out}");
    assert!(metric(&sidecar, "mirrord_proxy_errors_total{reason=\"header_read_timeout\"} 1"));
}

#[test]
fn refusal_waits_for_earlier_responses() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let out = transcript(
        sidecar.addr,
        b"GET /slow/200 HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    );
    let ok = out.find("HTTP/1.1 200 OK").expect("first response");
    let refused = out.find("HTTP/1.1 400 Bad Request").expect("refusal");
    assert!(ok < refused, "the refusal overtook the earlier response:\n{out}");
}

#[test]
fn framing_a_strict_parser_refuses_never_reaches_the_app() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: 1\r\n".repeat(101));
    let cases: [(&[u8], &str); 9] = [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", "501"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n X-Folded: obs-fold\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\rHost: x\r\n\r\n", "400"),
        (many.as_bytes(), "431"),
    ];
    for (request, status) in cases {
        let out = transcript(sidecar.addr, request);
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")) && out.contains("mirrord-proxy: request refused"),
            "{:?} -> {out}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        );
    }
    // A request hidden in a trailer, and junk in a chunk extension: the
    // connection ends at the bad framing; nothing after it is a request.
    for body in [
        &b"0\r\nGET /smuggled HTTP/1.1\r\n\r\n"[..],
        b"5;\0\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut request = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let out = transcript(sidecar.addr, &request);
        assert!(!out.contains("smuggled"), "{out}");
    }
    assert!(metric(&sidecar, "mirrord_proxy_errors_total{reason=\"invalid_chunked_body\"} 2"));
}

#[test]
fn a_request_body_that_stops_arriving_ends_the_connection() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &["--body-read-timeout", "300ms"]);
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() < Duration::from_secs(5), "the slow body was held for {:?}", started.elapsed());
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    assert!(metric(&sidecar, "mirrord_proxy_errors_total{reason=\"body_read_timeout\"} 1"));
}

/// An HTTP/2 connection to `addr` (hyper's client): its sender, and the task
/// that runs it (which ends when the connection does).
async fn h2_client<B>(
    addr: SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<B>, tokio::task::JoinHandle<hyper::Result<()>>)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

/// Streams that arrive together on one HTTP/2 client connection share one
/// app connection (it is made once, not once per stream).
#[test]
fn concurrent_h2_streams_share_one_app_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let app = app();
    // A relay in front of the app that counts the connections it is asked for.
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let target = app.addr;
    std::thread::spawn(move || {
        for client in relay.incoming() {
            let Ok(client) = client else { break };
            counted.fetch_add(1, Ordering::SeqCst);
            let upstream = TcpStream::connect(target).unwrap();
            let (mut c1, mut u1) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut u1);
                let _ = u1.shutdown(std::net::Shutdown::Write);
            });
            let (mut c2, mut u2) = (client, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let sidecar = Sidecar::start(relay_addr, &[]);
    // One HTTP/2 connection (hyper's client), 40 streams sent at once.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answered = runtime.block_on(async {
        let (sender, _conn) = h2_client(sidecar.addr).await;
        let streams = (0..40).map(|i| {
            let mut sender = sender.clone();
            async move {
                let req = http::Request::get(format!("http://x/slow/200?i={i}"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                sender.send_request(req).await.map(|r| r.status().as_u16())
            }
        });
        let mut answered = 0;
        for handle in streams.map(tokio::spawn).collect::<Vec<_>>() {
            answered += usize::from(handle.await.unwrap().unwrap() == 200);
        }
        answered
    });
    assert_eq!(answered, 40);
    assert_eq!(count.load(Ordering::SeqCst), 1, "app connections for one client connection");
}

/// An HTTP/2 stream carries more than every flow-control window both ways
/// at once, and the answer begins before the request ends (bidirectional
/// streaming): the app (an echo) answers each chunk as it comes, and the
/// client sends the next only when the previous one came back.
#[test]
fn an_h2_stream_streams_both_ways_beyond_the_flow_control_windows() {
    use http_body_util::BodyExt;
    let app = App::start_with(env!("CARGO_BIN_EXE_sample-app"), &["--grpc", "127.0.0.1:0"]);
    let sidecar = Sidecar::start(app.addr, &[]);
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 48; // 12 MiB, beyond the 5 MiB connection windows
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let echoed = runtime.block_on(async {
        let (mut sender, _conn) = h2_client(sidecar.addr).await;
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>(1);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = http::Request::post("http://x/bench.Echo/Bidi").body(body).unwrap();
        let chunk = |i: usize| bytes::Bytes::from(vec![u8::try_from(i % 251).unwrap(); CHUNK]);
        tx.send(Ok(hyper::body::Frame::data(chunk(0)))).await.unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("the answer begins before the request ends")
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut echoed = Vec::new();
        let mut sent = 1;
        let mut trailers = None;
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("stalled") {
            let frame = frame.unwrap();
            if let Some(data) = frame.data_ref() {
                echoed.extend_from_slice(data);
                // The next chunk once the previous came back whole.
                if echoed.len() == sent * CHUNK {
                    if sent < CHUNKS {
                        tx.send(Ok(hyper::body::Frame::data(chunk(sent)))).await.unwrap();
                        sent += 1;
                    } else {
                        break;
                    }
                }
            }
            trailers = frame.into_trailers().ok().or(trailers);
        }
        drop(tx);
        while let Some(frame) = body.frame().await {
            trailers = frame.unwrap().into_trailers().ok().or(trailers);
        }
        assert_eq!(trailers.and_then(|t| t.get("grpc-status").cloned()).unwrap(), "0");
        echoed
    });
    assert_eq!(echoed.len(), CHUNK * CHUNKS);
    for (i, chunk) in echoed.chunks(CHUNK).enumerate() {
        assert!(chunk.iter().all(|&b| usize::from(b) == i % 251), "chunk {i} came back changed");
    }
}

/// An HTTP/2 response reaches the client with the app's header fields and
/// trailers, nothing added: the gRPC echo sends no `date`, so none comes
/// through the sidecar either.
#[test]
fn an_h2_response_keeps_the_apps_fields_and_gains_none() {
    use http_body_util::BodyExt;
    let app = App::start_with(env!("CARGO_BIN_EXE_sample-app"), &["--grpc", "127.0.0.1:0"]);
    let sidecar = Sidecar::start(app.addr, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let call = |addr: SocketAddr| {
        runtime.block_on(async move {
            let (mut sender, _conn) = h2_client(addr).await;
            let message = bytes::Bytes::from_static(b"\0\0\0\0\x03abc");
            let req = http::Request::post("http://x/bench.Echo/Unary")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(http_body_util::Full::new(message))
                .unwrap();
            let response = sender.send_request(req).await.unwrap();
            let (head, body) = response.into_parts();
            let collected = body.collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (head.status, head.headers, collected.to_bytes(), trailers)
        })
    };
    let direct = call(app.addr);
    assert!(direct.1.get("date").is_none(), "the app sends no date: {:?}", direct.1);
    let proxied = call(sidecar.addr);
    assert_eq!(proxied, direct);
}

/// At shutdown, an HTTP/2 stream in flight is answered whole, and then the
/// connection ends (GOAWAY) instead of taking more streams.
#[test]
fn an_h2_stream_in_flight_at_shutdown_is_answered_then_the_connection_ends() {
    use http_body_util::BodyExt;
    let app = app();
    let mut sidecar = Sidecar::start(app.addr, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut sender, conn) = h2_client(sidecar.addr).await;
        let req = http::Request::get("http://x/slow/400").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let slow = tokio::spawn(sender.send_request(req));
        // The stream reaches the app, then the sidecar is told to stop.
        tokio::time::sleep(Duration::from_millis(150)).await;
        sidecar.shut_down();
        let response = tokio::time::timeout(Duration::from_secs(5), slow).await.expect("answered").unwrap().unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.expect("the whole body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("/slow/400"), "{}", String::from_utf8_lossy(&body));
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(ended.is_ok(), "the connection stayed open after the shutdown");
    });
}

/// An HTTP/2 connection with no stream open for `--http-idle-timeout` is
/// ended (GOAWAY); a stream longer than the timeout is not cut by it.
#[test]
fn an_idle_h2_connection_is_closed_after_the_keep_alive_timeout() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &["--http-idle-timeout", "300ms"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut sender, conn) = h2_client(sidecar.addr).await;
        let req = http::Request::get("http://x/slow/800").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let response = sender.send_request(req).await.expect("a stream longer than the timeout is answered");
        assert_eq!(response.status(), 200);
        drop(response);
        let idle_since = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(ended.is_ok(), "the idle connection stayed open");
        let waited = idle_since.elapsed();
        assert!(waited >= Duration::from_millis(250), "closed after {waited:?} without a stream");
    });
    assert!(metric(&sidecar, "mirrord_proxy_errors_total{reason=\"http_idle_timeout\"} 1"), "{}", sidecar.metrics());
}

#[test]
fn an_upgrade_the_app_closes_without_answering_ends_the_connection() {
    // An app that reads a request and closes without a word.
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in app.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
        }
    });
    let sidecar = Sidecar::start(app_addr, &[]);
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
    // The client keeps its side open; the sidecar must still end it (it
    // waited for ever for the answer to the upgrade).
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    assert!(read.is_ok(), "the connection was left open: {read:?}");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    // And nothing of it stays behind in the sidecar (its task waited for
    // ever for the answer to the upgrade, holding both sockets).
    drop(s);
    let start = Instant::now();
    while !metric(&sidecar, "mirrord_proxy_inbound_fds 0") {
        assert!(start.elapsed() < Duration::from_secs(5), "still held:\n{}", sidecar.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one request on a new connection and reads until the server closes:
/// (the response head's lines, the body).
fn one_shot(addr: SocketAddr, request: &[u8]) -> (Vec<String>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("the server ends the connection");
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().map(str::to_owned).collect(), body.to_owned())
}

fn field<'a>(head: &'a [String], name: &str) -> Vec<&'a str> {
    head.iter()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[test]
fn a_client_that_closes_after_one_request_is_ended_by_the_sidecar_and_the_app_connection_is_reused() {
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let close = b"GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: */*\r\n\r\n";
    let (first, body) = one_shot(sidecar.addr, close);
    assert_eq!(first[0], "HTTP/1.1 200 OK");
    // The client is told, once; the app never saw the hop's close.
    assert_eq!(field(&first, "connection"), ["close"], "{first:?}");
    assert!(!body.to_ascii_lowercase().contains("connection"), "{body}");
    assert!(body.contains(r#"["accept","*/*"]"#), "{body}");
    let (second, _) = one_shot(sidecar.addr, close);
    assert_eq!(field(&second, "connection"), ["close"]);
    assert_eq!(field(&first, "x-peer-port"), field(&second, "x-peer-port"), "the app connection was not reused");

    // Anything else about the connection is the app's to see and answer.
    let (_, body) =
        one_shot(sidecar.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, x-hop\r\nx-hop: 1\r\n\r\n");
    assert!(body.contains(r#"["connection","close, x-hop"]"#), "{body}");
    let (old, body) = one_shot(sidecar.addr, b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n");
    assert!(body.contains(r#"["connection","close"]"#), "{body}");
    assert_eq!(old[0], "HTTP/1.0 200 OK");
    let line =
        format!("mirrord_proxy_requests_total{{port=\"{}\",protocol=\"http1\",status=\"2xx\"}} 4", app.addr.port());
    assert!(metric(&sidecar, &line), "{}", sidecar.metrics());
}

#[test]
fn a_closing_client_gets_a_response_body_the_app_ends_by_closing() {
    // An app that ends its body by closing: the sidecar passes that close on.
    let addr = answer_then_close(1, b"HTTP/1.1 200 OK\r\n\r\nuntil close");
    let sidecar = Sidecar::start(addr, &[]);
    let (head, body) = one_shot(sidecar.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(head, ["HTTP/1.1 200 OK"]);
    assert_eq!(body, "until close");
}

/// An app that reads requests and answers none, until it is dropped (then
/// it closes its connections).
struct SilentApp {
    addr: SocketAddr,
    /// `GET /p` request lines read so far.
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl SilentApp {
    fn start() -> SilentApp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let app = SilentApp { addr, seen: Default::default(), conns: Default::default() };
        let (count, conns) = (app.seen.clone(), app.conns.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                conns.lock().unwrap().push(s.try_clone().unwrap());
                let count = count.clone();
                std::thread::spawn(move || {
                    let (mut buf, mut carry) = (vec![0u8; 1 << 16], Vec::new());
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        carry.extend_from_slice(&buf[..n]);
                        let lines = carry.windows(7).filter(|w| w == b"GET /p ").count();
                        count.fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
                        carry.drain(..carry.len().saturating_sub(6));
                    }
                });
            }
        });
        app
    }
}

impl Drop for SilentApp {
    fn drop(&mut self) {
        for s in self.conns.lock().unwrap().iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A client that pipelines requests while none is answered: the sidecar
/// passes on 64 and reads the next only as answers complete, so it holds
/// 64 requests' state, not as many as the client sends.
#[test]
fn pipelined_requests_are_passed_on_only_64_ahead_of_their_answers() {
    let app = SilentApp::start();
    let sidecar = Sidecar::start(app.addr, &[]);
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    s.write_all(&b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10_000)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let passed = app.seen.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(passed, 64, "requests passed on to an app that answers none");
    // (The app closes first: the sidecar's shutdown then waits on nothing.)
    drop(app);
    drop(sidecar);
}

/// Pipelined requests beyond that bound flow as their answers are read:
/// every one of them is answered, in one connection.
#[test]
fn pipelined_requests_far_beyond_the_bound_are_all_answered() {
    const REQUESTS: usize = 20_000;
    let app = app();
    let sidecar = Sidecar::start(app.addr, &[]);
    let mut s = TcpStream::connect(sidecar.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sending =
        std::thread::spawn(move || writer.write_all(&b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n".repeat(REQUESTS)).is_ok());
    let (mut seen, mut buf, mut carry) = (0, vec![0u8; 1 << 16], Vec::new());
    while seen < REQUESTS {
        let n = s.read(&mut buf).expect("answers keep coming");
        assert!(n > 0, "the connection closed after {seen} answers");
        carry.extend_from_slice(&buf[..n]);
        seen += carry.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
        carry.drain(..carry.len().saturating_sub(14));
    }
    assert!(sending.join().unwrap(), "every request was sent");
}
