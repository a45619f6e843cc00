//! HTTP/1 message heads: parsed in place (no allocation) to learn the
//! framing of what follows, and checked strictly, since the app behind the
//! sidecar parses the same bytes and must never disagree with us about where
//! a request ends (request smuggling).

use super::body::{Body, Chunked};
use super::framing::{ConnectionField, Framing, FramingHeader};

/// More header fields than this: 431 (nginx and haproxy allow about as many).
const MAX_HEADERS: usize = 100;

/// Why a request head is refused; maps to a status and a metric reason.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    HeadTooLarge,
    /// The request line alone is longer than the head limit.
    UriTooLong,
    /// An HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
    HeadTimeout,
    InvalidContentLength,
    DuplicateContentLength,
    ContentLengthWithTransferEncoding,
    TransferEncodingNotChunked,
    /// `chunked` more than once in Transfer-Encoding.
    ChunkedTwice,
    /// A transfer coding nobody registered: 501.
    UnknownTransferCoding,
    /// HTTP/1.1 without Host.
    MissingHost,
    /// More than one Host.
    DuplicateHost,
    InvalidChunkedBody,
    /// A head that outgrows its buffer while memory is near the limit
    /// (`pressure/`): 503.
    MemoryPressure,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::HeadTooLarge => 431,
            Reject::UriTooLong => 414,
            Reject::VersionNotSupported => 505,
            Reject::UnknownTransferCoding => 501,
            Reject::HeadTimeout => 408,
            Reject::MemoryPressure => 503,
            _ => 400,
        }
    }

    /// Metric label and log reason.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed_request",
            Reject::HeadTooLarge => "header_too_large",
            Reject::UriTooLong => "uri_too_long",
            Reject::VersionNotSupported => "http_version_not_supported",
            Reject::HeadTimeout => "header_read_timeout",
            Reject::InvalidContentLength => "invalid_content_length",
            Reject::DuplicateContentLength => "duplicate_content_length",
            Reject::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Reject::TransferEncodingNotChunked => "transfer_encoding_not_chunked",
            Reject::ChunkedTwice => "chunked_twice",
            Reject::UnknownTransferCoding => "unknown_transfer_coding",
            Reject::MissingHost => "missing_host",
            Reject::DuplicateHost => "duplicate_host",
            Reject::InvalidChunkedBody => "invalid_chunked_body",
            Reject::MemoryPressure => "memory_pressure",
        }
    }

    /// The complete response sent before closing.
    pub fn response(self) -> Vec<u8> {
        let status = self.status();
        let phrase = match status {
            431 => "Request Header Fields Too Large",
            414 => "URI Too Long",
            505 => "HTTP Version Not Supported",
            501 => "Not Implemented",
            408 => "Request Timeout",
            503 => "Service Unavailable",
            _ => "Bad Request",
        };
        let body = format!("mirrord-proxy: request refused: {}\n", self.reason().replace('_', " "));
        format!(
            "HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// What the response to a request will look like, as far as framing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    /// HEAD: the response has no body whatever its headers say.
    Head,
    /// CONNECT: a 2xx response turns the connection into a tunnel.
    Connect,
    /// Asks for a protocol upgrade: a 101 turns the connection into a tunnel.
    Upgrade,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, final CRLF included.
    pub len: usize,
    pub kind: Kind,
    pub body: Body,
    /// HTTP/1.0: no chunked responses; the connection closes unless kept alive.
    pub http10: bool,
    /// The client will not send another request on this connection.
    pub close: bool,
    /// From kubelet's HTTP prober (`User-Agent: kube-probe/…`).
    pub kube_probe: bool,
    /// The whole field line (CRLF included) of an HTTP/1.1 request's
    /// `Connection: close`, when it is the one Connection line and `close`
    /// its only option: the sidecar may end the client's connection itself
    /// and keep the app connection (RFC 9110 §7.6.1).
    pub close_field: Option<Span>,
}

/// A range of bytes in a request head.
pub type Span = std::ops::Range<usize>;

/// Where the parts a router reads lie in the last head parsed: kept by the
/// connection and refilled by each [`parse_request`], so that routing reads
/// them without parsing the head again or allocating per request.
#[derive(Debug, Default)]
pub struct Fields {
    method: Span,
    target: Span,
    headers: Vec<(Span, Span)>,
}

impl Fields {
    pub fn method<'a>(&self, head: &'a [u8]) -> &'a str {
        text(&head[self.method.clone()])
    }

    /// The request target (path and query, or an absolute or authority form).
    pub fn target<'a>(&self, head: &'a [u8]) -> &'a str {
        text(&head[self.target.clone()])
    }

    pub fn headers<'a>(&'a self, head: &'a [u8]) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.headers.iter().map(|(n, v)| (text(&head[n.clone()]), &head[v.clone()]))
    }
}

/// Method, target and field names are tokens or visible ASCII once parsed.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub body: Body,
    /// 101, or 2xx to CONNECT: raw bytes both ways from here on.
    pub tunnel: bool,
    /// The app will close the connection after this response
    /// (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// The head has a Connection field line.
    pub connection_field: bool,
}

