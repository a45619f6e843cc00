//! App → client: responses in request order, bytes forwarded as read.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::body::Body;
use super::head::{parse_response, Kind};
use super::rewrite::close_response_head;
use super::stolen::{self, After};
use super::{body, fill, forward, pass_fin, tunnel, Conn, Done, Pending, Shared, MAX_BUFFER};
use crate::metrics::{ConnCounts, Protocol, Route};
use crate::session::Frame;

/// What the response side keeps from one round to the next.
pub(super) struct State {
    /// Bytes read from the app and not yet passed on; empty between rounds
    /// unless the app sent more than it was asked for.
    pub buf: BytesMut,
    counts: Arc<ConnCounts>,
    /// The app said it closes the connection after its last response.
    closing: bool,
}

impl State {
    pub fn new(conn: &Conn) -> Self {
        let counts = conn.inbound.metrics.conn_counts(conn.dst.port(), Protocol::Http1);
        State { buf: BytesMut::new(), counts, closing: false }
    }
}

pub(super) async fn pump<R, W>(mut rd: R, mut wr: W, state: &mut State, shared: &Shared, conn: &Conn) -> Done
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let State { buf, counts, closing } = state;
    loop {
        if let Some(done) = due_refusal(&mut wr, shared, conn).await {
            return done;
        }
        // An app connection that is closing is never given back: its close
        // is waited for and passed on, as without the sidecar.
        if !*closing && due_release(shared) {
            return Done::Idle;
        }
        if let Some(answer) = due_local(shared) {
            if wr.write_all(answer).await.is_err() {
                return Done::Close;
            }
            counts.answered(&conn.inbound.metrics, 200);
            continue;
        }
        if let Some(stolen) = due_stolen(shared) {
            let started = stolen.started;
            let (status, after) = stolen::respond(&mut wr, stolen).await;
            counts.answered(&conn.inbound.metrics, status);
            counts.done(&conn.inbound.metrics, Route::Stolen, started);
            match after {
                After::Continue => continue,
                After::Close => {
                    let _ = wr.shutdown().await;
                    return Done::Close;
                }
                After::Tunnel(from_client) => return tunnel_from_session(&mut wr, from_client).await,
            }
        }
        if buf.is_empty() {
            // Between responses: wait for the app, or for a queued refusal.
            let read = tokio::select! {
                r = fill(&mut rd, buf) => r,
                () = shared.changed.notified() => continue,
            };
            match read {
                Ok(0) => return pass_fin(&mut wr).await,
                Ok(_) => {}
                Err(_) => return Done::Close,
            }
        }
        let kind = match shared.queue().front() {
            Some(Pending::Response { kind, .. }) => *kind,
            _ => Kind::Normal,
        };
        let head = match parse_response(buf, kind) {
            Ok(Some(head)) => head,
            Ok(None) if buf.len() < MAX_BUFFER => match fill(&mut rd, buf).await {
                Ok(n) if n > 0 => continue,
                _ => return Done::Close,
            },
            Ok(None) | Err(_) => {
                debug!("unparseable response from the app; closing the connection");
                conn.inbound.metrics.error(crate::metrics::Fault::UpstreamResponse);
                return Done::Close;
            }
        };
        *closing |= head.close && !informational_status(head.status, head.tunnel);
        if head.status == 401 || head.status == 407 {
            // NTLM and Negotiate authenticate the connection: keep the pair.
            shared.pin();
        }
        let informational = informational_status(head.status, head.tunnel);
        let mut timing = None;
        let mut head_len = head.len;
        // The client asked to close; the app, not told, keeps its connection.
        let mut close_client = false;
        if !informational {
            if let Some(Pending::Response { switched, started, route, close_client: close, .. }) = shared.pop_front() {
                if let Some(tx) = switched {
                    let _ = tx.send(head.tunnel);
                }
                timing = Some((route, started));
                close_client = close && !head.close;
            }
            counts.answered(&conn.inbound.metrics, head.status);
        }
        if close_client {
            head_len = close_response_head(buf, head_len, head.connection_field);
        }
        let tunnel_after = head.tunnel;
        let until_close = head.body == Body::UntilClose;
        match forward_message(&mut rd, &mut wr, buf, head_len, head.body).await {
            Message::Complete => {
                if let Some((route, started)) = timing {
                    counts.done(&conn.inbound.metrics, route, started);
                }
                if close_client {
                    // Like a server that was asked to close: FIN after the
                    // last response (RFC 9112 §9.6). When the request is all
                    // read, the round ends now and closing the socket sends
                    // it; while its body still arrives, it goes now.
                    shared.finished.store(true, std::sync::atomic::Ordering::Relaxed);
                    if !matches!(shared.queue().front(), Some(Pending::Release)) && wr.shutdown().await.is_err() {
                        return Done::Close;
                    }
                }
            }
            // A body delimited by close has ended; anything else was cut short.
            Message::SourceClosed if until_close => {
                if let Some((route, started)) = timing {
                    counts.done(&conn.inbound.metrics, route, started);
                }
                return Done::Eof;
            }
            Message::SourceClosed | Message::Failed => return Done::Close,
            Message::Invalid(e) => {
                debug!("invalid chunked response body from the app: {e}");
                conn.inbound.metrics.error(crate::metrics::Fault::UpstreamResponse);
                return Done::Close;
            }
        }
        if tunnel_after {
            return tunnel(&mut rd, &mut wr, buf).await;
        }
    }
}

