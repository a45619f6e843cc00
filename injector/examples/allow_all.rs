//! The least an admission webhook can do, for the admission bench's
//! baseline (`bench/admission.py`): the injector's own TLS, HTTP server and
//! allocator, reading the whole AdmissionReview and answering "allowed"
//! with no patch, without parsing it (the uid is found by a scan). The gap
//! between this and the injector is the injector's own work; what both
//! pay is the machine's (TLS, HTTP, the runtime, the kernel).
//!
//! `cargo run --release -p mirrord-injector --example allow_all -- ADDR CERT KEY`

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mirrord_injector::{server::MAX_BODY, tls};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, cert, key] = args.as_slice() else {
        anyhow::bail!("usage: allow_all ADDR CERT_FILE KEY_FILE");
    };
    let certs = tls::Certs::new(tls::load(cert.as_ref(), key.as_ref())?);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let svc = hyper::service::service_fn(allow);
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

async fn allow(req: hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let uid = uid(&body).unwrap_or_default();
    let answer = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":"{uid}","allowed":true}}}}"#
    );
    let mut resp = hyper::Response::new(Full::new(Bytes::from(answer)));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The first `"uid":"…"` value (the request's, which comes before the
/// object in what the API server sends).
fn uid(body: &[u8]) -> Option<&str> {
    let at = body.windows(7).position(|w| w == br#""uid":""#)? + 7;
    let len = body[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&body[at..at + len]).ok()
}
