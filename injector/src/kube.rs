//! The little the injector needs from the Kubernetes API, through kube-rs:
//! writing its CA into the caBundle of its own MutatingWebhookConfiguration
//! (`--self-signed`), and the Namespaces it watches ([`crate::namespaces`]).

use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};

use crate::review::base64;

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

/// Why the API cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not in a cluster: {0}")]
    NotInCluster(String),
    #[error("Kubernetes API {what}: {message}")]
    Api { what: String, message: String },
}

/// A client of one API server (kube-rs, rustls).
#[derive(Clone)]
pub struct Api {
    client: kube::Client,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// The message of a kube error, with the HTTP status of an API error.
fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {} ({})", s.code, s.reason, s.message),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

impl Api {
    /// An API server at `https://HOST:PORT` trusted through `ca_pem`, with a
    /// bearer token (surrounding whitespace ignored, as a mounted token has it).
    pub fn new(host: &str, port: u16, token: &str, ca_pem: &[u8]) -> Result<Api, Error> {
        let url: http::Uri = format!("https://{host}:{port}")
            .parse()
            .map_err(|e| Error::NotInCluster(format!("invalid API address {host}:{port}: {e}")))?;
        let mut config = kube::Config::new(url);
        let roots: Vec<Vec<u8>> = rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::NotInCluster(format!("unreadable CA: {e}")))?;
        config.root_cert = Some(roots);
        config.auth_info.token = Some(token.trim().to_owned().into());
        Api::from_config(config)
    }

    /// In-cluster credentials: the service account token and CA, and the
    /// KUBERNETES_SERVICE_HOST/PORT environment.
    pub fn in_cluster() -> Result<Api, Error> {
        let config = kube::Config::incluster().map_err(|e| Error::NotInCluster(e.to_string()))?;
        Api::from_config(config)
    }

    fn from_config(config: kube::Config) -> Result<Api, Error> {
        let client = kube::Client::try_from(config).map_err(|e| Error::NotInCluster(message(&e)))?;
        Ok(Api { client })
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Adds `ca_pem` to the caBundle of every webhook of the
    /// MutatingWebhookConfiguration `name`, keeping the newest CAs already
    /// there: every replica generates its own CA, and all must be trusted.
    pub async fn patch_ca_bundle(&self, name: &str, ca_pem: &str) -> Result<usize, Error> {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        let api: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(self.client.clone());
        let path = format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
        let config =
            api.get(name).await.map_err(|e| Error::Api { what: format!("GET {path}"), message: message(&e) })?;
        let ops: Vec<Value> = config
            .webhooks
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, webhook)| {
                let current = webhook.client_config.ca_bundle.as_ref().map(|b| b.0.clone()).unwrap_or_default();
                let bundle = base64(merged_bundle(&String::from_utf8_lossy(&current), ca_pem).as_bytes());
                json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle})
            })
            .collect();
        let count = ops.len();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
            .map_err(|e| Error::Api { what: format!("PATCH {path}"), message: e.to_string() })?;
        api.patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Json::<()>(patch))
            .await
            .map_err(|e| Error::Api { what: format!("PATCH {path}"), message: message(&e) })?;
        Ok(count)
    }
}
