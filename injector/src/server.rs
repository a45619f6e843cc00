//! The webhook's HTTPS server: `POST /mutate` answers AdmissionReviews.
//! Bodies are capped (413 beyond), unreadable reviews get a 400 that says
//! what was expected, and the process never panics on input.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, Instrument};

use crate::metrics::{Admission, Failure, Metrics};
use crate::mutate::Settings;
use crate::review;

/// Largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request head may take, and how long a kept-alive HTTP/1
/// connection may wait for its next request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an AdmissionReview body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What answering needs.
pub struct Webhook {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Whether a namespace carries the opt-in annotation.
    pub namespace_opted_in: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Admissions being read or answered at once ([`MAX_IN_FLIGHT`]): with
    /// the body cap and `review::MAX_VALUES`, this bounds the webhook's
    /// memory whatever its clients send.
    pub in_flight: tokio::sync::Semaphore,
}

/// How many admissions are read and answered at once; others wait their
/// turn. 16 × (a 3 MiB body + some tens of MiB to inspect one), and only as
/// many inspected at once as there are worker threads.
pub const MAX_IN_FLIGHT: usize = 16;

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Webhook {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.uri().path() != "/mutate" {
            return Ok(text(StatusCode::NOT_FOUND, "not found: expected POST /mutate"));
        }
        if req.method() != Method::POST {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "expected POST /mutate"));
        }
        let span = tracing::info_span!(
            "admission",
            uid = tracing::field::Empty,
            namespace = tracing::field::Empty,
            pod = tracing::field::Empty
        );
        Ok(self.admit(req).instrument(span).await)
    }

    /// One admission, in its span (the review fills in uid, namespace, pod).
    async fn admit(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        // Closed never: the semaphore lives as long as the webhook.
        let Ok(_permit) = self.in_flight.acquire().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "the webhook is shutting down");
        };
        let declared =
            req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            // Refused before a byte of it is read.
            self.metrics.admission(Admission::Error(Failure::TooLarge));
            return text(StatusCode::PAYLOAD_TOO_LARGE, &format!("AdmissionReview larger than {MAX_BODY} bytes"));
        }
        let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await;
        let Ok(read) = read else {
            self.metrics.admission(Admission::Error(Failure::Timeout));
            return text(StatusCode::REQUEST_TIMEOUT, "the AdmissionReview body did not arrive in time");
        };
        let body = match read {
            Ok(body) => body.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                self.metrics.admission(Admission::Error(Failure::TooLarge));
                return text(StatusCode::PAYLOAD_TOO_LARGE, &format!("AdmissionReview larger than {MAX_BODY} bytes"));
            }
            Err(e) => {
                self.metrics.admission(Admission::Error(Failure::Unreadable));
                return text(StatusCode::BAD_REQUEST, &format!("cannot read the request body: {e}"));
            }
        };
        // A bug in the mutation must cost this one admission (a 500, which
        // the API server handles per its failurePolicy), not the connection
        // with every admission multiplexed on it.
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            review::answer(&body, |ns| (self.namespace_opted_in)(ns), &self.settings)
        }));
        let Ok(answered) = answered else {
            self.metrics.admission(Admission::Error(Failure::Panic));
            return text(StatusCode::INTERNAL_SERVER_ERROR, "the webhook failed on this AdmissionReview");
        };
        let response = match answered {
            Ok((answer, outcome)) => {
                debug!(?outcome, "admission");
                self.metrics.admission(outcome.admission());
                let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
                resp.headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                resp
            }
            Err(e) => {
                debug!("admission refused: {e}");
                self.metrics.admission(Admission::Error(e.failure()));
                text(StatusCode::BAD_REQUEST, &e.to_string())
            }
        };
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        response
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("mirrord-injector: {message}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Serves until `stop`, then lets open connections finish their requests.
pub async fn serve(listener: TcpListener, tls: TlsAcceptor, webhook: Arc<Webhook>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let (tls, webhook, done, mut closing) = (tls.clone(), webhook.clone(), done_tx.clone(), closing.clone());
        tokio::spawn(async move {
            let _done = done;
            let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await else { return };
            let svc = hyper::service::service_fn(move |req| webhook.clone().handle(req));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(HEADER_TIMEOUT)
                .keep_alive_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = async { let _ = closing.wait_for(|c| *c).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    info!("shutting down: finishing open admissions");
    let _ = closing_tx.send(true);
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await;
}

/// The plain-HTTP admin endpoints: `/metrics`, `/ready`, `/live`.
pub async fn admin(listener: TcpListener, metrics: Arc<Metrics>) {
    while let Ok((stream, _)) = listener.accept().await {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = match req.uri().path() {
                    "/metrics" => text_raw(StatusCode::OK, OPENMETRICS, metrics.render()),
                    "/ready" | "/live" => text_raw(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".to_owned()),
                    _ => text(StatusCode::NOT_FOUND, "not found: expected /metrics, /ready or /live"),
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// What `/metrics` is: without it, Prometheus would read OpenMetrics as its
/// classic text format and fail on the `info` type, units and `# EOF`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text_raw(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}
