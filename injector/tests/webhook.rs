//! The webhook over real HTTPS, with a rustls client: admissions, bad and
//! oversized bodies, and certificate reloads under load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mirrord_injector::metrics::Metrics;
use mirrord_injector::mutate::Settings;
use mirrord_injector::server::{self, Webhook, MAX_BODY};
use mirrord_injector::tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
}

async fn start(certs: Arc<tls::Certs>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let webhook = Arc::new(Webhook {
        settings: Settings { image: "proxy:1".to_owned(), native_sidecar: true },
        metrics: metrics.clone(),
        namespace_opted_in: Box::new(|ns| ns == "opted-in"),
        in_flight: tokio::sync::Semaphore::new(mirrord_injector::server::MAX_IN_FLIGHT),
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
    tokio::spawn(server::serve(listener, acceptor, webhook, std::future::pending()));
    Running { addr, metrics }
}

fn client(cas: &[&str]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: a resumed session would show the old certificate.
    let mut config = config;
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTPS POST on a fresh connection: (status, body, server's leaf certificate).
async fn post(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    body: Vec<u8>,
) -> Result<(u16, String, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let stream =
        tls.connect(ServerName::try_from("localhost").unwrap(), tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text =
        String::from_utf8_lossy(&resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes()).into_owned();
    Ok((status, text, leaf))
}

fn review(namespace: &str, annotations: Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "b1a2", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
                    "namespace": namespace,
                    "object": {"metadata": {"generateName": "api-", "annotations": annotations},
                               "spec": {"containers": [{"name": "api", "image": "api:1", "ports": [{"containerPort": 8080}]}]}}}
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn admissions_over_https() {
    let (key, ca) = tls::self_signed(vec!["localhost".to_owned()]).unwrap();
    let running = start(tls::Certs::new(key)).await;
    let tls = client(&[&ca]);

    let (status, body, _) =
        post(running.addr, &tls, review("shop", json!({"mirrord.dev/inject": "enabled"}))).await.unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["uid"], "b1a2");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    let (_, body, _) = post(running.addr, &tls, review("opted-in", json!({}))).await.unwrap();
    assert!(body.contains("JSONPatch"), "namespace opt-in: {body}");
    let (_, body, _) = post(running.addr, &tls, review("shop", json!({}))).await.unwrap();
    assert!(!body.contains("JSONPatch"), "not opted in: {body}");

    let (status, body, _) = post(running.addr, &tls, b"{not json".to_vec()).await.unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("invalid AdmissionReview: not JSON"), "{body}");
    let (status, body, _) = post(running.addr, &tls, vec![b' '; MAX_BODY + 1]).await.unwrap();
    assert_eq!(status, 413, "{body}");

    let metrics = running.metrics.render();
    for line in [
        r#"mirrord_injector_admissions_total{result="injected",reason=""} 2"#,
        r#"mirrord_injector_admissions_total{result="skipped",reason="not_opted_in"} 1"#,
        r#"mirrord_injector_admissions_total{result="error",reason="bad_review"} 1"#,
        r#"mirrord_injector_admissions_total{result="error",reason="too_large"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// The process as `main` assembles it: certificate files, both ports, the
/// admin `/metrics` over plain HTTP.
#[tokio::test]
async fn the_assembled_injector_serves_admissions_and_its_metrics() {
    use clap::Parser;
    use mirrord_injector::run::{Args, Injector};

    let (chain, key, ca) = tls::self_signed_pem(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, chain).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let args = Args::try_parse_from([
        "mirrord-injector",
        "--listen=127.0.0.1:0",
        "--admin=127.0.0.1:0",
        &format!("--cert-file={}", cert_file.display()),
        &format!("--key-file={}", key_file.display()),
        "--image=proxy:2",
    ])
    .unwrap();
    let injector = Injector::bind(args).await.unwrap();
    let (addr, admin) = (injector.addr().unwrap(), injector.admin_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(injector.serve(async move {
        let _ = stop_rx.await;
    }));
    let tls = client(&[&ca]);
    let (status, body, _) = post(addr, &tls, review("shop", json!({"mirrord.dev/inject": "enabled"}))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let patch = serde_json::from_str::<Value>(&body).unwrap()["response"]["patch"].as_str().unwrap().to_owned();
    let patch = String::from_utf8(mirrord_injector::review::unbase64(&patch).unwrap()).unwrap();
    assert!(patch.contains("\"image\":\"proxy:2\""), "the --image flag reached the mutation: {patch}");
    let (status, _, _) =
        post(addr, &tls, review("shop", json!({"mirrord.dev/inject": "enabled", "mirrord.dev/ports": "http"})))
            .await
            .unwrap();
    assert_eq!(status, 200);

    let response = get(admin, "/metrics").await;
    let (head, metrics) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0"),
        "Prometheus reads the body by its content type: {head}"
    );
    let metrics = metrics.to_owned();
    assert!(metrics.contains(r#"mirrord_injector_admissions_total{result="injected",reason=""} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"mirrord_injector_admissions_total{result="invalid",reason="mirrord.dev/ports"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("mirrord_injector_admission_duration_seconds_count 2"), "{metrics}");
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mirrord_injector_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no certificate expiry in {metrics}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(expiry > now + 86_400 * 365, "rcgen's default certificate is valid for years: {expiry}");
    let version = format!(r#"mirrord_injector_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"));
    assert!(metrics.contains(&version), "{metrics}");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), served).await.expect("stops when asked").unwrap();
}

/// A plain HTTP/1.0 GET: the whole response as text.
async fn get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_under_load_fails_no_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (chain_a, key_a, ca_a) = tls::self_signed_pem(vec!["localhost".to_owned()]).unwrap();
    let (chain_b, key_b, ca_b) = tls::self_signed_pem(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&cert_path, &chain_a).unwrap();
    std::fs::write(&key_path, &key_a).unwrap();
    let certs = tls::Certs::new(tls::load(&cert_path, &key_path).unwrap());
    tls::watch(certs.clone(), cert_path.clone(), key_path.clone(), Duration::from_millis(20));
    let running = start(certs).await;
    let tls = client(&[&ca_a, &ca_b]);
    let leaf_b = CertificateDer::from_pem_slice(chain_b.as_bytes()).unwrap().to_vec();

    let (ok, failed, saw_b) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (tls, ok, failed, saw_b, leaf_b) = (tls.clone(), ok.clone(), failed.clone(), saw_b.clone(), leaf_b.clone());
        let addr = running.addr;
        load.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match post(addr, &tls, review("shop", json!({"mirrord.dev/inject": "enabled"}))).await {
                    Ok((200, _, leaf)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if leaf == leaf_b {
                            saw_b.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) | Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Replace both files atomically, as a Secret volume update does.
    for (path, text) in [(&key_path, &key_b), (&cert_path, &chain_b)] {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed, saw_b) =
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), saw_b.load(Ordering::Relaxed));
    eprintln!("{ok} admissions during the reload, {failed} failed, {saw_b} with the new certificate");
    assert_eq!(failed, 0);
    assert!(ok > 50, "too little load to prove anything: {ok}");
    assert!(saw_b > 0, "the new certificate was never served");
}

/// A declared 4 GiB body is refused before a byte of it is sent; the
/// connection is answered at once, not held waiting for the body.
#[tokio::test]
async fn an_oversized_declared_body_gets_an_early_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (key, ca) = tls::self_signed(vec!["localhost".to_owned()]).unwrap();
    let running = start(tls::Certs::new(key)).await;
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let mut stream = client(&[&ca]).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    stream
        .write_all(
            b"POST /mutate HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 4294967296\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut head)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&head[..n]));
}
