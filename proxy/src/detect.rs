//! Protocol detection on a fresh inbound connection: HTTP/2 (prior-knowledge
//! preface), HTTP/1 (a request line), or anything else as raw TCP.
//!
//! Bytes are read, not peeked, and handed on through [`crate::rewind::Rewind`].
//! A client that sends nothing within the detection timeout is taken to speak a
//! server-first protocol (SMTP, MySQL…) and is passed through as raw TCP.
//!
//! The first HTTP/1 request head is checked strictly here, before hyper sees
//! it: hyper accepts some framing that a proxy in front of another parser
//! must refuse (a request smuggling vector), so ambiguous framing gets a 400.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_HEADERS: usize = 128;

/// Limits applied while detecting.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long to wait for bytes that decide the protocol.
    pub detect_timeout: Duration,
    /// How long an HTTP/1 client may take to send a complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 beyond).
    pub max_head: usize,
}

/// What a connection speaks, with the bytes already read from it.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    Http1(Bytes),
    Http2(Bytes),
    Tcp(Bytes),
    /// An HTTP/1 request that must not reach the app.
    Reject(Reject),
    /// The client closed before sending anything.
    Closed,
}

/// Why an HTTP/1 request head was refused; maps to a status and a metric reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    HeadTooLarge,
    HeadTimeout,
    InvalidContentLength,
    DuplicateContentLength,
    ContentLengthWithTransferEncoding,
    TransferEncodingNotChunked,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::HeadTooLarge => 431,
            Reject::HeadTimeout => 408,
            _ => 400,
        }
    }
    /// Metric label and log reason.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed_request",
            Reject::HeadTooLarge => "header_too_large",
            Reject::HeadTimeout => "header_read_timeout",
            Reject::InvalidContentLength => "invalid_content_length",
            Reject::DuplicateContentLength => "duplicate_content_length",
            Reject::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Reject::TransferEncodingNotChunked => "transfer_encoding_not_chunked",
        }
    }
    /// The complete response sent before closing.
    pub fn response(self) -> Vec<u8> {
        let status = self.status();
        let phrase = match status {
            431 => "Request Header Fields Too Large",
            408 => "Request Timeout",
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

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    Http2,
    /// A complete HTTP/1 request head of this many bytes.
    Http1Head,
    /// The request line is HTTP/1; the head is not complete yet.
    Http1Partial,
    /// Could still become HTTP; more bytes needed.
    Undecided,
    Tcp,
}

fn classify(buf: &[u8]) -> Class {
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Class::Http2;
    }
    if H2_PREFACE.starts_with(buf) {
        return Class::Undecided;
    }
    match buf.iter().position(|&b| b == b'\n') {
        Some(eol) if is_request_line(&buf[..eol]) => {
            if find_head_end(buf).is_some() {
                Class::Http1Head
            } else {
                Class::Http1Partial
            }
        }
        Some(_) => Class::Tcp,
        None if could_be_request_line(buf) => Class::Undecided,
        None => Class::Tcp,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `METHOD SP TARGET SP HTTP/1.x` (the line without its `\n`).
fn is_request_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(|&b| is_tchar(b))
        && !target.is_empty()
        && target.iter().all(|&b| b.is_ascii_graphic())
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// Whether `buf` (no newline yet) can still grow into a request line.
fn could_be_request_line(buf: &[u8]) -> bool {
    let method_len = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == buf.len() {
        return method_len <= 32;
    }
    buf[method_len] == b' ' && buf[method_len + 1..].iter().all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\r')
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Strict framing checks on a complete HTTP/1 request head.
fn check_head(buf: &[u8]) -> Result<(), Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Reject::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::Malformed),
    }
    let mut content_length = None;
    let mut transfer_encoding = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(Reject::DuplicateContentLength);
            }
            if h.value.is_empty() || !h.value.iter().all(u8::is_ascii_digit) || h.value.len() > 19 {
                return Err(Reject::InvalidContentLength);
            }
            content_length = Some(());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(Reject::TransferEncodingNotChunked);
            }
            transfer_encoding = Some(h.value);
        }
    }
    match (content_length, transfer_encoding) {
        (Some(()), Some(_)) => Err(Reject::ContentLengthWithTransferEncoding),
        (None, Some(te)) if req.version == Some(0) || !is_chunked_last(te) => Err(Reject::TransferEncodingNotChunked),
        _ => Ok(()),
    }
}