/// Parses a request head at the start of `buf`: `Ok(None)` if incomplete.
/// On success `fields` says where its method, target and headers are.
pub fn parse_request(buf: &[u8], fields: &mut Fields) -> Result<Option<RequestHead>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(httparse::Error::Version) if names_a_version(buf) => return Err(Reject::VersionNotSupported),
        Err(_) => return Err(Reject::Malformed),
    };
    let framing = Framing::of(req.headers).map_err(|e| match e {
        FramingHeader::DuplicateLength => Reject::DuplicateContentLength,
        FramingHeader::InvalidLength => Reject::InvalidContentLength,
    })?;
    let te = &framing.codings;
    let body = match (framing.length, te.seen) {
        (Some(_), true) => return Err(Reject::ContentLengthWithTransferEncoding),
        (None, true) if te.unknown => return Err(Reject::UnknownTransferCoding),
        (None, true) if te.chunked > 1 => return Err(Reject::ChunkedTwice),
        (None, true) if req.version == Some(0) || !te.last_chunked => return Err(Reject::TransferEncodingNotChunked),
        (None, true) => Body::Chunked(Chunked::default()),
        (Some(0) | None, false) => Body::Empty,
        (Some(n), false) => Body::Length(n),
    };
    match framing.hosts {
        0 if req.version == Some(1) => return Err(Reject::MissingHost),
        0 | 1 => {}
        _ => return Err(Reject::DuplicateHost),
    }
    let kind = match req.method {
        Some("HEAD") => Kind::Head,
        Some("CONNECT") => Kind::Connect,
        _ if framing.upgrade => Kind::Upgrade,
        _ => Kind::Normal,
    };
    let http10 = req.version == Some(0);
    let close = framing.close || (http10 && !framing.keep_alive);
    let base = buf.as_ptr() as usize;
    // Every part httparse returns is a slice of `buf` (an empty one may not be).
    let span = |part: &[u8]| match part.as_ptr() as usize {
        start if !part.is_empty() && start >= base => start - base..start - base + part.len(),
        _ => 0..0,
    };
    fields.method = span(req.method.unwrap_or_default().as_bytes());
    fields.target = span(req.path.unwrap_or_default().as_bytes());
    fields.headers.clear();
    fields.headers.extend(req.headers.iter().map(|h| (span(h.name.as_bytes()), span(h.value))));
    let kube_probe = framing.kube_probe;
    let close_field = match framing.connection {
        ConnectionField::OnlyClose if close && !http10 => req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| field_line(buf, span(h.name.as_bytes()).start, span(h.value).end)),
        _ => None,
    };
    Ok(Some(RequestHead { len, kind, body, http10, close, kube_probe, close_field }))
}

/// The field line that starts at `start` and whose value ends at
/// `value_end`, through its line ending.
fn field_line(buf: &[u8], start: usize, value_end: usize) -> Span {
    // An empty value has no position of its own: search from the name.
    let from = value_end.max(start);
    let end = buf[from..].iter().position(|&b| b == b'\n').map_or(buf.len(), |i| from + i + 1);
    start..end
}

/// Whether the request line ends in `HTTP/d.d` (another version than ours,
/// as opposed to a malformed line): 505 rather than 400.
fn names_a_version(buf: &[u8]) -> bool {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(0);
    let line = &buf[start..];
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.split(|&b| b == b' ').count() == 3
        && matches!(line.rsplit(|&b| b == b' ').next(), Some([b'H', b'T', b'T', b'P', b'/', a, b'.', b]) if a.is_ascii_digit() && b.is_ascii_digit())
}

/// Why a response's framing cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head")]
    Malformed,
    #[error("conflicting or invalid Content-Length in response")]
    ContentLength,
}

