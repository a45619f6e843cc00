//! Protocol detection on a fresh inbound connection: HTTP/2 (prior-knowledge
//! preface), HTTP/1 (a request line), or anything else as raw TCP.
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
    match buf.iter().position(|&b| b == b'\n') {
        Some(eol) if is_request_line(&buf[..eol]) => Class::Http1,
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
            return Ok(Detected::Tcp(buf.freeze()));
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
        assert_eq!(classify(b"GET / HTTP/2.0\r\n\r\n"), Class::Tcp);
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
