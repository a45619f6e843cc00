//! Client → app (or session): one request at a time, head checked, bytes
//! forwarded as read. The head and the request's route are here; its body's
//! way (to the app, a session, the copies) is in [`body`].

mod body;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use super::body::Body;
use super::head::{parse_request, Fields, Kind, Reject, RequestHead};
use super::rewrite;
use super::route::route;
use super::stolen::Stolen;
use super::{fill, pass_fin, tunnel, Conn, Done, Pending, Shared, INITIAL_BUFFER};
use crate::metrics::Route;
use crate::session::Routed;
use body::{body_for_filters, pass_body, tunnel_to_session, Passed, Sink};

/// The answer to a kubelet probe while the app is paused.
const PROBE_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 61\r\n\r\nthe app is paused by mirrord; its sidecar answers the probes\n";

/// What the request side keeps from one round to the next.
pub(super) struct State {
    /// Bytes read from the client and not yet passed on.
    pub buf: BytesMut,
    fields: Fields,
}

impl State {
    pub fn new(prefix: Bytes) -> Self {
        let mut buf = BytesMut::with_capacity(INITIAL_BUFFER.max(prefix.len()));
        buf.extend_from_slice(&prefix);
        State { buf, fields: Fields::default() }
    }

    /// Between requests, with nothing of the next one read: no buffer and
    /// no field list are kept while the connection waits.
    pub fn release(&mut self) {
        self.buf = BytesMut::new();
        self.fields = Fields::default();
    }
}

enum Next {
    Head(RequestHead),
    Eof,
    Reject(Reject),
    Shutdown,
    Failed,
}