/// Parses a response head to a request of `kind`: `Ok(None)` if incomplete.
pub fn parse_response(buf: &[u8], kind: Kind) -> Result<Option<ResponseHead>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse::Malformed),
    };
    let status = resp.code.unwrap_or(0);
    let tunnel = status == 101 || (kind == Kind::Connect && (200..300).contains(&status));
    let framing = Framing::of(resp.headers).map_err(|_| BadResponse::ContentLength)?;
    let body = if tunnel || (100..200).contains(&status) || status == 204 || status == 304 || kind == Kind::Head {
        Body::Empty
    } else {
        match (framing.codings.seen, framing.length) {
            (true, _) if framing.codings.last_chunked => Body::Chunked(Chunked::default()),
            (true, _) => Body::UntilClose,
            (false, Some(0)) => Body::Empty,
            (false, Some(n)) => Body::Length(n),
            (false, None) => Body::UntilClose,
        }
    };
    let close = framing.close || (resp.version == Some(0) && !framing.keep_alive) || body == Body::UntilClose;
    let connection_field = framing.connection != ConnectionField::Absent;
    Ok(Some(ResponseHead { len, status, body, tunnel, close, connection_field }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Result<Option<RequestHead>, Reject> {
        parse_request(buf, &mut Fields::default())
    }

    #[test]
    fn the_parts_a_router_reads() {
        let head = b"\r\nPOST /orders?id=7 HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nUser-Agent: kube-probe/1.31\r\nContent-Length: 0\r\n\r\n";
        let mut fields = Fields::default();
        let parsed = parse_request(head, &mut fields).unwrap().unwrap();
        assert!(parsed.kube_probe);
        assert_eq!(fields.method(head), "POST");
        assert_eq!(fields.target(head), "/orders?id=7");
        let headers: Vec<(&str, &[u8])> = fields.headers(head).collect();
        assert_eq!(
            headers,
            [("Host", &b"a"[..]), ("X-Empty", b""), ("User-Agent", b"kube-probe/1.31"), ("Content-Length", b"0")]
        );
        // The next request on the connection replaces them.
        let next = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n";
        assert!(!parse_request(next, &mut fields).unwrap().unwrap().kube_probe);
        assert_eq!(fields.headers(next).collect::<Vec<_>>(), [("Host", &b"b"[..])]);
        assert!(
            !parse(b"GET / HTTP/1.1\r\nHost: b\r\nUser-Agent: curl kube-probe/1\r\n\r\n").unwrap().unwrap().kube_probe
        );
    }

    #[test]
    fn a_lone_connection_close_is_a_field_line_the_sidecar_may_take_off() {
        let field = |head: &[u8]| parse(head).unwrap().unwrap().close_field.map(|s| head[s].to_vec());
        assert_eq!(
            field(b"GET / HTTP/1.1\r\nHost: a\r\nConnection:  Close \r\nAccept: */*\r\n\r\n").as_deref(),
            Some(&b"Connection:  Close \r\n"[..])
        );
        assert_eq!(
            field(b"GET / HTTP/1.1\nHost: a\nconnection: close\n\n").as_deref(),
            Some(&b"connection: close\n"[..])
        );
        // Other options, a second line, HTTP/1.0, or no close at all: kept.
        assert_eq!(field(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-hop\r\nx-hop: 1\r\n\r\n"), None);
        assert_eq!(field(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: te\r\n\r\n"), None);
        assert_eq!(field(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n"), None);
        assert_eq!(field(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"), None);
        assert_eq!(field(b"GET / HTTP/1.1\r\nHost: a\r\nConnection:\r\n\r\n"), None);
    }

    #[test]
    fn request_framing() {
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let want = RequestHead {
            len: 48,
            kind: Kind::Normal,
            body: Body::Length(3),
            http10: false,
            close: false,
            close_field: None,
            kube_probe: false,
        };
        assert_eq!(parse(head), Ok(Some(want)));
        let old = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(old.http10 && old.close);
        let kept = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
        assert!(!kept.close);
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap().unwrap().close);
        let chunked =
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap().unwrap();
        assert_eq!(chunked.body, Body::Chunked(Chunked::default()));
        let ws = b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        assert_eq!(parse(ws).unwrap().unwrap().kind, Kind::Upgrade);
        assert_eq!(parse(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().unwrap().kind, Kind::Head);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let many_headers = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X-A: 1\r\n".repeat(100));
        assert_eq!(parse(many_headers.as_bytes()), Err(Reject::HeadTooLarge), "more than 100 fields");
        let cases: [(&[u8], Reject); 17] = [
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Reject::DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", Reject::InvalidContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", Reject::InvalidContentLength),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n",
                Reject::InvalidContentLength,
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n", Reject::UnknownTransferCoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Reject::ChunkedTwice),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reject::ChunkedTwice,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                Reject::TransferEncodingNotChunked,
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", Reject::UnknownTransferCoding),
            (b"GET / HTTP/1.1\r\n\r\n", Reject::MissingHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Reject::DuplicateHost),
            (b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", Reject::DuplicateHost),
            (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", Reject::VersionNotSupported),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reject::ContentLengthWithTransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Reject::TransferEncodingNotChunked,
            ),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Reject::TransferEncodingNotChunked),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", Reject::Malformed),
        ];
        for (head, want) in cases {
            assert_eq!(parse(head), Err(want), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn response_framing() {
        let resp = |s: &[u8], k| parse_response(s, k).unwrap().unwrap();
        assert_eq!(resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Kind::Normal).body, Body::Length(5));
        assert_eq!(resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Kind::Head).body, Body::Empty);
        assert_eq!(resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", Kind::Normal).body, Body::Empty);
        assert_eq!(resp(b"HTTP/1.0 200 OK\r\n\r\n", Kind::Normal).body, Body::UntilClose);
        assert_eq!(
            resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Kind::Normal).body,
            Body::Chunked(Chunked::default())
        );
        let switched = resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", Kind::Upgrade);
        assert!(switched.tunnel && switched.body == Body::Empty);
        assert!(resp(b"HTTP/1.1 200 OK\r\n\r\n", Kind::Connect).tunnel);
        let cont = resp(b"HTTP/1.1 100 Continue\r\n\r\n", Kind::Normal);
        assert_eq!((cont.status, cont.body, cont.tunnel), (100, Body::Empty, false));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", Kind::Normal),
            Err(BadResponse::ContentLength)
        );
    }
}