fn is_chunked_last(te: &[u8]) -> bool {
    te.rsplit(|&b| b == b',').next().is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Reads from `io` until the protocol is known.
pub async fn detect<T: AsyncRead + Unpin>(io: &mut T, limits: Limits) -> std::io::Result<Detected> {
    let start = Instant::now();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let class = classify(&buf);
        let deadline = match class {
            Class::Http2 => return Ok(Detected::Http2(buf.freeze())),
            Class::Tcp => return Ok(Detected::Tcp(buf.freeze())),
            Class::Http1Head => {
                return Ok(match check_head(&buf) {
                    Ok(()) => Detected::Http1(buf.freeze()),
                    Err(r) => Detected::Reject(r),
                })
            }
            Class::Http1Partial if buf.len() >= limits.max_head => return Ok(Detected::Reject(Reject::HeadTooLarge)),
            Class::Http1Partial => start + limits.header_read_timeout,
            Class::Undecided => start + limits.detect_timeout,
        };
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(limits.max_head));
        }
        match timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) if buf.is_empty() => return Ok(Detected::Closed),
            Ok(Ok(0)) => {
                return Ok(match class {
                    Class::Http1Partial => Detected::Reject(Reject::Malformed),
                    _ => Detected::Tcp(buf.freeze()),
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) if class == Class::Http1Partial => return Ok(Detected::Reject(Reject::HeadTimeout)),
            Err(_elapsed) => return Ok(Detected::Tcp(buf.freeze())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b""), Class::Undecided);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Class::Undecided);
        assert_eq!(classify(H2_PREFACE), Class::Http2);
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Class::Http1Head);
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n"), Class::Http1Partial);
        assert_eq!(classify(b"GET /x"), Class::Undecided);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Class::Tcp);
        assert_eq!(classify(b"EHLO example.org\r\n"), Class::Tcp);
        assert_eq!(classify(b"PING\r\n"), Class::Tcp);
        assert_eq!(classify(b"GET / HTTP/2.0\r\n\r\n"), Class::Tcp);
    }

    #[test]
    fn strict_head_checks() {
        let ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(check_head(ok), Ok(()));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(check_head(chunked), Ok(()));
        let cases: [(&[u8], Reject); 6] = [
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Reject::DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", Reject::InvalidContentLength),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Reject::ContentLengthWithTransferEncoding,
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Reject::TransferEncodingNotChunked),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Reject::TransferEncodingNotChunked),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", Reject::Malformed),
        ];
        for (head, want) in cases {
            assert_eq!(check_head(head), Err(want), "{}", String::from_utf8_lossy(head));
        }
    }

    fn limits() -> Limits {
        Limits {
            detect_timeout: Duration::from_millis(50),
            header_read_timeout: Duration::from_millis(200),
            max_head: 1024,
        }
    }

    #[tokio::test]
    async fn silent_client_is_tcp_after_timeout() {
        let (mut client, _server) = tokio::io::duplex(64);
        assert_eq!(detect(&mut client, limits()).await.unwrap(), Detected::Tcp(Bytes::new()));
    }

    #[tokio::test]
    async fn split_request_is_reassembled_and_oversized_rejected() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(4096);
        b.write_all(b"GET / HT").await.unwrap();
        let task = tokio::spawn(async move { detect(&mut a, limits()).await.unwrap() });
        b.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(task.await.unwrap(), Detected::Http1(Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")));

        let (mut a, mut b) = tokio::io::duplex(4096);
        b.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        b.write_all(format!("X: {}\r\n", "y".repeat(2000)).as_bytes()).await.unwrap();
        assert_eq!(detect(&mut a, limits()).await.unwrap(), Detected::Reject(Reject::HeadTooLarge));
    }

    #[tokio::test]
    async fn slow_head_times_out() {
        use tokio::io::AsyncWriteExt;
        let (mut a, mut b) = tokio::io::duplex(4096);
        b.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert_eq!(detect(&mut a, limits()).await.unwrap(), Detected::Reject(Reject::HeadTimeout));
    }
}
