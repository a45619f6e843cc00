//! HTTP/2 connections from clients, served with the `h2` crate and proxied
//! per stream (to the app with `h2` as well: [`upstream`]), so that each
//! request can be routed on its own (also on an already-open multiplexed
//! connection): to the app, to a stealing session, with copies to mirroring
//! sessions. Each stream is one task that carries the request to its
//! destination and the answer back, frames as they come, trailers included.
//! HTTP/1 has its own byte-preserving path, [`crate::h1`].

pub mod body;
mod intercept;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Full};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::inbound::Inbound;
use crate::metrics::{ConnCounts, Protocol, Route};
use crate::shutdown::Shutdown;
use body::{send_body, FromSession, H2Body};
use upstream::Upstream;

/// Flow-control windows offered to clients: a client's upload is not held
/// to HTTP/2's default 64 KiB in flight.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams a client may have open at once: RFC 9113 §5.1.2 advises at
/// least 100, and 100 is what nginx, haproxy and nghttpx allow. Each holds
/// some 8 KiB while it is open (its task, its state here and towards the
/// app), and up to its send buffer while its client reads nothing.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Bytes buffered per stream towards the client before a body waits (and
/// with it the app). The kernel's socket buffer, not this, covers the
/// client's round trip, so a few frames suffice to keep the connection
/// busy; a client that grants large windows and reads nothing then holds
/// at most this per stream (RFC 9113 §10.5), 12.5 MiB at the stream
/// limit, instead of what the app has to send. (Less slows a stream of
/// many small messages, gRPC streaming: the stream waits on the
/// connection's writes more often.)
const SEND_BUFFER: usize = 64 * 1024;
/// How long a client connection keeps its connection to the app with no
/// stream open. Then the app connection closes (and gives its descriptor
/// back), as an HTTP/1 client's goes back to the pool between requests:
/// idle clients, gRPC's long-lived ones included, hold only their own
/// socket.
const APP_IDLE: Duration = Duration::from_secs(5);
/// What a stream takes when it opens (its task, its `h2` state on both
/// sides, its request), counted against the memory limit until the next
/// reading sees it (`pressure/`).
const STREAM_MEMORY: u64 = 8192;
/// Streams a client may make the proxy reset for its own errors before the
/// connection is ended (the "rapid reset" family of floods).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Response bodies: the app's, streamed through; one the proxy made; or one
/// from a stealing session.
pub type Body = Either<H2Body, Either<Full<Bytes>, FromSession>>;

/// Everything a request needs to be proxied: shared by a connection's
/// streams (one reference count per stream).
#[derive(Debug)]
pub struct Proxy {
    upstream: Upstream,
    inbound: Arc<Inbound>,
    /// This connection's request counters and duration histograms.
    counts: Arc<ConnCounts>,
}

impl Proxy {
    pub fn new(dst: std::net::SocketAddr, inbound: Arc<Inbound>) -> Self {
        let counts = inbound.metrics.conn_counts(dst.port(), Protocol::Http2);
        Proxy { upstream: Upstream::new(dst, inbound.budget.clone(), inbound.pressure.clone()), inbound, counts }
    }

    /// One stream, from its request to the end of its response. A client
    /// that resets the stream before the answer's head drops the request
    /// (and with it the app's stream, which `h2` resets in turn).
    async fn stream(
        self: Arc<Self>,
        req: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        _ends: StreamEnd,
    ) {
        let started = Instant::now();
        let req = req.map(H2Body::new);
        let answer = async {
            if self.inbound.sessions.is_empty() {
                (self.to_app(req.map(Either::Left)).await, Route::Passthrough)
            } else {
                // Boxed: only streams with sessions to ask need this state.
                Box::pin(intercept::route(&self, req)).await
            }
        };
        let (resp, route) = tokio::select! {
            biased;
            answer = answer => answer,
            _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => return,
        };
        self.counts.answered(&self.inbound.metrics, resp.status().as_u16());
        let (head, body) = resp.into_parts();
        let end_of_stream = body.is_end_stream();
        match respond.send_response(Response::from_parts(head, ()), end_of_stream) {
            Ok(send) if !end_of_stream => send_body(body, send, &*self.inbound.pressure).await,
            Ok(_) => {}
            Err(e) => {
                debug!("response head not sent: {e}");
                respond.send_reset(h2::Reason::INTERNAL_ERROR);
            }
        }
        self.counts.done(&self.inbound.metrics, route, started);
    }

