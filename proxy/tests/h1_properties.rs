//! Properties of the HTTP/1 framing code over generated inputs (proptest):
//! the parsers never panic on any bytes, a head is never refused for
//! arriving in pieces, and chunked bodies are delimited and decoded the
//! same however the bytes are split.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mirrord_proxy::h1::body::{Body, Chunked};
use mirrord_proxy::h1::head::{parse_request, parse_response, Fields, Kind};
use proptest::prelude::*;

/// Bytes that look like HTTP often enough to reach deep into the parser:
/// pieces of request lines, fields and framing mixed with arbitrary bytes.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"GET / HTTP/1.1\r\n".to_vec()),
        Just(b"POST /x?y=1 HTTP/1.0\r\n".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\n".to_vec()),
        Just(b"Host: a\r\n".to_vec()),
        Just(b"Content-Length: 5\r\n".to_vec()),
        Just(b"Content-Length: 18446744073709551616\r\n".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Transfer-Encoding: gzip, chunked\r\n".to_vec()),
        Just(b"Connection: close, upgrade\r\nUpgrade: websocket\r\n".to_vec()),
        Just(b" folded\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\0".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..16),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// A valid request head with `n` extra fields.
fn valid_head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![Just("GET"), Just("POST"), Just("HEAD"), Just("OPTIONS"), Just("DELETE")];
    let path = "/[a-z0-9/]{0,20}";
    let field = ("x-[a-z]{1,10}", "[ -~]{0,30}").prop_map(|(n, v)| format!("{n}: {}\r\n", v.trim()));
    (method, path, proptest::collection::vec(field, 0..10))
        .prop_map(|(m, p, fields)| format!("{m} {p} HTTP/1.1\r\nHost: a\r\n{}\r\n", fields.concat()).into_bytes())
}

/// A body in chunked framing, cut into chunks of the given sizes, each with
/// an optional extension, and optional trailer fields.
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let content = proptest::collection::vec(any::<u8>(), 0..600);
    let cuts = proptest::collection::vec(1usize..200, 1..8);
    let ext = proptest::collection::vec(prop_oneof![Just(""), Just(";a=b"), Just(";x")], 8);
    let trailers = prop_oneof![Just(""), Just("X-T: 1\r\n"), Just("A: b\r\nC: d\r\n")];
    (content, cuts, ext, trailers, any::<bool>()).prop_map(|(content, cuts, ext, trailers, upper)| {
        let mut framed = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < content.len() {
            let n = cuts[i % cuts.len()].min(content.len() - at);
            let size = if upper { format!("{n:X}") } else { format!("{n:x}") };
            framed.extend_from_slice(format!("{size}{}\r\n", ext[i % ext.len()]).as_bytes());
            framed.extend_from_slice(&content[at..at + n]);
            framed.extend_from_slice(b"\r\n");
            at += n;
            i += 1;
        }
        framed.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
        (content, framed)
    })
}

/// Feeds `data` to `body` in pieces cut at `splits`, as reads would bring
/// it: returns the decoded content, how many bytes belonged to the body, and
/// whether it ended.
fn feed(mut body: Body, data: &[u8], splits: &[usize]) -> Result<(Vec<u8>, usize, bool), String> {
    let mut decoded = Vec::new();
    let (mut buffered, mut used_total) = (0usize, 0usize);
    let mut cut_points: Vec<usize> = splits.iter().map(|s| s % (data.len() + 1)).collect();
    cut_points.push(data.len());
    cut_points.sort_unstable();
    for end in cut_points {
        // The pump keeps what the body did not take and retries with more.
        buffered = buffered.max(end);
        let window = &data[used_total..buffered];
        let (used, done) =
            body.advance_decoded(window, &mut |c| decoded.extend_from_slice(c)).map_err(|e| e.to_string())?;
        assert!(used <= window.len(), "took more than it was given");
        used_total += used;
        if done {
            return Ok((decoded, used_total, true));
        }
    }
    Ok((decoded, used_total, false))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn request_heads_never_panic_and_stay_within_the_input(bytes in http_ish()) {
        let mut fields = Fields::default();
        if let Ok(Some(head)) = parse_request(&bytes, &mut fields) {
            prop_assert!(head.len <= bytes.len());
            prop_assert!(bytes[..head.len].ends_with(b"\n"));
            // What routing reads lies inside the head.
            let _ = (fields.method(&bytes[..head.len]), fields.target(&bytes[..head.len]));
            prop_assert!(fields.headers(&bytes[..head.len]).count() <= 100);
        }
    }

    #[test]
    fn response_heads_never_panic(bytes in http_ish(), kind in prop_oneof![Just(Kind::Normal), Just(Kind::Head), Just(Kind::Connect), Just(Kind::Upgrade)]) {
        if let Ok(Some(head)) = parse_response(&bytes, kind) {
            prop_assert!(head.len <= bytes.len());
        }
    }

    #[test]
    fn bodies_never_panic_on_any_bytes(bytes in http_ish(), splits in proptest::collection::vec(any::<usize>(), 0..6)) {
        let _ = feed(Body::Chunked(Chunked::default()), &bytes, &splits);
        let _ = feed(Body::Length(7), &bytes, &splits);
    }

    /// A head that is valid whole is never refused while it is still
    /// arriving: every prefix is incomplete, and the whole is the same head.
    #[test]
    fn a_valid_head_is_never_refused_in_pieces(head in valid_head()) {
        let mut fields = Fields::default();
        let whole = parse_request(&head, &mut fields).unwrap().expect("complete");
        prop_assert_eq!(whole.len, head.len());
        for cut in 0..head.len() {
            let partial = parse_request(&head[..cut], &mut fields);
            prop_assert!(matches!(partial, Ok(None)), "prefix of {} bytes: {:?}", cut, partial);
        }
    }

    /// Chunked bodies end exactly where their framing ends, and decode to
    /// their content, however the bytes are split; the bytes after them
    /// (a pipelined request) are left alone.
    #[test]
    fn chunked_bodies_end_at_their_framing_however_split(
        (content, framed) in chunked_body(),
        splits in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut data = framed.clone();
        data.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        let (decoded, used, done) = feed(Body::Chunked(Chunked::default()), &data, &splits).unwrap();
        prop_assert!(done);
        prop_assert_eq!(used, framed.len());
        prop_assert_eq!(decoded, content);
    }

    /// A chunked body cut short is never reported complete.
    #[test]
    fn a_truncated_chunked_body_is_never_complete(
        (_, framed) in chunked_body(),
        cut in any::<usize>(),
        splits in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let cut = cut % framed.len();
        let (_, _, done) = feed(Body::Chunked(Chunked::default()), &framed[..cut], &splits).unwrap();
        prop_assert!(!done, "complete after {} of {} bytes", cut, framed.len());
    }
}
