//! Namespace opt-in kept by list-then-watch, against an in-process fake API
//! server over HTTPS (a real API server cannot run on a test machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use mirrord_injector::kube::Api;
use mirrord_injector::metrics::Metrics;
use mirrord_injector::namespaces::{keep, Namespaces};
use mirrord_injector::tls;
use serde_json::json;
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

fn ns(name: &str, enabled: bool, rv: u32) -> serde_json::Value {
    let annotations = if enabled { json!({"mirrord.dev/inject": "enabled"}) } else { json!({}) };
    json!({"metadata": {"name": name, "annotations": annotations, "resourceVersion": rv.to_string()}})
}

/// Lists {a: opted in, b: not} at version 10; the watch sends what the test
/// pushes into the returned sender.
async fn fake_api() -> (u16, String, mpsc::UnboundedSender<serde_json::Value>) {
    let (key, ca) = tls::self_signed(vec!["localhost".to_owned()]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::Certs::new(key).server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (events_tx, events_rx) = mpsc::unbounded_channel::<serde_json::Value>();
    let events_rx = Arc::new(tokio::sync::Mutex::new(Some(events_rx)));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, events_rx) = (acceptor.clone(), events_rx.clone());
            tokio::spawn(async move {
                let stream = acceptor.accept(tcp).await.unwrap();
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let events_rx = events_rx.clone();
                    async move {
                        assert_eq!(req.headers()["authorization"], "Bearer t");
                        let query = req.uri().query().unwrap_or("").to_owned();
                        let body: Body = if query.contains("watch=true") {
                            assert!(
                                query.contains("resourceVersion=10"),
                                "watch must start at the list's version: {query}"
                            );
                            let rx = events_rx.lock().await.take().expect("one watch");
                            let lines = tokio_stream::StreamExt::map(
                                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                                |e| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{e}\n")))),
                            );
                            StreamBody::new(lines).boxed()
                        } else {
                            let list = json!({"metadata": {"resourceVersion": "10"}, "items": [ns("a", true, 5), ns("b", false, 6)]});
                            Full::new(Bytes::from(list.to_string())).boxed()
                        };
                        Ok::<_, Infallible>(hyper::Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (port, ca, events_tx)
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn list_then_watch_keeps_the_opt_ins_current() {
    let (port, ca, events) = fake_api().await;
    let api = Api::new("localhost", port, "t", ca.as_bytes()).unwrap();
    let cache = Arc::new(Namespaces::default());
    tokio::spawn(keep(api, cache.clone(), Arc::new(Metrics::default())));
    eventually("a is opted in from the list", || cache.opted_in("a")).await;
    assert!(!cache.opted_in("b"));
    events.send(json!({"type": "MODIFIED", "object": ns("b", true, 11)})).unwrap();
    eventually("b is opted in by the watch", || cache.opted_in("b")).await;
    events.send(json!({"type": "DELETED", "object": ns("a", true, 12)})).unwrap();
    eventually("a is gone with its namespace", || !cache.opted_in("a")).await;
    events.send(json!({"type": "MODIFIED", "object": ns("b", false, 13)})).unwrap();
    eventually("b opted out again", || !cache.opted_in("b")).await;
}

#[tokio::test]
async fn an_unreachable_api_is_counted() {
    let (_, ca, _) = fake_api().await;
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = Api::new("localhost", port, "t", ca.as_bytes()).unwrap();
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(keep(api, Arc::new(Namespaces::default()), metrics.clone()));
    let line = r#"mirrord_injector_api_errors_total{operation="watch_namespaces"} 1"#;
    eventually("the failed list is counted", || metrics.render().lines().any(|l| l == line)).await;
}