/// A refusal or close that is next in line is answered now.
async fn due_refusal<W: AsyncWrite + Unpin>(wr: &mut W, shared: &Shared, conn: &Conn) -> Option<Done> {
    let response = match shared.queue().front() {
        Some(Pending::Reject(r)) => {
            conn.inbound.metrics.error(crate::metrics::Fault::Refused(*r));
            Some(r.response())
        }
        Some(Pending::Close) => None,
        _ => return None,
    };
    if let Some(bytes) = response {
        let _ = wr.write_all(&bytes).await;
    }
    let _ = wr.shutdown().await;
    Some(Done::Close)
}

fn informational_status(status: u16, tunnel: bool) -> bool {
    (100..200).contains(&status) && !tunnel
}

/// True when the round's end is next in line (every earlier response is
/// complete).
fn due_release(shared: &Shared) -> bool {
    shared.pop_front_if(|p| matches!(p, Pending::Release)).is_some()
}

/// A response of the sidecar's own, if it is next.
fn due_local(shared: &Shared) -> Option<&'static [u8]> {
    match shared.pop_front_if(|p| matches!(p, Pending::Local(_))) {
        Some(Pending::Local(answer)) => Some(answer),
        _ => None,
    }
}

/// The stolen request next in line, if it is next.
fn due_stolen(shared: &Shared) -> Option<stolen::Stolen> {
    match shared.pop_front_if(|p| matches!(p, Pending::Stolen(_))) {
        Some(Pending::Stolen(stolen)) => Some(stolen),
        _ => None,
    }
}

/// After a stolen upgrade: the session's bytes go to the client.
async fn tunnel_from_session<W: AsyncWrite + Unpin>(wr: &mut W, mut from_client: mpsc::Receiver<Frame>) -> Done {
    loop {
        match from_client.recv().await {
            Some(Frame::Data(data)) => {
                if wr.write_all(&data).await.is_err() {
                    return Done::Close;
                }
            }
            Some(Frame::End) => return pass_fin(wr).await,
            Some(_) => {}
            None => return Done::Close,
        }
    }
}

/// How forwarding one message ended.
#[derive(Debug)]
enum Message {
    /// The whole message was forwarded.
    Complete,
    /// The source closed before the message ended (for a body delimited by
    /// close, that is its end); the FIN was passed on.
    SourceClosed,
    /// The body's framing is broken.
    Invalid(body::FramingError),
    /// A read or write failed.
    Failed,
}

/// Forwards one message: `head_len` head bytes at the front of `buf`, then
/// its body as it arrives.
async fn forward_message<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    head_len: usize,
    mut body: body::Body,
) -> Message
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ready = head_len;
    loop {
        let (used, done) = match body.advance(&buf[ready..]) {
            Ok(progress) => progress,
            Err(e) => return Message::Invalid(e),
        };
        ready += used;
        if forward(wr, buf, ready).await.is_err() {
            return Message::Failed;
        }
        ready = 0;
        if done {
            return Message::Complete;
        }
        match fill(rd, buf).await {
            Ok(0) => {
                let _ = wr.shutdown().await;
                return Message::SourceClosed;
            }
            Ok(_) => {}
            Err(_) => return Message::Failed,
        }
    }
}
