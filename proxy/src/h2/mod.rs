//! HTTP/2 connections from clients, served by hyper and proxied per stream
//! (to the app with `h2` directly: [`upstream`]),
//! so that each request can be routed on its own (also on an already-open
//! multiplexed connection): to the app, to a stealing session, with copies
//! to mirroring sessions. HTTP/1 has its own byte-preserving path, [`crate::h1`].

pub mod body;
mod intercept;
pub mod upstream;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::limits::Limits;
use crate::metrics::{status_class, Metrics, Protocol, RequestLabels, Route};
use crate::session::Sessions;
use crate::shutdown::Shutdown;
use body::{FromSession, H2Body};
use upstream::Upstream;

/// Response bodies: the app's, streamed through; one the proxy made; or one
/// from a stealing session.
pub type Body = Either<H2Body, Either<Full<Bytes>, FromSession>>;

/// Everything a request needs to be proxied.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    pub shutdown: Shutdown,
}

impl Proxy {
    pub fn new(dst: std::net::SocketAddr, metrics: Arc<Metrics>, sessions: Arc<Sessions>, shutdown: Shutdown) -> Self {
        Proxy { upstream: Arc::new(Upstream::new(dst)), metrics, sessions, shutdown }
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Timed<Body>>, Infallible> {
        let started = Instant::now();
        let (resp, route) = if self.sessions.is_empty() {
            (self.to_app(req.map(Either::Left)).await, Route::Passthrough)
        } else {
            // Boxed: a stream's future is moved when hyper spawns it, and
            // only streams with sessions to ask need this state.
            Box::pin(intercept::route(&self, req)).await
        };
        let labels = RequestLabels {
            port: self.upstream.dst().port(),
            protocol: Protocol::Http2,
            status: status_class(resp.status().as_u16()),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        let histogram = self.metrics.duration(self.upstream.dst().port(), Protocol::Http2, route);
        Ok(resp.map(|inner| Timed { inner, timing: Some((histogram, started)) }))
    }

    async fn to_app(&self, req: Request<body::UpBody>) -> Response<Body> {
        match self.upstream.send_h2(req).await {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => {
                debug!("{e}");
                self.metrics.error(e.reason());
                bad_gateway(&e.to_string())
            }
        }
    }
}

/// A response body that records the stream's duration when it ends: when
/// its last frame has been taken, or when it is dropped (the client reset
/// the stream, or the connection closed).
#[derive(Debug)]
pub struct Timed<B> {
    inner: B,
    timing: Option<(prometheus_client::metrics::histogram::Histogram, Instant)>,
}

impl<B> Timed<B> {
    fn finish(&mut self) {
        if let Some((histogram, started)) = self.timing.take() {
            histogram.observe(started.elapsed().as_secs_f64());
        }
    }
}

impl<B> Drop for Timed<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Timed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The response when the app cannot be reached: it names the proxy, so
/// nobody mistakes it for the app's own 502.
pub fn bad_gateway(why: &str) -> Response<Body> {
    let mut resp =
        Response::new(Either::Right(Either::Left(Full::new(Bytes::from(format!("mirrord-proxy: {why}\n"))))));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Serves an HTTP/2 connection; on shutdown, GOAWAY and finish open streams.
pub async fn serve<T>(io: T, proxy: Proxy, limits: &Limits)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = proxy.shutdown.clone();
    let svc = service_fn(move |req| proxy.clone().handle(req));
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // The app's response goes out as the app made it: hyper would add
        // a `date` field to every response without one (gRPC servers send
        // none).
        .auto_date_header(false)
        .max_header_list_size(u32::try_from(limits.max_head).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.signalled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!("HTTP/2 connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_return<A, R>(_: &impl Fn(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// hyper spawns every stream's future as a task: its size is memory
    /// per stream in flight and bytes moved per stream. State only some
    /// streams need (routing with sessions, connecting) is boxed.
    #[test]
    fn a_streams_future_stays_small() {
        let proxy = Proxy::new(
            "127.0.0.1:1".parse().unwrap(),
            Arc::new(Metrics::default()),
            Arc::new(Sessions::new(crate::ports::PortList::default())),
            crate::shutdown::channel().1,
        );
        let handle = move |req: Request<Incoming>| proxy.clone().handle(req);
        let size = size_of_return(&handle);
        assert!(size <= 2048, "a stream's future is {size} bytes");
    }
}
