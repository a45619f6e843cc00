//! The one rewrite of HTTP/1 heads (see the module documentation of
//! [`super`]): a request's lone `Connection: close` line taken off, and the
//! response to it saying `connection: close` instead of the app's
//! Connection lines.

use bytes::BytesMut;

use super::head::Span;

/// Removes `span` from `buf`, moving what follows it back.
pub fn remove(buf: &mut BytesMut, span: Span) {
    let len = buf.len();
    buf.copy_within(span.end..len, span.start);
    buf.truncate(len - span.len());
}

/// The response head at the front of `buf` (`head_len` bytes) with its
/// Connection lines replaced by `connection: close`, for a client whose
/// request asked to close while the app keeps its connection. Returns the
/// new head length. `connection_field`: whether the head has Connection
/// lines (when it has none, the line is put before the empty line that
/// ends the head, without going through the head line by line).
pub fn close_response_head(buf: &mut BytesMut, head_len: usize, connection_field: bool) -> usize {
    const CLOSE: &[u8] = b"connection: close\r\n";
    let mut out = BytesMut::with_capacity(buf.len() + CLOSE.len());
    if !connection_field {
        // The head ends with an empty line: CRLF, or a bare LF.
        let head = &buf[..head_len];
        let end = if head.ends_with(b"\n\r\n") { head_len - 2 } else { head_len - 1 };
        out.extend_from_slice(&buf[..end]);
        out.extend_from_slice(CLOSE);
        out.extend_from_slice(&buf[end..]);
        *buf = out;
        return head_len + CLOSE.len();
    }
    let mut lines = buf[..head_len].split_inclusive(|&b| b == b'\n');
    // The status line, then field lines, then the empty line.
    out.extend_from_slice(lines.next().unwrap_or_default());
    for line in lines {
        if line == b"\r\n" || line == b"\n" {
            out.extend_from_slice(CLOSE);
            out.extend_from_slice(line);
            break;
        }
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if !name.eq_ignore_ascii_case(b"connection") {
            out.extend_from_slice(line);
        }
    }
    let new_len = out.len();
    out.extend_from_slice(&buf[head_len..]);
    *buf = out;
    new_len
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::h1::head::{parse_request, parse_response, Fields, Kind};

    fn parse(head: &[u8]) -> crate::h1::head::RequestHead {
        parse_request(head, &mut Fields::default()).unwrap().unwrap()
    }

    #[test]
    fn taking_a_field_line_off_leaves_the_rest_as_it_was() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX: y\r\n\r\nbody";
        let span = parse(head).close_field.unwrap();
        let mut buf = BytesMut::from(&head[..]);
        remove(&mut buf, span);
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nbody");
    }

    #[test]
    fn a_response_to_a_closing_client_says_close_once() {
        let cases: [(&[u8], &[u8]); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok",
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok",
            ),
            (b"HTTP/1.1 204 No Content\nDate: x\n\n", b"HTTP/1.1 204 No Content\nDate: x\nconnection: close\r\n\n"),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"),
            (
                b"HTTP/1.1 204 No Content\r\nDate: x\r\n\n",
                b"HTTP/1.1 204 No Content\r\nDate: x\r\nconnection: close\r\n\n",
            ),
            (b"HTTP/1.1 204 No Content\nDate: x\n\r\n", b"HTTP/1.1 204 No Content\nDate: x\nconnection: close\r\n\r\n"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: upgrade\r\nconnection: x\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok",
            ),
        ];
        for (response, want) in cases {
            let head = parse_response(response, Kind::Normal).unwrap().unwrap();
            let mut buf = BytesMut::from(response);
            let len = close_response_head(&mut buf, head.len, head.connection_field);
            assert_eq!(&buf[..], want);
            // The line-by-line way gives the same head, Connection lines or not.
            let mut by_lines = BytesMut::from(response);
            assert_eq!(close_response_head(&mut by_lines, head.len, true), len);
            assert_eq!(by_lines, buf);
            let again = parse_response(&buf, Kind::Normal).unwrap().unwrap();
            assert_eq!((again.len, again.close, again.body), (len, true, head.body));
        }
    }
}
