//! HTTP/2 connections from clients, served by hyper and proxied per stream,
//! so that each request can be routed on its own (also on an already-open
//! multiplexed connection). HTTP/1 has its own byte-preserving path, [`crate::h1`].

use std::convert::Infallible;
use std::sync::Arc;

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

use crate::inbound::Limits;
use crate::metrics::{status_class, Metrics, Protocol, RequestLabels};
use crate::shutdown::Shutdown;
use crate::upstream::{self, Upstream};

/// Response bodies: the app's, streamed through, or one the proxy made.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Everything a request needs to be proxied.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

impl Proxy {
    async fn handle(self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let result = self.upstream.send_h2(req).await;
        let resp = match result {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => {
                debug!("{e}");
                self.metrics.error(e.reason());
                bad_gateway(&e)
            }
        };
        let labels = RequestLabels {
            port: self.upstream.dst().port(),
            protocol: Protocol::Http2,
            status: status_class(resp.status().as_u16()),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        Ok(resp)
    }
}

/// The response when the app cannot be reached: it names the proxy, so
/// nobody mistakes it for the app's own 502.
pub fn bad_gateway(e: &upstream::Error) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!("mirrord-proxy: {e}\n")))));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Serves an HTTP/2 connection; on shutdown, GOAWAY and finish open streams.
pub async fn serve_h2<T>(io: T, proxy: Proxy, limits: &Limits)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = proxy.shutdown.clone();
    let svc = service_fn(move |req| proxy.clone().handle(req));
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
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
