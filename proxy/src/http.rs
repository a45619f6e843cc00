//! HTTP/1 and HTTP/2 connections from clients, served by hyper and proxied
//! per request, so that each request can be routed on its own (also on an
//! already-open keep-alive or multiplexed connection).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::detect::Limits;
use crate::metrics::{status_class, Metrics, Protocol, RequestLabels};
use crate::shutdown::Shutdown;
use crate::upstream::{self, Upstream};

/// Response bodies: the app's, streamed through, or one the proxy made.
pub type Body = Either<Incoming, Full<Bytes>>;

/// Everything a request needs to be proxied.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub protocol: Protocol,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

impl Proxy {
    async fn handle(self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let result = match self.protocol {
            Protocol::Http2 => self.upstream.send_h2(req).await,
            _ if wants_upgrade(&req) => self.upgrade(req).await,
            _ => self.upstream.send_h1(req).await,
        };
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
            protocol: self.protocol,
            status: status_class(resp.status().as_u16()),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        Ok(resp)
    }

    /// Forwards an upgrade request; if the app switches protocols, the two
    /// connections are joined and carry raw bytes from then on.
    async fn upgrade(&self, mut req: Request<Incoming>) -> Result<Response<Incoming>, upstream::Error> {
        let client_side = hyper::upgrade::on(&mut req);
        let mut resp = self.upstream.send_upgrade(req).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let app_side = hyper::upgrade::on(&mut resp);
            let hold = self.shutdown.clone();
            tokio::spawn(async move {
                let _hold = hold;
                match tokio::try_join!(client_side, app_side) {
                    Ok((client, app)) => {
                        let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
                        if let Err(e) = crate::tcp::splice(&mut client, &mut app).await {
                            debug!("upgraded connection ended: {e}");
                        }
                    }
                    Err(e) => debug!("upgrade failed: {e}"),
                }
            });
        }
        Ok(resp)
    }
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(UPGRADE) && req.headers().get_all(CONNECTION).iter().any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The response when the app cannot be reached: it names the proxy, so
/// nobody mistakes it for the app's own 502.
pub fn bad_gateway(e: &upstream::Error) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!("mirrord-proxy: {e}\n")))));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Serves an HTTP/1 connection until it closes or shutdown finishes it.
pub async fn serve_h1<T>(io: T, proxy: Proxy, limits: &Limits)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = proxy.shutdown.clone();
    let svc = service_fn(move |req| proxy.clone().handle(req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head.max(8192))
        .auto_date_header(false)
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.signalled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!("HTTP/1 connection ended: {e}");
    }
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