    async fn to_app(&self, req: Request<body::UpBody>) -> Response<Body> {
        match self.upstream.send_h2(req).await {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => {
                debug!("{e}");
                self.inbound.metrics.error(e.reason());
                refusal(e.status(), &e.to_string())
            }
        }
    }
}

/// When a connection's last stream ended (or the connection began), for
/// its idle timeout: the time is kept in milliseconds since the connection
/// began, so that stream tasks on any thread can set it.
struct LastEnd {
    began: tokio::time::Instant,
    millis: std::sync::atomic::AtomicU64,
}

impl LastEnd {
    fn new() -> LastEnd {
        LastEnd { began: tokio::time::Instant::now(), millis: std::sync::atomic::AtomicU64::new(0) }
    }

    fn get(&self) -> tokio::time::Instant {
        self.began + std::time::Duration::from_millis(self.millis.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Whether the connection has had no stream open for `after`; if not,
/// `check` is set for when it could first have.
fn idle_for(check: std::pin::Pin<&mut tokio::time::Sleep>, after: Duration, busy: bool, last_end: &LastEnd) -> bool {
    let now = tokio::time::Instant::now();
    let idle_since = last_end.get();
    if busy {
        check.reset(now + after);
    } else if now.duration_since(idle_since) < after {
        check.reset(idle_since + after);
    } else {
        return true;
    }
    false
}

/// Held by a stream's task: when the task ends, however it ends, the
/// connection's [`LastEnd`] is set.
struct StreamEnd(Arc<LastEnd>);

impl Drop for StreamEnd {
    fn drop(&mut self) {
        // Rounded up: the connection is never idle for less than its timeout.
        let millis = u64::try_from(self.0.began.elapsed().as_millis() + 1).unwrap_or(u64::MAX);
        self.0.millis.fetch_max(millis, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The response when the app cannot be reached: it names the proxy, so
/// nobody mistakes it for the app's own 502.
pub fn bad_gateway(why: &str) -> Response<Body> {
    refusal(StatusCode::BAD_GATEWAY, why)
}

/// A response of the proxy's own, with `status`, that says why.
fn refusal(status: StatusCode, why: &str) -> Response<Body> {
    let text = Bytes::from(format!("mirrord-proxy: {why}\n"));
    let length = HeaderValue::from(text.len());
    let mut resp = Response::new(Either::Right(Either::Left(Full::new(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp.headers_mut().insert(http::header::CONTENT_LENGTH, length);
    resp
}

/// Serves an HTTP/2 connection, each stream in a task of its own; on
/// shutdown, GOAWAY, then the open streams finish.
pub async fn serve<T>(io: T, proxy: Proxy, mut shutdown: Shutdown)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = Arc::new(proxy);
    let io = crate::pressure::Gated::client(io, proxy.inbound.pressure.clone());
    let limits = &proxy.inbound.limits;
    // Boxed: the handshake's state (over a KiB) is gone once it is done,
    // instead of staying in the connection's future beside the connection.
    let handshake = Box::pin(
        h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_send_buffer_size(SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_header_list_size(u32::try_from(limits.max_head).unwrap_or(u32::MAX))
            .handshake::<_, Bytes>(io),
    );
    let mut conn = tokio::select! {
        conn = handshake => match conn {
            Ok(conn) => conn,
            Err(e) => return debug!("HTTP/2 handshake failed: {e}"),
        },
        () = shutdown.signalled() => return,
    };
    let mut draining = false;
    // Idleness is checked when a timeout would be due: the connection ends
    // (GOAWAY) once no stream has been open for the whole idle timeout, and
    // its connection to the app closes once none has been for
    // [`APP_IDLE`] (the next stream opens another).
    let idle_timeout = limits.http_idle_timeout.unwrap_or_default();
    let idle_check = tokio::time::sleep(idle_timeout);
    let app_check = tokio::time::sleep(APP_IDLE);
    tokio::pin!(idle_check, app_check);
    // The app check runs from a connection's first stream to the app
    // connection's release, and again from the next stream.
    let mut app_check_armed = false;
    let last_end = Arc::new(LastEnd::new());
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            () = shutdown.signalled(), if !draining => {
                conn.graceful_shutdown();
                draining = true;
                continue;
            }
            () = &mut idle_check, if !draining && limits.http_idle_timeout.is_some() => {
                if idle_for(idle_check.as_mut(), idle_timeout, conn.has_streams(), &last_end) {
                    proxy.inbound.metrics.error(crate::metrics::Fault::HttpIdleTimeout);
                    conn.graceful_shutdown();
                    draining = true;
                }
                continue;
            }
            () = &mut app_check, if app_check_armed => {
                if idle_for(app_check.as_mut(), APP_IDLE, conn.has_streams(), &last_end) {
                    proxy.upstream.release();
                    app_check_armed = false;
                }
                continue;
            }
        };
        match next {
            Some(Ok((_, mut respond))) if !proxy.inbound.pressure.admit(STREAM_MEMORY) => {
                // A stream takes memory (its task, its buffers): refused
                // while memory is near the limit; the client may retry it.
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                proxy.inbound.pressure.shed();
            }
            Some(Ok((req, respond))) => {
                if !app_check_armed {
                    app_check.as_mut().reset(tokio::time::Instant::now() + APP_IDLE);
                    app_check_armed = true;
                }
                // Boxed: the task then holds a pointer, and its future (a
                // few KiB) is not copied again into the task's cell and
                // over once more when its output is stored.
                tokio::spawn(Box::pin(Arc::clone(&proxy).stream(req, respond, StreamEnd(last_end.clone()))));
            }
            Some(Err(e)) => return debug!("HTTP/2 connection ended: {e}"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_return<A, B, R>(_: &impl Fn(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every stream's future is spawned as a task: its size is memory per
    /// stream in flight and bytes moved per stream. State only some streams
    /// need (routing with sessions, connecting) is boxed. The bound covers
    /// the whole task: the request's way to the app, the answer's way back
    /// and the stream's handles.
    #[test]
    fn a_streams_future_stays_small() {
        let app = "127.0.0.1:1".parse().unwrap();
        let inbound = Arc::new(Inbound::for_tests(app, crate::ports::PortList::default()));
        let proxy = Arc::new(Proxy::new(app, inbound));
        let ends = Arc::new(LastEnd::new());
        let stream = move |req: Request<h2::RecvStream>, respond: h2::server::SendResponse<Bytes>| {
            Arc::clone(&proxy).stream(req, respond, StreamEnd(ends.clone()))
        };
        let size = size_of_return(&stream);
        assert!(size <= 2560, "a stream's future is {size} bytes");
    }

    /// A connection's future lasts as long as the connection, idle or not:
    /// the handshake's state is boxed, and gone once the handshake is done,
    /// instead of sitting beside the connection for its life.
    #[tokio::test]
    async fn a_connections_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inbound = Arc::new(Inbound::for_tests(addr, crate::ports::PortList::default()));
        let io = crate::rewind::Rewind::new(Bytes::new(), tokio::net::TcpStream::connect(addr).await.unwrap());
        let size = std::mem::size_of_val(&serve(io, Proxy::new(addr, inbound), crate::shutdown::channel().1));
        assert!(size <= 2304, "an HTTP/2 connection's future is {size} bytes");
    }
}
