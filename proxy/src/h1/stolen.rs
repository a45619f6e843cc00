//! Writing a stolen request's answer, which arrives from the session as
//! frames (head, body bytes, trailers), as HTTP/1 bytes to the client.

use http::StatusCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::head::Kind;
use crate::session::wire::{Frame, Header, ResponseHead};

/// A stolen request awaiting its answer.
#[derive(Debug)]
pub(super) struct Stolen {
    pub from_client: mpsc::Receiver<Frame>,
    pub kind: Kind,
    pub http10: bool,
    /// For an upgrade: whether the session's app switched protocols.
    pub switched: Option<oneshot::Sender<bool>>,
    /// Keeps the exchange's sidecar-to-client direction open until the
    /// answer is complete: if it ended first, the call would end with it.
    #[allow(dead_code)] // never read: dropping it is what ends the call
    pub keep_open: mpsc::Sender<Frame>,
    /// When its head was read.
    pub started: std::time::Instant,
}

/// What the connection does after the answer.
#[derive(Debug)]
pub(super) enum After {
    Continue,
    Close,
    /// 101: raw bytes from the session from now on.
    Tunnel(mpsc::Receiver<Frame>),
}

/// Headers that describe one hop, not the message: never copied from the
/// session's answer (framing is the sidecar's to choose here).
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"];

/// Writes the answer. Returns the status written (for metrics) and what next.
pub(super) async fn respond<W: AsyncWrite + Unpin>(wr: &mut W, mut stolen: Stolen) -> (u16, After) {
    let head = match stolen.from_client.recv().await {
        Some(Frame::Response(head)) => head,
        Some(Frame::Failure(f)) => return (502, failed(wr, &format!("the developer's side failed: {f}")).await),
        _ => return (502, failed(wr, "the session ended before answering this request").await),
    };
    let status = u16::try_from(head.status).unwrap_or(502);
    let switched = status == 101 && stolen.kind == Kind::Upgrade;
    if let Some(tx) = stolen.switched.take() {
        let _ = tx.send(switched);
    }
    let length = content_length(&head);
    let bodiless = stolen.kind == Kind::Head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = match (bodiless, length, stolen.http10) {
        (true, _, _) => Framing::None,
        (false, Some(n), _) => Framing::Length(n),
        (false, None, true) => Framing::UntilClose,
        (false, None, false) => Framing::Chunked,
    };
    if wr.write_all(&render_head(status, &head.headers, switched, framing)).await.is_err() {
        return (status, After::Close);
    }
    if switched {
        return (status, After::Tunnel(stolen.from_client));
    }
    let after = match body(wr, &mut stolen.from_client, framing).await {
        true if framing == Framing::UntilClose => After::Close,
        true => After::Continue,
        false => After::Close,
    };
    (status, after)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn content_length(head: &ResponseHead) -> Option<u64> {
    let value = head.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"))?;
    std::str::from_utf8(&value.value).ok()?.trim().parse().ok()
}

fn render_head(status: u16, headers: &[Header], switched: bool, framing: Framing) -> Vec<u8> {
    let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        let keep = if switched {
            name == "upgrade" || !HOP_BY_HOP.contains(&name.as_str())
        } else {
            !HOP_BY_HOP.contains(&name.as_str()) && (name != "content-length" || matches!(framing, Framing::Length(_)))
        };
        if keep && !h.name.contains(['\r', '\n', ':']) && !h.value.contains(&b'\n') && !h.value.contains(&b'\r') {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::UntilClose => out.extend_from_slice(b"connection: close\r\n"),
        _ if switched => out.extend_from_slice(b"connection: upgrade\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Streams the body frames. True when the body ended as framed.
async fn body<W: AsyncWrite + Unpin>(wr: &mut W, from_client: &mut mpsc::Receiver<Frame>, framing: Framing) -> bool {
    let mut written = 0u64;
    let mut trailers = Vec::new();
    loop {
        match from_client.recv().await {
            Some(Frame::Data(data)) if framing != Framing::None => {
                written += data.len() as u64;
                if matches!(framing, Framing::Length(n) if written > n) {
                    return false;
                }
                let result = if framing == Framing::Chunked {
                    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
                    chunk.extend_from_slice(&data);
                    chunk.extend_from_slice(b"\r\n");
                    wr.write_all(&chunk).await
                } else {
                    wr.write_all(&data).await
                };
                if result.is_err() {
                    return false;
                }
            }
            Some(Frame::Data(_)) => {}
            Some(Frame::Trailers(t)) => trailers = t,
            Some(Frame::End) => break,
            // The session failed or went away mid-body: the only honest
            // signal left is to cut the connection.
            _ => return false,
        }
    }
    match framing {
        Framing::Chunked => {
            let mut end = b"0\r\n".to_vec();
            for h in &trailers {
                end.extend_from_slice(h.name.as_bytes());
                end.extend_from_slice(b": ");
                end.extend_from_slice(&h.value);
                end.extend_from_slice(b"\r\n");
            }
            end.extend_from_slice(b"\r\n");
            wr.write_all(&end).await.is_ok()
        }
        Framing::Length(n) => written == n,
        Framing::None | Framing::UntilClose => true,
    }
}

/// A 502 naming mirrord, for an answer that never came.
async fn failed<W: AsyncWrite + Unpin>(wr: &mut W, why: &str) -> After {
    let body = format!("mirrord-proxy: {why}\n");
    let response = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if wr.write_all(response.as_bytes()).await.is_ok() {
        After::Continue
    } else {
        After::Close
    }
}
