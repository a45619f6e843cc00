//! HTTP/2 at the frame level through the sidecar on loopback (no root): a
//! client written here from RFC 9113 and RFC 7541 sends what a well-behaved
//! library never would. Malformed requests are refused on their own stream
//! (RFC 9113 §8.1.1) and the connection goes on; connection errors end that
//! connection with a GOAWAY naming the error (§5.4.1); floods end it
//! (§10.5); clients that read nothing hold a bounded part of the sidecar's
//! memory (§10.5); and none of it disturbs a request in flight on another
//! connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mirrord_tests::loopback::{eventually, App, Sidecar};
use mirrord_tests::standalone::{Nghttpd, SidecarProcess};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// HPACK's static-table encoding of `:status: 200` (RFC 7541 Appendix A,
/// index 8), which is how the sidecar's encoder sends it.
const STATUS_200: u8 = 0x88;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// How a stream or a connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
enum Seen {
    /// A response head; `true` when its `:status` is 200.
    Response { ok: bool },
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection closed (or was reset) without a GOAWAY.
    Closed,
}

/// An HTTP/2 client connection that writes frames as told.
struct Conn(TcpStream);

impl Conn {
    /// Connects, sends the preface and empty SETTINGS.
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut conn = Conn(s);
        conn.0.write_all(PREFACE).unwrap();
        conn.send(SETTINGS, 0, 0, &[]);
        conn
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.try_send(kind, flags, stream, payload).expect("frame sent");
    }

    fn try_send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(payload.len()).unwrap();
        let mut frame = len.to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        self.0.write_all(&frame)
    }

    /// The next frame; `None` when the connection closed or was reset.
    fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        match self.0.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => return None,
            Err(e) => panic!("no frame from the sidecar: {e}"),
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        self.0.read_exact(&mut payload).ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame { kind: head[3], flags: head[4], stream, payload })
    }

    /// Reads until `stream` gets a response head or a reset, or the
    /// connection ends; acknowledges SETTINGS on the way.
    fn outcome(&mut self, stream: u32) -> Seen {
        loop {
            let Some(f) = self.read() else { return Seen::Closed };
            match f.kind {
                // (A connection the sidecar is ending may refuse the ACK.)
                SETTINGS if f.flags & ACK == 0 => drop(self.try_send(SETTINGS, ACK, 0, &[])),
                GOAWAY => return Seen::GoAway(code(&f.payload[4..8])),
                HEADERS if f.stream == stream => return Seen::Response { ok: f.payload.first() == Some(&STATUS_200) },
                RST_STREAM if f.stream == stream => return Seen::Reset(code(&f.payload)),
                _ => {}
            }
        }
    }

    /// Reads until the connection ends: the GOAWAY's code, or `Closed`.
    fn end(&mut self) -> Seen {
        loop {
            match self.read() {
                None => return Seen::Closed,
                Some(f) if f.kind == GOAWAY => return Seen::GoAway(code(&f.payload[4..8])),
                Some(_) => {}
            }
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: impl Into<Vec<u8>>) -> Frame {
    Frame { kind, flags, stream, payload: payload.into() }
}

fn code(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().unwrap())
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0x00, 7, s.len());
    out.extend(s);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | u8::try_from(value).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    let mut rest = value - max;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).unwrap() | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).unwrap());
}

/// A header block of literal fields without indexing (RFC 7541 §6.2.2).
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        string(&mut out, name.as_bytes());
        string(&mut out, value.as_bytes());
    }
    out
}

const GET: [(&str, &str); 4] = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/")];

fn get(path: &str) -> Vec<u8> {
    block(&[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)])
}

fn with(extra: &[(&'static str, &'static str)]) -> Vec<u8> {
    let mut fields = GET.to_vec();
    fields.extend_from_slice(extra);
    block(&fields)
}

/// The sidecar in front of the sample app, and a request that is in flight
/// on another connection the whole time (answered after `ms`).
struct Bench {
    // (Fields drop in this order: the connection first, so that the
    // sidecar's shutdown does not wait on a client that answers no PING.)
    bystander: Conn,
    sidecar: Sidecar,
    _app: App,
}