pub(super) async fn pump<R, W>(mut rd: R, mut wr: W, state: &mut State, shared: &Shared, conn: &Conn) -> Done
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let State { buf, fields } = state;
    let mut shutdown = conn.shutdown.clone();
    // The client said it sends no more requests: its connection ends after
    // the answers, so the app connection is not given back either.
    let mut closing = false;
    loop {
        // (A round starts with bytes of a request, or pinned.)
        if buf.is_empty() && !closing && !shared.is_pinned() {
            // Between requests with nothing of the next one: a client that
            // sends its next request at once keeps its app connection;
            // otherwise the round ends once every response is complete.
            match tokio::time::timeout(super::GRACE, fill(&mut rd, buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => return pass_fin(&mut wr).await,
                Ok(Err(_)) => return Done::Close,
                Err(_) => {
                    shared.push(Pending::Release);
                    return Done::Idle;
                }
            }
        }
        shared.room().await;
        let head = match next_head(&mut rd, buf, fields, conn, &mut shutdown).await {
            Next::Head(head) => head,
            Next::Eof => return pass_fin(&mut wr).await,
            Next::Reject(r) => {
                debug!(reason = r.reason(), "request refused");
                shared.push(Pending::Reject(r));
                return Done::Eof;
            }
            Next::Shutdown => {
                shared.push(Pending::Close);
                return Done::Eof;
            }
            Next::Failed => return Done::Close,
        };
        let started = std::time::Instant::now();
        let Routed { steal, mut copies } = if conn.inbound.sessions.is_empty() {
            Routed::default()
        } else {
            let body = match conn.inbound.sessions.need_body(conn.dst.port()) {
                true => body_for_filters(&mut rd, buf, &head).await,
                false => None,
            };
            route(conn, &buf[..head.len], &head, fields, body.as_deref()).await
        };
        let (switched_tx, switched_rx) = match head.kind {
            Kind::Upgrade | Kind::Connect => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        let (close, kind) = (head.close, head.kind);
        closing |= close;
        if steal.is_none() && conn.inbound.pause.is_paused() && head.body == Body::Empty && head.kube_probe {
            // The paused app would not answer, and kubelet would restart it.
            shared.push(Pending::Local(PROBE_ANSWER));
            if close {
                shared.push(Pending::Close);
                return Done::Eof;
            }
            buf.advance(head.len);
            continue;
        }
        let done = match steal {
            Some(exchange) => {
                let stolen = Stolen {
                    from_client: exchange.from_client,
                    kind,
                    http10: head.http10,
                    switched: switched_tx,
                    keep_open: exchange.to_client.clone(),
                    started,
                };
                shared.push(Pending::Stolen(stolen));
                if close {
                    shared.push(Pending::Close);
                }
                buf.advance(head.len);
                let sink: Sink<'_, W> = Sink::Session(Some(exchange.to_client));
                pass_body(&mut rd, sink, shared, buf, 0, head.body, &mut copies, conn).await
            }
            None => {
                let route = if copies.mirrored() { Route::Mirrored } else { Route::Passthrough };
                // A client that closes after this request: the sidecar ends
                // its connection itself and keeps the app connection, so the
                // app does not see the close (RFC 9110 §7.6.1: the Connection
                // field is for one hop).
                let mut head_len = head.len;
                let close_client = match head.close_field {
                    Some(field) if !shared.is_pinned() && matches!(kind, Kind::Normal | Kind::Head) => {
                        head_len -= field.len();
                        rewrite::remove(buf, field);
                        true
                    }
                    _ => false,
                };
                shared.push(Pending::Response { kind, switched: switched_tx, started, route, close_client });
                let passed =
                    pass_body(&mut rd, Sink::App(&mut wr), shared, buf, head_len, head.body, &mut copies, conn).await;
                if close_client && matches!(passed, Passed::Complete(_)) {
                    shared.push(Pending::Release);
                    return Done::Idle;
                }
                passed
            }
        };
        let session = match done {
            Passed::Complete(session) => session,
            Passed::Stop(done) => return done,
        };
        if let Some(rx) = switched_rx {
            // Nothing after an upgrade request may be parsed as HTTP until the
            // answer says whether the protocol switched.
            if rx.await.unwrap_or(false) {
                return match session {
                    Some(to_client) => tunnel_to_session(&mut rd, buf, to_client).await,
                    None => tunnel(&mut rd, &mut wr, buf).await,
                };
            }
        }
    }
}

/// Reads until a complete request head, enforcing the size and time limits.
async fn next_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    fields: &mut Fields,
    conn: &Conn,
    shutdown: &mut crate::shutdown::Shutdown,
) -> Next {
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match parse_request(buf, fields) {
                // A head that arrived whole in one read is held to the same
                // limit as one that is still arriving.
                Ok(Some(head)) if head.len > conn.inbound.limits.max_head => return Next::Reject(Reject::HeadTooLarge),
                Ok(Some(head)) => return Next::Head(head),
                Err(r) => return Next::Reject(r),
                Ok(None) if buf.len() >= conn.inbound.limits.max_head => {
                    // No end of the request line at all: the target is too long.
                    let line_ended = buf.iter().skip_while(|&&b| b == b'\r' || b == b'\n').any(|&b| b == b'\n');
                    return Next::Reject(if line_ended { Reject::HeadTooLarge } else { Reject::UriTooLong });
                }
                Ok(None) => {}
            }
        }
        let read = match deadline {
            // Idle between requests: wait for the next one, or for shutdown.
            None if buf.is_empty() => tokio::select! {
                r = fill(rd, buf) => r,
                () = shutdown.signalled() => return Next::Shutdown,
            },
            _ => {
                let at = *deadline.get_or_insert_with(|| Instant::now() + conn.inbound.limits.header_read_timeout);
                match timeout_at(at, fill(rd, buf)).await {
                    Ok(r) => r,
                    Err(_) => return Next::Reject(Reject::HeadTimeout),
                }
            }
        };
        match read {
            Ok(0) => return Next::Eof,
            Ok(_) => {}
            Err(e) => {
                debug!("client read failed: {e}");
                return Next::Failed;
            }
        }
    }
}
