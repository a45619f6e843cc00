//! The admin server: `/live`, `/ready` and `/metrics` for kubelet and
//! Prometheus, and `/status` (sessions and pause, as JSON) for
//! `mirrord-cli status`.

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
    pub sessions: Arc<crate::session::Sessions>,
    pub pause: Arc<crate::pause::Pause>,
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
            (&Method::GET, "/status") => (StatusCode::OK, "application/json", self.status().to_string()),
            (_, "/live" | "/ready" | "/metrics" | "/status") => {
                (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "expected GET\n".to_owned())
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: expected /live, /ready, /metrics or /status\n".to_owned(),
            ),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        // Session names and filters are the cluster's business, not a cache's.
        resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
        resp
    }

    /// The sidecar's version, its sessions (name, mode, filter, how long open,
    /// counts) and the pause, read by `mirrord-cli status`. Nothing secret:
    /// no session ids, no tokens.
    pub fn status(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let sessions: Vec<serde_json::Value> = self
            .sessions
            .snapshot()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "config": s.config.to_string(),
                    "pause": s.config.pause,
                    "open_seconds": s.opened.elapsed().as_secs(),
                    "stolen": s.stolen.load(Relaxed),
                    "mirrored": s.mirrored.load(Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "ready": self.ready.load(Ordering::Relaxed),
            "sessions": sessions,
            "pause": self.pause.status(),
        })
    }
}

/// Admin connections served at once; more are closed at once. With the
/// 5 s limit on a request head, a client cannot hold the admin port (and
/// the descriptors kept for it) for long.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin endpoints until shutdown.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: Shutdown) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    debug!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.signalled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("admin connection refused: {MAX_ADMIN_CONNECTIONS} already open");
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _slot = slot;
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
