//! The little the injector needs from the Kubernetes API: writing its CA into
//! the caBundle of its own MutatingWebhookConfiguration (`--self-signed`).
//! In-cluster credentials: the service account token and CA, and the
//! KUBERNETES_SERVICE_HOST/PORT environment.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

use crate::review::{base64, unbase64};

/// CAs kept in a caBundle besides the new one (the other replica's, and one
/// more for a rollout in progress).
const KEEP_CAS: usize = 3;

/// The newest `KEEP_CAS` certificates of `current`, then `ca_pem`.
pub fn merged_bundle(current: &str, ca_pem: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let mut certs: Vec<String> = current
        .split_inclusive(end)
        .map(str::trim)
        .filter(|c| c.ends_with(end) && *c != ca_pem.trim())
        .map(|c| format!("{c}\n"))
        .collect();
    let drop = certs.len().saturating_sub(KEEP_CAS);
    certs.drain(..drop);
    certs.push(ca_pem.trim().to_owned() + "\n");
    certs.concat()
}

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not in a cluster: {0}")]
    NotInCluster(String),
    #[error("Kubernetes API {what}: {message}")]
    Api { what: String, message: String },
}

/// A client of one API server.
#[derive(Clone)]
pub struct Api {
    host: String,
    port: u16,
    token: String,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("Api").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Api {
    /// The API server that signed `ca_pem`, at `host:port`, with a bearer token.
    pub fn new(host: &str, port: u16, token: &str, ca_pem: &[u8]) -> Result<Api, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| Error::NotInCluster(format!("unreadable CA: {e}")))?;
            roots.add(cert).map_err(|e| Error::NotInCluster(format!("unusable CA: {e}")))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::NotInCluster(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        Ok(Api { host: host.to_owned(), port, token: token.trim().to_owned(), tls })
    }

    /// The in-cluster API server, from the pod's service account.
    pub fn in_cluster() -> Result<Api, Error> {
        let env = |k: &str| std::env::var(k).map_err(|_| Error::NotInCluster(format!("{k} is not set")));
        let (host, port) = (env("KUBERNETES_SERVICE_HOST")?, env("KUBERNETES_SERVICE_PORT")?);
        let port =
            port.parse().map_err(|_| Error::NotInCluster(format!("KUBERNETES_SERVICE_PORT {port:?} is not a port")))?;
        let read = |f: &str| {
            std::fs::read(format!("{SERVICE_ACCOUNT}/{f}"))
                .map_err(|e| Error::NotInCluster(format!("{SERVICE_ACCOUNT}/{f}: {e}")))
        };
        let token = String::from_utf8_lossy(&read("token")?).into_owned();
        Api::new(&host, port, &token, &read("ca.crt")?)
    }

    /// Sends one request; `Err` unless the answer is a success.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<http::Response<hyper::body::Incoming>, Error> {
        let what = format!("{method} {path}");
        let fail = |message: String| Error::Api { what: what.clone(), message };
        let tcp =
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| fail(e.to_string()))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| fail(e.to_string()))?;
        let stream = self.tls.connect(name, tcp).await.map_err(|e| fail(format!("TLS: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "application/json");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| fail(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| fail(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Err(fail(format!("{status}: {}", String::from_utf8_lossy(&bytes).trim())))
    }

    /// One request, its JSON answer.
    pub(crate) async fn call(
        &self,
        method: http::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Value, Error> {
        let what = format!("{method} {path}");
        let resp = self.send(method, path, content_type, body).await?;
        let bytes =
            resp.into_body().collect().await.map_err(|e| Error::Api { what: what.clone(), message: e.to_string() })?;
        serde_json::from_slice(&bytes.to_bytes())
            .map_err(|e| Error::Api { what, message: format!("unreadable answer: {e}") })
    }

    /// A watch: each event (one JSON object per line) is handed to `on_event`
    /// until the API server ends the stream.
    pub(crate) async fn watch(&self, path: &str, mut on_event: impl FnMut(Value)) -> Result<(), Error> {
        let mut body = self.send(http::Method::GET, path, None, Vec::new()).await?.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Api { what: format!("GET {path}"), message: e.to_string() })?;
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(event) = serde_json::from_slice::<Value>(&line) {
                    on_event(event);
                }
            }
        }
        Ok(())
    }

    /// Adds `ca_pem` to the caBundle of every webhook of the
    /// MutatingWebhookConfiguration `name`, keeping the newest CAs already
    /// there: every replica generates its own CA, and all must be trusted.
    pub async fn patch_ca_bundle(&self, name: &str, ca_pem: &str) -> Result<usize, Error> {
        let path = format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
        let config = self.call(http::Method::GET, &path, None, Vec::new()).await?;
        let webhooks = config["webhooks"].as_array().cloned().unwrap_or_default();
        let ops: Vec<Value> = webhooks
            .iter()
            .enumerate()
            .map(|(i, webhook)| {
                let current = webhook["clientConfig"]["caBundle"].as_str().and_then(unbase64).unwrap_or_default();
                let bundle = base64(merged_bundle(&String::from_utf8_lossy(&current), ca_pem).as_bytes());
                json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle})
            })
            .collect();
        let count = ops.len();
        let body = serde_json::to_vec(&ops).unwrap_or_default();
        self.call(http::Method::PATCH, &path, Some("application/json-patch+json"), body).await?;
        Ok(count)
    }
}
