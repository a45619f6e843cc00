//! Protocol detection on a fresh inbound connection: HTTP/2 (prior-knowledge
//! preface), HTTP/1, or anything else as raw TCP.
//!
//! The rule (a raw-TCP connection is passed through unchecked, so only bytes
//! that cannot be HTTP may end up there):
//! - empty lines before the first request line are skipped (RFC 9112 §2.2);
//! - a first line that is a request line, or merely looks like one (a word,
//!   a blank, and `HTTP/` in any case further on: a trailing space, a double
//!   space, a tab, `G@T`, `HTTP/1.2`), is HTTP/1: the strict parser then
//!   refuses what is malformed with 400 or 505, never passes it through;
//! - a first line still incomplete after 16 KiB is HTTP/1 when it starts like
//!   a request (`METHOD /…`, `METHOD *`, `METHOD scheme://…`): the parser
//!   refuses it as too long (414);
//! - anything else is raw TCP (TLS, RESP, memcached's `get key`, …).
//!
//! Bytes are read, not peeked, and handed on with the connection.
//! A client that sends nothing within the detection timeout is taken to speak a
//! server-first protocol (SMTP, MySQL…) and is passed through as raw TCP.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not worth waiting for: raw TCP.
const MAX_REQUEST_LINE: usize = 16 * 1024;

/// What a connection speaks, with the bytes already read from it.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    Http1(Bytes),
    Http2(Bytes),
    Tcp(Bytes),
    /// The client closed before sending anything.
    Closed,
}

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    Http2,
    /// The first line is an HTTP/1 request line.
    Http1,
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
    let line = skip_empty_lines(buf);
    if line.is_empty() {
        return Class::Undecided;
    }
    match line.iter().position(|&b| b == b'\n') {
        Some(eol) if is_request_line(&line[..eol]) || looks_like_request_line(&line[..eol]) => Class::Http1,
        Some(_) => Class::Tcp,
        None if could_be_request_line(line) => Class::Undecided,
        None => Class::Tcp,
    }
}

/// `buf` after any leading empty lines (CRLF or bare LF).
fn skip_empty_lines(mut buf: &[u8]) -> &[u8] {
    loop {
        buf = match buf {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => rest,
            _ => return buf,
        }
    }
}

/// A word, a blank, and `HTTP/` (any case) later on the line: meant as a
/// request line even if malformed, so the strict parser must see it.
fn looks_like_request_line(line: &[u8]) -> bool {
    // The "method" is whatever precedes the first blank: a lenient server
    // may take `G@T` or a tab-separated line as a request too.
    let Some(blank) = line.iter().position(|&b| b == b' ' || b == b'\t') else { return false };
    blank > 0
        && line[..blank].iter().all(u8::is_ascii_graphic)
        && line[blank..].windows(5).any(|w| w.eq_ignore_ascii_case(b"HTTP/"))
}

/// A first line with no end after [`MAX_REQUEST_LINE`] bytes that starts
/// like a request: the parser refuses it as too long.
fn starts_like_request(line: &[u8]) -> bool {
    let method_len = line.iter().take_while(|&&b| is_tchar(b)).count();
    let Some(target) = line.get(method_len + 1..).filter(|_| method_len > 0 && line[method_len] == b' ') else {
        return false;
    };
    let scheme_len = target.iter().take_while(|&&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)).count();
    target.starts_with(b"/") || target.starts_with(b"*") || (scheme_len > 0 && target[scheme_len..].starts_with(b"://"))
}

/// A character of a token (RFC 9110 §5.6.2): methods, field names.
pub(crate) fn is_tchar(b: u8) -> bool {
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

/// Reads from `io` until the protocol is known.
/// The request line alone decides HTTP/1; the head is read and checked by
/// [`crate::h1`], which does so for every request of the connection.
pub async fn detect<T: AsyncRead + Unpin>(io: &mut T, timeout: Duration) -> std::io::Result<Detected> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match classify(&buf) {
            Class::Http2 => return Ok(Detected::Http2(buf.freeze())),
            Class::Http1 => return Ok(Detected::Http1(buf.freeze())),
            Class::Tcp => return Ok(Detected::Tcp(buf.freeze())),
            Class::Undecided => {}
        }
        if buf.len() >= MAX_REQUEST_LINE {
            let class = if starts_like_request(skip_empty_lines(&buf)) { Detected::Http1 } else { Detected::Tcp };
            return Ok(class(buf.freeze()));
        }
        buf.reserve(1024);
        match timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) if buf.is_empty() => return Ok(Detected::Closed),
            Ok(Ok(0)) | Err(_) => return Ok(Detected::Tcp(buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies() {
        assert_eq!(classify(b""), Class::Undecided);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Class::Undecided);
        assert_eq!(classify(H2_PREFACE), Class::Http2);
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Class::Http1);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Class::Http1);
        assert_eq!(classify(b"GET /x"), Class::Undecided);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Class::Tcp);
        assert_eq!(classify(b"EHLO example.org\r\n"), Class::Tcp);
        assert_eq!(classify(b"PING\r\n"), Class::Tcp);
        assert_eq!(classify(b"get key\r\n"), Class::Tcp, "memcached's text protocol");
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Class::Tcp, "RESP");
    }

    /// Byte shapes of one `GET /x` that must reach the strict HTTP/1 parser,
    /// never the unchecked raw-TCP path.
    #[test]
    fn malformed_request_lines_are_http_not_tcp() {
        for shape in [
            &b"\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\r\n\r\n\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /x HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /x  HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n",
            b"GET /x HTTP/2.0\r\n\r\n",
            b"GET /x HTTP/1.1\nHost: a\n\n",
            b"GET /x http/1.1\r\n\r\n",
            b"G@T /x HTTP/1.1\r\n\r\n",
            b"GET\t/x HTTP/1.1\r\n\r\n".as_slice(),
        ] {
            assert_eq!(classify(shape), Class::Http1, "{:?}", String::from_utf8_lossy(shape));
        }
        assert_eq!(classify(b"\r\n"), Class::Undecided, "an empty line alone decides nothing");
    }

    #[tokio::test]
    async fn an_endless_request_line_goes_to_the_parser_other_long_lines_to_tcp() {
        for (start, want_http) in [(&b"GET /"[..], true), (b"GET http://a/", true), (b"SET k ", false)] {
            let (mut a, mut b) = tokio::io::duplex(64 * 1024);
            let mut line = start.to_vec();
            line.resize(MAX_REQUEST_LINE + 10, b'a');
            b.write_all(&line).await.unwrap();
            let detected = detect(&mut a, Duration::from_secs(5)).await.unwrap();
            assert_eq!(matches!(detected, Detected::Http1(_)), want_http, "{:?}", String::from_utf8_lossy(start));
        }
    }

    #[tokio::test]
    async fn silent_client_is_tcp_after_timeout() {
        let (mut client, _server) = tokio::io::duplex(64);
        let detected = detect(&mut client, Duration::from_millis(50)).await.unwrap();
        assert_eq!(detected, Detected::Tcp(Bytes::new()));
    }

    #[tokio::test]
    async fn split_request_line_is_reassembled() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        b.write_all(b"GET / HT").await.unwrap();
        let task = tokio::spawn(async move { detect(&mut a, Duration::from_secs(5)).await.unwrap() });
        b.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(task.await.unwrap(), Detected::Http1(Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
    }
}