impl Bench {
    fn start(ms: u64) -> Bench {
        let app = App::start(env!("CARGO_BIN_EXE_sample-app"));
        let sidecar = Sidecar::start(app.addr, &[]);
        let mut bystander = Conn::open(sidecar.addr);
        bystander.send(HEADERS, END_HEADERS | END_STREAM, 1, &get(&format!("/slow/{ms}")));
        Bench { bystander, sidecar, _app: app }
    }

    /// `n` requests in all were answered by the app: what was refused
    /// never reached it.
    fn answered(&self, n: u64) {
        let answered: u64 = self
            .sidecar
            .metrics()
            .lines()
            .filter(|l| l.starts_with("mirrord_proxy_requests_total{") && l.contains("protocol=\"http2\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(answered, n, "requests answered:\n{}", self.sidecar.metrics());
    }

    /// The request in flight on the other connection is answered, and a new
    /// connection is served.
    fn others_unharmed(&mut self) {
        assert_eq!(self.bystander.outcome(1), Seen::Response { ok: true }, "the request in flight elsewhere");
        let mut fresh = Conn::open(self.sidecar.addr);
        fresh.send(HEADERS, END_HEADERS | END_STREAM, 1, &get("/"));
        assert_eq!(fresh.outcome(1), Seen::Response { ok: true }, "a new connection after it");
    }
}

/// Malformed requests (RFC 9113 §8.2.1, §8.2.2, §8.3.1) are stream errors:
/// each is refused on its own stream, never answered by the app, and the
/// next stream on the same connection is served.
#[test]
fn malformed_requests_are_refused_on_their_stream_and_the_connection_goes_on() {
    let mut bench = Bench::start(1500);
    let mut c = Conn::open(bench.sidecar.addr);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a connection-specific field", with(&[("connection", "keep-alive")])),
        ("transfer-encoding", with(&[("transfer-encoding", "chunked")])),
        ("te other than trailers", with(&[("te", "gzip")])),
        ("an upper-case field name", with(&[("X-Upper", "1")])),
        ("no :path", block(&[(":method", "GET"), (":scheme", "http"), (":authority", "x")])),
        ("an empty :path", block(&[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "")])),
        ("an unknown pseudo-header", with(&[(":protocol-x", "1")])),
        ("a pseudo-header after a regular field", {
            let mut b = block(&[(":method", "GET"), ("x-a", "1")]);
            b.extend(block(&[(":scheme", "http"), (":authority", "x"), (":path", "/")]));
            b
        }),
        ("a duplicated :path", with(&[(":path", "/again")])),
        ("a field value with a line break", with(&[("x-a", "1\r\nx-b: 2")])),
    ];
    let mut stream = 1;
    let mut reset = Vec::new();
    for (what, fields) in &cases {
        c.send(HEADERS, END_HEADERS | END_STREAM, stream, fields);
        match c.outcome(stream) {
            Seen::Reset(_) | Seen::Response { ok: false } => {
                reset.push(*what);
                stream += 2;
            }
            // The h2 crate fails the whole header block, and so the
            // connection, when a field cannot be represented at all (an
            // upper-case name, a byte no field value may hold, an unknown
            // pseudo-header): stricter than §8.1.1 asks, and only this
            // client's connection.
            Seen::GoAway(PROTOCOL_ERROR) => {
                c = Conn::open(bench.sidecar.addr);
                stream = 1;
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // The fields a connection can carry are refused per stream.
    for each in ["a connection-specific field", "transfer-encoding", "te other than trailers", "no :path"] {
        assert!(reset.contains(&each), "{each} was not refused on its stream alone: {reset:?}");
    }
    c.send(HEADERS, END_HEADERS | END_STREAM, stream, &get("/after"));
    assert_eq!(c.outcome(stream), Seen::Response { ok: true }, "the next stream on the same connection");
    bench.others_unharmed();
    bench.answered(3);
}

/// A body shorter than its `content-length` is malformed (RFC 9113 §8.1.1):
/// the stream is reset, so the app never takes it for a whole request.
#[test]
fn a_body_shorter_than_its_content_length_is_reset() {
    let mut bench = Bench::start(1000);
    let mut c = Conn::open(bench.sidecar.addr);
    let head = block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", "/"),
        ("content-length", "10"),
    ]);
    c.send(HEADERS, END_HEADERS, 1, &head);
    c.send(DATA, END_STREAM, 1, b"abc");
    // The app may have answered the head already; the stream must still end
    // in a reset, not in a complete response.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no reset");
        let f = c.read().expect("the connection stays open");
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => c.send(SETTINGS, ACK, 0, &[]),
            RST_STREAM if f.stream == 1 => break,
            DATA if f.stream == 1 => assert_eq!(f.flags & END_STREAM, 0, "the short request was answered whole"),
            _ => {}
        }
    }
    c.send(HEADERS, END_HEADERS | END_STREAM, 3, &get("/after"));
    assert_eq!(c.outcome(3), Seen::Response { ok: true });
    bench.others_unharmed();
}

