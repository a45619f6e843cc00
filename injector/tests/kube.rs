//! The caBundle write against an in-process fake API server over HTTPS. A
//! real API server cannot run on a test machine; this is the nearest thing:
//! the same requests, paths, headers and JSON patch a real one would get.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mirrord_injector::kube::Api;
use mirrord_injector::review::base64;
use mirrord_injector::tls;
use serde_json::{json, Value};

type Seen = Arc<Mutex<Vec<(String, String, String, String)>>>;

/// A fake API server holding one MutatingWebhookConfiguration with two webhooks.
async fn fake_api() -> (u16, String, Seen) {
    let (key, ca) = tls::self_signed(vec!["localhost".to_owned()]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::Certs::new(key).server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let stream = acceptor.accept(tcp).await.unwrap();
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
                        let auth = parts
                            .headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        log.lock().unwrap().push((
                            parts.method.to_string(),
                            parts.uri.path().to_owned(),
                            auth.clone(),
                            body,
                        ));
                        let (status, answer) = if auth != "Bearer sa-token" {
                            (
                                401,
                                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                         "message": "Unauthorized", "reason": "Unauthorized", "code": 401}),
                            )
                        } else if parts.uri.path()
                            != "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mirrord-injector"
                        {
                            (
                                404,
                                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                         "message": "not found", "reason": "NotFound", "code": 404}),
                            )
                        } else {
                            let webhook = |name: &str| {
                                json!({"name": name, "clientConfig": {"service": {"name": "mirrord-injector", "namespace": "mirrord"}},
                                       "sideEffects": "None", "admissionReviewVersions": ["v1"]})
                            };
                            (
                                200,
                                json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                                       "metadata": {"name": "mirrord-injector", "resourceVersion": "7"},
                                       "webhooks": [webhook("a"), webhook("b")]}),
                            )
                        };
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (port, ca, seen)
}

#[tokio::test]
async fn ca_bundle_is_written_into_every_webhook() {
    let (port, api_ca, seen) = fake_api().await;
    let api = Api::new("localhost", port, "sa-token\n", api_ca.as_bytes()).unwrap();
    let (_, our_ca) = tls::self_signed(vec!["mirrord-injector.mirrord.svc".to_owned()]).unwrap();
    assert_eq!(api.patch_ca_bundle("mirrord-injector", &our_ca).await.unwrap(), 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "GET");
    assert_eq!(seen[1].0, "PATCH");
    let ops: Value = serde_json::from_str(&seen[1].3).unwrap();
    let bundle = base64(format!("{}\n", our_ca.trim()).as_bytes());
    assert_eq!(
        ops,
        json!([
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
        ])
    );
    assert!(!format!("{api:?}").contains("sa-token"), "the token must stay out of Debug output");
}

#[tokio::test]
async fn api_errors_name_the_request_and_the_status() {
    let (port, api_ca, _) = fake_api().await;
    let api = Api::new("localhost", port, "wrong", api_ca.as_bytes()).unwrap();
    let e = api.patch_ca_bundle("mirrord-injector", "x").await.unwrap_err().to_string();
    assert!(
        e.contains("GET /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mirrord-injector"),
        "{e}"
    );
    assert!(e.contains("401"), "{e}");
}

#[test]
fn bundles_keep_the_newest_other_cas() {
    let cas: Vec<String> = (0..5).map(|i| tls::self_signed(vec![format!("h{i}")]).unwrap().1).collect();
    let mut bundle = String::new();
    for ca in &cas {
        bundle = mirrord_injector::kube::merged_bundle(&bundle, ca);
    }
    let kept = bundle.matches("BEGIN CERTIFICATE").count();
    assert_eq!(kept, 4, "three previous CAs and the new one");
    assert!(bundle.ends_with(&format!("{}\n", cas[4].trim())));
    assert!(!bundle.contains(cas[0].trim()));
    // Adding the same CA again does not duplicate it.
    assert_eq!(mirrord_injector::kube::merged_bundle(&bundle, &cas[4]).matches("BEGIN CERTIFICATE").count(), 4);
}
