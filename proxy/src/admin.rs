//! The admin server: `/live`, `/ready` and `/metrics` for kubelet and Prometheus.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// State the admin endpoints report.
#[derive(Debug)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// True once the proxy listens, false again while it drains.
    pub ready: AtomicBool,
}

impl Admin {
    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match (method, path) {
            (&Method::GET, "/live") => (StatusCode::OK, "text/plain", "live\n".to_owned()),
            (&Method::GET, "/ready") if self.ready.load(Ordering::Relaxed) => {
                (StatusCode::OK, "text/plain", "ready\n".to_owned())
            }
            (&Method::GET, "/ready") => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_owned()),
            (&Method::GET, "/metrics") => {
                (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", self.metrics.render())
            }
            (_, "/live" | "/ready" | "/metrics") => {
                (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "expected GET\n".to_owned())
            }
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found: expected /live, /ready or /metrics\n".to_owned()),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        resp
    }
}

/// Serves the admin endpoints until shutdown.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: Shutdown) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    debug!("admin accept failed: {e}");
                    continue;
                }
            },
            () = shutdown.signalled() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let resp = admin.respond(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!("admin connection ended: {e}");
            }
        });
    }
}