/// Connection errors (RFC 9113 §5.4.1) end that connection with a GOAWAY
/// that names the error, and only that connection.
#[test]
fn connection_errors_end_that_connection_with_a_goaway_naming_them() {
    let mut bench = Bench::start(2000);
    // (what, the frame, the GOAWAY's code)
    let cases: Vec<(&str, Frame, u32)> = vec![
        ("DATA on stream 0", frame(DATA, 0, 0, b"x".to_vec()), PROTOCOL_ERROR),
        ("an even (server) stream id", frame(HEADERS, END_HEADERS, 2, get("/")), PROTOCOL_ERROR),
        // RFC 9113 §4.3 names COMPRESSION_ERROR; the h2 crate sends
        // PROTOCOL_ERROR for a field block it cannot decode.
        (
            "a header block HPACK cannot decode",
            frame(HEADERS, END_HEADERS, 1, vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
            PROTOCOL_ERROR,
        ),
        (
            "a connection window beyond 2^31-1",
            frame(WINDOW_UPDATE, 0, 0, 0x7fff_ffffu32.to_be_bytes().to_vec()),
            FLOW_CONTROL_ERROR,
        ),
        // RFC 9113 §6.5.2 names FLOW_CONTROL_ERROR; the h2 crate sends
        // PROTOCOL_ERROR for a SETTINGS frame it cannot load.
        (
            "SETTINGS_INITIAL_WINDOW_SIZE beyond 2^31-1",
            frame(SETTINGS, 0, 0, vec![0, 4, 0x80, 0, 0, 0]),
            PROTOCOL_ERROR,
        ),
        ("SETTINGS_ENABLE_PUSH of 2", frame(SETTINGS, 0, 0, vec![0, 2, 0, 0, 0, 2]), PROTOCOL_ERROR),
        // RFC 9113 §6.7 names FRAME_SIZE_ERROR; the h2 crate sends
        // PROTOCOL_ERROR.
        ("a PING that is not 8 bytes", frame(PING, 0, 0, vec![1, 2, 3]), PROTOCOL_ERROR),
        ("a CONTINUATION without HEADERS", frame(CONTINUATION, END_HEADERS, 1, get("/")), PROTOCOL_ERROR),
    ];
    for (what, f, want) in cases {
        let mut c = Conn::open(bench.sidecar.addr);
        c.send(f.kind, f.flags, f.stream, &f.payload);
        assert_eq!(c.end(), Seen::GoAway(want), "{what}");
    }
    bench.others_unharmed();
}

/// A header block that never ends (HEADERS, then CONTINUATION after
/// CONTINUATION) is cut off long before it costs the sidecar memory (the
/// CONTINUATION flood of 2024, CVE-2024-27316's family).
#[test]
fn a_header_block_that_never_ends_is_cut_off() {
    let mut bench = Bench::start(2000);
    let mut c = Conn::open(bench.sidecar.addr);
    c.send(HEADERS, 0, 1, &get("/"));
    // Whole fields in every frame, so that only the block's size is wrong.
    let field = block(&[("x-filler", "00000000")]);
    let filler = field.repeat(16 * 1024 / field.len());
    const CAP: usize = 8 << 20;
    let mut sent = 0;
    while sent < CAP && c.try_send(CONTINUATION, 0, 1, &filler).is_ok() {
        sent += filler.len();
    }
    assert!(sent < CAP, "the sidecar took {sent} bytes of one header block and kept reading");
    match c.end() {
        Seen::GoAway(_) | Seen::Closed => {}
        other => panic!("{other:?}"),
    }
    bench.others_unharmed();
    bench.answered(2);
}

/// A header list beyond `--max-header-size` is refused on its stream (431,
/// as for HTTP/1), and the connection goes on.
#[test]
fn a_header_list_beyond_the_limit_is_refused_on_its_stream() {
    let mut bench = Bench::start(1000);
    let mut c = Conn::open(bench.sidecar.addr);
    let big = "a".repeat(80 * 1024);
    let fields =
        block(&[(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/"), ("x-big", &big)]);
    let mut frames = fields.chunks(16 * 1024).peekable();
    c.send(HEADERS, END_STREAM, 1, frames.next().unwrap());
    while let Some(part) = frames.next() {
        c.send(CONTINUATION, if frames.peek().is_none() { END_HEADERS } else { 0 }, 1, part);
    }
    match c.outcome(1) {
        Seen::Response { ok: false } | Seen::Reset(_) => {}
        other => panic!("an 80 KiB header list: {other:?}"),
    }
    c.send(HEADERS, END_HEADERS | END_STREAM, 3, &get("/after"));
    assert_eq!(c.outcome(3), Seen::Response { ok: true }, "the next stream on the same connection");
    bench.others_unharmed();
}

/// Streams opened and reset at once, thousands of times (the "rapid reset"
/// of 2023, CVE-2023-44487): the connection is served on or ended with
/// ENHANCE_YOUR_CALM, and the sidecar serves everyone else meanwhile.
#[test]
fn streams_reset_as_fast_as_they_open_do_not_take_the_sidecar_down() {
    let mut bench = Bench::start(3000);
    let mut c = Conn::open(bench.sidecar.addr);
    let mut batch = Vec::new();
    let mut stream = 1u32;
    for _ in 0..5000 {
        for (kind, flags, payload) in
            [(HEADERS, END_HEADERS | END_STREAM, get("/slow/100")), (RST_STREAM, 0, 8u32.to_be_bytes().to_vec())]
        {
            batch.extend(&u32::try_from(payload.len()).unwrap().to_be_bytes()[1..]);
            batch.extend([kind, flags]);
            batch.extend(stream.to_be_bytes());
            batch.extend(payload);
        }
        stream += 2;
    }
    let ended = c.0.write_all(&batch).is_err();
    if !ended {
        let _ = c.try_send(HEADERS, END_HEADERS | END_STREAM, stream, &get("/after"));
        match c.outcome(stream) {
            Seen::Response { ok: true } | Seen::GoAway(ENHANCE_YOUR_CALM) | Seen::Closed => {}
            other => panic!("after the resets: {other:?}"),
        }
    }
    bench.others_unharmed();
}

/// Clients that ask for large answers on many streams, grant the largest
/// flow-control windows HTTP/2 allows (so that flow control holds nothing
/// back) and then read nothing (RFC 9113 §10.5): what the sidecar buffers
/// for them is bounded per stream and per connection, not by what the app
/// has to send; the app is held back instead. Measured as the sidecar
/// process's resident memory before and while they are held, in front of
/// a server that sends whatever the windows allow (nghttpd).
#[test]
fn clients_that_read_nothing_hold_a_bounded_part_of_the_sidecars_memory() {
    const CONNECTIONS: usize = 4;
    /// nghttpd's limit of concurrent streams.
    const STREAMS: u32 = 100;
    /// Per connection: 100 streams × 64 KiB towards the client and 256 KiB
    /// of the app's connection window, and the read buffers those bytes
    /// keep alive.
    const BOUND: u64 = 16 * 1024 * 1024;
    let app = Nghttpd::start();
    let sidecar = SidecarProcess::start(app.addr, &[]);
    let mut warm = Conn::open(sidecar.addr);
    warm.send(HEADERS, END_HEADERS | END_STREAM, 1, &get("/big"));
    assert_eq!(warm.outcome(1), Seen::Response { ok: true });
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = sidecar.rss();

    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut c = Conn(TcpStream::connect(sidecar.addr).unwrap());
        c.0.write_all(PREFACE).unwrap();
        // SETTINGS_INITIAL_WINDOW_SIZE (0x4) at its largest, and the
        // connection's window raised to the same.
        c.send(SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]);
        c.send(WINDOW_UPDATE, 0, 0, &(0x7fff_ffff_u32 - 65_535).to_be_bytes());
        for i in 0..STREAMS {
            c.send(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &get("/big"));
        }
        held.push(c);
    }
    // For three seconds at least, and on while the sidecar's memory grew
    // within the last one.
    let mut peak = sidecar.rss();
    let (start, mut still_since) = (Instant::now(), Instant::now());
    while (start.elapsed() < Duration::from_secs(3) || still_since.elapsed() < Duration::from_secs(1))
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
        let now = sidecar.rss();
        if now > peak {
            (peak, still_since) = (now, Instant::now());
        }
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown <= BOUND * CONNECTIONS as u64,
        "{CONNECTIONS} connections that read nothing grew the sidecar by {} KiB (bound {} KiB)",
        grown / 1024,
        BOUND * CONNECTIONS as u64 / 1024
    );

    // The sidecar serves others meanwhile.
    let mut fresh = Conn::open(sidecar.addr);
    fresh.send(HEADERS, END_HEADERS | END_STREAM, 1, &get("/big"));
    assert_eq!(fresh.outcome(1), Seen::Response { ok: true }, "a new connection while they are held");
    drop(held);
}

/// An HTTP/2 client connection holds two descriptors of the budget: its
/// own, and its connection to the app, given back when that closes. With
/// the budget spent, a stream is refused (503, counted) and its
/// connection goes on.
#[test]
fn an_h2_connection_and_its_app_connection_count_in_the_descriptor_budget() {
    let app = App::start(env!("CARGO_BIN_EXE_sample-app"));
    let sidecar = Sidecar::start(app.addr, &["--fd-budget", "3"]);
    let fds = || sidecar.metric_value("mirrord_proxy_inbound_fds");
    let mut first = Conn::open(sidecar.addr);
    first.send(HEADERS, END_HEADERS | END_STREAM, 1, &get("/"));
    assert_eq!(first.outcome(1), Seen::Response { ok: true });
    eventually("the client's and the app's sockets", || fds() == 2);

    // The third descriptor is the second client's; its app connection
    // would be a fourth.
    let mut second = Conn::open(sidecar.addr);
    second.send(HEADERS, END_HEADERS | END_STREAM, 1, &get("/"));
    assert_eq!(second.outcome(1), Seen::Response { ok: false });
    assert_eq!(sidecar.metric_value("mirrord_proxy_errors_total{reason=\"fd_budget\"}"), 1);

    // The first client leaves: both its descriptors come back, and the
    // second connection's next stream reaches the app.
    drop(first);
    eventually("the first client's descriptors back", || fds() == 1);
    second.send(HEADERS, END_HEADERS | END_STREAM, 3, &get("/"));
    assert_eq!(second.outcome(3), Seen::Response { ok: true });
    assert_eq!(fds(), 2);
}

/// A client connection with no stream open for 5 s gives its connection to
/// the app back (and the descriptor with it): idle clients, gRPC's
/// long-lived connections among them, hold only their own socket. Its next
/// stream opens another.
#[test]
fn an_idle_h2_client_holds_no_app_connection() {
    let app = App::start(env!("CARGO_BIN_EXE_sample-app"));
    let sidecar = Sidecar::start(app.addr, &[]);
    let fds = || sidecar.metric_value("mirrord_proxy_inbound_fds");
    let mut c = Conn::open(sidecar.addr);
    c.send(HEADERS, END_HEADERS | END_STREAM, 1, &get("/"));
    assert_eq!(c.outcome(1), Seen::Response { ok: true });
    eventually("the client's and the app's sockets", || fds() == 2);
    // Streams keep it: one every second for three seconds.
    for stream in [3, 5, 7] {
        std::thread::sleep(Duration::from_secs(1));
        c.send(HEADERS, END_HEADERS | END_STREAM, stream, &get("/"));
        assert_eq!(c.outcome(stream), Seen::Response { ok: true });
        assert_eq!(fds(), 2, "the app connection is kept while streams come");
    }
    let idle = Instant::now();
    while fds() != 1 {
        assert!(idle.elapsed() < Duration::from_secs(10), "the app connection is still open");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(idle.elapsed() >= Duration::from_secs(4), "closed after {:?} idle", idle.elapsed());
    c.send(HEADERS, END_HEADERS | END_STREAM, 9, &get("/"));
    assert_eq!(c.outcome(9), Seen::Response { ok: true });
    assert_eq!(fds(), 2);
}
