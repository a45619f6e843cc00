//! Client → app (or session): one request at a time, head checked, bytes
//! forwarded as read. The head and the request's route are here; its body's
//! way (to the app, a session, the copies) is in [`body`].

mod body;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use super::body::Body;
use super::head::{parse_request, Fields, Kind, Reject, RequestHead};
use super::rewrite;
use super::route::route;
use super::stolen::Stolen;
use super::{fill, growth, pass_fin, tunnel, Conn, Done, Pending, Shared};
use crate::metrics::Route;
use crate::session::wire::Frame;
use crate::session::{Exchange, Routed};
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
    /// The bytes read so far, in a buffer of at least `capacity`.
    pub fn new(prefix: Bytes, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(prefix.len()));
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
        // (A round starts with bytes of a request, or pinned.) A client
        // that sends its next request at once keeps its app connection;
        // otherwise the round ends once every response is complete.
        if buf.is_empty() && !closing && !shared.is_pinned() {
            match tokio::time::timeout(super::GRACE, fill(&mut rd, buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => return pass_fin(&mut wr).await,
                Ok(Err(_)) => return Done::Close,
                Err(_) => return idle(shared),
            }
        }
        shared.room().await;
        let head = match next_head(&mut rd, buf, fields, conn, &mut shutdown).await {
            Next::Head(head) => head,
            Next::Eof => return pass_fin(&mut wr).await,
            no_head => return without_head(no_head, shared),
        };
        let started = std::time::Instant::now();
        let Routed { steal, mut copies } = match conn.inbound.sessions.is_empty() {
            true => Routed::default(),
            false => route_head(&mut rd, buf, fields, &head, conn).await,
        };
        let (switched, switched_rx) = switch_channel(head.kind);
        closing |= head.close;
        if steal.is_none() && conn.inbound.pause.is_paused() && head.body == Body::Empty && head.kube_probe {
            match answer_probe(buf, &head, shared) {
                Some(done) => return done,
                None => continue,
            }
        }
        let passed = match steal {
            Some(exchange) => {
                let sink: Sink<'_, W> =
                    Sink::Session(Some(to_session(buf, &head, exchange, switched, started, shared)));
                pass_body(&mut rd, sink, shared, buf, 0, head.body, &mut copies, conn).await
            }
            None => {
                let route = if copies.mirrored() { Route::Mirrored } else { Route::Passthrough };
                let (head_len, close_client) = to_app(buf, &head, switched, started, route, shared);
                let sink = Sink::App(&mut wr);
                match pass_body(&mut rd, sink, shared, buf, head_len, head.body, &mut copies, conn).await {
                    Passed::Complete(_) if close_client => return idle(shared),
                    passed => passed,
                }
            }
        };
        let session = match passed {
            Passed::Complete(session) => session,
            Passed::Stop(done) => return done,
        };
        // Nothing after an upgrade request may be parsed as HTTP until the
        // answer says whether the protocol switched.
        if let Some(rx) = switched_rx {
            if rx.await.unwrap_or(false) {
                return match session {
                    Some(to_client) => tunnel_to_session(&mut rd, buf, to_client).await,
                    None => tunnel(&mut rd, &mut wr, buf).await,
                };
            }
        }
    }
}

/// A kubelet probe while the app is paused: the paused app would not
/// answer, and kubelet would restart it, so the sidecar answers. `Some`:
/// the client's connection ends after the answer.
fn answer_probe(buf: &mut BytesMut, head: &RequestHead, shared: &Shared) -> Option<Done> {
    shared.push(Pending::Local(PROBE_ANSWER));
    if head.close {
        shared.push(Pending::Close);
        return Some(Done::Eof);
    }
    buf.advance(head.len);
    None
}

/// The client's side of the round ends here: its app connection goes back
/// once every response is complete.
fn idle(shared: &Shared) -> Done {
    shared.push(Pending::Release);
    Done::Idle
}

/// How the client connection ends when no request head came.
fn without_head(next: Next, shared: &Shared) -> Done {
    match next {
        Next::Reject(r) => {
            debug!(reason = r.reason(), "request refused");
            shared.push(Pending::Reject(r));
            Done::Eof
        }
        Next::Shutdown => {
            shared.push(Pending::Close);
            Done::Eof
        }
        // (A head and the client's end are the caller's.)
        Next::Head(_) | Next::Eof | Next::Failed => Done::Close,
    }
}

/// Which sessions take the request; its body is read first when a body
/// filter needs it.
async fn route_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    fields: &Fields,
    head: &RequestHead,
    conn: &Conn,
) -> Routed {
    let body = match conn.inbound.sessions.need_body(conn.dst.port()) {
        true => body_for_filters(rd, buf, head).await,
        false => None,
    };
    route(conn, &buf[..head.len], head, fields, body.as_deref()).await
}

/// Who hears whether an upgrade or CONNECT switched protocols.
fn switch_channel(kind: Kind) -> (Option<oneshot::Sender<bool>>, Option<oneshot::Receiver<bool>>) {
    match kind {
        Kind::Upgrade | Kind::Connect => {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    }
}

/// A stolen request: its answer will come from the session, which gets
/// the body; the head is not passed on. Returns the session's sender.
fn to_session(
    buf: &mut BytesMut,
    head: &RequestHead,
    exchange: Exchange,
    switched: Option<oneshot::Sender<bool>>,
    started: std::time::Instant,
    shared: &Shared,
) -> mpsc::Sender<Frame> {
    let stolen = Stolen {
        from_client: exchange.from_client,
        kind: head.kind,
        http10: head.http10,
        switched,
        keep_open: exchange.to_client.clone(),
        started,
    };
    shared.push(Pending::Stolen(stolen));
    if head.close {
        shared.push(Pending::Close);
    }
    buf.advance(head.len);
    exchange.to_client
}

/// A request for the app: its response is awaited. A client that closes
/// after this request has its `Connection: close` taken out of the head:
/// the sidecar ends the client's connection itself and keeps the app
/// connection, so the app does not see the close (RFC 9110 §7.6.1: the
/// Connection field is for one hop). Returns the length of the head to
/// pass on, and whether the client's connection ends after the request.
fn to_app(
    buf: &mut BytesMut,
    head: &RequestHead,
    switched: Option<oneshot::Sender<bool>>,
    started: std::time::Instant,
    route: Route,
    shared: &Shared,
) -> (usize, bool) {
    let kind = head.kind;
    let (head_len, close_client) = match head.close_field.clone() {
        Some(field) if !shared.is_pinned() && matches!(kind, Kind::Normal | Kind::Head) => {
            let len = head.len - field.len();
            rewrite::remove(buf, field);
            (len, true)
        }
        _ => (head.len, false),
    };
    shared.push(Pending::Response { kind, switched, started, route, close_client });
    (head_len, close_client)
}

/// Whether the buffer of an incomplete head may grow as `fill` would grow it
/// (it need not, or memory is below the limit's mark).
fn head_may_grow(buf: &BytesMut, conn: &Conn) -> bool {
    let grow = growth(buf);
    grow == 0 || conn.inbound.pressure.admit(grow as u64)
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
                // A head about to outgrow its buffer takes more memory:
                // not while memory is near the limit.
                Ok(None) if !head_may_grow(buf, conn) => {
                    return Next::Reject(Reject::MemoryPressure);
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
